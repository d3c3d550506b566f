"""The precedence policy: evidence and ledger state in, decisions out. No I/O.

Every piece of evidence about one (person, purpose, channel) is folded into a ``Summary``. The
fold is a join: commutative, associative and idempotent, so the outcome depends on the set of
evidence only, never on the order it arrived in or on how often it was replayed. The summary
keeps exactly what domain.md's precedence rules need:

* ``latest``: the value with the latest event time (ties: the most restrictive);
* ``restriction``: the latest withdrawal or refusal, which is sticky;
* ``trusted_opt_in_at``: the latest new consent (granted, on consent, evidenced, from a trusted
  capture source), the only thing that reverses a sticky value or an objection;
* ``soft_opt_in_at``: the latest PECR / ePrivacy soft opt-in on record;
* ``lapsed_at``: the latest expiry consentsync itself recorded. It decides nothing: expiry is
  computed from the latest affirmative action and the clock, so a late renewal counts whether
  the expiry sweep ran before or after it; it only says that the lapse is on record;
* ``undated_grant_seen``: when consentsync first saw a consent granted without a credible event
  time (the earliest such observation): an undated grant's validity runs from there, never from a later
  sighting of the same stale value (a new record, a new connector) after the consent expired;
* ``answered``: whether any evidence holds a status other than an unanswered one (requested,
  applicable: ``UNANSWERED_STATUSES``): a consent granted, expired, withdrawn or refused, or a
  basis that needs none. A request or an unconfirmed sign-up winning over such evidence ends
  something a CRM may still show (an opt-in since expired); over nothing else, it is no consent
  on record, and states no lawful basis (``_state_of``).

Unknown event times are read in the most restrictive way: a withdrawal or refusal is taken to
have happened as late as possible (when it was first observed), anything else as early as
possible. An event time later than the observation (beyond the clock skew) is not a time anyone
acted at: it is read as unknown, so a future-dated value never outranks a real one. A no counts
as late as possible within what its stamp can mean: stamped to the whole second, from the end of
that second; stamped by a clock known to run behind ours (``Evidence.clock_lag``, a CRM's as its
answers showed), up to that much later, never after it was observed (``Ranked.of``).
``effective_state`` then layers erasure, restriction, objections, the ePrivacy rule and expiry
on top.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from consentsync.domain import (
    RESTRICTIVENESS,
    STICKY_STATUSES,
    ConsentStatus,
    EffectiveState,
    Evidence,
    LawfulBasis,
    ObjectionFact,
    ObjectionStatus,
    Origin,
    Purpose,
    SubjectFlags,
    iso,
    quick_init,
)

EARLIEST = datetime.min.replace(tzinfo=UTC)
# Summaries written by another version of the fold are rebuilt from the events (the ledger does).
# 4: a no stamped to the whole second sorts at the end of it; 5: an undated grant's validity runs
# from its first sighting (``undated_grant_seen``); 6: whether anything but a request was ever on
# record (``answered``).
SUMMARY_VERSION = 6
DEFAULT_CLOCK_SKEW = timedelta(minutes=5)
# The statuses read as late as they can be (a no, an expiry): see Ranked.of, credible_time.
_LATE_STATUSES = frozenset({*STICKY_STATUSES, ConsentStatus.EXPIRED})
# Most CRMs stamp whole seconds: their "12:00:00" happened anywhere in that second.
TO_THE_SECONDS_END = timedelta(microseconds=999_999)
# Statuses under which nobody answered: consent applies and none was given ("applicable"), or it
# was asked for (a request mailed, a double opt-in sign-up not confirmed: "requested").
UNANSWERED_STATUSES = frozenset({ConsentStatus.APPLICABLE, ConsentStatus.REQUESTED})


class Rule:
    """Names of the rules that decide an effective state; they appear in the audit log."""

    ERASURE = "erasure_suppression"
    RESTRICTION = "restriction_art18"
    OBJECTION_DIRECT_MARKETING = "objection_direct_marketing"
    OBJECTION_UPHELD = "objection_upheld"
    OBJECTION_PENDING = "objection_pending_review"
    STICKY_WITHDRAWAL = "sticky_withdrawal"
    STICKY_REFUSAL = "sticky_refusal"
    TRUSTED_OPT_IN = "trusted_opt_in_reverses"
    LATEST_EVENT_TIME = "latest_event_time"
    MOST_RESTRICTIVE_ON_TIE = "most_restrictive_on_tie"
    UNKNOWN_EVENT_TIME = "unknown_event_time_most_restrictive"
    NO_BASIS_SWITCH = "no_basis_switch_after_withdrawal"
    EPRIVACY_SOFT_OPT_IN = "eprivacy_soft_opt_in"
    EPRIVACY_CONSENT_REQUIRED = "eprivacy_consent_required"
    EXPIRED = "validity_expired"
    NO_CONSENT_ON_RECORD = "no_consent_on_record"
    DEFAULT_BASIS = "purpose_default_basis"


@dataclass(frozen=True, slots=True)
class Policy:
    """The configurable parts of precedence."""

    trusted_sources: frozenset[str]
    # How far an event time may lie after its observation and still be a time someone acted at.
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW

    def credible_time(self, evidence: Evidence) -> datetime | None:
        """The event time, unless it lies after the observation (beyond the clock skew): no one
        acts in the future, so such a time is read as unknown (most restrictively). Inside the
        skew, a no counts as late as it says and anything else from its observation at the
        latest (it was given by then): where the order of a grant and a no is in doubt, the no
        stands, whatever order they arrive in. The time stated is what is stored (Art. 7(1)),
        so that a value read again after it is the same value, not a second one."""
        moment = evidence.event_time
        if moment is None or moment > evidence.observed_at + self.clock_skew:
            return None
        if moment > evidence.observed_at and evidence.status not in _LATE_STATUSES:
            return evidence.observed_at
        return moment

    def reverses_sticky(self, evidence: Evidence) -> bool:
        """Only a new consent from the person may (EDPB 05/2020 paras 121-123, Art. 21(3)):
        granted, on consent (no other basis), evidenced, dated credibly, from a trusted capture
        source. Another basis, whoever records it, never does."""
        return (
            evidence.status is ConsentStatus.GRANTED
            and evidence.basis in (None, LawfulBasis.CONSENT)
            and evidence.origin is Origin.CAPTURE
            and evidence.source in self.trusted_sources
            and evidence.has_proof
            and self.credible_time(evidence) is not None
        )


def is_system_expiry(evidence: Evidence) -> bool:
    """An expiry consentsync derived itself (``ledger expire``): a record of the clock, not a
    statement of the person's."""
    return evidence.origin is Origin.SYSTEM and evidence.status is ConsentStatus.EXPIRED


