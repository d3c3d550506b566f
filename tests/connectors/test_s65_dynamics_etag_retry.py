"""bb65 fix-conn item 1: ``_write_batch`` forgot a guarded row's ETag whatever the answer, a
refusal that wrote nothing included (a 429 inside the ``$batch``, a row lock, a 5xx for that
request). ``write_in_passes`` then sent the row again in its next pass with ``If-Match: *``, and a
change an agent made in Dynamics since the read (the person's opt-out ticked again) was
overwritten, the ledger never learning of it. The ETag read now guards the row until this run's
write of it is done: a refusal keeps it, so the pass that sends the row again still sends its
ETag and a change since the read comes back CHANGED_SINCE_READ.

The sandbox judges service protection's execution-time limit request by request inside a batch
(``throttle_in_batch``), fails a row's PATCH with 0x80044150 (locked) for ``fail_records``, and
answers a stale ``If-Match`` with 412."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from consentsync_dynamics import DynamicsConnector
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.sdk import Cursor, RecordUpdate, WriteAction, WriteResult
from tests.connectors.against_sandbox import connector_settings, read_until
from tests.sandbox.serving import serve_seeded

FIELDS = ["emailaddress1", "donotbulkemail"]
CHANGED_SINCE_READ = "CHANGED_SINCE_READ"  # connector.CHANGED_SINCE_READ


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    yield from serve_seeded(DynamicsSandbox(), lambda server: None)


def _connector(dv: DynamicsSandbox, **extra: Any) -> DynamicsConnector:
    return DynamicsConnector("dyn", connector_settings(dv.connection_settings(), {"page_size": 40}, extra))


def _contacts(dv: DynamicsSandbox, count: int) -> list[str]:
    """``count`` contacts with the no ticked; the first is the one an agent will touch."""
    return [
        dv.environment.create(
            "contact",
            {"lastname": "Invented", "emailaddress1": f"p{n}@example.test", "donotbulkemail": True},
        )
        for n in range(count)
    ]


def _agent_ticks_again(dv: DynamicsSandbox, cid: str) -> None:
    # The person phoned to opt out: the agent clears the tick and ticks it again. The value
    # is the one read, the row is not (its version moved on).
    dv.environment.update("contact", cid, {"donotbulkemail": False})
    dv.environment.update("contact", cid, {"donotbulkemail": True})


def _ticked(dv: DynamicsSandbox, cid: str) -> bool:
    return dv.environment.get("contact", cid)["donotbulkemail"] is True


def _write(connector: DynamicsConnector, ids: list[str]) -> dict[int, WriteResult]:
    updates = [RecordUpdate("contact", i, {"donotbulkemail": False}, WriteAction.UPDATE) for i in ids]
    answers: dict[int, WriteResult] = {}
    for answered in connector.write_batches(updates):
        answers.update(answered)
    return answers


def _after_the_first_batch(monkeypatch: pytest.MonkeyPatch, then: Callable[[], None]) -> None:
    """``then`` runs once, when the first ``$batch`` of updates has been answered."""
    original = DynamicsConnector._write_batch
    done: list[bool] = []

    def write_batch(self: DynamicsConnector, updates: Any) -> Any:
        results = original(self, updates)
        if not done:
            done.append(True)
            then()
        return results

    monkeypatch.setattr(DynamicsConnector, "_write_batch", write_batch)


def test_a_row_throttled_inside_the_batch_is_sent_again_with_its_etag(dv: DynamicsSandbox) -> None:
    """Two requests a second: the batch's third (the row the agent changed) is refused 429 with
    Retry-After 1 and sent again in the next pass. With ``If-Match: *`` it cleared the tick."""
    dv.throttle_in_batch = True
    ids = _contacts(dv, 3)
    changed = ids[0]
    connector = _connector(dv)
    list(connector.read_changes("contact", FIELDS, Cursor(), read_until()))
    _agent_ticks_again(dv, changed)
    dv.set_execution_limit(2, window=1.0)
    answers = _write(connector, [ids[1], ids[2], changed])
    assert dv.throttled >= 1  # the changed row's first PATCH was refused for now
    result = answers[2]
    assert _ticked(dv, changed), "the agent's tick was overwritten"
    assert (result.ok, result.error_code, result.retryable) == (False, CHANGED_SINCE_READ, True)
    assert answers[0].ok and answers[1].ok
    assert [dv.environment.get("contact", i)["donotbulkemail"] for i in ids[1:]] == [False, False]


def test_a_locked_row_changed_before_the_next_pass_is_not_overwritten(
    dv: DynamicsSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row is locked (500 0x80044150, the agent's save under way): nothing written, sent
    again next pass, by when the agent's change is in."""
    ids = _contacts(dv, 2)
    changed = ids[0]
    connector = _connector(dv)
    list(connector.read_changes("contact", FIELDS, Cursor(), read_until()))
    dv.faults.fail_records(changed, attempts=1)
    _after_the_first_batch(monkeypatch, lambda: _agent_ticks_again(dv, changed))
    answers = _write(connector, [changed, ids[1]])
    assert _ticked(dv, changed), "the agent's tick was overwritten"
    assert (answers[0].ok, answers[0].error_code) == (False, CHANGED_SINCE_READ)
    assert answers[1].ok and dv.environment.get("contact", ids[1])["donotbulkemail"] is False


