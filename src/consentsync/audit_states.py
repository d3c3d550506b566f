"""``audit verify``'s check that each person's current state (``consent_states``) is what their
consent events make of it (docs/tamper-evidence.md, "Current states and consent events agree").

A state row is a digest of the events: the ledger folds every event of one (person, purpose,
channel) into a ``reconcile.Summary`` and keeps it, beside what that summary says (status, basis,
since, expiry) for the queries that look states up by them. The decisions read the summary (``subject
show``, ``/v1/decisions``, the pushes to the CRMs), so a summary edited in place (a withdrawal
made a grant, a sticky no cleared) would undo the person's no while the chain, and the events it
holds (``audit.agreement``), stay whole. The events are the record; the row must be their fold.

This check folds each key's events again, with the ledger's own fold (``reconcile.summarise`` over
``service._event_evidence``, as ``Ledger._refold`` does), and compares:

- the summary, field by field; a summary written by an older version of the fold is not compared
  (the ledger folds the events again whenever it reads one: it decides nothing);
- for a purpose and channel still configured, the columns the ledger derives from the summary and
  the purpose: ``status`` (the evidence's status; ``expired`` too once a lapse is on record),
  ``basis``, ``since`` and ``expires_at``. ``suppressed`` and ``rule`` are the effective values as
  of the row's last write (the person's flags and objections then, the clock then): readers
  compute them again, and nothing is derived from them.

A value that states no basis is read under the basis it is bound to in the summary
(``Ranked.bound``): the purpose's default basis when the value was recorded, which the fold of the
events alone does not give (``Ranked`` leaves it out of equality). It is held to the chain: the
default in force when the value was observed, as the chain's ``purpose.configured`` entries say
(``RecordedBases``, as ``Ledger._default_basis_at`` binds), a default configured within the clock
skew of that moment passing too (clocks of two hosts disagree a little). A value whose event was
recorded before the chain's ``ledger.binding_by_chain`` entry (the versions before it bound to the
default their process started with) may be bound to any default in force by then. A value left
unbound (an older version's) passes, and its columns are compared as the ledger reads it: bound
to that default.

One part of the fold is configuration, not evidence: which sources are trusted to reverse a
sticky no (``policy.trusted_sources``). The ledger folds each event under the policy of its day
and keeps the result, so a summary's ``trusted_opt_in_at`` may differ from a fold under today's
policy. It passes when it is none or earlier (more restrictive), or the time of one of the key's
own new consents (granted, on consent, evidenced, from a capture) whose source is trusted no more.

One pass over each table, both in person order (``consent_events`` by its index on the person,
``consent_states`` by its key), a page of rows at a time: a person's events are held while they
are compared, nothing else. Messages name the person by uid and row id, the purpose and channel,
and show statuses and times only.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from itertools import groupby
from operator import attrgetter
from typing import Any

import orjson
from sqlalchemy import Connection, and_, func, or_, select

from consentsync.audit import CheckResult
from consentsync.audit import _like_json as like_json
from consentsync.audit import entry_instant as _instant
from consentsync.domain import (
    ConsentStatus,
    Evidence,
    InvalidInput,
    LawfulBasis,
    Origin,
    Purpose,
    SoftOptIn,
    iso,
)
from consentsync.ledger.schema import audit_entries, consent_events, consent_states, subjects
from consentsync.ledger.service import SOFT_OPT_IN_COLUMNS, binding_by_chain_from
from consentsync.reconcile import NO_EVIDENCE, Policy, Ranked, Summary, consent_state, summarise

_SUMMARY_FIELDS = tuple(item.name for item in fields(Summary))
# An event's columns in the order ``Evidence`` takes them (``_evidence``), then its fingerprint.
_EVENTS = select(
    consent_events.c.subject_id,
    consent_events.c.purpose,
    consent_events.c.channel,
    consent_events.c.status,
    consent_events.c.basis,
    consent_events.c.event_time,
    consent_events.c.recorded_at,
    consent_events.c.source,
    consent_events.c.origin,
    consent_events.c.actor,
    consent_events.c.notice_version,
    consent_events.c.double_opt_in_at,
    consent_events.c.evidence_ref,
    consent_events.c.fingerprint,
    *(consent_events.c[name] for name in SOFT_OPT_IN_COLUMNS),
    consent_events.c.notice_language,
    consent_events.c.clock_lag_ms,
).order_by(consent_events.c.subject_id)
# A dict lookup first: calling an enum costs ten times as much (as ``Ranked.from_json`` does).
_STATUSES = {status.value: status for status in ConsentStatus}
_BASES = {basis.value: basis for basis in LawfulBasis}
_ORIGINS = {origin.value: origin for origin in Origin}
_STATES = select(
    consent_states.c.subject_id,
    consent_states.c.purpose,
    consent_states.c.channel,
    consent_states.c.summary,
    consent_states.c.status,
    consent_states.c.basis,
    consent_states.c.since,
    consent_states.c.expires_at,
).order_by(consent_states.c.subject_id)
Key = tuple[str, str]  # (purpose, channel)


@dataclass(frozen=True, slots=True, kw_only=True)
class StatesResult(CheckResult):
    states: int = 0  # state rows compared (and keys with events but no row)
    events: int = 0
    older_fold: int = 0  # summaries of an older fold: the ledger refolds them, not compared
    disagreeing: int = 0  # state rows that differ from their events


def states(
    conn: Connection, purposes: Mapping[str, Purpose], policy: Policy, batch: int = 5000
) -> StatesResult:
    """Every state row against the fold of its events; the first that differs is named (people
    by id, then purpose and channel), with how many differ in all."""
    bases = RecordedBases.of(conn, purposes, policy.clock_skew)
    event_rows = conn.execute(_EVENTS.execution_options(yield_per=batch))
    state_rows = conn.execute(_STATES.execution_options(yield_per=batch))
    compared = events = older = disagreeing = 0
    first: tuple[int, str] | None = None
    for subject_id, theirs, rows in merged_by_person(event_rows, state_rows, attrgetter("subject_id")):
        evidence: dict[Key, list[Evidence]] = {}
        for row in theirs:
            events += 1
            evidence.setdefault((row[1], row[2]), []).append(_evidence(row))
        stored = {(row.purpose, row.channel): row for row in rows}
        for key in sorted(evidence.keys() | stored.keys()):
            compared += 1
            problem, old = _compare(
                subject_id, key, stored.get(key), evidence.get(key, []), purposes, policy, bases
            )
            older += old
            if problem is not None:
                disagreeing += 1
                if first is None:
                    first = (subject_id, problem)
    if first is None:
        return StatesResult(ok=True, states=compared, events=events, older_fold=older)
    subject_id, problem = first
    uid = conn.execute(select(subjects.c.uid).where(subjects.c.id == subject_id)).scalar()
    more = f" ({disagreeing - 1} more state rows disagree)" if disagreeing > 1 else ""
    return StatesResult(
        ok=False,
        problem=f"subject {uid} (id {subject_id}), {problem}: edited outside consentsync{more}",
        states=compared,
        events=events,
        older_fold=older,
        disagreeing=disagreeing,
    )


def _evidence(row: Any) -> Evidence:
    """The event as the ledger folds it: ``service._event_evidence`` (which ``Ledger._refold``
    reads events with; a test holds the two to the same result), from the row's columns in
    order, a third of its cost over a million events. Under the fingerprint the ledger stored:
    the one it folded then (an older version's formula may print the same event otherwise, and
    only the order of two otherwise equal values depends on it)."""
    (_subject, purpose, channel, status, basis, event_time, recorded_at, source, origin) = row[:9]
    (actor, notice_version, double_opt_in_at, evidence_ref, fingerprint, *soft) = row[9:-2]
    notice_language, lag_ms = row[-2:]
    soft_opt_in = None
    if all(soft):
        try:
            soft_opt_in = SoftOptIn(*soft)
        except InvalidInput:  # stored before the bounds existed: not a soft opt-in then
            soft_opt_in = None
    evidence = Evidence(
        purpose,
        channel,
        _STATUSES.get(status) or ConsentStatus(status),
        (_BASES.get(basis) or LawfulBasis(basis)) if basis else None,
        event_time,
        recorded_at,
        source,
        _ORIGINS.get(origin) or Origin(origin),
        actor,
        notice_version,
        double_opt_in_at,
        evidence_ref,
        soft_opt_in,
        notice_language,
        # How late a no from a CRM whose clock ran behind counts, as the ledger folded it.
        None if lag_ms is None else timedelta(milliseconds=lag_ms),
    )
    object.__setattr__(evidence, "_fingerprint", fingerprint)
    return evidence


def merged_by_person(
    first: Iterable[Any], second: Iterable[Any], person: Callable[[Any], int]
) -> Iterator[tuple[int, list[Any], list[Any]]]:
    """(person, their rows of ``first``, their rows of ``second``), in person order: two streams
    each ordered by ``person`` (an integer id: the database orders it as Python does, whatever
    its collation) merged, a person missing from either getting an empty list there."""
    first_groups = ((k, list(g)) for k, g in groupby(first, person))
    second_groups = ((k, list(g)) for k, g in groupby(second, person))
    left, right = next(first_groups, None), next(second_groups, None)
    while left is not None or right is not None:
        if right is None or (left is not None and left[0] < right[0]):
            assert left is not None
            yield left[0], left[1], []
            left = next(first_groups, None)
        elif left is None or right[0] < left[0]:
            yield right[0], [], right[1]
            right = next(second_groups, None)
        else:
            yield left[0], left[1], right[1]
            left, right = next(first_groups, None), next(second_groups, None)


def _compare(
    subject_id: int,
    key: Key,
    row: Any,
    evidence: list[Evidence],
    purposes: Mapping[str, Purpose],
    policy: Policy,
    bases: RecordedBases,
) -> tuple[str | None, bool]:
    """What differs between the state row of ``key`` and its events (None: nothing), and whether
    the row's summary is of an older fold (not compared)."""
    purpose_key, channel = key
    where = f"purpose {purpose_key}, channel {channel}"
    derived = summarise(evidence, policy) if evidence else NO_EVIDENCE
    if row is None:
        if derived == NO_EVIDENCE:
            return None, False  # events that fold to nothing need no row
        return f"{where}: no state row where {len(evidence)} consent events are (deleted)", False
    try:
        data = orjson.loads(row.summary)
    except orjson.JSONDecodeError:
        return f"{where}: the summary is no JSON", False
    if not isinstance(data, dict):
        return f"{where}: the summary is no summary", False
    if not Summary.is_current(data):
        return None, True  # the ledger folds such a summary's events again whenever it reads it
    try:
        summary = Summary.from_json(data)
    except (KeyError, TypeError, ValueError):
        return f"{where}: the summary does not read as one", False
    parts = _summary_differences(summary, derived, evidence, policy)
    parts += _bound_differences(summary, derived, subject_id, purpose_key, bases)
    purpose = purposes.get(purpose_key)
    if not parts and purpose is not None and channel in purpose.channels:
        # The columns, from the summary as stored (it passed) and read as the ledger reads it (a
        # value left unbound, bound to the default it was recorded under): what it wrote beside it.
        parts = _column_differences(row, bases.as_read(purpose_key, summary), purpose, channel)
    if not parts:
        return None, False
    return f"{where}: {'; '.join(parts)}", False


