"""Errors sorted by what to do next, and the table that sorts them.

Each connector declares an ``ErrorTable``: (HTTP status, vendor error code) -> action. The
engine acts on the action, never on vendor details: retry with backoff, refresh the token and
retry, wait for the rate limit (or stop the run cleanly when the budget is spent), skip the
record (quarantine it with the reason) or fail the run.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    RETRY = "retry"
    REFRESH_TOKEN = "refresh_token"
    RATE_LIMITED = "rate_limited"
    SKIP = "skip"
    FAIL = "fail"


class Fault(StrEnum):
    """Whose problem it is, for the operator reading the run report."""

    TRANSIENT = "transient"  # the CRM or the network: it will likely pass
    CONFIG = "config"  # credentials, permissions, mapping: a person must act
    DATA = "data"  # one record's content
    LIMIT = "limit"  # API allocation


@dataclass(frozen=True, slots=True)
class ErrorRule:
    action: Action
    fault: Fault
    reason: str
    status: int | None = None
    code: str | None = None
    # The CRM refused the credentials themselves (a wrong secret, a revoked token, a refused
    # grant): the admin must change them (exit 77), not the mapping or the network.
    credentials: bool = False


class ErrorTable:
    """Most specific rule first: status and code, then code alone, then status alone, then the
    class of the status (5xx retry, 429 rate-limited, 401 refresh, other 4xx fail)."""

    def __init__(self, rules: Iterable[ErrorRule]) -> None:
        self.rules = list(rules)
        self._by_pair = {(r.status, r.code): r for r in self.rules if r.status and r.code}
        self._by_code = {r.code: r for r in self.rules if r.code and r.status is None}
        self._by_status = {r.status: r for r in self.rules if r.status and r.code is None}

    def classify(self, status: int | None, code: str | None) -> ErrorRule:
        for rule in (
            self._by_pair.get((status, code)),
            self._by_code.get(code),
            self._by_status.get(status),
        ):
            if rule is not None:
                return rule
        if status is None:
            return ErrorRule(Action.RETRY, Fault.TRANSIENT, "connection failed", None, code)
        if status == 429:
            return ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "too many requests", status, code)
        if status == 401:
            return ErrorRule(Action.REFRESH_TOKEN, Fault.TRANSIENT, "session expired", status, code)
        if status >= 500 or status == 408:
            return ErrorRule(Action.RETRY, Fault.TRANSIENT, "server error", status, code)
        return ErrorRule(Action.FAIL, Fault.CONFIG, "request refused", status, code)


class ConnectorError(Exception):
    """Raised by connectors; carries the rule that classified it. Messages are scrubbed."""

    def __init__(
        self,
        message: str,
        rule: ErrorRule,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(scrub(message))
        self.rule = rule
        self.retry_after = retry_after

    @property
    def action(self) -> Action:
        return self.rule.action


class BudgetExhausted(ConnectorError):
    """The run's or the day's API budget is (nearly) spent: stop cleanly, resume next run."""


_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=!-]{8,}"),
    re.compile(
        r"(?i)((?:access_token|client_secret|password|refresh_token|session_?id|sessionName)"
        r"[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]+"
    ),
    re.compile(r"00D[A-Za-z0-9]{12,15}![A-Za-z0-9._]{20,}"),  # Salesforce session ids
]


#: Settings keys whose values are secrets (``token_url``, ``app_token_header`` and ``*_file``
#: name where a secret is, not the secret).
_SECRET_KEY = re.compile(r"(?i)(secret|token|password|passwd|access_key|api_key|apikey|credential)")
_NOT_SECRET_KEY = re.compile(r"(?i)(_url|_uri|_header|_file|_scheme|_path)$")
#: A fragment of a secret this long or longer is redacted wherever it appears.
SECRET_FRAGMENT = 8

_known_secrets: set[str] = set()
_known_fragments: set[str] = set()
_known_lock = threading.Lock()


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key)) and not _NOT_SECRET_KEY.search(key)


def register_secret(value: Any) -> None:
    """Remembers a secret of this process (a client secret, a token read from a file): ``scrub``
    redacts it, and every part of it of ``SECRET_FRAGMENT`` characters or more, from any text
    (a CRM that echoes the request, a truncated dump, a log line)."""
    if not isinstance(value, str):
        return
    value = value.strip()
    if len(value) < SECRET_FRAGMENT:
        return
    with _known_lock:
        if value in _known_secrets:
            return
        _known_secrets.add(value)
        n = SECRET_FRAGMENT
        _known_fragments.update(value[i : i + n] for i in range(len(value) - n + 1))


def register_secrets(settings: Mapping[str, Any]) -> None:
    """Registers the values of a connector's settings whose keys name a secret."""
    for key, value in settings.items():
        if isinstance(value, Mapping):
            register_secrets(value)
        elif isinstance(key, str) and is_secret_key(key):
            register_secret(value)


def _redact_known(text: str) -> str:
    n = SECRET_FRAGMENT
    if not _known_fragments or len(text) < n:
        return text
    out: list[str] = []
    start = index = 0
    while index <= len(text) - n:
        if text[index : index + n] not in _known_fragments:
            index += 1
            continue
        end = index + n
        while end < len(text) and text[end - n + 1 : end + 1] in _known_fragments:
            end += 1
        out.append(text[start:index] + "[redacted]")
        start = index = end
    out.append(text[start:])
    return "".join(out)


def scrub(text: str) -> str:
    """Removes tokens, passwords, session ids and every known secret (``register_secret``), whole
    or in part, from text meant for logs and run reports."""
    # The patterns first: a known secret that shares a part with a key name ("sandbox-password"
    # and "password=") would otherwise redact the key and hide the value from its pattern.
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return _redact_known(text)


def network_error(describe: str, error: BaseException, host: str | None = None) -> ConnectorError:
    """A request that got no answer, said as what it is: TLS refused (the CRM's certificate did
    not verify: the admin's to fix, not retried), a timeout, or the host unreachable (retried,
    then exit 69). The exception's own text is left out: it can carry the URL and its query."""
    kinds = {cls.__name__ for cls in type(error).__mro__}
    if host is None:
        from urllib.parse import urlsplit

        url = getattr(getattr(error, "request", None), "url", None)
        host = urlsplit(str(url)).netloc if url else "the CRM"
    if "SSLError" in kinds:
        return ConnectorError(
            f"{describe}: TLS refused: the certificate of {host} did not verify "
            "(set settings.ca_bundle to the CA file that signed it)",
            ErrorRule(Action.FAIL, Fault.CONFIG, "TLS refused"),
        )
    if kinds & {"Timeout", "ReadTimeout", "ConnectTimeout", "TimeoutException"}:
        return ConnectorError(
            f"{describe}: no answer from {host} in time ({type(error).__name__})",
            ErrorRule(Action.RETRY, Fault.TRANSIENT, "timed out"),
        )
    if kinds & {"ConnectionError", "ConnectError"}:
        return ConnectorError(
            f"{describe}: host unreachable: cannot connect to {host} ({type(error).__name__})",
            ErrorRule(Action.RETRY, Fault.TRANSIENT, "host unreachable"),
        )
    return ConnectorError(
        f"{describe}: {type(error).__name__} talking to {host}",
        ErrorRule(Action.RETRY, Fault.TRANSIENT, "connection failed"),
    )
