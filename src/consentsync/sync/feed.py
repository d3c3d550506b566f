"""A connector's place in the ledger's change feed (``state_changes``), safe against changes that
commit late.

The feed is read by id, but on PostgreSQL ids are handed out when a row is inserted, not when its
transaction commits: a reader can see 105 while 104 is still uncommitted, and a reader that moved
its place to 105 would never see 104. So the place keeps, beside the highest id read, the ids it
skipped (gaps), each with the transaction horizon at the moment it was noticed: the first
transaction id not yet handed out. A gap is read again on every follow until its row appears, or
until every transaction that could have been inserting it has ended (the oldest transaction still
running is past the horizon): then it was rolled back and is forgotten. No timeout decides.

On SQLite one writer at a time commits in id order, so an id below one already visible can never
commit later: gaps are rolled-back inserts and are forgotten at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from sqlalchemy import Connection, select, text

from consentsync.domain import canonical_json
from consentsync.ledger.schema import state_changes

__all__ = ["FeedPlace", "TransactionHorizon", "read_feed"]

# More gaps than this means something else is wrong (a sequence with a cache, say): the oldest are
# dropped rather than letting the place grow without bound.
MOST_GAPS = 10_000


@dataclass(frozen=True, slots=True)
class TransactionHorizon:
    """What the database says about running transactions, read before the feed: ``oldest_running``
    is the oldest transaction still running (or the next to start when none is), ``next_id`` the
    first transaction id not yet handed out. None on a database whose writers commit in id order."""

    oldest_running: int
    next_id: int

    @classmethod
    def now(cls, conn: Connection) -> TransactionHorizon | None:
        if conn.dialect.name != "postgresql":
            return None
        row = conn.execute(
            text(
                "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint "
                "FROM pg_current_snapshot() AS s"
            )
        ).one()
        return cls(int(row[0]), int(row[1]))


@dataclass(frozen=True, slots=True)
class FeedPlace:
    """The highest id read, and the ids below it not seen yet with the horizon when each was
    first missed."""

    last: int = 0
    gaps: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, stored: str | None) -> FeedPlace:
        if not stored:
            return cls()
        data = orjson.loads(stored)
        return cls(int(data["state_change_id"]), {int(k): int(v) for k, v in data.get("gaps", {}).items()})

    def to_json(self) -> str:
        value: dict[str, object] = {"state_change_id": self.last}
        if self.gaps:
            value["gaps"] = {str(k): v for k, v in sorted(self.gaps.items())}
        return canonical_json(value)

    def after(
        self,
        new_ids: Sequence[int],
        filled: set[int],
        before: TransactionHorizon | None,
        after: TransactionHorizon | None,
    ) -> FeedPlace:
        """The place once ``new_ids`` (ascending, all above ``last``) and the gaps in ``filled``
        were read. ``before`` was read before the rows, ``after`` after them: a gap whose
        transaction had not yet begun when the rows were read has a horizon from ``after``, and a
        gap is given up only when ``before`` shows every transaction that could hold it ended
        (so a commit just before the read is always seen by it)."""
        gaps = {gap: horizon for gap, horizon in self.gaps.items() if gap not in filled}
        if before is not None:
            gaps = {gap: horizon for gap, horizon in gaps.items() if before.oldest_running < horizon}
        else:
            gaps = {}
        last = self.last
        if after is not None:
            for new in new_ids:
                for missing in range(last + 1, new):
                    gaps[missing] = after.next_id
                last = new
        elif new_ids:
            last = new_ids[-1]
        if len(gaps) > MOST_GAPS:
            gaps = dict(sorted(gaps.items())[-MOST_GAPS:])
        return FeedPlace(last, gaps)


def read_feed(conn: Connection, place: FeedPlace, limit: int) -> tuple[list[tuple[int, int]], FeedPlace]:
    """The (id, subject id) rows of the feed not read yet, from the gaps and above the place (at
    most ``limit`` of the latter), and the place after them."""
    before = TransactionHorizon.now(conn)
    filled: list[tuple[int, int]] = []
    if place.gaps:
        filled = [
            (row.id, row.subject_id)
            for row in conn.execute(
                select(state_changes.c.id, state_changes.c.subject_id).where(
                    state_changes.c.id.in_(sorted(place.gaps))
                )
            )
        ]
    new = [
        (row.id, row.subject_id)
        for row in conn.execute(
            select(state_changes.c.id, state_changes.c.subject_id)
            .where(state_changes.c.id > place.last)
            .order_by(state_changes.c.id)
            .limit(limit)
        )
    ]
    after = TransactionHorizon.now(conn) if new and before is not None else before
    moved = place.after([i for i, _ in new], {i for i, _ in filled}, before, after)
    return filled + new, moved
