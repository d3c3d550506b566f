"""Dynamics: a full read of a table (a first sync, or a reload after Dataverse refused the delta
link: expired past its retention period, or invalid) that needs more than one run's call budget
goes on over several runs and finishes, with nothing lost.

Each record of such a read carries its position with the delta link the read took before its
first row (``...#consentsync-walk``), so the next run goes on from there with that link. Before,
a run stopped part way left a position without a link: every run took a new one (the initial
change-tracking read pages through the whole table) and, the position being inside the engine's
look-back window, read the table again from its first row; the read never finished, and a row
deleted behind the position before the next link was taken came in no read.

Each run here is made as the engine makes it (``engine_run``): ``resume_from`` of the stored
cursor, every record committed with the connector's completed cursor, a stop on the budget."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from consentsync_dynamics import DynamicsConnector
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.sdk import BudgetExhausted, CrmRecord, Cursor
from tests.connectors.against_sandbox import connector_settings, read_until

FIELDS = ["emailaddress1", "donotemail"]
PEOPLE = 40
PAGE = 4  # 10 pages of contacts: taking a link costs 10 calls, the keyset read 10 more


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    with DynamicsSandbox() as server:
        yield server


def _people(dv: DynamicsSandbox, count: int = PEOPLE) -> list[str]:
    return [
        dv.environment.create("contact", {"lastname": f"P{n}", "emailaddress1": f"person{n}@example.test"})
        for n in range(count)
    ]


def engine_run(dv: DynamicsSandbox, cursor: Cursor, *, budget: int) -> tuple[list[CrmRecord], Cursor, bool]:
    """One run as the engine makes it, committing every record as it comes (pages of one): the
    records read, the cursor kept, and whether the read reached its end."""
    settings = connector_settings(
        dv.connection_settings(), {"page_size": PAGE, "budget": {"per_run": budget}}
    )
    connector = DynamicsConnector("dyn-reload", settings)
    until = read_until()
    seen: list[CrmRecord] = []
    kept = False
    try:
        for record in connector.read_changes("contact", FIELDS, connector.resume_from(cursor), until):
            seen.append(record)
            final = connector.completed_cursor
            candidate = final or Cursor(record.modstamp, record.record_id, cursor.token, until)
            if final is not None or cursor.modstamp is None or _later(candidate, cursor):
                cursor = candidate
            kept = final is not None
    except BudgetExhausted:
        return seen, cursor, False
    final = connector.completed_cursor
    if final is not None and not kept:
        cursor = final
    return seen, cursor, True


def _later(candidate: Cursor, position: Cursor) -> bool:
    assert candidate.modstamp is not None and position.modstamp is not None
    return (candidate.modstamp, candidate.record_id or "") > (position.modstamp, position.record_id or "")


def _until_done(
    dv: DynamicsSandbox, cursor: Cursor, budget: int, runs: int = 8
) -> tuple[list[str], Cursor, int]:
    """Runs until one reaches its read's end: the ids read, the cursor kept, the runs made."""
    seen: list[str] = []
    for run in range(1, runs + 1):
        records, cursor, ended = engine_run(dv, cursor, budget=budget)
        seen += [r.record_id for r in records if not r.deleted]
        if ended:
            return seen, cursor, run
    raise AssertionError(
        f"{runs} runs, none finished; {len(set(seen))} distinct contacts read, cursor {cursor}"
    )


# A run's set-up is 3 calls (the token, the table's metadata, its attributes); taking a link 10:
# a run of 19 calls reads 6 pages of the 10 the first time, and the rest the next.
BUDGET = 19


def test_a_reload_after_a_refused_link_longer_than_a_run_goes_on_and_finishes(dv: DynamicsSandbox) -> None:
    people = _people(dv)
    _, stored, ended = engine_run(dv, Cursor(), budget=1000)
    assert ended and stored.token
    dv.expire_delta_tokens()  # the daemon was down longer than the retention period
    seen, cursor, runs = _until_done(dv, stored, BUDGET)
    assert set(seen) == set(people)
    assert runs == 2, f"{runs} runs"
    assert cursor.token and "#consentsync-walk" not in cursor.token
    # The new link serves: a quiet table reads nothing more.
    again, _, ended = engine_run(dv, cursor, budget=BUDGET)
    assert ended and again == []


def test_a_first_sync_longer_than_a_run_goes_on_and_finishes(dv: DynamicsSandbox) -> None:
    people = _people(dv)
    seen, cursor, runs = _until_done(dv, Cursor(), BUDGET)
    assert set(seen) == set(people) and runs == 2
    # Nothing read twice: the second run went on from the first one's position.
    assert len(seen) == len(set(seen))
    assert cursor.token and "#consentsync-walk" not in cursor.token


def test_a_row_deleted_behind_the_position_between_two_runs_of_a_reload_comes_as_deleted(
    dv: DynamicsSandbox,
) -> None:
    """The link taken before the reload's first row holds every change since: a deletion behind
    the position, made between two runs of the reload, comes in the next delta."""
    _people(dv)
    first, cursor, ended = engine_run(dv, Cursor(), budget=BUDGET)
    assert not ended and first
    gone = first[0].record_id
    dv.environment.delete("contact", gone)
    _, cursor, ended = engine_run(dv, cursor, budget=BUDGET)
    assert ended and cursor.token
    changed, _, ended = engine_run(dv, cursor, budget=BUDGET)
    assert ended and [(r.record_id, r.deleted) for r in changed] == [(gone, True)]


def test_a_walk_whose_link_selects_fewer_columns_starts_again_from_the_first_row(dv: DynamicsSandbox) -> None:
    """A full read under way whose link lacks a column the mapping reads now (the mapping changed
    between runs) starts again, with a new link: a delta of the old one would not carry it."""
    people = _people(dv)
    _, cursor, ended = engine_run(dv, Cursor(), budget=BUDGET)
    assert not ended and cursor.token and cursor.token.endswith("#consentsync-walk")
    narrowed = Cursor(
        cursor.modstamp, cursor.record_id, cursor.token.replace("%2Cdonotemail", ""), cursor.read_until
    )
    seen, done, _ = _until_done(dv, narrowed, 1000)
    assert set(seen) == set(people)
    assert done.token and "donotemail" in done.token
