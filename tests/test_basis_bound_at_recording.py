"""A value recorded without a lawful basis is read under the purpose's default basis in force
when it was recorded, never under one configured since (docs/policy.md, "No switching of lawful
basis"; EDPB Guidelines 05/2020 paras 121-123), on SQLite and PostgreSQL.

The regulatory tester's repro (bb60 section 2): `ledger record --purpose profiling --status
granted` without `--basis` answered "basis legitimate_interests", but once profiling's
`default_basis` was set to `consent` the person read "granted, consent" in `subject show`, the
export and `/v1/decisions`: a consent out of nothing. The other way, a consent since expired, or
asked for and never given, read as a grant or a request on legitimate interests, not suppressed,
once the purpose was switched to legitimate interests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from sqlalchemy import delete, func, select

import consentsync.ledger.service as service
import consentsync.reconcile as reconcile
from consentsync import audit, audit_states
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import (
    audit_entries,
    consent_events,
    consent_states,
    ledger_settings,
    state_changes,
    subjects,
)
from consentsync.ledger.service import BASES_BOUND_SETTING, BLANK_PROOF_SOURCE, Ledger, RecordRequest
from tests.conftest import Cli, Clock, migrated_ledger, proof, record_args
from tests.integration.helpers import consent_value

ADA = "ada@example.org"
BEN = "ben@example.org"
CARL = "carl@example.org"

POSTAL = {
    "key": "postal_offers",
    "name": "Postal offers",
    "direct_marketing": True,
    "default_basis": "consent",
    "validity_days": 10,
    "objection_handling": "auto_uphold",
    "channels": ["post"],
}


def _set_default_basis(config_path: Path, purpose_key: str, basis: str) -> None:
    data = yaml.safe_load(config_path.read_text())
    (purpose,) = [p for p in data["purposes"] if p["key"] == purpose_key]
    purpose["default_basis"] = basis
    config_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _add_postal_offers(config_path: Path) -> None:
    data = yaml.safe_load(config_path.read_text())
    data["purposes"].append(dict(POSTAL))
    config_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _at(days_ago: float) -> str:
    """A time the real clock (the CLI's) has passed, whole seconds, as `--at` takes it."""
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _shown(cli: Cli, email: str, purpose: str, channel: str) -> dict[str, Any]:
    view = cli.json("subject", "show", email)
    (state,) = [s for s in view["purposes"] if (s["purpose"], s["channel"]) == (purpose, channel)]
    return state


def _exported(cli: Cli, tmp_path: Path, email: str, purpose: str, channel: str) -> dict[str, Any]:
    target = tmp_path / f"{email}.json"
    cli.ok("subject", "export", email, "--format", "json", "-o", str(target))
    data = json.loads(target.read_text())
    (state,) = [s for s in data["purposes"] if (s["purpose"], s["channel"]) == (purpose, channel)]
    return state


def _decision(config_path: Path, clock: Clock, email: str, purpose: str, channel: str) -> Any:
    """What `/v1/decisions` answers: the ledger's ``decision_for`` (the endpoint's one call)."""
    clock.now = datetime.now(UTC)
    with migrated_ledger(config_path, clock) as ledger:
        return ledger.decision_for(email, purpose, channel)[1]


def _config_changes(ledger: Ledger, uid: str) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(audit_entries.c.payload).where(
                audit_entries.c.subject_uid == uid, audit_entries.c.action == "state.changed"
            )
        ).scalars()
        return [orjson.loads(text) for text in rows]


