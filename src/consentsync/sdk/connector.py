"""What a connector author implements: a small base class, and the plain data it exchanges with
the sync engine. The engine owns the flow (read, map, reconcile, commit, push); a connector only
talks to its CRM."""

from __future__ import annotations

import inspect
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any, ClassVar

from pydantic import BaseModel

from consentsync.domain import as_utc, fold_astral
from consentsync.sdk.clock import CrmClock
from consentsync.sdk.errors import register_secrets


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where an incremental read resumes: the last (change time, record id) durably handled.

    Records sharing a change time are told apart by id, so none is lost or read twice across
    pages or runs (a cursor on the time alone loses records that share a second).

    ``token`` is an opaque position of the CRM's own (a Dataverse delta link): a connector that
    reads changes from such a token sets the new one in ``Connector.completed_cursor`` once the
    change set is read to its end; the engine keeps it with the last page's commit, and until
    then keeps the token the read started from, so a crash re-reads the whole change set
    (harmless: evidence and pushes are idempotent).
    """

    modstamp: datetime | None = None
    record_id: str | None = None
    token: str | None = None
    # The upper bound (``until``) of the read that stored this cursor, or the earlier moment its
    # connector said the read covered (``Connector.covered_until``): every change stamped a
    # look-back window before it was visible to that read, so the next read need not go back
    # further than that (see ``Connector.resume_from``). A moment of the CRM's clock, as its
    # stamps are: where the CRM's clock runs behind ours, the engine bounds it by the CRM's
    # (``Connector.crm_clock``, consentsync.sdk.clock).
    read_until: datetime | None = None
    # Of a read of every record again (after a mapping change), what the reads before it passed
    # of the records' history: (``history_from``, ``history_from_id``), the place an incremental
    # read would have resumed from (``Connector.resume_from``). A change stamped before it, or
    # at it on a record whose id is not after ``history_from_id``, was in a read already; a
    # connector that reads records' earlier values (HubSpot's address history) reads none of
    # them again, and for a record after the read's position (``modstamp``) none before that
    # either (the later of the two). The engine keeps it with the stored cursor for as long as
    # that read lasts: a run that resumes it after a cut is handed it again. None: no bound
    # beyond the position (an incremental read; a first read or ``sync --full``: all history).
    history_from: datetime | None = None
    history_from_id: str | None = None

    def to_json(self) -> dict[str, str | None]:
        out = {
            "modstamp": self.modstamp.isoformat() if self.modstamp else None,
            "record_id": self.record_id,
        }
        # Left out when unset: cursors stored before stay byte-identical.
        if self.token is not None:
            out["token"] = self.token
        if self.read_until is not None:
            out["read_until"] = self.read_until.isoformat()
        if self.history_from is not None:
            out["history_from"] = self.history_from.isoformat()
            out["history_from_id"] = self.history_from_id
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Cursor:
        if not data:
            return cls()
        stamp, until, passed = data.get("modstamp"), data.get("read_until"), data.get("history_from")
        return cls(
            as_utc(datetime.fromisoformat(stamp)) if stamp else None,
            data.get("record_id"),
            data.get("token"),
            as_utc(datetime.fromisoformat(until)) if until else None,
            as_utc(datetime.fromisoformat(passed)) if passed else None,
            data.get("history_from_id") if passed else None,
        )

    def is_before(self, modstamp: datetime, record_id: str) -> bool:
        """True when (modstamp, record_id) comes after this cursor, i.e. still has to be read."""
        if self.modstamp is None:
            return True
        return (modstamp, record_id) > (self.modstamp, self.record_id or "")


def _earliest_moment(cursor: Cursor) -> datetime:
    """The earlier of a cursor's position and its read's bound (a bound the CRM said its changes
    were whole up to lies before the position). Only for a cursor with a position."""
    assert cursor.modstamp is not None
    return min(cursor.modstamp, cursor.read_until or cursor.modstamp)


def rewound_plain(cursor: Cursor, by: timedelta) -> Cursor | None:
    """``Connector.rewound`` for a connector whose token holds no position of its own (a
    moment of the CRM's clock, or what of a batch was handed over): the cursor ``by`` earlier as
    a plain position, its token dropped (the read from there is a plain one)."""
    return None if cursor.modstamp is None else Cursor(_earliest_moment(cursor) - by)


@dataclass(frozen=True, slots=True)
class CrmRecord:
    """One record as the CRM holds it now, or the news that it is gone.

    ``deleted``: the CRM deleted the record; ``modstamp`` is then the time of the deletion and
    ``fields`` its last values where the CRM still answers them (its recycle bin), else empty.
    ``merged_into``: the record was merged away and this is the id of the record that survived
    (``deleted`` is then True too). ``merged_into_object``: the survivor's object where it is
    not this record's: a record that went into a record of another object (a lead converted into
    a contact). Such a record is kept by the CRM, read-only: it is gone for the person's
    consents, which go with the survivor, but an erasure's delete or anonymise still reaches it
    (it holds their data). ``merged_into_object`` without ``merged_into``: the record went into
    a record of that object that the CRM does not name (Vtiger keeps a converted lead without a
    link to its contact); it is kept by the CRM all the same.

    ``earlier_values``: of a live record, values it held since the last read that it no longer
    shows, for fields whose value is not the record's own (HubSpot keys subscription statuses by
    address: a user changing a contact's address hides the statuses of the old one). A
    withdrawal or refusal among them is the person's and is taken, as a deleted record's last no
    is; nothing else of them is. Give them only where the record does not show a later yes.
    ``earlier_given_at``: for each field of ``earlier_values``, when its value was given (the
    no's own time, where the mapping dates nothing): a no must not pass for newer than a yes the
    person gave since. Leave out a no whose time the CRM does not tell.
    """

    object_type: str
    record_id: str
    modstamp: datetime
    fields: Mapping[str, Any]
    deleted: bool = False
    merged_into: str | None = None
    merged_into_object: str | None = None
    earlier_values: Mapping[str, Any] | None = None
    earlier_given_at: Mapping[str, datetime] | None = None
    # When the CRM created the record (aware), where it says: an erasure's delete or anonymise
    # reaches a record first read after the erasure only if the CRM created it before (the
    # erased person's data, held when they asked), never one made since (a person who came
    # back, met again by a CRM user: suppressed, not deleted). None where the CRM does not say.
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FieldInfo:
    name: str
    type: str
    updateable: bool
    nillable: bool = True
    picklist_values: tuple[str, ...] = ()


class WriteAction(StrEnum):
    UPDATE = "update"  # set ``fields`` on the record
    DELETE = "delete"  # delete the record (an erasure passed on, Art. 17(2)); ``fields`` is empty


@dataclass(frozen=True, slots=True)
class RecordUpdate:
    object_type: str
    record_id: str
    fields: Mapping[str, Any]
    action: WriteAction = WriteAction.UPDATE


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The CRM's answer for one record of a batch write."""

    record_id: str
    ok: bool
    error_code: str | None = None
    message: str | None = None
    retryable: bool = False
    # Seconds the CRM asked to wait before this record is sent again (a request throttled inside
    # a batch, with its own Retry-After): ``write_in_passes`` waits that long before it sends
    # anything more.
    retry_after: float | None = None
    # The CRM holds no record under this id (deleted by a user, purged from its recycle bin, or
    # merged away), confirmed by a read of the id where the refusal alone could mean something
    # else. The engine marks the record gone and sends it nothing more, as a deletion listing
    # would have; ``ok`` stays False. A deletion answered so is done: say ``ok`` instead.
    gone: bool = False


@dataclass(slots=True)
class ApiUsage:
    """API calls made in this run, and the CRM's own count against its allocation where it says."""

    calls: int = 0
    used: int | None = None
    limit: int | None = None
    per_endpoint: dict[str, int] = field(default_factory=dict)
    # Readers running side by side (``Connector.reader``) count into one usage.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, endpoint: str) -> None:
        """Counts one call made to ``endpoint`` (a kind of call: "query", "token", ...)."""
        with self._lock:
            self.calls += 1
            self.per_endpoint[endpoint] = self.per_endpoint.get(endpoint, 0) + 1

    def said(self, used: int, limit: int) -> None:
        """Takes the CRM's own count from an answer: the highest of the run, since answers to
        calls made side by side (reads, writes) come back in any order."""
        with self._lock:
            self.used = used if self.used is None else max(self.used, used)
            self.limit = limit

    @property
    def remaining(self) -> int | None:
        if self.used is None or self.limit is None:
            return None
        return self.limit - self.used


class Connector(ABC):
    """One configured CRM (an "instance": two Salesforce orgs are two connectors).

    Subclasses set ``vendor`` and implement ``check``, ``describe``, ``read_changes`` and one of
    ``write_batches`` (preferred) or ``write``; they raise ``consentsync.sdk.errors`` exceptions so
    that the engine knows whether to retry, skip a record, stop cleanly or fail the run.
    """

    vendor: ClassVar[str]
    # True where the connector implements ``read_records``: ops can then retry one quarantined
    # record (the next run re-reads it by id); elsewhere a full run re-reads it.
    can_read_by_id: ClassVar[bool] = False
    # How far behind the last record it read an incremental read starts again. A CRM stamps a
    # change when its transaction starts writing and shows it when it commits: a record stamped
    # before the watermark can become visible after a read passed it (long transactions,
    # triggers, bulk jobs, search indexes that lag writes). Re-reading the window costs API calls
    # but never creates evidence twice (the engine compares with the record's snapshot). Each
    # connector sets it from its vendor's docs; ``lookback_seconds`` in the connector's config
    # overrides it.
    lookback: ClassVar[timedelta] = timedelta(minutes=5)
    # The objects whose records take fewer erasure actions than all (suppress, anonymise,
    # delete), with the ones they take: an object the connector makes up from other records (it
    # has nothing of its own to delete) takes suppress only. A config asking another action of
    # such an object is refused at load (config._check_object_erasure_actions). Empty: every
    # object takes every action.
    erasure_actions_by_object: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    # What the connector reads for a mapping by itself, beyond the mapping's own fields (a field
    # it adds, such as HubSpot's opt-out of all email): change it whenever a new version reads
    # more or understands the answers otherwise. It goes into each cursor's reading digest, so a
    # ledger synced by an older version reads every record again once under the new reading
    # (records passed before would otherwise keep what the old reading made of them). None: the
    # mapping alone says what is read.
    reading_version: ClassVar[str | None] = None
    # True where ``read_deletions`` lists records deleted (or merged away) in the CRM.
    reads_deletions: ClassVar[bool] = False
    # Where deletions come from, for ops and docs: "stream" (``read_changes`` yields them),
    # "listing" (``read_deletions``) or "none" (the CRM offers no documented way); and whether a
    # merged-away record names the record it was merged into.
    deletions: ClassVar[str] = "none"
    reports_merges: ClassVar[bool] = False
    # True where every live record ``read_changes`` yields says when the CRM created it
    # (``CrmRecord.created_at``): the contract checks it (a connector whose CRM keeps no creation
    # time sets it False, and the check skips).
    reports_created: ClassVar[bool] = True
    # True where ``write_batches`` carries out ``WriteAction.DELETE`` (the ``delete`` erasure action).
    can_delete: ClassVar[bool] = False
    # How many ``write_batches`` a run may have writing at once, each over a share of a push
    # group (``write_shares``): 1 where the vendor's limits want writes one after another. The
    # connector's ``push_concurrency`` in the config overrides it.
    write_concurrency: ClassVar[int] = 1
    # The pydantic model of the connector's ``settings:`` block: a typo is then reported with
    # the config file's line and the accepted keys, never with the value (it may be a secret).
    settings_model: ClassVar[type[BaseModel] | None] = None
    # The one character the CRM stores in place of each character beyond the Basic Multilingual
    # Plane (an emoji) in the text it keeps, where it keeps the BMP only (a MySQL table in 3-byte
    # ``utf8``; ``domain.fold_astral``): an address it shows holding that character may be such a
    # person's address folded, and the ledger links the record to the one person holding the
    # real address (ledger/identity.py); an address it stores from such a record is marked as
    # folded, and only such an address is found by the real one (``identity.holds_for``).
    # None: the CRM keeps every character (its "?" is a "?"). Where a setting
    # decides, the connector sets it on the instance.
    folds_astral_to: str | None = None

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        cls = type(self)
        if cls.write is Connector.write and cls.write_batches is Connector.write_batches:
            raise TypeError(f"{cls.__name__} implements neither write_batches nor write")
        self.name = name
        self.settings = settings
        # Every secret in the settings is redacted, whole or in part, from errors and logs.
        register_secrets(settings)
        self.usage = ApiUsage()
        # How many records the read in progress will yield, where the CRM says (progress bars).
        self.expected_records: int | None = None
        # Set by read_changes, after its last record, when the CRM handed over a position of its
        # own for the next read (a delta token): the engine stores it once every record the read
        # yielded is committed. None: the engine keeps (last modstamp, last id, the old token).
        self.completed_cursor: Cursor | None = None
        # Set by read_changes, before its first record, where the CRM says that what it shows is
        # whole only up to a moment before ``until`` (a transaction still open, its changes
        # stamped when it began and shown when it commits): the engine keeps it with the cursor
        # in place of ``until`` (``Cursor.read_until``), so that the next read's look-back window
        # starts behind it. A read that goes on past it holds its position there itself
        # (``completed_cursor``; the Salesforce connector does).
        # None: the read covered everything up to ``until``.
        self.covered_until: datetime | None = None

    @abstractmethod
    def check(self) -> None:
        """Authenticate and make one cheap call; raise with a message an admin can act on."""

    @abstractmethod
    def describe(self, object_type: str) -> dict[str, FieldInfo]:
        """The fields of one object, for mapping checks."""

    @abstractmethod
    def read_changes(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        """Records changed after ``since`` and at or before ``until``, in (modstamp, id) order,
        lazily: never a list of the whole org. A connector whose CRM hands deletions over in
        the same stream (Salesforce's queryAll, Dataverse's delta) may yield them here as
        ``CrmRecord(deleted=True)``."""

    @classmethod
    def capabilities(cls) -> dict[str, Any]:
        """What this connector does under the conditions the trust contract checks."""
        deletions = "listing" if cls.reads_deletions else cls.deletions
        return {
            "vendor": cls.vendor,
            "lookback_seconds": cls.lookback.total_seconds(),
            "deletions": deletions,
            "merges": cls.reports_merges,
            "erasure_actions": ["suppress", "anonymise", *(["delete"] if cls.can_delete else [])],
            "read_by_id": cls.can_read_by_id,
            "write_concurrency": cls.write_concurrency,
        }

    def irreversible(self, update: RecordUpdate) -> set[str]:
        """The fields of ``update`` whose write the CRM can never undo (HubSpot's v3 unsubscribe:
        its API cannot resubscribe a contact); ``""`` stands for the record itself (a delete). The
        engine writes them only for an evidenced withdrawal, objection or erasure, never because
        consent is merely absent."""
        return {""} if update.action is WriteAction.DELETE else set()

    def as_read_back(self, update: RecordUpdate) -> dict[str, Any]:
        """``update``'s fields as the CRM will show them when they are read back. The same by
        default; a CRM that records a write as a value of its own (SuperOffice marking a removed
        consent Withdrawn) says so here, so that the engine recognises its own write and never
        takes it for the person's choice, nor writes it again."""
        return dict(update.fields)

    def as_kept(self, value: Any) -> Any:
        """A value as the CRM keeps it: text with each character beyond the BMP as
        ``folds_astral_to`` where the CRM folds them; anything else as it is."""
        if self.folds_astral_to is None or not isinstance(value, str):
            return value
        return fold_astral(value, self.folds_astral_to)

    def resume_from(self, cursor: Cursor, lookback: timedelta | None = None) -> Cursor:
        """Where an incremental read starts: ``lookback`` (the connector's own by default)
        before the stored position, from the first record of that moment; where the last read's
        upper bound is kept, the window behind that bound (a change stamped earlier than that was
        visible to that read: it was read then), and the stored position itself when that lies
        before the window (nothing at or before it can still appear). A cursor holding a CRM
        token (a delta link) is the CRM's own commit-ordered position: it is kept."""
        window = self.lookback if lookback is None else lookback
        if cursor.modstamp is None or cursor.token is not None or window <= timedelta(0):
            return cursor
        start = cursor.modstamp - window
        if cursor.read_until is not None:
            settled = cursor.read_until - window
            if cursor.modstamp <= settled:
                return Cursor(cursor.modstamp, cursor.record_id)
            # The window behind the bound, not behind the position, even where the position
            # lies past the bound: records stamped after the bound were read, but a change
            # stamped before the position may still appear there (a bound the CRM said its
            # changes were whole up to, ``covered_until``; a position stamped by a CRM clock
            # that was set back since, whose new stamps fall behind it).
            start = settled
        return Cursor(start, None, None)

    def rewound(self, cursor: Cursor, by: timedelta) -> Cursor | None:
        """``cursor`` moved ``by`` earlier, for a read to start from where the CRM's clock was set
        back by up to ``by`` since the cursor's read (the engine measures it from the CRM's
        answers, ``crm_clock``): the changes the CRM stamps since lie up to that much behind the
        positions its clock stamped before. A plain position at its moment less ``by``; None for
        a position that is no moment of the CRM's clock (a delta token: commit-ordered, which no
        clock moves). A connector whose token holds a moment of the clock overrides it."""
        if cursor.modstamp is None or cursor.token is not None:
            return None
        return Cursor(_earliest_moment(cursor) - by)

    def crm_clock(self) -> CrmClock | None:
        """What the CRM's answers said of its clock (their ``Date`` headers), which the engine
        bounds its reads by where the CRM's clock runs behind ours: the clock of the sessions
        ``sdk.http_session`` (and ``HttpClient``) make from the connector's validated settings,
        ``self.config``. None where there are none (nothing known: the engine's own clock
        bounds the reads); a connector calling its CRM otherwise returns a ``CrmClock`` it
        feeds with its answers (``CrmClock.observe``)."""
        clock = getattr(getattr(self, "config", None), "crm_clock", None)
        return clock if isinstance(clock, CrmClock) else None

    def reader(self) -> Connector | None:
        """A connector for one more read beside this one's, where the CRM serves concurrent
        reads: the engine then asks for every object's pages side by side (a run waits about one
        round trip for its objects' first pages, not one per object) and still commits them one
        read after the other. It shares this connector's session, API usage and budget and keeps
        its own per-read state (``completed_cursor``, ``covered_until``, ``expected_records``).
        None, the default: reads run one after another."""
        return None

    def read_deletions(
        self, object_type: str, since: Cursor, until: datetime, fields: Sequence[str] = ()
    ) -> Iterator[CrmRecord]:
        """Records of ``object_type`` deleted or merged away after ``since`` and at or before
        ``until``, in (deletion time, id) order, as ``CrmRecord(deleted=True, merged_into=...)``.
        Connectors with ``reads_deletions`` implement it; the engine keeps its own cursor.

        ``fields``: the mapped fields (as ``read_changes`` takes them). Where the CRM still
        answers a deleted record's last values (a recycle bin), the connector hands them over
        in ``CrmRecord.fields`` as ``read_changes`` would have given them, so that a no ticked
        just before the deletion is not lost with the record; else ``fields`` stays empty. A
        deleted record's values are never its person's current state: the engine takes only a
        no from them."""
        raise TypeError(f"the {self.vendor} connector does not list deleted records (reads_deletions)")

    def read_deletions_with(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        """What the engine calls for a deletion listing: ``read_deletions`` handed the mapped
        ``fields``, or, for a connector written before ``read_deletions`` took them (a plugin of
        its own), called as before: its deletions then come without values."""
        if "fields" in inspect.signature(self.read_deletions).parameters:
            return self.read_deletions(object_type, since, until, fields=fields)
        return self.read_deletions(object_type, since, until)

    def read_records(
        self, object_type: str, fields: Sequence[str], record_ids: Sequence[str]
    ) -> Iterator[CrmRecord]:
        """The current state of the given records, for connectors with ``can_read_by_id``. A
        record the CRM no longer has is left out."""
        raise TypeError(f"the {self.vendor} connector does not read records by id (can_read_by_id)")

    def write_batches(self, updates: Sequence[RecordUpdate]) -> Iterator[dict[int, WriteResult]]:
        """Applies ``updates`` (any size: the connector batches), yielding the CRM's answers call
        by call (or Bulk job by job) as each call returns: a dict from the position of an update
        in ``updates`` to its result. Over the whole iteration every position is answered once.

        The engine commits each answer (outbox row done, audit entry, snapshot) before it asks
        for the next, so a run stopped between two calls (a limit reached, a crash) loses no
        acknowledgement. A connector must therefore yield as soon as a call returns, and keep
        nothing back that the CRM already applied."""
        yield dict(enumerate(self.write(updates)))

    def write_shares(self, updates: Sequence[RecordUpdate], shares: int) -> list[list[int]]:
        """The positions of ``updates`` cut into at most ``shares`` lists, each written by a
        ``write_batches`` of its own, side by side with the others: by default runs of neighbours,
        as even as can be. A connector that chooses its API by the size of a write (a bulk job
        from so many records) keeps together what it would send as one."""
        count = max(1, min(shares, len(updates)))
        size, extra = divmod(len(updates), count)
        bounds = [0]
        for number in range(count):
            bounds.append(bounds[-1] + size + (number < extra))
        return [list(range(start, end)) for start, end in pairwise(bounds) if end > start]

    def write(self, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        """Applies ``updates`` and answers one result per update, in order (all calls at once)."""
        answers: dict[int, WriteResult] = {}
        for batch in self.write_batches(updates):
            answers.update(batch)
        return [answers[index] for index in range(len(updates))]

    def close(self) -> None:  # noqa: B027 - optional hook: most connectors hold nothing to release
        """Releases sessions and sockets."""
