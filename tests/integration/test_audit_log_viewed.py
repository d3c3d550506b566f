"""Reading the audit log is a read of every trail it shows (Art. 30): `consentsync audit log`, the
console's audit trail and `POST /api/audit/search` write down who read it, with which filters
and how many entries were shown (``audit.viewed``: no address in it, people by uid only), once
the entries are read, so that the entry is not among them. `audit log --email` writes its
``subject.viewed`` entries as before (5971ee8); the chain still verifies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from consentsync import audit
from consentsync.accounts import Accounts
from consentsync.app import open_ledger
from consentsync.cli_base import login_name
from consentsync.config import load_config
from consentsync.ledger.schema import audit_entries
from consentsync.ledger.service import Ledger
from consentsync.web.console import PER_PAGE
from consentsync.web.server import build
from tests.conftest import Cli, proof, record_args
from tests.web.conftest import PASSWORDS, TEST_HOSTS, api_login, log_in, page_csrf

ADDRESS = "pat.reader@example.org"


def _verified(cli: Cli) -> None:
    result = cli("audit", "verify", "--json")
    assert result.exit_code == 0, f"audit verify -> {result.exit_code}: {result.output}{result.stderr}"


def _reads(ledger: Ledger) -> list[dict[str, Any]]:
    """The ``audit.viewed`` entries, read from the table (reading them by `audit log` is a read)."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(audit_entries.c.seq, audit_entries.c.payload)
            .where(audit_entries.c.action == "audit.viewed")
            .order_by(audit_entries.c.seq)
        ).all()
    return [{**json.loads(payload), "seq": seq} for seq, payload in rows]


@pytest.fixture
def ledger(cli: Cli, config_path: Path) -> Iterator[Ledger]:
    cli.ok(*record_args(ADDRESS, "email_marketing", "granted", *proof()))
    cli.ok(*record_args("sam.other@example.org", "email_marketing", "withdrawn"))
    opened = open_ledger(load_config(config_path))
    yield opened
    opened.engine.dispose()


def test_reading_the_whole_log_is_written_down_after_it_is_printed(cli: Cli, ledger: Ledger) -> None:
    shown = cli.json("audit", "log")
    assert shown and "audit.viewed" not in {entry["action"] for entry in shown}
    (read,) = _reads(ledger)
    assert read["seq"] > shown[-1]["seq"], "written before the entries were printed"
    assert (read["subject"], read["actor"], read["source"]) == (None, login_name(), "cli")
    assert read["what"] == {"filters": {}, "shown": len(shown)}

    # As a table, with filters: each is said; the entries shown are counted.
    table = cli.ok("audit", "log", "--action", "consent.recorded", "--since", "2000-01-01", "--limit", "1")
    assert "consent.recorded" in table.stdout
    filtered = _reads(ledger)[-1]
    assert filtered["what"] == {
        "filters": {"action": "consent.recorded", "since": "2000-01-01T00:00:00Z"},
        "limit": 1,
        "shown": 1,
    }

    # By address: the people it names by uid (and each person's read, as before), never the address.
    (uid,) = ledger.subject_uids_for_email(ADDRESS)
    trail = cli.json("audit", "log", "--email", ADDRESS)
    by_address = _reads(ledger)[-1]
    assert by_address["what"] == {"filters": {"subjects": [uid]}, "shown": len(trail)}
    assert ADDRESS not in json.dumps(_reads(ledger))
    viewed = cli.json("audit", "log", "--action", "subject.viewed")
    assert [entry["subject"] for entry in viewed] == [uid]
    _verified(cli)


