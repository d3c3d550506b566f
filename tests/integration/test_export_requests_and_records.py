"""The access export (Art. 15) lists what the ledger holds about the person that it used to leave
out (black-box findings bb62 3 and 4), in every format and from every way it is asked for:

- the person's requests (a Requests part): each erasure and restriction asked for on the
  preference page, each objection, each copy downloaded there, with when it came, its ground as
  recorded, and what became of it and when (Art. 12(3): the controller shows when each came and
  answers within a month);
- among the CRM records, another person's record last read showing the person's address (edited in
  the CRM to hold it), which the ledger takes for one holding the person's data: which record it
  is, and nothing else of its person's."""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from fastapi.testclient import TestClient
from openpyxl import load_workbook

from consentsync import audit
from consentsync.domain import iso
from consentsync.export import ANOTHER_PERSONS_RECORD, OWN_RECORD
from consentsync.hub.mail import Mail, MailFailed
from tests.conftest import Cli
from tests.hub.conftest import HubWorld, inbox, world
from tests.hub.people_world import EMAIL, mailed, people_pages, seed, token_of
from tests.integration.test_cli_sync import connect_sandbox

# The hub's fixtures, and `people`: the preference pages, in the test's process.
FIXTURES = (inbox, world, people_pages)


def _received(world: HubWorld, uid: str, action: str) -> str:
    """When the one audit entry ``action`` of ``uid`` says the request came."""
    with world.ledger.engine.connect() as conn:
        (entry,) = audit.entries(conn, subject_uids=[uid], action=action)
    return str(entry["at"])


def _requests(view: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (r["request"], r["purpose"], r["received_at"], r["ground"], r["status"], r["status_at"], r["reason"])
        for r in view["requests"]
    ]


def test_the_persons_requests_are_in_their_export_with_what_became_of_each(
    world: HubWorld, people: TestClient, cli: Cli, tmp_path: Path
) -> None:
    uid = seed(world)
    token = token_of(world, uid)
    page = f"/p/preferences/{token}"
    asked = world.clock()
    assert people.post(f"{page}/erase", data={"lang": "en"}).status_code in (200, 303)
    world.clock.advance(minutes=1)
    assert people.post(f"{page}/restrict", data={"lang": "en", "ground": "accuracy"}).status_code in (
        200,
        303,
    )
    world.clock.advance(minutes=1)
    assert people.post(f"{page}/object", data={"purpose": "profiling"}).status_code in (200, 303)
    world.clock.advance(minutes=1)
    erasure = _received(world, uid, "subject.erasure_requested")
    restriction = _received(world, uid, "subject.restriction_requested")
    (objection,) = world.ledger.subject_view(EMAIL)["objections"]
    assert objection["status"] == "pending"  # profiling: reviewed by ops

    # All three waiting: the export says so (it used to leave out the erasure and the restriction).
    first = json.loads(_download(world, people, page, "json"))
    assert _requests(first) == [
        ("erasure", None, erasure, None, "pending", None, None),
        ("restriction", None, restriction, "accuracy", "pending", None, None),
        ("objection", "profiling", objection["raised_at"], "Art. 21(1)", "pending", None, None),
    ]
    downloaded = iso(world.clock())

    # The restriction confirmed, the objection rejected on review, the erasure's link left to expire.
    world.clock.advance(minutes=1)
    assert people.post(mailed(world, "/p/restrict/")).status_code in (200, 303)
    confirmed = iso(world.clock())
    world.clock.advance(minutes=1)
    world.ledger.decide_objection(
        objection["id"], uphold=False, by="dpo.anna", reason="the purpose outweighs"
    )
    decided = iso(world.clock())
    days = world.hub.settings.confirmation_days
    world.clock.advance(days=days)
    expired = iso(asked + timedelta(days=days))  # the erasure's link, never followed
    answered = [
        ("erasure", None, erasure, None, "expired", expired, None),
        ("restriction", None, restriction, "accuracy", "done", confirmed, None),
        ("objection", "profiling", objection["raised_at"], "Art. 21(1)", "rejected", decided,
         "the purpose outweighs"),
        ("access", None, downloaded, None, "done", downloaded, None),  # the first download
    ]  # fmt: skip
    for fmt in ("json", "csv", "xlsx"):
        (tmp_path / f"page.{fmt}").write_bytes(_download(world, people, page, fmt))
    again = json.loads((tmp_path / "page.json").read_text(encoding="utf-8"))
    assert _requests(again)[:4] == answered
    with (tmp_path / "page.csv").open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["record_type"] == "request"]
    assert [(r["request"], r["received_at"], r["ground"], r["status"], r["status_at"]) for r in rows][:4] == [
        (kind, received, ground or "", status, at) for kind, _p, received, ground, status, at, _r in answered
    ]
    sheet = load_workbook(tmp_path / "page.xlsx")["Requests"]
    values = list(sheet.iter_rows(values_only=True))
    assert values[0][:5] == ("request", "purpose", "received_at", "ground", "status")
    assert [(row[0], row[3], row[4]) for row in values[1:5]] == [
        ("erasure", None, "expired"),
        ("restriction", "accuracy", "done"),
        ("objection", "Art. 21(1)", "rejected"),
        ("access", None, "done"),
    ]

    # Ops' export (the CLI) lists the same requests, and each copy the person downloaded (the
    # first, then the three above); not the copies ops make: the ledger does not say who asked.
    later = iso(world.clock())
    listed = [
        ("erasure", erasure),
        ("restriction", restriction),
        ("objection", objection["raised_at"]),
        ("access", downloaded),
        *[("access", later)] * 3,
    ]
    for name in ("ops.json", "ops-again.json"):
        cli.ok("subject", "export", EMAIL, "--format", "json", "-o", str(tmp_path / name))
        ops = json.loads((tmp_path / name).read_text(encoding="utf-8"))
        assert [(r["request"], r["received_at"]) for r in ops["requests"]] == listed


