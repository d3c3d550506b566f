"""The Salesforce sandbox as the connector kit sees it (:class:`consentsync.sdk.harness.
ContractHarness`): used by the contract tests and by bench/connector_calls.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from consentsync.sandbox.harness import SandboxHarness
from consentsync.sdk.harness import FaultOutcome
from consentsync_salesforce.sandbox import SalesforceSandbox
from consentsync_salesforce.sandbox.org import render_value

MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"  # the connector package's example mappings
WRITE_KINDS = ("composite", "sobject_patch", "bulk_upload")
TIMEOUT = 2.0
#: The objects of the org the adoption contract looks at: Contact (what the mapping reads and
#: writes) and what a production org keeps beside it (leads, Individuals and their consent
#: records), so that a write to any of them shows.
ADOPTION_OBJECTS = ("Contact", "Lead", "Individual", "ContactPointTypeConsent")
#: Change stamps: a save moves them whatever it changes (store_state leaves them out).
CHANGE_STAMPS = frozenset({"LastModifiedDate", "LastModifiedById", "SystemModstamp"})
#: When the org went live; every seeded record is created and edited after it, years ago.
ORG_START = dt.datetime(2019, 3, 4, 9, 15, tzinfo=dt.UTC)


@dataclass(frozen=True)
class _Person:
    """One person of the seeded org and the records a sales team made of them over the years."""

    first: str
    last: str
    email: str
    country: str
    email_opt_out: bool = False
    do_not_call: bool = False
    basis: str | None = None
    # A second Contact with the same address (an import that missed the first), with its own flags.
    duplicate: tuple[bool, str | None] | None = None
    # A Lead with the same address (the email opt-out and the basis the lead carries).
    lead: tuple[bool, str | None] | None = None
    # An Individual with consent records: (purpose name, PrivacyConsentStatus, capture source).
    consents: tuple[tuple[str, str, str], ...] = ()
    solicit_opt_out: bool = False


#: The org: people in the order they were created. The first four have a Contact without an
#: email opt-out (the contract withdraws them on the web site and expects a push).
_PEOPLE = (
    _Person(
        "Ana",
        "Keller",
        "ana.keller@example.test",
        "Germany",
        basis="Consent",
        consents=(("Email Marketing", "OptIn", "Web Form"),),
    ),
    _Person(
        "Brian",
        "O'Neill",
        "brian.oneill@example.test",
        "Ireland",
        basis="Legitimate Interest",
        duplicate=(False, None),
    ),
    _Person("Chloé", "Dubois", "chloe.dubois@example.test", "France", lead=(False, "Consent")),
    _Person("Dara", "Nowak", "dara.nowak@example.test", "Netherlands", do_not_call=True, basis="Contract"),
    _Person(
        "Emeka",
        "Okafor",
        "emeka.okafor@example.test",
        "United Kingdom",
        email_opt_out=True,
        basis="Consent",
        consents=(("Email Marketing", "OptOut", "Preference Center"),),
    ),
    _Person(
        "Fatima",
        "Haddad",
        "fatima.haddad@example.test",
        "France",
        email_opt_out=True,
        do_not_call=True,
        basis="Legitimate Interest",
    ),
    _Person("Grete", "Lind", "grete.lind@example.test", "Germany"),
    _Person(
        "Hiro",
        "Nakamura",
        "hiro.nakamura@example.test",
        "Netherlands",
        basis="Contract",
        consents=(("Service Communications", "OptIn", "Sales Call"), ("Email Marketing", "Seen", "Web Form")),
    ),
    _Person(
        "Ines",
        "García",
        "ines.garcia@example.test",
        "Germany",
        email_opt_out=True,
        basis="Legal Obligation",
        lead=(True, "Legal Obligation"),
    ),
    _Person(
        "Jon", "Schmidt", "jon.schmidt@example.test", "Germany", basis="Consent", duplicate=(True, "Consent")
    ),
    _Person("Kai", "Rossi", "kai.rossi@example.test", "Ireland", do_not_call=True),
    _Person(
        "Lea", "Brandt", "lea.brandt@example.test", "Germany", basis="Legitimate Interest", lead=(True, None)
    ),
    _Person("Mo", "Silva", "mo.silva@example.test", "United Kingdom", email_opt_out=True),
    _Person("Nia", "Evans", "nia.evans@example.test", "United Kingdom", basis="Vital Interests"),
    _Person(
        "Omar", "Farouk", "omar.farouk@example.test", "Netherlands", basis="Public Task", email_opt_out=True
    ),
    _Person(
        "Pia",
        "Larsen",
        "pia.larsen@example.test",
        "Germany",
        basis="Consent",
        consents=(
            ("Email Marketing", "OptIn", "Double Opt-In"),
            ("Profiling", "OptOut", "Preference Center"),
        ),
    ),
    _Person(
        "Quinn",
        "Murphy",
        "quinn.murphy@example.test",
        "Ireland",
        solicit_opt_out=True,
        consents=(("Email Marketing", "OptOut", "Preference Center"),),
    ),
    _Person(
        "Rosa",
        "Martín",
        "rosa.martin@example.test",
        "France",
        basis="Contract",
        duplicate=(False, "Contract"),
    ),
    _Person(
        "Sven",
        "Olsen",
        "sven.olsen@example.test",
        "Netherlands",
        email_opt_out=True,
        basis="Consent",
        lead=(False, "Consent"),
    ),
    _Person("Tara", "Singh", "tara.singh@example.test", "United Kingdom", basis="Legitimate Interest"),
    _Person(
        "Uli",
        "Wagner",
        "uli.wagner@example.test",
        "Germany",
        do_not_call=True,
        email_opt_out=True,
        basis="Contract",
    ),
    _Person("Vera", "Petrova", "vera.petrova@example.test", "Germany"),
    _Person(
        "Will",
        "Turner",
        "will.turner@example.test",
        "United Kingdom",
        basis="Consent",
        consents=(("Email Marketing", "NotSeen", "Import"),),
    ),
    _Person("Xena", "Costa", "xena.costa@example.test", "France", email_opt_out=True, lead=(False, None)),
)
_TITLES = (None, "Buyer", "CFO", "Head of Marketing", "Engineer", "Office Manager")
_SOURCES = (None, "Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")


class SalesforceHarness(SandboxHarness):
    timeout = TIMEOUT
    write_kinds = WRITE_KINDS
    vendor = "salesforce"
    object_type = "Contact"
    read_fields = ("Email", "HasOptedOutOfEmail", "DoNotCall", "Title")
    text_field = "Title"
    opt_out_field = "HasOptedOutOfEmail"
    text_max_length = 128
    page_size = 200  # Sforce-Query-Options batchSize, the smallest Salesforce accepts
    write_batch_size = 200  # sObject Collections
    mapping_files = (MAPPINGS / "contact.yaml",)
    # Salesforce's only short-term limit (25 concurrent long requests) answers the daily limit's
    # REQUEST_LIMIT_EXCEEDED, told apart by its message ("ConcurrentPerOrgLongTxn Limit
    # exceeded."): retried with backoff, survived as every CRM's throttle.
    fault_outcomes: ClassVar[dict[str, FaultOutcome]] = {}
    page_size_setting = "query_batch_size"
    own_settings: ClassVar[Mapping[str, Any]] = {"lock_retries": 0}
    store_attribute = "org"

    def __init__(self) -> None:
        self.sandbox = SalesforceSandbox()

    # -- the org's data ------------------------------------------------------------------------

    def create_named(self, last_name: str, email: str, **fields: Any) -> str:
        return self.sandbox.org.create("Contact", LastName=last_name, Email=email, **fields)

    def create_person(self, email: str, *, opted_out: bool = False) -> str:
        return self.sandbox.org.create(
            "Contact", LastName=f"Person {self.next_serial()}", Email=email, HasOptedOutOfEmail=opted_out
        )

    def opt_out(self, record_id: str) -> None:
        self.sandbox.org.update(record_id, HasOptedOutOfEmail=True)

    # -- an org used for years (AdoptionHarness) -----------------------------------------------

    def seed_existing_org(self) -> list[str]:
        """24 people over six years: Contacts with and without the email opt-out and Do Not Call,
        every value of the Legal Basis picklist and none, a second Contact for some (flags that
        agree and flags that do not, an address in another letter case), Leads with the same
        address, Individuals with consent records (OptIn, OptOut, Seen, NotSeen; CaptureDate,
        DoubleConsentCaptureDate, CaptureSource) and contacts edited after their creation."""
        org = self.sandbox.org
        with self.clock_at(org, ORG_START):
            purposes = {r["Name"]: r["Id"] for r in org.records("DataUsePurpose")}
            for name in ("Email Marketing", "Profiling", "Service Communications"):
                if name not in purposes:
                    purposes[name] = org.create("DataUsePurpose", Name=name, CanDataSubjectOptOut=True)
        for index, person in enumerate(_PEOPLE):
            created = ORG_START + dt.timedelta(days=61 * index + 3, hours=index % 9, minutes=7 * index)
            edited = created + dt.timedelta(days=200 + 13 * index, minutes=index)
            individual = None
            if person.consents or person.solicit_opt_out:
                with self.clock_at(org, created):
                    individual = org.create(
                        "Individual",
                        FirstName=person.first,
                        LastName=person.last,
                        HasOptedOutSolicit=person.solicit_opt_out,
                        CanStorePiiElsewhere=index % 2 == 0,
                    )
                for number, (purpose, status, source) in enumerate(person.consents):
                    captured = created + dt.timedelta(days=1 + number, minutes=12)
                    with self.clock_at(org, captured):
                        org.create(
                            "ContactPointTypeConsent",
                            Name=f"{purpose} - {person.first} {person.last}",
                            PartyId=individual,
                            ContactPointType="Email",
                            CaptureContactPointType="Email",
                            DataUsePurposeId=purposes[purpose],
                            PrivacyConsentStatus=status,
                            CaptureDate=captured,
                            CaptureSource=source,
                            EffectiveFrom=captured,
                            DoubleConsentCaptureDate=(
                                captured + dt.timedelta(minutes=40) if source == "Double Opt-In" else None
                            ),
                        )
            with self.clock_at(org, created):
                contact = org.create(
                    "Contact",
                    Salutation=("Mr.", "Ms.", "Dr.", None)[index % 4],
                    FirstName=person.first,
                    LastName=person.last,
                    Email=person.email,
                    Phone=f"+49 30 {5550100 + index}",
                    Title=_TITLES[index % len(_TITLES)],
                    MailingCountry=person.country,
                    LeadSource=_SOURCES[index % len(_SOURCES)],
                    Legal_Basis__c=person.basis,
                    IndividualId=individual,
                )
            # The flags are ticked later, as people ask (and some Contacts are edited otherwise).
            with self.clock_at(org, edited):
                if person.email_opt_out or person.do_not_call:
                    org.update(contact, HasOptedOutOfEmail=person.email_opt_out, DoNotCall=person.do_not_call)
                elif index % 3 == 0:
                    org.update(contact, Title="Procurement")
            if person.duplicate is not None:
                opted_out, basis = person.duplicate
                with self.clock_at(org, edited + dt.timedelta(days=30)):
                    org.create(
                        "Contact",
                        FirstName=person.first,
                        LastName=person.last,
                        Email=person.email.upper() if index % 2 else person.email,
                        MailingCountry=person.country,
                        LeadSource="Purchased List",
                        HasOptedOutOfEmail=opted_out,
                        Legal_Basis__c=basis,
                    )
            if person.lead is not None:
                opted_out, basis = person.lead
                with self.clock_at(org, created - dt.timedelta(days=20)):
                    org.create(
                        "Lead",
                        FirstName=person.first,
                        LastName=person.last,
                        Email=person.email,
                        Company=f"{person.last} GmbH",
                        Country=person.country,
                        LeadSource="Web",
                        Status="Working - Contacted",
                        HasOptedOutOfEmail=opted_out,
                        Legal_Basis__c=basis,
                        IndividualId=individual,
                    )
        return [person.email for person in _PEOPLE]

    def store_state(self) -> dict[str, dict[str, Any]]:
        """Every record (the recycle bin's too) of Contact, Lead, Individual and
        ContactPointTypeConsent, field by field as the API renders it, without the stamps a save
        moves."""
        state = {}
        for sobject in ADOPTION_OBJECTS:
            for record in self.sandbox.org.records(sobject, include_deleted=True):
                state[f"{sobject}/{record['Id']}"] = {
                    name: render_value(value) for name, value in record.items() if name not in CHANGE_STAMPS
                }
        return state

    # -- late commits, deletions and merges (LateCommitHarness, DeletionHarness) ----------------

    can_merge = True  # Contacts and Leads merge: the merged ones carry MasterRecordId

    def begin_late_person(self, email: str, *, opted_out: bool = False) -> str:
        return self.sandbox.org.begin_create(
            "Contact", LastName=f"Late {self.next_serial()}", Email=email, HasOptedOutOfEmail=opted_out
        )

    def commit_late(self, record_id: str) -> None:
        self.sandbox.org.commit(record_id)

    def delete_record(self, record_id: str) -> None:
        self.sandbox.org.delete(record_id)

    def merge_records(self, survivor_id: str, merged_id: str) -> None:
        self.sandbox.org.merge(survivor_id, merged_id)

    def record_ids(self) -> list[str]:
        return [r["Id"] for r in self.sandbox.org.records("Contact")]

    def change(self, record_id: str) -> None:
        self.sandbox.org.update(record_id, Title=f"changed {self._serial}")

    def stored(self, record_id: str) -> dict[str, Any]:
        return self.existing(self.sandbox.org.get(record_id), record_id)

    # -- faults and counting -------------------------------------------------------------------
