"""The sync engine against the SuperOffice sandbox, on SQLite and PostgreSQL: SuperOffice's
consents become ledger evidence, and what the ledger decides reaches SuperOffice as SetConsent /
RemoveConsent, only for people whose consent it changes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger, utcnow
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.integration.helpers import consent_value, shipped_engine


@pytest.fixture
def so() -> Iterator[SuperOfficeSandbox]:
    with SuperOfficeSandbox() as server:
        server.tenant.seed(80, seed=6)
        yield server


def _engine(ledger: Ledger, config_path: Path, so: SuperOfficeSandbox) -> SyncEngine:
    options = SyncOptions(batch_size=25, signpost_lag_seconds=0)
    return shipped_engine(
        ledger, config_path, so, "so", "superoffice", ["person.yaml"], {"page_size": 30}, options
    )


def _emarketing(so: SuperOfficeSandbox) -> dict[int, str | None]:
    return {
        pid: (row.legal_base.key if (row := so.tenant.consent(pid, "EMARKETING")) else None)
        for pid in so.tenant.persons
    }


def _synced_consenter(ledger: Ledger, config_path: Path, so: SuperOfficeSandbox) -> tuple[int, str]:
    """After a full sync: a person who consents to e-marketing in SuperOffice, and their email."""
    assert _engine(ledger, config_path, so).run(full=True).status == "succeeded"
    pid = next(pid for pid, key in _emarketing(so).items() if key == "CONSENT")
    email = so.tenant.persons[pid].email
    assert email
    return pid, email


def _capture(ledger: Ledger, email: str, status: ConsentStatus) -> None:
    ledger.record(Identity(email=email), consent_value(status, utcnow(), utcnow()))


def test_superoffice_consents_reach_the_ledger_and_withdrawals_go_back(
    ledger: Ledger, config_path: Path, so: SuperOfficeSandbox
) -> None:
    before = _emarketing(so)
    first = _engine(ledger, config_path, so).run(full=True)
    assert first.status == "succeeded", first.error
    assert first.counts.read == len(so.tenant.persons) and first.counts.quarantined == 0
    # Nobody without an e-marketing consent is written "Withdrawn"; nothing changes on a first sync.
    assert _emarketing(so) == before and so.write_calls == 0

    consenting = [pid for pid, key in before.items() if key == "CONSENT"]
    never = [pid for pid, key in before.items() if key is None]
    target = so.tenant.persons[consenting[0]]
    assert target.email and never
    view = ledger.subject_view(target.email)
    assert any(s["purpose"] == "email_marketing" and s["status"] == "granted" for s in view["purposes"])

    # The person withdraws on a web form: the ledger records it, the next sync writes it back.
    _capture(ledger, target.email, ConsentStatus.WITHDRAWN)
    second = _engine(ledger, config_path, so).run()
    assert second.status == "succeeded", second.error
    after = _emarketing(so)
    assert after[target.id] == "WITHDRAWN"
    assert {pid: key for pid, key in after.items() if pid != target.id} == {
        pid: key for pid, key in before.items() if pid != target.id
    }
    row = so.tenant.consent(target.id, "EMARKETING")
    assert row is not None and row.source.key == "SYSTEM"
    writes = so.write_calls
    assert writes == 1

    # Reading our own write back, and then no change at all, write nothing more.
    for _ in range(2):
        again = _engine(ledger, config_path, so).run()
        assert again.status == "succeeded", again.error
    assert so.write_calls == writes


def test_a_withdrawal_in_superoffice_is_sticky_in_the_ledger(
    ledger: Ledger, config_path: Path, so: SuperOfficeSandbox
) -> None:
    pid, email = _synced_consenter(ledger, config_path, so)
    so.tenant.set_consent(pid, "EMARKETING", "MANUAL", "WITHDRAWN", "asked by phone")
    time.sleep(1.1)  # a run reads whole seconds before the one it started in
    run = _engine(ledger, config_path, so).run()
    assert run.status == "succeeded", run.error
    state = next(s for s in ledger.subject_view(email)["purposes"] if s["purpose"] == "email_marketing")
    assert state["status"] == "withdrawn" and state["suppressed"] is True


def test_an_objection_to_direct_marketing_is_written_as_withdrawn(
    ledger: Ledger, config_path: Path, so: SuperOfficeSandbox
) -> None:
    pid, email = _synced_consenter(ledger, config_path, so)
    ledger.raise_objection(email, "email_marketing", direct_marketing=True, raised_at=datetime.now(UTC))
    run = _engine(ledger, config_path, so).run()
    assert run.status == "succeeded", run.error
    assert so.tenant.consent(pid, "EMARKETING").legal_base.key == "WITHDRAWN"  # type: ignore[union-attr]
