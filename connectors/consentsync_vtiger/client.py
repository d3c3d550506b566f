"""A small client for Vtiger's webservice API (``webservice.php``): challenge / login with the
access key, one method per call, errors classified by the connector's table.

Vtiger answers its own errors with HTTP 200 and ``{"success": false, "error": {"code",
"message"}}``; only PHP failures and proxies answer with other statuses. Every answer received is
counted in :attr:`usage` per operation.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from consentsync import sdk
from consentsync.sdk import Action, BudgetExhausted, ConnectorError, ErrorRule, Fault
from consentsync.sdk.error_codes import coded_rules
from consentsync_vtiger.settings import VtigerSettings

# What this client calls the answer of Vtiger's Duplicate Prevention (7.2+): its beforesave
# handler (modules/Vtiger/handlers/CheckDuplicateHandler.php) throws a DuplicateException, which
# webservice.php answers as WebServiceException($e->getCode(), $e->getMessage()): code 0 (the
# exception's default) and the translated LBL_DUPLICATES_DETECTED ("Duplicates detected"). Every
# other exception a save throws is answered INTERNAL_SERVER_ERROR, and every WebServiceException
# carries a named code: code 0 is Duplicate Prevention's alone.
DUPLICATES_DETECTED = "DUPLICATES_DETECTED"

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
                # Duplicate Prevention (7.2+) refused the save: see DUPLICATES_DETECTED below.
                DUPLICATES_DETECTED: "refused by Duplicate Prevention",
                # Vtiger Cloud's REST API names it so (unconfirmed for webservice.php there).
                "DUPLICATE_RECORD_FOUND": "refused by Duplicate Prevention",
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

# Vtiger Cloud's usage headers (help.vtiger.com, "Vtiger CRM API Limits"), sent on every answer:
# the minute window's limit, calls left and reset, and the rolling day's allowance and calls
# left. Its 429s document no Retry-After.
_MINUTE_REMAINING = "X-FloodControl-Remaining"
_MINUTE_RESET = "X-FloodControl-Reset"
_DAILY_LIMIT = "X-RateLimit-DailyLimit"
_DAILY_REMAINING = "X-RateLimit-Remaining"
# A reset up to a day's seconds is a count of seconds; a larger one an epoch time (the page's
# example, 15349121212, is one: the page does not say which). An epoch beyond this is taken as
# milliseconds.
_DAY_SECONDS = 86_400.0
_EPOCH_MILLISECONDS = 1e12
# The minute window: the longest a 429 of flood control can need when its reset is unreadable.
_MINUTE_WINDOW = 60.0
# The least a 429 waits: a reset already past by the answer's clock (the clocks a second apart)
# would otherwise be retried at once, and refused again.
_LEAST_WAIT = 1.0


class VtigerRefusal(ConnectorError):
    """Vtiger's own refusal of one call: HTTP 200 with ``{"success": false, "error": {...}}``
    (the code is in ``rule.code``). Not a network failure, an HTTP error or an answer that is not
    Vtiger's JSON: the server took the call and answered it."""

    def __init__(self, message: str, rule: ErrorRule, *, operation: str, answer: str) -> None:
        super().__init__(message, rule)
        self.operation = operation
        # Vtiger's message as answered (at most 300 characters).
        self.answer = answer


class VtigerClient:
    """One logged-in session with one install, shared by the threads of the connector."""

    def __init__(self, config: VtigerSettings, usage: sdk.ApiUsage | None = None) -> None:
        self.endpoint = f"{config.url.rstrip('/')}/{config.webservice_path.lstrip('/')}"
        self.username = config.username
        self._access_key = config.access_key
        self.usage = usage or sdk.ApiUsage()
        self.flood = FloodControl()
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
            describe = f"{operation}: HTTP {status} {code or ''}".strip()
            if status == 429:
                raise _limited(describe, rule, response)
            raise ConnectorError(describe, rule, retry_after=sdk.retry_after(response))
        if not isinstance(body, dict) or "success" not in body:
            # PHP notices printed before the JSON, or a proxy's page: likely to pass.
            raise ConnectorError(
                f"{operation}: the answer is not Vtiger's JSON ({response.headers.get('Content-Type')})",
                ErrorRule(Action.RETRY, Fault.TRANSIENT, "answer not JSON", status),
            )
        if body.get("success"):
            return body.get("result")
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        raw = error.get("code")
        # Code 0 is Duplicate Prevention's (see DUPLICATES_DETECTED); no code at all, UNKNOWN.
        code = DUPLICATES_DETECTED if raw in (0, "0") else str(raw or "UNKNOWN")
        message = str(error.get("message") or "")[:300]
        raise VtigerRefusal(
            f"{operation}: {code}: {message}", ERRORS.classify(200, code), operation=operation, answer=message
        )

    def _count(self, response: requests.Response) -> None:
        request = response.request
        body = request.body
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        sent = body if request.method == "POST" else urlsplit(request.url or "").query
        fields = parse_qs(sent or "")
        self.usage.count((fields.get("operation") or ["other"])[0])
        headers = response.headers
        daily, left = headers.get(_DAILY_LIMIT), headers.get(_DAILY_REMAINING)
        if daily and left and daily.isdigit() and left.isdigit() and int(daily) > 0:
            # Vtiger Cloud's own count of the rolling day: the budget's daily reserve holds
            # against it (DailyBudget). The open-source edition sends none.
            self.usage.said(max(0, int(daily) - int(left)), int(daily))
        self.flood.observe(response)

    def close(self) -> None:
        self.http.close()