def is_soft_opt_in(evidence: Evidence, policy: Policy) -> bool:
    """A soft opt-in record (PECR reg. 22(3)): every condition evidenced, on legitimate
    interests, dated credibly; ``domain.SoftOptIn`` refuses a condition without evidence."""
    return (
        evidence.soft_opt_in is not None
        and evidence.status is ConsentStatus.NOT_APPLICABLE
        and evidence.basis is LawfulBasis.LEGITIMATE_INTERESTS
        and evidence.origin is not Origin.SYSTEM
        and policy.credible_time(evidence) is not None
    )


@quick_init
@dataclass(frozen=True, slots=True)
class Ranked:
    """One piece of evidence reduced to what precedence compares.

    Ordered by sort time, then restrictiveness of the status, then of the basis
    (``BASIS_RESTRICTIVENESS``), then proof over none, source and observation time, and last the
    fingerprint: later wins, then more restrictive. Everything before the fingerprint is either
    meaningful or a time compared as a time, so moving every time of a story by the same amount
    never changes which value wins; the fingerprint (a hash) only orders values that give the same
    state, to keep the order total, so the fold never depends on arrival.

    ``bound``: for a value that states no basis, the purpose's default basis when the ledger
    recorded it, which is the basis it was recorded under (docs/policy.md, "No switching of
    lawful basis"): a later change of the default must not re-read a grant made on legitimate
    interests as a consent, nor a consent since expired as a grant on legitimate interests.
    Only ``_state_of`` reads it. It takes no part in the order nor in equality: the fold stays a
    function of the events as stated (``audit verify`` folds them again without it, and a value
    is still identified by what it states), the basis a value is read under aside.
    """

    sort_time: datetime
    rank: int
    fingerprint: str
    status: ConsentStatus
    basis: LawfulBasis | None
    event_time: datetime | None
    observed_at: datetime
    source: str
    evidenced: bool
    bound: LawfulBasis | None = field(default=None, compare=False)

    @classmethod
    def of(cls, evidence: Evidence, policy: Policy | None = None, bound: LawfulBasis | None = None) -> Ranked:
        """``event_time`` is the credible one: a future-dated value counts as undated. ``bound``:
        the purpose's default basis in force now, kept for a value that states none.

        A withdrawal, refusal or expiry stamped to the whole second sorts at the end of its
        second, as the rule for unknown times reads a no as late as possible: a CRM's "12:00:00"
        is anywhere in that second, so a consent captured at 12:00:00.750 is not known to come
        after it and must not reverse it. Each value's own sort time, so the fold stays a join.

        So, by the same rule, is a no stamped by a clock running behind ours (``clock_lag``: a
        CRM's, as its answers showed when the value was read): it may have been made up to that
        much later than its stamp says, never after we observed it. A grant's stamp from such a
        clock is earlier than the truth already, which favours the no: read as it is."""
        event_time = (policy or _DEFAULT_POLICY).credible_time(evidence)
        late = evidence.status in _LATE_STATUSES
        if event_time is not None:
            if late:
                lag = evidence.clock_lag
                sort_time = (  # the one test the common case pays
                    no_counts_from(event_time)
                    if lag is None
                    else no_counts_at(event_time, lag, evidence.observed_at)
                )
            else:
                sort_time = event_time
        elif late:
            sort_time = evidence.observed_at
        else:
            sort_time = EARLIEST
        return cls(  # positionally: keywords cost more
            sort_time,
            RESTRICTIVENESS[evidence.status],
            evidence.fingerprint(),
            evidence.status,
            evidence.basis,
            event_time,
            evidence.observed_at,
            evidence.source,
            evidence.has_proof,
            bound if evidence.basis is None else None,
        )

    def bound_to(self, basis: LawfulBasis) -> Ranked:
        """This value bound to ``basis`` (``bound``): made positionally, as ``of`` does (an
        upgraded ledger binds every value it holds at once)."""
        return Ranked(
            self.sort_time,
            self.rank,
            self.fingerprint,
            self.status,
            self.basis,
            self.event_time,
            self.observed_at,
            self.source,
            self.evidenced,
            basis,
        )

    def __lt__(self, other: Ranked) -> bool:
        # The fingerprint leaves out the observation time of dated evidence (a re-read is the same
        # statement), so it comes last, to keep the order total. The times mostly differ: they
        # decide without building the tuples.
        if self.sort_time != other.sort_time:
            return self.sort_time < other.sort_time
        return (
            self.rank,
            BASIS_RESTRICTIVENESS[self.basis],
            self.evidenced,
            self.source,
            self.observed_at,
            self.fingerprint,
        ) < (
            other.rank,
            BASIS_RESTRICTIVENESS[other.basis],
            other.evidenced,
            other.source,
            other.observed_at,
            other.fingerprint,
        )

    def __gt__(self, other: Ranked) -> bool:
        return other < self

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "sort_time": self.sort_time,
            "rank": self.rank,
            "fingerprint": self.fingerprint,
            "status": self.status._value_,  # the plain string, without ``value``'s property
            "basis": self.basis._value_ if self.basis else None,
            "event_time": self.event_time,
            "observed_at": self.observed_at,
            "source": self.source,
            "evidenced": self.evidenced,
        }
        if self.bound is not None:  # written only where bound: a summary without one is unbound
            data["bound"] = self.bound._value_
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Ranked:
        status, basis = str(data["status"]), data["basis"]
        return cls(
            datetime.fromisoformat(str(data["sort_time"])),
            int(str(data["rank"])),
            str(data["fingerprint"]),
            # A dict lookup first: calling the enum costs ten times as much.
            _STATUSES.get(status) or ConsentStatus(status),
            (_BASES.get(str(basis)) or LawfulBasis(str(basis))) if basis else None,
            _moment(data["event_time"]),
            datetime.fromisoformat(str(data["observed_at"])),
            str(data["source"]),
            bool(data["evidenced"]),
            (_BASES.get(str(bound)) or LawfulBasis(str(bound))) if (bound := data.get("bound")) else None,
        )


