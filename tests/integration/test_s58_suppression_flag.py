"""An outbox row is a suppression when its write restricts processing (an opt-out ticked, an
erasure's action), not whenever its person has some suppressed state: the alerts on late and
dead-lettered suppressions (``status``, the console, the metrics) count these rows, and a
re-subscription a CRM refused was reported as "suppression(s) dead-lettered ... retry"
(black-box finding F5, session 58). Against the Salesforce sandbox, observing, so that the
decided rows wait where they can be read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import select, update

from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import outbox
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncOptions
from tests.conftest import Clock
from tests.integration.helpers import sandbox_engine, seeded_org, shipped_mappings

CONTACT = shipped_mappings("salesforce", "contact.yaml")[0]


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    yield from seeded_org(40, seed=58)


def _observe(ledger: Ledger, config_path: Path, org: SalesforceSandbox, *, full: bool = False) -> None:
    connector = {
        "name": "sf",
        "vendor": "salesforce",
        "mappings": [CONTACT],
        "settings": org.connection_settings(),
    }
    report = sandbox_engine(ledger, config_path, connector, SyncOptions(mode="observe")).run(full=full)
    assert report.status == "succeeded", report.error


def _said(ledger: Ledger, email: str, purpose: str, channel: str, status: ConsentStatus) -> None:
    now = ledger.clock()
    ledger.record(
        Identity(email=email),
        Evidence(
            purpose=purpose,
            channel=channel,
            status=status,
            basis=LawfulBasis.CONSENT,
            event_time=now,
            observed_at=now,
            source="web_form",
            origin=Origin.CAPTURE,
            notice_version="v2",
        ),
    )


def _waiting(ledger: Ledger, record_id: str) -> list[tuple[dict[str, object], bool]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(outbox.c.fields, outbox.c.suppression).where(
                outbox.c.status == "pending", outbox.c.record_id == record_id
            )
        ).all()
    return [(orjson.loads(fields), bool(suppression)) for fields, suppression in rows]


def test_a_push_is_a_suppression_when_its_write_restricts_not_when_its_person_is_suppressed(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox, clock: Clock
) -> None:
    _observe(ledger, config_path, org, full=True)
    # Contacts whose address is theirs alone in the org (a person of one Contact record).
    held = [
        c
        for c in org.org.records("Contact")
        if c["Email"] and len(ledger.subject_uids_for_email(c["Email"])) == 1
    ]
    resubscribed = next(c for c in held if c["HasOptedOutOfEmail"])
    withdrawn = next(c for c in held if not c["HasOptedOutOfEmail"])
    clock.now = datetime.now(UTC) + timedelta(seconds=2)  # after the CRM's stamps
    # The first withdraws from profiling (a suppressed state that no Contact field shows) and
    # opts back in to email marketing through a form: a push that clears an opt-out. The second
    # withdraws from email marketing: a push that ticks one.
    _said(ledger, resubscribed["Email"], "profiling", "email", ConsentStatus.WITHDRAWN)
    _said(ledger, resubscribed["Email"], "email_marketing", "email", ConsentStatus.GRANTED)
    _said(ledger, withdrawn["Email"], "email_marketing", "email", ConsentStatus.WITHDRAWN)
    _observe(ledger, config_path, org)

    assert ledger.decision_for(resubscribed["Email"], "profiling", "email")[1].suppressed
    assert _waiting(ledger, resubscribed["Id"]) == [({"HasOptedOutOfEmail": False}, False)]
    assert _waiting(ledger, withdrawn["Id"]) == [({"HasOptedOutOfEmail": True}, True)]


def test_a_waiting_row_an_older_release_flagged_is_unflagged_when_decided_again(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-subscription queued by an older release carries the flag (it took every push of a
    person with a suppressed state for one): decided again the same way, its row is kept, with
    its attempts, and its flag made this meaning; the first run of a release that decides
    otherwise examines everyone, so no such row is left to raise a false alert."""
    from consentsync.sync import push_rules

    _observe(ledger, config_path, org, full=True)
    held = [
        c
        for c in org.org.records("Contact")
        if c["Email"] and len(ledger.subject_uids_for_email(c["Email"])) == 1
    ]
    resubscribed = next(c for c in held if c["HasOptedOutOfEmail"])
    clock.now = datetime.now(UTC) + timedelta(seconds=2)
    _said(ledger, resubscribed["Email"], "profiling", "email", ConsentStatus.WITHDRAWN)
    _said(ledger, resubscribed["Email"], "email_marketing", "email", ConsentStatus.GRANTED)
    _observe(ledger, config_path, org)
    with ledger.engine.begin() as conn:  # as the older release stored it
        conn.execute(update(outbox).where(outbox.c.record_id == resubscribed["Id"]).values(suppression=True))
        (row_id,) = conn.execute(
            select(outbox.c.id).where(outbox.c.record_id == resubscribed["Id"])
        ).scalars()
    monkeypatch.setattr(push_rules, "PUSH_DECISIONS_VERSION", push_rules.PUSH_DECISIONS_VERSION + 1)
    _observe(ledger, config_path, org)
    assert _waiting(ledger, resubscribed["Id"]) == [({"HasOptedOutOfEmail": False}, False)]
    with ledger.engine.connect() as conn:  # the same row, not a new one
        assert conn.execute(
            select(outbox.c.id).where(outbox.c.record_id == resubscribed["Id"])
        ).scalars().all() == [row_id]
