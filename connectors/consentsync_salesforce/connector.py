"""Salesforce, through simple-salesforce and requests.

Reads with SOQL on a (SystemModstamp, Id) cursor, lazily page by page, through ``queryAll`` so that
records deleted or merged away come in the same stream (``IsDeleted``, ``MasterRecordId``);
writes with sObject Collections (200 records a call, allOrNone false, per-record results) and with
Bulk API 2.0 above a threshold, answering call by call (job by job); deletes with sObject
Collections (200 ids a call); keeps an API budget per run and per day from ``Sforce-Limit-Info``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import io
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import requests
import structlog
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError
from simple_salesforce.format import format_soql

from consentsync import sdk
from consentsync.sdk import Action, ConnectorError, ErrorRule, Fault
from consentsync_salesforce.auth import TokenGrant, request_token
from consentsync_salesforce.settings import SalesforceSettings

log = structlog.get_logger("consentsync.salesforce")

CONVERTED_LEAD = "CANNOT_UPDATE_CONVERTED_LEAD"
CONVERTED_REASON = "lead converted: read-only, the person is on its contact"
DUPLICATES = "DUPLICATES_DETECTED"
DUPLICATE_REASON = (
    "refused by a duplicate rule of the org: its Action on Edit is Block (an Allow rule's alert "
    "is acknowledged by every write from API version 52.0; below it, Salesforce takes no "
    "duplicate rule header): set the rule's Action on Edit to Allow, or give the rule a condition "
    "that leaves out the values consentsync writes (an erasure's anonymised name or address)"
)

ERRORS = sdk.ErrorTable(
    [
        ErrorRule(Action.REFRESH_TOKEN, Fault.TRANSIENT, "session expired", 401, "INVALID_SESSION_ID"),
        ErrorRule(
            Action.RATE_LIMITED, Fault.LIMIT, "API request limit reached", 403, "REQUEST_LIMIT_EXCEEDED"
        ),
        ErrorRule(Action.RETRY, Fault.TRANSIENT, "record locked", code="UNABLE_TO_LOCK_ROW"),
        ErrorRule(Action.RETRY, Fault.TRANSIENT, "query locator expired", code="INVALID_QUERY_LOCATOR"),
        # Salesforce's platform error ("An unexpected error occurred. Please include this ErrorId
        # if you contact support"), for a call or per record (sObject Collections, a Bulk job's
        # sf__Error): it passes, as a lock does. A record is sent again in the run's later passes
        # (``lock_retries``; a Bulk job's through sObject Collections), then left pending,
        # dead-lettered only after max_push_attempts.
        ErrorRule(Action.RETRY, Fault.TRANSIENT, "Salesforce internal error", code="UNKNOWN_EXCEPTION"),
        # A query the org stopped for running too long ("Your query request was running for too
        # long."): it depends on the org's load, not on the query alone. Retried with backoff;
        # still refused, the run stops as for an unreachable CRM (exit 69), not as an admin's fault.
        ErrorRule(Action.RETRY, Fault.TRANSIENT, "query timed out", code="QUERY_TIMEOUT"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "query rejected", code="MALFORMED_QUERY"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "field does not exist or is not visible", code="INVALID_FIELD"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "object does not exist or is not visible", code="INVALID_TYPE"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "insufficient access", code="INSUFFICIENT_ACCESS_OR_READONLY"),
        ErrorRule(Action.SKIP, Fault.DATA, "record not found", 404, "NOT_FOUND"),
        ErrorRule(Action.SKIP, Fault.DATA, "record deleted", code="ENTITY_IS_DELETED"),
        # A converted lead is read-only ("cannot reference converted lead"): the person went into
        # the lead's contact. Never sent again in the run's passes, but left pending rather than
        # dead-lettered (``_converted_left_pending``): the next read hands the lead over as gone
        # (``IsConverted``), which supersedes the row.
        ErrorRule(Action.SKIP, Fault.DATA, CONVERTED_REASON, code=CONVERTED_LEAD),
        ErrorRule(Action.SKIP, Fault.DATA, "field value rejected", code="FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        ErrorRule(
            Action.SKIP, Fault.DATA, "invalid picklist value", code="INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
        ),
        # A duplicate rule refused the save though the write says allowSave=true (``_WRITE_HEADERS``):
        # a Block rule. Dead-lettered at once, its reason saying so (``_refused``).
        ErrorRule(Action.SKIP, Fault.DATA, "duplicate rule blocks the save", code=DUPLICATES),
    ]
)
# REQUEST_LIMIT_EXCEEDED is also the answer to the org's concurrent long-running request limit
# (25 requests of 20 s or more at once): no Retry-After, and no budget spent. The message tells
# it from the daily allocation's ("TotalRequests Limit exceeded.").
CONCURRENCY_LIMITED = ErrorRule(
    Action.RATE_LIMITED, Fault.LIMIT, "concurrent request limit reached", 403, "REQUEST_LIMIT_EXCEEDED"
)
_CONCURRENCY_LIMIT = re.compile(r"\bConcurrent\w*\b[^.]*\bLimit exceeded", re.IGNORECASE)

COLLECTION_LIMIT = 200  # sObject Collections: records (or ids to delete) a call
# Sent with every sObject Collections write:
# - Duplicate Rule Header (REST API, version 52.0 and later): "The default value for all fields
#   is false", so an active rule whose Action on Edit is Allow with an Alert refuses a save
#   through the API with DUPLICATES_DETECTED. A rule runs on an edit only where it changes a
#   field of the rule's matching criteria (Salesforce Help, article 005237351): never a consent
#   flag's write, but an erasure's anonymise (names, email, phone rewritten) can leave the record
#   matching another (an earlier erased one), and that erasure was dead-lettered. allowSave
#   acknowledges the alert, as the user in the UI does; a Block rule still refuses.
#   includeRecordDetails stays false: the answer names a duplicate's id, never its fields.
# - Assignment Rule Header: "If the header is not provided in the request, the default value is
#   TRUE": every write of a consent flag to a Lead ran the org's active lead assignment rule
#   and could hand the lead to another owner. FALSE: the owner stays.
# Bulk API 2.0 takes neither: it runs an assignment rule only where the job names one
# (assignmentRuleId, never given), and has no duplicate rule header (``_write_calls``).
_WRITE_HEADERS = {"Sforce-Duplicate-Rule-Header": "allowSave=true", "Sforce-Auto-Assign": "FALSE"}
# Read alongside the mapped fields where the object has them: a record in the recycle bin
# (queryAll) and, after a merge, the record it was merged into.
DELETION_FIELDS = ("IsDeleted", "MasterRecordId")
# Read alongside where the object has it (Lead): a lead converted into a contact stays, queryable
# and read-only, with IsConverted true; it is handed over as gone (``_record``).
CONVERSION_FIELDS = ("IsConverted", "ConvertedContactId")
# Read alongside where the object has it (every standard and custom object does): when the record
# was created, handed over as ``CrmRecord.created_at`` (an erasure reaches a record first read
# after it only where it was created before it). UTC, whole seconds, as SystemModstamp.
CREATION_FIELD = "CreatedDate"
_RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_SLOW_JOB = "bulk job slow"
# A job that is done with: nothing more of it is applied.
_JOB_ENDED = frozenset({"JobComplete", "Failed", "Aborted", None})
_LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(__c)?$")


def parse_sf_datetime(value: str) -> datetime:
    """``2026-11-23T03:21:24.000+0000`` (and the ISO spellings) to an aware UTC datetime.
    Python 3.11's ``fromisoformat`` reads ``Z`` and ``+0000`` itself."""
    stamp = datetime.fromisoformat(value.strip())
    return stamp if stamp.tzinfo is UTC else stamp.astimezone(UTC)


class _Salesforce(Salesforce):
    """simple-salesforce, decoding answers with orjson. simple-salesforce decodes every query
    page with the standard library into OrderedDicts, which cost more CPU than the rest of the
    read; orjson gives the same values as plain dicts. A body that is not UTF-8 JSON (orjson
    reads nothing else) is left to the standard decoder, as before."""

    # The integration user's id, where the login said it: whose Bulk API jobs are ours.
    user_id: str | None = None
    # The org's id, where the login said it: whose describe answers are kept (``_DESCRIBED``).
    org_id: str | None = None

    def parse_result_to_json(self, result: requests.Response) -> Any:
        try:
            return orjson.loads(result.content)
        except orjson.JSONDecodeError:
            return super().parse_result_to_json(result)


