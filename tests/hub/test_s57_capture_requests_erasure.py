"""The capture API's idempotency records (``capture_requests``) after an erasure (GDPR Art. 17),
through the real HTTP API, on SQLite and PostgreSQL.

Found by a black-box tester: a client's Idempotency-Key was stored as sent (``signup-<address>``
kept the address), the request's digest was a plain SHA-256 of the body (candidate addresses
hashed into candidate bodies found it), the kept answer named the person's uid, and an erasure
left all three. Records are now keyed hashes, an erasure closes its person's records (a retry
of the key is refused, 410, and never runs again: a sign-up retried late would bring the person
back), and records live a day (``IDEMPOTENCY_WINDOW``).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import func, insert, select

from consentsync.hub.api import ConsentBatchIn, ConsentIn
from consentsync.hub.capture import IDEMPOTENCY_WINDOW, request_digest
from consentsync.ledger.identity import email_hmac
from consentsync.ledger.schema import (
    api_keys,
    capture_requests,
    consent_events,
    subject_identifiers,
    subjects,
)
from tests.hub.conftest import HubWorld

ADDRESS = "gina@example.test"
KEY = f"signup-{ADDRESS}-1"
GRANT = {"email": ADDRESS, "purpose": "newsletter", "status": "granted", "notice_version": "2026-05"}


def stored(world: HubWorld) -> list[dict[str, Any]]:
    with world.ledger.engine.connect() as conn:
        return [
            dict(row._mapping)
            for row in conn.execute(select(capture_requests).order_by(capture_requests.c.id))
        ]


def stored_text(world: HubWorld) -> str:
    """Every value of every idempotency record, as one text to search."""
    return "\n".join(str(value) for row in stored(world) for value in row.values())


def plain_digest(body: dict[str, Any]) -> str:
    """What the API digests a request's body to before it keys it (and what an older version
    stored as it was): the body as the API parses it."""
    parsed = ConsentBatchIn(**body) if "consents" in body else ConsentIn(**body)
    content = parsed.model_dump(mode="json")
    for one in content.get("consents", [content]):
        if one.get("language") is None:
            one.pop("language", None)
    return request_digest(content)


def events_of(world: HubWorld, uid: str) -> int:
    with world.ledger.engine.connect() as conn:
        return conn.execute(
            select(func.count())
            .select_from(consent_events)
            .join(subjects, subjects.c.id == consent_events.c.subject_id)
            .where(subjects.c.uid == uid)
        ).scalar_one()


def holders_of(world: HubWorld, address: str) -> int:
    with world.ledger.engine.connect() as conn:
        return conn.execute(
            select(func.count())
            .select_from(subject_identifiers)
            .where(subject_identifiers.c.value == address)
        ).scalar_one()


def people(world: HubWorld) -> int:
    with world.ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(subjects)).scalar_one()


def erase(world: HubWorld, address: str) -> None:
    response = world.post("/erasure-requests", {"email": address, "reason": "Art 17 request"})
    assert response.status_code == 200, response.text


def test_an_erasure_leaves_no_address_key_or_uid_in_the_idempotency_records(world: HubWorld) -> None:
    first = world.post("/consents", GRANT, **{"Idempotency-Key": KEY})
    assert first.status_code == 201, first.text
    uid = first.json()["results"][0]["subject"]
    # Before the erasure a retry replays: the same answer, no second event.
    world.clock.advance(seconds=30)
    again = world.post("/consents", GRANT, **{"Idempotency-Key": KEY})
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert events_of(world, uid) == 1
    # The key is never stored as sent, nor the address in any form.
    assert KEY not in stored_text(world) and "gina" not in stored_text(world)

    erase(world, ADDRESS)
    text = stored_text(world)
    assert "gina" not in text and KEY not in text and uid not in text
    (row,) = stored(world)
    assert row["request_sha256"] == "" and row["status_code"] == 410

    # A retry after the erasure is refused and records nothing: no person holds the address
    # again (a trusted source's grant dated now would lift the erasure if the request ran).
    world.clock.advance(seconds=30)
    replay = world.post("/consents", GRANT, **{"Idempotency-Key": KEY})
    assert replay.status_code == 410, replay.text
    assert "erased" in replay.json()["error"] and "gina" not in replay.text
    assert replay.headers.get("Idempotent-Replayed") is None
    other = world.post("/consents", {**GRANT, "status": "withdrawn"}, **{"Idempotency-Key": KEY})
    assert other.status_code == 410
    assert holders_of(world, ADDRESS) == 0
    assert people(world) == 1  # the erased person only, nobody made anew
    assert uid not in stored_text(world) and "gina" not in stored_text(world)


def test_a_batch_record_naming_an_erased_person_is_closed_and_the_others_kept(world: HubWorld) -> None:
    batch = {"consents": [GRANT, {**GRANT, "email": "hal@example.test"}]}
    first = world.post("/consents", batch, **{"Idempotency-Key": "batch-7"})
    assert first.status_code == 201, first.text
    gina, hal = (result["subject"] for result in first.json()["results"])
    single = world.post("/consents", {**GRANT, "email": "ida@example.test"}, **{"Idempotency-Key": "ida-1"})
    assert single.status_code == 201
    erase(world, ADDRESS)
    assert gina not in stored_text(world) and hal not in stored_text(world)
    assert world.post("/consents", batch, **{"Idempotency-Key": "batch-7"}).status_code == 410
    # Another person's record is untouched: still replayed.
    replay = world.post("/consents", {**GRANT, "email": "ida@example.test"}, **{"Idempotency-Key": "ida-1"})
    assert replay.status_code == 201 and replay.json() == single.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert events_of(world, hal) == 1


def test_stored_digests_do_not_yield_to_a_dictionary_attack(world: HubWorld) -> None:
    """Whoever reads the table (a backup, a read replica) and guesses addresses finds nothing:
    neither the key nor the body's digest can be computed without the erasure key, and neither
    is the suppression entry's keyed hash of the address."""
    assert world.post("/consents", GRANT, **{"Idempotency-Key": KEY}).status_code == 201
    (row,) = stored(world)
    candidates = [f"{name}@example.test" for name in ("ada", "bob", "gina", "hal", "ida")]
    guessed_bodies = {plain_digest({**GRANT, "email": candidate}) for candidate in candidates}
    guessed_keys = {
        guess
        for candidate in candidates
        for key in (f"signup-{candidate}-1", candidate)
        for guess in (key, hashlib.sha256(key.encode()).hexdigest())
    }
    assert plain_digest(GRANT) in guessed_bodies  # the attack would work on a plain digest
    assert row["request_sha256"] not in guessed_bodies
    assert not any(guess in row["idempotency_key"] for guess in guessed_keys)
    # Nor does the ledger's own keyed hash of the address (its suppression entry) match.
    keyed = email_hmac(world.ledger.erasure_key(), ADDRESS)
    assert keyed not in (row["idempotency_key"], row["request_sha256"])
    assert email_hmac(world.ledger.erasure_key(), KEY) not in row["idempotency_key"]