# Values with the same event time and status that name different bases: the one that protects
# the person most wins (consent, then no basis stated, which means the purpose's default, then the
# bases a person can object to before those they cannot).
BASIS_RESTRICTIVENESS: dict[LawfulBasis | None, int] = {
    LawfulBasis.CONSENT: 6,
    None: 5,
    LawfulBasis.LEGITIMATE_INTERESTS: 4,
    LawfulBasis.PUBLIC_TASK: 3,
    LawfulBasis.CONTRACT: 2,
    LawfulBasis.LEGAL_OBLIGATION: 1,
    LawfulBasis.VITAL_INTERESTS: 0,
}
_DEFAULT_POLICY = Policy(trusted_sources=frozenset())
_STATUSES = {status.value: status for status in ConsentStatus}
_BASES = {basis.value: basis for basis in LawfulBasis}


def no_counts_from(moment: datetime) -> datetime:
    """When a no stated at ``moment`` counts from, as precedence reads it: a time stamped to the
    whole second from the end of that second (docs/policy.md), a time with a fraction as it is.
    Every no is read so (a withdrawal, a refusal, an expiry, an objection), so that a consent
    captured within the same second is not taken to come after it."""
    return moment + TO_THE_SECONDS_END if not moment.microsecond else moment


def no_counts_at(moment: datetime, clock_lag: timedelta | None, observed_at: datetime) -> datetime:
    """When a no stamped ``moment`` counts from: ``no_counts_from``, and where the stamping clock
    may run ``clock_lag`` behind ours (``Evidence.clock_lag``), up to that much later, never after
    it was observed (``observed_at``). Every place that asks whether a no came after something
    reads it so (``Ranked.of``, a confirmation link's guard)."""
    counts = no_counts_from(moment)
    if clock_lag is None:
        return counts
    return max(counts, min(moment + clock_lag, observed_at))


