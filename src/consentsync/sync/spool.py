"""Pages read from a CRM, kept in a temporary file until they are taken back in order.

A plan (a dry run) is one ledger transaction that is rolled back, and a ledger write transaction
holds the writer lock: the plan reads the whole CRM first, into a spool, so that the lock is held
only while the pages are reconciled, never while the CRM answers. A first read of a large CRM is
too large for memory, hence a file; it is the process's own data, read back by the process that
wrote it, and gone when the spool closes.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from typing import IO, Any


class PageSpool:
    """``add(item)`` as many items as come, then ``for item in spool``: the same items, in order."""

    def __init__(self) -> None:
        # Owned by the spool, closed (and so deleted) by close() or the with block.
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="consentsync-plan-")  # noqa: SIM115
        self.items = 0

    def add(self, item: Any) -> None:
        pickle.dump(item, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self.items += 1

    def __iter__(self) -> Iterator[Any]:
        self._file.flush()
        self._file.seek(0)
        for _ in range(self.items):
            yield pickle.load(self._file)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PageSpool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