def test_records_live_a_day(world: HubWorld) -> None:
    first = world.post("/consents", GRANT, **{"Idempotency-Key": KEY})
    uid = first.json()["results"][0]["subject"]
    assert (
        world.post(
            "/consents", {**GRANT, "email": "hal@example.test"}, **{"Idempotency-Key": "h"}
        ).status_code
        == 201
    )
    world.clock.advance(seconds=IDEMPOTENCY_WINDOW.total_seconds() - 60)
    assert world.post("/consents", GRANT, **{"Idempotency-Key": KEY}).headers["Idempotent-Replayed"] == "true"
    world.clock.advance(seconds=120)
    # Past the window the key names a new request: recorded as one, not replayed.
    later = world.post("/consents", GRANT, **{"Idempotency-Key": KEY})
    assert later.status_code == 201 and later.headers.get("Idempotent-Replayed") is None
    assert events_of(world, uid) == 2
    # The hub's upkeep (the daemon's, `consentsync hub lapse`) deletes what is past it.
    assert len(stored(world)) == 2
    world.clock.advance(hours=24)
    world.hub.lapse_unconfirmed()
    assert stored(world) == []


def test_records_an_older_version_wrote_are_keyed_closed_or_deleted(world: HubWorld) -> None:
    """At the upgrade the table holds keys as sent and plain digests. The first capture with a
    key (or the upkeep) stores them keyed, their replay kept; one naming a person erased before
    is closed; an erasure re-keys and closes a person's plain record (test_s57_capture_requests_upgrade)."""
    answers = {}
    for name in ("gina", "hal", "ida"):
        answer = world.post("/consents", {**GRANT, "email": f"{name}@example.test"})
        assert answer.status_code == 201
        answers[name] = answer.json()
    erase(world, ADDRESS)  # before the upgrade: the older version left gina's record as it was
    now = world.clock()
    with world.ledger.engine.begin() as conn:
        key_id = conn.execute(select(api_keys.c.id).where(api_keys.c.name == "website")).scalar_one()
        for name, answer in answers.items():
            conn.execute(
                insert(capture_requests).values(
                    key_id=key_id,
                    idempotency_key=f"signup-{name}@example.test-1",
                    request_sha256=plain_digest({**GRANT, "email": f"{name}@example.test"}),
                    status_code=201,
                    response=orjson.dumps(answer).decode(),
                    created_at=now - timedelta(minutes=5),
                )
            )
    # ida is erased before any capture with a key: her plain record goes with her.
    ida_uid = answers["ida"]["results"][0]["subject"]
    erase(world, "ida@example.test")
    assert "ida" not in stored_text(world) and ida_uid not in stored_text(world)
    # The first capture with a key stores the rest keyed.
    hal = {**GRANT, "email": "hal@example.test"}
    replay = world.post("/consents", hal, **{"Idempotency-Key": "signup-hal@example.test-1"})
    assert replay.status_code == 201 and replay.json() == answers["hal"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    text = stored_text(world)
    assert "@example.test" not in text and answers["gina"]["results"][0]["subject"] not in text
    assert all(row["idempotency_key"].startswith("hmac-sha256:") for row in stored(world))
    gina = world.post("/consents", GRANT, **{"Idempotency-Key": KEY})
    assert gina.status_code == 410 and holders_of(world, ADDRESS) == 0
