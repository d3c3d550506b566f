"""A record two people share is spared an erasure's anonymise only while the other person's data
may be in it (docs/policy.md, Art. 17(2) erasure actions): once every other person whose records
point to it is erased, the record is the erased people's alone and the action reaches it (session
64 review of 6fa3626: one Individual shared by two Contacts kept its name after both were erased).
Through the real sync engine against the Salesforce sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.integration.individuals_kit import salesforce_individuals
from tests.integration.individuals_kit import sync as _sync

WORK, HOME = "pat.work@example.org", "pat.home@example.org"


@pytest.fixture
def org(cli: Cli, config_path: Path) -> Iterator[Any]:
    with salesforce_individuals(config_path) as sandbox_org:
        yield sandbox_org


def _held(cli: Cli) -> list[tuple[str, str]]:
    return [
        (e["what"]["record"], e["rule"]) for e in cli.json("audit", "log") if e["action"] == "crm.push_held"
    ]


def test_a_shared_individual_is_anonymised_once_everyone_sharing_it_is_erased(cli: Cli, org: Any) -> None:
    for email in (WORK, HOME):
        cli.ok(
            "ledger", "record", "--email", email, "--purpose", "email_marketing", "--status", "granted",
            "--source", "web_form", "--at", "2025-01-01T00:00:00Z", "--notice-version", "v1",
            "--evidence-ref", "form:1",
        )  # fmt: skip
    individual = org.create("Individual", FirstName="Pat", LastName="Moss")
    org.create("Contact", LastName="Moss", Email=WORK, IndividualId=individual)
    _sync(cli, "--full")
    org.create("Contact", LastName="Moss", Email=HOME, IndividualId=individual)
    _sync(cli)

    cli.ok("erase", "--email", WORK, "--reason", "asked", "--yes")
    _sync(cli)
    # The home person's data may be in it: kept from the anonymise, said so.
    assert org.get(individual)["LastName"] == "Moss"
    assert (individual, "erasure_suppress_only_shared_record") in _held(cli)

    cli.ok("erase", "--email", HOME, "--reason", "asked", "--yes")
    _sync(cli)
    _sync(cli)
    assert org.get(individual)["LastName"] != "Moss", (
        "everyone sharing the Individual is erased; its name stays"
    )