class SalesforceConnector(sdk.Connector):
    vendor = "salesforce"
    settings_model = SalesforceSettings
    can_read_by_id = True
    can_delete = True
    deletions = "stream"  # queryAll: IsDeleted and MasterRecordId in the (SystemModstamp, Id) stream
    reports_merges = True
    # SystemModstamp is set when a transaction writes the record and the change shows when it
    # commits. No bound is documented on the lag: an Apex transaction (triggers, flows, batch
    # chunks) is stopped after 10 minutes of execution (Execution Governors and Limits), and a
    # Bulk API batch chunk has the same 10 minutes, but other platform processes run longer.
    # So each read first asks sObject Get Updated for its window (``_covered_until``): its
    # latestDateCovered is "the start time of that long-running transaction until it
    # completes" (GetUpdatedResult), kept in the cursor beside the read's position until that
    # transaction commits, then read from once more (the read itself goes on to its bound:
    # ``read_changes``). The look-back stays for what that answer cannot tell (an object it does
    # not serve): every read without such a hold starts 10 minutes behind the last record it
    # handled.
    lookback = timedelta(minutes=10)
    # Write calls side by side: "There isn't a limit on the number of concurrent requests shorter
    # than 20 seconds" (API Request Limits and Allocations); a Collections call of 200 records
    # takes well under that. Children of one parent updated side by side can meet
    # UNABLE_TO_LOCK_ROW, as in Bulk API's parallel mode: sent again in a later pass
    # (``lock_retries``), then left pending for the next run. ``push_concurrency: 1`` is serial.
    write_concurrency = 4

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        self.config = SalesforceSettings.model_validate(dict(settings))
        self.policy = self.config.retry_policy()
        # simple-salesforce passes no timeout: the sdk's session gives every request one.
        self.session = sdk.http_session(self.config, on_response=self._count)
        # Shared by the readers (copies) and the threads that write side by side.
        self._login = sdk.SharedLogin(self._logged_in)
        self._under_way = _UnderWay()
        # How many reads the run sets up (shared by the readers): for the budget's floor.
        self._reads = _Reads()
        # With ``read_back_writes``: the fields each object's reads asked for (shared by the
        # readers), and what the org's automation set in our own saves (``_read_back``).
        self._read_fields: dict[str, tuple[str, ...]] = {}
        self._save_effects = _SaveEffects()
        # Per thread, Salesforce's clock in the last answer that thread was given: a write's
        # answer bounds the stamp of its save (``_read_back``), whatever other threads are told.
        self._answered = threading.local()
        # This run's describes (shared by the readers), each from the process's answers of the
        # last hour (``_DESCRIBED``) or asked now; the objects whose describe came from there.
        self._describes: dict[str, dict[str, sdk.FieldInfo]] = {}
        self._described_earlier: set[str] = set()
        # Read-side, shared by the readers: whether describe() said an object is replicateable
        # (sObject Get Updated serves it), and the objects Get Updated refused for good
        # (``_covered_until``).
        self._replicateable: dict[str, bool] = {}
        self._not_replicated: set[str] = set()
        # The objects whose read this run was held back by a transaction open over an hour,
        # warned of once (``_covered_until``); the daemon opens the connector afresh every run.
        self._warned_open: set[str] = set()
        # Per read: whether Get Updated answered for the read's window (``_covered_until``), up
        # to which moment it said every transaction begun had committed; and the look-back
        # window of this run's reads (``resume_from``), for a read from a hold.
        self._updated_answered = False
        self._updated_through: datetime | None = None
        self._window = self.lookback
        # Bulk API 2.0 jobs this process was answered for (shared by the copies and threads),
        # and a lock that makes creating a job and looking for one whose answer was lost one
        # step: a job another thread here is about to fill is never taken for a lost one.
        self._bulk_jobs: set[str] = set()
        self._server_time: datetime | None = None
        self._bulk_create = threading.Lock()
        # Bulk API 2.0 jobs closed and not yet seen to end, on disk: a job goes on after the
        # process that closed it died, and must be settled before anything else is written to
        # the records it holds (``_settle_left_jobs``). One journal per org and principal.
        config = self.config
        # Where the journal lives, and the describe answers of the last hour (``_described``).
        self._state = sdk.state_dir(config.state_dir)
        self._journal = sdk.Journal(
            self._state,
            self.vendor,
            name,
            config.instance_url if config.auth == "token" else config.login_url,
            config.username or config.client_id or "",
            required=bool(config.state_dir or os.environ.get(sdk.STATE_DIR_ENV)),
        )
        # The journal's jobs a thread of this process is driving now (not left by anyone), and
        # a lock that makes settling the left ones one step for the threads that write.
        self._driving: set[str] = set()
        self._settling = threading.Lock()

    # -- session -------------------------------------------------------------------------------

    @property
    def sf(self) -> _Salesforce:
        return self._login.get()

    def _logged_in(self) -> _Salesforce:
        grant: TokenGrant = request_token(self.session, self.config)
        sf = _Salesforce(
            instance_url=grant.instance_url,
            session_id=grant.access_token,
            session=self.session,
            version=self.config.api_version,
        )
        sf.user_id = grant.user_id
        sf.org_id = grant.org_id
        return sf

    def _count(self, response: requests.Response) -> None:
        self.usage.count(sdk.endpoint_kind(response.request.url or "", _ENDPOINTS))
        # Salesforce's own clock, as of its latest answer: a job made after it is not older than
        # a request sent after it (``_jobs_left_open``), whatever this machine's clock says.
        said = _http_date(response.headers.get("Date"))
        self._server_time = said or self._server_time
        self._answered.at = said
        match = _LIMIT_INFO.search(response.headers.get("Sforce-Limit-Info", ""))
        if match:
            self.usage.said(int(match.group(1)), int(match.group(2)))

    def _call(self, describe: str, operation: Any) -> Any:
        """``operation`` (a simple-salesforce call) under the retry policy, after the budget
        check: per run, and the org's daily allocation less the reserve other integrations share.
        The check counts the calls under way beside the calls answered (``_under_way``): the
        readers and writers side by side each checked the calls answered alone, and four of them
        passing the check at once spent up to three calls past ``per_run``. A call that will log
        in first (no session yet, or one refused) takes two calls of the budget."""

        def attempt() -> Any:
            needed = 1 if describe == "login" or self._login.current is not None else 2
            with self._under_way.lock:
                usage = self.usage
                self.config.budget.check(
                    self.name,
                    sdk.ApiUsage(
                        calls=usage.calls + self._under_way.calls + needed - 1,
                        used=usage.used,
                        limit=usage.limit,
                    ),
                )
                self._under_way.calls += needed
            try:
                return operation()
            except SalesforceError as error:
                raise _classified(error) from None
            except requests.RequestException as error:
                raise sdk.network_error(describe, error) from None
            finally:
                with self._under_way.lock:
                    self._under_way.calls -= needed

        return sdk.call(attempt, policy=self.policy, refresh_session=self._forget_session, describe=describe)

    def reader(self) -> SalesforceConnector:
        """Salesforce serves a run's reads side by side: an org takes up to 25 concurrent
        long-running API requests (Salesforce Developer Limits), and a run reads a handful of
        objects. A reader shares this connector's login (made once, by the first call of any
        of them: ``SharedLogin``), session, describes, usage and budget, and keeps its own
        per-read state. No call here: a budget no run can read under is refused before the
        login (``_check_budget_floor``), and the engine asks for every reader before it reads."""
        with self._reads.lock:
            self._reads.readers += 1
        return copy.copy(self)

    def _forget_session(self) -> None:
        # The next attempt logs in again inside the retry, so a failing login is retried too.
        self._login.forget()

    # -- the four operations -------------------------------------------------------------------

    def check(self) -> None:
        self._call("limits", lambda: self.sf.restful("limits"))

    def describe(self, object_type: str) -> dict[str, sdk.FieldInfo]:
        """The object's fields, asked of Salesforce (once for this connector). The answer is
        kept for the reads of the next hour, in this process and in the state directory for the
        next processes (``_known``); a refusal forgets what was kept (``consentsync mapping
        check --against`` and ``discover`` ask afresh)."""
        if object_type not in self._describes:
            _check_api_name(object_type)
            key = self._describe_key(object_type)
            try:
                result = self._call(
                    f"describe {object_type}", lambda: self.sf.restful(f"sobjects/{object_type}/describe")
                )
            except ConnectorError:
                _forget_kept(key, self._state)
                raise
            kept = _Described(
                {
                    item["name"]: sdk.FieldInfo(
                        name=item["name"],
                        type=item.get("type", ""),
                        updateable=bool(item.get("updateable")),
                        nillable=bool(item.get("nillable", True)),
                        picklist_values=tuple(
                            p["value"] for p in item.get("picklistValues") or [] if p.get("active", True)
                        ),
                    )
                    for item in result["fields"]
                },
                result.get("replicateable") is not False,
                time.monotonic(),
                time.time(),
            )
            _keep_described(key, kept, self._state)
            self._replicateable[object_type] = kept.replicateable
            self._describes[object_type] = dict(kept.fields)
        return self._describes[object_type]

    def _known(self, object_type: str) -> dict[str, sdk.FieldInfo]:
        """The object's fields for a read: as Salesforce described them to this process, or to
        an earlier one (the state directory), within the hour (per org, integration user, API
        version and object: ``_described``), else described now. The daemon opens the connector
        afresh every run, and ``consentsync sync`` is a process a run; without this, every run
        would pay a describe call per object. A mapped field the kept answer lacks (added
        in Salesforce since) is described again at once (``_selected_fields``), and a query
        refused for a field or the object forgets the kept answer (``_query_all``)."""
        if object_type not in self._describes:
            _check_api_name(object_type)
            kept = _described(self._describe_key(object_type), self._state)
            if kept is not None:
                self._described_earlier.add(object_type)
                self._replicateable[object_type] = kept.replicateable
                self._describes[object_type] = dict(kept.fields)
        return self.describe(object_type)

    def _describe_key(self, object_type: str) -> tuple[str, ...]:
        """Whose describe of ``object_type``: the org (instance, org id) and the integration user
        (what it may see), at the API version. Logs in where this connector has not yet."""
        sf = self._login.current or self._call("login", lambda: self.sf)
        config = self.config
        principal = config.username or config.client_id or ""
        if config.auth == "token":
            # No user named: the token's digest stands for the user it was granted to.
            principal = hashlib.sha256((config.access_token or "").encode()).hexdigest()[:16]
        return (sf.base_url, sf.org_id or "", sf.user_id or "", principal, object_type)

    def _forget_described(self, object_type: str) -> None:
        """The object's describe asked again, by this run and the next ones."""
        if self._login.current is not None:
            _forget_kept(self._describe_key(object_type), self._state)
        self._describes.pop(object_type, None)
        self._described_earlier.discard(object_type)

    def rewound(self, cursor: sdk.Cursor, by: timedelta) -> sdk.Cursor | None:
        """As every connector goes back for a clock set back (``Connector.rewound``). A held transaction's
        token names a moment of the org's clock (the hold, the cursor's ``read_until``): the read goes
        back from the earlier of it and the position, as a plain one."""
        return sdk.rewound_plain(cursor, by)

    def resume_from(self, cursor: sdk.Cursor, lookback: timedelta | None = None) -> sdk.Cursor:
        """As every connector resumes a plain cursor (the look-back window behind it). A cursor
        holding the start of an open transaction (its token, ``_Hold``) is kept as it is: its
        read goes on from its position, or from the look-back window before the hold once the
        transaction has committed (``read_changes``). The window is kept for that read."""
        self._window = self.lookback if lookback is None else lookback
        if cursor.token is None:
            return super().resume_from(cursor, lookback)
        if _Hold.of(cursor, self.name, warn=True) is None:
            # Unreadable: resumed as a plain cursor, from the window behind its position.
            return super().resume_from(dataclasses.replace(cursor, token=None), lookback)
        return cursor

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: sdk.Cursor, until: datetime
    ) -> Iterator[sdk.CrmRecord]:
        """Changes in (SystemModstamp, Id) order. Where the object has ``IsDeleted`` the read
        goes through ``queryAll``: a deletion moves SystemModstamp to the time of the deletion,
        so records deleted (or merged away: ``MasterRecordId``) come in the same stream and are
        yielded as ``CrmRecord(deleted=True, merged_into=...)``.

        A transaction still open shows its changes when it commits, stamped when it began
        (``_covered_until`` asks where that is). The read goes up to ``until`` all the same:
        every change visible now is handed on now, whatever stays open how long (an opt-out
        made after such a transaction began is not held back). The position handed to the
        engine keeps the read's progress and that start (the *hold*) apart: ``completed_cursor``
        is the last record handed over, with the hold in its token (``_Hold``), set before each
        record goes, so a read cut anywhere (the run's budget, a kill) is resumed from where it
        got to, not from the hold. While the transaction stays open, the next read goes on from
        that position (every change stamped since the hold is read once more when it commits,
        so no look-back is needed behind it). Get Updated is asked about the hold over a window
        around it alone (``_HOLD_PROBE``), whose ids do not grow however long it stays open. Once
        it no longer answers that start, the transaction has committed: that read goes once more
        from the look-back window before the hold (or from the position, where that is further
        back), up to its bound, asking Get Updated again for that window, as a plain read (or
        holding the next transaction still open). A start reported behind the position (a read
        before it was not held: Get Updated refused it once) is held all the same, the position
        kept. A hold Get Updated cannot be asked about is kept, and warned of."""
        self._check_budget_floor(object_type)  # before any call: refused, nothing is asked
        self._read_fields[object_type] = tuple(fields)
        self._selected_fields(object_type, fields)  # checked first: may describe afresh
        include_deleted = "IsDeleted" in self._known(object_type)
        held = _Hold.of(since, self.name)
        position = sdk.Cursor(since.modstamp, since.record_id)
        floor = position  # the progress kept never goes behind it
        settled: datetime | None = None  # a plain position's read_until (``_Hold.cursor``)
        if held is None:
            hold = self._covered_until(object_type, since, until)
            start = position
        else:
            window = max(self._window, timedelta(0))
            # Asked about the hold alone: a window from before it to just after it (few ids, and
            # no more however long it stays open; a window from it to ``until`` grows run after
            # run, past Get Updated's 600,000 ids, and was then refused every run). While
            # something begun there is open, latestDateCovered is its start, before the end.
            reach = datetime.now(UTC) - _REPLICATION_DAYS
            around = min(until, max(held.moment, reach) + _HOLD_PROBE)
            said = self._covered_until(object_type, sdk.Cursor(held.moment - window), until, end=around)
            if not self._updated_answered:
                # Not known whether the transaction committed: the hold stays, and the read goes
                # on from the look-back window behind its position (as a read without Get
                # Updated does), the position never moving back.
                log.warning(
                    "salesforce.hold_unchecked",
                    connector=self.name,
                    object=object_type,
                    held_from=held.moment.isoformat(),
                )
                behind = position.modstamp - window if position.modstamp is not None else None
                hold, start = held.moment, sdk.Cursor(behind)
            elif said is not None and said <= held.moment:
                # Still open (or one open since earlier): read on from the position. A
                # transaction begun after the hold needs no asking now: what it writes is stamped
                # after the hold, inside the read once more when the hold commits.
                hold, start = said, position
            else:
                # Committed: what it wrote is visible, stamped from the hold on. Read once more
                # from the look-back window before it, or from the position where that lies
                # further back (a read once more after an earlier hold, cut short by the budget
                # or a kill, goes on from where it got to), asking Get Updated for that read's
                # window as a plain read does (a transaction open now is held).
                log.info(
                    "salesforce.open_transaction_committed",
                    connector=self.name,
                    object=object_type,
                    held_from=held.moment.isoformat(),
                )
                start = sdk.Cursor(held.moment - window)
                if position.modstamp is not None and position.modstamp < held.moment - window:
                    start = position
                hold = self._covered_until(object_type, start, until)
                floor = start
                if hold is None and self._updated_answered:
                    # Nothing open before Get Updated's last whole minute: every change stamped
                    # before it was visible to this read, so a read cut short goes on from its
                    # position (read_until: ``resume_from``), not the look-back window behind it
                    # (one holding more than a run's budget reads was read again every run).
                    settled = self._updated_through
        if hold is None and since.token is None:
            yield from self._changes(object_type, fields, start, until, include_deleted)
            return
        # A position of this read's own from its first record on: the stored token (a hold) is
        # replaced or dropped; with nothing read, the start itself (never past ``since``).
        self.completed_cursor = _Hold.cursor(floor, hold, settled)
        for record in self._changes(object_type, fields, start, until, include_deleted):
            if floor.is_before(record.modstamp, record.record_id):
                # Set before the record goes: the engine keeps it with the page this record
                # ends, and with every later one.
                self.completed_cursor = _Hold.cursor(
                    sdk.Cursor(record.modstamp, record.record_id), hold, settled
                )
            yield record

    def _check_budget_floor(self, object_type: str) -> None:
        """Refuses, as the admin's to fix (exit 2), a ``budget.per_run`` below what every run
        spends on its reads: 1 login, then per mapped object a Get Updated and a first query
        page (the describes of the hour's first run come on top). Under it every run stopped on
        its budget before its writes, exit 75 ("retry later"), run after run for good.

        The connector is not told the mapping: the run's reads are counted as the engine sets
        them up, one and a reader more for each further object (``reader``, asked for every
        read before the first begins), or, read one after another (a plan), the objects read so
        far: never more reads than the run makes. Each is counted with its Get Updated call,
        which an object describe says is not replicateable does not make: known only after the
        login, so a budget within a call of the floor per such object is refused all the same."""
        per_run = self.config.budget.per_run
        with self._reads.lock:
            if self._reads.readers:  # a run set up its readers: this is its first read
                self._reads.expected = self._reads.readers + 1
                self._reads.readers = 0
                self._reads.objects.clear()
            self._reads.objects.add(object_type)
            reads = max(self._reads.expected, len(self._reads.objects))
        floor = 1 + 2 * reads
        if per_run is None or per_run >= floor:
            return
        raise sdk.config_error(
            f"settings budget.per_run {per_run} of connector {self.name!r} is below the {floor} API "
            f"calls every run makes to read its {reads} mapped object(s) (1 login, then a Get Updated "
            f"and a first query page for each): every run would stop on its budget before writing "
            f"anything; set it above {floor} (one call more for each write call, and {reads} for the "
            "describes of the hour's first run)",
            "budget below a run's reads",
        )

    def _changes(
        self,
        object_type: str,
        fields: Sequence[str],
        since: sdk.Cursor,
        until: datetime,
        include_deleted: bool,
    ) -> Iterator[sdk.CrmRecord]:
        """The records changed after ``since`` up to ``until``, page by page."""
        query = self.build_query(object_type, fields, since, until)
        headers = {"Sforce-Query-Options": f"batchSize={self.config.query_batch_size}"}
        added = self._along_fields(object_type, fields)

        def resume(last: sdk.CrmRecord) -> str:
            # The query is in (SystemModstamp, Id) order: the rest is what follows the last
            # record handed over, up to the same signpost.
            return self.build_query(object_type, fields, sdk.Cursor(last.modstamp, last.record_id), until)

        yield from self._query_all(
            object_type,
            query,
            headers,
            count=True,
            include_deleted=include_deleted,
            resume=resume,
            added=added,
        )

    def _covered_until(
        self, object_type: str, since: sdk.Cursor, until: datetime, *, end: datetime | None = None
    ) -> datetime | None:
        """The moment before ``until`` up to which Salesforce shows the object's changes whole,
        also set as ``covered_until`` (the engine keeps it as the cursor's read_until); None
        where that is ``until`` or later, or not known. sObject Get Updated's latestDateCovered,
        "the start time of that long-running transaction until it completes" (GetUpdatedResult),
        floored to the second. One call a read, for the window the read covers, from ``since``
        (at most 29 days back: Get Updated answers for no more than 30) to ``until``; a read
        that finds its hold committed asks twice (``read_changes``).

        Get Updated drops the seconds of both ends of its window and covers nothing after the
        last whole minute of its own clock: an answer at that minute is no news of an open
        transaction, and the position is not held (a transaction that began in those seconds is
        inside the next read's look-back window, whose Get Updated covers it; with
        ``lookback_seconds`` under a minute it may not be). An object Get
        Updated does not serve (not replicateable, replication not enabled for it, no access:
        403, 404, INVALID_TYPE) is read up to ``until`` with the look-back window alone, with a
        warning once; a window it refuses (EXCEEDED_ID_LIMIT: more than 600,000 changes)
        likewise, for that read. A transaction open for more than an hour is warned of, once a
        run for each object: until it ends, the cursor holds its start (``read_changes``).
        ``end``, where given, ends the window asked instead of ``until`` (a hold asked about
        alone: ``read_changes``); the answer is then before it or None."""
        self.covered_until = None
        self._updated_answered = False
        self._updated_through = None
        if object_type in self._not_replicated:
            return None
        if not self._replicateable.get(object_type, True):
            self._replication_unavailable(object_type, "not replicateable", permanent=True)
            return None
        bound = until.astimezone(UTC)
        end = bound if end is None else min(end.astimezone(UTC), bound)
        asked_at = datetime.now(UTC)
        earliest = asked_at - _REPLICATION_DAYS
        start = earliest if since.modstamp is None else max(since.modstamp.astimezone(UTC), earliest)
        # A window of at least a whole minute (Get Updated refuses a shorter one).
        start = min(start, end - 2 * _MINUTE)
        params = {"start": _replication_time(start), "end": _replication_time(end)}

        def updated() -> Any:
            try:
                return self.sf.restful(f"sobjects/{object_type}/updated/", params=params)
            except SalesforceError as error:
                if error.status == 401 or not 400 <= error.status < 500:
                    raise
                code = _error_code(error) or str(error.status)
                if code == "REQUEST_LIMIT_EXCEEDED":
                    raise
                return _Unreplicated(code, error.status in (403, 404) or code in _NOT_REPLICATED)

        answer = self._call(f"updated {object_type}", updated)
        if isinstance(answer, _Unreplicated):
            self._replication_unavailable(object_type, answer.code, permanent=answer.permanent)
            return None
        said = answer.get("latestDateCovered") if isinstance(answer, dict) else None
        if not isinstance(said, str) or not said:
            self._replication_unavailable(object_type, "no latestDateCovered", permanent=False)
            return None
        covered = parse_sf_datetime(said).replace(microsecond=0)
        self._updated_answered = True
        clock = self.crm_clock()
        offset = clock.offset() if clock is not None else None
        # Salesforce's clock when the call left, at the earliest: its last whole minute then.
        # An answer at or after it is Get Updated's usual edge, no news of a transaction: the
        # position is not held there (every run would read its last minute again); a
        # transaction begun in those seconds is inside the next read's look-back window.
        crm_then = asked_at + (offset.low if offset is not None else timedelta(0))
        horizon = min(end, crm_then).replace(second=0, microsecond=0)
        if covered >= end or covered >= horizon:
            self._updated_through = horizon
            return None
        self._updated_through = covered
        self.covered_until = covered
        if bound - covered > _LONG_OPEN:
            if object_type not in self._warned_open:
                self._warned_open.add(object_type)
                log.warning(
                    "salesforce.open_transaction_holds_reads",
                    connector=self.name,
                    object=object_type,
                    covered_until=covered.isoformat(),
                    until=bound.isoformat(),
                    open_minutes=int((bound - covered).total_seconds() // 60),
                )
        else:
            log.info(
                "salesforce.open_transaction",
                connector=self.name,
                object=object_type,
                covered_until=covered.isoformat(),
                until=bound.isoformat(),
            )
        return covered

    def _replication_unavailable(self, object_type: str, reason: str, *, permanent: bool) -> None:
        """Get Updated does not answer for ``object_type`` (for good where ``permanent``: not
        asked again by this connector): the read goes up to its ``until``, the look-back window
        alone covering late commits. Warned of once a process per connector, object and reason
        (the daemon opens the connector afresh for every run)."""
        if permanent:
            self._not_replicated.add(object_type)
        with _REPLICATION_WARNED_LOCK:
            if (self.name, object_type, reason) in _REPLICATION_WARNED:
                return
            _REPLICATION_WARNED.add((self.name, object_type, reason))
        log.warning(
            "salesforce.updated_unavailable",
            connector=self.name,
            object=object_type,
            reason=reason,
        )

    def read_records(
        self, object_type: str, fields: Sequence[str], record_ids: Sequence[str]
    ) -> Iterator[sdk.CrmRecord]:
        self._read_fields[object_type] = tuple(fields)
        selected = self._selected_fields(object_type, fields)
        added = self._along_fields(object_type, fields)
        wanted = [*selected, *added]
        for start in range(0, len(record_ids), COLLECTION_LIMIT):
            ids = list(record_ids[start : start + COLLECTION_LIMIT])
            query = format_soql(f"SELECT {', '.join(wanted)} FROM {object_type} WHERE Id IN {{}}", ids)
            yield from self._query_all(object_type, query, {}, added=added)

    def _along_fields(self, object_type: str, fields: Sequence[str]) -> tuple[str, ...]:
        """``CONVERSION_FIELDS`` and ``CREATION_FIELD`` the object has and the mapping does not
        read itself: read along, and left out of the values handed over."""
        known = self._known(object_type)
        along = (*CONVERSION_FIELDS, CREATION_FIELD)
        return tuple(name for name in along if name in known and name not in fields)

    def _query_all(
        self,
        object_type: str,
        query: str,
        headers: dict[str, str],
        *,
        count: bool = False,
        include_deleted: bool = False,
        resume: Callable[[sdk.CrmRecord], str] | None = None,
        added: Sequence[str] = (),
    ) -> Iterator[sdk.CrmRecord]:
        """The query's records page by page. A query locator Salesforce no longer holds (unused
        for 15 minutes, or released because the integration user opened an eleventh query: it
        keeps ten per user, the oldest released) answers INVALID_QUERY_LOCATOR however often it
        is asked again: with ``resume``, the query is asked afresh for what follows the last
        record handed over; without, the read fails as before."""

        def first(text: str) -> Any:
            try:
                return self._call(
                    f"query {object_type}",
                    lambda: self.sf.query(text, include_deleted=include_deleted, headers=headers),
                )
            except ConnectorError as error:
                if error.rule.fault is Fault.CONFIG:
                    # A field or the object gone, or hidden from the integration user, since
                    # the describe kept: the next run asks it afresh and says so plainly.
                    self._forget_described(object_type)
                raise

        def more(locator: str) -> Any:
            try:
                return self.sf.query_more(locator, identifier_is_url=True, headers=headers)
            except SalesforceError as error:
                if resume is not None and _error_code(error) == "INVALID_QUERY_LOCATOR":
                    return None  # asked afresh below, not sent again
                raise

        page = first(query)
        if count:
            self.expected_records = page.get("totalSize")
        last: sdk.CrmRecord | None = None
        while True:
            for raw in page["records"]:
                last = _record(object_type, raw, added)
                yield last
            if page.get("done", True) or not page.get("nextRecordsUrl"):
                return
            locator = page["nextRecordsUrl"]
            answer = self._call(f"queryMore {object_type}", lambda locator=locator: more(locator))
            if answer is not None:
                page = answer
                continue
            assert resume is not None
            # Each fresh query starts after the last record handed over, so every release
            # costs one query and the read still moves on by at least a page.
            log.info("salesforce.query_locator_released", connector=self.name, object=object_type)
            page = first(query if last is None else resume(last))

    def _selected_fields(self, object_type: str, fields: Sequence[str]) -> list[str]:
        known = self._known(object_type)
        wanted = list(dict.fromkeys(["Id", "SystemModstamp", *fields]))
        if object_type in self._described_earlier and not known.keys() >= set(wanted):
            # A describe kept from an earlier run lacks a mapped field: one added in Salesforce
            # since (and to the mapping) is asked for at once, not an hour later.
            self._forget_described(object_type)
            known = self.describe(object_type)
        sdk.require_fields(
            wanted, known, f"{object_type} has no field(s)", "(or the integration user cannot see them)"
        )
        return wanted

    def build_query(self, object_type: str, fields: Sequence[str], since: sdk.Cursor, until: datetime) -> str:
        """SOQL for the changes after ``since`` up to ``until``, in cursor order. A cursor without
        an id (a look-back start) takes every record stamped at or after its time. Object and
        field names are checked against describe(); every value goes through format_soql."""
        selected = self._selected_fields(object_type, fields)
        known = self._known(object_type)
        along = (*DELETION_FIELDS, *CONVERSION_FIELDS, CREATION_FIELD)
        wanted = list(dict.fromkeys([*selected, *(name for name in along if name in known)]))
        where = format_soql("SystemModstamp <= {}", until.astimezone(UTC))
        if since.modstamp is not None:
            stamp = since.modstamp.astimezone(UTC)
            if since.record_id is None:
                after = format_soql("SystemModstamp >= {}", stamp)
            else:
                after = format_soql(
                    "(SystemModstamp > {stamp} OR (SystemModstamp = {stamp} AND Id > {id}))",
                    stamp=stamp,
                    id=since.record_id,
                )
            where = f"{after} AND {where}"
        return f"SELECT {', '.join(wanted)} FROM {object_type} WHERE {where} ORDER BY SystemModstamp, Id"

    def write_batches(self, updates: Sequence[sdk.RecordUpdate]) -> Iterator[dict[int, sdk.WriteResult]]:
        """Updates per object (sObject Collections, or one Bulk API 2.0 job above the threshold),
        then deletes (sObject Collections, any objects in one call), yielding each call's (each
        job's) answers as it returns.

        A lead converted after the run read it refuses the write with CANNOT_UPDATE_CONVERTED_LEAD
        (a converted lead is read-only). It is sent once: not again in this run's passes, and
        answered as retryable, so that its row waits in the outbox instead of being dead-lettered
        (an alert no retry can clear). The conversion moved the lead's SystemModstamp, so the
        next run's read hands it over as gone (``IsConverted``), which supersedes the row; what
        the person is owed goes to the contact the lead was converted into. A delete it refuses
        (an erasure's, which still reaches a converted lead: it keeps the person's data) is
        dead-lettered at once, for ops: the integration user may not delete converted leads."""
        for answers in self._write_calls(updates):
            refused = [result.record_id for result in answers.values() if result.error_code == CONVERTED_LEAD]
            if refused:
                log.info("salesforce.converted_lead_refused", connector=self.name, records=refused)
            answers = self._gone_confirmed(updates, answers)
            yield {
                position: result
                if updates[position].action is sdk.WriteAction.DELETE
                else _converted_left_pending(result)
                for position, result in answers.items()
            }

    def _gone_confirmed(
        self, updates: Sequence[sdk.RecordUpdate], answers: dict[int, sdk.WriteResult]
    ) -> dict[int, sdk.WriteResult]:
        """An update refused as if its record were gone (``_GONE_CODES``) is gone only where
        ``queryAll`` finds the record deleted or not at all: Salesforce words a lookup written to
        a deleted or unknown record the same ways, and a live record taken for gone would be sent
        nothing more. One query an object, for the few such answers."""
        said_gone: dict[str, list[int]] = {}
        for position, result in answers.items():
            if result.gone:
                said_gone.setdefault(updates[position].object_type, []).append(position)
        for object_type, positions in said_gone.items():
            ids = [updates[p].record_id for p in positions]
            found: dict[str, bool] = {}
            # 200 ids a query: the query goes in the URL, which Salesforce refuses past 16 KB
            # (a Bulk job may answer hundreds of records deleted since it was decided).
            for start in range(0, len(ids), _CONFIRM_CHUNK):
                query = format_soql(
                    f"SELECT Id, IsDeleted FROM {object_type} WHERE Id IN {{}}",
                    ids[start : start + _CONFIRM_CHUNK],
                )
                answer = self._call(
                    "confirm deleted records", lambda q=query: self.sf.query_all(q, include_deleted=True)
                )
                found.update(
                    {_canonical_id(str(row["Id"])): bool(row.get("IsDeleted")) for row in answer["records"]}
                )
            for position in positions:
                if found.get(_canonical_id(updates[position].record_id), True):
                    continue  # in the recycle bin, or purged from it: gone
                said = answers[position]
                answers[position] = dataclasses.replace(
                    said,
                    gone=False,
                    retryable=_retryable(said.error_code or ""),
                    message=f"{said.message} (the record itself is live)",
                )
        return answers

    def _write_calls(self, updates: Sequence[sdk.RecordUpdate]) -> Iterator[dict[int, sdk.WriteResult]]:
        self._settle_left_jobs()
        by_object, deletes = _by_object(updates)
        for object_type, positions in by_object.items():
            _check_api_name(object_type)

            def save(chunk: list[int], kind: str = object_type) -> list[sdk.WriteResult]:
                return self._read_back(kind, updates, chunk, lambda: self._save_chunk(kind, updates, chunk))

            if len(positions) >= self.config.bulk_threshold:
                answers = self._read_back(
                    object_type,
                    updates,
                    positions,
                    lambda kind=object_type, chosen=positions: self._write_bulk(kind, updates, chosen),
                )
                # Bulk API 2.0 takes no duplicate rule header: a record an Allow-with-Alert rule
                # refused there is sent again at once through sObject Collections, which says
                # allowSave=true (a Block rule refuses it there too, and that answer stands).
                again = [p for p, said in answers.items() if not said.ok and said.error_code == DUPLICATES]
                # A record the job refused with a transient error (a lock, Salesforce's internal
                # error) is sent again in this run through sObject Collections, as a Collections
                # write's is in its later passes: the job was its first try, so it is sent again
                # ``lock_retries`` times at most, then left pending (dead-lettered after
                # max_push_attempts).
                retries = self.config.lock_retries
                transient = [p for p, said in answers.items() if retries and _transient_row(said)]
                yield {p: result for p, result in answers.items() if p not in again and p not in transient}
                if again:
                    yield from self._collection_calls(again, save)
                if transient:
                    yield from self._collection_calls(transient, save, retries - 1)
            else:
                yield from self._collection_calls(positions, save)
        if deletes:
            malformed = {p: _malformed_id(updates[p].record_id) for p in deletes if _bad_id(updates[p])}
            if malformed:
                yield malformed
            wanted = [p for p in deletes if p not in malformed]
            yield from self._collection_calls(wanted, lambda chunk: self._delete_chunk(updates, chunk))

    def write_shares(self, updates: Sequence[sdk.RecordUpdate], shares: int) -> list[list[int]]:
        """The calls ``write_batches`` would make, dealt out: each object's updates in chunks of
        200 (one sObject Collections call each) and the deletes likewise, dealt to the shares in
        turn, so that the shares make no more calls than one ``write_batches`` would. An object
        with ``bulk_threshold`` updates or more stays whole in a share of its own (one Bulk API
        2.0 job)."""
        by_object, deletes = _by_object(updates)
        threshold = self.config.bulk_threshold
        whole = [positions for positions in by_object.values() if len(positions) >= threshold]
        chunks = [
            positions[start : start + COLLECTION_LIMIT]
            for positions in [*(p for p in by_object.values() if len(p) < threshold), deletes]
            for start in range(0, len(positions), COLLECTION_LIMIT)
        ]
        dealt: list[list[int]] = [[] for _ in range(max(0, min(shares - len(whole), len(chunks))))]
        if chunks and not dealt:
            dealt = [[]]
        for number, chunk in enumerate(chunks):
            dealt[number % len(dealt)] += chunk
        return [share for share in [*whole, *dealt] if share]

    def as_read_back(self, update: sdk.RecordUpdate) -> dict[str, Any]:
        """``update``'s fields, and the fields the org's record-triggered automation set in the
        save that wrote them, where ``read_back_writes`` saw it (``_read_back``): read back, they
        are consentsync's own save, not a statement of the person's."""
        shown = dict(update.fields)
        if update.action is not sdk.WriteAction.UPDATE:
            return shown
        key = (update.object_type, _canonical_id(update.record_id))
        return {**self._save_effects.of(key, update.fields), **shown}

    # -- writing -------------------------------------------------------------------------------

    def _read_back(
        self,
        object_type: str,
        updates: Sequence[sdk.RecordUpdate],
        positions: Sequence[int],
        save: Callable[[], _Saved],
    ) -> _Saved:
        """``save()`` (one write call, or a Bulk job, of ``updates`` at ``positions``), with its
        records read before and after it where ``read_back_writes`` asks: the watched fields
        (``_watched_fields``) a record's save changed besides those written are the org's
        automation's (a record-triggered flow, an Apex trigger), run as the user whose save fired
        it: the record's LastModifiedById and stamps are those of our save, nothing else tells
        them from a person's. They are taken as ours only where the record, read right after,
        was last saved by the integration user, stamped no later than Salesforce's answer to
        our write (its ``Date``): a save after ours by anyone else (another LastModifiedById, a
        site or portal user's too) or later claims nothing, and a person's change before it is
        in both reads, so it stays theirs. Only a person's save between the read before and our
        save (one round trip) would pass for the automation's."""
        fields = self._watched_fields(object_type)
        if not fields:
            return save()
        ids = list(dict.fromkeys(updates[p].record_id for p in positions if not _bad_id(updates[p])))
        before = self._saved_state(object_type, ids, fields)  # refused here: nothing is saved
        saved = save()
        answered: datetime | None = getattr(self._answered, "at", None)
        try:
            after = self._saved_state(object_type, ids, fields)
        except ConnectorError as error:
            # The save's answers go to the engine whatever: its automation's fields are then
            # read next as the person's, as without read_back_writes (a false no, never a lost one).
            log.warning(
                "salesforce.write_not_read_back",
                connector=self.name,
                object=object_type,
                records=len(ids),
                reason=error.rule.reason,
            )
            return saved
        answers = saved if isinstance(saved, dict) else dict(zip(positions, saved, strict=True))
        for position, result in answers.items():
            if result.ok:
                self._learn_save(object_type, updates[position], before, after, fields, answered)
        return saved

    def _watched_fields(self, object_type: str) -> tuple[str, ...]:
        """The fields read back around a write of ``object_type``: those its reads in this
        process asked for, less the id, the change stamp and text (an address, a name, a note:
        no flag an automation sets, and nothing to keep beside the ledger's snapshots). Empty
        where ``read_back_writes`` is off, or nothing of the object was read yet."""
        if not self.config.read_back_writes:
            return ()
        known = self._describes.get(object_type, {})
        if "LastModifiedById" not in known:
            return ()
        return tuple(
            name
            for name in self._read_fields.get(object_type, ())
            if name not in ("Id", "SystemModstamp") and name in known and known[name].type not in _TEXT_TYPES
        )

    def _saved_state(
        self, object_type: str, ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, Mapping[str, Any]]:
        """The records ``ids`` as they stand: the watched ``fields``, SystemModstamp and who saved
        them last, by canonical id. One query per 200 ids (the query goes in the URL)."""
        wanted = ", ".join(dict.fromkeys(["Id", "SystemModstamp", "LastModifiedById", *fields]))
        found: dict[str, Mapping[str, Any]] = {}
        for start in range(0, len(ids), _CONFIRM_CHUNK):
            chunk = list(ids[start : start + _CONFIRM_CHUNK])
            query = format_soql(f"SELECT {wanted} FROM {object_type} WHERE Id IN {{}}", chunk)
            answer = self._call(f"read back {object_type}", lambda q=query: self.sf.query(q))
            found.update({_canonical_id(str(row["Id"])): row for row in answer["records"]})
        return found

    def _learn_save(
        self,
        object_type: str,
        update: sdk.RecordUpdate,
        before: Mapping[str, Mapping[str, Any]],
        after: Mapping[str, Mapping[str, Any]],
        fields: Sequence[str],
        answered: datetime | None,
    ) -> None:
        """What our save of ``update`` changed besides its own fields, kept for ``as_read_back``
        where the record was last saved by us, no later than ``answered`` (``_read_back``);
        nothing where it was not. Stamps are whole seconds: an earlier save in the same second
        as ours is told apart by what the read before showed, not by its stamp."""
        record_id = _canonical_id(update.record_id)
        then, now = before.get(record_id), after.get(record_id)
        user = self.sf.user_id
        ours = (
            then is not None
            and now is not None
            and user is not None
            and _canonical_id(str(now.get("LastModifiedById") or "")) == _canonical_id(user)
            and (answered is None or parse_sf_datetime(str(now["SystemModstamp"])) <= answered)
        )
        effects = (
            {
                name: now[name]
                for name in fields
                if name not in update.fields and name in now and now[name] != then.get(name)
            }
            if ours and then is not None and now is not None
            else {}
        )
        self._save_effects.keep((object_type, record_id), update.fields, effects)
        if effects:
            # Field names only: the values are the person's consents.
            log.info(
                "salesforce.automation_in_our_save",
                connector=self.name,
                object=object_type,
                record=record_id,
                fields=sorted(effects),
            )

    def _collection_calls(
        self,
        positions: Sequence[int],
        send: Callable[[list[int]], list[sdk.WriteResult]],
        retries: int | None = None,
    ) -> Iterator[dict[int, sdk.WriteResult]]:
        """sObject Collections calls of at most 200 records, each call's answers yielded as it
        returns. Locked rows (UNABLE_TO_LOCK_ROW) are sent again in a later pass, ``retries``
        times (``lock_retries``); a call's other answers are not held back for them. What still
        fails is reported."""
        yield from sdk.write_in_passes(
            positions,
            send,
            size=COLLECTION_LIMIT,
            retries=self.config.lock_retries if retries is None else retries,
            max_wait=self.config.max_rate_limit_wait,
        )

    def _save_chunk(
        self, object_type: str, updates: Sequence[sdk.RecordUpdate], chunk: Sequence[int]
    ) -> list[sdk.WriteResult]:
        body = {
            "allOrNone": False,
            "records": [
                {"attributes": {"type": object_type}, "id": updates[i].record_id, **updates[i].fields}
                for i in chunk
            ],
        }
        saved = self._call(
            f"composite/sobjects {object_type}",
            lambda: self.sf.restful("composite/sobjects", method="PATCH", json=body, headers=_WRITE_HEADERS),
        )
        # Results come in input order; failed entries carry no id.
        return [_save_result(updates[i].record_id, outcome) for i, outcome in zip(chunk, saved, strict=True)]

    def _delete_chunk(
        self, updates: Sequence[sdk.RecordUpdate], chunk: Sequence[int]
    ) -> list[sdk.WriteResult]:
        # Ids were checked to be plain 15/18-character ids: none can smuggle a comma into the list.
        params = {"ids": ",".join(updates[i].record_id for i in chunk), "allOrNone": "false"}
        deleted = self._call(
            "composite/sobjects delete",
            lambda: self.sf.restful("composite/sobjects", params=params, method="DELETE"),
        )
        return [
            _delete_result(updates[i].record_id, outcome) for i, outcome in zip(chunk, deleted, strict=True)
        ]

    def _write_bulk(
        self, object_type: str, updates: Sequence[sdk.RecordUpdate], positions: Sequence[int]
    ) -> dict[int, sdk.WriteResult]:
        """Bulk API 2.0 ingest: one job, one CSV upload, close, poll, read the results; answers
        the job's records together, when it ends."""
        chosen = [updates[i] for i in positions]
        columns = sorted({name for u in chosen for name in u.fields})
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["Id", *columns])
        for item in chosen:
            writer.writerow([item.record_id, *(_csv_cell(item.fields, name) for name in columns)])
        job = self._create_job(object_type)
        job_id = str(job["id"])
        job_path = f"jobs/ingest/{job_id}"
        with self._settling:
            self._driving.add(job_id)
        try:
            return self._drive_bulk(job_id, job_path, buffer.getvalue(), positions, chosen)
        finally:
            with self._settling:
                self._driving.discard(job_id)

    def _drive_bulk(
        self,
        job_id: str,
        job_path: str,
        data: str,
        positions: Sequence[int],
        chosen: Sequence[sdk.RecordUpdate],
    ) -> dict[int, sdk.WriteResult]:
        """Uploads to the job, closes it, waits for its end and answers its records. The job is
        in the journal from before it is closed until it is seen to end: a process killed in
        between (while it polls) leaves it there, and the next write settles it first."""
        # A job takes one upload and one close. When the answer to either is lost (a timeout, a
        # dropped connection) after Salesforce took it, the retry is refused with
        # InvalidJobState: the step was done (this job is ours alone, made just now), so the job
        # goes on. Failing the run here would leave a job that applies the records unanswered.
        try:
            self._job_step(
                "bulk upload",
                lambda: self.sf._call_salesforce(  # restful() would JSON-encode the CSV
                    "PUT",
                    f"{self.sf.base_url}{job_path}/batches",
                    data=data.encode("utf-8"),
                    headers={"Content-Type": "text/csv"},
                ),
            )
            # On disk before the close: once closed, the job applies its records whether or
            # not this process lives to see its answer.
            self._journal.add(job_id)
            self._job_step(
                "bulk close",
                lambda: self.sf.restful(job_path, method="PATCH", json={"state": "UploadComplete"}),
            )
        except BaseException:
            # Not uploaded or not closed (a limit reached, the service down, the session
            # refused throughout): the job would stay open, holding records Salesforce processes
            # only once it is closed, and nobody would ask for their answers. This run stops (its
            # rows stay pending, sent again next run); the job is aborted, with one call even
            # when the run's API budget is spent. Aborted, it is done with; else (the close may
            # have got through) the next write looks at it first.
            if self._abort_job(job_path):
                # Left noted if this fails: the next write finds it Aborted and forgets it.
                with contextlib.suppress(ConnectorError):
                    self._journal.discard([job_id])
            raise
        info = self._finished_job(job_id, job_path)
        # Ended: nothing more of it can be applied, and what it saved is answered below (a
        # crash before those answers are committed sends them again, harmlessly).
        self._journal.discard([job_id])
        # Both result files, whatever the job's state: only a record in successfulResults is
        # written. Even a JobComplete job may leave records out of both ("Results are not
        # recorded for batches that exceed the daily batch allocation", Bulk API 2.0 Get Job
        # Successful/Failed Record Results). That is one GET per job more than the failures
        # alone. unprocessedrecords is not asked: it lists what a Failed or Aborted job did not
        # get to, which is in neither file and answered as not written all the same.
        failures = _by_canonical_id(self._bulk_results(job_path, "failedResults"))
        saved = _by_canonical_id(self._bulk_results(job_path, "successfulResults"))
        completed = info["state"] == "JobComplete"
        job_error = info.get("errorMessage") or info["state"]
        answers: dict[int, sdk.WriteResult] = {}
        missing: list[str] = []
        for position, item in zip(positions, chosen, strict=True):
            record_id = _canonical_id(item.record_id)
            error = failures.get(record_id)
            if error is not None:
                answers[position] = _refused(item.record_id, error.split(":", 1)[0], error)
            elif record_id in saved:
                answers[position] = sdk.WriteResult(item.record_id, True)
            elif completed:
                # Not known to be written: answered retryable, the outbox sends it again.
                missing.append(item.record_id)
                answers[position] = sdk.WriteResult(item.record_id, False, *_RESULT_MISSING, True)
            else:
                # A job that failed or was aborted half-way: what it saved is answered above.
                answers[position] = sdk.WriteResult(item.record_id, False, "BULK_JOB_FAILED", job_error, True)
        self._check_bulk_counts(job_id, info, len(saved), len(failures), missing)
        return answers

    def _check_bulk_counts(
        self, job_id: str, info: Mapping[str, Any], saved: int, failed: int, missing: Sequence[str]
    ) -> None:
        """A warning (ids and counts only) when the job's numberRecordsProcessed and
        numberRecordsFailed disagree with its result files, or records are in neither."""
        processed = info.get("numberRecordsProcessed")
        said_failed = info.get("numberRecordsFailed")
        if not missing and processed in (None, saved + failed) and said_failed in (None, failed):
            return
        log.warning(
            "salesforce.bulk_results_incomplete",
            connector=self.name,
            job=job_id,
            state=info.get("state"),
            records_processed=processed,
            records_failed=said_failed,
            successful_rows=saved,
            failed_rows=failed,
            missing=len(missing),
            missing_ids=list(missing[:_LOGGED_IDS]),
        )

    def _create_job(self, object_type: str) -> dict[str, Any]:
        """Creates the ingest job. When an attempt's answer was lost (a timeout, a dropped
        connection), Salesforce may have made the job all the same: the next attempt first looks
        for it (Get All Jobs) and takes it up, so that no job is left open (an open job is never
        processed and is not closed by anyone) and the records are uploaded once, to one job.
        Only a retry after a lost answer lists the jobs."""
        spec = {"object": object_type, "operation": "update", "contentType": "CSV", "lineEnding": "LF"}
        # Salesforce's clock before the first attempt, to the second (its Date header): a job made
        # by that attempt was created at or after it.
        started = self._server_time
        unanswered = False

        def create() -> Any:
            nonlocal unanswered
            if unanswered and started is not None and self.sf.user_id is not None:
                found = self._jobs_left_open(spec, started)
                if len(found) == 1:
                    log.warning("salesforce.bulk_job_taken_up", connector=self.name, job=found[0]["id"])
                    return found[0]
                if found:
                    # Ours and another's (another application on this integration user, made
                    # in the same second): which is ours is not known, and taking up or
                    # aborting another's job would break its upload. A new job; ours stays open
                    # until Salesforce removes it.
                    log.warning(
                        "salesforce.bulk_job_left_open",
                        connector=self.name,
                        jobs=[str(job["id"]) for job in found],
                    )
            try:
                return self.sf.restful("jobs/ingest", method="POST", json=spec)
            except requests.RequestException:
                unanswered = True  # Salesforce may have made the job
                raise

        with self._bulk_create:
            job: dict[str, Any] = self._call(f"bulk create {object_type}", create)
            self._bulk_jobs.add(str(job["id"]))
        return job

    def _jobs_left_open(self, spec: Mapping[str, str], since: datetime) -> list[dict[str, Any]]:
        """Open Bulk API 2.0 jobs like ``spec``, made by this integration user at or after
        ``since`` (Salesforce's clock before the first attempt) and not answered to this
        process: those an attempt whose answer was lost made (or, rarely, another application
        on the same user in the same second). Oldest first. Get All Jobs answers up to 1,000
        jobs a page, in no set order."""
        user = self.sf.user_id
        found: list[dict[str, Any]] = []
        page = self.sf.restful("jobs/ingest", params={"jobType": "V2Ingest"})
        while True:
            for job in page.get("records") or []:
                if (
                    job.get("state") == "Open"
                    and str(job.get("id")) not in self._bulk_jobs
                    and all(job.get(key) == value for key, value in spec.items())
                    and job.get("createdById") == user
                    and parse_sf_datetime(str(job.get("createdDate"))) >= since
                ):
                    found.append(job)
            locator = page.get("nextRecordsUrl")
            if page.get("done", True) or not locator:
                break
            page = self.sf._call_salesforce("GET", self.sf.base_url.split("/services/")[0] + locator).json()
        return sorted(found, key=lambda job: (parse_sf_datetime(str(job["createdDate"])), str(job["id"])))

    def _abort_job(self, job_path: str) -> bool:
        """One attempt to abort a job the run cannot go on with (Bulk API 2.0 "Close or Abort a
        Job": PATCH state Aborted, while the job is Open or UploadComplete). Best effort: the
        run stops with its own error, whatever this call answers. True when it was aborted."""
        try:
            self.sf.restful(job_path, method="PATCH", json={"state": "Aborted"})
        except (SalesforceError, requests.RequestException, ConnectorError) as error:
            log.warning(
                "salesforce.bulk_job_left_open", connector=self.name, job=job_path, error=type(error).__name__
            )
            return False
        return True

    def _settle_left_jobs(self) -> None:
        """Before anything is written: the Bulk API 2.0 jobs an earlier run closed and never saw
        end (the process killed while it polled, or its polls failed) are still running or
        queued, and would apply their older values after this run's newer ones (a withdrawal
        overwritten by the grant such a job holds). Each is aborted (what it saved stays saved;
        the engine still holds its records unanswered and sends them again) and forgotten once
        it has ended; one that cannot be stopped stops this run before it writes (its rows stay
        pending for the next). Nothing in the journal (the normal case): no call."""
        with self._settling:
            left = sorted(self._journal.names() - self._driving)
            if not left:
                return
            ended: list[str] = []
            running: list[str] = []
            for job_id in left:
                if not _RECORD_ID.match(job_id):
                    ended.append(job_id)  # not a job id this connector wrote: nothing to ask
                    continue
                state = self._left_job_state(job_id)
                if state not in _JOB_ENDED:
                    self._abort_job(f"jobs/ingest/{job_id}")
                    state = self._left_job_state(job_id)
                    log.warning(
                        "salesforce.bulk_job_left_aborted", connector=self.name, job=job_id, state=state
                    )
                (ended if state in _JOB_ENDED else running).append(job_id)
            self._journal.discard(ended)
        if running:
            raise ConnectorError(
                f"Bulk API job(s) {', '.join(running)} closed by an earlier run are still running and "
                "could not be aborted: nothing is written until they end (their older values would "
                "overwrite this run's)",
                ErrorRule(Action.RETRY, Fault.TRANSIENT, "earlier bulk job unfinished"),
            )

    def _left_job_state(self, job_id: str) -> str | None:
        """A journal job's state; None when Salesforce no longer has it (jobs are deleted seven
        days after they end), which is as ended."""
        try:
            info = self._call("bulk poll", lambda: self.sf.restful(f"jobs/ingest/{job_id}"))
        except ConnectorError as error:
            if error.rule.status == 404 or error.rule.code == "NOT_FOUND":
                return None
            raise
        return str(info.get("state"))

    def _job_step(self, describe: str, operation: Any) -> None:
        """One step of an ingest job (upload, close) whose repeat Salesforce refuses with
        InvalidJobState once the step is done: refused so after an attempt whose answer was lost,
        the step is taken as done."""
        unanswered = False

        def noted() -> Any:
            nonlocal unanswered
            try:
                return operation()
            except requests.RequestException:
                unanswered = True  # Salesforce may have taken it
                raise

        try:
            self._call(describe, noted)
        except ConnectorError as error:
            if error.rule.code != "INVALIDJOBSTATE" or not unanswered:
                raise

    def _finished_job(self, job_id: str, job_path: str) -> dict[str, Any]:
        """The job's final state. A job still queued or running when ``bulk_timeout`` is up is
        aborted (Bulk API 2.0 aborts an UploadComplete or InProgress job; what it saved stays
        saved): left running, it would apply its values whenever Salesforce gets to it, after
        the next run has written newer ones to the same records (a withdrawal overwritten by
        the grant this job still holds). Answered by what it saved; the rest is sent again.
        Only where the abort is refused (the job ended meanwhile, or the call failed) and the
        job is still not done does the run stop, as before."""
        try:
            return self._wait_for_job(job_id, job_path)
        except ConnectorError as slow:
            if slow.rule.reason != _SLOW_JOB:
                raise
            self._abort_job(job_path)
            try:
                info: dict[str, Any] = self._call("bulk poll", lambda: self.sf.restful(job_path))
            except ConnectorError:
                raise slow from None
            if info.get("state") not in ("JobComplete", "Failed", "Aborted"):
                raise
            log.warning("salesforce.bulk_job_aborted_slow", connector=self.name, job=job_id)
            return info

    def _wait_for_job(self, job_id: str, job_path: str) -> dict[str, Any]:
        """Polls the job from a short first wait, doubling up to ``bulk_poll_interval``: a job of
        a few thousand rows is done in well under a second, a large one is not polled often."""
        deadline = time.monotonic() + self.config.bulk_timeout
        wait = min(self.config.bulk_poll_first, self.config.bulk_poll_interval)
        while True:
            info = self._call("bulk poll", lambda: self.sf.restful(job_path))
            if info["state"] in ("JobComplete", "Failed", "Aborted"):
                return info
            if time.monotonic() > deadline:
                raise ConnectorError(
                    f"bulk job {job_id} still {info['state']} after {self.config.bulk_timeout}s",
                    ErrorRule(Action.RETRY, Fault.TRANSIENT, _SLOW_JOB),
                )
            time.sleep(wait)
            wait = min(wait * 2, self.config.bulk_poll_interval)

    def _bulk_results(self, job_path: str, which: str) -> dict[str, str]:
        """A job's successful or failed records: id -> ``sf__Error`` (empty for successes)."""
        text = self._call(
            f"bulk {which}",
            lambda: self.sf._call_salesforce("GET", f"{self.sf.base_url}{job_path}/{which}/").text,
        )
        return {
            row.get("sf__Id") or row.get("Id", ""): row.get("sf__Error", "")
            for row in csv.DictReader(io.StringIO(text))
        }

    def close(self) -> None:
        self.session.close()


