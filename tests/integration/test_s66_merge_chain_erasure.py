"""A survivor of a chain of merges (Salesforce: A's Contact into B's, a run, then B's into C's; the
CRM lists only B as merged into C, A's MasterRecordId stays B) holds A's data too: erasing C's and
B's people only suppresses C while A is not erased, and the delete reaches C once A is erased too
(session 66 review of the merge-survivor fix). Against the Salesforce sandbox over HTTPS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from consentsync_salesforce.sandbox.harness import SalesforceHarness

from consentsync.sdk.harness import write_sync_config
from tests.integration.test_s66_hubspot_merge_erasure import _erase, _held, _run

A, B, C = "anna.a@example.com", "bert.b@example.com", "carl.c@example.com"


@pytest.fixture
def harness() -> Iterator[SalesforceHarness]:
    made = SalesforceHarness()
    made.start()
    try:
        yield made
    finally:
        made.stop()


@pytest.mark.parametrize("chain", [False, True], ids=["A_into_C", "A_into_B_into_C"])
def test_a_survivor_holding_a_person_not_erased_is_kept_along_a_chain(
    harness: SalesforceHarness, tmp_path: Path, chain: bool
) -> None:
    org = harness.sandbox.org
    a, b, c = (harness.create_person(email) for email in (A, B, C))
    config = write_sync_config(harness, tmp_path)
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["erasure"] = {"Contact": "delete"}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    _run(config)
    if chain:
        org.merge(b, a)
        _run(config)
        org.merge(c, b)
    else:
        org.merge(c, a)
        org.merge(c, b)
    _run(config)
    _erase(config, C)
    _run(config)
    _erase(config, B)
    _run(config)
    _run(config)
    survivor = org.get(c)
    assert survivor is not None and not survivor.get("IsDeleted"), "deleted though A's data is in it"
    assert (c, "erasure_suppress_only_merged_record") in _held(config)

    _erase(config, A)
    _run(config)
    survivor = org.get(c)
    assert survivor is None or survivor.get("IsDeleted"), "everyone merged into it is erased: not deleted"
