"""A full reload after a refused delta link (the daemon down longer than the retention period)
that outlasts a run's call budget goes on from where the last run stopped: the pages it commits
hold their own position without the refused link, so the next run is not refused again (which
reloaded from the first contact each time: a large org never finished), and the reload ends with
a new link."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.ledger.service import Ledger
from tests.conftest import SQLITE_ONLY
from tests.integration.test_dynamics_sync_engine import _cursor, _engine, _events
from tests.sandbox.serving import serve_seeded


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    yield from serve_seeded(DynamicsSandbox(), lambda server: server.environment.seed(150, seed=9))


@SQLITE_ONLY  # the connector's rules; the ledger's SQL runs on PostgreSQL elsewhere
def test_a_reload_after_a_refused_link_longer_than_a_run_goes_on_and_finishes(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox
) -> None:
    assert _engine(ledger, config_path, dv).run(full=True).status == "succeeded"
    assert _engine(ledger, config_path, dv).run().status == "succeeded"
    refused = _cursor(ledger)
    assert refused.token
    events = _events(ledger)
    # A withdrawal while the daemon was down: the contact moves to the end of the reload.
    contact = next(row for row in dv.environment.records("contact") if not row["donotphone"])
    dv.environment.update("contact", contact["contactid"], {"donotphone": True})
    dv.expire_delta_tokens()
    # Pages of 10: a new link takes 16 calls (the initial change-tracking read pages through
    # every contact), the reload 15 more; a run has 30, and reads about half the contacts.
    statuses = []
    for _run in range(6):
        report = _engine(ledger, config_path, dv, page_size=10, budget={"per_run": 30}).run()
        assert report.status in ("succeeded", "stopped"), report.error
        statuses.append(report.status)
        if report.status == "succeeded":
            break
    assert statuses[-1] == "succeeded", f"the reload never finished: {statuses}"
    assert _events(ledger) - events == 1  # the withdrawal, once
    after = _cursor(ledger)
    assert after.token and after.token != refused.token
    # Nothing new: what the next run reads (the signpost's catch-up, the consent rows' look-back
    # window) is recognised as already seen.
    again = _engine(ledger, config_path, dv).run().counts
    assert again.read == again.unchanged_records and again.evidence_recorded == 0
