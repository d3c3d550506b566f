"""A database row as the dict that the command line (--json), the console and the API answer with.

Most answers show a row's columns one for one, some under another name, every timestamp as ISO
8601 text with Z. ``RowView`` spells that once, so that a view names its fields and nothing else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from consentsync.domain import iso


class RowView:
    """The listed fields of a row, in order: ``RowView("id object=object_type created_at")`` shows
    the column ``object_type`` as ``object``; a datetime becomes ISO 8601 text (``iso``), as every
    answer spells a moment."""

    __slots__ = ("fields",)

    def __init__(self, fields: str) -> None:
        # (key the view shows, column it reads), parsed once: a view is applied to every row.
        self.fields = tuple(
            (key, column or key) for key, _, column in (f.partition("=") for f in fields.split())
        )

    def __call__(self, row: Any) -> dict[str, Any]:
        view: dict[str, Any] = {}
        for key, column in self.fields:
            value = getattr(row, column)
            view[key] = iso(value) if isinstance(value, datetime) else value
        return view
