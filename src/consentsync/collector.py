"""Python's cycle collector during bulk work: run less often, never switched off.

CPython starts the cycle collector by counting allocations, not garbage: by default a young
collection every 700 container allocations, and a full one (every object in the process) once
enough survivors accumulated. A sync run allocates millions of short-lived rows, mappings and
decisions while it keeps large, long-lived caches (the warm people, the identity maps, the
writer's state), so the default thresholds made it walk its whole heap over and over and find
almost nothing to free: measured with ``gc.callbacks`` in a 50,000-contact full sync
(``bench/sync_bench.py --contacts 50000``), 46 full collections and 6,170 young ones took 5.6 s
of its 25.1 s of CPU, and the full collections grow with the heap, that is with the org.

With the thresholds below the same run made 23 young collections and one of the middle
generation (0.4 s), and its peak RSS was the same (265 MiB): what the collector does free (a
few thousand objects in cycles, mostly SQLAlchemy's statements) is still freed, later.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Young collections every 50,000 container allocations, the middle generation every 20 of
# those, the full one considered every 100 of these (and, as always in CPython, only once the
# survivors since the last one reach a quarter of the heap).
BULK_THRESHOLDS = (50_000, 20, 100)

_lock = threading.Lock()
_holders = 0
_saved: tuple[int, ...] = ()


@contextmanager
def collecting_less_often() -> Iterator[None]:
    """Raises the collector's thresholds to at least ``BULK_THRESHOLDS`` for the block.

    Process-wide, as the thresholds are: blocks may nest or run in threads side by side (the
    daemon runs connectors in threads); the thresholds found before the first one are put back
    when the last one ends."""
    global _holders, _saved
    with _lock:
        if _holders == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(*(max(now, bulk) for now, bulk in zip(_saved, BULK_THRESHOLDS, strict=False)))
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                gc.set_threshold(*_saved)
