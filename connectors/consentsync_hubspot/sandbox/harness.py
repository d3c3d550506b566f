"""The HubSpot sandbox as the connector kit sees it (:class:`consentsync.sdk.harness.
ContractHarness`): used by the contract tests and by bench/connector_calls.py."""

from __future__ import annotations

import datetime as dt
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from consentsync.sandbox.harness import SandboxHarness
from consentsync.sdk.harness import FaultOutcome
from consentsync_hubspot.sandbox.server import WRITE_KINDS, HubSpotPortal, HubSpotSandbox, iso_ms

MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"  # the connector package's example mappings
TIMEOUT = 2.0
MARKETING = "1001"
#: Properties every change moves (store_state leaves them out).
CHANGE_STAMPS = frozenset({"lastmodifieddate"})
#: When the portal went live; every seeded contact and status change is years old.
PORTAL_START = dt.datetime(2019, 5, 6, 8, 30, 0, 250_000, tzinfo=dt.UTC)
_CONSENT = "Freely given consent from contact"
_CONTRACT = "Performance of a contract"
_LI_LEAD = "Legitimate interest – prospect/lead"
_LI_CUSTOMER = "Legitimate interest – existing customer"
_LI_OTHER = "Legitimate interest - other"
_NOT_APPLICABLE = "Not applicable"

