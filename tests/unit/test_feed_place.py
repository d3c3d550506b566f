"""The change feed's place (``sync.feed``) against a model of PostgreSQL: transactions take a
transaction id when they first write, then a feed id, and commit or roll back in any order while a
reader follows the feed at any moment. Every committed change is read exactly once, and once every
transaction has ended no gap is left."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from consentsync.sync.feed import FeedPlace, TransactionHorizon


@dataclass
class Database:
    next_xid: int = 100
    next_id: int = 1
    running: dict[int, int] = field(default_factory=dict)  # xid -> feed id
    committed: set[int] = field(default_factory=set)

    def horizon(self) -> TransactionHorizon:
        return TransactionHorizon(min(self.running, default=self.next_xid), self.next_xid)

    def begin(self) -> None:
        self.running[self.next_xid] = self.next_id
        self.next_xid += 1
        self.next_id += 1

    def end(self, which: int, commit: bool) -> None:
        xid = sorted(self.running)[which % len(self.running)]
        feed_id = self.running.pop(xid)
        if commit:
            self.committed.add(feed_id)


def follow(db: Database, place: FeedPlace, limit: int) -> tuple[list[int], FeedPlace]:
    """``read_feed``'s reading, against the model."""
    before = db.horizon()
    filled = sorted(i for i in place.gaps if i in db.committed)
    new = sorted(i for i in db.committed if i > place.last)[:limit]
    return filled + new, place.after(new, set(filled), before, db.horizon())


steps = st.lists(
    st.one_of(
        st.just(("begin",)),
        st.tuples(st.just("end"), st.integers(0, 20), st.booleans()),
        st.tuples(st.just("read"), st.integers(1, 4)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps)
def test_every_committed_change_is_read_once_whatever_the_order_of_commits(
    steps: list[tuple[object, ...]],
) -> None:
    db, place, read = Database(), FeedPlace(), []
    for step in steps:
        if step[0] == "begin":
            db.begin()
        elif step[0] == "end" and db.running:
            db.end(int(step[1]), bool(step[2]))  # type: ignore[arg-type]
        elif step[0] == "read":
            rows, place = follow(db, place, int(step[1]))  # type: ignore[arg-type]
            read.extend(rows)
    while db.running:
        db.end(0, True)
    for _ in range(len(db.committed) + 2):
        rows, place = follow(db, place, 4)
        read.extend(rows)
    assert sorted(read) == sorted(db.committed)
    assert place.gaps == {}


def test_without_transaction_horizons_ids_are_taken_as_committed_in_order() -> None:
    place = FeedPlace(3, {2: 7})
    assert place.after([5, 9], set(), None, None) == FeedPlace(9, {})


def test_the_place_round_trips_and_reads_the_old_format() -> None:
    place = FeedPlace(12, {9: 1000, 11: 1003})
    assert FeedPlace.from_json(place.to_json()) == place
    assert FeedPlace.from_json('{"state_change_id":5}') == FeedPlace(5, {})
    assert FeedPlace.from_json(None) == FeedPlace()
