"""Dynamics against its sandbox (session 51, round 2): a request throttled inside a ``$batch``
(service protection's execution-time limit, which the requests inside a batch count toward,
judged request by request: 429 with a Retry-After in its part) is sent again only once that wait
is over, and a wait longer than ``max_rate_limit_wait`` stops the write."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from consentsync_dynamics import DynamicsConnector
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.sdk import Action, ConnectorError, RecordUpdate, WriteResult
from tests.connectors.against_sandbox import connector_settings
from tests.sandbox.serving import serve_seeded


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    server = DynamicsSandbox()
    server.throttle_in_batch = True
    yield from serve_seeded(server, lambda started: started.environment.seed(20, seed=4))


def _connector(dv: DynamicsSandbox, **extra: Any) -> DynamicsConnector:
    settings = connector_settings(dv.connection_settings(), {"batch_size": 25}, extra)
    connector = DynamicsConnector("dyn-s51b", settings)
    # Signed in and the table's metadata read (one write): the limit below counts the writes.
    first = next(iter(dv.environment.records("contact")))["contactid"]
    list(connector.write_batches([RecordUpdate("contact", first, {"donotbulkemail": True})]))
    dv.reset_counters()
    return connector


def _updates(dv: DynamicsSandbox) -> list[RecordUpdate]:
    ids = [row["contactid"] for row in dv.environment.records("contact")][:10]
    return [RecordUpdate("contact", i, {"donotemail": True}) for i in ids]


def test_a_request_throttled_inside_a_batch_is_sent_again_after_its_retry_after(dv: DynamicsSandbox) -> None:
    """Six requests in any two seconds: the batch's last four are refused with Retry-After 2.
    Sent again before that (the passes' half-second pause), they were refused again, twice,
    and the write ended with them failed."""
    connector = _connector(dv)
    dv.set_execution_limit(6, window=2.0)
    started = time.monotonic()
    answers: dict[int, WriteResult] = {}
    for batch in connector.write_batches(_updates(dv)):
        answers.update(batch)
    assert sorted(answers) == list(range(10))
    assert all(result.ok for result in answers.values()), [r.error_code for r in answers.values()]
    assert dv.throttled == 4  # refused once each, never again
    assert time.monotonic() - started >= 1.5


def test_a_long_retry_after_inside_a_batch_stops_the_write_with_the_rest_pending(dv: DynamicsSandbox) -> None:
    """A wait past ``max_rate_limit_wait`` is not sat out, nor ignored: what was saved is
    answered, the throttled requests stay unanswered (pending for the next run), and the write
    stops as a throttled call does."""
    connector = _connector(dv, max_rate_limit_wait=1)
    dv.set_execution_limit(6, window=300.0)
    answers: dict[int, WriteResult] = {}
    with pytest.raises(ConnectorError) as stopped:
        for batch in connector.write_batches(_updates(dv)):
            answers.update(batch)
    assert stopped.value.action is Action.RATE_LIMITED
    assert stopped.value.retry_after is not None and stopped.value.retry_after > 1
    assert sorted(answers) == list(range(6)) and all(r.ok for r in answers.values())
    assert dv.calls["batch"] == 1 and dv.throttled == 4
