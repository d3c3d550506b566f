"""Finds connectors through the entry-point group ``consentsync.connectors``.

Built-in connectors are registered there exactly as a third party's would be; an allow-list in
the config can restrict which ones load.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from consentsync.domain import InvalidInput
from consentsync.sdk.connector import Connector

GROUP = "consentsync.connectors"


def available() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


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
