"""Example-based tests: one or more per precedence rule of domain.md and per ``Rule`` name."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict, Unpack

import pytest

from consentsync.domain import (
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
    SUMMARY_VERSION,
    Decision,
    Policy,
    Rule,
    Summary,
    effective_state,
    is_suppressed,
    reconcile,
    summarise,
)
from tests.unit.purposes import make_purpose

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
CONSENT, LEGIT = LawfulBasis.CONSENT, LawfulBasis.LEGITIMATE_INTERESTS
MANUAL_REVIEW = ObjectionHandling.MANUAL_REVIEW


def t(days: float) -> datetime:
    return T0 + timedelta(days=days)


EMAIL = make_purpose(
    "email_marketing",
    "Email marketing",
    CONSENT,
    direct_marketing=True,
    validity_days=730,
    channels=("email",),
)
SMS_OFFERS = make_purpose("sms_offers", "Offers by SMS", CONSENT, direct_marketing=True)
PROFILING = make_purpose(
    "profiling", "Profiling and segmentation", LEGIT, direct_marketing=False, handling=MANUAL_REVIEW
)
SERVICE = make_purpose("service", "Service messages", LawfulBasis.CONTRACT, direct_marketing=False)

# Direct marketing to customers on legitimate interests (PECR: needs a soft opt-in by email).
OFFERS = make_purpose(
    "offers", "Offers to customers", LEGIT, direct_marketing=True, channels=("email", "sms", "post")
)

POLICY = Policy(trusted_sources=frozenset({"web_form", "preference_center", "double_opt_in", "ops"}))
NOW = t(30)
SOFT = SoftOptIn(
    sale_ref="order 2026-0042",
    similar_products="garden tools (the product line bought)",
    refusal_at_collection="checkout form v4, opt-out box",
    refusal_in_messages="newsletter template v2, unsubscribe link",
)

S = ConsentStatus


class Recorded(TypedDict, total=False):
    """What a test may say of a value besides its status and time (the rest has defaults)."""

    observed: datetime | None
    source: str
    purpose: Purpose
    channel: str
    basis: LawfulBasis | None
    notice_version: str | None
    evidence_ref: str | None
    double_opt_in_at: datetime | None


def _recorded(
    status: ConsentStatus,
    at: datetime | None,
    origin: Origin,
    lag: timedelta,
    fields: Recorded,
    **defaults: str,
) -> Evidence:
    """A value of ``origin`` on EMAIL by email, observed ``lag`` after it happened (or at T0 when
    undated) unless ``observed`` says otherwise; ``fields`` override ``defaults``."""
    chosen: dict[str, Any] = {"purpose": EMAIL, "channel": "email", "basis": None, **defaults, **fields}
    observed = chosen.pop("observed", None)
    return Evidence(
        purpose=chosen.pop("purpose").key,
        status=status,
        event_time=at,
        observed_at=observed or (at + lag if at else T0),
        origin=origin,
        **chosen,
    )


def crm(status: ConsentStatus, at: datetime | None, **fields: Unpack[Recorded]) -> Evidence:
    """A value re-read from a CRM."""
    return _recorded(status, at, Origin.CRM, timedelta(hours=1), fields, source="hubspot")


def capture(status: ConsentStatus, at: datetime | None, **fields: Unpack[Recorded]) -> Evidence:
    """Recorded where the person acted; by default evidenced by the notice shown."""
    return _recorded(
        status,
        at,
        Origin.CAPTURE,
        timedelta(minutes=5),
        fields,
        source="web_form",
        actor="subject",
        notice_version="privacy-notice-v3",
    )


def state(
    evidence: Sequence[Evidence],
    purpose: Purpose = EMAIL,
    *,
    channel: str = "email",
    flags: SubjectFlags | None = None,
    objections: Sequence[ObjectionFact] = (),
    now: datetime = NOW,
) -> EffectiveState:
    return effective_state(
        summarise(evidence, POLICY),
        purpose,
        channel,
        flags=flags or SubjectFlags(),
        objections=objections,
        now=now,
    )


def outcome(result: EffectiveState) -> tuple[ConsentStatus, bool, Rule]:
    """What a rule decides for a key: its status, whether it is suppressed, and the rule."""
    return (result.status, result.suppressed, result.rule)


# --- 1. sticky withdrawal and refusal -------------------------------------------------------


class TestStickyWithdrawalAndRefusal:
    def test_withdrawal_alone_is_sticky_and_suppressed(self) -> None:
        result = state([capture(S.GRANTED, t(1)), capture(S.WITHDRAWN, t(2))])
        assert result.status is S.WITHDRAWN
        assert result.suppressed
        assert result.rule == Rule.STICKY_WITHDRAWAL
        assert result.since == t(2)

    def test_crm_withdrawal_after_grant_is_honoured(self) -> None:
        result = state([capture(S.GRANTED, t(1)), crm(S.WITHDRAWN, t(2))])
        assert outcome(result) == (S.WITHDRAWN, True, Rule.STICKY_WITHDRAWAL)

    def test_crm_reread_granted_with_later_event_time_does_not_reverse(self) -> None:
        result = state([capture(S.WITHDRAWN, t(1)), crm(S.GRANTED, t(5))])
        assert result.status is S.WITHDRAWN
        assert result.suppressed
        assert result.rule == Rule.STICKY_WITHDRAWAL

    def test_crm_value_never_reverses_even_with_trusted_source_name_and_proof(self) -> None:
        # The source name is a trusted capture source and the CRM value carries every proof
        # field, but it was read from a CRM: evidence to reconcile, never the authority.
        reread = crm(
            S.GRANTED,
            t(5),
            source="web_form",
            notice_version="v3",
            evidence_ref="form-123",
            double_opt_in_at=t(5),
        )
        result = state([capture(S.WITHDRAWN, t(1)), reread])
        assert (result.status, result.rule) == (S.WITHDRAWN, Rule.STICKY_WITHDRAWAL)

    def test_untrusted_capture_source_does_not_reverse(self) -> None:
        opt_in = capture(S.GRANTED, t(5), source="purchased_list", evidence_ref="row-7")
        result = state([capture(S.WITHDRAWN, t(1)), opt_in])
        assert outcome(result) == (S.WITHDRAWN, True, Rule.STICKY_WITHDRAWAL)

    def test_trusted_source_without_proof_does_not_reverse(self) -> None:
        bare = capture(S.GRANTED, t(5), notice_version=None)
        assert not bare.has_proof
        result = state([capture(S.WITHDRAWN, t(1)), bare])
        assert (result.status, result.rule) == (S.WITHDRAWN, Rule.STICKY_WITHDRAWAL)

    def test_trusted_evidenced_opt_in_without_event_time_does_not_reverse(self) -> None:
        # Proof needs a time: an opt-in whose time is unknown cannot be shown to be newer.
        undated = capture(S.GRANTED, None, observed=t(9), evidence_ref="form-9")
        assert not undated.has_proof
        result = state([capture(S.WITHDRAWN, t(1)), undated])
        assert (result.status, result.rule) == (S.WITHDRAWN, Rule.STICKY_WITHDRAWAL)

    @pytest.mark.parametrize(
        "proof",
        [
            {"notice_version": "privacy-notice-v4"},
            {"notice_version": None, "evidence_ref": "form-submission-42"},
            {"notice_version": None, "double_opt_in_at": t(5) + timedelta(minutes=3)},
        ],
        ids=["notice_version", "evidence_ref", "double_opt_in_at"],
    )
    def test_trusted_evidenced_newer_opt_in_reverses(self, proof: dict[str, object]) -> None:
        opt_in = capture(S.GRANTED, t(5), source="preference_center", **proof)  # type: ignore[arg-type]
        assert opt_in.has_proof
        result = state([capture(S.WITHDRAWN, t(1)), opt_in])
        assert result.status is S.GRANTED
        assert not result.suppressed
        assert result.rule == Rule.TRUSTED_OPT_IN
        assert result.evidenced
        assert result.since == t(5)

    @pytest.mark.parametrize("opt_in_at", [t(0), t(1)], ids=["older", "equal"])
    def test_trusted_evidenced_opt_in_older_or_equal_does_not_reverse(self, opt_in_at: datetime) -> None:
        result = state([capture(S.GRANTED, opt_in_at), capture(S.WITHDRAWN, t(1))])
        assert result.status is S.WITHDRAWN
        assert result.suppressed
        assert result.rule == Rule.STICKY_WITHDRAWAL

    def test_refusal_is_sticky(self) -> None:
        result = state([crm(S.REFUSED, t(1)), crm(S.GRANTED, t(3))])
        assert outcome(result) == (S.REFUSED, True, Rule.STICKY_REFUSAL)

    def test_refusal_not_reversed_by_untrusted_or_unproven(self) -> None:
        result = state(
            [
                crm(S.REFUSED, t(1)),
                capture(S.GRANTED, t(3), source="partner_import"),
                capture(S.GRANTED, t(4), notice_version=None),
            ]
        )
        assert (result.status, result.rule) == (S.REFUSED, Rule.STICKY_REFUSAL)

    def test_refusal_reversed_by_trusted_evidenced_newer_opt_in(self) -> None:
        result = state([crm(S.REFUSED, t(1)), capture(S.GRANTED, t(3), source="ops")])
        assert outcome(result) == (S.GRANTED, False, Rule.TRUSTED_OPT_IN)

    def test_a_new_withdrawal_after_a_reversal_is_sticky_again(self) -> None:
        result = state(
            [
                capture(S.WITHDRAWN, t(1)),
                capture(S.GRANTED, t(3)),
                crm(S.WITHDRAWN, t(5)),
                crm(S.GRANTED, t(7)),
            ]
        )
        assert (result.status, result.rule, result.since) == (
            S.WITHDRAWN,
            Rule.STICKY_WITHDRAWAL,
            t(5),
        )

    def test_latest_sticky_value_is_the_one_shown(self) -> None:
        result = state([crm(S.WITHDRAWN, t(1)), crm(S.REFUSED, t(2)), crm(S.GRANTED, t(3))])
        assert (result.status, result.rule) == (S.REFUSED, Rule.STICKY_REFUSAL)

    def test_withdrawal_sticks_regardless_of_arrival_order(self) -> None:
        items = [crm(S.GRANTED, t(9)), capture(S.WITHDRAWN, t(1)), crm(S.REQUESTED, t(4))]
        assert state(items) == state(list(reversed(items)))
        assert state(items).rule == Rule.STICKY_WITHDRAWAL


# --- 2. latest event time wins among affirmative values ---------------------------------------


class TestLatestEventTime:
    def test_later_request_replaces_earlier_grant(self) -> None:
        result = state([crm(S.GRANTED, t(1)), crm(S.REQUESTED, t(3))])
        assert result.status is S.REQUESTED
        assert result.rule == Rule.LATEST_EVENT_TIME
        assert result.suppressed  # consent requested, not given

    def test_later_grant_replaces_earlier_request(self) -> None:
        result = state([crm(S.REQUESTED, t(1)), crm(S.GRANTED, t(3), source="salesforce")])
        assert outcome(result) == (S.GRANTED, False, Rule.LATEST_EVENT_TIME)
        assert result.detail == "source salesforce"

    def test_event_time_wins_not_sync_time(self) -> None:
        # The request happened earlier but was synced (observed) much later than the grant.
        granted = crm(S.GRANTED, t(5), observed=t(6))
        late_synced_request = crm(S.REQUESTED, t(3), observed=t(20), source="salesforce")
        for items in ([granted, late_synced_request], [late_synced_request, granted]):
            result = state(items)
            assert result.status is S.GRANTED
            assert result.since == t(5)
            assert result.rule == Rule.LATEST_EVENT_TIME

    def test_same_status_from_two_sources_at_the_same_time_is_not_a_tie(self) -> None:
        result = state([crm(S.GRANTED, t(2)), crm(S.GRANTED, t(2), source="salesforce")])
        assert (result.status, result.rule) == (S.GRANTED, Rule.LATEST_EVENT_TIME)

    def test_basis_comes_from_the_latest_value_else_the_purpose(self) -> None:
        with_basis = state([crm(S.NOT_APPLICABLE, t(1), basis=LawfulBasis.LEGITIMATE_INTERESTS)], PROFILING)
        assert with_basis.basis is LawfulBasis.LEGITIMATE_INTERESTS
        without = state([crm(S.GRANTED, t(1))], PROFILING)
        assert without.basis is LawfulBasis.LEGITIMATE_INTERESTS
        assert state([crm(S.GRANTED, t(1))], EMAIL).basis is LawfulBasis.CONSENT


# --- 3. equal times and unknown times: most restrictive ---------------------------------------


class TestTiesAndUnknownTimes:
    @pytest.mark.parametrize(
        ("other", "expected_suppressed"),
        [
            (S.REQUESTED, True),
            (S.APPLICABLE, True),
            (S.NOT_APPLICABLE, True),  # consent basis: anything but granted is suppressed
        ],
    )
    def test_equal_times_most_restrictive_wins(self, other: ConsentStatus, expected_suppressed: bool) -> None:
        items = [crm(S.GRANTED, t(2)), crm(other, t(2), source="salesforce")]
        for ordering in (items, list(reversed(items))):
            result = state(ordering)
            assert result.status is other
            assert result.suppressed is expected_suppressed
            assert result.rule == Rule.MOST_RESTRICTIVE_ON_TIE

    def test_equal_time_grant_and_expiry_expiry_wins(self) -> None:
        # The tie picks the expiry a CRM reports; an expired value is reported under the expiry
        # rule. (consentsync's own expiry records decide nothing: TestExpiryOrderOfRecording.)
        expiry = crm(S.EXPIRED, t(2), source="salesforce")
        items = [crm(S.GRANTED, t(2)), expiry]
        for ordering in (items, list(reversed(items))):
            result = state(ordering)
            assert outcome(result) == (S.EXPIRED, True, Rule.EXPIRED)

    def test_equal_time_grant_and_withdrawal_withdrawal_wins_sticky(self) -> None:
        result = state([capture(S.GRANTED, t(2)), crm(S.WITHDRAWN, t(2))])
        assert (result.status, result.rule) == (S.WITHDRAWN, Rule.STICKY_WITHDRAWAL)

    def test_equal_time_withdrawal_and_refusal_withdrawal_is_more_restrictive(self) -> None:
        result = state([crm(S.REFUSED, t(2)), crm(S.WITHDRAWN, t(2), source="salesforce")])
        assert (result.status, result.rule) == (S.WITHDRAWN, Rule.STICKY_WITHDRAWAL)

    def test_tie_superseded_by_later_value_is_forgotten(self) -> None:
        result = state([crm(S.GRANTED, t(1)), crm(S.REQUESTED, t(1)), crm(S.GRANTED, t(3))])
        assert (result.status, result.rule) == (S.GRANTED, Rule.LATEST_EVENT_TIME)

    def test_earlier_tie_does_not_affect_later_single_value(self) -> None:
        summary = summarise([crm(S.GRANTED, t(1)), crm(S.REQUESTED, t(1)), crm(S.GRANTED, t(3))], POLICY)
        assert summary.tied is False

    def test_withdrawal_with_unknown_time_counts_as_observed_at(self) -> None:
        # Observed after a trusted, evidenced grant: taken as the later of the two.
        withdrawal = crm(S.WITHDRAWN, None, observed=t(7))
        result = state([capture(S.GRANTED, t(5)), withdrawal])
        assert result.status is S.WITHDRAWN
        assert result.rule == Rule.STICKY_WITHDRAWAL
        assert result.since == t(7)

    def test_withdrawal_with_unknown_time_observed_before_trusted_opt_in_is_reversed(self) -> None:
        # It cannot have happened after it was first observed, so a newer trusted opt-in wins.
        withdrawal = crm(S.WITHDRAWN, None, observed=t(3))
        result = state([withdrawal, capture(S.GRANTED, t(5))])
        assert (result.status, result.rule) == (S.GRANTED, Rule.TRUSTED_OPT_IN)

    def test_withdrawal_with_unknown_time_observed_at_same_moment_is_not_reversed(self) -> None:
        withdrawal = crm(S.WITHDRAWN, None, observed=t(5))
        result = state([withdrawal, capture(S.GRANTED, t(5))])
        assert (result.status, result.rule) == (S.WITHDRAWN, Rule.STICKY_WITHDRAWAL)

    def test_grant_with_unknown_time_counts_as_earliest(self) -> None:
        # Observed long after the request, but with no event time it loses to any dated value.
        undated_grant = crm(S.GRANTED, None, observed=t(20))
        result = state([crm(S.REQUESTED, t(1)), undated_grant])
        assert result.status is S.REQUESTED
        assert result.rule == Rule.LATEST_EVENT_TIME

    def test_grant_with_unknown_time_alone(self) -> None:
        result = state([crm(S.GRANTED, None, observed=t(4))])
        assert result.status is S.GRANTED
        assert result.rule == Rule.UNKNOWN_EVENT_TIME
        assert result.since == t(4)
        assert result.expires_at == t(4) + timedelta(days=730)
        assert not result.evidenced

    def test_two_unknown_times_most_restrictive(self) -> None:
        items = [crm(S.GRANTED, None, observed=t(4)), crm(S.REQUESTED, None, observed=t(2))]
        result = state(items)
        assert (result.status, result.rule) == (S.REQUESTED, Rule.MOST_RESTRICTIVE_ON_TIE)


# --- erasure and restriction ------------------------------------------------------------------


class TestErasureAndRestriction:
    ERASED = SubjectFlags(suppressed_since=t(2), suppression_reason="erasure (Art. 17)")

    @pytest.mark.parametrize("purpose", [EMAIL, PROFILING, SERVICE], ids=lambda p: p.key)
    def test_erasure_suppresses_every_purpose(self, purpose: Purpose) -> None:
        result = state([crm(S.GRANTED, t(5), purpose=purpose)], purpose, flags=self.ERASED)
        assert result.suppressed
        assert result.rule == Rule.ERASURE
        assert "erasure (Art. 17)" in result.detail

    def test_erasure_suppresses_without_any_evidence(self) -> None:
        result = state([], SERVICE, flags=self.ERASED)
        assert (result.suppressed, result.rule) == (True, Rule.ERASURE)

    def test_erasure_not_reversed_by_crm_or_untrusted_or_unproven(self) -> None:
        items = [
            crm(S.GRANTED, t(5), evidence_ref="x"),
            capture(S.GRANTED, t(6), source="partner_import"),
            capture(S.GRANTED, t(7), notice_version=None),
        ]
        result = state(items, flags=self.ERASED)
        assert (result.suppressed, result.rule) == (True, Rule.ERASURE)

    def test_erasure_reversed_by_newer_trusted_evidenced_opt_in(self) -> None:
        result = state([capture(S.GRANTED, t(5))], flags=self.ERASED)
        assert result.status is S.GRANTED
        assert not result.suppressed
        assert result.rule == Rule.LATEST_EVENT_TIME

    @pytest.mark.parametrize("opt_in_at", [t(1), t(2)], ids=["older", "equal"])
    def test_erasure_not_reversed_by_older_or_equal_opt_in(self, opt_in_at: datetime) -> None:
        result = state([capture(S.GRANTED, opt_in_at)], flags=self.ERASED)
        assert (result.suppressed, result.rule) == (True, Rule.ERASURE)

    @pytest.mark.parametrize("purpose", [EMAIL, PROFILING, SERVICE], ids=lambda p: p.key)
    def test_restriction_suppresses_everything(self, purpose: Purpose) -> None:
        result = state(
            [capture(S.GRANTED, t(5), purpose=purpose)],
            purpose,
            flags=SubjectFlags(restricted=True),
        )
        assert result.suppressed
        assert result.rule == Rule.RESTRICTION

    def test_restriction_is_not_reversed_by_a_trusted_opt_in(self) -> None:
        flags = SubjectFlags(restricted=True, suppressed_since=t(1), suppression_reason="x")
        result = state([capture(S.GRANTED, t(5))], flags=flags)
        assert (result.suppressed, result.rule) == (True, Rule.RESTRICTION)


# --- objections -------------------------------------------------------------------------------


RAISED = t(2)


def objection(
    purpose: Purpose, status: ObjectionStatus, at: datetime = RAISED, *, dm: bool | None = None
) -> ObjectionFact:
    return ObjectionFact(
        purpose=purpose.key,
        direct_marketing=purpose.direct_marketing if dm is None else dm,
        status=status,
        raised_at=at,
    )


class TestObjections:
    def test_pending_objection_suppresses_the_purpose_it_names(self) -> None:
        result = state([], PROFILING, objections=[objection(PROFILING, ObjectionStatus.PENDING)])
        assert result.suppressed
        assert result.rule == Rule.OBJECTION_PENDING
        assert result.basis is LawfulBasis.LEGITIMATE_INTERESTS

    def test_pending_objection_does_not_touch_other_purposes(self) -> None:
        result = state([], SERVICE, objections=[objection(PROFILING, ObjectionStatus.PENDING)])
        assert (result.suppressed, result.rule) == (False, Rule.DEFAULT_BASIS)

    def test_pending_objection_outranks_an_upheld_one(self) -> None:
        objections = [
            objection(PROFILING, ObjectionStatus.UPHELD, t(1)),
            objection(PROFILING, ObjectionStatus.PENDING, t(3)),
        ]
        result = state([], PROFILING, objections=objections)
        assert result.rule == Rule.OBJECTION_PENDING

    def test_upheld_objection_suppresses(self) -> None:
        result = state([], PROFILING, objections=[objection(PROFILING, ObjectionStatus.UPHELD)])
        assert (result.suppressed, result.rule) == (True, Rule.OBJECTION_UPHELD)

    def test_rejected_objection_has_no_effect(self) -> None:
        result = state([], PROFILING, objections=[objection(PROFILING, ObjectionStatus.REJECTED)])
        assert result == state([], PROFILING)
        assert (result.suppressed, result.rule) == (False, Rule.DEFAULT_BASIS)

    def test_rejected_direct_marketing_objection_has_no_effect(self) -> None:
        items = [capture(S.GRANTED, t(1))]
        rejected = [objection(EMAIL, ObjectionStatus.REJECTED)]
        assert state(items, objections=rejected) == state(items)

    @pytest.mark.parametrize("purpose", [EMAIL, SMS_OFFERS], ids=lambda p: p.key)
    def test_direct_marketing_objection_suppresses_every_dm_purpose(self, purpose: Purpose) -> None:
        objections = [objection(EMAIL, ObjectionStatus.UPHELD)]
        result = state([capture(S.GRANTED, t(1), purpose=purpose)], purpose, objections=objections)
        assert result.suppressed
        assert result.rule == Rule.OBJECTION_DIRECT_MARKETING
        assert "Art. 21(2)" in result.detail

    @pytest.mark.parametrize("purpose", [PROFILING, SERVICE], ids=lambda p: p.key)
    def test_direct_marketing_objection_leaves_non_dm_purposes_alone(self, purpose: Purpose) -> None:
        result = state([], purpose, objections=[objection(EMAIL, ObjectionStatus.UPHELD)])
        assert (result.suppressed, result.rule) == (False, Rule.DEFAULT_BASIS)

    def test_direct_marketing_objection_outranks_a_plain_upheld_one(self) -> None:
        objections = [
            objection(SMS_OFFERS, ObjectionStatus.UPHELD, t(1), dm=False),
            objection(EMAIL, ObjectionStatus.UPHELD, t(3)),
        ]
        result = state([], SMS_OFFERS, objections=objections)
        assert result.rule == Rule.OBJECTION_DIRECT_MARKETING

    def test_objection_not_reversed_by_crm_reread(self) -> None:
        result = state(
            [crm(S.GRANTED, t(5), evidence_ref="x")],
            objections=[objection(EMAIL, ObjectionStatus.UPHELD, t(2))],
        )
        assert (result.suppressed, result.rule) == (True, Rule.OBJECTION_DIRECT_MARKETING)

    def test_objection_reversed_by_newer_trusted_evidenced_opt_in(self) -> None:
        result = state(
            [capture(S.GRANTED, t(5))],
            objections=[objection(EMAIL, ObjectionStatus.UPHELD, t(2))],
        )
        assert outcome(result) == (S.GRANTED, False, Rule.LATEST_EVENT_TIME)

    def test_objection_not_reversed_by_older_opt_in(self) -> None:
        result = state(
            [capture(S.GRANTED, t(1))],
            objections=[objection(EMAIL, ObjectionStatus.UPHELD, t(2))],
        )
        assert (result.suppressed, result.rule) == (True, Rule.OBJECTION_DIRECT_MARKETING)

    def test_pending_objection_suppresses_even_after_a_trusted_opt_in(self) -> None:
        result = state(
            [capture(S.GRANTED, t(5), purpose=PROFILING)],
            PROFILING,
            objections=[objection(PROFILING, ObjectionStatus.PENDING, t(2))],
        )
        assert (result.suppressed, result.rule) == (True, Rule.OBJECTION_PENDING)

    def test_erasure_outranks_objection(self) -> None:
        result = state(
            [],
            EMAIL,
            flags=SubjectFlags(suppressed_since=t(1), suppression_reason="erasure"),
            objections=[objection(EMAIL, ObjectionStatus.UPHELD)],
        )
        assert result.rule == Rule.ERASURE


# --- expiry -----------------------------------------------------------------------------------


class TestExpiry:
    def test_grant_past_validity_is_expired_and_suppressed(self) -> None:
        result = state([capture(S.GRANTED, t(0))], now=t(731))
        assert result.status is S.EXPIRED
        assert result.suppressed
        assert result.rule == Rule.EXPIRED
        assert result.expires_at == t(730)

    def test_expiry_boundary(self) -> None:
        assert state([capture(S.GRANTED, t(0))], now=t(730)).rule == Rule.EXPIRED
        just_before = state([capture(S.GRANTED, t(0))], now=t(730) - timedelta(seconds=1))
        assert (just_before.status, just_before.suppressed) == (S.GRANTED, False)
        assert just_before.expires_at == t(730)

    def test_renewal_with_a_newer_grant(self) -> None:
        result = state([capture(S.GRANTED, t(0)), capture(S.GRANTED, t(700))], now=t(731))
        assert outcome(result) == (S.GRANTED, False, Rule.LATEST_EVENT_TIME)
        assert result.expires_at == t(1430)

    def test_renewal_after_expiry(self) -> None:
        result = state([capture(S.GRANTED, t(0)), capture(S.GRANTED, t(800))], now=t(801))
        assert (result.status, result.suppressed) == (S.GRANTED, False)

    def test_purpose_without_validity_never_expires(self) -> None:
        result = state([capture(S.GRANTED, t(0), purpose=SMS_OFFERS)], SMS_OFFERS, now=t(10_000))
        assert (result.status, result.suppressed, result.expires_at) == (S.GRANTED, False, None)

    def test_withdrawn_consent_is_not_reported_as_expired(self) -> None:
        result = state([capture(S.WITHDRAWN, t(0))], now=t(1000))
        assert (result.status, result.rule) == (S.WITHDRAWN, Rule.STICKY_WITHDRAWAL)
        assert result.expires_at is None

    def test_reversal_grant_also_expires(self) -> None:
        result = state([crm(S.WITHDRAWN, t(0)), capture(S.GRANTED, t(1))], now=t(800))
        assert (result.status, result.rule) == (S.EXPIRED, Rule.EXPIRED)


# --- no evidence; suppression by basis --------------------------------------------------------


class TestDefaultsAndBasis:
    def test_no_evidence_consent_purpose_is_suppressed(self) -> None:
        result = state([], EMAIL)
        assert result.status is S.APPLICABLE
        assert result.basis is LawfulBasis.CONSENT
        assert result.suppressed
        assert result.rule == Rule.NO_CONSENT_ON_RECORD

    @pytest.mark.parametrize(
        ("purpose", "basis"),
        [(PROFILING, LawfulBasis.LEGITIMATE_INTERESTS), (SERVICE, LawfulBasis.CONTRACT)],
        ids=["legitimate_interests", "contract"],
    )
    def test_no_evidence_other_bases_not_suppressed(self, purpose: Purpose, basis: LawfulBasis) -> None:
        result = state([], purpose, channel="post")
        assert result.status is S.NOT_APPLICABLE
        assert result.basis is basis
        assert not result.suppressed
        assert result.rule == Rule.DEFAULT_BASIS
        assert (result.purpose, result.channel) == (purpose.key, "post")

    def test_consent_basis_requested_is_suppressed(self) -> None:
        result = state([crm(S.REQUESTED, t(1), basis=LawfulBasis.CONSENT)], PROFILING)
        assert (result.status, result.basis, result.suppressed) == (
            S.REQUESTED,
            LawfulBasis.CONSENT,
            True,
        )

    def test_contract_basis_not_applicable_is_not_suppressed(self) -> None:
        result = state([crm(S.NOT_APPLICABLE, t(1), basis=LawfulBasis.CONTRACT, purpose=SERVICE)], SERVICE)
        assert (result.status, result.basis, result.suppressed) == (
            S.NOT_APPLICABLE,
            LawfulBasis.CONTRACT,
            False,
        )

    @pytest.mark.parametrize(
        ("status", "basis", "suppressed"),
        [
            # On consent, every status but a consent given suppresses.
            *[(status, LawfulBasis.CONSENT, status is not S.GRANTED) for status in ConsentStatus],
            # On another basis, only a withdrawal, a refusal or an expiry does.
            (S.NOT_APPLICABLE, LawfulBasis.CONTRACT, False),
            (S.REQUESTED, LawfulBasis.LEGITIMATE_INTERESTS, False),
            (S.GRANTED, LawfulBasis.LEGAL_OBLIGATION, False),
            (S.WITHDRAWN, LawfulBasis.CONTRACT, True),
            (S.REFUSED, LawfulBasis.LEGITIMATE_INTERESTS, True),
            (S.EXPIRED, LawfulBasis.PUBLIC_TASK, True),
        ],
    )
    def test_is_suppressed_table(self, status: ConsentStatus, basis: LawfulBasis, suppressed: bool) -> None:
        assert is_suppressed(status, basis) is suppressed


# --- issue 12, rule 1: no switching of lawful basis after a withdrawal or refusal ------------


def soft_opt_in(at: datetime, *, purpose: Purpose = OFFERS, channel: str = "email", **kw: object) -> Evidence:
    return replace(
        capture(S.NOT_APPLICABLE, at, purpose=purpose, channel=channel, source="checkout"),
        basis=LawfulBasis.LEGITIMATE_INTERESTS,
        soft_opt_in=SOFT,
        **kw,  # type: ignore[arg-type]
    )


class TestNoBasisSwitching:
    """EDPB Guidelines 05/2020 paras 121-123, Art. 7(3)."""

    @pytest.mark.parametrize("sticky", [S.WITHDRAWN, S.REFUSED])
    @pytest.mark.parametrize("basis", [b for b in LawfulBasis if b is not LawfulBasis.CONSENT])
    @pytest.mark.parametrize("status", [S.GRANTED, S.NOT_APPLICABLE, S.APPLICABLE, S.REQUESTED])
    @pytest.mark.parametrize("purpose", [EMAIL, PROFILING, SERVICE], ids=lambda p: p.key)
    def test_another_basis_recorded_later_by_a_trusted_source_with_proof_resumes_nothing(
        self, sticky: ConsentStatus, basis: LawfulBasis, status: ConsentStatus, purpose: Purpose
    ) -> None:
        switch = capture(status, t(5), source="ops", purpose=purpose, basis=basis, evidence_ref="contract-7")
        for items in (
            [capture(sticky, t(1), purpose=purpose), switch],
            [switch, crm(sticky, t(1), purpose=purpose)],
        ):
            result = state(items, purpose, channel="post")
            assert result.suppressed
            assert result.status is sticky
            assert result.rule == Rule.NO_BASIS_SWITCH

    def test_another_basis_from_a_crm_resumes_nothing(self) -> None:
        items = [capture(S.WITHDRAWN, t(1)), crm(S.NOT_APPLICABLE, t(9), basis=LawfulBasis.CONTRACT)]
        result = state(items, SERVICE, channel="post")
        assert outcome(result) == (S.WITHDRAWN, True, Rule.NO_BASIS_SWITCH)

    def test_a_grant_naming_another_basis_is_no_new_consent(self) -> None:
        relabelled = capture(S.GRANTED, t(5), basis=LawfulBasis.LEGITIMATE_INTERESTS, evidence_ref="call-1")
        assert not POLICY.reverses_sticky(relabelled)
        result = state([capture(S.REFUSED, t(1)), relabelled], PROFILING)
        assert outcome(result) == (S.REFUSED, True, Rule.NO_BASIS_SWITCH)

    def test_a_soft_opt_in_after_a_refusal_resumes_nothing(self) -> None:
        result = state([capture(S.REFUSED, t(1), purpose=OFFERS), soft_opt_in(t(5))], OFFERS)
        assert outcome(result) == (S.REFUSED, True, Rule.NO_BASIS_SWITCH)

    @pytest.mark.parametrize("basis", [None, LawfulBasis.CONSENT])
    def test_only_a_new_consent_resumes(self, basis: LawfulBasis | None) -> None:
        items = [
            capture(S.WITHDRAWN, t(1), purpose=PROFILING),
            capture(S.NOT_APPLICABLE, t(3), purpose=PROFILING, basis=LawfulBasis.LEGITIMATE_INTERESTS),
            capture(S.GRANTED, t(5), purpose=PROFILING, basis=basis),
        ]
        result = state(items, PROFILING)
        assert outcome(result) == (S.GRANTED, False, Rule.TRUSTED_OPT_IN)

    def test_after_a_new_consent_the_latest_value_wins_again(self) -> None:
        items = [
            capture(S.WITHDRAWN, t(1), purpose=SERVICE),
            capture(S.GRANTED, t(3), purpose=SERVICE),
            crm(S.NOT_APPLICABLE, t(5), purpose=SERVICE, basis=LawfulBasis.CONTRACT),
        ]
        result = state(items, SERVICE, channel="post")
        assert (result.status, result.basis, result.suppressed) == (
            S.NOT_APPLICABLE,
            LawfulBasis.CONTRACT,
            False,
        )

    def test_the_withdrawal_is_per_channel(self) -> None:
        items = [capture(S.NOT_APPLICABLE, t(5), purpose=SERVICE, channel="post", basis=LawfulBasis.CONTRACT)]
        assert not state(items, SERVICE, channel="post").suppressed


# --- issue 12, rule 2: an Art. 21(2) objection to direct marketing is absolute ----------------


class TestDirectMarketingObjectionIsAbsolute:
    OBJECTED = (ObjectionFact(EMAIL.key, True, ObjectionStatus.UPHELD, t(2)),)

    @pytest.mark.parametrize("basis", [b for b in LawfulBasis if b is not LawfulBasis.CONSENT])
    @pytest.mark.parametrize("purpose", [EMAIL, SMS_OFFERS, OFFERS], ids=lambda p: p.key)
    def test_no_later_entry_on_another_basis_resumes_it(self, basis: LawfulBasis, purpose: Purpose) -> None:
        entries = [
            capture(S.GRANTED, t(5), source="ops", purpose=purpose, basis=basis, evidence_ref="x"),
            capture(S.NOT_APPLICABLE, t(6), source="web_form", purpose=purpose, basis=basis),
            crm(S.GRANTED, t(7), purpose=purpose, basis=basis, evidence_ref="y"),
        ]
        for channel in ("email", "post"):
            result = state(entries, purpose, channel=channel, objections=self.OBJECTED)
            assert (result.suppressed, result.rule) == (True, Rule.OBJECTION_DIRECT_MARKETING)

    def test_a_soft_opt_in_after_the_objection_resumes_nothing(self) -> None:
        result = state([soft_opt_in(t(5))], OFFERS, objections=self.OBJECTED)
        assert (result.suppressed, result.rule) == (True, Rule.OBJECTION_DIRECT_MARKETING)

    def test_the_persons_new_consent_resumes_it_for_that_purpose_and_channel(self) -> None:
        consent = capture(S.GRANTED, t(5), purpose=SMS_OFFERS, channel="sms")
        result = state([consent], SMS_OFFERS, channel="sms", objections=self.OBJECTED)
        assert (result.status, result.suppressed) == (S.GRANTED, False)
        # Not for another channel or another direct-marketing purpose.
        # (each channel has its own summary: the one for email holds no consent)
        assert state([], SMS_OFFERS, channel="email", objections=self.OBJECTED).suppressed
        assert state([], EMAIL, objections=self.OBJECTED).rule == Rule.OBJECTION_DIRECT_MARKETING

    def test_a_consent_older_than_the_objection_does_not(self) -> None:
        result = state([capture(S.GRANTED, t(1))], EMAIL, objections=self.OBJECTED)
        assert (result.suppressed, result.rule) == (True, Rule.OBJECTION_DIRECT_MARKETING)


# --- issue 12, rule 4: expiry counts from the latest affirmative action, in any order ---------


def expiry_record(at: datetime, observed: datetime) -> Evidence:
    """What ``ledger expire`` writes: an expiry of consentsync's own making."""
    made: Recorded = {"observed": observed, "basis": LawfulBasis.CONSENT}
    return _recorded(
        S.EXPIRED, at, Origin.SYSTEM, timedelta(0), made, source="consentsync:expiry", actor="consentsync"
    )