# -- helpers -----------------------------------------------------------------------------------


def _by_object(updates: Sequence[sdk.RecordUpdate]) -> tuple[dict[str, list[int]], list[int]]:
    """The positions of the updates by object, and of the deletes (any objects)."""
    by_object: dict[str, list[int]] = {}
    deletes: list[int] = []
    for position, item in enumerate(updates):
        if item.action is sdk.WriteAction.DELETE:
            deletes.append(position)
        else:
            by_object.setdefault(item.object_type, []).append(position)
    return by_object, deletes


def _check_api_name(name: str) -> None:
    if not _API_NAME.match(name):
        raise ConnectorError(
            f"{name!r} is not a Salesforce API name", ErrorRule(Action.FAIL, Fault.CONFIG, "bad object name")
        )


def _record(object_type: str, raw: Mapping[str, Any], added: Sequence[str] = ()) -> sdk.CrmRecord:
    record_id = str(raw["Id"])
    modstamp = parse_sf_datetime(str(raw["SystemModstamp"]))
    fields = {k: v for k, v in raw.items() if k not in ("attributes", *DELETION_FIELDS, *added)}
    created = raw.get(CREATION_FIELD)
    created_at = parse_sf_datetime(created) if isinstance(created, str) and created else None
    if raw.get("IsDeleted") is True:
        # In the recycle bin: SystemModstamp is the deletion; MasterRecordId names the survivor
        # when it was merged away. queryAll answers a recycled row with its last values (they
        # stay until the bin is emptied), in the same page as the live rows: handed on, at no
        # extra call, so that an opt-out ticked just before the deletion (or the merge) is not
        # lost with the record when no read came in between. The engine takes only a no from a
        # deleted record's values, never its other values as the person's current state.
        survivor, survivor_object = raw.get("MasterRecordId") or None, None
        if survivor is None and raw.get("IsConverted") is True and raw.get("ConvertedContactId"):
            # A lead converted, then deleted (converted leads cleared out): it went into its
            # contact all the same, and its no goes with it.
            survivor, survivor_object = raw["ConvertedContactId"], "Contact"
    elif raw.get("IsConverted") is True:
        # A lead converted: Salesforce keeps it, queryable and read-only (every write is refused
        # with CANNOT_UPDATE_CONVERTED_LEAD), and the person lives on in the contact it was
        # converted into (ConvertedContactId). Gone into that contact, as a merge's duplicate
        # into its survivor: nothing more is pushed to it but an erasure's delete or anonymise
        # (it keeps the person's data), and a no ticked on it reaches the contact's person even
        # where the contact holds another address (Salesforce copies neither Email Opt Out nor
        # Do Not Call to an existing contact it converts into). Its last values come along, so
        # that a no ticked on the lead just before the conversion is kept.
        survivor = raw.get("ConvertedContactId") or None
        survivor_object = "Contact" if survivor else None
    else:
        return sdk.CrmRecord(object_type, record_id, modstamp, fields, created_at=created_at)
    return sdk.CrmRecord(
        object_type,
        record_id,
        modstamp,
        fields,
        deleted=True,
        merged_into=survivor,
        merged_into_object=survivor_object,
        created_at=created_at,
    )


