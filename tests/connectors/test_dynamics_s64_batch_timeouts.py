"""bb64 dynfix item 2: Dataverse runs a $batch's requests one after another ("Execute batch
operations using the Web API": "performed sequentially") and answers when the last is done. A
batch of 1,000 updates outlasted the call's 30 s timeout, was executed whole each time the retry
policy sent it again (5 attempts), and never answered: every write of it was sent again by the
next run. "Service protection API limits" (Avoid large batches) says to start with a batch size
of 10; a batch that times out anyway is sent again in halves, never whole.

The sandbox models the sequential execution (``batch_request_seconds``, each request inside a
batch takes that long); a timed-out batch goes on executing on the server, as Dataverse's does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from consentsync_dynamics import DynamicsConnector
from consentsync_dynamics.sandbox.server import DynamicsSandbox
from consentsync_dynamics.settings import DynamicsSettings

from consentsync.sdk import Cursor, RecordUpdate, WriteAction
from tests.connectors.against_sandbox import connector_settings, read_until
from tests.sandbox.serving import serve_seeded

# Scaled: 20 ms a request inside a batch against a 0.5 s timeout, as tens of milliseconds a
# contact update with plug-ins against the default 30 s.
PER_REQUEST = 0.02
TIMEOUT = 0.5
ROWS = 60


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    yield from serve_seeded(DynamicsSandbox(), lambda server: server.environment.seed(ROWS, seed=7))


def _connector(dv: DynamicsSandbox, **extra: Any) -> DynamicsConnector:
    # max_attempts 2: before the fix, the whole batch timed out twice and the write failed.
    tuned = {"timeout": TIMEOUT, "max_attempts": 2, "batch_size": ROWS, **extra}
    return DynamicsConnector("dyn", connector_settings(dv.connection_settings(), tuned))


def _ids(dv: DynamicsSandbox) -> list[str]:
    return [str(row["contactid"]) for row in dv.environment.records("contact")]


def test_the_default_batch_is_microsofts_small_one() -> None:
    settings = DynamicsSettings(
        environment_url="https://org.crm4.dynamics.com",
        token_url="https://login.microsoftonline.com/t/oauth2/v2.0/token",
        client_id="c",
        client_secret="s",
    )
    assert settings.batch_size == 10


def test_a_write_batch_that_times_out_is_sent_again_in_halves_and_answered(dv: DynamicsSandbox) -> None:
    dv.batch_request_seconds = PER_REQUEST
    connector = _connector(dv)
    updates = [RecordUpdate("contact", i, {"donotbulkemail": True}, WriteAction.UPDATE) for i in _ids(dv)]
    answers: dict[int, Any] = {}
    for answered in connector.write_batches(updates):
        answers.update(answered)
    assert sorted(answers) == list(range(ROWS))
    assert all(result.ok for result in answers.values()), [r for r in answers.values() if not r.ok][:3]
    assert all(row["donotbulkemail"] for row in dv.environment.records("contact"))
    # 60 timed out, 30 timed out, then 15 at a time: the later batches keep the smaller size, and
    # no request was executed more than the halving asks (the whole batch five times before).
    assert connector._batch_limit <= ROWS // 4
    assert dv.batch_requests <= ROWS + ROWS // 2 + ROWS


def test_rows_a_timed_out_batch_wrote_are_not_taken_for_changes_made_since_the_read(
    dv: DynamicsSandbox,
) -> None:
    """With the rows' ETags (If-Match): the halves find rows the timed-out call already wrote,
    holding the very values sent (412 to the ETag of the read): done, not a change of someone
    else's left for the next run."""
    connector = _connector(dv)
    list(connector.read_changes("contact", ["donotbulkemail"], Cursor(), read_until()))
    dv.batch_request_seconds = PER_REQUEST
    updates = [RecordUpdate("contact", i, {"donotbulkemail": True}, WriteAction.UPDATE) for i in _ids(dv)]
    answers: dict[int, Any] = {}
    for answered in connector.write_batches(updates):
        answers.update(answered)
    assert sorted(answers) == list(range(ROWS))
    assert all(result.ok for result in answers.values()), [r for r in answers.values() if not r.ok][:3]


def test_look_ups_in_a_batch_that_times_out_are_sent_again_in_halves(dv: DynamicsSandbox) -> None:
    dv.batch_request_seconds = PER_REQUEST
    connector = _connector(dv)
    ids = _ids(dv)[:40]
    url = f"{dv.api_url()}/contacts?$select=contactid"
    urls = [f"{url}&$filter=contactid%20eq%20{i}" for i in ids]
    rows = connector._get_in_batches(urls, "look up")
    assert sorted(str(row["contactid"]) for row in rows) == sorted(ids)
    assert connector._batch_limit < ROWS
