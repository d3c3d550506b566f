"""Property-based tests: the fold is a join, so only the *set* of evidence decides the outcome."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from consentsync.domain import (
    STICKY_STATUSES,
    ConsentStatus,
    EffectiveState,
    Evidence,
    LawfulBasis,
    ObjectionFact,
    ObjectionHandling,
    ObjectionStatus,
    Origin,
    Purpose,
    SubjectFlags,
    canonical_json,
)
from consentsync.reconcile import (
    Policy,
    Ranked,
    Rule,
    Summary,
    effective_state,
    reconcile,
    summarise,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Small pools so that equal times, replays and unknown times happen often.
TIMES = [T0 + timedelta(days=d) for d in (0, 1, 2, 3, 400, 800)]
NOWS = [T0 + timedelta(days=d) for d in (3, 500, 1000)]

TRUSTED = ("web_form", "ops")
UNTRUSTED = ("hubspot", "salesforce", "partner_list")
POLICY = Policy(trusted_sources=frozenset({*TRUSTED, "preference_center", "double_opt_in"}))

EMAIL = Purpose(
    key="email_marketing",
    name="Email marketing",
    direct_marketing=True,
    default_basis=LawfulBasis.CONSENT,
    validity_days=730,
    objection_handling=ObjectionHandling.AUTO_UPHOLD,
)
PROFILING = Purpose(
    key="profiling",
    name="Profiling",
    direct_marketing=False,
    default_basis=LawfulBasis.LEGITIMATE_INTERESTS,
    validity_days=None,
    objection_handling=ObjectionHandling.MANUAL_REVIEW,
)
SERVICE = Purpose(
    key="service",
    name="Service messages",
    direct_marketing=False,
    default_basis=LawfulBasis.CONTRACT,
    validity_days=None,
    objection_handling=ObjectionHandling.AUTO_UPHOLD,
)
PURPOSES = (EMAIL, PROFILING, SERVICE)

times = st.sampled_from(TIMES)
maybe_times = st.one_of(st.none(), times)


@st.composite
def evidence(
    draw: st.DrawFn,
    origins: st.SearchStrategy[Origin] = st.sampled_from(Origin),  # noqa: B008
) -> Evidence:
    event_time = draw(maybe_times)
    return Evidence(
        purpose="p",
        channel="email",
        status=draw(st.sampled_from(ConsentStatus)),
        basis=draw(st.sampled_from([None, LawfulBasis.CONSENT, LawfulBasis.CONTRACT])),
        event_time=event_time,
        observed_at=draw(times),
        source=draw(st.sampled_from(TRUSTED + UNTRUSTED)),
        origin=draw(origins),
        actor=draw(st.sampled_from([None, "subject"])),
        notice_version=draw(st.sampled_from([None, None, "v1", "v2"])),
        double_opt_in_at=draw(st.sampled_from([None, None, TIMES[1]])),
        evidence_ref=draw(st.sampled_from([None, None, "ref-1"])),
    )


@st.composite
def trusted_opt_in(draw: st.DrawFn) -> Evidence:
    """An opt-in that can reverse a sticky value when it is newer."""
    item = Evidence(
        purpose="p",
        channel="email",
        status=ConsentStatus.GRANTED,
        basis=draw(st.sampled_from([None, LawfulBasis.CONSENT])),
        event_time=draw(times),
        observed_at=draw(times),
        source=draw(st.sampled_from(TRUSTED)),
        origin=Origin.CAPTURE,
        notice_version="v1",
    )
    assert POLICY.reverses_sticky(item)
    return item


# Mix in explicit trusted opt-ins so that reversals are exercised, not only found by chance.
any_evidence = st.one_of(evidence(), evidence(), trusted_opt_in())
evidence_lists = st.lists(any_evidence, max_size=8)

flags_strategy = st.one_of(
    st.just(SubjectFlags()),
    st.builds(
        SubjectFlags,
        suppressed_since=times,
        suppression_reason=st.just("erasure"),
        restricted=st.booleans(),
    ),
)
objections_strategy = st.lists(
    st.builds(
        ObjectionFact,
        purpose=st.sampled_from([p.key for p in PURPOSES]),
        direct_marketing=st.booleans(),
        status=st.sampled_from(ObjectionStatus),
        raised_at=times,
    ),
    max_size=3,
)


def states(
    summary: Summary,
    flags: SubjectFlags = SubjectFlags(),  # noqa: B008
    objections: list[ObjectionFact] | tuple[()] = (),
    now: datetime = NOWS[0],
) -> list[EffectiveState]:
    return [
        effective_state(summary, purpose, "email", flags=flags, objections=objections, now=now)
        for purpose in PURPOSES
    ]


SETTINGS = settings(max_examples=200, deadline=None)
# The algebraic laws draw up to three summaries each; fewer examples keep the file quick.
LAW_SETTINGS = settings(max_examples=100, deadline=None)


# (a) order of arrival ---------------------------------------------------------------------------


@SETTINGS
@given(
    items=evidence_lists,
    data=st.data(),
    flags=flags_strategy,
    objections=objections_strategy,
    now=st.sampled_from(NOWS),
)
def test_order_of_arrival_does_not_matter(
    items: list[Evidence],
    data: st.DataObject,
    flags: SubjectFlags,
    objections: list[ObjectionFact],
    now: datetime,
) -> None:
    shuffled = data.draw(st.permutations(items), label="permutation")
    original, permuted = summarise(items, POLICY), summarise(shuffled, POLICY)
    assert permuted == original
    assert permuted.to_json() == original.to_json()
    assert states(permuted, flags, objections, now) == states(original, flags, objections, now)


# (b) replays ----------------------------------------------------------------------------------


@SETTINGS
@given(items=st.lists(any_evidence, min_size=1, max_size=8), data=st.data())
def test_replaying_evidence_changes_nothing(items: list[Evidence], data: st.DataObject) -> None:
    replays = data.draw(st.lists(st.sampled_from(items), min_size=1, max_size=8), label="replays")
    stream = data.draw(st.permutations(items + replays), label="stream")
    assert summarise(stream, POLICY) == summarise(items, POLICY)


@SETTINGS
@given(items=st.lists(any_evidence, min_size=1, max_size=8), data=st.data())
def test_rereading_a_dated_value_later_changes_no_decision(
    items: list[Evidence], data: st.DataObject
) -> None:
    """The same statement observed again (same fingerprint, later sync) decides nothing new."""
    dated = [e for e in items if e.event_time is not None]
    if not dated:
        return
    again = data.draw(st.sampled_from(dated), label="re-read")
    later = replace(again, observed_at=again.observed_at + timedelta(days=9))
    assert later.fingerprint() == again.fingerprint()
    for now in NOWS:
        assert states(summarise([*items, later], POLICY), now=now) == states(
            summarise(items, POLICY), now=now
        )


# (c) the join ---------------------------------------------------------------------------------

summaries = evidence_lists.map(lambda items: summarise(items, POLICY))


@LAW_SETTINGS
@given(a=summaries, b=summaries)
def test_join_is_commutative(a: Summary, b: Summary) -> None:
    assert a.join(b) == b.join(a)


@LAW_SETTINGS
@given(a=summaries, b=summaries, c=summaries)
def test_join_is_associative(a: Summary, b: Summary, c: Summary) -> None:
    assert a.join(b).join(c) == a.join(b.join(c))


@LAW_SETTINGS
@given(a=summaries)
def test_join_is_idempotent_with_identity(a: Summary) -> None:
    assert a.join(a) == a
    assert a.join(Summary()) == a
    assert Summary().join(a) == a


@LAW_SETTINGS
@given(a=evidence_lists, b=evidence_lists)
def test_join_of_summaries_is_summary_of_union(a: list[Evidence], b: list[Evidence]) -> None:
    assert summarise(a, POLICY).join(summarise(b, POLICY)) == summarise(a + b, POLICY)
    assert summarise(b, POLICY, start=summarise(a, POLICY)) == summarise(a + b, POLICY)


@LAW_SETTINGS
@given(a=summaries)
def test_summary_json_round_trip(a: Summary) -> None:
    assert Summary.from_json(a.to_json()) == a
    assert Summary.from_json(json.loads(canonical_json(a.to_json()))) == a


# (d) CRM re-reads never undo a sticky value ----------------------------------------------------


def _sort_time(item: Evidence) -> datetime:
    return Ranked.of(item).sort_time


@SETTINGS
@given(
    before=evidence_lists,
    withdrawal=evidence(),
    after=evidence_lists,
    crm_values=st.lists(evidence(origins=st.just(Origin.CRM)), max_size=10),
    now=st.sampled_from(NOWS),
)
def test_crm_values_never_undo_a_sticky_value(
    before: list[Evidence],
    withdrawal: Evidence,
    after: list[Evidence],
    crm_values: list[Evidence],
    now: datetime,
) -> None:
    sticky = replace(withdrawal, status=ConsentStatus.WITHDRAWN)
    history = [*before, sticky, *after]
    everything = [*history, *crm_values]

    latest_sticky = max(_sort_time(e) for e in everything if e.status in STICKY_STATUSES)
    reversed_by_trusted = any(
        POLICY.reverses_sticky(e) and e.event_time is not None and e.event_time > latest_sticky
        for e in everything
    )
    # Sanity: CRM values never count as a reversing opt-in.
    assert not any(POLICY.reverses_sticky(e) for e in crm_values)

    for purpose in PURPOSES:
        result = effective_state(
            summarise(everything, POLICY),
            purpose,
            "email",
            flags=SubjectFlags(),
            objections=(),
            now=now,
        )
        if reversed_by_trusted:
            continue
        assert result.status in STICKY_STATUSES
        assert result.suppressed


@SETTINGS
@given(
    items=evidence_lists,
    crm_values=st.lists(evidence(origins=st.just(Origin.CRM)), max_size=10),
    suppressed_since=times,
    raised_at=times,
    now=st.sampled_from(NOWS),
)
def test_crm_values_never_lift_erasure_or_objection(
    items: list[Evidence],
    crm_values: list[Evidence],
    suppressed_since: datetime,
    raised_at: datetime,
    now: datetime,
) -> None:
    """Erasure and an Art. 21(2) objection are sticky too: only a newer trusted opt-in lifts them."""
    summary = summarise([*items, *crm_values], POLICY)
    trusted = [e.event_time for e in items if POLICY.reverses_sticky(e) and e.event_time is not None]
    erased = SubjectFlags(suppressed_since=suppressed_since, suppression_reason="erasure")
    objection = ObjectionFact(EMAIL.key, True, ObjectionStatus.UPHELD, raised_at)
    for purpose in PURPOSES:
        result = effective_state(summary, purpose, "email", flags=erased, objections=(), now=now)
        if not any(at > suppressed_since for at in trusted):
            assert (result.suppressed, result.rule) == (True, Rule.ERASURE)
    result = effective_state(summary, EMAIL, "email", flags=SubjectFlags(), objections=[objection], now=now)
    if not any(at > raised_at for at in trusted):
        assert (result.suppressed, result.rule) == (True, Rule.OBJECTION_DIRECT_MARKETING)


@LAW_SETTINGS
@given(
    items=evidence_lists,
    crm_values=st.lists(evidence(origins=st.just(Origin.CRM)), min_size=1, max_size=10),
)
def test_crm_values_never_add_a_trusted_opt_in(items: list[Evidence], crm_values: list[Evidence]) -> None:
    before = summarise(items, POLICY)
    after = summarise(crm_values, POLICY, start=before)
    assert after.trusted_opt_in_at == before.trusted_opt_in_at


# (e) incremental reconcile equals summarising the whole set -------------------------------------


@SETTINGS
@given(
    items=evidence_lists,
    flags=flags_strategy,
    objections=objections_strategy,
    now=st.sampled_from(NOWS),
)
def test_incremental_reconcile_equals_summarise(
    items: list[Evidence],
    flags: SubjectFlags,
    objections: list[ObjectionFact],
    now: datetime,
) -> None:
    for purpose in PURPOSES:
        current: Summary | None = None
        previous_after = effective_state(
            Summary(), purpose, "email", flags=flags, objections=objections, now=now
        )
        for item in items:
            decision = reconcile(current, item, purpose, POLICY, flags=flags, objections=objections, now=now)
            assert decision.before == previous_after
            assert decision.changed == (
                (decision.before.status, decision.before.basis, decision.before.suppressed)
                != (decision.after.status, decision.after.basis, decision.after.suppressed)
            )
            current, previous_after = decision.summary, decision.after
        whole = summarise(items, POLICY)
        assert (current or Summary()) == whole
        assert previous_after == effective_state(
            whole, purpose, "email", flags=flags, objections=objections, now=now
        )
