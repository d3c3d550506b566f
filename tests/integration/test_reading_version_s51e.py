"""A connector version that reads more for a mapping by itself says so by its
``reading_version``: HubSpot, reading each contact's opt-out of all email (hs_email_optout) and
the v4 "wide" statuses since session 50, has a ledger synced by an older version read every
contact again once, so a contact passed before is read with them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from sqlalchemy import select, update

from consentsync.ledger.schema import sync_cursors
from consentsync.sdk.connector import Connector
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from consentsync.sync.engine import READS_KEY, SyncEngine, reading_digest


@pytest.fixture
def hubspot() -> Iterator[HubSpotHarness]:
    harness = HubSpotHarness()
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


def _engine(config: Path) -> SyncEngine:
    engine = open_sync_engine(config)
    # No look-back: a run reads only what lies past the stored cursor (or all of it again).
    engine.options = replace(engine.options, lookback_seconds=0)
    return engine


def test_the_sdk_declares_no_reading_version_and_hubspot_declares_its_own() -> None:
    assert Connector.reading_version is None
    assert HubSpotConnector.reading_version, "HubSpot reads hs_email_optout beside the mapping"


def test_a_hubspot_ledger_synced_before_the_email_opt_out_was_read_reads_every_contact_again(
    hubspot: HubSpotHarness, tmp_path: Path
) -> None:
    for n in range(3):
        hubspot.create_person(f"p{n}@example.test")
    config = write_sync_config(hubspot, tmp_path)
    first = _engine(config)
    assert first.run(full=True).status == "succeeded"
    again = _engine(config).run(full=False)
    assert (again.status, again.counts.read) == ("succeeded", 0), "nothing new, nothing read"
    # The cursors as the version before stored them: its digest did not hold the reading version.
    engine = _engine(config)
    old = {m.object: reading_digest(m, None) for m in engine.mappings}
    with engine.ledger.engine.begin() as conn:
        rows = conn.execute(select(sync_cursors.c.object_type, sync_cursors.c.cursor)).all()
        assert {object_type for object_type, _ in rows} & set(old)
        for object_type, raw in rows:
            if object_type not in old:
                continue
            stored = orjson.loads(raw)
            stored[READS_KEY] = old[object_type]
            conn.execute(
                update(sync_cursors)
                .where(sync_cursors.c.object_type == object_type)
                .values(cursor=orjson.dumps(stored).decode())
            )
    report = engine.run(full=False)
    assert report.status == "succeeded", report.error
    assert report.counts.read >= 3, "every contact read again under the new reading"
    assert _engine(config).run(full=False).counts.read == 0, "once"
