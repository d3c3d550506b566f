"""Salesforce, through simple-salesforce and requests.

Reads with SOQL on a (SystemModstamp, Id) cursor, lazily page by page; writes with sObject
Collections (200 records a call, allOrNone false, per-record results) and with Bulk API 2.0
above a threshold; keeps an API budget per run and per day from ``Sforce-Limit-Info``.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import requests
import requests.adapters
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError
from simple_salesforce.format import format_soql

from consentsync.sdk import (
    Action,
    BudgetExhausted,
    Connector,
    ConnectorError,
    CrmRecord,
    Cursor,
    ErrorRule,
    ErrorTable,
    Fault,
    FieldInfo,
    RecordUpdate,
    RetryPolicy,
    WriteResult,
    call,
)
from consentsync_salesforce.auth import TokenGrant, request_token
from consentsync_salesforce.settings import SalesforceSettings

ERRORS = ErrorTable(
    [
        ErrorRule(Action.REFRESH_TOKEN, Fault.TRANSIENT, "session expired", 401, "INVALID_SESSION_ID"),
        ErrorRule(
            Action.RATE_LIMITED, Fault.LIMIT, "API request limit reached", 403, "REQUEST_LIMIT_EXCEEDED"
        ),
        ErrorRule(Action.RETRY, Fault.TRANSIENT, "record locked", code="UNABLE_TO_LOCK_ROW"),
        ErrorRule(Action.RETRY, Fault.TRANSIENT, "query locator expired", code="INVALID_QUERY_LOCATOR"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "query rejected", code="MALFORMED_QUERY"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "field does not exist or is not visible", code="INVALID_FIELD"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "object does not exist or is not visible", code="INVALID_TYPE"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "insufficient access", code="INSUFFICIENT_ACCESS_OR_READONLY"),
        ErrorRule(Action.SKIP, Fault.DATA, "record not found", 404, "NOT_FOUND"),
        ErrorRule(Action.SKIP, Fault.DATA, "record deleted", code="ENTITY_IS_DELETED"),
        ErrorRule(Action.SKIP, Fault.DATA, "field value rejected", code="FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        ErrorRule(
            Action.SKIP, Fault.DATA, "invalid picklist value", code="INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
        ),
    ]
)

COLLECTION_LIMIT = 200  # sObject Collections: records a call
_LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(__c)?$")


def parse_sf_datetime(value: str) -> datetime:
    """``2026-11-23T03:21:24.000+0000`` (and the ISO spellings) to an aware UTC datetime."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    elif re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    return datetime.fromisoformat(text).astimezone(UTC)


