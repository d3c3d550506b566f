"""One Salesforce Individual shared by two Contacts with different addresses (one human's work
and home address: the normal Salesforce setup) is read the same whatever the order (session 64
regulatory black-box finding; docs/policy.md, "A person known only through records without an
address"). Against the Salesforce sandbox over HTTP, on SQLite and PostgreSQL.

Each Contact is its address's holder's; the two holders are never pooled; the Individual is a
person of its own, whose nos reach both. Before: read Contacts first, the Individual became the
work address's (its opt-out never reached the home Contact, and the ledger kept the home address
granted); read the Individual first, both Contacts stayed with an address-less person, so the home
address's own withdrawal never reached its Contact, the work address's export called its own
Contact another person's, and its erasure left that Contact showing the address and the name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consentsync.export import ANOTHER_PERSONS_RECORD, OWN_RECORD
from tests.conftest import Cli, running_harness
from tests.integration.individuals_kit import individual_connector, sync, write_connectors

# The rule the audit names for a record given the erasure's suppression only: others' records
# point to it.
SHARED_RULE = "erasure_suppress_only_shared_record"

# Order 1: everything exists at the first (full) read, Contacts read before the Individual.
# Order 2: the Individual is read first (a run of its own), then the two Contacts.
ORDERS = {"contacts_first": "kim", "individual_first": "lee"}


@pytest.fixture
def orgs(cli: Cli, config_path: Path) -> Iterator[dict[str, Any]]:
    """Two Salesforce sandboxes, one per order (``sf_contacts_first``, ``sf_individual_first``),
    each read by a connector with the Contact and the Individual mappings, Contacts and
    Individuals anonymised by an erasure; one ledger."""
    with (
        running_harness("salesforce") as first,
        running_harness("salesforce") as second,
    ):
        harnesses = {"contacts_first": first, "individual_first": second}
        write_connectors(
            config_path,
            [individual_connector(f"sf_{order}", harness) for order, harness in harnesses.items()],
        )
        yield {order: harness.sandbox.org for order, harness in harnesses.items()}


def _sync(cli: Cli, order: str, *more: str) -> None:
    sync(cli, *more, connector=f"sf_{order}")


def _state(cli: Cli, email: str) -> list[tuple[str, str, str, str, bool]]:
    return sorted(
        (p["purpose"], p["channel"], p["status"], p["rule"], p["suppressed"])
        for p in cli.json("subject", "show", email)["purposes"]
    )


def _records(cli: Cli, email: str) -> set[str]:
    return {row["record_id"] for row in cli.json("subject", "show", email)["crm_records"]}


def _scenario(cli: Cli, org: Any, order: str, tmp_path: Path, *, later: bool = False) -> dict[str, Any]:
    """Runs the story in one order; returns what the ledger and the CRM hold at its end, with
    the addresses named by their role (work, home) so that the two orders compare. ``later``:
    the home Contact is made after a run read the work Contact (the Individual is then the work
    address's person's, and shared with the home address's)."""
    name = ORDERS[order] + ("2" if later else "")
    work, home = f"{name}.work@example.org", f"{name}.home@example.org"
    for email in (work, home):
        cli.ok(
            "ledger", "record", "--email", email, "--purpose", "email_marketing", "--status", "granted",
            "--source", "web_form", "--at", "2025-01-01T00:00:00Z", "--notice-version", "v1",
            "--evidence-ref", "form:1",
        )  # fmt: skip
    individual = org.create("Individual", FirstName="Kim", LastName="Lee")
    if order == "individual_first":
        _sync(cli, order, "--full")
    work_contact = org.create("Contact", LastName="Lee", Email=work, IndividualId=individual)
    if later:
        _sync(cli, order, *(["--full"] if order == "contacts_first" else []))
    home_contact = org.create("Contact", LastName="Lee", Email=home, IndividualId=individual)
    _sync(cli, order, *(["--full"] if order == "contacts_first" and not later else []))

    # Each Contact is its address's holder's; the two are never pooled, nor the Individual.
    assert _records(cli, work) == ({work_contact, individual} if later else {work_contact})
    assert _records(cli, home) == {home_contact}

    # The home address's own no reaches its own Contact (and only it).
    cli.ok(
        "ledger", "record", "--email", home, "--purpose", "email_marketing", "--status", "withdrawn",
        "--source", "web_form", "--at", "2026-06-01T00:00:00Z",
    )  # fmt: skip
    _sync(cli, order)
    assert org.get(home_contact)["HasOptedOutOfEmail"] is True, "the home address's no missed its Contact"
    assert org.get(work_contact)["HasOptedOutOfEmail"] is False

    # The Individual's Don't Solicit reaches both holders and both Contacts.
    org.update(individual, HasOptedOutSolicit=True)
    _sync(cli, order)
    _sync(cli, order)
    for email in (work, home):
        marketing = [s for s in _state(cli, email) if s[:2] == ("email_marketing", "email")]
        assert [s[2] for s in marketing] == ["withdrawn"], (email, marketing)
    assert org.get(work_contact)["HasOptedOutOfEmail"] is True, "the Individual's no missed the work Contact"

    # The work address's export calls its Contact its own.
    out = tmp_path / f"{order}.json"
    cli.ok("subject", "export", work, "--format", "json", "-o", str(out))
    exported = json.loads(out.read_text())
    holders = {row["record_id"]: row["record_of"] for row in exported["crm_records"]}
    assert holders.get(work_contact) == OWN_RECORD, holders
    assert ANOTHER_PERSONS_RECORD not in holders.values(), holders

    states = {"work": _state(cli, work), "home": _state(cli, home)}

    # The work address erased: its Contact is anonymised, the home Contact and the Individual
    # (whose other holder is not erased) are not.
    cli.ok("erase", "--email", work, "--reason", "asked by the person", "--yes")
    _sync(cli, order)
    held = {
        (e["what"]["record"], e["rule"])
        for e in cli.json("audit", "log")
        if e["action"] == "crm.push_held" and e["what"]["connector"] == f"sf_{order}"
    }
    # The work address's Individual, where shared: suppressed only, and the audit says why.
    assert held == ({(individual, SHARED_RULE)} if later else set())
    if later:
        states["home_after_erasure"] = _state(cli, home)
    roles = {work: "work", home: "home", None: None}

    def shown(record_id: str, *fields: str) -> tuple[Any, ...]:
        values = org.get(record_id)
        return tuple(roles.get(values[f], values[f]) if f == "Email" else values[f] for f in fields)

    crm = {
        "work_contact": shown(work_contact, "Email", "LastName", "HasOptedOutOfEmail", "DoNotCall"),
        "home_contact": shown(home_contact, "Email", "LastName", "HasOptedOutOfEmail", "DoNotCall"),
        "individual": shown(individual, "LastName", "HasOptedOutSolicit", "HasOptedOutProfiling"),
    }
    assert crm["work_contact"][:2] == (None, "Erased"), "the erasure left the work Contact as it was"
    assert crm["home_contact"][:2] == ("home", "Lee")
    assert crm["individual"][0] == "Lee"
    return {"states": states, "crm": crm}


def test_a_shared_individual_is_read_the_same_in_either_order(
    cli: Cli, orgs: dict[str, Any], tmp_path: Path
) -> None:
    ends = {order: _scenario(cli, org, order, tmp_path) for order, org in orgs.items()}
    assert ends["contacts_first"] == ends["individual_first"]


def test_a_contact_added_later_shares_the_individual_in_either_order(
    cli: Cli, orgs: dict[str, Any], tmp_path: Path
) -> None:
    """The home Contact made after the work Contact was read: the Individual is the work
    address's person's (absorbed, or linked with the Contact), the home Contact is the home
    address's, and the Individual's nos reach it; erasing the work address anonymises the work
    Contact, not the Individual the home Contact points to (suppressed only, said in the audit),
    and its erasure reaches the home address as a merge carries one."""
    ends = {order: _scenario(cli, org, order, tmp_path, later=True) for order, org in orgs.items()}
    assert ends["contacts_first"] == ends["individual_first"]