class TestExpiryOrderOfRecording:
    def test_a_late_recorded_renewal_counts_after_the_sweep(self) -> None:
        grant, renewal = capture(S.GRANTED, t(0)), capture(S.GRANTED, t(700), observed=t(740))
        sweep = expiry_record(t(730), observed=t(731))
        before_sweep = state([grant, renewal, sweep], now=t(800))
        after_sweep = state([grant, sweep, renewal], now=t(800))
        no_sweep = state([grant, renewal], now=t(800))
        for result in (before_sweep, after_sweep):
            assert (result.status, result.suppressed, result.expires_at) == (S.GRANTED, False, t(1430))
            assert result.rule == no_sweep.rule
        assert state([grant, sweep, renewal], now=t(1430)).rule == Rule.EXPIRED

    def test_the_recorded_expiry_says_the_lapse_is_on_record(self) -> None:
        grant = capture(S.GRANTED, t(0))
        pending = state([grant], now=t(731))
        recorded = state([grant, expiry_record(t(730), observed=t(731))], now=t(731))
        assert (pending.status, pending.rule) == (recorded.status, recorded.rule) == (S.EXPIRED, Rule.EXPIRED)
        assert pending.evidence_status is S.GRANTED  # the sweep still has to record it
        assert recorded.evidence_status is S.EXPIRED
        # A lapse recorded for an earlier grant is not the lapse of a renewal.
        renewed = state([grant, expiry_record(t(730), t(731)), capture(S.GRANTED, t(700))], now=t(1431))
        assert (renewed.status, renewed.evidence_status) == (S.EXPIRED, S.GRANTED)

    def test_a_recorded_expiry_alone_decides_nothing(self) -> None:
        assert state([expiry_record(t(1), t(2))]) == state([])

    def test_an_expiry_a_crm_reports_is_evidence(self) -> None:
        result = state([capture(S.GRANTED, t(0)), crm(S.EXPIRED, t(10))])
        assert outcome(result) == (S.EXPIRED, True, Rule.EXPIRED)


