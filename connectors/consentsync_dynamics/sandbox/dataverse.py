"""The data behind the Dataverse sandbox: tables (contact, msdynmkt_contactpointconsent4,
msdynmkt_purpose) with their column types, rows, a row version counter for change tracking and
the tombstones of deleted rows, and a repeatable generated seed.

A row created with :meth:`DataverseEnvironment.begin_late` stays invisible to every read until
its transaction commits (:meth:`DataverseEnvironment.commit_late`): it keeps the ``modifiedon``
it was given but takes the row version of the commit, as change tracking orders rows by commit.
:meth:`DataverseEnvironment.merge` is the Merge action (subordinate deactivated, ``merged``,
``masterid``). Every change stamps ``modifiedon`` with the current time in whole seconds (as Dataverse stores
it, so many rows share one second) and takes the next ``versionnumber`` of the environment; a
change-tracking token names the version it was issued at. Every row carries ``createdby`` and
``modifiedby`` (read as ``_createdby_value``, ``_modifiedby_value``): the application user
(:attr:`DataverseEnvironment.user_id`, WhoAmI's UserId) for a change made through the Web API,
a person using the app (:attr:`DataverseEnvironment.crm_user_id`) for one made here directly.

A lookup is written with its navigation property, as the Web API declares it (case matters:
``msdynmkt_purposeId@odata.bind``, the Contact Point Consent table reference's
ReferencingEntityNavigationPropertyName), naming a row of the target table that exists.
:meth:`DataverseEnvironment.add_alternate_key` defines an alternate key (none by default: the
Contact Point Consent reference lists none), which a create or an update whose values are
another row's refuses with 412 ``0x80060892``.
"""

from __future__ import annotations

import random
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from consentsync.sandbox.server import SandboxError

__all__ = [
    "CONSENT_REASONS",
    "CONSENT_SOURCES",
    "CONSENT_TYPES",
    "CONSENT_VALUES",
    "CONTACT_POINT_TYPES",
    "PURPOSES",
    "Column",
    "DataverseEnvironment",
    "RowError",
    "Table",
]

# Customer Insights - Journeys option sets (crm-apis.md; the Contact Point Consent
# (msdynmkt_contactpointconsent4) table/entity reference).
CONTACT_POINT_TYPES = {534120000: "Email", 534120001: "Text", 534120002: "Custom", 534120003: "Voice"}
CONSENT_VALUES = {534120000: "Not set", 534120001: "Opted in", 534120002: "Opted out"}
# msdynmkt_source (global choice msdynmkt_consentsource) and msdynmkt_logicalreason ("Reason",
# msdynmkt_reason); msdynmkt_contactpointconsenttype (msdynmkt_consentlevel).
CONSENT_SOURCES = {
    534120000: "Internal",
    534120001: "Preference page",
    534120002: "Text message",
    534120003: "Loaded",
    534120004: "Preference Center",
    534120005: "Realtime Marketing Form",
    534120006: "Subscription Center",
    534120007: "Email - list-unsubscribe",
}
CONSENT_REASONS = {
    534119999: "No reasons",
    534120000: "Opt-in - Advertisement",
    534120001: "Opt-in - Landing page",
    534120002: "Opt-in - Events",
    534120003: "Opt-out - Content was irrelevant",
    534120004: "Opt-out - Received too frequently",
    534120005: "Opt-out - Didn't recall signing up",
    534120006: "Opt-out - Privacy concerns",
    534120007: "Opt-out - One-click unsubscribe",
}
CONSENT_TYPES = {534120000: "Purpose", 534120001: "Topic"}
# The sandbox's purposes, with fixed ids so that mapping files can name them.
PURPOSES = {
    "6f0b1c7e-0d6a-4c1e-9a51-000000000001": "Email Marketing",
    "6f0b1c7e-0d6a-4c1e-9a51-000000000002": "Profiling",
    "6f0b1c7e-0d6a-4c1e-9a51-000000000003": "Service Communications",
}
_EDM = {
    "Uniqueidentifier": "Edm.Guid",
    "Lookup": "Edm.Guid",
    "String": "Edm.String",
    "Memo": "Edm.String",
    "Boolean": "Edm.Boolean",
    "Picklist": "Edm.Int32",
    "State": "Edm.Int32",
    "Status": "Edm.Int32",
    "Integer": "Edm.Int32",
    "BigInt": "Edm.Int64",
    "DateTime": "Edm.DateTimeOffset",
}


