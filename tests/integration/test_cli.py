"""The command line end to end: every command through ``CliRunner``, on SQLite and PostgreSQL.

Each test drives the CLI the way a person or a script would (the ``cli`` fixture passes
``--config`` and has already run ``init``) and checks what it prints, what it exits with and what
the ledger holds afterwards. Bad input must exit 2 with one line naming the problem and what is
accepted, and must change nothing (the audit log is the witness: every write appends to it).
"""

from __future__ import annotations

import csv
import json
import os
import stat
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from openpyxl import load_workbook
from sqlalchemy import inspect, text

from consentsync.cli import main
from consentsync.cli_base import login_name
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, LawfulBasis
from consentsync.ledger.engine import make_engine
from tests.conftest import TEST_ERASURE_KEY, record_args

STARTER_PURPOSES = {"email_marketing", "profiling", "service"}
ALL_STATUSES = [s.value for s in ConsentStatus]
ALL_BASES = [b.value for b in LawfulBasis]
ALL_CHANNELS = ["email", "phone", "sms", "post"]

EXTRA_DM_PURPOSE = """
  - key: sms_offers
    name: SMS offers
    direct_marketing: true
    default_basis: consent
    channels: [sms]
"""


# -- helpers ---------------------------------------------------------------------------------------


def iso_ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat().replace("+00:00", "Z")


# A grant recorded by hand carries its proof and time (docs/admin-commands.md): what the tests
# that record one as setup give it.
PROOF = ("--evidence-ref", "form:signup/1")


def proven(**delta: float) -> tuple[str, ...]:
    return ("--at", iso_ago(**delta), *PROOF)


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def record(cli: Any, email: str, purpose: str, status: str, *extra: str, source: str = "web_form") -> Any:
    return cli.json(*record_args(email, purpose, status, *extra, source=source))


def show(cli: Any, email: str) -> dict[str, Any]:
    return cli.json("subject", "show", email)


def state(view: dict[str, Any], purpose: str, channel: str = "email") -> dict[str, Any]:
    (found,) = [p for p in view["purposes"] if p["purpose"] == purpose and p["channel"] == channel]
    return found


def audit_entries(cli: Any, *extra: str) -> list[dict[str, Any]]:
    """The log's entries; `audit log` leaves out its own reads (``audit.viewed``: each call here
    writes one) unless asked for them."""
    return cli.json("audit", "log", *extra)


def audit_count(cli: Any) -> int:
    return len(audit_entries(cli))


