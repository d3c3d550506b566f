"""Reads side by side: where the connector offers readers (``Connector.reader``), a run asks for
every object's pages at once and still commits them one read after another, so the ledger it
leaves is the one a run reading one object after another leaves, with the same API calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.connector import SalesforceConnector
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import Engine, select

from consentsync.app import open_ledger, open_sync
from consentsync.config import load_config, write_starter
from consentsync.ledger.schema import consent_states, crm_links, subjects, sync_cursors
from consentsync.sync.engine import RunReport
from tests.conftest import Cli
from tests.integration.test_cli_sync import connect_sandbox

_WHERE_IT_STOPPED = ("record_id", "token")
QUERY_DELAY = 0.6  # seconds the CRM takes for each object's first page


def _sync(config_path: Path, *, full: bool = True) -> tuple[RunReport, Engine]:
    config = load_config(config_path)
    ledger = open_ledger(config, migrate=True)
    report = open_sync(config, "sf", ledger).run(full=full)
    assert report.status == "succeeded", report.error
    return report, ledger.engine


def _ledger_content(engine: Engine) -> dict[str, Any]:
    """What a run leaves, named by CRM record and purpose rather than by the ids rows got."""
    with engine.connect() as conn:
        uid = dict(conn.execute(select(subjects.c.id, subjects.c.uid)).all())
        people = {
            (row.object_type, row.record_id): row.subject_id for row in conn.execute(select(crm_links)).all()
        }
        # A person is named by the CRM records linked to them (uids are random).
        names = {
            subject: tuple(sorted(record for record, owner in people.items() if owner == subject))
            for subject in uid
        }
        states = sorted(
            (names[row.subject_id], row.purpose, row.channel, row.status, row.basis, row.suppressed, row.rule)
            for row in conn.execute(select(consent_states)).all()
        )
        # The record where each read stopped (its time is the time the org was seeded).
        cursors = sorted(
            (
                row.object_type,
                {k: v for k, v in json.loads(row.cursor).items() if k in ("record_id", "token")},
            )
            for row in conn.execute(select(sync_cursors))
        )
    engine.dispose()
    return {"people": sorted(names.values()), "states": states, "cursors": cursors}


def test_every_objects_first_page_is_asked_for_at_once(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(40, seed=5)  # one page of each of the four mapped objects
        connect_sandbox(sandbox, config_path, monkeypatch)
        sandbox.faults.update(delay=QUERY_DELAY, delay_kinds={"query"})
        report, engine = _sync(config_path)
        engine.dispose()
    reads = 4
    # One after another the run would wait reads x QUERY_DELAY for its pages; side by side, about
    # one delay (what is left of the others passes while the first object's page is committed).
    assert report.seconds["read"] < (reads - 1.5) * QUERY_DELAY, report.seconds


def test_the_ledger_and_the_calls_are_those_of_reads_one_after_another(
    tmp_path: Path, cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sequential_config = tmp_path / "sequential" / "consentsync.yaml"
    sequential_config.parent.mkdir()
    write_starter(sequential_config, f"sqlite:///{tmp_path / 'sequential' / 'ledger.db'}")
    runs = []
    # Two orgs seeded alike (the runs push, so they cannot share one), each read with small
    # pages so that the reads overlap page by page.
    for path, readers in ((config_path, True), (sequential_config, False)):
        with SalesforceSandbox() as sandbox, monkeypatch.context() as patch:
            sandbox.org.seed(300, seed=9)
            connect_sandbox(sandbox, path, monkeypatch)
            data = yaml.safe_load(path.read_text())
            data["connectors"][0]["settings"]["query_batch_size"] = 200
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            sandbox.faults.update(delay=0.05, delay_kinds={"query", "queryMore"})
            if not readers:
                patch.setattr(SalesforceConnector, "reader", lambda self: None)
            runs.append(_sync(path))
    (side_by_side, side_by_side_ledger), (one_by_one, one_by_one_ledger) = runs
    assert side_by_side.counts.read == one_by_one.counts.read > 600
    assert side_by_side.counts == one_by_one.counts
    assert _ledger_content(side_by_side_ledger) == _ledger_content(one_by_one_ledger)