def _save_result(record_id: str, outcome: Mapping[str, Any]) -> sdk.WriteResult:
    if outcome.get("success"):
        return sdk.WriteResult(record_id, True)
    errors = outcome.get("errors") or [{}]
    code = str(errors[0].get("statusCode") or "UNKNOWN")
    return _refused(record_id, code, "; ".join(str(e.get("message", "")) for e in errors))


def _refused(record_id: str, code: str, message: str) -> sdk.WriteResult:
    """A record's write refused. ENTITY_IS_DELETED (a record in the recycle bin: a user deleted
    it, or merged it away) and INVALID_CROSS_REFERENCE_KEY (no record under the id: purged from
    the bin) say gone, until ``_gone_confirmed`` asks: Salesforce words a lookup to a deleted or
    unknown record the same ways."""
    gone = code in _GONE_CODES
    if code == DUPLICATES:
        # Salesforce's words are the rule's alert text ("Use one of these records?"): ops reading
        # the dead letter are told what refused it and what to do.
        message = f"{message} ({DUPLICATE_REASON})"
    return sdk.WriteResult(record_id, False, code, message, not gone and _retryable(code, message), gone=gone)


def _transient_row(result: sdk.WriteResult) -> bool:
    """A Bulk job's record refused in its ``sf__Error`` with a transient error (``_retryable``: a
    lock, UNKNOWN_EXCEPTION), to be sent again in the run. Not a record the job did not get to
    (BULK_JOB_FAILED: the job failed or was aborted) or left out of its result files
    (BULK_RESULT_MISSING: it may be saved): those wait for the next run."""
    return (
        not result.ok
        and result.retryable
        and not result.gone
        and result.error_code not in ("BULK_JOB_FAILED", _RESULT_MISSING[0])
    )


