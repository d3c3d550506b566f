"""An erasure reaches the Salesforce Individual that the erased person's Contact points to, whatever
was read first (session 67 black-box finding; docs/policy.md, "A person known only through records
without an address"). Against the Salesforce sandbox over HTTP, on SQLite and PostgreSQL.

The person is erased; their Contact (made later, showing the erased address) points to an
Individual whose consent record opts in. Read in one run, Contact first, the Individual is the
erased person's: suppressed (Don't Solicit ticked), anonymised where the CRM held it at the
erasure, its consent record deleted. Read before the Contact (a run before, before or after the
erasure; or first in the run), the Individual was a person of its own, never absorbed into an
erased person: it stayed opted in, its person granted and unsuppressed, untouched by
``sync --full``. Now a person known by such records alone whose sharers are all erased takes on
their erasure (``SyncEngine._tell_the_erasures``): every order ends as the one-run reading does,
also for an Individual the Contacts of two erased addresses point to. An Individual a person not
erased shares stays theirs: the erasure does not reach it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.demo_crms import _past_this_second
from consentsync.ledger.schema import consent_states, crm_links, subjects
from tests.conftest import Cli, running_harness
from tests.integration.individuals_kit import MAPPINGS, individual_connector, sync, write_connectors

EMAIL_MARKETING = "0ZW8d00007CB5wrGAD"  # the mapping's id of the sandbox's first DataUsePurpose

# How the Contact and the Individual are read, the erasure made before the Contact is:
# - one_run_contact_first: both in one run, the Contact first (the mappings' order): the reference;
# - one_run_individual_first: both in one run, the Individual's object read first;
# - individual_read_before_erasure: the Individual read a run before the erasure and the Contact;
# - individual_read_after_erasure: the Individual read a run after the erasure, before the Contact.
REFERENCE = "one_run_contact_first"
ORDERS = (
    REFERENCE,
    "one_run_individual_first",
    "individual_read_before_erasure",
    "individual_read_after_erasure",
)


@contextmanager
def _sandbox(config_path: Path, name: str, *, individual_first: bool = False) -> Iterator[Any]:
    """A fresh sandbox read as connector ``name``: Contacts and Individuals anonymised and consent
    records deleted by an erasure (``individual_first``: the Individual's object read first)."""
    with running_harness("salesforce") as harness:
        connector = individual_connector(name, harness)
        mappings = connector["mappings"]
        if individual_first:
            mappings.reverse()
        mappings.append(str(MAPPINGS / "contact_point_type_consent.yaml"))
        connector["erasure"]["ContactPointTypeConsent"] = "delete"
        write_connectors(config_path, [connector])
        org = harness.sandbox.org
        purpose = org.create("DataUsePurpose", Name="Email Marketing", CanDataSubjectOptOut=True)
        assert purpose == EMAIL_MARKETING, purpose
        yield org


def _known(cli: Cli, email: str) -> None:
    cli.ok(
        "ledger", "record", "--email", email, "--purpose", "email_marketing", "--status", "granted",
        "--source", "web_form", "--at", "2025-01-01T00:00:00Z", "--notice-version", "v1",
        "--evidence-ref", "form:1",
    )  # fmt: skip


def _erase(cli: Cli, email: str) -> None:
    _past_this_second()  # the CRM stamps creations to the second
    cli.ok("erase", "--email", email, "--reason", "asked by mail", "--yes")
    _past_this_second()


def _individual(org: Any) -> tuple[str, str]:
    """An Individual with an email-marketing consent record opting in (Salesforce's consent
    management: the usual setup)."""
    individual = org.create("Individual", FirstName="Kim", LastName="Lee", HasOptedOutSolicit=False)
    now = datetime.now(UTC)
    consent = org.create(
        "ContactPointTypeConsent",
        Name="em",
        PartyId=individual,
        ContactPointType="Email",
        CaptureContactPointType="Email",
        DataUsePurposeId=EMAIL_MARKETING,
        PrivacyConsentStatus="OptIn",
        CaptureDate=now - timedelta(minutes=1),
        CaptureSource="Web",
        EffectiveFrom=now - timedelta(minutes=1),
    )
    return individual, consent


def _marketing_suppressed(config_path: Path, connector: str, record_id: str) -> list[tuple[str, str, bool]]:
    """Whether the ledger suppresses email marketing for the person of the record (each fresh
    sandbox gives its first records the same ids: by connector too)."""
    ledger = open_ledger(load_config(config_path))
    try:
        with ledger.engine.connect() as conn:
            rows = conn.execute(
                select(consent_states.c.purpose, consent_states.c.channel, consent_states.c.suppressed)
                .join(crm_links, crm_links.c.subject_id == consent_states.c.subject_id)
                .where(
                    crm_links.c.connector == connector,
                    crm_links.c.record_id == record_id,
                    consent_states.c.purpose == "email_marketing",
                )
            ).all()
    finally:
        ledger.engine.dispose()
    return [(purpose, channel, bool(suppressed)) for purpose, channel, suppressed in rows]


def _told_of_the_erasure(cli: Cli, config_path: Path, connector: str, record_id: str) -> bool:
    """Whether the trail of the record's person records the erasure carried to them."""
    ledger = open_ledger(load_config(config_path))
    try:
        with ledger.engine.connect() as conn:
            uid = conn.execute(
                select(subjects.c.uid)
                .join(crm_links, crm_links.c.subject_id == subjects.c.id)
                .where(crm_links.c.connector == connector, crm_links.c.record_id == record_id)
            ).scalar_one()
    finally:
        ledger.engine.dispose()
    return any(
        e["subject"] == uid and e["source"] == "erasure"
        for e in cli.json("audit", "log", "--action", "consent.recorded")
    )


def _story(cli: Cli, config_path: Path, order: str, *, held_then: bool) -> tuple[dict[str, Any], bool]:
    """The erased person's Contact and Individual read in ``order``; ``held_then``: the Individual
    (and its consent record) made before the erasure, else after it. Returns what the CRM and the
    ledger hold at the end, comparable across orders, and whether the Individual's person's trail
    records the erasure carried to them."""
    name = f"sf_{order}_{'held' if held_then else 'new'}"
    email = f"{name.replace('_', '.')}@example.org"
    with _sandbox(config_path, name, individual_first=order == "one_run_individual_first") as org:
        _known(cli, email)
        runs_apart = order.startswith("individual_read")
        if held_then:
            individual, consent = _individual(org)
            if order == "individual_read_before_erasure":
                sync(cli, "--full", connector=name)
        _erase(cli, email)
        if not held_then:
            individual, consent = _individual(org)
        if runs_apart:
            sync(cli, *([] if order == "individual_read_before_erasure" else ["--full"]), connector=name)
        contact = org.create("Contact", LastName="Lee", Email=email, IndividualId=individual)
        sync(cli, *([] if runs_apart else ["--full"]), connector=name)
        sync(cli, connector=name)

        def shown(record_id: str, *fields: str) -> tuple[Any, ...] | None:
            values = org.get(record_id)
            if values is None or values.get("IsDeleted"):
                return None
            return tuple(values[f] for f in fields)

        def end() -> dict[str, Any]:
            return {
                "individual": shown(individual, "FirstName", "LastName", "HasOptedOutSolicit"),
                "consent": shown(consent, "PrivacyConsentStatus"),
                "contact": shown(contact, "LastName", "HasOptedOutOfEmail"),
                "individual_state": _marketing_suppressed(config_path, name, individual),
            }

        reached = end()
        sync(cli, "--full", connector=name)
        assert end() == reached, (order, "a full re-read changed what the runs left")
        # Each write to the Individual is audited (crm.pushed, what it wrote).
        reached["individual_writes"] = [
            e["new"]
            for e in cli.json("audit", "log", "--action", "crm.pushed")
            if (e["what"]["connector"], e["what"]["record"]) == (name, individual)
        ]
        told = _told_of_the_erasure(cli, config_path, name, individual)
        return reached, told


@pytest.mark.parametrize("held_then", [True, False], ids=["individual_made_before", "individual_made_after"])
def test_the_erasure_reaches_the_individual_whatever_was_read_first(
    cli: Cli, config_path: Path, held_then: bool
) -> None:
    orders = [o for o in ORDERS if held_then or o != "individual_read_before_erasure"]
    stories = {order: _story(cli, config_path, order, held_then=held_then) for order in orders}
    ends = {order: end for order, (end, _told) in stories.items()}
    reference = ends[REFERENCE]
    # The one-run reading: the Individual suppressed, anonymised and its consent record deleted
    # where the CRM held them at the erasure; the Contact (made after it) suppressed only.
    assert reference["contact"] == ("Lee", True)
    assert reference["individual_state"] == [("email_marketing", "email", True)]
    if held_then:
        assert reference["individual"] == (None, "Erased", True) and reference["consent"] is None
    else:
        assert reference["individual"] == ("Kim", "Lee", True) and reference["consent"] == ("OptIn",)
    for order, end in ends.items():
        assert end == reference, (order, end, reference)
    # Read a run apart (or the Individual first), the Individual's person is told of the erasure:
    # its trail names it (consent.recorded, source "erasure").
    assert {order: told for order, (_end, told) in stories.items()} == {
        order: order != REFERENCE for order in orders
    }


# -- an Individual a person not erased shares stays theirs ----------------------------------------


def _other_shares_first(cli: Cli, org: Any, name: str, individual: str, erased: str, other: str) -> None:
    """The other person's Contact read with the Individual, a run before the erased person's."""
    org.create("Contact", LastName="Lee", Email=other, IndividualId=individual)
    sync(cli, "--full", connector=name)
    org.create("Contact", LastName="Lee", Email=erased, IndividualId=individual)
    sync(cli, connector=name)


def _both_on_one_page(cli: Cli, org: Any, name: str, individual: str, erased: str, other: str) -> None:
    """The Individual read alone first, then both Contacts on one page."""
    sync(cli, "--full", connector=name)
    org.create("Contact", LastName="Lee", Email=other, IndividualId=individual)
    org.create("Contact", LastName="Lee", Email=erased, IndividualId=individual)
    sync(cli, connector=name)


def _two_others_then_erased(cli: Cli, org: Any, name: str, individual: str, erased: str, other: str) -> None:
    """The Individual read alone, then two people not erased on one page (it stays a person of
    its own, shared), then the erased person's Contact."""
    sync(cli, "--full", connector=name)
    third = name.replace("_", ".") + ".third@example.org"
    _known(cli, third)
    org.create("Contact", LastName="Lee", Email=other, IndividualId=individual)
    org.create("Contact", LastName="Lee", Email=third, IndividualId=individual)
    sync(cli, connector=name)
    org.create("Contact", LastName="Lee", Email=erased, IndividualId=individual)
    sync(cli, connector=name)


SHARED_STORIES: dict[str, Callable[..., None]] = {
    "other_shares_first": _other_shares_first,
    "both_on_one_page": _both_on_one_page,
    "two_others_then_erased": _two_others_then_erased,
}


@pytest.mark.parametrize("story", sorted(SHARED_STORIES))
def test_an_individual_shared_with_a_person_not_erased_is_not_told_the_erasure(
    cli: Cli, config_path: Path, story: str
) -> None:
    name = f"sf_{story}"
    erased, other = (f"{name.replace('_', '.')}.{who}@example.org" for who in ("erased", "other"))
    with _sandbox(config_path, name) as org:
        _known(cli, erased)
        _known(cli, other)
        individual = org.create("Individual", FirstName="Kim", LastName="Lee", HasOptedOutSolicit=False)
        _erase(cli, erased)
        SHARED_STORIES[story](cli, org, name, individual, erased, other)
        sync(cli, connector=name)
        values = org.get(individual)
        assert (values["LastName"], values["HasOptedOutSolicit"]) == ("Lee", False), (
            "the erasure reached an Individual a person not erased shares"
        )
        (state,) = [
            p for p in cli.json("subject", "show", other)["purposes"]
            if (p["purpose"], p["channel"]) == ("email_marketing", "email")
        ]  # fmt: skip
        assert (state["status"], state["suppressed"]) == ("granted", False), state


# -- every sharer erased ---------------------------------------------------------------------------


def _two_erased(cli: Cli, config_path: Path, order: str) -> dict[str, Any]:
    """One Individual (made before the erasures) and the Contacts of two addresses pointing to
    it: read on one page after both erasures, a run apart after them, or before them."""
    name = f"sf_two_{order}"
    work, home = (f"{name.replace('_', '.')}.{who}@example.org" for who in ("work", "home"))
    with _sandbox(config_path, name) as org:
        for email in (work, home):
            _known(cli, email)
        individual, consent = _individual(org)
        sync(cli, "--full", connector=name)
        if order != "read_before_the_erasures":
            for email in (work, home):
                _erase(cli, email)
        for email in (work, home):
            org.create("Contact", LastName="Lee", Email=email, IndividualId=individual)
            if order == "runs_apart":
                sync(cli, connector=name)
        sync(cli, connector=name)
        if order == "read_before_the_erasures":
            for email in (work, home):
                _erase(cli, email)
        sync(cli, connector=name)
        sync(cli, connector=name)
        values, kept = org.get(individual), org.get(consent)
        return {
            "individual": (values["FirstName"], values["LastName"], values["HasOptedOutSolicit"]),
            "consent_deleted": kept is None or bool(kept.get("IsDeleted")),
            "individual_state": _marketing_suppressed(config_path, name, individual),
        }


def test_an_individual_whose_sharers_are_all_erased_takes_their_erasure_in_any_order(
    cli: Cli, config_path: Path
) -> None:
    """Its own person (the Contacts of two addresses point to it) holds nothing but the erased
    people's data: suppressed, anonymised and its consent record deleted, whether the Contacts
    were read on one page or a run apart, after the erasures or before them. Before, read after
    the erasures it was left as it was (its person never examined), read before them it was
    anonymised only: Don't Solicit unticked, its person unsuppressed, its consent record kept."""
    ends = {
        order: _two_erased(cli, config_path, order)
        for order in ("one_page", "runs_apart", "read_before_the_erasures")
    }
    expected = {
        "individual": (None, "Erased", True),
        "consent_deleted": True,
        "individual_state": [("email_marketing", "email", True)],
    }
    assert ends == dict.fromkeys(ends, expected), ends


def test_a_sharer_not_erased_who_comes_a_run_later_keeps_their_consent(cli: Cli, config_path: Path) -> None:
    """Review of c0fc1d0: the Individual read alone took on its erased sharer's erasure (told, as
    above); a run later a person not erased got a Contact pointing to it. The erasure the
    Individual's person took on travelled on to them as that person's own no: they were recorded
    withdrawn and their Contact opted out, by another person's erasure."""
    name = "sf_later"
    erased, other = "e.later@example.org", "o.later@example.org"
    with _sandbox(config_path, name) as org:
        _known(cli, erased)
        _known(cli, other)
        individual = org.create("Individual", FirstName="Kim", LastName="Lee", HasOptedOutSolicit=False)
        sync(cli, "--full", connector=name)
        _erase(cli, erased)
        org.create("Contact", LastName="Lee", Email=erased, IndividualId=individual)
        sync(cli, connector=name)
        sync(cli, connector=name)
        assert org.get(individual)["HasOptedOutSolicit"] is True  # told of the erasure
        theirs = org.create("Contact", LastName="Lee", Email=other, IndividualId=individual)
        sync(cli, connector=name)
        sync(cli, connector=name)
        shown = cli.json("subject", "show", other)
        assert [
            (p["status"], p["suppressed"])
            for p in shown["purposes"]
            if (p["purpose"], p["channel"]) == ("email_marketing", "email")
        ] == [("granted", False)]
        assert org.get(theirs)["HasOptedOutOfEmail"] is False