# --- issue 12, rule 7: the PECR / ePrivacy soft opt-in ----------------------------------------


class TestSoftOptIn:
    @pytest.mark.parametrize("status", [S.NOT_APPLICABLE, S.APPLICABLE, S.REQUESTED, S.GRANTED])
    @pytest.mark.parametrize("channel", ["email", "sms"])
    def test_electronic_marketing_on_legitimate_interests_without_it_is_suppressed(
        self, status: ConsentStatus, channel: str
    ) -> None:
        noted = capture(
            status,
            t(5),
            purpose=OFFERS,
            channel=channel,
            basis=LawfulBasis.LEGITIMATE_INTERESTS,
            evidence_ref="soft opt-in: bought in 2025",
        )
        result = state([noted], OFFERS, channel=channel)
        assert (result.suppressed, result.rule) == (True, Rule.EPRIVACY_CONSENT_REQUIRED)
        assert "PECR" in result.detail

    def test_nothing_on_record_is_no_soft_opt_in(self) -> None:
        result = state([], OFFERS)
        assert (result.suppressed, result.rule) == (True, Rule.EPRIVACY_CONSENT_REQUIRED)
        assert state([], OFFERS, channel="post") == state([], replace(OFFERS, eprivacy=False), channel="post")
        assert not state([], OFFERS, channel="post").suppressed

    def test_the_soft_opt_in_allows_it(self) -> None:
        result = state([soft_opt_in(t(5))], OFFERS)
        assert (result.status, result.basis, result.suppressed) == (
            S.NOT_APPLICABLE,
            LawfulBasis.LEGITIMATE_INTERESTS,
            False,
        )
        assert result.rule == Rule.EPRIVACY_SOFT_OPT_IN
        assert "PECR reg. 22(3)" in result.detail

    def test_it_stays_on_record_when_later_values_on_legitimate_interests_arrive(self) -> None:
        later = crm(S.NOT_APPLICABLE, t(9), purpose=OFFERS, basis=LawfulBasis.LEGITIMATE_INTERESTS)
        assert state([soft_opt_in(t(5)), later], OFFERS).rule == Rule.EPRIVACY_SOFT_OPT_IN

    def test_a_refusal_after_it_ends_it(self) -> None:
        items = [soft_opt_in(t(5)), crm(S.REFUSED, t(7), purpose=OFFERS)]
        assert state(items, OFFERS).suppressed
        # A new consent lifts the refusal; the soft opt-in from before it stays ended.
        again = [*items, capture(S.GRANTED, t(8), purpose=OFFERS)]
        assert not state(again, OFFERS).suppressed
        later = [*again, crm(S.NOT_APPLICABLE, t(9), purpose=OFFERS, basis=LawfulBasis.LEGITIMATE_INTERESTS)]
        assert state(later, OFFERS).rule == Rule.EPRIVACY_CONSENT_REQUIRED

    def test_consent_needs_no_soft_opt_in(self) -> None:
        result = state([capture(S.GRANTED, t(5), purpose=OFFERS)], OFFERS)
        assert outcome(result) == (S.GRANTED, False, Rule.LATEST_EVENT_TIME)

    def test_it_is_per_channel(self) -> None:
        # Each channel has its own summary: the soft opt-in recorded for email is not in the SMS one.
        assert state([], OFFERS, channel="sms").rule == Rule.EPRIVACY_CONSENT_REQUIRED

    def test_a_purpose_outside_the_rules_or_not_direct_marketing_is_unaffected(self) -> None:
        b2b = replace(OFFERS, eprivacy=False)
        assert (state([], b2b).suppressed, state([], b2b).rule) == (False, Rule.DEFAULT_BASIS)
        assert not state([], PROFILING).suppressed
        assert not state([], SERVICE).suppressed
        # eprivacy forced on for a purpose that is not flagged direct marketing
        assert state([], replace(PROFILING, eprivacy=True)).rule == Rule.EPRIVACY_CONSENT_REQUIRED

    def test_a_future_dated_soft_opt_in_is_none(self) -> None:
        future = soft_opt_in(t(50), observed_at=t(5))
        assert summarise([future], POLICY).soft_opt_in_at is None
        assert state([future], OFFERS).suppressed

    @pytest.mark.parametrize(
        "missing", ["sale_ref", "similar_products", "refusal_at_collection", "refusal_in_messages"]
    )
    def test_each_condition_must_be_evidenced(self, missing: str) -> None:
        from consentsync.domain import InvalidInput

        values = {
            "sale_ref": "order 1",
            "similar_products": "tools",
            "refusal_at_collection": "form v4",
            "refusal_in_messages": "footer v2",
        }
        with pytest.raises(InvalidInput, match="soft opt-in"):
            SoftOptIn(**{**values, missing: "  "})

    def test_the_fingerprint_of_evidence_without_it_is_unchanged(self) -> None:
        plain = capture(S.GRANTED, t(1))
        assert plain.fingerprint() != replace(plain, soft_opt_in=SOFT).fingerprint()
        # Known value: prints stored before the soft opt-in existed still match.
        assert crm(S.GRANTED, t(1)).fingerprint() == crm(S.GRANTED, t(1), observed=t(3)).fingerprint()