def _summary_differences(
    stored: Summary, derived: Summary, evidence: list[Evidence], policy: Policy
) -> list[str]:
    if stored == derived:
        return []
    parts = []
    for name in _SUMMARY_FIELDS:
        have, said = getattr(stored, name), getattr(derived, name)
        if have == said:
            continue
        if name == "trusted_opt_in_at" and _trusted_then(have, said, evidence, policy):
            continue
        if isinstance(have, Ranked) and isinstance(said, Ranked) and _shown(have) == _shown(said):
            parts.append(f"summary {name} differs from the consent events' (beyond its status and time)")
        else:
            parts.append(f"summary {name} is {_shown(have)} where the consent events say {_shown(said)}")
    return parts


def _bound_differences(
    stored: Summary, derived: Summary, subject_id: int, purpose_key: str, bases: RecordedBases
) -> list[str]:
    """The basis each value of the summary is bound to (``Ranked.bound``, outside the values'
    equality) against the chain: none for a value that states its basis; for one that states
    none, the purpose's default basis in force when it was recorded (``RecordedBases``), or,
    recorded before this version bound by the chain, any default in force by then. A value
    left unbound passes (an older version's: the ledger binds it when it reads it)."""
    parts = []
    for name in ("latest", "restriction"):
        have, said = getattr(stored, name), getattr(derived, name)
        if have is None or said is None or have != said or have.bound is None:
            continue  # a value that differs is named above; an unbound one is read as bound
        if said.basis is not None:
            parts.append(
                f"summary {name} is bound to {have.bound.value} where its value states its basis "
                f"({said.basis.value})"
            )
            continue
        recorded = bases.said(purpose_key, said.observed_at)
        if recorded is None or have.bound in bases.possible(purpose_key, said.observed_at):
            continue
        if have.bound in bases.possible_before_chain(purpose_key, said.observed_at) and bases.bound_at_start(
            subject_id, said.fingerprint
        ):
            continue  # an older version's daemon, bound to the default it started with
        basis, seq = recorded
        by = f"audit entry {seq}" if seq is not None else "the configuration (no purpose.configured entry)"
        parts.append(
            f"summary {name} is bound to {have.bound.value} where {by} says the purpose's default basis "
            f"was {basis.value} when it was recorded ({iso(said.observed_at)})"
        )
    return parts