def _converted_left_pending(result: sdk.WriteResult) -> sdk.WriteResult:
    """A write a converted lead refused, as the engine is answered it: retryable (the row stays
    pending, and the read that sees the conversion supersedes it), where the passes saw it not
    retryable (never sent again in this run)."""
    if result.ok or result.error_code != CONVERTED_LEAD:
        return result
    return dataclasses.replace(result, retryable=True, message=f"{result.message} ({CONVERTED_REASON})")


def _delete_result(record_id: str, outcome: Mapping[str, Any]) -> sdk.WriteResult:
    errors = outcome.get("errors") or []
    if not outcome.get("success") and errors and errors[0].get("statusCode") == "ENTITY_IS_DELETED":
        # Already in the recycle bin (a user, or this delete sent again after a lost answer):
        # the record is gone, which is what was asked.
        return sdk.WriteResult(record_id, True, message="already deleted")
    return _save_result(record_id, outcome)


def _bad_id(update: sdk.RecordUpdate) -> bool:
    return not _RECORD_ID.match(update.record_id)


def _malformed_id(record_id: str) -> sdk.WriteResult:
    return sdk.WriteResult(record_id, False, "MALFORMED_ID", "not a Salesforce record id", False)


# sObject Get Updated: how far back its window may start (it answers for 30 days at most), and
# the codes that say it does not serve an object at all (beside 403 and 404).
_REPLICATION_DAYS = timedelta(days=29)
_MINUTE = timedelta(minutes=1)
# A hold is asked about over the look-back window before it up to this after it: a transaction
# still open there shows as its start (Get Updated drops the seconds of both ends).
_HOLD_PROBE = timedelta(minutes=2)
# A transaction open longer than this before a read's bound is warned of (``_covered_until``).
_LONG_OPEN = timedelta(hours=1)
# (connector, object, reason) whose Get Updated refusal was warned of in this process.
_REPLICATION_WARNED: set[tuple[str, str, str]] = set()
_REPLICATION_WARNED_LOCK = threading.Lock()
_NOT_REPLICATED = frozenset(
    {"INVALID_TYPE", "NOT_FOUND", "INSUFFICIENT_ACCESS", "API_DISABLED_FOR_ORG", "FUNCTIONALITY_NOT_ENABLED"}
)


