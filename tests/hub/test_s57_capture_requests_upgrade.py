"""An erasure closes the capture API's idempotency records an older version wrote (the key as
sent, the body's plain digest) as it closes this version's: under the key's keyed hash, 410 to
a retry; on SQLite and PostgreSQL, through the real HTTP API.

Found by the review of 18dd9df: the erasure deleted such a record instead. Where the hub had not
keyed it yet (``Hub.forget_old_requests``: at the first capture with a key in a process, then at
most hourly; or during a rolling upgrade, an older process writing it after that), a client's
retry of the key within its day ran again: 201, granted, the erased person contactable again.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import insert, select

from consentsync.ledger.schema import api_keys, capture_requests
from tests.hub.conftest import HubWorld
from tests.hub.test_s57_capture_requests_erasure import GRANT, erase, holders_of, plain_digest, stored


def _as_an_older_version_wrote(world: HubWorld, key: str, body: dict[str, Any], answer: Any) -> None:
    with world.ledger.engine.begin() as conn:
        key_id = conn.execute(select(api_keys.c.id).where(api_keys.c.name == "website")).scalar_one()
        conn.execute(
            insert(capture_requests).values(
                key_id=key_id,
                idempotency_key=key,
                request_sha256=plain_digest(body),
                status_code=201,
                response=orjson.dumps(answer).decode(),
                created_at=world.clock() - timedelta(minutes=5),
            )
        )


def test_a_retry_of_an_older_versions_record_after_the_persons_erasure_is_refused(world: HubWorld) -> None:
    body = {**GRANT, "email": "ida@example.test"}
    answer = world.post("/consents", body)
    assert answer.status_code == 201
    _as_an_older_version_wrote(world, "signup-ida-1", body, answer.json())
    erase(world, "ida@example.test")  # before any capture with a key in this process
    (row,) = stored(world)
    assert row["idempotency_key"].startswith("hmac-sha256:") and "ida" not in row["idempotency_key"]
    assert row["status_code"] == 410 and row["request_sha256"] == ""
    world.clock.advance(seconds=30)
    retry = world.post("/consents", body, **{"Idempotency-Key": "signup-ida-1"})
    assert retry.status_code == 410, retry.text  # run again instead: the address is back
    assert holders_of(world, "ida@example.test") == 0


def test_a_record_an_older_process_wrote_after_the_upkeep_is_closed_by_an_erasure(world: HubWorld) -> None:
    """A rolling upgrade: this version's process has keyed the table (its first capture with a
    key) and will not again within the hour; an older process still serving writes a record."""
    first = world.post("/consents", {**GRANT, "email": "hal@example.test"}, **{"Idempotency-Key": "hal-1"})
    assert first.status_code == 201
    body = {**GRANT, "email": "ida@example.test"}
    answer = world.post("/consents", body)
    _as_an_older_version_wrote(world, "signup-ida-1", body, answer.json())
    erase(world, "ida@example.test")
    world.clock.advance(minutes=5)
    retry = world.post("/consents", body, **{"Idempotency-Key": "signup-ida-1"})
    assert retry.status_code == 410, retry.text
    assert holders_of(world, "ida@example.test") == 0
    # hal's record, keyed and naming nobody erased, still replays.
    again = world.post("/consents", {**GRANT, "email": "hal@example.test"}, **{"Idempotency-Key": "hal-1"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"


def test_an_older_record_whose_key_was_retried_keyed_since_leaves_one_closed_record(world: HubWorld) -> None:
    """The key's retry reached this version before the erasure and was stored keyed: the record
    as sent goes, the keyed one is closed (a key names one record)."""
    warm = world.post("/consents", {**GRANT, "email": "hal@example.test"}, **{"Idempotency-Key": "hal-1"})
    assert warm.status_code == 201  # the upkeep ran: the record below stays as sent
    body = {**GRANT, "email": "ida@example.test"}
    answer = world.post("/consents", body)
    _as_an_older_version_wrote(world, "signup-ida-1", body, answer.json())
    retried = world.post("/consents", body, **{"Idempotency-Key": "signup-ida-1"})
    assert retried.status_code == 201
    erase(world, "ida@example.test")
    rows = [row for row in stored(world) if row["status_code"] == 410]
    assert len(rows) == 1 and len(stored(world)) == 2
    assert all(row["idempotency_key"].startswith("hmac-sha256:") for row in stored(world))
    retry = world.post("/consents", body, **{"Idempotency-Key": "signup-ida-1"})
    assert retry.status_code == 410, retry.text
    assert holders_of(world, "ida@example.test") == 0