# --- issue 12, rule 3 (reconciler side): a future-dated value never outranks a real one -------


class TestFutureDatedValues:
    def test_a_future_dated_grant_does_not_outrank_a_real_request(self) -> None:
        future_grant = crm(S.GRANTED, t(400), observed=t(10))
        result = state([crm(S.REQUESTED, t(3)), future_grant])
        assert (result.status, result.suppressed) == (S.REQUESTED, True)

    def test_a_future_dated_opt_in_reverses_nothing(self) -> None:
        future_opt_in = capture(S.GRANTED, t(400), observed=t(10))
        assert not POLICY.reverses_sticky(future_opt_in)
        result = state([capture(S.WITHDRAWN, t(3)), future_opt_in])
        assert (result.status, result.rule) == (S.WITHDRAWN, Rule.STICKY_WITHDRAWAL)

    def test_a_future_dated_withdrawal_counts_from_when_it_was_seen(self) -> None:
        result = state([crm(S.WITHDRAWN, t(400), observed=t(10)), capture(S.GRANTED, t(20))])
        assert (result.status, result.rule, result.since) == (S.GRANTED, Rule.TRUSTED_OPT_IN, t(20))

    def test_a_future_dated_grant_expires_from_when_it_was_seen(self) -> None:
        result = state([crm(S.GRANTED, t(9000), observed=t(10))], now=t(741))
        assert (result.status, result.expires_at) == (S.EXPIRED, t(740))

    def test_a_small_clock_skew_is_tolerated(self) -> None:
        # A grant stated ahead counts from its observation (it was given by then), a no as late
        # as it says: where their order is in doubt, the no stands.
        skewed = capture(S.GRANTED, t(5) + timedelta(minutes=4), observed=t(5))
        assert POLICY.credible_time(skewed) == skewed.observed_at
        assert POLICY.reverses_sticky(skewed)
        no = capture(S.WITHDRAWN, t(5) + timedelta(minutes=4), observed=t(5))
        assert POLICY.credible_time(no) == no.event_time


