"""structlog set-up: JSON lines for machines, a console renderer on a terminal.

Log lines carry record ids and hashed identifiers only: use ``hashed()`` for anything that
names a person, never the value itself.
"""

from __future__ import annotations

import hashlib
import logging
import sys

import structlog


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def hashed(identifier: str) -> str:
    """A stable, short, non-reversible handle for an identifier in log lines."""
    return "h:" + hashlib.sha256(identifier.encode("utf-8")).hexdigest()[:16]
