"""Property-based tests: the fold is a join, so only the *set* of evidence decides the outcome;
and the precedence rules of docs/policy.md hold for every order of arrival, every source, every
origin and every basis (issue 12: no basis switching, Art. 21(3), expiry whatever the order of
recording, the ePrivacy soft opt-in, future-dated values)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

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
    SoftOptIn,
    SubjectFlags,
    canonical_json,
)
from consentsync.reconcile import (
    Policy,
    Ranked,
    Rule,
    Summary,
    effective_state,
    is_system_expiry,
    reconcile,
    summarise,
)
from tests.unit.purposes import make_purpose

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Small pools so that equal times, replays and unknown times happen often.
TIMES = [T0 + timedelta(days=d) for d in (0, 1, 2, 3, 400, 800)]
NOWS = [T0 + timedelta(days=d) for d in (3, 500, 1000, 1600)]
# When consentsync learned of a dated value: at once, later, or (rarely) before it "happened":
# a future-dated value, which must count as undated.
OBSERVED_AFTER = [timedelta(0), timedelta(hours=1), timedelta(days=1), timedelta(days=-30)]
# How far the clock that stamped a value may have run behind ours (``Evidence.clock_lag``): mostly
# not known to, else up to a whole day (a lag past the observation is cut to it).
CLOCK_LAGS = [None, None, None, timedelta(minutes=2), timedelta(hours=2), timedelta(days=1)]

TRUSTED = ("web_form", "ops")
UNTRUSTED = ("hubspot", "salesforce", "partner_list")
POLICY = Policy(trusted_sources=frozenset({*TRUSTED, "preference_center", "double_opt_in"}))
BASES: list[LawfulBasis | None] = [None, *LawfulBasis]
OTHER_BASES = [b for b in LawfulBasis if b is not LawfulBasis.CONSENT]
CHANNELS = ("email", "post")

CONSENT, LEGIT = LawfulBasis.CONSENT, LawfulBasis.LEGITIMATE_INTERESTS
EMAIL = make_purpose("email_marketing", "Email marketing", CONSENT, direct_marketing=True, validity_days=730)
# Direct marketing on legitimate interests: needs a soft opt-in by email (eprivacy follows
# direct_marketing), not by post.
OFFERS = make_purpose("offers", "Offers to customers", LEGIT, direct_marketing=True)
# The same, configured outside the ePrivacy rules (B2B to corporate subscribers, say).
B2B = replace(OFFERS, key="b2b_offers", eprivacy=False)
PROFILING = make_purpose(
    "profiling", "Profiling", LEGIT, direct_marketing=False, handling=ObjectionHandling.MANUAL_REVIEW
)
SERVICE = make_purpose("service", "Service messages", LawfulBasis.CONTRACT, direct_marketing=False)
PURPOSES = (EMAIL, OFFERS, B2B, PROFILING, SERVICE)
DM_PURPOSES = tuple(p for p in PURPOSES if p.direct_marketing)

times = st.sampled_from(TIMES)
maybe_times = st.one_of(st.none(), times)
SOFT = SoftOptIn("order-1", "same product line", "checkout-v4", "footer-v2")


def _observed(draw: st.DrawFn, event_time: datetime | None) -> datetime:
    if event_time is None:
        return draw(times)
    return event_time + draw(st.sampled_from(OBSERVED_AFTER))


def on_one_key(status: ConsentStatus, at: datetime | None, observed_at: datetime, **more: Any) -> Evidence:
    """A value for purpose "p" by email, the one key these strategies draw for (the fold sees one
    key at a time); ``more`` gives the rest (``basis`` at least)."""
    return Evidence(
        purpose="p", channel="email", status=status, event_time=at, observed_at=observed_at, **more
    )


@st.composite
def evidence(
    draw: st.DrawFn,
    origins: st.SearchStrategy[Origin] = st.sampled_from(Origin),  # noqa: B008
    bases: st.SearchStrategy[LawfulBasis | None] = st.sampled_from(BASES),  # noqa: B008
    statuses: st.SearchStrategy[ConsentStatus] = st.sampled_from(ConsentStatus),  # noqa: B008
) -> Evidence:
    event_time = draw(maybe_times)
    return on_one_key(
        draw(statuses),
        event_time,
        _observed(draw, event_time),
        basis=draw(bases),
        source=draw(st.sampled_from(TRUSTED + UNTRUSTED)),
        origin=draw(origins),
        actor=draw(st.sampled_from([None, "subject"])),
        notice_version=draw(st.sampled_from([None, None, "v1", "v2"])),
        double_opt_in_at=draw(st.sampled_from([None, None, TIMES[1]])),
        evidence_ref=draw(st.sampled_from([None, None, "ref-1", "soft opt-in"])),
        # Read from a CRM whose clock ran behind ours (a no then counts up to that much later,
        # never after its observation): the order of arrival must still not matter.
        clock_lag=draw(st.sampled_from(CLOCK_LAGS)),
    )


def at_a_drawn_time(draw: st.DrawFn, status: ConsentStatus, *, promptly: bool, **more: Any) -> Evidence:
    """``status`` dated at a drawn time and observed after it: ``promptly`` within a day (never
    future-dated), else by any of :data:`OBSERVED_AFTER`."""
    at = draw(times)
    observed = at + draw(st.sampled_from(OBSERVED_AFTER[:3])) if promptly else _observed(draw, at)
    return on_one_key(status, at, observed, **more)


@st.composite
def trusted_opt_in(draw: st.DrawFn) -> Evidence:
    """A new consent: it can reverse a sticky value (and an objection) when it is newer."""
    basis = draw(st.sampled_from([None, LawfulBasis.CONSENT]))
    source = draw(st.sampled_from(TRUSTED))
    item = at_a_drawn_time(
        draw,
        ConsentStatus.GRANTED,
        promptly=True,
        basis=basis,
        source=source,
        origin=Origin.CAPTURE,
        notice_version="v1",
    )
    assert POLICY.reverses_sticky(item)
    return item


@st.composite
def soft_opt_in(draw: st.DrawFn) -> Evidence:
    """A soft opt-in record: its three conditions evidenced, on legitimate interests."""
    return at_a_drawn_time(
        draw,
        ConsentStatus.NOT_APPLICABLE,
        promptly=False,
        basis=LawfulBasis.LEGITIMATE_INTERESTS,
        source=draw(st.sampled_from(("checkout", *TRUSTED))),
        origin=draw(st.sampled_from([Origin.CAPTURE, Origin.CRM])),
        soft_opt_in=SOFT,
    )


@st.composite
def system_expiry(draw: st.DrawFn) -> Evidence:
    """What ``ledger expire`` records, at any time: a record of the clock, never a decision."""
    basis = draw(st.sampled_from(BASES))
    return at_a_drawn_time(
        draw,
        ConsentStatus.EXPIRED,
        promptly=True,
        basis=basis,
        source="consentsync:expiry",
        origin=Origin.SYSTEM,
        actor="consentsync",
    )


# Another basis than consent, recorded by anyone (trusted capture sources with proof included).
other_basis = evidence(
    origins=st.sampled_from([Origin.CAPTURE, Origin.CRM]),
    bases=st.sampled_from(OTHER_BASES),
    statuses=st.sampled_from(
        [s for s in ConsentStatus if s not in STICKY_STATUSES and s is not ConsentStatus.EXPIRED]
    ),
).map(lambda e: replace(e, notice_version="v1", evidence_ref="contract-7"))

# Mix in explicit consents, soft opt-ins and expiry records, so that reversals, soft opt-ins and
# sweeps are exercised, not only found by chance.
any_evidence = st.one_of(
    evidence(), evidence(), trusted_opt_in(), soft_opt_in(), system_expiry(), other_basis
)
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
        effective_state(summary, purpose, channel, flags=flags, objections=objections, now=now)
        for purpose in PURPOSES
        for channel in CHANNELS
    ]


def decided(state: EffectiveState) -> tuple[object, ...]:
    """Everything a CRM, the audit log and ``subject show`` see of a state."""
    return (
        state.status,
        state.basis,
        state.suppressed,
        state.rule,
        state.since,
        state.expires_at,
        state.evidenced,
    )


def new_consents_after(items: list[Evidence], moment: datetime) -> bool:
    return any(
        POLICY.reverses_sticky(e) and (at := POLICY.credible_time(e)) is not None and at > moment
        for e in items
    )


ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z")


def _sort_time(item: Evidence) -> datetime:
    return Ranked.of(item, POLICY).sort_time


SETTINGS = settings(max_examples=150, deadline=None)
# The algebraic laws draw up to three summaries each; fewer examples keep the file quick.
LAW_SETTINGS = settings(max_examples=80, deadline=None)


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


@SETTINGS
@given(
    items=evidence_lists,
    flags=flags_strategy,
    objections=objections_strategy,
    now=st.sampled_from(NOWS),
    # Whole seconds: a time stamped to the whole second is read to that second's end
    # (reconcile.no_counts_from), so a shift with a fraction changes what the stamps say.
    shift=st.integers(min_value=-3000 * 86_400, max_value=3000 * 86_400).map(lambda s: timedelta(seconds=s)),
)
def test_moving_every_time_by_the_same_amount_changes_no_decision(
    items: list[Evidence],
    flags: SubjectFlags,
    objections: list[ObjectionFact],
    now: datetime,
    shift: timedelta,
) -> None:
    """Only the times relative to each other decide: two people with the same story told a year
    apart end in the same state (a tie once went to whichever value's hash sorted first, and the
    hash holds the absolute times)."""

    def moved(at: datetime | None) -> datetime | None:
        return None if at is None else at + shift

    shifted = [
        replace(
            e,
            event_time=moved(e.event_time),
            observed_at=e.observed_at + shift,
            double_opt_in_at=moved(e.double_opt_in_at),
        )
        for e in items
    ]
    moved_flags = replace(flags, suppressed_since=moved(flags.suppressed_since))
    moved_objections = [replace(o, raised_at=o.raised_at + shift) for o in objections]
    before = states(summarise(items, POLICY), flags, objections, now)
    after = states(summarise(shifted, POLICY), moved_flags, moved_objections, now + shift)

    def seen(
        state: EffectiveState, since: datetime | None, expires_at: datetime | None
    ) -> tuple[object, ...]:
        # The detail names the deciding value's source, and its times (which move).
        return (
            *decided(state)[:4],
            since,
            expires_at,
            state.evidenced,
            ISO_TIME.sub("T", state.detail or ""),
        )

    assert [seen(state, moved(state.since), moved(state.expires_at)) for state in before] == [
        seen(state, state.since, state.expires_at) for state in after
    ]


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
    dated = [e for e in items if POLICY.credible_time(e) is not None]
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
    assert Summary.is_current(json.loads(canonical_json(a.to_json())))


# (d) sticky values: CRM re-reads and other bases never undo them (rule 1) -----------------------


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
    # Sanity: CRM values never count as a reversing opt-in.
    assert not any(POLICY.reverses_sticky(e) for e in crm_values)
    if new_consents_after(everything, latest_sticky):
        return
    for purpose in PURPOSES:
        for channel in CHANNELS:
            result = effective_state(
                summarise(everything, POLICY),
                purpose,
                channel,
                flags=SubjectFlags(),
                objections=(),
                now=now,
            )
            assert result.status in STICKY_STATUSES
            assert result.suppressed


@SETTINGS
@given(
    history=evidence_lists,
    refusal=evidence(statuses=st.sampled_from(sorted(STICKY_STATUSES))),
    switches=st.lists(st.one_of(other_basis, soft_opt_in()), min_size=1, max_size=6),
    data=st.data(),
    now=st.sampled_from(NOWS),
)
def test_no_basis_switching_after_a_withdrawal_or_refusal(
    history: list[Evidence],
    refusal: Evidence,
    switches: list[Evidence],
    data: st.DataObject,
    now: datetime,
) -> None:
    """EDPB 05/2020 paras 121-123: once consent was withdrawn or refused, another basis recorded
    for the same purpose and channel (legitimate interests, contract, a soft opt-in, ...), by
    anyone and with any proof, resumes nothing; only a new consent does. Every order."""
    everything = [*history, refusal, *switches]
    latest_sticky = max(_sort_time(e) for e in everything if e.status in STICKY_STATUSES)
    if new_consents_after(everything, latest_sticky):
        return
    stream = data.draw(st.permutations(everything), label="recording order")
    summary = summarise(stream, POLICY)
    for purpose in PURPOSES:
        for channel in CHANNELS:
            result = effective_state(summary, purpose, channel, flags=SubjectFlags(), objections=(), now=now)
            assert result.suppressed
            assert result.status in STICKY_STATUSES
            assert result.rule in (Rule.STICKY_WITHDRAWAL, Rule.STICKY_REFUSAL, Rule.NO_BASIS_SWITCH)
    # The switch is named when it is the latest value.
    latest = summary.latest
    assert latest is not None
    if latest.sort_time > latest_sticky and latest.basis not in (None, LawfulBasis.CONSENT):
        result = effective_state(summary, SERVICE, "post", flags=SubjectFlags(), objections=(), now=now)
        assert result.rule == Rule.NO_BASIS_SWITCH


@SETTINGS
@given(items=evidence_lists, extra=st.one_of(other_basis, soft_opt_in(), system_expiry()))
def test_evidence_other_than_a_new_consent_never_lifts_a_sticky_value(
    items: list[Evidence], extra: Evidence
) -> None:
    """Monotonicity: a sticky (suppressed) state stays suppressed whatever else is recorded,
    except a new consent."""
    before = summarise(items, POLICY)
    after = before.join(summarise([extra], POLICY))
    assert after.trusted_opt_in_at == before.trusted_opt_in_at
    for now in NOWS:
        for old, new in zip(states(before, now=now), states(after, now=now), strict=True):
            if old.rule in (Rule.STICKY_WITHDRAWAL, Rule.STICKY_REFUSAL, Rule.NO_BASIS_SWITCH):
                assert new.suppressed and new.status in STICKY_STATUSES


@SETTINGS
@given(
    items=evidence_lists,
    crm_values=st.lists(evidence(origins=st.just(Origin.CRM)), max_size=10),
    suppressed_since=times,
    now=st.sampled_from(NOWS),
)
def test_crm_values_never_lift_erasure(
    items: list[Evidence],
    crm_values: list[Evidence],
    suppressed_since: datetime,
    now: datetime,
) -> None:
    """Erasure is sticky too: only a newer new consent lifts it."""
    summary = summarise([*items, *crm_values], POLICY)
    erased = SubjectFlags(suppressed_since=suppressed_since, suppression_reason="erasure")
    lifted = new_consents_after(items, suppressed_since)
    for purpose in PURPOSES:
        result = effective_state(summary, purpose, "email", flags=erased, objections=(), now=now)
        if not lifted:
            assert (result.suppressed, result.rule) == (True, Rule.ERASURE)


@LAW_SETTINGS
@given(
    items=evidence_lists,
    crm_values=st.lists(evidence(origins=st.just(Origin.CRM)), min_size=1, max_size=10),
)
def test_crm_values_never_add_a_trusted_opt_in(items: list[Evidence], crm_values: list[Evidence]) -> None:
    before = summarise(items, POLICY)
    after = summarise(crm_values, POLICY, start=before)
    assert after.trusted_opt_in_at == before.trusted_opt_in_at


# (e) an Art. 21(2) objection to direct marketing is absolute (rule 2) --------------------------


@SETTINGS
@given(
    items=evidence_lists,
    raised_at=times,
    named=st.sampled_from((*DM_PURPOSES, PROFILING)),
    data=st.data(),
    now=st.sampled_from(NOWS),
)
def test_direct_marketing_objection_is_lifted_only_by_a_new_consent(
    items: list[Evidence],
    raised_at: datetime,
    named: Purpose,
    data: st.DataObject,
    now: datetime,
) -> None:
    """Art. 21(3): no later entry by the controller, on any basis, from any source, in any order,
    resumes direct marketing for any direct-marketing purpose or channel; only the person's new
    consent (newer than the objection) does, for the purpose and channel it was given for."""
    objection = ObjectionFact(named.key, True, ObjectionStatus.UPHELD, raised_at)
    stream = data.draw(st.permutations(items), label="recording order")
    summary = summarise(stream, POLICY)
    lifted = new_consents_after(items, raised_at)
    for purpose in PURPOSES:
        for channel in CHANNELS:
            result = effective_state(
                summary, purpose, channel, flags=SubjectFlags(), objections=[objection], now=now
            )
            covered = purpose.direct_marketing or purpose.key == named.key
            if covered and not lifted:
                assert (result.suppressed, result.rule) == (True, Rule.OBJECTION_DIRECT_MARKETING)
            if not covered:
                assert result == effective_state(
                    summary, purpose, channel, flags=SubjectFlags(), objections=(), now=now
                )


@SETTINGS
@given(
    before=evidence_lists,
    controller=st.lists(st.one_of(other_basis, soft_opt_in(), system_expiry()), max_size=6),
    raised_at=times,
    now=st.sampled_from(NOWS),
)
def test_controller_entries_after_a_direct_marketing_objection_resume_nothing(
    before: list[Evidence],
    controller: list[Evidence],
    raised_at: datetime,
    now: datetime,
) -> None:
    """Whatever the controller records on another basis (or a soft opt-in, or an expiry) lifts
    no Art. 21(2) objection: it binds as before, and only the person's new consent lifts it."""
    objection = [ObjectionFact(EMAIL.key, True, ObjectionStatus.UPHELD, raised_at)]
    without = summarise(before, POLICY)
    with_them = summarise(controller, POLICY, start=without)
    assert with_them.trusted_opt_in_at == without.trusted_opt_in_at
    for purpose in DM_PURPOSES:
        for channel in CHANNELS:
            old, new = (
                effective_state(s, purpose, channel, flags=SubjectFlags(), objections=objection, now=now)
                for s in (without, with_them)
            )
            if old.rule == Rule.OBJECTION_DIRECT_MARKETING:
                assert (new.suppressed, new.rule) == (True, Rule.OBJECTION_DIRECT_MARKETING)


