"""Rules 3 and 8 of issue 12: bad input changes nothing and never crashes, on SQLite and PostgreSQL.

* Event times are bounded by now plus ``policy.max_clock_skew_seconds`` and by 1970: a later or
  earlier time is refused at every input with exit 2 and one line naming the option and what is
  accepted; a time inside the skew is recorded as its observation, so it never outranks a value the
  person gave after it. Dates off the calendar (year 1, year 9999, with offsets) are a one-line
  error, never a traceback.
* Every text value has a documented maximum length, enforced at input: a value of exactly that
  length is stored on both databases, one character more is refused and nothing is written.
* Labels (source, actor, notice version, evidence reference, who decides) with control or format
  characters, or holding an email address, are refused; so is an address with control characters.
* Every export (JSON, CSV, XLSX) opens for any value the ledger accepts: a property over arbitrary
  text, parsed back with json, csv and openpyxl.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import load_workbook

from consentsync import exit_codes
from consentsync.domain import (
    ACTOR_MAX,
    EMAIL_MAX,
    ERASURE_REASON_MAX,
    EVIDENCE_REF_MAX,
    NOTICE_VERSION_MAX,
    REASON_MAX,
    SOURCE_MAX,
    ConsentStatus,
    Evidence,
    InvalidInput,
    Origin,
)
from consentsync.export import write_export
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from tests.conftest import SQLITE_ONLY, Cli, Clock
from tests.integration.helpers import consent_value
from tests.integration.test_cli import PROOF, assert_bad_input, audit_count, iso_ago, proven, record, show


def _iso_ahead(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat().replace("+00:00", "Z")


def _record_args(email: str = "bounds@example.com", **options: str) -> list[str]:
    args = {
        "--email": email,
        "--purpose": "email_marketing",
        "--status": "granted",
        "--source": "web_form",
        # A grant's proof (docs/admin-commands.md): an option under test replaces its own.
        "--at": iso_ago(minutes=1),
        "--evidence-ref": "form:bounds",
        **options,
    }
    return ["ledger", "record", *[part for pair in args.items() for part in pair]]


def _set_policy(config_path: Path, **values: Any) -> None:
    data = yaml.safe_load(config_path.read_text())
    data["policy"].update(values)
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


# -- rule 3: event times bounded by now ------------------------------------------------------------


@pytest.mark.parametrize("option", ["--at", "--double-opt-in-at"])
def test_a_future_event_time_is_refused_and_changes_nothing(cli: Cli, option: str) -> None:
    before = audit_count(cli)
    result = cli(*_record_args(**{option: _iso_ahead(hours=1)}))
    assert_bad_input(result, option, "in the future", "clock skew of 300 s", "max_clock_skew_seconds")
    assert audit_count(cli) == before
    assert_bad_input(cli("subject", "show", "bounds@example.com"), "no subject")


def test_an_objection_dated_in_the_future_is_refused(cli: Cli) -> None:
    record(cli, "objector@example.com", "email_marketing", "granted", *proven(days=1))
    before = audit_count(cli)
    result = cli(
        "objection", "raise", "--email", "objector@example.com", "--purpose", "profiling",
        "--at", _iso_ahead(days=2),
    )  # fmt: skip
    assert_bad_input(result, "--at", "in the future")
    assert audit_count(cli) == before
    assert cli.json("objection", "list") == []


@SQLITE_ONLY  # refused before any transaction: the same code on both databases
@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-05:00",  # off the calendar once in UTC
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+05:00",  # off the calendar once in UTC
        "1969-12-31T23:59:59Z",
        "2200-01-01",
    ],
)
@pytest.mark.parametrize("option", ["--at", "--double-opt-in-at"])
def test_dates_outside_a_sane_range_are_one_line_errors(cli: Cli, option: str, value: str) -> None:
    before = audit_count(cli)
    assert_bad_input(cli(*_record_args(**{option: value})), option)
    assert audit_count(cli) == before


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00", "0001-01-01"])
def test_edge_of_the_calendar_everywhere_a_time_is_read(cli: Cli, value: str) -> None:
    record(cli, "edge@example.com", "email_marketing", "granted", *proven(days=1))
    assert_bad_input(
        cli("objection", "raise", "--email", "edge@example.com", "--purpose", "profiling", "--at", value),
        "--at",
    )
    # A query bound is no event time: any date on the calendar is a valid bound, none crashes.
    result = cli("audit", "log", "--since", value, "--json")
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert_bad_input(result, "--since")


def test_a_time_inside_the_skew_is_recorded_as_stated_and_a_grant_counts_from_its_observation(
    cli: Cli,
) -> None:
    """Clocks disagree a little: two minutes ahead is accepted and kept as stated (what the sender
    said, Art. 7(1)), but the act cannot have happened after consentsync learned of it, so a
    withdrawal given just after it still wins."""
    ahead = _iso_ahead(minutes=2)
    granted = record(
        cli, "skew@example.com", "email_marketing", "granted", "--at", ahead, "--evidence-ref", "form-1"
    )
    assert granted["after"]["status"] == "granted"
    (event,) = show(cli, "skew@example.com")["history"]
    assert event["event_time"] > event["recorded_at"]  # as stated
    withdrawn = record(cli, "skew@example.com", "email_marketing", "withdrawn", "--at", iso_ago(seconds=0))
    assert (withdrawn["after"]["status"], withdrawn["after"]["suppressed"]) == ("withdrawn", True)


def test_the_clock_skew_is_configurable(cli: Cli) -> None:
    _set_policy(cli.config_path, max_clock_skew_seconds=0)
    assert_bad_input(cli(*_record_args(**{"--at": _iso_ahead(minutes=1)})), "--at", "clock skew of 0 s")
    _set_policy(cli.config_path, max_clock_skew_seconds=3600)
    assert record(cli, "later@example.com", "service", "granted", "--at", _iso_ahead(minutes=30), *PROOF)
    assert_bad_input(cli(*_record_args(**{"--at": _iso_ahead(hours=2)})), "--at", "clock skew of 3600 s")
    _set_policy(cli.config_path, max_clock_skew_seconds=10**6)
    assert_bad_input(cli("ledger", "requested"), "max_clock_skew_seconds")


def test_the_ledger_refuses_future_evidence_from_any_caller(ledger: Ledger, clock: Clock) -> None:
    """Ledger.validate is the gate every path goes through (the sync engine quarantines what it
    refuses): the message names the field and what is accepted."""
    soon = clock.now + timedelta(minutes=6)
    evidence = consent_value(
        ConsentStatus.GRANTED, soon, clock.now, basis=None, source="hubspot:contact", origin=Origin.CRM
    )
    with pytest.raises(InvalidInput, match=r"event time .* is in the future: accepted are times up to now"):
        ledger.validate(evidence)
    with pytest.raises(InvalidInput, match="event time"):
        ledger.record(Identity(email="crm@example.com"), evidence)
    late = Evidence(**{**_fields(evidence), "event_time": datetime(1969, 7, 20, tzinfo=UTC)})
    with pytest.raises(InvalidInput, match="out of range"):
        ledger.validate(late)
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM consent_events").scalar() == 0


def _fields(evidence: Evidence) -> dict[str, Any]:
    names = (
        "purpose", "channel", "status", "basis", "event_time", "observed_at", "source", "origin",
        "actor", "notice_version", "double_opt_in_at", "evidence_ref",
    )  # fmt: skip
    return {name: getattr(evidence, name) for name in names}


# -- rule 8: maximum lengths -----------------------------------------------------------------------

LIMITS = [
    pytest.param("--source", SOURCE_MAX, id="source"),
    pytest.param("--actor", ACTOR_MAX, id="actor"),
    pytest.param("--notice-version", NOTICE_VERSION_MAX, id="notice-version"),
    pytest.param("--evidence-ref", EVIDENCE_REF_MAX, id="evidence-ref"),
]


@pytest.mark.parametrize(("option", "limit"), LIMITS)
def test_each_text_is_stored_at_its_maximum_and_refused_beyond(cli: Cli, option: str, limit: int) -> None:
    exact = "é" * limit  # characters, not bytes: the same on SQLite and PostgreSQL
    out = cli.json(*_record_args("max@example.com", **{option: exact}))
    assert out["duplicate"] is False
    (event,) = show(cli, "max@example.com")["history"]
    assert exact in event.values()
    before = audit_count(cli)
    message = assert_bad_input(cli(*_record_args("max@example.com", **{option: exact + "x"})), option)
    assert f"at most {limit}" in message and len(message) < 300
    assert audit_count(cli) == before


def test_a_ten_kilobyte_value_is_one_short_line(cli: Cli) -> None:
    for option in ("--source", "--actor", "--notice-version", "--evidence-ref"):
        message = assert_bad_input(cli(*_record_args(**{option: "x" * 10_000})), option, "at most")
        assert len(message) < 300
    message = assert_bad_input(cli(*_record_args("a" * 10_000 + "@example.com")), "malformed email address")
    assert len(message) < 300
    assert_bad_input(cli(*_record_args("a" * (EMAIL_MAX - 11) + "@example.com")), "at most 320")


def test_reasons_have_their_maximum(cli: Cli) -> None:
    record(cli, "why@example.com", "email_marketing", "granted", *proven(days=1))
    long_reason = "r" * (REASON_MAX + 1)
    assert_bad_input(
        cli("restrict", "--email", "why@example.com", "--reason", long_reason),
        "--reason",
        f"at most {REASON_MAX}",
    )
    cli.ok("restrict", "--email", "why@example.com", "--reason", "r" * REASON_MAX)
    raised = cli.json("objection", "raise", "--email", "why@example.com", "--purpose", "profiling")
    assert_bad_input(
        cli("objection", "decide", str(raised["id"]), "--uphold", "--by", "dpo", "--reason", long_reason),
        "--reason",
    )
    cli.ok("objection", "decide", str(raised["id"]), "--uphold", "--by", "dpo", "--reason", "r" * REASON_MAX)
    erase = ("erase", "--email", "why@example.com", "--yes", "--reason")
    assert_bad_input(cli(*erase, "e" * (ERASURE_REASON_MAX + 1)), "--reason", f"at most {ERASURE_REASON_MAX}")
    cli.ok(*erase, "e" * ERASURE_REASON_MAX)
    assert cli.json("audit", "verify")["ok"] is True


# -- rule 8: control characters and addresses in labels --------------------------------------------

BAD_LABELS = [
    pytest.param("ops\x01bob", id="control"),
    pytest.param("ops\x1b[31mbob", id="escape-sequence"),
    pytest.param("ops\nbob", id="newline"),
    pytest.param("ops\u202ebob", id="bidi-override"),
    pytest.param("ops\u2028bob", id="line-separator"),
    pytest.param("ops\u200bbob", id="zero-width"),
    pytest.param("ops\udcffbob", id="lone-surrogate"),  # bytes that are not UTF-8, as the shell passes them
    pytest.param("ops\x00bob", id="nul"),  # PostgreSQL cannot store it
]


@SQLITE_ONLY  # refused before any transaction: the same code on both databases
@pytest.mark.parametrize("value", BAD_LABELS)
@pytest.mark.parametrize("option", ["--source", "--actor", "--notice-version", "--evidence-ref"])
def test_labels_with_control_characters_are_refused(cli: Cli, option: str, value: str) -> None:
    before = audit_count(cli)
    assert_bad_input(cli(*_record_args(**{option: value})), option)
    assert audit_count(cli) == before


@SQLITE_ONLY  # refused before any transaction: the same code on both databases
@pytest.mark.parametrize(
    "value", ["a\x01b@example.com", "a\u202eb@example.com", "a\x00b@example.com", "a\udcffb@example.com"]
)
def test_addresses_with_control_characters_are_refused(cli: Cli, value: str) -> None:
    assert_bad_input(cli(*_record_args(value)), "malformed email address")
    assert_bad_input(cli("erase", "--email", value, "--reason", "r", "--yes"), "malformed email address")


@SQLITE_ONLY  # refused before any transaction: the same code on both databases
@pytest.mark.parametrize("option", ["--actor", "--source", "--evidence-ref", "--notice-version"])
def test_labels_holding_an_email_address_are_refused(cli: Cli, option: str) -> None:
    value = "self-service by Jane.Doe@Example.org"
    message = assert_bad_input(
        cli(*_record_args("jane.doe@example.org", **{option: value})), option, "email address"
    )
    assert "jane.doe" not in message.lower()
    assert_bad_input(cli("subject", "show", "jane.doe@example.org"), "no subject")


def test_objection_and_decision_labels_are_checked(cli: Cli) -> None:
    record(cli, "obj@example.com", "email_marketing", "granted", *proven(days=1))
    base = ("objection", "raise", "--email", "obj@example.com", "--purpose", "profiling")
    assert_bad_input(cli(*base, "--source", "x" * (SOURCE_MAX + 1)), "--source", f"at most {SOURCE_MAX}")
    assert_bad_input(cli(*base, "--actor", "obj@example.com"), "--actor", "email address")
    assert_bad_input(cli(*base, "--actor", "a\x07b"), "--actor", "control character")
    raised = cli.json(*base)
    decide = ("objection", "decide", str(raised["id"]), "--uphold", "--reason", "ok", "--by")
    assert_bad_input(cli(*decide, "x" * (ACTOR_MAX + 1)), "--by")
    assert_bad_input(cli(*decide, "dpo\x00"), "--by")
    assert_bad_input(
        cli("objection", "decide", str(raised["id"]), "--uphold", "--by", "dpo", "--reason", "a\x00b"),
        "--reason",
        "control character",
    )
    assert cli.json("objection", "list")[0]["status"] == "pending"


def test_a_reason_may_have_line_breaks(cli: Cli) -> None:
    record(cli, "lines@example.com", "email_marketing", "granted", *proven(days=1))
    cli.ok("restrict", "--email", "lines@example.com", "--reason", "disputed accuracy\n\tticket 42")
    assert cli.json("audit", "verify")["ok"] is True


# -- rule 8: every export opens for any value the ledger accepts ------------------------------------


def _open_every_export(view: dict[str, Any], folder: Path) -> None:
    """Writes the view in each format and reads it back with a real parser of that format."""
    for fmt in ("json", "csv", "xlsx"):
        path = folder / f"subject.{fmt}"
        write_export(view, fmt, path)
        if fmt == "json":
            back = json.loads(path.read_text(encoding="utf-8"))
            assert back["subject"] == view["subject"]
            assert len(back["history"]) == len(view["history"])
        elif fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
            assert sum(row["record_type"] == "event" for row in rows) == len(view["history"])
        else:
            book = load_workbook(path)
            history = book["History"]
            assert history.max_row == len(view["history"]) + 1
            assert [cell.value for cell in history[1]][:3] == ["purpose", "channel", "status"]


LABEL_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",))
    | st.sampled_from("\x00\x01\x0b\x1f\x7f\u2028\u202e=+-@\t\r\n\"',;"),
    max_size=40,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actor=LABEL_TEXT, source=LABEL_TEXT, reference=LABEL_TEXT, notice=LABEL_TEXT)
def test_every_export_opens_for_any_value_the_ledger_accepts(
    ledger: Ledger, clock: Clock, tmp_path: Path, actor: str, source: str, reference: str, notice: str
) -> None:
    evidence = consent_value(
        ConsentStatus.GRANTED,
        clock.now - timedelta(days=1),
        clock.now,
        basis=None,
        source=source,
        actor=actor or None,
        notice_version=notice or None,
        evidence_ref=reference or None,
    )
    try:
        ledger.record(Identity(email="export@example.com"), evidence)
    except InvalidInput:
        return  # refused: nothing written, nothing to export
    view = ledger.subject_view("export@example.com")
    stored = view["history"][-1]
    assert (stored["actor"], stored["source"], stored["evidence_ref"]) == (
        actor or None,
        source,
        reference or None,
    )
    _open_every_export(view, tmp_path)


def test_exports_open_for_values_stored_before_the_checks(
    ledger: Ledger, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger written by an older consentsync may hold control characters: every export of it
    still opens (XLSX shows each as its control picture), and no cell is longer than Excel takes."""
    monkeypatch.setattr(ledger, "validate", lambda evidence: ledger.purposes[evidence.purpose])
    ledger.record(
        Identity(email="legacy@example.com"),
        consent_value(
            ConsentStatus.GRANTED,
            clock.now - timedelta(days=1),
            clock.now,
            basis=None,
            actor="ops\x01\x1b\x0bbob",
            evidence_ref="=HYPERLINK(1)\x08",
        ),
    )
    view = ledger.subject_view("legacy@example.com")
    view["history"][0]["notice_version"] = "n" * 40_000  # longer than a spreadsheet cell
    _open_every_export(view, tmp_path)
    history = load_workbook(tmp_path / "subject.xlsx")["History"]
    row = {history.cell(1, c).value: history.cell(2, c).value for c in range(1, history.max_column + 1)}
    assert row["actor"] == "ops\u2401\u241b\u240bbob"
    assert row["evidence_ref"] == "=HYPERLINK(1)\u2408"  # a string cell: shown as held, never run
    assert len(row["notice_version"]) == 32767


