"""Calling a CRM within its limits: tenacity, driven by the connector's error table.

Transient errors are retried with exponential backoff and jitter, honouring ``Retry-After``; an
expired session is refreshed once and the call repeated; a rate limit is waited out when the wait
is short and otherwise stops the run cleanly (the next run resumes from the last cursor); data and
configuration errors are not retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from consentsync.sdk.errors import Action, BudgetExhausted, ConnectorError, scrub

T = TypeVar("T")
log = structlog.get_logger("consentsync.sdk")

_RETRIED = frozenset({Action.RETRY, Action.REFRESH_TOKEN, Action.RATE_LIMITED})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_wait: float = 0.5
    max_backoff: float = 20.0
    # Longest Retry-After we sit out; beyond it the run stops cleanly and the next one resumes.
    max_rate_limit_wait: float = 60.0


def call(
    operation: Callable[[], T],
    *,
    policy: RetryPolicy,
    refresh_session: Callable[[], None] | None = None,
    describe: str = "call",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Runs ``operation`` under ``policy``; raises the last ``ConnectorError`` when it gives up."""
    backoff = wait_random_exponential(multiplier=policy.initial_wait, max=policy.max_backoff)

    def should_retry(error: BaseException) -> bool:
        if not isinstance(error, ConnectorError) or error.action not in _RETRIED:
            return False
        if isinstance(error, BudgetExhausted):
            return False  # waiting will not help within this run
        # A long rate limit is not waited out: the error reaches the engine, which stops the run
        # cleanly; the next run resumes from the last committed cursor.
        return not (
            error.action is Action.RATE_LIMITED and (error.retry_after or 0) > policy.max_rate_limit_wait
        )

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, ConnectorError) and error.retry_after is not None:
            return min(error.retry_after, policy.max_rate_limit_wait)
        if isinstance(error, ConnectorError) and error.action is Action.REFRESH_TOKEN:
            return 0.0
        return backoff(state)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        assert isinstance(error, ConnectorError)
        log.warning(
            "crm.retry",
            # A connector's describe may name the URL it calls, userinfo and query included.
            call=scrub(describe),
            attempt=state.attempt_number,
            action=error.action.value,
            reason=error.rule.reason,
            status=error.rule.status,
            code=error.rule.code,
        )
        if error.action is Action.REFRESH_TOKEN and refresh_session is not None:
            refresh_session()

    retrying = Retrying(
        retry=retry_if_exception(should_retry),
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    return retrying(operation)
