"""Finds plugins through entry points: connectors (group ``consentsync.connectors``), their
sandboxes' ``consentsync sandbox NAME`` commands (``consentsync.sandboxes``) and single-CRM demos
(``consentsync.demos``); the contract harnesses are in :mod:`consentsync.sdk.harness`.

Built-in connectors are registered there exactly as a third party's would be; an allow-list in
the config can restrict which ones load. The sandboxes and demos are registered only by an
install that has them (the ``demo`` extra): the runtime install has none.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from consentsync.domain import InvalidInput
from consentsync.sdk.connector import Connector

GROUP = "consentsync.connectors"
SANDBOX_GROUP = "consentsync.sandboxes"
DEMO_GROUP = "consentsync.demos"
#: What to install for the sandboxes, said wherever one is asked for and none is installed.
SANDBOX_EXTRA = "pip install 'consentsync[demo]'"


def available(group: str = GROUP) -> dict[str, EntryPoint]:
    """The entry points of ``group`` (default: the connectors), by name."""
    return dict(_installed(group))


@functools.cache
def _installed(group: str) -> tuple[tuple[str, EntryPoint], ...]:
    # Once a process: reading every installed distribution's metadata took 9 ms of each run's
    # 60 (a daemon opens its connectors every interval); what is installed does not change under
    # a running process.
    return tuple((ep.name, ep) for ep in entry_points(group=group))


def load(vendor: str, *, allowed: Iterable[str] | None = None) -> type[Connector]:
    found = available()
    allow = set(allowed) if allowed is not None else None
    if allow is not None and vendor not in allow:
        raise InvalidInput(
            f"connector {vendor!r} is not in the allow-list: allowed are {', '.join(sorted(allow))}"
        )
    entry = found.get(vendor)
    if entry is None:
        installed = ", ".join(sorted(found)) or "none"
        raise InvalidInput(f"no connector {vendor!r} is installed: installed are {installed}")
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise InvalidInput(f"entry point {vendor!r} ({entry.value}) is not a consentsync Connector")
    return cls


def load_plugin(group: str, name: str, what: str) -> object:
    """The object registered as ``name`` in ``group`` (a sandbox command, a demo); an
    :class:`InvalidInput` naming the installed ones, or the extra to install, when none is."""
    found = available(group)
    entry = found.get(name)
    if entry is None:
        installed = ", ".join(sorted(found))
        hint = f"installed are {installed}" if installed else f"none is installed: {SANDBOX_EXTRA}"
        raise InvalidInput(f"no {what} {name!r}: {hint}")
    return entry.load()
