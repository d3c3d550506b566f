"""What one bulk recording already knows about the subjects it has written.

``Ledger.record_many`` commits a batch at a time. The next batch meets many of the same people
again; reading their subject row, objections and summaries back (and parsing the summaries'
JSON) costs more than reconciling their evidence. This cache keeps, for the length of one
``record_many`` call, what the previous batches committed about those people.

It is only ever right while nobody else writes: ``record_many`` checks SQLite's ``data_version``
at the start of every batch (under the write lock) and empties the cache when another connection
committed in between. Nothing enters it before its batch committed, so a rolled-back batch leaves
no trace. On PostgreSQL, where no such cheap check exists, no cache is used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from consentsync.domain import EffectiveState
from consentsync.reconcile import Summary

StateKey = tuple[int, str, str]  # (subject id, purpose, channel)


@dataclass(slots=True)
class WarmSubjects:
    """Subject contexts and every summary of each subject, as last committed by this call."""

    max_subjects: int = 250_000
    emails: dict[str, int] = field(default_factory=dict)
    contexts: dict[int, Any] = field(default_factory=dict)  # subject id -> ledger's subject context
    summaries: dict[int, dict[tuple[str, str], Summary]] = field(default_factory=dict)
    # The effective state each written key was left in, and the clock it was computed at.
    effective: dict[StateKey, tuple[EffectiveState, datetime]] = field(default_factory=dict)
    data_version: int | None = None
    _staged: tuple[Any, ...] | None = None

    def clear(self) -> None:
        self.emails.clear()
        self.contexts.clear()
        self.summaries.clear()
        self.effective.clear()

    def effective_at(self, key: StateKey, now: datetime) -> EffectiveState | None:
        """The key's effective state at ``now``, where the one computed earlier still holds: the
        clock matters to it only through expiry, so it holds unless its expiry fell in between."""
        cached = self.effective.get(key)
        if cached is None:
            return None
        state, computed_at = cached
        expires_at = state.expires_at
        if now < computed_at or (expires_at is not None and computed_at < expires_at <= now):
            return None
        return state

    def knows(self, subject_id: int) -> bool:
        return subject_id in self.contexts

    def stage(
        self,
        emails: Iterable[tuple[str, int]],
        contexts: dict[int, Any],
        summaries: dict[StateKey, Summary],
        effective: dict[StateKey, EffectiveState],
        computed_at: datetime,
    ) -> None:
        """What a batch knows (every subject it touched, with all their summaries and the
        effective states it wrote, as it leaves them), to be taken in by ``promote`` once the
        batch committed."""
        self._staged = (list(emails), contexts, summaries, effective, computed_at)

    def discard(self) -> None:
        """Forgets what a batch staged: its transaction was rolled back."""
        self._staged = None

    def promote(self) -> None:
        if self._staged is None:
            return
        emails, contexts, summaries, effective, computed_at = self._staged
        self._staged = None
        if len(self.contexts) + len(contexts) > self.max_subjects:
            # Memory stays bounded by the number of people, not of events: start over.
            self.clear()
        self.emails.update(emails)
        for subject_id, context in contexts.items():
            self.contexts[subject_id] = context
            self.summaries.setdefault(subject_id, {})
        for (subject_id, purpose, channel), summary in summaries.items():
            if subject_id in self.contexts:
                self.summaries[subject_id][(purpose, channel)] = summary
        for key, state in effective.items():
            if key[0] in self.contexts:
                self.effective[key] = (state, computed_at)
