"""A small client for Vtiger's webservice API (``webservice.php``): challenge / login with the
access key, one method per call, errors classified by the connector's table.

Vtiger answers its own errors with HTTP 200 and ``{"success": false, "error": {"code",
"message"}}``; only PHP failures and proxies answer with other statuses. Every answer received is
counted in :attr:`usage` per operation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from consentsync import sdk
from consentsync.sdk import Action, ConnectorError, ErrorRule, Fault
from consentsync.sdk.error_codes import coded_rules
from consentsync_vtiger.settings import VtigerSettings

ERRORS = sdk.ErrorTable(
    [
        *coded_rules(
            refresh_token={
                "INVALID_SESSIONID": "session invalid",
                "SESSION_LEFT_IDLE": "session left idle",
                "SESSION_EXPIRED": "session life span over",
                # A call without a session. The login's own (an inactive user) is the client's
                # to say: see VtigerClient._login.
                "AUTHENTICATION_REQUIRED": "not logged in",
            },
            retry={
                # The challenge token lives 300 s; the login tries again with a fresh one (see
                # VtigerClient._login). Also what an unknown username gets on an install older than
                # 7.x (no token is kept for it): the final message says so.
                "INVALID_AUTH_TOKEN": "login challenge expired",
                "DATABASE_QUERY_ERROR": "database error",
                "INTERNAL_SERVER_ERROR": "internal error",
            },
            fail={
                "ACCESSKEY_UNDEFINED": "the user has no access key",
                "QUERY_SYNTAX_ERROR": "query rejected",
                "ACCESS_DENIED": "permission denied",
                "UNKNOWN_OPERATION": "operation not available",
            },
            skip={
                "RECORD_NOT_FOUND": "record not found",
                "MANDATORY_FIELDS_MISSING": "mandatory field empty",
                "REFERENCE_INVALID": "invalid reference",
                "INVALID_ID_ATTRIBUTE": "id of another module",
            },
        ),
        ErrorRule(
            Action.FAIL,
            Fault.CONFIG,
            "username or access key refused",
            code="INVALID_USER_CREDENTIALS",
            credentials=True,
        ),
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "API limit reached", status=429),
    ]
)

# Logins tried, each with a fresh challenge, before a refused access key (or a challenge refused
# as expired) is taken as the credentials'.
_LOGIN_ATTEMPTS = 3
# What a fresh challenge may cure: ours replaced by another login's (INVALID_USER_CREDENTIALS), or
# expired before the login arrived (INVALID_AUTH_TOKEN).
_FRESH_CHALLENGE = frozenset({"INVALID_USER_CREDENTIALS", "INVALID_AUTH_TOKEN"})
_WRITES = frozenset({"login", "logout", "create", "revise", "update", "delete"})


class VtigerClient:
    """One logged-in session with one install, shared by the threads of the connector."""

    def __init__(self, config: VtigerSettings, usage: sdk.ApiUsage | None = None) -> None:
        self.endpoint = f"{config.url.rstrip('/')}/{config.webservice_path.lstrip('/')}"
        self.username = config.username
        self._access_key = config.access_key
        self.usage = usage or sdk.ApiUsage()
        # The sdk's session: ca_bundle, proxy and a timeout on every call.
        self.http = sdk.http_session(config, on_response=self._count)
        # Shared by the threads that write side by side: one logs in, the others wait for it.
        self._session = sdk.SharedLogin(self._login)

    # -- session --

    def _login(self) -> str:
        """Logs in (a challenge, then the access key hashed with its token); answers the
        session name. Vtiger keeps one challenge per user and a new one replaces it: another
        process or application logging in as the same user between our challenge and our login
        makes Vtiger refuse the right key with INVALID_USER_CREDENTIALS. A challenge lives 300 s:
        one that expired before the login arrived (a stalled process, a slow proxy) is refused as
        INVALID_AUTH_TOKEN. Either way the login is tried again with a fresh challenge; refused
        every time, it is the credentials' (exit 77). A user made inactive in Vtiger is refused
        (AUTHENTICATION_REQUIRED "Given user is inactive") once its key matched: that is the
        credentials' too, at once, never a session to log in to again."""
        for attempt in range(1, _LOGIN_ATTEMPTS + 1):
            token = self._challenge()
            key = hashlib.md5((token + self._access_key).encode()).hexdigest()
            try:
                result = self.request(
                    "login", {"username": self.username, "accessKey": key}, authenticated=False
                )
            except ConnectorError as error:
                code = error.rule.code
                if code in _FRESH_CHALLENGE and attempt < _LOGIN_ATTEMPTS:
                    continue  # our challenge replaced or expired: a fresh one tells
                if code == "AUTHENTICATION_REQUIRED":
                    # vtws_login's only use of it: the key matched and the user's status is not
                    # Active. Not a session to renew: logging in again is refused again.
                    raise ConnectorError(
                        f"login as {self.username!r} refused: the user is inactive in Vtiger "
                        "(AUTHENTICATION_REQUIRED); an administrator must set its status to Active "
                        "(Settings > Users), or configure another user",
                        ErrorRule(Action.FAIL, Fault.CONFIG, "user inactive", code=code, credentials=True),
                    ) from None
                if code == "INVALID_AUTH_TOKEN":
                    raise ConnectorError(
                        f"login as {self.username!r} refused: INVALID_AUTH_TOKEN {_LOGIN_ATTEMPTS} times, "
                        "each with a fresh challenge (no such user on an install that hands unknown "
                        "usernames a challenge: check the username)",
                        # Tried with fresh challenges already: not retried again (exit 77).
                        ErrorRule(
                            Action.FAIL, Fault.CONFIG, "login challenge refused", code=code, credentials=True
                        ),
                    ) from None
                raise
            return str(result["sessionName"])
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _challenge(self) -> str:
        try:
            challenge = self.request("getchallenge", {"username": self.username}, authenticated=False)
        except ConnectorError as error:
            if error.rule.code == "ACCESS_DENIED":
                # 8.2.0's answer for a username it does not know ("username does not exists").
                raise ConnectorError(
                    f"getchallenge for {self.username!r} refused: ACCESS_DENIED (no such user: "
                    "check the username)",
                    # Not ACCESS_DENIED any more: callers read that code as a record or module
                    # the user may not touch.
                    ErrorRule(Action.FAIL, Fault.CONFIG, "no such user", credentials=True),
                ) from None
            raise
        return str(challenge["token"])

    def forget_session(self) -> None:
        self._session.forget()

    # -- calls --

    def request(self, operation: str, params: Mapping[str, Any], *, authenticated: bool = True) -> Any:
        """One call; returns ``result`` or raises a classified ``ConnectorError``."""
        form = {"operation": operation, **{k: _text(v) for k, v in params.items()}}
        if authenticated:
            form["sessionName"] = self._session.get()
        try:
            if operation in _WRITES:
                response = self.http.post(self.endpoint, data=form)
            else:
                response = self.http.get(self.endpoint, params=form)
        except requests.RequestException as error:
            # The text of a requests error can carry the URL, session included: name the kind only.
            raise sdk.network_error(operation, error, sdk.host_of(self.endpoint)) from None
        return self._result(operation, response)

    def _result(self, operation: str, response: requests.Response) -> Any:
        status = response.status_code
        body = sdk.json_or_none(response)
        if status != 200:
            code = _error_code(body)
            rule = ERRORS.classify(status, code)
            if operation == "sync" and status == 500:
                rule = ErrorRule(Action.FAIL, Fault.CONFIG, "operation=sync fails on this install", status)
                raise ConnectorError(
                    "operation=sync answered HTTP 500 (the stock Vtiger 8.2.0 fails it on PHP 8): "
                    "set read_deletions: false",
                    rule,
                )
            raise ConnectorError(
                f"{operation}: HTTP {status} {code or ''}".strip(),
                rule,
                retry_after=sdk.retry_after(response),
            )
        if not isinstance(body, dict) or "success" not in body:
            # PHP notices printed before the JSON, or a proxy's page: likely to pass.
            raise ConnectorError(
                f"{operation}: the answer is not Vtiger's JSON ({response.headers.get('Content-Type')})",
                ErrorRule(Action.RETRY, Fault.TRANSIENT, "answer not JSON", status),
            )
        if body.get("success"):
            return body.get("result")
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        code = str(error.get("code") or "UNKNOWN")
        message = str(error.get("message") or "")[:300]
        raise ConnectorError(f"{operation}: {code}: {message}", ERRORS.classify(200, code))

    def _count(self, response: requests.Response) -> None:
        request = response.request
        body = request.body
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        sent = body if request.method == "POST" else urlsplit(request.url or "").query
        fields = parse_qs(sent or "")
        self.usage.count((fields.get("operation") or ["other"])[0])

    def close(self) -> None:
        self.http.close()


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _error_code(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code") or "") or None
    return None
