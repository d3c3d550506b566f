"""The Acme connector: the four operations, an error table, and calls through the sdk's HTTP
client. Copy it, rename Acme, and replace the HTTP calls with your CRM's.

What the sdk gives (``consentsync.sdk``): ``ConnectorSettings`` (settings.py), ``http_session``
(the CA bundle, proxy and timeout of the settings), ``HttpClient`` (every call checked against
the run's budget, its refusals sorted by ``ERRORS`` and retried under the settings' policy,
its messages scrubbed of secrets) and ``response_error``/``json_or_none`` to read a refusal.
What stays yours: URLs, the wire format, which error code an answer carries, the error table.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from consentsync import sdk
from consentsync.sdk import Action, ConnectorError, ErrorRule, Fault
from consentsync_acme.settings import AcmeSettings

# What to do about each answer: the sdk retries RETRY, REFRESH_TOKEN and short RATE_LIMITED,
# stops the run cleanly on BudgetExhausted, and fails it on FAIL.
ERRORS = sdk.ErrorTable(
    [
        ErrorRule(Action.REFRESH_TOKEN, Fault.TRANSIENT, "session expired", 401, "session_expired"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "API key refused", 401, "invalid_api_key"),
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "daily quota spent", 429, "daily_quota_exceeded"),
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "too many requests", 429, "rate_limited"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "request rejected", 400),
    ]
)
FIELDS = {
    "id": sdk.FieldInfo("id", "string", False, nillable=False),
    "email": sdk.FieldInfo("email", "string", True),
    "name": sdk.FieldInfo("name", "string", True),
    "note": sdk.FieldInfo("note", "string", True),
    "unsubscribed": sdk.FieldInfo("unsubscribed", "boolean", True, nillable=False),
    "updated_at": sdk.FieldInfo("updated_at", "datetime", False, nillable=False),
}
BATCH = 50  # updates a call, as Acme documents


class AcmeConnector(sdk.Connector):
    vendor = "acme"
    # The settings model: a typo in consentsync.yaml is reported with its file, line and the
    # accepted keys, never with the value (it may be the API key).
    settings_model = AcmeSettings
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
        # Every call first checks the run's budget (self.config.budget, against self.usage).
        self.api = sdk.HttpClient.for_connector(
            self,
            _classified,
            base_url=self.config.api_url,  # send() takes the paths below it
            on_response=self._count,
            headers=lambda: {"Authorization": f"Bearer {self._session_token()}"},
            refresh_session=self._forget_token,  # on a REFRESH_TOKEN answer (session_expired)
        )
        self._token: str | None = None

    def _count(self, response: requests.Response) -> None:
        # Every answer counts against the budget; the path names the kind for the run report.
        self.usage.count(response.request.path_url.split("?")[0].removeprefix("/api/v1/") or "other")

    def _session_token(self) -> str:
        if self._token is None:
            # Made inside the attempt of the call that needs the token: that call's retries
            # cover the login too (retry=False), and a refused API key fails it (ERRORS).
            login = self.api.send(
                "POST",
                "/api/v1/session",
                describe="login",
                json={"api_key": self.config.api_key},
                authenticated=False,
                retry=False,
            )
            self._token = str(login.json()["token"])
        return self._token

    def _forget_token(self) -> None:
        self._token = None

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.api.send(method, path, describe=f"{method} {path}", **kwargs).json()

    # -- the four operations -------------------------------------------------------------------

    def check(self) -> None:
        self._call("GET", "/api/v1/me")

    def describe(self, object_type: str) -> dict[str, sdk.FieldInfo]:
        _only_contacts(object_type)
        return dict(FIELDS)

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: sdk.Cursor, until: datetime
    ) -> Iterator[sdk.CrmRecord]:
        _only_contacts(object_type)
        sdk.require_fields(fields, FIELDS, "Acme contacts have no field(s)", "(see describe())")
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
                stamp = _acme_time(raw["updated_at"])
                # When Acme created the contact: an erasure's delete reaches a record first read
                # after it only where the CRM held it then (``reports_created``).
                created = _acme_time(raw["created_at"]) if raw.get("created_at") else None
                yield sdk.CrmRecord(object_type, raw["id"], stamp, raw, created_at=created)
                cursor = sdk.Cursor(stamp, raw["id"])
            if not page["has_more"]:
                return

    def write_batches(self, updates: Sequence[sdk.RecordUpdate]) -> Iterator[dict[int, sdk.WriteResult]]:
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
        self.api.close()


def _classified(describe: str, response: requests.Response) -> ConnectorError:
    """A refused answer: Acme's error code is ``{"error": ...}``; a spent daily quota stops the
    run cleanly (the next run resumes) instead of failing it."""
    body = sdk.json_or_none(response)
    code = str(body["error"]) if isinstance(body, dict) and body.get("error") else None
    error = sdk.response_error(describe, response, ERRORS, code, "")
    if code == "daily_quota_exceeded":
        return sdk.BudgetExhausted(str(error), error.rule)
    return error


def _only_contacts(object_type: str) -> None:
    sdk.require_object(object_type, {"contacts"}, f"Acme has contacts, not {object_type!r}")


def _result(update: sdk.RecordUpdate, outcome: Mapping[str, Any]) -> sdk.WriteResult:
    error = outcome.get("error")
    return sdk.WriteResult(update.record_id, bool(outcome["ok"]), error, error, retryable=error == "locked")


def _acme_time(text: str) -> datetime:
    """An Acme timestamp (ISO 8601, UTC, ``Z``) as an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