# --- a basis stated by evidence, or filled in by the purpose's default --------------------------


def test_a_basis_is_stated_only_where_evidence_gave_it() -> None:
    """Only a stated basis may be pushed to a CRM (mapping.updates_for): a value that named none
    on a purpose not founded on consent, no value at all, or a subject-wide rule over no value
    leaves the purpose's default basis unstated; consent is what a grant or withdrawal of
    consent speaks of by itself."""
    erased = SubjectFlags(suppressed_since=t(2), suppression_reason="erasure (Art. 17)")
    subscribed = crm(S.GRANTED, t(1), purpose=SERVICE)
    assert (state([subscribed], SERVICE).basis, state([subscribed], SERVICE).basis_stated) == (
        LawfulBasis.CONTRACT,
        False,
    )
    assert state([], SERVICE).basis_stated is False
    assert state([], SERVICE, flags=erased).rule == Rule.ERASURE
    assert state([], SERVICE, flags=erased).basis_stated is False
    assert state([], EMAIL, flags=erased).basis_stated is False
    contract = crm(S.GRANTED, t(1), purpose=SERVICE, basis=LawfulBasis.CONTRACT)
    assert state([contract], SERVICE).basis_stated is True
    assert state([contract], SERVICE, flags=erased).basis_stated is True  # the rule keeps it
    assert state([crm(S.GRANTED, t(1))]).basis_stated is True
    assert state([crm(S.WITHDRAWN, t(1))]).basis_stated is True
    assert state([crm(S.GRANTED, t(1), purpose=PROFILING, basis=LEGIT)], PROFILING).basis_stated is True


