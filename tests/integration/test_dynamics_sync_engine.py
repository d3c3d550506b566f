"""The sync engine against the Dataverse sandbox, on SQLite and PostgreSQL: the first sync keeps
a delta link, later syncs read only changes through it, a withdrawal made in Dynamics reaches
the person's other contacts, a sync stopped mid-delta keeps the old link and the next one reads
the change set again, and a refused link reloads in full without recording anything twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from consentsync_dynamics.sandbox.server import DynamicsSandbox
from sqlalchemy import func, select

from consentsync import audit
from consentsync.ledger.schema import consent_events, sync_cursors
from consentsync.ledger.service import Ledger
from consentsync.sdk import Cursor
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.integration.helpers import shipped_engine
from tests.sandbox.serving import serve_seeded

MAPPINGS = ["contact.yaml", "contact_point_consent.yaml"]


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    yield from serve_seeded(DynamicsSandbox(), lambda server: server.environment.seed(150, seed=9))


def _engine(ledger: Ledger, config_path: Path, dv: DynamicsSandbox, **settings: Any) -> SyncEngine:
    options = SyncOptions(batch_size=37, signpost_lag_seconds=0)
    tuned = {"page_size": 40, "batch_size": 50, "max_attempts": 3, **settings}
    return shipped_engine(ledger, config_path, dv, "dyn", "dynamics", MAPPINGS, tuned, options)


def _cursor(ledger: Ledger, object_type: str = "contact") -> Cursor:
    with ledger.engine.connect() as conn:
        raw = conn.execute(
            select(sync_cursors.c.cursor).where(
                sync_cursors.c.connector == "dyn", sync_cursors.c.object_type == object_type
            )
        ).scalar()
    return Cursor.from_json(orjson.loads(raw)) if raw else Cursor()


@pytest.fixture
def delta_link(ledger: Ledger, config_path: Path, dv: DynamicsSandbox) -> Cursor:
    """The contacts' cursor after a full sync and then one through its delta link, both
    succeeding: the link is in use."""
    assert _engine(ledger, config_path, dv).run(full=True).status == "succeeded"
    assert _engine(ledger, config_path, dv).run().status == "succeeded"
    return _cursor(ledger)


def _events(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(consent_events)).scalar_one()


def _email_consents(dv: DynamicsSandbox) -> int:
    rows = dv.environment.records("msdynmkt_contactpointconsent4")
    return sum(1 for r in rows if r["msdynmkt_contactpointtype"] == 534120000)


def test_first_sync_keeps_a_delta_link_and_later_syncs_read_only_changes(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox
) -> None:
    first = _engine(ledger, config_path, dv).run(full=True)
    assert first.status == "succeeded", first.error
    assert first.counts.read == dv.environment.count("contact") + _email_consents(dv)
    assert first.counts.quarantined == 0
    assert first.counts.pushed > 0
    kept = _cursor(ledger)
    assert kept.token and "deltatoken" in kept.token
    assert _cursor(ledger, "msdynmkt_contactpointconsent4").token
    # The second sync reads our own pushes back through the delta: no evidence, no pushes.
    second = _engine(ledger, config_path, dv).run()
    assert second.status == "succeeded", second.error
    assert 0 < second.counts.read <= first.counts.pushed
    assert (second.counts.evidence_recorded, second.counts.pushes_enqueued) == (0, 0)
    assert dv.calls["delta"] >= 2
    batches = dv.calls["batch"]
    third = _engine(ledger, config_path, dv).run()
    assert third.status == "succeeded" and third.counts.read == 0
    assert dv.calls["batch"] == batches
    with ledger.engine.connect() as conn:
        assert audit.verify(conn).ok


def test_a_withdrawal_in_dynamics_reaches_the_persons_other_contacts(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox
) -> None:
    assert _engine(ledger, config_path, dv).run(full=True).status == "succeeded"
    _engine(ledger, config_path, dv).run()
    by_email: dict[str, list[dict[str, Any]]] = {}
    for row in dv.environment.records("contact"):
        by_email.setdefault(row["emailaddress1"].lower(), []).append(row)
    # Two contacts of one person (the same address spelt differently) that both still allow calls.
    pair = next(
        rows for rows in by_email.values() if len(rows) > 1 and not any(r["donotphone"] for r in rows)
    )
    one, other = pair[0], pair[1]
    dv.environment.update("contact", one["contactid"], {"donotphone": True})
    report = _engine(ledger, config_path, dv).run()
    assert report.status == "succeeded", report.error
    assert report.counts.state_changes >= 1 and report.counts.pushed >= 1
    assert dv.environment.get("contact", other["contactid"])["donotphone"] is True
    assert _engine(ledger, config_path, dv).run().counts.pushes_enqueued == 0


def test_a_sync_stopped_mid_delta_keeps_the_old_link_and_the_next_one_reads_it_again(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox, delta_link: Cursor
) -> None:
    rows = dv.environment.records("contact")[:120]
    turned = sum(1 for row in rows if not row["donotphone"])  # each is one new withdrawal
    for row in rows:
        dv.environment.update("contact", row["contactid"], {"donotphone": True})
    engine = _engine(ledger, config_path, dv)
    # The stop comes once the first batch is taken. Not from ``progress``: it is told committed
    # work only, and when the reads run ahead the batches are committed as one group, all 120
    # records of them at once (seen in CI).
    take_batch = engine._commit_read_page

    def take_then_stop(*args: Any, **kwargs: Any) -> None:
        take_batch(*args, **kwargs)
        engine.stop_requested.set()

    engine._commit_read_page = take_then_stop  # type: ignore[method-assign]
    stopped = engine.run()
    assert stopped.status == "stopped" and 0 < stopped.counts.read < 120
    assert _cursor(ledger).token == delta_link.token  # not advanced past records not yet handled
    events = _events(ledger)
    resumed = _engine(ledger, config_path, dv).run()
    assert resumed.status == "succeeded", resumed.error
    assert resumed.counts.read >= 120  # the whole change set again, harmlessly
    after = _cursor(ledger)
    assert after.token and after.token != delta_link.token
    # Nothing recorded twice: the rows of the stopped run's page are recognised as handled.
    assert stopped.counts.evidence_recorded + resumed.counts.evidence_recorded == turned
    assert _events(ledger) - events == resumed.counts.evidence_recorded
    assert _engine(ledger, config_path, dv).run().counts.evidence_recorded == 0


def test_a_refused_delta_link_reloads_in_full_and_records_nothing_twice(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox, delta_link: Cursor
) -> None:
    events = _events(ledger)
    dv.expire_delta_tokens()
    reload = _engine(ledger, config_path, dv).run()
    assert reload.status == "succeeded", reload.error
    assert reload.counts.read == dv.environment.count("contact") + _email_consents(dv)
    assert reload.counts.evidence_recorded == 0 and _events(ledger) == events
    assert _cursor(ledger).token not in (None, delta_link.token)
    # Contacts come through the new delta link (nothing new); consent rows, a table without change
    # tracking, are re-read by their look-back window and recognised as already seen.
    after = _engine(ledger, config_path, dv).run().counts
    assert after.read == after.unchanged_records and after.evidence_recorded == 0