@dataclass(frozen=True, slots=True)
class _Defaults:
    """One purpose's default basis over time, by the chain: the moments each took effect, the
    bases, the entries saying them, and the basis before the first (the one the first entry
    replaced, or set), said by the first entry."""

    moments: list[datetime]
    bases: list[LawfulBasis]
    seqs: list[int]
    before: LawfulBasis


class RecordedBases:
    """Each purpose's default basis in force at a moment, as the chain's ``purpose.configured``
    entries say (their ``at``, inside the hash; each from its time on, ties in chain order), as
    ``Ledger._default_basis_at`` binds a value: a value's observation is when it was recorded.
    A purpose no entry names: its configured default. Read once, by the index of the entries
    naming no person (they are few), with the chain's first ``ledger.binding_by_chain`` entry
    (``Ledger.mark_binding_by_chain``): the values recorded before it were bound by the former
    rule."""

    def __init__(
        self,
        defaults: dict[str, _Defaults],
        margin: timedelta,
        conn: Connection | None = None,
        by_chain_from: int | None = None,
    ) -> None:
        self._defaults = defaults
        self._margin = margin
        self._conn = conn
        self._by_chain_from = by_chain_from

    @classmethod
    def of(cls, conn: Connection, purposes: Mapping[str, Purpose], margin: timedelta) -> RecordedBases:
        entries = audit_entries.c
        changes: dict[str, list[tuple[datetime, int, LawfulBasis | None, LawfulBasis]]] = {}
        query = select(entries.seq, entries.payload).where(
            entries.subject_id.is_(None),
            entries.subject_uid.is_(None),
            entries.action == "purpose.configured",
        )
        for seq, text in conn.execute(query):
            try:
                payload = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue  # the chain check names it
            if not isinstance(payload, dict):
                continue
            what, old, new = payload.get("what"), payload.get("old"), payload.get("new")
            at = _instant(payload.get("at"))
            basis = _basis(new.get("default_basis")) if isinstance(new, dict) else None
            if isinstance(what, dict) and at is not None and basis is not None:
                before = _basis(old.get("default_basis")) if isinstance(old, dict) else None
                changes.setdefault(str(what.get("purpose")), []).append((at, seq, before, basis))
        defaults: dict[str, _Defaults] = {}
        for key, said in changes.items():
            said.sort(key=lambda change: change[:2])
            moments, seqs = [change[0] for change in said], [change[1] for change in said]
            defaults[key] = _Defaults(moments, [change[3] for change in said], seqs, said[0][2] or said[0][3])
        for key, purpose in purposes.items():
            if key not in defaults:
                defaults[key] = _Defaults([], [], [], purpose.default_basis)
        return cls(defaults, margin, conn, binding_by_chain_from(conn))

    def said(self, purpose_key: str, moment: datetime) -> tuple[LawfulBasis, int | None] | None:
        """The default in force at ``moment`` and the entry saying it (before the first entry:
        that entry, which says what it replaced; None: the configuration); None where nothing
        says one (a purpose neither in the chain nor configured)."""
        defaults = self._defaults.get(purpose_key)
        if defaults is None:
            return None
        at = bisect_right(defaults.moments, moment)
        if at:
            return defaults.bases[at - 1], defaults.seqs[at - 1]
        return defaults.before, defaults.seqs[0] if defaults.seqs else None

    def possible(self, purpose_key: str, moment: datetime) -> set[LawfulBasis]:
        """The defaults the ledger may have bound a value recorded at ``moment`` to: the one in
        force then, as ``Ledger._default_basis_at`` reads it (the latest entry at or before
        ``moment``, ties in chain order), and, where the default was changed within the clock
        skew of ``moment``, the one before and after the change too: the hosts' clocks disagree
        a little about which came first (and a frozen clock records both at one instant).

        Never a default replaced before that: the ledger reads the chain's defaults again in
        each transaction that binds (a daemon started before a change binds to the new one), so
        a binding to an older default is an edit (session 62: one edited to an earlier default
        of the purpose passed as the ledger's own)."""
        defaults = self._defaults.get(purpose_key)
        if defaults is None:
            return set()
        low = bisect_right(defaults.moments, moment - self._margin)
        high = bisect_right(defaults.moments, moment + self._margin)
        return {defaults.bases[low - 1] if low else defaults.before, *defaults.bases[low:high]}

    def possible_before_chain(self, purpose_key: str, moment: datetime) -> set[LawfulBasis]:
        """The defaults a version before the ledger bound by the chain may have bound a value
        recorded at ``moment`` to: every one in force by then (within the clock skew). Such a
        process read its configuration once, at start, and a daemon running across a change
        bound to the one it started with (5a87bed)."""
        defaults = self._defaults.get(purpose_key)
        if defaults is None:
            return set()
        high = bisect_right(defaults.moments, moment + self._margin)
        return {defaults.before, *defaults.bases[:high]}

    def bound_at_start(self, subject_id: int, fingerprint: str) -> bool:
        """Whether person ``subject_id``'s event ``fingerprint`` was recorded (its
        ``consent.recorded`` entry) before the chain's ``ledger.binding_by_chain`` entry, or the
        chain has none (no version binding by the chain opened the ledger for writing). By
        position in the chain, whatever the hosts' clocks said: both entries are hashed where
        they stand, so neither moves without breaking the chain. One look-up by the person's
        index, only for a value the strict rule refused."""
        if self._by_chain_from is None:
            return True
        if self._conn is None:
            return False
        entries = audit_entries.c
        uid = select(subjects.c.uid).where(subjects.c.id == subject_id).scalar_subquery()
        recorded = self._conn.execute(
            select(func.min(entries.seq)).where(
                or_(
                    entries.subject_id == subject_id,
                    and_(entries.subject_id.is_(None), entries.subject_uid == uid),
                ),
                entries.action == "consent.recorded",
                entries.payload.like(like_json("event_fingerprint", fingerprint), escape="\\"),
            )
        ).scalar()
        return recorded is not None and recorded < self._by_chain_from

    def as_read(self, purpose_key: str, summary: Summary) -> Summary:
        """``summary`` as the ledger reads it (``Ledger._bound``): a value that states no basis
        and is not bound, bound to the default in force when it was recorded."""
        latest, restriction = summary.latest, summary.restriction
        if not (_unbound(latest) or _unbound(restriction)):
            return summary
        return summary.with_values(self._bound(purpose_key, latest), self._bound(purpose_key, restriction))

    def _bound(self, purpose_key: str, value: Ranked | None) -> Ranked | None:
        if value is None or not _unbound(value):
            return value
        recorded = self.said(purpose_key, value.observed_at)
        return value if recorded is None else value.bound_to(recorded[0])