# --- every Rule name is reachable -------------------------------------------------------------

RULE_SCENARIOS: dict[str, tuple[list[Evidence], Purpose, SubjectFlags, list[ObjectionFact]]] = {
    Rule.ERASURE: ([], SERVICE, SubjectFlags(suppressed_since=t(1), suppression_reason="e"), []),
    Rule.RESTRICTION: ([], SERVICE, SubjectFlags(restricted=True), []),
    Rule.OBJECTION_DIRECT_MARKETING: (
        [],
        SMS_OFFERS,
        SubjectFlags(),
        [objection(EMAIL, ObjectionStatus.UPHELD)],
    ),
    Rule.OBJECTION_UPHELD: ([], PROFILING, SubjectFlags(), [objection(PROFILING, ObjectionStatus.UPHELD)]),
    Rule.OBJECTION_PENDING: (
        [],
        PROFILING,
        SubjectFlags(),
        [objection(PROFILING, ObjectionStatus.PENDING)],
    ),
    Rule.STICKY_WITHDRAWAL: ([crm(S.WITHDRAWN, t(1))], EMAIL, SubjectFlags(), []),
    Rule.STICKY_REFUSAL: ([crm(S.REFUSED, t(1))], EMAIL, SubjectFlags(), []),
    Rule.TRUSTED_OPT_IN: ([crm(S.REFUSED, t(1)), capture(S.GRANTED, t(2))], EMAIL, SubjectFlags(), []),
    Rule.LATEST_EVENT_TIME: ([crm(S.GRANTED, t(1))], EMAIL, SubjectFlags(), []),
    Rule.MOST_RESTRICTIVE_ON_TIE: (
        [crm(S.GRANTED, t(1)), crm(S.REQUESTED, t(1))],
        EMAIL,
        SubjectFlags(),
        [],
    ),
    Rule.UNKNOWN_EVENT_TIME: ([crm(S.REQUESTED, None)], EMAIL, SubjectFlags(), []),
    Rule.EXPIRED: ([crm(S.GRANTED, t(-731))], EMAIL, SubjectFlags(), []),
    Rule.NO_BASIS_SWITCH: (
        [crm(S.WITHDRAWN, t(1)), capture(S.GRANTED, t(2), basis=LawfulBasis.LEGITIMATE_INTERESTS)],
        EMAIL,
        SubjectFlags(),
        [],
    ),
    Rule.EPRIVACY_CONSENT_REQUIRED: ([], OFFERS, SubjectFlags(), []),
    Rule.EPRIVACY_SOFT_OPT_IN: ([soft_opt_in(t(1))], OFFERS, SubjectFlags(), []),
    Rule.NO_CONSENT_ON_RECORD: ([], EMAIL, SubjectFlags(), []),
    Rule.DEFAULT_BASIS: ([], SERVICE, SubjectFlags(), []),
}


