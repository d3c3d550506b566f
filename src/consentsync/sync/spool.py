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
from contextlib import contextmanager
from typing import IO, Any


class PageSpool:
    """``add(item)`` as many items as come, then ``for item in spool``: the same items, in order."""

    def __init__(self) -> None:
        self.directory = tempfile.gettempdir()
        with self._named():
            # Owned by the spool, closed (and so deleted) by close() or the with block.
            self._file: IO[bytes] = tempfile.TemporaryFile(prefix="consentsync-plan-")  # noqa: SIM115
        self.items = 0

    @contextmanager
    def _named(self) -> Iterator[None]:
        """The spool's file has no name (it is deleted as it is made): an OS error while writing
        it (a full disk, most often) is said of the directory it is in, with the remedy, instead
        of "the output could not be written" (the command's output is not what failed). The
        errno stays, so the exit code still says whether trying again later can help."""
        try:
            yield
        except OSError as error:
            if error.filename is not None:
                raise
            why = error.strerror or str(error)
            raise OSError(
                error.errno,
                f"{why} while spooling the CRM's pages for the plan (set TMPDIR to a directory with "
                "room for a whole read of the CRM)",
                self.directory,
            ) from None

    def add(self, item: Any) -> None:
        with self._named():
            pickle.dump(item, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self.items += 1

    def __iter__(self) -> Iterator[Any]:
        with self._named():
            self._file.flush()
        self._file.seek(0)
        for _ in range(self.items):
            yield pickle.load(self._file)

    def close(self) -> None:
        # Closing flushes what is still buffered: it fails as the writes do on a full disk, and
        # an error already on its way must not be replaced by this one.
        try:
            self._file.close()
        except OSError:
            if not self._file.closed:
                raise

    def __enter__(self) -> PageSpool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
