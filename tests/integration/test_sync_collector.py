"""A sync run does not make Python's cycle collector walk its heap over and over
(collector.py): with the default thresholds, a full sync of a few thousand contacts makes
thousands of young collections and full ones that grow with the org."""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path
from typing import Any

from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync.app import open_ledger
from consentsync.config import load_config, write_starter
from consentsync.sync.engine import SyncOptions
from tests.integration.test_sync_engine import _engine as sync_engine

CONTACTS = 1500


def _collections_of_a_full_sync(tmp_path: Path) -> tuple[Counter[int], int]:
    config_path = tmp_path / "consentsync.yaml"
    write_starter(config_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = open_ledger(load_config(config_path), migrate=True)
    collections: Counter[int] = Counter()

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            collections[info["generation"]] += 1

    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(CONTACTS, seed=5)
        engine = sync_engine(
            ledger, config_path, sandbox, SyncOptions(batch_size=500, signpost_lag_seconds=0)
        )
        gc.collect()
        gc.callbacks.append(count)
        try:
            report = engine.run(full=True)
        finally:
            gc.callbacks.remove(count)
    ledger.engine.dispose()
    assert report.status == "succeeded", report.error
    return collections, report.counts.read


def test_a_full_sync_collects_rarely(tmp_path: Path) -> None:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # CPython's default, whatever another test left
    try:
        collections, read = _collections_of_a_full_sync(tmp_path)
    finally:
        gc.set_threshold(*saved)
    assert read >= CONTACTS
    # One young collection per 50,000 allocations: a few per thousand records, not hundreds.
    assert collections[0] + collections[1] + collections[2] < read / 50, collections
    assert collections[2] == 0, collections
    assert gc.get_threshold() == saved