def assert_bad_input(result: Result, *needles: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr that contains every needle."""
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.stdout}{result.stderr}"
    assert result.stdout == ""
    message = result.stderr.strip()
    assert "\n" not in message, f"expected one line, got:\n{message}"
    assert message.startswith("consentsync: error: "), message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def add_dm_purpose(config_path: Path) -> None:
    config_path.write_text(
        config_path.read_text(encoding="utf-8").rstrip("\n") + "\n" + EXTRA_DM_PURPOSE,
        encoding="utf-8",
    )


def dump_database(config_path: Path) -> str:
    """Every row of every table in the ledger, as one lower-cased text."""
    engine = make_engine(load_config(config_path).ledger_url)
    try:
        chunks: list[str] = []
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names()
            assert {"subjects", "subject_identifiers", "audit_entries", "audit_details"} <= set(tables)
            for table in tables:
                for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                    chunks.append(f"{table}: {tuple(row)!r}")
        return "\n".join(chunks).lower()
    finally:
        engine.dispose()


def ledger_purposes(config_path: Path) -> set[str]:
    engine = make_engine(load_config(config_path).ledger_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT key FROM purposes")).scalars())
    finally:
        engine.dispose()


# -- init ------------------------------------------------------------------------------------------


def test_init_writes_config_and_key_then_keeps_them(cli: Any, tmp_path: Path, ledger_url: str) -> None:
    fresh = tmp_path / "fresh" / "consentsync.yaml"
    other = replace(cli, config_path=fresh)
    out = other.ok("init", "--ledger-url", ledger_url).stdout
    key = fresh.parent / "consentsync.key"
    assert f"wrote {fresh}" in out and "0600" in out and "ledger ready at" in out
    assert fresh.is_file() and key.is_file()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_text().strip()) >= 16
    assert f"url: {ledger_url}" in fresh.read_text(encoding="utf-8")
    assert ledger_purposes(fresh) >= STARTER_PURPOSES

    # A second run keeps the file (and the key) as they are.
    fresh.write_text(fresh.read_text(encoding="utf-8") + "# edited by hand\n", encoding="utf-8")
    key_before = key.read_text()
    again = other.ok("init", "--ledger-url", ledger_url).stdout
    assert "exists: keeping it" in again and "ledger ready at" in again
    assert fresh.read_text(encoding="utf-8").endswith("# edited by hand\n")
    assert key.read_text() == key_before
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_init_with_a_ledger_url_it_cannot_use_leaves_nothing_behind(cli: Any, tmp_path: Path) -> None:
    """The config and key it wrote go again when the ledger cannot be made, and a value that is
    no ledger URL is named as --ledger-url; a ledger in memory (gone with the command) is refused."""
    folder = tmp_path / "empty"
    other = replace(cli, config_path=folder / "consentsync.yaml")
    cases = [
        ("foo://bar", "--ledger-url: unknown URL scheme 'foo'"),
        ("sqlite://", "--ledger-url: a SQLite ledger in memory"),
        ("sqlite:///:memory:", "--ledger-url: a SQLite ledger in memory"),
        (f"sqlite:///{tmp_path / 'no-such-folder' / 'x.db'}", "cannot be opened"),
    ]
    if base := os.environ.get("CONSENTSYNC_TEST_POSTGRES_URL"):
        missing = base.rsplit("/", 1)[0] + "/consentsync_no_such_database"
        cases.append((missing, "does not exist on that server"))
    for url, words in cases:
        assert_bad_input(other("init", "--ledger-url", url), words)
        assert not folder.exists() or list(folder.iterdir()) == [], url
    # A URL ending in a colon is one YAML string, not a broken config.
    colon = tmp_path / "x:"
    assert replace(cli, config_path=colon / "consentsync.yaml").ok(
        "init", "--ledger-url", f"sqlite:///{colon}/l:"
    )


def test_init_keeps_a_config_and_never_takes_another_url_for_it(cli: Any, tmp_path: Path) -> None:
    original = cli.config_path.read_bytes()
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    assert_bad_input(cli("init", "--ledger-url", other_url), "exists with another ledger.url", "--force")
    # --force writes a new config; when its ledger cannot be made, the old config stays.
    assert_bad_input(cli("init", "--force", "--ledger-url", f"sqlite:///{tmp_path / 'nope' / 'x.db'}"))
    assert cli.config_path.read_bytes() == original
    assert "ledger ready" in cli.ok("init").stdout


def test_a_command_that_reads_creates_no_ledger(cli: Any) -> None:
    url = load_config(cli.config_path).ledger_url
    if not url.startswith("sqlite"):
        pytest.skip("a SQLite ledger's file")
    database = Path(url.removeprefix("sqlite:///"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    for args in (("status",), ("runs", "list"), ("audit", "verify"), ("subject", "show", "a@example.com")):
        assert_bad_input(cli(*args), f"no ledger at {database}", "consentsync init")
        assert not database.exists(), args
    assert "ledger ready" in cli.ok("init").stdout and database.exists()


def test_init_registers_starter_purposes_once(cli: Any) -> None:
    assert ledger_purposes(cli.config_path) == STARTER_PURPOSES
    configured = audit_entries(cli, "--action", "purpose.configured")
    assert sorted(e["what"]["purpose"] for e in configured) == sorted(STARTER_PURPOSES)
    count = audit_count(cli)
    assert "exists: keeping it" in cli.ok("init").stdout
    assert audit_count(cli) == count  # nothing re-registered
    # Every starter purpose appears in a subject's effective state.
    record(cli, "p@example.com", "service", "granted", *proven(minutes=1))
    assert {p["purpose"] for p in show(cli, "p@example.com")["purposes"]} == STARTER_PURPOSES


def test_migrate_is_a_no_op_on_an_initialised_ledger(cli: Any) -> None:
    count = audit_count(cli)
    assert cli.ok("migrate").stdout.strip() == "ledger is up to date"
    assert audit_count(cli) == count


# -- ledger record ---------------------------------------------------------------------------------


def test_record_with_every_option(cli: Any) -> None:
    at, doi = iso_ago(days=2), iso_ago(days=1)
    out = record(
        cli,
        "  Ada@Example.COM ",
        "email_marketing",
        "granted",
        "--basis",
        "consent",
        "--channel",
        "email",
        "--at",
        at,
        "--actor",
        "ops-alice",
        "--notice-version",
        "privacy-v7",
        "--double-opt-in-at",
        doi,
        "--evidence-ref",
        "form-4711",
    )
    assert set(out) == {"subject", "duplicate", "before", "after"}
    assert out["duplicate"] is False and isinstance(out["subject"], str)
    state_keys = {"purpose", "channel", "status", "basis", "suppressed", "rule", "since", "expires_at"}
    assert state_keys <= set(out["before"]) and state_keys <= set(out["after"])
    assert out["before"]["status"] == "applicable"
    assert out["before"]["suppressed"] is True
    assert out["before"]["rule"] == "no_consent_on_record"
    after = out["after"]
    assert (after["purpose"], after["channel"], after["status"], after["basis"]) == (
        "email_marketing",
        "email",
        "granted",
        "consent",
    )
    assert after["suppressed"] is False and after["rule"] == "latest_event_time"
    assert parse_iso(after["since"]) == parse_iso(at)
    assert parse_iso(after["expires_at"]) == parse_iso(at) + timedelta(days=730)
    assert after["evidenced"] is True

    view = show(cli, "ada@example.com")  # the address was normalised
    assert view["email"] == "ada@example.com" and view["subject"] == out["subject"]
    (event,) = view["history"]
    assert event["purpose"] == "email_marketing" and event["channel"] == "email"
    assert event["status"] == "granted" and event["basis"] == "consent"
    assert event["source"] == "web_form" and event["origin"] == "capture"
    assert event["actor"] == "ops-alice" and event["notice_version"] == "privacy-v7"
    assert event["evidence_ref"] == "form-4711"
    assert parse_iso(event["event_time"]) == parse_iso(at)
    assert parse_iso(event["double_opt_in_at"]) == parse_iso(doi)


def test_record_other_channel_and_basis_human_output(cli: Any) -> None:
    extra = ("--basis", "legitimate_interests", "--channel", "SMS", *proven(minutes=1))
    result = cli.ok(*record_args("bo@example.com", "service", "granted", *extra, source="phone"))
    assert result.stdout.strip() == (
        "recorded granted for service/sms: not_applicable -> granted, basis legitimate_interests, "
        "suppressed no (rule latest_event_time)"
    )
    view = show(cli, "bo@example.com")
    assert state(view, "service", "sms")["basis"] == "legitimate_interests"
    assert state(view, "service", "email")["basis"] == "contract"  # other channels untouched


def test_record_replay_is_reported_and_not_recorded_twice(cli: Any) -> None:
    args = ("--at", iso_ago(days=3), "--evidence-ref", "form-1", "--actor", "ops-bob")
    first = record(cli, "rep@example.com", "email_marketing", "granted", *args)
    count = audit_count(cli)
    second = record(cli, "REP@example.com", "email_marketing", "granted", *args)
    assert second == {"subject": first["subject"], "duplicate": True, "before": None, "after": None}
    human = cli.ok(*record_args("rep@example.com", "email_marketing", "granted", *args))
    assert "already recorded" in human.stdout and "nothing changed" in human.stdout
    assert audit_count(cli) == count
    assert len(show(cli, "rep@example.com")["history"]) == 1
    recorded = audit_entries(cli, "--email", "rep@example.com", "--action", "consent.recorded")
    assert len(recorded) == 1


# -- ledger expire / requested ---------------------------------------------------------------------


def test_expire_grant_past_its_validity(cli: Any) -> None:
    record(cli, "old@example.com", "email_marketing", "granted", "--at", "2020-01-01T00:00:00Z", *PROOF)
    em = state(show(cli, "old@example.com"), "email_marketing")
    assert (em["status"], em["suppressed"], em["rule"]) == ("expired", True, "validity_expired")

    assert cli.json("ledger", "expire") == {"expired": 1}
    view = show(cli, "old@example.com")
    em = state(view, "email_marketing")
    assert (em["status"], em["suppressed"], em["rule"]) == ("expired", True, "validity_expired")
    expired = [e for e in view["history"] if e["status"] == "expired"]
    assert len(expired) == 1
    assert expired[0]["source"] == "consentsync:expiry" and expired[0]["origin"] == "system"
    assert parse_iso(expired[0]["event_time"]) == datetime(2021, 12, 31, tzinfo=UTC)
    # Running it again finds nothing more to expire.
    assert "expired 0 consent(s)" in cli.ok("ledger", "expire").stdout


def test_expire_grant_that_lapses_after_it_was_recorded(cli: Any) -> None:
    """The same, for a grant still valid when recorded: its validity runs out a moment later."""
    lapse_at = datetime.now(UTC) + timedelta(seconds=1.5)
    at = (lapse_at - timedelta(days=730)).isoformat().replace("+00:00", "Z")
    out = record(cli, "lapse@example.com", "email_marketing", "granted", "--at", at, *PROOF)
    assert out["after"]["status"] == "granted", "recording took too long for this test"
    time.sleep(max(0.0, (lapse_at - datetime.now(UTC)).total_seconds()) + 0.1)
    assert cli.json("ledger", "expire") == {"expired": 1}
    view = show(cli, "lapse@example.com")
    em = state(view, "email_marketing")
    assert (em["status"], em["suppressed"], em["rule"]) == ("expired", True, "validity_expired")
    assert [e["source"] for e in view["history"]] == ["web_form", "consentsync:expiry"]
    assert cli.json("ledger", "expire") == {"expired": 0}


def test_requested_older_than(cli: Any) -> None:
    old = record(cli, "waiting@example.com", "profiling", "requested", "--at", "2026-01-01T00:00:00Z")
    fresh = record(cli, "new@example.com", "profiling", "requested")
    record(cli, "answered@example.com", "profiling", "requested", "--at", "2026-01-01T00:00:00Z")
    record(cli, "answered@example.com", "profiling", "granted", *proven(days=1))

    rows = cli.json("ledger", "requested", "--older-than", "30")
    assert rows == [
        {
            "subject": old["subject"],
            "email": "waiting@example.com",
            "purpose": "profiling",
            "channel": "email",
            "requested_since": "2026-01-01T00:00:00Z",
        }
    ]
    assert cli.json("ledger", "requested") == rows  # default: policy.requested_stale_after_days = 30
    everything = cli.json("ledger", "requested", "--older-than", "0")
    assert [r["subject"] for r in everything] == [old["subject"], fresh["subject"]]
    assert cli.json("ledger", "requested", "--older-than", "100000") == []
    human = cli.ok("ledger", "requested", "--older-than", "30").stdout
    assert "more than 30 day(s)" in human and "waiting@example.com" in human
    assert "new@example.com" not in human and "answered@example.com" not in human


# -- objections ------------------------------------------------------------------------------------


def test_objection_to_profiling_waits_for_review(cli: Any) -> None:
    result = cli.json("objection", "raise", "--email", "pro@example.com", "--purpose", "profiling")
    assert result["status"] == "pending" and result["decided_by"] is None
    assert result["purpose"] == "profiling" and result["direct_marketing"] is False
    view = show(cli, "pro@example.com")
    for channel in ALL_CHANNELS:
        prof = state(view, "profiling", channel)
        assert (prof["suppressed"], prof["rule"]) == (True, "objection_pending_review")
    assert state(view, "service")["suppressed"] is False
    human = cli.ok("objection", "raise", "--email", "pro2@example.com", "--purpose", "profiling")
    assert "pending review" in human.stdout


@pytest.mark.parametrize("how", ["email_marketing", "--direct-marketing"])
def test_direct_marketing_objection_is_upheld_at_once_everywhere(
    cli: Any, config_path: Path, how: str
) -> None:
    add_dm_purpose(config_path)
    email = "dm@example.com"
    record(cli, email, "email_marketing", "granted", *proven(days=5))
    record(cli, email, "sms_offers", "granted", "--channel", "sms", *proven(days=5))
    assert state(show(cli, email), "sms_offers", "sms")["suppressed"] is False

    purpose_args = (
        ("--purpose", "email_marketing")
        if how == "email_marketing"
        # Profiling said to be for direct marketing (legitimate interests: objectable; a contract
        # purpose is not, ``test_objection_to_a_contract_is_refused_and_records_nothing``).
        else (
            "--purpose",
            "profiling",
            "--direct-marketing",
        )
    )
    result = cli.json("objection", "raise", "--email", email, *purpose_args)
    assert result["status"] == "upheld" and result["direct_marketing"] is True
    assert result["decided_by"] == "policy:art21(2)_direct_marketing"
    view = show(cli, email)
    for purpose, channel in (("email_marketing", "email"), ("sms_offers", "sms")):
        st = state(view, purpose, channel)
        assert (st["suppressed"], st["rule"]) == (True, "objection_direct_marketing"), st
    # The purposes that serve no direct marketing go on, but the one objected to.
    if how == "email_marketing":
        assert state(view, "profiling")["suppressed"] is False
    else:
        prof = state(view, "profiling")
        assert (prof["suppressed"], prof["rule"]) == (True, "objection_direct_marketing"), prof
    assert state(view, "service")["suppressed"] is False
    assert cli.json("objection", "list", "--pending") == []


def test_objection_to_a_contract_is_refused_and_records_nothing(cli: Any) -> None:
    """A contract gives no right to object (Art. 21 covers legitimate interests, a public task and
    direct marketing): before, the objection was upheld at once and the contract's service
    messages stopped. Refused: exit 2, one line, nothing recorded, for a known person or not."""
    email = "svc@example.com"
    record(cli, email, "email_marketing", "granted", *proven(days=5))
    entries = audit_count(cli)
    for who in (email, "svc2@example.com"):
        refused = cli("objection", "raise", "--email", who, "--purpose", "service")
        message = assert_bad_input(
            refused,
            "purpose 'service' cannot be objected to: it rests on contract for this person",
            "contract gives no right to object",
            "nothing was recorded",
        )
        assert who not in message  # the line names no one: it may end up in a log
    assert cli.json("objection", "list") == []
    assert audit_count(cli) == entries
    assert_bad_input(cli("subject", "show", "svc2@example.com"), "no subject")  # nobody was made
    view = show(cli, email)
    for channel in ALL_CHANNELS:
        svc = state(view, "service", channel)
        assert (svc["suppressed"], svc["rule"]) == (False, "purpose_default_basis")
    em = state(view, "email_marketing")
    assert (em["suppressed"], em["rule"]) == (False, "latest_event_time")


def test_objection_where_a_contract_purpose_rests_on_legitimate_interests_is_auto_upheld(cli: Any) -> None:
    """The same purpose, recorded on legitimate interests for this person: objectable (Art.
    21(1)), decided by its configuration (policy.objection_handling: auto_uphold)."""
    email = "svc@example.com"
    record(cli, email, "email_marketing", "granted", *proven(days=5))
    for channel in ALL_CHANNELS:
        record(
            cli, email, "service", "not_applicable", "--channel", channel, "--basis", "legitimate_interests"
        )
    result = cli.json("objection", "raise", "--email", email, "--purpose", "service")
    assert result["status"] == "upheld" and result["decided_by"] == "policy:auto_uphold"
    assert result["direct_marketing"] is False
    view = show(cli, email)
    for channel in ALL_CHANNELS:
        svc = state(view, "service", channel)
        assert (svc["suppressed"], svc["rule"]) == (True, "objection_upheld")
    em = state(view, "email_marketing")
    assert (em["suppressed"], em["rule"]) == (False, "latest_event_time")
    assert state(view, "profiling")["suppressed"] is False
    record(cli, "svc2@example.com", "service", "not_applicable", "--basis", "legitimate_interests")
    human = cli.ok("objection", "raise", "--email", "svc2@example.com", "--purpose", "service")
    assert "upheld (policy:auto_uphold)" in human.stdout


def test_objection_list_pending_first_then_oldest(cli: Any) -> None:
    upheld = cli.json(
        "objection",
        "raise",
        "--email",
        "a@example.com",
        "--purpose",
        "email_marketing",
        "--at",
        "2026-01-01T00:00:00Z",
    )
    newer = cli.json(
        "objection",
        "raise",
        "--email",
        "b@example.com",
        "--purpose",
        "profiling",
        "--at",
        "2026-03-01T00:00:00Z",
    )
    older = cli.json(
        "objection",
        "raise",
        "--email",
        "c@example.com",
        "--purpose",
        "profiling",
        "--at",
        "2026-02-01T01:00:00+01:00",
        "--source",
        "letter",
    )
    rows = cli.json("objection", "list")
    assert [r["id"] for r in rows] == [older["id"], newer["id"], upheld["id"]]
    first = rows[0]
    assert first["email"] == "c@example.com" and first["purpose"] == "profiling"
    assert first["status"] == "pending" and first["source"] == "letter"
    assert first["raised_at"] == "2026-02-01T00:00:00Z" and first["direct_marketing"] is False
    # Direct marketing (auto_uphold too): upheld at once, whatever the configuration says.
    assert rows[2]["status"] == "upheld" and rows[2]["decided_by"] == "policy:art21(2)_direct_marketing"
    assert [r["id"] for r in cli.json("objection", "list", "--pending")] == [older["id"], newer["id"]]
    human = cli.ok("objection", "list", "--pending").stdout.splitlines()
    assert human[0].split()[:3] == ["ID", "EMAIL", "PURPOSE"]
    assert "c@example.com" in human[1] and "b@example.com" in human[2] and len(human) == 3


def test_objection_decide_reject_and_uphold(cli: Any) -> None:
    rejected = cli.json("objection", "raise", "--email", "r@example.com", "--purpose", "profiling")
    upheld = cli.json("objection", "raise", "--email", "u@example.com", "--purpose", "profiling")

    result = cli.json(
        "objection",
        "decide",
        str(rejected["id"]),
        "--reject",
        "--by",
        "dpo",
        "--reason",
        "compelling grounds",
    )
    assert result == {
        "id": rejected["id"],
        "status": "rejected",
        "decided_by": "dpo",
        "subject": rejected["subject"],
    }
    prof = state(show(cli, "r@example.com"), "profiling")
    assert (prof["suppressed"], prof["rule"]) == (False, "purpose_default_basis")

    human = cli.ok(
        "objection",
        "decide",
        str(upheld["id"]),
        "--uphold",
        "--by",
        "dpo",
        "--reason",
        "no overriding grounds",
    )
    assert f"objection {upheld['id']} upheld by dpo" in human.stdout
    prof = state(show(cli, "u@example.com"), "profiling")
    assert (prof["suppressed"], prof["rule"]) == (True, "objection_upheld")

    decided = audit_entries(cli, "--action", "objection.decided")
    assert [(e["new"], e["actor"], e["details"]["reason"]) for e in decided] == [
        ("rejected", "dpo", "compelling grounds"),
        ("upheld", "dpo", "no overriding grounds"),
    ]
    assert cli.json("objection", "list", "--pending") == []


def test_objection_decide_twice_or_without_decision_fails(cli: Any) -> None:
    raised = cli.json("objection", "raise", "--email", "t@example.com", "--purpose", "profiling")
    oid = str(raised["id"])
    count = audit_count(cli)
    assert_bad_input(cli("objection", "decide", oid, "--by", "dpo", "--reason", "x"), "--uphold", "--reject")
    assert audit_count(cli) == count
    # Both: refused, whichever comes last (click alone kept the last one and decided).
    for both in (("--uphold", "--reject"), ("--reject", "--uphold")):
        assert_bad_input(cli("objection", "decide", oid, *both, "--by", "dpo", "--reason", "x"), "not both")
    assert audit_count(cli) == count
    assert cli.json("objection", "list", "--pending")[0]["id"] == raised["id"]

    cli.ok("objection", "decide", oid, "--uphold", "--by", "dpo", "--reason", "ok")
    count = audit_count(cli)
    message = assert_bad_input(
        cli("objection", "decide", oid, "--reject", "--by", "dpo", "--reason", "changed my mind"),
        f"objection {oid}",
        "already upheld",
    )
    assert "pending" in message
    assert audit_count(cli) == count
    prof = state(show(cli, "t@example.com"), "profiling")
    assert (prof["suppressed"], prof["rule"]) == (True, "objection_upheld")


# -- erasure ---------------------------------------------------------------------------------------


def test_erase_leaves_only_a_keyed_hash(cli: Any) -> None:
    email = "erase.me@example.org"
    record(cli, email, "email_marketing", "granted", "--at", iso_ago(days=10), "--evidence-ref", "f-9")
    record(cli, email, "service", "granted", "--channel", "post", *proven(days=10))
    raised = cli.json("objection", "raise", "--email", email, "--purpose", "profiling")
    cli.ok(
        "objection",
        "decide",
        str(raised["id"]),
        "--uphold",
        "--by",
        "dpo",
        "--reason",
        f"objection sent from {email}",
    )
    uid = show(cli, email)["subject"]
    before = audit_entries(cli, "--email", email)
    assert before and {e["subject"] for e in before} == {uid}
    assert email in dump_database(cli.config_path)  # the check below can see the address

    result = cli.json("erase", "--email", f"  {email.upper()} ", "--reason", "art17 request", "--yes")
    assert result["subject"] == uid and result["subject_known"] is True
    assert isinstance(result["suppression_id"], int) and result["audit_details_erased"] >= 1

    # Nothing in any table holds the address any more.
    assert email not in dump_database(cli.config_path)

    # The subject is gone for lookups, and says so.
    assert_bad_input(cli("subject", "show", email), "erased")
    # The audit log still finds the erased subject's entries by the keyed hash, and verifies.
    after = audit_entries(cli, "--email", email)
    assert [e["seq"] for e in after[: len(before)]] == [e["seq"] for e in before]
    assert {e["subject"] for e in after} == {uid}
    assert "subject.erased" in [e["action"] for e in after]
    assert email not in json.dumps(after).lower()
    verified = cli.json("audit", "verify")
    assert verified["ok"] is True and verified["broken_seq"] is None

    # A grant for the address (any case, any whitespace) that cannot lift the erasure (proven,
    # but not dated after it) is refused: the address is not stored again (session 57).
    for spelling in (email, f"\t{email.upper()}  "):
        refused = cli(*record_args(spelling, "email_marketing", "granted", *proven(days=1)))
        message = assert_bad_input(refused, "the address was erased")
        assert email not in message.lower()
    assert email not in dump_database(cli.config_path)
    # The person comes back with an evidenced consent dated after the erasure: a new subject.
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    out = record(cli, email, "email_marketing", "granted", "--at", later, "--notice-version", "v1")
    assert out["subject"] != uid
    assert (out["after"]["suppressed"], out["after"]["status"]) == (False, "granted")
    view = show(cli, email)
    assert view["suppressed_by_erasure"] is True
    human = cli.ok("subject", "show", email).stdout
    assert "this address was erased before" in human
    assert cli.json("audit", "verify")["ok"] is True


def test_erase_unknown_address_still_suppresses(cli: Any) -> None:
    out = cli.ok("erase", "--email", "never@example.com", "--reason", "do not contact", "--yes").stdout
    assert "no subject held that address; suppression entry 1 recorded" in out
    # Asked again: the entry there is kept, and the output does not claim a new one.
    again = cli.ok("erase", "--email", "Never@Example.com", "--reason", "asked again", "--yes").stdout
    assert "it was erased before: suppression entry 1 stays" in again
    # Who asked is on record: the login name, --actor not given.
    erased = audit_entries(cli, "--action", "subject.erased")
    assert [entry["actor"] for entry in erased] == [login_name()] * 2
    assert "never@example.com" not in dump_database(cli.config_path)
    # A grant that cannot lift the erasure is refused, the address never stored (session 57).
    dated_before = proven(days=1)  # than the erasure: proven, yet it cannot lift it
    refused = cli(*record_args("never@example.com", "service", "granted", *dated_before))
    assert_bad_input(refused, "the address was erased")
    assert "never@example.com" not in dump_database(cli.config_path)


# -- subject show / export -------------------------------------------------------------------------


def test_subject_show_json_and_human(cli: Any) -> None:
    email = "show@example.com"
    record(cli, email, "email_marketing", "granted", *proven(days=1), "--actor", "ops-eve")
    record(cli, email, "service", "withdrawn", "--channel", "phone", "--at", iso_ago(hours=1))
    view = show(cli, email)
    assert {
        "subject",
        "email",
        "created_at",
        "suppressed_by_erasure",
        "restricted",
        "as_of",
        "purposes",
        "history",
        "objections",
        "crm_records",
    } <= set(view)
    assert isinstance(view["purposes"], list)
    expected_pairs = [("email_marketing", "email")] + [
        (p, c) for p in ("profiling", "service") for c in ALL_CHANNELS
    ]
    assert [(p["purpose"], p["channel"]) for p in view["purposes"]] == expected_pairs
    for item in view["purposes"]:
        assert isinstance(item, dict)
        assert {"purpose", "channel", "status", "basis", "suppressed", "rule"} <= set(item)
        assert isinstance(item["suppressed"], bool)
        assert item["status"] in ALL_STATUSES and item["basis"] in ALL_BASES
    assert state(view, "email_marketing") | {"since": None, "expires_at": None, "detail": ""} == {
        "purpose": "email_marketing",
        "channel": "email",
        "status": "granted",
        "basis": "consent",
        "suppressed": False,
        "rule": "latest_event_time",
        "since": None,
        "expires_at": None,
        "evidenced": True,
        "detail": "",
    }
    phone = state(view, "service", "phone")
    assert (phone["status"], phone["suppressed"], phone["rule"]) == ("withdrawn", True, "sticky_withdrawal")
    prof = state(view, "profiling", "post")
    assert (prof["status"], prof["basis"], prof["suppressed"], prof["rule"]) == (
        "not_applicable",
        "legitimate_interests",
        False,
        "purpose_default_basis",
    )
    assert len(view["history"]) == 2 and view["objections"] == [] and view["crm_records"] == []

    human = cli.ok("subject", "show", email).stdout
    assert email in human and view["subject"] in human
    for rule in ("latest_event_time", "sticky_withdrawal", "purpose_default_basis"):
        assert rule in human
    assert "effective state:" in human and "history:" in human and "ops-eve" in human


def test_subject_export_json_csv_xlsx(cli: Any, tmp_path: Path) -> None:
    email = "export@example.com"
    formula = '=HYPERLINK("http://evil.example","x")'
    record(
        cli,
        email,
        "email_marketing",
        "granted",
        "--at",
        iso_ago(days=3),
        "--notice-version",
        "v2",
        "--evidence-ref",
        formula,
    )
    cli.json("objection", "raise", "--email", email, "--purpose", "profiling")
    uid = show(cli, email)["subject"]

    as_json = tmp_path / "out.json"
    written = cli.ok("subject", "export", email, "--format", "json", "-o", str(as_json)).stdout
    assert f"wrote {as_json}" in written
    data = json.loads(as_json.read_text(encoding="utf-8"))
    assert data["subject"] == uid and data["email"] == email
    assert data["history"][0]["evidence_ref"] == formula  # JSON keeps the value as it is
    assert state(data, "profiling")["rule"] == "objection_pending_review"

    as_csv = tmp_path / "out.csv"
    cli.ok("subject", "export", email, "--format", "csv", "--output", str(as_csv))
    with as_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # the objection is a request of the person's too (the Requests part)
    assert {r["record_type"] for r in rows} == {"state", "event", "objection", "identifier", "request"}
    assert {r["subject"] for r in rows} == {uid}
    (event,) = [r for r in rows if r["record_type"] == "event"]
    assert event["evidence_ref"] == "'" + formula and event["notice_version"] == "v2"
    assert not any(v.startswith(("=", "+", "-", "@")) for r in rows for v in r.values() if v)
    em = next(r for r in rows if r["record_type"] == "state" and r["purpose"] == "email_marketing")
    assert em["status"] == "granted" and em["rule"] == "latest_event_time"

    as_xlsx = tmp_path / "out.xlsx"
    cli.ok("subject", "export", email, "--format", "xlsx", "-o", str(as_xlsx))
    book = load_workbook(as_xlsx)
    assert book.sheetnames == [
        "Subject",
        "Effective state",
        "History",
        "Objections",
        "CRM records",
        "Restrictions",
        "Identifiers",
        "Requests",
    ]
    summary = {row[0]: row[1] for row in book["Subject"].iter_rows(values_only=True)}
    assert summary["subject"] == uid and summary["email"] == email
    history = list(book["History"].iter_rows(values_only=True))
    header, (first,) = history[0], history[1:]
    assert first[header.index("evidence_ref")] == formula  # as held: a string cell, not a formula
    assert first[header.index("status")] == "granted"
    cell = book["History"].cell(row=2, column=header.index("evidence_ref") + 1)
    assert cell.data_type == "s"  # text, not a formula
    objections = list(book["Objections"].iter_rows(values_only=True))
    assert objections[1][objections[0].index("status")] == "pending"
    book.close()


def test_subject_export_rejects_unknown_format(cli: Any, tmp_path: Path) -> None:
    record(cli, "fmt@example.com", "service", "granted", *proven(minutes=1))
    result = cli("subject", "export", "fmt@example.com", "--format", "pdf", "-o", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "json" in result.stderr and "csv" in result.stderr and "xlsx" in result.stderr
    assert not (tmp_path / "x").exists()


# -- audit -----------------------------------------------------------------------------------------


def test_audit_log_filters_and_verify(cli: Any) -> None:
    record(cli, "one@example.com", "email_marketing", "granted", *proven(days=1))
    record(cli, "two@example.com", "service", "withdrawn", "--actor", "ops-zed")
    entries = audit_entries(cli)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    for entry in entries:
        assert {
            "seq",
            "at",
            "action",
            "subject",
            "what",
            "old",
            "new",
            "rule",
            "source",
            "actor",
            "hash",
        } <= set(entry)

    one = audit_entries(cli, "--email", " ONE@example.com")
    assert [e["action"] for e in one] == ["subject.created", "consent.recorded"]
    assert one[1]["what"]["purpose"] == "email_marketing" and one[1]["rule"] == "latest_event_time"
    two = audit_entries(cli, "--email", "two@example.com")
    assert two[-1]["actor"] == "ops-zed" and two[-1]["new"]["status"] == "withdrawn"
    assert {e["subject"] for e in one}.isdisjoint({e["subject"] for e in two})
    # Each person's trail read is written down (Art. 30), after it is printed.
    read = audit_entries(cli)
    assert [(e["action"], e["subject"]) for e in read[len(entries) :]] == [
        ("subject.viewed", one[0]["subject"]),
        ("subject.viewed", two[0]["subject"]),
    ]
    entries = read

    assert audit_entries(cli, "--since", "2000-01-01") == entries
    assert audit_entries(cli, "--since", "2999-01-01T00:00:00Z") == []
    pivot = entries[-1]["at"]
    since = audit_entries(cli, "--since", pivot)
    assert [e["seq"] for e in since] == [e["seq"] for e in entries if parse_iso(e["at"]) >= parse_iso(pivot)]
    assert since and since[-1]["seq"] == entries[-1]["seq"] and len(since) < len(entries)
    assert audit_entries(cli, "--email", "one@example.com", "--since", "2999-01-01") == []
    assert audit_entries(cli, "--limit", "2") == entries[:2]

    human = cli.ok("audit", "log", "--email", "two@example.com").stdout
    assert "consent.recorded" in human and "ops-zed" in human and "withdrawn (suppressed)" in human
    entries = audit_entries(cli)  # and this read of two's trail
    # Every entry, the log's own reads too (audit.viewed: this one's is written after it); the
    # listing leaves them out, verify counts them all.
    assert "audit.viewed" not in {entry["action"] for entry in cli.json("audit", "log")}
    logged = len(cli.json("audit", "log", "--include-views")) + 1

    verify = cli.ok("audit", "verify")
    assert f"audit chain verified: {logged} entries, head at {logged}" in verify.stdout
    verified = cli.json("audit", "verify")
    assert {key: verified[key] for key in ("ok", "entries_checked", "head_seq", "broken_seq", "problem")} == {
        "ok": True,
        "entries_checked": logged,
        "head_seq": logged,
        "broken_seq": None,
        "problem": None,
    }
    assert verified["events"]["ok"] and verified["checkpoints"] is None


# -- --config and CONSENTSYNC_CONFIG ---------------------------------------------------------------


def test_config_option_before_or_after_command_and_env(cli: Any, tmp_path: Path) -> None:
    path = str(cli.config_path)
    runner = cli.runner
    email = "cfg@example.com"
    after = runner.invoke(
        main,
        [*record_args(email, "service", "granted", *proven(minutes=1), "--config", path, source="phone")],
    )
    assert after.exit_code == 0, after.stderr
    shown = runner.invoke(main, ["subject", "show", email, "--json", "--config", path])
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["history"][0]["source"] == "phone"
    before = runner.invoke(main, ["--config", path, "subject", "show", email, "--json"])
    assert json.loads(before.stdout)["subject"] == json.loads(shown.stdout)["subject"]
    assert runner.invoke(main, ["init", "--config", path]).exit_code == 0
    assert runner.invoke(main, ["audit", "verify", "--config", path]).exit_code == 0

    env = {"CONSENTSYNC_CONFIG": path}
    by_env = runner.invoke(main, ["subject", "show", email, "--json"], env=env)
    assert by_env.exit_code == 0, by_env.stderr
    assert json.loads(by_env.stdout)["subject"] == json.loads(shown.stdout)["subject"]
    assert runner.invoke(main, ["audit", "verify"], env=env).exit_code == 0
    # An explicit --config wins over the environment.
    missing = {"CONSENTSYNC_CONFIG": str(tmp_path / "nowhere.yaml")}
    assert runner.invoke(main, ["subject", "show", email, "--config", path], env=missing).exit_code == 0
    unset = runner.invoke(main, ["subject", "show", email], env=missing)
    assert_bad_input(unset, "nowhere.yaml", "not found")


# -- bad input -------------------------------------------------------------------------------------

GOOD = {"--email": "bad@example.com", "--purpose": "email_marketing", "--status": "granted"}


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        pytest.param(
            {"--purpose": "newsletter"},
            ["unknown purpose 'newsletter'", "email_marketing, profiling, service"],
            id="purpose",
        ),
        pytest.param({"--status": "maybe"}, ["unknown status 'maybe'", ", ".join(ALL_STATUSES)], id="status"),
        pytest.param(
            {"--basis": "because"}, ["unknown lawful basis 'because'", ", ".join(ALL_BASES)], id="basis"
        ),
        pytest.param(
            {"--channel": "sms"},
            ["channel 'sms'", "purpose 'email_marketing'", "accepted are email"],
            id="channel",
        ),
        pytest.param({"--email": "not-an-address"}, ["malformed email address 'not-an-address'"], id="email"),
        pytest.param({"--at": "yesterday"}, ["malformed --at 'yesterday'", "ISO 8601"], id="at"),
        pytest.param(
            {"--double-opt-in-at": "31/12/2025"},
            ["malformed --double-opt-in-at '31/12/2025'", "ISO 8601"],
            id="double-opt-in-at",
        ),
    ],
)
def test_record_bad_input_changes_nothing(cli: Any, change: dict[str, str], needles: list[str]) -> None:
    count = audit_count(cli)
    options = {**GOOD, **change}
    args = [part for pair in options.items() for part in pair]
    assert_bad_input(cli("ledger", "record", *args, "--source", "web_form"), *needles)
    assert audit_count(cli) == count
    assert_bad_input(cli("subject", "show", "bad@example.com"), "no subject")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        pytest.param(
            ["objection", "raise", "--email", "o@example.com", "--purpose", "nope"],
            ["unknown purpose 'nope'", "email_marketing, profiling, service"],
            id="objection-purpose",
        ),
        pytest.param(
            ["objection", "raise", "--email", "o@example", "--purpose", "profiling"],
            ["malformed email address 'o@example'"],
            id="objection-email",
        ),
        pytest.param(
            ["objection", "raise", "--email", "o@example.com", "--purpose", "profiling", "--at", "soon"],
            ["malformed --at 'soon'", "ISO 8601"],
            id="objection-at",
        ),
        pytest.param(
            ["objection", "decide", "4242", "--uphold", "--by", "dpo", "--reason", "x"],
            ["no objection with id 4242"],
            id="objection-id",
        ),
        pytest.param(
            ["erase", "--email", "@@", "--reason", "x", "--yes"], ["malformed email"], id="erase-email"
        ),
        pytest.param(
            ["erase", "--email", "keep@example.com", "--reason", "  ", "--yes"],
            ["--reason"],
            id="erase-reason",
        ),
        pytest.param(
            ["objection", "decide", "1", "--uphold", "--by", " ", "--reason", "x"], ["--by"], id="decide-by"
        ),
        pytest.param(
            ["objection", "decide", "1", "--reject", "--by", "dpo", "--reason", ""],
            ["--reason"],
            id="decide-reason",
        ),
        pytest.param(
            [*record_args("keep@example.com", "service", "granted", source=" ")],
            ["--source"],
            id="record-source",
        ),
        pytest.param(["audit", "log", "--since", "last week"], ["malformed --since"], id="audit-since"),
        pytest.param(
            ["subject", "show", "nobody@example.com"], ["no subject", "nobody@example.com"], id="subject"
        ),
    ],
)
def test_other_bad_input_changes_nothing(cli: Any, args: list[str], needles: list[str]) -> None:
    cli.json("objection", "raise", "--email", "keep@example.com", "--purpose", "profiling")
    count = audit_count(cli)
    assert_bad_input(cli(*args), *needles)
    assert audit_count(cli) == count
    assert [(o["email"], o["status"]) for o in cli.json("objection", "list")] == [
        ("keep@example.com", "pending")
    ]
    assert show(cli, "keep@example.com")["history"] == []


@pytest.mark.parametrize(
    ("after", "line", "needles"),
    [
        pytest.param(
            "version: 1",
            "purpose: []\n",
            ["unknown key 'purpose' in the top level", "accepted are", "purposes"],
            id="top-level",
        ),
        pytest.param(
            "  - key: profiling",
            "    purpose: x\n",
            ["unknown key 'purpose' in purposes[1]", "accepted are channels, default_basis"],
            id="in-a-purpose",
        ),
        pytest.param(
            "  requested_stale_after_days:",
            "  trusted_source: [web_form]\n",
            ["unknown key 'trusted_source' in policy", "accepted are", "trusted_sources"],
            id="in-policy",
        ),
    ],
)
def test_config_with_unknown_key_names_file_and_line(
    cli: Any, after: str, line: str, needles: list[str]
) -> None:
    count = audit_count(cli)
    original = cli.config_path.read_text(encoding="utf-8")
    lines = original.splitlines(keepends=True)
    index = next(i for i, text in enumerate(lines) if text.startswith(after)) + 1
    cli.config_path.write_text("".join([*lines[:index], line, *lines[index:]]), encoding="utf-8")
    for args in (
        record_args("cfgbad@example.com", "service", "granted", source="phone"),
        ("audit", "log"),
    ):
        assert_bad_input(cli(*args), f"{cli.config_path}:{index + 1}: ", *needles)
    # init keeps the existing file (and says so on stdout), then refuses it the same way.
    result = cli("init")
    assert result.exit_code == 2 and "exists: keeping it" in result.stdout
    assert result.stderr.strip() == assert_bad_input(cli("audit", "log"), *needles)
    assert original != cli.config_path.read_text(encoding="utf-8")  # the file was not rewritten
    cli.config_path.write_text(original, encoding="utf-8")
    assert audit_count(cli) == count
    assert_bad_input(cli("subject", "show", "cfgbad@example.com"), "no subject")


def test_missing_config_file(cli: Any, tmp_path: Path) -> None:
    count = audit_count(cli)
    missing = tmp_path / "absent" / "consentsync.yaml"
    other = replace(cli, config_path=missing)
    for args in (
        ("audit", "log"),
        record_args("m@example.com", "service", "granted", source="phone"),
    ):
        assert_bad_input(other(*args), str(missing), "config file not found", "consentsync init")
    assert not missing.exists()
    assert audit_count(cli) == count


def test_erasure_key_file_mode(cli: Any) -> None:
    """The fixture's key (written beside the config) is private too."""
    key = cli.config_path.parent / "consentsync.key"
    assert key.is_file() and stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_restrict_and_lift(cli: Any, tmp_path: Path) -> None:
    record(cli, "held@example.com", "email_marketing", "granted", *proven(days=1))
    result = cli.json(
        "restrict", "--email", "held@example.com", "--reason", "accuracy contested", "--actor", "dpo.anna"
    )
    assert result["restricted"] is True
    assert all(
        p["suppressed"] and p["rule"] == "restriction_art18"
        for p in show(cli, "held@example.com")["purposes"]
    )
    before = audit_count(cli)
    assert_bad_input(
        cli("restrict", "--email", "held@example.com", "--reason", "again"), "already restricted"
    )
    assert_bad_input(cli("restrict", "--email", "nobody@example.com", "--reason", "x"), "no subject")
    assert audit_count(cli) == before
    # The person's access export (Art. 15) says since when, by whom and why.
    exported = tmp_path / "held.json"
    cli.ok("subject", "export", "held@example.com", "--format", "json", "-o", str(exported))
    view = json.loads(exported.read_text(encoding="utf-8"))
    assert (view["restricted"], view["restricted_by"], view["restriction_reason"]) == (
        True,
        "dpo.anna",
        "accuracy contested",
    )
    assert view["restricted_since"] and [r["change"] for r in view["restrictions"]] == ["placed"]
    cli.ok("restrict", "--email", "held@example.com", "--reason", "resolved", "--lift")
    assert not state(show(cli, "held@example.com"), "email_marketing")["suppressed"]


def test_logs_name_subjects_never_addresses(cli: Any) -> None:
    email = "private.person@example.com"
    streams = []
    for args in (
        record_args(email, "email_marketing", "granted", *proven(minutes=1)),
        ("objection", "raise", "--email", email, "--purpose", "profiling"),
        ("erase", "--email", email, "--reason", "request", "--yes"),
    ):
        result = cli("--log-level", "DEBUG", *args)
        assert result.exit_code == 0, result.output
        streams.append(result.stderr)
    logged = "".join(streams)
    assert "evidence.recorded" in logged and "objection.raised" in logged and "subject.erased" in logged
    assert email not in logged.lower()
    assert TEST_ERASURE_KEY not in logged


def test_outbox_commands_on_an_empty_outbox(cli: Any) -> None:
    assert cli.json("outbox", "list") == []
    assert cli.json("outbox", "list", "--dead") == []
    assert_bad_input(cli("outbox", "retry", "42"), "no dead-lettered outbox row with id 42")
    assert_bad_input(cli("outbox", "retry"), "ids or --all")
    assert "0 row(s)" in cli.ok("outbox", "retry", "--all").stdout


def test_erase_without_a_terminal_needs_yes_and_changes_nothing(cli: Any) -> None:
    cli.ok(
        "ledger", "record", "--email", "stays@example.org", "--purpose", "email_marketing",
        "--status", "granted", "--source", "web_form", *proven(minutes=1),
    )  # fmt: skip
    refused = cli("erase", "--email", "stays@example.org", "--reason", "art17 request")
    assert refused.exit_code == 2
    assert "--yes" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert cli.json("subject", "show", "stays@example.org")["purposes"], "the person was erased anyway"


def test_version_and_a_bad_log_level_are_answered_in_one_line() -> None:
    from importlib.metadata import version

    from click.testing import CliRunner

    from consentsync.cli import main

    runner = CliRunner()
    shown = runner.invoke(main, ["--version"])
    assert shown.exit_code == 0 and shown.output.strip() == f"consentsync {version('consentsync')}"
    bad = runner.invoke(main, ["--log-level", "banana", "status"])
    assert bad.exit_code == 2
    assert "Traceback" not in bad.output
    assert "'banana' is not one of" in bad.output and "warning" in bad.output.lower()
