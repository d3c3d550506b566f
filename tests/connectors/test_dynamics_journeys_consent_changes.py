"""``consentsync_journeys_contact``'s purpose fields come from the consent rows, which change
without the contact changing: a row deleted (an admin's clean-up, a bulk delete), created by
someone else, or moved to another address. The read follows the consent table's own change
tracking too (its delta shows changes and ``$deletedEntity`` rows: "Use change tracking to
synchronize data with external systems"), both links in the cursor's token, and hands over the
contacts whose fields changed, recomputed. The new links are handed over with the last of them
(a check of every contact, and a first read, keep their position in the token as they go)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from consentsync_dynamics import DynamicsConnector
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.sdk import Action, BudgetExhausted, CrmRecord, Cursor, ErrorRule, Fault, RecordUpdate
from consentsync.sync.engine import pages_read
from tests.connectors.against_sandbox import connector_settings, read_until

JOURNEYS = "consentsync_journeys_contact"
CONSENTS = "msdynmkt_contactpointconsent4"
MARKETING_FIELD = "purpose_6f0b1c7e0d6a4c1e9a51000000000001"
PROFILING_FIELD = "purpose_6f0b1c7e0d6a4c1e9a51000000000002"
FIELDS = ["emailaddress1", MARKETING_FIELD, PROFILING_FIELD]


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    with DynamicsSandbox() as server:
        yield server


def _connector(dv: DynamicsSandbox, **extra: Any) -> DynamicsConnector:
    settings = connector_settings(dv.connection_settings(), {"page_size": 3}, extra)
    return DynamicsConnector("dyn-journeys", settings)


def _row(dv: DynamicsSandbox, address: str, field: str = MARKETING_FIELD) -> str:
    return dv.environment.create(
        CONSENTS,
        {
            "msdynmkt_contactpointvalue": address,
            "msdynmkt_contactpointtype": 534120000,
            "msdynmkt_value": 534120002,
            "_msdynmkt_purposeid_value": str(uuid.UUID(hex=field.removeprefix("purpose_"))),
        },
    )


def state(cursor: Cursor | None) -> dict[str, Any]:
    """What a Journeys view's token holds."""
    assert cursor is not None and cursor.token and cursor.token.startswith("consentsync-journeys:")
    held: dict[str, Any] = json.loads(cursor.token.removeprefix("consentsync-journeys:"))
    return held


def _read(connector: DynamicsConnector, since: Cursor) -> tuple[dict[str, CrmRecord], Cursor]:
    """The records of one read, and its last cursor: both new links, no first read or check of
    every contact left to go on with."""
    connector.completed_cursor = None
    records: dict[str, CrmRecord] = {}
    for record in connector.read_changes(JOURNEYS, FIELDS, since, read_until()):
        records[record.record_id] = record
    held = state(connector.completed_cursor)
    assert "walk" not in held and "recheck" not in held, held
    assert connector.completed_cursor is not None
    return records, connector.completed_cursor


def _people(dv: DynamicsSandbox, count: int = 8) -> list[str]:
    return [
        dv.environment.create("contact", {"lastname": f"P{n}", "emailaddress1": f"person{n}@example.test"})
        for n in range(count)
    ]


def test_a_deleted_consent_row_hands_over_the_contacts_it_showed_on(dv: DynamicsSandbox) -> None:
    people = _people(dv)
    rows = [_row(dv, f"PERSON{n}@example.test") for n in range(4)]
    _row(dv, "person0@example.test", PROFILING_FIELD)
    twin = dv.environment.create("contact", {"lastname": "Twin", "emailaddress1": "Person1@Example.test"})
    connector = _connector(dv)
    first, cursor = _read(connector, Cursor())
    assert [first[p].fields[MARKETING_FIELD] for p in people[:5]] == [True, True, True, True, None]
    assert _read(connector, cursor)[0] == {}  # nothing changed: nothing handed over
    dv.environment.delete(CONSENTS, rows[1])
    dv.environment.delete(CONSENTS, rows[2])
    again, cursor = _read(connector, cursor)
    # Every contact that now shows a purpose without a row is checked (a deleted row names no
    # address); those whose rows are all there are not handed over.
    assert {people[1], people[2], twin} <= set(again)
    assert [again[i].fields[MARKETING_FIELD] for i in (people[1], people[2], twin)] == [None, None, None]
    assert people[0] not in again  # a row for every purpose: no row can have gone from it
    assert again[people[3]].fields == first[people[3]].fields  # no profiling row: checked
    assert _read(connector, cursor)[0] == {}


def test_a_row_created_or_moved_by_someone_else_hands_over_the_contacts_at_its_addresses(
    dv: DynamicsSandbox,
) -> None:
    people = _people(dv)
    connector = _connector(dv)
    _, cursor = _read(connector, Cursor())
    # A preference center's row, created after the last look-up (a minute later than it: the
    # service's clocks may disagree by seconds): only the contacts at its address are handed over.
    now = dv.environment.clock
    dv.environment.clock = lambda: now() + timedelta(minutes=1)
    _row(dv, "Person5@example.test")
    dv.environment.clock = now
    created, cursor = _read(connector, cursor)
    assert list(created) == [people[5]] and created[people[5]].fields[MARKETING_FIELD] is True
    # A row the connector created, its address then edited by someone else: the address it left
    # has no row any more, the new one has.
    assert connector.write([RecordUpdate(JOURNEYS, people[6], {MARKETING_FIELD: True})])[0].ok
    own = next(r for r in dv.environment.records(CONSENTS) if r["msdynmkt_reason"])
    _, cursor = _read(connector, cursor)
    dv.environment.update(
        CONSENTS,
        own["msdynmkt_contactpointconsent4id"],
        {"msdynmkt_contactpointvalue": "person7@example.test"},
    )
    moved, cursor = _read(connector, cursor)
    assert moved[people[6]].fields[MARKETING_FIELD] is None
    assert moved[people[7]].fields[MARKETING_FIELD] is True