class _Ordered(Protocol):
    """What ``_later`` compares: evidence (``Ranked``) or a moment (``datetime``)."""

    def __lt__(self, other: Any, /) -> bool: ...


_T = TypeVar("_T", bound=_Ordered)


def _later(a: _T | None, b: _T | None) -> _T | None:
    """The later of two, either of which may be missing (None only when both are)."""
    if a is None:
        return b
    if b is None:
        return a
    return b if a < b else a  # max(a, b), keeping ``a`` on a tie


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    """The earlier of two moments, either of which may be missing (None only when both are)."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b < a else a


@quick_init
@dataclass(frozen=True, slots=True)
class Summary:
    """Everything precedence needs to know about a set of evidence; see the module docstring."""

    latest: Ranked | None = None
    tied: bool = False  # the latest event time carries more than one status
    restriction: Ranked | None = None
    trusted_opt_in_at: datetime | None = None
    soft_opt_in_at: datetime | None = None
    lapsed_at: datetime | None = None
    undated_grant_seen: datetime | None = None  # the earliest, unlike every other field
    answered: bool = False  # anything but an unanswered status on record (monotone: or)

    def join(self, other: Summary) -> Summary:
        return self._joined(
            other.latest,
            other.tied,
            other.restriction,
            other.trusted_opt_in_at,
            other.soft_opt_in_at,
            other.lapsed_at,
            other.undated_grant_seen,
            other.answered,
        )

    def _joined(
        self,
        latest: Ranked | None,
        tied: bool,
        restriction: Ranked | None,
        trusted_opt_in_at: datetime | None,
        soft_opt_in_at: datetime | None,
        lapsed_at: datetime | None,
        undated_grant_seen: datetime | None,
        answered: bool,
    ) -> Summary:
        """``join``, given the other summary's fields: folding in one event (``_facts``) then
        builds one Summary, not two."""
        mine = self.latest
        later = _later(mine, latest)
        if mine is None or latest is None:
            tied = self.tied or tied
        elif mine.sort_time == latest.sort_time:
            tied = self.tied or tied or mine.status is not latest.status or mine.basis is not latest.basis
        elif later is mine:
            tied = self.tied
        # else the other side's latest wins, and with it its tie
        return Summary(
            later,
            tied,
            _later(self.restriction, restriction),
            _later(self.trusted_opt_in_at, trusted_opt_in_at),
            _later(self.soft_opt_in_at, soft_opt_in_at),
            _later(self.lapsed_at, lapsed_at),
            _earlier(self.undated_grant_seen, undated_grant_seen),
            self.answered or answered,
        )

    def with_values(self, latest: Ranked | None, restriction: Ranked | None) -> Summary:
        """This summary with ``latest`` and ``restriction`` in place of its own (the same values,
        bound: ``Ranked.bound``)."""
        return Summary(
            latest,
            self.tied,
            restriction,
            self.trusted_opt_in_at,
            self.soft_opt_in_at,
            self.lapsed_at,
            self.undated_grant_seen,
            self.answered,
        )

    def to_json(self) -> dict[str, object]:
        """Plain data (datetimes stay datetimes: ``domain.canonical_json`` writes them ISO 8601)."""
        return {
            "v": SUMMARY_VERSION,
            "latest": self.latest.to_json() if self.latest else None,
            "tied": self.tied,
            "restriction": self.restriction.to_json() if self.restriction else None,
            "trusted_opt_in_at": self.trusted_opt_in_at,
            "soft_opt_in_at": self.soft_opt_in_at,
            "lapsed_at": self.lapsed_at,
            "undated_grant_seen": self.undated_grant_seen,
            "answered": self.answered,
        }

    @staticmethod
    def is_current(data: dict[str, object]) -> bool:
        """Whether ``data`` was written by this version of the fold (else: fold the events again)."""
        return data.get("v") == SUMMARY_VERSION

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Summary:
        latest, restriction = data["latest"], data["restriction"]
        return cls(
            Ranked.from_json(latest) if isinstance(latest, dict) else None,
            bool(data["tied"]),
            Ranked.from_json(restriction) if isinstance(restriction, dict) else None,
            _moment(data.get("trusted_opt_in_at")),
            _moment(data.get("soft_opt_in_at")),
            _moment(data.get("lapsed_at")),
            _moment(data.get("undated_grant_seen")),
            bool(data.get("answered")),
        )


# The summary of no evidence (immutable: one serves every caller).
NO_EVIDENCE = Summary()


def _moment(value: object) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None


# A Summary's fields, in order: latest, tied, restriction, trusted_opt_in_at, soft_opt_in_at,
# lapsed_at, undated_grant_seen, answered.
_Facts = tuple[
    Ranked | None,
    bool,
    Ranked | None,
    datetime | None,
    datetime | None,
    datetime | None,
    datetime | None,
    bool,
]


def _facts(evidence: Evidence, policy: Policy, bound: LawfulBasis | None = None) -> _Facts:
    """The fields of the summary of ``evidence`` alone (``bound``: ``Ranked.bound``)."""
    if is_system_expiry(evidence):
        # A record that the clock ran out, derived from the rest: it decides nothing, so the
        # state cannot depend on whether the sweep ran before or after a late renewal.
        return None, False, None, None, None, evidence.event_time or evidence.observed_at, None, False
    ranked = Ranked.of(evidence, policy, bound)
    status = evidence.status
    return (
        ranked,
        False,
        ranked if status in STICKY_STATUSES else None,
        ranked.event_time if policy.reverses_sticky(evidence) else None,
        ranked.event_time if is_soft_opt_in(evidence, policy) else None,
        None,
        evidence.observed_at if ranked.event_time is None and _is_consent(ranked) else None,
        status not in UNANSWERED_STATUSES,
    )


def summarise_one(evidence: Evidence, policy: Policy) -> Summary:
    return Summary(*_facts(evidence, policy))


def summarise(evidence: Iterable[Evidence], policy: Policy, start: Summary | None = None) -> Summary:
    summary = start or NO_EVIDENCE
    for item in evidence:
        summary = summary._joined(*_facts(item, policy))
    return summary


def consent_state(summary: Summary, purpose: Purpose, channel: str) -> EffectiveState:
    """What the evidence alone says, before subject-wide facts and expiry are applied."""
    latest, restriction = summary.latest, summary.restriction
    if latest is None:
        # No evidence: a purpose founded on consent has none (suppressed); any other basis holds.
        needs_consent = purpose.default_basis is LawfulBasis.CONSENT
        return EffectiveState(
            purpose.key,
            channel,
            ConsentStatus.APPLICABLE if needs_consent else ConsentStatus.NOT_APPLICABLE,
            purpose.default_basis,
            suppressed=needs_consent,
            rule=Rule.NO_CONSENT_ON_RECORD if needs_consent else Rule.DEFAULT_BASIS,
            detail="consent is the basis and none is on record" if needs_consent else "",
        )
    if restriction is not None and not _reversed(summary.trusted_opt_in_at, restriction):
        if latest.sort_time > restriction.sort_time and _other_basis(latest):
            # Another basis recorded after the withdrawal or refusal, by whoever: no switching.
            rule = Rule.NO_BASIS_SWITCH
        elif restriction.status is ConsentStatus.WITHDRAWN:
            rule = Rule.STICKY_WITHDRAWAL
        else:
            rule = Rule.STICKY_REFUSAL
        return _state_of(restriction, purpose, channel, rule)
    if restriction is not None:
        rule = Rule.TRUSTED_OPT_IN
    elif latest.status is ConsentStatus.EXPIRED:
        rule = Rule.EXPIRED
    elif summary.tied:
        rule = Rule.MOST_RESTRICTIVE_ON_TIE
    elif latest.event_time is None:
        rule = Rule.UNKNOWN_EVENT_TIME
    else:
        rule = Rule.LATEST_EVENT_TIME
    return _state_of(latest, purpose, channel, rule, summary.undated_grant_seen, summary.answered)


def binding_no(summary: Summary) -> Ranked | None:
    """The latest withdrawal or refusal, while it still binds (no new consent newer than it):
    the person's no that must travel with them (a CRM merge that joins two people of the
    ledger), or None."""
    restriction = summary.restriction
    if restriction is None or _reversed(summary.trusted_opt_in_at, restriction):
        return None
    return restriction


def _other_basis(value: Ranked) -> bool:
    """The value states a lawful basis other than consent."""
    return value.basis is not None and value.basis is not LawfulBasis.CONSENT


def _is_consent(value: Ranked | None) -> bool:
    """The value is a consent given: granted, and on no basis other than consent."""
    return value is not None and value.status is ConsentStatus.GRANTED and not _other_basis(value)


def _reversed(trusted_opt_in_at: datetime | None, blocker: Ranked | datetime) -> bool:
    blocked_at = blocker.sort_time if isinstance(blocker, Ranked) else blocker
    return trusted_opt_in_at is not None and trusted_opt_in_at > blocked_at


def _state_of(
    value: Ranked,
    purpose: Purpose,
    channel: str,
    rule: str,
    undated_grant_seen: datetime | None = None,
    answered: bool = True,
) -> EffectiveState:
    # A value that states no basis is read under the default in force when it was recorded
    # (``Ranked.bound``), never under one configured since; the current default only for a value
    # an older version left unbound and nothing bound since (the ledger binds those: service.py).
    basis = value.basis or value.bound or purpose.default_basis
    expires_at = None
    if (
        value.status is ConsentStatus.GRANTED
        and purpose.validity_days is not None
        and basis is LawfulBasis.CONSENT
    ):
        # Validity runs from the person's last affirmative action; unknown means first seen: the
        # first time consentsync saw an undated grant, not the latest sighting of that stale
        # value (read most restrictively, an undated grant happened as early as possible).
        anchor = value.event_time or _earlier(undated_grant_seen, value.observed_at) or value.observed_at
        expires_at = anchor + timedelta(days=purpose.validity_days)
    return EffectiveState(
        purpose.key,
        channel,
        value.status,
        basis,
        is_suppressed(value.status, basis),
        rule,
        value.event_time or value.observed_at,  # since
        expires_at,
        value.evidenced,
        f"source {value.source}",
        value.status,  # evidence_status
        # A basis the evidence left out is the purpose's default (of the day it was recorded):
        # stated only where that is consent, which a grant or withdrawal of consent speaks of by
        # itself. A request nobody answered, over nothing but other requests (``answered``),
        # states none: it names the basis it asks for, which nobody gave (a request mailed, a
        # form anyone can fill in with the address); the mapping reads such a state as no consent
        # on record, as it reads ``no_consent_on_record`` (mapping._for_want_of_consent).
        (value.basis is not None or basis is LawfulBasis.CONSENT)
        and (answered or value.status not in UNANSWERED_STATUSES),
    )


def is_suppressed(status: ConsentStatus, basis: LawfulBasis) -> bool:
    if status in (ConsentStatus.WITHDRAWN, ConsentStatus.REFUSED, ConsentStatus.EXPIRED):
        return True
    return basis is LawfulBasis.CONSENT and status is not ConsentStatus.GRANTED


def effective_state(
    summary: Summary,
    purpose: Purpose,
    channel: str,
    *,
    flags: SubjectFlags,
    objections: Sequence[ObjectionFact],
    now: datetime,
) -> EffectiveState:
    """The state a CRM must show, with the name of the rule that decided it.

    Precedence, most binding first: restriction, erasure/suppression, objections (direct
    marketing, upheld, pending review), sticky withdrawal/refusal (no basis switching), the
    ePrivacy rule (consent or soft opt-in), expiry, then the latest value.
    """
    state = consent_state(summary, purpose, channel)
    # What the evidence says once the sweep recorded the lapse: expired, whichever rule below
    # decides the person's state (a restriction, an erasure, an objection too), so that the
    # stored status reads expired and the sweep, which looks for granted consents past their
    # window, finds each lapse once. None: the evidence's own status stands.
    lapsed = (
        ConsentStatus.EXPIRED
        if state.expires_at is not None and lapse_on_record(state, summary, now)
        else None
    )
    trusted_at = summary.trusted_opt_in_at
    if flags.restricted:
        return _suppress(state, Rule.RESTRICTION, "processing restricted (Art. 18)", lapsed)
    if flags.suppressed_since is not None and not _reversed(trusted_at, flags.suppressed_since):
        return _suppress(
            state,
            Rule.ERASURE,
            f"suppressed since {iso(flags.suppressed_since)}: {flags.suppression_reason}",
            lapsed,
        )
    for objection in _relevant(objections, purpose) if objections else ():
        if objection.status is ObjectionStatus.PENDING:
            return _suppress(
                state, Rule.OBJECTION_PENDING, f"objection of {iso(objection.raised_at)} under review", lapsed
            )
        # An objection is a no like any other: stamped to the whole second (an ops entry from a
        # call log, "--at 14:03:12"), it counts from the end of that second.
        if _reversed(trusted_at, no_counts_from(objection.raised_at)):
            continue
        if objection.direct_marketing:
            return _suppress(
                state,
                Rule.OBJECTION_DIRECT_MARKETING,
                f"objection to direct marketing of {iso(objection.raised_at)} (Art. 21(2))",
                lapsed,
            )
        return _suppress(
            state, Rule.OBJECTION_UPHELD, f"objection of {iso(objection.raised_at)} upheld", lapsed
        )
    if not state.suppressed and purpose.eprivacy_applies(channel) and not _is_consent(summary.latest):
        # PECR reg. 22 / ePrivacy Art. 13: electronic mail marketing needs consent, or a soft
        # opt-in the person has not refused since.
        soft_at = summary.soft_opt_in_at
        blocked = summary.restriction
        if soft_at is None or (blocked is not None and soft_at <= blocked.sort_time):
            return _suppress(
                state,
                Rule.EPRIVACY_CONSENT_REQUIRED,
                f"{state.basis.value} is not enough for marketing by {channel}: consent or a "
                "soft opt-in is needed (PECR reg. 22, ePrivacy Art. 13)",
                lapsed,
            )
        return _altered(
            state,
            state.status,
            Rule.EPRIVACY_SOFT_OPT_IN,
            f"soft opt-in of {iso(soft_at)} (PECR reg. 22(3), ePrivacy Art. 13(2))",
            suppressed=False,
            evidence_status=lapsed,
        )
    if state.status is ConsentStatus.GRANTED and state.expires_at is not None and now >= state.expires_at:
        return _altered(
            state,
            ConsentStatus.EXPIRED,
            Rule.EXPIRED,
            f"granted consent expired at {iso(state.expires_at)}; renewal needed",
            evidence_status=lapsed,
        )
    return state


def lapse_on_record(state: EffectiveState, summary: Summary, now: datetime) -> bool:
    """Whether ``state`` (what the evidence alone says: ``consent_state``) is a granted consent
    past its validity window whose lapse the expiry sweep has recorded (a lapse recorded for an
    earlier grant is not the lapse of a renewal). The ledger's stored status then reads expired,
    whatever rule decides the person's state: the sweep looks for granted consents past their
    window, and must find each lapse once."""
    expires_at, lapsed_at = state.expires_at, summary.lapsed_at
    return (
        state.status is ConsentStatus.GRANTED
        and expires_at is not None
        and lapsed_at is not None
        and now >= expires_at
        and lapsed_at >= expires_at
    )


def _suppress(
    state: EffectiveState, rule: str, detail: str, evidence_status: ConsentStatus | None = None
) -> EffectiveState:
    """``state`` suppressed by a subject-wide rule; ``evidence_status``: the evidence's status
    when it is no longer the value's own (a lapse on record), else None."""
    return _altered(state, state.status, rule, detail, evidence_status=evidence_status)


