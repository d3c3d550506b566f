"""Running a sandbox for a test: ``consentsync sandbox NAME``'s ``serve_forever`` in a thread
(:func:`served`, for the sandbox tests), or a sandbox seeded for one test's fixture
(:func:`serve_seeded`, for every test against a sandbox)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

Server = TypeVar("Server")


@contextmanager
def served(serve_forever: Callable[..., None], records: int) -> Iterator[Any]:
    """A vendor's ``serve_forever`` (port 0, random seed 5, ``records`` seeded) running in a thread
    until the block ends; yields its running sandbox, and checks the thread stopped."""
    stop = threading.Event()
    ready: list[Any] = []
    thread = threading.Thread(
        target=serve_forever,
        args=(0, 5),
        kwargs={"records": records, "stop": stop, "on_ready": ready.append},
        daemon=True,
    )
    thread.start()
    try:
        for _ in range(200):
            if ready:
                break
            threading.Event().wait(0.05)
        assert ready, "the sandbox did not start"
        yield ready[0]
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def serve_seeded(
    sandbox: AbstractContextManager[Server], seed: Callable[[Server], object]
) -> Iterator[Server]:
    """For a fixture to ``yield from``: ``sandbox`` running, seeded by ``seed``, stopped after the
    test."""
    with sandbox as server:
        seed(server)
        yield server
