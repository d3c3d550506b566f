"""A record two people share holds nobody's data once everyone sharing it is erased
(session 65 review of ad00d18; docs/policy.md, Art. 17(2) erasure actions and "A record two
people's records point to"). Against the Salesforce sandbox over HTTP, on SQLite and PostgreSQL.

One Individual, a work and a home Contact pointing to it. Read on one page, the Individual is a
person of its own (known by it alone, never erased): erasing both addresses left its name, as
nobody erased held it. Read a run apart, it is the work address's person's: erasing work keeps
it (home's data may be in it), and once home is erased too it was anonymised only where no sync
ran between the two erasures (nobody examined its person again). Now an erasure has
each connector look again at the records they shared, and the action
reaches a shared record whose every sharer is erased (a sharer whose records the CRM deleted still
holds their data in it: session 66)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.integration.individuals_kit import salesforce_individuals
from tests.integration.individuals_kit import sync as _sync

WORK, HOME = "pat.work@example.org", "pat.home@example.org"
SHARED_RULE = "erasure_suppress_only_shared_record"


@pytest.fixture
def org(cli: Cli, config_path: Path) -> Iterator[Any]:
    with salesforce_individuals(config_path) as sandbox_org:
        yield sandbox_org


def _held(cli: Cli) -> set[tuple[str, str]]:
    return {
        (e["what"]["record"], e["rule"]) for e in cli.json("audit", "log") if e["action"] == "crm.push_held"
    }


def _shared(cli: Cli, org: Any, *, later: bool) -> tuple[str, str, str]:
    """The Individual and its work and home Contacts, read on one page (``later``: the home
    Contact made after a run read the work one)."""
    for email in (WORK, HOME):
        cli.ok(
            "ledger", "record", "--email", email, "--purpose", "email_marketing", "--status", "granted",
            "--source", "web_form", "--at", "2025-01-01T00:00:00Z", "--notice-version", "v1",
            "--evidence-ref", "form:1",
        )  # fmt: skip
    individual = org.create("Individual", FirstName="Pat", LastName="Moss")
    work = org.create("Contact", LastName="Moss", Email=WORK, IndividualId=individual)
    if later:
        _sync(cli, "--full")
    home = org.create("Contact", LastName="Moss", Email=HOME, IndividualId=individual)
    _sync(cli, *([] if later else ["--full"]))
    return individual, work, home


@pytest.mark.parametrize("later", [False, True])
def test_a_shared_individual_is_anonymised_once_both_sharers_are_erased(
    cli: Cli, org: Any, later: bool
) -> None:
    individual, _work, _home = _shared(cli, org, later=later)
    cli.ok("erase", "--email", WORK, "--reason", "asked", "--yes")
    _sync(cli)
    _sync(cli)  # a scheduled run between the two erasures
    assert org.get(individual)["LastName"] == "Moss", "the home address's data may be in it"
    if later:  # the work address's record: kept from the anonymise, said so
        assert (individual, SHARED_RULE) in _held(cli)

    cli.ok("erase", "--email", HOME, "--reason", "asked", "--yes")
    _sync(cli)
    assert org.get(individual)["LastName"] != "Moss", (
        "everyone sharing the Individual is erased; its name stays"
    )
    assert org.get(individual)["FirstName"] is None


def test_a_shared_individual_is_kept_while_the_other_sharer_is_not_erased_though_deleted(
    cli: Cli, org: Any
) -> None:
    """The work address erased (the Individual kept: the home Contact points to it), then the
    home Contact deleted in Salesforce, into its recycle bin: the Individual still holds the home
    address's person's data (the Contact may be restored, pointing to it), so it is not
    anonymised (session 66 review: it was, and the restored Contact pointed to a blanked
    Individual). Once home is erased too, it is."""
    individual, _work, home = _shared(cli, org, later=True)
    cli.ok("erase", "--email", WORK, "--reason", "asked", "--yes")
    _sync(cli)
    _sync(cli)
    assert org.get(individual)["LastName"] == "Moss"

    org.delete(home)
    _sync(cli)
    _sync(cli)
    assert org.get(individual)["LastName"] == "Moss", "a sharer not erased lost their data in the Individual"
    cli.ok("erase", "--email", HOME, "--reason", "asked", "--yes")
    _sync(cli)
    assert org.get(individual)["LastName"] != "Moss", (
        "everyone sharing the Individual is erased; its name stays"
    )


def test_a_shared_individual_of_its_own_is_kept_while_a_sharer_is_not_erased(cli: Cli, org: Any) -> None:
    """Read on one page (a person of its own), deleting one Contact and erasing nobody changes
    nothing: only an erasure's action anonymises."""
    individual, work, _home = _shared(cli, org, later=False)
    org.delete(work)
    _sync(cli)
    _sync(cli)
    assert org.get(individual)["LastName"] == "Moss"
    cli.ok("erase", "--email", WORK, "--reason", "asked", "--yes")
    _sync(cli)
    assert org.get(individual)["LastName"] == "Moss", "the home address's person still points to it"
