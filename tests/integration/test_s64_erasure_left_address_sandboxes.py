"""An erasure's delete or anonymise reaches only the records that speak for the person (session
64 regulatory black-box finding; docs/policy.md, Art. 17(2) erasure actions). Against the
Salesforce and HubSpot sandboxes over HTTP, on SQLite and PostgreSQL:

Alex's Salesforce Contact moves from old.box@ to alex.ames@ (Alex left old.box@). The recycled
mailbox's new owner makes a HubSpot contact with old.box@, linked to Alex by the address (an
address has one holder). Alex is erased, HubSpot's contacts configured to be deleted: before, the
stranger's contact was deleted (another person's data destroyed). Now it gets the erasure's
suppression only (old.box@ is on the suppression list: nothing may be sent to it), the outbox and
the audit say why, and Alex's own records still get the configured action."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from consentsync import audit
from consentsync.ledger.schema import outbox
from tests.integration.test_s64_left_address_sandboxes import (
    MARKETING,
    NEW,
    OLD,
    _configure,
    _ledger,
    _sync,
)
from tests.integration.test_s64_left_address_sandboxes import crms as crms

# The rule the outbox and the audit name for a record given the erasure's suppression only.
ADDRESS_LEFT_RULE = "erasure_suppress_only_address_left"


def _erasing(config_path: Path, crms: dict[str, Any], action: str) -> None:
    """Both connectors as ``_configure`` makes them, HubSpot's contacts and Salesforce's Contacts
    given the erasure action ``action``."""
    _configure(config_path, crms)
    data = yaml.safe_load(config_path.read_text())
    for connector in data["connectors"]:
        connector["erasure"] = {"contacts": action} if connector["name"] == "hs" else {"Contact": action}
    config_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


@pytest.fixture(params=["delete", "anonymise"])
def action(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def moved(crms: dict[str, Any], config_path: Path, action: str) -> Iterator[tuple[Any, str]]:
    """Alex's Contact synced showing OLD, then NEW; the erasure action ``action`` configured."""
    _erasing(config_path, crms, action)
    ledger = _ledger(config_path)
    org = crms["sf"].sandbox.org
    alex = crms["sf"].create_named("Ames", OLD, FirstName="Alex")
    _sync(config_path, ledger, "sf", full=True)
    _sync(config_path, ledger, "hs", full=True)
    org.update(alex, Email=NEW)
    _sync(config_path, ledger, "sf")
    try:
        yield ledger, alex
    finally:
        ledger.engine.dispose()


def test_the_erasure_does_not_destroy_the_recycled_mailboxs_contact(
    moved: tuple[Any, str],
    crms: dict[str, Any],
    config_path: Path,
    action: str,
) -> None:
    ledger, alex = moved
    portal, org = crms["hs"].sandbox.portal, crms["sf"].sandbox.org
    stranger = portal.create({"email": OLD, "lastname": "Newowner"}, via="form")
    portal.set_status(OLD, MARKETING, "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", source="Form")
    _sync(config_path, ledger, "hs")

    ledger.erase(NEW, reason="asked by the person", actor="ops")
    _sync(config_path, ledger, "hs")
    _sync(config_path, ledger, "sf")

    # The stranger's contact is neither deleted nor anonymised, only suppressed.
    assert portal.archived_one(stranger) is None, "the erasure deleted another person's contact"
    kept = portal.get(stranger)
    assert kept is not None and (kept["email"], kept["lastname"]) == (OLD, "Newowner")
    assert kept[f"hs_email_optout_{MARKETING}"] == "true", "the erased address was not suppressed"
    # Alex's own Contact gets the configured action.
    if action == "delete":
        assert org.get(alex) is None or org.get(alex).get("IsDeleted") is True
    else:
        assert org.get(alex)["LastName"] == "Erased" and org.get(alex)["Email"] is None

    # Why, on the record: the audit's held entry and the suppression's outbox row name the rule.
    with ledger.engine.connect() as conn:
        held = [e for e in audit.entries(conn, action="crm.push_held") if e["what"]["record"] == stranger]
        rows = conn.execute(
            select(outbox.c.rule, outbox.c.action, outbox.c.status).where(outbox.c.record_id == stranger)
        ).all()
    assert held and {e["rule"] for e in held} == {ADDRESS_LEFT_RULE}, held
    assert all(row.action == "update" for row in rows), rows
    assert (ADDRESS_LEFT_RULE, "update", "done") in {tuple(row) for row in rows}, rows
