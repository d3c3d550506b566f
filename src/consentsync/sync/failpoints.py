"""Named points where a test makes a real process die or fail, to prove that a crash there loses
nothing (the crash-safety tests and ``bench/crash_soak.py``).

``CONSENTSYNC_FAILPOINTS="sync.push.answered=kill@2,sync.page.read=raise"`` kills the process
with SIGKILL the second time the push path reaches ``sync.push.answered`` (the CRM answered a
batch, the ledger has not committed it), and raises :class:`FailpointHit` the first time a page
is read. ``hold`` pauses the process there instead, so a test can act while a run is at a known
point: it creates ``<name>.held`` in ``CONSENTSYNC_FAILPOINT_DIR`` and waits until the test
deletes it (at most five minutes). Unset (production), :func:`failpoint` is a dictionary lookup
that finds nothing.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

__all__ = ["FailpointHit", "failpoint"]


class FailpointHit(RuntimeError):
    """Raised at a failpoint configured with ``raise``."""


def _parse(text: str) -> dict[str, tuple[str, int]]:
    points: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, action = item.partition("=")
        action, _, nth = (action or "kill").partition("@")
        points[name.strip()] = (action.strip(), int(nth) if nth else 1)
    return points


_POINTS = _parse(os.environ.get("CONSENTSYNC_FAILPOINTS", ""))
_hits: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Does what ``CONSENTSYNC_FAILPOINTS`` says for ``name`` on its n-th hit (nothing when unset)."""
    if not _POINTS or name not in _POINTS:
        return
    action, nth = _POINTS[name]
    _hits[name] += 1
    if _hits[name] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "hold":
        _hold(name)
        return
    raise FailpointHit(name)


def _hold(name: str, longest: float = 300.0) -> None:
    marker = Path(os.environ["CONSENTSYNC_FAILPOINT_DIR"]) / f"{name}.held"
    marker.touch()
    deadline = time.monotonic() + longest
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
