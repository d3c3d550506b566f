"""A consent asked for and not answered ("requested": a request mailed, a double opt-in sign-up
not confirmed; "applicable": a sign-up closed) is no consent on record towards a CRM only where
nothing but such statuses was ever on record (review of 4baf158, findings F1 and F2):

* F1: over a consent granted and since expired (or a CRM's own opt-in, an expiry a CRM showed),
  the request ends something the CRM may still show: the opt-out is written, as the expiry alone
  writes it, whether or not a sync ran between the expiry and the sign-up;
* F2: over nothing else, it writes no lawful basis either (a request names the basis it asks
  for, which nobody gave), as ``no_consent_on_record`` writes none.

The reconciler's ``Summary.answered`` (a join: any order of arrival) says which; the rule a
request is decided by stays the same (the outreach asks only under ``no_consent_on_record``, the
chase lists take only ``CHASEABLE_RULES``)."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from consentsync.domain import (
    ConsentStatus,
    EffectiveState,
    Evidence,
    LawfulBasis,
    ObjectionHandling,
    Origin,
    Purpose,
    SubjectFlags,
)
from consentsync.ledger.service import CHASEABLE_RULES
from consentsync.mapping import (
    PUSH_DECISIONS_VERSION,
    UNANSWERED_STATUSES,
    _for_want_of_consent,
    parse_mapping,
)
from consentsync.reconcile import (
    NO_EVIDENCE,
    SUMMARY_VERSION,
    Policy,
    Rule,
    Summary,
    effective_state,
    is_system_expiry,
    summarise,
)
from tests.integration.helpers import mapping_text

POLICY = Policy(trusted_sources=frozenset({"web_form"}))
EXPIRING = Purpose(
    "email_marketing", "Email marketing", True, LawfulBasis.CONSENT, 365, ObjectionHandling.MANUAL_REVIEW
)
LASTING = replace(EXPIRING, validity_days=None)
GRANTED_AT = datetime(2025, 1, 10, 12, tzinfo=UTC)
NOW = GRANTED_AT + timedelta(days=400)  # the grant expired 35 days ago
KEY = ("email_marketing", "email")

# As the shipped Salesforce contact.yaml: no `no_consent` value.
SALESFORCE = mapping_text(
    "acme",
    "Contact",
    ("Id", "Modified", "Email"),
    """\
  - purpose: email_marketing
    channel: email
    status:
      field: HasOptedOutOfEmail
      direction: both
      pull: {true: withdrawn, false: null}
      push: {suppressed: true, allowed: false}
""",
)
# A subscription status and a legal basis pushed for a purpose on consent (HubSpot's names).
WITH_BASIS = mapping_text(
    "acme",
    "Contact",
    ("Id", "Modified", "Email"),
    """\
  - purpose: email_marketing
    channel: email
    status:
      field: Subscription
      direction: both
      pull: {SUBSCRIBED: granted, UNSUBSCRIBED: withdrawn, NOT_SPECIFIED: null}
      push: {suppressed: UNSUBSCRIBED, allowed: SUBSCRIBED}
    basis:
      field: LegalBasis
      direction: both
      pull: {"Freely given consent from contact": consent, "Legitimate interest": legitimate_interests}
      push: {consent: "Freely given consent from contact", legitimate_interests: "Legitimate interest"}
