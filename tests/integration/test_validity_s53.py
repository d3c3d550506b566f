"""A purpose's configuration changed applies to every consent from then on (docs/policy.md),
checked against a scripted CRM on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import ConsentStatus
from consentsync.ledger.schema import consent_events
from consentsync.ledger.service import Ledger
from tests.conftest import Clock
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _pushed, _state

ADDRESS = "bob@example.com"


def test_a_shortened_validity_expires_the_consents_past_it_and_every_crm_is_told(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The DPO shortens a purpose's validity: it applies to every consent from then on. The
    stored states are decided again when the ledger is opened under the new configuration, so
    the expiry sweep finds a consent past the new window (it looked for the old one's end) and
    the CRMs are told without waiting for it."""
    _grant(ledger, ADDRESS, clock.now - timedelta(days=500))
    org = Org(clock)
    org.put("r1", ADDRESS)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == []  # granted, within 730 days
    text = config_path.read_text()
    assert "validity_days: 730" in text
    config_path.write_text(text.replace("validity_days: 730", "validity_days: 365", 1))
    reopened = open_ledger(load_config(config_path), migrate=True)
    reopened.clock = clock
    try:
        clock.advance(minutes=5)
        assert _engine(reopened, config_path, org).run().status == "succeeded"
        assert _pushed(org, "r1") == [{"optout": True}], "an expired consent stayed opted in"
        # The run's own expiry sweep (session 57) found it by its new end and recorded it.
        assert reopened.expire_due().recorded == 0
        with reopened.engine.connect() as conn:
            statuses = conn.execute(select(consent_events.c.status)).scalars().all()
        assert statuses.count("expired") == 1
        assert _state(reopened, ADDRESS) == ("expired", True)
    finally:
        reopened.engine.dispose()


def test_a_restatement_keeps_no_other_writer_waiting(
    ledger: Ledger, config_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored states are decided again a transaction per chunk of people: another process
    writes between two chunks (one transaction over the whole ledger kept every other writer
    waiting past its busy timeout: a capture, a sync, a CLI command failed "database is
    locked")."""
    if ledger.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's single writer: PostgreSQL writers of other rows do not wait")
    from consentsync.ledger.identity import Identity
    from consentsync.ledger.service import RecordRequest
    from tests.integration.helpers import consent_value

    granted = clock.now - timedelta(days=500)
    value = consent_value(ConsentStatus.GRANTED, granted, granted, notice_version="v1")
    ledger.record_many(RecordRequest(Identity(email=f"p{n}@example.com"), value) for n in range(1200))
    config_path.write_text(config_path.read_text().replace("validity_days: 730", "validity_days: 365", 1))
    written: list[int] = []
    chunk = Ledger._restate_chunk

    def chunk_then_another_writer(self: Ledger, *args: Any, **kwargs: Any) -> None:
        chunk(self, *args, **kwargs)
        other = sqlite3.connect(ledger.engine.url.database, timeout=1)
        try:
            other.execute("BEGIN IMMEDIATE")  # as another process's write would
            other.rollback()
            written.append(1)
        finally:
            other.close()

    monkeypatch.setattr(Ledger, "_restate_chunk", chunk_then_another_writer)
    reopened = open_ledger(load_config(config_path), migrate=True)
    reopened.clock = clock
    try:
        assert len(written) >= 2  # 1,200 people: three chunks, a writer between each
        assert reopened.expire_due().recorded == 1200
    finally:
        reopened.engine.dispose()