def _download(world: HubWorld, people: TestClient, page: str, fmt: str) -> bytes:
    """The person's copy as the preference page hands it over: a download link mailed to them
    (a forwarded page link must not hand it over), followed."""
    assert people.post(f"{page}/export", data={"lang": "en"}).status_code in (200, 303)
    response = people.post(mailed(world, "/p/export/"), data={"format": fmt})
    assert response.status_code == 200, response.text[:300]
    return response.content


class _Down:
    """A mail server that cannot be reached."""

    def send(self, mail: Mail) -> None:
        raise MailFailed("connection refused")


def test_a_request_whose_mail_did_not_go_says_so(world: HubWorld, people: TestClient) -> None:
    page = f"/p/preferences/{token_of(world, seed(world))}"
    mailer, world.hub.mailer = world.hub.mailer, _Down()  # type: ignore[assignment]
    failed = iso(world.clock())
    people.post(f"{page}/restrict", data={"lang": "en", "ground": "legal_claims"})
    world.hub.mailer = mailer
    world.clock.advance(minutes=1)
    people.post(f"{page}/restrict", data={"lang": "en", "ground": "legal_claims"})  # asked again: mailed
    view = json.loads(_download(world, people, page, "json"))
    assert _requests(view) == [
        ("restriction", None, failed, "legal_claims", "not_sent", failed, None),
        ("restriction", None, iso(world.clock()), "legal_claims", "pending", None, None),
    ]


P, Q = "pat@example.com", "quinn@example.com"


@pytest.fixture
def moved_address(cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """Pat's and Quinn's contacts synced, then Pat's edited in the CRM to hold Quinn's address and
    synced again (Quinn keeps the address: an address has one holder). Their record ids."""
    with SalesforceSandbox() as sandbox:
        connect_sandbox(sandbox, config_path, monkeypatch)
        pats = sandbox.org.create("Contact", LastName="Pat", Email=P, HasOptedOutOfEmail=False)
        quinns = sandbox.org.create("Contact", LastName="Quinn", Email=Q, HasOptedOutOfEmail=False)
        cli.ok("sync", "sf")
        sandbox.org.update(pats, {"Email": Q})
        cli.ok("sync", "sf")
        yield pats, quinns


def test_another_persons_record_showing_the_address_is_in_the_export(
    moved_address: tuple[str, str], cli: Cli, tmp_path: Path
) -> None:
    pats, quinns = moved_address
    for who in (P, Q):
        for fmt in ("json", "csv", "xlsx"):
            cli.ok("subject", "export", who, "--format", fmt, "-o", str(tmp_path / f"{who}.{fmt}"))
    quinn = json.loads((tmp_path / f"{Q}.json").read_text(encoding="utf-8"))
    (own,) = [r for r in quinn["crm_records"] if r["record_of"] == OWN_RECORD]
    (other,) = [r for r in quinn["crm_records"] if r["record_of"] != OWN_RECORD]
    assert own["record_id"] == quinns and own["status"] == "live"
    # Which record it is, and nothing else of Pat's: no uid, no address, not when it was linked.
    assert other == {
        "connector": "sf",
        "object": "Contact",
        "record_id": pats,
        "record_of": ANOTHER_PERSONS_RECORD,
    }
    pat = json.loads((tmp_path / f"{P}.json").read_text(encoding="utf-8"))
    assert P not in json.dumps(quinn) and pat["subject"] not in json.dumps(quinn)
    # Pat's export lists Pat's own record, never Quinn's.
    assert [(r["record_id"], r["record_of"]) for r in pat["crm_records"]] == [(pats, OWN_RECORD)]
    with (tmp_path / f"{Q}.csv").open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["record_type"] == "crm_record"]
    assert [(row["record_id"], row["record_of"], row["linked_at"]) for row in rows] == [
        (quinns, OWN_RECORD, own["linked_at"]),
        (pats, ANOTHER_PERSONS_RECORD, ""),
    ]
    sheet = load_workbook(tmp_path / f"{Q}.xlsx")["CRM records"]
    header, *records = list(sheet.iter_rows(values_only=True))
    assert header[-1] == "record_of"
    assert [(row[2], row[-1]) for row in records] == [(quinns, OWN_RECORD), (pats, ANOTHER_PERSONS_RECORD)]
    with zipfile.ZipFile(tmp_path / f"{Q}.xlsx") as book:
        assert P.encode() not in b"".join(book.read(name) for name in book.namelist())
