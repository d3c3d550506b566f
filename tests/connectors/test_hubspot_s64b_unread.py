"""HubSpot: an address whose statuses HubSpot will not answer (session 64 review of 8f6737d).

1. A v4 batch status read that keeps answering one address with a 207 error entry (or leaves it
   out) used to fail every run for good: no later contact's no reached the ledger, and since a
   failed read skips the push phase, no withdrawal already in the ledger reached HubSpot. Now,
   every retry of the run over, the contact reads ``UNREAD`` in the fields it cannot be read to
   say no in: the engine quarantines it (the reason names its id, never the address), the page
   passes for everyone else, and ``consentsync runs retry`` reads it again
   (``read_records``). Without the batch scope a one-address read HubSpot refuses is handled
   alike; an outage (every address failing) still stops the run.
2. No email address reaches an error text: HubSpot's messages are masked whatever the spelling
   (NFD, upper case, fullwidth "＠", percent-encoded); the look-up of the basis held before an
   unsubscribe takes what was answered in per-address mode too (``strict=False``).
"""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot import connector as hubspot
from consentsync_hubspot.connector import PARTIAL_READ, UNREAD, _partial_read, _redacted
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from consentsync_hubspot.sandbox.server import ALL_SCOPES, HubSpotCredentials
from sqlalchemy import select

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import quarantine
from consentsync.ledger.service import utcnow
from consentsync.sandbox.server import json_response
from consentsync.sdk import ConnectorError, Cursor, RecordUpdate
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from consentsync.sync import quarantine as quarantines
from tests.connectors.against_sandbox import read_until
from tests.integration.helpers import consent_value

FIELDS = ["email", "subscription_1001", "subscription_1001_legal_basis", "subscription_1001_timestamp"]
BATCH_SCOPE = "communication_preferences.statuses.batch.read"
BAD = "zoé.unanswered@example.test"
LATER = "later.no@example.test"


@pytest.fixture
def harness() -> Iterator[HubSpotHarness]:
    made = HubSpotHarness(merges="new")
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _connector(harness: HubSpotHarness, **extra: Any) -> HubSpotConnector:
    return HubSpotConnector("hs", harness.connector_settings(**{"max_attempts": 2, **extra}))


def _read(conn: HubSpotConnector, fields: list[str] = FIELDS) -> dict[str, Any]:
    return {r.record_id: r for r in conn.read_changes("contacts", fields, Cursor(), read_until())}


def _base() -> dt.datetime:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(microsecond=0)


def _without_batch_scope(harness: HubSpotHarness) -> None:
    harness.sandbox.credentials = HubSpotCredentials(
        access_token=harness.sandbox.credentials.access_token, scopes=ALL_SCOPES - {BATCH_SCOPE}
    )


def retry_all_pull_quarantines(engine: Any) -> list[Any]:
    """As ops would (`consentsync runs retry`): every unresolved pull quarantine of the
    engine's connector is marked for re-reading by its next run. Answers the rows."""
    with engine.ledger.engine.connect() as conn:
        rows = conn.execute(
            select(quarantine).where(quarantine.c.stage == "pull", quarantine.c.resolved_at.is_(None))
        ).all()
    for row in rows:
        quarantines.retry(
            engine.ledger.engine, row.id, actor="ops@example.test", now=utcnow(), can_reread=lambda _c: True
        )
    return rows


def _pull_quarantines(engine: Any) -> list[Any]:
    with engine.ledger.engine.connect() as conn:
        return conn.execute(select(quarantine).where(quarantine.c.stage == "pull")).all()


# -- 1. an address HubSpot never answers -----------------------------------------------------


