"""A person who came back after their address's erasure (a CRM user entered them anew: the ledger
holds the record under the erased person, by the address's keyed hash) merged into X's contact; X
erased. Their data, made after their erasure, is on X's contact: it is spared, as their own record
is (erasure_suppress_only_created_after), until the address is erased again (session 66 review of
b45d545: X's contact was deleted, their data with it). Against the Salesforce sandbox."""

from __future__ import annotations

from pathlib import Path

import yaml
from consentsync_salesforce.sandbox.harness import SalesforceHarness
from sqlalchemy import select

from consentsync.ledger.schema import crm_links, subject_identifiers, subjects
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from tests.integration.test_s66_hubspot_merge_erasure import _erase, _run
from tests.integration.test_s66_merge_chain_erasure import harness as harness  # the fixture

X, Z = "xena.x@example.com", "zeno.z@example.com"


def test_came_back_person_merged_into_erased_persons_contact(
    harness: SalesforceHarness, tmp_path: Path
) -> None:
    org = harness.sandbox.org
    harness.create_person(Z)
    config = write_sync_config(harness, tmp_path)
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["erasure"] = {"Contact": "delete"}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    _run(config)
    _erase(config, Z)
    _run(config)
    z2 = harness.create_person(Z)  # Z comes back: a CRM user enters them anew
    x = harness.create_person(X)
    _run(config)
    engine = open_sync_engine(config)
    with engine.ledger.engine.connect() as conn:
        pz2 = conn.execute(select(crm_links.c.subject_id).where(crm_links.c.record_id == z2)).scalar_one()
        # The record is the erased person's, who holds no address any more (the setting).
        assert not conn.execute(
            select(subject_identifiers).where(subject_identifiers.c.subject_id == pz2)
        ).all()
        assert conn.execute(select(subjects.c.erased_at).where(subjects.c.id == pz2)).scalar_one() is not None
    engine.ledger.engine.dispose()
    org.merge(x, z2)  # a CRM user judged Z2 a duplicate of X: X survives, holding Z2's data
    _run(config)
    _erase(config, X)
    _run(config)
    _run(config)
    survivor = org.get(x)
    assert survivor is not None and not survivor.get("IsDeleted"), "X deleted, came-back Z's data with it"
