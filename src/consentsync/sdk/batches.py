"""Writing a batch of updates call by call, as the engine wants the answers: each call's answers
handed over as soon as it returns, and the updates the CRM answered as worth another try (a
locked row, a request it did not get to) sent again in a later pass instead of holding back the
rest of their call."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from consentsync.sdk.connector import WriteResult

__all__ = ["write_in_passes"]


def write_in_passes(
    positions: Sequence[int],
    send: Callable[[list[int]], Sequence[WriteResult]],
    *,
    size: int,
    retries: int,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[int, WriteResult]]:
    """Sends ``positions`` (of the caller's updates) in calls of at most ``size``: ``send(chunk)``
    answers one result per position, in order. Yields each call's answers as it returns; a
    ``retryable`` result is kept back and sent again in the next pass, ``retries`` passes at most
    (after a pause of 0.5 s, 1 s, then 2 s), and reported as it is after the last."""
    pending = list(positions)
    for attempt in range(retries + 1):
        if attempt:
            sleep(min(2.0, 0.25 * 2**attempt))
        last_pass = attempt == retries
        again: list[int] = []
        for start in range(0, len(pending), size):
            chunk = pending[start : start + size]
            answered: dict[int, WriteResult] = {}
            for position, result in zip(chunk, send(chunk), strict=True):
                if result.retryable and not last_pass:
                    again.append(position)
                else:
                    answered[position] = result
            if answered:
                yield answered
        pending = again
        if not pending:
            return