# (f) expiry counts from the latest affirmative action, whenever the sweep ran (rule 4) ---------


def _sweep(summary: Summary, purpose: Purpose, channel: str, clock: datetime) -> Evidence | None:
    """What ``Ledger.expire_due`` records for this key when it runs at ``clock``."""
    state = effective_state(summary, purpose, channel, flags=SubjectFlags(), objections=(), now=clock)
    if state.rule != Rule.EXPIRED or state.evidence_status is not ConsentStatus.GRANTED:
        return None
    assert state.expires_at is not None
    return Evidence(
        purpose=purpose.key,
        channel=channel,
        status=ConsentStatus.EXPIRED,
        basis=state.basis,
        event_time=state.expires_at,
        observed_at=clock,
        source="consentsync:expiry",
        origin=Origin.SYSTEM,
        actor="consentsync",
    )


@SETTINGS
@given(
    items=st.lists(any_evidence, max_size=8),
    sweeps=st.lists(st.sampled_from(NOWS), max_size=4),
    data=st.data(),
)
def test_expiry_does_not_depend_on_when_the_sweep_ran(
    items: list[Evidence], sweeps: list[datetime], data: st.DataObject
) -> None:
    """Recordings and expiry sweeps interleaved in any order (the clock only moves forward):
    the final state is the one the evidence alone gives at that time, with or without sweeps."""
    now = max([*sweeps, NOWS[-1]])
    clocks = sorted(sweeps)
    order = data.draw(st.permutations(items), label="recording order")
    places = sorted(
        data.draw(
            st.lists(st.integers(0, len(order)), min_size=len(clocks), max_size=len(clocks)),
            label="sweep positions",
        )
    )
    steps: list[Evidence | datetime] = list(order)
    for offset, (place, clock) in enumerate(zip(places, clocks, strict=True)):
        steps.insert(place + offset, clock)
    for purpose in (EMAIL, OFFERS):
        summary = Summary()
        for step in steps:
            if isinstance(step, datetime):
                expiry = _sweep(summary, purpose, "email", step)
                if expiry is not None:
                    summary = summarise([expiry], POLICY, start=summary)
            else:
                summary = summarise([step], POLICY, start=summary)
        swept = effective_state(summary, purpose, "email", flags=SubjectFlags(), objections=(), now=now)
        plain = effective_state(
            summarise(items, POLICY), purpose, "email", flags=SubjectFlags(), objections=(), now=now
        )
        assert decided(swept) == decided(plain)
        # A sweep records each lapse once: right after one, the next finds nothing.
        last = _sweep(summary, purpose, "email", now)
        if last is not None:
            summary = summarise([last], POLICY, start=summary)
        assert _sweep(summary, purpose, "email", now) is None


