"""An opt-out ticked on a duplicate record that a CRM user merges away before the next sync is
the person's withdrawal: it reaches the ledger and the surviving record, though the survivor
kept the master's values. Dynamics keeps the subordinate row (deactivated, ``merged``,
``masterid``) and Salesforce the merged record in the recycle bin (``MasterRecordId``), so its
values come with the news of the merge; only a no is taken from them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consentsync.sdk.harness import open_sync_engine, write_sync_config

EMAIL = "merge.person@example.test"


@pytest.fixture(params=["dynamics", "salesforce"])
def harness(request: pytest.FixtureRequest) -> Iterator[Any]:
    module = pytest.importorskip(f"consentsync_{request.param}.sandbox.harness")
    started = getattr(module, f"{request.param.capitalize()}Harness")()
    started.start()
    try:
        yield started
    finally:
        started.stop()


def _email_marketing(engine: object, email: str) -> dict[str, object]:
    view = engine.ledger.subject_view(email)  # type: ignore[attr-defined]
    return next(s for s in view["purposes"] if (s["purpose"], s["channel"]) == ("email_marketing", "email"))


def test_an_opt_out_on_a_record_merged_away_before_the_next_sync_is_kept(
    harness: Any, tmp_path: Path
) -> None:
    master = harness.create_person(EMAIL)
    duplicate = harness.create_person(EMAIL)
    config = write_sync_config(harness, tmp_path)
    assert open_sync_engine(config).run(full=True).status == "succeeded"
    time.sleep(1.1)
    harness.opt_out(duplicate)  # the person unsubscribes through the duplicate
    harness.merge_records(master, duplicate)  # merged away before consentsync saw it
    time.sleep(1.1)
    engine = open_sync_engine(config)
    merged_run = engine.run()
    assert merged_run.status == "succeeded", merged_run.error
    state = _email_marketing(engine, EMAIL)
    assert (state["status"], state["suppressed"]) == ("withdrawn", True), state
    assert harness.read_opted_out(master), "the withdrawal did not reach the surviving record"
    links = {link["record_id"]: link["status"] for link in engine.ledger.subject_view(EMAIL)["crm_records"]}
    assert links == {master: "live", duplicate: "merged"}


def test_a_merged_records_grant_is_not_taken_and_nothing_is_recorded_twice(
    harness: Any, tmp_path: Path
) -> None:
    master = harness.create_person(EMAIL, opted_out=True)
    duplicate = harness.create_person(EMAIL)
    config = write_sync_config(harness, tmp_path)
    assert open_sync_engine(config).run(full=True).status == "succeeded"
    engine = open_sync_engine(config)
    before = _email_marketing(engine, EMAIL)
    events_before = len(engine.ledger.subject_view(EMAIL)["history"])
    time.sleep(1.1)
    harness.merge_records(master, duplicate)  # the duplicate said nothing new
    time.sleep(1.1)
    assert open_sync_engine(config).run().status == "succeeded"
    assert _email_marketing(engine, EMAIL)["status"] == before["status"]
    assert len(engine.ledger.subject_view(EMAIL)["history"]) == events_before
