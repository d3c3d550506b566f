"""The Dataverse sandbox as the connector kit sees it (:class:`consentsync.sdk.harness.
ContractHarness`): used by the contract tests and by bench/connector_calls.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from consentsync.sandbox.harness import SandboxHarness
from consentsync.sdk.harness import FaultOutcome
from consentsync_dynamics.sandbox.dataverse import PURPOSES
from consentsync_dynamics.sandbox.server import DynamicsSandbox

MAPPINGS = Path(__file__).resolve().parents[1] / "mappings"  # the connector package's example mappings
WRITE_KINDS = ("batch", "update")
TIMEOUT = 2.0
#: The tables the adoption contract looks at: contact (what the mapping reads and writes) and the
#: consent rows Customer Insights - Journeys keeps beside it, so that a write to either shows.
ADOPTION_TABLES = ("contact", "msdynmkt_contactpointconsent4")
#: Columns every change moves (store_state leaves them out).
CHANGE_STAMPS = frozenset({"modifiedon", "versionnumber"})
#: When the environment went live; every seeded row is created and edited after it, years ago.
ENVIRONMENT_START = dt.datetime(2019, 9, 2, 7, 45, tzinfo=dt.UTC)
_EMAIL_MARKETING, _PROFILING, _SERVICE = PURPOSES
_OPTED_IN, _OPTED_OUT, _NOT_SET = 534120001, 534120002, 534120000
_EMAIL_POINT = 534120000
# msdynmkt_source (a choice): Realtime Marketing Form, Internal, Loaded (an import).
_FORM, _INTERNAL, _LOADED = 534120005, 534120000, 534120003

#: The environment's people in the order they were created: (first name, last name, address,
#: the contact's "Do Not Allow" columns ticked later, consent rows for the address as (purpose
#: id, value, source)). The first four may still receive bulk email (the contract withdraws them
#: on the web site and expects a push).
_PEOPLE: tuple[tuple[str, str, str, tuple[str, ...], tuple[tuple[str, int, int | None], ...]], ...] = (
    ("Ana", "Müller", "ana.mueller@example.test", (), ((_EMAIL_MARKETING, _OPTED_IN, _FORM),)),
    ("Björn", "Lind", "bjorn.lind@example.test", (), ()),
    ("Chloé", "Dubois", "chloe.dubois@example.test", ("donotphone",),
     ((_SERVICE, _OPTED_IN, _INTERNAL),)),
    ("Dmitri", "Rossi", "dmitri.rossi@example.test", ("donotpostalmail",),
     ((_EMAIL_MARKETING, _NOT_SET, _LOADED),)),
    ("Eve", "O'Brien", "eve.obrien@example.test", ("donotbulkemail",),
     ((_EMAIL_MARKETING, _OPTED_OUT, _FORM),)),
    ("Farah", "Okafor", "farah.okafor@example.test", ("donotemail",), ()),
    ("Gus", "Smith", "gus.smith@example.test", ("donotbulkemail", "donotphone", "donotfax"), ()),
    ("Hana", "Nakamura", "hana.nakamura@example.test", (),
     ((_EMAIL_MARKETING, _OPTED_IN, _INTERNAL), (_PROFILING, _OPTED_OUT, _FORM))),
    ("Ivo", "García", "ivo.garcia@example.test", ("donotpostalmail", "donotphone"), ()),
    ("June", "Dubois", "june.dubois@example.test", ("donotbulkemail",), ()),
    ("Kai", "Lind", "kai.lind@example.test", (), ((_SERVICE, _OPTED_OUT, None),)),
    ("Lena", "Müller", "lena.mueller@example.test", ("donotemail", "donotbulkemail"),
     ((_EMAIL_MARKETING, _OPTED_OUT, _FORM),)),
    ("Milo", "Rossi", "milo.rossi@example.test", (), ()),
    ("Nora", "Smith", "nora.smith@example.test", ("donotfax",), ((_EMAIL_MARKETING, _OPTED_IN, _LOADED),)),
    ("Oskar", "Okafor", "oskar.okafor@example.test", ("donotbulkemail",), ()),
    ("Pia", "Nakamura", "pia.nakamura@example.test", (), ((_EMAIL_MARKETING, _NOT_SET, _INTERNAL),)),
    ("Rui", "García", "rui.garcia@example.test", ("donotphone",), ()),
    ("Sara", "O'Brien", "sara.obrien@example.test", (), ((_PROFILING, _OPTED_IN, _FORM),)),
    ("Timo", "Dubois", "timo.dubois@example.test", ("donotbulkemail", "donotpostalmail"), ()),
    ("Uma", "Lind", "uma.lind@example.test", (), ()),
    ("Vik", "Müller", "vik.mueller@example.test", ("donotemail",), ((_SERVICE, _OPTED_OUT, _FORM),)),
    ("Wen", "Rossi", "wen.rossi@example.test", (), ((_EMAIL_MARKETING, _OPTED_IN, _FORM),)),
)  # fmt: skip
#: People on two contacts: (index in _PEOPLE, the second contact's ticked columns, how the second
#: contact ends: "kept" (both active, the address in another letter case), "merged" (merged into
#: the first with the Merge action, deactivated) or "deactivated" (statecode 1 by a user)).
_SECOND_CONTACTS: tuple[tuple[int, tuple[str, ...], str], ...] = (
    (1, (), "kept"),
    (7, ("donotbulkemail",), "kept"),
    (12, ("donotbulkemail",), "merged"),
    (16, (), "kept"),
    (19, ("donotemail",), "deactivated"),
)


class DynamicsHarness(SandboxHarness):
    timeout = TIMEOUT
    write_kinds = WRITE_KINDS
    vendor = "dynamics"
    object_type = "contact"
    read_fields = ("emailaddress1", "donotbulkemail", "donotemail", "description")
    text_field = "description"
    opt_out_field = "donotbulkemail"
    text_max_length = 2000
    page_size = 50  # Prefer: odata.maxpagesize
    write_batch_size = 50  # requests per $batch
    mapping_files = (MAPPINGS / "contact.yaml",)
    fault_outcomes: ClassVar[dict[str, FaultOutcome]] = {}
    own_settings: ClassVar[Mapping[str, Any]] = {"batch_size": write_batch_size, "write_retries": 0}
    store_attribute = "environment"

    def __init__(self) -> None:
        self.sandbox = DynamicsSandbox()

    # -- the environment's data ----------------------------------------------------------------

    def create_named(self, last_name: str, email: str, **fields: Any) -> str:
        return self.store.create("contact", {"lastname": last_name, "emailaddress1": email, **fields})

    def create_person(self, email: str, *, opted_out: bool = False) -> str:
        """A contact with that address, as a Dynamics user would create it."""
        return self.sandbox.environment.create("contact", self._person(email, opted_out))

    # -- an environment used for years (AdoptionHarness) ----------------------------------------

    def seed_existing_org(self) -> list[str]:
        """22 people over six years: contacts with every "Do Not Allow" column ticked somewhere
        and none ticked for others (the flags ticked after the contact was created, as people
        ask), second contacts for five people (kept with the address in another letter case and
        flags that agree or not, merged away, deactivated), and Customer Insights - Journeys
        consent rows for the addresses (opted in, opted out, not set; several purposes)."""
        env = self.sandbox.environment
        emails = []
        for index, (first, last, email, ticked, consents) in enumerate(_PEOPLE):
            created = ENVIRONMENT_START + dt.timedelta(days=67 * index, hours=index % 8, minutes=9 * index)
            with self.clock_at(env, created):
                contact = env.create(
                    "contact",
                    {
                        "firstname": first,
                        "lastname": last,
                        "emailaddress1": email,
                        "emailaddress2": f"{first.lower()}@home.example.test" if index % 4 == 1 else None,
                        "telephone1": f"+44 20 7946 {index:04d}",
                        "mobilephone": f"+44 7700 900{index:03d}" if index % 3 == 0 else None,
                        "description": ("Met at the trade fair", None, "Key account")[index % 3],
                    },
                )
            emails.append(email)
            edited = created + dt.timedelta(days=150 + 7 * index)
            if ticked:
                with self.clock_at(env, edited):
                    env.update("contact", contact, {column: True for column in ticked})
            for number, (purpose, value, source) in enumerate(consents):
                with self.clock_at(env, created + dt.timedelta(days=number, minutes=30)):
                    env.create(
                        "msdynmkt_contactpointconsent4",
                        {
                            "msdynmkt_contactpointvalue": email,
                            "msdynmkt_contactpointtype": _EMAIL_POINT,
                            "msdynmkt_value": value,
                            "_msdynmkt_purposeid_value": purpose,
                            "msdynmkt_source": source,
                        },
                    )
            for position, second_ticked, end in _SECOND_CONTACTS:
                if position != index:
                    continue
                moment = edited + dt.timedelta(days=45)
                with self.clock_at(env, moment):
                    second = env.create(
                        "contact",
                        {
                            "firstname": first,
                            "lastname": last,
                            "emailaddress1": email.upper() if end == "kept" else email,
                            **dict.fromkeys(second_ticked, True),
                        },
                    )
                with self.clock_at(env, moment + dt.timedelta(days=20)):
                    if end == "merged":
                        env.merge("contact", contact, second)
                    elif end == "deactivated":
                        env.update("contact", second, {"statecode": 1})
        return emails

    def store_state(self) -> dict[str, dict[str, Any]]:
        """Every contact and consent row, column by column, without modifiedon and versionnumber."""
        env = self.sandbox.environment
        state = {}
        for logical_name in ADOPTION_TABLES:
            primary = env.table(logical_name).primary_id
            for row in env.records(logical_name):
                state[f"{logical_name}/{row[primary]}"] = {
                    name: value.isoformat() if isinstance(value, dt.datetime) else value
                    for name, value in sorted(row.items())
                    if name not in CHANGE_STAMPS
                }
        return state

    # -- late commits --------------------------------------------------------------------------

    def begin_late_person(self, email: str, *, opted_out: bool = False) -> str:
        """A contact created in a transaction that has not committed (a long plug-in chain)."""
        return self.sandbox.environment.begin_late("contact", self._person(email, opted_out))

    def commit_late(self, record_id: str) -> None:
        self.sandbox.environment.commit_late("contact", record_id)

    # -- deletions and merges ------------------------------------------------------------------

    can_merge = True

    def delete_record(self, record_id: str) -> None:
        self.sandbox.environment.delete("contact", record_id)

    def merge_records(self, survivor_id: str, merged_id: str) -> None:
        """A user merges two contacts (the Merge action): the subordinate is deactivated."""
        self.sandbox.environment.merge("contact", survivor_id, merged_id)

    def opt_out(self, record_id: str) -> None:
        """The user ticks "Bulk Email: Do Not Allow" (email marketing withdrawn); modifiedon moves."""
        self.sandbox.environment.update("contact", record_id, {"donotbulkemail": True})

    def record_ids(self) -> list[str]:
        return [r["contactid"] for r in self.sandbox.environment.records("contact")]

    def change(self, record_id: str) -> None:
        self.sandbox.environment.update("contact", record_id, {"description": f"changed {self._serial}"})

    def _person(self, email: str, opted_out: bool) -> dict[str, Any]:
        """A new contact's columns, as a Dynamics user fills them in."""
        return {
            "lastname": f"Person {self.next_serial()}",
            "emailaddress1": email,
            "donotbulkemail": opted_out,
        }

    def stored(self, record_id: str) -> dict[str, Any]:
        return self.existing(self.sandbox.environment.get("contact", record_id), record_id)

    # -- faults and counting -------------------------------------------------------------------
