"""The analyses of grown tables that run beside the writer on PostgreSQL (ledger/engine.py): a
failed one is tried again with the next, and keeping them per engine does not keep the engine."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from sqlalchemy import create_engine

from consentsync.ledger import engine as ledger_engine


def test_tables_whose_analysis_failed_are_analysed_with_the_next_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[list[str]] = []

    def analyse(_engine: Any, tables: list[str]) -> None:
        calls.append(tables)
        if len(calls) == 1:
            raise OSError("the ledger went away")

    monkeypatch.setattr(ledger_engine, "_analyse", analyse)
    statistics = ledger_engine._Statistics()
    statistics.analyse(object(), ["consent_events", "crm_links"])  # type: ignore[arg-type]
    assert statistics.settled(timeout=5)
    statistics.analyse(object(), ["outbox"])  # type: ignore[arg-type]
    assert statistics.settled(timeout=5)
    assert calls == [["consent_events", "crm_links"], ["consent_events", "crm_links", "outbox"]]
    statistics.analyse(object(), ["subjects"])  # type: ignore[arg-type]
    assert statistics.settled(timeout=5)
    assert calls[-1] == ["subjects"]  # what succeeded is not analysed again


def test_an_engine_no_longer_used_is_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_engine, "_analyse", lambda _engine, _tables: None)
    engine = create_engine("sqlite://")
    statistics = ledger_engine._statistics_of(engine)
    statistics.analyse(engine, ["consent_events"])
    assert statistics.settled(timeout=5)
    assert engine in ledger_engine._STATISTICS
    freed = weakref.ref(engine)
    del engine, statistics
    gc.collect()
    assert freed() is None
