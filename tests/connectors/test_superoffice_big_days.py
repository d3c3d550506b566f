"""SuperOffice: a day holding more changes than a run can read (a bulk import: ~12,000 consents
in one UTC day at page_size 200 and a budget of 60 calls) is read over several runs, each going on
from where the last one stopped; and an incremental run walks no day behind its look-back window.

The read keeps its place inside a day in the cursor's token (day, last consent id of a chunk of
pages whose persons are all handed on, the last person handed on inside the chunk under way), and
hands a chunk's persons on as soon as its pages are read. Each run here is made as the engine
makes it (``engine_run``): a record is committed with the connector's completed cursor, the read's
end keeps the completed cursor when nothing was handed over after it, and a run stops on its
budget. The reviewer's repro was tests_review/test_superoffice_big_day_stalls.py: a day's rows
were handed on only once the whole day was read, so a day needing more page calls than the budget
stalled the cursor for good."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
from consentsync_superoffice.sandbox.tenant import SuperOfficeTenant

from consentsync.sdk import BudgetExhausted, CrmRecord, Cursor
from tests.connectors.against_sandbox import read_until
from tests.connectors.test_superoffice_updated_by_day import FIELDS, TODAY, connector_for, consenting


@pytest.fixture(params=[False, True], ids=["after-is-strict", "after-takes-its-day"])
def so(request: pytest.FixtureRequest) -> Iterator[SuperOfficeSandbox]:
    # SuperOffice does not say whether `after`/`before` take their own day: either way.
    with SuperOfficeSandbox(
        SuperOfficeTenant(default_legal_base=None, date_bounds_inclusive=request.param)
    ) as server:
        yield server


def engine_run(
    so: SuperOfficeSandbox, cursor: Cursor, *, budget: int, page_size: int = 2, stop_after: int | None = None
) -> tuple[list[CrmRecord], Cursor, bool]:
    """One incremental run as the engine makes it, committing every record as it comes (pages of
    one): the records read, the cursor kept, and whether the read reached its end. ``stop_after``:
    the run dies (SIGKILL) once that many records are committed."""
    connector = connector_for(so, page_size=page_size, budget=budget)
    until = read_until()
    records = connector.read_changes("Person", FIELDS, connector.resume_from(cursor), until)
    seen: list[CrmRecord] = []
    kept = False
    try:
        for record in records:
            seen.append(record)
            final = connector.completed_cursor
            candidate = final or Cursor(record.modstamp, record.record_id, cursor.token, until)
            if final is not None or cursor.modstamp is None or _later(candidate, cursor):
                cursor = candidate
            kept = final is not None
            if stop_after is not None and len(seen) >= stop_after:
                records.close()
                return seen, cursor, False
    except BudgetExhausted:
        return seen, cursor, False
    final = connector.completed_cursor
    if final is not None and not kept:
        cursor = final
    elif final is None and cursor.modstamp is not None:
        cursor = Cursor(cursor.modstamp, cursor.record_id, cursor.token, until)
    return seen, cursor, True


def _later(candidate: Cursor, position: Cursor) -> bool:
    assert candidate.modstamp is not None and position.modstamp is not None
    return (candidate.modstamp, candidate.record_id or "") > (position.modstamp, position.record_id or "")


def test_a_day_larger_than_a_runs_budget_is_read_over_several_runs(so: SuperOfficeSandbox) -> None:
    """The reviewer's first case: 12 changes in one day, pages of 2 (6 page calls), a budget of 5
    calls a run. Each run goes on from where the last stopped; the withdrawal made the day after
    is read."""
    busy = TODAY - dt.timedelta(days=2, hours=-10)
    bulk = [consenting(so, f"bulk{i}", busy + dt.timedelta(seconds=i)) for i in range(12)]
    withdrew = consenting(so, "w", TODAY - dt.timedelta(hours=5), "WITHDRAWN")
    cursor = Cursor()
    seen: list[str] = []
    for _run in range(10):
        records, cursor, _ended = engine_run(so, cursor, budget=5)
        seen += [r.record_id for r in records]
    assert str(withdrew) in seen, f"after 10 runs the cursor is still {cursor}; read {seen}"
    assert set(seen) == {str(p) for p in [*bulk, withdrew]}
    assert len(seen) == len(set(seen)), "a run read again what an earlier one had handed over"


def test_a_withdrawal_after_a_busy_day_is_read_without_walking_that_day_again(so: SuperOfficeSandbox) -> None:
    """The reviewer's second case: after a day holding more pages than a run's budget, read whole
    once, the next run reads a new withdrawal at once, walking nothing of that day again."""
    busy = TODAY - dt.timedelta(days=2, hours=-8)
    for i in range(12):
        consenting(so, f"busy{i}", busy + dt.timedelta(seconds=i))
    last_consent = max(row.id for row in so.tenant.consent_rows())
    everything, cursor, ended = engine_run(so, Cursor(), budget=100)
    assert ended and len(everything) == 12
    withdrew = consenting(so, "w", dt.datetime.now(dt.UTC), "WITHDRAWN")
    asked = []
    so.after_archive_page = asked.append
    # 8 calls: walking the busy day's 6 pages again would leave none for the withdrawal.
    records, cursor, ended = engine_run(so, cursor, budget=8)
    # (Read again by the sweep begun once the last one ended: it is inside the look-back window.)
    assert {r.record_id for r in records} == {str(withdrew)}
    assert records[0].fields["LegalBase_EMARKETING"] == "WITHDRAWN"
    assert ended
    # At most the page after the busy day's last consent (empty), where the engine kept the
    # position of the read's last record: none of its rows is asked again.
    busy_day = busy.strftime("%Y.%m.%d")
    again = [query.where for query in asked if f"date '{busy_day}'" in query.where]
    assert all(f" gt {last_consent}" in where for where in again), f"the busy day was walked again: {again}"
    assert len(asked) <= 6


def test_a_consent_changed_again_while_a_cut_sweep_is_under_way_is_read_at_its_new_second(
    so: SuperOfficeSandbox,
) -> None:
    """A consent changed again keeps its (low) id and moves to the second of the change: the
    sweep under way, past that id, cannot see it; the next sweep, begun from the look-back
    window before the last one began, walks that day's pages again and reads it."""
    busy = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=40)
    people = [consenting(so, f"b{i}", busy + dt.timedelta(seconds=i)) for i in range(12)]
    records, cursor, _ended = engine_run(so, Cursor(), budget=5)
    assert 0 < len(records) < len(people), "the first run is cut by its budget after handing some over"
    first = people[0]  # the lowest consent id: behind the sweep's position
    assert str(first) in [r.record_id for r in records]
    so.tenant.set_consent(first, "EMARKETING", "EMAIL", "WITHDRAWN")
    last: dict[str, CrmRecord] = {r.record_id: r for r in records if r.record_id != str(first)}
    for _run in range(15):
        records, cursor, _ended = engine_run(so, cursor, budget=5)
        last.update((r.record_id, r) for r in records)
        if str(first) in last and len(last) == len(people):
            break
    assert str(first) in last, "the withdrawal of a consent behind the sweep's position was lost"
    assert last[str(first)].fields["LegalBase_EMARKETING"] == "WITHDRAWN"
    assert set(last) == {str(p) for p in people}