@pytest.mark.parametrize("unanswered", [False, True], ids=["error-entry", "left-out"])
def test_an_address_hubspot_never_answers_no_longer_holds_every_run_back(
    harness: HubSpotHarness, tmp_path: Path, unanswered: bool
) -> None:
    """The review's repro: one address HubSpot answers with a 207 error entry in every read.
    Before, every run failed: a later contact's unsubscribe never reached the ledger, and a
    withdrawal the ledger held was never pushed. Now the contact is quarantined by its id (never
    its address), the rest goes on, and a retry once HubSpot answers reads its no."""
    portal = harness.sandbox.portal
    base = _base()
    bad = portal.create({"email": BAD}, at=base)
    portal.set_status(BAD, "1001", "UNSUBSCRIBED", source="Unsubscribe link", at=base)
    portal.create({"email": "linked@example.test"}, at=base)
    portal.set_status(
        "linked@example.test",
        "1001",
        "SUBSCRIBED",
        legal_basis="CONSENT_WITH_NOTICE",
        explanation="form",
        source="Form",
        at=base,
    )
    config = write_sync_config(harness, tmp_path)
    harness.sandbox.fail_status_reads(BAD, times=-1, unanswered=unanswered)

    first = open_sync_engine(config).run()
    assert first.status == "succeeded", first.error
    assert first.counts.quarantined == 1
    # A withdrawal in the ledger for a linked contact, and a later contact's no in HubSpot.
    engine = open_sync_engine(config)
    now = dt.datetime.now(dt.UTC)
    engine.ledger.record(
        Identity(email="linked@example.test"), consent_value(ConsentStatus.WITHDRAWN, now, now)
    )
    portal.create({"email": LATER}, at=dt.datetime.now(dt.UTC))
    portal.set_status(LATER, "1001", "UNSUBSCRIBED", source="Unsubscribe link", at=dt.datetime.now(dt.UTC))
    second = open_sync_engine(config).run()
    assert second.status == "succeeded", second.error
    _p, later = engine.ledger.decision_for(LATER, "email_marketing", "email")
    assert later.status is ConsentStatus.WITHDRAWN, "a later contact's no never reached the ledger"
    assert portal.status("linked@example.test", "1001").status == "UNSUBSCRIBED", "the push was held back"

    (row,) = [row for row in _pull_quarantines(engine) if row.resolved_at is None]
    assert row.record_id == bad and row.object_type == "contacts"
    assert f"contacts {bad}" in row.reason and "HubSpot did not answer" in row.reason
    assert "@" not in row.reason and "unanswered" not in row.reason, row.reason

    # HubSpot answers again; ops retry the contact: its no is read.
    harness.sandbox.fail_status_reads(BAD, times=0)
    retry_all_pull_quarantines(engine)
    third = open_sync_engine(config).run()
    assert third.status == "succeeded", third.error
    _p, state = engine.ledger.decision_for(BAD, "email_marketing", "email")
    assert state.status is ConsentStatus.WITHDRAWN, "the quarantined contact's no was never read"
    assert all(row.resolved_at is not None for row in _pull_quarantines(engine))


def test_an_archived_contact_never_answered_is_quarantined_not_holding_the_listing(
    harness: HubSpotHarness, tmp_path: Path
) -> None:
    """The deletion listing reads an archived contact's last statuses the same way: an address
    HubSpot never answers quarantines it (by id) instead of failing every run."""
    portal = harness.sandbox.portal
    gone = portal.create({"email": BAD}, at=_base())
    config = write_sync_config(harness, tmp_path)
    assert open_sync_engine(config).run().status == "succeeded"
    portal.set_status(BAD, "1001", "UNSUBSCRIBED", source="Unsubscribe link")
    portal.archive(gone)
    harness.sandbox.fail_status_reads(BAD, times=-1)
    engine = open_sync_engine(config)
    report = engine.run()
    assert report.status == "succeeded", report.error
    rows = [row for row in _pull_quarantines(engine) if row.record_id == gone]
    assert rows and all("@" not in row.reason for row in rows)