#: The portal's people in the order they were created: (first name, last name, email, company,
#: the ticked hs_legal_basis options, subscription status changes as (subscription id, status,
#: legal basis, source, days after the contact's creation), in the order they happened). No
#: status for a subscription reads NOT_SPECIFIED. The first four can still be unsubscribed from
#: Marketing Information (the contract withdraws them on the web site and expects a push).
_Change = tuple[str, str, str | None, str, int]
_PEOPLE: tuple[tuple[str, str, str, str | None, tuple[str, ...], tuple[_Change, ...]], ...] = (
    ("Ada", "Okafor", "ada.okafor@example.test", "Okafor Logistics", (_CONSENT,),
     (("1001", "SUBSCRIBED", "CONSENT_WITH_NOTICE", "Form", 0),)),
    ("Bo", "Lind", "bo.lind@example.test", None, (_LI_LEAD,), ()),
    ("Chloé", "García", "chloe.garcia@example.test", "García & Hijos", (_CONTRACT,),
     (("1002", "SUBSCRIBED", "PERFORMANCE_OF_CONTRACT", "Import", 0),
      ("1001", "SUBSCRIBED", "LEGITIMATE_INTEREST_CLIENT", "Sales", 90))),
    ("Dev", "Nakamura", "dev.nakamura@example.test", "Nakamura KK", (), ()),
    ("Emeka", "Schmidt", "emeka.schmidt@example.test", None, (_CONSENT,),
     (("1001", "SUBSCRIBED", "CONSENT_WITH_NOTICE", "Form", 0),
      ("1001", "UNSUBSCRIBED", "CONSENT_WITH_NOTICE", "Subscription preferences page", 400))),
    ("Fatima", "O'Neil", "fatima.oneil@example.test", "O'Neil Partners", (_LI_CUSTOMER, _CONTRACT),
     (("1002", "SUBSCRIBED", "PERFORMANCE_OF_CONTRACT", "Import", 0),
      ("1003", "SUBSCRIBED", "LEGITIMATE_INTEREST_CLIENT", "Sales", 3))),
    ("Grete", "Nowak", "grete.nowak@example.test", None, (),
     (("1001", "UNSUBSCRIBED", None, "Subscription preferences page", 12),)),
    ("Hiro", "Silva", "hiro.silva@example.test", "Silva Imports", (_LI_OTHER,),
     (("1001", "SUBSCRIBED", "LEGITIMATE_INTEREST_OTHER", "Import", 0),)),
    ("Ines", "Lind", "ines.lind@example.test", None, (_NOT_APPLICABLE,),
     (("1001", "SUBSCRIBED", "NON_GDPR", "Form", 0),)),
    ("Jon", "Okafor", "jon.okafor@example.test", "Okafor Logistics", (_CONSENT,),
     (("1001", "SUBSCRIBED", "CONSENT_WITH_NOTICE", "Form", 0),
      ("1002", "SUBSCRIBED", "PERFORMANCE_OF_CONTRACT", "Import", 0),
      ("1001", "UNSUBSCRIBED", "CONSENT_WITH_NOTICE", "Unsubscribe link", 700),
      ("1002", "UNSUBSCRIBED", "PERFORMANCE_OF_CONTRACT", "Unsubscribe link", 700),
      ("1003", "UNSUBSCRIBED", None, "Unsubscribe link", 700))),
    ("Kai", "García", "kai.garcia@example.test", None, (_LI_LEAD,),
     (("1001", "SUBSCRIBED", "LEGITIMATE_INTEREST_PQL", "Sales", 30),)),
    ("Lea", "Nakamura", "lea.nakamura@example.test", "Nakamura KK", (_CONTRACT,),
     (("1002", "UNSUBSCRIBED", "PERFORMANCE_OF_CONTRACT", "Subscription preferences page", 200),)),
    ("Mo", "Schmidt", "mo.schmidt@example.test", None, (),
     (("1001", "SUBSCRIBED", "PROCESS_AND_STORE", "Import", 0),)),
    ("Nia", "O'Neil", "nia.oneil@example.test", None, (_CONSENT,),
     (("1001", "SUBSCRIBED", "CONSENT_WITH_NOTICE", "Form", 0),
      ("1002", "SUBSCRIBED", "CONSENT_WITH_NOTICE", "Form", 0))),
    ("Omar", "Silva", "omar.silva@example.test", "Silva Imports", (_LI_CUSTOMER,),
     (("1001", "NOT_SPECIFIED", None, "Import", 0),)),
    ("Pia", "Nowak", "pia.nowak@example.test", None, (_CONSENT, _LI_LEAD),
     (("1001", "SUBSCRIBED", "CONSENT_WITH_NOTICE", "Form", 0),
      ("1001", "UNSUBSCRIBED", "CONSENT_WITH_NOTICE", "Bounce management", 1100))),
    ("Quinn", "Lind", "quinn.lind@example.test", "Lind AB", (_CONTRACT,),
     (("1002", "SUBSCRIBED", "PERFORMANCE_OF_CONTRACT", "Import", 0),)),
    ("Rosa", "Okafor", "rosa.okafor@example.test", None, (), ()),
    ("Sven", "García", "sven.garcia@example.test", None, (_LI_OTHER,),
     (("1003", "SUBSCRIBED", "LEGITIMATE_INTEREST_OTHER", "Sales", 5),)),
    ("Tara", "Nakamura", "tara.nakamura@example.test", "Nakamura KK", (_CONSENT,),
     (("1001", "SUBSCRIBED", "CONSENT_WITH_NOTICE", "Form", 0),
      ("1002", "SUBSCRIBED", "CONSENT_WITH_NOTICE", "Form", 0),
      ("1002", "UNSUBSCRIBED", "CONSENT_WITH_NOTICE", "Subscription preferences page", 365))),
    ("Uli", "Schmidt", "uli.schmidt@example.test", None, (_LI_LEAD,),
     (("1001", "UNSUBSCRIBED", "LEGITIMATE_INTEREST_PQL", "Subscription preferences page", 60),)),
    ("Vera", "O'Neil", "vera.oneil@example.test", "O'Neil Partners", (_CONTRACT, _CONSENT),
     (("1001", "SUBSCRIBED", "CONSENT_WITH_NOTICE", "Form", 0),
      ("1002", "SUBSCRIBED", "PERFORMANCE_OF_CONTRACT", "Import", 0))),
)  # fmt: skip
#: People who were on two contacts: (index in _PEOPLE, their second address). The second
#: contact (with statuses of its own, kept by its address) is merged into the first.
_MERGED = ((6, "grete@nowak-design.example.test"), (13, "nia.oneil@work.example.test"))
#: A contact deleted years ago (HubSpot keeps its unsubscription, by address).
_ARCHIVED = ("former.customer@example.test", "Former", "Customer")


