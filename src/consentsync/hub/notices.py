"""The texts people are shown when asked for consent: per purpose and language, versioned,
content-hashed and never changed once added (a capture names the version it showed)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import NOTICE_VERSION_MAX, InvalidInput, check_label
from consentsync.ledger.schema import notices
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

    def as_dict(self, *, with_text: bool = False) -> dict[str, object]:
        shown: dict[str, object] = {
            "purpose": self.purpose,
            "version": self.version,
            "language": self.language,
            "sha256": self.sha256,
            "created_at": self.created_at.isoformat(),
        }
        if with_text:
            shown["text"] = self.text
        return shown


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _notice(row: object) -> Notice:
    return Notice(row.purpose, row.version, row.language, row.sha256, row.text, row.created_at)  # type: ignore[attr-defined]


def add(
    ledger: Ledger, purpose: str, version: str, text: str, *, language: str = "en", actor: str | None = None
) -> Notice:
    """Registers a notice text; the same (purpose, version, language) again is refused unless its
    text is the same to the byte (then nothing changes): a version names one text forever."""
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
    with ledger.engine.begin() as conn:
        existing = conn.execute(
            select(notices).where(
                notices.c.purpose == purpose, notices.c.version == version, notices.c.language == language
            )
        ).one_or_none()
        if existing is not None:
            if existing.sha256 == sha:
                return _notice(existing)
            raise InvalidInput(
                f"notice {purpose} {version} ({language}) exists with another text (sha256 "
                f"{existing.sha256[:12]}…): a version names one text forever; add a new version"
            )
        conn.execute(
            insert(notices).values(
                purpose=purpose, version=version, language=language, sha256=sha, text=text,
                created_at=now, created_by=actor,
            )
        )  # fmt: skip
        audit.append(
            conn,
            [
                AuditRecord(
                    "notice.added",
                    {"purpose": purpose, "version": version, "language": language},
                    new={"sha256": sha},
                    source="cli",
                    actor=actor,
                )
            ],
            now,
        )
    return Notice(purpose, version, language, sha, text, now)


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


def known_versions(ledger: Ledger) -> set[tuple[str, str]]:
    with ledger.engine.connect() as conn:
        return {
            (row.purpose, row.version) for row in conn.execute(select(notices.c.purpose, notices.c.version))
        }
