"""The texts people are shown when asked for consent: per purpose and language, versioned,
content-hashed and never changed once added (a capture names the version it showed). Each is
in effect from a time (its registration unless said): a grant dated before the version it names
was shown cannot be true, and is refused (``check_shown``, Art. 7(1))."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, insert, select, update

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import NOTICE_VERSION_MAX, InvalidInput, as_utc, check_label, check_moment, iso, shown
from consentsync.ledger.schema import consent_events, notices
from consentsync.ledger.service import Ledger, NotFound
from consentsync.notice_texts import Notice, in_effect_at, notice_of

_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
NOTICE_TEXT_MAX = 100_000
ACCEPTED_LISTED = 5  # the versions a refused grant's error names as accepted


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
                return _dated(conn, notice_of(existing), in_effect_from, actor, now)
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
        return [notice_of(row) for row in conn.execute(query)]


def find(ledger: Ledger, purpose: str, version: str, language: str | None = None) -> Notice:
    query = select(notices).where(notices.c.purpose == purpose, notices.c.version == version)
    with ledger.engine.connect() as conn:
        rows = [notice_of(row) for row in conn.execute(query.order_by(notices.c.id))]
    if not rows:
        raise NotFound(f"no notice version {version!r} for purpose {purpose!r}")
    chosen = [n for n in rows if n.language == language]
    return (chosen or rows)[0]


def text_shown_on_page(ledger: Ledger, purpose: str, version: str, language: str) -> Notice | None:
    """The text of ``version`` a confirmation page in ``language`` shows (``find``: the version's
    text in that language, else its first; None for a version without a text): what confirming
    or declining there records as shown (``Evidence.notice_language``)."""
    try:
        return find(ledger, purpose, version, language)
    except NotFound:
        return None


def current(ledger: Ledger, purpose: str, language: str = "en") -> Notice | None:
    """The latest version registered for ``purpose`` (in ``language`` if there is one)."""
    with ledger.engine.connect() as conn:
        rows = [
            notice_of(row)
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


def languages_in_effect(ledger: Ledger) -> dict[tuple[str, str], dict[str, datetime]]:
    """Since when each (purpose, version) was shown in each language it has a text in."""
    found: dict[tuple[str, str], dict[str, datetime]] = {}
    query = select(
        notices.c.purpose,
        notices.c.version,
        notices.c.language,
        notices.c.in_effect_from,
        notices.c.created_at,
    )
    with ledger.engine.connect() as conn:
        for row in conn.execute(query):
            found.setdefault((row.purpose, row.version), {})[row.language] = as_utc(
                row.in_effect_from or row.created_at
            )
    return found


def check_language(
    purpose: str, version: str, texts: dict[str, datetime], language: str, event_time: datetime, field: str
) -> None:
    """A grant says the person was shown notice ``version`` in ``language`` at ``event_time``:
    refused unless that version had a text in that language in effect then (``texts``: since
    when each language's text was shown). The language is recorded with the grant
    (``Evidence.notice_language``): its receipt and export name that text (``text_shown``), and
    a text registered later must never become what was shown (Art. 7(1))."""
    offered = sorted(lang for lang, since in texts.items() if in_effect_at(since, event_time))
    if language in offered:
        return
    raise InvalidInput(
        f"{field}: notice {shown(version)} of purpose {purpose!r} has no text in {shown(language, 20)} "
        f"in effect at {iso(event_time)}; it has {', '.join(offered) or 'none'} (a text shown then "
        f"is registered with consentsync notice add {purpose} FILE --version VERSION --language "
        f"{language} --in-effect-from TIME)"
    )


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


def check_grant_notice(
    purpose: str,
    version: str | None,
    registered: Mapping[tuple[str, str], datetime],
    field: str,
    *,
    kept_elsewhere: bool = False,
) -> datetime | None:
    """The notice a captured grant names, as every capture path checks it (the capture API,
    ``ledger record``): a grant names the version the person was shown, one registered for its
    purpose (``registered``: ``in_effect``), since a grant naming none, or a typo, proves nothing
    (Art. 7(1)). Returns since when that version was in effect, to check the grant's time
    against (``check_shown``). ``kept_elsewhere``: a purpose without any registered notice (a
    deployment keeping its notice texts outside the hub) takes a version as given, or none,
    and returns None; its caller asks the grant's proof another way (``ledger record``). The
    capture API takes no grant for such a purpose."""
    versions = {shown_version: since for (key, shown_version), since in registered.items() if key == purpose}
    if not versions and kept_elsewhere:
        return None
    # What is accepted, newest first and a few: a purpose's versions pile up over the years.
    newest = sorted(versions, key=lambda v: (versions[v], v), reverse=True)
    listed = ", ".join(shown(v) for v in newest[:ACCEPTED_LISTED])
    more = f" and {len(newest) - ACCEPTED_LISTED} older" if len(newest) > ACCEPTED_LISTED else ""
    accepted = f"registered for {purpose!r}: {listed}{more}" if versions else "none is registered"
    if version is None:
        raise InvalidInput(
            f"{field}: a grant must name the notice version shown "
            f"({accepted}; consentsync notice list {purpose})"
        )
    if version not in versions:
        raise InvalidInput(
            f"{field}: {shown(version)} is not a registered notice of purpose {purpose!r} ({accepted}): "
            f"register its text first with consentsync notice add {purpose} FILE --version {shown(version)}"
        )
    return versions[version]


def check_shown(purpose: str, version: str, since: datetime, event_time: datetime | None, field: str) -> None:
    """A grant dated ``event_time`` names notice ``version``, shown from ``since``: refused if it
    is dated before (Art. 7(1): the person cannot have been shown a text not yet in use). A time
    stamped to the whole second may have been any moment of it: it is refused only if the whole
    second came before (a notice registered at 10:00:00.4, a grant stamped 10:00:00)."""
    if event_time is None:
        return  # undated: the reconciler reads it as early as possible, so it reverses nothing
    if not in_effect_at(since, event_time):
        raise InvalidInput(
            f"{field}: {iso(event_time)} is before notice {shown(version)} of purpose {purpose!r} was "
            f"in effect (from {iso(since)}): no one was shown it then; a text shown earlier is "
            f"registered with consentsync notice add {purpose} FILE --version VERSION --in-effect-from TIME"
        )
