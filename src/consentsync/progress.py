"""How far `consentsync sync` has got, per stage (reading each object, examining, pushing).

On a terminal (stdout and stderr both a TTY): rich's progress bars on stderr, with the rate and
the time left where the CRM says how many records to expect. Off a terminal (a cron job, a
container, a pipe): one structured log line, event ``sync.progress``, every ``--progress-interval``
seconds (``CONSENTSYNC_PROGRESS_INTERVAL``; default 10; 0 for none), and one when the run ends.
Neither ever writes to stdout, which `sync --json` keeps for its report.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
import structlog
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

ENV_INTERVAL = "CONSENTSYNC_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0
MAX_INTERVAL = 86_400.0  # a day; an infinite wait overflowed the reporter thread's timer
_META = "consentsync.progress_interval"
_LOGGER = "consentsync.progress"


def progress_interval_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--progress-interval SECONDS`` (env ``CONSENTSYNC_PROGRESS_INTERVAL``), kept for
    :func:`shown_progress` in the command's context (the command's signature is left alone)."""

    def keep(ctx: click.Context, _param: click.Parameter, value: float) -> float:
        # FloatRange lets nan through (no comparison holds for it): a wait of nan seconds made
        # the reporter log in a busy loop.
        if math.isnan(value):
            raise click.BadParameter(f"seconds from 0 to {MAX_INTERVAL:g} are accepted, not {value}")
        ctx.meta[_META] = value
        return value

    return click.option(
        "--progress-interval",
        type=click.FloatRange(min=0, max=MAX_INTERVAL),
        default=DEFAULT_INTERVAL,
        show_default=True,
        envvar=ENV_INTERVAL,
        metavar="SECONDS",
        expose_value=False,
        callback=keep,
        help="Off a terminal: log a sync.progress line this often (0: never).",
    )(command)


def on_terminal() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


@contextmanager
def shown_progress(engine: Any, interval: float | None = None) -> Iterator[None]:
    """Shows ``engine``'s progress while the block runs: rich bars on a terminal, else
    ``sync.progress`` log lines every ``interval`` seconds (default: the command's option)."""
    if on_terminal():
        display: _Bars | _LogLines | None = _Bars()
    else:
        if interval is None:
            context = click.get_current_context(silent=True)
            interval = context.meta.get(_META, DEFAULT_INTERVAL) if context else DEFAULT_INTERVAL
        display = _LogLines(interval) if interval else None
    if display is None:
        yield
        return
    engine.progress = display.update
    display.start()
    try:
        yield
    finally:
        engine.progress = lambda _report: None
        display.stop()


class _Bars:
    """One rich task per stage; a stage that ends is left complete on screen."""

    def __init__(self) -> None:
        self.progress = Progress(
            # The stage's name never folds (the run's counts come in the summary after the bars).
            TextColumn("{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            refresh_per_second=8,
        )
        self.stage = ""
        self.task: Any = None

    def start(self) -> None:
        self.progress.start()

    def update(self, report: Any) -> None:
        if not report.stage:
            return
        if report.stage != self.stage:
            self._finish()
            self.stage = report.stage
            self.task = self.progress.add_task(f"{report.connector} {report.stage}", total=report.stage_total)
        self.progress.update(self.task, completed=report.stage_done, total=report.stage_total)

    def _finish(self) -> None:
        if self.task is not None:
            done = self.progress.tasks[-1].completed
            self.progress.update(self.task, total=done, completed=done)

    def stop(self) -> None:
        self._finish()
        self.progress.stop()


class _RateColumn(ProgressColumn):
    """Records a second: rich's recent speed, or the stage's average once it ended."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.elapsed:
            speed = task.completed / task.elapsed
        return Text(f"{speed:,.0f}/s" if speed is not None else "-/s", style="progress.data.speed")


class _LogLines:
    """A ``sync.progress`` line every ``interval`` seconds while a stage is under way, and one at
    the end of a run that lasted longer than that: the stage, how many of how many, the stage's
    rate and the time it has left."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        stdlib = logging.getLogger(_LOGGER)
        stdlib.setLevel(logging.INFO)  # progress shows whatever the level of the other lines
        self.log = structlog.wrap_logger(
            stdlib, wrapper_class=structlog.make_filtering_bound_logger(logging.INFO)
        )
        self.report: Any = None
        self.stage = ""
        self.stage_started = self.last_update = time.monotonic()
        self.done = threading.Event()
        self.ticked = False
        self.thread = threading.Thread(target=self._tick, name="consentsync-progress", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def update(self, report: Any) -> None:
        now = time.monotonic()
        if report.stage != self.stage:
            self.stage, self.stage_started = report.stage, self.last_update
        self.report, self.last_update = report, now

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        if self.ticked:  # a run shorter than the interval says nothing
            self._emit()

    def _tick(self) -> None:
        while not self.done.wait(self.interval):
            self.ticked = True
            self._emit()

    def _emit(self) -> None:
        report = self.report
        if report is None or not report.stage:
            return
        done, total = report.stage_done, report.stage_total
        elapsed = max(time.monotonic() - self.stage_started, 1e-6)
        rate = done / elapsed
        eta = round((total - done) / rate, 1) if total and rate and total >= done else None
        self.log.info(
            "sync.progress",
            connector=report.connector,
            run_id=report.run_id,
            stage=report.stage,
            done=done,
            total=total,
            rate=round(rate, 1),
            eta_seconds=eta,
            read=report.counts.read,
            pushed=report.counts.pushed,
        )