def test_reading_the_console_trail_is_written_down(cli: Cli, config_path: Path, ledger: Ledger) -> None:
    with config_path.open("a", encoding="utf-8") as handle:
        handle.write("\n" + TEST_HOSTS)
    Accounts(ledger.engine).add("vic", "viewer", PASSWORDS["vic"], actor="test")
    app = build(load_config(config_path), ledger)

    client = log_in(TestClient(app), "vic")
    page = client.get("/audit", params={"action": "consent.recorded"})
    assert page.status_code == 200
    (read,) = _reads(ledger)
    assert (read["subject"], read["actor"], read["source"]) == (None, "vic", "console")
    through = read["what"]["filters"].pop("through")  # the head the page was read at
    assert through < read["seq"]
    assert read["what"] == {
        "filters": {"action": "consent.recorded"},
        "page": 1,
        "per_page": PER_PAGE,
        "shown": 2,
    }

    # Looked up by address: the people's reads (subject.viewed) and the trail's, by uid only.
    (uid,) = ledger.subject_uids_for_email(ADDRESS)
    client.post("/audit", data={"csrf_token": page_csrf(page.text), "email": ADDRESS})
    filters = _reads(ledger)[-1]["what"]["filters"]
    assert filters.keys() == {"subjects", "through"} and filters["subjects"] == [uid]

    api = TestClient(app)
    csrf = api_login(api, "vic")
    first = api.post("/api/audit/search", json={"per_page": 5}, headers={"X-CSRF-Token": csrf}).json()
    last = _reads(ledger)[-1]
    assert (last["actor"], last["source"]) == ("vic", "api")
    assert last["what"] == {
        "filters": {"through": first["through"]},
        "page": 1,
        "per_page": 5,
        "shown": len(first["items"]),
    }
    # Paged on where the first page stood: the entries written since (this read's) move nothing.
    second = api.post(
        "/api/audit/search",
        json={"per_page": 5, "page": 2, "through": first["through"]},
        headers={"X-CSRF-Token": csrf},
    ).json()
    assert second["items"][0]["seq"] == first["items"][-1]["seq"] - 1
    # Free text typed into a name filter (an address, a name) is not kept in the chain, which no
    # erasure can touch (session 63 black-box): withheld; a name is kept as typed.
    typed = {"connector": ADDRESS, "rule": f"Pat Reader {ADDRESS}", "action": "consent.recorded"}
    api.post("/api/audit/search", json={"per_page": 5, **typed}, headers={"X-CSRF-Token": csrf})
    kept = _reads(ledger)[-1]["what"]["filters"]
    assert kept["connector"] == kept["rule"] == audit.WITHHELD and kept["action"] == "consent.recorded", kept
    client.get("/audit", params={"connector": ADDRESS})
    assert ADDRESS not in json.dumps(_reads(ledger))
    _verified(cli)


def test_the_log_s_own_reads_are_left_out_of_listings_unless_asked_for(
    cli: Cli, config_path: Path, ledger: Ledger
) -> None:
    """Each listing writes an ``audit.viewed`` entry: listed, a client polling for the entries
    since its last read always found some (its own reads), and the trail's first page filled
    with them. The CLI, the console and the API leave them out unless the reader asks for them
    (``--include-views`` / ``include_views``, or the action filter naming them); the entries are
    still written, and verify counts them."""
    everything = cli.json("audit", "log")
    assert everything and "audit.viewed" not in {entry["action"] for entry in everything}
    since = max(entry["at"] for entry in everything)
    cli.json("audit", "log", "--since", since)  # a poller's read: written down
    # Polled again: the two reads are all that was written since, and they are not listed.
    polled = cli.json("audit", "log", "--since", since)
    assert {entry["seq"] for entry in polled} <= {entry["seq"] for entry in everything}
    reads = _reads(ledger)
    assert len(reads) == 3
    assert [e["seq"] for e in cli.json("audit", "log", "--action", "audit.viewed")] == [
        r["seq"] for r in reads
    ]
    with_views = cli.json("audit", "log", "--include-views")
    assert [e["seq"] for e in with_views if e["action"] == "audit.viewed"] == [
        r["seq"] for r in _reads(ledger)[:4]
    ]
    assert _reads(ledger)[-1]["what"]["filters"] == {"include_views": True}
    assert "--include-views" in cli.ok("audit", "log", "--help").stdout

    with config_path.open("a", encoding="utf-8") as handle:
        handle.write("\n" + TEST_HOSTS)
    Accounts(ledger.engine).add("vic", "viewer", PASSWORDS["vic"], actor="test")
    app = build(load_config(config_path), ledger)
    client = log_in(TestClient(app), "vic")
    row = '<td data-label="Action"><code>audit.viewed</code></td>'  # an entry's row on the page
    page = client.get("/audit")
    assert page.status_code == 200 and "consent.recorded</code>" in page.text and row not in page.text
    assert row in client.get("/audit", params={"action": "audit.viewed"}).text

    api = TestClient(app)
    csrf = api_login(api, "vic")
    headers = {"X-CSRF-Token": csrf}
    plain = api.post("/api/audit/search", json={"per_page": 200}, headers=headers).json()
    assert plain["items"] and "audit.viewed" not in {entry["action"] for entry in plain["items"]}
    asked = api.post(
        "/api/audit/search", json={"per_page": 200, "include_views": True}, headers=headers
    ).json()
    views = [entry["seq"] for entry in asked["items"] if entry["action"] == "audit.viewed"]
    assert views and asked["total"] == plain["total"] + len(views)
    _verified(cli)