class HubSpotHarness(SandboxHarness):
    # The standard session expiry is the admin rotating the private app's token: the connector
    # re-reads its token file.
    timeout = TIMEOUT
    write_kinds = WRITE_KINDS
    vendor = "hubspot"
    object_type = "contacts"
    read_fields = ("email", "jobtitle", "hs_legal_basis", f"subscription_{MARKETING}")
    text_field = "jobtitle"
    opt_out_field = f"subscription_{MARKETING}"
    opt_out_values = ("SUBSCRIBED", "UNSUBSCRIBED")
    text_max_length = 2000
    page_size = 20
    write_batch_size = 100
    mapping_files = (MAPPINGS / "contacts.yaml",)
    fault_outcomes: ClassVar[dict[str, FaultOutcome]] = {}
    own_settings: ClassVar[Mapping[str, Any]] = {"search_requests_per_second": 20}

    def __init__(
        self,
        *,
        merges: str = "old",
        merged_archived: bool = True,
        subscriptions: Mapping[str, tuple[str, str]] | None = None,
        business_units: Mapping[str, int] | None = None,
        **sandbox_options: Any,
    ) -> None:
        """``merges``: how the portal merges (``HubSpotPortal``). The sandbox merges as HubSpot
        does now ("new": a new contact with a new id); the harness keeps "old" (the primary
        keeps its id) by default, because the shared contract (``DeletionHarness.merge_records``,
        consentsync.sdk.testing) expects the first record to survive under its own id. Tests of
        the new kind ask for ``merges="new"``. ``subscriptions`` and ``business_units``: the
        portal's subscription types and the business unit of each (``HubSpotPortal``)."""
        self._directory = Path(tempfile.mkdtemp(prefix="consentsync-hubspot-"))
        self.token_file = self._directory / "token"
        options = {"burst_limit": 1000, "search_per_second": 20, **sandbox_options}
        portal = HubSpotPortal(
            merges=merges,
            merged_archived=merged_archived,
            subscriptions=subscriptions,
            business_units=business_units,
        )
        self.sandbox = HubSpotSandbox(portal, token_file=self.token_file, **options)

    @staticmethod
    def id_key(record_id: str) -> int:
        return int(record_id)

    # -- lifecycle and settings ----------------------------------------------------------------

    def start(self) -> None:
        self.sandbox.start()

    def stop(self) -> None:
        self.sandbox.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    def bad_credentials_settings(self, wrong_secret: str) -> dict[str, Any]:
        settings = self.connector_settings(access_token=wrong_secret)
        del settings["access_token_file"]
        return settings

    # -- the portal's data ---------------------------------------------------------------------

    def seed(self, count: int, *, shared_modstamp: bool = False) -> list[str]:
        portal = self.sandbox.portal
        ids = []
        for moment in self.seed_times(count, shared_modstamp=shared_modstamp, now=portal.now()):
            name, email = self.new_name("Contract")
            ids.append(portal.create({"email": email, "lastname": name}, at=moment))
        return ids

    def create_person(self, email: str, *, opted_out: bool = False) -> str:
        return self._opted_out(self.sandbox.portal.create({"email": email, "lastname": "Person"}), opted_out)

    def _opted_out(self, contact_id: str, opted_out: bool) -> str:
        """The contact, unsubscribed from marketing on HubSpot's preferences page if ``opted_out``."""
        if opted_out:
            self.opt_out(contact_id)
        return contact_id

    # -- a portal used for years (AdoptionHarness) ---------------------------------------------

    def seed_existing_org(self) -> list[str]:
        """22 people over six years: subscription statuses for Marketing Information, Customer
        Service Communication and One to One (subscribed, unsubscribed, never specified, an
        explicit NOT_SPECIFIED) under every v3 legal basis, each with its own timestamp and
        source; hs_legal_basis with no, one and two options ticked (Not applicable included);
        two people whose second contact was merged into the first (its address keeps its
        statuses); a contact deleted with its unsubscription kept."""
        portal = self.sandbox.portal
        emails = []
        for index, (first, last, email, company, bases, changes) in enumerate(_PEOPLE):
            created = PORTAL_START + dt.timedelta(days=53 * index, hours=index % 7, minutes=11 * index)
            contact_id = portal.create(
                {
                    "email": email,
                    "firstname": first,
                    "lastname": last,
                    "company": company,
                    "jobtitle": ("Buyer", "CFO", None, "Marketing Manager", "Engineer")[index % 5],
                    "phone": f"+44 20 7946 {index:04d}" if index % 3 else None,
                    "hs_legal_basis": ";".join(bases) or None,
                },
                at=created,
            )
            emails.append(email)
            for sid, status, basis, source, days in changes:
                portal.set_status(
                    email,
                    sid,
                    status,
                    legal_basis=basis,
                    explanation=f"{source}, {created.year + days // 365}" if basis else None,
                    source=source,
                    at=created + dt.timedelta(days=days, minutes=5),
                )
            for position, second in _MERGED:
                if position == index:
                    moment = created + dt.timedelta(days=40)
                    other = portal.create(
                        {"email": second, "firstname": first, "lastname": last, "company": company}, at=moment
                    )
                    portal.set_status(
                        second,
                        MARKETING,
                        "SUBSCRIBED",
                        legal_basis="CONSENT_WITH_NOTICE",
                        explanation="Trade fair sign-up",
                        source="Form",
                        at=moment,
                    )
                    # Years ago: merged as HubSpot did then (the primary kept its id).
                    portal.merge(contact_id, other, at=moment + dt.timedelta(days=100), new_record=False)
            if index == 10:
                address, first_name, last_name = _ARCHIVED
                moment = created + dt.timedelta(hours=2)
                gone = portal.create(
                    {"email": address, "firstname": first_name, "lastname": last_name}, at=moment
                )
                portal.set_status(address, MARKETING, "UNSUBSCRIBED", source="Unsubscribe link", at=moment)
                portal.archive(gone, at=moment + dt.timedelta(days=15))
        return emails

    def store_state(self) -> dict[str, dict[str, Any]]:
        """Every live contact, its properties without lastmodifieddate and, under
        ``subscriptions``, the statuses HubSpot keeps for its address; archived contacts; and
        the statuses of addresses that no live contact has (``subscriptions/<address>``)."""
        portal = self.sandbox.portal

        def statuses(email: str) -> dict[str, Any]:
            return {
                sid: {
                    "status": held.status,
                    "legal_basis": held.legal_basis,
                    "explanation": held.explanation,
                    "timestamp": iso_ms(held.timestamp),
                    "source": held.source,
                }
                for sid, held in sorted(portal.statuses(email).items())
            }

        def rendered(record: dict[str, Any]) -> dict[str, Any]:
            return {
                name: iso_ms(value) if isinstance(value, dt.datetime) else value
                for name, value in sorted(record.items())
                if name not in CHANGE_STAMPS
            }

        state: dict[str, dict[str, Any]] = {}
        addresses: set[str] = set()
        with portal.lock:
            for contact_id in portal.ids():
                record = portal.get(contact_id) or {}
                email = str(record.get("email") or "").strip().lower()
                state[f"contacts/{contact_id}"] = {
                    **rendered(record),
                    "subscriptions": statuses(email) if email else {},
                }
                addresses.add(email)
            for contact_id, record in portal.archived():
                state[f"contacts/{contact_id}"] = {**rendered(record), "archived": True}
            for address in sorted({address for address, _sid in portal._statuses} - addresses):
                state[f"subscriptions/{address}"] = statuses(address)
        return state

    # -- late commits (the search index lagging a write) ---------------------------------------

    def begin_late_person(self, email: str, *, opted_out: bool = False) -> str:
        """A contact written now that the search index has not caught up with yet."""
        return self._opted_out(
            self.sandbox.portal.begin_late({"email": email, "lastname": "Person"}), opted_out
        )

    def commit_late(self, record_id: str) -> None:
        self.sandbox.portal.index(record_id)

    # -- deletions and merges ------------------------------------------------------------------

    can_merge = True

    def delete_record(self, record_id: str) -> None:
        assert self.sandbox.portal.archive(record_id), f"no live contact {record_id}"

    def merge_records(self, survivor_id: str, merged_id: str) -> None:
        """As the portal merges: under ``merges="new"`` neither id survives (see
        :meth:`merge_into_new`)."""
        self.sandbox.portal.merge(survivor_id, merged_id)

    def merge_into_new(self, primary_id: str, merged_id: str) -> str:
        """A merge as HubSpot makes it now, whatever the portal's default: the id of the new
        contact both originals point to."""
        return str(self.sandbox.portal.merge(primary_id, merged_id, new_record=True)["hs_object_id"])

    def opt_out(self, record_id: str) -> None:
        record = self.stored(record_id)
        # The person clicks "unsubscribe" in an email: HubSpot's preferences page records it.
        self.sandbox.portal.set_status(str(record["email"]), MARKETING, "UNSUBSCRIBED")

    def record_ids(self) -> list[str]:
        return self.sandbox.portal.ids()

    def change(self, record_id: str) -> None:
        self.sandbox.portal.update(record_id, {"jobtitle": f"changed {self.next_serial()}"})

    def create_with_text(self, text: str) -> str:
        return self.sandbox.portal.create({"email": self.new_name("Hostile")[1], "jobtitle": text})

    def stored(self, record_id: str) -> dict[str, Any]:
        return self.existing(self.sandbox.portal.get(record_id), record_id)

    def read_opted_out(self, record_id: str) -> bool:
        """Whether the person's marketing subscription is UNSUBSCRIBED (HubSpot keeps it by address)."""
        status = self.sandbox.portal.status(str(self.stored(record_id)["email"]), MARKETING)
        return status is not None and status.status == "UNSUBSCRIBED"

    @staticmethod
    def minimum_write_calls(pushed: Sequence[Mapping[str, Any]]) -> int:
        """HubSpot batches property updates (100 a call) but not subscription changes: v3 takes
        one contact and one subscription a call."""
        properties = sum(1 for fields in pushed if any(not k.startswith("subscription_") for k in fields))
        subscriptions = sum(
            1 for fields in pushed for k in fields if k.startswith("subscription_") and k.count("_") == 1
        )
        return math.ceil(properties / HubSpotHarness.write_batch_size) + subscriptions

    # -- faults and counting -------------------------------------------------------------------