class RowError(SandboxError):
    """A change refused for one row: answered with Dataverse's error body."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # the Web API property name (``_x_value`` for a lookup)
    type: str  # AttributeType
    updatable: bool = True
    options: tuple[int, ...] = ()
    max_length: int | None = None
    logical_name: str | None = None  # a lookup's logical name (without _..._value)
    # A lookup the Web API writes: its navigation property (``{navigation}@odata.bind``, case
    # as declared) and the logical name of the table it points to.
    navigation: str | None = None
    target: str | None = None
    # The column's IsAuditEnabled (its changes recorded where its table and the environment audit).
    audited: bool = True

    @property
    def edm(self) -> str:
        return _EDM[self.type]


@dataclass
class Table:
    logical_name: str
    entity_set: str
    primary_id: str
    columns: dict[str, Column]
    change_tracking: bool = True
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    tombstones: list[tuple[int, str]] = field(default_factory=list)  # (version, id)
    # Rows whose transaction has not committed: no read sees them (see begin_late).
    pending: set[str] = field(default_factory=set)
    # Alternate keys (add_alternate_key): name -> the columns whose values are unique together.
    alternate_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The table's IsAuditEnabled: its rows' changes are recorded where the environment audits.
    audited: bool = False
    # IsOptimisticConcurrencyEnabled: an update or delete with an ETag in If-Match is refused
    # (412) when the row's version is another.
    optimistic_concurrency: bool = True

    def types(self) -> dict[str, str]:
        return {name: column.edm for name, column in self.columns.items()}


def _system_columns(primary: str) -> list[Column]:
    return [
        Column(primary, "Uniqueidentifier", updatable=False),
        Column("modifiedon", "DateTime", updatable=False),
        Column("createdon", "DateTime", updatable=False),
        Column("versionnumber", "BigInt", updatable=False),
        Column("statecode", "State", options=(0, 1)),
        Column("_createdby_value", "Lookup", updatable=False, logical_name="createdby"),
        Column("_modifiedby_value", "Lookup", updatable=False, logical_name="modifiedby"),
    ]


def _table(
    logical_name: str,
    entity_set: str,
    primary_id: str,
    columns: list[Column],
    *,
    change_tracking: bool = True,
) -> Table:
    """A table with the system columns every Dataverse table has, then ``columns``."""
    every = [*_system_columns(primary_id), *columns]
    return Table(
        logical_name, entity_set, primary_id, {c.name: c for c in every}, change_tracking=change_tracking
    )


def _tables() -> dict[str, Table]:
    contact = _table(
        "contact",
        "contacts",
        "contactid",
        [
            Column("firstname", "String", max_length=50),
            Column("lastname", "String", max_length=50),
            Column("fullname", "String", updatable=False),
            Column("emailaddress1", "String", max_length=100),
            Column("emailaddress2", "String", max_length=100),
            Column("emailaddress3", "String", max_length=100),
            Column("telephone1", "String", max_length=50),
            Column("mobilephone", "String", max_length=50),
            Column("description", "Memo", max_length=2000),
            Column("donotemail", "Boolean"),
            Column("donotbulkemail", "Boolean"),
            Column("donotphone", "Boolean"),
            Column("donotpostalmail", "Boolean"),
            Column("donotfax", "Boolean"),
            # Set by the Merge action on the subordinate (deactivated) contact: merged is
            # true and masterid (read as _masterid_value) names the contact that survived.
            Column("merged", "Boolean", updatable=False),
            Column("_masterid_value", "Lookup", updatable=False, logical_name="masterid"),
        ],
    )
    consent = _table(
        "msdynmkt_contactpointconsent4",
        "msdynmkt_contactpointconsent4s",
        "msdynmkt_contactpointconsent4id",
        [
            Column("msdynmkt_contactpointvalue", "String", max_length=400),
            Column("msdynmkt_contactpointtype", "Picklist", options=tuple(CONTACT_POINT_TYPES)),
            Column("msdynmkt_value", "Picklist", options=tuple(CONSENT_VALUES)),
            # Read as _msdynmkt_purposeid_value; written as msdynmkt_purposeId@odata.bind.
            Column(
                "_msdynmkt_purposeid_value",
                "Lookup",
                updatable=False,
                logical_name="msdynmkt_purposeid",
                navigation="msdynmkt_purposeId",
                target="msdynmkt_purpose",
            ),
            # Set on a topic's row (msdynmkt_contactpointconsenttype Topic) beside its purpose.
            Column(
                "_msdynmkt_topicid_value",
                "Lookup",
                updatable=False,
                logical_name="msdynmkt_topicid",
                navigation="msdynmkt_topicId",
            ),
            Column("msdynmkt_contactpointconsenttype", "Picklist", options=tuple(CONSENT_TYPES)),
            Column("msdynmkt_source", "Picklist", options=tuple(CONSENT_SOURCES)),
            Column("msdynmkt_logicalreason", "Picklist", options=tuple(CONSENT_REASONS)),
            Column("msdynmkt_reason", "String", max_length=500),  # "Reason Description"
        ],
    )
    purpose = _table(
        "msdynmkt_purpose",
        "msdynmkt_purposes",
        "msdynmkt_purposeid",
        [Column("msdynmkt_name", "String")],
        change_tracking=False,
    )
    return {t.logical_name: t for t in (contact, consent, purpose)}


class DataverseEnvironment:
    """An environment's data. Thread-safe: every method takes :attr:`lock`."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.lock = threading.RLock()
        self.tables = _tables()
        self.by_set = {t.entity_set: t for t in self.tables.values()}
        self.version = 1_000
        self.organization_id = str(uuid.UUID(int=0x5EED_0000_0000_4000_8000_000000000001))
        self.user_id = str(uuid.UUID(int=0x5EED_0000_0000_4000_8000_000000000002))
        self.business_unit_id = str(uuid.UUID(int=0x5EED_0000_0000_4000_8000_000000000003))
        # Someone using the app (a marketer, Customer Insights - Journeys' own service): the
        # createdby and modifiedby of a change made here directly rather than through the Web API.
        self.crm_user_id = str(uuid.UUID(int=0x5EED_0000_0000_4000_8000_000000000004))
        self.clock = clock or (lambda: datetime.now(UTC))
        self._rng = random.Random(0)
        # Auditing ("Manage Dataverse auditing"): on for the environment (the organization's
        # isauditenabled), a table (Table.audited) and a column (Column.audited), each update of a
        # row records the audited columns it changed, old and new values, as an audit row
        # (operation 2, Update). Off by default, as in a new environment.
        self.auditing = False
        self.audit_log: list[dict[str, Any]] = []
        # Customer Insights - Journeys' audience configuration for contacts: the recipient fields
        # of the email channel ("Select the audience source for journeys": several since the
        # February 2024 release). Journeys checks consent per address (journeys_recipients).
        self.journeys_email_fields: tuple[str, ...] = ("emailaddress1",)
        for purpose_id, name in PURPOSES.items():
            self.create("msdynmkt_purpose", {"msdynmkt_name": name}, record_id=purpose_id)

    def now(self) -> datetime:
        return self.clock().astimezone(UTC).replace(microsecond=0)

    def table(self, logical_name: str) -> Table:
        return self.tables[logical_name]

    # -- changes -------------------------------------------------------------------------------

    def _stamp(self, row: dict[str, Any], moment: datetime | None = None, by: str | None = None) -> None:
        self.version += 1
        row["versionnumber"] = self.version
        row["modifiedon"] = moment or self.now()
        row["_modifiedby_value"] = by or self.crm_user_id

    def convert(self, table: Table, values: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
        """Checks and converts a JSON body's properties; raises RowError as Dataverse words it."""
        out: dict[str, Any] = {}
        lookups = {c.navigation: c for c in table.columns.values() if c.navigation}
        for name, value in values.items():
            if name.endswith("@odata.bind"):
                column = lookups.get(name[: -len("@odata.bind")])
                if column is None:
                    # Property names are case-sensitive: a lookup's logical name (lower case) is
                    # not its navigation property.
                    raise RowError(
                        400,
                        "0x80060888",
                        f"An undeclared property '{name[: -len('@odata.bind')]}' which only has "
                        "property annotations in the payload but no property value was found in the "
                        "payload. In OData, only declared navigation properties and declared named "
                        "streams can be represented as properties without values.",
                    )
                out[column.name] = self._bound(table, column, value)
                continue
            if name.startswith("@") or "@odata." in name:
                continue
            column = table.columns.get(name)
            if column is None:
                raise RowError(
                    400,
                    "0x80060888",
                    f"Invalid property '{name}' was found in entity "
                    f"'Microsoft.Dynamics.CRM.{table.logical_name}'.",
                )
            if not column.updatable and not (creating and name == table.primary_id):
                continue  # read-only columns in a body are ignored, as Dataverse does
            out[name] = _checked(table, column, value)
        return out

    def _bound(self, table: Table, column: Column, value: Any) -> str:
        """The id a ``{navigation}@odata.bind`` names (``/msdynmkt_purposes(id)``, with or
        without the leading slash): a row of the lookup's target table that exists."""
        match = re.fullmatch(r"/?(\w+)\(([^()]*)\)", value) if isinstance(value, str) else None
        target = self.tables.get(column.target) if column.target else None
        if match is None or (target is not None and match.group(1) != target.entity_set):
            raise RowError(
                400,
                "0x80060888",
                f"The value of '{column.navigation}@odata.bind' on '{table.entity_set}' is not a URI "
                f"of a {column.target or 'record'}: {str(value)[:80]!r}.",
            )
        bound = _checked(table, column, match.group(2))
        if target is not None and bound not in target.rows:
            raise RowError(404, "0x80040217", f"{target.logical_name} With Id = {bound} Does Not Exist")
        return str(bound)

    def add_alternate_key(self, logical_name: str, name: str, columns: Iterable[str]) -> None:
        """An alternate key on ``columns`` (Power Apps > Tables > Keys): a create or an update
        that would give two rows the same values for them is refused."""
        with self.lock:
            table = self.tables[logical_name]
            table.alternate_keys[name] = tuple(columns)

    def _check_keys(self, table: Table, row: Mapping[str, Any], record_id: str) -> None:
        for name, columns in table.alternate_keys.items():
            mine = tuple(_key_value(row.get(c)) for c in columns)
            if any(value is None for value in mine):
                continue
            for other_id, other in table.rows.items():
                if other_id != record_id and tuple(_key_value(other.get(c)) for c in columns) == mine:
                    raise RowError(
                        412,
                        "0x80060892",
                        f"A record that has the attribute values {', '.join(columns)} already exists. "
                        f"The entity key {name} requires that this set of attributes contains unique "
                        "values. Select unique values and try again.",
                    )

    def create(
        self,
        logical_name: str,
        values: Mapping[str, Any],
        *,
        record_id: str | None = None,
        by: str | None = None,
    ) -> str:
        """A new row; ``by``: the user making it (someone using the app by default)."""
        with self.lock:
            table = self.tables[logical_name]
            new_id = (record_id or str(uuid.UUID(int=self._rng.getrandbits(128), version=4))).lower()
            if new_id in table.rows:
                raise RowError(412, "0x80040237", "A record with matching key values already exists.")
            now = self.now()
            row: dict[str, Any] = {name: None for name in table.columns}
            row.update({name: False for name, c in table.columns.items() if c.type == "Boolean"})
            row.update(values)
            row[table.primary_id] = new_id
            row["createdon"] = now
            row["_createdby_value"] = by or self.crm_user_id
            row["statecode"] = row.get("statecode") or 0
            if logical_name == "contact":
                row["fullname"] = (
                    " ".join(p for p in (row.get("firstname"), row.get("lastname")) if p) or None
                )
            self._check_keys(table, row, new_id)
            self._stamp(row, now, by)
            table.rows[new_id] = row
            return new_id

    def update(
        self, logical_name: str, record_id: str, values: Mapping[str, Any], *, by: str | None = None
    ) -> None:
        """Changes a row; ``by``: the user making the change (someone using the app by default)."""
        with self.lock:
            table = self.tables[logical_name]
            row = table.rows.get(record_id.lower())
            if row is None:
                raise RowError(404, "0x80040217", f"{logical_name} With Id = {record_id} Does Not Exist")
            if table.alternate_keys:
                self._check_keys(table, {**row, **values}, record_id.lower())
            before = dict(row)
            row.update(values)
            if logical_name == "contact":
                row["fullname"] = (
                    " ".join(p for p in (row.get("firstname"), row.get("lastname")) if p) or None
                )
            self._stamp(row, by=by)
            self._audit(table, record_id.lower(), before, row)

    def _audit(
        self, table: Table, record_id: str, before: Mapping[str, Any], after: Mapping[str, Any]
    ) -> None:
        """An update's audit row, where the environment and the table audit: the audited columns
        it changed, with their old and new values."""
        if not (self.auditing and table.audited):
            return
        changed = [
            name
            for name, column in table.columns.items()
            if column.audited
            and name not in ("modifiedon", "versionnumber", "_modifiedby_value")
            and before.get(name) != after.get(name)
        ]
        if changed:
            self.audit_log.append(
                {
                    "auditid": str(uuid.uuid4()),
                    "objecttypecode": table.logical_name,
                    "objectid": record_id,
                    "createdon": after["modifiedon"],
                    "operation": 2,  # Update
                    "action": 2,  # Update
                    "old": {name: before.get(name) for name in changed},
                    "new": {name: after.get(name) for name in changed},
                }
            )

    def audit_history(self, logical_name: str, record_id: str) -> list[dict[str, Any]]:
        """The audit rows of one row, newest first."""
        with self.lock:
            rows = [
                entry
                for entry in self.audit_log
                if entry["objecttypecode"] == logical_name and entry["objectid"] == record_id.lower()
            ]
        return list(reversed(rows))

    def journeys_recipients(self, contact_id: str, purpose_id: str) -> list[str]:
        """The addresses Journeys may email a contact at for a purpose whose enforcement model is
        non-restrictive: each address the contact holds in :attr:`journeys_email_fields` without
        an Opted out (534120002) purpose-level Email consent row for the purpose, active or not
        ("Manage user compliance settings": consent is checked per contact point value)."""
        with self.lock:
            contact = self.get("contact", contact_id)
            if contact is None:
                return []
            opted_out = {
                str(row["msdynmkt_contactpointvalue"]).casefold()
                for row in self.records("msdynmkt_contactpointconsent4")
                if row.get("msdynmkt_value") == 534120002
                and row.get("msdynmkt_contactpointtype") == 534120000
                and row.get("_msdynmkt_topicid_value") is None
                and str(row.get("_msdynmkt_purposeid_value") or "").lower() == purpose_id.lower()
                and isinstance(row.get("msdynmkt_contactpointvalue"), str)
            }
            found: dict[str, str] = {}
            for field in self.journeys_email_fields:
                value = contact.get(field)
                if isinstance(value, str) and "@" in value and value.strip().casefold() not in opted_out:
                    found.setdefault(value.strip().casefold(), value.strip())
            return list(found.values())

    def begin_late(self, logical_name: str, values: Mapping[str, Any]) -> str:
        """A row created in a transaction that has not committed (a long plug-in chain, a bulk
        job): its id and ``modifiedon`` are given now, but no read sees it until
        :meth:`commit_late`."""
        with self.lock:
            new_id = self.create(logical_name, values)
            self.tables[logical_name].pending.add(new_id)
            return new_id

    def commit_late(self, logical_name: str, record_id: str) -> None:
        """The transaction commits: the row becomes visible with its original ``modifiedon``,
        and takes the row version of the commit (change tracking orders by commit), so the
        next delta hands it over."""
        with self.lock:
            table = self.tables[logical_name]
            table.pending.discard(record_id.lower())
            self.version += 1
            table.rows[record_id.lower()]["versionnumber"] = self.version

    def merge(self, logical_name: str, target_id: str, subordinate_id: str, *, by: str | None = None) -> None:
        """The Merge action: the subordinate row is deactivated (statecode 1), ``merged`` set
        and ``masterid`` pointed at the target; both rows are stamped."""
        with self.lock:
            table = self.tables[logical_name]
            target, subordinate = table.rows.get(target_id.lower()), table.rows.get(subordinate_id.lower())
            if target is None or subordinate is None or target is subordinate:
                raise RowError(404, "0x80040217", f"{logical_name} to merge does not exist")
            if subordinate.get("merged"):
                raise RowError(400, "0x8004d2a9", "The subordinate record has already been merged.")
            subordinate.update({"statecode": 1, "merged": True, "_masterid_value": target_id.lower()})
            self._stamp(subordinate, by=by)
            self._stamp(target, by=by)

    def delete(self, logical_name: str, record_id: str) -> None:
        with self.lock:
            table = self.tables[logical_name]
            if record_id.lower() in table.pending or table.rows.pop(record_id.lower(), None) is None:
                raise RowError(404, "0x80040217", f"{logical_name} With Id = {record_id} Does Not Exist")
            self.version += 1
            table.tombstones.append((self.version, record_id.lower()))

    def get(self, logical_name: str, record_id: str) -> dict[str, Any] | None:
        with self.lock:
            table = self.tables[logical_name]
            row = table.rows.get(record_id.lower())
            return dict(row) if row is not None and record_id.lower() not in table.pending else None

    def records(self, logical_name: str) -> list[dict[str, Any]]:
        with self.lock:
            table = self.tables[logical_name]
            return [dict(row) for key, row in table.rows.items() if key not in table.pending]

    def count(self, logical_name: str) -> int:
        with self.lock:
            table = self.tables[logical_name]
            return len(table.rows) - len(table.pending)

    def changes_since(self, table: Table, version: int) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows changed after ``version`` (in version order) and ids deleted after it."""
        with self.lock:
            changed = sorted(
                (
                    dict(r)
                    for key, r in table.rows.items()
                    if r["versionnumber"] > version and key not in table.pending
                ),
                key=lambda r: r["versionnumber"],
            )
            deleted = [rid for v, rid in table.tombstones if v > version and rid not in table.rows]
            return changed, deleted

    # -- seeding -------------------------------------------------------------------------------

    def seed(self, contacts: int, *, seed: int = 1, spread_days: int = 30) -> dict[str, list[str]]:
        """Generates ``contacts`` contacts (about one in ten sharing another's address), and
        consent records for most of them, stamped in the past with many sharing a second."""
        rng = random.Random(seed)
        self._rng = random.Random(seed + 1)
        first = ["Ana", "Björn", "Chloé", "Dmitri", "Eve", "Farah", "Gus", "Hana", "Ivo", "June", "Kai"]
        last = ["O'Brien", "Müller", "Nakamura", "Smith", "García", "Okafor", "Lind", "Rossi", "Dubois"]
        start = self.now() - timedelta(days=spread_days)
        made: dict[str, list[str]] = {"contacts": [], "consents": []}
        emails: list[str] = []
        with self.lock:
            for index in range(contacts):
                if emails and rng.random() < 0.1:
                    email = rng.choice(emails).upper()  # a duplicate, spelt differently
                else:
                    email = f"person{seed}-{index}@example.test"
                    emails.append(email)
                moment = start + timedelta(seconds=(index // 4) * 7)
                new_id = self.create(
                    "contact",
                    {
                        "firstname": rng.choice(first),
                        "lastname": rng.choice(last),
                        "emailaddress1": email,
                        "telephone1": f"+44 20 7946 {index % 10000:04d}",
                        "donotemail": rng.random() < 0.1,
                        "donotbulkemail": rng.random() < 0.25,
                        "donotphone": rng.random() < 0.15,
                        "donotpostalmail": rng.random() < 0.05,
                        "donotfax": rng.random() < 0.05,
                    },
                )
                self._backdate("contact", new_id, moment)
                made["contacts"].append(new_id)
                if rng.random() < 0.6:
                    kind = rng.choice([534120000, 534120000, 534120000, 534120001, 534120003])
                    value = email.lower() if kind == 534120000 else f"+44 7700 9{index % 100000:05d}"
                    consent_id = self.create(
                        "msdynmkt_contactpointconsent4",
                        {
                            "msdynmkt_contactpointvalue": value,
                            "msdynmkt_contactpointtype": kind,
                            "msdynmkt_value": rng.choice([534120000, 534120001, 534120001, 534120002]),
                            "_msdynmkt_purposeid_value": rng.choice(list(PURPOSES)),
                            # Realtime Marketing Form, Internal, Loaded or none.
                            "msdynmkt_source": rng.choice([534120005, 534120000, 534120003, None]),
                        },
                    )
                    self._backdate("msdynmkt_contactpointconsent4", consent_id, moment)
                    made["consents"].append(consent_id)
        return made

    def _backdate(self, logical_name: str, record_id: str, moment: datetime) -> None:
        row = self.tables[logical_name].rows[record_id]
        row["modifiedon"] = row["createdon"] = moment.replace(microsecond=0)

    def rows_matching(
        self, table: Table, keep: Callable[[Mapping[str, Any]], bool]
    ) -> Iterable[dict[str, Any]]:
        with self.lock:
            return [dict(r) for key, r in table.rows.items() if key not in table.pending and keep(r)]


def _key_value(value: Any) -> Any:
    # Text compares as SQL Server's default collation does: without regard to case.
    return value.casefold() if isinstance(value, str) else value


def _checked(table: Table, column: Column, value: Any) -> Any:
    def refuse(expected: str) -> RowError:
        shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
        return RowError(
            400,
            "0x80048d19",
            f"Error identified in Payload provided by the user for Entity :'{table.entity_set}', "
            f"For more information on this error please follow this help link "
            f"https://go.microsoft.com/fwlink/?linkid=2195293 ---->  InnerException : "
            f"Microsoft.OData.ODataException: Cannot convert the literal '{shown}' to the expected type "
            f"'{expected}'.",
        )

    if value is None:
        return None
    if column.type == "Boolean":
        if not isinstance(value, bool):
            raise refuse("Edm.Boolean")
        return value
    if column.type in ("Picklist", "State", "Status", "Integer", "BigInt"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise refuse("Edm.Int32")
        if column.options and value not in column.options:
            raise RowError(
                400,
                "0x8004431a",
                f"A validation error occurred. The value {value} of '{column.name}' on record of type "
                f"'{table.logical_name}' is outside the valid range. Accepted Values: "
                f"{','.join(str(o) for o in column.options)}",
            )
        return value
    if column.type in ("String", "Memo"):
        if not isinstance(value, str):
            raise refuse("Edm.String")
        # MaxLength counts UTF-16 code units, as SQL Server's nvarchar(n) stores byte-pairs: a
        # character beyond the Basic Multilingual Plane (an emoji) takes two of them.
        if column.max_length is not None and len(value.encode("utf-16-le")) // 2 > column.max_length:
            raise RowError(
                400,
                "0x80044331",
                f"A validation error occurred. The length of the '{column.name}' attribute of the "
                f"'{table.logical_name}' entity exceeded the maximum allowed length of "
                f"'{column.max_length}'.",
            )
        return value
    if column.type in ("Lookup", "Uniqueidentifier"):
        try:
            return str(uuid.UUID(str(value))).lower()
        except ValueError:
            raise refuse("Edm.Guid") from None
    if column.type == "DateTime":
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            raise refuse("Edm.DateTimeOffset") from None
    return value
