"""A no stamped by a clock running behind ours counts as late as that clock allows (session 68
black-box finding): ``Evidence.clock_lag`` moves a withdrawal's sort time up to its stamp plus the
lag, never past its observation; grants and the fingerprint are untouched; the ledger keeps the
lag with the event (``consent_events.clock_lag_ms``, migration 0026) and in its audit entry, and
``audit verify`` folds the events with it. docs/policy.md, "A no stamped by a clock behind ours"."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from consentsync import audit, audit_states
from consentsync.domain import (
    CLOCK_LAG_MAX,
    ConsentStatus,
    Evidence,
    InvalidInput,
    LawfulBasis,
    Origin,
    SubjectFlags,
    check_clock_lag,
    clock_lag_ms,
)
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import audit_entries, consent_events
from consentsync.ledger.service import Ledger
from consentsync.reconcile import Policy, Ranked, Rule, effective_state, no_counts_from, summarise
from consentsync.sdk.clock import ClockOffset
from consentsync.sync.engine import SyncEngine
from tests.conftest import Clock
from tests.unit.purposes import make_purpose

NOON = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(trusted_sources=frozenset({"web_form"}))
EMAIL = make_purpose(
    "email_marketing", "Email marketing", LawfulBasis.CONSENT, direct_marketing=True, validity_days=730
)
BEHIND = timedelta(seconds=120)


def _grant(at: datetime) -> Evidence:
    """A web-form consent with proof, captured at ``at`` on our clock."""
    return Evidence.from_web_form(ConsentStatus.GRANTED, at, at, evidence_ref="form:1", notice_version="v1")


def _crm(status: ConsentStatus, stamped: datetime, observed: datetime, lag: timedelta | None) -> Evidence:
    """A CRM's value stamped ``stamped`` by its clock, read at ``observed`` (ours)."""
    return Evidence(
        purpose="email_marketing",
        channel="email",
        status=status,
        basis=None,
        event_time=stamped,
        observed_at=observed,
        source="superoffice:Person",
        origin=Origin.CRM,
        evidence_ref="Person/7",
        clock_lag=lag,
    )


def _state(*items: Evidence) -> Any:
    return effective_state(
        summarise(items, POLICY),
        EMAIL,
        "email",
        flags=SubjectFlags(),
        objections=(),
        now=NOON + timedelta(hours=1),
    )


# -- Ranked: the no moves later, up to its observation; nothing else moves -------------------------


def test_a_no_from_a_clock_behind_counts_from_its_stamp_plus_the_lag() -> None:
    stamped, observed = NOON - timedelta(seconds=60), NOON + timedelta(seconds=65)
    without = Ranked.of(_crm(ConsentStatus.WITHDRAWN, stamped, observed, None), POLICY)
    behind = Ranked.of(_crm(ConsentStatus.WITHDRAWN, stamped, observed, BEHIND), POLICY)
    assert without.sort_time == no_counts_from(stamped)
    assert behind.sort_time == stamped + BEHIND
    # What is stated stays as stated: the time shown, and the statement's identity.
    assert behind.event_time == without.event_time == stamped
    assert behind.fingerprint == without.fingerprint


def test_a_no_never_counts_from_after_its_observation() -> None:
    stamped, observed = NOON, NOON + timedelta(seconds=30)
    ranked = Ranked.of(_crm(ConsentStatus.REFUSED, stamped, observed, timedelta(days=1)), POLICY)
    assert ranked.sort_time == observed


def test_a_lag_shorter_than_the_whole_second_rule_changes_nothing() -> None:
    stamped, observed = NOON, NOON + timedelta(minutes=5)
    small = Ranked.of(_crm(ConsentStatus.WITHDRAWN, stamped, observed, timedelta(milliseconds=400)), POLICY)
    assert small.sort_time == no_counts_from(stamped)


@pytest.mark.parametrize("status", [ConsentStatus.GRANTED, ConsentStatus.REQUESTED, ConsentStatus.APPLICABLE])
def test_a_value_other_than_a_no_is_read_as_stamped(status: ConsentStatus) -> None:
    stamped, observed = NOON, NOON + timedelta(minutes=5)
    plain = Ranked.of(_crm(status, stamped, observed, None), POLICY)
    lagged = Ranked.of(_crm(status, stamped, observed, BEHIND), POLICY)
    assert lagged.sort_time == plain.sort_time == stamped


def test_the_fingerprint_leaves_the_lag_out() -> None:
    value = _crm(ConsentStatus.WITHDRAWN, NOON, NOON + timedelta(seconds=3), None)
    prints = {replace(value, clock_lag=lag).fingerprint() for lag in (None, BEHIND, timedelta(seconds=5))}
    assert prints == {value.fingerprint()}


# -- the audited story: a withdrawal made after a consent, stamped before it ------------------------


