"""An erasure of the person whose contact survived a HubSpot merge never deletes or anonymises the
other person's data the survivor holds (session 66 black-box audit: with ``erasure: {contacts:
delete}`` the survivor was GDPR-deleted, the other, never erased, person's data with it, and their
address blocklisted in HubSpot for good). docs/policy.md, Merges: "the survivor's person erased, the
merged person is not erased: ... the survivor's record is suppressed": suppressed only while the
merged record's person is not erased (sync/engine.py ``_merged_into``), the delete or anonymise
reaching it once they are. Through the real connector and sync engine against
the HubSpot sandbox over HTTPS, HubSpot's merges of both kinds (a new contact, the primary kept)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from consentsync_hubspot.sandbox.harness import HubSpotHarness

from consentsync import audit
from consentsync.sdk.harness import open_sync_engine, write_sync_config

ERASED, KEPT = "anna.erase@example.com", "bert.keep@example.com"


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> Iterator[HubSpotHarness]:
    made = HubSpotHarness(**request.param)
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _run(config: Path) -> None:
    time.sleep(1.1)  # HubSpot's stamps: a change is past the cursor
    engine = open_sync_engine(config)
    report = engine.run()
    engine.ledger.engine.dispose()
    assert report.status == "succeeded", report.error


def _erase(config: Path, email: str) -> None:
    engine = open_sync_engine(config)
    engine.ledger.erase(email, reason="Art. 17 request")
    engine.ledger.engine.dispose()


def _held(config: Path) -> set[tuple[str, str]]:
    engine = open_sync_engine(config)
    with engine.ledger.engine.connect() as conn:
        held = {(e["what"]["record"], e["rule"]) for e in audit.entries(conn, action="crm.push_held")}
    engine.ledger.engine.dispose()
    return held


@pytest.mark.parametrize("action", ["delete", "anonymise"])
@pytest.mark.parametrize(
    ("kind", "harness"), [("new", {"merges": "new"}), ("old", {"merges": "old"})], indirect=["harness"]
)
def test_the_erased_survivors_person_does_not_take_the_merged_persons_data(
    harness: HubSpotHarness, tmp_path: Path, kind: str, action: str
) -> None:
    erased = harness.create_person(ERASED)
    kept = harness.create_person(KEPT)
    config = write_sync_config(harness, tmp_path)
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["erasure"] = {"contacts": action}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    _run(config)
    portal = harness.sandbox.portal
    if kind == "new":
        survivor = harness.merge_into_new(erased, kept)  # the erased person's contact primary
    else:
        portal.merge(erased, kept, new_record=False)
        survivor = erased
    _run(config)
    _erase(config, ERASED)
    _run(config)
    _run(config)
    record = portal.get(survivor)
    assert record is not None and not portal.purged(survivor), (
        "the merged person's data went with the survivor"
    )
    assert not portal.blocklisted(KEPT), "the merged person's address was blocklisted"
    if kind == "new":  # HubSpot keeps the merged contact's address on the new one
        assert KEPT in str(record.get("hs_additional_emails") or ""), record
    assert (survivor, "erasure_suppress_only_merged_record") in _held(config)
    assert harness.read_opted_out(survivor), "the erased person's survivor was not suppressed"

    # Once the merged person is erased too, the survivor holds nobody's data but erased people's.
    _erase(config, KEPT)
    _run(config)
    record = portal.get(survivor)
    if action == "delete":
        assert record is None or portal.purged(survivor), record
    else:
        assert record is not None and record.get("lastname") == "Erased", record