@SETTINGS
@given(items=evidence_lists, expiries=st.lists(system_expiry(), min_size=1, max_size=4))
def test_recorded_expiries_decide_nothing(items: list[Evidence], expiries: list[Evidence]) -> None:
    for now in NOWS:
        with_them = states(summarise([*items, *expiries], POLICY), now=now)
        without = states(summarise(items, POLICY), now=now)
        assert [decided(s) for s in with_them] == [decided(s) for s in without]


@SETTINGS
@given(items=evidence_lists, now=st.sampled_from(NOWS))
def test_a_granted_consent_expires_from_the_latest_affirmative_action(
    items: list[Evidence], now: datetime
) -> None:
    summary = summarise(items, POLICY)
    latest = summary.latest
    result = effective_state(summary, EMAIL, "email", flags=SubjectFlags(), objections=(), now=now)
    if (
        result.rule in (Rule.LATEST_EVENT_TIME, Rule.TRUSTED_OPT_IN)
        and result.status is ConsentStatus.GRANTED
    ):
        assert latest is not None and latest.status is ConsentStatus.GRANTED
        anchor = latest.event_time or latest.observed_at
        assert result.expires_at == anchor + timedelta(days=730)
        assert now < result.expires_at and not result.suppressed
    if result.rule == Rule.EXPIRED and latest is not None and latest.status is ConsentStatus.GRANTED:
        assert result.expires_at is not None and now >= result.expires_at