def _altered(
    state: EffectiveState,
    status: ConsentStatus,
    rule: str,
    detail: str,
    *,
    suppressed: bool = True,
    evidence_status: ConsentStatus | None = None,
) -> EffectiveState:
    """``state`` decided by a subject-wide rule or the clock, suppressed unless said otherwise
    (dataclasses.replace, written out: it is on the recording path of every event, and replace
    costs as much as reconciling)."""
    return EffectiveState(
        state.purpose,
        state.channel,
        status,
        state.basis,
        suppressed,
        rule,
        state.since,
        state.expires_at,
        state.evidenced,
        detail,
        evidence_status or state.evidence_status,
        state.basis_stated,
    )


def serves_direct_marketing(purpose: Purpose) -> bool:
    """Whether ``purpose`` is processing for direct marketing (Art. 21(2)), which an objection to
    direct marketing ends (Art. 21(3): "shall no longer be processed for such purposes"):

    * a purpose flagged ``direct_marketing``; profiling for direct marketing is one too (Art.
      21(2): "which includes profiling to the extent that it is related to such direct
      marketing"): configured ``profiling_for_direct_marketing: true``, it is flagged so, and
      sends nothing, so the ePrivacy rules stay off it (``config.Config.purposes``);
    * a purpose under the ePrivacy rules (``eprivacy: true``): marketing by electronic mail is
      direct marketing whatever its ``direct_marketing`` says (PECR reg. 22, docs/policy.md).

    The reconciler, the ledger (which objections are direct marketing, which purposes an
    objection re-decides) and the hub (its page, its receipts, its confirmation links) ask here."""
    return purpose.direct_marketing or purpose.eprivacy is True


