"""Z's lead merged into X's lead L, L converted into X's new contact C (C holds L's values, Z's
among them). X erased, Z not: C holds Z's data along a chain (L2 -> L -> C) and is spared, whatever
the Lead's erasure action (session 66 review of f6ce663: with Lead "delete" the converted lead L was
asked about in the same examination, the chain from C stopped at it, and C was deleted). Against
the Salesforce sandbox."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncOptions
from tests.integration.helpers import shipped_engine
from tests.integration.test_salesforce_converted_leads import MAPPINGS, _link

X, Z = "xena.x@example.test", "zeno.z@example.test"


@pytest.fixture
def sandbox() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as server:
        yield server


@pytest.mark.parametrize("lead_action", ["suppress", "delete"])
def test_a_chain_through_a_converted_lead_the_erasure_acts_on_spares_the_survivor(
    ledger: Ledger, config_path: Path, sandbox: Any, monkeypatch: pytest.MonkeyPatch, lead_action: str
) -> None:
    import consentsync_salesforce.sandbox.org as org_module

    monkeypatch.setattr(org_module, "_refuse_converted", lambda record: None)
    options = SyncOptions(
        batch_size=50, signpost_lag_seconds=0, erasure_actions={"Contact": "delete", "Lead": lead_action}
    )

    def run(**how: Any) -> None:
        engine = shipped_engine(ledger, config_path, sandbox, "sf", "salesforce", MAPPINGS, {}, options)
        assert engine.run(**how).status == "succeeded"
        time.sleep(1.1)

    org = sandbox.org
    lead = org.create("Lead", FirstName="Xena", LastName="X", Company="Acme", Email=X)
    other = org.create("Lead", FirstName="Zeno", LastName="Z", Company="Acme", Email=Z, Phone="555-0100")
    run(full=True)
    time.sleep(1.1)
    org.merge(lead, other)  # Z's lead into X's (a CRM user judged them one human)
    time.sleep(1.1)
    run()
    contact = org.convert_lead(lead)["contactId"]
    time.sleep(1.1)
    run()
    assert _link(ledger, "Contact", contact).subject_id == _link(ledger, "Lead", lead).subject_id
    ledger.erase(X, reason="Art. 17 request")
    run()
    run()
    assert not org.get(contact)["IsDeleted"], "C deleted though Z (not erased) merged into it along a chain"