# (g) PECR / ePrivacy: consent or a soft opt-in for electronic mail marketing (rule 7) ----------


@SETTINGS
@given(items=evidence_lists, data=st.data(), now=st.sampled_from(NOWS))
def test_electronic_marketing_needs_consent_or_a_soft_opt_in(
    items: list[Evidence], data: st.DataObject, now: datetime
) -> None:
    stream = data.draw(st.permutations(items), label="recording order")
    summary = summarise(stream, POLICY)
    soft_times = [POLICY.credible_time(e) for e in items if e.soft_opt_in is not None]
    latest_sticky = max((_sort_time(e) for e in items if e.status in STICKY_STATUSES), default=None)
    live_soft_opt_in = any(
        at is not None and (latest_sticky is None or at > latest_sticky) for at in soft_times
    )
    latest = summary.latest
    consent = (
        latest is not None
        and latest.status is ConsentStatus.GRANTED
        and latest.basis in (None, LawfulBasis.CONSENT)
    )
    for purpose in (EMAIL, OFFERS):
        result = effective_state(summary, purpose, "email", flags=SubjectFlags(), objections=(), now=now)
        if not result.suppressed:
            assert consent or live_soft_opt_in
            if not consent:
                assert result.rule == Rule.EPRIVACY_SOFT_OPT_IN
        if not consent and not live_soft_opt_in:
            assert result.suppressed
    # Not electronic mail, or a purpose outside the ePrivacy rules: the rule never applies.
    for purpose, channel in ((OFFERS, "post"), (B2B, "email"), (SERVICE, "email"), (PROFILING, "email")):
        result = effective_state(summary, purpose, channel, flags=SubjectFlags(), objections=(), now=now)
        assert result.rule not in (Rule.EPRIVACY_CONSENT_REQUIRED, Rule.EPRIVACY_SOFT_OPT_IN)


