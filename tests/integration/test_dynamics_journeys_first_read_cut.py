"""A first read of the Journeys view (consentsync_journeys_contact) cut between two pages (SIGKILL,
a crash) goes on from the last page the engine committed: the engine stores, with every page, the
cursor the connector hands over with it, whose token holds both delta links and the contact the
read walked to. The read went back to the first contact before, so on a tenant whose first read
outlasts every run it never finished. A consent row created between the two runs for a contact
handed over before the cut is found by the consent rows' delta from the link the read took
first."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from consentsync_dynamics.sandbox.server import DynamicsSandbox
from sqlalchemy import select

from consentsync.ledger.schema import crm_links, crm_snapshots, sync_cursors
from consentsync.ledger.service import Ledger
from consentsync.sdk import Cursor
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import shipped_engine
from tests.integration.test_dynamics_consent_rows import EMAIL_MARKETING, OPTED_OUT
from tests.sandbox.serving import serve_seeded

# The connector's rules against its sandbox: the ledger's SQL under them runs on PostgreSQL in
# the engine's and the ledger's own tests (CI has 15 minutes on two cores).
pytestmark = SQLITE_ONLY

JOURNEYS = "consentsync_journeys_contact"
CONSENTS = "msdynmkt_contactpointconsent4"
MARKETING_FIELD = "purpose_" + EMAIL_MARKETING.replace("-", "")


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    yield from serve_seeded(DynamicsSandbox(), lambda server: None)


def _engine(ledger: Ledger, config_path: Path, dv: DynamicsSandbox) -> SyncEngine:
    options = SyncOptions(batch_size=2, signpost_lag_seconds=0)
    return shipped_engine(
        ledger, config_path, dv, "dyn", "dynamics", ["journeys_contact.yaml"], {"page_size": 3}, options
    )


def _cursor(ledger: Ledger) -> Cursor:
    with ledger.engine.connect() as conn:
        raw = conn.execute(
            select(sync_cursors.c.cursor).where(
                sync_cursors.c.connector == "dyn", sync_cursors.c.object_type == JOURNEYS
            )
        ).scalar()
    return Cursor.from_json(orjson.loads(raw)) if raw else Cursor()


def _shown(ledger: Ledger, contact_id: str) -> Any:
    with ledger.engine.connect() as conn:
        held = conn.execute(
            select(crm_snapshots.c.fields)
            .join(crm_links, crm_links.c.id == crm_snapshots.c.link_id)
            .where(crm_links.c.object_type == JOURNEYS, crm_links.c.record_id == contact_id)
        ).scalar_one()
    return orjson.loads(held).get(MARKETING_FIELD)


def test_a_first_read_killed_between_two_pages_goes_on_from_the_last_page_committed(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox
) -> None:
    people = [
        dv.environment.create("contact", {"lastname": f"P{n}", "emailaddress1": f"person{n}@example.test"})
        for n in range(8)
    ]
    cut = _engine(ledger, config_path, dv)
    take = cut._commit_read_page
    committed: list[str] = []

    def die_at_the_third_page(read: Any, page: Any, *args: Any, **kwargs: Any) -> None:
        if len(committed) == 4:
            raise SystemExit("killed between two pages")
        take(read, page, *args, **kwargs)
        committed.extend(record.record_id for record in page)

    cut._commit_read_page = die_at_the_third_page  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        cut.run()
    kept = _cursor(ledger)
    assert kept.token is not None, "the engine kept a position without a token: the next run starts again"
    held = json.loads(kept.token.removeprefix("consentsync-journeys:"))
    assert held["walk"][1] == committed[-1]
    # Between the two runs, someone creates a row for a contact the cut run handed over.
    first = dv.environment.get("contact", committed[0])
    dv.environment.create(
        CONSENTS,
        {
            "msdynmkt_contactpointvalue": first["emailaddress1"],
            "msdynmkt_contactpointtype": 534120000,
            "msdynmkt_value": OPTED_OUT,
            "_msdynmkt_purposeid_value": EMAIL_MARKETING,
        },
    )
    handed: list[str] = []
    engine = _engine(ledger, config_path, dv)
    take_next = engine._commit_read_page

    def note(read: Any, page: Any, *args: Any, **kwargs: Any) -> None:
        handed.extend(record.record_id for record in page)
        take_next(read, page, *args, **kwargs)

    engine._commit_read_page = note  # type: ignore[method-assign]
    report = engine.run()
    assert report.status == "succeeded", report.error
    rest = [p for p in people if p not in committed]
    assert set(handed[: len(rest)]) == set(rest)  # went on after the last page kept
    assert _shown(ledger, committed[0]) is True
    assert all(_shown(ledger, p) is None for p in people if p != committed[0])
    done = json.loads(str(_cursor(ledger).token).removeprefix("consentsync-journeys:"))
    assert "walk" not in done and "recheck" not in done
    # The next run reads, once, what changed after the signpost of the run that ended the read
    # (here: the same second), nothing new; the one after reads nothing.
    assert _engine(ledger, config_path, dv).run().counts.evidence_recorded == 0
    assert _engine(ledger, config_path, dv).run().counts.read == 0
