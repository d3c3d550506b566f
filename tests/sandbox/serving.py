"""What the sandbox tests share about ``consentsync sandbox NAME``'s ``serve_forever``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


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
