"""HubSpot (session 63, F1): a write to a contact merged away since the read. Over HTTPS against
the sandbox, through the connector and through the sync engine.

HubSpot's changelog "Updated merge functionality for contacts and companies": fetching a record
by an original id "will return the new merged record with the new ID". The connector looked for
the contact's address under the id it wrote to, found none (the batch read answered the merged
contact under its new id), and a read of the id answered a contact, so it was not gone: the push
was refused for good as ``NO_EMAIL`` (a property update as ``OBJECT_NOT_FOUND``), not gone, and
dead-lettered. ``WriteResult.gone`` names "merged away" as gone: the engine then marks the link
gone, and the next run's deletion listing names the merge, links the survivor to the person and
pushes the person's no there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.sandbox.harness import MARKETING, HubSpotHarness
from sqlalchemy import select

from consentsync import audit
from consentsync.ledger.schema import crm_links, outbox, quarantine
from consentsync.sdk import RecordUpdate, WriteResult
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from consentsync.sdk.testing import _captured, _set_connector

SAID_NO = "merged.said.no@example.test"
SILENT = "merged.silent@example.test"


def _write(merging_hubspot: HubSpotHarness, updates: list[RecordUpdate]) -> list[WriteResult]:
    conn = HubSpotConnector("hs-test", merging_hubspot.connector_settings())
    conn.describe("contacts")  # as the engine does before it writes: the read came first
    answers: dict[int, WriteResult] = {}
    for batch in conn.write_batches(updates):
        answers.update(batch)
    return [answers[i] for i in range(len(updates))]


def _unsubscribe(record_id: str) -> RecordUpdate:
    return RecordUpdate("contacts", record_id, {f"subscription_{MARKETING}": "UNSUBSCRIBED"})


@pytest.mark.parametrize(
    "merging_hubspot", [{}, {"merged_archived": False}], indirect=True, ids=["archived", "unlisted"]
)
def test_a_write_to_a_contact_merged_away_since_the_read_is_gone(merging_hubspot: HubSpotHarness) -> None:
    """In one batch: the two originals of a merge (gone, merged away, naming the merged
    contact), a contact deleted (gone, OBJECT_NOT_FOUND: a read of its id answers 404) and a
    contact that still answers itself without an address (not gone: NO_EMAIL, not retried)."""
    first, second, deleted, addressless = merging_hubspot.seed(4)
    merging_hubspot.delete_record(deleted)
    merging_hubspot.sandbox.portal.update(addressless, {"email": ""})
    survivor = merging_hubspot.merge_into_new(first, second)
    pushed, updated, gone, no_email = _write(
        merging_hubspot,
        [
            _unsubscribe(first),
            RecordUpdate("contacts", second, {"jobtitle": "Buyer"}),
            _unsubscribe(deleted),
            _unsubscribe(addressless),
        ],
    )
    for result, record_id in ((pushed, first), (updated, second)):
        assert (result.record_id, result.ok, result.gone, result.retryable) == (record_id, False, True, False)
        assert result.error_code == "MERGED_AWAY", result
        assert survivor in str(result.message), "the answer names the contact it went into"
    assert (gone.ok, gone.gone, gone.error_code) == (False, True, "OBJECT_NOT_FOUND")
    assert (no_email.ok, no_email.gone, no_email.error_code) == (False, False, "NO_EMAIL")
    # Nothing was written to the survivor under the old ids: the engine pushes to it once the
    # listing names the merge.
    assert merging_hubspot.stored(survivor).get("jobtitle") != "Buyer"
    assert not merging_hubspot.read_opted_out(survivor)


@pytest.mark.parametrize("merging_hubspot", [{"merges": "old"}], indirect=True)
def test_merged_the_old_way_the_write_is_gone_too(merging_hubspot: HubSpotHarness) -> None:
    """The primary keeps its id and the other id answers it (HubSpot's merges before the
    change): a write to the other id is gone as well, naming the primary."""
    primary, merged, _ = merging_hubspot.seed(3)
    merging_hubspot.sandbox.portal.merge(primary, merged, new_record=False)
    (result,) = _write(merging_hubspot, [_unsubscribe(merged)])
    assert (result.ok, result.gone, result.error_code) == (False, True, "MERGED_AWAY")
    assert primary in str(result.message)


def _merge_before_the_first_write(
    engine: Any, merging_hubspot: HubSpotHarness, primary: str, other: str
) -> list[str]:
    """A user merges the two contacts after the run read them and before it writes: the id of
    the merged contact is appended to the list returned."""
    real = engine.connector.write_batches
    merged: list[str] = []

    def write_batches(updates: Sequence[RecordUpdate]) -> Iterator[dict[int, WriteResult]]:
        if not merged:
            merged.append(merging_hubspot.merge_into_new(primary, other))
        yield from real(updates)

    engine.connector.write_batches = write_batches
    return merged


def test_the_no_reaches_the_survivor_and_nothing_is_dead_lettered(
    merging_hubspot: HubSpotHarness, tmp_path: Path
) -> None:
    """The person withdraws on the web site; the run reads their contact, a user merges it into
    a new contact before the run pushes the no. The push is answered gone (not dead-lettered,
    not quarantined); the next run names the merge, and the merged contact shows the no."""
    said_no = merging_hubspot.create_person(SAID_NO)
    silent = merging_hubspot.create_person(SILENT)
    config = write_sync_config(merging_hubspot, tmp_path)
    _set_connector(config, mode="two_way")
    first = open_sync_engine(config).run(full=True)
    assert first.status == "succeeded", first.error
    engine = open_sync_engine(config)
    _captured(engine.ledger, [SAID_NO], granted=False)  # unsubscribed on the web site
    time.sleep(1.1)
    merged = _merge_before_the_first_write(engine, merging_hubspot, said_no, silent)
    second = engine.run()
    assert second.status == "succeeded", second.error
    assert merged, "nothing was pushed: the merge never happened"
    (survivor,) = merged
    assert second.counts.push_failed == 0, second.counts
    time.sleep(1.1)
    third = open_sync_engine(config).run()
    assert third.status == "succeeded", third.error
    assert merging_hubspot.read_opted_out(survivor), "the no did not reach the merged contact"
    with engine.ledger.engine.connect() as conn:
        links = {row.record_id: row for row in conn.execute(select(crm_links)).all()}
        dead = conn.execute(select(outbox.c.record_id).where(outbox.c.status == "dead")).all()
        to_the_original = conn.execute(
            select(outbox.c.status, outbox.c.last_error).where(outbox.c.record_id == said_no)
        ).all()
        quarantined = conn.execute(select(quarantine.c.record_id, quarantine.c.reason)).all()
        merges = [entry["what"] for entry in audit.entries(conn, action="crm.record_merged")]
    assert dead == [] and quarantined == [], (dead, quarantined)
    assert [(status, "MERGED_AWAY" in str(error)) for status, error in to_the_original] == [
        ("superseded", True)
    ]
    assert links[said_no].gone_at is not None and links[said_no].merged_into == survivor
    assert links[survivor].gone_at is None
    assert links[survivor].subject_id == links[said_no].subject_id
    assert {(m["record"], m["merged_into"]) for m in merges} >= {(said_no, survivor)}
