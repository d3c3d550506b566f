"""What someone typed into a form their session ended under, kept for their return.

A form sent after its session ended (expired, logged out elsewhere, ended by an admin) cannot be
acted on: the sender must log in again. What they typed is not thrown away silently: its
non-secret fields are kept here, in this process's memory only (never in the ledger, never
logged, never in a URL), for ``DRAFT_MINUTES``, bound to the account whose session it was and to
the page the form was on. After logging in again that account returns to the page, and the page
fills the form in again once. Passwords and tokens are never kept."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

DRAFT_COOKIE = "consentsync_draft"
DRAFT_MINUTES = 15
MAX_DRAFTS = 500  # the oldest go first: a flood of expired forms cannot fill the memory
MAX_FIELD = 4000
# Never kept: secrets, and the form's own plumbing.
NOT_KEPT = frozenset({"password", "current_password", "csrf_token", "back", "digest"})


@dataclass(frozen=True, slots=True)
class Draft:
    owner: str
    path: str
    fields: dict[str, list[str]]
    expires: float


class Drafts:
    def __init__(self) -> None:
        self._drafts: dict[str, Draft] = {}
        self._lock = threading.Lock()

    def keep(self, owner: str, path: str, fields: list[tuple[str, str]]) -> str:
        kept: dict[str, list[str]] = {}
        for name, value in fields:
            if name not in NOT_KEPT and len(name) <= 64:
                kept.setdefault(name, []).append(value[:MAX_FIELD])
        key = secrets.token_urlsafe(24)
        with self._lock:
            self._expire()
            while len(self._drafts) >= MAX_DRAFTS:
                self._drafts.pop(next(iter(self._drafts)))
            self._drafts[key] = Draft(owner, path, kept, time.monotonic() + DRAFT_MINUTES * 60)
        return key

    def owner(self, key: str | None) -> str | None:
        """Whose draft ``key`` is (the login page fills in their name), or None."""
        with self._lock:
            self._expire()
            draft = self._drafts.get(key or "")
        return draft.owner if draft is not None else None

    def take(self, key: str | None, owner: str, path: str) -> dict[str, list[str]] | None:
        """The fields kept under ``key`` if they are ``owner``'s and were typed on ``path``
        (then they are gone: a page fills them in once); else None."""
        if not key:
            return None
        with self._lock:
            self._expire()
            draft = self._drafts.get(key)
            if draft is None or draft.owner != owner or draft.path != path:
                return None
            del self._drafts[key]
        return draft.fields

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, d in self._drafts.items() if d.expires <= now]:
            del self._drafts[key]