def test_a_contact_read_by_id_is_read_as_a_full_read_reads_it(harness: HubSpotHarness) -> None:
    """``read_records`` (the retry of a quarantined contact): its statuses, its opt-out of all
    email and a no under an address it left; a merged-away or unknown id is left out."""
    portal = harness.sandbox.portal
    base = _base()
    said_no = portal.create({"email": "no@example.test"}, at=base)
    portal.set_status("no@example.test", "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=1))
    moved = portal.create({"email": "old@example.test"}, at=base)
    portal.set_status("old@example.test", "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=2))
    portal.update(moved, {"email": "new@example.test"}, at=base + dt.timedelta(minutes=3))
    conn = _connector(harness)
    assert type(conn).can_read_by_id
    records = {r.record_id: r for r in conn.read_records("contacts", FIELDS, [said_no, moved, "999999"])}
    assert set(records) == {said_no, moved}
    assert records[said_no].fields["subscription_1001"] == "UNSUBSCRIBED"
    assert (records[moved].earlier_values or {}).get("subscription_1001") == "UNSUBSCRIBED"


def test_the_opt_out_of_all_still_says_no_where_the_type_status_is_unanswered(
    harness: HubSpotHarness,
) -> None:
    portal = harness.sandbox.portal
    contact = portal.create({"email": BAD})
    portal.unsubscribe_all(BAD)
    harness.sandbox.fail_status_reads(BAD, times=-1, reads=("status_batch_read",))
    record = _read(_connector(harness))[contact]
    assert record.fields["subscription_1001"] == "UNSUBSCRIBED", "a known no was held back"


def test_an_earlier_address_never_answered_holds_its_no_back_in_quarantine(harness: HubSpotHarness) -> None:
    portal = harness.sandbox.portal
    base = _base()
    contact = portal.create({"email": "old@example.test"}, at=base)
    portal.set_status("old@example.test", "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=1))
    portal.update(contact, {"email": "new@example.test"}, at=base + dt.timedelta(minutes=2))
    harness.sandbox.fail_status_reads("old@example.test", times=-1)
    record = _read(_connector(harness))[contact]
    assert record.fields["subscription_1001"] == "NOT_SPECIFIED"  # the new address's own
    assert record.earlier_values == {"subscription_1001": UNREAD}


def test_an_entry_naming_no_address_asked_about_still_fails_the_page(
    harness: HubSpotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which address failed cannot be told: the read fails, as before, rather than guessing."""
    portal = harness.sandbox.portal
    portal.create({"email": "a@example.test"})
    read = harness.sandbox._h_status_batch_read

    def vague(request: Any) -> Any:
        answer = read(request)
        body = json.loads(answer.body)
        body["errors"] = [{"status": "error", "category": "INTERNAL_ERROR", "message": "oops"}]
        return json_response(207, body)

    monkeypatch.setattr(harness.sandbox, "_h_status_batch_read", vague)
    with pytest.raises(ConnectorError) as raised:
        _read(_connector(harness))
    assert raised.value.rule == PARTIAL_READ


# -- per address (no batch scope) --------------------------------------------------------------


def _refusing(harness: HubSpotHarness, monkeypatch: pytest.MonkeyPatch, refused: str, status: int) -> None:
    """One-address status reads of ``refused`` answer ``status``, HubSpot's message naming the
    address in another spelling (NFD, upper case)."""
    read = harness.sandbox._h_status_read

    def refuse(request: Any) -> Any:
        asked = unquote(request.path.rstrip("/").rsplit("/", 1)[-1])
        if unicodedata.normalize("NFC", asked).lower() == refused:
            category = "VALIDATION_ERROR" if status == 400 else "INTERNAL_ERROR"
            spelt = unicodedata.normalize("NFD", refused).upper()
            return json_response(status, {"status": "error", "category": category, "message": f"Bad {spelt}"})
        return read(request)

    monkeypatch.setattr(harness.sandbox, "_h_status_read", refuse)


def test_a_one_address_read_hubspot_refuses_quarantines_that_contact_only(
    harness: HubSpotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without_batch_scope(harness)
    portal = harness.sandbox.portal
    bad = portal.create({"email": BAD})
    fine = portal.create({"email": "fine@example.test"})
    portal.set_status("fine@example.test", "1001", "UNSUBSCRIBED")
    _refusing(harness, monkeypatch, BAD, 400)
    records = _read(_connector(harness))
    assert records[bad].fields["subscription_1001"] == UNREAD
    assert records[fine].fields["subscription_1001"] == "UNSUBSCRIBED"


def test_an_outage_of_the_one_address_reads_still_stops_the_run(
    harness: HubSpotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server error for the only address read may be HubSpot down: not quarantined (every
    contact would be), the run stops and the next one reads the page again."""
    _without_batch_scope(harness)
    harness.sandbox.portal.create({"email": BAD})
    _refusing(harness, monkeypatch, BAD, 500)
    with pytest.raises(ConnectorError) as raised:
        _read(_connector(harness, max_attempts=1))
    assert "unanswered" not in unicodedata.normalize("NFC", str(raised.value)).lower(), str(raised.value)


def test_the_basis_look_up_before_an_unsubscribe_takes_what_was_answered_per_address(
    harness: HubSpotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a one-address read HubSpot refused failed the whole write group's unsubscribes,
    every run: the look-up is strict=False, and now per address too (the default basis goes)."""
    _without_batch_scope(harness)
    portal = harness.sandbox.portal
    bad = portal.create({"email": BAD})
    other = portal.create({"email": "other@example.test"})
    _refusing(harness, monkeypatch, BAD, 500)
    results = _connector(harness, max_attempts=1).write(
        [
            RecordUpdate("contacts", bad, {"subscription_1001": "UNSUBSCRIBED"}),
            RecordUpdate("contacts", other, {"subscription_1001": "UNSUBSCRIBED"}),
        ]
    )
    assert [r.ok for r in results] == [True, True], results
    assert portal.status(BAD, "1001").status == "UNSUBSCRIBED"


# -- 2. no address in an error text ------------------------------------------------------------


@pytest.mark.parametrize(
    "spelt",
    [
        "zoé.invented@example.test",
        unicodedata.normalize("NFD", "zoé.invented@example.test").upper(),
        "zoé.invented＠example.test",
        "zo%C3%A9.invented%40example.test",
    ],
    ids=["as-asked", "nfd-upper", "fullwidth-at", "percent-encoded"],
)
def test_every_spelling_of_an_address_is_masked(spelt: str) -> None:
    text = _redacted(f"Could not read {spelt} (contact)")
    assert "invented" not in text.lower() and "<email>" in text
    err = _partial_read(
        "subscription statuses",
        207,
        [{"category": "INTERNAL_ERROR", "message": f"Could not read {spelt}", "context": {"ids": [spelt]}}],
        [],
        ["zoé.invented@example.test"],
    )
    assert "invented" not in str(err).lower()


def test_a_one_address_refusal_never_puts_the_address_in_the_error_or_the_log(
    harness: HubSpotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's repro (HubSpot's 400 naming the address as its v3 errors do): before, the
    per-address read quoted it unmasked into the run's error text."""
    _without_batch_scope(harness)
    portal = harness.sandbox.portal
    bad = portal.create({"email": "jane.invented@example.test"})
    portal.create({"email": "fine@example.test"})
    _refusing(harness, monkeypatch, "jane.invented@example.test", 400)
    logs: list[dict[str, Any]] = []
    monkeypatch.setattr(hubspot, "log", _Recorder(logs))
    conn = _connector(harness)
    assert _read(conn)[bad].fields["subscription_1001"] == UNREAD
    unanswered = [entry for entry in logs if entry["event"] == "hubspot.statuses_unanswered"]
    assert unanswered and "<email>" in unanswered[0]["reason"], logs
    assert "jane" not in repr(logs).lower()
    assert [entry["contacts"] for entry in logs if entry["event"] == "hubspot.contacts_unread"] == [[bad]]
    error = conn._classified(
        "subscription statuses (one address)",
        _response(400, {"category": "VALIDATION_ERROR", "message": "Invalid JANE.INVENTED@EXAMPLE.TEST"}),
    )
    assert "jane" not in str(error).lower() and "<email>" in str(error)


class _Recorder:
    """Stands in for the connector module's logger (structlog may be configured to cache it)."""

    def __init__(self, into: list[dict[str, Any]]) -> None:
        self.into = into

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.into.append({"event": event, "level": level, **fields})


def _response(status: int, body: dict[str, Any]) -> Any:
    import requests

    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    response.headers["Content-Type"] = "application/json"
    return response
