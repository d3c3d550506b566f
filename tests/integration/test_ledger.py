"""The Ledger service on SQLite and PostgreSQL: identity, replay, batches, expiry, erasure,
purpose configuration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from consentsync import audit
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.identity import CrmLink, Identity
from consentsync.ledger.schema import consent_events, crm_links, subjects
from consentsync.ledger.service import ErasedAddressRefused, Ledger, RecordRequest
from tests.conftest import Clock


def _evidence(
    ledger: Ledger,
    status: ConsentStatus = ConsentStatus.GRANTED,
    *,
    at: datetime | None = datetime(2026, 3, 1, tzinfo=UTC),
    source: str = "web_form",
    origin: Origin = Origin.CAPTURE,
    purpose: str = "email_marketing",
    proof: bool = True,
) -> Evidence:
    return Evidence(
        purpose=purpose,
        channel="email",
        status=status,
        basis=LawfulBasis.CONSENT,
        event_time=at,
        observed_at=ledger.clock(),
        source=source,
        origin=origin,
        notice_version="v2" if proof else None,
    )


def _count(ledger: Ledger, table) -> int:  # type: ignore[no-untyped-def]
    with ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def _state(ledger: Ledger, email: str, purpose: str = "email_marketing") -> dict:  # type: ignore[type-arg]
    view = ledger.subject_view(email)
    return next(p for p in view["purposes"] if p["purpose"] == purpose and p["channel"] == "email")


def test_duplicates_across_crms_are_linked_to_one_subject_never_merged_away(ledger: Ledger) -> None:
    contact = CrmLink("salesforce", "Contact", "003A")
    lead = CrmLink("salesforce", "Lead", "00QB")
    other_org = CrmLink("hubspot", "contact", "501")
    for link, email in (
        (contact, "Ann@Example.com "),
        (lead, "ann@example.com"),
        (other_org, "ANN@example.com"),
    ):
        ledger.record(Identity(email=email.strip().lower(), link=link), _evidence(ledger))
    assert _count(ledger, subjects) == 1
    view = ledger.subject_view("ann@example.com")
    assert {(r["connector"], r["object"], r["record_id"]) for r in view["crm_records"]} == {
        ("salesforce", "Contact", "003A"),
        ("salesforce", "Lead", "00QB"),
        ("hubspot", "contact", "501"),
    }


def test_record_id_is_matched_before_email(ledger: Ledger) -> None:
    link = CrmLink("salesforce", "Contact", "003X")
    first = ledger.record(Identity(email="old@example.com", link=link), _evidence(ledger))
    # The CRM record's address changed: the record id still names the same person.
    second = ledger.record(
        Identity(email="new@example.com", link=link),
        _evidence(ledger, ConsentStatus.WITHDRAWN, at=datetime(2026, 4, 1, tzinfo=UTC)),
    )
    assert first.subject_uid == second.subject_uid
    assert _state(ledger, "new@example.com")["status"] == "withdrawn"
    assert _state(ledger, "old@example.com")["status"] == "withdrawn"


def test_link_only_identity_creates_a_subject_with_its_link(ledger: Ledger) -> None:
    link = CrmLink("vtiger", "Contacts", "12x9")
    outcome = ledger.record(Identity(link=link), _evidence(ledger, origin=Origin.CRM, source="vtiger"))
    again = ledger.record(
        Identity(link=link, email="late@example.com"),
        _evidence(ledger, ConsentStatus.REQUESTED, at=datetime(2026, 5, 1, tzinfo=UTC)),
    )
    assert outcome.subject_uid == again.subject_uid
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(crm_links)).scalar_one() == 1
    assert ledger.subject_view("late@example.com")["subject"] == outcome.subject_uid


def test_replayed_evidence_is_recorded_once_within_and_across_batches(ledger: Ledger) -> None:
    evidence = _evidence(ledger)
    batch = [RecordRequest(Identity(email="r@example.com"), evidence)] * 3
    stats = ledger.record_many(batch)
    assert (stats.recorded, stats.duplicates) == (1, 2)
    stats = ledger.record_many(batch, batch_size=1)
    assert (stats.recorded, stats.duplicates) == (0, 3)
    assert _count(ledger, consent_events) == 1


def test_record_many_streams_in_batches_and_every_event_is_audited(ledger: Ledger) -> None:
    requests = (
        RecordRequest(
            Identity(email=f"p{n % 50}@example.com"),
            _evidence(ledger, at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=n)),
        )
        for n in range(1_000)
    )
    stats = ledger.record_many(requests, batch_size=128)
    assert (stats.received, stats.recorded, stats.subjects_created) == (1_000, 1_000, 50)
    with ledger.engine.connect() as conn:
        recorded = list(audit.entries(conn, action="consent.recorded"))
        assert audit.verify(conn).ok
    assert len(recorded) == 1_000


def test_crm_reread_never_reverses_a_withdrawal_but_a_trusted_newer_opt_in_does(ledger: Ledger) -> None:
    email = "w@example.com"
    ledger.record(Identity(email=email), _evidence(ledger))
    ledger.record(
        Identity(email=email),
        _evidence(ledger, ConsentStatus.WITHDRAWN, at=datetime(2026, 4, 1, tzinfo=UTC), source="salesforce"),
    )
    stale = _evidence(ledger, at=datetime(2026, 5, 1, tzinfo=UTC), source="salesforce", origin=Origin.CRM)
    assert ledger.record(Identity(email=email), stale).after.rule == "sticky_withdrawal"  # type: ignore[union-attr]
    unproven = _evidence(ledger, at=datetime(2026, 5, 2, tzinfo=UTC), proof=False)
    assert ledger.record(Identity(email=email), unproven).after.status is ConsentStatus.WITHDRAWN  # type: ignore[union-attr]
    renewed = ledger.record(Identity(email=email), _evidence(ledger, at=datetime(2026, 5, 3, tzinfo=UTC)))
    assert renewed.after is not None
    assert (renewed.after.status, renewed.after.suppressed, renewed.after.rule) == (
        ConsentStatus.GRANTED,
        False,
        "trusted_opt_in_reverses",
    )


def test_expiry_sweep_records_each_expiry_once(ledger: Ledger, clock: Clock) -> None:
    ledger.record(Identity(email="old@example.com"), _evidence(ledger, at=datetime(2020, 1, 1, tzinfo=UTC)))
    ledger.record(Identity(email="fresh@example.com"), _evidence(ledger, at=clock.now - timedelta(days=10)))
    assert _state(ledger, "old@example.com")["rule"] == "validity_expired"
    assert ledger.expire_due().recorded == 1
    assert ledger.expire_due().recorded == 0
    history = ledger.subject_view("old@example.com")["history"]
    assert history[-1]["status"] == "expired" and history[-1]["source"] == "consentsync:expiry"
    clock.advance(days=730)
    assert _state(ledger, "fresh@example.com")["status"] == "expired"
    assert ledger.expire_due().recorded == 1
    # A renewal after expiry grants again.
    renewal = ledger.record(Identity(email="old@example.com"), _evidence(ledger, at=clock.now))
    assert renewal.after is not None and renewal.after.status is ConsentStatus.GRANTED


def test_stale_requests_are_reported(ledger: Ledger, clock: Clock) -> None:
    ledger.record(
        Identity(email="q@example.com"),
        _evidence(ledger, ConsentStatus.REQUESTED, purpose="profiling", at=clock.now - timedelta(days=40)),
    )
    ledger.record(
        Identity(email="n@example.com"),
        _evidence(ledger, ConsentStatus.REQUESTED, purpose="profiling", at=clock.now - timedelta(days=3)),
    )
    assert [r["email"] for r in ledger.stale_requests(30)] == ["q@example.com"]
    assert len(ledger.stale_requests(1)) == 2


def test_erasure_suppresses_a_later_import_until_a_newer_trusted_opt_in(ledger: Ledger, clock: Clock) -> None:
    ledger.record(Identity(email="e@example.com"), _evidence(ledger))
    result = ledger.erase("e@example.com", reason="Art. 17 request")
    assert result["subject_known"]
    clock.advance(days=1)
    reimport = ledger.record(
        Identity(email="e@example.com", link=CrmLink("salesforce", "Lead", "00Q1")),
        _evidence(ledger, at=datetime(2026, 3, 1, tzinfo=UTC), source="salesforce", origin=Origin.CRM),
    )
    assert reimport.after is not None
    assert (reimport.after.suppressed, reimport.after.rule) == (True, "erasure_suppression")
    assert reimport.subject_uid != result["subject"]
    signup = ledger.record(Identity(email="e@example.com"), _evidence(ledger, at=clock.now))
    assert signup.after is not None and not signup.after.suppressed


def test_erasing_an_unknown_address_still_blocks_its_import(ledger: Ledger) -> None:
    assert not ledger.erase("never@example.com", reason="suppression list import")["subject_known"]
    # An import's grant cannot lift the erasure: refused, the address never stored (session 57).
    with pytest.raises(ErasedAddressRefused):
        ledger.record(Identity(email="never@example.com"), _evidence(ledger, proof=False))
    assert ledger.subject_uids_for_email("never@example.com") == []
    # Read from a CRM, the same address is a record to suppress: its person is created suppressed.
    crm = _evidence(ledger, proof=False, origin=Origin.CRM, source="crm:contacts")
    outcome = ledger.record(Identity(email="never@example.com"), crm)
    assert outcome.after is not None and outcome.after.rule == "erasure_suppression"


def test_changed_purpose_configuration_is_audited(config_path: Path, ledger: Ledger) -> None:
    text = config_path.read_text().replace("validity_days: 730", "validity_days: 365")
    config_path.write_text(text)
    reopened = open_ledger(load_config(config_path))
    with reopened.engine.connect() as conn:
        changes = list(audit.entries(conn, action="purpose.configured"))
    assert len(changes) == 4  # three at init, one change
    assert changes[-1]["old"]["validity_days"] == 730
    assert changes[-1]["new"]["validity_days"] == 365
    reopened.engine.dispose()


def test_restriction_suppresses_everything_until_lifted(ledger: Ledger) -> None:
    ledger.record(Identity(email="r18@example.com"), _evidence(ledger))
    ledger.restrict("r18@example.com", restricted=True, reason="accuracy contested", actor="dpo")
    states = ledger.subject_view("r18@example.com")["purposes"]
    assert all(s["suppressed"] and s["rule"] == "restriction_art18" for s in states)
    ledger.restrict("r18@example.com", restricted=False, reason="accuracy confirmed", actor="dpo")
    assert not _state(ledger, "r18@example.com")["suppressed"]
    assert not _state(ledger, "r18@example.com", "service")["suppressed"]
    with ledger.engine.connect() as conn:
        actions = [e["action"] for e in audit.entries(conn) if e["action"].startswith("subject.restr")]
        assert audit.verify(conn).ok
    assert actions == ["subject.restricted", "subject.restriction_lifted"]


def test_every_persons_states_at_once_are_each_keys_decision(ledger: Ledger, clock: Clock) -> None:
    """``effective_states_in`` (a sync's examination: people at once, the states their flags
    alone imply shared between them) answers for every configured purpose and channel what the
    capture API's decision (one key of one person, read apart) answers."""
    people = {
        "plain@example.com": [_evidence(ledger, purpose="service")],
        "granted@example.com": [_evidence(ledger)],
        "withdrawn@example.com": [_evidence(ledger), _evidence(ledger, ConsentStatus.WITHDRAWN)],
        "profiled@example.com": [_evidence(ledger, purpose="profiling")],
        "objector@example.com": [_evidence(ledger)],
        "erased@example.com": [_evidence(ledger)],
        "restricted@example.com": [_evidence(ledger)],
        "plain-too@example.com": [_evidence(ledger, purpose="service")],
    }
    ids: dict[str, int] = {}
    for email, evidence in people.items():
        for item in evidence:
            clock.advance(seconds=1)
            ids[email] = ledger.record(Identity(email=email), item).subject_id
    ledger.raise_objection("objector@example.com", "profiling")
    ledger.erase("erased@example.com", reason="Art. 17 request")
    ledger.restrict("restricted@example.com", restricted=True, reason="accuracy contested")
    with ledger.engine.connect() as conn:
        states = ledger.effective_states_in(conn, list(ids.values()))
    keys = [(purpose.key, channel) for purpose in ledger.purposes.values() for channel in purpose.channels]
    assert len(keys) > 3
    for email, subject_id in ids.items():
        assert list(states[subject_id]) == keys
        for purpose, channel in keys:
            decided = ledger.decision_for(email, purpose, channel)[1]
            if email == "erased@example.com":
                # The decision knows an erased address by its keyed hash only: suppressed alike.
                assert states[subject_id][(purpose, channel)].suppressed and decided.suppressed
                continue
            assert states[subject_id][(purpose, channel)] == decided, (email, purpose, channel)
    distinct = {state for person in states.values() for state in person.values()}
    assert len(distinct) > 3, "the people were alike: the test proved little"