# -- rules 3 and 8 on the CRM path: quarantined with the reason, never a crash ----------------------


def test_crm_values_out_of_bounds_are_quarantined_with_their_reason(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consentsync_salesforce.sandbox import SalesforceSandbox
    from sqlalchemy import func, select

    from consentsync.app import open_ledger
    from consentsync.config import load_config
    from consentsync.ledger.schema import consent_events, quarantine
    from tests.integration.test_cli_sync import connect_sandbox

    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(6, seed=3)
        connect_sandbox(sandbox, config_path, monkeypatch)
        org = sandbox.org
        purposes = {r["Name"]: r["Id"] for r in org.records("DataUsePurpose")}
        email_marketing = purposes["Email Marketing"]
        individual = org.records("Individual")[0]["Id"]
        now = datetime.now(UTC).replace(microsecond=0)

        def consent(**fields: Any) -> str:
            return org.create(
                "ContactPointTypeConsent",
                {
                    "Name": "bounds",
                    "PartyId": individual,
                    "DataUsePurposeId": email_marketing,
                    "ContactPointType": "Email",
                    "PrivacyConsentStatus": "OptIn",
                    **fields,
                },
            )

        future = consent(CaptureDate=now + timedelta(days=2), CaptureSource="Web")
        far_future = consent(CaptureDate=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
        ancient = consent(CaptureDate=datetime(1, 1, 1, tzinfo=UTC))
        named = consent(
            CaptureDate=now - timedelta(days=1),
            CaptureSource="Web form, confirmed by jane.roe@example.net",
            PrivacyConsentStatus="OptOut",
        )
        result = cli("sync", "sf", "--json")
        # Finished, with the out-of-bounds records quarantined: exit 4 (exit_codes.QUARANTINED).
        assert result.exit_code == exit_codes.QUARANTINED, result.output
        report = json.loads(result.stdout)
        assert report["status"] == "succeeded", report["error"]

    ledger = open_ledger(load_config(config_path))
    try:
        with ledger.engine.connect() as conn:
            reasons = dict(
                conn.execute(
                    select(quarantine.c.record_id, quarantine.c.reason).where(quarantine.c.stage == "pull")
                ).all()
            )
            references = list(conn.execute(select(consent_events.c.evidence_ref)).scalars())
            latest = conn.execute(select(func.max(consent_events.c.event_time))).scalar()
    finally:
        ledger.engine.dispose()
    assert "event time" in reasons[future] and "in the future" in reasons[future]
    assert "max_clock_skew_seconds" in reasons[future]
    assert "event time" in reasons[far_future] and "in the future" in reasons[far_future]
    assert "CaptureDate" in reasons[ancient] or "out of range" in reasons[ancient]
    assert named not in reasons
    (reference,) = [r for r in references if r and named in r]
    assert "jane.roe" not in reference and "[address left out]" in reference
    # The address written in a CRM's free text is nowhere in the ledger (not in the evidence, not
    # in what the engine remembers of the record), so no erasure needs to find it.
    from tests.integration.test_cli import dump_database

    assert "jane.roe@example.net" not in dump_database(config_path)
    # Nothing dated after now reached the ledger.
    assert latest is not None and latest <= datetime.now(UTC)


_DECIDE = ("--uphold", "--by", "x", "--reason", "y")
_RECORD_P = ("ledger", "record", "--email", "p@example.com", "--source", "s", "--status", "granted", *PROOF)
NEVER_A_TRACEBACK = [
    pytest.param(("audit", "log", "--limit", str(10**20), "--json"), 0, id="limit-beyond-64-bits"),
    pytest.param(("audit", "log", "--action", "a\x00b", "--json"), None, id="nul-in-a-filter"),
    pytest.param(("audit", "log", "--action", "a\udcffb"), 2, id="not-utf8-in-a-filter"),
    pytest.param(("audit", "log", "--since", "9999-12-31T23:59:59.999999Z", "--json"), 0, id="since-9999"),
    pytest.param(("objection", "decide", "99999999999", *_DECIDE), 2, id="id-beyond-32-bits"),
    pytest.param(("objection", "decide", str(10**30), *_DECIDE), 2, id="id-beyond-64-bits"),
    pytest.param(("ledger", "requested", "--older-than", str(10**30), "--json"), 0, id="older-than-calendar"),
    pytest.param((*_RECORD_P, "--purpose", "x" * 10_000), 2, id="long-purpose"),
    pytest.param((*_RECORD_P, "--purpose", "email_marketing", "--channel", "\x00"), 2, id="nul-channel"),
    pytest.param((*_RECORD_P, "--purpose", "email_marketing", "--basis", "x\udcff"), 2, id="not-utf8-basis"),
]


@pytest.mark.parametrize(("args", "code"), NEVER_A_TRACEBACK)
def test_odd_input_is_never_a_traceback(cli: Cli, args: tuple[str, ...], code: int | None) -> None:
    record(cli, "p@example.com", "email_marketing", "granted", *proven(days=1))
    before = audit_count(cli)
    result = cli(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in ((0, 2) if code is None else (code,)), result.output
    if result.exit_code == 2:
        assert_bad_input(result)
    else:
        json.loads(result.stdout)
    assert audit_count(cli) == before


@pytest.mark.parametrize(
    ("record", "field"),
    [
        pytest.param({"Id": "0" * 65}, "Id", id="id-too-long"),
        pytest.param({"Id": "003\x00A"}, "Id", id="id-with-nul"),
        pytest.param({"Id": "003A", "IndividualId": "0PK\u202eX"}, "IndividualId", id="link-with-bidi"),
        pytest.param({"Id": "003A", "Email": "a\x01b@example.com"}, "Email", id="email-with-control"),
    ],
)
def test_crm_identifiers_the_ledger_cannot_keep_quarantine_the_record(
    config_path: Path, record: dict[str, Any], field: str
) -> None:
    from consentsync.config import load_config
    from consentsync.mapping import MappingValueError, load_mapping

    config = load_config(config_path)
    mapping = load_mapping(
        Path(__file__).parents[2] / "connectors/consentsync_salesforce/mappings/contact.yaml",
        purposes=config.purposes,
        channels=set(config.channels),
    )
    with pytest.raises(MappingValueError) as refused:
        mapping.identity_from(record)
    assert f"field {field}" in str(refused.value) and "\n" not in str(refused.value)
    assert "@example.com" not in str(refused.value)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("outbox", "retry", "--all"), id="outbox-retry"),
        pytest.param(("runs", "retry", "1"), id="quarantine-retry"),
    ],
)
@pytest.mark.parametrize("actor", ["ops@example.com", "x" * (ACTOR_MAX + 1), "ops\x1bbob"])
def test_every_actor_kept_in_the_chain_is_checked(cli: Cli, args: tuple[str, ...], actor: str) -> None:
    before = audit_count(cli)
    assert_bad_input(cli(*args, "--actor", actor), "--actor")
    assert audit_count(cli) == before
