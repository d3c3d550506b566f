"""Errors sorted by what to do next, and the table that sorts them.

Each connector declares an ``ErrorTable``: (HTTP status, vendor error code) -> action. The
engine acts on the action, never on vendor details: retry with backoff, refresh the token and
retry, wait for the rate limit (or stop the run cleanly when the budget is spent), skip the
record (quarantine it with the reason) or fail the run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


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


def scrub(text: str) -> str:
    """Removes tokens, passwords and session ids from text meant for logs and run reports."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return text
