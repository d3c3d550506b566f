"""Which registered text of a notice version an event names as shown: the one rule of every
proof of consent (receipts, mailed or fetched, and the DSAR export). Core, under the ledger: the
hub's notice registry (hub/notices.py) and ``Ledger.subject_view`` both read it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from consentsync.domain import as_utc
from consentsync.ledger.schema import notices


@dataclass(frozen=True, slots=True)
class Notice:
    purpose: str
    version: str
    language: str
    sha256: str
    text: str
    created_at: datetime
    # Since when the text was shown; None: since its registration (``created_at``).
    in_effect_from: datetime | None = None

    @property
    def shown_from(self) -> datetime:
        return self.in_effect_from or self.created_at

    def as_dict(self, *, with_text: bool = False) -> dict[str, object]:
        fields: dict[str, object] = {
            "purpose": self.purpose,
            "version": self.version,
            "language": self.language,
            "sha256": self.sha256,
            "created_at": self.created_at.isoformat(),
            "in_effect_from": self.shown_from.isoformat(),
        }
        if with_text:
            fields["text"] = self.text
        return fields


def notice_of(row: Any) -> Notice:
    return Notice(
        row.purpose, row.version, row.language, row.sha256, row.text, row.created_at, row.in_effect_from
    )


def texts_of(conn: Connection, purpose: str, version: str) -> list[Notice]:
    """A version's texts, in the order they were registered."""
    query = select(notices).where(notices.c.purpose == purpose, notices.c.version == version)
    return [notice_of(row) for row in conn.execute(query.order_by(notices.c.id))]


def text_shown(
    texts: Sequence[Notice], moment: datetime | None, language: str | None = None
) -> Notice | None:
    """The text an event under a version names as shown, from ``texts`` (that version's, in the
    order registered), ``moment`` (the event's time; an undated one's ``recorded_at``) and
    ``language`` (the one the event recorded as shown, migration 0021): its text in that
    language, if it was in effect by then (``check_language``'s test: a capture is refused
    otherwise). An event that recorded none (before 0021, a CRM's value): the version's first
    text, and only if it was in effect by then. The one rule of every proof: receipts, mailed or
    fetched in any language, and the DSAR export (``Ledger.subject_view``) name the same text
    for an event, and a text registered after the event, in any language, is never what the
    person saw (Art. 7(1))."""
    if not texts or moment is None:
        return None
    if language is not None:
        found = next((text for text in texts if text.language == language), None)
        in_effect = found is not None and in_effect_at(as_utc(found.shown_from), as_utc(moment))
        return found if in_effect else None
    first = texts[0]
    return first if as_utc(moment) >= as_utc(first.shown_from) else None


def in_effect_at(since: datetime, event_time: datetime) -> bool:
    """A time stamped to the whole second may have been any moment of it: a text in effect from
    10:00:00.4 may have been shown at a time stamped 10:00:00."""
    return event_time >= (since if event_time.microsecond else since.replace(microsecond=0))


def language_in_effect(texts: dict[str, datetime], language: str, event_time: datetime) -> str | None:
    """``language`` if the version had a text in it in effect at ``event_time`` (``texts``: since
    when each language's text was shown), else None: what a no records as shown, where
    ``check_language`` would refuse a grant (a no is never turned away for a label)."""
    since = texts.get(language)
    return language if since is not None and in_effect_at(since, event_time) else None