def _unbound(value: Ranked | None) -> bool:
    return value is not None and value.basis is None and value.bound is None


def _basis(value: Any) -> LawfulBasis | None:
    return _BASES.get(value) if isinstance(value, str) else None


def _trusted_then(
    have: datetime | None, said: datetime | None, evidence: list[Evidence], policy: Policy
) -> bool:
    """Whether a stored ``trusted_opt_in_at`` that today's policy does not give can be the
    ledger's under the policy of its day: none or earlier (a source trusted since: more
    restrictive), or the time of one of the key's new consents whose source was trusted then."""
    if have is None or (said is not None and have <= said):
        return True
    return any(
        Policy(frozenset({item.source}), policy.clock_skew).reverses_sticky(item)
        and policy.credible_time(item) == have
        for item in evidence
    )


def _column_differences(row: Any, summary: Summary, purpose: Purpose, channel: str) -> list[str]:
    """The columns ``Ledger._store_states`` derives from the summary and the purpose: the
    evidence's status (expired once the lapse is on record and the clock had passed it when the
    row was written), basis, since and expiry."""
    state = consent_state(summary, purpose, channel)
    status = (state.evidence_status or state.status).value
    statuses = {status}
    lapsed = summary.lapsed_at
    if status == ConsentStatus.GRANTED.value and state.expires_at and lapsed and lapsed >= state.expires_at:
        statuses.add(ConsentStatus.EXPIRED.value)
    parts = []
    if row.status not in statuses:
        parts.append(f"status is {row.status} where the summary says {status}")
    if row.basis != state.basis.value:
        parts.append(f"basis is {row.basis} where the summary says {state.basis.value}")
    for name, said in (("since", state.since), ("expires_at", state.expires_at)):
        have = getattr(row, name)
        if have != said:
            parts.append(f"{name} is {_shown(have)} where the summary says {_shown(said)}")
    return parts


def _shown(value: Any) -> str:
    """Statuses, flags and times only: a value's source, actor or fingerprint is never shown."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Ranked):
        if value.event_time is None:
            return f"{value.status.value}, undated"
        return f"{value.status.value} of {iso(value.event_time)}"
    if isinstance(value, datetime):
        return iso(value) or "none"
    return str(value)
