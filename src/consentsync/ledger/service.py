"""The consent ledger: the one place that writes consent events, states, objections, erasures
and their audit entries, each change in one transaction with its audit entry."""

from __future__ import annotations

import weakref
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import KW_ONLY, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any, NamedTuple

import orjson
import structlog
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import (
    ACTOR_MAX,
    DEFAULT_CLOCK_SKEW_SECONDS,
    EARLIEST_EVENT_TIME,
    ERASURE_REASON_MAX,
    EVIDENCE_REF_MAX,
    NOTICE_LANGUAGE,
    NOTICE_VERSION_MAX,
    REASON_MAX,
    SOFT_OPT_IN_CONDITIONS,
    SOURCE_MAX,
    ConsentStatus,
    EffectiveState,
    Evidence,
    InvalidInput,
    LawfulBasis,
    ObjectionFact,
    ObjectionHandling,
    ObjectionStatus,
    Origin,
    Purpose,
    SoftOptIn,
    SubjectFlags,
    as_utc,
    canonical_json,
    check_clock_lag,
    check_label,
    check_moment,
    check_reason,
    clock_lag_ms,
    clock_lag_of,
    email_forms,
    fold_astral,
    iso,
    shown,
)
from consentsync.ledger.bulk import (
    chunks,
    cyclic_gc_paused,
    db_time,
    insert_rows,
    one_of,
    select_in,
    time_writer,
    upsert_rows,
)
from consentsync.ledger.checkpoint import after_commit
from consentsync.ledger.engine import analyse_grown, reading, statistics_settled
from consentsync.ledger.identity import (
    BINDING_ACTIONS,
    BOUND,
    EMAIL,
    UNBINDING_ACTIONS,
    UNBOUND,
    CrmLink,
    Identity,
    Reread,
    SubjectResolver,
    bindings,
    bound_by,
    email_hmac,
    holding,
    holds_for,
    keyed_hasher,
    last_erased_at,
)
from consentsync.ledger.merge_survivors import survivors_holders
from consentsync.ledger.schema import (
    STATE_IS_REQUESTED,
    audit_entries,
    audit_head,
    capture_requests,
    confirmations,
    consent_events,
    consent_states,
    crm_links,
    crm_snapshots,
    notices,
    objections,
    outbox,
    quarantine,
    state_changes,
    subject_identifiers,
    subjects,
    suppressions,
)
from consentsync.ledger.schema import (
    purposes as purposes_table,
)
from consentsync.ledger.shared_marker import sharing_with
from consentsync.ledger.warm import WarmSubjects
from consentsync.notice_texts import Notice, notice_of, text_shown
from consentsync.reconcile import (
    NO_EVIDENCE,
    Policy,
    Ranked,
    Rule,
    Summary,
    effective_state,
    is_system_expiry,
    reconcile,
    serves_direct_marketing,
    summarise,
)
from consentsync.rowview import RowView
from consentsync.sync.failpoints import failpoint

EXPIRY_SOURCE = "consentsync:expiry"
# Consents expired a transaction (``Ledger.expire_due``).
EXPIRY_BATCH = 1000
# How long record_many waits at its end for the analyses of the tables it grew (PostgreSQL).
STATISTICS_WAIT_SECONDS = 30.0
# The rules under which a requested consent may be chased: the evidence alone decides the state.
# Any other rule (restriction, erasure, objections, and any rule added later) keeps the person off
# every list of people to contact.
CHASEABLE_RULES = frozenset(
    {Rule.LATEST_EVENT_TIME, Rule.MOST_RESTRICTIVE_ON_TIE, Rule.UNKNOWN_EVENT_TIME, Rule.TRUSTED_OPT_IN}
)
# The channel a message asking for consent goes by, whatever channel it asks about: e-mail.
MAIL_CHANNEL = "email"


def may_email_marketing(
    states: Mapping[tuple[str, str], EffectiveState], purposes: Mapping[str, Purpose]
) -> bool:
    """Whether the ledger lets us e-mail this person marketing on a ground a consent request does
    not itself need (``states``: every configured purpose and channel of theirs, as of now): a
    consent of theirs in force to e-mail marketing of ours (another purpose, or this one on
    another channel: PECR reg. 22(2), "consents for the time being to such communications being
    sent by ... the sender"), or a soft opt-in they have not refused since (reg. 22(3); its every
    message offers a refusal, as the request's "No, thank you" and preference link do). Only
    purposes under the ePrivacy rules count: their e-mail state is unsuppressed only on such a
    ground (reconcile: ``eprivacy_consent_required``); a contract or legitimate interests alone is
    none (the ICO fined Honda and Flybe in 2017 for consent requests mailed on nothing more). A
    restriction, erasure or objection suppresses every state it binds, so it leaves no ground
    either. The one test of who may be asked for consent to marketing (``hub requests``:
    hub/outreach.py) and chased about it (``Ledger.stale_requests``: docs/policy.md rule 6)."""
    for (key, channel), state in states.items():
        purpose = purposes.get(key)
        if channel != MAIL_CHANNEL or purpose is None or not purpose.eprivacy_applies(channel):
            continue
        if state.suppressed:
            continue
        consented = state.status is ConsentStatus.GRANTED and state.basis is LawfulBasis.CONSENT
        if consented or state.rule == Rule.EPRIVACY_SOFT_OPT_IN:
            return True
    return False


# Log lines name subjects by their pseudonymous uid and objections by id: never an address.
log = structlog.get_logger("consentsync.ledger")
_STATE_KEY = ("subject_id", "purpose", "channel")
STATE_COLUMNS = (
    *_STATE_KEY,
    "summary",
    "status",
    "basis",
    "suppressed",
    "rule",
    "since",
    "expires_at",
    "updated_at",
)

# The ledger_settings row saying ``Ledger.refold_blank_proof`` was done, and its entries' source.
BLANK_PROOF_SETTING = "blank_proof_refolded"
BLANK_PROOF_SOURCE = "consentsync:upgrade"
# The ledger_settings row of ``Ledger.bind_identifiers``: ``through:<subject id>`` while it runs
# (the people up to that id are bound), ``done`` once every person is.
BINDINGS_SETTING = "identifiers_bound"
BINDINGS_DONE = "done"
# The ledger_settings row saying ``Ledger.bind_unstated_bases`` was done.
BASES_BOUND_SETTING = "unstated_bases_bound"
# The ledger_settings row saying ``Ledger.erase_absorbed`` was done, and who its entries name as
# having erased (a step of consentsync's own, not a request anyone made).
ABSORBED_ERASED_SETTING = "absorbed_erased"
ERASURE_REPAIR_ACTOR = "consentsync:repair"
# The audit entry ``Ledger.mark_binding_by_chain`` appends once per ledger: from it on, a value
# stating no basis is bound to the default the chain says was in force when it was recorded
# (``audit_states.RecordedBases``); the ledger_settings row saying it was appended.
BINDING_BY_CHAIN = "ledger.binding_by_chain"
BINDING_BY_CHAIN_SETTING = "binding_by_chain"
# Every character ``str.isspace`` takes for whitespace (``Evidence.has_proof`` reads a label of
# these alone as blank): trimmed in SQL, where each database's own notion of space differs.
_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RecordRequest:
    identity: Identity
    evidence: Evidence


@dataclass(slots=True)
class RecordStats:
    received: int = 0
    recorded: int = 0
    duplicates: int = 0
    state_changes: int = 0
    subjects_created: int = 0

    def add(self, other: RecordStats) -> None:
        for name in self.__slots__:  # type: ignore[attr-defined]
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    subject_uid: str
    subject_id: int
    duplicate: bool
    before: EffectiveState | None
    after: EffectiveState | None


class NotFound(LookupError):
    """The email, objection or subject asked for is not in the ledger."""


class ErasedAddressRefused(InvalidInput):
    """A grant for an erased address nobody came back with, from a source that is not trusted
    (``Ledger.record``): refused, nothing recorded (the capture API's 409, ``Hub._refuse_erased``)."""


@dataclass(slots=True)
class _SubjectContext:
    uid: str
    flags: SubjectFlags
    objections: list[ObjectionFact] = field(default_factory=list)