def test_a_row_refused_with_a_5xx_and_unchanged_is_written_on_the_next_pass(dv: DynamicsSandbox) -> None:
    """The ETag kept is still the row's: the next pass writes it."""
    (cid,) = _contacts(dv, 1)
    connector = _connector(dv)
    list(connector.read_changes("contact", FIELDS, Cursor(), read_until()))
    dv.faults.fail_records(cid, attempts=1)
    answers = _write(connector, [cid])
    assert answers[0].ok and dv.environment.get("contact", cid)["donotbulkemail"] is False


def test_a_later_write_of_a_row_changed_since_the_read_is_refused_too(dv: DynamicsSandbox) -> None:
    """A 412 writes nothing either: a second update of the same row in the same run (another
    push of it) goes with the ETag read, not ``If-Match: *``, and is held for the next run's
    read as the first was."""
    (cid,) = _contacts(dv, 1)
    connector = _connector(dv)
    list(connector.read_changes("contact", FIELDS, Cursor(), read_until()))
    _agent_ticks_again(dv, cid)
    first = _write(connector, [cid])[0]
    assert (first.ok, first.error_code) == (False, CHANGED_SINCE_READ)
    second = _write(connector, [cid])[0]
    assert _ticked(dv, cid), "the agent's tick was overwritten"
    assert (second.ok, second.error_code) == (False, CHANGED_SINCE_READ)


def test_a_written_row_is_written_again_unguarded(dv: DynamicsSandbox) -> None:
    """A write done moves the row's version on: a later write of this run goes with ``*`` (as
    before), not with the ETag read, which would be refused by this run's own write."""
    (cid,) = _contacts(dv, 1)
    connector = _connector(dv)
    list(connector.read_changes("contact", FIELDS, Cursor(), read_until()))
    assert _write(connector, [cid])[0].ok
    updates = [RecordUpdate("contact", cid, {"donotbulkemail": True}, WriteAction.UPDATE)]
    again = [result for answered in connector.write_batches(updates) for result in answered.values()]
    assert [r.ok for r in again] == [True] and dv.environment.get("contact", cid)["donotbulkemail"] is True


def test_a_batch_halved_after_a_timeout_keeps_the_etags(dv: DynamicsSandbox) -> None:
    """The halves of a timed-out batch are sent with the ETags read: the row the agent changed
    is not overwritten by them (the rows the timed-out call wrote are done)."""
    rows = 12
    dv.batch_request_seconds = 0.05  # 12 requests, 0.6 s, against a 0.4 s timeout
    ids = _contacts(dv, rows)
    changed = ids[5]
    connector = _connector(dv, timeout=0.4, max_attempts=2, batch_size=rows)
    list(connector.read_changes("contact", FIELDS, Cursor(), read_until()))
    _agent_ticks_again(dv, changed)
    answers = _write(connector, ids)
    assert connector._batch_limit < rows  # halved
    assert _ticked(dv, changed), "the agent's tick was overwritten"
    assert (answers[5].ok, answers[5].error_code) == (False, CHANGED_SINCE_READ)
    assert all(answers[n].ok for n in range(rows) if n != 5)
