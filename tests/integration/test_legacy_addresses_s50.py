"""An address older versions let in (one '@', no spaces: 'a@b.example,ceo', which a mail header
reads as two recipients) is refused as a new address now, but a person the ledger already holds
under it can still be found, shown, exported, restricted and erased by it (Art. 17 must not
depend on what a later version accepts). Drives the CLI as ops would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from tests.conftest import record_args
from tests.integration.helpers import consent_value

LEGACY = "old.form@example.com,ceo"


def _held_from_before(config_path: Path) -> str:
    """A person recorded under LEGACY, as an older version would have (the ledger itself takes
    what its callers checked); returns their uid."""
    ledger = open_ledger(load_config(config_path))
    try:
        now = ledger.clock()
        ledger.record(
            Identity(email=LEGACY),
            consent_value(ConsentStatus.GRANTED, now, now, basis=LawfulBasis.CONSENT, origin=Origin.CAPTURE),
        )
        (uid,) = ledger.subject_uids_for_email(LEGACY)
        return uid
    finally:
        ledger.engine.dispose()


def test_a_legacy_address_is_refused_as_new_but_found_to_erase(cli: Any) -> None:
    uid = _held_from_before(cli.config_path)

    refused = cli(*record_args(LEGACY, "email_marketing", "granted"))
    assert refused.exit_code == 2, refused.output
    assert "malformed email address" in refused.stderr and "one address" in refused.stderr

    assert cli.json("subject", "show", LEGACY)["subject"] == uid
    assert cli.json("restrict", "--email", LEGACY, "--reason", "accuracy contested")["subject"] == uid
    erased = cli.json("erase", "--email", LEGACY, "--reason", "art17 request", "--yes")
    assert (erased["subject"], erased["subject_known"]) == (uid, True)
