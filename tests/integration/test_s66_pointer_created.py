"""A record first linked through a pointer (a Contact's IndividualId) keeps the CRM's creation time
once it is read itself (session 66 review of 6bdbbc6: the link was made without it, and the
record's own read found the link made, so crm_links.record_created_at stayed NULL). The erasure
judged such a record by its link's time: an Individual the CRM held before the erasure, first
linked by the sync after it, was kept as "made after the erasure", the erased person's name in it.
Against the Salesforce sandbox over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from consentsync.config import load_config
from consentsync.demo_crms import _past_this_second
from consentsync.ledger.schema import crm_links
from tests.conftest import Cli
from tests.integration.individuals_kit import salesforce_individuals
from tests.integration.individuals_kit import sync as _sync

OLD, ADDR = "pat.lead@example.org", "pat.moss@example.org"


@pytest.fixture
def org(cli: Cli, config_path: Path) -> Iterator[Any]:
    with salesforce_individuals(config_path) as sandbox_org:
        yield sandbox_org


def _links(config_path: Path) -> dict[str, tuple[Any, Any]]:
    from consentsync.app import open_ledger

    ledger = open_ledger(load_config(config_path))
    engine = ledger.engine
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                crm_links.c.record_id,
                crm_links.c.record_created_at,
                crm_links.c.linked_at,
            )
        ).all()
    engine.dispose()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_an_individual_linked_through_a_pointer_keeps_its_creation_time(
    cli: Cli, org: Any, config_path: Path
) -> None:
    individual = org.create("Individual", FirstName="Pat", LastName="Moss")
    contact = org.create("Contact", LastName="Moss", Email=ADDR, IndividualId=individual)
    _sync(cli, "--full")
    links = _links(config_path)
    print("links:", links)
    assert links[contact][0] is not None
    assert links[individual][0] is not None, "the Individual's CRM creation stamp was never kept"


def test_individual_held_before_the_erasure_first_linked_after_it_is_anonymised(
    cli: Cli, org: Any, config_path: Path
) -> None:
    # The ledger knows the person by a first Contact; a CRM user then adds their Individual and
    # points the Contact to it; the person asks for erasure before the next sync.
    contact = org.create("Contact", FirstName="Pat", LastName="Moss", Email=ADDR)
    _sync(cli, "--full")
    _past_this_second()
    individual = org.create("Individual", FirstName="Pat", LastName="Moss")
    org.update(contact, IndividualId=individual)
    _past_this_second()
    cli.ok("erase", "--email", ADDR, "--reason", "asked", "--yes")
    _sync(cli)
    _sync(cli)
    held = {
        (e["what"]["record"], e["rule"]) for e in cli.json("audit", "log") if e["action"] == "crm.push_held"
    }
    print("links:", _links(config_path), "held:", held)
    print("contact:", org.get(contact)["LastName"], "individual:", org.get(individual)["LastName"])
    assert org.get(individual)["LastName"] != "Moss", (
        "the Individual the CRM held before the erasure kept the erased person's name"
    )