def _relevant(objections: Sequence[ObjectionFact], purpose: Purpose) -> list[ObjectionFact]:
    """Objections that bind this purpose, the most binding first.

    An objection to direct marketing covers every purpose that serves it (Art. 21(3),
    ``serves_direct_marketing``), profiling for direct marketing included.
    """
    marketing = serves_direct_marketing(purpose)
    binding = [
        o
        for o in objections
        if o.status is not ObjectionStatus.REJECTED
        and (o.purpose == purpose.key or (o.direct_marketing and marketing))
    ]
    order = {ObjectionStatus.PENDING: 0, ObjectionStatus.UPHELD: 1}
    return sorted(binding, key=lambda o: (order[o.status], not o.direct_marketing, o.raised_at))


@quick_init
@dataclass(frozen=True, slots=True)
class Decision:
    """What one piece of evidence does to the ledger."""

    summary: Summary
    before: EffectiveState
    after: EffectiveState

    @property
    def changed(self) -> bool:
        return (self.before.status, self.before.basis, self.before.suppressed) != (
            self.after.status,
            self.after.basis,
            self.after.suppressed,
        )


def reconcile(
    current: Summary | None,
    evidence: Evidence,
    purpose: Purpose,
    policy: Policy,
    *,
    flags: SubjectFlags,
    objections: Sequence[ObjectionFact],
    now: datetime,
    before: EffectiveState | None = None,
    bound: LawfulBasis | None = None,
) -> Decision:
    """Folds one piece of evidence into ``current``. ``before``, when the caller already holds
    the effective state of ``current`` (same flags, objections and clock), saves recomputing it.
    A value that states no basis is bound to ``bound`` (the ledger's default in force when it
    was observed), else to ``purpose``'s default basis now (``Ranked.bound``): the basis it is
    recorded under, whatever the default becomes."""
    facts = _facts(evidence, policy, bound if bound is not None else purpose.default_basis)
    updated = Summary(*facts) if current is None else current._joined(*facts)
    if before is None:
        before = effective_state(
            NO_EVIDENCE if current is None else current,
            purpose,
            evidence.channel,
            flags=flags,
            objections=objections,
            now=now,
        )
    after = effective_state(updated, purpose, evidence.channel, flags=flags, objections=objections, now=now)
    return Decision(summary=updated, before=before, after=after)
