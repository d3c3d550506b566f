"""A purpose's configuration changed applies to every consent from then on (docs/policy.md),
checked against a scripted CRM on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from consentsync.app import open_ledger
from consentsync.config import load_config
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
        assert reopened.expire_due().recorded == 1  # the sweep finds it by its new end
        assert _state(reopened, ADDRESS) == ("expired", True)
    finally:
        reopened.engine.dispose()
