"""The SuperOffice sandbox as the connector kit sees it (:class:`consentsync.sdk.harness.
ContractHarness`): used by the contract tests and by bench/connector_calls.py.

A record is a Person; its text field is the comment of its Sales and service consent, its opt-out
flag the E-marketing consent's legal basis (Withdrawn or not).

It implements :class:`~consentsync.sdk.harness.LateCommitHarness` and
:class:`~consentsync.sdk.harness.AdoptionHarness` (an org with years of consents). It does not implement
``DeletionHarness``: SuperOffice's API lists no deleted or merged persons, so the connector reads
no deletions (``reads_deletions`` is False) and the contract's deletion test is skipped."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, ClassVar

from consentsync.sandbox.harness import SandboxHarness
from consentsync.sdk.harness import FaultOutcome
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
from consentsync_superoffice.sandbox.tenant import SuperOfficeTenant

MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"  # the connector package's example mappings
WRITE_KINDS = ("set_consent", "remove_consent", "person_patch", "person_delete")
TIMEOUT = 2.0

# An org in use since 2019 (AdoptionHarness): each person as (first name, last name, email,
# created, [(purpose, source, legal basis, comment, when)], ...) -- consents set after the person was
# created, in this order; the Sales and service consent every new person gets (legitimate
# interest, System) comes first, at ``created``. An email used twice is one person on two records.
_DAY = dt.timedelta(days=1)
_ORIGIN = dt.datetime(2019, 3, 4, 9, 15, tzinfo=dt.UTC)
_ExistingConsent = tuple[str, str, str, str, int]  # purpose, source, legal basis, comment, day
_EXISTING_ORG: tuple[tuple[str, str, str | None, int, tuple[_ExistingConsent, ...]], ...] = (
    # The first four have an e-marketing consent a withdrawal can be pushed to.
    ("Anna", "Berg", "anna.berg@nordlys.example", 0, (("EMARKETING", "FORM", "CONSENT", "", 2),)),
    ("Bjorn", "Dahl", "bjorn.dahl@fjordfisk.example", 9, (("EMARKETING", "EMAIL", "SOFTOPTIN", "", 9),)),
    (
        "Carla",
        "Eide",
        "carla.eide@kystbygg.example",
        31,
        (
            ("STORE", "MANUAL", "CONTRACT", "Service agreement 2019", 31),
            ("EMARKETING", "IMPORT", "CONSENT", "", 40),
        ),
    ),
    (
        "Dag",
        "Foss",
        "dag.foss@nordlys.example",
        58,
        (("EMARKETING", "MANUAL", "LEGITIMATE", "Trade fair lead", 60),),
    ),
    # Opted out, some after years of mailings.
    (
        "Eva",
        "Gran",
        "eva.gran@havbris.example",
        77,
        (
            ("EMARKETING", "FORM", "CONSENT", "", 77),
            ("EMARKETING", "EMAIL", "WITHDRAWN", "Unsubscribe link", 402),
        ),
    ),
    (
        "Frode",
        "Hauge",
        "frode.hauge@fjellvind.example",
        120,
        (("EMARKETING", "MANUAL", "WITHDRAWN", "Asked by phone", 121),),
    ),
    # No e-marketing consent at all (unspecified), on the default basis or another.
    ("Gro", "Iversen", "gro.iversen@kystbygg.example", 133, ()),
    ("Hans", "Jensen", "hans.jensen@soltak.example", 190, (("STORE", "MANUAL", "CONTRACT", "", 190),)),
    (
        "Ida",
        "Knutsen",
        "ida.knutsen@havbris.example",
        244,
        (("STORE", "IMPORT", "LEGALOBLIGATION", "", 244),),
    ),
    # Several bases on e-marketing.
    (
        "Jon",
        "Lie",
        "jon.lie@soltak.example",
        300,
        (("EMARKETING", "FORM", "CONSENT", "Newsletter form", 301),),
    ),
    ("Kari", "Moe", "kari.moe@fjellvind.example", 366, (("EMARKETING", "EMAIL", "SOFTOPTIN", "", 366),)),
    (
        "Lars",
        "Nilsen",
        "lars.nilsen@nordlys.example",
        421,
        (
            ("STORE", "MANUAL", "PUBLICINTEREST", "Municipal contact", 421),
            ("EMARKETING", "MANUAL", "CONTRACT", "", 430),
        ),
    ),
    ("Mona", "Olsen", "mona.olsen@bryggen.example", 480, (("EMARKETING", "FORM", "CONSENT", "", 480),)),
    # Withdrew everything: e-marketing and Sales and service.
    (
        "Nils",
        "Pettersen",
        "nils.pettersen@bryggen.example",
        512,
        (
            ("EMARKETING", "FORM", "CONSENT", "", 512),
            ("EMARKETING", "EMAIL", "WITHDRAWN", "", 700),
            ("STORE", "EMAIL", "WITHDRAWN", "Asked to be forgotten by sales", 701),
        ),
    ),
    ("Olav", "Quist", "olav.quist@fjordfisk.example", 560, (("STORE", "MANUAL", "VITALINTEREST", "", 560),)),
    ("Pia", "Rud", "pia.rud@soltak.example", 611, (("EMARKETING", "IMPORT", "LEGITIMATE", "", 611),)),
    # One person, two records (at two companies): the same consent on both ...
    ("Rune", "Sand", "rune.sand@consult.example", 655, (("EMARKETING", "FORM", "CONSENT", "", 655),)),
    ("Rune", "Sand", "rune.sand@consult.example", 890, (("EMARKETING", "FORM", "CONSENT", "", 890),)),
    # ... an opt-out on the newer record only ...
    ("Siri", "Toft", "siri.toft@havbris.example", 702, (("EMARKETING", "FORM", "CONSENT", "", 702),)),
    (
        "Siri",
        "Toft",
        "siri.toft@havbris.example",
        930,
        (("EMARKETING", "EMAIL", "WITHDRAWN", "Unsubscribe link", 1010),),
    ),
    # ... an old opt-out on one and a newer consent on the other ...
    (
        "Tor",
        "Ulstein",
        "tor.ulstein@kystbygg.example",
        760,
        (("EMARKETING", "MANUAL", "WITHDRAWN", "", 761),),
    ),
    (
        "Tor",
        "Ulstein",
        "tor.ulstein@kystbygg.example",
        1100,
        (("EMARKETING", "FORM", "CONSENT", "Webinar sign-up", 1101),),
    ),
    # ... and a consent on one record, nothing on the other.
    ("Unni", "Vik", "unni.vik@fjellvind.example", 801, (("EMARKETING", "FORM", "SOFTOPTIN", "", 805),)),
    ("Unni", "Vik", "unni.vik@fjellvind.example", 1200, ()),
    ("Vera", "Wold", "vera.wold@bryggen.example", 1322, (("EMARKETING", "FORM", "CONSENT", "", 1322),)),
    (
        "Wenche",
        "Aas",
        "wenche.aas@nordlys.example",
        1400,
        (("EMARKETING", "EMAIL", "WITHDRAWN", "Bounce complaint", 1401),),
    ),
    ("Yngve", "Bakke", "yngve.bakke@fjordfisk.example", 1500, (("STORE", "FORM", "CONSENT", "", 1500),)),
    ("Zara", "Carlsen", "zara.carlsen@soltak.example", 1620, (("EMARKETING", "FORM", "CONSENT", "", 1620),)),
    # A reception contact without an e-mail address.
    ("Front", "Desk", None, 1700, ()),
)


class SuperOfficeHarness(SandboxHarness):
    timeout = TIMEOUT
    write_kinds = WRITE_KINDS
    fault_settings: ClassVar[dict[str, dict[str, Any]]] = {
        "throttle": {"throttle_after": 0, "throttle_calls": 2, "throttle_retry_after": 1.0},
    }
    vendor = "superoffice"
    object_type = "Person"
    read_fields = ("Email", "LegalBase_EMARKETING", "LegalBase_STORE", "Updated_STORE", "Comment_STORE")
    text_field = "Comment_STORE"
    opt_out_field = "LegalBase_EMARKETING"
    opt_out_values = ("CONSENT", "WITHDRAWN")
    text_max_length = 250
    page_size = 50  # rows of the ConsentPurpose archive a page
    write_batch_size = 1  # SuperOffice has no batch call: one SetConsent per consent
    mapping_files = (MAPPINGS / "person.yaml",)
    fault_outcomes: ClassVar[dict[str, FaultOutcome]] = {}

    def __init__(self) -> None:
        self.sandbox = SuperOfficeSandbox(SuperOfficeTenant())

    @staticmethod
    def id_key(record_id: str) -> int:
        return int(record_id)  # person ids are numbers, ordered as numbers

    # -- the tenant's data ---------------------------------------------------------------------

    @property
    def tenant(self) -> SuperOfficeTenant:
        return self.sandbox.tenant

    def seed(self, count: int, *, shared_modstamp: bool = False) -> list[str]:
        ids = []
        for moment in self.seed_times(count, shared_modstamp=shared_modstamp):
            name, email = self.new_name("Contract")
            person = self.tenant.create_person("Contract", name, email, at=moment)
            ids.append(str(person.id))
        return ids

    def record_ids(self) -> list[str]:
        return [str(person_id) for person_id in self.tenant.persons]

    # -- an org used for years (AdoptionHarness) ------------------------------------------------

    def seed_existing_org(self) -> list[str]:
        """Persons written straight into the tenant with their consents, dated from 2019 on (the
        consents' Registered and Updated are SuperOffice's own dates): see ``_EXISTING_ORG``."""
        emails: list[str] = []
        for first, last, email, created, consents in _EXISTING_ORG:
            person = self.tenant.create_person(first, last, email, at=_ORIGIN + created * _DAY)
            for purpose, source, legal_base, comment, day in consents:
                self.tenant.set_consent(
                    person.id, purpose, source, legal_base, comment, at=_ORIGIN + day * _DAY
                )
            if email is not None and email not in emails:
                emails.append(email)
        return emails

    def store_state(self) -> dict[str, dict[str, Any]]:
        """Every person with its own fields and its consent rows (legal basis, source, comment,
        when registered), without the Updated stamps (the person's and the consents')."""
        state: dict[str, dict[str, Any]] = {}
        for person in self.tenant.persons.values():
            fields: dict[str, Any] = {
                "Firstname": person.first_name,
                "MiddleName": person.middle_name,
                "Lastname": person.last_name,
                "Title": person.title,
                "Email": person.email,
                "Phones": {kind: list(values) for kind, values in sorted(person.phones.items())},
                "NoMailings": person.no_mailings,
                "Registered": person.registered.isoformat(),
            }
            for row in self.tenant.consent_rows(person.id):
                key = row.purpose.key
                fields[f"LegalBase_{key}"] = row.legal_base.key
                fields[f"Source_{key}"] = row.source.key
                fields[f"Comment_{key}"] = row.comment
                fields[f"Registered_{key}"] = row.registered.isoformat()
            state[f"Person/{person.id}"] = fields
        return state

    def change(self, record_id: str) -> None:
        self.tenant.set_consent(
            int(record_id), "STORE", "MANUAL", "CONTRACT", f"changed {self.next_serial()}"
        )

    def create_with_text(self, text: str) -> str:
        name, email = self.new_name("Hostile")
        person = self.tenant.create_person("Hostile", name, email)
        self.tenant.set_consent(person.id, "STORE", "MANUAL", "LEGITIMATE", text)
        return str(person.id)

    def read_text(self, record_id: str) -> Any:
        row = self.tenant.consent(int(record_id), "STORE")
        return row.comment if row is not None else None

    def create_person(self, email: str, *, opted_out: bool = False) -> str:
        person = self.tenant.create_person("Demo", self.new_name("Person")[0], email)
        self.tenant.set_consent(person.id, "EMARKETING", "MANUAL", self._emarketing_basis(opted_out), "")
        return str(person.id)

    def _emarketing_basis(self, opted_out: bool) -> str:
        """The legal basis of a new person's e-marketing consent: withdrawn or consent."""
        return self.tenant.withdrawn_legal_base if opted_out else "CONSENT"

    def begin_late_person(self, email: str, *, opted_out: bool = False) -> str:
        """A person (with an e-marketing consent) saved in a transaction that commits late."""
        consent = ("EMARKETING", "MANUAL", self._emarketing_basis(opted_out), "")
        person = self.tenant.begin_late_person("Late", self.new_name("Person")[0], email, [consent])
        return str(person.id)

    def commit_late(self, record_id: str) -> None:
        self.tenant.commit_late(int(record_id))

    def opt_out(self, record_id: str) -> None:
        self.tenant.set_consent(int(record_id), "EMARKETING", "MANUAL", self.tenant.withdrawn_legal_base, "")

    def read_opted_out(self, record_id: str) -> bool:
        row = self.tenant.consent(int(record_id), "EMARKETING")
        return row is not None and row.legal_base.key == self.tenant.withdrawn_legal_base

    # -- faults and counting -------------------------------------------------------------------
