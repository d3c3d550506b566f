"""Properties of the precedence policy a regulator and a DPO rely on, over every order of arrival,
source, origin, basis, subject-wide fact and clock (docs/policy.md):

* a no never lifts a suppression: whatever else is on record, adding a withdrawal, a refusal or
  an objection leaves every suppressed state suppressed (Art. 7(3), 21);
* the person can always come back: their own new consent, newer than everything else on record,
  ends every no of theirs (withdrawal, refusal, upheld objection, erasure) for its purpose and
  channel, but never a restriction of processing (Art. 18, lifted only by its own decision);
* a no stamped to the whole second counts from the end of that second, whatever kind of no it is
  (a withdrawal, a refusal, an objection): a consent captured within that second does not lift it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from consentsync.domain import (
    STICKY_STATUSES,
    ConsentStatus,
    Evidence,
    ObjectionFact,
    ObjectionStatus,
    Origin,
    SubjectFlags,
)
from consentsync.reconcile import Rule, effective_state, summarise
from tests.unit.test_reconcile_properties import (
    BASES,
    CHANNELS,
    EMAIL,
    NOWS,
    POLICY,
    PURPOSES,
    SETTINGS,
    T0,
    TRUSTED,
    UNTRUSTED,
    _observed,
    _sort_time,
    evidence_lists,
    flags_strategy,
    maybe_times,
    objections_strategy,
    on_one_key,
    times,
)


@st.composite
def said_no(draw: st.DrawFn) -> Evidence:
    """A withdrawal or refusal from anyone, dated or not, on any basis (a CRM's, a capture's)."""
    at = draw(maybe_times)
    return on_one_key(
        draw(st.sampled_from(sorted(STICKY_STATUSES))),
        at,
        _observed(draw, at),
        basis=draw(st.sampled_from(BASES)),
        source=draw(st.sampled_from(TRUSTED + UNTRUSTED)),
        origin=draw(st.sampled_from([Origin.CAPTURE, Origin.CRM])),
        notice_version=draw(st.sampled_from([None, "v1"])),
    )


objection = st.builds(
    ObjectionFact,
    purpose=st.sampled_from([p.key for p in PURPOSES]),
    direct_marketing=st.booleans(),
    status=st.sampled_from(ObjectionStatus),
    raised_at=times,
)


@SETTINGS
@given(
    items=evidence_lists,
    no=said_no(),
    extra=st.lists(objection, max_size=1),
    flags=flags_strategy,
    objections=objections_strategy,
    now=st.sampled_from(NOWS),
    data=st.data(),
)
def test_a_no_never_lifts_a_suppression(
    items: list[Evidence],
    no: Evidence,
    extra: list[ObjectionFact],
    flags: SubjectFlags,
    objections: list[ObjectionFact],
    now: datetime,
    data: st.DataObject,
) -> None:
    before = summarise(items, POLICY)
    stream = data.draw(st.permutations([*items, no]), label="recording order")
    after = summarise(stream, POLICY)
    for purpose in PURPOSES:
        for channel in CHANNELS:
            old = effective_state(before, purpose, channel, flags=flags, objections=objections, now=now)
            new = effective_state(
                after, purpose, channel, flags=flags, objections=[*objections, *extra], now=now
            )
            if old.suppressed:
                assert new.suppressed, (old.rule, new.rule)


@SETTINGS
@given(
    items=evidence_lists,
    objections=st.lists(
        st.builds(
            ObjectionFact,
            purpose=st.sampled_from([p.key for p in PURPOSES]),
            direct_marketing=st.booleans(),
            status=st.sampled_from([ObjectionStatus.UPHELD, ObjectionStatus.REJECTED]),
            raised_at=times,
        ),
        max_size=3,
    ),
    erased_at=st.one_of(st.none(), times),
    restricted=st.booleans(),
    fraction=st.sampled_from([0, 1, 250_000]),
    data=st.data(),
)
def test_the_persons_new_consent_newer_than_everything_ends_every_no_but_a_restriction(
    items: list[Evidence],
    objections: list[ObjectionFact],
    erased_at: datetime | None,
    restricted: bool,
    fraction: int,
    data: st.DataObject,
) -> None:
    moments = [_sort_time(item) for item in items] + [o.raised_at for o in objections]
    moments += [item.observed_at for item in items] + ([erased_at] if erased_at else [])
    # Every time drawn is a whole second: the consent is from a later second than all of them.
    at = max([T0, *moments]) + timedelta(seconds=1, microseconds=fraction)
    consent = on_one_key(
        ConsentStatus.GRANTED,
        at,
        at,
        basis=None,
        source="web_form",
        origin=Origin.CAPTURE,
        notice_version="v3",
    )
    assert POLICY.reverses_sticky(consent)
    stream = data.draw(st.permutations([*items, consent]), label="recording order")
    summary = summarise(stream, POLICY)
    flags = SubjectFlags(suppressed_since=erased_at, suppression_reason="erasure", restricted=restricted)
    for purpose in PURPOSES:
        for channel in CHANNELS:
            state = effective_state(
                summary, purpose, channel, flags=flags, objections=objections, now=at + timedelta(days=1)
            )
            if restricted:
                assert (state.suppressed, state.rule) == (True, Rule.RESTRICTION)
            else:
                assert (state.status, state.suppressed) == (ConsentStatus.GRANTED, False), state.rule
                assert state.rule in (Rule.TRUSTED_OPT_IN, Rule.LATEST_EVENT_TIME)


@SETTINGS
@given(
    second=times,
    within=st.integers(min_value=1, max_value=999_999),
    kind=st.sampled_from(["withdrawn", "refused", "objection", "direct_marketing_objection"]),
)
def test_a_consent_within_the_second_of_a_whole_second_no_does_not_lift_it(
    second: datetime, within: int, kind: str
) -> None:
    """A no stamped "12:00:00" happened anywhere in that second: a consent captured at
    12:00:00.250 is not known to come after it, whatever kind of no it is; one from the next
    second is."""
    objections: list[ObjectionFact] = []
    items: list[Evidence] = []
    if kind in ("withdrawn", "refused"):
        items.append(
            on_one_key(ConsentStatus(kind), second, second, basis=None, source="hubspot", origin=Origin.CRM)
        )
    else:
        dm = kind == "direct_marketing_objection"
        objections.append(ObjectionFact(EMAIL.key, dm, ObjectionStatus.UPHELD, second))

    def decide(consent_at: datetime) -> tuple[bool, str]:
        consent = on_one_key(
            ConsentStatus.GRANTED,
            consent_at,
            consent_at,
            basis=None,
            source="web_form",
            origin=Origin.CAPTURE,
            notice_version="v3",
        )
        summary = summarise([*items, consent], POLICY)
        state = effective_state(
            summary, EMAIL, "email", flags=SubjectFlags(), objections=objections, now=consent_at
        )
        return state.suppressed, state.rule

    assert decide(second + timedelta(microseconds=within))[0] is True
    assert decide(second + timedelta(seconds=1)) == (
        False,
        Rule.TRUSTED_OPT_IN if items else Rule.LATEST_EVENT_TIME,
    )
