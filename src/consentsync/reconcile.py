"""The precedence policy: evidence and ledger state in, decisions out. No I/O.

Every piece of evidence about one (person, purpose, channel) is folded into a ``Summary``. The
fold is a join: commutative, associative and idempotent, so the outcome depends on the set of
evidence only, never on the order it arrived in or on how often it was replayed. The summary
keeps exactly what domain.md's precedence rules need:

* ``latest``: the value with the latest event time (ties: the most restrictive);
* ``restriction``: the latest withdrawal or refusal, which is sticky;
* ``trusted_opt_in_at``: the latest newer, evidenced opt-in from a trusted capture source, the
  only thing that reverses a sticky value.

Unknown event times are read in the most restrictive way: a withdrawal or refusal is taken to
have happened as late as possible (when it was first observed), anything else as early as
possible. ``effective_state`` then layers erasure, restriction, objections and expiry on top.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
)

EARLIEST = datetime.min.replace(tzinfo=UTC)


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
    EXPIRED = "validity_expired"
    NO_CONSENT_ON_RECORD = "no_consent_on_record"
    DEFAULT_BASIS = "purpose_default_basis"


@dataclass(frozen=True, slots=True)
class Policy:
    """The configurable parts of precedence."""

    trusted_sources: frozenset[str]

    def reverses_sticky(self, evidence: Evidence) -> bool:
        """Only a newer, evidenced, affirmative opt-in from a trusted capture source may."""
        return (
            evidence.status is ConsentStatus.GRANTED
            and evidence.origin is Origin.CAPTURE
            and evidence.source in self.trusted_sources
            and evidence.has_proof
        )


@dataclass(frozen=True, slots=True)
class Ranked:
    """One piece of evidence reduced to what precedence compares.

    Ordered by (sort time, restrictiveness, fingerprint, observation time): later wins, then more
    restrictive; the last two only make the order total, so the fold never depends on arrival.
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

    @classmethod
    def of(cls, evidence: Evidence) -> Ranked:
        if evidence.event_time is not None:
            sort_time = evidence.event_time
        elif evidence.status in STICKY_STATUSES or evidence.status is ConsentStatus.EXPIRED:
            sort_time = evidence.observed_at
        else:
            sort_time = EARLIEST
        return cls(
            sort_time=sort_time,
            rank=RESTRICTIVENESS[evidence.status],
            fingerprint=evidence.fingerprint(),
            status=evidence.status,
            basis=evidence.basis,
            event_time=evidence.event_time,
            observed_at=evidence.observed_at,
            source=evidence.source,
            evidenced=evidence.has_proof,
        )

    def __lt__(self, other: Ranked) -> bool:
        # The fingerprint leaves out the observation time of dated evidence (a re-read is the same
        # statement), so it comes last, to keep the order total.
        return (self.sort_time, self.rank, self.fingerprint, self.observed_at) < (
            other.sort_time,
            other.rank,
            other.fingerprint,
            other.observed_at,
        )

    def __gt__(self, other: Ranked) -> bool:
        return other < self

    def to_json(self) -> dict[str, object]:
        return {
            "sort_time": self.sort_time,
            "rank": self.rank,
            "fingerprint": self.fingerprint,
            "status": self.status.value,
            "basis": self.basis.value if self.basis else None,
            "event_time": self.event_time,
            "observed_at": self.observed_at,
            "source": self.source,
            "evidenced": self.evidenced,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Ranked:
        event_time = data["event_time"]
        basis = data["basis"]
        return cls(
            sort_time=datetime.fromisoformat(str(data["sort_time"])),
            rank=int(str(data["rank"])),
            fingerprint=str(data["fingerprint"]),
            status=ConsentStatus(str(data["status"])),
            basis=LawfulBasis(str(basis)) if basis else None,
            event_time=datetime.fromisoformat(str(event_time)) if event_time else None,
            observed_at=datetime.fromisoformat(str(data["observed_at"])),
            source=str(data["source"]),
            evidenced=bool(data["evidenced"]),
        )


def _later(a: Ranked | None, b: Ranked | None) -> Ranked | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _latest_time(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


@dataclass(frozen=True, slots=True)
class Summary:
    """Everything precedence needs to know about a set of evidence; see the module docstring."""

    latest: Ranked | None = None
    tied: bool = False  # the latest event time carries more than one status
    restriction: Ranked | None = None
    trusted_opt_in_at: datetime | None = None

    def join(self, other: Summary) -> Summary:
        latest = _later(self.latest, other.latest)
        if self.latest is None or other.latest is None:
            tied = self.tied or other.tied
        elif self.latest.sort_time == other.latest.sort_time:
            tied = self.tied or other.tied or self.latest.status is not other.latest.status
        else:
            tied = self.tied if latest is self.latest else other.tied
        return Summary(
            latest=latest,
            tied=tied,
            restriction=_later(self.restriction, other.restriction),
            trusted_opt_in_at=_latest_time(self.trusted_opt_in_at, other.trusted_opt_in_at),
        )

    def to_json(self) -> dict[str, object]:
        """Plain data (datetimes stay datetimes: ``domain.canonical_json`` writes them ISO 8601)."""
        return {
            "v": 1,
            "latest": self.latest.to_json() if self.latest else None,
            "tied": self.tied,
            "restriction": self.restriction.to_json() if self.restriction else None,
            "trusted_opt_in_at": self.trusted_opt_in_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Summary:
        latest, restriction, trusted = (
            data["latest"],
            data["restriction"],
            data["trusted_opt_in_at"],
        )
        return cls(
            latest=Ranked.from_json(latest) if isinstance(latest, dict) else None,
            tied=bool(data["tied"]),
            restriction=Ranked.from_json(restriction) if isinstance(restriction, dict) else None,
            trusted_opt_in_at=datetime.fromisoformat(str(trusted)) if trusted else None,
        )


def summarise_one(evidence: Evidence, policy: Policy) -> Summary:
    ranked = Ranked.of(evidence)
    return Summary(
        latest=ranked,
        tied=False,
        restriction=ranked if evidence.status in STICKY_STATUSES else None,
        trusted_opt_in_at=evidence.event_time if policy.reverses_sticky(evidence) else None,
    )


def summarise(evidence: Iterable[Evidence], policy: Policy, start: Summary | None = None) -> Summary:
    summary = start or Summary()
    for item in evidence:
        summary = summary.join(summarise_one(item, policy))
    return summary


def consent_state(summary: Summary, purpose: Purpose, channel: str) -> EffectiveState:
    """What the evidence alone says, before subject-wide facts and expiry are applied."""
    latest, restriction = summary.latest, summary.restriction
    if latest is None:
        if purpose.default_basis is LawfulBasis.CONSENT:
            return EffectiveState(
                purpose.key,
                channel,
                ConsentStatus.APPLICABLE,
                LawfulBasis.CONSENT,
                suppressed=True,
                rule=Rule.NO_CONSENT_ON_RECORD,
                detail="consent is the basis and none is on record",
            )
        return EffectiveState(
            purpose.key,
            channel,
            ConsentStatus.NOT_APPLICABLE,
            purpose.default_basis,
            suppressed=False,
            rule=Rule.DEFAULT_BASIS,
        )
    if restriction is not None and not _reversed(summary.trusted_opt_in_at, restriction):
        rule = (
            Rule.STICKY_WITHDRAWAL if restriction.status is ConsentStatus.WITHDRAWN else Rule.STICKY_REFUSAL
        )
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
    return _state_of(latest, purpose, channel, rule)


def _reversed(trusted_opt_in_at: datetime | None, blocker: Ranked | datetime) -> bool:
    blocked_at = blocker.sort_time if isinstance(blocker, Ranked) else blocker
    return trusted_opt_in_at is not None and trusted_opt_in_at > blocked_at


def _state_of(value: Ranked, purpose: Purpose, channel: str, rule: str) -> EffectiveState:
    basis = value.basis or purpose.default_basis
    expires_at = None
    if (
        value.status is ConsentStatus.GRANTED
        and purpose.validity_days is not None
        and basis is LawfulBasis.CONSENT
    ):
        # Validity runs from the person's last affirmative action; unknown means first seen.
        anchor = value.event_time or value.observed_at
        expires_at = anchor + timedelta(days=purpose.validity_days)
    return EffectiveState(
        purpose.key,
        channel,
        value.status,
        basis,
        suppressed=is_suppressed(value.status, basis),
        rule=rule,
        since=value.event_time or value.observed_at,
        expires_at=expires_at,
        evidenced=value.evidenced,
        detail=f"source {value.source}",
        evidence_status=value.status,
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
    marketing, upheld, pending review), sticky withdrawal/refusal, expiry, then the latest value.
    """
    state = consent_state(summary, purpose, channel)
    trusted_at = summary.trusted_opt_in_at

    def suppress(rule: str, detail: str) -> EffectiveState:
        return _altered(state, state.status, rule, detail)

    if flags.restricted:
        return suppress(Rule.RESTRICTION, "processing restricted (Art. 18)")
    if flags.suppressed_since is not None and not _reversed(trusted_at, flags.suppressed_since):
        return suppress(
            Rule.ERASURE,
            f"suppressed since {iso(flags.suppressed_since)}: {flags.suppression_reason}",
        )
    for objection in _relevant(objections, purpose) if objections else ():
        if objection.status is ObjectionStatus.PENDING:
            return suppress(Rule.OBJECTION_PENDING, f"objection of {iso(objection.raised_at)} under review")
        if _reversed(trusted_at, objection.raised_at):
            continue
        if objection.direct_marketing:
            return suppress(
                Rule.OBJECTION_DIRECT_MARKETING,
                f"objection to direct marketing of {iso(objection.raised_at)} (Art. 21(2))",
            )
        return suppress(Rule.OBJECTION_UPHELD, f"objection of {iso(objection.raised_at)} upheld")
    if state.status is ConsentStatus.GRANTED and state.expires_at is not None and now >= state.expires_at:
        return _altered(
            state,
            ConsentStatus.EXPIRED,
            Rule.EXPIRED,
            f"granted consent expired at {iso(state.expires_at)}; renewal needed",
        )
    return state


def _altered(state: EffectiveState, status: ConsentStatus, rule: str, detail: str) -> EffectiveState:
    """``state`` suppressed by a subject-wide rule or the clock (dataclasses.replace, written
    out: it is on the recording path of every event, and replace costs as much as reconciling)."""
    return EffectiveState(
        state.purpose,
        state.channel,
        status,
        state.basis,
        True,
        rule,
        state.since,
        state.expires_at,
        state.evidenced,
        detail,
        state.evidence_status,
    )


def _relevant(objections: Sequence[ObjectionFact], purpose: Purpose) -> list[ObjectionFact]:
    """Objections that bind this purpose, the most binding first.

    An objection to direct marketing covers every direct-marketing purpose (Art. 21(3)).
    """
    binding = [
        o
        for o in objections
        if o.status is not ObjectionStatus.REJECTED
        and (o.purpose == purpose.key or (o.direct_marketing and purpose.direct_marketing))
    ]
    order = {ObjectionStatus.PENDING: 0, ObjectionStatus.UPHELD: 1}
    return sorted(binding, key=lambda o: (order[o.status], not o.direct_marketing, o.raised_at))


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
) -> Decision:
    """Folds one piece of evidence into ``current``. ``before``, when the caller already holds
    the effective state of ``current`` (same flags, objections and clock), saves recomputing it."""
    current = current or Summary()
    updated = current.join(summarise_one(evidence, policy))
    if before is None:
        before = effective_state(
            current, purpose, evidence.channel, flags=flags, objections=objections, now=now
        )
    after = effective_state(updated, purpose, evidence.channel, flags=flags, objections=objections, now=now)
    return Decision(summary=updated, before=before, after=after)
