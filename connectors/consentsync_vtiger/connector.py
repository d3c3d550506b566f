"""Vtiger CRM, through its webservice API (``webservice.php``) with requests.

Reading: ``operation=query`` on ``modifiedtime``. Vtiger stamps whole seconds and answers at most
100 rows a call whatever LIMIT says, so every page re-reads from ``>=`` the last second seen and
drops what it already has; a second holding more than a page of changes is walked with LIMIT
offsets (overlapping, so a record leaving that second mid-read cannot push another one out of
sight). Each second is yielded whole, sorted by id, so the (modstamp, id) cursor the engine keeps
resumes inside a second without loss or repetition. A short page does not end the read (Vtiger
drops the rows the user may not retrieve after applying LIMIT): a query bringing nothing new does.
An incremental read starts ``lookback`` before the last record read (a save stamps
``modifiedtime`` before its transaction commits).
``operation=sync`` is never the reader (it misses changes later in the same second and records
owned by groups); with ``read_deletions`` on, its ``deleted`` ids are the deletions listed. A lead
converted (*Convert Lead*) is one of them: every Leads query leaves converted leads out, and sync
lists them as deleted, but ``retrieve`` still answers one, so each lead a listing names is
retrieved (about ``conversion_checks_per_run`` a run at most: a listing stops there, and the next
run goes on from the last batch taken), and one that answers is handed over with its last
values (a no ticked just before the conversion is kept) as gone into a contact
(``merged_into_object``), which Vtiger keeps: an erasure still reaches it; the contact made from
it is read as any new contact.

Times: ``modifiedtime`` is wall-clock time in the install's ``$default_timezone``
(``server_timezone``). Each autumn a zone with daylight saving time repeats an hour and its
stamps are ambiguous; they are read as the later of the two moments (never earlier than the
truth, so no look-back filter drops a change; one stamped in the first pass of the hour is read
up to an hour late), and the query bounds are widened by the zone's offset change so no stamp
falls between them. The record's other date-time fields (Privacy Guard's ``granted_on``) are
handed over as UTC too; one of those in a repeated hour, or in the hour skipped each spring (a
time no clock showed, which may mean either side of it), is handed over as both moments it can
mean, an ISO 8601 interval (``start/end``), and the mapping reads it in the person's favour by the
status it dates: a no at the later moment, a grant at the earlier one (docs/policy.md, "A CRM
time without its zone").

Writing: ``operation=revise`` (a partial update), one call per record: Vtiger's open-source
edition has no batch write; each call's answer is handed over as it returns. ``update`` is never
used: it needs the full record and clears what it is not given. Checkboxes are written "1"/"0"
only (8.2.0 stores "true", "yes" and "false" all as 0). ``WriteAction.DELETE`` is
``operation=delete``, one call per record. A delete Vtiger refuses because the record is not
there (deleted by a user, or by this delete sent before: its answer lost, or the process killed
before the ledger kept it) is done; one refused for a record that is there stays refused. A
``revise`` refused so for a record ``retrieve`` confirms is not there is answered ``gone`` (the
engine marks the record gone rather than quarantining the push).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import structlog
from pydantic import ValidationError

from consentsync import sdk
from consentsync.sdk import Action, ConnectorError, ErrorRule, Fault
from consentsync_vtiger.client import DUPLICATES_DETECTED, ERRORS, VtigerClient, VtigerRefusal
from consentsync_vtiger.settings import VtigerSettings

__all__ = ["ERRORS", "VtigerConnector", "vtql_string"]

log = structlog.get_logger("consentsync.vtiger")

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
_WSID = re.compile(r"^\d+x\d+$")
_TIME = "%Y-%m-%d %H:%M:%S"
_UTC_TIME = "%Y-%m-%dT%H:%M:%SZ"
# When the record was created: wall-clock text in the install's zone, as modifiedtime. Read along
# where the module has it, handed over as ``CrmRecord.created_at``, not among the fields.
_CREATED = "createdtime"
# Vtiger's refusals of a record's call that concern the session, the credentials, the install or
# its limits, never that one record: raised (a session is logged in again, the others stop the
# run). Every other refusal Vtiger answers a record's call with (success false, HTTP 200) is that
# record's: reported for it, and the other records carry on (``_record_call``). Network failures,
# HTTP errors and answers that are not Vtiger's JSON (the server down) are never a record's.
_RUN_WIDE = frozenset(
    {
        "INVALID_SESSIONID",
        "SESSION_LEFT_IDLE",
        "SESSION_EXPIRED",
        "AUTHENTICATION_REQUIRED",
        "INVALID_AUTH_TOKEN",
        "INVALID_USER_CREDENTIALS",
        "ACCESSKEY_UNDEFINED",
        "UNKNOWN_OPERATION",
        "QUERY_SYNTAX_ERROR",
        "API_LIMIT_EXCEEDED",
    }
)
# Duplicate Prevention's refusal (client.DUPLICATES_DETECTED; Vtiger Cloud's name, unconfirmed).
_DUPLICATE_CODES = frozenset({DUPLICATES_DETECTED, "DUPLICATE_RECORD_FOUND"})
# A delete refused so may mean that the record is gone already (``_gone`` makes sure).
_GONE_CODES = frozenset({"ACCESS_DENIED", "RECORD_NOT_FOUND"})
# The module whose records Vtiger hides by more than the recycle bin: a lead converted
# (vtiger_leaddetails.converted=1) is left out of every query and listed by sync as deleted, but
# retrieve answers it (EntityMeta::getEntityDeletedQuery, VtigerCRMObjectMeta::exists).
_CONVERTIBLE = "Leads"
# The module a converted lead went into (the contact Vtiger makes from it; nothing names which).
_CONVERTED_INTO = "Contacts"
# Rows sync's first query takes (vtws_sync's $numRecordsLimit): a batch is the changes up to the
# second of the 100th change after the time asked from, that second whole.
_SYNC_ROWS = 100
# Vtiger's words for an id with no live record behind it (the record deleted, or never there).
_NO_SUCH_RECORD = "Permission to perform the operation is denied"
# ... and those worth another try on a later run (a MySQL lock wait surfaces as the first; an
# exception thrown by a workflow or an event handler during the record's save as the second,
# "Unknown Error while processing request"). The engine sends such a record again on each run,
# up to its max_push_attempts, then dead-letters it.
_RECORD_RETRY = frozenset({"DATABASE_QUERY_ERROR", "INTERNAL_SERVER_ERROR"})
# Records in a row refused so within one write, none taken in between, after which the install
# is taken to fail every save (a broken workflow, the database): the run stops, the records not
# sent yet wait for the next run rather than each spend an attempt.
_FAILING_SAVES = 5
# How often one read steps back in a crowded second whose rows leave it while it is walked
# (``read_changes``) before it stops for the next run, the cursor before that second.
_MAX_STEPS_BACK = 50
_UNSEEN = object()
# Checkbox values as 8.2.0 stores them; "true", "yes" and "false" would all be stored as 0.
_TICKED = frozenset({"1", "true", "yes", "on"})
_UNTICKED = frozenset({"0", "false", "no", "off", ""})
# How far either side of a moment the zone's offsets are looked at to widen a query bound: more
# than any daylight-saving shift (at most two hours anywhere).
_OFFSET_SPAN_HOURS = 26


def vtql_string(value: str) -> str:
    """A VTQL string literal: Vtiger's lexer takes a quote written twice, and the text reaches
    MySQL inside quotes, where a backslash escapes: both are doubled."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class VtigerConnector(sdk.Connector):
    vendor = "vtiger"
    settings_model = VtigerSettings
    # Vtiger stamps modifiedtime (whole seconds) when the save starts; its workflows and event
    # handlers run in the same request before the commit, and an import saves row after row.
    # Vtiger documents no bound: five minutes is an assumption (docs/connectors/vtiger.md).
    lookback: ClassVar[timedelta] = timedelta(minutes=5)
    can_delete: ClassVar[bool] = True
    # Deleted ids from operation=sync, when the read_deletions setting is on (the stock 8.2.0 on PHP 8
    # fails sync); the webservice keeps no merge survivor: a merge is seen as a deletion.
    deletions: ClassVar[str] = "listing"

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        try:
            self.config = VtigerSettings.model_validate(dict(settings))
        except ValidationError as error:
            raise ValueError(_one_line(error)) from None
        self.zone = ZoneInfo(self.config.server_timezone)
        # Only where operation=sync works on the install (it fails on the stock 8.2.0).
        self.reads_deletions = self.config.read_deletions  # type: ignore[misc]
        # The stock 3-byte ``utf8`` keeps an emoji in an address as "?": the ledger then finds
        # the person holding the real address (sdk.Connector.folds_astral_to).
        self.folds_astral_to = "?" if self.config.database_charset == "utf8" else None
        self.policy = self.config.retry_policy()
        self.client = VtigerClient(self.config, self.usage)
        self._describes: dict[str, dict[str, sdk.FieldInfo]] = {}
        self._prefixes: dict[str, str] = {}
        # The widest look-back a read of this run starts behind its stored position.
        self._relisted = self.lookback
        # The look-back starts resume_from handed out (by identity: the starts of two reads from
        # cursors of the same run are equal), each with the stored position it lies behind: a
        # deletion listing from one of them lists again what was handed over before
        # (``read_deletions``).
        self._behind: dict[int, tuple[sdk.Cursor, sdk.Cursor]] = {}
        # The look-back window of this run's reads: a change stamped that long before a read's
        # upper bound was visible to it (``sdk.Connector.resume_from``).
        self._window = self.lookback

    # -- calls ---------------------------------------------------------------------------------

    def _guard(self) -> None:
        """Before every call: stops before the run's budget or the daily allowance less its
        reserve is spent (Vtiger Cloud's X-RateLimit-* headers), and waits out a spent minute
        window (X-FloodControl-Remaining at 0) rather than be refused 429 in it."""
        self.config.budget.check(self.name, self.usage, calls="Vtiger API")
        self.client.flood.pace(self.config.max_rate_limit_wait)

    def _call(self, operation: str, params: Mapping[str, Any], describe: str | None = None) -> Any:
        def attempt() -> Any:
            self._guard()
            return self.client.request(operation, params)

        return sdk.call(
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

    def describe(self, object_type: str) -> dict[str, sdk.FieldInfo]:
        if object_type not in self._describes:
            _check_name(object_type, "module")
            try:
                result = self._call("describe", {"elementType": object_type}, f"describe {object_type}")
            except ConnectorError as error:
                if error.rule.code == "ACCESS_DENIED":
                    raise self._module_missing(object_type) from None
                raise
            fields: dict[str, sdk.FieldInfo] = {}
            for item in result.get("fields") or []:
                kind = item.get("type") or {}
                fields[item["name"]] = sdk.FieldInfo(
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
        self, object_type: str, fields: Sequence[str], since: sdk.Cursor, until: datetime
    ) -> Iterator[sdk.CrmRecord]:
        along = self._created_along(object_type, fields)
        columns = self._columns(object_type, [*fields, *along])
        stamps = self._stamps(object_type, fields)
        page_size = self.config.page_size
        overlap = min(self.config.crowded_second_overlap, page_size // 2)
        step = max(1, page_size - overlap)
        upper = self._upper_bound(until)
        # Cursor(modstamp, None), where a look-back resumes, reads every record from that moment.
        floor = self._lower_bound(since.modstamp) if since.modstamp is not None else None
        held: dict[str, dict[str, Any]] = {}  # records of the second `floor` not yielded yet
        offset = 0
        # A window at an offset past `floor`'s start must begin inside what was held of it (the
        # overlap): where it does not, more than `overlap` rows left `floor` since the window
        # before (edited or deleted meanwhile) and the rows behind them moved back past the
        # offset, out of sight. The walk steps back until the windows meet again. A window
        # beginning the same way twice from one offset is taken as it is: rows the user may not
        # retrieve (dropped after LIMIT) leave a gap that no step back closes.
        looked: dict[tuple[str | None, int], str | None] = {}
        steps_back = 0
        # The offset a step back was taken from: a window behind it holding nothing new says
        # only that the rows it holds were read already, not that the read is complete.
        stepped_back_from: int | None = None
        self.expected_records = None
        while True:
            rows = self._page(object_type, columns, floor, upper, offset, page_size)
            if offset > 0 and not _meets(rows, floor, held):
                first = str(rows[0]["id"]) if rows else None
                if looked.get((floor, offset), _UNSEEN) != first:
                    looked[(floor, offset)] = first
                    steps_back += 1
                    if steps_back > _MAX_STEPS_BACK:
                        raise ConnectorError(
                            f"query {object_type}: records kept leaving the second {floor} while it was "
                            "read; the read stops before it, for the next run",
                            ErrorRule(Action.RETRY, Fault.TRANSIENT, "a crowded second kept changing"),
                        )
                    stepped_back_from = max(offset, stepped_back_from or 0)
                    offset = max(0, offset - step)
                    continue
            behind = stepped_back_from is not None and offset < stepped_back_from
            news = any(str(r["modifiedtime"]) != floor or str(r["id"]) not in held for r in rows)
            if not rows or (not behind and not news):
                # Nothing beyond what was read: the read is complete. A short page says nothing:
                # Vtiger applies LIMIT first and then drops the rows the user may not retrieve.
                yield from self._second(object_type, floor, held, since, until, stamps, along)
                return
            seconds = list(dict.fromkeys(str(row["modifiedtime"]) for row in rows))
            last = seconds[-1]
            if last == floor:
                # Every row in `floor`'s second (a crowded one): walk it with offsets.
                held.update((str(row["id"]), row) for row in rows)
                offset += step
                continue
            # Each second before `last` is read whole (this window reached past it); `last` may
            # go on beyond the window: it is read again, from about as many rows as it has here.
            if floor not in seconds:
                # What was held of `floor` is all of it (the rest left that second meanwhile).
                yield from self._second(object_type, floor, held, since, until, stamps, along)
            for second in seconds[:-1]:
                found = held if second == floor else {}
                found.update((str(r["id"]), r) for r in rows if str(r["modifiedtime"]) == second)
                yield from self._second(object_type, second, found, since, until, stamps, along)
            held = {str(r["id"]): r for r in rows if str(r["modifiedtime"]) == last}
            # Its rows here are its first (every earlier row is at an earlier second): the next
            # window starts `overlap` rows before their count, so that a record leaving `last`
            # meanwhile cannot shift another out of sight, as in a crowded second's walk.
            floor, offset = last, max(0, len(held) - overlap)
            stepped_back_from = None

    def as_read_back(self, update: sdk.RecordUpdate) -> dict[str, Any]:
        """Text as the install's tables keep it: on the stock 3-byte ``utf8`` a character beyond
        the Basic Multilingual Plane (an emoji in a name or a note) reads back as ``?``, so that
        a value written with one is recognised as our own write, not as an edit to push again."""
        return {name: self.as_kept(value) for name, value in update.fields.items()}

    def write_batches(self, updates: Sequence[sdk.RecordUpdate]) -> Iterator[dict[int, sdk.WriteResult]]:
        """One call per record (``revise``, or ``delete`` for a deletion: Vtiger has no batch
        write), each answer handed over as its call returns. A limit or a run-wide error raised
        by a call propagates; the answers before it were already handed over. A refusal of one
        record (Duplicate Prevention, a workflow failing on its save) is that record's answer;
        after ``_FAILING_SAVES`` records in a row refused as retryable the write stops."""
        failing = 0
        for position, item in enumerate(updates):
            result = self._write_one(item)
            yield {position: result}
            failing = failing + 1 if not result.ok and result.error_code in _RECORD_RETRY else 0
            if failing >= _FAILING_SAVES and position < len(updates) - 1:
                raise ConnectorError(
                    f"{self.name}: Vtiger refused the last {failing} saves in a row ({result.error_code}): "
                    "the install fails every save (a workflow or event handler, the database); the rest "
                    "waits for the next run",
                    ErrorRule(Action.RETRY, Fault.TRANSIENT, "every save refused", code=result.error_code),
                )

    def _write_one(self, item: sdk.RecordUpdate) -> sdk.WriteResult:
        problem = self._write_problem(item)
        if problem is not None:
            return problem
        if item.action is sdk.WriteAction.DELETE:
            refused = self._record_call("delete", {"id": item.record_id}, f"delete {item.object_type}")
            if refused is not None and refused.rule.code in _GONE_CODES and self._gone(item):
                # The record is not there: deleted by a user, or by this delete sent before (its
                # answer lost, or the process killed before the answer was committed), which
                # is what was asked. Vtiger answers a deleted id ACCESS_DENIED.
                return sdk.WriteResult(item.record_id, True, message="already deleted")
        else:
            element = self._element(item)
            if isinstance(element, sdk.WriteResult):
                return element
            refused = self._record_call("revise", {"element": element}, f"revise {item.object_type}")
        if refused is None:
            return sdk.WriteResult(item.record_id, True)
        code = refused.rule.code or "UNKNOWN"
        message = str(refused)
        if code in _DUPLICATE_CODES:
            message = _duplicate_message(item, refused)
        elif code in _RECORD_RETRY:
            message += (
                " (Vtiger failed this record's save: a MySQL lock wait, or a workflow or event handler "
                "that threw on it; sent again on the next runs, dead-lettered after the engine's "
                "max_push_attempts)"
            )
        elif item.action is sdk.WriteAction.DELETE and code == "ACCESS_DENIED":
            message += " (the record is there: the user's profile may not delete it)"
        elif code in _GONE_CODES and self._gone(item):
            # No live record has this id (deleted in Vtiger since it was last read): the engine
            # marks it gone and sends it nothing more. A converted lead is retrieved: not gone.
            return sdk.WriteResult(item.record_id, False, code, message, False, gone=True)
        return sdk.WriteResult(item.record_id, False, code, message, code in _RECORD_RETRY)

    def _element(self, item: sdk.RecordUpdate) -> dict[str, Any] | sdk.WriteResult:
        """The ``revise`` element: checkboxes as "1"/"0" (the only values 8.2.0 stores as
        written), null as "" (Vtiger clears a field sent empty)."""
        known = self.describe(item.object_type)
        element: dict[str, Any] = {"id": item.record_id}
        for name, value in item.fields.items():
            if known[name].type == "boolean":
                checkbox = _checkbox(value)
                if checkbox is None:
                    return sdk.WriteResult(
                        item.record_id,
                        False,
                        "INVALID_VALUE",
                        f"{item.object_type}.{name} is a checkbox: {str(value)[:40]!r} is not 1/0",
                    )
                element[name] = checkbox
            else:
                element[name] = "" if value is None else value
        return element

    def _record_call(self, operation: str, params: Mapping[str, Any], what: str) -> ConnectorError | None:
        """None when Vtiger took the call; the error when it refused this record: any refusal
        Vtiger answers the call with (success false) but those of the session, the credentials,
        the install or its limits (``_RUN_WIDE``), which are raised, as are network failures,
        HTTP errors (429 included) and answers that are not Vtiger's JSON: sessions, server
        errors and resets are retried here first. So a record Duplicate Prevention refuses
        (code 0), or whose save a workflow fails (INTERNAL_SERVER_ERROR), or that Vtiger refuses
        with a code this connector does not know, is reported for that record, and the other
        records of the write carry on."""

        def attempt() -> ConnectorError | None:
            try:
                self._guard()
                self.client.request(operation, params)
            except VtigerRefusal as error:
                rule = error.rule
                if (
                    error.operation != operation  # a login's refusal, met on the way
                    or rule.code in _RUN_WIDE
                    or rule.credentials
                    or rule.action in (Action.REFRESH_TOKEN, Action.RATE_LIMITED)
                ):
                    raise
                return error  # this record only
            return None

        return sdk.call(
            attempt, policy=self.policy, refresh_session=self.client.forget_session, describe=what
        )

    def _gone(self, item: sdk.RecordUpdate) -> bool:
        """Whether the record no longer exists: ``retrieve`` answers RECORD_NOT_FOUND, or
        ACCESS_DENIED "Permission to perform the operation is denied", which is what Vtiger
        answers for an id without a live record (``vtws_retrieve``: the id's module is looked up
        among records not deleted, and none is found). A record that is there but that the
        API user may not read or delete is answered otherwise ("Permission to read given
        object is denied", "... to delete is denied"): its delete's refusal stands, and so
        does any refusal worded in a way not known here. (Vtiger words a module the user may
        not use at all the same way; ``_write_problem`` describes the module before any write,
        and that describe fails the run first.)"""
        refused = self._record_call("retrieve", {"id": item.record_id}, f"retrieve {item.object_type}")
        if refused is None:
            return False
        return refused.rule.code == "RECORD_NOT_FOUND" or (
            refused.rule.code == "ACCESS_DENIED" and _NO_SUCH_RECORD in str(refused)
        )

    def close(self) -> None:
        self.client.close()

    # -- deletions -----------------------------------------------------------------------------

    def rewound(self, cursor: sdk.Cursor, by: timedelta) -> sdk.Cursor | None:
        """As every connector goes back for a clock set back (``Connector.rewound``). A deletion listing's
        token says what of a sync batch was handed over, no position of its own: the listing goes back
        from the position as a plain one (its batches listed whole again)."""
        return sdk.rewound_plain(cursor, by)

    def resume_from(self, cursor: sdk.Cursor, lookback: timedelta | None = None) -> sdk.Cursor:
        """As every connector resumes; the window is kept, so that a deletion listing knows how
        far behind the stored position it may start (``read_deletions``). A deletion listing's
        token (what of the cursor's sync batch was handed over, ``_handed``) is no CRM position:
        the look-back applies as to any cursor, and the token is kept where the stored position
        is."""
        window = self.lookback if lookback is None else lookback
        self._relisted = max(self._relisted, window)
        self._window = window
        start = super().resume_from(replace(cursor, token=None), lookback)
        if start.modstamp != cursor.modstamp:
            self._behind[id(start)] = (start, cursor)
            return start
        return replace(start, token=cursor.token)

    def read_deletions(
        self, object_type: str, since: sdk.Cursor, until: datetime, fields: Sequence[str] = ()
    ) -> Iterator[sdk.CrmRecord]:
        """Records deleted after ``since``, from ``operation=sync``'s ``deleted`` ids (only with
        ``read_deletions`` on). Sync names no deletion times: a batch (GetUpdates.php: the changes
        after the time asked from, up to the second of the 100th, that second whole) is stamped
        with the first second it covers (the second after the ``modifiedTime`` sync was asked
        from: sync compares with a strict ``>`` on whole seconds, so at or before the deletion),
        and a batch ending after ``until`` is left for the next run. Sync is asked from the second
        before ``since``, so that a cursor the engine left inside a batch (it commits pages of its
        own size, and a run may end between two) asks for that batch again.

        Asked again, a batch is not the set it was: a live record of it edited since leaves it
        and it reaches further, and the last batch takes in every change made since, so a lead
        converted meanwhile may come in it with an id below the cursor's. Each record is handed
        over with the cursor the engine keeps once it is committed (``completed_cursor``), whose
        token names the batch's end as listed, ``T``: the last second of it whose changes were
        all visible to the listing (never past ``until`` less the look-back window, the bound
        ``resume_from`` trusts too). Every id of the batch changed up to ``T`` with an id up to
        the cursor's was handed over before it. A batch asked again from the cursor's batch's
        time leaves those out; sync asked from ``T`` names the ids of the batch changed since
        (each record has one ``modifiedtime``, and a batch holds its seconds whole), and those
        are handed over after the rest, stamped with the second after ``T``: a batch of their
        own, so a cursor left among them goes on from there. So no id that joined the batch is
        left out, and each run that commits a page moves on: the ids changed up to ``T`` only
        leave (a past, visible second gains none), the cursor passes them in id order, and
        those changed later come under a later stamp. A cursor without the token (stored by an
        earlier version) leaves out the ids up to its own only in a batch of its own single
        second (a past second loses records, it gains none); any other batch is listed whole
        again, once: the cursors handed over then carry the token. A batch of leads naming more
        than sync's 100 rows hands the ids of its last second over last (``_groups``). Only
        records owned by the user (``sync_type: userandgroup``: also by its groups) are listed,
        and a merge in Vtiger shows as a deletion of the merged-away record, without its
        survivor.

        A deleted record comes bare: the webservice keeps its values out of reach (VTQL leaves
        deleted rows out, ``retrieve`` of a deleted id answers ACCESS_DENIED and sync's
        ``deleted`` holds ids only). A lead sync lists may instead have been converted: Vtiger
        lists a converted lead as deleted (sync's answer does not tell the two apart) but still
        retrieves it, so every lead listed is retrieved (one call each), the first listing (from
        the beginning) included, and one that answers comes with its last values (``fields``, as
        ``read_changes`` reads them): a no given on it before the conversion is not lost, however
        long the connector ran before the listing was turned on. A listing retrieves about
        ``conversion_checks_per_run`` leads at most: it stops before the sync batch that would
        take it past that, and the next run goes on from the end of the last batch it took
        whole: a long history is caught up over several runs, and no lead is ever handed over
        bare for want of a check. A listing never cuts a batch, and always takes the batches up
        to the first one past its look-back window (``_relisted``): so each run moves the cursor
        on, even when the window alone holds more leads than the setting. A listing that took a
        batch whole, or one from the beginning (even when it listed nothing), hands over the
        second after the last batch it took whole (``completed_cursor``, kept by the engine):
        the next listing asks sync from that batch's end, so a change made after the listing
        comes in a later batch with a later stamp, never behind the cursor. A converted lead
        comes with ``merged_into_object="Contacts"`` and without ``merged_into``: it went into
        a contact, which nothing in Vtiger names (the contact is read as a new contact, linked
        by its address; the stock conversion copies email, not ``emailoptout``), and Vtiger
        keeps it with the person's data (``retrieve``, ``revise`` and ``delete`` still act on
        it): the engine keeps it as such, and an erasure's delete or anonymise still reaches it."""
        if not self.config.read_deletions:
            raise ConnectorError(
                f"{self.name}: read_deletions is off", ErrorRule(Action.FAIL, Fault.CONFIG, "sync disabled")
            )
        _check_name(object_type, "module")
        # One record is held back: the cursor that holds once it is committed goes with it, and
        # the listing's last one (past its last batch) with the last record (the engine keeps a
        # cursor handed over after a page only if it is that page's).
        held: tuple[sdk.CrmRecord, sdk.Cursor | None] | None = None
        final: sdk.Cursor | None = None
        try:
            for record, cursor in self._listing(object_type, since, until, fields):
                if record is None:
                    final = cursor
                    continue
                if held is not None:
                    self.completed_cursor = held[1]
                    yield held[0]
                held = (record, cursor)
        except Exception:
            # Stopped (the run's budget spent by the next retrieve, say): the record listed
            # before is handed over all the same, its retrieve not spent for nothing.
            if held is not None:
                self.completed_cursor = held[1]
                yield held[0]
            raise
        self.completed_cursor = final if final is not None else held[1] if held is not None else None
        if held is not None:
            yield held[0]

    def _listing(
        self, object_type: str, since: sdk.Cursor, until: datetime, fields: Sequence[str]
    ) -> Iterator[tuple[sdk.CrmRecord | None, sdk.Cursor | None]]:
        """``read_deletions``' records, each with the cursor that holds once it is handed over
        (None behind the stored position: the engine keeps that), then ``(None, cursor)``: the
        position past the last batch taken whole, where there is one."""
        converts = object_type == _CONVERTIBLE and bool(fields)
        along = self._created_along(object_type, fields) if converts else []
        columns = self._columns(object_type, [*fields, *along]) if converts else []
        stamps = self._stamps(object_type, fields) if converts else []
        cap = self.config.conversion_checks_per_run
        spent = 0
        # From a look-back start (resume_from), records up to `horizon` may lie behind the stored
        # position (handed over before); the listing stops for the cap only once the position it
        # hands over is past it, so that the cursor moves on. None: any position it reaches is.
        behind = self._behind.get(id(since))
        # The position the engine holds: a record up to it gets no cursor (the engine keeps its).
        stored = behind[1] if behind is not None and behind[0] is since else since
        horizon = (
            since.modstamp + self._relisted if since.modstamp is not None and stored is not since else None
        )
        # The last second whose changes were all visible to this listing (resume_from's bound).
        settled = int((until - self._window).timestamp())
        moved = False
        stopped = False
        # Never 0: webservice.php takes a parameter "0" as not given (PHP reads "0" as false), and
        # vtws_sync with no time lists nothing, so a first listing would never start. 1 is the
        # same moment for every record an install holds.
        mark = max(1, int(since.modstamp.timestamp()) - 1) if since.modstamp is not None else 1
        # The end of the last batch taken whole (where the next listing asks sync from), and
        # whether any was.
        reached, took = mark, False
        while True:
            result = self._sync(object_type, mark)
            following = int(result.get("lastModifiedTime") or 0)
            if datetime.fromtimestamp(following, UTC) > until:
                break  # the batch runs past the read's end: the next run lists it
            ids = sorted({str(i) for i in result.get("deleted") or []})
            parts = self._parts(object_type, ids, mark, following, since, converts)
            listed = sum(len(group) for _, group, _ in parts)
            if converts and moved and listed and spent + listed > cap:
                # Checked in a later run, from where the last batch taken ended: never bare.
                stopped = True
                break
            for second, group, end in parts:
                stamp = self._stamp(second, since)
                # What the cursor's token says: the ids of the batch asked from the second before
                # the stamp's, changed up to `end`, were handed over up to the cursor's.
                token = f"{int(stamp.timestamp()) - 1}:{min(end, settled)}"
                for record_id in group:
                    cursor = (
                        sdk.Cursor(stamp, record_id, token, until)
                        if stored.is_before(stamp, record_id)
                        else None
                    )
                    if not converts:
                        yield sdk.CrmRecord(object_type, record_id, stamp, {}, deleted=True), cursor
                        continue
                    spent += 1
                    values = self._converted(object_type, record_id, columns, stamps)
                    if values is None:  # deleted: Vtiger keeps nothing of it within reach
                        yield sdk.CrmRecord(object_type, record_id, stamp, {}, deleted=True), cursor
                    else:  # converted: kept by Vtiger, with the person's data, no longer listed
                        values, created = self._created(values, along)
                        converted = sdk.CrmRecord(
                            object_type,
                            record_id,
                            stamp,
                            values,
                            deleted=True,
                            merged_into_object=_CONVERTED_INTO,
                            created_at=created,
                        )
                        yield converted, cursor
            reached, took = max(reached, following), True
            # The position handed over (past this batch) is past the stored one.
            moved = moved or horizon is None or datetime.fromtimestamp(reached + 1, UTC) > horizon
            if not result.get("more"):
                break
            if following <= mark:
                raise ConnectorError(
                    f"sync {object_type}: lastModifiedTime did not move past {mark}",
                    ErrorRule(Action.FAIL, Fault.TRANSIENT, "sync made no progress"),
                )
            mark = following
        after = datetime.fromtimestamp(reached + 1, UTC)
        if stopped:
            log.warning(
                "vtiger.conversion_checks_spent",
                connector=self.name,
                module=object_type,
                retrieved=spent,
                resumes_after=datetime.fromtimestamp(reached, UTC).isoformat(),
            )
        if took or since.modstamp is None:
            # Past the last batch taken whole (its records were all handed over): the next
            # listing asks sync from its end, so a record that joins it later (sync's last batch
            # holds every change after its start) is listed in a batch of its own. A first
            # listing hands it over even when it listed nothing: every later listing resumes
            # from a position.
            yield None, sdk.Cursor(after, None, read_until=until)

    def _sync(self, object_type: str, mark: int) -> Any:
        return self._call(
            "sync",
            {"modifiedTime": mark, "elementType": object_type, "syncType": self.config.sync_type},
            f"sync {object_type}",
        )

    @staticmethod
    def _stamp(second: int, since: sdk.Cursor) -> datetime:
        """The stamp of the ids of a batch (or of part of one) whose changes lie at or after
        ``second``: that second, never before ``since`` (a position inside a second: a look-back
        start, say)."""
        stamp = datetime.fromtimestamp(second, UTC)
        return stamp if since.modstamp is None else max(stamp, since.modstamp)

    @staticmethod
    def _handed(since: sdk.Cursor, mark: int) -> int | None:
        """``T`` where ``since`` lies inside the batch asked from ``mark`` and its token says
        that every id of that batch changed up to the second ``T`` with an id up to the cursor's
        was handed over; None where nothing is known so (no token, one of another batch, or a
        batch none of whose seconds was visible whole when it was listed)."""
        asked, _, end = (since.token or "").partition(":")
        if not (asked.isdigit() and end.isdigit()) or int(asked) != mark:
            return None
        return int(end) if int(end) > mark else None

    def _parts(
        self, object_type: str, ids: list[str], mark: int, following: int, since: sdk.Cursor, converts: bool
    ) -> list[tuple[int, list[str], int]]:
        """The ids of the batch asked from ``mark`` (ending at ``following``) to hand over, in
        parts, in order: each with the first second its changes may lie in (its stamp) and the
        last second it covers whole (its cursors' token). A batch the cursor lies inside leaves
        out what was handed over: where its token says so (``_handed``), the ids changed up to
        ``T`` and up to the cursor's; those changed since (sync asked from ``T`` names them)
        come after the rest, stamped with the second after ``T``. Without the token, a batch of
        the cursor's own single second leaves out the ids up to its own; any other is listed
        whole."""
        inside = since.record_id is not None and self._stamp(mark + 1, since) == since.modstamp
        handed = self._handed(since, mark) if inside else None
        if inside and handed is None and following == mark + 1:
            handed = mark + 1  # a past second loses records, it gains none
        if handed is None:
            return self._groups(object_type, ids, mark, following, converts)
        assert since.record_id is not None
        fresh: set[str] = set()
        if following > handed:
            again = self._sync(object_type, handed)
            fresh = {str(i) for i in again.get("deleted") or []}
            fresh |= {str(row.get("id")) for row in again.get("updated") or [] if isinstance(row, dict)}
        rest = [i for i in ids if i not in fresh and i > since.record_id]
        later = [i for i in ids if i in fresh]
        return [(mark + 1, rest, min(handed, following)), (handed + 1, later, following)]

    def _groups(
        self, object_type: str, ids: list[str], mark: int, following: int, converts: bool
    ) -> list[tuple[int, list[str], int]]:
        """A batch's ids, each with the first second it may have changed in and the last second
        its part covers whole, in the order they are handed over. A batch of more seconds than
        one is stamped with its first second. Its last second, though, may hold any number of
        leads (a mass deletion): where a batch of leads names more than sync's 100 rows, sync is
        asked once more, from the second before its last, and the ids it names again (those of
        the last second, still there) are handed over last, stamped with that second, a batch
        of one second of their own."""
        if not converts or following <= mark + 1 or len(ids) <= _SYNC_ROWS:
            return [(mark + 1, ids, following)]
        again = self._sync(object_type, following - 1)
        last = {str(i) for i in again.get("deleted") or []}
        return [
            (mark + 1, [i for i in ids if i not in last], following - 1),
            (following, [i for i in ids if i in last], following),
        ]

    def _converted(
        self, object_type: str, record_id: str, columns: Sequence[str], stamps: Sequence[str]
    ) -> dict[str, Any] | None:
        """The last values of a lead sync listed as deleted, where ``retrieve`` still answers it
        (it was converted, not deleted); None where it refuses it as not there (deleted, or out
        of the user's reach). Any other refusal fails the read, which the next run repeats."""

        def attempt() -> dict[str, Any] | None:
            self._guard()
            try:
                row = self.client.request("retrieve", {"id": record_id})
            except ConnectorError as error:
                if error.rule.code in _GONE_CODES:
                    return None  # deleted: Vtiger finds no live record for the id
                raise
            return row if isinstance(row, dict) else None

        row = sdk.call(
            attempt,
            policy=self.policy,
            refresh_session=self.client.forget_session,
            describe=f"retrieve {object_type}",
        )
        if row is None:
            return None
        return self._in_utc({name: row.get(name, "") for name in columns}, stamps)

    # -- helpers -------------------------------------------------------------------------------

    def _stamps(self, object_type: str, fields: Sequence[str]) -> list[str]:
        """The date-time fields among ``fields`` other than modifiedtime (Privacy Guard's
        granted_on, say): served as wall-clock text in the install's zone too, handed over in
        UTC (``_in_utc``)."""
        known = self.describe(object_type)
        return [name for name in fields if name != "modifiedtime" and known[name].type == "datetime"]

    def _created_along(self, object_type: str, fields: Sequence[str]) -> list[str]:
        """``createdtime``, where the module has it and the mapping does not read it itself."""
        return [_CREATED] if _CREATED in self.describe(object_type) and _CREATED not in fields else []

    def _created(self, row: dict[str, Any], along: Sequence[str]) -> tuple[dict[str, Any], datetime | None]:
        """``row`` less the columns read ``along``, and when the record was created: its
        ``createdtime`` read as ``modifiedtime`` is (wall-clock in the install's zone, a repeated
        autumn hour read as its later pass; a mapped one ``_in_utc`` gave as UTC already); None
        where it is missing or not a Vtiger time."""
        text = row.get(_CREATED)
        created = None
        if isinstance(text, str) and text.strip():
            with contextlib.suppress(ValueError):
                created = self._parse_time(text.strip())
            if created is None and text.strip().endswith("Z"):
                with contextlib.suppress(ValueError):
                    created = datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if along:
            row = {name: value for name, value in row.items() if name not in along}
        return row, created

    def _columns(self, object_type: str, fields: Sequence[str]) -> list[str]:
        known = self.describe(object_type)
        wanted = list(dict.fromkeys(["id", "modifiedtime", *fields]))
        for name in wanted:
            _check_name(name, "field")
        sdk.require_fields(
            wanted,
            known,
            f"{object_type} has no field(s)",
            "(or the integration user's profile cannot see them)",
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
        where = f"modifiedtime <= {vtql_string(upper)}"  # both bounds: wall-clock text, quoted
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
        self,
        object_type: str,
        second: str | None,
        found: dict[str, dict[str, Any]],
        since: sdk.Cursor,
        until: datetime,
        stamps: Sequence[str] = (),
        along: Sequence[str] = (),
    ) -> Iterator[sdk.CrmRecord]:
        if second is None:
            return
        modstamp = self._parse_time(second)
        if modstamp > until:
            return  # inside the widened upper bound only: the next run reads it
        for record_id in sorted(found):
            if since.is_before(modstamp, record_id):
                values, created = self._created(found[record_id], along)
                yield sdk.CrmRecord(
                    object_type, record_id, modstamp, self._in_utc(values, stamps), created_at=created
                )

    def _in_utc(self, row: dict[str, Any], stamps: Sequence[str]) -> dict[str, Any]:
        """``row`` with its date-time fields (``stamps``) as UTC ISO 8601: read as they are, a
        time without an offset is taken as UTC, hours from the truth outside UTC (a refusal in
        +05:30 would be "in the future" and refused; in -08:00 a consent would sort and expire
        hours early). A value that is not a Vtiger time is left for the mapping to refuse.

        An event time (any but ``createdtime``, which is read as ``modifiedtime`` is) that a
        daylight-saving change leaves in doubt is handed over as the interval of the moments it
        can mean (``_moments``): which of them is in the person's favour depends on the status it
        dates, which the mapping knows."""
        if not stamps:
            return row
        converted = dict(row)
        for name in stamps:
            value = row.get(name)
            if isinstance(value, str) and value.strip():
                with contextlib.suppress(ValueError):
                    if name == _CREATED:
                        moments = [self._parse_time(value.strip())]
                    else:
                        moments = self._moments(value.strip())
                    converted[name] = "/".join(moment.strftime(_UTC_TIME) for moment in moments)
        return converted

    def _offsets_near(self, moment: datetime) -> list[timedelta]:
        """The zone's UTC offsets within a day either side of ``moment`` (hourly samples)."""
        return [
            (moment + timedelta(hours=hours)).astimezone(self.zone).utcoffset() or timedelta(0)
            for hours in range(-_OFFSET_SPAN_HOURS, _OFFSET_SPAN_HOURS + 1)
        ]

    def _wall(self, moment: datetime, offset: timedelta) -> str:
        return (moment.astimezone(UTC) + offset).strftime(_TIME)

    def _lower_bound(self, moment: datetime) -> str:
        """The earliest wall-clock text a change stamped at or after ``moment`` can carry: after
        an autumn shift, wall-clock times start again an hour lower."""
        return self._wall(moment, min(self._offsets_near(moment)))

    def _upper_bound(self, moment: datetime) -> str:
        """The latest wall-clock text a change stamped at or before ``moment`` can carry (read
        as the later moment of a repeated hour: rows past ``moment`` are dropped)."""
        return self._wall(moment, max(self._offsets_near(moment)))

    def _parse_time(self, text: str) -> datetime:
        # fold=1: a repeated autumn hour is read as its second pass, never earlier than the truth.
        return datetime.strptime(text, _TIME).replace(tzinfo=self.zone, fold=1).astimezone(UTC)

    def _moments(self, text: str) -> list[datetime]:
        """The moments the wall-clock ``text`` can mean in the install's zone, earliest first: one
        on every day but two a year; two for a time in the hour repeated each autumn (its first
        and second pass) or in the hour skipped each spring (a time no clock showed: read with
        the offset before the change and with the one after)."""
        wall = datetime.strptime(text, _TIME)
        readings = {wall.replace(tzinfo=self.zone, fold=fold).astimezone(UTC) for fold in (0, 1)}
        return sorted(readings)

    def _module_missing(self, object_type: str) -> ConnectorError:
        return ConnectorError(
            f"{self.name}: Vtiger refused to describe module {object_type!r} (ACCESS_DENIED): the install "
            f"lacks it or the user's profile hides it; enable the module, give the profile access, or "
            f"map a module the install has (`object:` in the mapping file)",
            ErrorRule(Action.FAIL, Fault.CONFIG, "module not available", code="ACCESS_DENIED"),
        )

    def _write_problem(self, item: sdk.RecordUpdate) -> sdk.WriteResult | None:
        if not _WSID.match(item.record_id):
            return sdk.WriteResult(
                item.record_id, False, "INVALID_ID_ATTRIBUTE", "not a Vtiger id (<type>x<number>)"
            )
        known = self.describe(item.object_type)
        prefix = self._prefixes.get(item.object_type)
        if prefix and not item.record_id.startswith(f"{prefix}x"):
            return sdk.WriteResult(
                item.record_id, False, "INVALID_ID_ATTRIBUTE", f"not an id of {item.object_type}"
            )
        if item.action is sdk.WriteAction.DELETE:
            return None
        refused = [name for name in item.fields if name not in known or not known[name].updateable]
        if refused:
            return sdk.WriteResult(
                item.record_id,
                False,
                "FIELD_NOT_WRITABLE",
                f"{item.object_type} field(s) {', '.join(refused)} missing or not editable",
            )
        return None


def _duplicate_message(item: sdk.RecordUpdate, refused: ConnectorError) -> str:
    """What ops read for a record Vtiger's Duplicate Prevention refused, and what to do."""
    answer = getattr(refused, "answer", "") or "Duplicates detected"
    code = "0" if refused.rule.code == DUPLICATES_DETECTED else refused.rule.code
    module = item.object_type
    return (
        f"Vtiger's Duplicate Prevention refused this {module} save ({answer!r}, code {code}): another "
        f"live {module} record holds the same values in the fields the module's duplicate check "
        "compares, and Vtiger checks them on every save, edits included. An administrator can turn "
        f"the check off for {module} or pick other fields (Settings > Module Management > Module "
        "Layouts & Fields > Duplicate Prevention) so that opt-outs and anonymised values ('Erased', "
        "emptied fields) pass, or merge the duplicates; then `consentsync outbox retry`"
    )


def _meets(rows: Sequence[dict[str, Any]], floor: str | None, held: dict[str, dict[str, Any]]) -> bool:
    """Whether a window read at an offset into ``floor``'s second begins inside what was held of
    it: its first row is of that second and already held (``read_changes``)."""
    return bool(rows) and str(rows[0]["modifiedtime"]) == floor and str(rows[0]["id"]) in held


def _check_name(name: str, what: str) -> None:
    # Module and field names end up in VTQL as they are: only identifier shapes pass.
    if not _NAME.match(name):
        raise ConnectorError(
            f"{name!r} is not a Vtiger {what} name", ErrorRule(Action.FAIL, Fault.CONFIG, f"bad {what} name")
        )


def _checkbox(value: Any) -> str | None:
    """A checkbox value as 8.2.0 stores it as written ("1"/"0"); None when it is neither."""
    if value is None or isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return {1: "1", 0: "0"}.get(value)
    text = str(value).strip().lower()
    if text in _TICKED:
        return "1"
    return "0" if text in _UNTICKED else None


def _one_line(error: ValidationError) -> str:
    """A settings error as one line naming the setting(s), for the CLI and the run report."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: "
        f"{str(item['msg']).removeprefix('Value error, ')}"
        for item in error.errors()
    )
