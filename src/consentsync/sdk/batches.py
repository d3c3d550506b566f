"""Writing a batch of updates call by call, as the engine wants the answers: each call's answers
handed over as soon as it returns, and the updates the CRM answered as worth another try (a
locked row, a request it did not get to) sent again in a later pass instead of holding back the
rest of their call."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from consentsync.sdk.connector import WriteResult
from consentsync.sdk.errors import Action, ConnectorError, ErrorRule, Fault

__all__ = ["write_in_passes"]


def write_in_passes(
    positions: Sequence[int],
    send: Callable[[list[int]], Sequence[WriteResult]],
    *,
    size: int,
    retries: int,
    sleep: Callable[[float], None] = time.sleep,
    max_wait: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[dict[int, WriteResult]]:
    """Sends ``positions`` (of the caller's updates) in calls of at most ``size``: ``send(chunk)``
    answers one result per position, in order. Yields each call's answers as it returns; a
    ``retryable`` result is kept back and sent again in the next pass, ``retries`` passes at most
    (after a pause of 0.5 s, 1 s, then 2 s), and reported as it is after the last.

    A result that says how long to wait (``retry_after``: a request throttled inside a batch,
    Dataverse's service protection) holds back every later call until that time, the pause
    before the next pass included: sent sooner, it is refused again and counts against the
    limit once more. A wait longer than ``max_wait`` (the connector's ``max_rate_limit_wait``) is
    not sat out: the write stops with a rate-limit error, as a throttled call does, and the
    records still held back stay unanswered (pending) for the next run."""
    pending = list(positions)
    not_before = clock()

    def wait(pause: float = 0.0) -> None:
        # ``pause`` (the passes' own), or longer where the CRM asked for longer. Only what the
        # CRM asked for is held against ``max_wait``: a max_rate_limit_wait of 0 ("never sit out
        # a rate limit") must not stop the passes' own half-second retry of a locked row.
        asked = not_before - clock()
        if asked > max_wait:
            raise ConnectorError(
                f"the CRM asked to wait {asked:.0f}s before the next write (longer than "
                f"max_rate_limit_wait, {max_wait:g}s): the rest waits for the next run",
                ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "throttled inside a batch"),
                retry_after=asked,
            )
        left = max(pause, asked)
        if left > 0:
            sleep(left)

    for attempt in range(retries + 1):
        if attempt:
            wait(min(2.0, 0.25 * 2**attempt))
        last_pass = attempt == retries
        again: list[int] = []
        for start in range(0, len(pending), size):
            wait()
            chunk = pending[start : start + size]
            answered: dict[int, WriteResult] = {}
            for position, result in zip(chunk, send(chunk), strict=True):
                if result.retry_after is not None and result.retry_after > 0:
                    not_before = max(not_before, clock() + result.retry_after)
                if result.retryable and not last_pass:
                    again.append(position)
                else:
                    answered[position] = result
            if answered:
                yield answered
        pending = again
        if not pending:
            return