@dataclasses.dataclass(frozen=True, slots=True)
class _Unreplicated:
    """Get Updated's refusal of an object or a window (``code``); ``permanent``: of the object."""

    code: str
    permanent: bool


def _replication_time(moment: datetime) -> str:
    """A Get Updated window end: ISO 8601 in UTC, whole seconds (it drops them itself)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


@dataclasses.dataclass(frozen=True, slots=True)
class _Hold:
    """The start of a transaction Get Updated said was open (latestDateCovered), kept in the
    cursor's token apart from the read's position: once it commits, what it wrote is read from
    the look-back window before it (``read_changes``). A cursor without one is a plain position."""

    moment: datetime

    @classmethod
    def of(cls, cursor: sdk.Cursor, name: str, *, warn: bool = False) -> _Hold | None:
        """The hold ``cursor`` keeps; None for none, or a token that is not one (warned of where
        ``warn``: the cursor is then resumed as a plain position, the look-back behind it)."""
        if cursor.token is None:
            return None
        try:
            data = orjson.loads(cursor.token)
            if not isinstance(data, dict) or data.get("v") != 1:
                raise ValueError("not a Salesforce read position")
            return cls(parse_sf_datetime(str(data["hold"])))
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as error:
            if warn:
                log.warning("salesforce.cursor_token_unreadable", connector=name, error=str(error)[:200])
            return None

    @staticmethod
    def cursor(position: sdk.Cursor, hold: datetime | None, settled: datetime | None = None) -> sdk.Cursor:
        """The cursor the engine keeps: ``position``, and the hold in its token, read_until at
        the hold; without a hold a plain position, read_until ``settled`` (where Get Updated
        said every change stamped before it was visible to the read), else without one, so that
        the next read starts the whole look-back window behind it."""
        if hold is None:
            return sdk.Cursor(position.modstamp, position.record_id, None, settled)
        token = orjson.dumps({"v": 1, "hold": hold.astimezone(UTC).isoformat()}).decode()
        return sdk.Cursor(position.modstamp, position.record_id, token, hold)


@dataclasses.dataclass(slots=True)
class _UnderWay:
    """The calls one connector (its readers and writing threads) has started and not yet seen
    answered: counted against ``budget.per_run`` with those answered (``_call``)."""

    calls: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


# Field types never read back around a write (``_watched_fields``).
_TEXT_TYPES = frozenset(
    {"string", "textarea", "email", "phone", "url", "encryptedstring", "address", "location", "base64"}
)
_Saved = TypeVar("_Saved", list[sdk.WriteResult], dict[int, sdk.WriteResult])


class _SaveEffects:
    """What the org's automation set in consentsync's own saves (``_read_back``), by (object,
    canonical record id): the fields that save wrote and the others it changed. In the process
    only: a run reads its records before it writes them, and the engine takes a write's read-back
    view (``as_read_back``) as it commits the write's answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_record: dict[tuple[str, str], tuple[bytes, dict[str, Any]]] = {}

    def keep(self, key: tuple[str, str], written: Mapping[str, Any], effects: Mapping[str, Any]) -> None:
        with self._lock:
            if effects:
                self._by_record[key] = (_written_key(written), dict(effects))
            else:
                self._by_record.pop(key, None)

    def of(self, key: tuple[str, str], written: Mapping[str, Any]) -> dict[str, Any]:
        """The fields the save of exactly ``written`` to ``key`` set besides them."""
        with self._lock:
            kept = self._by_record.get(key)
        return dict(kept[1]) if kept is not None and kept[0] == _written_key(written) else {}