def test_a_grant_on_legitimate_interests_stays_one_when_the_purpose_switches_to_consent(
    cli: Cli, config_path: Path, clock: Clock, tmp_path: Path
) -> None:
    """The tester's b2: recorded without `--basis` under profiling on legitimate interests, the
    grant keeps that basis once profiling rests on consent: `subject show`, the export and the
    decision all say legitimate interests, never consent. No consent was given, so none is
    shown; a channel without evidence reads the new default (no consent on record)."""
    recorded = cli.ok(
        *record_args(ADA, "profiling", "granted", "--channel", "email", "--at", _at(1), source="crm_import"),
        "--evidence-ref",
        "import:7",
    )
    assert "basis legitimate_interests" in recorded.stdout
    _set_default_basis(config_path, "profiling", "consent")

    shown = _shown(cli, ADA, "profiling", "email")
    assert (shown["status"], shown["basis"], shown["suppressed"], shown["rule"]) == (
        "granted",
        "legitimate_interests",
        False,
        "latest_event_time",
    )
    # The event is kept as stated (no basis), its state as recorded.
    (event,) = cli.json("subject", "show", ADA)["history"]
    assert event["basis"] is None
    phone = _shown(cli, ADA, "profiling", "phone")
    assert (phone["status"], phone["basis"], phone["rule"]) == (
        "applicable",
        "consent",
        "no_consent_on_record",
    )
    exported = _exported(cli, tmp_path, ADA, "profiling", "email")
    assert (exported["status"], exported["basis"], exported["suppressed"]) == (
        "granted",
        "legitimate_interests",
        False,
    )
    decided = _decision(config_path, clock, ADA, "profiling", "email")
    assert decided.basis is LawfulBasis.LEGITIMATE_INTERESTS and decided.status is ConsentStatus.GRANTED
    # The configuration change decided nothing again for her: no state.changed, nothing pushed.
    with migrated_ledger(config_path, clock) as ledger:
        assert _config_changes(ledger, cli.json("subject", "show", ADA)["subject"]) == []
    assert cli("audit", "verify").exit_code == 0


def test_an_expired_or_requested_consent_stays_suppressed_when_the_purpose_switches_to_li(
    cli: Cli, config_path: Path, clock: Clock, tmp_path: Path
) -> None:
    """The tester's b1: a consent granted 20 days ago under a 10-day validity (expired) and one
    asked for and never given, both recorded without `--basis` under a consent purpose, stay
    consents once the purpose rests on legitimate interests: expired and requested, suppressed,
    never a grant or a request on legitimate interests. A person without evidence reads the new
    default."""
    _add_postal_offers(config_path)
    cli.ok(
        *record_args(ADA, "postal_offers", "granted", "--channel", "post", "--at", _at(20)),
        "--evidence-ref",
        "form:1",
    )
    cli.ok(
        *record_args(BEN, "postal_offers", "requested", "--channel", "post", "--at", _at(5), source="phone")
    )
    cli.ok(*record_args(CARL, "service", "granted", "--channel", "post", "--basis", "contract", *proof()))
    _set_default_basis(config_path, "postal_offers", "legitimate_interests")

    expired = _shown(cli, ADA, "postal_offers", "post")
    assert (expired["status"], expired["basis"], expired["suppressed"], expired["rule"]) == (
        "expired",
        "consent",
        True,
        "validity_expired",
    )
    requested = _shown(cli, BEN, "postal_offers", "post")
    assert (requested["status"], requested["basis"], requested["suppressed"]) == (
        "requested",
        "consent",
        True,
    )
    nobody = _shown(cli, CARL, "postal_offers", "post")
    assert (nobody["status"], nobody["basis"], nobody["suppressed"]) == (
        "not_applicable",
        "legitimate_interests",
        False,
    )
    for email, status in ((ADA, "expired"), (BEN, "requested")):
        exported = _exported(cli, tmp_path, email, "postal_offers", "post")
        assert (exported["status"], exported["basis"], exported["suppressed"]) == (status, "consent", True)
        decided = _decision(config_path, clock, email, "postal_offers", "post")
        assert decided.suppressed and decided.basis is LawfulBasis.CONSENT
    assert cli("audit", "verify").exit_code == 0


def _crm_grant(at: datetime, observed: datetime) -> Any:
    """Profiling by email granted, as a CRM's status field says it: no basis, dated."""
    return consent_value(
        ConsentStatus.GRANTED,
        at,
        observed,
        purpose="profiling",
        basis=None,
        source="crm_a",
        origin=Origin.CRM,
        evidence_ref="Contact/003A",
    )


def _events(ledger: Ledger) -> list[Any]:
    with ledger.engine.connect() as conn:
        return conn.execute(select(consent_events.c.basis, consent_events.c.fingerprint)).all()


