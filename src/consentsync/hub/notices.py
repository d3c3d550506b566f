"""The texts people are shown when asked for consent: per purpose and language, versioned,
content-hashed and never changed once added (a capture names the version it showed). Each is
in effect from a time (its registration unless said): a grant dated before the version it names
was shown cannot be true, and is refused (``check_shown``, Art. 7(1))."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import NOTICE_VERSION_MAX, InvalidInput, as_utc, check_label, check_moment, iso, shown
from consentsync.ledger.schema import consent_events, notices
from consentsync.ledger.service import Ledger, NotFound

_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
NOTICE_TEXT_MAX = 100_000


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


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _notice(row: Any) -> Notice:
    return Notice(
        row.purpose, row.version, row.language, row.sha256, row.text, row.created_at, row.in_effect_from
    )


def add(
    ledger: Ledger,
    purpose: str,
    version: str,
    text: str,
    *,
    language: str = "en",
    actor: str | None = None,
    in_effect_from: datetime | None = None,
) -> Notice:
    """Registers a notice text; the same (purpose, version, language) again is refused unless its
    text is the same to the byte (then nothing changes): a version names one text forever.
    ``in_effect_from``: since when the text was shown (default: now, its registration); not in
    the future. It is fixed once set: only a version registered before there were such dates
    (NULL) may be given one, once, by adding its text again."""
    if purpose not in ledger.purposes:
        raise InvalidInput(f"unknown purpose {purpose!r}: configured are {', '.join(ledger.purposes)}")
    check_label(version, "version", NOTICE_VERSION_MAX, required=True)
    if not _LANGUAGE.match(language):
        raise InvalidInput(f"--language {language!r}: expected a language tag such as en, de or pt-BR")
    if not text.strip():
        raise InvalidInput("the notice text is empty")
    if len(text) > NOTICE_TEXT_MAX:
        raise InvalidInput(f"the notice text has {len(text)} characters: at most {NOTICE_TEXT_MAX}")
    sha = text_digest(text)
    now = ledger.clock()
    # A text shown from a date to come would make every grant naming it until then impossible.
    check_moment(in_effect_from, "--in-effect-from", now, ledger.max_clock_skew_seconds)
    with ledger.engine.begin() as conn:
        existing = conn.execute(
            select(notices).where(
                notices.c.purpose == purpose, notices.c.version == version, notices.c.language == language
            )
        ).one_or_none()
        if existing is not None:
            if existing.sha256 == sha:
                return _dated(conn, _notice(existing), in_effect_from, actor, now)
            raise InvalidInput(
                f"notice {purpose} {version} ({language}) exists with another text (sha256 "
                f"{existing.sha256[:12]}…): a version names one text forever; add a new version"
            )
        conn.execute(
            insert(notices).values(
                purpose=purpose, version=version, language=language, sha256=sha, text=text,
                created_at=now, created_by=actor, in_effect_from=in_effect_from or now,
            )
        )  # fmt: skip
        audit.append(
            conn,
            [
                AuditRecord(
                    "notice.added",
                    {"purpose": purpose, "version": version, "language": language},
                    new={"sha256": sha, "in_effect_from": iso(in_effect_from or now)},
                    source="cli",
                    actor=actor,
                )
            ],
            now,
        )
    return Notice(purpose, version, language, sha, text, now, in_effect_from or now)


def _dated(
    conn: Connection, notice: Notice, in_effect_from: datetime | None, actor: str | None, now: datetime
) -> Notice:
    """The same text added again: nothing changes, unless it gives the in-effect date of a version
    registered before there were such dates (set once, audited). A date once set is fixed: moved
    back, it would make grants true that were refused as impossible."""
    if in_effect_from is None or in_effect_from == notice.in_effect_from:
        return notice
    if notice.in_effect_from is not None:
        raise InvalidInput(
            f"--in-effect-from: notice {notice.purpose} {notice.version} ({notice.language}) is in "
            f"effect from {iso(notice.in_effect_from)}, fixed when it was set; a text shown from "
            "another time is a new version"
        )
    where = (notices.c.purpose, notices.c.version, notices.c.language)
    key = (notice.purpose, notice.version, notice.language)
    conn.execute(
        update(notices)
        .where(*(column == value for column, value in zip(where, key, strict=True)))
        .values(in_effect_from=in_effect_from)
    )
    audit.append(
        conn,
        [
            AuditRecord(
                "notice.dated",
                {"purpose": notice.purpose, "version": notice.version, "language": notice.language},
                old={"in_effect_from": None},
                new={"in_effect_from": iso(in_effect_from)},
                source="cli",
                actor=actor,
            )
        ],
        now,
    )
    return Notice(*key, notice.sha256, notice.text, notice.created_at, in_effect_from)


def listed(ledger: Ledger, purpose: str | None = None) -> list[Notice]:
    query = select(notices).order_by(notices.c.purpose, notices.c.id)
    if purpose is not None:
        query = query.where(notices.c.purpose == purpose)
    with ledger.engine.connect() as conn:
        return [_notice(row) for row in conn.execute(query)]


def find(ledger: Ledger, purpose: str, version: str, language: str | None = None) -> Notice:
    query = select(notices).where(notices.c.purpose == purpose, notices.c.version == version)
    with ledger.engine.connect() as conn:
        rows = [_notice(row) for row in conn.execute(query.order_by(notices.c.id))]
    if not rows:
        raise NotFound(f"no notice version {version!r} for purpose {purpose!r}")
    chosen = [n for n in rows if n.language == language]
    return (chosen or rows)[0]


def current(ledger: Ledger, purpose: str, language: str = "en") -> Notice | None:
    """The latest version registered for ``purpose`` (in ``language`` if there is one)."""
    with ledger.engine.connect() as conn:
        rows = [
            _notice(row)
            for row in conn.execute(
                select(notices).where(notices.c.purpose == purpose).order_by(notices.c.id.desc())
            )
        ]
    chosen = [n for n in rows if n.language == language]
    return (chosen or rows or [None])[0]


def in_effect(ledger: Ledger) -> dict[tuple[str, str], datetime]:
    """Since when each (purpose, version) was shown: its earliest text in any language (the
    version existed then), a text registered before such dates from its registration."""
    found: dict[tuple[str, str], datetime] = {}
    query = select(notices.c.purpose, notices.c.version, notices.c.in_effect_from, notices.c.created_at)
    with ledger.engine.connect() as conn:
        for row in conn.execute(query):
            since = row.in_effect_from or row.created_at
            key = (row.purpose, row.version)
            found[key] = min(found.get(key, since), since)
    return found


@dataclass(frozen=True, slots=True)
class RecordedBefore:
    count: int
    first: datetime


def recorded_before(ledger: Ledger, notice: Notice) -> RecordedBefore | None:
    """The values recorded under ``notice``'s purpose and version dated before it was shown
    (none: None): no text is known for them (``Ledger.subject_view``)."""
    with ledger.engine.connect() as conn:
        count, first = conn.execute(
            select(func.count(), func.min(consent_events.c.event_time)).where(
                consent_events.c.purpose == notice.purpose,
                consent_events.c.notice_version == notice.version,
                consent_events.c.event_time < notice.shown_from,
            )
        ).one()
    return RecordedBefore(int(count), as_utc(first)) if count else None


def check_shown(purpose: str, version: str, since: datetime, event_time: datetime | None, field: str) -> None:
    """A grant dated ``event_time`` names notice ``version``, shown from ``since``: refused if it
    is dated before (Art. 7(1): the person cannot have been shown a text not yet in use). A time
    stamped to the whole second may have been any moment of it: it is refused only if the whole
    second came before (a notice registered at 10:00:00.4, a grant stamped 10:00:00)."""
    if event_time is None:
        return  # undated: the reconciler reads it as early as possible, so it reverses nothing
    compared = since if event_time.microsecond else since.replace(microsecond=0)
    if event_time < compared:
        raise InvalidInput(
            f"{field}: {iso(event_time)} is before notice {shown(version)} of purpose {purpose!r} was "
            f"in effect (from {iso(since)}): no one was shown it then; a text shown earlier is "
            f"registered with consentsync notice add {purpose} FILE --version VERSION --in-effect-from TIME"
        )