def test_a_check_of_every_contact_stopped_part_way_goes_on_from_its_position(dv: DynamicsSandbox) -> None:
    """SIGKILL between two pages of a check of every contact (consent rows deleted): the engine
    kept the token handed over with the last page, which holds both new links and the contact
    the check reached: the next read checks the rest."""
    people = _people(dv)
    rows = [_row(dv, f"person{n}@example.test") for n in range(8)]
    connector = _connector(dv)
    _, cursor = _read(connector, Cursor())
    for row in rows:
        dv.environment.delete(CONSENTS, row)
    connector.completed_cursor = None
    stopped = connector.read_changes(JOURNEYS, FIELDS, cursor, read_until())
    seen = [next(stopped).record_id for _ in range(4)]
    kept = connector.completed_cursor
    stopped.close()
    assert state(kept)["recheck"][1] == seen[-1]
    again, _ = _read(_connector(dv), kept)
    assert set(again) == set(people) - set(seen)
    assert all(again[p].fields[MARKETING_FIELD] is None for p in again)


def test_a_first_read_stopped_part_way_goes_on_from_the_position_its_token_holds(
    dv: DynamicsSandbox,
) -> None:
    """A first read keeps both links and the contact it walked to in its token, with every
    record: stopped there, the next read goes on from it, and the consent rows' delta from the
    link it took first hands over what changed in between for the contacts already handed."""
    people = _people(dv)
    connector = _connector(dv)
    stopped = connector.read_changes(JOURNEYS, FIELDS, Cursor(), read_until())
    handed = [next(stopped) for _ in range(3)]
    kept = connector.completed_cursor  # what the engine stores with a page ending here
    stopped.close()
    assert state(kept)["walk"][1] == handed[-1].record_id
    first = handed[0]
    row = _row(dv, first.fields["emailaddress1"])  # between the two reads, for a contact handed over
    again, cursor = _read(_connector(dv), kept)
    rest = set(people) - {r.record_id for r in handed}
    assert set(list(again)[: len(rest)]) == rest  # the walk went on where it stopped
    assert again[first.record_id].fields[MARKETING_FIELD] is True
    dv.environment.delete(CONSENTS, row)
    assert _read(_connector(dv), cursor)[0][first.record_id].fields[MARKETING_FIELD] is None


def test_a_token_of_the_contacts_alone_and_a_refused_consent_link_read_every_contact(
    dv: DynamicsSandbox,
) -> None:
    people = _people(dv, 4)
    connector = _connector(dv)
    _, cursor = _read(connector, Cursor())
    both = json.loads(cursor.token.removeprefix("consentsync-journeys:"))
    # An earlier version's cursor (the contacts' link alone): read in full once.
    earlier = Cursor(cursor.modstamp, cursor.record_id, both["contact"])
    full, upgraded = _read(connector, earlier)
    assert set(full) == set(people) and upgraded.token.startswith("consentsync-journeys:")
    assert _read(connector, upgraded)[0] == {}
    # The consent rows' link refused (past the retention period): every contact again.
    dv.expire_delta_tokens()
    reloads = connector.full_reloads
    reloaded, _ = _read(connector, upgraded)
    assert set(reloaded) == set(people) and connector.full_reloads > reloads


def _as_the_engine_reads(
    connector: DynamicsConnector, since: Cursor
) -> tuple[list[tuple[list[CrmRecord], Any]], bool]:
    """What the engine is handed (``_pages_of``): each page with ``completed_cursor`` as it
    stood, a page cut by a stop included; and whether the read stopped on the budget."""
    connector.completed_cursor = None
    out: list[tuple[list[CrmRecord], Any]] = []
    try:
        for page in pages_read(connector.read_changes(JOURNEYS, FIELDS, since, read_until()), 1000):
            out.append((page, connector.completed_cursor))
    except BudgetExhausted:
        return out, True
    return out, False


def test_a_budget_spent_on_the_last_pages_look_up_passes_no_contact_unread(
    dv: DynamicsSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contacts followed by change tracking, consent rows not: the read's last page of contacts
    is held for its consent rows' look-up after the contacts' read set its new link. A budget
    spent on that look-up commits what was handed over, with a position that must not pass the
    held contacts (their people's nos would never arrive)."""
    dv.environment.tables[CONSENTS].change_tracking = False
    people = _people(dv, 7)  # pages of 3, 3 and 1
    connector = _connector(dv)
    looked_up = {"calls": 0}
    real = DynamicsConnector._with_consent_rows

    def metered(self: DynamicsConnector, page: Any, purposes: Any) -> Any:
        looked_up["calls"] += 1
        if looked_up["calls"] == 3:
            raise BudgetExhausted(
                "budget spent", ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "run budget spent")
            )
        return real(self, page, purposes)

    monkeypatch.setattr(DynamicsConnector, "_with_consent_rows", metered)
    pages, stopped = _as_the_engine_reads(connector, Cursor())
    assert stopped
    kept = pages[-1][1] or Cursor(pages[-1][0][-1].modstamp, pages[-1][0][-1].record_id)
    monkeypatch.setattr(DynamicsConnector, "_with_consent_rows", real)
    again, _ = _as_the_engine_reads(_connector(dv), kept)
    handed = {r.record_id for page, _ in pages + again for r in page}
    assert not set(people) - handed, f"the position kept ({kept}) passed contacts never handed over"
