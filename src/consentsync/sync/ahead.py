"""The examination's decisions a batch ahead, in a second process (a SQLite ledger's large runs).

After its pages, a run examines every person they named, a batch at a time: it reads their
states, links, snapshots and outbox history, decides what each of their records must be told,
writes the outbox rows, and commits the CRM's answers to the pushes sent meanwhile. Deciding is
Python that holds the GIL (a thread would not help) and takes about two thirds of the stage; the
second core meanwhile serves only the CRM's answers. So a child process, built from the run's
configuration, reads the marked people in the same order in read transactions of its own (in
WAL mode a snapshot beside the run's writes) and decides each batch while the run writes the one
before and commits answers.

The run writes a child's decision only where it still holds inside the run's write transaction:
the change feed has no entry for those people after the child's snapshot (an event, objection,
erasure or merge recorded since), and the outbox rows of their records are exactly those the
child weighed (an answer committed since changes a row's status and the record's snapshot in the
same transaction). Nothing else the decision reads changes while the run holds the connector's
lease. Otherwise, and whenever the child is late, failed or died, the run decides the batch
itself: the outbox is the one the run would have written alone.

The child sends each batch's decision as soon as it is made; a send blocks while the pipe is
full, so the child runs at most about one batch ahead and memory stays flat whatever the org's
size. It exits when the marked people run out, when its pipe breaks (the run ended or was
killed), or on an error, which it reports in one line; it never writes to the ledger.
"""

from __future__ import annotations

import gc
import multiprocessing
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from sqlalchemy import func, select

from consentsync.collector import BULK_THRESHOLDS
from consentsync.domain import without_emails
from consentsync.ledger.engine import reading
from consentsync.ledger.schema import state_changes, sync_examine
from consentsync.ledger.service import Ledger
from consentsync.sdk.errors import scrub
from consentsync.sync.decisions import DecidedPushes

if TYPE_CHECKING:
    from multiprocessing.connection import Connection as Pipe

log = structlog.get_logger(__name__)

# How long the run waits for a child's batch before it decides on without the child: far more than
# a batch takes (a tenth of a second for 1,000 people), far less than a stuck child would cost.
LATE_SECONDS = 60.0


class Decider(Protocol):
    """What the child decides with: a sync engine (``app.examining_engine``)."""

    name: str
    ledger: Ledger

    def decide_pushes(self, conn: Any, subject_ids: Sequence[int]) -> DecidedPushes: ...


@dataclass(frozen=True)
class Recipe:
    """How a child process builds the engine it decides with: ``build(*args)`` (picklable: a
    module's function and the run's configuration, see ``app.open_sync``)."""

    build: Callable[..., Decider]
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Ahead:
    """A batch decided by the child: its people, the change feed's highest id in the child's
    snapshot, and the decision."""

    subject_ids: list[int]
    feed_top: int
    decided: DecidedPushes


@dataclass(frozen=True, slots=True)
class _Failed:
    error: str


def next_marked(conn: Any, connector: str, after: int, limit: int) -> list[int]:
    """The next ``limit`` people marked for examination above id ``after``, in id order (the run
    and the child read the same batches)."""
    return list(
        conn.execute(
            select(sync_examine.c.subject_id)
            .where(sync_examine.c.connector == connector, sync_examine.c.subject_id > after)
            .order_by(sync_examine.c.subject_id)
            .limit(limit)
        ).scalars()
    )


def changed_since(conn: Any, subject_ids: Sequence[int], feed_top: int) -> bool:
    """Whether the change feed names any of these people after id ``feed_top`` (through the
    primary key: the feed holds few rows above it while a run examines)."""
    later = select(state_changes.c.id).where(
        state_changes.c.id > feed_top, state_changes.c.subject_id.in_(subject_ids)
    )
    return conn.execute(later.limit(1)).first() is not None


class DecisionsAhead:
    """The run's side: starts the child, hands over its decisions batch by batch."""

    def __init__(self, recipe: Recipe, *, after: int, now: datetime, batch_size: int) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process holding threads
        self._pipe, child_end = context.Pipe(duplex=False)
        self._process = context.Process(
            target=decide_ahead,
            args=(recipe, after, now, batch_size, child_end),
            name="consentsync-decide-ahead",
            daemon=True,  # ended with the run however it ends
        )
        self._process.start()
        child_end.close()
        self._early: Ahead | None = None
        self.alive = True
        self.waited = 0.0  # seconds the run waited for the child

    def take(self, subject_ids: Sequence[int]) -> Ahead | None:
        """The child's decision for exactly these people, or None: the run decides them."""
        first = subject_ids[0]
        while self.alive:
            got = self._early or self._receive()
            self._early = None
            if got is None:
                return None
            if got.subject_ids[0] > first:
                self._early = got  # a later batch: kept for its turn
                return None
            if list(got.subject_ids) == list(subject_ids):
                return got
            # An earlier or differently cut batch (someone marked people meanwhile): dropped.
        return None

    def _receive(self) -> Ahead | None:
        started = time.perf_counter()
        try:
            ready = self._pipe.poll(LATE_SECONDS)
            got = self._pipe.recv() if ready else _Failed(f"no batch within {LATE_SECONDS:.0f} s")
        except (EOFError, OSError):
            got = _Failed(f"the process ended (exit code {self._process.exitcode})")
        finally:
            self.waited += time.perf_counter() - started
        if isinstance(got, _Failed):
            log.warning("sync.decide_ahead_stopped", error=got.error)
            self.close()
            return None
        if got is None:  # the child read every marked person
            self.alive = False
        return got

    def close(self) -> None:
        self.alive = False
        self._early = None
        self._pipe.close()
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(timeout=10)


def decide_ahead(recipe: Recipe, after: int, now: datetime, batch_size: int, pipe: Pipe) -> None:
    """The child: decides every marked person's batch above ``after`` and sends each decision.
    Its clock runs from the run's ``now`` (a test's fixed clock stays fixed to the second)."""
    try:
        gc.set_threshold(*BULK_THRESHOLDS)  # a process of its own for bulk work (collector.py)
        engine = recipe.build(*recipe.args)
        started = time.monotonic()
        engine.ledger.clock = lambda: now + timedelta(seconds=time.monotonic() - started)
        while True:
            with reading(engine.ledger.engine) as conn, conn.begin():
                # The first read fixes the snapshot: every later read of the batch is as of it.
                feed_top = conn.execute(select(func.max(state_changes.c.id))).scalar() or 0
                marked = next_marked(conn, engine.name, after, batch_size)
                ahead = Ahead(marked, feed_top, engine.decide_pushes(conn, marked)) if marked else None
            pipe.send(ahead)
            if ahead is None:
                return
            after = marked[-1]
    except (BrokenPipeError, EOFError):
        return  # the run is gone
    except Exception as error:  # reported in one line; the run decides on alone
        with suppress(OSError):
            pipe.send(_Failed(f"{type(error).__name__}: {_loggable(error)}"))


def _loggable(error: Exception) -> str:
    """The error's first line, without addresses or secrets (a driver's error can quote a value)."""
    first = str(error).splitlines()[0][:200] if str(error) else ""
    return scrub(without_emails(first, "<email address>"))
