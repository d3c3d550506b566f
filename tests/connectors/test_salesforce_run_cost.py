"""What a Salesforce run costs in API calls. Each read asks sObject Get Updated (one call an
object); describe answers are kept an hour per org, user and object in the process, so that a
daemon's runs (the connector opened afresh every run) describe each object once an hour, and a
per-run budget that synced the shipped mappings before Get Updated came in still does."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce import connector as sf_connector
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import func, select

from consentsync.ledger.schema import outbox
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import seeded_org, shipped_engine

ALL_OBJECTS = ["contact.yaml", "lead.yaml", "individual.yaml", "contact_point_type_consent.yaml"]


@pytest.fixture
def salesforce() -> Iterator[SalesforceSandbox]:
    yield from seeded_org(30, seed=7)


def _engine(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox, mappings: list[str], **settings: Any
) -> SyncEngine:
    options = SyncOptions(batch_size=25, signpost_lag_seconds=0)
    settings = {"query_batch_size": 200, **settings}
    return shipped_engine(ledger, config_path, salesforce, "sf", "salesforce", mappings, settings, options)


def _reading_calls(engine: SyncEngine) -> dict[str, int]:
    usage = engine.connector.usage.per_endpoint
    return {kind: usage.get(kind, 0) for kind in ("token", "describe", "updated", "query")}


@SQLITE_ONLY  # the connector's rules; the ledger's SQL runs on PostgreSQL elsewhere
def test_a_budget_of_13_calls_still_syncs_the_four_shipped_mappings(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    """1 token + 4 describes + 4 queries synced under 13 calls a run; Get Updated's 4 calls more
    made every run stop before its pushes, for good. Runs after the first describe nothing."""
    statuses = []
    for _ in range(5):
        engine = _engine(ledger, config_path, salesforce, ALL_OBJECTS, budget={"per_run": 13})
        statuses.append(engine.run().status)
    with ledger.engine.connect() as conn:
        pending = conn.execute(
            select(func.count()).select_from(outbox).where(outbox.c.status == "pending")
        ).scalar_one()
    assert "succeeded" in statuses and pending == 0, (statuses, pending)


@SQLITE_ONLY
def test_a_daemons_runs_describe_each_object_once_an_hour(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    costs = []
    for _ in range(2):
        engine = _engine(ledger, config_path, salesforce, ALL_OBJECTS)
        assert engine.run().status == "succeeded"
        costs.append(_reading_calls(engine))
    assert costs == [
        {"token": 1, "describe": 4, "updated": 4, "query": 4},
        {"token": 1, "describe": 0, "updated": 4, "query": 4},
    ]
    assert salesforce.calls["describe"] == 4
    monkeypatch.setattr(sf_connector, "_DESCRIBE_SECONDS", 0.0)  # an hour later
    engine = _engine(ledger, config_path, salesforce, ALL_OBJECTS)
    assert engine.run().status == "succeeded"
    assert _reading_calls(engine)["describe"] == 4


@SQLITE_ONLY
def test_describes_are_kept_per_org(ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox) -> None:
    """Another org (another sandbox, on whatever port) is described for itself."""
    _engine(ledger, config_path, salesforce, ["contact.yaml"]).run()
    for other in seeded_org(3, seed=8):
        engine = _engine(ledger, config_path, other, ["contact.yaml"])
        engine.run()
        assert _reading_calls(engine)["describe"] == 1
        assert other.calls["describe"] == 1


@SQLITE_ONLY
def test_a_mapped_field_the_kept_describe_lacks_is_described_again_at_once(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    """A field added in Salesforce (and to the mapping) within the hour is not refused as
    missing until the kept answer expires: the object is described again."""
    assert _engine(ledger, config_path, salesforce, ["contact.yaml"]).run().status == "succeeded"
    org = salesforce.org.org_id
    for key, kept in list(sf_connector._DESCRIBED.items()):
        if org in key and key[-1] == "Contact":  # as if HasOptedOutOfEmail came after it
            fields = {name: f for name, f in kept.fields.items() if name != "HasOptedOutOfEmail"}
            sf_connector._DESCRIBED[key] = dataclasses.replace(kept, fields=fields)
    engine = _engine(ledger, config_path, salesforce, ["contact.yaml"])
    report = engine.run()
    assert report.status == "succeeded", report.error
    assert _reading_calls(engine)["describe"] == 1


@SQLITE_ONLY
def test_a_query_refused_for_a_field_forgets_the_kept_describe(
    ledger: Ledger, config_path: Path, salesforce: SalesforceSandbox
) -> None:
    """A mapped field deleted in Salesforce within the hour: the query is refused (the kept
    describe still lists it), and the next run describes again and names the field."""
    assert _engine(ledger, config_path, salesforce, ["contact.yaml"]).run().status == "succeeded"
    contact = salesforce.org.schema["Contact"]
    del contact.fields["Legal_Basis__c"]
    contact.__post_init__()
    refused = _engine(ledger, config_path, salesforce, ["contact.yaml"]).run()
    assert refused.status == "failed" and "INVALID_FIELD" in (refused.error or ""), refused.error
    engine = _engine(ledger, config_path, salesforce, ["contact.yaml"])
    named = engine.run()
    assert named.status == "failed" and "Legal_Basis__c" in (named.error or ""), named.error
    assert _reading_calls(engine)["describe"] == 1
