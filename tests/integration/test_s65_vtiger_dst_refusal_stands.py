"""A Privacy Guard refusal stamped in the spring-forward gap, synced by the engine, is not reversed
by a consent captured within the hour the gap leaves in doubt (the refusal may have come after
it), and a grant stamped in the repeated autumn hour counts from its first pass
(tests/connectors/test_s65_vtiger_dst_event_times.py shows the connector's and the mapping's side)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from consentsync_vtiger.sandbox.server import VtigerCrm, VtigerSandbox
from sqlalchemy import select

from consentsync.domain import ConsentStatus, Evidence
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import consent_events
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncOptions
from tests.connectors.test_s65_vtiger_dst_event_times import ZONE_NAME, _last_gap_and_fold, _readings
from tests.integration.helpers import shipped_engine

_TIME = "%Y-%m-%d %H:%M:%S"


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    with VtigerSandbox(VtigerCrm(privacy_guard=True, timezone=ZONE_NAME)) as server:
        yield server


def test_a_refusal_in_the_gap_stands_against_a_consent_captured_in_the_hour_in_doubt(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    gap, fold = _last_gap_and_fold(now)
    for who, status, wall in (("gap", "Not Granted", gap), ("fold", "Granted", fold)):
        contact = sandbox.crm.create("Contacts", lastname=who, email=f"{who}@example.test")
        sandbox.crm.create(
            "Consents",
            consent_name="Email Marketing",
            contact_id=contact,
            consent_status=status,
            granted_on=wall.strftime(_TIME),
            consent_source="Phone",
        )
    settings = {"max_attempts": 4, "server_timezone": ZONE_NAME}
    options = SyncOptions(batch_size=40, signpost_lag_seconds=0)
    engine = shipped_engine(
        ledger, config_path, sandbox, "vt", "vtiger", ["contacts.yaml", "consents.yaml"], settings, options
    )
    report = engine.run(full=True)
    assert report.status == "succeeded", report.error
    with ledger.engine.connect() as conn:
        dated = dict(
            conn.execute(
                select(consent_events.c.status, consent_events.c.event_time).where(
                    consent_events.c.source == "vt:Consents"
                )
            ).all()
        )
    assert dated == {"refused": _readings(gap)[1], "granted": _readings(fold)[0]}
    # A web form's consent between the two moments the refusal's time can mean.
    between = _readings(gap)[0] + dt.timedelta(minutes=30)
    outcome = ledger.record(
        Identity(email="gap@example.test"),
        Evidence.from_web_form(ConsentStatus.GRANTED, between, now, evidence_ref="form:signup/test"),
    )
    assert outcome.after is not None
    assert outcome.after.status is ConsentStatus.REFUSED and outcome.after.suppressed, outcome.after
