"""Customer Insights - Journeys decides whom it may message from its consent rows
(msdynmkt_contactpointconsent4), not from the contact's checkboxes: a person's no that the ledger
holds, wherever they said it, is written to each of their rows for that purpose and channel as
Opted out, read back as our own write (no evidence, no second push); a suppression that is no
one's no (a restriction) and the ledger allowing by default write no row."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.integration.helpers import consent_value, shipped_engine
from tests.sandbox.serving import serve_seeded

MAPPINGS = ["contact.yaml", "contact_point_consent.yaml"]
EMAIL_MARKETING = "6f0b1c7e-0d6a-4c1e-9a51-000000000001"
PROFILING = "6f0b1c7e-0d6a-4c1e-9a51-000000000002"
EMAIL, OPTED_IN, OPTED_OUT = 534120000, 534120001, 534120002


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    yield from serve_seeded(DynamicsSandbox(), lambda server: None)


def _engine(ledger: Ledger, config_path: Path, dv: DynamicsSandbox) -> SyncEngine:
    options = SyncOptions(batch_size=50, signpost_lag_seconds=0)
    return shipped_engine(ledger, config_path, dv, "dyn", "dynamics", MAPPINGS, {"page_size": 40}, options)


def _person(dv: DynamicsSandbox, email: str) -> dict[str, str]:
    """A contact and two Opted in email rows of theirs (email marketing, profiling)."""
    env = dv.environment
    contact = env.create("contact", {"lastname": "Person", "emailaddress1": email, "donotbulkemail": False})
    rows = {
        purpose: env.create(
            "msdynmkt_contactpointconsent4",
            {
                "msdynmkt_contactpointvalue": email,
                "msdynmkt_contactpointtype": EMAIL,
                "msdynmkt_value": OPTED_IN,
                "_msdynmkt_purposeid_value": purpose,
                "msdynmkt_source": "Web form",
            },
        )
        for purpose in (EMAIL_MARKETING, PROFILING)
    }
    return {"contact": contact, **rows}


def _value(dv: DynamicsSandbox, row_id: str) -> int:
    row = dv.environment.get("msdynmkt_contactpointconsent4", row_id)
    assert row is not None
    return int(row["msdynmkt_value"])


def test_a_withdrawal_given_elsewhere_opts_out_the_journeys_row_of_its_purpose(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox
) -> None:
    withdrawing = _person(dv, "withdraws@example.test")
    staying = _person(dv, "stays@example.test")
    first = _engine(ledger, config_path, dv).run(full=True)
    assert first.status == "succeeded", first.error
    # Read Opted in: nothing to write to any row.
    assert {_value(dv, withdrawing[p]) for p in (EMAIL_MARKETING, PROFILING)} == {OPTED_IN}
    # The person withdraws email marketing on the web form.
    now = datetime.now(UTC)
    ledger.record(Identity(email="withdraws@example.test"), consent_value(ConsentStatus.WITHDRAWN, now, now))
    report = _engine(ledger, config_path, dv).run()
    assert report.status == "succeeded", report.error
    assert _value(dv, withdrawing[EMAIL_MARKETING]) == OPTED_OUT
    assert _value(dv, withdrawing[PROFILING]) == OPTED_IN  # another purpose: untouched
    assert dv.environment.get("contact", withdrawing["contact"])["donotbulkemail"] is True
    assert {_value(dv, staying[p]) for p in (EMAIL_MARKETING, PROFILING)} == {OPTED_IN}
    # Read back, the row is our own write: no evidence, nothing more to push.
    again = _engine(ledger, config_path, dv).run()
    assert again.status == "succeeded", again.error
    assert (again.counts.evidence_recorded, again.counts.pushes_enqueued) == (0, 0)


def test_a_restriction_writes_no_consent_row(ledger: Ledger, config_path: Path, dv: DynamicsSandbox) -> None:
    """Art. 18 suppresses every purpose, but it is no one's no and it ends: the contact's
    checkboxes show it, the consent rows keep the person's answer."""
    person = _person(dv, "restricted@example.test")
    assert _engine(ledger, config_path, dv).run(full=True).status == "succeeded"
    ledger.restrict("restricted@example.test", restricted=True, reason="accuracy contested")
    report = _engine(ledger, config_path, dv).run()
    assert report.status == "succeeded", report.error
    assert dv.environment.get("contact", person["contact"])["donotbulkemail"] is True
    assert {_value(dv, person[p]) for p in (EMAIL_MARKETING, PROFILING)} == {OPTED_IN}