def test_every_rule_name_has_a_scenario() -> None:
    names = {value for key, value in vars(Rule).items() if key.isupper()}
    assert names == set(RULE_SCENARIOS)
    assert len(names) == len([k for k in vars(Rule) if k.isupper()]), "rule names must be unique"


@pytest.mark.parametrize("rule", sorted(RULE_SCENARIOS))
def test_rule_scenario_decides_with_that_rule(rule: str) -> None:
    evidence, purpose, flags, objections = RULE_SCENARIOS[rule]
    assert state(evidence, purpose, flags=flags, objections=objections, now=NOW).rule == rule


# --- Summary serialisation; fingerprints; Decision --------------------------------------------


MIXED = (
    crm(S.WITHDRAWN, None, observed=t(3)),
    capture(S.GRANTED, t(5), double_opt_in_at=t(5)),
    crm(S.REQUESTED, t(5), basis=LawfulBasis.CONSENT),
    crm(S.GRANTED, None, observed=t(1)),
)


class TestSummaryAndDecision:
    @pytest.mark.parametrize(
        "evidence",
        [(), MIXED, MIXED[:1], (crm(S.GRANTED, None, observed=t(1)),)],
        ids=["empty", "mixed", "unknown-withdrawal", "unknown-grant"],
    )
    def test_summary_json_round_trip(self, evidence: tuple[Evidence, ...]) -> None:
        summary = summarise(evidence, POLICY)
        # As the ledger stores it: canonical JSON text, read back with any JSON parser.
        wire = canonical_json(summary.to_json())
        restored = Summary.from_json(json.loads(wire))
        assert restored == summary
        assert canonical_json(restored.to_json()) == wire
        # And straight from the plain data, without text in between.
        assert Summary.from_json(summary.to_json()) == summary
        for purpose in (EMAIL, PROFILING):
            kwargs = {"flags": SubjectFlags(), "objections": (), "now": NOW}
            assert effective_state(restored, purpose, "email", **kwargs) == effective_state(
                summary, purpose, "email", **kwargs
            )

    def test_mixed_summary_contents(self) -> None:
        summary = summarise(MIXED, POLICY)
        assert summary.tied is True
        assert summary.latest is not None and summary.latest.status is S.REQUESTED
        assert summary.restriction is not None and summary.restriction.sort_time == t(3)
        assert summary.trusted_opt_in_at == t(5)
        assert summary.answered is True  # a grant and a withdrawal are on record, not only asks
        assert summary.to_json()["v"] == SUMMARY_VERSION == 6

    def test_round_trip_preserves_a_non_utc_offset(self) -> None:
        from datetime import timezone

        paris = timezone(timedelta(hours=1))
        summary = summarise([capture(S.GRANTED, datetime(2026, 3, 1, 10, tzinfo=paris))], POLICY)
        restored = Summary.from_json(json.loads(canonical_json(summary.to_json())))
        assert restored == summary
        assert restored.trusted_opt_in_at == datetime(2026, 3, 1, 9, tzinfo=UTC)

    def test_fingerprint_ignores_observed_at_only_when_event_time_known(self) -> None:
        assert (
            crm(S.GRANTED, t(1), observed=t(2)).fingerprint()
            == crm(S.GRANTED, t(1), observed=t(9)).fingerprint()
        )
        assert (
            crm(S.GRANTED, None, observed=t(2)).fingerprint()
            != crm(S.GRANTED, None, observed=t(9)).fingerprint()
        )
        assert crm(S.GRANTED, t(1)).fingerprint() != crm(S.REQUESTED, t(1)).fingerprint()

    def _reconcile(self, current: Summary | None, evidence: Evidence, purpose: Purpose = EMAIL) -> Decision:
        return reconcile(current, evidence, purpose, POLICY, flags=SubjectFlags(), objections=(), now=NOW)

    def test_decision_changed_on_first_grant(self) -> None:
        decision = self._reconcile(None, capture(S.GRANTED, t(1)))
        assert decision.before.rule == Rule.NO_CONSENT_ON_RECORD
        assert decision.after.status is S.GRANTED
        assert decision.changed
        assert decision.summary == summarise([capture(S.GRANTED, t(1))], POLICY)

    def test_decision_unchanged_when_crm_reread_hits_a_withdrawal(self) -> None:
        first = self._reconcile(None, capture(S.WITHDRAWN, t(1)))
        assert first.changed
        second = self._reconcile(first.summary, crm(S.GRANTED, t(4)))
        assert not second.changed
        assert second.after.rule == Rule.STICKY_WITHDRAWAL
        assert second.summary != first.summary  # the evidence is still recorded

    def test_decision_unchanged_on_replay(self) -> None:
        item = capture(S.GRANTED, t(1))
        first = self._reconcile(None, item)
        replay = self._reconcile(first.summary, item)
        assert not replay.changed
        assert replay.summary == first.summary
        assert replay.before == replay.after

    def test_decision_rule_change_alone_is_not_a_change(self) -> None:
        # Granted by latest event time, then a trusted reversal of an older refusal: the rule
        # differs but status, basis and suppression do not.
        first = self._reconcile(None, capture(S.GRANTED, t(5)))
        second = self._reconcile(first.summary, crm(S.REFUSED, t(1)))
        assert second.before.rule == Rule.LATEST_EVENT_TIME
        assert second.after.rule == Rule.TRUSTED_OPT_IN
        assert not second.changed

    def test_decision_changed_on_basis_change(self) -> None:
        first = self._reconcile(
            None, crm(S.NOT_APPLICABLE, t(1), basis=LawfulBasis.CONTRACT, purpose=SERVICE), SERVICE
        )
        second = self._reconcile(
            first.summary,
            crm(S.NOT_APPLICABLE, t(2), basis=LawfulBasis.LEGAL_OBLIGATION, purpose=SERVICE),
            SERVICE,
        )
        assert (second.before.suppressed, second.after.suppressed) == (False, False)
        assert second.changed

    def test_decision_changed_when_only_suppression_changes(self) -> None:
        # A newer trusted opt-in lifts a direct-marketing objection: status and basis stay
        # granted/consent, only suppression changes.
        objections = [objection(EMAIL, ObjectionStatus.UPHELD, t(2))]
        current = summarise([crm(S.GRANTED, t(1))], POLICY)
        decision = reconcile(
            current,
            capture(S.GRANTED, t(5)),
            EMAIL,
            POLICY,
            flags=SubjectFlags(),
            objections=objections,
            now=NOW,
        )
        assert (decision.before.status, decision.before.basis) == (
            decision.after.status,
            decision.after.basis,
        )
        assert (decision.before.suppressed, decision.after.suppressed) == (True, False)
        assert decision.changed


