"""X's phone-only lead (a person of the ledger with no address: nobody can ask for their erasure)
converted into X's contact C; X erased: C's delete goes (session 66 review of f6ce663: the
addressless person, never erasable, spared C for ever). Against the Salesforce sandbox."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import select

from consentsync.ledger.schema import crm_links, subject_identifiers
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncOptions
from tests.integration.helpers import shipped_engine
from tests.integration.test_salesforce_converted_leads import MAPPINGS

X = "xena.x@example.test"


@pytest.fixture
def sandbox() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as server:
        yield server


def test_a_person_nobody_can_erase_does_not_spare_a_survivor_for_ever(
    ledger: Ledger, config_path: Path, sandbox: Any
) -> None:
    options = SyncOptions(batch_size=50, signpost_lag_seconds=0, erasure_actions={"Contact": "delete"})

    def run(**how: Any) -> None:
        engine = shipped_engine(ledger, config_path, sandbox, "sf", "salesforce", MAPPINGS, {}, options)
        assert engine.run(**how).status == "succeeded"
        time.sleep(1.1)

    org = sandbox.org
    contact = org.create("Contact", FirstName="Xena", LastName="X", Email=X)
    lead = org.create("Lead", FirstName="Xena", LastName="X", Company="Acme", Phone="555-0100")
    run(full=True)
    org.update(lead, HasOptedOutOfEmail=True)  # a no on it, so the ledger links it
    time.sleep(1.1)
    run()
    org.convert_lead(lead, contact_id=contact)
    time.sleep(1.1)
    run()
    with ledger.engine.connect() as conn:
        people = dict(conn.execute(select(crm_links.c.object_type, crm_links.c.subject_id)).all())
        addressed = set(conn.execute(select(subject_identifiers.c.subject_id)).scalars())
    # The lead's person is another of the ledger's, with no address (the setting of the review).
    assert people["Lead"] != people["Contact"] and people["Lead"] not in addressed, (people, addressed)
    ledger.erase(X, reason="Art. 17 request")
    run()
    run()
    assert org.get(contact)["IsDeleted"], "X's own contact spared for a lead person nobody can erase"
