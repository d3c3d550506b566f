"""The persons a SuperOffice write deletes or finds gone are noted for the recycle bin's lookups
(docs/connectors/superoffice.md, "Deleted persons") in one write of the journal for many updates,
not one each: every write rewrites and syncs the whole file (2,000 persons took 16 s). Each is
still on disk before the engine takes its answer: a person deleted before its DELETE is sent
(forgotten again where the delete is not done), a person found gone before its answer is
handed on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox

from consentsync.sdk import BudgetExhausted, Journal, RecordUpdate, WriteAction, WriteResult
from consentsync.sdk import journal as journal_module
from tests.connectors.test_superoffice_s64_restore import connector_for
from tests.connectors.test_superoffice_s64_restore import so as so  # the fixture

CONSENT = {"LegalBase_EMARKETING": "WITHDRAWN"}


def delete(person: int) -> RecordUpdate:
    return RecordUpdate("Person", str(person), {}, WriteAction.DELETE)


def withdraw(person: int) -> RecordUpdate:
    return RecordUpdate("Person", str(person), dict(CONSENT))


def noted(journal: Journal) -> set[int]:
    """The persons in the journal's file as another process reads it."""
    assert journal.path is not None
    on_disk = Journal(journal.path.parent, "superoffice")
    on_disk.path = journal.path
    return {int(entry.split("@")[0]) for entry in on_disk.names()}


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each write of a journal file (the rename of its synced copy over it)."""
    done: list[str] = []
    rename = os.replace

    def counted(source: Any, target: Any) -> None:
        done.append(str(target))
        rename(source, target)

    monkeypatch.setattr(journal_module.os, "replace", counted)
    return done


def test_a_writes_deleted_and_gone_persons_are_noted_in_one_journal_write_each(
    so: SuperOfficeSandbox, writes: list[str]
) -> None:
    for person in (8, 9, 10):
        so.tenant.delete_person(person)  # a user's delete: the writes find them gone
    connector = connector_for(so)
    results = connector.write([*map(delete, range(1, 7)), *map(withdraw, (8, 9, 10)), withdraw(11)])
    assert all(r.ok for r in results[:6]) and all(r.gone for r in results[6:9]) and results[9].ok
    assert noted(connector._journal) == {1, 2, 3, 4, 5, 6, 8, 9, 10}
    assert len(writes) == 2, "the deletes before they are sent, the gone persons after"


def test_each_answer_is_taken_after_its_person_is_noted(so: SuperOfficeSandbox) -> None:
    so.tenant.delete_person(5)
    connector = connector_for(so)
    updates = [delete(1), withdraw(5), delete(2), withdraw(3), delete(4)]
    answered: dict[int, WriteResult] = {}
    for batch in connector.write_batches(updates):
        on_disk = noted(connector._journal)
        for position, result in batch.items():
            if result.gone or (result.ok and updates[position].action is WriteAction.DELETE):
                assert int(result.record_id) in on_disk, f"answered before noted: {result}"
        answered.update(batch)
    assert sorted(answered) == list(range(len(updates)))
    assert noted(connector._journal) == {1, 2, 4, 5}


def test_a_delete_not_done_is_not_left_noted(so: SuperOfficeSandbox) -> None:
    so.faults.fail_records("3")  # 409 ConcurrencyException, every time
    connector = connector_for(so)
    results = connector.write([delete(2), delete(3), delete(4)])
    assert results[0].ok and not results[1].ok and results[1].retryable and results[2].ok
    assert noted(connector._journal) == {2, 4}


def test_a_run_stopped_hands_on_the_gone_answers_held_back_first(so: SuperOfficeSandbox) -> None:
    """A limit reached inside the chunk: what was found gone before it is answered (and noted)
    before the error; the deletes never sent are not left noted."""
    so.tenant.delete_person(7)
    connector = connector_for(so, budget={"per_run": 4})
    updates = [withdraw(7), delete(2), *map(delete, range(3, 10))]
    answered: dict[int, WriteResult] = {}
    batches: Iterator[dict[int, WriteResult]] = connector.write_batches(updates)
    with pytest.raises(BudgetExhausted):
        for batch in batches:
            answered.update(batch)
    assert answered[0].gone and answered[1].ok
    done = {int(r.record_id) for r in answered.values()}
    assert noted(connector._journal) == done
    assert not so.tenant.visible(2) and so.tenant.visible(9)


def test_a_write_the_engine_stops_taking_forgets_the_deletes_it_never_sent(so: SuperOfficeSandbox) -> None:
    connector = connector_for(so)
    batches = connector.write_batches([delete(2), delete(3), delete(4)])
    first = next(batches)
    assert first[0].ok
    batches.close()  # e.g. the engine's own stop between two answers
    assert noted(connector._journal) == {2}
    assert so.tenant.visible(3) and so.tenant.visible(4)


def test_no_journal_write_where_the_lookups_are_off(so: SuperOfficeSandbox, writes: list[str]) -> None:
    so.tenant.delete_person(6)
    connector = connector_for(so, recycle_bin_days=0)
    results = connector.write([delete(2), withdraw(6)])
    assert results[0].ok and results[1].gone and not writes
