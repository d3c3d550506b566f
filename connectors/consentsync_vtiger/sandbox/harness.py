"""The Vtiger sandbox as the connector kit sees it (:class:`consentsync.sdk.harness.
ContractHarness`, with :class:`~consentsync.sdk.harness.LateCommitHarness`,
:class:`~consentsync.sdk.harness.DeletionHarness` and :class:`~consentsync.sdk.harness.AdoptionHarness`):
used by the contract tests and by bench/connector_calls.py.

The sandbox runs as an install whose ``$default_timezone`` is not UTC (``SERVER_TIMEZONE``), so
every contract test also checks the connector's time-zone handling, and stores 3-byte UTF-8 only
(``bmp_only``), as the stock install does."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from consentsync.sandbox.harness import SandboxHarness
from consentsync.sdk.harness import FaultOutcome
from consentsync_vtiger.sandbox.server import SERVER_TIMEZONE, VtigerCrm, VtigerSandbox

MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"  # the connector package's example mappings
WRITE_KINDS = ("revise", "update", "create", "delete")
TIMEOUT = 2.0  # under a loaded machine a 1 s answer is no fault

# An install in use since 2019 (AdoptionHarness). Vtiger records no opt-in and no lawful basis:
# a contact's consent is its two checkboxes, "Email Opt Out" and "Do Not Call" ("0" when never
# ticked), and its own dates are createdtime and modifiedtime (the last save: the day a box was
# ticked, for those ticked later). Each contact as (first name, last name, email, created day,
# emailoptout, donotcall, day the boxes were ticked or None, owner, organisation index or None).
# An address used twice (whatever its case) is one person on two contacts.
_DAY = dt.timedelta(days=1)
_ORIGIN = dt.datetime(2019, 2, 11, 16, 30, tzinfo=dt.UTC)
_ADMIN, _INTEGRATION, _TEAM = "19x1", "19x5", "20x2"
_ORGANISATIONS = ("Kessler Bau GmbH", "Harbour Freight Ltd", "Soleil Conseil S.A.")
_EXISTING_ORG: tuple[tuple[str, str, str | None, int, str, str, int | None, str, int | None], ...] = (
    # The first four have boxes left unticked: an opt-out can be pushed to them.
    ("Alice", "Keller", "alice.keller@kessler-bau.example", 0, "0", "0", None, _INTEGRATION, 0),
    ("Ben", "Harper", "ben.harper@harbourfreight.example", 12, "0", "0", None, _ADMIN, 1),
    ("Chloe", "Martin", "chloe.martin@soleil.example", 40, "0", "0", None, _TEAM, 2),
    ("Daniel", "Novak", "d.novak@mailbox.example", 75, "0", "0", None, _INTEGRATION, None),
    # Opted out of e-mail, of calls, of both (some on the day they were entered, some years later).
    ("Elena", "Ortiz", "elena.ortiz@soleil.example", 90, "1", "0", 90, _INTEGRATION, 2),
    ("Felix", "Brandt", "felix.brandt@kessler-bau.example", 130, "1", "0", 610, _TEAM, 0),
    ("Grace", "Liu", "grace.liu@harbourfreight.example", 181, "0", "1", 182, _INTEGRATION, 1),
    ("Hugo", "Petit", "hugo.petit@mailbox.example", 222, "1", "1", 900, _ADMIN, None),
    ("Irene", "Schulz", "irene.schulz@kessler-bau.example", 260, "0", "0", None, _INTEGRATION, 0),
    ("Jonas", "Weber", "jonas.weber@kessler-bau.example", 301, "0", "1", 1200, _INTEGRATION, 0),
    ("Katie", "Doyle", "katie.doyle@harbourfreight.example", 350, "0", "0", None, _TEAM, 1),
    ("Liam", "Byrne", "liam.byrne@mailbox.example", 402, "1", "0", 1333, _INTEGRATION, None),
    ("Marie", "Dubois", "marie.dubois@soleil.example", 455, "0", "0", None, _ADMIN, 2),
    ("Noah", "Fischer", "noah.fischer@kessler-bau.example", 520, "0", "0", None, _INTEGRATION, 0),
    # One person, two contacts: no box ticked on either ...
    ("Olga", "Ivanova", "olga.ivanova@mailbox.example", 580, "0", "0", None, _INTEGRATION, None),
    ("Olga", "Ivanova", "olga.ivanova@mailbox.example", 1010, "0", "0", None, _TEAM, 2),
    # ... an e-mail opt-out on the older contact only ...
    ("Paul", "Meyer", "paul.meyer@harbourfreight.example", 640, "1", "0", 700, _INTEGRATION, 1),
    ("Paul", "Meyer", "paul.meyer@harbourfreight.example", 1090, "0", "0", None, _ADMIN, None),
    # ... "Do Not Call" on the newer one only ...
    ("Rosa", "Lang", "rosa.lang@soleil.example", 690, "0", "0", None, _INTEGRATION, 2),
    ("Rosa", "Lang", "rosa.lang@soleil.example", 1150, "0", "1", 1151, _INTEGRATION, None),
    # ... and the address typed in another case on the second contact, opted out there.
    ("Sam", "Turner", "sam.turner@kessler-bau.example", 744, "0", "0", None, _INTEGRATION, 0),
    ("Sam", "Turner", "Sam.Turner@Kessler-Bau.example", 1300, "1", "0", 1301, _TEAM, 0),
    ("Tara", "Quinn", "tara.quinn@mailbox.example", 812, "0", "0", None, _INTEGRATION, None),
    ("Uwe", "Richter", "uwe.richter@kessler-bau.example", 1402, "1", "1", 1402, _INTEGRATION, 0),
    ("Vera", "Costa", "vera.costa@soleil.example", 1500, "0", "0", None, _ADMIN, 2),
    ("Will", "Evans", "will.evans@harbourfreight.example", 1650, "0", "1", 1700, _INTEGRATION, 1),
    # A switchboard contact without an e-mail address.
    ("", "Reception Kessler", None, 1720, "0", "0", None, _INTEGRATION, 0),
)
# What the store keeps of a contact that no write of a sync changes by itself: the change stamps.
_CHANGE_STAMPS = ("modifiedtime", "modifiedby")


class VtigerHarness(SandboxHarness):
    timeout = TIMEOUT
    secret_setting = "access_key"
    write_kinds = WRITE_KINDS
    fault_settings: ClassVar[dict[str, dict[str, Any]]] = {
        "session_expiry": {"session_expiry_after": 2, "session_expiry_repeat": True},
    }
    vendor = "vtiger"
    object_type = "Contacts"
    read_fields = ("email", "emailoptout", "donotcall", "firstname")
    text_field = "firstname"
    opt_out_field = "emailoptout"
    text_max_length = 40  # vtiger_contactdetails.firstname is varchar(40)
    page_size = 10  # the connector's page_size setting (Vtiger answers at most 100 rows)
    write_batch_size = 1  # revise: one record a call, Vtiger has no batch write
    mapping_files = (MAPPINGS / "contacts.yaml",)
    fault_outcomes: ClassVar[dict[str, FaultOutcome]] = {}
    own_settings: ClassVar[Mapping[str, Any]] = {
        "crowded_second_overlap": 2,
        # The sandbox's sync answers, as on installs where it works (not the stock 8.2.0).
        "read_deletions": True,
    }
    store_attribute = "crm"
    bmp_only = True  # the stock install's MySQL utf8: emoji come back as "?"
    can_merge = False  # a merge in Vtiger shows on the API as the deletion of the merged record

    def __init__(self) -> None:
        self.sandbox = VtigerSandbox(VtigerCrm(privacy_guard=False, timezone=SERVER_TIMEZONE))

    def connector_settings(self, **overrides: Any) -> dict[str, Any]:
        """As every harness's, with ``server_timezone`` the zone the sandbox in hand serves its
        times in: its own, or the running one ``consentsync sandbox vtiger`` prints the block
        for (a block naming another zone than the served one reads every change hours off)."""
        zone = {"server_timezone": self.sandbox.crm.zone.key}
        return super().connector_settings(**{**zone, **overrides})

    # -- the CRM's data ------------------------------------------------------------------------

    def create_named(self, last_name: str, email: str, **fields: Any) -> str:
        return self.store.create("Contacts", lastname=last_name, email=email, **fields)

    def record_ids(self) -> list[str]:
        return [r["id"] for r in self.sandbox.crm.records("Contacts")]

    # -- an install used for years (AdoptionHarness) --------------------------------------------

    def seed_existing_org(self) -> list[str]:
        """Contacts written straight into the CRM (with three organisations they belong to),
        dated from 2019 on: see ``_EXISTING_ORG``. Returns the people's addresses (lower-cased,
        once a person), in the order the contacts were created."""
        crm = self.sandbox.crm
        organisations = [
            crm.create("Accounts", accountname=name, emailoptout="0", at=_ORIGIN - 30 * _DAY)
            for name in _ORGANISATIONS
        ]
        emails: list[str] = []
        for first, last, email, created, optout, donotcall, ticked, owner, organisation in _EXISTING_ORG:
            values: dict[str, Any] = {"firstname": first, "lastname": last, "email": email}
            if organisation is not None:
                values["account_id"] = organisations[organisation]
                values["phone"] = f"+49 30 5550{created:04d}"
            boxes = {"emailoptout": optout, "donotcall": donotcall}
            created_at = _ORIGIN + created * _DAY
            if ticked is None or ticked == created:
                record_id = crm.create("Contacts", {**values, **boxes}, owner=owner, at=created_at)
            else:
                record_id = crm.create(
                    "Contacts", {**values, "emailoptout": "0", "donotcall": "0"}, owner=owner, at=created_at
                )
                crm.revise(record_id, boxes, at=_ORIGIN + ticked * _DAY)
            assert record_id
            if email is not None and email.lower() not in emails:
                emails.append(email.lower())
        return emails

    def store_state(self) -> dict[str, dict[str, Any]]:
        """Every live contact as the CRM stores it, but for its change stamps (modifiedtime,
        modifiedby); a deleted contact is gone from it."""
        return {
            f"Contacts/{record['id']}": {
                name: value for name, value in record.items() if name not in _CHANGE_STAMPS
            }
            for record in self.sandbox.crm.records("Contacts")
        }

    def change(self, record_id: str) -> None:
        self.sandbox.crm.revise(record_id, firstname=f"changed {self.next_serial()}")

    def stored(self, record_id: str) -> dict[str, Any]:
        return self.existing(self.sandbox.crm.get(record_id), record_id)

    def create_person(self, email: str, *, opted_out: bool = False) -> str:
        """A contact with this address (for ``consentsync demo --crms``)."""
        return self.sandbox.crm.create(
            "Contacts", lastname=self.new_name("Person")[0], email=email, emailoptout=opted_out
        )

    def begin_late_person(self, email: str, *, opted_out: bool = False) -> str:
        """A contact saved in a transaction that commits late (see :meth:`commit_late`)."""
        return self.sandbox.crm.begin_late(
            "Contacts", lastname=self.new_name("Person")[0], email=email, emailoptout=opted_out
        )

    def commit_late(self, record_id: str) -> None:
        self.sandbox.crm.commit_late(record_id)

    def delete_record(self, record_id: str) -> None:
        """A CRM user deletes the contact (Vtiger marks it deleted: its recycle bin)."""
        self.sandbox.crm.delete(record_id)

    def merge_records(self, survivor_id: str, merged_id: str) -> None:
        """Vtiger's duplicate merge keeps the survivor and deletes the other record; the
        webservice keeps no link between them, so a merge reads as a deletion (can_merge is
        False: the contract expects no merged_into)."""
        assert self.sandbox.crm.get(survivor_id) is not None, f"no record {survivor_id}"
        self.sandbox.crm.delete(merged_id)

    def opt_out(self, record_id: str) -> None:
        """The person ticks "Email Opt Out" in Vtiger (its modifiedtime moves to now)."""
        self.sandbox.crm.revise(record_id, emailoptout="1")

    def read_opted_out(self, record_id: str) -> bool:
        return self.stored(record_id)["emailoptout"] == "1"  # the CRM stores checkboxes as "0"/"1"

    # -- faults and counting -------------------------------------------------------------------