def test_a_save_committed_late_behind_the_walks_position_is_read_by_the_next_sweep(
    so: SuperOfficeSandbox,
) -> None:
    """A save stamped now commits after the sweep walked past its (lower) consent id: the next
    sweep starts the look-back window before the last one began, and reads it."""
    tenant = so.tenant
    withdrawn = [("EMARKETING", "FORM", "WITHDRAWN", "")]
    late = tenant.begin_late_person("L", "late", "late@example.test", withdrawn)
    after = [consenting(so, f"a{i}", dt.datetime.now(dt.UTC)) for i in range(6)]
    records, cursor, ended = engine_run(so, Cursor(), budget=100)
    assert ended and {r.record_id for r in records} == {str(p) for p in after}
    tenant.commit_late(late.id)
    records, cursor, ended = engine_run(so, cursor, budget=100)
    assert ended and str(late.id) in [r.record_id for r in records]


def test_a_run_killed_after_any_record_resumes_after_it_and_reads_nothing_twice(
    so: SuperOfficeSandbox,
) -> None:
    """A day of 9 changes (beyond the look-back), pages of 2, chunks of one page: the run dies
    after its k-th committed record, whatever k; the next reads exactly the rest."""
    day = TODAY - dt.timedelta(days=3, hours=-12)
    people = [str(consenting(so, f"k{i}", day + dt.timedelta(seconds=9 - i))) for i in range(9)]
    for k in range(1, 9):
        first, cursor, ended = engine_run(so, Cursor(), budget=40, stop_after=k)
        assert not ended and len(first) == k
        rest, cursor, ended = engine_run(so, cursor, budget=100)
        assert ended
        handed = [r.record_id for r in first + rest]
        assert sorted(handed) == sorted(people), f"cut after {k}: {handed}"


def test_the_cursor_moves_forward_and_keeps_its_place_in_its_token(so: SuperOfficeSandbox) -> None:
    busy = TODAY - dt.timedelta(days=2, hours=-10)
    for i in range(7):
        consenting(so, f"t{i}", busy + dt.timedelta(seconds=i))
    connector = connector_for(so, page_size=2, budget=100)
    positions = []
    for _record in connector.read_changes("Person", FIELDS, Cursor(), read_until()):
        cursor = connector.completed_cursor
        assert cursor is not None and cursor.token is not None and cursor.modstamp is not None
        place = json.loads(cursor.token)
        positions.append((place["day"], place["after"], place["at"]))
    assert positions == sorted(positions), "the position inside the day went back"
    end = connector.completed_cursor
    assert end is not None and end.token is not None
    assert json.loads(end.token)["sweep"] is None, "the read ended its sweep: the next begins one"
