"""What a connector author implements: a small base class, and the plain data it exchanges with
the sync engine. The engine owns the flow (read, map, reconcile, commit, push); a connector only
talks to its CRM."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from consentsync.domain import as_utc


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

    def to_json(self) -> dict[str, str | None]:
        out = {
            "modstamp": self.modstamp.isoformat() if self.modstamp else None,
            "record_id": self.record_id,
        }
        if self.token is not None:  # left out when unset: cursors stored before stay byte-identical
            out["token"] = self.token
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Cursor:
        if not data:
            return cls()
        stamp = data.get("modstamp")
        return cls(
            as_utc(datetime.fromisoformat(stamp)) if stamp else None, data.get("record_id"), data.get("token")
        )

    def is_before(self, modstamp: datetime, record_id: str) -> bool:
        """True when (modstamp, record_id) comes after this cursor, i.e. still has to be read."""
        if self.modstamp is None:
            return True
        return (modstamp, record_id) > (self.modstamp, self.record_id or "")


@dataclass(frozen=True, slots=True)
class CrmRecord:
    object_type: str
    record_id: str
    modstamp: datetime
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class FieldInfo:
    name: str
    type: str
    updateable: bool
    nillable: bool = True
    picklist_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordUpdate:
    object_type: str
    record_id: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The CRM's answer for one record of a batch write."""

    record_id: str
    ok: bool
    error_code: str | None = None
    message: str | None = None
    retryable: bool = False


@dataclass(slots=True)
class ApiUsage:
    """API calls made in this run, and the CRM's own count against its allocation where it says."""

    calls: int = 0
    used: int | None = None
    limit: int | None = None
    per_endpoint: dict[str, int] = field(default_factory=dict)

    @property
    def remaining(self) -> int | None:
        if self.used is None or self.limit is None:
            return None
        return self.limit - self.used


class Connector(ABC):
    """One configured CRM (an "instance": two Salesforce orgs are two connectors).

    Subclasses set ``vendor`` and implement the four operations; they raise
    ``consentsync.sdk.errors`` exceptions so that the engine knows whether to retry, skip a
    record, stop cleanly or fail the run.
    """

    vendor: ClassVar[str]
    # True where the connector implements ``read_records``: ops can then retry one quarantined
    # record (the next run re-reads it by id); elsewhere a full run re-reads it.
    can_read_by_id: ClassVar[bool] = False

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        self.name = name
        self.settings = settings
        self.usage = ApiUsage()
        # How many records the read in progress will yield, where the CRM says (progress bars).
        self.expected_records: int | None = None
        # Set by read_changes, after its last record, when the CRM handed over a position of its
        # own for the next read (a delta token): the engine stores it once every record the read
        # yielded is committed. None: the engine keeps (last modstamp, last id, the old token).
        self.completed_cursor: Cursor | None = None

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
        lazily: never a list of the whole org."""

    def read_records(
        self, object_type: str, fields: Sequence[str], record_ids: Sequence[str]
    ) -> Iterator[CrmRecord]:
        """The current state of the given records, for connectors with ``can_read_by_id``. A
        record the CRM no longer has is left out."""
        raise TypeError(f"the {self.vendor} connector does not read records by id (can_read_by_id)")

    @abstractmethod
    def write(self, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        """Applies ``updates`` (any size: the connector batches) and answers one result per
        update, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook: most connectors hold nothing to release
        """Releases sessions and sockets."""