def _written_key(written: Mapping[str, Any]) -> bytes:
    return orjson.dumps(dict(written), option=orjson.OPT_SORT_KEYS)


@dataclasses.dataclass(slots=True)
class _Reads:
    """The reads of the run in progress, shared by the readers (``_check_budget_floor``): the
    readers made since its last read began, how many reads the run set up, and the objects
    read since."""

    readers: int = 0
    expected: int = 1
    objects: set[str] = dataclasses.field(default_factory=set)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_GONE_CODES = frozenset({"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY"})
_CONFIRM_CHUNK = 200
# A JobComplete job's record in neither result file: code and message of its (retryable) answer.
_RESULT_MISSING = ("BULK_RESULT_MISSING", "in neither result file of the bulk job: not known to be written")
_LOGGED_IDS = 50  # record ids a warning names at most

# Describe answers by org, integration user, API version and object (``_describe_key``), kept
# ``_DESCRIBE_SECONDS`` in this process and in the connector's state directory (beside its
# journal), so that the runs of one process each (``consentsync sync`` from cron, by hand) do not
# pay the describes every run: a ``budget.per_run`` between a run without describes and one with
# them stopped every such run before its writes, for good (black-box finding F6).
_DESCRIBE_SECONDS = 3600.0
_DESCRIBED_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True, slots=True)
class _Described:
    """One describe answer: the object's fields, whether Get Updated serves it, when asked
    (``time.monotonic``, and ``time.time`` for the copy on disk)."""

    fields: Mapping[str, sdk.FieldInfo]
    replicateable: bool
    asked: float
    asked_at: float = 0.0


