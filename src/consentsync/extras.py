"""The optional parts of consentsync and the pip extra that installs each.

The default install (``pip install consentsync``) syncs, runs the daemon with its /metrics and
health checks, and runs the demo. The ops console (``consentsync web``, ``consentsync user``,
``consentsync run --web-port``) needs the ``console`` extra; a PostgreSQL ledger the ``postgres``
extra. A command that needs an extra which is not installed says which, in one line (exit 2).
"""

from __future__ import annotations

from importlib.util import find_spec

from consentsync.domain import InvalidInput

# extra -> the modules it provides; a tuple inside names alternatives (python-multipart's module
# was renamed from multipart to python_multipart).
EXTRAS: dict[str, tuple[str | tuple[str, ...], ...]] = {
    "console": ("fastapi", "uvicorn", "jinja2", ("python_multipart", "multipart"), "argon2"),
}


class MissingExtra(InvalidInput):
    """A command needs an extra that is not installed."""


def missing(extra: str) -> list[str]:
    absent: list[str] = []
    for module in EXTRAS[extra]:
        names = module if isinstance(module, tuple) else (module,)
        if not any(find_spec(name) is not None for name in names):
            absent.append(names[0])
    return absent


def require(extra: str, what: str) -> None:
    """Raises MissingExtra naming the extra to install when ``what`` cannot run without it."""
    absent = missing(extra)
    if absent:
        raise MissingExtra(
            f"{what} needs the {extra!r} extra, which is not installed (missing {', '.join(absent)}): "
            f"pip install 'consentsync[{extra}]'"
        )