def test_a_crm_value_read_again_after_a_default_change_is_a_replay(config_path: Path, clock: Clock) -> None:
    """A CRM's status field carries no basis, read after read. Recorded under legitimate
    interests, the same value read again once the purpose rests on consent is the same statement
    (its fingerprint: the event as stated, without a basis) and is recorded once; the person
    stays on legitimate interests. A newer value the CRM shows after the switch is a new
    statement, recorded under the default then: consent."""
    first_read = _crm_grant(clock.now - timedelta(days=3), clock.now)
    with migrated_ledger(config_path, clock) as ledger:
        assert ledger.record_many([RecordRequest(Identity(email=ADA), first_read)]).recorded == 1
        (event,) = _events(ledger)
        assert event.basis is None  # the event as the CRM stated it
    _set_default_basis(config_path, "profiling", "consent")
    # The switch is taken in (its purpose.configured entry written) on the real clock, as the
    # ledger opens: what is read after it is observed after it (a value is bound to the default
    # the chain says was in force when it was observed).
    clock.now = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    again = _crm_grant(first_read.event_time, clock.now)  # read again, later
    with migrated_ledger(config_path, clock) as ledger:
        stats = ledger.record_many([RecordRequest(Identity(email=ADA), again)])
        assert (stats.recorded, stats.duplicates) == (0, 1)
        assert _events(ledger) == [event]
        state = ledger.decision_for(ADA, "profiling", "email")[1]
        assert (state.status, state.basis, state.suppressed) == (
            ConsentStatus.GRANTED,
            LawfulBasis.LEGITIMATE_INTERESTS,
            False,
        )
        clock.advance(minutes=1)
        newer = _crm_grant(clock.now - timedelta(minutes=30), clock.now)
        outcome = ledger.record(Identity(email=ADA), newer)
        assert not outcome.duplicate and outcome.after is not None
        assert outcome.after.basis is LawfulBasis.CONSENT
        assert ledger.decision_for(ADA, "profiling", "email")[1].basis is LawfulBasis.CONSENT


# -- an older version's ledger ---------------------------------------------------------------------


def _as_an_older_version(mp: pytest.MonkeyPatch) -> None:
    """Records and reads as a version before this one: no value bound to a basis, each read
    under the purpose's default of the moment."""
    real = reconcile._facts
    mp.setattr(reconcile, "_facts", lambda evidence, policy, bound=None: real(evidence, policy))
    mp.setattr(service, "_unbound", lambda summary: False)
    mp.setattr(Ledger, "bind_unstated_bases", lambda self, *args, **kwargs: 0)


def _stored(ledger: Ledger, email: str) -> Any:
    uid = ledger.subject_view(email)["subject"]
    with ledger.engine.connect() as conn:
        return conn.execute(
            select(consent_states)
            .join(subjects, subjects.c.id == consent_states.c.subject_id)
            .where(subjects.c.uid == uid, consent_states.c.purpose == "profiling")
        ).one()


def _counts(ledger: Ledger) -> dict[str, Any]:
    with ledger.engine.connect() as conn:
        return {
            "audit": conn.execute(select(func.count()).select_from(audit_entries)).scalar_one(),
            "feed": conn.execute(select(func.count()).select_from(state_changes)).scalar_one(),
            "states": sorted(tuple(row) for row in conn.execute(select(consent_states))),
            "marker": conn.execute(
                select(ledger_settings.c.value).where(ledger_settings.c.name == BASES_BOUND_SETTING)
            ).scalar(),
        }