_DESCRIBED: dict[tuple[str, ...], _Described] = {}
# The describe files this process could not write, warned of once each.
_UNKEPT: set[Path] = set()


def _described(key: tuple[str, ...], folder: Path | None = None) -> _Described | None:
    """The describe kept under ``key``, where it is less than ``_DESCRIBE_SECONDS`` old: this
    process's, else the one on disk in ``folder`` (an earlier process's)."""
    with _DESCRIBED_LOCK:
        kept = _DESCRIBED.get(key)
        if kept is not None and time.monotonic() - kept.asked >= _DESCRIBE_SECONDS:
            del _DESCRIBED[key]
            kept = None
        if kept is None and folder is not None:
            kept = _read_described(_describe_file(folder, key), key[-1])
            if kept is not None:
                _DESCRIBED[key] = kept
        return kept


def _keep_described(key: tuple[str, ...], kept: _Described, folder: Path | None = None) -> None:
    with _DESCRIBED_LOCK:
        _DESCRIBED[key] = kept
        if folder is not None:
            _rewrite_described(_describe_file(folder, key), key[-1], kept)


def _forget_kept(key: tuple[str, ...], folder: Path | None) -> None:
    """The describe of ``key`` asked again by the next run, in this process or another."""
    with _DESCRIBED_LOCK:
        _DESCRIBED.pop(key, None)
        if folder is not None:
            _rewrite_described(_describe_file(folder, key), key[-1], None)


def _describe_file(folder: Path, key: tuple[str, ...]) -> Path:
    """One file per org, integration user and API version (the key less its object)."""
    digest = hashlib.sha256("\0".join(key[:-1]).encode("utf-8")).hexdigest()[:16]
    return folder / f"salesforce-describe-{digest}.json"


def _load_described(path: Path) -> dict[str, Any]:
    """The file's objects; nothing where it is missing or unreadable (a cache: described anew)."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    objects = data.get("objects") if isinstance(data, dict) else None
    return objects if isinstance(objects, dict) else {}


def _read_described(path: Path, object_type: str) -> _Described | None:
    entry = _load_described(path).get(object_type)
    try:
        age = time.time() - float(entry["asked_at"])  # type: ignore[index]
        if not 0 <= age < _DESCRIBE_SECONDS:
            return None
        fields = {
            str(name): sdk.FieldInfo(
                name=str(name),
                type=str(kind),
                updateable=bool(updateable),
                nillable=bool(nillable),
                picklist_values=tuple(str(value) for value in picklist),
            )
            for name, kind, updateable, nillable, picklist in entry["fields"]  # type: ignore[index]
        }
        return _Described(fields, bool(entry["replicateable"]), time.monotonic() - age, time.time() - age)  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None


def _rewrite_described(path: Path, object_type: str, kept: _Described | None) -> None:
    """The file with ``object_type``'s answer replaced (or dropped, ``kept`` None), and the
    answers older than the hour dropped. Written whole under a hidden name and renamed over
    it. A file that cannot be written is warned of once: the answer is kept in the process."""
    objects = {
        name: entry
        for name, entry in _load_described(path).items()
        if name != object_type
        and isinstance(entry, dict)
        and isinstance(entry.get("asked_at"), int | float)
        and 0 <= time.time() - entry["asked_at"] < _DESCRIBE_SECONDS
    }
    if kept is not None:
        objects[object_type] = {
            "asked_at": kept.asked_at,
            "replicateable": kept.replicateable,
            "fields": [
                [info.name, info.type, info.updateable, info.nillable, list(info.picklist_values)]
                for info in kept.fields.values()
            ],
        }
    elif not path.exists():
        return
    hidden = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        if not objects:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        hidden.write_bytes(orjson.dumps({"objects": objects}))
        os.replace(hidden, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            hidden.unlink()
        if path not in _UNKEPT:
            _UNKEPT.add(path)
            log.warning(
                "salesforce.describes_not_kept",
                path=str(path),
                reason=f"{type(error).__name__}: {error.strerror or error}",
            )


def _by_canonical_id(results: Mapping[str, str]) -> dict[str, str]:
    """Bulk API results by ``_canonical_id``: the files say 18 characters, an update may hold 15,
    or 18 whose case a case-insensitive system changed."""
    return {_canonical_id(record_id): said for record_id, said in results.items() if record_id}


_ID_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


# Each character of an id as the bit the checksum gives it: 1 for an upper-case ASCII letter.
_UPPER_BIT = str.maketrans({chr(code): "1" if "A" <= chr(code) <= "Z" else "0" for code in range(128)})


def _id_checksum(id15: str) -> str:
    """The three characters an 18-character id appends to its 15: for each five characters,
    the one of ``_ID_SUFFIX`` whose index has a bit set for each upper-case letter (the first
    character the lowest bit)."""
    # As a string of bits, each five read backwards: a tenth of the cost of summing the bits
    # one by one (it runs for every id of every write answer).
    ascii_id = id15 if id15.isascii() else "".join(c if c.isascii() else "_" for c in id15)
    bits = ascii_id.translate(_UPPER_BIT)
    return "".join(_ID_SUFFIX[int(bits[start : start + 5][::-1], 2)] for start in (0, 5, 10))


def _canonical_id(record_id: str) -> str:
    """A record id in its 18-character form as Salesforce writes it: a 15-character id with its
    checksum; an 18-character id with the case of its first 15 restored from its checksum
    (which names every upper-case letter), so that one upper- or lower-cased on its way (the
    form is made to survive case-insensitive systems) is the same id. What is no such id
    (a checksum naming a digit as upper-case) is taken by its first 15 characters as they are."""
    if len(record_id) == 18 and record_id[15:] == _id_checksum(record_id[:15]):
        return record_id  # as Salesforce wrote it: what _restored_id would return
    return _restored_id(record_id)


def _restored_id(record_id: str) -> str:
    """``_canonical_id`` of an id whose case changed on its way, or of a 15-character id."""
    if len(record_id) == 18 and record_id.isascii() and record_id.isalnum():
        suffix = record_id[15:].upper()
        if all(char in _ID_SUFFIX for char in suffix):
            restored = []
            for position, char in enumerate(record_id[:15]):
                upper = _ID_SUFFIX.index(suffix[position // 5]) >> (position % 5) & 1
                if char.isdigit() and upper:
                    break
                restored.append(char.upper() if upper else char.lower())
            else:
                return "".join(restored) + suffix
    if len(record_id) in (15, 18):
        return record_id[:15] + _id_checksum(record_id[:15])
    return record_id


def _retryable(code: str, message: str = "") -> bool:
    # A per-record error came in a 200 answer: only codes the table says are transient retry,
    # and a lock met inside the save (CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY: a trigger's, a
    # flow's or a roll-up's DML on another record found it locked), which Salesforce words with
    # UNABLE_TO_LOCK_ROW in the message; it clears as the lock does.
    if ERRORS.classify(400, code).action in (Action.RETRY, Action.RATE_LIMITED):
        return True
    return "UNABLE_TO_LOCK_ROW" in message


def _error_code(error: SalesforceError) -> str | None:
    content: Any = error.content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("errorCode") or "") or None
    return None


def _classified(error: SalesforceError) -> ConnectorError:
    content: Any = error.content
    code = None
    if isinstance(content, list) and content and isinstance(content[0], dict):
        code = content[0].get("errorCode")
        message = content[0].get("message", "")
    else:
        message = str(content)[:300]
    rule = ERRORS.classify(error.status, code)
    text = f"{error.resource_name}: {error.status} {code or ''} {message}".strip()
    if code == "REQUEST_LIMIT_EXCEEDED" and _CONCURRENCY_LIMIT.search(message):
        # The same code for the org's cap on concurrent long-running requests
        # ("ConcurrentPerOrgLongTxn Limit exceeded."): it clears in seconds, as the other
        # requests end. Retried with backoff (sdk.call); still refused after the last attempt,
        # the run stops cleanly (RATE_LIMITED).
        return ConnectorError(text, CONCURRENCY_LIMITED)
    if code == "REQUEST_LIMIT_EXCEEDED":
        # The org's rolling 24-hour allocation ("TotalRequests Limit exceeded."): no use retrying.
        return sdk.BudgetExhausted(text, rule)
    return ConnectorError(text, rule)


def _csv_cell(fields: Mapping[str, Any], name: str) -> str:
    if name not in fields:
        return ""  # an empty cell leaves the field unchanged
    value = fields[name]
    if value is None or value == "":
        # Bulk API 2.0's null. An empty string is null in Salesforce (the Collections path sets
        # the field empty), but an empty cell would leave the field as it is: a cleared name
        # (the anonymise action) would be answered saved and still hold the person's data.
        return "#N/A"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


#: What each call counts as in the run's usage (``ApiUsage.per_endpoint``), most specific first.
_ENDPOINTS = (
    ("/oauth2/token", "token"),
    ("/composite/sobjects", "composite"),
    ("/jobs/ingest", "bulk"),
    ("/query/?q=", "query"),
    ("/queryAll/?q=", "query"),
    ("/query/", "queryMore"),
    ("/describe", "describe"),
    ("/limits", "limits"),
    ("/updated/", "updated"),
    ("/sobjects/", "sobject"),
)


__all__ = ["ERRORS", "SalesforceConnector", "parse_sf_datetime"]


def _http_date(value: str | None) -> datetime | None:
    """An HTTP Date header (RFC 9110: "Sun, 06 Dec 2026 04:00:00 GMT") as an aware time."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError, IndexError):
        return None
