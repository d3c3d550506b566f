"""The Acme connector: the four operations, an error table, and calls under the sdk's retry
policy. Copy it, rename Acme, and replace the HTTP calls with your CRM's."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from pydantic import BaseModel, ConfigDict, Field

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

# What to do about each answer: the sdk retries RETRY, REFRESH_TOKEN and short RATE_LIMITED,
# stops the run cleanly on BudgetExhausted, and fails it on FAIL.
ERRORS = ErrorTable(
    [
        ErrorRule(Action.REFRESH_TOKEN, Fault.TRANSIENT, "session expired", 401, "session_expired"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "API key refused", 401, "invalid_api_key"),
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "daily quota spent", 429, "daily_quota_exceeded"),
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "too many requests", 429, "rate_limited"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "request rejected", 400),
    ]
)
FIELDS = {
    "id": FieldInfo("id", "string", False, nillable=False),
    "email": FieldInfo("email", "string", True),
    "name": FieldInfo("name", "string", True),
    "note": FieldInfo("note", "string", True),
    "unsubscribed": FieldInfo("unsubscribed", "boolean", True, nillable=False),
    "updated_at": FieldInfo("updated_at", "datetime", False, nillable=False),
}
BATCH = 50  # updates a call, as Acme documents


class AcmeSettings(BaseModel):
    """The ``settings:`` block; write secrets as ${ENV_VAR} in consentsync.yaml."""

    model_config = ConfigDict(extra="forbid")

    api_url: str
    api_key: str
    ca_bundle: str | None = None
    page_size: int = Field(default=100, ge=1, le=100)
    timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)


class AcmeConnector(Connector):
    vendor = "acme"
    # Acme documents that a change can show in the contact list up to 2 minutes after its
    # updated_at (the list is served from an index refreshed in the background): every read
    # starts that far behind the last record handled. Set it from your CRM's docs and say why;
    # users override it with ``lookback_seconds``.
    lookback = timedelta(minutes=2)
    # Acme documents no way to list deleted contacts and no delete call: ``reads_deletions`` and
    # ``can_delete`` keep their defaults (False). Where your CRM has them, see the SDK docstrings.

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        self.config = AcmeSettings.model_validate(dict(settings))
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE must not override ca_bundle
        self.session.verify = self.config.ca_bundle or True
        self.policy = RetryPolicy(max_attempts=self.config.max_attempts, max_rate_limit_wait=10)
        self._token: str | None = None

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        def attempt() -> Any:
            if self._token is None:
                login = self._send("POST", "/api/v1/session", json={"api_key": self.config.api_key})
                self._token = login["token"]
            return self._send(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)

        def forget_session() -> None:
            self._token = None

        return call(attempt, policy=self.policy, refresh_session=forget_session, describe=f"{method} {path}")

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(
                method, self.config.api_url.rstrip("/") + path, timeout=self.config.timeout, **kwargs
            )
        except requests.RequestException as error:
            raise ConnectorError(f"{path}: {type(error).__name__}", ERRORS.classify(None, None)) from None
        self.usage.calls += 1
        if response.status_code < 300:
            return response.json()
        try:
            code = response.json().get("error")
        except ValueError:
            code = None
        rule = ERRORS.classify(response.status_code, code)
        text = f"{path}: {response.status_code} {code}"
        if code == "daily_quota_exceeded":
            raise BudgetExhausted(text, rule)
        retry_after = response.headers.get("Retry-After")
        raise ConnectorError(text, rule, retry_after=float(retry_after) if retry_after else None)

    # -- the four operations -------------------------------------------------------------------

    def check(self) -> None:
        self._call("GET", "/api/v1/me")

    def describe(self, object_type: str) -> dict[str, FieldInfo]:
        _only_contacts(object_type)
        return dict(FIELDS)

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        _only_contacts(object_type)
        unknown = [f for f in fields if f not in FIELDS]
        if unknown:
            raise ConnectorError(
                f"Acme contacts have no field {', '.join(unknown)}",
                ErrorRule(Action.FAIL, Fault.CONFIG, "mapped field missing"),
            )
        cursor = since
        while True:
            params = {"limit": self.config.page_size, "until": until.astimezone(UTC).isoformat()}
            if cursor.modstamp is not None:
                # Bound as query parameters, never spliced into a query language. A cursor without
                # an id (where a look-back starts) sends since_id "": every id sorts after it, so
                # the contacts stamped at ``since`` itself are read too.
                params |= {"since": cursor.modstamp.isoformat(), "since_id": cursor.record_id or ""}
            page = self._call("GET", "/api/v1/contacts", params=params)
            for raw in page["contacts"]:
                stamp = datetime.fromisoformat(raw["updated_at"].replace("Z", "+00:00")).astimezone(UTC)
                yield CrmRecord(object_type, raw["id"], stamp, raw)
                cursor = Cursor(stamp, raw["id"])
            if not page["has_more"]:
                return

    def write_batches(self, updates: Sequence[RecordUpdate]) -> Iterator[dict[int, WriteResult]]:
        # One call per BATCH updates, its answers yielded as soon as it returns (keyed by position
        # in ``updates``): the engine commits them before asking for the next call, so a run
        # stopped in between loses no acknowledgement. The base class builds ``write`` from this.
        for start in range(0, len(updates), BATCH):
            chunk = updates[start : start + BATCH]
            body = {"updates": [{"id": u.record_id, "fields": dict(u.fields)} for u in chunk]}
            answer = self._call("POST", "/api/v1/contacts/batch", json=body)["results"]
            # Acme answers in input order, one result per update.
            yield {
                start + offset: _result(update, outcome)
                for offset, (update, outcome) in enumerate(zip(chunk, answer, strict=True))
            }

    def close(self) -> None:
        self.session.close()


def _only_contacts(object_type: str) -> None:
    if object_type != "contacts":
        raise ConnectorError(
            f"Acme has contacts, not {object_type!r}", ErrorRule(Action.FAIL, Fault.CONFIG, "unknown object")
        )


def _result(update: RecordUpdate, outcome: Mapping[str, Any]) -> WriteResult:
    error = outcome.get("error")
    return WriteResult(update.record_id, bool(outcome["ok"]), error, error, retryable=error == "locked")
