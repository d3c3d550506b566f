"""Vtiger CRM, through its webservice API (``webservice.php``) with requests.

Reading: ``operation=query`` on ``modifiedtime``. Vtiger stamps whole seconds and answers at most
100 rows a call whatever LIMIT says, so every page re-reads from ``>=`` the last second seen and
drops what it already has; a second holding more than a page of changes is walked with LIMIT
offsets (overlapping, so a record leaving that second mid-read cannot push another one out of
sight). Each second is yielded whole, sorted by id, so the (modstamp, id) cursor the engine keeps
resumes inside a second without loss or repetition. ``operation=sync`` is never the reader (it
misses changes later in the same second and records owned by groups); it can list deleted ids.

Writing: ``operation=revise`` (a partial update), one call per record: Vtiger's open-source
edition has no batch write. ``update`` is never used: it needs the full record and clears what
it is not given.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from consentsync.sdk import (
    Action,
    BudgetExhausted,
    Connector,
    ConnectorError,
    CrmRecord,
    Cursor,
    ErrorRule,
    Fault,
    FieldInfo,
    RecordUpdate,
    RetryPolicy,
    WriteResult,
    call,
)
from consentsync_vtiger.client import ERRORS, VtigerClient
from consentsync_vtiger.settings import VtigerSettings

__all__ = ["ERRORS", "VtigerConnector", "vtql_string"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
_WSID = re.compile(r"^\d+x\d+$")
_TIME = "%Y-%m-%d %H:%M:%S"
# Errors that concern one record of a write: reported for it, the others carry on.
_RECORD_ERRORS = frozenset(
    {
        "ACCESS_DENIED",
        "RECORD_NOT_FOUND",
        "MANDATORY_FIELDS_MISSING",
        "REFERENCE_INVALID",
        "INVALID_ID_ATTRIBUTE",
    }
)
# ... and those worth another try on a later run (a MySQL lock wait surfaces as this).
_RECORD_RETRY = frozenset({"DATABASE_QUERY_ERROR"})


def vtql_string(value: str) -> str:
    """A VTQL string literal: Vtiger's lexer takes a quote written twice, and the text reaches
    MySQL inside quotes, where a backslash escapes: both are doubled."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class VtigerConnector(Connector):
    vendor = "vtiger"

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        self.config = VtigerSettings.model_validate(dict(settings))
        self.zone = ZoneInfo(self.config.timezone)
        self.policy = RetryPolicy(
            max_attempts=self.config.max_attempts, max_rate_limit_wait=self.config.max_rate_limit_wait
        )
        self.client = VtigerClient(
            self.config.url,
            self.config.username,
            self.config.access_key,
            webservice_path=self.config.webservice_path,
            timeout=self.config.timeout,
            verify=self.config.ca_bundle or True,
            proxy=self.config.proxy,
            usage=self.usage,
        )
        self._describes: dict[str, dict[str, FieldInfo]] = {}
        self._prefixes: dict[str, str] = {}

    # -- calls ---------------------------------------------------------------------------------

    def _guard(self) -> None:
        budget = self.config.budget.per_run
        if budget is not None and self.usage.calls >= budget:
            raise BudgetExhausted(
                f"{self.name}: the run's API budget of {budget} calls is spent",
                ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "run budget spent"),
            )

    def _call(self, operation: str, params: Mapping[str, Any], describe: str | None = None) -> Any:
        def attempt() -> Any:
            self._guard()
            return self.client.request(operation, params)

        return call(
            attempt,
            policy=self.policy,
            refresh_session=self.client.forget_session,
            describe=describe or operation,
        )

    # -- the four operations -------------------------------------------------------------------

    def check(self) -> None:
        types = self._call("listtypes", {})
        if not isinstance(types, dict) or "Contacts" not in (types.get("types") or []):
            raise ConnectorError(
                f"{self.name}: logged in, but the user cannot see the Contacts module",
                ErrorRule(Action.FAIL, Fault.CONFIG, "Contacts not visible"),
            )

    def describe(self, object_type: str) -> dict[str, FieldInfo]:
        if object_type not in self._describes:
            _check_name(object_type, "module")
            result = self._call("describe", {"elementType": object_type}, f"describe {object_type}")
            fields: dict[str, FieldInfo] = {}
            for item in result.get("fields") or []:
                kind = item.get("type") or {}
                fields[item["name"]] = FieldInfo(
                    name=item["name"],
                    type=str(kind.get("name") or ""),
                    updateable=bool(item.get("editable")),
                    nillable=not item.get("mandatory", False),
                    picklist_values=tuple(str(p.get("value")) for p in kind.get("picklistValues") or []),
                )
            self._describes[object_type] = fields
            self._prefixes[object_type] = str(result.get("idPrefix") or "")
        return self._describes[object_type]

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        columns = self._columns(object_type, fields)
        page_size = self.config.page_size
        step = max(1, page_size - min(self.config.crowded_second_overlap, page_size // 2))
        upper = self._vtql_time(until)
        floor = self._vtql_time(since.modstamp) if since.modstamp is not None else None
        held: dict[str, dict[str, Any]] = {}  # records of the second `floor` not yielded yet
        offset = 0
        self.expected_records = None
        while True:
            rows = self._page(object_type, columns, floor, upper, offset, page_size)
            seconds = list(dict.fromkeys(str(row["modifiedtime"]) for row in rows))
            full = len(rows) >= page_size
            if full and len(seconds) == 1:
                # One second holds a page or more: walk it with offsets.
                if seconds[0] != floor:
                    yield from self._second(object_type, floor, held, since)
                    floor, held, offset = seconds[0], {}, 0
                held.update((str(row["id"]), row) for row in rows)
                offset += step
                continue
            if floor not in seconds:
                # What was held of `floor` is all of it (the rest left that second meanwhile).
                yield from self._second(object_type, floor, held, since)
            for second in seconds if not full else seconds[:-1]:
                found = held if second == floor else {}
                found.update((str(r["id"]), r) for r in rows if str(r["modifiedtime"]) == second)
                yield from self._second(object_type, second, found, since)
            if not full:
                return
            last = seconds[-1]
            floor, offset = last, 0
            held = {str(r["id"]): r for r in rows if str(r["modifiedtime"]) == last}

    def write(self, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        """One ``revise`` call per record (Vtiger has no batch write): N updates cost N calls."""
        results: list[WriteResult] = []
        for item in updates:
            problem = self._write_problem(item)
            if problem is not None:
                results.append(problem)
                continue
            element = {"id": item.record_id, **{k: _wire(v) for k, v in item.fields.items()}}
            refused = self._revise(item.object_type, element)
            if refused is None:
                results.append(WriteResult(item.record_id, True))
            else:
                code = refused.rule.code or "UNKNOWN"
                results.append(WriteResult(item.record_id, False, code, str(refused), code in _RECORD_RETRY))
        return results

    def _revise(self, object_type: str, element: dict[str, Any]) -> ConnectorError | None:
        """None when Vtiger took the change; the error when it refused this record. Sessions,
        server errors and resets are retried here; anything else about the call is raised."""

        def attempt() -> ConnectorError | None:
            try:
                self._guard()
                self.client.request("revise", {"element": element})
            except ConnectorError as error:
                if error.rule.code in _RECORD_ERRORS or error.rule.code in _RECORD_RETRY:
                    # This record only: the next run retries it from the outbox.
                    return error
                raise
            return None

        return call(
            attempt,
            policy=self.policy,
            refresh_session=self.client.forget_session,
            describe=f"revise {object_type}",
        )

    def close(self) -> None:
        self.client.close()

    # -- deletions -----------------------------------------------------------------------------

    def deleted_ids(self, object_type: str, since: datetime) -> Iterator[str]:
        """Ids deleted after ``since``, from ``operation=sync`` (only when ``read_deletions`` is
        on). Only records owned by the user (with ``sync_type: userandgroup``, also by its
        groups) are listed, and a deletion in the same second as ``since`` can be missed: a hint
        for clean-up, never the record of what changed."""
        if not self.config.read_deletions:
            raise ConnectorError(
                f"{self.name}: read_deletions is off", ErrorRule(Action.FAIL, Fault.CONFIG, "sync disabled")
            )
        _check_name(object_type, "module")
        mark = int(since.timestamp())
        while True:
            result = self._call(
                "sync",
                {"modifiedTime": mark, "elementType": object_type, "syncType": self.config.sync_type},
                f"sync {object_type}",
            )
            yield from (str(i) for i in result.get("deleted") or [])
            if not result.get("more"):
                return
            following = int(result.get("lastModifiedTime") or 0)
            if following <= mark:
                raise ConnectorError(
                    f"sync {object_type}: lastModifiedTime did not move past {mark}",
                    ErrorRule(Action.FAIL, Fault.TRANSIENT, "sync made no progress"),
                )
            mark = following

    # -- helpers -------------------------------------------------------------------------------

    def _columns(self, object_type: str, fields: Sequence[str]) -> list[str]:
        known = self.describe(object_type)
        wanted = list(dict.fromkeys(["id", "modifiedtime", *fields]))
        for name in wanted:
            _check_name(name, "field")
        missing = [name for name in wanted if name not in known]
        if missing:
            raise ConnectorError(
                f"{object_type} has no field(s) {', '.join(missing)} (or the integration user's profile "
                "cannot see them)",
                ErrorRule(Action.FAIL, Fault.CONFIG, "mapped field missing"),
            )
        return wanted

    def _page(
        self,
        object_type: str,
        columns: list[str],
        floor: str | None,
        upper: str,
        offset: int,
        size: int,
    ) -> list[dict[str, Any]]:
        where = f"modifiedtime <= {vtql_string(upper)}"
        if floor is not None:
            where = f"modifiedtime >= {vtql_string(floor)} AND {where}"
        query = (
            f"SELECT {', '.join(columns)} FROM {object_type} WHERE {where} "
            f"ORDER BY modifiedtime, id LIMIT {offset},{size};"
        )
        rows = self._call("query", {"query": query}, f"query {object_type}")
        if not isinstance(rows, list):
            raise ConnectorError(
                f"query {object_type}: expected a list of records",
                ErrorRule(Action.RETRY, Fault.TRANSIENT, "unexpected answer"),
            )
        return rows

    def _second(
        self, object_type: str, second: str | None, found: dict[str, dict[str, Any]], since: Cursor
    ) -> Iterator[CrmRecord]:
        if second is None:
            return
        modstamp = self._parse_time(second)
        for record_id in sorted(found):
            if since.is_before(modstamp, record_id):
                yield CrmRecord(object_type, record_id, modstamp, found[record_id])

    def _vtql_time(self, moment: datetime) -> str:
        return moment.astimezone(self.zone).strftime(_TIME)

    def _parse_time(self, text: str) -> datetime:
        return datetime.strptime(text, _TIME).replace(tzinfo=self.zone).astimezone(UTC)

    def _write_problem(self, item: RecordUpdate) -> WriteResult | None:
        if not _WSID.match(item.record_id):
            return WriteResult(
                item.record_id, False, "INVALID_ID_ATTRIBUTE", "not a Vtiger id (<type>x<number>)"
            )
        known = self.describe(item.object_type)
        prefix = self._prefixes.get(item.object_type)
        if prefix and not item.record_id.startswith(f"{prefix}x"):
            return WriteResult(
                item.record_id, False, "INVALID_ID_ATTRIBUTE", f"not an id of {item.object_type}"
            )
        refused = [name for name in item.fields if name not in known or not known[name].updateable]
        if refused:
            return WriteResult(
                item.record_id,
                False,
                "FIELD_NOT_WRITABLE",
                f"{item.object_type} field(s) {', '.join(refused)} missing or not editable",
            )
        return None


def _check_name(name: str, what: str) -> None:
    # Module and field names end up in VTQL as they are: only identifier shapes pass.
    if not _NAME.match(name):
        raise ConnectorError(
            f"{name!r} is not a Vtiger {what} name", ErrorRule(Action.FAIL, Fault.CONFIG, f"bad {what} name")
        )


def _wire(value: Any) -> Any:
    """Checkboxes as Vtiger stores them ("1"/"0"); revise also takes true/false."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return value
