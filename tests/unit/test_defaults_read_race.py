"""``Ledger._defaults_now`` under threads (the hub shares one Ledger across its threadpool): the
defaults a thread returns, and binds a value to, are the ones read with the purposes' rows it
read itself, never another read's. The cache was two attributes (the defaults, the rows they were
read with): a thread holding the old defaults, reading the new rows while another thread stored
the new defaults with those rows, found its rows unchanged and returned the old defaults, which
``audit verify`` names as an edit once bound (session 62 review of f1dcd4c)."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import event

from consentsync.config import load_config
from consentsync.domain import LawfulBasis
from consentsync.ledger.engine import reading
from consentsync.ledger.service import Ledger
from tests.conftest import Clock


@pytest.fixture
def clock() -> Clock:
    """The real time, a minute on: the purposes' ``purpose.configured`` entries, which the ledger
    fixture writes on the real clock when it opens it, come before the change made here."""
    return Clock(datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1))


def _profiling_bases(defaults: dict[str, Any]) -> list[LawfulBasis]:
    _moments, bases, _before = defaults["profiling"]
    return list(bases)


def test_a_thread_returns_the_defaults_of_the_rows_it_read_not_an_older_read(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """Thread A holds the cached defaults and is about to read the purposes' rows; meanwhile
    another process switches profiling's default, and thread B of this process reads the new
    defaults (with the new rows). A then reads the new rows: it must return the new defaults."""
    with reading(ledger.engine) as conn, conn.begin():
        before = _profiling_bases(ledger._defaults_now(conn))  # the cache: profiling as opened

    reached, go = threading.Event(), threading.Event()
    first: dict[str, threading.Thread] = {}

    def hold(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # Thread A's look at the purposes' rows waits until B has read the new defaults.
        if threading.current_thread() is first.get("thread") and "purposes.updated_at" in statement:
            reached.set()
            assert go.wait(20)

    returned: dict[str, Any] = {}

    def thread_a() -> None:
        with reading(ledger.engine) as conn, conn.begin():
            returned["defaults"] = ledger._defaults_now(conn)

    event.listen(ledger.engine, "before_cursor_execute", hold)
    try:
        first["thread"] = thread = threading.Thread(target=thread_a)
        thread.start()
        assert reached.wait(20)
        # Another process applies a new default for profiling.
        clock.advance(hours=1)
        data = yaml.safe_load(config_path.read_text())
        (profiling,) = [p for p in data["purposes"] if p["key"] == "profiling"]
        profiling["default_basis"] = (
            "consent" if profiling["default_basis"] != "consent" else "legitimate_interests"
        )
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        dataclasses.replace(ledger, purposes=load_config(config_path).purposes).sync_purposes()
        # Thread B of this process reads the defaults now: the new ones, with the new rows.
        with reading(ledger.engine) as conn, conn.begin():
            after = _profiling_bases(ledger._defaults_now(conn))
        assert after == [*before, LawfulBasis(profiling["default_basis"])]
        go.set()
        thread.join(20)
        assert not thread.is_alive()
    finally:
        go.set()
        event.remove(ledger.engine, "before_cursor_execute", hold)
    assert _profiling_bases(returned["defaults"]) == after
