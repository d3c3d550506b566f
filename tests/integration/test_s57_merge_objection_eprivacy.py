"""A CRM merge carries a person's upheld objection to direct marketing to the survivor's person
for every purpose that is direct marketing (``reconcile.serves_direct_marketing``), a purpose
under the ePrivacy rules (``eprivacy: true``) included though not flagged ``direct_marketing``:
marketing by electronic mail is direct marketing whatever that flag says (Art. 21(3); PECR reg.
22). On SQLite and PostgreSQL, against the scripted CRM of test_policy_s49_sync."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock, migrated_ledger
from tests.integration.helpers import consent_value, mapping_text
from tests.integration.test_policy_s49_sync import Org

NEWSLETTER = """\
  - purpose: newsletter
    channel: email
    status:
      field: optout
      direction: both
      pull: {true: withdrawn, false: null}
      push: {suppressed: true, allowed: false}
"""


@pytest.fixture
def ledger(config_path: Path, clock: Clock) -> Iterator[Ledger]:
    """The starter config plus a newsletter under the ePrivacy rules, not flagged direct
    marketing (as an admin may leave it)."""
    data = yaml.safe_load(config_path.read_text())
    data["purposes"].append(
        {
            "key": "newsletter",
            "name": "Newsletter",
            "direct_marketing": False,
            "eprivacy": True,
            "default_basis": "consent",
            "channels": ["email"],
        }
    )
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    with migrated_ledger(config_path, clock) as opened:
        yield opened


def test_a_merge_carries_a_direct_marketing_objection_to_a_purpose_under_the_eprivacy_rules(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    org.put("r1", "old-address@example.com")
    org.put("r2", "new-address@example.com")
    for email in ("old-address@example.com", "new-address@example.com"):
        ledger.record(
            Identity(email=email),
            consent_value(
                ConsentStatus.GRANTED,
                clock.now - timedelta(days=30),
                clock.now,
                purpose="newsletter",
                notice_version="privacy-v3",
            ),
        )
    mapping = parse_mapping(
        mapping_text("scripted", "thing", ("id", "modifiedon", "email"), NEWSLETTER),
        config_path.parent / "thing.yaml",
    )

    def run() -> None:
        report = SyncEngine(ledger, org, [mapping], SyncOptions(signpost_lag_seconds=0)).run()
        assert report.status == "succeeded", report.error

    run()
    # The objection to direct marketing is raised on another purpose: it ends the newsletter too.
    ledger.raise_objection("old-address@example.com", "email_marketing", direct_marketing=True)
    assert ledger.decision_for("old-address@example.com", "newsletter", "email")[1].suppressed
    clock.advance(minutes=5)
    org.merge("r1", "r2")
    run()
    _uid, state = ledger.decision_for("new-address@example.com", "newsletter", "email")
    assert (state.status.value, state.suppressed) == ("withdrawn", True), "the merge lost the objection"
    assert [dict(u.fields) for u in org.written if u.record_id == "r2"] == [{"optout": True}]
