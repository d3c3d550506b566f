"""An objection entered to the second counts from the end of that second, as every no does
(docs/policy.md, "A no stamped to the whole second"), where it binds its person and where a CRM
merge carries it, checked on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from consentsync.ledger.service import Ledger
from tests.conftest import Clock
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _pushed, _state


def test_a_consent_within_the_second_of_a_whole_second_objection_lifts_it_nowhere(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """An Art. 21(2) objection entered to the second ("--at 12:00:00", from a call log) happened
    anywhere in that second: a consent captured at 12:00:00.400 is not known to come after it.
    It binds the objector, and a CRM merge carries it to the survivor's person."""
    org = Org(clock)
    org.put("r1", "old-address@example.com")
    org.put("r2", "new-address@example.com")
    _grant(ledger, "old-address@example.com", clock.now - timedelta(days=30))
    _grant(ledger, "new-address@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)
    second = clock.now.replace(microsecond=0)
    ledger.raise_objection(
        "old-address@example.com", "email_marketing", direct_marketing=True, raised_at=second
    )
    clock.advance(seconds=1)  # the consent is captured (observed) after its event time
    _grant(ledger, "old-address@example.com", second + timedelta(milliseconds=400))
    assert _state(ledger, "old-address@example.com") == ("granted", True)  # the objection binds
    clock.advance(minutes=5)
    org.merge("r1", "r2")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "new-address@example.com") == ("withdrawn", True)
    assert _pushed(org, "r2") == [{"optout": True}]