class SalesforceConnector(Connector):
    vendor = "salesforce"
    can_read_by_id = True

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        self.config = SalesforceSettings.model_validate(dict(settings))
        self.policy = RetryPolicy(
            max_attempts=self.config.max_attempts, max_rate_limit_wait=self.config.max_rate_limit_wait
        )
        self.session = requests.Session()
        # REQUESTS_CA_BUNDLE would override Session.verify: the configured trust wins instead.
        self.session.trust_env = False
        self.session.verify = self.config.ca_bundle or True
        if self.config.proxy:
            self.session.proxies = {"https": self.config.proxy}
        self.session.hooks["response"].append(self._count)
        # simple-salesforce passes no timeout: without one, a server that stops answering would
        # hold the run (and its connector lock) for ever.
        adapter = _TimeoutAdapter(self.config.timeout)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self._sf: Salesforce | None = None
        self._describes: dict[str, dict[str, FieldInfo]] = {}

    # -- session -------------------------------------------------------------------------------

    @property
    def sf(self) -> Salesforce:
        if self._sf is None:
            self._login()
        assert self._sf is not None
        return self._sf

    def _login(self) -> None:
        grant: TokenGrant = request_token(self.session, self.config, timeout=self.config.timeout)
        self._sf = Salesforce(
            instance_url=grant.instance_url,
            session_id=grant.access_token,
            session=self.session,
            version=self.config.api_version,
        )

    def _count(self, response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        usage = self.usage
        usage.calls += 1
        endpoint = _endpoint_kind(response.request.url or "")
        usage.per_endpoint[endpoint] = usage.per_endpoint.get(endpoint, 0) + 1
        match = _LIMIT_INFO.search(response.headers.get("Sforce-Limit-Info", ""))
        if match:
            usage.used, usage.limit = int(match.group(1)), int(match.group(2))

    def _guard(self) -> None:
        """Stops the run before it spends the budget: per run, and the org's daily allocation
        less the configured reserve (other integrations share it)."""
        usage, budget = self.usage, self.config.budget
        if budget.per_run is not None and usage.calls >= budget.per_run:
            raise BudgetExhausted(
                f"{self.name}: the run's API budget of {budget.per_run} calls is spent",
                ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "run budget spent"),
            )
        if usage.used is not None and usage.limit:
            floor = usage.limit * (1 - budget.daily_reserve_percent / 100)
            if usage.used >= floor:
                raise BudgetExhausted(
                    f"{self.name}: {usage.used}/{usage.limit} daily API calls used; "
                    f"{budget.daily_reserve_percent}% is kept in reserve",
                    ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "daily budget near its end"),
                )

    def _call(self, describe: str, operation: Any) -> Any:
        def attempt() -> Any:
            self._guard()
            try:
                return operation()
            except SalesforceError as error:
                raise _classified(error) from None
            except requests.RequestException as error:
                raise ConnectorError(
                    f"{describe}: {type(error).__name__}: {error}", ERRORS.classify(None, None)
                ) from None

        return call(attempt, policy=self.policy, refresh_session=self._forget_session, describe=describe)

    def _forget_session(self) -> None:
        # The next attempt logs in again inside the retry, so a failing login is retried too.
        self._sf = None

    # -- the four operations -------------------------------------------------------------------

    def check(self) -> None:
        self._call("limits", lambda: self.sf.restful("limits"))

    def describe(self, object_type: str) -> dict[str, FieldInfo]:
        if object_type not in self._describes:
            _check_api_name(object_type)
            result = self._call(
                f"describe {object_type}", lambda: self.sf.restful(f"sobjects/{object_type}/describe")
            )
            self._describes[object_type] = {
                item["name"]: FieldInfo(
                    name=item["name"],
                    type=item.get("type", ""),
                    updateable=bool(item.get("updateable")),
                    nillable=bool(item.get("nillable", True)),
                    picklist_values=tuple(
                        p["value"] for p in item.get("picklistValues") or [] if p.get("active", True)
                    ),
                )
                for item in result["fields"]
            }
        return self._describes[object_type]

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        query = self.build_query(object_type, fields, since, until)
        headers = {"Sforce-Query-Options": f"batchSize={self.config.query_batch_size}"}
        yield from self._query_all(object_type, query, headers, count=True)

    def read_records(
        self, object_type: str, fields: Sequence[str], record_ids: Sequence[str]
    ) -> Iterator[CrmRecord]:
        wanted = self._selected_fields(object_type, fields)
        for start in range(0, len(record_ids), COLLECTION_LIMIT):
            ids = list(record_ids[start : start + COLLECTION_LIMIT])
            query = format_soql(f"SELECT {', '.join(wanted)} FROM {object_type} WHERE Id IN {{}}", ids)
            yield from self._query_all(object_type, query, {})

    def _query_all(
        self, object_type: str, query: str, headers: dict[str, str], *, count: bool = False
    ) -> Iterator[CrmRecord]:
        page = self._call(f"query {object_type}", lambda: self.sf.query(query, headers=headers))
        if count:
            self.expected_records = page.get("totalSize")
        while True:
            for raw in page["records"]:
                yield _record(object_type, raw)
            if page.get("done", True) or not page.get("nextRecordsUrl"):
                return
            locator = page["nextRecordsUrl"]
            page = self._call(
                f"queryMore {object_type}",
                lambda locator=locator: self.sf.query_more(locator, identifier_is_url=True, headers=headers),
            )

    def _selected_fields(self, object_type: str, fields: Sequence[str]) -> list[str]:
        known = self.describe(object_type)
        wanted = list(dict.fromkeys(["Id", "SystemModstamp", *fields]))
        missing = [name for name in wanted if name not in known]
        if missing:
            raise ConnectorError(
                f"{object_type} has no field(s) {', '.join(missing)}"
                " (or the integration user cannot see them)",
                ErrorRule(Action.FAIL, Fault.CONFIG, "mapped field missing"),
            )
        return wanted

    def build_query(self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime) -> str:
        """SOQL for the changes after ``since`` up to ``until``, in cursor order. Object and field
        names are checked against describe(); every value goes through format_soql."""
        wanted = self._selected_fields(object_type, fields)
        where = format_soql("SystemModstamp <= {}", until.astimezone(UTC))
        if since.modstamp is not None:
            after = format_soql(
                "(SystemModstamp > {stamp} OR (SystemModstamp = {stamp} AND Id > {id}))",
                stamp=since.modstamp.astimezone(UTC),
                id=since.record_id or "",
            )
            where = f"{after} AND {where}"
        return f"SELECT {', '.join(wanted)} FROM {object_type} WHERE {where} ORDER BY SystemModstamp, Id"

    def write(self, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        if not updates:
            return []
        results: dict[int, WriteResult] = {}
        by_object: dict[str, list[int]] = {}
        for index, item in enumerate(updates):
            by_object.setdefault(item.object_type, []).append(index)
        for object_type, indexes in by_object.items():
            _check_api_name(object_type)
            chosen = [updates[i] for i in indexes]
            if len(chosen) >= self.config.bulk_threshold:
                answers = self._write_bulk(object_type, chosen)
            else:
                answers = self._write_collections(object_type, chosen)
            results.update(zip(indexes, answers, strict=True))
        return [results[i] for i in range(len(updates))]

    # -- writing -------------------------------------------------------------------------------

    def _write_collections(self, object_type: str, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        answers: dict[int, WriteResult] = {}
        pending = list(range(len(updates)))
        # Locked rows are retried within the write a few times; what still fails is reported.
        for attempt in range(self.config.lock_retries + 1):
            if attempt:
                time.sleep(min(2.0, 0.25 * 2**attempt))
            retry: list[int] = []
            for start in range(0, len(pending), COLLECTION_LIMIT):
                chunk = pending[start : start + COLLECTION_LIMIT]
                body = {
                    "allOrNone": False,
                    "records": [
                        {"attributes": {"type": object_type}, "id": updates[i].record_id, **updates[i].fields}
                        for i in chunk
                    ],
                }
                saved = self._call(
                    f"composite/sobjects {object_type}",
                    lambda body=body: self.sf.restful("composite/sobjects", method="PATCH", json=body),
                )
                # Results come in input order; failed entries carry no id.
                for index, outcome in zip(chunk, saved, strict=True):
                    result = _save_result(updates[index].record_id, outcome)
                    answers[index] = result
                    if result.retryable:
                        retry.append(index)
            pending = retry
            if not pending:
                break
        return [answers[i] for i in range(len(updates))]

    def _write_bulk(self, object_type: str, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        """Bulk API 2.0 ingest: one job, one CSV upload, close, poll, read the failures."""
        columns = sorted({name for u in updates for name in u.fields})
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["Id", *columns])
        for item in updates:
            writer.writerow([item.record_id, *(_csv_cell(item.fields, name) for name in columns)])
        job = self._call(
            f"bulk create {object_type}",
            lambda: self.sf.restful(
                "jobs/ingest",
                method="POST",
                json={"object": object_type, "operation": "update", "contentType": "CSV", "lineEnding": "LF"},
            ),
        )
        job_path = f"jobs/ingest/{job['id']}"
        self._call(
            "bulk upload",
            lambda: self.sf._call_salesforce(  # restful() would JSON-encode the CSV
                "PUT",
                f"{self.sf.base_url}{job_path}/batches",
                data=buffer.getvalue().encode("utf-8"),
                headers={"Content-Type": "text/csv"},
            ),
        )
        self._call(
            "bulk close", lambda: self.sf.restful(job_path, method="PATCH", json={"state": "UploadComplete"})
        )
        deadline = time.monotonic() + self.config.bulk_timeout
        while True:
            info = self._call("bulk poll", lambda: self.sf.restful(job_path))
            if info["state"] in ("JobComplete", "Failed", "Aborted"):
                break
            if time.monotonic() > deadline:
                raise ConnectorError(
                    f"bulk job {job['id']} still {info['state']} after {self.config.bulk_timeout}s",
                    ErrorRule(Action.RETRY, Fault.TRANSIENT, "bulk job slow"),
                )
            time.sleep(self.config.bulk_poll_interval)
        if info["state"] != "JobComplete":
            message = info.get("errorMessage") or info["state"]
            return [WriteResult(u.record_id, False, "BULK_JOB_FAILED", message, True) for u in updates]
        failed_csv = self._call(
            "bulk failed results",
            lambda: self.sf._call_salesforce("GET", f"{self.sf.base_url}{job_path}/failedResults/").text,
        )
        failures = {
            row["sf__Id"] or row.get("Id", ""): row["sf__Error"]
            for row in csv.DictReader(io.StringIO(failed_csv))
        }
        results = []
        for item in updates:
            error = failures.get(item.record_id)
            if error is None:
                results.append(WriteResult(item.record_id, True))
            else:
                code = error.split(":", 1)[0]
                results.append(WriteResult(item.record_id, False, code, error, _retryable(code)))
        return results

    def close(self) -> None:
        self.session.close()


# -- helpers -----------------------------------------------------------------------------------


class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, *args, **kwargs)


def _check_api_name(name: str) -> None:
    if not _API_NAME.match(name):
        raise ConnectorError(
            f"{name!r} is not a Salesforce API name", ErrorRule(Action.FAIL, Fault.CONFIG, "bad object name")
        )


def _record(object_type: str, raw: Mapping[str, Any]) -> CrmRecord:
    fields = {k: v for k, v in raw.items() if k != "attributes"}
    return CrmRecord(object_type, str(raw["Id"]), parse_sf_datetime(str(raw["SystemModstamp"])), fields)


def _save_result(record_id: str, outcome: Mapping[str, Any]) -> WriteResult:
    if outcome.get("success"):
        return WriteResult(record_id, True)
    errors = outcome.get("errors") or [{}]
    code = str(errors[0].get("statusCode") or "UNKNOWN")
    message = "; ".join(str(e.get("message", "")) for e in errors)
    return WriteResult(record_id, False, code, message, _retryable(code))


def _retryable(code: str) -> bool:
    # A per-record error came in a 200 answer: only codes the table says are transient retry.
    return ERRORS.classify(400, code).action in (Action.RETRY, Action.RATE_LIMITED)


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
    if code == "REQUEST_LIMIT_EXCEEDED":
        # The org's rolling 24-hour allocation (or its concurrency cap): no use retrying now.
        return BudgetExhausted(text, rule)
    return ConnectorError(text, rule)


def _csv_cell(fields: Mapping[str, Any], name: str) -> str:
    if name not in fields:
        return ""  # an empty cell leaves the field unchanged
    value = fields[name]
    if value is None:
        return "#N/A"  # Bulk API 2.0's null
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _endpoint_kind(url: str) -> str:
    for marker, kind in (
        ("/oauth2/token", "token"),
        ("/composite/sobjects", "composite"),
        ("/jobs/ingest", "bulk"),
        ("/query/?q=", "query"),
        ("/queryAll/?q=", "query"),
        ("/query/", "queryMore"),
        ("/describe", "describe"),
        ("/limits", "limits"),
        ("/sobjects/", "sobject"),
    ):
        if marker in url:
            return kind
    return "other"


__all__ = ["ERRORS", "SalesforceConnector", "parse_sf_datetime"]