def test_a_withdrawal_stamped_before_a_consent_it_followed_is_not_lost() -> None:
    """The CRM's clock runs 120 s behind: the person withdrew at our 12:01:00, stamped 11:59:00,
    after a web-form consent at 12:00:00. Read with the lag the no wins, in either order."""
    grant = _grant(NOON)
    no = _crm(ConsentStatus.WITHDRAWN, NOON - timedelta(seconds=60), NOON + timedelta(seconds=62), BEHIND)
    for items in ((grant, no), (no, grant)):
        state = _state(*items)
        assert (state.status, state.suppressed, state.rule) == (
            ConsentStatus.WITHDRAWN,
            True,
            Rule.STICKY_WITHDRAWAL,
        )
    # Without a lag measured (a clock in step), the stamp is all there is: the consent, later, wins.
    assert _state(grant, replace(no, clock_lag=None)).status is ConsentStatus.GRANTED


def test_a_consent_given_after_the_lagged_no_could_have_been_made_still_reverses_it() -> None:
    stamped, observed = NOON - timedelta(seconds=60), NOON + timedelta(seconds=62)
    no = _crm(ConsentStatus.WITHDRAWN, stamped, observed, BEHIND)
    later = _grant(observed + timedelta(seconds=1))
    assert _state(no, later).status is ConsentStatus.GRANTED


# -- what the ledger keeps -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lag",
    [timedelta(seconds=-1), timedelta(microseconds=1500), timedelta(days=1, milliseconds=1)],
    ids=["negative", "not_whole_milliseconds", "over_a_day"],
)
def test_a_lag_the_ledger_cannot_keep_as_folded_is_refused(lag: timedelta, ledger: Ledger) -> None:
    with pytest.raises(InvalidInput, match="clock lag"):
        check_clock_lag(lag)
    with pytest.raises(InvalidInput, match="clock lag"):
        ledger.validate(_crm(ConsentStatus.WITHDRAWN, NOON, NOON, lag))


def test_the_ledger_keeps_the_lag_with_the_event_and_its_audit_entry(ledger: Ledger, clock: Clock) -> None:
    who = Identity(email="lagged@example.test")
    assert clock.now == NOON
    ledger.record(who, _grant(NOON))
    read_at = clock.advance(seconds=62)
    no = _crm(ConsentStatus.WITHDRAWN, NOON - timedelta(seconds=60), read_at, BEHIND)
    outcome = ledger.record(who, no)
    assert outcome.after is not None and outcome.after.status is ConsentStatus.WITHDRAWN
    # Read again under another estimate: the same statement, not a second event.
    again = ledger.record(
        who, replace(no, clock_lag=BEHIND + timedelta(seconds=1), observed_at=clock.advance(seconds=5))
    )
    assert again.duplicate
    with ledger.engine.connect() as conn:
        lags = conn.execute(
            select(consent_events.c.status, consent_events.c.clock_lag_ms).order_by(consent_events.c.id)
        ).all()
        payloads = [
            orjson.loads(text)["what"]
            for text in conn.execute(
                select(audit_entries.c.payload)
                .where(audit_entries.c.action == "consent.recorded")
                .order_by(audit_entries.c.seq)
            ).scalars()
        ]
        # audit verify's two checks of events: each entry says what its event says, and each state
        # row is the fold of its events (with the lag: it decided the state).
        assert audit.agreement(conn).ok
        held = audit_states.states(conn, ledger.purposes, ledger.policy)
        assert held.ok, held.problem
    assert [tuple(row) for row in lags] == [("granted", None), ("withdrawn", 120_000)]
    # Carried only where set: an entry without a lag reads as every entry before 0026.
    assert [payload.get("clock_lag_ms", "absent") for payload in payloads] == ["absent", 120_000]
    assert ledger.subject_view("lagged@example.test")["purposes"][0]["status"] == "withdrawn"


# -- the engine: the lag it reads values with ------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "lag"),
    [
        # 120 s behind as an answer shows it (Date whole seconds): the most it allows, rounded up.
        (
            ClockOffset(low=timedelta(seconds=-120, microseconds=-250_400), high=timedelta(seconds=-119)),
            120_251,
        ),
        (ClockOffset(low=timedelta(seconds=-5, microseconds=-1), high=timedelta(seconds=-3)), 5_001),
        # Not known to run behind (in step within the answer's margin, ahead, nothing said): none.
        (ClockOffset(low=timedelta(seconds=-1), high=timedelta(milliseconds=300)), None),
        (ClockOffset(low=timedelta(seconds=30), high=timedelta(seconds=31)), None),
        (None, None),
        # A whole day behind (the furthest the clock believes) stays what the ledger keeps.
        (ClockOffset(low=-CLOCK_LAG_MAX - timedelta(microseconds=300), high=-CLOCK_LAG_MAX), 86_400_000),
    ],
    ids=["120s_behind", "5s_behind", "in_step", "ahead", "unknown", "a_day_behind"],
)
def test_the_engine_reads_values_with_the_most_lag_the_crms_answers_allow(
    offset: ClockOffset | None, lag: int | None
) -> None:
    engine = SimpleNamespace(_crm_offset=lambda: offset)
    measured = SyncEngine._clock_lag(engine)  # type: ignore[arg-type]
    assert clock_lag_ms(measured) == lag
    assert check_clock_lag(measured) == measured
