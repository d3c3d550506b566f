"""*Verify chain* beside the ledger's writers (session 51).

The console recomputed the chain in a write transaction: it held the ledger's writer lock
(SQLite's BEGIN IMMEDIATE, the advisory writer lock on PostgreSQL) for the whole pass, minutes on
a large ledger. Every sync, every objection and every capture of the preference centre waited
behind any viewer's click, and failed once its lock wait ran out. The pass reads one snapshot
now: a writer goes on at once, and the entries it appends meanwhile are not taken for a chain
running past its head.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from consentsync import audit
from tests.web.conftest import World, api_login


def test_a_writer_is_not_held_while_the_chain_is_verified(
    app: Any, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, written = threading.Event(), threading.Event()
    check = audit._check_entry
    calls = 0

    def held_open(*args: Any) -> str | None:
        """The pass stays at its first entry until the writer is done (5 s at most): as a pass
        over millions of entries is still running when a capture comes in."""
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            written.wait(timeout=5)
        return check(*args)

    client = TestClient(app)
    csrf = api_login(client, "vic")
    with world.ledger.engine.connect() as conn:
        head = audit.verify(conn).head_seq
    monkeypatch.setattr(audit, "_check_entry", held_open)
    answers: list[Any] = []
    verifying = threading.Thread(
        target=lambda: answers.append(client.post("/api/audit/verify", headers={"X-CSRF-Token": csrf}))
    )
    verifying.start()
    assert started.wait(timeout=10)
    began = time.monotonic()
    world.ledger.raise_objection("writer@example.com", "profiling")  # a person objects meanwhile
    waited = time.monotonic() - began
    written.set()
    verifying.join(timeout=30)
    assert waited < 2.5, f"the writer waited {waited:.1f} s for the verification"
    (answer,) = answers
    found = answer.json()
    # The pass read the chain as it was when it began: whole, up to that head.
    assert (found["ok"], found["head_seq"], found["entries_checked"]) == (True, head, head), found
    with world.ledger.engine.connect() as conn:
        after = audit.verify(conn)
    assert after.ok and after.head_seq > head
