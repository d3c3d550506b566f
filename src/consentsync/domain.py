"""The vocabulary of consent: lawful bases, statuses, purposes, evidence and decisions.

Everything here is plain data; the rules that combine it live in reconcile.py.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

import orjson

E = TypeVar("E", bound=StrEnum)


class LawfulBasis(StrEnum):
    """GDPR Art. 6(1): one per (person, purpose), never one per system."""

    CONSENT = "consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"
    VITAL_INTERESTS = "vital_interests"
    PUBLIC_TASK = "public_task"
    LEGITIMATE_INTERESTS = "legitimate_interests"


class ConsentStatus(StrEnum):
    NOT_APPLICABLE = "not_applicable"
    APPLICABLE = "applicable"
    REQUESTED = "requested"
    GRANTED = "granted"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"


# Higher is more restrictive. Used to break ties between values of equal (or unknown) event
# time, as Salesforce's Consent API does when its records disagree.
RESTRICTIVENESS: dict[ConsentStatus, int] = {
    ConsentStatus.GRANTED: 0,
    ConsentStatus.NOT_APPLICABLE: 1,
    ConsentStatus.APPLICABLE: 2,
    ConsentStatus.REQUESTED: 3,
    ConsentStatus.EXPIRED: 4,
    ConsentStatus.REFUSED: 5,
    ConsentStatus.WITHDRAWN: 6,
}

# Statuses that only a newer, evidenced opt-in from a trusted capture source can reverse.
STICKY_STATUSES = frozenset({ConsentStatus.WITHDRAWN, ConsentStatus.REFUSED})


class Origin(StrEnum):
    """Where a piece of evidence came from, which decides how much it can prove."""

    CAPTURE = "capture"  # recorded where the person acted: a form, a call, an ops decision
    CRM = "crm"  # a value read from a CRM: evidence to reconcile, never the authority
    SYSTEM = "system"  # derived by consentsync itself (expiry)


class ObjectionHandling(StrEnum):
    AUTO_UPHOLD = "auto_uphold"
    MANUAL_REVIEW = "manual_review"


class ObjectionStatus(StrEnum):
    PENDING = "pending"
    UPHELD = "upheld"
    REJECTED = "rejected"


DEFAULT_CHANNELS: tuple[str, ...] = ("email", "phone", "sms", "post")

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class InvalidInput(ValueError):
    """Input that names something unknown or malformed; the message says what is accepted."""


def normalise_email(raw: str) -> str:
    """Lower-cased and trimmed, as domain.md's identity rule asks; raises on anything malformed."""
    email = raw.strip().lower()
    if not _EMAIL_RE.match(email) or len(email) > 320:
        raise InvalidInput(f"malformed email address {raw!r}: expected local@domain.tld")
    return email


def parse_enum(enum: type[E], value: str, what: str) -> E:
    try:
        return enum(value.strip().lower())
    except ValueError:
        accepted = ", ".join(member.value for member in enum)
        raise InvalidInput(f"unknown {what} {value!r}: accepted are {accepted}") from None


def parse_timestamp(value: str, what: str = "timestamp") -> datetime:
    """ISO 8601; a time without an offset is taken as UTC. Always returns an aware UTC datetime."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"malformed {what} {value!r}: expected ISO 8601, e.g. 2026-11-23T10:15:00Z"
        ) from None
    return as_utc(parsed)


def as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Purpose:
    key: str
    name: str
    direct_marketing: bool
    default_basis: LawfulBasis
    validity_days: int | None
    objection_handling: ObjectionHandling
    channels: tuple[str, ...] = DEFAULT_CHANNELS


@dataclass(frozen=True, slots=True)
class Evidence:
    """One statement about one person's consent for one purpose on one channel.

    ``event_time`` is when the person acted, not when anyone synced it; ``observed_at`` is when
    consentsync first learned of it, the latest moment the event can have happened.
    """

    purpose: str
    channel: str
    status: ConsentStatus
    basis: LawfulBasis | None
    event_time: datetime | None
    observed_at: datetime
    source: str
    origin: Origin
    actor: str | None = None
    notice_version: str | None = None
    double_opt_in_at: datetime | None = None
    evidence_ref: str | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One instant, one spelling: fingerprints and comparisons must not depend on offsets.
        for name in ("event_time", "observed_at", "double_opt_in_at"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is not UTC:
                object.__setattr__(self, name, as_utc(moment))

    @property
    def has_proof(self) -> bool:
        """A capture we could show a regulator: a time, and what was shown or confirmed."""
        return self.event_time is not None and (
            self.notice_version is not None
            or self.double_opt_in_at is not None
            or self.evidence_ref is not None
        )

    def fingerprint(self) -> str:
        """Identity of the statement itself: the same evidence replayed has the same print.

        ``observed_at`` is left out for evidence with a known event time, so a value read twice
        is one statement; without an event time the observation is all we know of when.
        """
        if self._fingerprint is None:
            object.__setattr__(self, "_fingerprint", self._compute_fingerprint())
        return self._fingerprint  # type: ignore[return-value]

    def _compute_fingerprint(self) -> str:
        # A JSON array: unambiguous whatever the values hold, and cheap to write.
        parts = (
            self.purpose,
            self.channel,
            self.status,
            self.basis,
            self.event_time,
            None if self.event_time else self.observed_at,
            self.source,
            self.origin,
            self.actor,
            self.notice_version,
            self.double_opt_in_at,
            self.evidence_ref,
        )
        return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_UTC_Z)).hexdigest()


@dataclass(frozen=True, slots=True)
class SubjectFlags:
    """Facts about the person that hold across purposes."""

    suppressed_since: datetime | None = None  # erasure / suppression-list entry
    suppression_reason: str | None = None
    restricted: bool = False  # Art. 18: stored, not otherwise processed


@dataclass(frozen=True, slots=True)
class ObjectionFact:
    purpose: str
    direct_marketing: bool
    status: ObjectionStatus
    raised_at: datetime


@dataclass(frozen=True, slots=True)
class EffectiveState:
    purpose: str
    channel: str
    status: ConsentStatus
    basis: LawfulBasis
    suppressed: bool
    rule: str
    since: datetime | None = None
    expires_at: datetime | None = None
    evidenced: bool = False
    detail: str = ""
    # What the evidence alone says, before subject-wide rules and the clock (expiry) apply.
    evidence_status: ConsentStatus | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "purpose": self.purpose,
            "channel": self.channel,
            "status": self.status.value,
            "basis": self.basis.value,
            "suppressed": self.suppressed,
            "rule": self.rule,
            "since": iso(self.since),
            "expires_at": iso(self.expires_at),
            "evidenced": self.evidenced,
            "detail": self.detail,
        }


def iso(moment: datetime | None) -> str | None:
    return as_utc(moment).isoformat().replace("+00:00", "Z") if moment else None


def canonical_json(value: object) -> str:
    """The one serialisation that hashes are computed over: sorted keys, no whitespace, UTF-8
    (byte for byte what ``json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` writes, at a fraction of the cost). Datetimes become ISO 8601 with Z."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z).decode("utf-8")
