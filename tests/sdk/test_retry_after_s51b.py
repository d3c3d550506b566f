"""``Retry-After`` in both of RFC 9110's forms (seconds, or an HTTP date), and a wait asked by
one request of a batch held to by every later call of ``write_in_passes`` (session 51, round 2)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests

from consentsync.sdk import Action, ConnectorError, WriteResult, retry_after, write_in_passes


def _answer(headers: dict[str, str]) -> requests.Response:
    response = requests.Response()
    response.status_code = 429
    response.headers.update(headers)
    return response


def _http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def test_seconds_are_read_as_before() -> None:
    assert retry_after(_answer({"Retry-After": "120"})) == 120.0
    assert retry_after(_answer({})) is None


def test_an_http_date_is_counted_from_the_answers_own_date() -> None:
    """The server's clock (its Date header) decides, whatever this machine's says: here the
    answer is dated a day ago and asks for 90 seconds after that."""
    sent = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    headers = {"Date": _http_date(sent), "Retry-After": _http_date(sent + timedelta(seconds=90))}
    assert retry_after(_answer(headers)) == 90.0


def test_an_http_date_without_a_date_header_is_counted_from_now() -> None:
    wait = retry_after(_answer({"Retry-After": _http_date(datetime.now(UTC) + timedelta(seconds=30))}))
    assert wait is not None and 25 <= wait <= 30


def test_a_date_already_past_asks_for_no_wait_of_its_own() -> None:
    """The usual backoff applies (None), as for an answer without the header."""
    past = _http_date(datetime.now(UTC) - timedelta(minutes=5))
    assert retry_after(_answer({"Retry-After": past})) is None
    dated = {"Date": "Sun, 06 Dec 2026 05:00:00 GMT", "Retry-After": "Sun, 06 Dec 2026 04:00:00 GMT"}
    assert retry_after(_answer(dated)) is None


@pytest.mark.parametrize("value", ["soon", "-5", "nan", "inf", "  "])
def test_what_is_neither_form_is_no_instruction(value: str) -> None:
    assert retry_after(_answer({"Retry-After": value})) is None


class _Clock:
    """Time that moves only when slept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_wait_asked_inside_a_call_holds_back_every_later_call_and_the_next_pass() -> None:
    """The first call's second request is throttled for 7 seconds: the next call (another chunk)
    and the pass that sends it again both go only after those 7 seconds."""
    clock = _Clock()
    sent: list[tuple[float, list[int]]] = []

    def send(chunk: Sequence[int]) -> list[WriteResult]:
        sent.append((clock.now, list(chunk)))
        first_call = len(sent) == 1
        return [
            WriteResult(str(p), False, "429", "throttled", True, 7.0)
            if first_call and p == 1
            else WriteResult(str(p), True)
            for p in chunk
        ]

    answered: dict[int, WriteResult] = {}
    for batch in write_in_passes(range(4), send, size=2, retries=2, sleep=clock.sleep, clock=clock):
        answered.update(batch)
    assert all(result.ok for result in answered.values()) and sorted(answered) == [0, 1, 2, 3]
    assert [(at - 1000.0, chunk) for at, chunk in sent] == [(0.0, [0, 1]), (7.0, [2, 3]), (7.5, [1])]


def test_a_wait_longer_than_max_wait_stops_with_the_throttled_unanswered() -> None:
    clock = _Clock()

    def send(chunk: Sequence[int]) -> list[WriteResult]:
        return [
            WriteResult(str(p), False, "429", "throttled", True, 300.0)
            if p == 1
            else WriteResult(str(p), True)
            for p in chunk
        ]

    answered: dict[int, WriteResult] = {}
    with pytest.raises(ConnectorError) as stopped:
        for batch in write_in_passes(
            range(4), send, size=2, retries=2, sleep=clock.sleep, clock=clock, max_wait=60
        ):
            answered.update(batch)
    assert stopped.value.action is Action.RATE_LIMITED and stopped.value.retry_after == 300.0
    assert sorted(answered) == [0] and clock.slept == []


def test_a_locked_row_is_retried_whatever_max_wait_says() -> None:
    """max_rate_limit_wait 0 ("never sit out a rate limit") holds only what the CRM asked for:
    the passes' own short pause before retrying a locked row is no rate limit."""
    calls: list[list[int]] = []
    slept: list[float] = []

    def send(chunk: Sequence[int]) -> list[WriteResult]:
        calls.append(list(chunk))
        locked = len(calls) == 1
        return [
            WriteResult(str(p), not (locked and p == 1), "UNABLE_TO_LOCK_ROW" if locked and p == 1 else None,
                        None, locked and p == 1)
            for p in chunk
        ]  # fmt: skip

    answers = {}
    for batch in write_in_passes([0, 1, 2], send, size=200, retries=2, sleep=slept.append, max_wait=0):
        answers.update(batch)
    assert calls == [[0, 1, 2], [1]]
    assert all(result.ok for result in answers.values())
    assert slept and all(0 < pause <= 2 for pause in slept)