class FloodControl:
    """Vtiger Cloud's minute window as its answers tell it: once ``X-FloodControl-Remaining``
    says 0, the next call waits for ``X-FloodControl-Reset`` (sent sooner, it is refused 429 and
    counts against the window again). Shared by the threads of the connector."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # When the spent window resets (time.monotonic()), or None while calls are left.
        self._spent_until: float | None = None

    def observe(self, response: requests.Response) -> None:
        remaining = (response.headers.get(_MINUTE_REMAINING) or "").strip()
        if not remaining.isdigit():
            return
        reset = reset_in(response)
        with self._lock:
            # The latest answer tells (calls answered side by side may come back out of order:
            # at worst one call waits for a window already reset, or is refused 429 and waits).
            if int(remaining) > 0 or reset is None:
                self._spent_until = None
            else:
                self._spent_until = time.monotonic() + reset

    def pace(self, max_wait: float, sleep: Callable[[float], None] = time.sleep) -> None:
        """Waits until the spent window resets; a wait longer than ``max_wait`` (the connector's
        ``max_rate_limit_wait``) is not sat out: the run stops cleanly, as on a long 429."""
        with self._lock:
            until = self._spent_until
        if until is None:
            return
        wait = until - time.monotonic()
        if wait > max_wait:
            raise ConnectorError(
                f"Vtiger's minute limit is spent for {wait:.0f}s more (X-FloodControl-Reset), "
                f"longer than max_rate_limit_wait ({max_wait:g}s): the rest waits for the next run",
                ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "minute limit spent", 429),
                retry_after=wait,
            )
        if wait > 0:
            sleep(wait)
        with self._lock:
            if self._spent_until == until:
                self._spent_until = None


def reset_in(response: requests.Response) -> float | None:
    """Seconds until ``X-FloodControl-Reset`` (0 when already past), or None when absent or
    unreadable. Read as seconds up to a day, else as an epoch time (milliseconds beyond 1e12)
    counted from the answer's own ``Date`` (Vtiger's clock: this machine's may be off by more
    than the wait); an epoch more than a day ahead is no minute window's and is not trusted."""
    text = (response.headers.get(_MINUTE_RESET) or "").strip()
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    if value <= _DAY_SECONDS:
        return value
    if value >= _EPOCH_MILLISECONDS:
        value /= 1000
    seconds = value - _answer_time(response)
    if seconds > _DAY_SECONDS:
        return None
    return max(0.0, seconds)


def _answer_time(response: requests.Response) -> float:
    """The answer's ``Date`` as an epoch time (whole seconds, so never later than the server's
    clock: a wait counted from it is never short), else this machine's clock."""
    stamp = response.headers.get("Date")
    if stamp:
        try:
            parsed = parsedate_to_datetime(stamp)
        except (TypeError, ValueError, IndexError):
            pass
        else:
            # HTTP dates are GMT; one without a zone is read as such, not as local time.
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return time.time()


def _limited(describe: str, rule: ErrorRule, response: requests.Response) -> ConnectorError:
    """A 429 with the wait it asks for: ``Retry-After`` where sent; else, the day's allowance
    spent (``X-RateLimit-Remaining`` 0), a clean stop at once (no wait within the run helps);
    else until ``X-FloodControl-Reset`` (a minute window where unreadable). The sdk sits out a
    wait up to ``max_rate_limit_wait`` and stops the run cleanly beyond it."""
    asked = sdk.retry_after(response)
    if asked is not None:
        return ConnectorError(describe, rule, retry_after=asked)
    headers = response.headers
    if (headers.get(_DAILY_REMAINING) or "").strip() == "0":
        return BudgetExhausted(
            f"{describe}: Vtiger's daily API allowance is spent (X-RateLimit-Remaining: 0); "
            "the rest waits for the next run",
            ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "daily API limit reached", 429, rule.code),
        )
    if headers.get(_MINUTE_RESET) is None and headers.get(_MINUTE_REMAINING) is None:
        # No usage headers (a proxy, an install without flood control): the sdk's backoff.
        return ConnectorError(describe, rule)
    reset = reset_in(response)
    wait = _MINUTE_WINDOW if reset is None else reset
    return ConnectorError(describe, rule, retry_after=max(_LEAST_WAIT, wait))


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _error_code(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code") or "") or None
    return None