@dataclass(eq=False)
class Ledger:
    """The consent ledger over one database: evidence in, effective states and erasures out."""

    engine: Engine
    purposes: dict[str, Purpose]
    policy: Policy
    # Called when a digest is made, never kept: the key lives in a file or a secret store.
    erasure_key: Callable[[], bytes]
    _: KW_ONLY
    clock: Callable[[], datetime] = utcnow
    # How far in the future an event time may lie (clocks disagree a little): rule 3.
    max_clock_skew_seconds: int = DEFAULT_CLOCK_SKEW_SECONDS
    # Each purpose's default bases as the chain says they were configured, read when first
    # needed (``_default_basis_at``) and again after the purposes change, here or in another
    # process (``_DefaultsRead``: with the purposes' rows they were read with, and the transaction
    # that last looked). One attribute, replaced whole: the hub's threads share one Ledger.
    _defaults_read: _DefaultsRead | None = field(default=None, init=False, repr=False)

    def keyed_hasher(self) -> Callable[[str], str]:
        """The erasure key's HMAC, the key read once: pseudonyms that only this ledger can make
        (the sync engine keeps one of each CRM record's identity beside its snapshot)."""
        return keyed_hasher(self.erasure_key())

    # -- configuration -------------------------------------------------------------------------

    def sync_purposes(self, actor: str = "config") -> list[str]:
        """Mirrors the configured purposes into the ledger; audits each one added or changed. A
        changed one's stored states are decided again first (``_restate``), a transaction per
        chunk of people, so that no writer waits on one transaction over the whole ledger; the
        purpose's row is written last, so a process stopped midway leaves it to be done again by
        the next one that opens the ledger (each state compares with what is stored)."""
        now = self.clock()
        changed: list[str] = []
        # First, before a changed purpose's states are decided again: the values an older version
        # recorded without a basis, bound once to the default they were recorded under.
        self.bind_unstated_bases()
        with self.engine.connect() as conn:
            rows = conn.execute(select(purposes_table)).all()
        stored = {row.key: row for row in rows}
        for purpose in self.purposes.values():
            wanted = _purpose_row(purpose)
            old = stored.get(purpose.key)
            if old is not None and {k: getattr(old, k) for k in wanted} == wanted:
                continue
            if old is not None:
                self._uphold_now_absolute(purpose, now)
                self._restate(purpose, now, actor)
            with self.engine.begin() as conn:
                row = conn.execute(select(purposes_table).where(purposes_table.c.key == purpose.key)).first()
                old_view = {k: getattr(row, k) for k in wanted} if row else None
                if old_view == wanted:
                    continue  # another process wrote it meanwhile (and audited it)
                if row is None:
                    conn.execute(insert(purposes_table).values(**wanted, updated_at=now))
                else:
                    conn.execute(
                        update(purposes_table)
                        .where(purposes_table.c.key == purpose.key)
                        .values(**wanted, updated_at=now)
                    )
                entry = AuditRecord(
                    "purpose.configured", {"purpose": purpose.key}, old_view, wanted, actor=actor
                )
                # Dated in the transaction that makes it visible, under the writer lock: a value
                # another process recorded while the states were decided again (minutes, on a
                # large ledger) was bound to the default before it, and is dated before it too.
                audit.append(conn, [entry], self.clock())
            changed.append(purpose.key)
            self._defaults_read = None  # the chain says one more configuration
        # After the purposes: an older version's blank-label proofs, folded again once; and the
        # identifiers it stored, bound to their people in the chain once.
        self.refold_blank_proof()
        self.bind_identifiers()
        return changed

    def _restate(self, purpose: Purpose, now: datetime, actor: str) -> None:
        """A purpose's configuration changed (its validity, its default basis, its objection
        handling): it applies to every consent from now on, so every stored state of the purpose
        is decided again. A new default basis changes only the states of people with no evidence
        for a key: a value recorded before keeps the basis it was recorded under
        (``Ranked.bound``; EDPB 05/2020 paras 121-123), so its state is audited only where its
        validity or objection handling changed something. Stored (the expiry sweep finds a
        consent by its stored ``expires_at``: with a shortened validity it found none until the
        old window ended) and, where what the CRMs should show changed, audited and announced to
        the connectors. A transaction per chunk of people, whatever the ledger's size."""
        with self.engine.connect() as conn:
            people = sorted(
                conn.execute(
                    select(consent_states.c.subject_id)
                    .where(consent_states.c.purpose == purpose.key)
                    .distinct()
                ).scalars()
            )
        for chunk in chunks(people):
            self._restate_chunk(purpose, chunk, now, actor)

    def _restate_chunk(self, purpose: Purpose, chunk: Sequence[int], now: datetime, actor: str) -> None:
        """``_restate`` for these people, in a transaction of its own."""
        with self.engine.begin() as conn:
            self._restate_in(conn, purpose, chunk, now, actor)

    def _restate_in(
        self, conn: Connection, purpose: Purpose, chunk: Sequence[int], now: datetime, actor: str
    ) -> None:
        records: list[AuditRecord] = []
        ids = set(chunk)
        contexts = self._contexts(conn, ids)
        summaries = self._load_summaries(conn, ids)
        stored = {
            (row.subject_id, row.channel): row
            for row in conn.execute(
                select(consent_states).where(
                    consent_states.c.purpose == purpose.key,
                    one_of(conn, consent_states.c.subject_id, chunk),
                )
            )
        }
        restated: dict[tuple[int, str, str], tuple[Summary, EffectiveState]] = {}
        announced: set[int] = set()
        for (subject_id, channel), row in stored.items():
            summary = summaries.get((subject_id, purpose.key, channel))
            if summary is None or channel not in purpose.channels:
                continue  # a channel no longer configured: nothing to push for it
            context = contexts[subject_id]
            new = effective_state(
                summary, purpose, channel, flags=context.flags, objections=context.objections, now=now
            )
            if (row.suppressed, row.rule, row.basis, row.expires_at) == (
                new.suppressed,
                new.rule,
                new.basis.value,
                new.expires_at,
            ):
                continue
            restated[(subject_id, purpose.key, channel)] = (summary, new)
            if (row.suppressed, row.rule, row.basis) != (new.suppressed, new.rule, new.basis.value):
                announced.add(subject_id)
                records.append(
                    AuditRecord(
                        "state.changed",
                        {"purpose": purpose.key, "channel": channel},
                        old={"status": row.status, "basis": row.basis, "suppressed": row.suppressed},
                        new=_state_tuple_json(new),
                        rule=new.rule,
                        source="config",
                        actor=actor,
                        subject_uid=context.uid,
                        subject_id=subject_id,
                    )
                )
        self._store_states(conn, restated, now)
        audit.append(conn, records, now)
        if announced:
            self._announce(conn, announced, now)

    # -- one-time upgrade steps ----------------------------------------------------------------

    def refold_blank_proof(self, actor: str = "consentsync", *, chunk_size: int = 500) -> int:
        """Once per ledger (the ``ledger_settings`` row ``BLANK_PROOF_SETTING`` says it was done):
        the consents an older version folded with a blank notice version or evidence reference
        as proof are folded again. Since session 57 a blank label is no proof
        (``Evidence.has_proof``), but ``SUMMARY_VERSION`` did not move, so a summary folded
        before stays current: a grant recorded with ``--notice-version ""`` after a withdrawal
        kept reversing it (the person contactable), and ``audit verify``, folding the events
        with today's rule, called the honest row edited outside consentsync.

        Exactly the (person, purpose, channel) keys with such an event are looked up, in one
        query (a scan of ``consent_events``: no index holds a label; the marker makes it one
        scan per ledger, a ledger that never held a blank label pays that and nothing else).
        Each chunk of people is folded again with the ledger's own fold (``_refold``) and
        stored in a write transaction of its own (under the writer lock: other writers wait
        for a chunk, not for the whole step); a state that changed is audited
        (``state.changed``) and announced on the change feed, so that every CRM is told, as for
        any change of state. A stored summary equal to the new fold is left as it is, so a run
        stopped midway (the marker is written last) is finished by the next open without
        auditing anything twice, and two processes opening at once do each change once.
        Returns the number of states stored."""
        from sqlalchemy import func
        from sqlalchemy.exc import IntegrityError

        from consentsync.ledger.schema import ledger_settings

        by_name = ledger_settings.c.name == BLANK_PROOF_SETTING
        with reading(self.engine) as conn:
            if conn.execute(select(ledger_settings.c.value).where(by_name)).scalar() is not None:
                return 0

        def blank(column: Any) -> Any:
            # Empty or whitespace alone as ``str.isspace`` reads it: nothing left once every
            # whitespace character is trimmed (NULL, no label, stays NULL: not blank).
            return func.ltrim(column, _WHITESPACE) == ""

        now = self.clock()
        # No DISTINCT: SQLite would walk the table by an index to group it (a million events:
        # 3.7 s, against 0.3 s read in order); the few keys found are grouped here.
        events = consent_events.c
        query = select(events.subject_id, events.purpose, events.channel).where(
            or_(blank(events.notice_version), blank(events.evidence_ref))
        )
        with reading(self.engine) as conn:
            # Plain tuples (Result.tuples() is deprecated since SQLAlchemy 2.1).
            keys = {(row[0], row[1], row[2]) for row in conn.execute(query)}
        by_subject: dict[int, set[tuple[int, str, str]]] = {}
        for subject_id, purpose, channel in keys:
            by_subject.setdefault(subject_id, set()).add((subject_id, purpose, channel))
        stored = 0
        for chunk in chunks(sorted(by_subject), chunk_size):
            with self.engine.begin() as conn:
                wanted = {key for subject_id in chunk for key in by_subject[subject_id]}
                stored += self._refold_blank_proof_in(conn, wanted, now, actor)
            failpoint("ledger.blank_proof.chunk")  # a chunk committed, the marker not yet written
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(ledger_settings.c.value).where(by_name)).scalar() is None:
                    conn.execute(
                        insert(ledger_settings).values(name=BLANK_PROOF_SETTING, value="done", set_at=now)
                    )
        except IntegrityError:  # another process opening the ledger finished it meanwhile
            pass
        if keys:  # said once per ledger, and only where an older version left such a label
            log.info("blank_proof.refolded", keys=len(keys), states=stored)
        return stored

    def bind_identifiers(self, actor: str = "consentsync", *, chunk_size: int = 500) -> int:
        """Once per ledger (the ``ledger_settings`` row ``BINDINGS_SETTING`` says ``done``): each
        identifier an older version stored is bound to its person in the chain. Since session 58
        the ledger binds every identifier it stores (``SubjectResolver``: ``subject.created`` and
        ``subject.identifier_added`` carry its keyed hash) and ``audit verify`` holds every
        ``subject_identifiers`` row to its binding (audit_bindings.py); an older version wrote
        none, so without this step verify would call every person of an upgraded ledger
        tampered with. What the rows say at the upgrade is taken as it is: an address moved to
        another person before it is not detectable (docs/tamper-evidence.md).

        One ``subject.identifiers_bound`` entry per person holding identifiers the chain does
        not bind to them yet (their keyed hashes, by kind; the person's entries are read by the
        person's id), so that each person's trail shows it and verify reads each person's
        bindings by the person's id. People in id order, ``chunk_size`` a write transaction
        (under the writer lock: other writers wait for a chunk, not the whole step), each chunk
        moving the row to ``through:<last id>`` in the same transaction: a process stopped
        midway is continued by the next open, and two processes opening at once share the work,
        neither binding anyone twice. Returns the number of people bound."""
        from consentsync.ledger.schema import ledger_settings

        by_name = ledger_settings.c.name == BINDINGS_SETTING
        with reading(self.engine) as conn:
            if conn.execute(select(ledger_settings.c.value).where(by_name)).scalar() == BINDINGS_DONE:
                return 0
        hashed = self.keyed_hasher()
        held = subject_identifiers.c
        bound = 0
        while True:
            now = self.clock()
            with self.engine.begin() as conn:
                stored = conn.execute(select(ledger_settings.c.value).where(by_name)).scalar()
                if stored == BINDINGS_DONE:
                    break
                through = int(stored.removeprefix("through:")) if stored else 0
                people = list(
                    conn.execute(
                        select(held.subject_id)
                        .where(held.subject_id > through)
                        .group_by(held.subject_id)
                        .order_by(held.subject_id)
                        .limit(chunk_size)
                    ).scalars()
                )
                value = f"through:{people[-1]}" if people else BINDINGS_DONE
                if stored is None:
                    row = {"name": BINDINGS_SETTING, "value": value, "set_at": now}
                    conn.execute(insert(ledger_settings).values(**row))
                else:
                    conn.execute(update(ledger_settings).where(by_name).values(value=value, set_at=now))
                if not people:
                    break
                rows = conn.execute(
                    select(held.subject_id, subjects.c.uid, held.kind, held.value)
                    .join(subjects, subjects.c.id == held.subject_id)
                    .where(one_of(conn, held.subject_id, people))
                    .order_by(held.subject_id)
                ).all()
                theirs: dict[int, tuple[str, set[tuple[str, str]]]] = {}
                for subject_id, uid, kind, identifier in rows:
                    theirs.setdefault(subject_id, (uid, set()))[1].add((kind, hashed(identifier)))
                # Only what the chain does not bind yet: a person this version created (a
                # ledger it wrote from the start, whose marker a downgrade past migration 0014
                # dropped) is bound already, and binding it again would say nothing new.
                said = _binding_entries(conn, {subject_id: uid for subject_id, (uid, _) in theirs.items()})
                records = []
                for subject_id, (uid, pairs) in theirs.items():
                    unbound = pairs - bound_by(said.get(subject_id, []))[0].keys()
                    if unbound:
                        records.append(
                            AuditRecord(
                                "subject.identifiers_bound",
                                {BOUND: bindings(unbound)},
                                source=BLANK_PROOF_SOURCE,
                                actor=actor,
                                subject_uid=uid,
                                subject_id=subject_id,
                            )
                        )
                audit.append(conn, records, now)
                bound += len(records)
            failpoint("ledger.bindings.chunk")  # a chunk committed, the marker not yet written
        if bound:  # said once per ledger, and only where an older version left identifiers
            log.info("identifiers.bound", people=bound)
        return bound

    def mark_binding_by_chain(self, actor: str = "consentsync") -> int:
        """Once per ledger: the position in the chain from which this version binds what it
        records, an audit entry (``BINDING_BY_CHAIN``, naming no person) appended the first time
        a version binding by the chain opens the ledger; a new ledger gets it at its start.
        Returns its seq.

        Why: a value stating no basis is bound to the purpose's default. The versions before
        f1dcd4c bound it to the default their process started with (a daemon running across a
        change of the default bound to the replaced one); this one binds to the default the chain
        says was in force when the value was recorded. ``audit verify`` holds the values recorded
        before this entry to the former rule (any default in force by then), those after it to
        the latter, so an upgraded ledger verifies clean and a binding edited since is named.
        An entry, not a settings row: its place is in the hash chain, so a cutoff moved to let
        an edit pass breaks the chain. The settings row only spares each open a look at the
        chain: gone, the chain is looked at, and a second entry would change nothing (verify
        reads the first)."""
        from sqlalchemy.exc import IntegrityError

        from consentsync.ledger.schema import ledger_settings

        by_name = ledger_settings.c.name == BINDING_BY_CHAIN_SETTING
        with reading(self.engine) as conn:
            said = conn.execute(select(ledger_settings.c.value).where(by_name)).scalar()
        if said is not None:
            return int(said)
        try:
            with self.engine.begin() as conn:
                # The head first: another process opening the ledger waits here, then finds it.
                conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1).with_for_update())
                seq = binding_by_chain_from(conn)
                if seq is None:
                    what = {"binds": "default_in_force_when_recorded"}
                    entry = AuditRecord("ledger.binding_by_chain", what, actor=actor)  # BINDING_BY_CHAIN
                    (seq,) = audit.append(conn, [entry], self.clock())
                if conn.execute(select(ledger_settings.c.value).where(by_name)).scalar() is None:
                    row = {"name": BINDING_BY_CHAIN_SETTING, "value": str(seq), "set_at": self.clock()}
                    conn.execute(insert(ledger_settings).values(**row))
        except IntegrityError:  # another process opening the ledger wrote it meanwhile
            with reading(self.engine) as conn:
                seq = binding_by_chain_from(conn)
        assert seq is not None
        return seq

    def bind_unstated_bases(self, actor: str = "consentsync", *, chunk_size: int = 500) -> int:
        """Once per ledger (the ``ledger_settings`` row ``BASES_BOUND_SETTING`` says it was done):
        each value an older version recorded without a lawful basis is bound to the basis it was
        recorded under, so that a later change of the purpose's ``default_basis`` never re-reads
        it (docs/policy.md, "No switching of lawful basis"). Before this version the state read
        such a value under whatever default the purpose had at the time of reading: a grant on
        legitimate interests became a consent when the purpose was switched to consent, and a
        consent since expired, or asked for and never given, a grant on legitimate interests
        the other way.

        Which basis: the default in force when the value was recorded (its observation), as the
        chain's ``purpose.configured`` entries say (``_default_basis_at``): each holds the
        purpose's configuration and when it took effect, they are few, and they are in the
        tamper-evident chain. A ledger whose default was switched before this upgrade therefore
        gets its values back on the basis they were recorded under, rather than having the
        switch made permanent. (The ``consent.recorded`` entry's ``new.basis`` is not that: it is
        the state's basis after the recording, which another value may have decided.) Bound in
        the state's summary (``Ranked.bound``), not in the event: the event and its audit entry
        stay as recorded, what the person or the CRM stated, and ``audit verify`` holds them to
        each other as before.

        The states whose summary holds an unbound value are found by one scan of
        ``consent_states``; a chunk of people a write transaction (under the writer lock), each
        summary bound and stored. A state that reads otherwise once bound (the default was
        changed since its value was recorded) is stored, audited (``state.changed``) and
        announced, so that every CRM is told; the others keep their columns. A bound summary is
        not bound again, so a run stopped midway (the marker is written last) is finished by the
        next open, and two processes opening at once bind each once. A summary of an older fold
        is left: it is folded again from the events when next read, and bound then (``_refold``).
        Returns the number of states bound."""
        from sqlalchemy.exc import IntegrityError

        from consentsync.ledger.schema import ledger_settings

        by_name = ledger_settings.c.name == BASES_BOUND_SETTING
        with reading(self.engine) as conn:
            if conn.execute(select(ledger_settings.c.value).where(by_name)).scalar() is not None:
                return 0
        now = self.clock()
        # What canonical JSON writes for a value without a basis, and a bound one beside it: the
        # scan parses only the summaries that may need binding.
        summary = consent_states.c.summary
        unbound = and_(summary.like('%"basis":null%'), summary.not_like('%"bound":%'))
        with reading(self.engine) as conn:
            people = sorted(set(conn.execute(select(consent_states.c.subject_id).where(unbound)).scalars()))
        bound = 0
        for chunk in chunks(people, chunk_size):
            with self.engine.begin() as conn:
                bound += self._bind_unstated_in(conn, chunk, now, actor)
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(ledger_settings.c.value).where(by_name)).scalar() is None:
                    conn.execute(
                        insert(ledger_settings).values(name=BASES_BOUND_SETTING, value="done", set_at=now)
                    )
        except IntegrityError:  # another process opening the ledger finished it meanwhile
            pass
        if bound:  # said once per ledger, and only where an older version left such a value
            log.info("unstated_bases.bound", states=bound)
        return bound

    def _bind_unstated_in(self, conn: Connection, chunk: Sequence[int], now: datetime, actor: str) -> int:
        """``bind_unstated_bases`` for these people, inside the caller's write transaction."""
        found: dict[tuple[int, str, str], tuple[Summary, Summary]] = {}
        for row in conn.execute(
            select(
                consent_states.c.subject_id,
                consent_states.c.purpose,
                consent_states.c.channel,
                consent_states.c.summary,
            ).where(one_of(conn, consent_states.c.subject_id, chunk))
        ):
            data = orjson.loads(row.summary)
            if not (isinstance(data, dict) and Summary.is_current(data)):
                continue  # an older fold: folded again, and bound, when next read
            summary = Summary.from_json(data)
            if _unbound(summary):  # not bound meanwhile (another process opening the ledger)
                found[(row.subject_id, row.purpose, row.channel)] = (
                    summary,
                    self._bound(conn, row.purpose, summary),
                )
        # Bound to today's default, a value reads as it did: only the others can change a state
        # (a default changed since they were recorded), and only their people are looked up.
        moved = {
            key
            for key, (_unbound, bound) in found.items()
            if _bound_elsewhere(bound, self.purposes.get(key[1]))
        }
        contexts = self._contexts(conn, {key[0] for key in moved})
        restated: dict[tuple[int, str, str], tuple[Summary, EffectiveState]] = {}
        summary_only: list[dict[str, Any]] = []
        records: list[AuditRecord] = []
        for key, (unbound, bound) in found.items():
            subject_id, purpose_key, channel = key
            purpose = self.purposes.get(purpose_key)
            if key in moved and purpose is not None and channel in purpose.channels:
                context = contexts[subject_id]
                flags, objected = context.flags, context.objections
                # As it was read until now (under today's default) and as it was recorded.
                old = effective_state(unbound, purpose, channel, flags=flags, objections=objected, now=now)
                new = effective_state(bound, purpose, channel, flags=flags, objections=objected, now=now)
                if (old.status, old.basis, old.suppressed, old.rule, old.expires_at) != (
                    new.status,
                    new.basis,
                    new.suppressed,
                    new.rule,
                    new.expires_at,
                ):
                    restated[key] = (bound, new)
                    records.append(
                        AuditRecord(
                            "state.changed",
                            {"purpose": purpose_key, "channel": channel},
                            old=_state_tuple_json(old),
                            new=_state_tuple_json(new),
                            rule=new.rule,
                            source=BLANK_PROOF_SOURCE,
                            actor=actor,
                            subject_uid=context.uid,
                            subject_id=subject_id,
                        )
                    )
                    continue
            # Nothing a CRM sees changes (or nothing is decided for it: a purpose or channel no
            # longer configured): the summary alone, its columns as they were last written.
            summary_only.append(
                {"s": subject_id, "p": purpose_key, "c": channel, "j": canonical_json(bound.to_json())}
            )
        if summary_only:  # one statement for the chunk (most of an upgraded ledger's states)
            conn.execute(
                update(consent_states)
                .where(
                    consent_states.c.subject_id == bindparam("s"),
                    consent_states.c.purpose == bindparam("p"),
                    consent_states.c.channel == bindparam("c"),
                )
                .values(summary=bindparam("j")),
                summary_only,
            )
        self._store_states(conn, restated, now)
        audit.append(conn, records, now)
        if restated:
            self._announce(conn, {key[0] for key in restated}, now)
        return len(found)

    # -- the basis a value was recorded under ------------------------------------------------

    def _bound(self, conn: Connection, purpose_key: str, summary: Summary) -> Summary:
        """``summary`` with each value that states no basis and is not bound (an older version
        recorded it, or it was folded again from the events) bound to the purpose's default
        basis in force when it was recorded (``Ranked.bound``); ``summary`` itself if none is."""
        latest, restriction = summary.latest, summary.restriction
        if not (_unbound_value(latest) or _unbound_value(restriction)):
            return summary
        return summary.with_values(
            self._bound_value(conn, purpose_key, latest), self._bound_value(conn, purpose_key, restriction)
        )

    def _bound_value(self, conn: Connection, purpose_key: str, value: Ranked | None) -> Ranked | None:
        if value is None or not _unbound_value(value):
            return value
        return value.bound_to(self._default_basis_at(conn, purpose_key, value.observed_at))

    def _default_basis_at(self, conn: Connection, purpose_key: str, moment: datetime) -> LawfulBasis:
        """The purpose's default basis in force at ``moment``, as the chain's
        ``purpose.configured`` entries say (each one from its time on). Before the purpose's
        first entry: the default that entry replaced, or the one it set. A purpose the chain
        names in no entry: its stored configuration (``purposes``)."""
        known = self._defaults_now(conn).get(purpose_key)
        if known is None:  # in no entry and no row (events name a stored purpose: not expected)
            purpose = self.purposes.get(purpose_key)
            return purpose.default_basis if purpose is not None else LawfulBasis.CONSENT
        moments, bases, before = known
        at = bisect_right(moments, moment)
        return bases[at - 1] if at else before

    def _defaults_now(self, conn: Connection) -> dict[str, _Defaults]:
        """The defaults as the chain says them in ``conn``'s transaction. Looked at once per
        transaction: read again when the purposes' rows changed since they were read (each
        ``purpose.configured`` entry is appended in the transaction that writes its purpose's
        row), so that a process started before another one applied a new default binds what it
        records after that to the new one, and ``audit verify`` holds every binding to the
        default in force when its value was recorded (session 62: any earlier one passed)."""
        transaction = conn.get_transaction()
        # Read once: another thread may replace it meanwhile, and the defaults, the rows they
        # were read with and the transaction that looked must be one read's (two attributes read
        # apart paired another thread's rows with this one's older defaults, which were bound).
        cached = self._defaults_read
        if (
            cached is not None
            and transaction is not None
            and cached.looked_in is not None
            and cached.looked_in() is transaction
        ):
            return cached.defaults
        rows = tuple(
            tuple(row)
            for row in conn.execute(
                select(
                    purposes_table.c.key, purposes_table.c.default_basis, purposes_table.c.updated_at
                ).order_by(purposes_table.c.key)
            )
        )
        fresh = cached is None or rows != cached.rows
        defaults = _defaults_in_force(conn) if fresh or cached is None else cached.defaults
        # Weakly: a transaction ended and another made at its address is not taken for it.
        looked_in = weakref.ref(transaction) if transaction is not None else None
        self._defaults_read = _DefaultsRead(defaults, rows, looked_in)
        return defaults

    def _refold_blank_proof_in(
        self, conn: Connection, keys: set[tuple[int, str, str]], now: datetime, actor: str
    ) -> int:
        """``refold_blank_proof`` for these keys, inside the caller's write transaction."""
        ids = {key[0] for key in keys}
        contexts = self._contexts(conn, ids)
        folded = self._refold(conn, keys)
        rows = {
            (row.subject_id, row.purpose, row.channel): row
            for row in conn.execute(
                select(consent_states).where(one_of(conn, consent_states.c.subject_id, sorted(ids)))
            )
            if (row.subject_id, row.purpose, row.channel) in keys
        }
        restated: dict[tuple[int, str, str], tuple[Summary, EffectiveState]] = {}
        summary_only: dict[tuple[int, str, str], Summary] = {}
        records: list[AuditRecord] = []
        announced: set[int] = set()
        for key in sorted(keys):
            subject_id, purpose_key, channel = key
            summary, row = folded[key], rows.get(key)
            if row is None and summary == NO_EVIDENCE:
                continue
            if row is not None:
                data = orjson.loads(row.summary)
                if isinstance(data, dict) and Summary.is_current(data) and Summary.from_json(data) == summary:
                    continue  # folded so already (by a run stopped midway, or another process)
            purpose = self.purposes.get(purpose_key)
            if purpose is None or channel not in purpose.channels:
                # Nothing is decided or pushed for it: its summary is corrected (audit verify
                # compares it with the events), its columns stay as they were last written.
                if row is not None:
                    summary_only[key] = summary
                continue
            context = contexts[subject_id]
            new = effective_state(
                summary, purpose, channel, flags=context.flags, objections=context.objections, now=now
            )
            restated[key] = (summary, new)
            # The evidence behind the state changed: connectors look again whatever it shows.
            announced.add(subject_id)
            old = (
                None
                if row is None
                else {"status": row.status, "basis": row.basis, "suppressed": row.suppressed}
            )
            evidence_status = (new.evidence_status or new.status).value
            if row is None or (row.status, row.basis, row.suppressed, row.rule) != (
                evidence_status,
                new.basis.value,
                new.suppressed,
                new.rule,
            ):
                records.append(
                    AuditRecord(
                        "state.changed",
                        {"purpose": purpose_key, "channel": channel},
                        old=old,
                        new=_state_tuple_json(new),
                        rule=new.rule,
                        source=BLANK_PROOF_SOURCE,
                        actor=actor,
                        subject_uid=context.uid,
                        subject_id=subject_id,
                    )
                )
        for (subject_id, purpose_key, channel), summary in summary_only.items():
            conn.execute(
                update(consent_states)
                .where(
                    consent_states.c.subject_id == subject_id,
                    consent_states.c.purpose == purpose_key,
                    consent_states.c.channel == channel,
                )
                .values(summary=canonical_json(summary.to_json()), updated_at=now)
            )
        self._store_states(conn, restated, now)
        audit.append(conn, records, now)
        if announced:
            self._announce(conn, announced, now)
        return len(restated) + len(summary_only)

    # -- consent events ------------------------------------------------------------------------

    def validate(self, evidence: Evidence, *, now: datetime | None = None) -> Purpose:
        """The purpose ``evidence`` is about, if the ledger accepts it (else ``InvalidInput``).
        ``now``: the clock as the caller read it for a batch (a sync's page), not read again."""
        purpose = self.purposes.get(evidence.purpose)
        if purpose is None:
            raise InvalidInput(
                f"unknown purpose {shown(evidence.purpose)}: configured are {', '.join(self.purposes)}"
            )
        if evidence.channel not in purpose.channels:
            raise InvalidInput(
                f"channel {shown(evidence.channel)} is not configured for purpose {purpose.key!r}: "
                f"accepted are {', '.join(purpose.channels)}"
            )
        # Event times are bounded by now (plus the allowed clock skew) and by 1970; every text
        # has its maximum length and no control character or email address (docs/policy.md).
        now = now or self.clock()
        check_moment(evidence.event_time, "event time", now, self.max_clock_skew_seconds)
        check_moment(evidence.double_opt_in_at, "double opt-in time", now, self.max_clock_skew_seconds)
        check_label(evidence.source, "source", SOURCE_MAX, required=True)
        check_label(evidence.actor, "actor", ACTOR_MAX)
        # A blank notice version or evidence reference proves nothing (has_proof): refused where
        # people act (capture API, scripts). Not on a CRM's value (a blank CRM field is no value:
        # the mapping reads it as none; quarantining the record for it would hold back the rest)
        # nor on a no (a withdrawal or refusal is never turned away for a label; a CRM merge
        # carries the nos older versions recorded with one as they were).
        proof = evidence.origin is not Origin.CRM and evidence.status not in (
            ConsentStatus.WITHDRAWN,
            ConsentStatus.REFUSED,
        )
        check_label(evidence.notice_version, "notice version", NOTICE_VERSION_MAX, proof=proof)
        check_label(evidence.evidence_ref, "evidence reference", EVIDENCE_REF_MAX, proof=proof)
        _check_notice_language(evidence)
        # Kept as folded (whole milliseconds): the state ``audit verify`` folds again is the one
        # recorded.
        check_clock_lag(evidence.clock_lag)
        confirmed, signed_up = evidence.double_opt_in_at, evidence.event_time
        # A confirmation dated before the sign-up it confirms cannot be true (Art. 7(1)): refused
        # where the same rule refuses a blank proof label (a CRM's fields may be dated otherwise:
        # a re-grant moving its consent date past a confirmation kept from before). A time stamped
        # to the whole second may be any moment of it: refused only if all of it came before.
        if proof and confirmed is not None and signed_up is not None:
            latest = confirmed if confirmed.microsecond else confirmed + timedelta(microseconds=999_999)
            if latest < signed_up:
                raise InvalidInput(
                    f"double opt-in time {iso(confirmed)} is before the event time {iso(signed_up)}: "
                    "a confirmation comes after the sign-up it confirms; accepted is a double opt-in "
                    "time at or after the event time"
                )
        if evidence.soft_opt_in is not None:
            _check_soft_opt_in(evidence, purpose)
        return purpose

    def _validate_all(self, items: Sequence[Evidence]) -> None:
        """``validate`` for each item; the purpose, channel and labels only once for each
        combination a batch carries (a bulk import repeats a few), the times for every item."""
        checked: set[tuple[Any, ...]] = set()
        skew = self.max_clock_skew_seconds
        now = self.clock()
        latest = now + timedelta(seconds=skew)
        for evidence in items:
            labels = (
                evidence.purpose,
                evidence.channel,
                evidence.source,
                evidence.actor,
                evidence.notice_version,
                evidence.notice_language,
                evidence.evidence_ref,
                evidence.clock_lag,
                # A blank proof label is refused on a grant, never on a no (``validate``).
                evidence.status,
                evidence.origin,
                # A confirmation before its sign-up is refused (``validate``): such an item is
                # checked whatever the items before it.
                evidence.double_opt_in_at is not None
                and evidence.event_time is not None
                and evidence.double_opt_in_at < evidence.event_time,
            )
            if evidence.soft_opt_in is not None or labels not in checked:
                self.validate(evidence)
                checked.add(labels)
                continue
            event_time, double_opt_in_at = evidence.event_time, evidence.double_opt_in_at
            if (event_time is not None and not EARLIEST_EVENT_TIME <= event_time <= latest) or (
                double_opt_in_at is not None and not EARLIEST_EVENT_TIME <= double_opt_in_at <= latest
            ):  # check_moment's bounds, compared here: check_moment says what is wrong
                check_moment(event_time, "event time", now, skew)
                check_moment(double_opt_in_at, "double opt-in time", now, skew)

    def record(self, identity: Identity, evidence: Evidence, *, run_id: str | None = None) -> RecordOutcome:
        """One statement in a transaction of its own (``consentsync ledger record``, scripts).

        A grant captured for an erased address that nobody came back with is refused
        (``ErasedAddressRefused``, nothing recorded) unless it lifts the erasure
        (``lifts_erasure``: a new consent from a trusted source, evidenced, dated after the
        address's latest erasure), the capture API's rule (its 409, ``Hub._refuse_erased``).
        Recorded, any other would store the erased address again on a new person who stays
        suppressed all the same (Art. 17, Art. 5(1)(c)): an untrusted source's, and a trusted
        source's dated before the erasure, undated or without its proof."""
        request = RecordRequest(identity, evidence)
        with self.engine.begin() as conn:
            # Read under the writer lock the transaction holds: an erasure committed since counts.
            self._refuse_unlifting_grants(conn, [request], lambda _index: "--email")
            _stats, outcomes = self.record_in(conn, [request], run_id=run_id)
        return outcomes[0]

    def _refuse_unlifting_grants(
        self, conn: Connection, requests: Sequence[RecordRequest], field_of: Callable[[int], str]
    ) -> None:
        """Raises ``ErasedAddressRefused`` (naming ``field_of`` the request's index) where one of
        ``requests`` grants for an erased address nobody came back with and none of its grants
        for that address lifts the erasure (``unliftable_erased_grant``, the capture API's rule)."""
        policy = self.policy
        refused = unliftable_erased_grant(
            SubjectResolver(conn, self.erasure_key(), self.clock(), None),
            requests,
            lambda index, since: lifts_erasure(policy, requests[index].evidence, since),
        )
        if refused is None:
            return
        source = requests[refused].evidence.source
        log.info("ledger.record_refused", reason="erased", source=source)
        raise ErasedAddressRefused(
            f"{field_of(refused)}: the address was erased; a grant from source {source!r} does not "
            "bring it back (only a new consent from a trusted source, policy.trusted_sources, "
            "evidenced and dated after the erasure does): nothing was recorded"
        )

    def record_many(
        self,
        requests: Iterable[RecordRequest],
        *,
        run_id: str | None = None,
        batch_size: int = 2000,
    ) -> RecordStats:
        """Records a stream of evidence, one transaction per batch; memory stays flat.

        On SQLite, what each committed batch knows about its people is kept for the next ones
        (``ledger.warm``) as long as no other connection writes in between.

        A batch holding a grant for an erased address that it does not lift is refused as
        ``record`` refuses one (``ErasedAddressRefused``, naming ``requests[i]``, i counted from
        the stream's start): that batch records nothing, the batches before it stay recorded."""
        total = RecordStats()
        iterator = iter(requests)
        done = 0
        warm = WarmSubjects() if self.engine.dialect.name == "sqlite" else None
        with cyclic_gc_paused(), self.engine.connect() as conn:
            while batch := list(islice(iterator, batch_size)):
                with conn.begin():
                    if warm is not None:
                        # Under the write lock: nobody can commit between this check and ours.
                        version = conn.exec_driver_sql("PRAGMA data_version").scalar()
                        if version != warm.data_version:
                            warm.clear()
                            warm.data_version = version
                    self._refuse_unlifting_grants(
                        conn, batch, lambda index, first=done: f"requests[{first + index}].email"
                    )
                    stats, _outcomes = self.record_in(
                        conn, batch, run_id=run_id, keep_outcomes=False, warm=warm
                    )
                done += len(batch)
                after_commit(self.engine)
                if warm is not None:
                    warm.promote()
                total.add(stats)
            # Freed while the collector is paused (reference counting frees it all): else the
            # collector's first run after the pause walks every object the cache holds.
            warm = None
        # Returned with the statistics of the tables it grew in place (PostgreSQL): the queries
        # that follow an import are planned knowing their size. Not for longer than this: the
        # analysis may be queued behind another process's long write transaction.
        statistics_settled(self.engine, timeout=STATISTICS_WAIT_SECONDS)
        return total

    def link_in(
        self,
        conn: Connection,
        identities: Sequence[Identity],
        *,
        run_id: str | None = None,
        elsewhere: list[tuple[int, int]] | None = None,
        left: dict[str, tuple[int, str]] | None = None,
        record_created: Mapping[CrmLink, datetime] | None = None,
    ) -> tuple[list[int], int]:
        """Resolves identities read from a CRM to subjects inside the caller's transaction,
        creating subjects and CRM links that are new; returns the subject ids and how many
        subjects were created. An erased person's address is matched by its keyed hash only.
        ``elsewhere``, when given, is filled with (the person a record's address names, the
        person the record was resolved to) wherever they differ; ``left`` with each address
        read that its holder left (``SubjectResolver.left``: the holder, the form held);
        ``record_created``: when the CRM created records read (kept on the links made for them)."""
        if not identities:
            return [], 0
        resolver = SubjectResolver(
            conn,
            self.erasure_key(),
            self.clock(),
            run_id,
            from_crm=True,
            elsewhere=elsewhere,
            record_created=record_created,
        )
        subject_ids = resolver.resolve(identities)
        if left is not None:
            left.update(resolver.left)
        audit.append(conn, resolver.audit, self.clock())
        analyse_grown(conn)
        return subject_ids, resolver.created

    def note_rereads(self, conn: Connection, rereads: Sequence[Reread], *, run_id: str | None = None) -> None:
        """Keeps, inside the caller's transaction, which addresses the people of ``rereads`` (CRM
        records known by their id, read showing another address) left or hold again
        (``SubjectResolver.note_rereads``), each change with its audit entry."""
        if not rereads:
            return
        resolver = SubjectResolver(conn, self.erasure_key(), self.clock(), run_id)
        resolver.note_rereads(rereads)
        audit.append(conn, resolver.audit, self.clock())

    def record_in(
        self,
        conn: Connection,
        batch: Sequence[RecordRequest],
        *,
        run_id: str | None = None,
        keep_outcomes: bool = True,
        warm: WarmSubjects | None = None,
    ) -> tuple[RecordStats, list[RecordOutcome]]:
        """Records ``batch`` inside the caller's transaction, so that a sync run can commit the
        ledger change together with its cursor, quarantine and outbox rows.

        ``warm`` (``record_many`` only) supplies what earlier batches of the same call committed
        and is handed what this batch knows, to be taken in once the caller committed."""
        self._validate_all([request.evidence for request in batch])
        outcomes: list[RecordOutcome] = []
        now = self.clock()
        stats = RecordStats(received=len(batch))
        resolver = SubjectResolver(conn, self.erasure_key(), now, run_id)
        subject_ids = _resolve(resolver, [r.identity for r in batch], warm)
        stats.subjects_created = resolver.created
        contexts, states = self._known(conn, set(subject_ids), warm)
        # What is recorded, and so what a replay must be matched against: a value dated after its
        # observation is recorded at the observation.
        recorded = [_not_after_observation(r.evidence) for r in batch]
        seen = self._known_fingerprints(conn, subject_ids, recorded)
        to_db = time_writer(conn)
        events: list[tuple[Any, ...]] = []
        entries: list[audit.Entry] = [(audit.payload_of(r), r.details, r.subject_id) for r in resolver.audit]
        dirty: dict[tuple[int, str, str], EffectiveState] = {}
        changed_subjects: set[int] = set()
        purposes, policy = self.purposes, self.policy
        for evidence, subject_id in zip(recorded, subject_ids, strict=True):
            context = contexts[subject_id]
            fingerprint = evidence.fingerprint()
            if (subject_id, fingerprint) in seen:
                stats.duplicates += 1
                if keep_outcomes:
                    outcomes.append(RecordOutcome(context.uid, subject_id, True, None, None))
                continue
            seen.add((subject_id, fingerprint))
            key = (subject_id, evidence.purpose, evidence.channel)
            before = dirty.get(key)
            if before is None and warm is not None:
                before = warm.effective_at(key, now)
            decision = reconcile(
                states.get(key),
                evidence,
                purposes[evidence.purpose],
                policy,
                flags=context.flags,
                objections=context.objections,
                now=now,
                before=before,
                # A value stating no basis: bound to the default the chain says was in force
                # when it was observed, read in this transaction, not to this process's
                # configuration (a daemon started before another process applied a new default
                # bound to the one replaced; audit verify holds the binding to the chain's).
                bound=None
                if evidence.basis is not None
                else self._default_basis_at(conn, evidence.purpose, evidence.observed_at),
            )
            states[key] = decision.summary
            dirty[key] = decision.after
            changed = decision.changed
            stats.recorded += 1
            stats.state_changes += changed
            if changed or is_system_expiry(evidence):
                # A recorded expiry is announced even though the clock had already decided it:
                # it is when the CRMs, last told "granted", must be told "expired".
                changed_subjects.add(subject_id)
            events.append(_event_row(to_db, subject_id, evidence, fingerprint, run_id))
            entries.append(
                (
                    _recorded_payload(
                        evidence, fingerprint, decision.before, decision.after, context.uid, run_id
                    ),
                    None,
                    subject_id,
                )
            )
            if keep_outcomes:
                outcomes.append(
                    RecordOutcome(context.uid, subject_id, False, decision.before, decision.after)
                )
        insert_rows(conn, consent_events, EVENT_COLUMNS, events)
        self._store_states(conn, {k: (states[k], v) for k, v in dirty.items()}, now, to_db)
        audit.append_payloads(conn, entries, now)
        self._announce(conn, changed_subjects, now)
        analyse_grown(conn)
        if warm is not None:
            warm.stage(
                (
                    (r.identity.email, s)
                    for r, s in zip(batch, subject_ids, strict=True)
                    if r.identity.email and r.identity.link is None and r.identity.subject_id is None
                ),
                contexts,
                states,
                dirty,
                now,
            )
        log.debug(
            "evidence.recorded",
            run_id=run_id,
            received=stats.received,
            recorded=stats.recorded,
            duplicates=stats.duplicates,
            state_changes=stats.state_changes,
            subjects_created=stats.subjects_created,
        )
        return stats, outcomes

    # -- objections ----------------------------------------------------------------------------

    def raise_objection(
        self,
        email: str,
        purpose_key: str,
        *,
        direct_marketing: bool = False,
        raised_at: datetime | None = None,
        source: str = "ops",
        actor: str | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """An objection (Art. 21) by the person holding ``email`` (ops, the capture API)."""
        terms = self._objection_terms(purpose_key, direct_marketing, raised_at, source, actor)
        purpose, is_dm = terms.purpose, terms.direct_marketing
        with self.engine.begin() as conn:
            resolver = SubjectResolver(conn, self.erasure_key(), terms.now, run_id)
            if resolver.is_erased_only(email):
                # An erased address nobody came back with: the erasure's suppression keeps it out
                # of every purpose already. Nothing is recorded (no person holding the address,
                # no pending objection on the erased one for ops to review): the answer says so.
                log.info("objection.not_recorded", purpose=purpose.key, reason="erased")
                return {
                    "id": None,
                    "subject": None,
                    "purpose": purpose.key,
                    "direct_marketing": is_dm,
                    "status": "suppressed",
                    "decided_by": None,
                    "recorded": False,
                    "erased": True,
                    "rule": "erasure_suppression",
                }
            (subject_id,) = resolver.resolve([Identity(email=email, says_no=True)])
            result = self._objection_on(conn, subject_id, terms, resolver.audit, run_id)
        _log_objection(result)
        return result

    def raise_objection_of(
        self,
        subject_uid: str,
        purpose_key: str,
        *,
        direct_marketing: bool = False,
        source: str,
        actor: str | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """An objection (Art. 21) by the person ``subject_uid`` names (their preference page),
        raised on them by id in the transaction that finds them not erased; raises ``NotFound``
        once they are, recording nothing. Not by their address, read before: an erasure
        committed in between leaves nobody holding it (nothing would be recorded, the page
        saying the objection was taken), or someone who came back with it since, another
        person, would be given the objection."""
        terms = self._objection_terms(purpose_key, direct_marketing, None, source, actor)
        with self.engine.begin() as conn:  # the writer lock from BEGIN: no erasure in between
            found = conn.execute(
                select(subjects.c.id, subjects.c.erased_at).where(subjects.c.uid == subject_uid)
            ).one_or_none()
            if found is None or found.erased_at is not None:
                log.info("objection.not_recorded", purpose=terms.purpose.key, reason="erased")
                raise NotFound(
                    f"subject {shown(subject_uid)} is not in the ledger (erased): nothing recorded"
                )
            result = self._objection_on(conn, found.id, terms, [], run_id)
        _log_objection(result)
        return result

    def _objection_terms(
        self,
        purpose_key: str,
        direct_marketing: bool,
        raised_at: datetime | None,
        source: str,
        actor: str | None,
    ) -> _ObjectionTerms:
        """What an objection is, checked before anything is written: its purpose, time, source,
        whether it is one to direct marketing and how it is decided."""
        purpose = self._purpose(purpose_key)
        now = self.clock()
        check_moment(raised_at, "objection time", now, self.max_clock_skew_seconds)
        check_label(source, "source", SOURCE_MAX, required=True)
        check_label(actor, "actor", ACTOR_MAX)
        # Art. 21(2): an objection to direct marketing is absolute, whatever the configuration.
        # A purpose that serves direct marketing (flagged so, profiling for it, or under the
        # ePrivacy rules: marketing by electronic mail) makes it one, whoever raises the
        # objection (the page, the API, ops), whatever ``direct_marketing`` says.
        is_dm = direct_marketing or serves_direct_marketing(purpose)
        if is_dm:
            status, decided_by = ObjectionStatus.UPHELD, "policy:art21(2)_direct_marketing"
        elif purpose.objection_handling is ObjectionHandling.AUTO_UPHOLD:
            status, decided_by = ObjectionStatus.UPHELD, "policy:auto_uphold"
        else:
            status, decided_by = ObjectionStatus.PENDING, None
        return _ObjectionTerms(
            purpose, is_dm, status, decided_by, min(raised_at, now) if raised_at else now, now, source, actor
        )

    def _objection_on(
        self,
        conn: Connection,
        subject_id: int,
        terms: _ObjectionTerms,
        prior: list[AuditRecord],
        run_id: str | None,
    ) -> dict[str, Any]:
        """Writes the objection ``terms`` on ``subject_id`` in ``conn``'s transaction, with its
        audit entries after ``prior`` (the resolver's), and re-decides the purposes it binds.
        Raises ``NotObjectable`` (nothing written: the caller's transaction rolls back) where the
        person has no right to object to the purpose (``objectable``)."""
        purpose, is_dm, status, now = terms.purpose, terms.direct_marketing, terms.status, terms.now
        # The bases the ledger holds the person's processing on, one per channel, read in this
        # transaction (the writer's): what the preference page shows them (``subject_view``).
        states = self.effective_states_in(conn, [subject_id])[subject_id]
        bases = [states[(purpose.key, channel)].basis for channel in purpose.channels]
        if not objectable(purpose, bases, direct_marketing=is_dm):
            marketing = [p.key for p in self.purposes.values() if serves_direct_marketing(p)]
            refused = NotObjectable(purpose, bases, marketing if is_dm else None)
            log.info(
                "objection.refused", purpose=purpose.key, basis=",".join(refused.bases), code=refused.code
            )
            raise refused
        before = self._contexts(conn, {subject_id})[subject_id]
        objection_id = conn.execute(
            insert(objections)
            .values(
                subject_id=subject_id,
                purpose=purpose.key,
                direct_marketing=is_dm,
                status=status.value,
                raised_at=terms.raised_at,
                recorded_at=now,
                source=terms.source,
                decided_by=terms.decided_by,
                decided_at=now if terms.decided_by else None,
            )
            .returning(objections.c.id)
        ).scalar_one()
        after = self._contexts(conn, {subject_id})[subject_id]
        records = [
            *prior,
            AuditRecord(
                "objection.raised",
                # When the person objected, which may be earlier than this entry (ops entering
                # a call): it decides which consent lifts the objection (Art. 21(3)), so the
                # chain says it, not only the objection's row, which stays writable.
                {
                    "objection": objection_id,
                    "purpose": purpose.key,
                    "direct_marketing": is_dm,
                    "raised_at": terms.raised_at,
                },
                old=None,
                new=status.value,
                rule="art21(2)_absolute" if is_dm else f"purpose_{purpose.objection_handling.value}",
                source=terms.source,
                actor=terms.actor,
                run_id=run_id,
                subject_uid=after.uid,
                subject_id=subject_id,
            ),
        ]
        affected = self._affected_purposes(purpose, is_dm)
        records += self._refresh(
            conn, subject_id, affected, before, after, now, run_id, terms.source, terms.actor
        )
        audit.append(conn, records, now)
        return {
            "id": objection_id,
            "subject": after.uid,
            "purpose": purpose.key,
            "direct_marketing": is_dm,
            "status": status.value,
            "decided_by": terms.decided_by,
        }

    def _serves_direct_marketing_now(self, conn: Connection, purpose_key: str) -> bool:
        """Whether ``purpose_key`` serves direct marketing in this process's configuration or in
        the one last taken in by any process (the purposes' mirror, read in ``conn``'s write
        transaction): a process started before a change must not act on the old one."""
        if serves_direct_marketing(self._purpose(purpose_key)):
            return True
        stored = conn.execute(
            select(purposes_table.c.direct_marketing, purposes_table.c.eprivacy).where(
                purposes_table.c.key == purpose_key
            )
        ).first()
        return stored is not None and bool(stored.direct_marketing or stored.eprivacy)

    def _uphold_now_absolute(self, purpose: Purpose, now: datetime) -> None:
        """A purpose that serves direct marketing since this configuration (``purpose`` changed):
        the objections to it still pending or rejected by a review are upheld, each audited
        (Art. 21(3): once processing is for direct marketing, an objection to it ends it, and no
        review can keep it going). Before ``_restate``, which then decides the purpose's states
        with them. An objection keeps the reach it was raised with (its own purpose): the states
        of other purposes it would cover as one to direct marketing are not decided again here."""
        if not serves_direct_marketing(purpose):
            return
        open_statuses = (ObjectionStatus.PENDING.value, ObjectionStatus.REJECTED.value)
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(objections.c.id, objections.c.subject_id, objections.c.status)
                .where(objections.c.purpose == purpose.key, objections.c.status.in_(open_statuses))
                .order_by(objections.c.id)
            ).all()
            if not rows:
                return
            decided_by = "policy:art21(3)_purpose_now_direct_marketing"
            conn.execute(
                update(objections)
                .where(objections.c.id.in_([row.id for row in rows]))
                .values(status=ObjectionStatus.UPHELD.value, decided_by=decided_by, decided_at=now)
            )
            uids = dict(select_in(conn, subjects, ("id", "uid"), "id", sorted({r.subject_id for r in rows})))
            audit.append(
                conn,
                [
                    AuditRecord(
                        "objection.decided",
                        {"objection": row.id, "purpose": purpose.key},
                        old=row.status,
                        new=ObjectionStatus.UPHELD.value,
                        rule="art21(3)_purpose_now_direct_marketing",
                        source="config",
                        # Who decided, as the row's decided_by says (audit verify compares them):
                        # the policy, applied when the configuration was taken in.
                        actor=decided_by,
                        subject_uid=uids.get(row.subject_id),
                        subject_id=row.subject_id,
                    )
                    for row in rows
                ],
                now,
            )
        log.info("objection.upheld_by_configuration", purpose=purpose.key, objections=len(rows))

    def list_objections(self, *, pending_only: bool = False) -> list[dict[str, Any]]:
        query = _with_subject(objections)
        if pending_only:
            query = query.where(objections.c.status == ObjectionStatus.PENDING.value)
        # Pending first, oldest first: the review queue's order.
        query = query.order_by(
            (objections.c.status != ObjectionStatus.PENDING.value),
            objections.c.raised_at,
            objections.c.id,
        )
        with reading(self.engine) as conn:
            return [_objection_view(row) for row in conn.execute(query)]

    def decide_objection(
        self, objection_id: int, *, uphold: bool, by: str, reason: str, run_id: str | None = None
    ) -> dict[str, Any]:
        if not by.strip():
            raise InvalidInput("--by must name the person deciding")
        if not reason.strip():
            raise InvalidInput("--reason must say why: a decision without a reason cannot be audited")
        check_label(by, "--by", ACTOR_MAX, required=True)
        check_reason(reason, "--reason", REASON_MAX)
        now = self.clock()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(objections).where(objections.c.id == objection_id).with_for_update()
            ).one_or_none()
            if row is None:
                raise NotFound(f"no objection with id {objection_id}")
            if row.status != ObjectionStatus.PENDING.value:
                raise InvalidInput(
                    f"objection {objection_id} is already {row.status}: only pending objections "
                    "can be decided"
                )
            if not uphold and self._serves_direct_marketing_now(conn, row.purpose):
                # Pending while the purpose did not serve direct marketing; it does now (the
                # configuration changed), and an objection to direct marketing is upheld whatever
                # a review says (Art. 21(3)). ``_uphold_now_absolute`` upholds the pending ones
                # when the ledger takes the new configuration in; one raised since by a process
                # holding the old configuration (a console started before) is refused here.
                raise InvalidInput(
                    f"objection {objection_id} is to purpose {row.purpose}, which serves direct "
                    "marketing: an objection to direct marketing cannot be rejected (Art. 21(3)); "
                    "decide it with --uphold"
                )
            before = self._contexts(conn, {row.subject_id})[row.subject_id]
            status = ObjectionStatus.UPHELD if uphold else ObjectionStatus.REJECTED
            conn.execute(
                update(objections)
                .where(objections.c.id == objection_id)
                .values(status=status.value, decided_by=by, decided_at=now)
            )
            after = self._contexts(conn, {row.subject_id})[row.subject_id]
            records = [
                AuditRecord(
                    "objection.decided",
                    {"objection": objection_id, "purpose": row.purpose},
                    old=ObjectionStatus.PENDING.value,
                    new=status.value,
                    rule="manual_review",
                    source="review",
                    actor=by,
                    run_id=run_id,
                    subject_uid=after.uid,
                    subject_id=row.subject_id,
                    details={"reason": reason},
                )
            ]
            purpose = self._purpose(row.purpose)
            affected = self._affected_purposes(purpose, row.direct_marketing)
            records += self._refresh(conn, row.subject_id, affected, before, after, now, run_id, "review", by)
            audit.append(conn, records, now)
        log.info("objection.decided", objection=objection_id, subject=after.uid, status=status.value)
        return {"id": objection_id, "status": status.value, "decided_by": by, "subject": after.uid}

    # -- erasure -------------------------------------------------------------------------------

    def erase(
        self, email: str, *, reason: str, actor: str | None = None, reason_field: str = "--reason"
    ) -> dict[str, Any]:
        """Art. 17: personal data goes; a keyed hash stays so the person is never re-imported.
        ``reason_field``: how the caller's input names the reason in an error (the CLI's option;
        the capture API's body field, ``reason:``)."""
        if not reason.strip():
            raise InvalidInput(f"{reason_field} must say why the subject is erased")
        # The reason outlives the erasure (suppression entry, audit details): no address in it.
        check_reason(reason, reason_field, ERASURE_REASON_MAX, erasable=False)
        check_label(actor, "--actor", ACTOR_MAX)
        now = self.clock()
        digest = email_hmac(self.erasure_key(), email)
        # An entry an older version made under the address's other form (its domain in
        # punycode) is this address's: kept, not doubled (email_forms).
        forms = [email_hmac(self.erasure_key(), form) for form in email_forms(email)]
        with self.engine.begin() as conn:
            found = conn.execute(
                select(suppressions.c.id, suppressions.c.email_hmac)
                .where(suppressions.c.email_hmac.in_(forms))
                .order_by(suppressions.c.id)
                .limit(1)
            ).first()
            already = found is not None  # an address erased before: its entry is kept
            if found is None:
                suppression_id = conn.execute(
                    insert(suppressions)
                    .values(email_hmac=digest, reason=reason, created_at=now, last_erased_at=now)
                    .returning(suppressions.c.id)
                ).scalar_one()
                kept_hmac = digest
            else:
                suppression_id, kept_hmac = found.id, found.email_hmac
                # Erased again: a consent must be newer than this erasure to lift it, not the
                # first (the entry, and its created_at, are kept; the chain's entry says when).
                conn.execute(
                    update(suppressions).where(suppressions.c.id == suppression_id).values(last_erased_at=now)
                )
            # The suppression entry as the chain says it (its id and keyed hash; its reason by the
            # details' digest, its time by the entry's): `audit verify` holds the row to it.
            suppression = {"suppression": suppression_id, "email_hmac": kept_hmac}
            # Every person held under a form of the address (an older version could hold one
            # per form): each is erased, or one would keep the address and its history.
            people = _subject_ids_by_email(conn, email)
            # And each sign-up for the address, erased before, that waits for its confirmation
            # (``held_back_people``): its person holds no address, and the link mailed for it
            # must not bring back, once followed, an address erased again after it was sent.
            people += [p for p in held_back_people(conn, forms) if p not in people]
            # And each person absorbed into one of them (ledger/absorb.py: known only through
            # records without an address, proven to be them): their consent history and its
            # details are this person's, and would outlive the erasure otherwise (Art. 17).
            people += [p for p in absorbed_into(conn, people) if p not in people]
            uids, erased_details = self._erase_people(
                conn, people, suppression, reason=reason, actor=actor, now=now, email=email, digest=digest
            )
        subject_id = people[0] if people else None
        uid = uids[0] if uids else None
        log.info("subject.erased", subject=uid, suppression=suppression_id, known=subject_id is not None)
        return {
            "subject": uid,
            "subjects": uids,
            "suppression_id": suppression_id,
            "subject_known": subject_id is not None,
            "already_suppressed": already,
            "audit_details_erased": erased_details,
        }

    def _erase_people(
        self,
        conn: Connection,
        people: list[int],
        suppression: dict[str, Any],
        *,
        reason: str,
        actor: str | None,
        now: datetime,
        email: str | None,
        digest: str | None,
        erasure_entry: int | None = None,
    ) -> tuple[list[str], int]:
        """Erases ``people`` in the caller's transaction, each onto the suppression entry
        ``suppression`` (its id and keyed hash as the chain says them; empty: none), with their
        other addresses suppressed too; returns their uids and the audit details erased.
        ``email`` (and its keyed hash ``digest``): the address erased (``erase``). None: people
        left behind by an erasure of an older version (``erase_absorbed``), whose address is not
        erased again (its entry's ``last_erased_at`` stays, so a consent given since still lifts
        it); each entry names the erasure it completes (``erasure_entry``)."""
        records: list[AuditRecord] = []
        uids: list[str] = []
        erased_details = redacted = 0
        repair = {} if erasure_entry is None else {"erasure_entry": erasure_entry}
        # The person's other addresses (a CRM record that took a new one keeps the person,
        # who then holds both): each is erased with them and kept as a suppression of its
        # own, or a record showing it would import the person again, unsuppressed.
        # Not its folded form (an emoji a CRM kept as "?", ``fold_astral``): it is another
        # address to the CRMs, which a new record showing it would import unsuppressed; so
        # the person's holding it is erased and suppressed as one of their other addresses.
        asked = set() if email is None else (set(email_forms(email)) - {fold_astral(email)}) | {email}
        others: set[str] = set()
        # Whose other address each is (the first person holding it): its entry names them.
        owners: dict[str, tuple[str, int]] = {}
        # Who of them was restricted: only a restricted person's restriction can have been
        # carried to others and still stand (lifting it lifts what was carried, _lift_carried).
        restricted_uids: set[str] = set()
        hashed = self.keyed_hasher()
        for person in people:
            before = self._contexts(conn, {person})[person]
            uids.append(before.uid)
            if before.flags.restricted:
                restricted_uids.add(before.uid)
            held = conn.execute(
                select(subject_identifiers.c.kind, subject_identifiers.c.value).where(
                    subject_identifiers.c.subject_id == person
                )
            ).all()
            theirs = {value for kind, value in held if kind == EMAIL} - asked
            # Each identifier deleted below is unbound in the chain (its keyed hash, as the
            # entry that bound it says it): `audit verify` then holds the person to none.
            unbound = bindings((kind, hashed(value)) for kind, value in held)
            others |= theirs
            for address in theirs:
                owners.setdefault(address, (before.uid, person))
            conn.execute(
                update(subjects)
                .where(subjects.c.id == person)
                .values(erased_at=now, suppression_id=suppression.get("suppression"))
            )
            conn.execute(delete(subject_identifiers).where(subject_identifiers.c.subject_id == person))
            details = audit.erase_details(conn, person)
            texts = _redact_operational_text(conn, person)
            _close_capture_requests(conn, before.uid, capture_request_hashers(self.erasure_key())[0])
            erased_details += details
            redacted += texts
            after = self._contexts(conn, {person})[person]
            records.append(
                AuditRecord(
                    "subject.erased",
                    {**suppression, "subject_known": True, UNBOUND: unbound, **repair},
                    old=None,
                    new={
                        "suppressed": True,
                        "audit_details_erased": details,
                        **({"operational_text_redacted": texts} if texts else {}),
                    },
                    rule="erasure_suppression",
                    source="erasure",
                    actor=actor,
                    subject_uid=before.uid,
                    subject_id=person,
                    details={"reason": reason},
                )
            )
            records += self._refresh(
                conn, person, list(self.purposes.values()), before, after, now, None, "erasure", actor
            )
        if not people:
            records.append(
                AuditRecord(
                    "subject.erased",
                    {**suppression, "subject_known": False},
                    old=None,
                    new={"suppressed": True, "audit_details_erased": 0},
                    rule="erasure_suppression",
                    source="erasure",
                    actor=actor,
                    details={"reason": reason},
                )
            )
        # Records of other people that last showed this address (an edit, an import, a merge
        # that kept it): the connectors look at them again, and a record holding an erased
        # address is suppressed whoever's it is (sync/engine.py, decide_pushes). The snapshot
        # keeps the same keyed hash. No index on it: one scan of the snapshots per erasure,
        # which is rare (a bulk erasure of many addresses would want one: a migration).
        # Snapshots written by older versions hold the hash of the address as JSON text
        # (as the CRM wrote it): those of this address as written here take today's hash, so
        # that the push decision's join finds them too (one written otherwise, in capitals,
        # keeps the old hash until that record is read again).
        # So do those that last showed the address in its other form (punycode): the push
        # decision hashes an address in its one form since (email_forms).
        folded = None if email is None else fold_astral(email)
        if (
            folded is not None
            and folded != email
            and people
            and folded not in others
            and not _held(conn, folded)
        ):
            # The address as a CRM keeping only the BMP shows it (an emoji as "?"): a record
            # showing it is the person's to that CRM, and one made after the erasure (a new
            # lead) would import them again, unsuppressed (``identity._unfold`` finds no one
            # holding the erased address): suppressed as one of their other addresses.
            # Not where someone else holds it as it is (``holds_for``: their "?" is a "?",
            # a mailbox of their own, whose records the suppression would reach).
            others.add(folded)
            owners.setdefault(folded, (uids[0], people[0]))
        added = self._suppress_too(conn, sorted(others), reason, now)
        # The address erased (none where people left by an older erasure are), then the others.
        addresses = ([] if email is None else [email]) + sorted(others)
        digests = ([] if digest is None else [digest]) + [hashed for hashed, _id, _entry, _made in added]
        for address, (_hashed, added_id, entry_hmac, made) in zip(sorted(others), added, strict=True):
            owner_uid, owner_id = owners[address]
            # Each suppression entry is in the chain, or its row could be deleted unseen; one
            # on the list before (old: suppressed) is erased again now, which its entry's
            # last_erased_at says and `audit verify` holds it to.
            records.append(
                AuditRecord(
                    "suppression.added",
                    {"suppression": added_id, "email_hmac": entry_hmac},
                    old=None if made else {"suppressed": True},
                    new={"suppressed": True},
                    rule="erasure_suppression",
                    source="erasure",
                    actor=actor,
                    subject_uid=owner_uid,
                    subject_id=owner_id,
                    details={"reason": reason},
                )
            )
        for address, hashed in zip(addresses, digests, strict=True):
            stale = [email_hmac(self.erasure_key(), canonical_json(form)) for form in email_forms(address)]
            stale += [email_hmac(self.erasure_key(), form) for form in email_forms(address)[1:]]
            conn.execute(
                update(crm_snapshots).where(crm_snapshots.c.identity.in_(stale)).values(identity=hashed)
            )
        holders = set(
            conn.execute(
                select(crm_links.c.subject_id)
                .join(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
                .where(crm_snapshots.c.identity.in_(digests), crm_links.c.gone_at.is_(None))
            ).scalars()
        ) - set(people)
        # And the people holding a record the erased people's records point to (a record shared:
        # sync/shared.py): it is spared the erasure's delete or anonymise only while someone
        # sharing it is not erased, so each connector looks at it again (the record's person
        # is examined), whichever sync read it last (engine: ``_erasure_reaches``).
        holders |= sharing_with(conn, people) - set(people)
        # And those holding the survivors of the erased people's merged records: a survivor of
        # another person's is spared while a merged person is not erased (sync: ``_merged_into``).
        holders |= survivors_holders(conn, people) - set(people)
        audit.append(conn, records, now)
        # Restrictions carried from an erased person stand on data that is gone: lifted as
        # lifting their restriction would (the erased address stays suppressed anyway). Only
        # a restricted person's can stand: an erasure of anyone else reads no other person
        # (it read every restricted person's trail: 145 ms an erasure beside 1,256 of them).
        for erased in uids:
            if erased in restricted_uids:
                self._lift_carried(conn, erased, now, source="erasure", actor=actor)
        # The erased people themselves too, whether or not a state of theirs changed (a
        # restriction decides before and after; one who came back and is erased again may
        # read the same): every connector passes the erasure on (Art. 17(2), 19), with the
        # object's delete or anonymise where configured.
        if holders or people:
            self._announce(conn, holders | set(people), now)
        return uids, erased_details

    def erase_absorbed(self, actor: str = ERASURE_REPAIR_ACTOR) -> int:
        """Once per ledger (the ``ledger_settings`` row ``ABSORBED_ERASED_SETTING`` says it was
        done): the people absorbed into a person erased by a version before erasure reached
        them (``absorbed_into``) are erased now, as ``erase`` erases them today (``_erase_people``:
        their identifiers, audit details and operational texts go, their states are decided
        again and announced, each gets a ``subject.erased`` entry onto the holder's suppression
        entry). Each entry names the holder's erasure entry it completes (``erasure_entry``),
        its actor is ``actor`` and its reason says why; the address is not erased again (its
        ``last_erased_at`` stays: a consent given since the erasure still lifts it).

        The holders are found by one read of the ``subject.absorbed`` entries (a scan of the log:
        no index holds an action; the marker makes it one scan per ledger), and only those with
        a person left not erased are kept (one look at those people's rows): a holder whose
        absorbed people are all erased (every erasure since bf255f8) costs no transaction. One
        write transaction per holder kept, the chain's head locked before the people left are
        read again, so a run stopped midway (the marker is written last) is finished by the
        next open and two processes opening at once erase each person once. Returns the number
        of people erased."""
        from sqlalchemy.exc import IntegrityError

        from consentsync.ledger.schema import ledger_settings

        by_name = ledger_settings.c.name == ABSORBED_ERASED_SETTING
        with reading(self.engine) as conn:
            if conn.execute(select(ledger_settings.c.value).where(by_name)).scalar() is not None:
                return 0
            holders = _holders_of_absorbed_left(conn)
        erased = 0
        for holder in holders:
            with self.engine.begin() as conn:
                erased += self._erase_absorbed_of(conn, holder, actor)
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(ledger_settings.c.value).where(by_name)).scalar() is None:
                    row = {"name": ABSORBED_ERASED_SETTING, "value": "done", "set_at": self.clock()}
                    conn.execute(insert(ledger_settings).values(**row))
        except IntegrityError:  # another process opening the ledger finished it meanwhile
            pass
        if erased:  # said once per ledger, and only where an older version left such people
            log.info("absorbed.erased", holders=len(holders), people=erased)
        return erased

    def _erase_absorbed_of(self, conn: Connection, holder: int, actor: str) -> int:
        """``erase_absorbed`` for the people absorbed into erased person ``holder`` and not erased,
        inside the caller's write transaction."""
        # The head first: another process doing the same waits here, then finds them erased.
        conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1).with_for_update())
        people = absorbed_into(conn, [holder])
        if not people:
            return 0
        row = conn.execute(
            select(subjects.c.uid, subjects.c.suppression_id, suppressions.c.email_hmac)
            .select_from(subjects.outerjoin(suppressions, suppressions.c.id == subjects.c.suppression_id))
            .where(subjects.c.id == holder)
        ).one()
        # The holder's erasure: its entry (by the person's id; by uid one written before 0013).
        about = or_(
            audit_entries.c.subject_id == holder,
            and_(audit_entries.c.subject_id.is_(None), audit_entries.c.subject_uid == row.uid),
        )
        erasure = conn.execute(
            select(func.max(audit_entries.c.seq)).where(audit_entries.c.action == "subject.erased", about)
        ).scalar()
        # Onto the holder's suppression entry, as their erasure would have put them.
        suppression = (
            {}
            if row.suppression_id is None
            else {"suppression": row.suppression_id, "email_hmac": row.email_hmac}
        )
        # Ids only: the reason is kept with the entries and the suppression list.
        reason = (
            f"erased by consentsync's upgrade: absorbed into subject {row.uid}, whose erasure "
            f"(audit entry {erasure}) was made by a version whose erasures did not reach them"
        )
        self._erase_people(
            conn,
            people,
            suppression,
            reason=reason,
            actor=actor,
            now=self.clock(),
            email=None,
            digest=None,
            erasure_entry=erasure,
        )
        return len(people)

    # -- restriction ---------------------------------------------------------------------------

    def _suppress_too(
        self, conn: Connection, addresses: list[str], reason: str, now: datetime
    ) -> list[tuple[str, int, str, bool]]:
        """The keyed hashes of an erased person's other addresses, each on the suppression list
        (an entry of its own, with the erasure's reason; one made before under a form of it is
        kept, not doubled, and dated erased again now: ``last_erased_at``), in the order given:
        the keyed hash of the address's one form, the id and keyed hash of its entry, and whether
        the entry was made now."""
        hashed = self.keyed_hasher()
        digests: list[tuple[str, int, str, bool]] = []
        for address in addresses:
            forms = [hashed(form) for form in email_forms(address)]
            known = conn.execute(
                select(suppressions.c.id, suppressions.c.email_hmac)
                .where(suppressions.c.email_hmac.in_(forms))
                .order_by(suppressions.c.id)
                .limit(1)
            ).first()
            if known is None:
                made = conn.execute(
                    insert(suppressions)
                    .values(email_hmac=forms[0], reason=reason, created_at=now, last_erased_at=now)
                    .returning(suppressions.c.id)
                ).scalar_one()
                digests.append((forms[0], made, forms[0], True))
                continue
            conn.execute(update(suppressions).where(suppressions.c.id == known.id).values(last_erased_at=now))
            digests.append((forms[0], known.id, known.email_hmac, False))
        return digests

    def restrict(
        self,
        email: str,
        *,
        restricted: bool,
        reason: str,
        actor: str | None = None,
        source: str = "ops",
    ) -> dict[str, Any]:
        """Art. 18: the data may be stored but not otherwise processed, until the restriction is
        lifted. Every purpose is suppressed meanwhile, and the change is passed on like any other.
        ``source`` says where it was asked for (``ops``, or the preference page)."""
        if not reason.strip():
            raise InvalidInput("--reason must say why processing is restricted or released")
        check_reason(reason, "--reason", REASON_MAX)
        check_label(actor, "--actor", ACTOR_MAX)
        now = self.clock()
        with self.engine.begin() as conn:
            # Every person held under a form of the address (an older version could hold one
            # per form): the restriction is the address's, so it reaches each of them.
            people = _subject_ids_by_email(conn, email)
            if not people:
                raise NotFound(f"no subject with email {email!r} in the ledger")
            changing: list[tuple[int, _SubjectContext]] = []
            for subject_id in people:
                before = self._contexts(conn, {subject_id})[subject_id]
                # A restriction this person has only because a CRM put a restricted person's
                # data on their record (carry_restriction) becomes their own when they ask for
                # it: lifting the other person's then leaves theirs standing.
                carried = (
                    before.flags.restricted and self._restriction_carried_from(conn, subject_id) is not None
                )
                if before.flags.restricted != restricted or (restricted and carried):
                    changing.append((subject_id, before))
            if not changing:
                state = "restricted" if restricted else "not restricted"
                raise InvalidInput(f"{email} is already {state}")
            uids: list[str] = []
            # Lifting a person's own restriction leaves them restricted while a CRM record of
            # theirs holds another restricted person's data (Art. 18(2)): the restriction then
            # stands, carried from that person, and is lifted with theirs. Checked on the data
            # as it is now, whether or not the carry was recorded when the data arrived (it is
            # not where this person was already restricted then).
            others = (
                set()
                if restricted
                else set(
                    conn.execute(
                        select(subjects.c.id).where(
                            subjects.c.restricted.is_(True), subjects.c.erased_at.is_(None)
                        )
                    ).scalars()
                )
                - set(people)
            )
            still: dict[str, str] = {}
            for subject_id, before in changing:
                reaching = None if restricted else self._restricted_reaching(conn, subject_id, others)
                if reaching is not None:
                    held_by = self._contexts(conn, {reaching})[reaching].uid
                    still[before.uid] = held_by
                    uids.append(before.uid)
                    entry = _restriction_still_carried(
                        held_by, before.uid, subject_id, actor=actor, reason=reason
                    )
                    audit.append(conn, [entry], now)
                    continue
                conn.execute(
                    update(subjects).where(subjects.c.id == subject_id).values(restricted=restricted)
                )
                after = self._contexts(conn, {subject_id})[subject_id]
                uids.append(after.uid)
                records = [
                    AuditRecord(
                        "subject.restricted" if restricted else "subject.restriction_lifted",
                        {"restriction": "art18"},
                        old=before.flags.restricted,
                        new=restricted,
                        rule=Rule.RESTRICTION,
                        source=source,
                        actor=actor,
                        subject_uid=after.uid,
                        subject_id=subject_id,
                        details={"reason": reason},
                    ),
                    *self._refresh(
                        conn,
                        subject_id,
                        list(self.purposes.values()),
                        before,
                        after,
                        now,
                        None,
                        source,
                        actor,
                    ),
                ]
                audit.append(conn, records, now)
                if restricted:
                    self.carry_restriction(
                        conn, {(subject_id, other) for other in self._holders(conn, subject_id)}, now
                    )
                else:
                    self._lift_carried(conn, after.uid, now, source=source, actor=actor)
        log.info("subject.restriction", subject=uids[0], restricted=restricted, still_restricted=len(still))
        result: dict[str, Any] = {"subject": uids[0], "subjects": uids, "restricted": restricted}
        if still:
            # uid -> the restricted person whose data on their CRM records keeps them restricted
            result["still_restricted_by"] = still
        return result

    def carry_restriction(
        self, conn: Connection, pairs: set[tuple[int, int]], now: datetime, *, run_id: str | None = None
    ) -> set[int]:
        """``pairs``: (a person, another person whose CRM record now carries the first one's data:
        the survivor of a merge of their record, a record that took their address). Art. 18:
        while the first is restricted, their data may only be stored, so the record holding it
        must not be processed either: the other person is restricted too, audited as carried
        from the first (their pseudonymous uid), never their data. The people stay apart; the
        carried restriction is lifted with the first one's (``restrict``). Returns the people
        newly restricted. Merges and address changes are rare: nothing is read per record."""
        pairs = {(a, b) for a, b in pairs if a != b}
        if not pairs:
            return set()
        contexts = self._contexts(conn, {a for a, _ in pairs} | {b for _, b in pairs})
        # An erased person keeps their restricted flag, but their data is gone (Art. 17): it
        # restricts no one, as ``_lift_carried`` reads it. A CRM record still showing it (a merge
        # or an address change read after the erasure) must not restrict its person again.
        erased = set(
            conn.execute(
                select(subjects.c.id).where(
                    subjects.c.id.in_(sorted({a for a, _ in pairs})), subjects.c.erased_at.is_not(None)
                )
            ).scalars()
        )
        targets: dict[int, int] = {}
        for a, b in sorted(pairs):
            if a in erased:
                continue
            if contexts[a].flags.restricted and not contexts[b].flags.restricted and b not in targets:
                targets[b] = a
        records: list[AuditRecord] = []
        for b, a in sorted(targets.items()):
            before = contexts[b]
            conn.execute(update(subjects).where(subjects.c.id == b).values(restricted=True))
            after = self._contexts(conn, {b})[b]
            records.append(
                AuditRecord(
                    "subject.restricted",
                    {"restriction": "art18", "carried_from": contexts[a].uid},
                    old=False,
                    new=True,
                    rule=Rule.RESTRICTION,
                    source=RESTRICTION_CARRIED_SOURCE,
                    run_id=run_id,
                    subject_uid=after.uid,
                    subject_id=b,
                )
            )
            records += self._refresh(
                conn,
                b,
                list(self.purposes.values()),
                before,
                after,
                now,
                run_id,
                RESTRICTION_CARRIED_SOURCE,
                None,
            )
        if records:
            audit.append(conn, records, now)
            log.info("subject.restriction_carried", subjects=len(targets))
        return set(targets)

    def _holders(self, conn: Connection, subject_id: int) -> set[int]:
        """The other people whose live CRM records hold this person's data: records that last
        showed one of their addresses (the snapshot's keyed hash, as an erasure finds them; one
        scan of the snapshots, for a rare request) and survivors of merges of their records."""
        hashes = [
            email_hmac(self.erasure_key(), form)
            for value in conn.execute(
                select(subject_identifiers.c.value).where(
                    subject_identifiers.c.subject_id == subject_id, subject_identifiers.c.kind == "email"
                )
            ).scalars()
            for form in email_forms(value)
        ]
        holders: set[int] = set()
        if hashes:
            holders |= set(
                conn.execute(
                    select(crm_links.c.subject_id)
                    .join(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
                    .where(crm_snapshots.c.identity.in_(hashes), crm_links.c.gone_at.is_(None))
                ).scalars()
            )
        merged = conn.execute(
            select(crm_links.c.connector, crm_links.c.object_type, crm_links.c.merged_into).where(
                crm_links.c.subject_id == subject_id, crm_links.c.merged_into.is_not(None)
            )
        ).all()
        for connector, object_type, survivor in merged:
            holders |= set(
                conn.execute(
                    select(crm_links.c.subject_id).where(
                        crm_links.c.connector == connector,
                        crm_links.c.object_type == object_type,
                        crm_links.c.record_id == survivor,
                    )
                ).scalars()
            )
        return holders - {subject_id}

    def _restriction_carried_from(self, conn: Connection, subject_id: int) -> str | None:
        """The uid of the person whose restriction this person's stands on (the last restriction
        entry of their audit trail, read by its subject index), None for their own or none."""
        payload = conn.execute(
            select(audit_entries.c.payload)
            .where(
                audit_entries.c.subject_id == subject_id,
                or_(
                    audit_entries.c.action == "subject.restricted",
                    audit_entries.c.action == "subject.restriction_lifted",
                ),
            )
            .order_by(audit_entries.c.seq.desc())
            .limit(1)
        ).scalar()
        if payload is None:
            return None
        entry = orjson.loads(payload)
        if entry.get("action", "subject.restricted") != "subject.restricted":
            return None
        carried = (entry.get("what") or {}).get("carried_from")
        return str(carried) if carried else None

    def _lift_carried(
        self, conn: Connection, uid: str, now: datetime, *, source: str, actor: str | None
    ) -> None:
        """Lifts the restrictions carried from the person ``uid`` (carry_restriction), where
        that is still what restricts them: their data may be processed again, so may the
        records that hold it, unless another restricted person's data is on them too (then the
        restriction stands, carried from that person). Restricted people are few: their trails
        are read one by one."""
        # An erased person's data is gone: it restricts no one, whatever its flag says.
        restricted = set(
            conn.execute(
                select(subjects.c.id).where(subjects.c.restricted.is_(True), subjects.c.erased_at.is_(None))
            ).scalars()
        )
        carried = [b for b in sorted(restricted) if self._restriction_carried_from(conn, b) == uid]
        records: list[AuditRecord] = []
        lifted: list[int] = []
        for b in carried:
            other = self._restricted_reaching(conn, b, restricted - set(carried))
            before = self._contexts(conn, {b})[b]
            if other is not None:
                records.append(
                    _restriction_still_carried(self._contexts(conn, {other})[other].uid, before.uid, b)
                )
                continue
            conn.execute(update(subjects).where(subjects.c.id == b).values(restricted=False))
            lifted.append(b)
            after = self._contexts(conn, {b})[b]
            records.append(
                AuditRecord(
                    "subject.restriction_lifted",
                    {"restriction": "art18", "carried_from": uid},
                    old=True,
                    new=False,
                    rule=Rule.RESTRICTION,
                    source=source,
                    actor=actor,
                    subject_uid=after.uid,
                    subject_id=b,
                )
            )
            records += self._refresh(
                conn, b, list(self.purposes.values()), before, after, now, None, source, actor
            )
        if records:
            audit.append(conn, records, now)
        for b in lifted:  # and what was carried on from them (each lift ends one restriction)
            self._lift_carried(conn, self._contexts(conn, {b})[b].uid, now, source=source, actor=actor)

    def _restricted_reaching(self, conn: Connection, subject_id: int, restricted: set[int]) -> int | None:
        """A restricted person (of ``restricted``) whose data is on one of this person's live
        CRM records: its last-read address is theirs (keyed hash), or one of their records was
        merged into it. None if none is."""
        restricted = restricted - {subject_id}
        if not restricted:
            return None
        live = conn.execute(
            select(
                crm_links.c.connector,
                crm_links.c.object_type,
                crm_links.c.record_id,
                crm_snapshots.c.identity,
            )
            .outerjoin(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
            .where(crm_links.c.subject_id == subject_id, crm_links.c.gone_at.is_(None))
        ).all()
        shown = {row.identity for row in live if row.identity is not None}
        for other, value in conn.execute(
            select(subject_identifiers.c.subject_id, subject_identifiers.c.value)
            .where(
                subject_identifiers.c.subject_id.in_(sorted(restricted)),
                subject_identifiers.c.kind == "email",
            )
            .order_by(subject_identifiers.c.subject_id)
        ):
            if any(email_hmac(self.erasure_key(), form) in shown for form in email_forms(value)):
                return int(other)
        records = {(row.connector, row.object_type, row.record_id) for row in live}
        for other, connector, object_type, survivor in conn.execute(
            select(
                crm_links.c.subject_id,
                crm_links.c.connector,
                crm_links.c.object_type,
                crm_links.c.merged_into,
            )
            .where(crm_links.c.subject_id.in_(sorted(restricted)), crm_links.c.merged_into.is_not(None))
            .order_by(crm_links.c.subject_id)
        ):
            if (connector, object_type, survivor) in records:
                return int(other)
        return None

    # -- expiry --------------------------------------------------------------------------------

    def expire_due(
        self,
        transaction: Callable[[], AbstractContextManager[Connection]] | None = None,
        *,
        run_id: str | None = None,
        batch_size: int = EXPIRY_BATCH,
        between: Callable[[], None] = lambda: None,
        outcomes: list[RecordOutcome] | None = None,
    ) -> RecordStats:
        """Records an ``expired`` event (its evidence, its audit entries, its change feed entry)
        for every consent granted and past its validity window, ``batch_size`` a transaction of
        ``transaction()`` (by default one of the ledger's own; a sync run passes its write
        transactions, so that the events name the run). ``consentsync ledger expire``, every sync
        run before it decides its pushes, and the daemon every minute call it.

        Each batch is looked up inside its write transaction, under the ledger's writer lock
        (every writer takes it at BEGIN: ledger/engine.py): two callers at once (two connectors'
        runs, the daemon's schedule) expire a consent once, the second finding it no longer due.
        A batch commits whole or not at all, so a process killed midway leaves the rest due, and
        the next call ends where an uninterrupted one would. The lookup is a range of
        ``ix_consent_states_expires_at`` (partial: only the consents that have an expiry), never
        a scan of the ledger; it walks the due ones by key, so a consent its expiry does not move
        is passed once a call, not looked up again forever. A purpose or channel taken out of the
        configuration, or left without ``validity_days``, is passed over (``_expires``).
        ``between`` is called after each batch (a stop requested raises there); ``outcomes``,
        when given, gets each recorded expiry's before and after (a dry run's plan)."""
        transaction = transaction or self.engine.begin
        now = self.clock()
        after: tuple[Any, ...] | None = None
        stats = RecordStats()
        key = (
            consent_states.c.expires_at,
            consent_states.c.subject_id,
            consent_states.c.purpose,
            consent_states.c.channel,
        )
        while True:
            with transaction() as conn:
                query = select(*key, consent_states.c.basis, consent_states.c.summary).where(
                    consent_states.c.status == ConsentStatus.GRANTED.value, consent_states.c.expires_at <= now
                )
                if after is not None:
                    # Each bound as its column's type (the times as the ledger stores them).
                    query = query.where(tuple_(*key) > tuple_(*map(literal, after, (c.type for c in key))))
                due = conn.execute(query.order_by(*key).limit(batch_size)).all()
                if not due:
                    return stats
                # A lapse already on record whose row still reads granted: a ledger written before
                # the reconciler said "expired" for a restricted, erased or objecting person (it
                # decided their state before the clock). Recording it again is a duplicate, which
                # writes no state, so the sweep found it on every call, forever. Its stored status
                # is set to what the evidence says instead, once: nothing the CRMs see changes
                # (the suppression and its rule stay), so there is no event, audit or push.
                candidates: dict[tuple[int, str, str], Summary | None] = {}
                for row in due:
                    data = orjson.loads(row.summary)
                    if not Summary.is_current(data):
                        candidates[(row.subject_id, row.purpose, row.channel)] = None
                    elif data.get("lapsed_at"):  # mostly none: a lapse is recorded once
                        candidates[(row.subject_id, row.purpose, row.channel)] = self._bound(
                            conn, row.purpose, Summary.from_json(data)
                        )
                stale = {k for k, summary in candidates.items() if summary is None}
                folded = {**candidates, **self._refold(conn, stale)} if stale else candidates
                settled = []
                for (subject_id, purpose_key, channel), summary in folded.items():
                    purpose = self.purposes.get(purpose_key)
                    if summary is None or purpose is None or channel not in purpose.channels:
                        continue
                    # The stored status is what the evidence says, whatever suppresses the person
                    # (tests/unit/test_s57_expiry_status.py): no flags or objections needed.
                    state = effective_state(
                        summary, purpose, channel, flags=SubjectFlags(), objections=(), now=now
                    )
                    if state.evidence_status is ConsentStatus.EXPIRED:
                        settled.append({"s": subject_id, "p": purpose_key, "c": channel})
                if settled:
                    conn.execute(
                        update(consent_states)
                        .where(
                            consent_states.c.subject_id == bindparam("s"),
                            consent_states.c.purpose == bindparam("p"),
                            consent_states.c.channel == bindparam("c"),
                            consent_states.c.status == ConsentStatus.GRANTED.value,
                        )
                        .values(status=ConsentStatus.EXPIRED.value),
                        settled,
                    )
                    log.info("expiry.settled", consents=len(settled))
                done = {(item["s"], item["p"], item["c"]) for item in settled}
                requests = [
                    RecordRequest(
                        Identity(subject_id=row.subject_id),
                        Evidence(
                            purpose=row.purpose,
                            channel=row.channel,
                            status=ConsentStatus.EXPIRED,
                            basis=LawfulBasis(row.basis),
                            event_time=row.expires_at,
                            observed_at=now,
                            source=EXPIRY_SOURCE,
                            origin=Origin.SYSTEM,
                            actor="consentsync",
                        ),
                    )
                    for row in due
                    if self._expires(row.purpose, row.channel)
                    and (row.subject_id, row.purpose, row.channel) not in done
                ]
                if requests:
                    batch, recorded = self.record_in(
                        conn, requests, run_id=run_id, keep_outcomes=outcomes is not None
                    )
                    failpoint("sync.expire.recorded")  # a batch recorded, not yet committed
                    stats.add(batch)
                    if outcomes is not None:
                        outcomes += [outcome for outcome in recorded if not outcome.duplicate]
            last = due[-1]
            after = (last.expires_at, last.subject_id, last.purpose, last.channel)
            if len(due) < batch_size:
                return stats
            between()

    def _expires(self, purpose_key: str, channel: str) -> bool:
        """Whether the configuration still gives the consent a validity: a purpose (or channel)
        taken out of it, or left without ``validity_days``, keeps its stored states, and an
        expiry recorded for one would be refused as unknown (every run failing on it) or
        contradict what the state, decided under the configuration, says."""
        purpose = self.purposes.get(purpose_key)
        return purpose is not None and purpose.validity_days is not None and channel in purpose.channels

    def stale_requests(self, older_than_days: int) -> list[dict[str, Any]]:
        """Consents requested and still unanswered after ``older_than_days``: people to chase.

        Only people who may be contacted about it (rule 6): never an erased person, a restricted
        one (Art. 18) or one whose state for that purpose and channel a subject-wide rule decides
        (an objection, an erasure suppression, ...); for a purpose serving direct marketing only
        people we may e-mail marketing on another ground; and never a double opt-in sign-up
        nobody confirmed (``chaseable_in``)."""
        try:
            cutoff = self.clock() - timedelta(days=older_than_days)
        except OverflowError:
            return []  # further back than the calendar goes: nothing is that old
        with self.engine.connect() as conn:
            candidates = conn.execute(
                _with_subject(consent_states)
                .where(
                    STATE_IS_REQUESTED,
                    consent_states.c.since <= cutoff,
                    subjects.c.erased_at.is_(None),
                    subjects.c.restricted.is_(False),
                )
                .order_by(consent_states.c.since, consent_states.c.subject_id)
            ).all()
            keys = [(row.subject_id, row.purpose, row.channel) for row in candidates]
            chased = self.chaseable_in(conn, keys)
        rows = [row for row, key in zip(candidates, keys, strict=True) if key in chased]
        return [
            {
                "subject": row.uid,
                "email": row.email,
                "purpose": row.purpose,
                "channel": row.channel,
                "requested_since": iso(row.since),
            }
            for row in rows
        ]

    def chaseable_in(
        self, conn: Connection, requested: Sequence[tuple[int, str, str]]
    ) -> set[tuple[int, str, str]]:
        """Those of ``requested`` (subject id, purpose, channel: stored as "requested") whose person
        may be chased about it now (docs/policy.md rule 6, "Reports: who may be chased"):

        - the evidence alone decides the state, still "requested" (``CHASEABLE_RULES``): no
          restriction, erasure suppression or objection binds it, and no rule added later;
        - for a purpose serving direct marketing (``serves_direct_marketing``), the ledger lets us
          e-mail the person marketing on another ground (``may_email_marketing``, the test
          ``hub requests`` asks by): a message asking for marketing consent is itself direct
          marketing (PECR reg. 22), and the request pending is no ground;
        - it is no double opt-in sign-up nobody confirmed, open or lapsed (``hub lapse``): the
          sign-up is not a request we sent, the address may have been typed by someone else, and
          only the mailed link confirms it. A request recorded after the sign-up (by event time,
          beyond the clock skew) is one again.

        A purpose or channel no longer configured is asked for by no one."""
        ids = sorted({subject_id for subject_id, _purpose, _channel in requested})
        if not ids:
            return set()
        states = self.effective_states_in(conn, ids)
        signed_up: dict[tuple[int, str, str], datetime] = {}
        for chunk in chunks(ids, 500):
            for subject_id, purpose_key, channel, at in conn.execute(
                select(
                    confirmations.c.subject_id,
                    confirmations.c.purpose,
                    confirmations.c.channel,
                    func.max(confirmations.c.requested_at),
                )
                .where(
                    confirmations.c.subject_id.in_(chunk),
                    confirmations.c.kind.in_(SIGN_UP_CONFIRMATIONS),
                    confirmations.c.confirmed_at.is_(None),
                )
                .group_by(confirmations.c.subject_id, confirmations.c.purpose, confirmations.c.channel)
            ):
                signed_up[(subject_id, purpose_key, channel)] = as_utc(at)
        found: set[tuple[int, str, str]] = set()
        for key in requested:
            subject_id, purpose_key, channel = key
            purpose = self.purposes.get(purpose_key)
            held = states.get(subject_id, {})
            state = held.get((purpose_key, channel))
            if purpose is None or state is None:
                continue  # no longer configured: nothing to ask for
            if state.status is not ConsentStatus.REQUESTED or state.rule not in CHASEABLE_RULES:
                continue
            sign_up = signed_up.get(key)
            skew = self.policy.clock_skew
            if sign_up is not None and (state.since is None or state.since <= sign_up + skew):
                continue  # the state is a sign-up's nobody confirmed: no request of ours
            if serves_direct_marketing(purpose) and not may_email_marketing(held, self.purposes):
                continue
            found.add(key)
        return found

    # -- reading -------------------------------------------------------------------------------

    def audit_read(
        self, uid: str, action: str, *, actor: str, source: str, what: dict[str, Any] | None = None
    ) -> None:
        """Writes down a read of one person's record (GDPR Art. 30, accountability): who, when,
        how (``subject.viewed``, ``subject.exported``), naming the person by uid only."""
        with self.engine.begin() as conn:
            audit.append(
                conn,
                [AuditRecord(action, what or {}, source=source, actor=actor, subject_uid=uid)],
                self.clock(),
            )

    def subject_view(self, email: str) -> dict[str, Any]:
        """Everything the ledger holds about one person, effective state recomputed now."""
        now = self.clock()
        with reading(self.engine) as conn:
            subject_id = _subject_id_by_email(conn, email)
            if subject_id is None:
                erased = self._erased_subject_uids(conn, email)
                hint = " (it was erased: only its suppression entry remains)" if erased else ""
                raise NotFound(f"no subject with email {email!r} in the ledger{hint}")
            context = self._contexts(conn, {subject_id})[subject_id]
            subject = conn.execute(select(subjects).where(subjects.c.id == subject_id)).one()
            effective = self.effective_states_in(conn, [subject_id])[subject_id]
            states = [state.as_dict() for state in effective.values()]
            history = [_event_view(row) for row in _rows_of_subject(conn, consent_events, subject_id)]
            # Each event's notice text by its content hash: the one it recorded as shown (its
            # language), else the version's first text, and only one in effect by the event's
            # time. The receipts' rule (``notice_texts.text_shown``): a receipt and the export
            # name the same text for an event (Art. 7(1): what the person was shown).
            versions = sorted({item["notice_version"] for item in history if item["notice_version"]})
            if versions:
                texts: dict[tuple[str, str], list[Notice]] = {}
                for row in conn.execute(
                    select(notices).where(notices.c.version.in_(versions)).order_by(notices.c.id)
                ):
                    texts.setdefault((row.purpose, row.version), []).append(notice_of(row))
                for item in history:
                    at = item["event_time"] or item["recorded_at"]
                    found = text_shown(
                        texts.get((item["purpose"], item["notice_version"]), []),
                        _parsed(at) if at else None,
                        item["notice_language"],
                    )
                    item["notice_sha256"] = found.sha256 if found is not None else None
                    item["notice_language"] = found.language if found is not None else None
            links = [
                {
                    "connector": row.connector,
                    "object": row.object_type,
                    "record_id": row.record_id,
                    "linked_at": iso(row.linked_at),
                    # live, gone (deleted in the CRM) or merged (into merged_into)
                    "status": "live" if row.gone_at is None else ("merged" if row.merged_into else "gone"),
                    "gone_at": iso(row.gone_at) if row.gone_at else None,
                    "merged_into": row.merged_into,
                }
                for row in _rows_of_subject(conn, crm_links, subject_id)
            ]
            subject_objections = [
                _objection_view(row)
                for row in _rows_of_subject(conn, objections, subject_id, _with_subject(objections))
            ]
            # Every identifier the person is held under (Art. 15: a CRM record that took a new
            # address keeps the person, who then holds both), the latest first, each with when
            # they left it (docs/policy.md, "An address a person no longer holds"; None: held).
            held = subject_identifiers.c
            identifiers = [
                {"identifier_kind": row.kind, "identifier": row.value, "left_at": iso(row.left_at)}
                for row in conn.execute(
                    select(held.kind, held.value, held.left_at)
                    .where(subject_identifiers.c.subject_id == subject_id)
                    .order_by(subject_identifiers.c.id.desc())
                )
            ]
        return {
            "subject": context.uid,
            "email": email,
            "identifiers": identifiers,
            "created_at": iso(subject.created_at),
            "suppressed_by_erasure": context.flags.suppressed_since is not None,
            "restricted": context.flags.restricted,
            "as_of": iso(now),
            "purposes": states,
            "history": history,
            "objections": subject_objections,
            "crm_records": links,
        }

    def effective_states_in(
        self, conn: Connection, subject_ids: Sequence[int], *, warm: WarmSubjects | None = None
    ) -> dict[int, dict[tuple[str, str], EffectiveState]]:
        """Every configured (purpose, channel) of each subject, as of now: what a CRM must show.
        ``warm``: what the caller's committed transactions know about these people (a sync run's
        pages), read instead of the ledger's rows."""
        now = self.clock()
        ids = set(subject_ids)
        contexts, summaries = self._known(conn, ids, warm)
        keys = [(purpose, channel) for purpose in self.purposes.values() for channel in purpose.channels]
        held: dict[int, list[tuple[str, str]]] = {}
        for subject_id, purpose_key, channel in summaries:
            held.setdefault(subject_id, []).append((purpose_key, channel))
        # Without evidence or objections, a key's state follows from its purpose, its channel and
        # the person's flags alone (effective_state is pure): most keys of most people share one,
        # so each set of flags has its states worked out once, and a person's own evidence only
        # replaces the keys it is about.
        blank: dict[SubjectFlags, dict[tuple[str, str], EffectiveState]] = {}

        def decided(subject_id: int, purpose: Purpose, channel: str) -> EffectiveState:
            context = contexts[subject_id]
            return effective_state(
                summaries.get((subject_id, purpose.key, channel)) or NO_EVIDENCE,
                purpose,
                channel,
                flags=context.flags,
                objections=context.objections,
                now=now,
            )

        def states_of(subject_id: int) -> dict[tuple[str, str], EffectiveState]:
            context = contexts[subject_id]
            if context.objections:
                return {
                    (purpose.key, channel): decided(subject_id, purpose, channel) for purpose, channel in keys
                }
            shared = blank.get(context.flags)
            if shared is None:
                shared = blank[context.flags] = {
                    (purpose.key, channel): effective_state(
                        NO_EVIDENCE,
                        purpose,
                        channel,
                        flags=context.flags,
                        objections=context.objections,
                        now=now,
                    )
                    for purpose, channel in keys
                }
            states = dict(shared)
            for key in held.get(subject_id, ()):
                if key in states:
                    states[key] = decided(subject_id, self.purposes[key[0]], key[1])
            return states

        return {subject_id: states_of(subject_id) for subject_id in ids}

    def decision_for(self, email: str, purpose_key: str, channel: str) -> tuple[str | None, EffectiveState]:
        """May this address be contacted for this purpose on this channel now, and under which
        rule: the person's uid (None for someone the ledger does not know) and effective state.

        An erased address is recognised by its keyed hash and stays suppressed, whoever is found
        under another of its forms (unless they came back on its entry); an unknown one
        gets what its purpose says with no evidence (consent-based: not without consent). The hot
        path of the capture API: three prepared reads on a connection that takes no write lock."""
        purpose = self._purpose(purpose_key)
        if channel not in purpose.channels:
            raise InvalidInput(
                f"channel {channel!r} is not one of purpose {purpose.key!r}'s: {', '.join(purpose.channels)}"
            )
        now = self.clock()
        summary: Summary | None = None
        found: list[ObjectionFact] = []
        forms = email_forms(email)
        hashed = self.keyed_hasher()  # the key read once for every form
        digests = [hashed(form) for form in forms]
        with reading(self.engine) as conn:
            person = None
            for form in forms:  # the one form first, then an older version's
                rows = conn.execute(_DECISION_PERSON, {"email": form, "digests": digests}).all()
                # Its folded form only where a folding CRM's record brought it (``holds_for``).
                if rows and holds_for(email, form, rows[0].folds_astral_to):
                    person = rows[0]
                    break
            if person is not None:
                uid: str | None = person.uid
                suppressed_since = person.suppressed_since
                # The address is on the suppression list but this person does not stand on that
                # entry (held under another form of it, not erased with it): the address's entry
                # decides. One who came back after the erasure has it as their own: theirs does.
                # Each from the address's latest erasure (``last_erased_at``), and the later of
                # two: a consent lifts the suppression only if newer than both.
                entries = {row.entry_id: row.entry_at for row in rows if row.entry_id is not None}
                if entries and person.suppression_id not in entries:
                    since = max(entries.values())
                    suppressed_since = since if suppressed_since is None else max(since, suppressed_since)
                flags = SubjectFlags(
                    suppressed_since=suppressed_since,
                    suppression_reason="erased" if suppressed_since else None,
                    restricted=person.restricted,
                )
                stored = conn.execute(
                    _DECISION_SUMMARY, {"subject_id": person.id, "purpose": purpose.key, "channel": channel}
                ).scalar()
                if stored is not None:
                    data = orjson.loads(stored)
                    summary = Summary.from_json(data) if Summary.is_current(data) else None
                    if summary is not None and _unbound(summary):  # an older version's: as recorded
                        summary = self._bound(conn, purpose.key, summary)
                    if summary is None:  # written by an older fold: refold as the ledger does
                        summary = self._load_summaries(conn, {person.id}).get(
                            (person.id, purpose.key, channel)
                        )
                found = [
                    ObjectionFact(
                        row.purpose, row.direct_marketing, ObjectionStatus(row.status), row.raised_at
                    )
                    for row in conn.execute(_DECISION_OBJECTIONS, {"subject_id": person.id})
                ]
            else:
                uid = None
                erased_at = max(  # the address's latest erasure, under whichever form
                    (
                        at
                        for digest in digests
                        if (at := conn.execute(_DECISION_ERASED, {"digest": digest}).scalar()) is not None
                    ),
                    default=None,
                )
                flags = SubjectFlags(
                    suppressed_since=erased_at, suppression_reason="erased" if erased_at else None
                )
        state = effective_state(
            summary or NO_EVIDENCE, purpose, channel, flags=flags, objections=found, now=now
        )
        return uid, state

    def email_of(self, uid: str) -> str | None:
        """The live email address of the subject with this uid, the latest they were known by
        (None once erased or unknown)."""
        with reading(self.engine) as conn:
            return conn.execute(
                select(subject_identifiers.c.value)
                .join(subjects, subjects.c.id == subject_identifiers.c.subject_id)
                .where(subjects.c.uid == uid, subject_identifiers.c.kind == "email")
                # The address the person was last known by: a CRM record that took a new one
                # keeps the old beside it, and mail goes where they are now.
                .order_by(subject_identifiers.c.id.desc())
            ).scalar()

    def subject_uids_for_email(self, email: str) -> list[str]:
        """The live subject with this email, and any erased one recognised by its keyed hash."""
        with reading(self.engine) as conn:
            uids = list(
                conn.execute(
                    select(subjects.c.uid)
                    .join(subject_identifiers, subject_identifiers.c.subject_id == subjects.c.id)
                    .where(holding(email))  # its folded form only where a folding CRM brought it
                ).scalars()
            )
            return uids + self._erased_subject_uids(conn, email)

    def _erased_subject_uids(self, conn: Connection, email: str) -> list[str]:
        digests = [email_hmac(self.erasure_key(), form) for form in email_forms(email)]
        return list(
            conn.execute(
                select(subjects.c.uid)
                .join(suppressions, suppressions.c.id == subjects.c.suppression_id)
                .where(suppressions.c.email_hmac.in_(digests))
            ).scalars()
        )

    # -- internals -----------------------------------------------------------------------------

    def _purpose(self, key: str) -> Purpose:
        purpose = self.purposes.get(key)
        if purpose is None:
            raise InvalidInput(f"unknown purpose {shown(key)}: configured are {', '.join(self.purposes)}")
        return purpose

    def _affected_purposes(self, purpose: Purpose, direct_marketing: bool) -> list[Purpose]:
        """The purposes an objection to ``purpose`` binds, to be decided again: to direct
        marketing, every purpose that serves it (Art. 21(3), ``serves_direct_marketing``:
        profiling for it and marketing under the ePrivacy rules too), as the reconciler reads it."""
        if not direct_marketing:
            return [purpose]
        return [purpose] + [p for p in self.purposes.values() if serves_direct_marketing(p) and p != purpose]

    def _known(
        self, conn: Connection, subject_ids: set[int], warm: WarmSubjects | None
    ) -> tuple[dict[int, _SubjectContext], dict[tuple[int, str, str], Summary]]:
        """The subjects' contexts and consent summaries: from ``warm`` where it knows them, else
        read from the ledger."""
        cold = subject_ids if warm is None else {s for s in subject_ids if not warm.knows(s)}
        contexts = self._contexts(conn, cold)
        summaries = self._load_summaries(conn, cold)
        if warm is not None:
            for subject_id in subject_ids - cold:
                contexts[subject_id] = warm.contexts[subject_id]
                for (purpose, channel), summary in warm.summaries[subject_id].items():
                    summaries[(subject_id, purpose, channel)] = summary
        return contexts, summaries

    def _contexts(self, conn: Connection, subject_ids: set[int]) -> dict[int, _SubjectContext]:
        """Each person's flags and objections. Looked up as plain tuples first (``select_in``):
        most people have neither a suppression nor an objection, and a Core statement's
        expanded IN list and typed rows cost more than the lookup; the few rows that have one
        are read through Core, for their typed values."""
        contexts: dict[int, _SubjectContext] = {}
        suppressed: dict[int, list[int]] = {}
        for subject_id, uid, restricted, suppression_id in select_in(
            conn, subjects, ("id", "uid", "restricted", "suppression_id"), "id", sorted(subject_ids)
        ):
            contexts[subject_id] = _SubjectContext(uid=uid, flags=SubjectFlags(restricted=bool(restricted)))
            if suppression_id is not None:
                suppressed.setdefault(suppression_id, []).append(subject_id)
        for chunk in chunks(sorted(s for people in suppressed.values() for s in people)):
            since = select(
                subjects.c.id, subjects.c.erased_at, last_erased_at(suppressions).label("last_erased_at")
            ).join(suppressions, suppressions.c.id == subjects.c.suppression_id)
            for row in conn.execute(since.where(one_of(conn, subjects.c.id, chunk))):
                # Suppressed from the address's latest erasure, not the entry's first (an erasure
                # of an address erased before keeps its entry): a person who came back, was erased
                # again, and whose address someone came back with once more, is lifted only by a
                # consent newer than the second erasure; one dated between the two never does.
                # A person erased themselves is suppressed from their own erasure at the least.
                erased_at = row.erased_at
                context = contexts[row.id]
                context.flags = SubjectFlags(
                    suppressed_since=(
                        row.last_erased_at if erased_at is None else max(row.last_erased_at, erased_at)
                    ),
                    suppression_reason="erased",
                    restricted=context.flags.restricted,
                )
        objected = [
            objection_id
            for objection_id, status in select_in(
                conn, objections, ("id", "status"), "subject_id", sorted(contexts)
            )
            if status != ObjectionStatus.REJECTED.value
        ]
        for chunk in chunks(sorted(objected)):
            for row in conn.execute(select(objections).where(one_of(conn, objections.c.id, chunk))):
                contexts[row.subject_id].objections.append(
                    ObjectionFact(
                        purpose=row.purpose,
                        direct_marketing=row.direct_marketing,
                        status=ObjectionStatus(row.status),
                        raised_at=row.raised_at,
                    )
                )
        return contexts

    def _load_summaries(self, conn: Connection, subject_ids: set[int]) -> dict[tuple[int, str, str], Summary]:
        columns = ("subject_id", "purpose", "channel", "summary")
        loaded: dict[tuple[int, str, str], Summary] = {}
        stale: set[tuple[int, str, str]] = set()
        for subject_id, purpose, channel, summary in select_in(
            conn, consent_states, columns, "subject_id", sorted(subject_ids)
        ):
            data = orjson.loads(summary)
            if Summary.is_current(data):
                held = Summary.from_json(data)
                # A value an older version (or one still running) recorded without a basis is
                # read under the default it was recorded under, as ``bind_unstated_bases`` binds.
                loaded[(subject_id, purpose, channel)] = (
                    self._bound(conn, purpose, held) if _unbound(held) else held
                )
            else:
                stale.add((subject_id, purpose, channel))
        if stale:
            loaded.update(self._refold(conn, stale))
        return loaded

    def _refold(
        self, conn: Connection, keys: set[tuple[int, str, str]]
    ) -> dict[tuple[int, str, str], Summary]:
        """Summaries written by an earlier version of the fold, folded again from the events
        (the events are the record; a summary is only their digest). The next write of each key
        stores the new one."""
        evidence: dict[tuple[int, str, str], list[Evidence]] = {key: [] for key in keys}
        for chunk in chunks(sorted({key[0] for key in keys})):
            ours = one_of(conn, consent_events.c.subject_id, chunk)
            for row in conn.execute(select(consent_events).where(ours)):
                key = (row.subject_id, row.purpose, row.channel)
                if key in evidence:
                    evidence[key].append(_event_evidence(row))
        log.info("summaries.refolded", keys=len(keys))
        # Folded from the events, which state no basis where none was given: each such value is
        # bound again to the default in force when it was recorded (``_bound``).
        return {
            key: self._bound(conn, key[1], summarise(items, self.policy)) for key, items in evidence.items()
        }

    def _known_fingerprints(
        self, conn: Connection, subject_ids: Sequence[int], evidence: Sequence[Evidence]
    ) -> set[tuple[int, str]]:
        # By subject: the unique key (subject_id, fingerprint) is the index that serves this.
        wanted = {e.fingerprint() for e in evidence}
        ids = sorted(set(subject_ids))
        rows = select_in(conn, consent_events, ("subject_id", "fingerprint"), "subject_id", ids)
        return {(subject_id, fp) for subject_id, fp in rows if fp in wanted}

    def _store_states(
        self,
        conn: Connection,
        states: dict[tuple[int, str, str], tuple[Summary, EffectiveState]],
        now: datetime,
        to_db: Callable[[datetime | None], Any] | None = None,
    ) -> None:
        """Upserts current-state rows. status, basis, since and expires_at are what the evidence
        says (so that the expiry sweep and the stale-request report find them however long ago
        they were recorded); suppressed and rule are the effective values as of ``now``."""
        if not states:
            return
        to_db = to_db or time_writer(conn)
        rows = []
        for (subject_id, purpose, channel), (summary, effective) in states.items():
            rows.append(
                (
                    subject_id,
                    purpose,
                    channel,
                    canonical_json(summary.to_json()),
                    (effective.evidence_status or effective.status)._value_,
                    effective.basis._value_,
                    effective.suppressed,
                    effective.rule,
                    to_db(effective.since),
                    to_db(effective.expires_at),
                    to_db(now),
                )
            )
        upsert_rows(conn, consent_states, STATE_COLUMNS, _STATE_KEY, rows)

    def _refresh(
        self,
        conn: Connection,
        subject_id: int,
        affected: Sequence[Purpose],
        before: _SubjectContext,
        after: _SubjectContext,
        now: datetime,
        run_id: str | None,
        source: str,
        actor: str | None,
    ) -> list[AuditRecord]:
        """Recomputes the effective states a subject-wide change touches; audits each change."""
        summaries = self._load_summaries(conn, {subject_id})
        changed: dict[tuple[int, str, str], tuple[Summary, EffectiveState]] = {}
        rules_changed = False
        records: list[AuditRecord] = []
        for purpose in affected:
            for channel in purpose.channels:
                key = (subject_id, purpose.key, channel)
                summary = summaries.get(key, NO_EVIDENCE)
                old, new = (
                    effective_state(
                        summary,
                        purpose,
                        channel,
                        flags=ctx.flags,
                        objections=ctx.objections,
                        now=now,
                    )
                    for ctx in (before, after)
                )
                # A new deciding rule matters to the CRMs even where the state reads the same: an
                # objection where there was merely no consent is pushed as a no (mapping push cases).
                same_rule = old.rule == new.rule
                if _state_tuple(old) == _state_tuple(new) and same_rule and key in summaries:
                    continue
                changed[key] = (summary, new)
                rules_changed = rules_changed or not same_rule
                if _state_tuple(old) != _state_tuple(new):
                    records.append(
                        AuditRecord(
                            "state.changed",
                            {"purpose": purpose.key, "channel": channel},
                            old=_state_tuple_json(old),
                            new=_state_tuple_json(new),
                            rule=new.rule,
                            source=source,
                            actor=actor,
                            run_id=run_id,
                            subject_uid=after.uid,
                            subject_id=subject_id,
                        )
                    )
        self._store_states(conn, changed, now)
        if records or rules_changed:
            self._announce(conn, {subject_id}, now)
        return records

    def _announce(self, conn: Connection, subject_ids: set[int], now: datetime) -> None:
        """Appends the subjects whose effective state changed to the change feed connectors follow.
        Always after this transaction's other writes: on PostgreSQL it then holds a transaction id
        before it takes feed ids, which the readers' gap tracking relies on (``sync.feed``)."""
        insert_rows(
            conn,
            state_changes,
            ("subject_id", "created_at"),
            [(s, db_time(conn, now)) for s in sorted(subject_ids)],
        )


def _binding_entries(conn: Connection, people: dict[int, str]) -> dict[int, list[tuple[int, str]]]:
    """The entries that bind or unbind identifiers of ``people`` (id: uid), as (seq, payload) in
    chain order for each: by the person's id, and by uid those written without it (before
    migration 0013, or before a downgrade past it dropped the column). For the one-time step
    (``Ledger.bind_identifiers``): a read of these people's entries by the two indexes."""
    entries = audit_entries.c
    actions = entries.action.in_((*BINDING_ACTIONS, *UNBINDING_ACTIONS))
    by_uid = {uid: subject_id for subject_id, uid in people.items()}
    found: dict[int, list[tuple[int, str]]] = {}
    linked = select(entries.subject_id, entries.seq, entries.payload).where(
        one_of(conn, entries.subject_id, sorted(people)), actions
    )
    unlinked = select(entries.subject_uid, entries.seq, entries.payload).where(
        entries.subject_id.is_(None), one_of(conn, entries.subject_uid, sorted(by_uid)), actions
    )
    for subject_id, seq, payload in conn.execute(linked):
        found.setdefault(subject_id, []).append((seq, payload))
    for uid, seq, payload in conn.execute(unlinked):
        found.setdefault(by_uid[uid], []).append((seq, payload))
    return {subject_id: sorted(said) for subject_id, said in found.items()}


# A purpose's default bases by the chain: the moments each took effect, the bases, and the one
# before the first (``Ledger._default_basis_at``).
_Defaults = tuple[list[datetime], list[LawfulBasis], LawfulBasis]


class _DefaultsRead(NamedTuple):
    """``Ledger._defaults_now``'s cache, replaced whole (never changed in place): the defaults,
    the purposes' rows they were read with, and the transaction that last looked (weakly)."""

    defaults: dict[str, _Defaults]
    rows: tuple[tuple[Any, ...], ...]
    looked_in: weakref.ReferenceType[Any] | None


def _defaults_in_force(conn: Connection) -> dict[str, _Defaults]:
    """Each purpose's default basis over time, from the chain's ``purpose.configured`` entries
    (found through the index of the entries that name no person), ordered by their times, which
    are what a value's observation is compared with (in chain order where two are equal); for a
    purpose the chain names in none, its stored configuration."""
    entries = audit_entries.c
    configured: dict[str, list[tuple[datetime, int, LawfulBasis | None, LawfulBasis]]] = {}
    for seq, at, text in conn.execute(
        select(entries.seq, entries.at, entries.payload).where(
            entries.subject_id.is_(None),
            entries.subject_uid.is_(None),
            entries.action == "purpose.configured",
        )
    ):
        payload = orjson.loads(text)
        what, old, new = payload.get("what"), payload.get("old"), payload.get("new")
        if not (isinstance(what, dict) and isinstance(new, dict)):
            continue
        basis = _basis_or_none(new.get("default_basis"))
        if basis is not None:
            before = _basis_or_none(old.get("default_basis")) if isinstance(old, dict) else None
            configured.setdefault(str(what.get("purpose")), []).append((as_utc(at), seq, before, basis))
    found: dict[str, _Defaults] = {}
    for purpose_key, changes in configured.items():
        changes.sort(key=lambda change: change[:2])
        # Before the first: the default it replaced, or (the purpose added then) the one it set.
        first_before, first = changes[0][2], changes[0][3]
        found[purpose_key] = ([c[0] for c in changes], [c[3] for c in changes], first_before or first)
    for key, default in conn.execute(select(purposes_table.c.key, purposes_table.c.default_basis)):
        if key not in found and (basis := _basis_or_none(default)) is not None:
            found[key] = ([], [], basis)
    return found


def _basis_or_none(value: object) -> LawfulBasis | None:
    try:
        return LawfulBasis(value) if isinstance(value, str) else None
    except ValueError:  # not a basis: no configuration this version wrote
        return None


def _bound_elsewhere(summary: Summary, purpose: Purpose | None) -> bool:
    """Whether a value of ``summary`` is bound to another basis than ``purpose``'s default."""
    if purpose is None:
        return False
    default = purpose.default_basis
    return any(
        value is not None and value.bound is not None and value.bound is not default
        for value in (summary.latest, summary.restriction)
    )


def _unbound_value(value: Ranked | None) -> bool:
    """A value that states no basis and was not bound to one when recorded (``Ranked.bound``)."""
    return value is not None and value.basis is None and value.bound is None


def _unbound(summary: Summary) -> bool:
    """Whether ``summary`` holds a value to bind (``Ledger._bound``): checked for every summary
    read, so four attribute reads and nothing else where there is none."""
    latest, restriction = summary.latest, summary.restriction
    return (latest is not None and latest.basis is None and latest.bound is None) or (
        restriction is not None and restriction.basis is None and restriction.bound is None
    )


def _resolve(resolver: SubjectResolver, identities: list[Identity], warm: WarmSubjects | None) -> list[int]:
    """Subject ids for ``identities``: emails this call already committed come from ``warm``,
    everything else (CRM records, new people) goes through the resolver."""
    if warm is None or not warm.emails:
        return resolver.resolve(identities)
    known: list[int | None] = [
        warm.emails.get(i.email) if i.email and i.link is None and i.subject_id is None else None
        for i in identities
    ]
    rest = [i for i, subject_id in zip(identities, known, strict=True) if subject_id is None]
    found = iter(resolver.resolve(rest) if rest else [])
    return [subject_id if subject_id is not None else next(found) for subject_id in known]


def _parsed(moment: str) -> datetime:
    """A time as a view writes it (``iso``: UTC, ending in Z)."""
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def _not_after_observation(evidence: Evidence) -> Evidence:
    """No one confirms after consentsync learned of it: a double opt-in time inside the allowed
    clock skew but later than its observation is recorded as the observation time. The event
    time is recorded as stated (Art. 7(1)); the reconciler counts a grant stated ahead from its
    observation and a no as late as it says (``Policy.credible_time``), so that where the order
    of the two is in doubt the no stands (black-box finding bb61 F3), and a value read again
    after its stated time is the same value (its fingerprint), not a second one that a no given
    in between would lose to (session 61 review)."""
    observed, double_opt_in_at = evidence.observed_at, evidence.double_opt_in_at
    if double_opt_in_at is None or double_opt_in_at <= observed:
        return evidence
    return replace(evidence, double_opt_in_at=observed)


ERASED_TEXT = "(redacted: the person was erased, Art. 17)"
# The capture API's idempotency records (capture_requests, hub/capture.py): a client's
# Idempotency-Key is stored as this prefix and its keyed hash, never as sent (a client may put
# the person's address in it). A row without the prefix was written by an older version.
HASHED_IDEMPOTENCY_KEY = "hmac-sha256:"
# What an idempotency record's key and digest are keyed hashes under (capture_request_hashers):
# keys derived from the erasure key (as hub/links.py derives its signing key), one for each, so
# that neither matches a suppression entry's hash of the same text, nor the other.
IDEMPOTENCY_KEY_LABEL = "consentsync/capture-requests/idempotency-key/v1"
REQUEST_DIGEST_LABEL = "consentsync/capture-requests/request/v1"
# An erased person's idempotency record, closed (``_close_capture_requests``): the status a retry
# of its key is answered with (410), the answer it kept gone.
ERASED_REQUEST_STATUS = 410
ERASED_REQUEST = '{"erased":true}'


def _redact_operational_text(conn: Connection, subject_id: int) -> int:
    """Error texts kept about an erased person's CRM records (a quarantine reason, a CRM's answer
    to a push) may quote what the CRM holds, their address or name included: they go with the
    person. The rows stay (ops see that something was quarantined or refused, not what)."""
    links = select(crm_links.c.connector, crm_links.c.object_type, crm_links.c.record_id).where(
        crm_links.c.subject_id == subject_id
    )
    redacted = 0
    for link in conn.execute(links).all():
        record = CrmLink(link.connector, link.object_type, link.record_id)
        redacted += (
            conn.execute(
                update(quarantine)
                .where(record.rows_in(quarantine), quarantine.c.reason != ERASED_TEXT)
                .values(reason=ERASED_TEXT)
            ).rowcount
            or 0
        )
    redacted += (
        conn.execute(
            update(outbox)
            .where(outbox.c.subject_id == subject_id, outbox.c.last_error.is_not(None))
            .where(outbox.c.last_error != ERASED_TEXT)
            .values(last_error=ERASED_TEXT)
        ).rowcount
        or 0
    )
    return redacted


def _close_capture_requests(conn: Connection, uid: str, key_hash: Callable[[str], str]) -> int:
    """The capture API's idempotency records whose kept answer names an erased person (by their
    uid: a batch's answer names each person it recorded). The answer goes, and so does the
    request's keyed digest; the key's keyed hash stays until the record expires, so that a
    retry of the request is refused (``ERASED_REQUEST_STATUS``), not run again: run again, a
    stale sign-up would bring the person back, dated now. A record an older version wrote (its
    key as sent: it may hold the address) is closed too, under its key's keyed hash
    (``key_hash``, ``capture_request_hashers``) as this version stores keys: deleted, its key's
    retry would run again until the hub's upkeep (``Hub.forget_old_requests``) had keyed it."""
    # Found by a scan: the records live a day (hub/capture.py, IDEMPOTENCY_WINDOW), and a uid
    # is a uuid (no LIKE wildcard in it), quoted in the answer's JSON.
    naming = capture_requests.c.response.like(f'%"{uid}"%')
    plain = ~capture_requests.c.idempotency_key.startswith(HASHED_IDEMPOTENCY_KEY, autoescape=True)
    older = conn.execute(
        select(capture_requests.c.id, capture_requests.c.key_id, capture_requests.c.idempotency_key).where(
            naming, plain
        )
    ).all()
    gone = 0
    for row in older:
        hashed = HASHED_IDEMPOTENCY_KEY + key_hash(row.idempotency_key)
        taken = conn.execute(
            select(capture_requests.c.id).where(
                capture_requests.c.key_id == row.key_id, capture_requests.c.idempotency_key == hashed
            )
        ).first()
        mine = capture_requests.c.id == row.id
        if taken is not None:
            # The key's record as this version writes it stands for the key (closed below where
            # its answer names the person): the key as sent goes.
            gone += conn.execute(delete(capture_requests).where(mine)).rowcount or 0
        else:
            conn.execute(update(capture_requests).where(mine).values(idempotency_key=hashed))
    closed = (
        conn.execute(
            update(capture_requests)
            .where(naming)
            .values(status_code=ERASED_REQUEST_STATUS, request_sha256="", response=ERASED_REQUEST)
        ).rowcount
        or 0
    )
    return gone + closed


def capture_request_hashers(erasure_key: bytes) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """The keyed hashes of an idempotency record's Idempotency-Key and of its request's digest:
    under keys derived from the erasure key (``IDEMPOTENCY_KEY_LABEL``, ``REQUEST_DIGEST_LABEL``).
    The one derivation the capture API (``Hub._request_hashers``) and an erasure
    (``_close_capture_requests``) key records by."""
    derive = keyed_hasher(erasure_key)
    return (
        keyed_hasher(derive(IDEMPOTENCY_KEY_LABEL).encode("ascii")),
        keyed_hasher(derive(REQUEST_DIGEST_LABEL).encode("ascii")),
    )


def lifts_erasure(policy: Policy, evidence: Evidence, since: datetime) -> bool:
    """Whether ``evidence`` (a grant as captured) lifts the suppression of an address erased at
    ``since``, as the ledger reads it (``effective_state``): a new consent (``reverses_sticky``:
    a trusted capture source's, on consent, evidenced) whose credible time is after the erasure.
    The one rule ``Ledger.record`` and the capture API (``Hub._lifts``) refuse grants by."""
    moment = policy.credible_time(evidence)
    return policy.reverses_sticky(evidence) and moment is not None and moment > since


# The confirmations a double opt-in sign-up makes (hub/capture.py: its link, and the link whose
# sign-up the person disowned).
SIGN_UP_CONFIRMATIONS = ("double_opt_in", "disowned")


def binding_by_chain_from(conn: Connection) -> int | None:
    """The seq of the chain's first ``BINDING_BY_CHAIN`` entry (``Ledger.mark_binding_by_chain``):
    None on a ledger no version binding by the chain has opened for writing. By the index of the
    entries naming no person."""
    return conn.execute(
        select(func.min(audit_entries.c.seq)).where(
            audit_entries.c.subject_id.is_(None),
            audit_entries.c.subject_uid.is_(None),
            audit_entries.c.action == BINDING_BY_CHAIN,
        )
    ).scalar()


def _holders_of_absorbed_left(conn: Connection) -> list[int]:
    """The erased people holding a person absorbed into them (``subject.absorbed``) who is not
    erased (``Ledger.erase_absorbed``): the entries read once, then the absorbed people's rows
    by uid, a chunk at a time."""
    absorbed: dict[str, set[int]] = {}
    for holder, payload in conn.execute(
        select(audit_entries.c.subject_id, audit_entries.c.payload)
        .join(subjects, subjects.c.id == audit_entries.c.subject_id)
        .where(audit_entries.c.action == "subject.absorbed", subjects.c.erased_at.is_not(None))
    ):
        absorbed.setdefault(orjson.loads(payload)["what"]["absorbed"], set()).add(holder)
    holders: set[int] = set()
    for chunk in chunks(sorted(absorbed), 500):
        for uid in conn.execute(
            select(subjects.c.uid).where(subjects.c.uid.in_(chunk), subjects.c.erased_at.is_(None))
        ).scalars():
            holders |= absorbed[uid]
    return sorted(holders)


def absorbed_into(conn: Connection, holders: Sequence[int]) -> list[int]:
    """The people absorbed into any of ``holders`` and not erased, oldest absorption first, as
    each holder's trail names them (``subject.absorbed``; absorption moves a person's records,
    never their events, so the absorbed person's row and history stay where they were)."""
    if not holders:
        return []
    uids = [
        orjson.loads(payload)["what"]["absorbed"]
        for payload in conn.execute(
            select(audit_entries.c.payload)
            .where(
                audit_entries.c.subject_id.in_(list(holders)),
                audit_entries.c.action == "subject.absorbed",
            )
            .order_by(audit_entries.c.seq)
        ).scalars()
    ]
    if not uids:
        return []
    found = dict(
        conn.execute(
            select(subjects.c.uid, subjects.c.id).where(
                subjects.c.uid.in_(uids), subjects.c.erased_at.is_(None)
            )
        ).all()
    )
    return [found[uid] for uid in dict.fromkeys(uids) if uid in found]


def held_back_people(conn: Connection, digests: Sequence[str]) -> list[int]:
    """The people made for a double opt-in sign-up with an address erased before, whose address
    waits for the person's confirmation (``Hub._hold_back``), newest first: standing on the
    address's suppression entry (``digests``: the keyed hashes of its forms), not erased, holding
    no identifier, and made by a sign-up (a confirmation link of theirs). The address is stored
    when the person confirms; until then they are known by its keyed hash only."""
    holds = select(subject_identifiers.c.id).where(subject_identifiers.c.subject_id == subjects.c.id)
    signed_up = select(confirmations.c.id).where(
        confirmations.c.subject_id == subjects.c.id, confirmations.c.kind.in_(SIGN_UP_CONFIRMATIONS)
    )
    entries = select(suppressions.c.id).where(suppressions.c.email_hmac.in_(list(digests)))
    return list(
        conn.execute(
            select(subjects.c.id)
            .where(
                subjects.c.suppression_id.in_(entries),
                subjects.c.erased_at.is_(None),
                ~holds.exists(),
                signed_up.exists(),
            )
            .order_by(subjects.c.id.desc())
        ).scalars()
    )


def unliftable_erased_grant(
    resolver: SubjectResolver, requests: Sequence[RecordRequest], lifts: Callable[[int, datetime], bool]
) -> int | None:
    """The index of the first of ``requests`` that is a capture's grant (or double opt-in
    sign-up) for an erased address nobody came back with (``SubjectResolver.erased_since``)
    where none of the grants of ``requests`` for that address lifts the erasure (``lifts``: an
    index and the address's latest erasure; ``lifts_erasure``); None where there is none.
    Recorded, such a grant stores the erased address on a new person, suppressed all the same.
    A no for the address (``Identity.says_no``) is not one: it is kept as its keyed hash."""
    granting: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        identity, evidence = request.identity, request.evidence
        if (
            identity.email
            and not identity.says_no
            and evidence.origin is Origin.CAPTURE
            and evidence.status in (ConsentStatus.GRANTED, ConsentStatus.REQUESTED)
        ):
            granting.setdefault(identity.email, []).append(index)
    erased = resolver.erased_since_each(set(granting))
    for email, indexes in granting.items():
        since = erased.get(email)
        if since is not None and not any(lifts(index, since) for index in indexes):
            return indexes[0]
    return None


def _rows_of_subject(
    conn: Connection, table: Table, subject_id: int, query: Any = None
) -> Sequence[Row[Any]]:
    """``table``'s rows of one subject in the order they were written; ``query`` selects them
    (all of the table's columns when None)."""
    chosen = select(table) if query is None else query
    return conn.execute(chosen.where(table.c.subject_id == subject_id).order_by(table.c.id)).all()


def _with_subject(table: Any) -> Any:
    """``SELECT table.*, subject uid, email`` for rows keyed by subject (email NULL once erased):
    one row per row of ``table``, with the address the person was last known by (``email_of``).
    A join on the person's addresses gave a person holding two (a CRM record that took a new one)
    each objection, and each request to chase, twice."""
    return select(table, subjects.c.uid, latest_address().label("email")).join(
        subjects, subjects.c.id == table.c.subject_id
    )


def latest_address() -> Any:
    """The address the person of ``subjects``' row was last known by (a correlated subquery;
    NULL once erased): a CRM record that took a new address keeps the old one beside it, and what
    is sent or listed goes where the person is now, once (``Ledger.email_of``)."""
    return (
        select(subject_identifiers.c.value)
        .where(subject_identifiers.c.subject_id == subjects.c.id, subject_identifiers.c.kind == "email")
        .order_by(subject_identifiers.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


# The decision endpoint's reads, built once (building a statement costs more than running it).
# The source of a restriction carried to a person whose CRM record took on a restricted person's
# record (a merge) or address (Ledger.carry_restriction).
RESTRICTION_CARRIED_SOURCE = "restriction"
# With the person, the address's own suppression entries (its keyed hash under each form): one
# read, whether or not the address was erased.
_ADDRESS_ENTRY = suppressions.alias("address_entry")
_DECISION_PERSON = (
    select(
        subjects.c.id,
        subjects.c.uid,
        subjects.c.restricted,
        subjects.c.suppression_id,
        last_erased_at(suppressions).label("suppressed_since"),
        _ADDRESS_ENTRY.c.id.label("entry_id"),
        last_erased_at(_ADDRESS_ENTRY).label("entry_at"),
        subject_identifiers.c.folds_astral_to,
    )
    .join(subject_identifiers, subject_identifiers.c.subject_id == subjects.c.id)
    .outerjoin(suppressions, suppressions.c.id == subjects.c.suppression_id)
    .outerjoin(_ADDRESS_ENTRY, _ADDRESS_ENTRY.c.email_hmac.in_(bindparam("digests", expanding=True)))
    .where(subject_identifiers.c.kind == "email", subject_identifiers.c.value == bindparam("email"))
)
_DECISION_SUMMARY = select(consent_states.c.summary).where(
    consent_states.c.subject_id == bindparam("subject_id"),
    consent_states.c.purpose == bindparam("purpose"),
    consent_states.c.channel == bindparam("channel"),
)
_DECISION_OBJECTIONS = select(
    objections.c.purpose, objections.c.direct_marketing, objections.c.status, objections.c.raised_at
).where(
    objections.c.subject_id == bindparam("subject_id"),
    objections.c.status != ObjectionStatus.REJECTED.value,
)
_DECISION_ERASED = select(last_erased_at(suppressions)).where(
    suppressions.c.email_hmac == bindparam("digest")
)


def _restriction_still_carried(
    carried_from: str,
    subject_uid: str,
    subject_id: int,
    *,
    actor: str | None = None,
    reason: str | None = None,
) -> AuditRecord:
    """The audit entry of a restriction that stands, carried from the restricted person whose
    data is on this person's CRM records (``carried_from``: their uid), where one that held it
    was lifted."""
    return AuditRecord(
        "subject.restricted",
        {"restriction": "art18", "carried_from": carried_from},
        old=True,
        new=True,
        rule=Rule.RESTRICTION,
        source=RESTRICTION_CARRIED_SOURCE,
        actor=actor,
        subject_uid=subject_uid,
        subject_id=subject_id,
        details={"reason": reason} if reason is not None else None,
    )


def _subject_ids_by_email(conn: Connection, email: str) -> list[int]:
    """Every person held under a form of this address (``email_forms``; an older version could
    hold one per form), the one under its one form first."""
    forms = email_forms(email)
    found = dict(
        conn.execute(
            # Its folded form only where a folding CRM's record brought it (``holding``).
            select(subject_identifiers.c.value, subject_identifiers.c.subject_id).where(holding(email))
        ).all()
    )
    return list(dict.fromkeys(found[form] for form in forms if form in found))


def _held(conn: Connection, address: str) -> bool:
    """Whether anyone holds ``address`` as it is (one read of the (kind, value) index)."""
    return (
        conn.execute(
            select(subject_identifiers.c.id).where(
                subject_identifiers.c.kind == "email", subject_identifiers.c.value == address
            )
        ).first()
        is not None
    )


def _subject_id_by_email(conn: Connection, email: str) -> int | None:
    """The person held under this address: under its one form first, else under the form an
    older version kept (its domain in punycode, ``email_forms``)."""
    for form in email_forms(email):
        found = conn.execute(
            select(subject_identifiers.c.subject_id, subject_identifiers.c.folds_astral_to).where(
                subject_identifiers.c.kind == "email", subject_identifiers.c.value == form
            )
        ).first()
        # Its folded form only where a folding CRM's record brought it (``holds_for``).
        if found is not None and holds_for(email, form, found.folds_astral_to):
            return int(found.subject_id)
    return None


def _purpose_row(purpose: Purpose) -> dict[str, Any]:
    return {
        "key": purpose.key,
        "name": purpose.name,
        "direct_marketing": purpose.direct_marketing,
        "default_basis": purpose.default_basis.value,
        "validity_days": purpose.validity_days,
        "objection_handling": purpose.objection_handling.value,
        "eprivacy": purpose.direct_marketing if purpose.eprivacy is None else purpose.eprivacy,
    }


def _state_tuple(state: EffectiveState) -> tuple[str, str, bool]:
    return (state.status.value, state.basis.value, state.suppressed)


def _state_tuple_json(state: EffectiveState) -> dict[str, Any]:
    return {"status": state.status._value_, "basis": state.basis._value_, "suppressed": state.suppressed}


SOFT_OPT_IN_COLUMNS = (
    "soft_opt_in_sale_ref", "soft_opt_in_similar_products", "soft_opt_in_refusal_at_collection",
    "soft_opt_in_refusal_in_messages",
)  # fmt: skip
EVENT_COLUMNS = (
    "subject_id", "purpose", "channel", "status", "basis", "event_time", "recorded_at", "source",
    "origin", "actor", "notice_version", "double_opt_in_at", "evidence_ref", "fingerprint", "run_id",
    *SOFT_OPT_IN_COLUMNS, "notice_language", "clock_lag_ms",
)  # fmt: skip


def _check_notice_language(evidence: Evidence) -> None:
    """The language of the text shown is that of a notice version's text: a tag (as ``notice
    add --language`` takes), and only beside the version it is a text of."""
    language = evidence.notice_language
    if language is None:
        return
    if not NOTICE_LANGUAGE.match(language):
        raise InvalidInput(
            f"notice language {shown(language, 20)}: expected a language tag such as en, de or pt-BR"
        )
    if evidence.notice_version is None:
        raise InvalidInput("notice language: given without the notice version whose text was shown in it")


def _check_soft_opt_in(evidence: Evidence, purpose: Purpose) -> None:
    """A soft opt-in (PECR reg. 22(3), ePrivacy Art. 13(2)) is a record of its own: the time of
    the sale, on legitimate interests, for electronic mail, every condition evidenced
    (``domain.SoftOptIn`` checks the last)."""
    if evidence.event_time is None:
        raise InvalidInput("a soft opt-in needs the time the contact details were obtained (--at)")
    if (
        evidence.status is not ConsentStatus.NOT_APPLICABLE
        or evidence.basis is not LawfulBasis.LEGITIMATE_INTERESTS
    ):
        raise InvalidInput(
            "a soft opt-in is no consent: record it as status not_applicable on basis legitimate_interests"
        )
    if evidence.channel not in purpose.electronic_mail_channels:
        raise InvalidInput(
            f"a soft opt-in is for electronic mail ({', '.join(purpose.electronic_mail_channels)}): "
            f"channel {evidence.channel!r} needs none"
        )


def _event_evidence(row: Any) -> Evidence:
    """A stored event as the evidence it recorded (observed when it was recorded)."""
    soft = [getattr(row, name) for name in SOFT_OPT_IN_COLUMNS]
    soft_opt_in = None
    if all(soft):
        try:
            soft_opt_in = SoftOptIn(*soft)
        except InvalidInput:  # stored before the bounds existed: not a soft opt-in then
            soft_opt_in = None
    return Evidence(
        purpose=row.purpose,
        channel=row.channel,
        status=ConsentStatus(row.status),
        basis=LawfulBasis(row.basis) if row.basis else None,
        event_time=row.event_time,
        observed_at=row.recorded_at,
        source=row.source,
        origin=Origin(row.origin),
        actor=row.actor,
        notice_version=row.notice_version,
        double_opt_in_at=row.double_opt_in_at,
        evidence_ref=row.evidence_ref,
        soft_opt_in=soft_opt_in,
        notice_language=row.notice_language,
        clock_lag=clock_lag_of(row.clock_lag_ms),
    )


def _event_row(
    to_db: Callable[[datetime | None], Any],
    subject_id: int,
    evidence: Evidence,
    fingerprint: str,
    run_id: str | None,
) -> tuple[Any, ...]:
    # ``_value_``: the member's plain string, read without ``value``'s property (a fifth of the
    # cost; this runs for every event).
    return (
        subject_id,
        evidence.purpose,
        evidence.channel,
        evidence.status._value_,
        evidence.basis._value_ if evidence.basis else None,
        to_db(evidence.event_time),
        to_db(evidence.observed_at),
        evidence.source,
        evidence.origin._value_,
        evidence.actor,
        evidence.notice_version,
        to_db(evidence.double_opt_in_at),
        evidence.evidence_ref,
        fingerprint,
        run_id,
        *(evidence.soft_opt_in.values() if evidence.soft_opt_in else (None, None, None, None)),
        evidence.notice_language,
        clock_lag_ms(evidence.clock_lag),
    )


def _recorded_payload(
    evidence: Evidence,
    fingerprint: str,
    before: EffectiveState,
    after: EffectiveState,
    uid: str,
    run_id: str | None,
) -> dict[str, Any]:
    """The audit payload of one recorded event (made without an ``AuditRecord``: this is
    written once per event)."""
    return audit.payload(
        "consent.recorded",
        uid,
        run_id,
        {
            "purpose": evidence.purpose,
            "channel": evidence.channel,
            "status": evidence.status._value_,
            "basis": evidence.basis._value_ if evidence.basis else None,
            "event_time": evidence.event_time,  # canonical JSON writes it as iso() does
            "origin": evidence.origin._value_,
            "event_fingerprint": fingerprint,
            # Under which notice, confirmation and reference the person acted (Art. 7(1): the
            # controller must be able to show the consent): in the chain, which erasure leaves
            # as it is, and not only in the event row, which the chain would otherwise vouch for
            # by a fingerprint that nothing recomputes. Labels, refused at input if they hold an
            # address (docs/policy.md, "What erasure leaves").
            "notice_version": evidence.notice_version,
            "double_opt_in_at": evidence.double_opt_in_at,
            "evidence_ref": evidence.evidence_ref,
            **({"soft_opt_in": _soft_opt_in_json(evidence.soft_opt_in)} if evidence.soft_opt_in else {}),
            # The language of the text shown, only where known: entries without one stay as
            # they were (``audit.agreement`` reads its absence as none).
            **({"notice_language": evidence.notice_language} if evidence.notice_language else {}),
            # How late a no from a clock behind ours counts (``Ranked.of``): it decides
            # precedence, so the chain vouches for it; only where known, so that every entry
            # without one reads as it did (``audit.agreement``).
            **({"clock_lag_ms": clock_lag_ms(evidence.clock_lag)} if evidence.clock_lag is not None else {}),
        },
        _state_tuple_json(before),
        _state_tuple_json(after),
        after.rule,
        evidence.source,
        evidence.actor,
    )


def _soft_opt_in_json(soft_opt_in: SoftOptIn) -> dict[str, str]:
    """The evidence of each soft opt-in condition, by name (PECR reg. 22(3))."""
    return {name: getattr(soft_opt_in, name) for name, _what in SOFT_OPT_IN_CONDITIONS}


_EVENT_COLUMNS = RowView(
    "purpose channel status basis event_time recorded_at source origin actor notice_version"
)
_EVENT_REFERENCES = RowView("double_opt_in_at evidence_ref run_id")
_OBJECTION_COLUMNS = RowView(
    "id subject=uid email purpose direct_marketing status raised_at source decided_by decided_at"
)


def _event_view(row: Any) -> dict[str, Any]:
    return {
        **_EVENT_COLUMNS(row),
        "notice_sha256": None,  # filled by subject_view from the notice registry
        # The language recorded as shown; subject_view makes it that of the text it names.
        "notice_language": row.notice_language,
        # How far the CRM clock that stamped a no may have run behind ours when it was read
        # (migration 0026): the no counts up to that much after its event_time (docs/policy.md).
        "clock_lag_ms": row.clock_lag_ms,
        **_EVENT_REFERENCES(row),
        "soft_opt_in": (
            {
                "sale_ref": row.soft_opt_in_sale_ref,
                "similar_products": row.soft_opt_in_similar_products,
                "refusal_at_collection": row.soft_opt_in_refusal_at_collection,
                "refusal_in_messages": row.soft_opt_in_refusal_in_messages,
            }
            if row.soft_opt_in_sale_ref
            else None
        ),
    }


# The bases a person may object to on grounds of their own situation: Art. 21(1) covers
# processing on Art. 6(1)(e) or (f) only. A consent is withdrawn instead (Art. 7(3)); a contract,
# a legal obligation or vital interests give no right to object.
OBJECTABLE_BASES = frozenset({LawfulBasis.LEGITIMATE_INTERESTS, LawfulBasis.PUBLIC_TASK})


def objectable(
    purpose: Purpose, bases: Iterable[LawfulBasis | str | None], *, direct_marketing: bool
) -> bool:
    """Whether a person may object to ``purpose`` while the ledger holds their processing for it
    on ``bases`` (one per channel: the basis recorded for them, else the purpose's default):

    * a purpose that serves direct marketing (``serves_direct_marketing``), whatever the basis
      (Art. 21(2));
    * a purpose where a channel rests on legitimate interests or a public task for that person
      (Art. 21(1)); a consent, even one recorded under a legitimate-interests purpose, is
      withdrawn instead (Art. 7(3)): an objection under review could be rejected, and the
      consent go on;
    * with ``direct_marketing`` (the caller says the objection is one to direct marketing), a
      purpose on consent too, which may be marketing its configuration does not flag; never
      one resting only on a contract, a legal obligation or vital interests, which is no
      direct marketing (EDPB Guidelines 2/2019): the objection would stop it for the person.

    Every way an objection comes in (``consentsync objection raise``, ``POST /v1/objections``,
    the preference page) is checked here, by the ledger, in the transaction that writes it."""
    if serves_direct_marketing(purpose):
        return True
    known = {LawfulBasis(basis) for basis in bases if basis is not None}
    return bool(known & OBJECTABLE_BASES) or (direct_marketing and LawfulBasis.CONSENT in known)


class NotObjectable(InvalidInput):
    """An objection refused for the basis of the processing it names (``objectable``): nothing
    recorded. The message names the purpose, the basis and what to do instead; ``code`` is the
    machine-readable reason, ``bases`` the person's bases for the purpose. ``marketing``: the
    purposes serving direct marketing, named where the objection was said to be one to it."""

    code = "objection_basis_not_objectable"

    def __init__(
        self,
        purpose: Purpose,
        bases: Iterable[LawfulBasis | str | None],
        marketing: Sequence[str] | None = None,
    ) -> None:
        found = [LawfulBasis(basis) for basis in bases if basis is not None] or [purpose.default_basis]
        self.purpose = purpose.key
        self.bases = tuple(dict.fromkeys(basis.value for basis in found))  # in channel order, once each
        others = [basis for basis in self.bases if basis != LawfulBasis.CONSENT.value]
        instead = []
        if LawfulBasis.CONSENT in found:  # the person's right is to withdraw it, at any time
            instead.append("a consent is withdrawn instead (Art. 7(3)): record a withdrawal")
        if others:
            instead.append(
                f"{' and '.join(others)} give{'s' if len(others) == 1 else ''} no right to object "
                "(Art. 21 covers legitimate interests, a public task and direct marketing)"
            )
        if marketing is not None:
            instead.append(
                "an objection to direct marketing names a purpose that serves it ("
                + (", ".join(marketing) or "none is configured")
                + ")"
            )
        super().__init__(
            f"purpose {purpose.key!r} cannot be objected to: it rests on {' and '.join(self.bases)} "
            f"for this person: {'; '.join(instead)}; nothing was recorded"
        )


@dataclass(frozen=True, slots=True)
class _ObjectionTerms:
    """An objection as checked before it is written (``Ledger._objection_terms``)."""

    purpose: Purpose
    direct_marketing: bool
    status: ObjectionStatus
    decided_by: str | None
    raised_at: datetime
    now: datetime
    source: str
    actor: str | None


def _log_objection(result: dict[str, Any]) -> None:
    """The log line of an objection written (after its commit): ids, never an address."""
    log.info(
        "objection.raised",
        objection=result["id"],
        subject=result["subject"],
        purpose=result["purpose"],
        direct_marketing=result["direct_marketing"],
        status=result["status"],
    )


def _objection_view(row: Any) -> dict[str, Any]:
    return _OBJECTION_COLUMNS(row)
