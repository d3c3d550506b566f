"""One sync run for one connector: the fixed flow every connector goes through.

pull (connector) -> map (mapping file) -> identify (CRM id, then email) -> reconcile (pure) ->
commit (ledger events, audit entries, snapshots, quarantine, outbox rows and the new cursor, in
ONE transaction per page) -> push (outbox -> connector; a row is done only when the CRM
acknowledged it).

A crash anywhere replays safely: the cursor never moves past a record that was not committed,
nor past the moment the run started (less a lag for CRMs that stamp whole seconds).
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
import uuid
from collections import abc
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import orjson
import structlog
from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from consentsync import audit, exit_codes
from consentsync.audit import AuditRecord
from consentsync.collector import collecting_less_often
from consentsync.domain import (
    CLOCK_LAG_MAX,
    STICKY_STATUSES,
    ConsentStatus,
    EffectiveState,
    Evidence,
    InvalidInput,
    LawfulBasis,
    ObjectionStatus,
    Origin,
    as_read,
    as_utc,
    canonical_address,
    canonical_json,
    clock_lag_of,
    email_forms,
    iso,
    without_emails,
)
from consentsync.ledger import absorb
from consentsync.ledger.bulk import db_time, insert_rows, one_of, select_in, upsert_rows
from consentsync.ledger.engine import analyse_grown, reading
from consentsync.ledger.identity import (
    EMAIL,
    CrmLink,
    Identity,
    Reread,
    holds_for,
    last_erased_at,
    linked_and_left,
)
from consentsync.ledger.problems import ledger_problem
from consentsync.ledger.schema import (
    OUTBOX_UNANSWERED,
    audit_entries,
    consent_events,
    crm_links,
    crm_snapshots,
    objections,
    outbox,
    quarantine,
    subject_identifiers,
    subjects,
    suppressions,
    sync_cursors,
    sync_examine,
    sync_runs,
)
from consentsync.ledger.service import Ledger, RecordOutcome, RecordRequest
from consentsync.ledger.warm import WarmSubjects
from consentsync.mapping import (
    END_OF_DAY,
    LATEST_OFFSET,
    SAID_NO_STATUSES,
    Mapping,
    MappingValueError,
    OurWrite,
    crm_key,
    field_value,
)
from consentsync.reconcile import Rule, binding_no, no_counts_from, serves_direct_marketing, summarise
from consentsync.sdk.clock import ClockOffset, CrmClock, bounded_until
from consentsync.sdk.connector import Connector, CrmRecord, Cursor, RecordUpdate, WriteAction, WriteResult
from consentsync.sdk.errors import Action, BudgetExhausted, ConnectorError, Fault, RunBudgetSpent
from consentsync.sync import shared
from consentsync.sync.ahead import DecisionsAhead, Recipe, changed_since, next_marked
from consentsync.sync.decisions import (
    PUSH_HELD_ACTION,
    DecidedPushes,
    HeldWrite,
    NewPush,
    QueuedRow,
    RecordKey,
)
from consentsync.sync.failpoints import failpoint
from consentsync.sync.feed import FeedPlace, read_feed
from consentsync.sync.lease import Lease, LeaseLost
from consentsync.sync.locks import RunInProgress, connector_lock
from consentsync.sync.plan import Plan, plan_items, restricting
from consentsync.sync.prefetch import Prefetch, PrefetchEach, close_all
from consentsync.sync.push_rules import examine_under_new_rules, push_rules_digest
from consentsync.sync.runs import RunCounts, record_unstarted
from consentsync.sync.spool import PageSpool
from consentsync.sync.writer import RunWriter

log = structlog.get_logger("consentsync.sync")
LEDGER_FEED = "~ledger"  # the sync_cursors row that holds this connector's place in the change feed
DELETIONS = "#deleted"  # suffix of the sync_cursors row of an object's deletion listing
# Kept in an object's stored cursor (its JSON, beside the position): what the read that stored it
# asked for and how it understood the answers (``reading_digest``), and whether that read was
# still going through every record again after a change of those (see ``SyncEngine._reads``).
READS_KEY = "reads"
REREADING_KEY = "rereading"
# Also kept there: how far the CRM's clock ran ahead of ours (its answers' ``Date``, as
# ``ClockOffset``: microseconds, low and high) when the records up to the position were read; a
# later read measuring it lower knows the clock was set back since (``_rewind_if_set_back``).
CLOCK_KEY = "crm_clock"
# The run id of a cursor an admin placed (consentsync state reset): a position chosen by hand.
_RESET_RUN_PREFIX = "state-reset"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SyncOptions:
    batch_size: int = 1000
    # Records changed within this many seconds before the run started are left to the next run:
    # CRMs stamp whole seconds, so a later change in the same second could otherwise be missed.
    signpost_lag_seconds: float = 2.0
    # Outbox rows handed to the connector per write: large enough that a connector can choose its
    # bulk API (Salesforce: Bulk API 2.0 from 10,000 changes) over its batch one.
    push_batch_size: int = 10_000
    # Write calls side by side, each over a share of a push group; None: the connector's own
    # (``Connector.write_concurrency``).
    push_concurrency: int | None = None
    # Attempts (one per run) before a push the CRM keeps refusing is dead-lettered.
    max_push_attempts: int = 10
    # How far behind its stored position an incremental read starts again (changes committed
    # late); None: the connector's own window (``Connector.lookback``).
    lookback_seconds: float | None = None
    # Per CRM object: suppress (default), anonymise or delete, for the records of erased people.
    erasure_actions: dict[str, str] = field(default_factory=dict)
    # The connector lease's time to live; a heartbeat renews it while the run is alive.
    lease_seconds: float = 60.0
    # observe (push nothing), suppress_only (push only what restricts processing) or two_way.
    # The engine's own default is two_way; a connector configured in consentsync.yaml starts
    # in observe (see ConnectorSettings).
    mode: str = "two_way"
    # The blast-radius guard: more pushes than this many records, or this share of the
    # connector's live records, and the run pushes nothing until a plan is approved.
    guard_max_records: int | None = None
    guard_max_share: float | None = None
    # From this many people to examine, a second process decides their pushes a batch ahead of
    # the run (sync/ahead.py, SQLite ledgers; the engine needs ``decide_ahead`` too); None: never.
    decide_ahead_from: int | None = None


@dataclass(frozen=True, slots=True)
class PlannedChange:
    subject: str
    purpose: str
    channel: str
    before: str
    after: str
    rule: str


@dataclass(frozen=True, slots=True)
class PlannedPush:
    object_type: str
    record_id: str
    fields: dict[str, Any]
    rule: str | None


@dataclass(slots=True)
class RunReport:
    run_id: str
    connector: str
    status: str  # succeeded, stopped, held (the push guard), failed, dry_run
    started_at: datetime
    finished_at: datetime | None = None
    counts: RunCounts = field(default_factory=RunCounts)
    error: str | None = None
    plan_changes: list[PlannedChange] = field(default_factory=list)
    plan_pushes: list[PlannedPush] = field(default_factory=list)
    # For progress displays: the object being read, how many of it so far, and how many in all.
    stage: str = ""
    stage_done: int = 0
    stage_total: int | None = None
    # A dry run's pushes as a plan for review (consentsync plan / apply).
    plan: Plan | None = None
    # Wall seconds per stage: waiting for the CRM's pages (read), committing them (pages),
    # deciding the pushes (examine), pushing (push). Logged with the run's end.
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    # Why a failed run failed, as the exit code of `consentsync sync` (exit_codes.py): the
    # credentials (77), the CRM or the ledger out of reach (69), the config (2); None: 1.
    exit_code: int | None = None
    # What a run that did what was asked wants said (a plan applied before: by which run).
    note: str | None = None
    # A dry run's: why a run now would push none of its pushes (the connector observes, the push
    # guard); None: it would push them.
    would_hold: str | None = None


STAGES = ("read", "pages", "examine", "push")
OUTBOX_COLUMNS = (
    "connector",
    "object_type",
    "record_id",
    "subject_id",
    "fields",
    "suppression",
    "rule",
    "run_id",
    "created_at",
    "status",
    "attempts",
    "action",
)
_MICROSECOND = timedelta(microseconds=1)
READ_AHEAD = 4  # batches read ahead of the commits (memory: a few thousand records at most)


@contextmanager
def _timed(report: RunReport, stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        report.seconds[stage] += time.perf_counter() - started


class _Stop(Exception):
    """The daemon asked the run to stop between pages or push batches."""


class PlanOutdated(Exception):
    """The plan being applied no longer matches what the run would push."""


@dataclass(frozen=True, slots=True)
class _Share:
    """A share of a push group and the CRM calls writing it, answers by position in ``rows``."""

    rows: list[Any]
    calls: Prefetch[dict[int, WriteResult]]


# A CRM call's answers: the rows it wrote, and each answer by position in them.
_Answered = tuple[list[Any], dict[int, WriteResult]]


def _tied_through_left(
    identities: Sequence[Identity],
    subject_ids: Sequence[int],
    left: dict[str, tuple[int, str]],
    elsewhere: Sequence[tuple[int, int]],
) -> set[tuple[int, int]]:
    """Of ``elsewhere`` (an address's holder, the person of a record showing it), the pairs only
    records showing an address its holder left made: such a record ties nobody to the holder
    (the old mailbox's new owner's contact pointing to their own Individual: docs/policy.md, "An
    address a person no longer holds does not speak for them"), so its person is not absorbed
    into them. The holder's nos still reach the record (``_carry_the_nos``: the CRM writes to the
    address). Counted, so that a pair another record made too stays a tie."""
    made: dict[tuple[int, int], int] = {}
    for identity, subject_id in zip(identities, subject_ids, strict=True):
        found = left.get(identity.email) if identity.email else None
        if found is not None and found[0] != subject_id:
            made[(found[0], subject_id)] = made.get((found[0], subject_id), 0) + 1
    if not made:
        return set()
    return {pair for pair, count in made.items() if sum(1 for said in elsewhere if said == pair) <= count}


class _PageLink(NamedTuple):
    """A page's record as the ledger holds it: its link and its snapshot's fields and identity
    (None where none is kept). ``gone_at`` as stored: only whether it is NULL matters. The
    snapshot's evidence is not among them: it is read only for the records that changed (a
    read-back of a whole org holds none, and the evidence is most of a snapshot's bytes)."""

    link_id: int
    record_id: str
    subject_id: int
    gone_at: Any
    fields: str | None
    identity: str | None


class _HeldGrants(NamedTuple):
    """A record's grants held for the run's reads (``SyncEngine._weigh_held_over``): its link,
    its person, the keyed hash of the address it showed, and the grants."""

    link_id: int
    subject_id: int
    identity: str
    grants: list[Evidence]


class _LinkToPush(NamedTuple):
    """A person's link the examination weighs: its snapshot's fields (None where none is kept),
    whether the person was erased (``erased_at`` as stored: only NULL or not matters), whether
    the address the record last showed is on the suppression list (``address_erased``: an entry's
    id or None), the entry the person was made under when they came back after an erasure
    (``suppression_id``) and, for a record merged away, its survivor."""

    id: int
    subject_id: int
    connector: str
    object_type: str
    record_id: str
    gone_at: Any
    fields: str | None
    erased_at: Any
    merged_into: str | None
    address_erased: int | None
    suppression_id: int | None
    merged_into_object: str | None


_LINK_TO_PUSH_COLUMNS = (
    "id", "subject_id", "connector", "object_type", "record_id", "gone_at",
    "crm_snapshots.fields", "subjects.erased_at", "merged_into", "suppressions.id",
    "subjects.suppression_id", "merged_into_object",
)  # fmt: skip


class _AskedFor(abc.Mapping[str, Any]):
    """An ``ours`` for ``Mapping.updates_for`` that holds none of the engine's writes and notes
    the fields it is asked about: those whose opt-out a known earlier value would put back (the
    mapping asks last, once everything else allows it). ``decide_pushes`` looks its own writes
    up for these records only, in one batch (``_put_backs``)."""

    def __init__(self) -> None:
        self.fields: list[str] = []

    def __contains__(self, name: object) -> bool:
        self.fields.append(str(name))
        return False

    def __getitem__(self, name: str) -> Any:
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


# A link weighed by ``decide_pushes``: the row, its mapping, (object, record), the object's erasure
# action, the person's states as they apply to it, the updates the mapping decided.
_Examined = tuple[Any, Mapping, tuple[str, str], str, dict[tuple[str, str], EffectiveState], dict[str, Any]]


class _SnapshotOf(NamedTuple):
    """A written record's link and what its snapshot holds (None where none is kept)."""

    id: int
    record_id: str
    fields: str | None
    evidence: str | None


_PAGE_LINK_COLUMNS = (
    "id", "record_id", "subject_id", "gone_at", "crm_snapshots.fields", "crm_snapshots.identity",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Calls:
    """A push group marked sent, written by one ``write_batches`` a share, side by side."""

    shares: list[_Share]
    arrived: threading.Event  # set whenever a share's calls hand something over


@dataclass(slots=True)
class _Read:
    """One read of a run: an object's changes, or its deletions (``key`` ends with DELETIONS),
    from ``since``; ``position`` is the cursor committed so far."""

    mapping: Mapping
    key: str
    stored: Cursor
    since: Cursor
    deletions: bool
    position: Cursor = field(init=False)
    kept: bool = False  # whether the connector's completed cursor (a new delta token) is stored
    # The mapping changed since the stored cursor (or is not known): every record read is taken
    # whole, never skipped as "read as last seen", and its person's pushes are decided again.
    rethink: bool = False
    expected_records: int | None = None  # how many records the read will yield, where the CRM says
    # The moment before ``until`` up to which the connector said the read covered the CRM's
    # changes (``Connector.covered_until``): kept with the cursor in place of ``until``.
    covered_until: datetime | None = None

    def __post_init__(self) -> None:
        self.position = self.stored


ERASURE_RULES = {"anonymise": "erasure_anonymise", "delete": "erasure_delete"}
ANONYMISE_RULE = ERASURE_RULES["anonymise"]
ERASURE_RULE_NAMES = frozenset(ERASURE_RULES.values())
# The rule of an erasure's suppression of a merge's survivor holding a merged record of another
# person, not erased (``_merged_into``), and how long a chain of merges is followed.
MERGED_RULE = "erasure_suppress_only_merged_record"
# An erased person's record the CRM made after the erasure: suppressed, not deleted or anonymised.
CREATED_AFTER_RULE = "erasure_suppress_only_created_after"
# The quarantine reason of a record whose grants wait for the run's reads (``_held_row``).
_HELD_OVER_REASON = (
    "its grants wait for the run's reads, which stopped before their end: a page not read "
    "may make the record its person's only through an address they left "
    '(docs/policy.md, "An address a person no longer holds does not speak for them"); '
    "the next run reads it again by id and weighs them"
)
# The source of an erasure carried, as a withdrawal, to a person whose CRM record took on the
# erased person's record (a merge) or address (never a trusted source: it reverses nothing).
ERASURE_CARRIED_SOURCE = "erasure"
# The time of day a no read from a Date field is recorded at (mapping.END_OF_DAY: the next day,
# at the end of the day in UTC-12).
_DAY_END = (datetime.min + END_OF_DAY).time()


def pages_read(records: Iterable[T], size: int) -> Iterator[list[T]]:
    """A read's records in pages of ``size``; a read the connector stops with an error (the
    run's call budget, a limit, a failure) hands over what it read before the error as a last
    page, then raises it: a connector making a call or more a record (one a person) under a
    budget smaller than a page's calls would otherwise never have a page committed, and every
    run would read the same records again."""
    page: list[T] = []
    try:
        for record in records:
            page.append(record)
            if len(page) == size:
                yield page
                page = []
    except Exception:
        if page:
            yield page
        raise
    if page:
        yield page


class SyncEngine:
    def __init__(
        self,
        ledger: Ledger,
        connector: Connector,
        mappings: Sequence[Mapping],
        options: SyncOptions | None = None,
        progress: Callable[[RunReport], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.connector = connector
        self.mappings = list(mappings)
        self.by_object = {m.object: m for m in self.mappings}
        # The objects whose records carry an address (a Contact, not an Individual): a record
        # pointing to one of them is that record's person's, whatever address it shows.
        self._addressed = {m.object for m in self.mappings if m.spec.identity.email}
        # Each object's reading, kept with its cursor: a change means reading it all again.
        # A connector that starts reading more for a mapping (a field it adds by itself, such as
        # HubSpot's opt-out of all email) says so by its ``reading_version``: the same change.
        reading = getattr(connector, "reading_version", None)
        connector_reading = None if reading is None else str(reading)
        self._read_digests = {m.object: reading_digest(m, connector_reading) for m in self.mappings}
        self._rereading: set[str] = set()  # the reads of this run going through everything again
        # Each read's CRM clock offset stored with its cursor (``CLOCK_KEY``), as this run found it,
        # and where a read cut short after the clock was set back started (``_clock_frame``);
        # where this run's reads start (``Connector.rewound`` by nothing: a moment of the clock).
        self._clock_from: dict[str, ClockOffset | None] = {}
        self._back_from: dict[str, datetime | None] = {}
        self._started_from: dict[str, datetime | None] = {}
        self._history_bounds: dict[str, Cursor] = {}  # theirs, where one is known (``_reads``)
        # While a run's reads go on: the grants held for them, by (object, record id), and when
        # the run started (``_commit_page``, ``_weigh_held_over``).
        self._held_over: dict[tuple[str, str], _HeldGrants] | None = None
        self._held_over_since: datetime | None = None
        self.options = options or SyncOptions()
        self.progress = progress or (lambda _report: None)
        self.name = connector.name
        self._shared: Connection | None = None  # the one transaction of a dry run
        # What the push guard last counted: the records waiting, and the connector's live ones.
        self._guard_counts: tuple[int, int | None] = (0, None)
        self._writer: RunWriter | None = None  # a run's write connection on SQLite
        self._lease: Lease | None = None  # this run's ownership of the connector
        self._apply_plan: Plan | None = None
        self.plan_actor: str | None = None  # who approved the plan being applied (its audit entry)
        # Set by the daemon on SIGTERM: the page in hand is committed, then the run stops cleanly.
        self.stop_requested = threading.Event()
        # Called with the report of every run but a dry run (app.open_sync: a signed checkpoint
        # of the audit chain's head, consentsync.checkpoints).
        self.after_run: Callable[[RunReport], None] | None = None
        # How a second process builds an engine like this one to decide the examination's
        # batches ahead (app.open_sync sets it; sync/ahead.py).
        self.decide_ahead: Recipe | None = None

    # -- the run -------------------------------------------------------------------------------

    def run(self, *, full: bool = False, dry_run: bool = False, apply_plan: Plan | None = None) -> RunReport:
        """One run; raises ``RunInProgress`` when another process is running this connector.
        With ``apply_plan``, the run pushes exactly that plan (whatever the mode and the guard),
        or nothing when the plan no longer matches what it would push."""
        self._apply_plan = apply_plan
        try:
            with connector_lock(self.ledger.engine, self.name), collecting_less_often():
                report = self._run(full=full, dry_run=dry_run)
        except RunInProgress as busy:
            if not dry_run:  # skipped: a run row says so, and why (status, runs list, /metrics)
                now = self.ledger.clock()
                record_unstarted(
                    self.ledger.engine, self.name, str(busy), now, status="skipped", kind="skipped"
                )
            raise
        if self.after_run is not None and not dry_run:
            self.after_run(report)
        return report

    def _lookback(self) -> timedelta | None:
        seconds = self.options.lookback_seconds
        return None if seconds is None else timedelta(seconds=seconds)

    def _read_until(self, started: datetime) -> datetime:
        """The upper bound of the reads of a run started at ``started``: ``signpost_lag_seconds``
        before it and, where the CRM's answers so far showed its clock behind ours, that long
        before the CRM's own clock at ``started`` (its stamps are its clock's: a bound of ours
        would lie in its future, and the next read's look-back would start past the changes it
        stamps meanwhile). Nothing known of the CRM's clock: our own bound."""
        lag = timedelta(seconds=self.options.signpost_lag_seconds)
        return bounded_until(started - lag, started, lag, self._crm_offset())

    def _crm_offset(self) -> ClockOffset | None:
        """What the CRM's answers so far said of its clock against ours (None: nothing yet, or
        a connector that keeps no ``CrmClock``)."""
        crm_clock = getattr(self.connector, "crm_clock", None)
        clock = crm_clock() if callable(crm_clock) else None
        return clock.offset() if isinstance(clock, CrmClock) else None

    def _clock_frame(self, key: str) -> tuple[ClockOffset | None, datetime | None]:
        """The CRM clock offset stored with read ``key``'s cursor, and where a read is to go back
        from: the offset its answers show now, except where they show the clock set back since
        the offset the stored cursor was read under and the read has not yet gone back for it
        (``_rewind_if_set_back``). That one is kept then, with the earliest place a read started
        from since (this run's, or a run's before it cut short the same way): a run cut before
        it went back (a kill, its budget) still moved the position on through what the set-back
        clock stamped later, and the next run must go back from where the clock was last right,
        not from that position."""
        before, now = self._clock_from.get(key), self._crm_offset()
        if now is None:
            return before, self._back_from.get(key)
        if before is not None and _set_back_by(before, now) is not None:
            starts = [moment for moment in (self._back_from.get(key), self._started_from.get(key)) if moment]
            return before, min(starts, default=None)
        return now, None

    def _set_back_start(self, read: _Read, now: ClockOffset) -> tuple[Cursor | None, timedelta | None]:
        """Where ``read`` goes back to for a CRM clock set back since its stored cursor was read
        (``Connector.rewound``: by as much as the clock went, from where this read, or a read
        cut short before it, started), and by how much; (None, how much) where it cannot go back
        (a read from the first record, a CRM token), (None, None) where the clock was not set
        back."""
        before = self._clock_from.get(read.key)
        by = _set_back_by(before, now) if before is not None else None
        if by is None:
            return None, None
        start = self.connector.rewound(read.since, by)
        earlier = self._back_from.get(read.key)
        if start is not None and start.modstamp is not None and earlier is not None:
            start = Cursor(min(start.modstamp, earlier - by))
        return start, by

    def _rewind_if_set_back(self, reads: list[_Read], report: RunReport) -> set[str]:
        """The reads (keys) whose CRM clock was set back since their stored cursors were read:
        the changes it stamps since lie behind the positions its clock stamped before, where this
        run's reads, started from those positions, did not look. Each such cursor is moved back
        by as much as the clock went (``_set_back_start``), its offset now the one measured, for
        the run to read it once more (what it read again is recognised by its snapshot). A read
        from the first record (``sync --full``, a mapping changed), or one a CRM token positions
        (a delta link), missed nothing of it: its cursor just takes the offset measured."""
        now = self._crm_offset()
        if now is None:
            return set()
        rewound: set[str] = set()
        for read in reads:
            start, by = self._set_back_start(read, now)
            if by is None:
                continue
            failpoint("sync.clock_set_back")  # the crash tests: cut before the cursor goes back
            self._clock_from[read.key], self._back_from[read.key] = now, None
            with self._transaction() as conn:
                if start is None:
                    self._restamp_clock(conn, read.key, report.run_id)
                    continue
                self._save_cursor(conn, read.key, start, report.run_id, self.ledger.clock())
            log.warning(
                "sync.crm_clock_set_back",
                object=read.key,
                seconds_at_most=round(by.total_seconds(), 3),
                read_again_from=start.modstamp.isoformat() if start.modstamp else None,
            )
            rewound.add(read.key)
        return rewound

    def _reads_gone_back(self, reads: list[_Read]) -> list[_Read]:
        """For a plan: the reads once more from where ``_rewind_if_set_back`` would take them
        (nothing is stored: the plan's transaction is rolled back), so that the plan shows what
        the run would do."""
        now = self._crm_offset()
        again: list[_Read] = []
        for read in reads if now is not None else []:
            start, _ = self._set_back_start(read, now)
            if start is not None:
                since = self.connector.resume_from(start, self._lookback())
                gone_back = _Read(read.mapping, read.key, start, since, read.deletions)
                gone_back.rethink = read.rethink
                again.append(gone_back)
        return again

    def _restamp_clock(self, conn: Connection, key: str, run_id: str) -> None:
        """Read ``key``'s stored cursor as it is, with the CRM clock offset measured now."""
        row = conn.execute(
            select(sync_cursors.c.cursor).where(
                sync_cursors.c.connector == self.name, sync_cursors.c.object_type == key
            )
        ).first()
        if row is None:
            return
        data = orjson.loads(row.cursor)
        if not isinstance(data, dict):
            return
        frame = self._crm_offset()
        if frame is None:
            return
        data[CLOCK_KEY] = _offset_json(frame, None)
        conn.execute(
            update(sync_cursors)
            .where(sync_cursors.c.connector == self.name, sync_cursors.c.object_type == key)
            .values(cursor=canonical_json(data), run_id=run_id)
        )

    def _clock_lag(self, object_type: str | None = None) -> timedelta | None:
        """How far the CRM's clock may have run behind ours when it stamped the values read
        (``Evidence.clock_lag``): where its answers show it behind, now or when the cursors of
        ``object_type``'s reads (its changes, its deletions) were stored (a value changed since
        was stamped by the clock as it ran then or as it runs now: a clock put right since the
        last read does not make a no stamped behind count as stamped), the most they allow
        (``-offset.low``), rounded up to whole
        milliseconds (what the ledger stores: the value folded is the value kept); None for a
        clock in step, ahead or not known, whose values are read as before. Taken once a page:
        the records of a page were read together."""
        known = [self._crm_offset()]
        if object_type is not None:
            known += [self._clock_from.get(object_type), self._clock_from.get(object_type + DELETIONS)]
        behind = [offset for offset in known if offset is not None and offset.behind]
        if not behind:
            return None
        offset = min(behind, key=lambda found: found.low)
        microseconds = -offset.low // _MICROSECOND
        # At most a day: the clock takes no Date further off for the CRM's (MAX_PLAUSIBLE_OFFSET),
        # and the rounding must not carry the lag past what the ledger keeps.
        return min(timedelta(milliseconds=-(-microseconds // 1000)), CLOCK_LAG_MAX)

    def _run(self, *, full: bool, dry_run: bool) -> RunReport:
        started = self.ledger.clock()
        report = RunReport(str(uuid.uuid4()), self.name, "running", started)
        until = self._read_until(started)
        bound = log.bind(run_id=report.run_id, connector=self.name)
        structlog.contextvars.bind_contextvars(run_id=report.run_id, connector=self.name)
        self._lease = None
        if not dry_run:
            # The lease first: taking it over from a dead run records that run as crashed.
            lease = Lease(
                self.ledger.engine,
                self.name,
                report.run_id,
                self.ledger.clock,
                ttl=timedelta(seconds=self.options.lease_seconds),
            )
            lease.acquire()
            self._lease = lease
            try:
                self._record_run_start(report, full)
            except BaseException:
                lease.release()
                raise
            lease.start_heartbeat(self.stop_requested.set)
            if self.ledger.engine.dialect.name == "sqlite":
                self._writer = RunWriter(self.ledger.engine)
        bound.info("sync.started", full=full, dry_run=dry_run)
        owed_before: tuple[int, int, int] | None = None
        positions: dict[str, object] = {}
        try:
            if not dry_run:
                # What this CRM was owed before the run, and where its reads stood: a run stopped
                # on its own budget that changed neither made no headway (``_fail_if_stalled``).
                owed_before, positions = self._owed(), self._read_positions()
            if dry_run:
                self._plan(report, until=until, full=full)
            else:
                # Before anything decides a push: a consent whose validity ended since the last
                # run is recorded expired, and so announced to every connector (its CRM records
                # were told "granted" and must be told otherwise), without an operator's step.
                self._expire_due(report)
                self._catch_up_feed(report)
                try:
                    self._pull(report, until=until, full=full, dry_run=False)
                    self._reread_quarantined(report)
                except (BudgetExhausted, ConnectorError):
                    self._queue_what_is_owed(report)
                    raise
                self._follow_ledger(report, push_along=self._pushes_when_decided())
                with _timed(report, "push"):
                    self._push(report)
            if report.status == "running":
                report.status = "dry_run" if dry_run else "succeeded"
        except PlanOutdated as outdated:
            report.status = "failed"
            report.error = f"plan: {outdated}"
            report.exit_code = exit_codes.STALE_PLAN  # as `apply`'s check before the run says it
            bound.error("sync.plan_outdated", error=report.error)
        except (_Stop, LeaseLost) as stop:
            lost = isinstance(stop, LeaseLost) or (self._lease is not None and self._lease.lost.is_set())
            report.status = "stopped"
            report.error = (
                f"lease lost: {stop if isinstance(stop, LeaseLost) else 'taken over by another run'}"
                if lost
                else "shutdown requested: stopped after the last committed page or push batch"
            )
            if lost:
                bound.error("sync.lease_lost", error=report.error)
        except (BudgetExhausted, ConnectorError) as error:
            stops = isinstance(error, BudgetExhausted) or error.action is Action.RATE_LIMITED
            report.status = "stopped" if stops else "failed"
            label = "credentials" if error.rule.credentials else error.rule.fault.value
            said = self._located(str(error)) if error.rule.fault is Fault.CONFIG else str(error)
            report.error = f"{label}: {said}"
            report.exit_code = exit_codes.for_connector_error(error.rule)
            if isinstance(error, RunBudgetSpent) and owed_before is not None:
                self._fail_if_stalled(report, owed_before, positions)
            bound.error("sync.interrupted", status=report.status, reason=error.rule.reason, error=str(error))
        except InvalidInput as error:
            report.status = "failed"
            report.error = f"config: {error}"
            report.exit_code = exit_codes.CONFIG
            bound.error("sync.failed", error=str(error))
        except SQLAlchemyError as error:
            # The ledger went away mid-run: the page in hand was rolled back whole; the cursor
            # stays at the last committed page, where the next run resumes.
            report.status = "failed"
            problem = ledger_problem(error, self.ledger.engine.url.render_as_string())
            report.error = (
                f"ledger: {problem.message}"
                if problem
                else f"ledger: {type(error).__name__}: {getattr(error, 'orig', error)}"
            )
            report.exit_code = problem.exit_code if problem else None
            bound.error("sync.failed", error=report.error)
        except Exception as error:
            report.status = "failed"
            if isinstance(error, OSError) and error.errno in exit_codes.NO_SPACE_ERRNOS:
                # A full disk (the plan's spool, a file a connector keeps) is the machine's
                # state, not a defect: one line with the place, no frames; callers say it so.
                report.error = f"disk: {error}"
                report.exit_code = exit_codes.UNAVAILABLE
                bound.error("sync.failed", error=report.error)
                raise
            # Unexpected: the run is recorded as failed (never left "running"), the traceback
            # logged as a field, and the error raised on to the caller.
            report.error = f"internal: {type(error).__name__} (the traceback is in the log)"
            bound.error("sync.crashed", error=report.error, exc_info=True)
            raise
        finally:
            usage = self.connector.usage
            report.counts.api_calls = usage.calls
            report.counts.api_used, report.counts.api_limit = usage.used, usage.limit
            report.finished_at = self.ledger.clock()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if not dry_run:
                try:
                    self._record_run_end(report)
                except SQLAlchemyError as error:
                    bound.error("sync.run_not_recorded", error=str(getattr(error, "orig", error)))
                if self._lease is not None:
                    self._lease.release()
        bound.info(
            "sync.finished",
            status=report.status,
            seconds={stage: round(spent, 3) for stage, spent in report.seconds.items()},
            **asdict(report.counts),
        )
        structlog.contextvars.unbind_contextvars("run_id", "connector")
        return report

    def _owed(self) -> tuple[int, int, int]:
        """This CRM's pending writes, as a run's headway changes them: how many, the newest id
        and their attempts (aggregates through the pending index: a first sync queues hundreds
        of thousands)."""
        with self.ledger.engine.connect() as conn:
            row = conn.execute(
                select(
                    func.count(),
                    func.coalesce(func.max(outbox.c.id), 0),
                    func.coalesce(func.sum(outbox.c.attempts), 0),
                ).where(outbox.c.connector == self.name, outbox.c.status == "pending")
            ).one()
        return int(row[0]), int(row[1]), int(row[2])

    def _read_positions(self) -> dict[str, object]:
        """Where each of this connector's reads of its CRM stands: its stored cursor less
        ``read_until`` (the bound every run moves), by object. A read through a backlog of
        changes that say nothing new of consent moves it; so does every read of a CRM whose
        position is a token it renews each time (hence read with the count of records read)."""
        with self.ledger.engine.connect() as conn:
            rows = conn.execute(
                select(sync_cursors.c.object_type, sync_cursors.c.cursor).where(
                    sync_cursors.c.connector == self.name, ~sync_cursors.c.object_type.startswith("~")
                )
            ).all()
        positions: dict[str, object] = {}
        for object_type, stored in rows:
            value = orjson.loads(stored) if stored else None
            if isinstance(value, dict):
                value.pop("read_until", None)
                value.pop(CLOCK_KEY, None)  # measured again by every read
            positions[object_type] = value
        return positions

    def _fail_if_stalled(
        self, report: RunReport, owed_before: tuple[int, int, int], positions: dict[str, object]
    ) -> None:
        """A run stopped on its own budget (``budget.per_run``) without headway: nothing new
        read (every record read said nothing new, and none moved a read on), no pending write
        sent, settled or tried. Counted in ``counts.stalled_runs``, run after run; the second in a
        row is failed as the admin's to fix (exit 2, one line): every later run would spend its
        calls on the same reads, the writes owed (a withdrawal among them) never sent, or, where
        none is owed or they are held (observe mode, the push guard), the reads never finished (a
        no given in the CRM on an object read later would never be read). One such run alone
        stays "stopped": a run may pay calls the next does not (the hour's describes)."""
        counts = report.counts
        if (
            counts.pushed
            or counts.push_failed
            or counts.echoes_recognised
            or counts.deleted_records
            or counts.quarantined
            or counts.read > counts.unchanged_records
        ):
            return
        try:
            if counts.read and self._read_positions() != positions:
                return  # records read moved a read on: a backlog of other changes, say
            owed = self._owed()
            if owed != owed_before:
                return
            with self.ledger.engine.connect() as conn:
                held = owed[0] and self._why_held(conn) is not None
                previous = conn.execute(
                    select(sync_runs.c.counts)
                    .where(sync_runs.c.connector == self.name, sync_runs.c.id != report.run_id)
                    .order_by(sync_runs.c.started_at.desc())
                    .limit(1)
                ).scalar()
        except SQLAlchemyError:
            return  # the ledger's trouble is not the budget's: the run stays stopped
        before = orjson.loads(previous).get("stalled_runs", 0) if previous else 0
        counts.stalled_runs = before + 1
        if counts.stalled_runs < 2:
            return
        budget = getattr(getattr(self.connector, "config", None), "budget", None)
        per_run = getattr(budget, "per_run", None)
        calls = self.connector.usage.calls
        lost = (
            f"none of the {owed[0]} writes owed sent"
            if owed[0] and not held
            else "its reads never finished (a change in the CRM may never be read)"
        )
        report.status = "failed"
        report.error = (
            f"config: settings budget.per_run {per_run} of connector {self.name!r}: {counts.stalled_runs} "
            f"runs in a row spent it ({calls} API calls this one) without headway, nothing new read and "
            f"{lost}; every run would do the same; set it above {calls}"
            + (", with room for the writes" if owed[0] and not held else "")
        )
        report.exit_code = exit_codes.CONFIG

    def _queue_what_is_owed(self, report: RunReport) -> None:
        """The CRM's reads failed: what the ledger already knows it owes this CRM (a withdrawal
        captured elsewhere, an objection, an erasure, and what the pages committed so far said)
        is queued all the same, decided on the records as last seen, so that it waits in the
        outbox, shown by ``status`` and alerted as a late suppression, rather than never being
        queued while the reads keep failing. Nothing is sent to a CRM that cannot be read; the
        next run that reads it sends the queue. A ledger error here is logged, and the CRM's
        error stays the run's."""
        try:
            self._follow_ledger(report)
        except SQLAlchemyError as error:
            log.error("sync.owed_not_queued", error=type(error).__name__)

    def _spool_pages(
        self,
        report: RunReport,
        reads: list[_Read],
        until: datetime,
        spool: PageSpool,
        *,
        only: list[_Read] | None = None,
    ) -> None:
        """A plan's reads (``only``: those of ``reads``) into ``spool``, each page by its read's
        place in ``reads``."""
        number = {id(read): index for index, read in enumerate(reads)}
        pages = iter(self._pages_of(reads if only is None else only, until, self.connector))
        while True:
            with _timed(report, "read"):
                item = next(pages, None)
            if item is None:
                break
            if self.stop_requested.is_set():
                raise _Stop
            read, page, final = item
            spool.add((number[id(read)], page, final))

    def _plan(self, report: RunReport, *, until: datetime, full: bool) -> None:
        """A dry run: the whole run in one transaction that is rolled back, so that every page
        sees what earlier pages did, and the plan is exactly what a real run would do now.

        The CRM is read first, into a spool, outside any write transaction: the plan's
        transaction holds the ledger's writer lock, and the other runs must not wait on this
        CRM's answers (a first read of a large CRM takes minutes)."""
        with reading(self.ledger.engine) as conn:
            reads = self._reads(conn, report, full=full, dry_run=True)
        with PageSpool() as spool:
            self._spool_pages(report, reads, until, spool)
            # Where the CRM's clock was set back since a read's cursor was stored, the run reads
            # it once more from as far back (``_rewind_if_set_back``): so does the plan.
            again = self._reads_gone_back(reads)
            if again:
                reads += again
                self._spool_pages(report, reads, until, spool, only=again)
            with self.ledger.engine.connect() as conn:
                outer = conn.begin()
                self._shared = conn
                try:
                    # Recorded in this transaction, rolled back with it: the plan shows the
                    # expiries due and the pushes they imply, and the ledger keeps nothing.
                    self._expire_due(report, dry_run=True)
                    self._catch_up_feed(report)
                    self._pull(
                        report,
                        until=until,
                        full=full,
                        dry_run=True,
                        spooled=((reads[index], page, final) for index, page, final in spool),
                    )
                    self._follow_ledger(report)
                    pending = conn.execute(
                        select(outbox)
                        .where(outbox.c.connector == self.name, outbox.c.status == "pending")
                        .order_by(outbox.c.id)
                    ).all()
                    report.plan_pushes = [
                        PlannedPush(row.object_type, row.record_id, orjson.loads(row.fields), row.rule)
                        for row in pending
                    ]
                    report.plan = Plan(self.name, plan_items(conn, self.name, list(pending)))
                    report.counts.would_push = report.plan.changes()
                    # What a run now would do with them: a first sync's plan read as "this will
                    # write to my CRM" where the connector only observes.
                    report.would_hold = self._why_held(conn)
                finally:
                    self._shared = None
                    outer.rollback()

    @contextmanager
    def _transaction(self, *, defer: bool = False) -> Iterator[Connection]:
        """A write transaction that holds only while this run still owns its connector. With
        ``defer``, on the run's own write connection, its commit may be left to the next
        transaction (``RunWriter.transaction``); ``_commit_deferred`` commits it."""
        if self._shared is not None:
            yield self._shared
        elif self._writer is not None:
            check = self._lease.check if self._lease is not None else None
            with self._writer.transaction(check, defer=defer) as conn:
                yield conn
        else:
            with self.ledger.engine.begin() as conn:
                if self._lease is not None:
                    self._lease.check(conn)
                yield conn

    def _commit_deferred(self) -> None:
        if self._writer is not None:
            self._writer.commit()

    def _warm_for(self, conn: Connection) -> WarmSubjects | None:
        """What the run's committed pages know about their people, for a transaction on the
        run's own write connection (sync/writer.py)."""
        writer = self._writer
        return writer.warm if writer is not None and conn is writer.connection else None

    # -- pull ----------------------------------------------------------------------------------

    def _reads(self, conn: Connection, report: RunReport, *, full: bool, dry_run: bool) -> list[_Read]:
        """Every mapped object's read (and, where the connector lists them, its deletions', on a
        cursor of their own), each from its stored cursor."""
        reads: list[_Read] = []
        self._rereading = set()
        self._history_bounds = {}
        for mapping in self.mappings:
            keys = [mapping.object]
            if self.connector.reads_deletions and not dry_run:
                keys.append(mapping.object + DELETIONS)
            for key in keys:
                stored, rethink, again = self._load_read(conn, key)
                # What the reads before passed of the records' history (``Cursor.history_from``):
                # kept with the cursor of a read of every record again for as long as it lasts
                # (``_save_cursor``), so that a run resuming it after a cut (a kill, the budget, a
                # stop) is handed it again; the position alone is no such bound (the records
                # after it were read by no read since that bound).
                passed = (
                    Cursor(stored.history_from, stored.history_from_id)
                    if stored.history_from is not None
                    else None
                )
                stored = replace(stored, history_from=None, history_from_id=None)
                if again is not None:
                    # The stored position says which records changed since the last read, under
                    # the mapping of that read: a record the new mapping reads differently (a
                    # field added, a rule changed) but nobody edited since lies behind it, and
                    # its no would never be read. The object is read from its first record; what
                    # was seen before is recognised by its snapshot.
                    said = f"mapping for {mapping.object} {again}: reading every record again"
                    report.note = f"{report.note}; {said}" if report.note else said
                    log.warning("sync.mapping_changed", object=mapping.object, reason=again)
                    if passed is None:
                        # Where an incremental read would resume, with the configured look-back:
                        # not the end of the read before (a read cut short by a kill or the
                        # budget kept its bound though it never reached the records after its
                        # position), nor its position alone (one more moment of it was read only
                        # up to the record id). A re-read still under way, cut short and now
                        # changed again, keeps its own bound (above): the records after its
                        # position were read by none since, and none before it passed less.
                        passed = self.connector.resume_from(stored, self._lookback())
                    stored = Cursor()
                if rethink:
                    self._rereading.add(key)
                # A full run reads every record again; a deletion listing goes on from where it
                # ended (what was gone before was handled then): listed from the beginning, each
                # deletion in the CRM's history costs a call where a connector looks it up (a
                # converted lead retrieved, an archived contact read), and a listing from the
                # beginning looks none up, so a no given on a record converted or deleted since
                # the last run would come without its values.
                relist = full and not key.endswith(DELETIONS)
                use_full = relist or again is not None
                if relist:
                    stored = Cursor()
                # An incremental read starts the look-back window behind the stored position:
                # a change stamped before it may have become visible only since. What was
                # already seen there is recognised by its snapshot and costs an API call,
                # never a second piece of evidence.
                since = stored if use_full else self.connector.resume_from(stored, self._lookback())
                if rethink and not relist and passed is not None and passed.modstamp is not None:
                    # Every record again, but not their history: the bound tells a connector
                    # that reads records' earlier values (HubSpot's address history) what the
                    # reads before already passed (taken, superseded, or left out on purpose);
                    # only a first read or a full run takes the whole history.
                    since = replace(since, history_from=passed.modstamp, history_from_id=passed.record_id)
                    self._history_bounds[key] = passed
                read = _Read(mapping, key, stored, since, key.endswith(DELETIONS))
                read.rethink = rethink
                began = self.connector.rewound(since, timedelta(0))
                self._started_from[key] = began.modstamp if began is not None else None
                reads.append(read)
        return reads

    def _load_read(self, conn: Connection, key: str) -> tuple[Cursor, bool, str | None]:
        """The stored cursor of read ``key``; whether its records are to be taken whole (the
        mapping changed since some of them were last seen, or is not known); and why the read
        starts again from the first record (None: it resumes from the cursor)."""
        wanted = self._read_digests.get(key)
        row = conn.execute(
            select(sync_cursors.c.cursor, sync_cursors.c.run_id).where(
                sync_cursors.c.connector == self.name, sync_cursors.c.object_type == key
            )
        ).first()
        self._clock_from[key], self._back_from[key] = None, None
        if wanted is None:  # a deletion listing: what it lists does not depend on the mapping
            data = orjson.loads(row.cursor) if row else None
            self._clock_from[key], self._back_from[key] = _stored_offset(data), _stored_back_from(data)
            return Cursor.from_json(data), False, None
        if row is None:
            # A first read, or a cursor an admin removed (state reset) after records were seen:
            # under which mapping is not known, so none is skipped as read as last seen.
            return Cursor(), self._object_seen(conn, key), None
        data = orjson.loads(row.cursor)
        cursor = Cursor.from_json(data)
        self._clock_from[key], self._back_from[key] = _stored_offset(data), _stored_back_from(data)
        held = data.get(READS_KEY) if isinstance(data, dict) else None
        if not (isinstance(data, dict) and data.get(REREADING_KEY)):
            # A history bound belongs to a read of every record again still under way only.
            cursor = replace(cursor, history_from=None, history_from_id=None)
        if held == wanted:
            # The same mapping; a re-read under it that a crash or a stop cut short goes on.
            return cursor, bool(data.get(REREADING_KEY)), None
        if held is None and str(row.run_id or "").startswith(_RESET_RUN_PREFIX):
            # A position an admin chose by hand: the read goes from there, taking what it reads
            # whole (the mapping before it is not known).
            return cursor, True, None
        if held is None:
            return cursor, True, "is not recorded with the cursor (stored by an earlier version)"
        return cursor, True, "changed"

    def _object_seen(self, conn: Connection, object_type: str) -> bool:
        """Whether the ledger holds records of ``object_type`` from this connector."""
        found = conn.execute(
            select(crm_links.c.id)
            .where(crm_links.c.connector == self.name, crm_links.c.object_type == object_type)
            .limit(1)
        ).first()
        return found is not None

    def _pull(
        self,
        report: RunReport,
        *,
        until: datetime,
        full: bool,
        dry_run: bool,
        spooled: Iterator[tuple[_Read, list[CrmRecord] | None, Cursor | None]] | None = None,
    ) -> None:
        """``_pull_pages``, with the grants its pages hold for the run's reads weighed once they
        are all read (``_weigh_held_over``), or, where the reads stop short, left for the next
        run to read again (``_park_held_over``)."""
        with self._transaction() as conn:
            # A first read of the CRM has no older record to move: nothing is held, nor looked up.
            older = conn.execute(
                select(crm_links.c.id)
                .where(crm_links.c.connector == self.name, crm_links.c.linked_at < report.started_at)
                .limit(1)
            ).first()
        self._held_over, self._held_over_since = {}, report.started_at if older is not None else None
        try:
            self._pull_pages(report, until=until, full=full, dry_run=dry_run, spooled=spooled)
        except BaseException:
            self._park_held_over(report, dry_run=dry_run)
            raise
        self._weigh_held_over(report, dry_run=dry_run)

    def _pull_pages(
        self,
        report: RunReport,
        *,
        until: datetime,
        full: bool,
        dry_run: bool,
        spooled: Iterator[tuple[_Read, list[CrmRecord] | None, Cursor | None]] | None = None,
        only: set[str] | None = None,
    ) -> None:
        """Reads every mapped object's changes (``only``: those reads), committing page by page.
        The reads run one after the other in a reader thread one page ahead of the commits,
        across objects too: the next object's first page is on its way while the last one's is
        committed. A plan hands in the pages it read beforehand (``spooled``)."""

        def take(
            read: _Read, page: list[CrmRecord] | None, final: Cursor | None, *, defer: bool = False
        ) -> None:
            # The bound kept with the cursor: the CRM's first answers are in by now, and where they
            # showed its clock behind ours, the bound is a moment of the CRM's clock (a run's
            # first read was asked for before anything was known of it).
            kept = min(until, self._read_until(report.started_at))
            if read.covered_until is not None:
                # The CRM showed its changes whole only up to an earlier moment (a transaction
                # still open): the next read's look-back window starts behind that one.
                kept = min(kept, read.covered_until)
            if page is None:
                self._end_read(read, final, report, until=kept)
            else:
                self._commit_read_page(read, page, final, report, until=kept, dry_run=dry_run, defer=defer)

        if spooled is not None:
            for item in spooled:
                take(*item)
            return
        with self._transaction() as conn:
            reads = self._reads(conn, report, full=full, dry_run=dry_run)
        if only is not None:
            reads = [read for read in reads if read.key in only]
        # A few batches ahead: a CRM page holds several of our batches, and the next CRM page
        # must be on its way while the last batches of this one are committed.
        readers = [self.connector.reader() for _ in reads[1:]]
        pages: Prefetch[Any] | PrefetchEach[Any]
        if reads[1:] and all(reader is not None for reader in readers):
            # The CRM serves reads side by side: each read has a reader of its own, all of them
            # asking from the start; their pages are still committed one read after another.
            pages = PrefetchEach(
                [
                    self._pages_of([read], until, reader)
                    for read, reader in zip(reads, [self.connector, *readers], strict=True)
                ],
                depth=READ_AHEAD,
                stop=self.stop_requested,
                name=f"consentsync-read-{self.name}",
            )
        else:
            pages = Prefetch(
                self._pages_of(reads, until, self.connector),
                depth=READ_AHEAD,
                stop=self.stop_requested,
                name=f"consentsync-read-{self.name}",
            )
        with pages:
            try:
                while True:
                    with _timed(report, "read"):
                        got = next(pages, None)
                    if got is None:
                        break
                    item, _ = got
                    if self.stop_requested.is_set():
                        raise _Stop
                    # Behind the reads (the next batch is in): the batch's commit may wait for
                    # the next one's. Never while the run waits for the CRM: the ledger's write
                    # lock is not held across a read.
                    take(*item, defer=pages.waiting)
            finally:
                # Whatever stopped the pages (their end, a stop, the CRM's error), the batches
                # taken are whole, each with its cursor: commit them. A batch that failed rolled
                # its group back itself, and the run ends.
                self._commit_deferred()
        if self.stop_requested.is_set():
            raise _Stop
        if only is None and not dry_run:
            # Every read ended: the CRM's answers tell its clock now. Where it was set back
            # since a read's cursor was stored, that read goes once more from as far back.
            rewound = self._rewind_if_set_back(reads, report)
            if rewound:
                self._pull_pages(report, until=until, full=False, dry_run=False, only=rewound)

    def _pages_of(
        self, reads: list[_Read], until: datetime, connector: Connector
    ) -> Iterator[tuple[_Read, list[CrmRecord] | None, Cursor | None]]:
        """In a reader thread: each read's pages, each with the connector's completed cursor as
        it stood right after the page was made (a read that ended may hand over a new token with
        its last page), then ``(read, None, completed cursor)`` when the read ended."""
        for read in reads:
            connector.completed_cursor = None
            connector.covered_until = None
            mapping = read.mapping
            records = (
                # The mapped fields: a deletion that comes with its last values may carry a no.
                connector.read_deletions_with(mapping.object, mapping.pull_fields(), read.since, until)
                if read.deletions
                else connector.read_changes(mapping.object, mapping.pull_fields(), read.since, until)
            )
            for page in pages_read(records, self.options.batch_size):
                read.expected_records = connector.expected_records
                read.covered_until = connector.covered_until
                yield read, page, connector.completed_cursor
            read.covered_until = connector.covered_until
            yield read, None, connector.completed_cursor

    def _commit_read_page(
        self,
        read: _Read,
        page: list[CrmRecord],
        final: Cursor | None,
        report: RunReport,
        *,
        until: datetime,
        dry_run: bool,
        defer: bool = False,
    ) -> None:
        """Commits one page, the read's cursor moving with it and never backwards (pages inside
        the look-back window are behind it). The cursor keeps the read's upper bound, ``until``:
        the next read's look-back window starts behind that. Before the read ended, pages keep
        the token the read started from."""
        if report.stage != f"reading {read.key}":
            report.stage, report.stage_done, report.stage_total = f"reading {read.key}", 0, None
        failpoint("sync.page.read")
        report.stage_done += len(page)
        report.stage_total = read.expected_records
        last = page[-1]
        candidate = final or Cursor(last.modstamp, last.record_id, read.stored.token, until)
        position = read.position
        advance = final is not None or position.modstamp is None or _later(candidate, position)
        with _timed(report, "pages"), self._transaction(defer=defer) as conn:
            self._commit_page(
                conn,
                read.mapping,
                page,
                report,
                dry_run=dry_run,
                cursor=(read.key, candidate) if advance else None,
                rethink=read.rethink,
            )
        if advance:
            read.position = candidate
        read.kept = final is not None
        report.counts.api_calls = self.connector.usage.calls
        if self._writer is None or not self._writer.deferring:
            # Progress is told committed work only: its callback may write to the ledger itself.
            self.progress(report)

    def _end_read(self, read: _Read, final: Cursor | None, report: RunReport, *, until: datetime) -> None:
        position = read.position
        # A read going through every record again under a changed mapping is done: its cursor is
        # stored without the mark, whether or not it moved (an object with nothing to read).
        again = read.key in self._rereading
        self._rereading.discard(read.key)
        if final is not None and not read.kept:
            # The read ended after the last committed page (or yielded nothing): every record is
            # committed, so the new token is safe to keep.
            with self._transaction() as conn:
                self._save_cursor(conn, read.key, final, report.run_id, self.ledger.clock())
        elif final is None and position.modstamp is not None and position.read_until != until:
            # The read went to its end without passing the position (only the look-back window
            # was there): every change visible up to ``until`` is committed all the same.
            with self._transaction() as conn:
                self._save_cursor(
                    conn, read.key, replace(position, read_until=until), report.run_id, self.ledger.clock()
                )
        elif again:
            with self._transaction() as conn:
                self._save_cursor(conn, read.key, position, report.run_id, self.ledger.clock())
        # The next read's first page is asked of the CRM: no write lock held meanwhile.
        self._commit_deferred()
        self.progress(report)

    def _reread_quarantined(self, report: RunReport) -> None:
        """Records quarantined on reading that ops asked to retry are read again by id and go
        through the same flow as any page; the cursor stays where it is (they are behind it).
        Each retried row is resolved; a record that still fails is quarantined again, in this run."""
        if not self.connector.can_read_by_id:
            return
        with self._transaction() as conn:
            asked = conn.execute(
                select(quarantine.c.id, quarantine.c.object_type, quarantine.c.record_id).where(
                    quarantine.c.connector == self.name,
                    quarantine.c.stage == "pull",
                    quarantine.c.resolved_at.is_(None),
                    quarantine.c.retry_requested_at.is_not(None),
                )
            ).all()
        by_object: dict[str, list[Any]] = {}
        for row in asked:
            by_object.setdefault(row.object_type, []).append(row)
        for object_type, rows in by_object.items():
            mapping = self.by_object.get(object_type)
            if mapping is None:
                continue
            ids = sorted({row.record_id for row in rows})
            report.stage, report.stage_done, report.stage_total = f"re-reading {object_type}", 0, len(ids)
            page = list(self.connector.read_records(object_type, mapping.pull_fields(), ids))
            with self._transaction() as conn:
                if page:
                    # Taken whole: a value held back when the record was last read (a grant
                    # dated in the future) is not skipped as read as last seen.
                    self._commit_page(conn, mapping, page, report, dry_run=False, cursor=None, rethink=True)
                conn.execute(
                    update(quarantine)
                    .where(one_of(conn, quarantine.c.id, [row.id for row in rows]))
                    .values(resolved_at=self.ledger.clock())
                )
            report.stage_done = len(ids)
            self.progress(report)

    def _commit_page(
        self,
        conn: Connection,
        mapping: Mapping,
        page: list[CrmRecord],
        report: RunReport,
        *,
        dry_run: bool,
        cursor: tuple[str, Cursor] | None,
        rethink: bool = False,
    ) -> None:
        """Commits one page of records. With ``rethink`` (the mapping changed since the records
        were last seen), none is skipped as read as last seen: its values may mean something else
        now, or a field read now was not before, and what its CRM record should show is decided
        again."""
        now = self.ledger.clock()
        clock_lag = self._clock_lag(mapping.object)
        counts = report.counts
        counts.read += len(page)
        # Deleted and merged records are handled after the page's live ones: a merge's survivor
        # read on the same page is then known, and takes the merged record's no.
        gone = [record for record in page if record.deleted]
        if gone:
            page = [record for record in page if not record.deleted]
        # Values live records held since the last read and no longer show (HubSpot's statuses of
        # the address a contact had before a user changed it), weighed against what the record
        # showed at that read: its snapshot before this page's.
        earlier = [record for record in page if record.earlier_values]
        seen_before = (
            self._load_snapshots(conn, mapping.object, [r.record_id for r in earlier]) if earlier else {}
        )
        seen_at = (
            self._snapshot_times(conn, mapping.object, [r.record_id for r in earlier]) if earlier else {}
        )
        # Our own writes whose answer was lost (a crash between the CRM's answer and the commit):
        # read back, they are acknowledged now, and their values are never the person's choice.
        echoes = self._recognise_echoes(conn, mapping, page, report, now)
        # A record read again exactly as last seen (the look-back window, our own writes read
        # back, a full re-read) says nothing new: only the cursor moves past it.
        digests = self._identity_digests(conn, mapping, page)
        # The page's own links and snapshots, in one lookup.
        held = self._page_links(conn, mapping.object, [record.record_id for record in page])
        unchanged = {
            record.record_id
            for record in page
            if not rethink
            and _unchanged(mapping, record, held.get(record.record_id), digests[record.record_id])
            and record.record_id not in echoes
        }
        if unchanged:
            counts.unchanged_records += len(unchanged)
            page = [record for record in page if record.record_id not in unchanged]
        snapshots = self._load_snapshots(
            conn,
            mapping.object,
            [rid for rid, row in held.items() if row.fields is not None and rid not in unchanged],
        )
        good: list[tuple[CrmRecord, Identity, list[CrmLink], list[Evidence]]] = []
        problems: list[dict[str, Any]] = []
        email_field = mapping.spec.identity.email
        for record in page:
            # What ops must correct on a record whose values are recorded all the same.
            to_correct: list[str] = []
            try:
                try:
                    record_id, email, links = mapping.identity_from(record.fields)
                except MappingValueError as error:
                    if not email_field or error.field != email_field or record.record_id not in held:
                        raise
                    # A record the ledger already knows is its person's by its id (identity: the
                    # record id first): an address the CRM holds wrongly (a typo) is quarantined
                    # for ops, but the record's values (an opt-out ticked with it) are still that
                    # person's, and must reach their other records and CRMs.
                    to_correct.append(str(error))
                    record_id, email, links = mapping.identity_from({**record.fields, email_field: None})
                # A person an older version holds under the address as it came (a domain in NFD,
                # fullwidth letters) is this record's person too, not a second one (as_read).
                email = as_read(email, field_value(record.fields, email_field) if email_field else None)
                # A value the mapping cannot translate stops only what it says (docs/policy.md,
                # "Event times and input limits"): a no is read without it, a grant on a basis
                # the mapping cannot name is held back, alone, and the record is quarantined for
                # the value. A record with nothing else to say waits whole, as it always did.
                held_back: list[MappingValueError] = []
                evidence = mapping.evidence_from(
                    record.fields,
                    connector=self.name,
                    observed_at=now,
                    record_id=record_id,
                    held_back=held_back,
                    clock_lag=clock_lag,
                )
                try:
                    evidence = self._recordable(evidence, now, to_correct)
                except InvalidInput:
                    if held_back:
                        raise held_back[0] from None
                    raise
                if held_back and not evidence:
                    raise held_back[0]
                to_correct += [
                    reason for reason in dict.fromkeys(map(str, held_back)) if reason not in to_correct
                ]
            except InvalidInput as error:
                problems.append(
                    self._quarantine_row(report, mapping.object, record.record_id, "pull", str(error), now)
                )
                continue
            problems += [
                self._quarantine_row(report, mapping.object, record.record_id, "pull", reason, now)
                for reason in to_correct
            ]
            extra = [CrmLink(self.name, obj, linked) for obj, linked in links]
            good.append(
                (
                    record,
                    Identity(
                        email=email,
                        link=CrmLink(self.name, mapping.object, record_id),
                        # An emoji the CRM kept as "?": the person holding the real address.
                        folds_astral_to=self.connector.folds_astral_to,
                    ),
                    extra,
                    evidence,
                )
            )

        # Identity: the record's own id first, then the records it points to (a consent record's
        # Individual), then the email address.
        known = {
            CrmLink(self.name, mapping.object, record_id): row.subject_id for record_id, row in held.items()
        }
        known.update(self._known_links(conn, [link for _, _, links, _ in good for link in links]))
        identities = []
        for _, identity, links, _ in good:
            if identity.link not in known:
                via = next((link for link in links if link in known), None)
                if via is not None and via.object_type in self._addressed:
                    identity = Identity(email=identity.email, link=identity.link, subject_id=known[via])
                elif via is not None:
                    # A record without an address (an Individual): its person's, unless this
                    # record carries an address another person holds, whose record it then is,
                    # whatever was read first (``SubjectResolver._pointed_or_holder``).
                    identity = Identity(email=identity.email, link=identity.link, pointed=known[via])
            identities.append(identity)
        # A record of one person (by its id) that now carries another person's address (a CRM
        # user's edit, an import, a merge that kept the other's address): the CRM writes to that
        # address, so that person's nos and erasure reach the record's person, as in a merge.
        elsewhere: list[tuple[int, int]] = []
        # The addresses read that their holders left, found with their holders (no lookup more).
        left: dict[str, tuple[int, str]] = {}
        subject_ids, created = self.ledger.link_in(
            conn,
            identities,
            run_id=report.run_id,
            elsewhere=elsewhere,
            left=left,
            # Kept on the links made now: an erasure's delete or anonymise reaches only the
            # records the CRM held when it was made (``_erasure_reaches``).
            record_created={
                identity.link: record.created_at
                for record, identity, _, _ in good
                if record.created_at is not None and identity.link is not None
            },
        )
        # Records speaking for their person only through an address the person left: their
        # grants are no word of the person's (``_through_left``). Nothing is read for a page
        # showing no such address. (The page's absorptions below never take the address
        # holder, so the people found here stay the records' people.)
        aside = (
            self._through_left(conn, mapping, good, identities, subject_ids, left, held, digests)
            if left
            else set()
        )
        # Records new to the ledger showing an address a record of the same person moves off
        # on this page: whether it is left is known once the page is written (``note_rereads``),
        # and such a record, linked on the leaving page, is linked after the move (the recycled
        # mailbox's new owner's contact read beside the former holder's edit). Their grants
        # wait for that (``_weigh_waiting``); their nos are recorded. Worked out before the
        # records they point to are linked: until they are weighed they bring their person
        # nothing they point to, as the records in ``aside`` (below). Nothing is looked at for a
        # page on which no known record shows another address.
        suspects = self._on_the_leaving_page(good, identities, subject_ids, held, digests, aside)
        # The records they point to that the ledger does not know yet are their people's (the
        # first record's showing an address, else the first record's). One without an address
        # that records showing the addresses of two people point to (one Individual for a work
        # and a home Contact) is neither's alone: a person of its own, tied to both (below), as it
        # is when read first. So is one that only records in ``aside`` or ``suspects`` point to:
        # a record that is the person's only through an address they left brings them nothing
        # it points to (the old mailbox's new owner's Individual, whose consent records would
        # speak for the former holder), as when read first.
        pointed: dict[CrmLink, list[tuple[int, bool]]] = {}
        for (record, identity, links, _), subject_id in zip(good, subject_ids, strict=True):
            for link in links:
                if link not in known:
                    pointed.setdefault(link, []).append(
                        (
                            -1 if record.record_id in aside or record.record_id in suspects else subject_id,
                            identity.email is not None,
                        )
                    )
        if pointed:
            extra_links = [
                Identity(link=link)
                if (
                    link.object_type not in self._addressed
                    and len({subject_id for subject_id, addressed in people if addressed}) > 1
                )
                or all(subject_id == -1 for subject_id, _ in people)
                else Identity(
                    link=link,
                    subject_id=next(
                        (s for s, addressed in people if s != -1 and addressed),
                        next(s for s, _ in people if s != -1),
                    ),
                )
                for link, people in pointed.items()
            ]
            linked, made = self.ledger.link_in(conn, extra_links, run_id=report.run_id)
            created += made
            # Every record linked so, with its person: a record of the page pointing to it whose
            # person differs is tied to that person, or shares the record (below). (A Contact
            # without an address beside the work Contact pointing to the same new Individual is
            # the work address's holder's, as when the Individual is read first.)
            known.update(zip(pointed, linked, strict=True))
        counts.subjects_created += created
        revived = [
            row for record, _, _, _ in good if (row := held.get(record.record_id)) and row.gone_at is not None
        ]
        if revived:
            self._revive_links(conn, mapping.object, revived, report, now)
        # A record tying two people (its address is one's, a record it points to the other's) may
        # prove that a person known only through records without an address is the address
        # holder: read in the other order, the records would have been the holder's. Such a person
        # is absorbed (ledger/absorb.py) before the page's evidence is recorded, so that it goes
        # to the holder. Only the page's ties are looked up: nothing is read for other records.
        ties = set(elsewhere)
        if left:
            ties -= _tied_through_left(identities, subject_ids, left, elsewhere)
        # (a record pointed to, its person, the person of a record pointing to it) where the two
        # differ: rare, and found in the pass that looks for ties anyway.
        pointing: list[tuple[CrmLink, int, int]] = []
        # The ties of the records in ``suspects``: made once they are weighed, if their person
        # did not leave the address they show (``_weigh_waiting``).
        suspected: dict[str, set[tuple[int, int]]] = {}
        for (record, _, links, _), subject_id in zip(good, subject_ids, strict=True):
            for link in links:
                if (other := known.get(link, subject_id)) != subject_id:
                    pointing.append((link, other, subject_id))
                    # A record in ``aside`` ties nobody to its person: it is theirs only through
                    # an address they left (``_tied_through_left``); the record pointed to is
                    # still shared (below), so its person's nos reach them, on the safe side.
                    if record.record_id in suspects:
                        suspected.setdefault(record.record_id, set()).add((other, subject_id))
                    elif record.record_id not in aside:
                        ties.add((other, subject_id))
        into: dict[int, int] = {}
        if ties:
            into = self._absorb(conn, ties, report)
            if into:
                subject_ids = [into.get(subject_id, subject_id) for subject_id in subject_ids]
                elsewhere = [
                    (owner, held)
                    for owner, held in ((into.get(a, a), into.get(b, b)) for a, b in elsewhere)
                    if owner != held
                ]
        # A record still pointed to by another person's record once the page's absorptions are
        # done is shared (sync/shared.py): its person's nos reach that person, now and later. Its
        # person is examined again: known by such records alone, they take on the erasure of
        # sharers who are all erased (``_tell_the_erasures``: an erased person's Contact read
        # after the Individual it points to, which the ledger never absorbs into them).
        sharers: dict[CrmLink, set[int]] = {}
        owners: set[int] = set()
        shared_pairs: set[tuple[int, int]] = set()
        for link, other, subject_id in pointing:
            owner, sharer = into.get(other, other), into.get(subject_id, subject_id)
            if owner != sharer:
                sharers.setdefault(link, set()).add(sharer)
                elsewhere.append((owner, sharer))
                shared_pairs.add((owner, sharer))
                owners.add(owner)

        requests: list[RecordRequest] = []
        snapshot_rows: list[tuple[Any, ...]] = []
        # People whose pushes must be looked at again: a record new to the ledger, or changed, or
        # one a record read here points to (above). A record re-read unchanged (the look-back
        # window) leaves its pending pushes as they are.
        examine: set[int] = set(owners)
        link_ids = {record_id: row.link_id for record_id, row in held.items()}
        new_links = [record.record_id for record, _, _, _ in good if record.record_id not in link_ids]
        if new_links:
            link_ids.update(self._link_ids(conn, mapping.object, new_links))
        stamp = db_time(conn, now)
        # Records known by their id read showing another address, or back from deletion: what
        # their people hold or left (``Ledger.note_rereads``), weighed once the page is written.
        rereads = [
            Reread(subject_id, identity.link, before.identity, digests[record.record_id])
            for (record, identity, _links, _evidence), subject_id in zip(good, subject_ids, strict=True)
            if (before := held.get(record.record_id)) is not None
            and identity.link is not None
            and (before.identity != digests[record.record_id] or before.gone_at is not None)
        ]
        # The grants of the records in ``suspects`` wait for the page's rereads to be weighed.
        waiting: dict[str, tuple[int, list[Evidence]]] = {}
        # And those of records that a later page of this run may make the person's only through
        # an address they left: they wait for the run's reads (``_held_over_candidates``).
        over = (
            self._held_over_candidates(conn, good, identities, subject_ids, held, digests, aside | suspects)
            if self._held_over is not None
            else set()
        )
        for (record, _identity, _links, evidence), subject_id in zip(good, subject_ids, strict=True):
            seen = snapshots.get(record.record_id, ({}, {}))[0]
            echo = echoes.get(record.record_id, {})
            keyed = [(_evidence_key(e), e) for e in evidence]
            view = {key: _evidence_view(e) for key, e in keyed}
            # Undated values are evidence only when they change: a re-read is not a new
            # observation, and a value this project wrote is not the person's choice.
            fresh = [
                e
                for key, e in keyed
                if not _same(seen.get(key), view[key]) and not _same(echo.get(key), view[key])
            ]
            if fresh and seen:
                fresh = self._not_dated_again(conn, mapping, record.record_id, subject_id, seen, fresh)
            stored = snapshots.get(record.record_id)
            # A shared record's snapshot keeps who else points to it (sync/shared.py).
            read = _consent_fields(mapping, record.fields)
            fields = canonical_json(shared.keep(stored[1] if stored is not None else None, read))
            if not fresh:
                counts.unchanged_records += 1
            before = held.get(record.record_id)
            if (
                fresh
                or rethink
                or stored is None
                or canonical_json(stored[1]) != fields
                # A new address: whether it is an erased one decides what the record may show.
                or (before is not None and before.identity != digests[record.record_id])
                # A record back from the recycle bin as it was deleted: a no, an erasure or a
                # restriction recorded while it was gone reached no live record of the person.
                or (before is not None and before.gone_at is not None)
            ):
                examine.add(subject_id)
            if record.record_id in aside:
                fresh = self._set_aside(report, mapping, record.record_id, fresh, problems, now)
            elif record.record_id in suspects:
                # Weighed whether or not it says yes: its ties wait too.
                waiting[record.record_id] = (
                    subject_id,
                    [e for e in fresh if e.status not in SAID_NO_STATUSES],
                )
                fresh = [e for e in fresh if e.status in SAID_NO_STATUSES]
            elif record.record_id in over and self._held_over is not None:
                grants = [e for e in fresh if e.status not in SAID_NO_STATUSES]
                if grants:
                    self._held_over[(mapping.object, record.record_id)] = _HeldGrants(
                        link_ids[record.record_id], subject_id, digests[record.record_id], grants
                    )
                    fresh = [e for e in fresh if e.status in SAID_NO_STATUSES]
                    # Not in the snapshot until they are weighed: a run that stops before (a
                    # process killed, the ledger lost) leaves them to be read again by id.
                    if self.connector.can_read_by_id:
                        problems.append(self._held_row(report, mapping.object, record.record_id, now))
                    held_keys = {_evidence_key(e) for e in grants}
                    view = {key: value for key, value in view.items() if key not in held_keys}
            requests += [RecordRequest(Identity(subject_id=subject_id), e) for e in fresh]
            snapshot_rows.append(
                (
                    link_ids[record.record_id],
                    canonical_json(view),
                    fields,
                    digests[record.record_id],
                    stamp,
                )
            )
        stats, outcomes = self.ledger.record_in(
            conn, requests, run_id=report.run_id, warm=self._warm_for(conn)
        )
        counts.evidence_recorded += stats.recorded
        counts.evidence_duplicates += stats.duplicates
        counts.state_changes += stats.state_changes
        if elsewhere:  # after the page's own evidence: a no read on this page travels too
            self._carry_the_nos(conn, set(elsewhere), report, sharing=shared_pairs)
        upsert_rows(
            conn,
            crm_snapshots,
            ("link_id", "evidence", "fields", "identity", "updated_at"),
            ("link_id",),
            snapshot_rows,
        )
        if sharers:  # after the page's snapshots: a record pointed to may be on the page
            shared.mark(conn, self.name, sharers, now)
        if problems:
            conn.execute(insert(quarantine), problems)
        if gone:
            self._keep_the_last_no(conn, mapping, gone, report, now)
            # A record merged into another (a lead converted into a contact) lives on in it: the
            # survivor is the person's from when the merged record was (``_carry_linked_at``).
            merged = self._merged_linked_at(conn, mapping, gone)
            self._mark_gone(conn, mapping, gone, report, now)
            if merged:
                self._carry_linked_at(conn, merged)
        # After the snapshots and the deletions: whether a live record still shows an address.
        self.ledger.note_rereads(conn, rereads, run_id=report.run_id)
        if waiting:
            weighed, kept = self._weigh_waiting(conn, report, mapping, waiting, digests, now)
            outcomes = [*outcomes, *weighed]
            # Theirs after all (the address is not left): what they point to ties them, as
            # for any record read, and an address-less person linked for it is absorbed.
            late = {
                pair
                for record_id in kept
                for other, subject_id in suspected.get(record_id, ())
                if (pair := (into.get(other, other), into.get(subject_id, subject_id)))[0] != pair[1]
            }
            if late:
                self._absorb(conn, late, report)
        if earlier:
            # A no among them is the person's, taken as a deleted record's last no is, dated by
            # when it was given (a no dated now would outrank a yes the person gave since). Only
            # the earlier values are weighed there: the current ones were weighed above, our
            # own writes read back among them (echoes) included.
            self._keep_the_last_no(
                conn,
                mapping,
                [replace(r, fields={**r.fields, **(r.earlier_values or {})}) for r in earlier],
                report,
                now,
                seen_before=seen_before,
                seen_at=seen_at,
                echoes=echoes,
            )
        # What to push to these people is decided once, after the pages (a person's records come
        # on several pages: contact, lead, consent records); the marks commit with the page.
        self._mark_for_examination(conn, examine)
        self._follow_feed(conn, report, now)
        if cursor is not None:  # records re-read by id (quarantine retries) are no position
            key, position = cursor
            self._save_cursor(conn, key, position, report.run_id, now)
        if dry_run:
            self._note_planned(conn, report, outcomes)

    def _through_left(
        self,
        conn: Connection,
        mapping: Mapping,
        good: list[tuple[CrmRecord, Identity, list[CrmLink], list[Evidence]]],
        identities: list[Identity],
        subject_ids: list[int],
        left: dict[str, tuple[int, str]],
        held: dict[str, _PageLink],
        digests: dict[str, str],
    ) -> set[str]:
        """The page's records (by id) that speak for their person only through an address the
        person left (``left``, ``SubjectResolver.left``; docs/policy.md, "An address a person no
        longer holds does not speak for them"): whoever writes from it now may be someone else,
        so the record's grants are set aside (``_set_aside``), on its first read and on every
        read while it shows that address; its nos are the person's, on the safe side.

        Not set aside: a record pointing to a record known as the holder's (an Individual: the
        CRM ties it to them, not the address), and a record known by its id as theirs from
        before they left the address (linked no later than ``left_at``) read showing it anew or
        back from deletion: that read makes the address theirs again (``note_rereads``). "From
        before" is linked no later than the record whose move left the address
        (``identity.moved_linked``): any other record showing it was linked by the address alone,
        after the person's record (the recycled mailbox's new owner's contact, made before or
        after the move). A few statements, only for a page showing a left address."""
        showing: dict[str, tuple[int, str]] = {}
        for (record, _, _, _), identity, subject_id in zip(good, identities, subject_ids, strict=True):
            found = left.get(identity.email) if identity.email else None
            if found is None or found[0] != subject_id:
                continue
            if subject_id in (identity.subject_id, identity.pointed):
                continue
            showing[record.record_id] = found
        times = linked_and_left(conn, self.name, mapping.object, showing, self.ledger.keyed_hasher())
        aside: set[str] = set()
        for record_id in showing:
            linked_at, left_at = times.get(record_id, (None, None))
            before = held.get(record_id)
            again = (
                before is not None
                and (before.identity != digests[record_id] or before.gone_at is not None)
                and linked_at is not None
                and left_at is not None
                and linked_at <= left_at
            )
            if not again:
                aside.add(record_id)
        return aside

    def _merged_linked_at(
        self, conn: Connection, mapping: Mapping, gone: list[CrmRecord]
    ) -> dict[CrmLink, tuple[int, datetime, datetime]]:
        """For the records of ``gone`` merged into another (a lead converted into a contact, a
        merge's loser), the survivor's link, with the merged record's person, when it was linked
        to them and since when the CRM held it (its creation, else its link). One read, only for
        a page with such a record."""
        merged = {r.record_id: _survivor_link(self.name, mapping.object, r) for r in gone if r.merged_into}
        if not merged:
            return {}
        found: dict[CrmLink, tuple[int, datetime, datetime]] = {}
        for record_id, subject_id, linked_at, created_at in conn.execute(
            select(
                crm_links.c.record_id,
                crm_links.c.subject_id,
                crm_links.c.linked_at,
                crm_links.c.record_created_at,
            ).where(
                crm_links.c.connector == self.name,
                crm_links.c.object_type == mapping.object,
                one_of(conn, crm_links.c.record_id, sorted(merged)),
            )
        ):
            survivor = merged[record_id]
            held_since = linked_at if created_at is None else min(created_at, linked_at)
            earlier = found.get(survivor)
            if earlier is None:
                found[survivor] = (subject_id, linked_at, held_since)
            else:
                first = earlier if earlier[1] <= linked_at else (subject_id, linked_at, earlier[2])
                found[survivor] = (first[0], first[1], min(first[2], held_since))
        return found

    def _carry_linked_at(
        self, conn: Connection, merged: dict[CrmLink, tuple[int, datetime, datetime]]
    ) -> None:
        """A survivor of the merged person's (``_merged_linked_at``) linked to them since the
        merged record takes the merged record's time: the record it stands for was theirs from
        then, so a move back to an address they left on it is a record of theirs from before
        showing it again (``note_rereads``, ``_through_left``), not one linked after the move.
        It holds their data since the merged record was held too: an erasure's delete or
        anonymise made between reaches it (``_erasure_reaches``), though the CRM made the survivor
        after the erasure (a merge into a record a CRM user entered since, HubSpot's merge making
        a new contact). A survivor another person's stays as it is. Two statements per survivor,
        only where a page merged records."""
        for link, (subject_id, linked_at, held_since) in merged.items():
            theirs = (
                crm_links.c.connector == link.connector,
                crm_links.c.object_type == link.object_type,
                crm_links.c.record_id == link.record_id,
                crm_links.c.subject_id == subject_id,
            )
            conn.execute(
                update(crm_links)
                .where(*theirs, crm_links.c.linked_at > linked_at)
                .values(linked_at=linked_at)
            )
            conn.execute(
                update(crm_links)
                .where(
                    *theirs,
                    or_(crm_links.c.record_created_at.is_(None), crm_links.c.record_created_at > held_since),
                )
                .values(record_created_at=held_since)
            )

    def _on_the_leaving_page(
        self,
        good: list[tuple[CrmRecord, Identity, list[CrmLink], list[Evidence]]],
        identities: list[Identity],
        subject_ids: list[int],
        held: dict[str, _PageLink],
        digests: dict[str, str],
        aside: set[str],
    ) -> set[str]:
        """The page's records (by id) new to the ledger that show, for the same person, the
        address a record of theirs known by its id moves off on this page (its snapshot's
        address before the page), and speak for them by nothing else (not pointing to a record
        known as theirs, as ``_through_left`` weighs it): linked on the page that may leave the
        address, they are linked after the move, and if it is left they are theirs only through
        it. In memory; nothing for a page on which no known record shows another address."""
        moving = {
            (subject_id, before.identity)
            for (record, _, _, _), subject_id in zip(good, subject_ids, strict=True)
            if (before := held.get(record.record_id)) is not None
            and before.identity is not None
            and before.identity != digests[record.record_id]
        }
        if not moving:
            return set()
        return {
            record.record_id
            for (record, _, _, _), identity, subject_id in zip(good, identities, subject_ids, strict=True)
            if record.record_id not in held
            and record.record_id not in aside
            and subject_id not in (identity.subject_id, identity.pointed)
            and (subject_id, digests[record.record_id]) in moving
        }

    def _weigh_waiting(
        self,
        conn: Connection,
        report: RunReport,
        mapping: Mapping,
        waiting: dict[str, tuple[int, list[Evidence]]],
        digests: dict[str, str],
        now: datetime,
    ) -> tuple[list[RecordOutcome], set[str]]:
        """The grants of records linked on the page that may leave the address they show
        (``_on_the_leaving_page``), once the page's rereads are weighed: set aside where their
        person left it (``_set_aside``: the record is theirs only through it), else recorded.
        Returns what was recorded and the records that are their person's after all (by id).
        One read (the people's left addresses), only for such a page."""
        hashed = self.ledger.keyed_hasher()
        left_now = {
            (subject_id, hashed(form))
            for subject_id, value in conn.execute(
                select(subject_identifiers.c.subject_id, subject_identifiers.c.value).where(
                    one_of(conn, subject_identifiers.c.subject_id, sorted({s for s, _ in waiting.values()})),
                    subject_identifiers.c.kind == EMAIL,
                    subject_identifiers.c.left_at.is_not(None),
                )
            )
            for form in email_forms(value)
        }
        problems: list[dict[str, Any]] = []
        requests: list[RecordRequest] = []
        kept: set[str] = set()
        for record_id, (subject_id, grants) in waiting.items():
            if (subject_id, digests[record_id]) in left_now:
                self._set_aside(report, mapping, record_id, grants, problems, now)
            else:
                kept.add(record_id)
                requests += [RecordRequest(Identity(subject_id=subject_id), e) for e in grants]
        if problems:
            conn.execute(insert(quarantine), problems)
        if not requests:
            return [], kept
        # A second batch in the page's transaction: what the run's pages know of their people
        # (``WarmSubjects``, one batch staged) is read again from the ledger after this page.
        warm = self._warm_for(conn)
        if warm is not None:
            warm.discard()
            warm.clear()
        stats, outcomes = self.ledger.record_in(conn, requests, run_id=report.run_id)
        report.counts.evidence_recorded += stats.recorded
        report.counts.evidence_duplicates += stats.duplicates
        report.counts.state_changes += stats.state_changes
        return outcomes, kept

    def _held_over_candidates(
        self,
        conn: Connection,
        good: list[tuple[CrmRecord, Identity, list[CrmLink], list[Evidence]]],
        identities: list[Identity],
        subject_ids: list[int],
        held: dict[str, _PageLink],
        digests: dict[str, str],
        weighed: set[str],
    ) -> set[str]:
        """The page's records (by id) new to the ledger, with a grant, that speak for their person
        only through the address they show (matched by it alone, not pointing to a record of
        theirs), where an older record of the person in this CRM (linked before the run) still
        showed that address when last read: a later page of the run may read it moved off the
        address (another object's read, a page further on), and the new record is then theirs
        only through an address they left (``_through_left``: the old mailbox's new owner's lead,
        made before the person's contact moved). Their grants wait for the run's reads
        (``_weigh_held_over``), as those of a record read on the very page of the move wait for
        the page's (``_weigh_waiting``). One read, only for a page with such a record: a first
        read's people have no older record."""
        wanted = {
            record.record_id: (subject_id, digests[record.record_id])
            for (record, _, _, evidence), identity, subject_id in zip(
                good, identities, subject_ids, strict=True
            )
            if record.record_id not in held
            and record.record_id not in weighed
            and identity.email is not None
            and subject_id not in (identity.subject_id, identity.pointed)
            and any(e.status not in SAID_NO_STATUSES for e in evidence)
        }
        if not wanted or self._held_over_since is None:
            return set()
        on_page = {row.link_id for row in held.values()}
        showing = {
            (subject_id, identity)
            for link_id, subject_id, identity in conn.execute(
                select(crm_links.c.id, crm_links.c.subject_id, crm_snapshots.c.identity)
                .join(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
                .where(
                    one_of(conn, crm_links.c.subject_id, sorted({s for s, _ in wanted.values()})),
                    crm_links.c.connector == self.name,
                    crm_links.c.gone_at.is_(None),
                    crm_links.c.linked_at < self._held_over_since,
                    one_of(conn, crm_snapshots.c.identity, sorted({d for _, d in wanted.values()})),
                )
            )
            if link_id not in on_page
        }
        return {record_id for record_id, shown in wanted.items() if shown in showing}

    def _weigh_held_over(self, report: RunReport, *, dry_run: bool) -> None:
        """The grants held for the run's reads (``_held_over_candidates``), once every page is
        read: set aside where their person left the address the record shows (``_set_aside``),
        else recorded as theirs; either way kept in the record's snapshot as read, and the person
        examined. One transaction, only for a run that held any."""
        held_over, self._held_over = self._held_over, None
        if not held_over:
            return
        now = self.ledger.clock()
        with self._transaction() as conn:
            # Weighed now: the rows their pages wrote for a run stopped short go with this
            # transaction, and stay where it does not commit.
            conn.execute(
                delete(quarantine).where(
                    quarantine.c.run_id == report.run_id,
                    quarantine.c.connector == self.name,
                    quarantine.c.reason == _HELD_OVER_REASON,
                    quarantine.c.resolved_at.is_(None),
                )
            )
            hashed = self.ledger.keyed_hasher()
            left_now = {
                (subject_id, hashed(form))
                for subject_id, value in conn.execute(
                    select(subject_identifiers.c.subject_id, subject_identifiers.c.value).where(
                        one_of(
                            conn,
                            subject_identifiers.c.subject_id,
                            sorted({item.subject_id for item in held_over.values()}),
                        ),
                        subject_identifiers.c.kind == EMAIL,
                        subject_identifiers.c.left_at.is_not(None),
                    )
                )
                for form in email_forms(value)
            }
            problems: list[dict[str, Any]] = []
            requests: list[RecordRequest] = []
            for (object_type, record_id), item in held_over.items():
                if (item.subject_id, item.identity) in left_now:
                    mapping = self.by_object[object_type]
                    self._set_aside(report, mapping, record_id, item.grants, problems, now)
                else:
                    requests += [RecordRequest(Identity(subject_id=item.subject_id), e) for e in item.grants]
            if problems:
                conn.execute(insert(quarantine), problems)
            by_link = {item.link_id: item.grants for item in held_over.values()}
            for link_id, evidence in conn.execute(
                select(crm_snapshots.c.link_id, crm_snapshots.c.evidence).where(
                    one_of(conn, crm_snapshots.c.link_id, sorted(by_link))
                )
            ).all():
                view = orjson.loads(evidence) if evidence else {}
                view.update({_evidence_key(e): _evidence_view(e) for e in by_link[link_id]})
                conn.execute(
                    update(crm_snapshots)
                    .where(crm_snapshots.c.link_id == link_id)
                    .values(evidence=canonical_json(view))
                )
            self._mark_for_examination(conn, {item.subject_id for item in held_over.values()})
            if not requests:
                return
            warm = self._warm_for(conn)  # it holds these people as the pages left them
            if warm is not None:
                warm.discard()
                warm.clear()
            stats, outcomes = self.ledger.record_in(conn, requests, run_id=report.run_id)
            report.counts.evidence_recorded += stats.recorded
            report.counts.evidence_duplicates += stats.duplicates
            report.counts.state_changes += stats.state_changes
            if dry_run:
                self._note_planned(conn, report, outcomes)

    def _park_held_over(self, report: RunReport, *, dry_run: bool) -> None:
        """The grants held for reads that stopped short (a stop, a CRM's error): whether a page
        not read would have left the address is not known. Each record's page quarantined it
        already, in its own transaction (``_held_row``: a process killed, or a ledger lost while
        weighing, leaves it so), for the next run to read again by id (``_reread_quarantined``),
        which weighs its grants as it weighs any record's (``_through_left``): they are not in
        its snapshot. Counted here as quarantined. A connector that cannot read by id leaves them
        for the record's next change (a yes late, never a stranger's taken as theirs)."""
        held_over, self._held_over = self._held_over, None
        if not held_over or dry_run or not self.connector.can_read_by_id:
            return
        now = self.ledger.clock()
        rows = []
        for object_type, record_id in held_over:
            report.counts.quarantined += 1
            log.warning(
                "record.quarantined",
                run_id=report.run_id,
                connector=self.name,
                object=object_type,
                record_id=record_id,
                stage="pull",
            )
            rows.append(self._held_row(report, object_type, record_id, now))
        # Where the page's own row went with it (a page whose commit waited for the next, which
        # failed), written again: best effort, the run's own error stays its.
        with suppress(Exception), self._transaction() as conn:
            written = {
                (object_type, record_id)
                for object_type, record_id in conn.execute(
                    select(quarantine.c.object_type, quarantine.c.record_id).where(
                        quarantine.c.run_id == report.run_id, quarantine.c.reason == _HELD_OVER_REASON
                    )
                )
            }
            missing = [row for row in rows if (row["object_type"], row["record_id"]) not in written]
            if missing:
                conn.execute(insert(quarantine), missing)

    def _held_row(self, report: RunReport, object_type: str, record_id: str, now: datetime) -> dict[str, Any]:
        """The quarantine row of a record whose grants are held for the run's reads, written with
        its page: the next run reads it again by id unless this run weighs it
        (``_weigh_held_over`` deletes it in the transaction that records or sets them aside)."""
        return {
            "run_id": report.run_id,
            "connector": self.name,
            "object_type": object_type,
            "record_id": record_id[:64],
            "stage": "pull",
            "reason": _HELD_OVER_REASON,
            "created_at": now,
            "retry_requested_at": now,
            "retry_requested_by": "consentsync",
        }

    def _set_aside(
        self,
        report: RunReport,
        mapping: Mapping,
        record_id: str,
        fresh: list[Evidence],
        problems: list[dict[str, Any]],
        now: datetime,
    ) -> list[Evidence]:
        """``fresh`` less its grants (every value that is not a no), read from a record that
        speaks for its person only through an address they left (``_through_left``). The grants
        are kept in the record's snapshot as read (they are not read as new again, even once the
        address is the person's again: they were said from it meanwhile) and named in a
        quarantine row for ops, with the reason; the nos are recorded."""
        said_no = [e for e in fresh if e.status in SAID_NO_STATUSES]
        if len(said_no) == len(fresh):
            return fresh
        aside = [e for e in fresh if e.status not in SAID_NO_STATUSES]
        named = sorted({f"{e.purpose}/{e.channel} {e.status.value}" for e in aside})
        reason = (
            f"not recorded as its person's consent ({', '.join(named)}): the record is theirs only "
            "through an address they left, and whoever writes from it now may be someone else "
            '(docs/policy.md, "An address a person no longer holds does not speak for them"); '
            "its nos are recorded"
        )
        log.warning(
            "sync.grant_set_aside",
            run_id=report.run_id,
            connector=self.name,
            object=mapping.object,
            record_id=record_id,
            values=len(aside),
        )
        problems.append(self._quarantine_row(report, mapping.object, record_id, "pull", reason, now))
        return said_no

    def _recordable(self, evidence: list[Evidence], now: datetime, to_correct: list[str]) -> list[Evidence]:
        """What of one record's evidence the ledger can record, the reasons for the rest added
        to ``to_correct`` (the record is quarantined with them, for ops); InvalidInput when none
        of it can be.

        A no whose time cannot be a time anyone acted at (in the future, a CRM whose clock or
        time zone is off; before 1970) is still a no: it counts from now, as an unknown time does
        (docs/policy.md), and the time goes to ops. Held back in quarantine, it would leave the
        person opted in everywhere. Any other value that cannot be recorded (a grant so dated
        proves nothing) is held back alone: the record's other values are recorded all the same.
        Held back with it, a no on another purpose of the record (that CRM's clock dates them
        all) would be lost. The held-back value is read again when the record changes or ops
        retry it (``_reread_quarantined``)."""
        kept: list[Evidence] = []
        refused: InvalidInput | None = None
        for item in evidence:
            try:
                self.ledger.validate(item, now=now)
            except InvalidInput as error:
                if item.status not in SAID_NO_STATUSES or item.event_time is None:
                    refused = refused or error
                    to_correct.append(str(error))
                    continue
                undated = replace(item, event_time=None, clock_lag=None)  # no stamp to lag
                self.ledger.validate(undated, now=now)  # a label may still refuse it
                kept.append(undated)
                to_correct.append(str(error))
            else:
                kept.append(item)
        if refused is not None and not kept:
            # Nothing the record says can be recorded: it waits whole, as it always did.
            to_correct.clear()
            raise refused
        return kept

    def _not_dated_again(
        self,
        conn: Connection,
        mapping: Mapping,
        record_id: str,
        subject_id: int,
        seen: dict[str, Any],
        fresh: list[Evidence],
    ) -> list[Evidence]:
        """``fresh`` less a no that was recorded already without a time: a no read from a Date
        field, or from a time without its zone, has no time until the latest moment it can mean
        has passed (recorded as when it was first observed); read after that it is that moment
        (mapping._read_in_doubt). That is the same no, not a second one, which would be later
        than its first observation and undo a consent the person gave after it. A no whose date
        or time (read as UTC) is later than that observation is a new one. Rare
        (a record's no changing from undated to dated): one lookup then."""
        candidates = [
            e
            for e in fresh
            if e.status in SAID_NO_STATUSES
            and e.event_time is not None
            and (old := seen.get(_evidence_key(e))) is not None
            and len(old) == 3
            and old[2] is None
            and old[:2] == _evidence_view(e)[:2]
        ]
        if not candidates:
            return fresh
        ref = f"{mapping.object}/{record_id}"
        columns = consent_events.c
        rows = conn.execute(
            select(
                columns.purpose, columns.channel, columns.status, columns.recorded_at, columns.evidence_ref
            ).where(
                columns.subject_id == subject_id,
                columns.source == f"{self.name}:{mapping.object}",
                columns.origin == Origin.CRM.value,
                columns.event_time.is_(None),
            )
        )
        # When each of this record's undated nos was last observed (what the snapshot shows).
        observed: dict[tuple[str, str, str], datetime] = {}
        for purpose, channel, status, recorded_at, evidence_ref in rows:
            if evidence_ref == ref or str(evidence_ref or "").startswith(f"{ref} ("):
                key = (purpose, channel, status)
                observed[key] = max(recorded_at, observed.get(key, recorded_at))
        again = set()
        for e in candidates:
            moment = observed.get((e.purpose, e.channel, e.status.value))
            assert e.event_time is not None
            # What the CRM stated, read as UTC: the date's midnight, or the wall-clock time.
            stated = e.event_time - (END_OF_DAY if e.event_time.time() == _DAY_END else LATEST_OFFSET)
            # Undated when first observed, this no's latest moment was still to come then; a no
            # stated later than that observation is another one.
            if moment is not None and stated <= moment < e.event_time:
                again.add(id(e))
        return [e for e in fresh if id(e) not in again]

    # -- deleted and merged CRM records --------------------------------------------------------

    def _keep_the_last_no(
        self,
        conn: Connection,
        mapping: Mapping,
        gone: list[CrmRecord],
        report: RunReport,
        now: datetime,
        *,
        seen_before: dict[str, tuple[dict[str, Any], dict[str, Any]]] | None = None,
        seen_at: dict[str, datetime] | None = None,
        echoes: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """A record merged away that still carries its values (Dynamics keeps the subordinate
        row): a withdrawal or refusal on it that the ledger has not seen is the person's, and must
        not go with the record, since the survivor usually keeps the master's values. Only a no
        is taken: the merge's other values are the CRM user's choice of survivor, not the
        person's. Values last seen or written by this project (the snapshot) are not new.

        A record deleted that comes with its last values (Salesforce's recycle bin, HubSpot's
        archived contacts) likewise: an opt-out ticked just before a deletion, with no sync in
        between, is still the person's no, and their other records and CRMs must hear it.

        A duplicate merged away before any sync read it (never linked) carries its no all the
        same: it is the survivor's person's when the survivor is linked, else the person its own
        identity names (found or made, as a read of it would have); it is linked there (by its
        record id only: the survivor's person takes no address from it), so that the merge is
        recorded on it. A duplicate without a no is left unknown, as before."""
        from consentsync.mapping import SAID_NO_STATUSES

        # Earlier values are dated by when they were given, which the record's snapshot (read
        # without a time) never showed: the same status and basis is the same value, unless it
        # was given after that snapshot was taken (a no given again since: re-subscribed, then
        # unsubscribed once more, a yes recorded elsewhere in between).
        earlier_values = seen_before is not None
        taken_at = seen_at or {}

        def already_seen(record_id: str, seen: dict[str, Any], evidence: Evidence) -> bool:
            key, view = _evidence_key(evidence), _evidence_view(evidence)
            if _same((echoes or {}).get(record_id, {}).get(key), view):
                return True  # our own write, read back before its answer came
            if not _same(seen.get(key), view, timeless=earlier_values):
                return False
            if not earlier_values or evidence.event_time is None:
                return True
            taken = taken_at.get(record_id)
            return taken is not None and evidence.event_time <= taken

        with_values = [record for record in gone if record.fields]  # merged away or deleted
        held = self._page_links(conn, mapping.object, [record.record_id for record in with_values])
        unread = [record for record in with_values if record.record_id not in held and record.merged_into]
        # A record a write found gone is not known gone yet for its last values: the no ticked on
        # it before its deletion was never read.
        listed = self._gone_by_write(conn, [row.link_id for row in held.values() if row.gone_at is not None])
        snapshots = (
            seen_before
            if seen_before is not None
            else self._load_snapshots(
                conn,
                mapping.object,
                [
                    r.record_id
                    for r in with_values
                    if (row := held.get(r.record_id)) and (row.gone_at is None or row.link_id in listed)
                ],
            )
        )
        survivors = (
            self._known_links(conn, [_survivor_link(self.name, mapping.object, record) for record in unread])
            if unread
            else {}
        )
        requests: list[RecordRequest] = []
        saying_no: list[tuple[CrmRecord, Any, str, str | None, list[Evidence]]] = []
        email_field = mapping.spec.identity.email
        clock_lag = self._clock_lag(mapping.object)
        for record in with_values:
            row = held.get(record.record_id)
            if row is not None and row.gone_at is not None and row.link_id not in listed:
                continue  # already known as gone
            seen = snapshots.get(record.record_id, ({}, {}))[0]
            # A value the mapping cannot translate beside the no stops only what it says, as on
            # a page (``_commit_page``): the no is kept, and the record quarantined for the value.
            held_back: list[MappingValueError] = []
            try:
                record_id, email, _links = mapping.identity_from(record.fields)
                # Under the form an older version may hold it in, too (as_read).
                email = as_read(email, field_value(record.fields, email_field) if email_field else None)
                evidence = mapping.evidence_from(
                    record.fields,
                    connector=self.name,
                    observed_at=now,
                    record_id=record_id,
                    given_at=record.earlier_given_at,
                    status_fields=record.earlier_values.keys()
                    if earlier_values and record.earlier_values
                    else None,
                    held_back=held_back,
                    clock_lag=clock_lag,
                )
                said_no = [
                    e
                    for e in evidence
                    if e.status in SAID_NO_STATUSES and not already_seen(record.record_id, seen, e)
                ]
                for item in said_no:
                    self.ledger.validate(item, now=now)
                problem = str(held_back[0]) if held_back else None
            except InvalidInput as error:
                problem, said_no = str(error), []
            if problem is not None:
                row_problem = self._quarantine_row(
                    report, mapping.object, record.record_id, "pull", problem, now
                )
                conn.execute(insert(quarantine), [row_problem])
                if not said_no:
                    continue
            if said_no:
                saying_no.append((record, row, record_id, email, said_no))
        # Deleted before any sync read it: the no is the person's whom the ledger knows by that
        # address (under any form it is held in); looked up for the whole page at once.
        known_by_address = self._known_by_address(
            conn, [email for record, row, _, email, _ in saying_no if row is None and not record.merged_into]
        )
        for record, row, record_id, email, said_no in saying_no:
            if row is not None:
                subject_id = row.subject_id
            elif not record.merged_into:
                # Nobody is made for it, and no address enters the ledger from a record deleted
                # (perhaps for an erasure request made to that CRM).
                known = known_by_address.get(email) if email else None
                if known is None:
                    continue
                subject_id = known
            else:
                own = CrmLink(self.name, mapping.object, record_id)
                survivor = _survivor_link(self.name, mapping.object, record)
                owner = survivors.get(survivor) if record.merged_into else None
                identity = Identity(link=own, subject_id=owner) if owner is not None else Identity(email, own)
                (subject_id,), created = self.ledger.link_in(conn, [identity], run_id=report.run_id)
                report.counts.subjects_created += created
            requests += [RecordRequest(Identity(subject_id=subject_id), e) for e in said_no]
        if not requests:
            return
        stats, _outcomes = self.ledger.record_in(
            conn, requests, run_id=report.run_id, warm=self._warm_for(conn)
        )
        report.counts.evidence_recorded += stats.recorded
        report.counts.evidence_duplicates += stats.duplicates
        report.counts.state_changes += stats.state_changes
        self._mark_for_examination(
            conn, {request.identity.subject_id for request in requests if request.identity.subject_id}
        )

    def _known_by_address(self, conn: Connection, emails: list[str | None]) -> dict[str, int]:
        """For each address, the person the ledger holds under it, not erased (absent: nobody),
        found under any form the address may be held in (``email_forms``: an older version kept
        an internationalised domain as punycode). One query for all of them."""
        forms = {form: email for email in {e for e in emails if e} for form in email_forms(email)}
        if not forms:
            return {}
        found: dict[str, int] = {}
        for value, subject_id, folds in conn.execute(
            select(subject_identifiers.c.value, subjects.c.id, subject_identifiers.c.folds_astral_to)
            .join(subject_identifiers, subject_identifiers.c.subject_id == subjects.c.id)
            .where(
                subject_identifiers.c.kind == "email",
                one_of(conn, subject_identifiers.c.value, sorted(forms)),
                subjects.c.erased_at.is_(None),
            )
            .order_by(subjects.c.id)
        ):
            if value != forms[value] and not holds_for(forms[value], value, folds):
                continue  # another person's "?", not the address folded (``holds_for``)
            # The lowest id when two people hold two forms of one address, as before (one person).
            found.setdefault(forms[value], int(subject_id))
        return found

    def _gone_by_write(self, conn: Connection, link_ids: list[int]) -> set[int]:
        """Which of these gone links a write found gone, no deletion listing having named them
        yet. Gone links come on a page only where a listing names a record again: rare."""
        if not link_ids:
            return set()
        return {
            int(link_id)
            for (link_id,) in conn.execute(
                select(crm_links.c.id).where(
                    one_of(conn, crm_links.c.id, sorted(link_ids)), crm_links.c.gone_by_write.is_(True)
                )
            )
        }

    def _mark_gone(
        self, conn: Connection, mapping: Mapping, gone: list[CrmRecord], report: RunReport, now: datetime
    ) -> None:
        """A record deleted (or merged away) in the CRM: its link is marked gone, audited, and
        nothing more is pushed to it; the person and their history stay. A merge's survivor is
        linked to the same person when the ledger did not know it yet. A record a write found
        gone before is named by the listing now: its merge (if it was one) is recorded. A record
        deleted by our own delete whose answer was lost (the run stopped after the CRM took it)
        is that delete carried out, not a deletion made in the CRM (``_own_deletes``)."""
        self._own_deletes(conn, mapping, [r for r in gone if not r.merged_into], report, now)
        rows = {
            row.record_id: row
            for row in conn.execute(
                select(
                    crm_links.c.id,
                    crm_links.c.record_id,
                    crm_links.c.subject_id,
                    crm_links.c.gone_at,
                    crm_links.c.gone_by_write,
                ).where(
                    crm_links.c.connector == self.name,
                    crm_links.c.object_type == mapping.object,
                    one_of(conn, crm_links.c.record_id, sorted({r.record_id for r in gone})),
                )
            )
        }
        # Links marked gone now: not a record never linked, nor one known gone already (a write
        # found it so, or a look-back window lists it again).
        report.counts.deleted_records += sum(
            1 for r in gone if (row := rows.get(r.record_id)) is not None and row.gone_at is None
        )
        survivors = [
            Identity(
                link=_survivor_link(self.name, mapping.object, r),
                subject_id=rows[r.record_id].subject_id,
            )
            for r in gone
            if r.merged_into and r.record_id in rows
        ]
        if survivors:
            # A survivor the ledger holds for another person: the CRM says the two are one. The
            # people stay apart (a wrong merge must not pool two people's data), but the
            # survivor's person takes on the merged person's nos (_carry_the_nos).
            owners = self._known_links(conn, [identity.link for identity in survivors if identity.link])
            joined = {
                (identity.subject_id, owner)
                for identity in survivors
                if identity.link is not None
                and identity.subject_id is not None
                and (owner := owners.get(identity.link)) is not None
                and owner != identity.subject_id
            }
            self.ledger.link_in(conn, survivors, run_id=report.run_id)
            if joined:
                self._carry_the_nos(conn, joined, report)
        uids = self._uids(conn, [row.subject_id for row in rows.values()])
        records: list[AuditRecord] = []
        for record in gone:
            row = rows.get(record.record_id)
            if row is None or (row.gone_at is not None and not row.gone_by_write):
                continue  # never linked (nothing of the person here), or already known as gone
            conn.execute(
                update(crm_links)
                .where(crm_links.c.id == row.id)
                .values(
                    gone_at=record.modstamp,
                    merged_into=record.merged_into,
                    merged_into_object=record.merged_into_object,
                    gone_by_write=None,
                )
            )
            if row.gone_at is not None and not record.merged_into:
                continue  # its deletion was audited when the write found it gone
            records.append(
                self._link_entry(
                    "crm.record_merged" if record.merged_into else "crm.record_deleted",
                    {
                        "object": mapping.object,
                        "record": record.record_id,
                        "merged_into": record.merged_into,
                        # Left out for a survivor of the same object: entries stay as they were.
                        **(
                            {"merged_into_object": record.merged_into_object}
                            if record.merged_into_object
                            else {}
                        ),
                    },
                    ("live" if row.gone_at is None else "gone", "merged" if record.merged_into else "gone"),
                    row.subject_id,
                    uids,
                    report,
                )
            )
        if records:
            conn.execute(
                update(outbox)
                .where(
                    outbox.c.connector == self.name,
                    outbox.c.object_type == mapping.object,
                    one_of(conn, outbox.c.record_id, [r.what["record"] for r in records]),
                    outbox.c.status == "pending",
                )
                .values(status="superseded", done_at=now, last_error="the CRM record is gone")
            )
            audit.append(conn, records, now)

    def _own_deletes(
        self, conn: Connection, mapping: Mapping, deleted: list[CrmRecord], report: RunReport, now: datetime
    ) -> None:
        """The deletions listed that are our own: a delete (an erasure's) sent and never answered,
        the run stopped after the CRM carried it out. The listing is its answer, as reading an
        update's values back is an update's (``_recognise_echoes``): the row is done, audited
        ``crm.pushed`` (``confirmed_by: read_back``) and the link gone by it, exactly as the lost
        answer would have left them. Taken for a deletion made in the CRM, the erasure would
        stand in the audit log as superseded, never carried out (Art. 17(2), 5(2)), and a run
        resumed before the listing shows it sends the delete again. A record a user deleted
        before ours arrived counts the same: the CRM's answer to ours would have been "already
        deleted", which ``_settle`` takes as done too."""
        if not deleted:
            return
        sent = conn.execute(
            select(outbox).where(
                outbox.c.connector == self.name,
                outbox.c.object_type == mapping.object,
                one_of(conn, outbox.c.record_id, sorted({record.record_id for record in deleted})),
                outbox.c.action == WriteAction.DELETE.value,
                outbox.c.status == "pending",
                outbox.c.sent_at.is_not(None),
            )
        ).all()
        if sent:
            answers = [(row, WriteResult(row.record_id, True)) for row in sent]
            self._settle(conn, answers, report, now, confirmed_by="read_back")

    def _absorb(self, conn: Connection, ties: set[tuple[int, int]], report: RunReport) -> dict[int, int]:
        """Absorbs the address-less people ``ties`` prove to be an address holder
        (``absorb.absorbable``): their records move to the holder, their withdrawals and
        refusals are recorded for the holder as they were recorded (their yeses are not: a tie
        made by a CRM user's mistake must not give the holder a stranger's consent), and their
        upheld objections and
        restriction are carried as a merge carries them (``_carry_the_nos``). Returns the people
        absorbed, each with the holder. Rare: only a page whose records tie two people pays."""
        found = absorb.absorbable(conn, ties, self.ledger.keyed_hasher())
        if not found:
            return {}
        now = self.ledger.clock()
        done = absorb.absorb(conn, found, now, run_id=report.run_id, source=self.name)
        requests: list[RecordRequest] = []
        for absorption in done:
            for item in absorption.evidence:
                if item.purpose not in self.ledger.purposes:
                    continue  # a purpose no longer configured: its events decide nothing
                if item.status not in STICKY_STATUSES:
                    # Only a no, as a merge carries (``_carry_the_nos``): a record tied to the
                    # wrong Individual by a CRM user's mistake must not hand the holder a stranger's
                    # consent (undone by nothing once recorded); a yes of the absorbed person's is
                    # the holder's once a record of theirs shows it again.
                    continue
                try:
                    self.ledger.validate(item, now=now)
                except InvalidInput as error:  # recorded before today's bounds: named, not quoted
                    log.warning("sync.absorbed_event_not_recorded", reason=type(error).__name__)
                    continue
                requests.append(RecordRequest(Identity(subject_id=absorption.into), item))
        if requests:
            stats, _ = self.ledger.record_in(conn, requests, run_id=report.run_id, warm=self._warm_for(conn))
            report.counts.evidence_recorded += stats.recorded
            report.counts.evidence_duplicates += stats.duplicates
            report.counts.state_changes += stats.state_changes
        # The absorbed person's nos are the holder's events now; what is not an event (an upheld
        # objection, a restriction) travels as a merge carries it.
        self._carry_the_nos(conn, {(a.absorbed, a.into) for a in done}, report)
        self._mark_for_examination(conn, {a.into for a in done})
        return {a.absorbed: a.into for a in done}

    def _carry_the_nos(
        self,
        conn: Connection,
        joined: set[tuple[int, int]],
        report: RunReport,
        *,
        sharing: Collection[tuple[int, int]] = (),
    ) -> bool:
        """``joined``: (merged person, survivor's person) pairs of a CRM merge that joined records
        of two people of the ledger. The survivor's person takes on every withdrawal and refusal
        that still binds the merged person (its events as recorded: same times, sources and
        references) and every objection upheld against them (as a withdrawal at the objection's
        time for each purpose and channel it binds), so that a merge never loses a no; a new
        consent newer than such a no lifts it, as it would have for the merged person. Only a no:
        the merged person's yeses are not the survivor's (a wrong merge then costs a message not
        sent, never one sent without consent). Merges are rare: these reads cost nothing per
        record read.

        A restriction of processing (Art. 18) of the merged person travels as a restriction
        (``Ledger.carry_restriction``), lifted with theirs. The merged person's erasure travels
        too (Art. 17: the person, and the address the CRM may now hold on the survivor, are
        never to be contacted again), as a withdrawal at the
        erasure's time for every purpose and channel, which only the survivor's person's new
        consent newer than it lifts. ``joined`` also holds (an address's person, the person whose
        record now carries that address): the CRM writes to that address; (the person of a
        record others' records point to, one of those others: sync/shared.py); and (an erased
        person sharing such a record, its person known by records alone: ``_tell_the_erasures``),
        so that the erasure reaches the records read before the erased person's as it reaches
        those read after."""
        merged = sorted({loser for loser, _ in joined})
        policy, purposes = self.ledger.policy, self.ledger.purposes
        events: dict[tuple[int, str, str], list[Evidence]] = {}
        theirs = select(consent_events).where(one_of(conn, consent_events.c.subject_id, merged))
        for row in conn.execute(theirs):
            if row.purpose in purposes:
                events.setdefault((row.subject_id, row.purpose, row.channel), []).append(_stored_no(row))
        summaries = {key: summarise(items, policy) for key, items in events.items()}
        nos: dict[int, list[Evidence]] = {}
        for key, items in events.items():
            if binding_no(summaries[key]) is not None:
                nos.setdefault(key[0], []).extend(item for item in items if item.status in STICKY_STATUSES)
        # At the latest erasure of the address the merged person was erased under: one who came
        # back with it and was erased again erased it later than they were (last_erased_at).
        erased = (
            select(
                subjects.c.id,
                subjects.c.uid,
                func.coalesce(last_erased_at(suppressions), subjects.c.erased_at),
            )
            .select_from(subjects.outerjoin(suppressions, suppressions.c.id == subjects.c.suppression_id))
            .where(one_of(conn, subjects.c.id, merged), subjects.c.erased_at.is_not(None))
        )
        for subject_id, uid, erased_at in conn.execute(erased):
            nos.setdefault(subject_id, []).extend(
                Evidence(
                    purpose.key,
                    channel,
                    ConsentStatus.WITHDRAWN,
                    None,
                    erased_at,
                    erased_at,
                    ERASURE_CARRIED_SOURCE,
                    Origin.CAPTURE,
                    evidence_ref=f"erasure of subject {uid}, carried by the CRM to another person's record",
                )
                for purpose in purposes.values()
                for channel in purpose.channels
            )
        upheld = select(objections).where(
            one_of(conn, objections.c.subject_id, merged),
            objections.c.status == ObjectionStatus.UPHELD.value,
        )
        for row in conn.execute(upheld):
            for purpose in purposes.values():
                if purpose.key != row.purpose and not (
                    row.direct_marketing and serves_direct_marketing(purpose)
                ):
                    continue
                for channel in purpose.channels:
                    summary = summaries.get((row.subject_id, purpose.key, channel))
                    lifted_at = summary.trusted_opt_in_at if summary is not None else None
                    if lifted_at is not None and lifted_at > no_counts_from(row.raised_at):
                        continue  # lifted by the person's new consent there
                    nos.setdefault(row.subject_id, []).append(
                        Evidence(
                            purpose.key,
                            channel,
                            ConsentStatus.WITHDRAWN,
                            None,
                            row.raised_at,
                            row.recorded_at,
                            row.source,
                            Origin.CAPTURE,
                            evidence_ref=f"objection {row.id}, carried over by a CRM merge",
                        )
                    )
        requests: list[RecordRequest] = []
        for loser, survivor in sorted(joined):
            shared = (loser, survivor) in sharing
            for item in nos.get(loser, ()):
                if shared and item.source == ERASURE_CARRIED_SOURCE:
                    # An erasure the record's person took on from its erased sharers
                    # (``_tell_the_erasures``) is theirs, not the record's person's own no: it
                    # never reaches a sharer who is not erased (one whose Contact pointed to the
                    # record a run later was withdrawn and opted out by another's erasure).
                    continue
                try:
                    self.ledger.validate(item, now=self.ledger.clock())
                except InvalidInput as error:  # recorded before today's bounds: named, not quoted
                    log.warning("sync.merge_no_not_carried", reason=type(error).__name__)
                    continue
                requests.append(RecordRequest(Identity(subject_id=survivor), item))
        recorded = False
        if requests:
            stats, outcomes = self.ledger.record_in(
                conn, requests, run_id=report.run_id, warm=self._warm_for(conn)
            )
            report.counts.evidence_recorded += stats.recorded
            report.counts.evidence_duplicates += stats.duplicates
            report.counts.state_changes += stats.state_changes
            # Only people who took on something new are examined again (two people merged into
            # each other's records must not mark each other for ever).
            self._mark_for_examination(conn, {o.subject_id for o in outcomes if not o.duplicate})
            recorded = stats.recorded > 0
        # The merged person's restriction (Art. 18) is not a no: it holds while it stands, and
        # goes with it. Their data is now on the survivor's person's record, which is not to be
        # processed meanwhile: that person is restricted too, as carried from them.
        carried = self.ledger.carry_restriction(conn, joined, self.ledger.clock(), run_id=report.run_id)
        if carried:
            warm = self._warm_for(conn)
            if warm is not None:  # it holds these people as not restricted: read them afresh
                warm.clear()
                warm.discard()
            self._mark_for_examination(conn, carried)
        return recorded or bool(carried)

    def _revive_links(
        self, conn: Connection, object_type: str, revived: list[Any], report: RunReport, now: datetime
    ) -> None:
        """Records read again after they were deleted (restored from the CRM's recycle bin) are
        live: ``revived`` are their gone links (``_page_links`` rows)."""
        if not revived:
            return
        conn.execute(
            update(crm_links)
            .where(one_of(conn, crm_links.c.id, [row.link_id for row in revived]))
            .values(gone_at=None, merged_into=None, merged_into_object=None, gone_by_write=None)
        )
        # An erasure's delete (or anonymise) done on a record that is back is undone with it: it
        # no longer counts as done, and the examination sends it again (an erased person's record
        # restored by a CRM admin holds their data again, Art. 17). One the CRM refused for good
        # (dead) is tried again too: the record is back as a record, not as the one refused.
        conn.execute(
            update(outbox)
            .where(
                outbox.c.connector == self.name,
                outbox.c.object_type == object_type,
                one_of(conn, outbox.c.record_id, [row.record_id for row in revived]),
                outbox.c.status.in_(("done", "dead")),
                outbox.c.rule.in_(sorted(ERASURE_RULE_NAMES)),
            )
            .values(status="superseded")
        )
        uids = self._uids(conn, [row.subject_id for row in revived])
        audit.append(
            conn,
            [
                self._link_entry(
                    "crm.record_restored",
                    {"object": object_type, "record": row.record_id},
                    ("gone", "live"),
                    row.subject_id,
                    uids,
                    report,
                )
                for row in revived
            ],
            now,
        )

    def _link_entry(
        self,
        action: str,
        what: dict[str, Any],
        change: tuple[str, str],
        subject_id: int,
        uids: dict[int, str],
        report: RunReport,
    ) -> AuditRecord:
        """The audit entry of a CRM link changing state (live, gone, merged)."""
        return AuditRecord(
            action,
            {"connector": self.name, **what},
            old={"link": change[0]},
            new={"link": change[1]},
            rule="crm_record_restored" if change[1] == "live" else "crm_record_gone",
            source=self.name,
            actor="consentsync",
            run_id=report.run_id,
            subject_uid=uids[subject_id],
            subject_id=subject_id,
        )

    # -- our own writes, read back -------------------------------------------------------------

    def _recognise_echoes(
        self, conn: Connection, mapping: Mapping, page: list[CrmRecord], report: RunReport, now: datetime
    ) -> dict[str, dict[str, Any]]:
        """For each record of the page whose last write from this project was sent and never
        acknowledged: the evidence view that write leaves behind (values matching it are ours,
        not the person's). Where the record shows every value of that write, the write took
        effect: it is acknowledged now, exactly as its lost answer would have been."""
        if not page:
            return {}
        by_id = {record.record_id: record for record in page}
        # Reading our own writes back meets a done write for nearly every record: the records
        # with a write sent and not done are found first, through the partial index that holds
        # only those (migration 0015), and only their rows are read. As plain tuples.
        equal = (("connector", self.name), ("object_type", mapping.object))
        candidates = sorted(
            {
                record_id
                for (record_id,) in select_in(
                    conn,
                    outbox,
                    ("record_id",),
                    "record_id",
                    sorted(by_id),
                    equal=equal,
                    where=OUTBOX_UNANSWERED,
                )
            }
        )
        if not candidates:
            return {}
        # The latest write sent to each of them, in one pass (a later one may be done).
        last: dict[str, tuple[int, str]] = {}
        columns = ("id", "record_id", "status", "sent_at")
        for outbox_id, record_id, status, sent_at in select_in(
            conn, outbox, columns, "record_id", candidates, equal=equal
        ):
            if sent_at is not None and outbox_id > last.get(record_id, (-1, ""))[0]:
                last[record_id] = (outbox_id, status)
        # A write answered "failed" is in it too: a CRM may have applied part of it (SuperOffice
        # saves the fields it took before it refuses the next one), and what it applied is ours.
        wanted = [
            outbox_id for outbox_id, status in last.values() if status in ("pending", "superseded", "dead")
        ]
        if not wanted:
            return {}
        whole = {row.id: row for row in conn.execute(select(outbox).where(one_of(conn, outbox.c.id, wanted)))}
        unanswered = [whole[outbox_id] for outbox_id in wanted]
        echoes: dict[str, dict[str, Any]] = {}
        snapshots = self._load_snapshots(conn, mapping.object, [row.record_id for row in unanswered])
        taken: list[tuple[Any, WriteResult]] = []
        not_there: list[int] = []
        for row in unanswered:
            if row.action != WriteAction.UPDATE:
                continue
            fields = self.connector.as_read_back(
                RecordUpdate(row.object_type, row.record_id, orjson.loads(row.fields))
            )
            shown = by_id[row.record_id].fields
            if fields and all(
                name in shown and crm_key(shown[name]) != crm_key(value) for name, value in fields.items()
            ):
                # Read after it was sent, the record shows none of this write: the CRM did not
                # apply it. It stops being ours (``sent_at`` cleared; a pending row is sent
                # again), so that the person setting one of its values later is their choice,
                # never taken for our echo and overwritten.
                not_there.append(row.id)
                continue
            known = snapshots.get(row.record_id, ({}, {}))[1]
            echoes[row.record_id] = self._echo_view(mapping, row.record_id, {**known, **fields}, now) or {}
            # Only a write whose every field is read back: an erasure's anonymise blanking fields
            # the mapping does not read (a name, a phone) is never taken as carried out by what it
            # shows of the rest, which a CRM user may have set by hand while ours never arrived.
            # Its row stays and is sent again, whole (``_repeats``): blanking twice is harmless.
            if all(
                name in shown and crm_key(shown[name]) == crm_key(value) for name, value in fields.items()
            ):
                taken.append((row, WriteResult(row.record_id, True)))
        if not_there:
            conn.execute(update(outbox).where(one_of(conn, outbox.c.id, not_there)).values(sent_at=None))
        if taken:
            report.counts.echoes_recognised += len(taken)
            self._settle(conn, taken, report, now, confirmed_by="read_back")
        return echoes

    def _echo_view(
        self, mapping: Mapping, record_id: str, fields: dict[str, Any], now: datetime
    ) -> dict[str, Any] | None:
        try:
            # Read as a page reads it (a value the mapping cannot translate beside our write
            # stops only what it says), so that our write read back is recognised there.
            echoed = mapping.evidence_from(
                {**fields, mapping.spec.identity.record_id: record_id},
                connector=self.name,
                observed_at=now,
                held_back=[],
            )
        except InvalidInput:
            return None
        return {_evidence_key(e): _our_write(_evidence_view(e)) for e in echoed}

    # -- outbox --------------------------------------------------------------------------------

    def _enqueue_pushes(
        self, conn: Connection, subject_ids: list[int], report: RunReport, now: datetime
    ) -> None:
        """For every live record of this CRM that belongs to these people, the fields that differ
        from what the ledger implies become an outbox row (superseding an older pending one); for
        an erased person, the erasure action configured for the object (Art. 17(2))."""
        if subject_ids:
            decided = self.decide_pushes(conn, subject_ids, warm=self._warm_for(conn))
            self._write_pushes(conn, decided, report, now)

    def decide_pushes(
        self, conn: Connection, subject_ids: Sequence[int], *, warm: WarmSubjects | None = None
    ) -> DecidedPushes:
        """What ``_enqueue_pushes`` writes for these people, read and decided in ``conn`` without
        writing it: a read transaction will do (sync/ahead.py decides here in a second process)."""
        states = self.ledger.effective_states_in(conn, subject_ids, warm=warm)
        # By person only, through the subject index (a person has a few links): naming the
        # connector too would let the planner pick the (connector, object, record) index and
        # read every link of the connector for each page.
        links = [
            row
            for row in map(
                _LinkToPush._make,
                select_in(
                    conn,
                    crm_links,
                    _LINK_TO_PUSH_COLUMNS,
                    "subject_id",
                    sorted(subject_ids),
                    # The snapshot's identity is the keyed hash the suppression list keeps
                    # (_identity_digests): a record now holding an erased address is known here
                    # by one lookup of the list's unique index, never a query per record.
                    join=(
                        (crm_snapshots, "link_id", "id"),
                        (subjects, "id", "subject_id"),
                        (suppressions, "email_hmac", "crm_snapshots.identity"),
                    ),
                ),
            )
            if row.connector == self.name
        ]
        erasures = self.options.erasure_actions
        rows = sorted(
            row
            for row in links
            if row.object_type in self.by_object
            and (
                row.gone_at is None
                # Gone into a record of another object (a lead converted into a contact): the CRM
                # keeps it, read-only, with the person's data. Their consents go with the
                # survivor; an erasure's delete or anonymise still reaches it.
                or (
                    row.merged_into_object is not None
                    and row.erased_at is not None
                    and erasures.get(row.object_type, "suppress") != "suppress"
                )
            )
        )  # by link id: the pushes are decided, and sent, in the order the links were made
        merged: list[tuple[int, str, str]] = []
        # (the person of a record others' records point to, one of those others): its nos reach
        # them (sync/shared.py). Its snapshot names them; any other costs a prefix check.
        sharing: list[tuple[int, int]] = []
        for row in links:
            if row.gone_at is not None:
                if row.merged_into is not None:
                    survivor = (row.merged_into_object or row.object_type, row.merged_into)
                    merged.append((row.subject_id, *survivor))
            elif row.fields is not None and row.fields.startswith(shared.PREFIX):
                others = shared.sharing(row.fields)
                sharing += [(row.subject_id, other) for other in others if other != row.subject_id]
        queued = self._queued(conn, rows)
        erasures_done = {
            key for key, history in queued.items() for old in history
            if old.rule in ERASURE_RULE_NAMES and old.status in ("done", "dead")
        }  # fmt: skip
        records = [RecordKey(row.object_type, row.record_id) for row in rows]
        decided = DecidedPushes([], [], 0, records, queued, merged, shared=sorted(set(sharing)))
        superseded = decided.superseded
        writes = {name: bool(mapping.push_fields()) for name, mapping in self.by_object.items()}
        # Never a put-back in suppress_only mode (it clears an opt-out): nothing to look up.
        asked = _AskedFor() if self.options.mode != "suppress_only" else None
        examined: list[_Examined] = []
        # The records whose opt-out of ours would be put back: by (object, record), their place
        # in ``examined``, snapshot and the fields asked about.
        put_backs: dict[tuple[str, str], tuple[int, Any, dict[str, Any], list[str]]] = {}
        # The erased people's records a delete or an anonymise would reach.
        acted_on: list[Any] = []
        for row in rows:
            mapping = self.by_object[row.object_type]
            key = (row.object_type, row.record_id)
            erasure = erasures.get(row.object_type, "suppress")
            if row.gone_at is not None and key in erasures_done:
                continue  # a record kept by the CRM: its erasure was sent, nothing else goes to it
            # The erased person's record, or one showing an erased address whose person the ledger
            # first met after the erasure (made under its entry): the action may reach it, if the
            # CRM held it when the erasure was made (``_erasure_reaches``).
            erasable = (
                erasure != "suppress"
                and key not in erasures_done
                and (
                    row.erased_at is not None
                    or (row.address_erased is not None and row.address_erased == row.suppression_id)
                    # A record others' records point to: once every one of them is erased,
                    # their erasure reaches it (``_erasure_reaches``).
                    or (row.fields is not None and row.fields.startswith(shared.PREFIX))
                )
            )
            if erasable:
                acted_on.append(row)
            if not writes[row.object_type] and not erasable:
                # An object the mapping only reads (consent records) is never written, but for
                # an erasure's anonymise or delete: a pending row from an older mapping goes.
                superseded += [old.id for old in queued.get(key, ()) if old.status == "pending"]
                continue
            known = orjson.loads(row.fields) if row.fields else {}
            subject_states = states[row.subject_id]
            if (
                row.address_erased is not None
                and row.erased_at is None
                and row.address_erased != row.suppression_id
            ):
                # Another person's record holding an erased address. Not the person who came
                # back under that address after the erasure (made under its entry): their own
                # state decides, which starts suppressed until their new consent lifts it.
                subject_states = _address_erased(subject_states)
            # A record kept by the CRM after it went into another (a converted lead): only the
            # erasure's own action reaches it, never the person's consents.
            updates: dict[str, Any] = {}
            if row.gone_at is None:
                updates = mapping.updates_for(known, subject_states, ours=asked)
                if asked is not None and asked.fields:
                    put_backs[key] = (len(examined), row, known, asked.fields)
                    asked.fields = []
                updates = self._not_shown_yet(row, updates, known)
            examined.append((row, mapping, key, erasure, subject_states, updates))
        for key, ours in self._put_backs(conn, put_backs, queued).items() if put_backs else ():
            at, _row, known, _fields = put_backs[key]
            row, mapping, key, erasure, subject_states, _updates = examined[at]
            updates = self._not_shown_yet(row, mapping.updates_for(known, subject_states, ours=ours), known)
            examined[at] = (row, mapping, key, erasure, subject_states, updates)
        # Of those, the records the action reaches, and the erased people's records it does not
        # (another person's data, or made since the erasure): suppressed only, each with why.
        reached, kept = self._erasure_reaches(conn, acted_on, links) if acted_on else (set(), {})
        for row, mapping, key, erasure, subject_states, updates in examined:
            wanted, rule = updates, None  # the rule is worked out only for a row that is pushed
            action = WriteAction.UPDATE
            if row.id in kept:
                # Another person's data: the erasure's suppression, not its delete or anonymise,
                # and the entry says why (the outbox row's rule too, where one is written).
                rule = kept[row.id]
                # Not counted with the writes held for want of an evidenced no (their advice is
                # not this one's): listed with them (``runs show``), under this rule.
                decided.held.append(
                    HeldWrite(
                        row.subject_id,
                        row.object_type,
                        row.record_id,
                        tuple(sorted(mapping.spec.personal_fields)) if erasure == "anonymise" else (),
                        rule,
                    )
                )
            elif row.id in reached:
                rule = ERASURE_RULES[erasure]
                if erasure == "delete":
                    action, updates = WriteAction.DELETE, {}
                else:
                    updates = {**updates, **mapping.spec.personal_fields}
            elif self.options.mode == "suppress_only":
                updates = restricting(mapping, updates)
            before_held = updates
            updates, held = self._reversible_or_evidenced(mapping, row, updates, action, subject_states)
            if held:
                decided.irreversible_held += held
                decided.held.append(
                    HeldWrite(
                        row.subject_id,
                        row.object_type,
                        row.record_id,
                        tuple(sorted(before_held.keys() - updates.keys())),
                        _rule_for(mapping, wanted, subject_states),
                    )
                )
            pending = [old.id for old in queued.get(key, ()) if old.status == "pending"]
            if not updates and action is WriteAction.UPDATE:
                superseded += pending  # decided on an older state: the CRM already agrees now
                continue
            if rule is None:
                rule = _rule_for(mapping, wanted, subject_states)
            fields = canonical_json(updates)
            # A suppression is a write that restricts processing (an opt-out, a suppression flag,
            # an erasure's action): the alerts and metrics on late and dead-lettered suppressions
            # count these. Not every push of a person with a suppressed state: their
            # re-subscription to another purpose is no suppression.
            erasing = action is WriteAction.DELETE or row.erased_at is not None or row.id in reached
            restricts = erasing or bool(restricting(mapping, updates))
            shown = (orjson.loads(row.fields) if row.fields else {}) if rule == ANONYMISE_RULE else None
            if _repeats(queued.get(key, ()), fields, action.value, shown):
                # Its pending (or dead) row stays, with its attempts and its sent mark; its flag
                # is made this meaning (a row an older release queued took every push of a
                # person with a suppressed state for a suppression).
                decided.flags[queued[key][-1].id] = restricts
                continue
            superseded += pending
            decided.new_rows.append(
                NewPush(
                    row.object_type,
                    row.record_id,
                    row.subject_id,
                    fields,
                    restricts,
                    rule,
                    action.value,
                )
            )
        return decided

    def _erasure_reaches(
        self, conn: Connection, acted_on: list[Any], links: list[Any]
    ) -> tuple[set[int], dict[int, str]]:
        """Of the records an erasure's delete or anonymise would reach (``acted_on``), by link id:
        those it reaches, and those of erased people it does not, each with the rule saying why.

        The action reaches the records the CRM held when the erasure was made: created before it
        where the CRM says (``crm_links.record_created_at``), else linked before it. One the CRM
        made since is a person met again (a CRM user entering them after a new sign-up): the
        erased person's is suppressed, never deleted (``CREATED_AFTER_RULE``, named to ops) until
        the address is erased again; a person the ledger first met after the erasure of their
        address is erased there only through the records held then. Then, of those, the records
        that do not speak for the person alone (``_not_theirs_to_erase``). Only an examination of
        such records asks.

        A shared record of a person who is not erased (``_erased_sharers_reach``) is reached
        where that person is known by it alone (no address) and everyone sharing it is erased."""
        shared_only = [
            row
            for row in acted_on
            if row.erased_at is None
            and not (row.address_erased is not None and row.address_erased == row.suppression_id)
        ]
        if shared_only:
            apart = {row.id for row in shared_only}
            acted_on = [row for row in acted_on if row.id not in apart]
        reached = self._erased_sharers_reach(conn, shared_only) if shared_only else set()
        held_then: set[int] = set()
        kept: dict[int, str] = {}
        erased = {row.id for row in acted_on if row.erased_at is not None}
        for link_id, created_at, linked_at, erased_at, entry_erased_at in conn.execute(
            select(
                crm_links.c.id,
                crm_links.c.record_created_at,
                crm_links.c.linked_at,
                subjects.c.erased_at,
                last_erased_at(suppressions),
            )
            .join(subjects, subjects.c.id == crm_links.c.subject_id)
            .outerjoin(suppressions, suppressions.c.id == subjects.c.suppression_id)
            .where(one_of(conn, crm_links.c.id, sorted(row.id for row in acted_on)))
        ):
            # An erased person's entry moves on when their address is erased again (asked again
            # once a CRM user entered them anew): what the CRM held then is reached too.
            since = max((t for t in (erased_at, entry_erased_at) if t is not None), default=None)
            if link_id not in erased:
                since = entry_erased_at
            made = created_at if created_at is not None else linked_at
            if since is not None and made <= since:
                held_then.add(link_id)
            elif link_id in erased:
                kept[link_id] = CREATED_AFTER_RULE
        kept.update(self._not_theirs_to_erase(conn, [row for row in acted_on if row.id in held_then], links))
        return (held_then - kept.keys()) | reached, kept

    def _erased_sharers_reach(self, conn: Connection, rows: list[Any]) -> set[int]:
        """Of records others' records point to (``rows``: ``_LinkToPush`` rows, sync/shared.py)
        whose own person is not erased, the link ids an erasure's delete or anonymise reaches:
        their person is known through such records alone (no address: the Individual read on
        one page through the Contacts of two addresses, a person of its own), and everyone
        sharing them is erased, by erasures made after the CRM made the record
        (``_erasure_reaches``). The record then
        holds nobody's data but the erased people's. A few reads, only where a person holding
        such a record is examined."""
        addressed = self._with_an_address(conn, {row.subject_id for row in rows})
        sharers = {
            row.id: {other for other in shared.sharing(row.fields) if other != row.subject_id}
            for row in rows
            if row.subject_id not in addressed
        }
        everyone = set().union(*sharers.values()) if sharers else set()
        if not everyone:
            return set()
        present = self._not_erased(conn, everyone)
        erased_at = self._erased_at(conn, everyone)
        candidates = {
            link_id: max(erased_at[other] for other in others if other in erased_at)
            for link_id, others in sharers.items()
            if others and not others & present
        }
        if not candidates:
            return set()
        return {
            link_id
            for link_id, created_at, linked_at in conn.execute(
                select(crm_links.c.id, crm_links.c.record_created_at, crm_links.c.linked_at).where(
                    one_of(conn, crm_links.c.id, sorted(candidates))
                )
            )
            if (created_at if created_at is not None else linked_at) <= candidates[link_id]
        }

    def _not_theirs_to_erase(self, conn: Connection, acted_on: list[Any], links: list[Any]) -> dict[int, str]:
        """Of an erased person's records that the erasure's delete or anonymise would reach
        (``acted_on``: ``_LinkToPush`` rows), those that do not speak for them alone, by link id,
        each with the rule saying why (sync/shared.py): one others' records point to, and one
        linked to them only through an address they had left. Only an examination of erased
        people with such an action configured asks."""
        others = {
            row.id: {other for other in shared.sharing(row.fields) if other != row.subject_id}
            for row in acted_on
        }
        # A sharer erased too has no data of theirs there to keep: with every sharer so, the
        # record is the erased people's alone and the action reaches it. One whose records the
        # CRM deleted is not: a deletion may be undone (a recycle bin), and their data in the
        # shared record is theirs until they are erased (an anonymise is never undone).
        present = self._not_erased(conn, set().union(*others.values())) if any(others.values()) else set()
        kept = {row.id: shared.SHARED_RULE for row in acted_on if others[row.id] & present}
        theirs: dict[int, set[tuple[str, str]]] = {}
        for row in links:
            theirs.setdefault(row.subject_id, set()).add((row.object_type, row.record_id))
        left = shared.linked_through_left(
            conn, [row for row in acted_on if row.id not in kept], self.by_object, theirs
        )
        kept.update(dict.fromkeys(left, shared.ADDRESS_LEFT_RULE))
        # A survivor of a merge holding another person's merged record (directly or along a
        # chain of merges) holds their data too (HubSpot keeps the merged contact's address on
        # it): while one of them is not erased, the erased person's erasure suppresses it only
        # (docs/policy.md, Merges: the survivor's person erased, the merged person not).
        owners = {row.id: row.subject_id for row in acted_on if row.id not in kept}
        merged = self._merged_into(conn, [row for row in acted_on if row.id in owners])
        for link_id, people in merged.items():
            people.pop(owners[link_id], None)
        everyone = {person for people in merged.values() for person in people}
        if everyone:
            # Only a person an erasure can be asked for (by an address): one the ledger knows by
            # records alone (a phone-only lead converted into the erased person's contact) would
            # spare the survivor for ever, as the records two people share weigh them
            # (``_erased_sharers_reach``). An erased person's record made after their erasure
            # (they came back: a CRM user entered them again) is theirs anew, as the erasure's
            # own action spares it (``CREATED_AFTER_RULE``) until the address is erased again.
            present = self._not_erased(conn, everyone & self._with_an_address(conn, everyone))
            erased_at = self._erased_at(conn, everyone - present)
            kept.update(
                {
                    link_id: MERGED_RULE
                    for link_id, people in merged.items()
                    if any(
                        person in present or (person in erased_at and made > erased_at[person])
                        for person, made in people.items()
                    )
                }
            )
        return kept

    def _erased_at(self, conn: Connection, people: set[int]) -> dict[int, datetime]:
        """Of ``people``, the erased ones, each with their latest erasure (theirs, or their
        address's entry's, erased again after they came back)."""
        return {
            subject_id: max(t for t in (erased, entry_erased) if t is not None)
            for subject_id, erased, entry_erased in conn.execute(
                select(subjects.c.id, subjects.c.erased_at, last_erased_at(suppressions))
                .outerjoin(suppressions, suppressions.c.id == subjects.c.suppression_id)
                .where(one_of(conn, subjects.c.id, sorted(people)), subjects.c.erased_at.is_not(None))
            )
        }

    def _merged_into(self, conn: Connection, rows: list[Any]) -> dict[int, dict[int, datetime]]:
        """For each of ``rows`` (``_LinkToPush`` rows of this connector), the people of the
        records merged into it, directly or along a chain of merges of any length (A into B,
        then B into C: a CRM lists only B as merged into C), by link id, each with when the
        latest of their records there was made (the CRM's creation, else its link). A read per
        step of the chains, through the partial index of merged links (migration 0025); only
        for an erasure's delete or anonymise."""
        # Each record reached, with the survivors (link ids) it lives on in: a chain may pass
        # through another record asked about (a converted lead the same erasure acts on), and
        # one record may lead to several survivors. A record is followed once per survivor:
        # cycles end.
        frontier: dict[tuple[str, str], set[int]] = {}
        for row in rows:
            frontier.setdefault((row.object_type, row.record_id), set()).add(row.id)
        reached = {key: set(survivors) for key, survivors in frontier.items()}
        found: dict[int, dict[int, datetime]] = {}
        while frontier:
            step: dict[tuple[str, str], set[int]] = {}
            for object_type, record_id, into_object, subject_id, into, created_at, linked_at in conn.execute(
                select(
                    crm_links.c.object_type,
                    crm_links.c.record_id,
                    crm_links.c.merged_into_object,
                    crm_links.c.subject_id,
                    crm_links.c.merged_into,
                    crm_links.c.record_created_at,
                    crm_links.c.linked_at,
                ).where(
                    crm_links.c.connector == self.name,
                    one_of(conn, crm_links.c.merged_into, sorted({record for _, record in frontier})),
                )
            ):
                survivors = frontier.get((into_object or object_type, into))
                if survivors is None:
                    continue  # merged into a record of that id of another object
                made = created_at if created_at is not None else linked_at
                for survivor in survivors:
                    people = found.setdefault(survivor, {})
                    people[subject_id] = max(made, people.get(subject_id, made))
                own = (object_type, record_id)
                new = survivors - reached.setdefault(own, set())
                if new:
                    reached[own] |= new
                    step.setdefault(own, set()).update(new)
            frontier = step
        return found

    def _with_an_address(self, conn: Connection, people: set[int]) -> set[int]:
        """Of ``people``, those holding an address (an erasure can be asked for them)."""
        return set(
            conn.execute(
                select(subject_identifiers.c.subject_id)
                .where(one_of(conn, subject_identifiers.c.subject_id, sorted(people)))
                .distinct()
            ).scalars()
        )

    def _not_erased(self, conn: Connection, people: set[int]) -> set[int]:
        """Of ``people``, those not erased."""
        return set(
            conn.execute(
                select(subjects.c.id).where(
                    one_of(conn, subjects.c.id, sorted(people)), subjects.c.erased_at.is_(None)
                )
            ).scalars()
        )

    def _put_backs(
        self,
        conn: Connection,
        asked: dict[tuple[str, str], tuple[int, Any, dict[str, Any], list[str]]],
        queued: dict[tuple[str, str], list[QueuedRow]],
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """``ours`` (``Mapping.updates_for``) for the records whose mapping would put back an
        opt-out this project wrote (``asked``, from ``decide_pushes``): each field asked about
        whose value the record's snapshot shows is the one our latest acknowledged write of it
        set (as the CRM reads such a write back: SuperOffice's removed consent shows Withdrawn),
        as an ``OurWrite``: the value the field held before that write (that push's
        ``crm.pushed`` entry's ``old``; None where not found, which keeps the opt-out) and the
        value the write sent (a mapping that never writes a yes puts back a removal, never a
        withdrawal: ``Mapping._put_back``), and what the person said no to since that write was
        queued (``_said_no_since``: a removal they withdrew under while restricted is theirs too).
        A field written again since and not acknowledged (sent, its answer lost, refused, given
        up) is unknown: left out. Lookups for the batch, by index: the writes sent and not
        acknowledged (the partial ``ix_outbox_unanswered``), and for the records still showing
        one of our writes, the people's ``crm.pushed`` entries (by subject id) and their nos."""

        latest: dict[tuple[str, str], dict[str, QueuedRow]] = {}
        for key, (_at, _row, _known, fields) in asked.items():
            for old in queued.get(key, ()):  # oldest first
                if old.status == "done" and old.action == WriteAction.UPDATE.value:
                    for name in set(fields).intersection(orjson.loads(old.fields)):
                        latest.setdefault(key, {})[name] = old
        by_object: dict[str, list[str]] = {}
        for object_type, record_id in latest:
            by_object.setdefault(object_type, []).append(record_id)
        for object_type, record_ids in by_object.items():
            for sent_id, record_id, fields in select_in(
                conn,
                outbox,
                ("id", "record_id", "fields"),
                "record_id",
                sorted(record_ids),
                equal=(("connector", self.name), ("object_type", object_type)),
                where=OUTBOX_UNANSWERED,
            ):
                ours, sent = latest[(object_type, record_id)], orjson.loads(fields)
                for name in [name for name, done in ours.items() if done.id < sent_id and name in sent]:
                    del ours[name]
        # Only where the record still shows what that write set: a value changed since (a user
        # unticking and ticking again) is theirs.
        kept: dict[tuple[str, str], dict[str, tuple[int, Any]]] = {}
        for key, ours in latest.items():
            _at, row, known, _fields = asked[key]
            for name, done in ours.items():
                sent = orjson.loads(done.fields)
                written = self.connector.as_read_back(RecordUpdate(row.object_type, row.record_id, sent))
                if name in known and name in written and crm_key(known[name]) == crm_key(written[name]):
                    kept.setdefault(key, {})[name] = (done.id, sent[name])
        if not kept:
            return {}
        olds: dict[int, dict[str, Any]] = {}
        for (payload,) in select_in(
            conn,
            audit_entries,
            ("payload",),
            "subject_id",
            sorted({asked[key][1].subject_id for key in kept}),
            equal=(("action", "crm.pushed"),),
        ):
            entry = orjson.loads(payload)
            what = entry.get("what") or {}
            if what.get("connector") == self.name and isinstance(entry.get("old"), dict):
                olds[what.get("outbox")] = entry["old"]
        said_no = self._said_no_since(
            conn,
            {done: asked[key][1].subject_id for key, fields in kept.items() for done, _ in fields.values()},
        )
        return {
            key: {
                name: OurWrite(olds.get(done, {}).get(name), sent, said_no.get(done, frozenset()))
                for name, (done, sent) in fields.items()
            }
            for key, fields in kept.items()
        }

    def _said_no_since(
        self, conn: Connection, writes: dict[int, int]
    ) -> dict[int, frozenset[tuple[str, str]]]:
        """For our acknowledged writes (outbox id: the person's subject id), the (purpose,
        channel) pairs the person said no to in the ledger since the write was queued: a
        withdrawal or refusal recorded, an objection upheld (raised or decided since; to direct
        marketing, each purpose that serves it). A no given while a restriction's removal shows is
        not written (the CRM shows what it writes already): the removal stands for it too, and
        is never put back (``Mapping._put_back``). Since the write was queued, not acknowledged:
        a no recorded while the removal was on its way is seen by no decision. Since it was
        recorded, whatever time it states: a no that reached the ledger late counts too (failing
        safe: the removal stays). Three lookups for the batch, by index: the writes (by id), the
        people's events and objections (by subject id); made only for the records that still
        show one of our writes and would have it put back."""
        queued_at: dict[int, datetime] = {
            done: created_at
            for done, created_at in conn.execute(
                select(outbox.c.id, outbox.c.created_at).where(one_of(conn, outbox.c.id, list(writes)))
            )
        }
        people = sorted(set(writes.values()))
        nos: dict[int, list[tuple[str, str, datetime]]] = {}
        events = select(
            consent_events.c.subject_id,
            consent_events.c.purpose,
            consent_events.c.channel,
            consent_events.c.recorded_at,
        ).where(
            one_of(conn, consent_events.c.subject_id, people),
            consent_events.c.status.in_(sorted(status.value for status in SAID_NO_STATUSES)),
        )
        for subject_id, purpose_key, channel, recorded_at in conn.execute(events):
            nos.setdefault(subject_id, []).append((purpose_key, channel, recorded_at))
        purposes = self.ledger.purposes
        upheld = select(
            objections.c.subject_id,
            objections.c.purpose,
            objections.c.direct_marketing,
            objections.c.recorded_at,
            objections.c.decided_at,
        ).where(
            one_of(conn, objections.c.subject_id, people),
            objections.c.status == ObjectionStatus.UPHELD.value,
        )
        for subject_id, purpose_key, direct_marketing, recorded_at, decided_at in conn.execute(upheld):
            at = max(recorded_at, decided_at or recorded_at)
            nos.setdefault(subject_id, []).extend(
                (purpose.key, channel, at)
                for purpose in purposes.values()
                if purpose.key == purpose_key or (direct_marketing and serves_direct_marketing(purpose))
                for channel in purpose.channels
            )
        said: dict[int, frozenset[tuple[str, str]]] = {}
        for done, subject_id in writes.items():
            since = queued_at.get(done)
            pairs = frozenset(
                (purpose_key, channel)
                for purpose_key, channel, at in nos.get(subject_id, ())
                if since is None or at >= since
            )
            if pairs:
                said[done] = pairs
        return said

    def _write_pushes(
        self, conn: Connection, decided: DecidedPushes, report: RunReport, now: datetime
    ) -> None:
        if decided.superseded:
            conn.execute(
                update(outbox)
                .where(one_of(conn, outbox.c.id, decided.superseded))
                .values(status="superseded", done_at=now)
            )
        for flag in (True, False):
            kept = [row_id for row_id, restricts in decided.flags.items() if restricts is flag]
            if kept:
                conn.execute(
                    update(outbox)
                    .where(one_of(conn, outbox.c.id, kept), outbox.c.suppression != flag)
                    .values(suppression=flag)
                )
        if decided.new_rows:
            created_at = db_time(conn, now)
            # In the order decided: the pushes are sent by id. (One COPY on PostgreSQL.)
            run_id = report.run_id
            rows = [
                (self.name, *push[:6], run_id, created_at, "pending", 0, push.action)
                for push in decided.new_rows
            ]
            insert_rows(conn, outbox, OUTBOX_COLUMNS, rows)
            # A first sync queues a push for a large share of the org: on PostgreSQL the outbox
            # is analysed once it grew that much (autovacuum may be off, or late).
            analyse_grown(conn)
        report.counts.pushes_enqueued += len(decided.new_rows)
        report.counts.irreversible_held += decided.irreversible_held
        if decided.held:
            # Each record left showing what it showed, on the record (Art. 5(2)): which record,
            # whose, which fields and why; `runs show` lists them (by id: no address).
            uids = self._uids(conn, [held.subject_id for held in decided.held])
            audit.append(
                conn,
                [
                    AuditRecord(
                        PUSH_HELD_ACTION,
                        {
                            "connector": self.name,
                            "object": held.object_type,
                            "record": held.record_id,
                            "fields": list(held.fields),
                        },
                        rule=held.rule,
                        source=self.name,
                        actor="consentsync",
                        run_id=report.run_id,
                        subject_uid=uids[held.subject_id],
                        subject_id=held.subject_id,
                    )
                    for held in decided.held
                ],
                now,
            )

    def _queued(self, conn: Connection, rows: list[Any]) -> dict[tuple[str, str], list[QueuedRow]]:
        """The outbox rows of these records that still matter (pending, done, dead), oldest first,
        by (object, record), looked up per record through the record index. Plain tuples
        (``select_in``): with a Core statement, expanding the IN list and wrapping each row cost
        more than the lookup itself, once per examined batch."""
        by_object: dict[str, list[str]] = {}
        for row in rows:
            by_object.setdefault(row.object_type, []).append(row.record_id)
        queued: dict[tuple[str, str], list[QueuedRow]] = {}
        for object_type, record_ids in by_object.items():
            found = select_in(
                conn,
                outbox,
                QueuedRow._fields,
                "record_id",
                record_ids,
                equal=(("connector", self.name), ("object_type", object_type)),
            )
            for old in sorted(map(QueuedRow._make, found)):  # by id: oldest first
                if old.status != "superseded":
                    queued.setdefault((object_type, old.record_id), []).append(old)
        return queued

    def _reversible_or_evidenced(
        self,
        mapping: Mapping,
        row: Any,
        updates: dict[str, Any],
        action: WriteAction,
        states: dict[tuple[str, str], EffectiveState],
    ) -> tuple[dict[str, Any], int]:
        """``updates`` less the writes the CRM could never undo, unless the person's state for the
        field's purposes rests on an evidenced withdrawal, refusal, objection or erasure; and how
        many writes were held back."""
        if action is WriteAction.DELETE or not updates:
            return updates, 0  # a delete is only ever an erasure action
        fixed = self.connector.irreversible(RecordUpdate(row.object_type, row.record_id, updates, action))
        if not fixed:
            return updates, 0
        kept = dict(updates)
        for name in fixed & set(updates):
            pairs = [
                pair for consent in mapping.spec.consents if consent.status.field == name
                for pair in consent.constant_pairs()
            ]  # fmt: skip
            if not any(_said_no(states[pair]) for pair in pairs if pair in states):
                del kept[name]
        return kept, len(updates) - len(kept)

    def _not_shown_yet(self, row: Any, updates: dict[str, Any], known: dict[str, Any]) -> dict[str, Any]:
        """``updates`` less what the record already shows as the CRM reads such a write back (a
        consent SuperOffice marked Withdrawn when it was removed is not removed again)."""
        if not updates:
            return updates
        shown = self.connector.as_read_back(RecordUpdate(row.object_type, row.record_id, updates))
        return {
            name: value
            for name, value in updates.items()
            if name not in known or crm_key(shown.get(name)) != crm_key(known[name])
        }

    def _follow_ledger(self, report: RunReport, *, push_along: bool = False) -> None:
        """Enqueues what to push to the people whose state changed in the ledger since this
        connector last looked (an objection decided by ops, an erasure, a withdrawal captured in
        another CRM) and to every person the pages read marked: once per person, whatever the
        number of pages and changes that named them. With ``push_along``, each examined batch's
        pushes are sent while the next batch is examined."""
        self._catch_up_feed(report)
        with _timed(report, "examine"):
            self._examine_marked(report, push_along=push_along)

    def _pushes_when_decided(self) -> bool:
        """True when a push may be sent as soon as it is decided: no approved plan to check it
        against, no guard that must first count the whole queue, and the connector not observing."""
        options = self.options
        return (
            self._apply_plan is None
            and options.mode != "observe"
            and options.guard_max_records is None
            and options.guard_max_share is None
        )

    def _expire_due(self, report: RunReport, *, dry_run: bool = False) -> None:
        """Applies the expiries due (``Ledger.expire_due``) in this run's write transactions
        (lease checked, the events and audit entries naming the run); a dry run's in its shared
        transaction, each expiry listed among the plan's ledger changes."""
        outcomes: list[RecordOutcome] | None = [] if dry_run else None

        def between() -> None:
            if self.stop_requested.is_set():
                raise _Stop

        report.counts.expired = self.ledger.expire_due(
            self._transaction,
            run_id=report.run_id,
            batch_size=self.options.batch_size,
            between=between,
            outcomes=outcomes,
        ).recorded
        if report.counts.expired:
            # Counts only: which people is in the audit chain, under the run's id.
            log.info("ledger.expired", expired=report.counts.expired, dry_run=dry_run)
        if outcomes:
            report.plan_changes += [
                # "granted" is what the ledger holds until the expiry is recorded (the clock
                # already decides the effective state: before and after would read the same).
                PlannedChange(
                    o.subject_uid, o.after.purpose, o.after.channel, "granted", _brief(o.after), o.after.rule
                )
                for o in outcomes
                if o.after is not None
            ]

    def _catch_up_feed(self, report: RunReport) -> None:
        with self._transaction() as conn:
            # Rules changed since the people were decided: each is decided again (push_rules.py).
            digest = push_rules_digest(self.mappings, self.options)
            examine_under_new_rules(conn, self.name, digest, report.run_id, self.ledger.clock())
        while True:
            with self._transaction() as conn:
                if not self._follow_feed(conn, report, self.ledger.clock()):
                    return

    def _examine_marked(self, report: RunReport, *, push_along: bool = False) -> None:
        """Decides the pushes of the marked people, a batch a transaction. With ``push_along``,
        each ``push_batch_size`` pushes decided are sent as soon as they are committed (the
        same groups the push stage sends, so a connector's choice of API by size holds), and
        their CRM calls run while later batches are examined: the CRM's time overlaps the
        examination's CPU. Their answers are committed between batches as they come."""
        with self._transaction() as conn:  # a dry run's shared connection holds the ledger
            total = conn.execute(
                select(func.count()).select_from(sync_examine).where(sync_examine.c.connector == self.name)
            ).scalar_one()
            # The outbox rows this run adds get ids above the highest now.
            sent_up_to = conn.execute(select(func.max(outbox.c.id))).scalar() or 0
        report.stage, report.stage_done, report.stage_total = "examining", 0, total
        in_flight: _Calls | None = None
        waiting = 0  # pushes decided and not sent yet
        ahead: DecisionsAhead | None = None
        after = 0  # the batches go by subject id, the same for the child deciding ahead
        try:
            while True:
                enqueued = report.counts.pushes_enqueued
                now = self.ledger.clock()
                with self._transaction() as conn:
                    marked = next_marked(conn, self.name, after, self.options.batch_size)
                    if marked:
                        decided = self._decided_ahead(conn, ahead, marked, report)
                        # The child decides on, but cannot write, what a merge carries.
                        if (
                            decided is not None
                            and (decided.merged or decided.shared)
                            and self._carry_after_merges(conn, decided.merged, report, decided.shared)
                        ):
                            decided = None
                        if decided is None:
                            decided = self._decide_pushes_after_merges(conn, marked, report)
                        self._write_pushes(conn, decided, report, now)
                        conn.execute(
                            delete(sync_examine).where(
                                sync_examine.c.connector == self.name,
                                one_of(conn, sync_examine.c.subject_id, marked),
                            )
                        )
                if not marked:
                    if after == 0:
                        break
                    after = 0  # once more from the start: people marked meanwhile
                    continue
                if ahead is None and after == 0 and self._decides_ahead(total):
                    ahead = DecisionsAhead(
                        self.decide_ahead, after=marked[-1], now=now, batch_size=self.options.batch_size
                    )
                after = marked[-1]
                failpoint("sync.examine.batch")  # a batch examined and committed
                waiting += report.counts.pushes_enqueued - enqueued
                report.stage_done += len(marked)
                report.stage_total = max(total, report.stage_done)
                self.progress(report)
                if in_flight is not None:
                    self._settle_ready(in_flight, report)
                if (
                    push_along
                    and waiting >= self.options.push_batch_size
                    and not self.stop_requested.is_set()
                ):
                    if in_flight is not None:
                        sent, in_flight = in_flight, None
                        self._settle_calls(sent, report)
                    rows = self._decided_since(sent_up_to, report)
                    waiting = max(0, waiting - len(rows))
                    if rows:
                        sent_up_to = rows[-1].id
                        # Every call of the group may run ahead of its answers, which are
                        # committed as each examined batch ends (a tenth of a second apart).
                        in_flight = self._send(rows, depth=len(rows))
        except BaseException:
            if in_flight is not None:
                # What the CRM answered before the error is committed if the ledger still takes
                # it; an answer lost here is recognised when the write is read back.
                with suppress(Exception):
                    self._settle_left(in_flight, report)
            raise
        finally:
            if ahead is not None:
                ahead.close()
                log.info(
                    "sync.decided_ahead",
                    batches=report.counts.decided_ahead,
                    decided_again=report.counts.decided_again,
                    waited_seconds=round(ahead.waited, 3),
                )
        if in_flight is not None:
            self._settle_calls(in_flight, report)

    def _decide_pushes_after_merges(
        self, conn: Connection, marked: list[int], report: RunReport
    ) -> DecidedPushes:
        """``decide_pushes`` in the run's write transaction; where some of these people have a
        record merged into another person's, that person takes on their nos first (a no given
        after the merge reaches the survivor as one given before it does), and is examined."""
        decided = self.decide_pushes(conn, marked, warm=self._warm_for(conn))
        if (decided.merged or decided.shared) and self._carry_after_merges(
            conn, decided.merged, report, decided.shared
        ):
            decided = self.decide_pushes(conn, marked, warm=self._warm_for(conn))
        return decided

    def _carry_after_merges(
        self,
        conn: Connection,
        merged: list[tuple[int, str, str]],
        report: RunReport,
        sharing: Sequence[tuple[int, int]] = (),
    ) -> bool:
        """Carries the nos of people whose records were merged into another person's survivor
        (``_carry_the_nos``), and of people whose records others' records point to (``sharing``:
        sync/shared.py) to those others; whether anything new was recorded. Merges are rare: one
        lookup of the survivors, only for a batch that has any."""
        owners = (
            self._known_links(
                conn, [CrmLink(self.name, object_type, survivor) for _, object_type, survivor in merged]
            )
            if merged
            else {}
        )
        joined = {
            (subject_id, owner)
            for subject_id, object_type, survivor in merged
            if (owner := owners.get(CrmLink(self.name, object_type, survivor))) is not None
            and owner != subject_id
        }
        joined.update(sharing)
        carried = bool(joined) and self._carry_the_nos(conn, joined, report, sharing=set(sharing))
        told = bool(sharing) and self._tell_the_erasures(conn, sharing, report)
        return carried or told

    def _tell_the_erasures(
        self, conn: Connection, sharing: Sequence[tuple[int, int]], report: RunReport
    ) -> bool:
        """``sharing``: (the person of a record others' records point to, one of those others),
        as ``decide_pushes`` found them. A person known by such records alone (no address, not
        erased) all of whose sharers are erased holds nothing but the erased people's data: an
        Individual read before the erased person's Contact pointing to it (in an earlier run, or
        before the erasure: ``absorb.absorbable`` never absorbs into an erased person), or one
        the Contacts of two addresses, both erased, point to. Read the other way round (the
        Contact first), those records would have been the erased person's, so that the order of
        reading does not decide it (Art. 17(2), 19; docs/policy.md, "A person known only
        through records without an address"):

        - their sharers' erasures (and nos) are recorded for them as a merge carries them
          (``_carry_the_nos``: a withdrawal at the erasure's time for every purpose and channel,
          its ``consent.recorded`` entry naming the erasure), which only a consent of theirs
          newer than the erasure lifts, as it would the erasure's suppression;
        - each of their records of this connector showing no address (the Individual's consent
          records, a Contact without an address pointing to it; read after the tie too) is
          marked with those sharers as the record pointed to is (``shared.mark``), so that the
          erasure's delete or anonymise reaches it where the CRM held it at the erasure
          (``_erased_sharers_reach``). A record of theirs showing an address (one its holder
          left) may be another human's: it gets the suppression only.

        While one sharer is not erased, nothing travels (their data may be in the records).
        Whether anything new was recorded or marked (the caller decides again). A few reads,
        only for a batch holding a record others' records point to."""
        others: dict[int, set[int]] = {}
        for owner, other in sharing:
            others.setdefault(owner, set()).add(other)
        alone = self._not_erased(conn, set(others)) - self._with_an_address(conn, set(others))
        everyone = {other for owner in alone for other in others[owner]}
        if not everyone:
            return False
        present = self._not_erased(conn, everyone)
        told = {owner: others[owner] for owner in alone if not others[owner] & present}
        if not told:
            return False
        carried = self._carry_the_nos(
            conn, {(erased, owner) for owner, people in told.items() for erased in people}, report
        )
        blank = absorb.no_address(self.ledger.keyed_hasher())
        marks = {
            CrmLink(self.name, object_type, record_id): told[subject_id]
            for subject_id, object_type, record_id, identity in conn.execute(
                select(
                    crm_links.c.subject_id,
                    crm_links.c.object_type,
                    crm_links.c.record_id,
                    crm_snapshots.c.identity,
                )
                .outerjoin(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
                .where(
                    crm_links.c.connector == self.name,
                    one_of(conn, crm_links.c.subject_id, sorted(told)),
                    crm_links.c.gone_at.is_(None),
                )
            )
            if identity is None or identity == blank
        }
        marked = bool(marks) and shared.mark(conn, self.name, marks, self.ledger.clock()) > 0
        return carried or marked

    def _decides_ahead(self, marked: int) -> bool:
        """Whether a second process decides the examination's batches ahead (sync/ahead.py): on
        the run's own SQLite write connection, for an examination large enough to repay starting
        it (about a second)."""
        return (
            self.decide_ahead is not None
            and self._writer is not None
            and self._shared is None
            and self.options.decide_ahead_from is not None
            and marked >= self.options.decide_ahead_from
        )

    def _decided_ahead(
        self, conn: Connection, ahead: DecisionsAhead | None, marked: list[int], report: RunReport
    ) -> DecidedPushes | None:
        """The child's decision for these people where it still holds in ``conn`` (the run's write
        transaction): nothing in the change feed for them since the child's snapshot, and their
        records' outbox rows those it weighed."""
        got = ahead.take(marked) if ahead is not None else None
        if got is None:
            return None
        if (
            changed_since(conn, marked, got.feed_top)
            or self._queued(conn, got.decided.records) != got.decided.queued
        ):
            report.counts.decided_again += 1
            return None
        report.counts.decided_ahead += 1
        return got.decided

    def _decided_since(self, sent_up_to: int, report: RunReport) -> list[Any]:
        """The first ``push_batch_size`` pending outbox rows this run added after row
        ``sent_up_to``, oldest first."""
        with self.ledger.engine.connect() as conn:
            return conn.execute(
                select(outbox)
                .where(
                    outbox.c.connector == self.name,
                    outbox.c.status == "pending",
                    outbox.c.id > sent_up_to,
                    outbox.c.run_id == report.run_id,
                )
                .order_by(outbox.c.id)
                .limit(self.options.push_batch_size)
            ).all()

    def _mark_for_examination(self, conn: Connection, subject_ids: Iterable[int]) -> None:
        rows = [(self.name, subject_id) for subject_id in sorted(set(subject_ids))]
        upsert_rows(
            conn, sync_examine, ("connector", "subject_id"), ("connector", "subject_id"), rows, update=False
        )

    def _follow_feed(self, conn: Connection, report: RunReport, now: datetime) -> bool:
        """Marks the people named by the next batch of the ledger's change feed, in ``conn``, and
        moves this connector's place past it (``sync.feed``: a change that commits after a later
        one is still read). False when the feed held nothing new."""
        stored = conn.execute(
            select(sync_cursors.c.cursor).where(
                sync_cursors.c.connector == self.name, sync_cursors.c.object_type == LEDGER_FEED
            )
        ).scalar()
        place = FeedPlace.from_json(stored)
        rows, moved = read_feed(conn, place, self.options.batch_size * 5)
        if moved != place:
            upsert_rows(
                conn,
                sync_cursors,
                ("connector", "object_type", "cursor", "run_id", "updated_at"),
                ("connector", "object_type"),
                [(self.name, LEDGER_FEED, moved.to_json(), report.run_id, db_time(conn, now))],
            )
        if not rows:
            return False
        self._mark_for_examination(conn, (subject_id for _, subject_id in rows))
        return True

    def _push(self, report: RunReport) -> None:
        """Drains this connector's pending outbox rows once, oldest first. Rows are marked sent
        (committed) before the CRM sees them, and each CRM call's answers are committed before
        the next call: a run stopped or killed anywhere loses no acknowledgement, and a write
        whose answer was lost is recognised when it is read back. A row that fails with a
        retryable error stays pending for the next run."""
        if self._apply_plan is not None:
            approved = self._check_plan(self._apply_plan, report)
            if not approved:
                return  # an empty plan, or one applied before and pushed whole: nothing to push
            try:
                self._push_rows(report, approved)
            except BaseException:
                with suppress(Exception):  # the reason the run stopped is what is told
                    self._tell_unpushed(report, approved)
                raise
            self._tell_unpushed(report, approved)
        elif not self._held(report):
            self._push_rows(report, None)

    def _tell_unpushed(self, report: RunReport, approved: set[int]) -> None:
        """An applied plan whose approved pushes are not all sent (refused for now, or the run
        stopped): the script applying it is told how many remain, and that applying the same plan
        again pushes them; a run that otherwise succeeded ends ``stopped`` (exit 75, retry later),
        never 0 with approved withdrawals still held."""
        with self.ledger.engine.connect() as conn:
            left = conn.execute(
                select(func.count())
                .select_from(outbox)
                .where(
                    outbox.c.connector == self.name,
                    outbox.c.status == "pending",
                    one_of(conn, outbox.c.id, sorted(approved)),
                )
            ).scalar_one()
        if not left:
            return
        said = (
            f"{left} of the plan's {len(approved)} approved pushes to send now are still pending: "
            "apply the same plan again to push them"
        )
        report.note = f"{report.note}; {said}" if report.note else said
        if report.status == "running":
            report.status = "stopped"
            report.error = (
                "some of the plan's pushes were not sent: the CRM refused them for now, or the "
                "person's state changed since the plan was made (the next run decides them again); "
                "they stay pending"
            )
        log.warning("sync.plan_unpushed", run_id=report.run_id, connector=self.name, pending=left)

    def _push_rows(self, report: RunReport, approved: set[int] | None) -> None:
        """Drains the pending rows (only ``approved`` ones, when given) once, oldest first: those
        never sent before those a CRM refused before. A few records the CRM keeps refusing (a
        workflow failing on their save) would otherwise head every run's pushes, and a CRM that
        stops a write after refusals in a row (Vtiger) would stop before anyone else's were sent.
        Each row goes once a run: ``sent`` keeps the ids this run sent (a row an earlier run
        decided keeps that run's id when the CRM refuses it now). The two passes are taken again
        while one sends anything: a row decided during the second (a withdrawal captured while
        this run pushes) is sent in this run."""
        sent: set[int] = set()
        while True:
            before = len(sent)
            for retried in (False, True):
                self._push_pass(report, approved, retried=retried, sent=sent)
            if len(sent) == before:
                return

    def _push_pass(
        self, report: RunReport, approved: set[int] | None, *, retried: bool, sent: set[int]
    ) -> None:
        floor = 0
        while True:
            # People whose state changed since the examination (a withdrawal captured while this
            # run pushes; a dead-lettered row put back by `outbox retry`, its person marked) are
            # marked first. Where pushes go as soon as they are decided, they are examined again
            # now: a row decided on their older state is superseded, never sent over the newer
            # choice, and what the newer one asks is sent in this run. Under a guard or a plan,
            # which counted what this run may push, their rows wait for the next run (examined,
            # and counted, there): the guard is never got around.
            self._catch_up_feed(report)
            if self._pushes_when_decided() and self._any_marked():
                self._examine_marked(report)
            marked = select(sync_examine.c.subject_id).where(
                sync_examine.c.connector == self.name, sync_examine.c.subject_id == outbox.c.subject_id
            )
            with self.ledger.engine.connect() as conn:
                query = (
                    select(outbox)
                    .where(
                        outbox.c.connector == self.name,
                        outbox.c.status == "pending",
                        outbox.c.id > floor,
                        ~marked.exists(),
                        # A row this run already sent and the CRM refused for now waits for
                        # the next run, as one this stage sends does.
                        or_(outbox.c.run_id != report.run_id, outbox.c.attempts == 0),
                        outbox.c.attempts > 0 if retried else outbox.c.attempts == 0,
                    )
                    .order_by(outbox.c.id)
                    .limit(self.options.push_batch_size)
                )
                if approved is not None:
                    query = query.where(one_of(conn, outbox.c.id, sorted(approved)))
                found = conn.execute(query).all()
            if not found:
                return
            if self.stop_requested.is_set():
                raise _Stop
            floor = found[-1].id
            rows = [row for row in found if row.id not in sent]
            if not rows:
                continue
            sent.update(row.id for row in rows)
            report.stage, report.stage_done, report.stage_total = "pushing", report.counts.pushed, None
            self._settle_calls(self._send(rows), report)

    def _any_marked(self) -> bool:
        """Whether anyone is marked for this connector's examination (a read: no write lock)."""
        with reading(self.ledger.engine) as conn:
            found = conn.execute(
                select(sync_examine.c.subject_id).where(sync_examine.c.connector == self.name).limit(1)
            ).first()
        return found is not None

    def _send(self, rows: list[Any], *, depth: int = 1) -> _Calls:
        """Marks ``rows`` sent (committed before the CRM sees them) and begins their CRM calls:
        the rows cut into ``push_concurrency`` shares, each written by the connector in a thread
        of its own, at most ``depth`` calls ahead of the answers committed."""
        with self._transaction() as conn:
            conn.execute(
                update(outbox)
                .where(one_of(conn, outbox.c.id, [row.id for row in rows]))
                .values(sent_at=self.ledger.clock())
            )
        failpoint("sync.push.sent")
        updates = [
            RecordUpdate(r.object_type, r.record_id, orjson.loads(r.fields), WriteAction(r.action))
            for r in rows
        ]
        arrived = threading.Event()
        shares = []
        concurrency = self.options.push_concurrency or self.connector.write_concurrency
        for number, positions in enumerate(self.connector.write_shares(updates, concurrency)):
            calls = Prefetch(
                self.connector.write_batches([updates[position] for position in positions]),
                depth=depth,
                stop=self.stop_requested,
                name=f"consentsync-push-{self.name}-{number}",
                arrived=arrived,
            )
            shares.append(_Share([rows[position] for position in positions], calls))
        return _Calls(shares, arrived)

    def _settle_calls(self, sent: _Calls, report: RunReport) -> None:
        """Commits the answers of ``sent``'s calls as they come, whichever share answers first;
        a share's next CRM call is made while its last one's answers are committed. A stop lets
        the calls in flight finish within the stop's grace (prefetch.STOP_GRACE_SECONDS) and
        commits their answers too; a call still in flight after it is left unanswered, its rows
        pending and marked sent, as a crash there leaves them (the next run sends them again)."""
        try:
            while not self._settle_ready(sent, report) and not self.stop_requested.is_set():
                # Short slices: the stop is seen promptly while the CRM takes its time.
                sent.arrived.wait(0.1)
        except BaseException:
            with suppress(Exception):
                self._settle_left(sent, report)
            raise
        self._settle_left(sent, report)
        if self.stop_requested.is_set():
            raise _Stop

    def _settle_ready(self, sent: _Calls, report: RunReport) -> bool:
        """Commits the answers ``sent``'s calls handed over so far, without waiting; True once
        every call answered."""
        sent.arrived.clear()
        calls: list[_Answered] = []
        try:
            for share in sent.shares:
                calls += [(share.rows, answers) for answers, _ in share.calls.ready()]
        finally:
            # What came before a share's error is committed all the same.
            self._settle_answers(calls, report)
        return all(share.calls.finished for share in sent.shares)

    def _settle_left(self, sent: _Calls, report: RunReport) -> None:
        """Stops ``sent``'s calls after those in flight and commits every answer they gave (a
        stop waits for the calls of every share within one grace)."""
        left = close_all(share.calls for share in sent.shares)
        self._settle_answers(
            [
                (share.rows, answers)
                for share, got in zip(sent.shares, left, strict=True)
                for answers, _ in got
            ],
            report,
        )

    def _settle_answers(self, calls: list[_Answered], report: RunReport) -> None:
        """Commits the answers of CRM calls (each call's ``answers`` by position in its rows),
        in one transaction: a commit and the writer's turn cost more than a call's answers."""
        if not calls:
            return
        for _ in calls:
            failpoint("sync.push.answered")
        with self._transaction() as conn:
            self._settle(
                conn,
                [(rows[i], result) for rows, answers in calls for i, result in sorted(answers.items())],
                report,
                self.ledger.clock(),
            )
        report.counts.api_calls = self.connector.usage.calls
        if report.stage == "pushing":
            report.stage_done = report.counts.pushed
        self.progress(report)

    def _pending(self, conn: Connection) -> list[Any]:
        return conn.execute(
            select(outbox)
            .where(outbox.c.connector == self.name, outbox.c.status == "pending")
            .order_by(outbox.c.id)
        ).all()

    def _held(self, report: RunReport) -> bool:
        """True when nothing may be pushed now: the connector observes, or the pushes waiting
        exceed the blast-radius guard (the run is then ``held`` until a plan is approved)."""
        with self.ledger.engine.connect() as conn:
            why = self._why_held(conn)
            if why is None:
                return False
            pending = self._pending(conn)
            plan = Plan(self.name, plan_items(conn, self.name, list(pending)))
        report.counts.pushes_held = len(pending)
        report.counts.would_push = plan.changes()
        if self.options.mode == "observe":
            log.info("sync.observing", run_id=report.run_id, connector=self.name, would_push=len(pending))
            return True
        report.status = "held"
        report.error = why
        records, live = self._guard_counts
        log.warning("sync.push_held", run_id=report.run_id, connector=self.name, records=records, live=live)
        return True

    def _why_held(self, conn: Connection) -> str | None:
        """Why a run would push none of the pushes waiting in ``conn`` (the connector observes,
        or they exceed the blast-radius guard), as ops read it; None when it would push them. A
        dry run asks it of the pushes its rolled-back transaction made."""
        options = self.options
        guarded = options.guard_max_records is not None or options.guard_max_share is not None
        if options.mode != "observe" and not guarded:
            return None
        # The waiting records are counted by the database, through the pending index (the rows
        # asked for): loaded here, a first sync's whole queue of pushes (600,000 at a million
        # contacts) took 240 MiB at once. It is loaded only when it is held (for the adoption
        # report).
        waiting = (
            select(outbox.c.object_type, outbox.c.record_id)
            .where(outbox.c.connector == self.name, outbox.c.status == "pending")
            .distinct()
            .subquery()
        )
        records = conn.execute(select(func.count()).select_from(waiting)).scalar_one()
        self._guard_counts = (records, None)  # for the log line of a run held (``_held``)
        if not records:
            return None
        approve = (
            f"review it with `consentsync plan {self.name} -o plan.json` and approve it with "
            "`consentsync apply plan.json`"
        )
        if options.mode == "observe":
            return (
                f"the connector observes (mode: observe): a run pushes none of the {records} records' "
                f"pushes; {approve}, or set its mode to suppress_only or two_way"
            )
        too_many = options.guard_max_records is not None and records > options.guard_max_records
        live: int | None = None
        too_much = False
        if options.guard_max_share is not None and not too_many:
            # Whether the connector has fewer live records than the share allows: counted up to
            # that many only (an incremental run's few pushes never count the whole org).
            enough = math.ceil(records / options.guard_max_share) + 1
            live = self._live_records(conn, limit=enough)
            too_much = bool(live) and records > options.guard_max_share * live
        if not (too_many or too_much):
            return None
        if live is None and options.guard_max_share is not None:
            live = self._live_records(conn)
        self._guard_counts = (records, live)
        limit = []
        if too_many:
            limit.append(f"more than {options.guard_max_records} records")
        if too_much:
            limit.append(f"more than {options.guard_max_share:.0%} of its {live} live records")
        limits = " and ".join(limit)
        return f"push guard: {records} records to push is {limits}: nothing was pushed; {approve}"

    def _live_records(self, conn: Connection, *, limit: int | None = None) -> int:
        """The connector's live records of the objects it reads (a contact's Individual, linked
        but not mapped, is not one of them), counted up to ``limit``."""
        query = select(crm_links.c.id).where(
            crm_links.c.connector == self.name,
            crm_links.c.gone_at.is_(None),
            one_of(conn, crm_links.c.object_type, sorted(self.by_object)),
        )
        if limit is not None:
            query = query.limit(limit)
        return int(conn.execute(select(func.count()).select_from(query.subquery())).scalar_one())

    def _check_plan(self, plan: Plan, report: RunReport) -> set[int]:
        """The outbox rows of an approved plan, when what the run would push is exactly that
        plan (else ``PlanOutdated``); audited with the plan's digest. When a run applied this plan
        before (``report.note`` names it): only its rows still pending exactly as planned (the
        rest of an apply cut short), none when it went through whole; no failure either way."""
        if plan.connector != self.name:
            raise PlanOutdated(f"the plan is for connector {plan.connector!r}, not {self.name!r}")
        with self._transaction() as conn:
            now_pending = Plan(self.name, plan_items(conn, self.name, list(self._pending(conn))))
            if now_pending.digest != plan.digest:
                applied = self._applied_before(conn, plan)
                if applied is not None:
                    # A script applying it again (after a timeout, a kill, a retryable refusal)
                    # asks for the rest of what the admin approved: the plan's pushes still
                    # pending, each exactly as planned (its key unchanged), are pushed now. What
                    # went through is not pushed again, and what is pending but differs from the
                    # plan was not approved by it.
                    run_id, at = applied
                    planned = {canonical_json(item.key()) for item in plan.items}
                    rest = {
                        item.outbox_id for item in now_pending.items if canonical_json(item.key()) in planned
                    }
                    pushed = "the rest of it is pushed now" if rest else "nothing was pushed again"
                    report.note = (
                        f"this plan was already applied, by run {run_id} at {at}: {pushed} "
                        f"(see it with `consentsync runs show {run_id}`); to push what changed "
                        f"since, make a new plan with `consentsync plan {self.name}`"
                    )
                    log.info(
                        "sync.plan_already_applied", connector=self.name, by_run=run_id, resumed=len(rest)
                    )
                    return rest
                planned = {canonical_json(item.key()) for item in plan.items}
                current = {canonical_json(item.key()) for item in now_pending.items}
                raise PlanOutdated(
                    f"the ledger or the CRM changed since the plan was made ({len(planned - current)} of its "
                    f"{len(planned)} pushes no longer apply, {len(current - planned)} new ones): nothing was "
                    f"pushed; make a new plan with `consentsync plan {self.name}`"
                )
            audit.append(
                conn,
                [
                    AuditRecord(
                        "plan.applied",
                        {"connector": self.name, "digest": plan.digest, "records": len(plan.items)},
                        new={"changes": plan.changes()},
                        source=self.name,
                        actor=self.plan_actor,
                        run_id=report.run_id,
                    )
                ],
                self.ledger.clock(),
            )
        return {item.outbox_id for item in now_pending.items}

    def _located(self, message: str) -> str:
        """A connector's configuration error with the mapping file and line of each field it
        names ("Contact has no field(s) HasOptedOutOfEmale"): the connector knows the CRM, the
        mapping knows where the admin wrote the name. Only the part before "accepted" is read
        (what follows lists what the CRM offers, not what is wrong)."""
        wrong = re.split(r"accepted", message, maxsplit=1, flags=re.IGNORECASE)[0]

        def said(name: str) -> bool:
            return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", wrong) is not None

        mappings = list(self.by_object.values())
        mappings = [m for m in mappings if said(m.object)] or mappings
        places = [f"{name} at {m.where(name)}" for m in mappings for name in m.field_names() if said(name)]
        return f"{message} (mapping: {'; '.join(places)})" if places else message

    def _applied_before(self, conn: Connection, plan: Plan) -> tuple[str, str] | None:
        """(run id, time) of the run that applied ``plan`` (its digest) already, if one did: a
        plan applied again is not one "the ledger or the CRM changed" since it was made. Read
        only when a plan no longer matches, from the audit log's few ``plan.applied`` entries."""
        rows = conn.execute(
            select(audit_entries.c.run_id, audit_entries.c.at, audit_entries.c.payload)
            .where(audit_entries.c.action == "plan.applied")
            .order_by(audit_entries.c.seq.desc())
        )
        for run_id, at, payload in rows:
            what = orjson.loads(payload).get("what") or {}
            if what.get("digest") == plan.digest and what.get("connector") == self.name:
                return str(run_id), iso(at)
        return None

    def _resolve_push_quarantine(self, conn: Connection, done: list[Any], now: datetime) -> None:
        """A push quarantined when it was dead-lettered, then sent again (``outbox retry``) or
        found applied on reading back, is done: its quarantine row is resolved, or status, the
        console and the metrics would show it open for ever. One statement a batch, through the
        index of open rows."""
        by_object: dict[str, set[str]] = {}
        for row in done:
            by_object.setdefault(row.object_type, set()).add(row.record_id)
        for object_type, record_ids in by_object.items():
            conn.execute(
                update(quarantine)
                .where(
                    quarantine.c.connector == self.name,
                    quarantine.c.resolved_at.is_(None),
                    quarantine.c.stage == "push",
                    quarantine.c.object_type == object_type,
                    one_of(conn, quarantine.c.record_id, sorted(record_ids)),
                )
                .values(resolved_at=now)
            )

    def _settle(
        self,
        conn: Connection,
        answered: list[tuple[Any, WriteResult]],
        report: RunReport,
        now: datetime,
        *,
        confirmed_by: str = "answer",
    ) -> None:
        """Commits the CRM's answers for outbox rows: done (audited, snapshot updated, a deleted
        record's link marked gone), pending again, or dead-lettered. ``confirmed_by`` says how
        the success was learnt: the CRM's answer, or reading the written values back. A record
        the CRM says it holds no more is marked gone (``_found_gone``)."""
        # A deletion the CRM answers "no such record" did what it asked.
        answered = [
            (row, replace(result, ok=True) if result.gone and row.action == WriteAction.DELETE else result)
            for row, result in answered
        ]
        acknowledged = [row for row, result in answered if result.ok]
        uids = self._uids(conn, [row.subject_id for row, _ in answered])
        olds = self._apply_snapshots(
            conn,
            [(row, orjson.loads(row.fields)) for row in acknowledged if row.action == WriteAction.UPDATE],
            now,
        )
        if acknowledged:
            conn.execute(
                update(outbox)
                .where(one_of(conn, outbox.c.id, [row.id for row in acknowledged]))
                .values(status="done", done_at=now, attempts=outbox.c.attempts + 1)
            )
            self._resolve_push_quarantine(conn, acknowledged, now)
        deleted = [row for row in acknowledged if row.action == WriteAction.DELETE]
        for row in deleted:
            conn.execute(
                update(crm_links)
                .where(CrmLink(self.name, row.object_type, row.record_id).rows_in(crm_links))
                .values(gone_at=now)
            )
        records: list[AuditRecord] = []
        for row in acknowledged:
            report.counts.pushed += 1
            what = {
                "connector": self.name,
                "object": row.object_type,
                "record": row.record_id,
                "outbox": row.id,
            }
            if row.action == WriteAction.DELETE:
                what["action"] = "delete"
            if confirmed_by != "answer":
                what["confirmed_by"] = confirmed_by
            records.append(
                AuditRecord(
                    "crm.pushed",
                    what,
                    old=olds.get(row.id),
                    new=orjson.loads(row.fields) if row.action == WriteAction.UPDATE else {"deleted": True},
                    rule=row.rule,
                    source=self.name,
                    actor="consentsync",
                    run_id=report.run_id,
                    subject_uid=uids[row.subject_id],
                    subject_id=row.subject_id,
                )
            )
        found_gone = [(row, result) for row, result in answered if not result.ok and result.gone]
        self._found_gone(conn, found_gone, report, now, uids, records)
        for row, result in answered:
            if result.ok or result.gone:
                continue
            report.counts.push_failed += 1
            reason = f"{result.error_code}: {result.message}"
            attempts = row.attempts + 1
            # A row the CRM keeps refusing is dead-lettered with its reason for ops
            # (consentsync outbox list --dead / retry) instead of being retried forever.
            alive = result.retryable and attempts < self.options.max_push_attempts
            conn.execute(
                update(outbox)
                .where(outbox.c.id == row.id)
                # Refused, but it was sent (sent_at stays): a CRM may have applied part of it
                # before it refused the rest, and a value it shows from this write is ours, not
                # the person's (``_recognise_echoes``).
                .values(status="pending" if alive else "dead", attempts=attempts, last_error=reason)
            )
            if not alive:
                conn.execute(
                    insert(quarantine).values(
                        self._quarantine_row(report, row.object_type, row.record_id, "push", reason, now)
                    )
                )
        audit.append(conn, records, now)

    def _found_gone(
        self,
        conn: Connection,
        found: list[tuple[Any, WriteResult]],
        report: RunReport,
        now: datetime,
        uids: dict[int, str],
        records: list[AuditRecord],
    ) -> None:
        """Writes the CRM answered "no such record" (a contact deleted for good by a user, its
        recycle bin emptied): the record is gone, as a deletion listing would have said. Its link
        is marked gone (``gone_by_write``: a listing naming it later still takes its last no and
        its survivor), the write and whatever else waits for it are superseded, and the person
        and their history stay. Not quarantined: nothing is left for ops to do."""
        if not found:
            return
        for row, result in found:
            conn.execute(
                update(outbox)
                .where(outbox.c.id == row.id)
                .values(
                    status="superseded",
                    done_at=now,
                    attempts=outbox.c.attempts + 1,
                    last_error=f"the CRM record is gone ({result.error_code}: {result.message})",
                )
            )
        by_object: dict[str, dict[str, Any]] = {}
        for row, _result in found:
            by_object.setdefault(row.object_type, {})[row.record_id] = row
        for object_type, rows in by_object.items():
            live = conn.execute(
                select(crm_links.c.id, crm_links.c.record_id).where(
                    crm_links.c.connector == self.name,
                    crm_links.c.object_type == object_type,
                    one_of(conn, crm_links.c.record_id, sorted(rows)),
                    crm_links.c.gone_at.is_(None),
                )
            ).all()
            if live:
                conn.execute(
                    update(crm_links)
                    .where(one_of(conn, crm_links.c.id, [link.id for link in live]))
                    .values(gone_at=now, gone_by_write=True)
                )
            report.counts.deleted_records += len(live)
            records += [
                self._link_entry(
                    "crm.record_deleted",
                    {"object": object_type, "record": link.record_id, "found_by": "write"},
                    ("live", "gone"),
                    rows[link.record_id].subject_id,
                    uids,
                    report,
                )
                for link in sorted(live, key=lambda link: link.record_id)
            ]
            conn.execute(
                update(outbox)
                .where(
                    outbox.c.connector == self.name,
                    outbox.c.object_type == object_type,
                    one_of(conn, outbox.c.record_id, sorted(rows)),
                    outbox.c.status == "pending",
                )
                .values(status="superseded", done_at=now, last_error="the CRM record is gone")
            )
        self._resolve_push_quarantine(conn, [row for row, _ in found], now)

    def _apply_snapshots(
        self, conn: Connection, written: list[tuple[Any, dict[str, Any]]], now: datetime
    ) -> dict[int, dict[str, Any]]:
        """Records what the CRM holds after acknowledged writes, so that reading our own writes
        back is neither new evidence nor a reason to push again. Returns each outbox row's old
        values of the fields it wrote."""
        if not written:
            return {}
        by_object: dict[str, list[str]] = {}
        for row, _fields in written:
            by_object.setdefault(row.object_type, []).append(row.record_id)
        links: dict[tuple[str, str], Any] = {}
        for object_type, record_ids in by_object.items():
            for link in select_in(
                conn,
                crm_links,
                ("id", "record_id", "crm_snapshots.fields", "crm_snapshots.evidence"),
                "record_id",
                record_ids,
                equal=(("connector", self.name), ("object_type", object_type)),
                join=((crm_snapshots, "link_id", "id"),),
            ):
                links[(object_type, link[1])] = _SnapshotOf._make(link)
        olds: dict[int, dict[str, Any]] = {}
        snapshots: dict[int, tuple[Any, ...]] = {}
        stamp = db_time(conn, now)
        merged_by_link: dict[int, dict[str, Any]] = {}
        for row, fields in written:
            link = links[(row.object_type, row.record_id)]
            # A record written twice in one transaction: the second write lands on the first.
            known = merged_by_link.get(link.id) or (orjson.loads(link.fields) if link.fields else {})
            olds[row.id] = {name: known.get(name) for name in fields}
            merged = {
                **known,
                **self.connector.as_read_back(RecordUpdate(row.object_type, row.record_id, fields)),
            }
            mapping = self.by_object[row.object_type]
            try:
                # Read as a page reads the record (``_commit_page``: a value the mapping cannot
                # translate stops only what it says), so that the read back knows our write.
                echoed = mapping.evidence_from(
                    {**merged, mapping.spec.identity.record_id: row.record_id},
                    connector=self.name,
                    observed_at=now,
                    held_back=[],
                )
                view = {_evidence_key(e): _our_write(_evidence_view(e)) for e in echoed}
            except InvalidInput:
                view = orjson.loads(link.evidence) if link.evidence else {}
            merged_by_link[link.id] = merged
            snapshots[link.id] = (link.id, canonical_json(view), canonical_json(merged), stamp)
        upsert_rows(
            conn,
            crm_snapshots,
            ("link_id", "evidence", "fields", "updated_at"),
            ("link_id",),
            list(snapshots.values()),
        )
        return olds

    # -- bookkeeping ---------------------------------------------------------------------------

    def _note_planned(self, conn: Connection, report: RunReport, outcomes: Sequence[RecordOutcome]) -> None:
        """A dry run's changes of state (``plan``): each person's, as its uid and brief states."""
        uids = self._uids(conn, [o.subject_id for o in outcomes])
        report.plan_changes += [
            PlannedChange(
                uids[o.subject_id],
                o.after.purpose,
                o.after.channel,
                _brief(o.before),
                _brief(o.after),
                o.after.rule,
            )
            for o in outcomes
            if o.before is not None and o.after is not None and _brief(o.before) != _brief(o.after)
        ]

    def _quarantine_row(
        self, report: RunReport, object_type: str, record_id: str, stage: str, reason: str, now: datetime
    ) -> dict[str, Any]:
        report.counts.quarantined += 1
        log.warning(
            "record.quarantined",
            run_id=report.run_id,
            connector=self.name,
            object=object_type,
            record_id=record_id,
            stage=stage,
        )
        return {
            "run_id": report.run_id,
            "connector": self.name,
            "object_type": object_type,
            "record_id": record_id[:64],  # the column's width: an id no CRM issues is kept cut
            "stage": stage,
            "reason": reason,
            "created_at": now,
        }

    def _save_cursor(
        self, conn: Connection, object_type: str, cursor: Cursor, run_id: str, now: datetime
    ) -> None:
        # A read of every record again keeps its history bound with its cursor until it ends
        # (``_reads``): a run that resumes it after a cut must not read the history it passed.
        bound = self._history_bounds.get(object_type) if object_type in self._rereading else None
        cursor = replace(
            cursor,
            history_from=bound.modstamp if bound else None,
            history_from_id=bound.record_id if bound else None,
        )
        stored: dict[str, Any] = dict(cursor.to_json())
        # The mapping the records up to this position were read under, and whether a read of them
        # all under it is under way (``_reads``): a crash in it resumes it as such.
        digest = self._read_digests.get(object_type)
        if digest is not None:
            stored[READS_KEY] = digest
            if object_type in self._rereading:
                stored[REREADING_KEY] = True
        frame, back_from = self._clock_frame(object_type)
        if frame is not None:
            stored[CLOCK_KEY] = _offset_json(frame, back_from)
        upsert_rows(
            conn,
            sync_cursors,
            ("connector", "object_type", "cursor", "run_id", "updated_at"),
            ("connector", "object_type"),
            [(self.name, object_type, canonical_json(stored), run_id, db_time(conn, now))],
        )

    def _identity_digests(self, conn: Connection, mapping: Mapping, page: list[CrmRecord]) -> dict[str, str]:
        """Each record's identity as a keyed hash (its address: the links it names are among
        the snapshot's fields), to tell a record read again unchanged without its address. An
        address is hashed as the suppression list hashes it (trimmed, lower-cased, in its one form,
        ``canonical_address``: the local part composed, an internationalised domain as its Unicode
        labels; what normalise_email makes of a valid one), so
        that the push decision finds a record holding an erased address by the hash alone,
        whether the CRM shows its domain in Unicode or in punycode; a value that is no text
        (none, a number) as its JSON text after a NUL, which no text can equal. (Not validated
        here: that costs more than the hash, and a malformed address is on no list but one
        erased as it was written.) An internationalised address an older version erased under
        its other form (punycode) is hashed as that entry is: one lookup, only for a page that
        holds such addresses."""
        digest = self.ledger.keyed_hasher()
        email_field = mapping.spec.identity.email
        digests: dict[str, str] = {}
        # record id -> the hashes of its address's other forms: punycode, and the address as
        # it came (lower-cased only: how a version before UTS #46 mapping stored and erased a
        # domain in NFD or with fullwidth letters; as_read)
        others: dict[str, list[str]] = {}
        for record in page:
            raw = field_value(record.fields, email_field) if email_field else None
            if not isinstance(raw, str):
                digests[record.record_id] = digest("\0" + canonical_json(raw))
                continue
            text = raw.strip().lower()
            if (not text.isascii() or "xn--" in text) and "@" in text:  # rare: one form for the domain
                read = text
                text = canonical_address(text)
                other = email_forms(as_read(text, read) or text)[1:]
                if other:
                    others[record.record_id] = [digest(form) for form in other]
            digests[record.record_id] = digest(text)
        if others:
            listed = {
                hashed
                for (hashed,) in select_in(
                    conn,
                    suppressions,
                    ("email_hmac",),
                    "email_hmac",
                    sorted({*(h for forms in others.values() for h in forms), *(digests[r] for r in others)}),
                )
            }
            for record_id, forms in others.items():
                if digests[record_id] not in listed:
                    digests[record_id] = next((h for h in forms if h in listed), digests[record_id])
        return digests

    def _page_links(self, conn: Connection, object_type: str, record_ids: list[str]) -> dict[str, _PageLink]:
        """The links of these records that exist, with their snapshots (None where none is kept),
        by record id: one lookup by the (connector, object, record) index."""
        if not record_ids:
            return {}
        rows = select_in(
            conn,
            crm_links,
            _PAGE_LINK_COLUMNS,
            "record_id",
            record_ids,
            equal=(("connector", self.name), ("object_type", object_type)),
            join=((crm_snapshots, "link_id", "id"),),
        )
        return {row.record_id: row for row in map(_PageLink._make, rows)}

    def _load_snapshots(
        self, conn: Connection, object_type: str, record_ids: list[str]
    ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """The snapshots (evidence, fields) of these records that have one, by record id."""
        rows = select_in(
            conn,
            crm_links,
            ("record_id", "crm_snapshots.evidence", "crm_snapshots.fields"),
            "record_id",
            record_ids,
            equal=(("connector", self.name), ("object_type", object_type)),
            join=((crm_snapshots, "link_id", "id"),),
        )
        return {
            record_id: (orjson.loads(evidence), orjson.loads(fields))
            for record_id, evidence, fields in rows
            if fields is not None
        }

    def _snapshot_times(
        self, conn: Connection, object_type: str, record_ids: list[str]
    ) -> dict[str, datetime]:
        """When the snapshots of these records were last taken, by record id (UTC). Typed by
        SQLAlchemy: only pages with earlier values ask."""
        rows = conn.execute(
            select(crm_links.c.record_id, crm_snapshots.c.updated_at)
            .join(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
            .where(
                crm_links.c.connector == self.name,
                crm_links.c.object_type == object_type,
                one_of(conn, crm_links.c.record_id, sorted(record_ids)),
            )
        )
        return {
            record_id: taken if taken.tzinfo else taken.replace(tzinfo=UTC)
            for record_id, taken in rows
            if taken is not None
        }

    def _known_links(self, conn: Connection, links: list[CrmLink]) -> dict[CrmLink, int]:
        found: dict[CrmLink, int] = {}
        by_object: dict[str, set[str]] = {}
        for link in links:
            by_object.setdefault(link.object_type, set()).add(link.record_id)
        for object_type, record_ids in by_object.items():
            found.update(
                (CrmLink(self.name, object_type, record_id), subject_id)
                for record_id, subject_id in self._links_of(
                    conn, object_type, sorted(record_ids), "subject_id"
                )
            )
        return found

    def _link_ids(self, conn: Connection, object_type: str, record_ids: list[str]) -> dict[str, int]:
        return dict(self._links_of(conn, object_type, record_ids, "id"))

    def _links_of(
        self, conn: Connection, object_type: str, record_ids: Sequence[str], column: str
    ) -> Iterator[tuple[str, int]]:
        """(record id, ``column``) of this connector's links to these records, through the
        (connector, object, record) index, as plain tuples: a Core statement's expanded IN list
        and wrapped rows cost more than the lookup, on every page."""
        equal = (("connector", self.name), ("object_type", object_type))
        yield from select_in(conn, crm_links, ("record_id", column), "record_id", record_ids, equal=equal)

    def _uids(self, conn: Connection, subject_ids: Iterable[int]) -> dict[int, str]:
        ids = sorted(set(subject_ids))
        if not ids:
            return {}
        return {subject_id: uid for subject_id, uid in select_in(conn, subjects, ("id", "uid"), "id", ids)}

    def _record_run_start(self, report: RunReport, full: bool) -> None:
        with self.ledger.engine.begin() as conn:
            conn.execute(
                insert(sync_runs).values(
                    id=report.run_id,
                    connector=self.name,
                    started_at=report.started_at,
                    status="running",
                    full_load=full,
                    counts=canonical_json(asdict(report.counts)),
                )
            )

    def _record_run_end(self, report: RunReport) -> None:
        with self.ledger.engine.begin() as conn:
            conn.execute(
                update(sync_runs)
                .where(sync_runs.c.id == report.run_id)
                .values(
                    status=report.status,
                    finished_at=report.finished_at,
                    counts=canonical_json(asdict(report.counts)),
                    error=report.error,
                )
            )


def _stored_no(row: Any) -> Evidence:
    """A stored consent event as the evidence it recorded (observed when it was recorded),
    without soft opt-in conditions: a merge asks only which nos still bind (``binding_no``) and
    carries only withdrawals and refusals."""
    return Evidence(
        row.purpose,
        row.channel,
        ConsentStatus(row.status),
        LawfulBasis(row.basis) if row.basis else None,
        row.event_time,
        row.recorded_at,
        row.source,
        Origin(row.origin),
        actor=row.actor,
        notice_version=row.notice_version,
        double_opt_in_at=row.double_opt_in_at,
        evidence_ref=row.evidence_ref,
        notice_language=row.notice_language,  # carried with its proof: the text it was said under
        # Read as it was when recorded: a no from a CRM whose clock ran behind binds as late.
        clock_lag=clock_lag_of(row.clock_lag_ms),
    )


def _said_no(state: EffectiveState) -> bool:
    """The state rests on the person's own no (a withdrawal, a refusal, an objection) or their
    erasure: evidence enough for a write the CRM cannot undo."""
    from consentsync.mapping import SAID_NO_RULES, SAID_NO_STATUSES

    return state.suppressed and (
        state.status in SAID_NO_STATUSES or state.rule in SAID_NO_RULES or state.rule == "erasure_suppression"
    )


def _survivor_link(connector: str, object_type: str, record: CrmRecord) -> CrmLink:
    """The link of the record ``record`` was merged into: of its own object, or of the object
    it went into (a lead converted into a contact)."""
    return CrmLink(connector, record.merged_into_object or object_type, str(record.merged_into))


def _unchanged(mapping: Mapping, record: CrmRecord, held: Any, digest: str) -> bool:
    """Whether a record is read exactly as its live link's snapshot holds it: its values and
    its identity (by keyed hash)."""
    if held is None or held.gone_at is not None or held.identity != digest:
        return False
    read = canonical_json(_consent_fields(mapping, record.fields))
    # A shared record's snapshot also names who points to it (sync/shared.py): looked at only
    # where the text differs.
    return held.fields == read or shared.same_fields(held.fields, read)


def _repeats(history: Sequence[Any], fields: str, action: str, shown: dict[str, Any] | None = None) -> bool:
    """Whether a new outbox row would repeat the record's latest row that is pending (it stays)
    or dead-lettered (the CRM refused exactly this for good: ops retry it, a re-read does not).

    With ``shown`` (the record as last read, for an erasure's anonymise): a pending anonymise
    writing the new row's fields and, beside them, only values the record shows already is
    repeated too. Sent and its answer lost, it may or may not have blanked the fields the mapping
    does not read; sent again whole, its entry names every field written, where a new row
    would leave out the suppression flags the record shows (set by the lost write, or by hand)."""
    if not history:
        return False
    latest = history[-1]
    if latest.status not in ("pending", "dead") or latest.action != action:
        return False
    if latest.fields == fields:
        return True
    if shown is None or latest.status != "pending" or latest.rule != ANONYMISE_RULE:
        return False
    sent, wanted = orjson.loads(latest.fields), orjson.loads(fields)
    return all(
        name in sent and crm_key(sent[name]) == crm_key(value) for name, value in wanted.items()
    ) and all(
        name in wanted or (name in shown and crm_key(shown[name]) == crm_key(value))
        for name, value in sent.items()
    )


def _stored_offset(data: object) -> ClockOffset | None:
    """The CRM clock offset kept in a stored cursor's JSON (``CLOCK_KEY``), or None."""
    kept = data.get(CLOCK_KEY) if isinstance(data, dict) else None
    if not isinstance(kept, dict):
        return None
    low, high = kept.get("low_us"), kept.get("high_us")
    if not isinstance(low, int) or not isinstance(high, int) or low > high:
        return None
    return ClockOffset(low * _MICROSECOND, high * _MICROSECOND)


def _stored_back_from(data: object) -> datetime | None:
    """Where a read cut short after the CRM's clock was set back started (``_clock_frame``), as
    kept in a stored cursor's JSON, or None."""
    kept = data.get(CLOCK_KEY) if isinstance(data, dict) else None
    moment = kept.get("back_from") if isinstance(kept, dict) else None
    try:
        return as_utc(datetime.fromisoformat(moment)) if isinstance(moment, str) else None
    except ValueError:
        return None


def _offset_json(offset: ClockOffset, back_from: datetime | None) -> dict[str, Any]:
    """A CRM clock offset (and where to go back from) as kept in a stored cursor's JSON."""
    kept: dict[str, Any] = {"low_us": offset.low // _MICROSECOND, "high_us": offset.high // _MICROSECOND}
    if back_from is not None:
        kept["back_from"] = back_from.isoformat()
    return kept


def _set_back_by(before: ClockOffset, now: ClockOffset) -> timedelta | None:
    """How far the CRM's clock may have been set back between two measures of it, where it
    surely was (even the highest reading now lies below the lowest before; within the margins of
    one answer it may have stayed where it was): the most it went, else None."""
    if now.high >= before.low:
        return None
    return before.high - now.low


def _later(candidate: Cursor, position: Cursor) -> bool:
    """Whether ``candidate`` lies beyond ``position`` in (change time, id) order."""
    assert candidate.modstamp is not None and position.modstamp is not None
    return (candidate.modstamp, candidate.record_id or "") > (position.modstamp, position.record_id or "")


def reading_digest(mapping: Mapping, connector_reading: str | None = None) -> str:
    """A short hash of what a read of ``mapping``'s object asks the CRM for and how it
    understands the answers (the fields read, the identity, every consent's purpose, channel,
    translation tables and direction, and the connector's own ``reading_version`` where it has
    one): whatever changes what a record means, or what its CRM record should show. Kept with the
    object's cursor (``SyncEngine._save_cursor``); the erasure action's values
    (``personal_fields``) change no record's meaning and are left out."""
    # Defaults left out: a setting added to the mapping format later changes no digest stored
    # before it (no mapping that leaves it unset means anything else).
    spec = mapping.spec.model_dump(
        mode="json", exclude={"personal_fields"}, exclude_defaults=True, warnings=False
    )
    what: dict[str, Any] = {"fields": mapping.pull_fields(), "spec": spec}
    if connector_reading is not None:  # left out when unset: digests stored before stay equal
        what["connector"] = connector_reading
    text = canonical_json(what)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _consent_fields(mapping: Mapping, fields: Any) -> dict[str, Any]:
    """The record's values of the fields the mapping reads and writes, less its identity (the
    email address stays out of snapshots: it is personal data the ledger keeps in one place)."""
    # An address written in a free-text field (a capture note) stays out too: no erasure could
    # find it here (docs/policy.md, "Erasure"). Pushed fields are flags and picklists: untouched.
    return {name: _without_addresses(fields.get(name)) for name in mapping.consent_fields()}


def _without_addresses(value: Any) -> Any:
    return without_emails(value, "[address left out]") if isinstance(value, str) else value


def _evidence_key(evidence: Evidence) -> str:
    return f"{evidence.purpose}/{evidence.channel}"


def _evidence_view(evidence: Evidence) -> list[str | None]:
    return [
        evidence.status.value,
        evidence.basis.value if evidence.basis else None,
        iso(evidence.event_time),
    ]


def _our_write(view: list[str | None]) -> list[str | None]:
    """The view of a value this project wrote: its status and basis, and no time (the CRM stamps
    a write when it applies it, a time nobody can know before reading it back)."""
    return [view[0], view[1], None, "ours"]


def _same(seen: list[str | None] | None, view: list[str | None], *, timeless: bool = False) -> bool:
    """Whether a value read is the one last seen or written: a written value (see _our_write)
    matches on status and basis, whatever time the CRM stamped on it; so does any value where
    ``timeless`` (its time was not read with the value last seen)."""
    if seen is not None and (len(seen) == 4 or timeless):
        return seen[:2] == view[:2]
    return seen == view


def _address_erased(states: dict[tuple[str, str], EffectiveState]) -> dict[tuple[str, str], EffectiveState]:
    """A person's states as a record holding an erased address must show them: suppressed for
    every purpose and channel, as the erased person's own records are (Art. 17: the suppression
    list exists so that the address is never contacted again), whatever the record's person
    consented to: their consent is to their own address, which the record no longer holds."""
    return {
        key: replace(
            state,
            suppressed=True,
            rule=Rule.ERASURE,
            detail="the record's address is on the suppression list",
        )
        for key, state in states.items()
    }


def _brief(state: EffectiveState | None) -> str:
    if state is None:
        return "-"
    return state.status.value + (" (suppressed)" if state.suppressed else "")


def _rule_for(
    mapping: Mapping, updates: dict[str, Any], states: dict[tuple[str, str], EffectiveState]
) -> str | None:
    """The rule behind the fields a push writes: the state of the consents those fields carry
    (a suppressed one first), else the person's deciding rule."""
    behind: dict[tuple[str, str], EffectiveState] = {}
    for consent, pairs in mapping.pairs:
        if consent.status.field in updates or (consent.basis is not None and consent.basis.field in updates):
            behind.update({pair: states[pair] for pair in pairs if pair in states})
    return _deciding_rule(behind or states)


def _deciding_rule(states: dict[tuple[str, str], EffectiveState]) -> str | None:
    """The rule behind a person's first suppressed state (else their first state), recorded with
    the outbox row and the push's audit entry."""
    ordered = sorted(states.values(), key=lambda state: not state.suppressed)
    return ordered[0].rule if ordered else None
