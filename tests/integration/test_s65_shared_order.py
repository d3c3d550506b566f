"""The records one Individual ties are read the same whatever was read first (session 65 review
of 6fa3626; docs/policy.md, "A person known only through records without an address" and "A
record two people's records point to"). Against the Salesforce sandbox over HTTP, on SQLite and
PostgreSQL; each scenario is run in both orders, on two sandboxes and one ledger, and their ends
compared.

- A Contact without an address beside the work Contact, both pointing to the Individual: read
  Contacts first, the blank Contact stayed a person of its own, the Individual went to the work
  address's person and the blank Contact never got its Don't Solicit. Now it is the work
  address's person's, as when the Individual is read first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, running_harness
from tests.integration.individuals_kit import individual_connector, sync, write_connectors

ORDERS = ("contacts_first", "individual_first")


@pytest.fixture
def orgs(cli: Cli, config_path: Path) -> Iterator[dict[str, Any]]:
    with running_harness("salesforce") as first, running_harness("salesforce") as second:
        harnesses = dict(zip(ORDERS, (first, second), strict=True))
        write_connectors(
            config_path,
            [individual_connector(f"sf_{order}", harness) for order, harness in harnesses.items()],
        )
        yield {order: harness.sandbox.org for order, harness in harnesses.items()}


def _sync(cli: Cli, order: str, *more: str) -> None:
    sync(cli, *more, connector=f"sf_{order}")


def _records(cli: Cli, email: str) -> set[str]:
    return {row["record_id"] for row in cli.json("subject", "show", email)["crm_records"]}


def _marketing(cli: Cli, email: str) -> str:
    (state,) = [
        p["status"]
        for p in cli.json("subject", "show", email)["purposes"]
        if (p["purpose"], p["channel"]) == ("email_marketing", "email")
    ]
    return str(state)


def _read(cli: Cli, org: Any, order: str, individual: str, create: Any) -> Any:
    """The Individual read first (a run of its own) or with the Contacts ``create`` makes."""
    if order == "individual_first":
        _sync(cli, order, "--full")
    made = create()
    _sync(cli, order, *(["--full"] if order == "contacts_first" else []))
    return made


def _blank(cli: Cli, org: Any, order: str) -> dict[str, Any]:
    work = f"jo.{order}@example.org"
    cli.ok(
        "ledger", "record", "--email", work, "--purpose", "email_marketing", "--status", "granted",
        "--source", "web_form", "--at", "2025-01-01T00:00:00Z", "--notice-version", "v1",
        "--evidence-ref", "form:1",
    )  # fmt: skip
    individual = org.create("Individual", FirstName="Jo", LastName="Day")
    work_contact, blank = _read(
        cli,
        org,
        order,
        individual,
        lambda: (
            org.create("Contact", LastName="Day", Email=work, IndividualId=individual),
            org.create("Contact", LastName="Day", Email=None, IndividualId=individual),
        ),
    )
    records = _records(cli, work)
    org.update(individual, HasOptedOutSolicit=True)
    _sync(cli, order)
    _sync(cli, order)
    return {
        "work_records": records == {work_contact, blank, individual},
        "work": _marketing(cli, work),
        "contacts": [org.get(r)["HasOptedOutOfEmail"] for r in (work_contact, blank)],
    }


def test_a_contact_without_an_address_takes_the_individuals_no_in_either_order(
    cli: Cli, orgs: dict[str, Any]
) -> None:
    ends = {order: _blank(cli, org, order) for order, org in orgs.items()}
    assert ends["contacts_first"] == ends["individual_first"], ends
    assert ends["contacts_first"] == {"work_records": True, "work": "withdrawn", "contacts": [True, True]}
