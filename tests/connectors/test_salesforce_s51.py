"""Salesforce against its sandbox (session 51): a Bulk API 2.0 job still queued when the run
stops waiting for it must not apply its values after newer ones."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from consentsync_salesforce import SalesforceConnector
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync.sdk import ConnectorError, RecordUpdate, WriteResult
from tests.connectors.against_sandbox import connector_settings
from tests.integration.helpers import free_port

QUEUED_FOR = 1.5  # seconds the sandbox keeps a closed job queued


@pytest.fixture
def salesforce() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(port=free_port()) as server:
        server.org.seed(60, seed=5)
        yield server


def test_a_bulk_job_still_queued_at_the_timeout_is_aborted_not_left_to_apply_later(
    salesforce: SalesforceSandbox,
) -> None:
    """A busy org keeps the job queued past ``bulk_timeout``. Left running, it applies its
    values whenever Salesforce gets to it: after the next run wrote newer ones to the same
    records (here within seconds; in a real org, the next run's withdrawal overwritten by the
    grant the stale job holds). The slow job is aborted and its records answered as not done
    (sent again), so the newer write stands."""
    salesforce.bulk_delay = QUEUED_FOR
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:55]]
    bulk = SalesforceConnector(
        "sf-s51",
        connector_settings(
            salesforce.connection_settings(),
            {"bulk_threshold": 50, "bulk_poll_first": 0.05, "bulk_poll_interval": 0.05, "bulk_timeout": 0.3},
        ),
    )
    answers: dict[int, WriteResult] | None = None
    # Without the abort the run stops waiting (ConnectorError) and the job stays queued.
    with contextlib.suppress(ConnectorError):
        (answers,) = list(bulk.write_batches([RecordUpdate("Contact", i, {"Title": "stale"}) for i in ids]))
    # The next run writes the newer value (sObject Collections, below the bulk threshold).
    newer = SalesforceConnector("sf-s51", connector_settings(salesforce.connection_settings()))
    newer_value_stands(salesforce, newer, ids)
    # Every record of the aborted job is answered as not done, to be sent again.
    assert answers is not None and sorted(answers) == list(range(len(ids)))
    assert not any(result.ok for result in answers.values())
    assert all(result.retryable for result in answers.values())


def newer_value_stands(
    salesforce: SalesforceSandbox, newer: SalesforceConnector, ids: list[str], queued_for: float = QUEUED_FOR
) -> None:
    """The next run writes a newer value to five of the records; past the time the stale job
    would have run, the newer value stands and the job is Aborted."""
    for batch in newer.write_batches([RecordUpdate("Contact", i, {"Title": "newer"}) for i in ids[:5]]):
        assert all(result.ok for result in batch.values())
    time.sleep(queued_for + 0.5)  # past the time the queued job would have run
    assert [salesforce.org.get(i)["Title"] for i in ids[:5]] == ["newer"] * 5
    assert all(salesforce.org.get(i)["Title"] != "stale" for i in ids)
    assert [job.state for job in salesforce._jobs.values()] == ["Aborted"]