""",
)
UNTICKED = {"HasOptedOutOfEmail": False}  # as the grant left it
NOT_SPECIFIED = {"Subscription": "NOT_SPECIFIED", "LegalBasis": None}

GRANT = Evidence(
    purpose="email_marketing",
    channel="email",
    status=ConsentStatus.GRANTED,
    basis=LawfulBasis.CONSENT,
    event_time=GRANTED_AT,
    observed_at=GRANTED_AT,
    source="web_form",
    origin=Origin.CAPTURE,
    notice_version="2025-01",
)
# A double opt-in sign-up after the expiry, not confirmed (hub/capture.py records it so).
SIGN_UP = Evidence.witnessed(
    NOW - timedelta(days=1),
    purpose="email_marketing",
    channel="email",
    status=ConsentStatus.REQUESTED,
    basis=LawfulBasis.CONSENT,
    source="web_form",
    origin=Origin.CAPTURE,
    notice_version="2026-05",
)
# A consent request mailed (hub/outreach.py records it so).
REQUEST = Evidence.witnessed(
    NOW - timedelta(days=1),
    purpose="email_marketing",
    channel="email",
    status=ConsentStatus.REQUESTED,
    basis=LawfulBasis.CONSENT,
    source="consent_request",
    origin=Origin.SYSTEM,
    actor="consentsync",
    notice_version="2026-05",
)


def _state(evidence: list[Evidence], purpose: Purpose = EXPIRING) -> EffectiveState:
    return effective_state(
        summarise(evidence, POLICY), purpose, "email", flags=SubjectFlags(), objections=(), now=NOW
    )


def _pushed(text: str, record: dict[str, object], state: EffectiveState) -> dict[str, object]:
    return parse_mapping(text, Path("contact.yaml")).updates_for(record, {KEY: state})


# F1 -------------------------------------------------------------------------------------------


def test_the_expiry_alone_ticks_the_box() -> None:
    state = _state([GRANT])
    assert (state.status, state.rule, state.suppressed) == (ConsentStatus.EXPIRED, "validity_expired", True)
    assert _pushed(SALESFORCE, UNTICKED, state) == {"HasOptedOutOfEmail": True}


def test_an_unconfirmed_sign_up_after_the_expiry_still_ticks_it() -> None:
    """The ledger says do not contact (expired, the renewal not confirmed): the CRM must not go
    on showing the person opted in on the strength of the expired grant."""
    state = _state([GRANT, SIGN_UP])
    assert (state.status, state.rule, state.suppressed) == (
        ConsentStatus.REQUESTED,
        "latest_event_time",
        True,
    )
    assert _pushed(SALESFORCE, UNTICKED, state) == {"HasOptedOutOfEmail": True}


def test_a_crm_seen_row_over_a_crm_opt_in_ticks_it_too() -> None:
    """A CRM's own opt-in (read as granted), then its "Seen"/"Waiting" row (read as requested):
    the opt-in the CRM may show elsewhere is over; the ledger suppresses; the box is ticked."""
    crm_grant = replace(GRANT, source="salesforce", origin=Origin.CRM, notice_version=None)
    seen = replace(SIGN_UP, source="salesforce", origin=Origin.CRM, notice_version=None)
    state = _state([crm_grant, seen], LASTING)
    assert (state.status, state.suppressed) == (ConsentStatus.REQUESTED, True)
    assert _pushed(SALESFORCE, UNTICKED, state) == {"HasOptedOutOfEmail": True}


def test_a_request_over_an_expiry_a_crm_showed_ticks_it_as_that_expiry_does() -> None:
    expired = replace(
        GRANT, status=ConsentStatus.EXPIRED, source="salesforce", origin=Origin.CRM, notice_version=None
    )
    assert _pushed(SALESFORCE, UNTICKED, _state([expired])) == {"HasOptedOutOfEmail": True}
    assert _pushed(SALESFORCE, UNTICKED, _state([expired, REQUEST])) == {"HasOptedOutOfEmail": True}


def test_a_request_or_sign_up_with_nothing_else_on_record_leaves_the_box_alone() -> None:
    """4baf158, kept: a request nobody answered, or a form a stranger filled in, is no opt-out."""
    for asked in (REQUEST, SIGN_UP, replace(SIGN_UP, status=ConsentStatus.APPLICABLE)):
        state = _state([asked])
        assert state.suppressed and state.status in UNANSWERED_STATUSES
        assert _for_want_of_consent(state)
        assert _pushed(SALESFORCE, UNTICKED, state) == {}
        # A mapping naming a no_consent value writes that, as for no consent on record.
        named = SALESFORCE.replace("allowed: false}", "allowed: false, no_consent: true}")
        assert _pushed(named, UNTICKED, state) == {"HasOptedOutOfEmail": True}
    # Several requests (a chase, a second sign-up) are still nothing but requests.
    assert _pushed(SALESFORCE, UNTICKED, _state([REQUEST, SIGN_UP])) == {}


def test_the_rule_of_a_request_is_unchanged_so_it_is_chased_and_not_asked_again() -> None:
    """The distinction is the mapping's, not a rule: a request decided by its time stays chaseable
    (ledger.service.CHASEABLE_RULES) and is never taken for ``no_consent_on_record``, under which
    the outreach mails a request (hub/outreach.py ``_asked``)."""
    for evidence in ([REQUEST], [GRANT, SIGN_UP]):
        state = _state(evidence)
        assert state.rule in CHASEABLE_RULES and state.rule != Rule.NO_CONSENT_ON_RECORD


# F2 -------------------------------------------------------------------------------------------


def test_no_consent_on_record_writes_no_basis() -> None:
    state = _state([])
    assert state.rule == "no_consent_on_record"
    assert _pushed(WITH_BASIS, NOT_SPECIFIED, state) == {}


def test_a_request_nobody_answered_writes_no_consent_basis_either() -> None:
    for asked in (REQUEST, SIGN_UP):
        state = _state([asked], LASTING)
        assert (state.status, state.suppressed, state.basis_stated) == (ConsentStatus.REQUESTED, True, False)
        assert _pushed(WITH_BASIS, NOT_SPECIFIED, state) == {}


def test_a_request_over_an_expired_grant_writes_what_the_expiry_writes() -> None:
    """The opt-out, and the consent basis the grant stated, as the expiry alone does."""
    subscribed = {"Subscription": "SUBSCRIBED", "LegalBasis": None}
    expected = {"Subscription": "UNSUBSCRIBED", "LegalBasis": "Freely given consent from contact"}
    assert _pushed(WITH_BASIS, subscribed, _state([GRANT])) == expected
    assert _pushed(WITH_BASIS, subscribed, _state([GRANT, SIGN_UP])) == expected


# The summary ----------------------------------------------------------------------------------


def test_the_summary_says_whether_anything_but_a_request_was_on_record() -> None:
    assert not NO_EVIDENCE.answered
    assert not summarise([REQUEST, SIGN_UP], POLICY).answered
    assert summarise([GRANT, SIGN_UP], POLICY).answered
    assert summarise([SIGN_UP, GRANT], POLICY).answered
    # A lapse consentsync recorded decides nothing: the grant it derives from says it.
    lapse = replace(REQUEST, status=ConsentStatus.EXPIRED, source="consentsync:expiry")
    assert is_system_expiry(lapse)
    assert not summarise([lapse], POLICY).answered


def test_summaries_of_version_5_are_folded_again() -> None:
    """A stored summary knows nothing of ``answered``: the ledger folds its events again."""
    data = summarise([GRANT, SIGN_UP], POLICY).to_json()
    assert data["v"] == SUMMARY_VERSION == 6 and data["answered"] is True
    assert Summary.from_json(data) == summarise([GRANT, SIGN_UP], POLICY)
    older = {**data, "v": 5}
    del older["answered"]
    assert not Summary.is_current(older)


def test_the_push_decisions_version_moved() -> None:
    """Version 6 left the people of F1 unticked: version 7 has every linked person examined
    again (sync/push_rules.py), so their opt-outs are written; later versions examine them again
    too (8, session 67: erasures carried to addressless records)."""
    assert PUSH_DECISIONS_VERSION >= 7


# Every order of arrival -----------------------------------------------------------------------

TIMES = [GRANTED_AT + timedelta(days=d) for d in (0, 1, 30, 380, 399)]
# Requests drawn more often, so that many examples end under one.
STATUSES = [*ConsentStatus, ConsentStatus.REQUESTED, ConsentStatus.REQUESTED, ConsentStatus.APPLICABLE]


@st.composite
def _evidence(draw: st.DrawFn) -> Evidence:
    at = draw(st.one_of(st.none(), st.sampled_from(TIMES)))
    observed = at + timedelta(hours=1) if at is not None else draw(st.sampled_from(TIMES))
    origin = draw(st.sampled_from(Origin))
    status = draw(st.sampled_from(STATUSES))
    return Evidence(
        purpose="email_marketing",
        channel="email",
        status=status,
        basis=draw(st.sampled_from([None, LawfulBasis.CONSENT, LawfulBasis.LEGITIMATE_INTERESTS])),
        event_time=at,
        observed_at=observed,
        source="consentsync:expiry"
        if origin is Origin.SYSTEM and status is ConsentStatus.EXPIRED
        else "web_form",
        origin=origin,
        notice_version=draw(st.sampled_from([None, "v1"])),
    )


@settings(max_examples=400, deadline=None)
@given(
    items=st.lists(_evidence(), min_size=1, max_size=6),
    purpose=st.sampled_from([EXPIRING, LASTING]),
    seed=st.integers(0, 2**16),
)
def test_an_unanswered_status_is_no_consent_on_record_exactly_when_nothing_else_ever_was(
    items: list[Evidence], purpose: Purpose, seed: int
) -> None:
    """Whatever the evidence and its order: a suppressed state under a status nobody answered,
    decided by the evidence alone, is read as no consent on record (no opt-out, no basis)
    exactly when every value on record is a request or an applicable (a lapse consentsync
    recorded aside); the same in every order of arrival."""
    state = _state(items, purpose)
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    assert _state(shuffled, purpose) == state
    if not (state.suppressed and state.status in UNANSWERED_STATUSES):
        return
    if state.rule not in CHASEABLE_RULES:
        return  # decided by a rule on evidence (none here) or by the ePrivacy rule
    only_asked = all(item.status in UNANSWERED_STATUSES for item in items if not is_system_expiry(item))
    assert _for_want_of_consent(state) is only_asked
    pushed = _pushed(SALESFORCE, UNTICKED, state)
    assert pushed == ({} if only_asked else {"HasOptedOutOfEmail": True})
    if only_asked:
        assert not state.basis_stated
