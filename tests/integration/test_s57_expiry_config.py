"""The expiry sweep every sync run now makes must never fail a run: a purpose taken out of the
configuration keeps its stored states (its consents past their end are no longer the ledger's to
expire: recorded, the expiry would be refused as an unknown purpose, and every run of every
connector would fail on it), and an erased person's consents expire like anyone's. On SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml
from sqlalchemy import select

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import consent_events
from consentsync.ledger.service import EXPIRY_SOURCE, RecordRequest
from tests.conftest import Cli, Clock, migrated_ledger, record_args
from tests.integration.helpers import consent_value

TRIAL = {
    "key": "trial_offers",
    "name": "Trial offers",
    "direct_marketing": True,
    "default_basis": "consent",
    "validity_days": 30,
    "objection_handling": "auto_uphold",
    "channels": ["email"],
}


def _purposes(config_path: Path, *, trial: bool) -> None:
    data = yaml.safe_load(config_path.read_text())
    data["purposes"] = [p for p in data["purposes"] if p["key"] != TRIAL["key"]] + ([TRIAL] if trial else [])
    config_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def test_a_purpose_taken_out_of_the_config_is_passed_and_an_erased_persons_consent_expires(
    config_path: Path, clock: Clock
) -> None:
    _purposes(config_path, trial=True)
    with migrated_ledger(config_path, clock) as ledger:
        ledger.record_many(
            [
                RecordRequest(
                    Identity(email=f"{who}@example.org"),
                    consent_value(
                        ConsentStatus.GRANTED, clock.now - timedelta(days=days), clock.now, purpose=purpose
                    ),
                )
                for who in ("ada", "bob")
                for purpose, days in (("email_marketing", 800), ("trial_offers", 40))
            ]
        )
        ledger.erase("bob@example.org", reason="asked by the person")
    _purposes(config_path, trial=False)  # the DPO drops the purpose
    clock.advance(minutes=1)
    with migrated_ledger(config_path, clock) as ledger:
        # One a transaction: the purpose passed over between two the sweep records.
        assert ledger.expire_due(batch_size=1).recorded == 2
        with ledger.engine.connect() as conn:
            expired = conn.execute(
                select(consent_events.c.purpose).where(consent_events.c.source == EXPIRY_SOURCE)
            ).scalars()
            assert sorted(expired) == ["email_marketing", "email_marketing"]  # ada's and erased bob's
        assert ledger.expire_due().recorded == 0


def test_ledger_expire_passes_a_purpose_taken_out_of_the_config(cli: Cli) -> None:
    """`consentsync ledger expire` sweeps as the runs do: it no longer fails, whole, on the
    consents of a purpose the DPO dropped."""
    _purposes(cli.config_path, trial=True)
    cli.ok(
        *record_args(
            "ada@example.org",
            "email_marketing",
            "granted",
            "--at",
            "2020-01-01T00:00:00Z",
            "--evidence-ref",
            "f",
        )
    )
    cli.ok(
        *record_args(
            "ada@example.org",
            "trial_offers",
            "granted",
            "--at",
            "2020-01-01T00:00:00Z",
            "--evidence-ref",
            "f",
        )
    )
    _purposes(cli.config_path, trial=False)
    assert cli.json("ledger", "expire") == {"expired": 1}
    assert cli.json("ledger", "expire") == {"expired": 0}
