"""Logging: every line structured, consentsync's own and every library's (APScheduler, uvicorn,
the sandboxes' http.server) alike.

structlog's loggers hand their events to the standard library, and one handler on the root logger
renders every record, structlog's or not, through the same processors: JSON lines for machines
(a traceback is one ``exception`` field, never raw lines), or a console renderer for people.
The format is ``json`` or ``console`` (``--log-format`` or ``CONSENTSYNC_LOG_FORMAT``; by default
console on a terminal, JSON elsewhere) and the level comes from ``--log-level`` or
``CONSENTSYNC_LOG_LEVEL``. The daemon logs to stdout; one-off commands to stderr, so that their
stdout stays the report or the JSON a script reads.

Log lines carry record ids and keyed hashes only: use ``hashed()`` for anything that names a
person, never the value itself (and never a bare SHA-256 of it, which anyone holding a list of
addresses can reverse).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sys
from typing import Any, TextIO

import structlog

FORMATS = ("json", "console")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ENV_FORMAT = "CONSENTSYNC_LOG_FORMAT"
ENV_LEVEL = "CONSENTSYNC_LOG_LEVEL"

# Libraries that say too much at the daemon's INFO: each run would log three lines of its own.
_QUIETER = {
    "apscheduler.executors": logging.WARNING,
    "urllib3": logging.WARNING,
    # Seven "setup plugin alembic.autogenerate..." lines whenever the migrations are looked at
    # (every daemon start): Alembic's own set-up, nothing about the ledger.
    "alembic.runtime.plugins": logging.WARNING,
}


class _StandardStream(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stdout`` or ``sys.stderr`` as they are when a line is written (tests and
    click's runner swap them), not as they were when logging was set up."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return getattr(sys, self._name)  # type: ignore[no-any-return]

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _drop_record(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    return event


def resolve_format(fmt: str | None, stream: str) -> str:
    chosen = (fmt or os.environ.get(ENV_FORMAT) or "").strip().lower()
    if not chosen:
        return "console" if getattr(sys, stream).isatty() else "json"
    if chosen not in FORMATS:
        raise ValueError(f"log format {chosen!r} (from {ENV_FORMAT}): accepted are {', '.join(FORMATS)}")
    return chosen


def resolve_level(level: str | None) -> str:
    chosen = (level or os.environ.get(ENV_LEVEL) or "WARNING").strip().upper()
    if chosen not in LEVELS:
        raise ValueError(f"log level {chosen!r} (from {ENV_LEVEL}): accepted are {', '.join(LEVELS)}")
    return chosen


def configure(
    level: str | None = None,
    *,
    fmt: str | None = None,
    json: bool | None = None,
    stream: str = "stderr",
) -> None:
    """Sets up structlog and the standard library's root logger. ``stream`` is ``stdout`` or
    ``stderr``; ``json`` (older callers) stands for ``fmt="json"`` or ``"console"``."""
    if json is not None and fmt is None:
        fmt = "json" if json else "console"
    chosen = resolve_format(fmt, stream)
    numeric = logging.getLevelName(resolve_level(level))
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        timestamper,
    ]
    if chosen == "json":
        rendering: list[structlog.types.Processor] = [
            # A traceback is one field (a list of frames: file, line, function; never locals,
            # which may hold a secret or an address).
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False, use_rich=False)
            ),
            structlog.processors.UnicodeDecoder(),
            structlog.processors.JSONRenderer(),
        ]
    else:
        rendering = [
            structlog.dev.ConsoleRenderer(
                colors=getattr(sys, stream).isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        ]
    handler = _StandardStream(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[_drop_record, *rendering])
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name, quieter in _QUIETER.items():
        logging.getLogger(name).setLevel(max(numeric, quieter))
    # uvicorn keeps handlers of its own unless told otherwise: its records go to the root too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    logging.captureWarnings(True)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


def hashed(identifier: str, key: bytes) -> str:
    """A stable, short, non-reversible handle for an identifier in log lines: an HMAC with the
    deployment's key (the ledger's ``log_key()``), so that no list of addresses reverses it."""
    return "h:" + hmac.new(key, identifier.encode("utf-8"), hashlib.sha256).hexdigest()[:16]
