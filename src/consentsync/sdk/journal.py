"""A connector's small durable memory across runs and processes: a set of names (a CRM's job ids)
it must look at again before it next writes, kept in one file of its own.

A CRM job that goes on after the process that started it died (a Salesforce Bulk API 2.0 ingest
job, closed, then the process killed while it polled) can apply its values after the next run
wrote newer ones to the same records. The connector records such a job here before it lets it
run and forgets it once it has seen it end; a later run, in this process or another, finds what
is left and settles it before writing. Nothing recorded: nothing to look at, no call.

Where the file lives: the connector's ``state_dir`` setting, else ``CONSENTSYNC_STATE_DIR``, else
``$XDG_STATE_HOME/consentsync`` (``~/.local/state/consentsync``). One file per connector and CRM
account (the name, the login URL and the principal, hashed): a connector pointed at another org
does not take up the first one's jobs. Every change is written whole under a hidden name, synced
and renamed over the file, so a crash leaves the old set or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import structlog

from consentsync.sdk.errors import Action, ConnectorError, ErrorRule, Fault

__all__ = ["STATE_DIR_ENV", "Journal", "state_dir"]

log = structlog.get_logger("consentsync.sdk")
T = TypeVar("T")

STATE_DIR_ENV = "CONSENTSYNC_STATE_DIR"


def state_dir(configured: str | None = None) -> Path | None:
    """Where connectors keep their journals: ``configured`` (the connector's ``state_dir``), the
    environment's ``CONSENTSYNC_STATE_DIR``, or the user's XDG state directory; None where none
    of them can be told (no home directory)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV]).expanduser()
    if os.environ.get("XDG_STATE_HOME"):
        return Path(os.environ["XDG_STATE_HOME"]) / "consentsync"
    try:
        return Path.home() / ".local" / "state" / "consentsync"
    except (RuntimeError, KeyError):  # no HOME and no password entry for this user
        return None


class Journal:
    """A durable set of strings. ``add`` returns once the name is on disk, ``add_many`` once all
    its names are (one write of the file for them all: each write rewrites and syncs the whole
    file, so add many names at once where they come together); ``discard`` of the last name
    removes the file. The file is read afresh each time: another process may have left names in
    it since (one process writes a connector at a time: the writer lock). Thread-safe. Nothing
    touches the disk before the first use."""

    def __init__(self, folder: Path | None, vendor: str, *identity: str, required: bool = True) -> None:
        digest = hashlib.sha256("\0".join(identity).encode("utf-8")).hexdigest()[:16]
        self.path = None if folder is None else folder / f"{vendor}-{digest}.json"
        self._lock = threading.Lock()
        # Not required (no directory was given, only the user's default one): where that one
        # cannot be used (no home, a read-only home), the journal is off, said once in the log,
        # and the connector writes as it did before it had one. A directory an admin gave must
        # work: its failure stops the write.
        self.required = required
        self.off = False

    def names(self) -> set[str]:
        with self._lock:
            return self._usable(self._read, set())

    def add(self, name: str) -> None:
        self.add_many([name])

    def add_many(self, names: Iterable[str]) -> None:
        """Adds ``names`` in one atomic write: after a crash the file holds all of them or none
        (of those not already in it). Nothing to add: no write."""
        wanted = set(names)
        if not wanted:
            return
        with self._lock:
            held = self._usable(self._read, set())
            if not wanted.issubset(held) and not self.off:
                self._usable(lambda: self._write(held | wanted), None)

    def discard(self, names: Iterable[str]) -> None:
        with self._lock:
            held = self._usable(self._read, set())
            left = held - set(names)
            if left != held and not self.off:
                self._usable(lambda: self._write(left), None)

    def _usable(self, step: Callable[[], T], otherwise: T) -> T:
        if self.off:
            return otherwise
        try:
            return step()
        except ConnectorError as unusable:
            if self.required:
                raise
            self.off = True
            log.warning("sdk.journal_off", path=str(self.path), reason=unusable.rule.reason)
            return otherwise

    def _file(self) -> Path:
        if self.path is None:
            raise self._unusable(RuntimeError("no home directory to keep it under"))
        return self.path

    def _read(self) -> set[str]:
        path = self._file()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as error:
            raise self._unusable(error) from None
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            raise self._unusable(ValueError("expected a JSON list of names"))
        return set(data)

    def _write(self, names: set[str]) -> None:
        path = self._file()
        try:
            if not names:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            hidden = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            with hidden.open("w", encoding="utf-8") as file:
                json.dump(sorted(names), file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(hidden, path)
            # The rename itself must survive a power cut: sync the directory too.
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as error:
            raise self._unusable(error) from None

    def _unusable(self, error: Exception) -> ConnectorError:
        # The path and the kind of failure; the file holds only the CRM's job ids, no personal data.
        where = self.path or "the connector's journal"
        return ConnectorError(
            f"{where}: the connector's journal cannot be used ({type(error).__name__}: "
            f"{getattr(error, 'strerror', None) or error}); give a writable directory as the "
            f"connector's state_dir setting or in {STATE_DIR_ENV}",
            ErrorRule(Action.FAIL, Fault.CONFIG, "journal unusable"),
        )
