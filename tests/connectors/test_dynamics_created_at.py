"""Dynamics hands each row's ``createdon`` over as ``CrmRecord.created_at`` (UTC, whole seconds,
as ``modifiedon``), from keyset reads and deltas alike, without it among the mapped fields; a
delta link taken before the connector selected ``createdon`` still serves (no full reload for it:
its rows come without a creation time); a mapping that reads ``createdon`` itself keeps it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.sdk import Cursor
from tests.connectors.against_sandbox import read_until
from tests.connectors.test_dynamics_against_sandbox import FIELDS, _read, connector_for
from tests.sandbox.serving import serve_seeded


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    yield from serve_seeded(DynamicsSandbox(), lambda server: server.environment.seed(12, seed=4))


def _createdon(dv: DynamicsSandbox, record_id: str) -> object:
    return dv.environment.table("contact").rows[record_id]["createdon"]


def test_keyset_reads_and_deltas_say_when_the_row_was_created(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv)
    records = _read(connector, Cursor())
    assert records and all(r.created_at == _createdon(dv, r.record_id) for r in records)
    assert all("createdon" not in r.fields for r in records)
    first = connector.completed_cursor
    assert first is not None and first.token and "createdon" in first.token
    dv.environment.update("contact", records[2].record_id, {"donotemail": True})
    (changed,) = _read(connector, first)
    assert changed.created_at == records[2].created_at and changed.modstamp >= changed.created_at


def test_a_delta_link_of_an_earlier_version_is_kept_without_a_full_reload(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv)
    records = _read(connector, Cursor())
    first = connector.completed_cursor
    assert first is not None and first.token
    earlier = first.token.replace("%2Ccreatedon", "")  # the link as an earlier version took it
    assert "createdon" not in earlier
    dv.environment.update("contact", records[4].record_id, {"donotemail": True})
    (changed,) = _read(connector, Cursor(first.modstamp, first.record_id, earlier))
    assert connector.full_reloads == 0
    assert changed.record_id == records[4].record_id and changed.created_at is None
    assert changed.fields["donotemail"] is True


def test_a_mapping_that_reads_createdon_keeps_it_among_its_fields(dv: DynamicsSandbox) -> None:
    connector = connector_for(dv)
    connector.completed_cursor = None
    records = list(connector.read_changes("contact", [*FIELDS, "createdon"], Cursor(), read_until()))
    assert records and all(r.fields["createdon"] and r.created_at is not None for r in records)
    link = connector.completed_cursor
    assert link is not None and link.token
    earlier = link.token.replace("%2Ccreatedon", "")
    list(connector.read_changes("contact", [*FIELDS, "createdon"], Cursor(None, None, earlier), read_until()))
    assert connector.full_reloads == 1, "a link not selecting a mapped column must be refused"


def test_the_journeys_view_says_when_the_contact_was_created(dv: DynamicsSandbox) -> None:
    from tests.connectors.test_dynamics_journeys_consent_changes import FIELDS as VIEW_FIELDS
    from tests.connectors.test_dynamics_journeys_consent_changes import JOURNEYS, _connector

    records = list(_connector(dv).read_changes(JOURNEYS, VIEW_FIELDS, Cursor(), read_until()))
    assert len(records) == dv.environment.count("contact")
    assert all(r.created_at == _createdon(dv, r.record_id) for r in records)
    assert all("createdon" not in r.fields for r in records)