def _forget_the_marker(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(delete(ledger_settings).where(ledger_settings.c.name == BASES_BOUND_SETTING))


# Tests ask for ``cli`` first: its ``init`` opens the ledger, which runs the step (on nothing).
@pytest.fixture
def older_ledger(cli: Cli, config_path: Path, clock: Clock) -> Iterator[Ledger]:
    """An older version recorded Ada's grant and Ben's request (profiling by email, no basis)
    under legitimate interests, was then switched to consent (Ada read "granted, consent" from
    then on, Ben "requested, consent", each state.changed audited), and recorded Carl's grant
    after the switch. No marker: the ledger as this version finds it."""
    mp = pytest.MonkeyPatch()
    _as_an_older_version(mp)
    with migrated_ledger(config_path, clock) as ledger:
        ledger.record(Identity(email=ADA), _crm_grant(clock.now - timedelta(days=2), clock.now))
        ben = consent_value(
            ConsentStatus.REQUESTED, clock.now - timedelta(days=1), clock.now, purpose="profiling", basis=None
        )
        ledger.record(Identity(email=BEN), ben)
        clock.advance(minutes=1)
        # The switch, on the test's clock (its purpose.configured entry says when).
        _set_default_basis(config_path, "profiling", "consent")
        ledger.purposes = load_config(config_path).purposes
        ledger.sync_purposes()
        clock.advance(minutes=1)
        ledger.record(Identity(email=CARL), _crm_grant(clock.now - timedelta(hours=1), clock.now))
        assert _stored(ledger, ADA).basis == "consent"  # the consent out of nothing
        assert _stored(ledger, BEN).suppressed  # "requested on consent", as read since
        assert '"bound"' not in _stored(ledger, ADA).summary
        _forget_the_marker(ledger)
        mp.undo()
        clock.advance(minutes=1)
        yield ledger


def _upgrade_entries(ledger: Ledger) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(audit_entries.c.payload).order_by(audit_entries.c.seq)).scalars()
        return [p for p in map(orjson.loads, rows) if p.get("source") == BLANK_PROOF_SOURCE]


def test_the_upgrade_binds_each_value_to_the_default_it_was_recorded_under(
    cli: Cli, older_ledger: Ledger
) -> None:
    """The step binds Ada's grant and Ben's request to legitimate interests, the default when
    they were recorded (the chain's purpose.configured entries say so), not consent, the
    default the older version read them under since; Carl's grant, recorded after the switch,
    to consent. Ada's and Ben's states change back: stored, audited and on the change feed for
    every CRM; Carl's does not. Events and their entries stay as recorded; verify passes."""
    ledger = older_ledger
    events = _events(ledger)
    before = _counts(ledger)
    assert before["marker"] is None

    assert ledger.bind_unstated_bases() == 3

    ada, ben, carl = (_stored(ledger, email) for email in (ADA, BEN, CARL))
    assert (ada.status, ada.basis, ada.suppressed) == ("granted", "legitimate_interests", False)
    assert (ben.status, ben.basis, ben.suppressed) == ("requested", "legitimate_interests", False)
    assert (carl.status, carl.basis, carl.suppressed) == ("granted", "consent", False)
    assert all('"bound"' in row.summary for row in (ada, ben, carl))
    uids = {ledger.subject_view(email)["subject"]: email for email in (ADA, BEN, CARL)}
    entries = _upgrade_entries(ledger)
    changed = {uids[entry["subject"]]: entry for entry in entries}
    assert set(changed) == {ADA, BEN} and len(entries) == 2
    assert {entry["action"] for entry in entries} == {"state.changed"}
    assert (changed[ADA]["old"]["basis"], changed[ADA]["new"]["basis"]) == ("consent", "legitimate_interests")
    assert (changed[BEN]["old"]["suppressed"], changed[BEN]["new"]["suppressed"]) == (True, False)
    after = _counts(ledger)
    assert after["feed"] - before["feed"] == 2 and after["marker"] == "done"
    # The events and their audit entries are as recorded: what the CRM stated, no basis.
    assert _events(ledger) == events and {basis for basis, _ in events} == {None}
    with ledger.engine.connect() as conn:
        assert audit_states.states(conn, ledger.purposes, ledger.policy).ok
        assert audit.agreement(conn).ok
    assert ledger.decision_for(ADA, "profiling", "email")[1].basis is LawfulBasis.LEGITIMATE_INTERESTS
    assert cli("audit", "verify").exit_code == 0


def test_the_step_runs_at_the_next_open_and_once(cli: Cli, older_ledger: Ledger) -> None:
    """Any command opening the ledger (here `audit verify`) runs the step first, and passes. A
    second open finds the marker and changes nothing; with the marker lost, the step finds
    every value bound and writes nothing but the marker."""
    done = cli("audit", "verify")
    assert done.exit_code == 0, done.output
    assert _stored(older_ledger, ADA).basis == "legitimate_interests"
    once = _counts(older_ledger)
    assert once["marker"] == "done" and len(_upgrade_entries(older_ledger)) == 2
    assert cli("audit", "verify").exit_code == 0
    assert _counts(older_ledger) == once
    _forget_the_marker(older_ledger)
    assert older_ledger.bind_unstated_bases() == 0
    assert _counts(older_ledger) == once