@SETTINGS
@given(items=evidence_lists, now=st.sampled_from(NOWS))
def test_a_free_text_note_is_no_soft_opt_in(items: list[Evidence], now: datetime) -> None:
    """Only the structured record counts: the same entry without its conditions changes nothing."""
    notes = [replace(e, soft_opt_in=None, evidence_ref="soft opt-in: customer") for e in items]
    summary = summarise(notes, POLICY)
    assert summary.soft_opt_in_at is None
    for channel in ("email", "sms"):
        result = effective_state(summary, OFFERS, channel, flags=SubjectFlags(), objections=(), now=now)
        latest = summary.latest
        if (
            latest is None
            or latest.status is not ConsentStatus.GRANTED
            or latest.basis
            not in (
                None,
                LawfulBasis.CONSENT,
            )
        ):
            assert result.suppressed


# (h) a future-dated value never outranks a real one (rule 3, reconciler side) ------------------


@SETTINGS
@given(future=evidence(), ahead=st.sampled_from([31, 400, 3000]))
def test_a_future_dated_value_counts_as_undated(future: Evidence, ahead: int) -> None:
    dated = replace(future, event_time=future.observed_at + timedelta(days=ahead))
    undated = replace(future, event_time=None)
    assert POLICY.credible_time(dated) is None
    assert not POLICY.reverses_sticky(dated)
    a, b = Ranked.of(dated, POLICY), Ranked.of(undated, POLICY)
    assert (a.sort_time, a.rank, a.event_time) == (b.sort_time, b.rank, b.event_time)
    summary = summarise([dated], POLICY)
    assert summary.trusted_opt_in_at is None and summary.soft_opt_in_at is None
    for now in NOWS:
        for state in states(summary, now=now):
            assert state.expires_at is None or state.expires_at <= dated.observed_at + timedelta(days=730)


@SETTINGS
@given(
    items=st.lists(any_evidence, min_size=1, max_size=8), future=evidence(), ahead=st.sampled_from([31, 3000])
)
def test_a_future_dated_value_never_outranks_a_real_one(
    items: list[Evidence], future: Evidence, ahead: int
) -> None:
    """Dated real values keep their place: a future-dated one sorts as early as possible (or, if
    restrictive, no later than it was observed), never at its claimed time."""
    dated = replace(future, event_time=future.observed_at + timedelta(days=ahead))
    ranked = Ranked.of(dated, POLICY)
    assert ranked.sort_time <= dated.observed_at
    assert ranked.event_time is None
    real = [e for e in items if POLICY.credible_time(e) is not None and not is_system_expiry(e)]
    summary = summarise([*items, dated], POLICY)
    if real and dated.status not in STICKY_STATUSES and dated.status is not ConsentStatus.EXPIRED:
        assert summary.latest is not None and summary.latest.fingerprint != dated.fingerprint()


# (i) incremental reconcile equals summarising the whole set -------------------------------------


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
