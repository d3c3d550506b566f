"""The stored status of a lapsed consent (``EffectiveState.evidence_status``, the column
``consent_states.status``) is what the evidence says, whatever rule decides the person's state.

The expiry sweep looks for consents stored as granted past their window. A restriction, an
erasure or an objection decided a person's state before the expiry branch, which alone said
"expired once the lapse is recorded": their recorded lapse stayed granted in the column, the
sweep found it again on every call (a duplicate record under the writer lock each time, forever)
and stored-status reports read the consent as granted. The suppression and its rule stay what
they were: only the evidence's status reads expired.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consentsync.domain import (
    ConsentStatus,
    EffectiveState,
    Evidence,
    LawfulBasis,
    ObjectionFact,
    ObjectionStatus,
    Origin,
    SubjectFlags,
)
from consentsync.reconcile import Rule, Summary, effective_state, summarise
from tests.unit.test_reconcile_properties import (
    CHANNELS,
    EMAIL,
    NOWS,
    POLICY,
    PURPOSES,
    SETTINGS,
    _sweep,
    evidence_lists,
    flags_strategy,
    objections_strategy,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GRANT = Evidence(
    purpose=EMAIL.key,
    channel="email",
    status=ConsentStatus.GRANTED,
    basis=LawfulBasis.CONSENT,
    event_time=T0,
    observed_at=T0,
    source="web_form",
    origin=Origin.CAPTURE,
    notice_version="v1",
)
LAPSE_AT = T0 + timedelta(days=730)  # email marketing's validity
NOW = LAPSE_AT + timedelta(days=1)
SWEEP = Evidence(
    purpose=EMAIL.key,
    channel="email",
    status=ConsentStatus.EXPIRED,
    basis=LawfulBasis.CONSENT,
    event_time=LAPSE_AT,
    observed_at=NOW,
    source="consentsync:expiry",
    origin=Origin.SYSTEM,
    actor="consentsync",
)

# Each subject-wide fact that decides a state before the clock does, with the rule it decides.
SUPPRESSING: dict[str, tuple[SubjectFlags, list[ObjectionFact], str]] = {
    "restricted": (SubjectFlags(restricted=True), [], Rule.RESTRICTION),
    "erased": (
        SubjectFlags(suppressed_since=T0 + timedelta(days=10), suppression_reason="erased"),
        [],
        Rule.ERASURE,
    ),
    "objection pending": (
        SubjectFlags(),
        [ObjectionFact(EMAIL.key, False, ObjectionStatus.PENDING, T0 + timedelta(days=10))],
        Rule.OBJECTION_PENDING,
    ),
    "objection to direct marketing": (
        SubjectFlags(),
        [ObjectionFact(EMAIL.key, True, ObjectionStatus.UPHELD, T0 + timedelta(days=10))],
        Rule.OBJECTION_DIRECT_MARKETING,
    ),
    "objection upheld": (
        SubjectFlags(),
        [ObjectionFact(EMAIL.key, False, ObjectionStatus.UPHELD, T0 + timedelta(days=10))],
        Rule.OBJECTION_UPHELD,
    ),
}


def stored(state: EffectiveState) -> ConsentStatus:
    """What ``Ledger._store_states`` writes to ``consent_states.status``."""
    return state.evidence_status or state.status


def _state(summary: Summary, flags: SubjectFlags, objections: list[ObjectionFact]) -> EffectiveState:
    return effective_state(summary, EMAIL, "email", flags=flags, objections=objections, now=NOW)


@pytest.mark.parametrize("who", sorted(SUPPRESSING))
def test_a_recorded_lapse_is_stored_expired_whatever_suppresses_the_person(who: str) -> None:
    flags, objections, rule = SUPPRESSING[who]
    pending = _state(summarise([GRANT], POLICY), flags, objections)
    recorded = _state(summarise([GRANT, SWEEP], POLICY), flags, objections)
    # Until the sweep records the lapse, it must find it: stored granted past its window.
    assert stored(pending) is ConsentStatus.GRANTED and pending.expires_at == LAPSE_AT
    # Once recorded, it is stored expired, and the sweep finds it no more.
    assert stored(recorded) is ConsentStatus.EXPIRED
    # The suppression and its rule are what they were, and what the CRMs see does not move.
    assert (recorded.suppressed, recorded.rule) == (pending.suppressed, pending.rule) == (True, rule)
    assert (recorded.status, recorded.detail) == (pending.status, pending.detail)


def test_a_lapse_recorded_for_an_earlier_grant_is_not_a_renewals() -> None:
    """A renewal moves the window: the old lapse on record does not make it read expired."""
    flags, objections, _rule = SUPPRESSING["restricted"]
    renewal = Evidence(
        purpose=EMAIL.key,
        channel="email",
        status=ConsentStatus.GRANTED,
        basis=LawfulBasis.CONSENT,
        event_time=T0 + timedelta(days=700),
        observed_at=NOW,
        source="web_form",
        origin=Origin.CAPTURE,
        notice_version="v1",
    )
    summary = summarise([GRANT, SWEEP, renewal], POLICY)
    assert stored(_state(summary, flags, objections)) is ConsentStatus.GRANTED  # within its window
    later = effective_state(
        summary, EMAIL, "email", flags=flags, objections=objections, now=NOW + timedelta(days=700)
    )
    assert stored(later) is ConsentStatus.GRANTED  # past it: due, the sweep must record this lapse


@SETTINGS
@given(
    items=evidence_lists,
    flags=flags_strategy,
    objections=objections_strategy,
    now=st.sampled_from(NOWS),
    swept=st.booleans(),
)
def test_the_stored_status_does_not_depend_on_subject_wide_facts(
    items: list[Evidence],
    flags: SubjectFlags,
    objections: list[ObjectionFact],
    now: datetime,
    swept: bool,
) -> None:
    """Restriction, erasure and objections decide ``suppressed`` and ``rule``; the stored status
    is the evidence's, with or without them (``Ledger.expire_due`` relies on this when it
    settles a ledger's recorded lapses without reading each person's flags)."""
    base = summarise(items, POLICY)
    for purpose in PURPOSES:
        for channel in CHANNELS:
            summary = base
            if swept and (lapse := _sweep(summary, purpose, channel, now)) is not None:
                summary = summarise([lapse], POLICY, start=summary)
            plain = effective_state(summary, purpose, channel, flags=SubjectFlags(), objections=(), now=now)
            decided = effective_state(summary, purpose, channel, flags=flags, objections=objections, now=now)
            assert stored(decided) is stored(plain)


@SETTINGS
@given(
    items=evidence_lists,
    flags=flags_strategy,
    objections=objections_strategy,
    now=st.sampled_from(NOWS),
)
def test_recording_the_sweeps_lapse_only_marks_it_on_record(
    items: list[Evidence], flags: SubjectFlags, objections: list[ObjectionFact], now: datetime
) -> None:
    """What the sweep records when a consent is due: after it, whatever suppresses the person,
    the consent is stored expired (found no more), and nothing else of the state moved."""
    summary = summarise(items, POLICY)
    for purpose in PURPOSES:
        for channel in CHANNELS:
            lapse = _sweep(summary, purpose, channel, now)
            if lapse is None:
                continue
            after = summarise([lapse], POLICY, start=summary)
            old, new = (
                effective_state(s, purpose, channel, flags=flags, objections=objections, now=now)
                for s in (summary, after)
            )
            assert stored(old) is ConsentStatus.GRANTED
            assert stored(new) is ConsentStatus.EXPIRED
            assert (new.status, new.suppressed, new.rule, new.since, new.expires_at) == (
                old.status,
                old.suppressed,
                old.rule,
                old.since,
                old.expires_at,
            )