# --- a no stamped to the whole second --------------------------------------------------------


class TestWholeSecondStamps:
    """Most CRMs stamp whole seconds: their "09:00:00" is anywhere in that second, so a value
    captured 0.75 s into it is not known to be later. A withdrawal, refusal or expiry stamped to
    the whole second is read at the end of its second, as an unknown time reads a no as late as
    possible."""

    def test_a_double_opt_in_within_a_crm_withdrawals_second_does_not_reverse_it(self) -> None:
        confirmed = capture(
            S.GRANTED, T0 + timedelta(milliseconds=750), source="double_opt_in", double_opt_in_at=T0
        )
        withdrawal = crm(S.WITHDRAWN, T0)
        for order in ([confirmed, withdrawal], [withdrawal, confirmed]):
            result = state(order)
            assert outcome(result) == (S.WITHDRAWN, True, Rule.STICKY_WITHDRAWAL)
            assert result.since == T0  # the state shows the time as stated

    def test_a_double_opt_in_from_the_next_second_reverses_it(self) -> None:
        confirmed = capture(S.GRANTED, T0 + timedelta(seconds=1), source="double_opt_in")
        result = state([crm(S.WITHDRAWN, T0), confirmed])
        assert outcome(result) == (S.GRANTED, False, Rule.TRUSTED_OPT_IN)

    def test_an_expiry_stamped_to_the_second_outranks_a_grant_within_it(self) -> None:
        granted = crm(S.GRANTED, T0 + timedelta(milliseconds=999), source="salesforce")
        expired = crm(S.EXPIRED, T0, source="vtiger")
        for order in ([granted, expired], [expired, granted]):
            assert outcome(state(order)) == (S.EXPIRED, True, Rule.EXPIRED)

    def test_a_no_with_a_fraction_of_a_second_keeps_its_exact_time(self) -> None:
        """Captured to the microsecond (a web form, the preference centre, an undated value's
        observation): a consent captured after it, in the same second, reverses it."""
        withdrawal = capture(S.WITHDRAWN, T0 + timedelta(milliseconds=300))
        consent = capture(S.GRANTED, T0 + timedelta(milliseconds=800), source="double_opt_in")
        assert outcome(state([withdrawal, consent])) == (S.GRANTED, False, Rule.TRUSTED_OPT_IN)
        undated = crm(S.WITHDRAWN, None, observed=T0 + timedelta(milliseconds=300))
        assert outcome(state([undated, consent])) == (S.GRANTED, False, Rule.TRUSTED_OPT_IN)
