"""HubSpot hands each contact's ``createdate`` over as ``CrmRecord.created_at`` (UTC, with its
milliseconds, parsed as ``lastmodifieddate`` is), from searches and batch reads by id; an
archived contact listed with its last values carries it, and so does one listed bare (the
archived list's ``createdAt``)."""

from __future__ import annotations

import datetime as dt

from consentsync_hubspot.connector import parse_hs_datetime
from consentsync_hubspot.sandbox.harness import HubSpotHarness

from consentsync.sdk import Cursor
from tests.connectors.against_sandbox import read_until
from tests.connectors.test_hubspot_against_sandbox import FIELDS, _read, connector, harness  # noqa: F401


def _created(harness: HubSpotHarness, record_id: str) -> dt.datetime:  # noqa: F811
    return harness.sandbox.portal.get(record_id)["createdate"]


def test_contacts_read_say_when_they_were_created(harness: HubSpotHarness) -> None:  # noqa: F811
    ids = harness.seed(3)
    harness.sandbox.portal.update(ids[1], {"jobtitle": "Buyer"})
    conn = connector(harness)
    records = {r.record_id: r for r in _read(conn)}
    for record_id in ids:
        record = records[record_id]
        assert record.created_at == _created(harness, record_id) and record.created_at.tzinfo is not None
        assert record.created_at == parse_hs_datetime(record.fields["createdate"])
    assert records[ids[1]].created_at < records[ids[1]].modstamp
    (by_id,) = conn.read_records("contacts", FIELDS, [ids[2]])
    assert by_id.created_at == records[ids[2]].created_at


def test_archived_contacts_say_when_they_were_created(harness: HubSpotHarness) -> None:  # noqa: F811
    portal = harness.sandbox.portal
    ids = harness.seed(2)
    created = {record_id: _created(harness, record_id) for record_id in ids}
    base = portal.now() - dt.timedelta(minutes=5)
    portal.archive(ids[0], at=base + dt.timedelta(seconds=1))
    portal.archive(ids[1], at=base + dt.timedelta(seconds=2))
    conn = connector(harness)
    with_values = list(conn.read_deletions("contacts", Cursor(), read_until(), FIELDS))
    bare = list(conn.read_deletions("contacts", Cursor(), read_until()))
    for gone in (with_values, bare):
        assert [(r.record_id, r.deleted, r.created_at) for r in gone] == [
            (ids[0], True, created[ids[0]]),
            (ids[1], True, created[ids[1]]),
        ]
