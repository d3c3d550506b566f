"""The sandbox org: schema, an in-memory, thread-safe record store, validation as Salesforce
applies it on update, and seeding with realistic consent data.

Values are kept as Python values (str, bool, aware UTC datetimes with whole-second precision,
None) and rendered in Salesforce's JSON layout (``2026-11-23T03:21:24.000+0000``) on the way out.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from consentsync.sandbox.people import crowded_seconds, random_person
from consentsync_salesforce.sandbox.ids import KEY_PREFIXES, IdGenerator, org_id, to18
from consentsync_salesforce.sandbox.soql import TEXT_TYPES, BoundQuery, bind, parse, parse_datetime_literal

__all__ = [
    "LEGAL_BASIS_VALUES",
    "STANDARD_MATCHING_FIELDS",
    "ApiError",
    "Automation",
    "DuplicateRule",
    "FieldDef",
    "ObjectDef",
    "RecordError",
    "SalesforceOrg",
    "format_datetime",
    "parse_api_datetime",
]

LEGAL_BASIS_VALUES = (
    "Consent",
    "Legitimate Interest",
    "Contract",
    "Legal Obligation",
    "Vital Interests",
    "Public Task",
)
CONTACT_POINT_TYPES = ("Email", "MailingAddress", "Phone", "Social", "Web")
PRIVACY_CONSENT_STATUSES = ("OptIn", "OptOut", "Seen", "NotSeen")
LEAD_STATUSES = (
    "Open - Not Contacted",
    "Working - Contacted",
    "Closed - Converted",
    "Closed - Not Converted",
)
LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")

MERGEABLE = ("Contact", "Lead")  # the objects of this org that merge() accepts
CONVERTED_STATUS = "Closed - Converted"  # the one lead status of this org with IsConverted true
# The standard lead fields a conversion copies to the contact, among those this org has (Salesforce
# Help, *Lead Conversion Field Mapping*): lead field -> contact field.
_LEAD_TO_CONTACT = {
    "OwnerId": "OwnerId",
    "FirstName": "FirstName",
    "LastName": "LastName",
    "Email": "Email",
    "Phone": "Phone",
    "Country": "MailingCountry",
    "LeadSource": "LeadSource",
    "HasOptedOutOfEmail": "HasOptedOutOfEmail",
    "HasOptedOutOfFax": "HasOptedOutOfFax",
    "DoNotCall": "DoNotCall",
    "IndividualId": "IndividualId",
}
# "This field isn't updated for leads converted to existing contacts" (the same page).
_NOT_ON_EXISTING_CONTACTS = frozenset({"HasOptedOutOfEmail", "DoNotCall"})

_EMAIL_RE = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$"
)


def format_datetime(value: dt.datetime) -> str:
    """Salesforce's JSON layout for a dateTime: ``2026-11-23T03:21:24.000+0000`` (UTC)."""
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def parse_api_datetime(text: str) -> dt.datetime | None:
    """Parse a dateTime as clients send it in JSON or CSV (``...Z``, ``...+00:00``, ``...+0000``,
    optional fraction) to an aware UTC datetime; None when unparseable."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    parsed = parse_datetime_literal(text)
    if parsed is not None:
        return parsed
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


class RecordError(Exception):
    """A per-record failure: a SaveResult error (``statusCode``, ``message``, ``fields``)."""

    def __init__(
        self,
        status_code: str,
        message: str,
        fields: Sequence[str] = (),
        *,
        more: Mapping[str, Any] | None = None,
    ):
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.fields = list(fields)
        # More of the SaveResult error's entries (a duplicate rule's ``duplicateResult``).
        self.more = dict(more or {})

    def as_save_error(self) -> dict[str, Any]:
        return {
            "statusCode": self.status_code,
            "message": self.message,
            "fields": list(self.fields),
            **self.more,
        }

    def as_bulk_error(self) -> str:
        fields = ",".join(self.fields)
        return f"{self.status_code}:{self.message}:{fields + ' ' if fields else ''}--"


class ApiError(Exception):
    """A request-level failure: HTTP status and a Salesforce error body entry."""

    def __init__(self, status: int, error_code: str, message: str, fields: Sequence[str] | None = None):
        super().__init__(f"{status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message
        self.fields = list(fields) if fields is not None else None

    def body(self) -> list[dict[str, Any]]:
        entry: dict[str, Any] = {"message": self.message, "errorCode": self.error_code}
        if self.fields is not None:
            entry["fields"] = self.fields
        return [entry]


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str
    label: str
    updateable: bool = True
    createable: bool = True
    nillable: bool = True
    length: int = 0
    picklist: tuple[str, ...] = ()
    restricted: bool = False
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    custom: bool = False
    default: Any = None
    unique: bool = False
    name_field: bool = False
    calculated: bool = False

    @property
    def soap_type(self) -> str:
        return {
            "id": "tns:ID",
            "reference": "tns:ID",
            "boolean": "xsd:boolean",
            "datetime": "xsd:dateTime",
            "date": "xsd:date",
        }.get(self.type, "xsd:string")

    def describe(self) -> dict[str, Any]:
        return {
            "aggregatable": self.type not in ("boolean", "textarea"),
            "autoNumber": False,
            "byteLength": self.length * 3,
            "calculated": self.calculated,
            "caseSensitive": False,
            "createable": self.createable,
            "custom": self.custom,
            "defaultValue": self.default,
            "defaultedOnCreate": self.default is not None or self.name in _SYSTEM_FIELDS,
            "externalId": False,
            "filterable": True,
            "groupable": self.type not in ("datetime", "textarea"),
            "idLookup": self.type == "id" or self.name == "Email",
            "label": self.label,
            "length": self.length,
            "name": self.name,
            "nameField": self.name_field,
            "nillable": self.nillable,
            "picklistValues": [
                {
                    "active": True,
                    "defaultValue": value == self.default,
                    "label": value,
                    "validFor": None,
                    "value": value,
                }
                for value in self.picklist
            ],
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship_name,
            "restrictedPicklist": self.restricted,
            "soapType": self.soap_type,
            "sortable": self.type != "textarea",
            "type": self.type,
            "unique": self.unique,
            "updateable": self.updateable,
        }


_READ_ONLY_HINT = (
    "Please check the security settings of this field and verify that it is read/write for your profile or "
    "permission set."
)
_SYSTEM_FIELDS = (
    "Id",
    "IsDeleted",
    "CreatedDate",
    "CreatedById",
    "LastModifiedDate",
    "LastModifiedById",
    "SystemModstamp",
)


@dataclass
class ObjectDef:
    name: str
    label: str
    label_plural: str
    key_prefix: str
    fields: dict[str, FieldDef]
    custom: bool = False
    _by_lower: dict[str, FieldDef] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_lower = {name.lower(): f for name, f in self.fields.items()}

    def field(self, name: str) -> FieldDef | None:
        return self._by_lower.get(name.lower())

    @property
    def has_person_name(self) -> bool:
        return "FirstName" in self.fields and "Name" in self.fields

    def urls(self, version: str) -> dict[str, str]:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            "compactLayouts": f"{base}/describe/compactLayouts",
            "rowTemplate": f"{base}/{{ID}}",
            "describe": f"{base}/describe",
            "sobject": base,
        }

    def summary(self, version: str) -> dict[str, Any]:
        return {
            "activateable": False,
            "createable": True,
            "custom": self.custom,
            "customSetting": False,
            "deletable": True,
            "deprecatedAndHidden": False,
            "feedEnabled": False,
            "keyPrefix": self.key_prefix,
            "label": self.label,
            "labelPlural": self.label_plural,
            "layoutable": True,
            "mergeable": self.name in ("Contact", "Lead"),
            "mruEnabled": True,
            "name": self.name,
            "queryable": True,
            "replicateable": True,
            "retrieveable": True,
            "searchable": True,
            "triggerable": True,
            "undeletable": True,
            "updateable": True,
            "urls": self.urls(version),
        }

    def describe(self, version: str) -> dict[str, Any]:
        out = self.summary(version)
        out.update(
            {
                "childRelationships": [],
                "fields": [f.describe() for f in self.fields.values()],
                "recordTypeInfos": [],
                "supportedScopes": [{"label": "All " + self.label_plural.lower(), "name": "everything"}],
            }
        )
        return out


def _system_fields() -> list[FieldDef]:
    return [
        _read_only("Id", "id", "Record ID", length=18, unique=True),
        _read_only("IsDeleted", "boolean", "Deleted", default=False),
        _read_only("CreatedDate", "datetime", "Created Date"),
        _user_reference("CreatedById", "Created By ID", "CreatedBy"),
        _read_only("LastModifiedDate", "datetime", "Last Modified Date"),
        _user_reference("LastModifiedById", "Last Modified By ID", "LastModifiedBy"),
        _read_only("SystemModstamp", "datetime", "System Modstamp"),
    ]


def _read_only(name: str, type_: str, label: str, **more: Any) -> FieldDef:
    """A field only Salesforce writes: never updateable, createable or empty."""
    return FieldDef(name, type_, label, updateable=False, createable=False, nillable=False, **more)


def _user_reference(name: str, label: str, relationship: str) -> FieldDef:
    """A read-only reference to the User who did something to the record."""
    return _read_only(
        name, "reference", label, length=18, reference_to=("User",), relationship_name=relationship
    )


def _person_fields(last_required: bool = True) -> list[FieldDef]:
    return [
        FieldDef("FirstName", "string", "First Name", length=40),
        FieldDef("LastName", "string", "Last Name", length=80, nillable=not last_required),
        FieldDef(
            "Name",
            "string",
            "Full Name",
            updateable=False,
            createable=False,
            nillable=False,
            length=121,
            name_field=True,
            calculated=True,
        ),
    ]


def _consent_fields() -> list[FieldDef]:
    return [
        FieldDef("HasOptedOutOfEmail", "boolean", "Email Opt Out", nillable=False, default=False),
        FieldDef("HasOptedOutOfFax", "boolean", "Fax Opt Out", nillable=False, default=False),
        FieldDef("DoNotCall", "boolean", "Do Not Call", nillable=False, default=False),
        FieldDef(
            "IndividualId",
            "reference",
            "Individual ID",
            length=18,
            reference_to=("Individual",),
            relationship_name="Individual",
        ),
        FieldDef(
            "Legal_Basis__c",
            "picklist",
            "Legal Basis",
            length=255,
            picklist=LEGAL_BASIS_VALUES,
            restricted=True,
            custom=True,
        ),
    ]


def _master_record(sobject: str) -> FieldDef:
    """Set by a merge on the records merged away (deleted): the id of the record that survived."""
    return FieldDef(
        "MasterRecordId",
        "reference",
        "Master Record ID",
        updateable=False,
        createable=False,
        length=18,
        reference_to=(sobject,),
        relationship_name="MasterRecord",
    )


def _conversion_fields() -> list[FieldDef]:
    """Set by a lead's conversion (Lead object reference; Change Events for Lead Conversion): the
    date (no time) and the records the lead was converted into. Only the conversion writes them."""

    def made(name: str, label: str, target: str, relationship: str) -> FieldDef:
        return FieldDef(
            name,
            "reference",
            label,
            updateable=False,
            createable=False,
            length=18,
            reference_to=(target,),
            relationship_name=relationship,
        )

    return [
        FieldDef("ConvertedDate", "date", "Converted Date", updateable=False, createable=False),
        made("ConvertedAccountId", "Converted Account ID", "Account", "ConvertedAccount"),
        made("ConvertedContactId", "Converted Contact ID", "Contact", "ConvertedContact"),
    ]


def _owner() -> FieldDef:
    return FieldDef(
        "OwnerId",
        "reference",
        "Owner ID",
        nillable=False,
        length=18,
        reference_to=("User",),
        relationship_name="Owner",
    )


def build_schema() -> dict[str, ObjectDef]:
    def obj(name: str, label: str, plural: str, fields: Iterable[FieldDef]) -> ObjectDef:
        system = _system_fields()
        ordered = [system[0], *fields, *system[1:]]
        return ObjectDef(name, label, plural, KEY_PREFIXES[name], {f.name: f for f in ordered})

    contact = obj(
        "Contact",
        "Contact",
        "Contacts",
        [
            _owner(),
            *_person_fields(),
            FieldDef(
                "Salutation",
                "picklist",
                "Salutation",
                length=40,
                picklist=("Mr.", "Ms.", "Mrs.", "Dr.", "Prof."),
            ),
            FieldDef("Email", "email", "Email", length=80),
            FieldDef("Phone", "phone", "Business Phone", length=40),
            FieldDef("Title", "string", "Title", length=128),
            FieldDef("MailingCountry", "string", "Mailing Country", length=80),
            FieldDef("LeadSource", "picklist", "Lead Source", length=255, picklist=LEAD_SOURCES),
            *_consent_fields(),
            _master_record("Contact"),
        ],
    )
    lead = obj(
        "Lead",
        "Lead",
        "Leads",
        [
            _owner(),
            *_person_fields(),
            FieldDef("Company", "string", "Company", length=255, nillable=False),
            FieldDef("Email", "email", "Email", length=80),
            FieldDef("Phone", "phone", "Phone", length=40),
            FieldDef("Country", "string", "Country", length=80),
            FieldDef(
                "Status",
                "picklist",
                "Status",
                length=255,
                nillable=False,
                picklist=LEAD_STATUSES,
                restricted=True,
                default=LEAD_STATUSES[0],
            ),
            FieldDef("LeadSource", "picklist", "Lead Source", length=255, picklist=LEAD_SOURCES),
            FieldDef("IsConverted", "boolean", "Converted", updateable=False, nillable=False, default=False),
            *_conversion_fields(),
            *_consent_fields(),
            _master_record("Lead"),
        ],
    )
    individual = obj(
        "Individual",
        "Individual",
        "Individuals",
        [
            _owner(),
            *_person_fields(),
            *(
                FieldDef(name, "boolean", label, nillable=False, default=False)
                for name, label in (
                    ("HasOptedOutProcessing", "Don't Process"),
                    ("HasOptedOutSolicit", "Don't Solicit"),
                    ("HasOptedOutProfiling", "Don't Profile"),
                    ("HasOptedOutTracking", "Don't Track"),
                    ("HasOptedOutGeoTracking", "Don't Track Location"),
                    ("CanStorePiiElsewhere", "OK to Store PII Data Elsewhere"),
                    ("ShouldForget", "Forget this Individual"),
                    ("SendIndividualData", "Export Individual's Data"),
                )
            ),
        ],
    )
    purpose = obj(
        "DataUsePurpose",
        "Data Use Purpose",
        "Data Use Purposes",
        [
            FieldDef("Name", "string", "Name", nillable=False, length=255, name_field=True),
            FieldDef("Description", "textarea", "Description", length=1000),
            FieldDef(
                "CanDataSubjectOptOut", "boolean", "Can Data Subject Opt Out", nillable=False, default=False
            ),
        ],
    )
    consent = obj(
        "ContactPointTypeConsent",
        "Contact Point Type Consent",
        "Contact Point Type Consents",
        [
            _owner(),
            FieldDef("Name", "string", "Name", nillable=False, length=255, name_field=True),
            FieldDef(
                "PartyId",
                "reference",
                "Party ID",
                nillable=False,
                length=18,
                reference_to=("Individual",),
                relationship_name="Party",
            ),
            FieldDef(
                "ContactPointType",
                "picklist",
                "Contact Point Type",
                length=255,
                picklist=CONTACT_POINT_TYPES,
                restricted=True,
            ),
            FieldDef(
                "CaptureContactPointType",
                "picklist",
                "Capture Contact Point Type",
                length=255,
                picklist=CONTACT_POINT_TYPES,
                restricted=True,
            ),
            FieldDef("CaptureDate", "datetime", "Capture Date"),
            FieldDef("CaptureSource", "string", "Capture Source", length=255),
            FieldDef(
                "DataUsePurposeId",
                "reference",
                "Data Use Purpose ID",
                length=18,
                reference_to=("DataUsePurpose",),
                relationship_name="DataUsePurpose",
            ),
            FieldDef("DoubleConsentCaptureDate", "datetime", "Double Consent Capture Date"),
            FieldDef("EffectiveFrom", "datetime", "Effective From"),
            FieldDef("EffectiveTo", "datetime", "Effective To"),
            FieldDef(
                "PrivacyConsentStatus",
                "picklist",
                "Privacy Consent Status",
                length=255,
                picklist=PRIVACY_CONSENT_STATUSES,
                restricted=True,
            ),
        ],
    )
    return {o.name: o for o in (contact, lead, individual, purpose, consent)}


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class _Planned:
    record_id: str
    sobject: ObjectDef
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Automation:
    """A record-triggered flow (or Apex trigger) of the org: a save that changes ``field`` of a
    ``sobject`` record to ``value`` also sets ``sets`` on that record, in the same save. As in
    Salesforce, the automation runs as the user whose save fired it: the record's
    LastModifiedById, LastModifiedDate and SystemModstamp are that save's (the API's integration
    user for a write through the API), with nothing to tell its changes from the save's own."""

    sobject: str
    field: str
    value: Any
    sets: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DuplicateRule:
    """An active duplicate rule of the org (Setup > Duplicate Rules) and its matching rule: a
    save of a ``sobject`` record whose ``fields`` all equal (ignoring case; none empty) those of
    another live record of ``sobject`` finds that record a duplicate. ``criteria`` are the fields
    of the matching rule's criteria (``fields`` and, by default, those of Salesforce's standard
    contact and lead matching rules: names, title, company, email, phone, address, where the
    object has them). The rule runs on an edit only where the edit changes one of them: "duplicate
    rules are only triggered when a change is detected in the fields defined in the Matching
    Criteria. Even with update operations using Data Loader, if the values of the matching fields
    [...] are not changed, the duplicate rule is not triggered" (Salesforce Help, Knowledge
    article 005237351). A consent flag's write never runs it. ``on_edit`` is the rule's *Action on
    Edit*:

    * ``"alert"``: Allow, with Alert. A user in the UI acknowledges the alert and saves; through
      the API the save is refused with DUPLICATES_DETECTED unless the call says
      ``allowSave=true`` (REST: the ``Sforce-Duplicate-Rule-Header``, API version 52.0 and later;
      "The default value for all fields is false"). Bulk API 2.0 takes no such header.
    * ``"block"``: Block. Refused whatever the call says.

    The error is the rule's ``alert_text``, with a ``duplicateResult`` naming the rule and the
    matching records' ids (never their fields: ``includeRecordDetails`` is not modelled)."""

    sobject: str
    on_edit: str = "alert"
    fields: tuple[str, ...] = ("Email",)
    name: str = "Standard_Rule"
    alert_text: str = "Use one of these records?"
    criteria: tuple[str, ...] = ("Email",)

    def runs_on(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
        """Whether an edit from ``before`` to ``after`` runs the rule: it changes a field of the
        matching rule's criteria."""
        return any(before.get(name) != after.get(name) for name in self.criteria)


# The fields of Salesforce's standard contact and lead matching rules (Salesforce Help, *Standard
# Contact Matching Rule and Standard Lead Matching Rule*: First Name, Last Name, Title, Account
# Name / Company, Email, Phone, Mailing Street, City, ZIP), as each object names them.
STANDARD_MATCHING_FIELDS = {
    "Contact": (
        "FirstName",
        "LastName",
        "Title",
        "AccountId",
        "Email",
        "Phone",
        "MailingStreet",
        "MailingCity",
        "MailingPostalCode",
    ),
    "Lead": ("FirstName", "LastName", "Title", "Company", "Email", "Phone", "Street", "City", "PostalCode"),
}


class SalesforceOrg:
    """An org's data: records of Contact, Lead, Individual, ContactPointTypeConsent and
    DataUsePurpose, keyed by 18-character id. All methods are thread-safe.

    The helpers :meth:`create`, :meth:`update`, :meth:`delete`, :meth:`merge` and :meth:`touch`
    act as a user in Salesforce would: they validate like the API and stamp ``LastModifiedDate`` /
    ``SystemModstamp`` with the current second (from :attr:`clock`).

    Deleted records stay in the store as Salesforce's recycle bin keeps them: ``IsDeleted`` true,
    ``SystemModstamp`` moved to the deletion, ``MasterRecordId`` naming the survivor of a merge.
    Only ``queryAll`` (``include_deleted``) and ``/deleted/`` show them.

    A lead converted (:meth:`convert_lead`) is not deleted: every query still shows it, with
    ``IsConverted`` true and the contact it went into, and no write may change it any more.

    :meth:`begin_create` and :meth:`commit` make a record whose transaction commits late: its id
    and stamps are given when it begins, but no read sees it until it commits.

    Saves are the integration user's (:attr:`user_id`, whom the API logs in as) unless a helper
    is called inside :meth:`acting_as` another user (:meth:`new_user`: a sales user, a site or
    portal user). :meth:`automate` adds a record-triggered automation (:class:`Automation`).

    The org's setup, off by default as in a new org: :meth:`add_duplicate_rule` (an active
    duplicate rule, :class:`DuplicateRule`) and :meth:`activate_lead_assignment_rule` (an active
    lead assignment rule, which the REST API applies to every Lead it creates or updates unless
    the call's ``Sforce-Auto-Assign`` header says FALSE).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        ids: IdGenerator | None = None,
        username: str = "integration@consentsync.sandbox",
    ) -> None:
        self.ids = ids or IdGenerator()
        self.org_id = org_id(self.ids.pod)
        self.user_id = self.ids.new(KEY_PREFIXES["User"])
        self.username = username
        self.clock: Callable[[], dt.datetime] = clock or _utc_now
        self.schema = build_schema()
        self._by_lower = {name.lower(): o for name, o in self.schema.items()}
        self._by_prefix = {o.key_prefix: o for o in self.schema.values()}
        self._records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.schema}
        self._deleted: list[tuple[str, str, dt.datetime]] = []  # (sobject, id, deleted at)
        # Records whose creating transaction has not committed yet: no read sees them (see
        # begin_create), so they live outside _records until commit().
        self._uncommitted: dict[str, tuple[ObjectDef, dict[str, Any]]] = {}
        # The admin's custom field mapping for lead conversion (Setup > Map Lead Fields; the
        # LeadConvertSettings metadata): lead field -> contact field.
        self.lead_convert_mapping: dict[str, str] = {"Legal_Basis__c": "Legal_Basis__c"}
        self.lock = threading.RLock()
        self.automations: list[Automation] = []
        # Active duplicate rules (``add_duplicate_rule``), and the owner the active lead
        # assignment rule gives a lead it runs on (``activate_lead_assignment_rule``; None: none).
        self.duplicate_rules: list[DuplicateRule] = []
        self.lead_assignment_owner: str | None = None
        # The user a helper saves as, per thread (``acting_as``): the API's saves, made by the
        # server's threads, stay the integration user's.
        self._acting = threading.local()

    # ------------------------------------------------------------------ schema

    def now(self) -> dt.datetime:
        """The current time at whole-second precision, as Salesforce stores timestamps."""
        return self.clock().astimezone(dt.UTC).replace(microsecond=0)

    def resolve(self, name: str) -> ObjectDef | None:
        return self._by_lower.get(name.lower()) if isinstance(name, str) else None

    def sobject_for_id(self, record_id: str) -> ObjectDef | None:
        full = to18(record_id) if isinstance(record_id, str) else None
        return self._by_prefix.get(full[:3]) if full else None

    def describe(self, sobject: str, version: str = "59.0") -> dict[str, Any]:
        obj = self.resolve(sobject)
        if obj is None:
            raise KeyError(sobject)
        return obj.describe(version)

    # ------------------------------------------------------------------ reading

    def get(self, record_id: str) -> dict[str, Any] | None:
        """A copy of the record (Python values), deleted ones included; None when unknown."""
        obj = self.sobject_for_id(record_id)
        if obj is None:
            return None
        with self.lock:
            record = self._records[obj.name].get(to18(record_id) or "")
            return dict(record) if record is not None else None

    def records(self, sobject: str, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        obj = self._require(sobject)
        with self.lock:
            return [
                dict(r) for r in self._records[obj.name].values() if include_deleted or not r["IsDeleted"]
            ]

    def count(self, sobject: str, *, include_deleted: bool = False) -> int:
        obj = self._require(sobject)
        with self.lock:
            return sum(1 for r in self._records[obj.name].values() if include_deleted or not r["IsDeleted"])

    def find(self, sobject: str, **equals: Any) -> list[dict[str, Any]]:
        """Live records whose fields equal the given values (text compared case-insensitively)."""
        obj = self._require(sobject)
        checks = []
        for name, value in equals.items():
            fdef = obj.field(name)
            if fdef is None:
                raise KeyError(f"{obj.name}.{name}")
            if fdef.type in TEXT_TYPES and isinstance(value, str):
                checks.append((fdef.name, value.casefold(), True))
            elif fdef.type in ("id", "reference") and isinstance(value, str):
                checks.append((fdef.name, to18(value), False))
            else:
                checks.append((fdef.name, value, False))

        def match(record: dict[str, Any]) -> bool:
            for name, value, fold in checks:
                current = record.get(name)
                if fold and isinstance(current, str):
                    current = current.casefold()
                if current != value:
                    return False
            return True

        return [r for r in self.records(obj.name) if match(r)]

    def query(self, soql: str, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Run SOQL directly against the store; returns Python-valued copies of the selected
        fields (raises :class:`~consentsync_salesforce.sandbox.soql.SoqlError`)."""
        bound = bind(parse(soql), self.resolve)
        with self.lock:
            rows = self.select(bound, include_deleted=include_deleted)
            if bound.is_count:
                return [{"expr0": len(rows)}]
            return [{name: r.get(name) for name in bound.fields} for r in rows]

    def select(self, bound: BoundQuery, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """The records (live objects: hold :attr:`lock` while using them) a bound query returns."""
        with self.lock:
            base = [
                r for r in self._records[bound.sobject.name].values() if include_deleted or not r["IsDeleted"]
            ]
            return bound.run(base)

    def render(
        self, record: Mapping[str, Any], fields: Sequence[str], sobject: ObjectDef, version: str
    ) -> dict:
        out: dict[str, Any] = {
            "attributes": {
                "type": sobject.name,
                "url": f"/services/data/v{version}/sobjects/{sobject.name}/{record['Id']}",
            }
        }
        for name in fields:
            out[name] = render_value(record.get(name))
        return out

    def updated_ids(self, sobject: str, start: dt.datetime, end: dt.datetime) -> list[str]:
        obj = self._require(sobject)
        with self.lock:
            return [
                r["Id"]
                for r in self._records[obj.name].values()
                if not r["IsDeleted"] and start <= r["SystemModstamp"] < end
            ]

    def open_since(self, sobject: str, start: dt.datetime, end: dt.datetime) -> dt.datetime | None:
        """The earliest stamp, in ``[start, end)``, of a record of ``sobject`` whose transaction
        has not committed yet (:meth:`begin_create`), or None: Get Updated's latestDateCovered
        then says that moment ("the start time of that long-running transaction until it
        completes", GetUpdatedResult)."""
        obj = self._require(sobject)
        with self.lock:
            stamps = [
                record["SystemModstamp"]
                for kind, record in self._uncommitted.values()
                if kind.name == obj.name and start <= record["SystemModstamp"] < end
            ]
        return min(stamps, default=None)

    def deleted_records(
        self, sobject: str, start: dt.datetime, end: dt.datetime
    ) -> list[tuple[str, dt.datetime]]:
        obj = self._require(sobject)
        with self.lock:
            return [(rid, at) for name, rid, at in self._deleted if name == obj.name and start <= at < end]

    # ------------------------------------------------------------------ writing as a user

    def create(self, sobject: str, fields: Mapping[str, Any] | None = None, /, **more: Any) -> str:
        """Create a record as a user would (validated; CreatedDate and SystemModstamp = now).
        Returns the new 18-character id; raises :class:`RecordError` or :class:`ApiError`."""
        obj = self._require(sobject)
        values = {**(fields or {}), **more}
        converted: dict[str, Any] = {}
        for name, value in values.items():
            fdef = self._field_or_error(obj, name)
            if not fdef.createable:
                raise RecordError(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {fdef.name}. {_READ_ONLY_HINT}",
                    [fdef.name],
                )
            converted[fdef.name] = self._check(obj, fdef, _from_python(fdef, value))
        with self.lock:
            return self._insert(obj, converted, at=self.now())

    def update(self, record_id: str, fields: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Update a record as a user would: validated, then LastModifiedDate/SystemModstamp = now
        (whole second). Raises :class:`RecordError` or :class:`ApiError`."""
        values = {**(fields or {}), **more}
        obj = self.sobject_for_id(record_id)
        if obj is None:
            raise RecordError("MALFORMED_ID", f"id value of incorrect type: {record_id}", ["Id"])
        converted = {}
        for name, value in values.items():
            fdef = self._field_or_error(obj, name)
            converted[fdef.name] = _from_python(fdef, value)
        results = self.apply_updates([(obj.name, record_id, converted)], all_or_none=True)
        if results[0] is not None:
            raise results[0]

    def new_user(self) -> str:
        """The id of another user of the org (a sales user, a site or portal user)."""
        return self.ids.new(KEY_PREFIXES["User"])

    @contextmanager
    def acting_as(self, user_id: str) -> Iterator[None]:
        """The helpers' saves in this thread made by ``user_id``: its id in LastModifiedById."""
        self._acting.user = user_id
        try:
            yield
        finally:
            self._acting.user = None

    def automate(self, sobject: str, field: str, value: Any, /, **sets: Any) -> Automation:
        """A record-triggered automation: a save that changes ``field`` to ``value`` on a
        ``sobject`` record sets ``sets`` too, in that save (as a record-triggered flow whose
        entry condition holds "only when a record is updated to meet the condition")."""
        obj = self._require(sobject)
        self._field_or_error(obj, field)
        converted = {
            fdef.name: _from_python(fdef, item)
            for name, item in sets.items()
            for fdef in (self._field_or_error(obj, name),)
        }
        automation = Automation(obj.name, field, value, converted)
        with self.lock:
            self.automations.append(automation)
        return automation

    def add_duplicate_rule(
        self,
        sobject: str,
        *,
        on_edit: str = "alert",
        fields: Sequence[str] = ("Email",),
        name: str | None = None,
        alert_text: str = "Use one of these records?",
        criteria: Sequence[str] | None = None,
    ) -> DuplicateRule:
        """An active duplicate rule on ``sobject`` (:class:`DuplicateRule`): ``on_edit`` "alert"
        (Allow, with Alert) or "block"; records match on ``fields`` (by default Email). It runs on
        an edit that changes one of ``fields`` or ``criteria`` (by default the standard matching
        rule's fields the object has, :data:`STANDARD_MATCHING_FIELDS`)."""
        if on_edit not in ("alert", "block"):
            raise ValueError("on_edit is alert (Allow, with Alert) or block")
        obj = self._require(sobject)
        names = tuple(self._field_or_error(obj, f).name for f in fields)
        if criteria is None:
            watched = [f for f in STANDARD_MATCHING_FIELDS.get(obj.name, ()) if f in obj.fields]
        else:
            watched = [self._field_or_error(obj, f).name for f in criteria]
        rule = DuplicateRule(
            obj.name,
            on_edit,
            names,
            name or f"{obj.name}_Duplicate_Rule",
            alert_text,
            tuple(dict.fromkeys([*names, *watched])),
        )
        with self.lock:
            self.duplicate_rules.append(rule)
        return rule

    def activate_lead_assignment_rule(self, owner_id: str | None = None) -> str:
        """An active lead assignment rule (Setup > Lead Assignment Rules) with one entry and no
        criteria: every lead it runs on goes to ``owner_id`` (a new user, a queue, when None).
        The REST API runs it on each Lead it creates or updates unless the call's
        ``Sforce-Auto-Assign`` header says FALSE ("If the header is not provided in the request,
        the default value is TRUE"); Bulk API 2.0 only when the job names an
        ``assignmentRuleId``; a user's edit in the UI does not. Returns the owner."""
        owner = owner_id or self.new_user()
        with self.lock:
            self.lead_assignment_owner = owner
        return owner

    def _duplicates(
        self,
        obj: ObjectDef,
        record_id: str,
        before: Mapping[str, Any],
        after: Mapping[str, Any],
        allow_save: bool,
    ) -> None:
        """Raises DUPLICATES_DETECTED where an active duplicate rule that the edit from ``before``
        runs (:meth:`DuplicateRule.runs_on`) finds the record as it would be saved (``after``) a
        duplicate of another live record and its action refuses the save: Block always, Allow
        with Alert unless ``allow_save``."""
        for rule in self.duplicate_rules:
            if rule.sobject != obj.name or (allow_save and rule.on_edit == "alert"):
                continue
            if not rule.runs_on(before, after):
                continue
            key = _match_key(after, rule.fields)
            if key is None:
                continue
            matches = [
                other["Id"]
                for other in self._records[obj.name].values()
                if other["Id"] != record_id
                and not other["IsDeleted"]
                and not other.get("IsConverted")
                and _match_key(other, rule.fields) == key
            ]
            if matches:
                result = {
                    "allowSave": rule.on_edit == "alert",
                    "duplicateRule": rule.name,
                    "duplicateRuleEntityType": obj.name,
                    "errorMessage": rule.alert_text,
                    "matchResults": [
                        {
                            "entityType": obj.name,
                            "matchEngine": "ExactMatchEngine",
                            "matchRecords": [
                                {"record": {"attributes": {"type": obj.name}, "Id": found}}
                                for found in matches
                            ],
                            "rule": f"{obj.name}_Matching_Rule",
                            "size": len(matches),
                            "success": True,
                        }
                    ],
                }
                raise RecordError("DUPLICATES_DETECTED", rule.alert_text, more={"duplicateResult": result})

    def _automate(self, obj: ObjectDef, before: Mapping[str, Any], record: dict[str, Any]) -> None:
        """The automations ``record``'s save fires (``before``: the saved fields' values before)."""
        for automation in self.automations:
            if (
                automation.sobject == obj.name
                and automation.field in before
                and before[automation.field] != automation.value
                and record.get(automation.field) == automation.value
            ):
                record.update(automation.sets)

    def touch(self, record_id: str) -> None:
        """Save a record without changes (bumps LastModifiedDate and SystemModstamp)."""
        self.update(record_id, {})

    def delete(self, record_id: str) -> None:
        """Move a record to the recycle bin (IsDeleted; visible to queryAll and /deleted/)."""
        (error,) = self.delete_many([record_id], all_or_none=True)
        if error is not None:
            raise error

    def undelete(self, record_id: str) -> None:
        """Restore a record from the recycle bin, as the Recycle Bin's Restore and the SOAP API's
        ``undelete()`` do: live again (IsDeleted false) with the values it was deleted with, its
        change stamps moved to now, so that an incremental read sees it as a change."""
        with self.lock:
            obj = self.sobject_for_id(record_id)
            record = None if obj is None else self._records[obj.name].get(to18(record_id))
            if record is None or not record["IsDeleted"]:
                raise RecordError("UNDELETE_FAILED", "Entity is not in the recycle bin")
            record["IsDeleted"] = False
            self._touch(record, self.now())

    def delete_many(
        self,
        record_ids: Sequence[str],
        *,
        all_or_none: bool,
        lock_check: Callable[[str], bool] | None = None,
    ) -> list[RecordError | None]:
        """Delete records of any objects (to the recycle bin): one entry per id, None for
        success. With ``all_or_none`` nothing is deleted when any id fails."""

        def delete(plan: tuple[ObjectDef, dict[str, Any]], now: dt.datetime) -> RecordError | None:
            obj, record = plan
            if record["IsDeleted"]:  # the same id twice in one call
                return RecordError("ENTITY_IS_DELETED", "entity is deleted")
            record["IsDeleted"] = True
            self._touch(record, now)
            self._deleted.append((obj.name, record["Id"], now))
            return None

        with self.lock:
            planned = _plan_each(record_ids, lambda record_id: self._plan_delete(record_id, lock_check))
            return self._write(planned, all_or_none, delete)

    def _write(
        self,
        plans: Sequence[_P | RecordError],
        all_or_none: bool,
        write: Callable[[_P, dt.datetime], RecordError | None],
    ) -> list[RecordError | None]:
        """Each record's answer: its refusal, or what ``write(plan, now)`` answers; nothing is
        written when AllOrNone and one record is refused (:func:`_rolled_back`)."""
        refused = _rolled_back(plans, all_or_none)
        if refused is not None:
            return refused
        now = self.now()
        return [plan if isinstance(plan, RecordError) else write(plan, now) for plan in plans]

    def _touch(self, record: dict[str, Any], now: dt.datetime) -> None:
        """A save at ``now``, by the API user or the one a helper acts as: the stamps move."""
        record["LastModifiedDate"] = record["SystemModstamp"] = now
        record["LastModifiedById"] = getattr(self._acting, "user", None) or self.user_id

    def _writable(
        self, obj: ObjectDef, full: str, lock_check: Callable[[str], bool] | None
    ) -> dict[str, Any]:
        """The live record ``full`` of ``obj`` that an update or a delete may change, or the
        error Salesforce answers such a write with: no such record, deleted, or locked."""
        record = self._records[obj.name].get(full)
        if record is None:
            raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        if record["IsDeleted"]:
            raise RecordError("ENTITY_IS_DELETED", "entity is deleted")
        _refuse_converted(record)
        if lock_check is not None and lock_check(full):
            raise RecordError(
                "UNABLE_TO_LOCK_ROW", f"unable to obtain exclusive access to this record or 1 records: {full}"
            )
        return record

    def _plan_delete(
        self, record_id: str, lock_check: Callable[[str], bool] | None
    ) -> tuple[ObjectDef, dict[str, Any]]:
        full = to18(record_id) if isinstance(record_id, str) else None
        obj = self._by_prefix.get(full[:3]) if full else None
        if full is None or obj is None:
            raise RecordError("MALFORMED_ID", f"malformed id {record_id}")
        return obj, self._writable(obj, full, lock_check)

    def merge(self, master_id: str, *merged_ids: str) -> None:
        """Merge up to two records into ``master_id``, as ``merge()`` does for Contacts and Leads:
        the merged ones go to the recycle bin with ``MasterRecordId`` set to the master, and the
        master is saved (its stamps move to now)."""
        master = self.sobject_for_id(master_id)
        if master is None or master.name not in MERGEABLE:
            raise RecordError("INVALID_TYPE", f"merge is not supported for {master_id}")
        if not 1 <= len(merged_ids) <= 2:
            raise RecordError("INVALID_ARGUMENT", "merge takes one or two records to merge into the master")
        with self.lock:
            survivor = self._live(master, master_id)
            losers = [self._live(master, record_id) for record_id in merged_ids]
            if any(loser["Id"] == survivor["Id"] for loser in losers):
                raise RecordError("INVALID_ID_FIELD", "the master record cannot be merged into itself")
            now = self.now()
            for loser in losers:
                loser["IsDeleted"] = True
                loser["MasterRecordId"] = survivor["Id"]
                loser["LastModifiedDate"] = loser["SystemModstamp"] = now
                self._deleted.append((master.name, loser["Id"], now))
            self._touch(survivor, now)

    def _live(self, obj: ObjectDef, record_id: str) -> dict[str, Any]:
        record = self._records[obj.name].get(to18(record_id) or "")
        if record is None or self.sobject_for_id(record_id) is not obj:
            raise RecordError("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {record_id}")
        if record["IsDeleted"]:
            raise RecordError("ENTITY_IS_DELETED", "entity is deleted")
        _refuse_converted(record)
        return record

    def convert_lead(self, lead_id: str, *, contact_id: str | None = None) -> dict[str, str]:
        """Convert a lead as a user (or ``convertLead()``, ``Database.convertLead``) does, in one
        transaction stamped now: into a new Contact made from the lead's standard fields
        (*Lead Conversion Field Mapping*: name, email, phone, address country, lead source, owner,
        Email Opt Out, Fax Opt Out, Do Not Call; the Individual) and the custom fields the admin
        mapped (:attr:`lead_convert_mapping`), or into the existing Contact ``contact_id``, where
        only its empty fields are filled ("only empty fields in the target object are
        overwritten") and Email Opt Out and Do Not Call are left as they are ("This field isn't
        updated for leads converted to existing contacts"); its IndividualId only when it has none
        (*Best Practices for Tracking Data Privacy*). The contact is saved either way.

        The lead stays, live and queryable, with ``IsConverted`` true, ``Status`` the converted
        status, ``ConvertedDate`` (a date), ``ConvertedContactId`` and ``ConvertedAccountId`` set
        and its change stamps moved to now; from then on every update or delete of it is refused
        with CANNOT_UPDATE_CONVERTED_LEAD. The account is named by an id only (this org holds no
        Accounts). Returns the LeadConvertResult's ids: ``leadId``, ``contactId``,
        ``accountId``."""
        lead_obj, contact_obj = self.schema["Lead"], self.schema["Contact"]
        with self.lock:
            lead = self._live(lead_obj, lead_id)
            now = self.now()
            made = {contact: lead.get(field) for field, contact in _LEAD_TO_CONTACT.items()}
            made.update({contact: lead.get(field) for field, contact in self.lead_convert_mapping.items()})
            if contact_id is None:
                target_id = self._insert(
                    contact_obj, {k: v for k, v in made.items() if v is not None}, at=now
                )
            else:
                target = self._live(contact_obj, contact_id)
                target_id = target["Id"]
                for name, value in made.items():
                    if (
                        name in _NOT_ON_EXISTING_CONTACTS
                        or value is None
                        or contact_obj.fields[name].type == "boolean"
                    ):
                        continue  # a checkbox is never empty: the contact's stays
                    if target.get(name) in (None, ""):
                        target[name] = value
                self._derive(contact_obj, target)
                self._touch(target, now)
            account_id = self.ids.new(KEY_PREFIXES["Account"])
            lead.update(
                {
                    "IsConverted": True,
                    "Status": CONVERTED_STATUS,
                    "ConvertedDate": now.date(),
                    "ConvertedContactId": target_id,
                    "ConvertedAccountId": account_id,
                }
            )
            self._touch(lead, now)
        return {"leadId": lead["Id"], "contactId": target_id, "accountId": account_id}

    def begin_create(self, sobject: str, fields: Mapping[str, Any] | None = None, /, **more: Any) -> str:
        """Start creating a record in a transaction that commits late (a long Apex transaction, a
        trigger chain, a Bulk API batch): its id, CreatedDate and SystemModstamp are set now, but
        no read (query, queryAll, sObject GET, /updated/, :meth:`records`) sees it until
        :meth:`commit`; meanwhile /updated/ answers its stamp as latestDateCovered
        (:meth:`open_since`). Returns its id."""
        record_id = self.create(sobject, fields, **more)
        obj = self._require(sobject)
        with self.lock:
            self._uncommitted[record_id] = (obj, self._records[obj.name].pop(record_id))
        return record_id

    def commit(self, record_id: str) -> None:
        """The late transaction commits: the record becomes visible with the stamps it was given
        when it began (not the time of the commit)."""
        with self.lock:
            obj, record = self._uncommitted.pop(to18(record_id) or record_id)
            self._records[obj.name][record["Id"]] = record

    # ------------------------------------------------------------------ writing through the API

    def convert_json_fields(self, obj: ObjectDef, fields: Mapping[str, Any]) -> dict[str, Any]:
        """JSON field values to Python values; unknown fields and wrong JSON types fail the whole
        request (ApiError INVALID_FIELD / JSON_PARSER_ERROR) as in Salesforce."""
        out: dict[str, Any] = {}
        for name, value in fields.items():
            fdef = obj.field(name)
            if fdef is None:
                raise ApiError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj.name}")
            out[fdef.name] = _from_json(fdef, value)
        return out

    def convert_csv_value(self, fdef: FieldDef, text: str, column: int) -> Any:
        """A Bulk API CSV cell to a Python value (``#N/A`` is null); RecordError when it does not
        convert."""
        if text == "#N/A":
            return None
        if fdef.type == "boolean":
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise RecordError(
                "INVALID_FIELD",
                f"Failed to deserialize field at col {column}. Due to, '{text}' is not a valid value "
                "for the type xsd:boolean",
                [fdef.name],
            )
        if fdef.type == "datetime":
            value = parse_api_datetime(text)
            if value is None:
                raise RecordError(
                    "INVALID_FIELD",
                    f"Failed to deserialize field at col {column}. Due to, '{text}' is not a valid value "
                    "for the type xsd:dateTime",
                    [fdef.name],
                )
            return value
        return text

    def apply_updates(
        self,
        items: Sequence[tuple[str | None, str | None, Mapping[str, Any]]],
        *,
        all_or_none: bool,
        lock_check: Callable[[str], bool] | None = None,
        allow_duplicates: bool = True,
        auto_assign: bool = False,
    ) -> list[RecordError | None]:
        """Update records: ``items`` are (sobject type or None, id, Python field values). Returns
        one entry per item, None for success. With ``all_or_none`` nothing is saved when any item
        fails, and the others answer ALL_OR_NONE_OPERATION_ROLLED_BACK.

        ``allow_duplicates``: an Allow-with-Alert duplicate rule lets the save through (a user
        acknowledging the alert; an API call saying ``allowSave=true``); a Block rule never does.
        ``auto_assign``: the active lead assignment rule runs on the leads saved (an API call
        without ``Sforce-Auto-Assign: FALSE``)."""

        def update(plan: _Planned, now: dt.datetime) -> RecordError | None:
            record = self._records[plan.sobject.name][plan.record_id]
            before = {name: record.get(name) for name in plan.values}
            record.update(plan.values)
            self._automate(plan.sobject, before, record)
            self._derive(plan.sobject, record)
            self._touch(record, now)
            return None

        def plan(item: tuple[str | None, str | None, Mapping[str, Any]]) -> _Planned:
            planned = self._plan(*item, lock_check)
            record = self._records[planned.sobject.name][planned.record_id]
            if auto_assign and planned.sobject.name == "Lead" and self.lead_assignment_owner:
                planned.values["OwnerId"] = self.lead_assignment_owner
            after = {**record, **planned.values}
            self._duplicates(planned.sobject, planned.record_id, record, after, allow_duplicates)
            return planned

        with self.lock:
            plans = _plan_each(items, plan)
            return self._write(plans, all_or_none, update)

    def _plan(
        self,
        sobject: str | None,
        record_id: str | None,
        fields: Mapping[str, Any],
        lock_check: Callable[[str], bool] | None,
    ) -> _Planned:
        if not record_id:
            raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call")
        declared = self.resolve(sobject) if sobject else None
        full = to18(record_id) if isinstance(record_id, str) else None
        target = self._by_prefix.get(full[:3]) if full else None
        if full is None or target is None or (declared is not None and declared is not target):
            label = (declared or target).label if (declared or target) else "Record"
            raise RecordError("MALFORMED_ID", f"{label} ID: id value of incorrect type: {record_id}", ["Id"])
        self._writable(target, full, lock_check)  # refuses a missing, deleted or locked record
        readonly = [
            name
            for name in fields
            if (f := target.field(name)) is not None and not f.updateable and name != "Id"
        ]
        if readonly:
            raise RecordError(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(readonly)}. {_READ_ONLY_HINT}",
                readonly,
            )
        values: dict[str, Any] = {}
        for name, value in fields.items():
            fdef = self._field_or_error(target, name)
            if fdef.name == "Id":
                continue
            values[fdef.name] = self._check(target, fdef, value)
        return _Planned(full, target, values)

    def _check(self, obj: ObjectDef, fdef: FieldDef, value: Any) -> Any:
        """Validate one Python value for a field as Salesforce does on save."""
        if value is None:
            if fdef.type == "boolean":
                return False
            if not fdef.nillable:
                raise RecordError(
                    "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{fdef.name}]", [fdef.name]
                )
            return None
        if fdef.type in TEXT_TYPES:
            if fdef.length and len(value) > fdef.length:
                raise RecordError(
                    "STRING_TOO_LONG",
                    f"{fdef.label}: data value too large: {value[:40]} (max length={fdef.length})",
                    [fdef.name],
                )
            if fdef.type == "email" and not _EMAIL_RE.match(value):
                raise RecordError(
                    "INVALID_EMAIL_ADDRESS", f"{fdef.label}: invalid email address: {value}", [fdef.name]
                )
            if fdef.type == "picklist" and fdef.restricted and value not in fdef.picklist:
                raise RecordError(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"{fdef.label}: bad value for restricted picklist field: {value}",
                    [fdef.name],
                )
        if fdef.type == "reference":
            full = to18(value)
            target = self._by_prefix.get(full[:3]) if full else None
            allowed = {n for n in fdef.reference_to if n in self.schema}
            if fdef.reference_to == ("User",):
                if full is None or full[:3] != KEY_PREFIXES["User"]:
                    raise RecordError(
                        "MALFORMED_ID", f"{fdef.label}: id value of incorrect type: {value}", [fdef.name]
                    )
                return full
            if full is None or target is None or target.name not in allowed:
                raise RecordError(
                    "MALFORMED_ID", f"{fdef.label}: id value of incorrect type: {value}", [fdef.name]
                )
            referenced = self._records[target.name].get(full)
            if referenced is None or referenced["IsDeleted"]:
                raise RecordError(
                    "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {value}", [fdef.name]
                )
            return full
        return value

    def _field_or_error(self, obj: ObjectDef, name: str) -> FieldDef:
        fdef = obj.field(name)
        if fdef is None:
            raise ApiError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj.name}")
        return fdef

    def _require(self, sobject: str) -> ObjectDef:
        obj = self.resolve(sobject)
        if obj is None:
            raise KeyError(f"unknown sObject type {sobject!r}")
        return obj

    def _derive(self, obj: ObjectDef, record: dict[str, Any]) -> None:
        if obj.has_person_name:
            record["Name"] = " ".join(p for p in (record.get("FirstName"), record.get("LastName")) if p)

    def _insert(
        self,
        obj: ObjectDef,
        values: Mapping[str, Any],
        *,
        at: dt.datetime,
        created: dt.datetime | None = None,
    ) -> str:
        """Store a new record with the given (already valid) values; caller holds the lock."""
        for fdef in obj.fields.values():
            if (
                not fdef.nillable
                and fdef.createable
                and fdef.default is None
                and values.get(fdef.name) is None
                and fdef.name != "OwnerId"
            ):
                raise RecordError(
                    "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{fdef.name}]", [fdef.name]
                )
        record_id = self.ids.new(obj.key_prefix)
        record: dict[str, Any] = {}
        for fdef in obj.fields.values():
            record[fdef.name] = fdef.default
        record.update({k: v for k, v in values.items() if v is not None or obj.fields[k].default is None})
        created = created or at
        user = getattr(self._acting, "user", None) or self.user_id
        record.update(
            {
                "Id": record_id,
                "IsDeleted": False,
                "CreatedDate": created,
                "CreatedById": user,
                "LastModifiedDate": at,
                "LastModifiedById": user,
                "SystemModstamp": at,
            }
        )
        if "OwnerId" in obj.fields and record.get("OwnerId") is None:
            record["OwnerId"] = self.user_id
        self._derive(obj, record)
        self._records[obj.name][record_id] = record
        return record_id

    # ------------------------------------------------------------------ seeding

    def seed(
        self,
        n: int,
        seed: int = 0,
        *,
        now: dt.datetime | None = None,
        days: int = 7,
        lead_share: float = 0.2,
        duplicate_contact_share: float = 0.05,
        individual_share: float = 0.5,
        consent_share: float = 0.35,
    ) -> dict[str, Any]:
        """Add ``n`` contacts with realistic names, emails and consent values, plus:

        * a share of them again as Leads with the same email (sometimes in another letter case),
          with consent flags that may disagree;
        * a share duplicated as a second Contact with the same email;
        * Individuals linked (IndividualId) for a share, with ContactPointTypeConsent rows
          (PartyId, DataUsePurposeId, PrivacyConsentStatus OptIn/OptOut, CaptureDate,
          CaptureSource, EffectiveFrom, DoubleConsentCaptureDate) for some of those;
        * SystemModstamps spread over the past ``days`` days and clustered on a few whole seconds
          (mass updates), so hundreds of records can share one second.

        Deterministic for a given ``seed`` and ``now``. Returns a summary with the ids made.
        """
        rng = random.Random(seed)
        now = (now or self.now()).astimezone(dt.UTC).replace(microsecond=0)
        buckets = max(5, n // 25)
        seconds = crowded_seconds(rng, now, buckets, days=days)
        # Cumulative once: handed plain weights, choices() adds them up on every call, and a seed
        # of n contacts took time in n squared. The draws are the same.
        cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(buckets)))

        def stamp() -> dt.datetime:
            return rng.choices(seconds, cum_weights=cumulative)[0]

        def created_before(moment: dt.datetime) -> dt.datetime:
            return moment - dt.timedelta(seconds=rng.randrange(0, 60 * 86400))

        summary: dict[str, Any] = {
            "contacts": [],
            "leads": [],
            "individuals": [],
            "consents": [],
            "purposes": [],
            "duplicate_emails": [],
        }
        with self.lock:
            purposes = self._ensure_purposes(now)
            summary["purposes"] = list(purposes.values())
            used_emails: set[str] = {
                r["Email"].lower() for r in self._records["Contact"].values() if r["Email"]
            }
            for index in range(n):
                first, last, email = random_person(rng, index, used_emails)
                modstamp = stamp()
                individual_id = None
                if rng.random() < individual_share:
                    individual_id = self._insert(
                        self.schema["Individual"],
                        {
                            "FirstName": first,
                            "LastName": last,
                            "HasOptedOutProcessing": rng.random() < 0.05,
                            "HasOptedOutSolicit": rng.random() < 0.15,
                            "HasOptedOutProfiling": rng.random() < 0.2,
                            "HasOptedOutTracking": rng.random() < 0.2,
                            "HasOptedOutGeoTracking": rng.random() < 0.25,
                            "CanStorePiiElsewhere": rng.random() < 0.6,
                            "ShouldForget": rng.random() < 0.02,
                            "SendIndividualData": rng.random() < 0.03,
                        },
                        at=modstamp,
                        created=created_before(modstamp),
                    )
                    summary["individuals"].append(individual_id)
                    if rng.random() < consent_share / max(individual_share, 1e-9):
                        summary["consents"] += self._seed_consents(
                            rng, individual_id, first, last, purposes, stamp
                        )
                contact_values = {
                    "Salutation": rng.choice((None, "Mr.", "Ms.", "Dr.")),
                    "FirstName": first,
                    "LastName": last,
                    "Email": email,
                    "Phone": f"+{rng.choice((44, 49, 33, 1, 31))} {rng.randrange(100, 999)} "
                    f"{rng.randrange(10**5, 10**6)}",
                    "Title": rng.choice(
                        (None, "Buyer", "CFO", "Head of Marketing", "Engineer", "Office Manager")
                    ),
                    "MailingCountry": rng.choice(
                        ("Germany", "France", "United Kingdom", "Netherlands", "Ireland")
                    ),
                    "LeadSource": rng.choice((None, *LEAD_SOURCES)),
                    **_consent_values(rng),
                    "IndividualId": individual_id,
                }
                contact_id = self._insert(
                    self.schema["Contact"], contact_values, at=modstamp, created=created_before(modstamp)
                )
                summary["contacts"].append(contact_id)
                if rng.random() < lead_share:
                    lead_email = email.upper() if rng.random() < 0.3 else email
                    lead_stamp = stamp()
                    lead_id = self._insert(
                        self.schema["Lead"],
                        {
                            "FirstName": first,
                            "LastName": last,
                            "Email": lead_email,
                            "Company": rng.choice(_COMPANIES),
                            "Status": rng.choice(LEAD_STATUSES[:2]),
                            "LeadSource": rng.choice(LEAD_SOURCES),
                            "Country": contact_values["MailingCountry"],
                            **_consent_values(rng),
                            "IndividualId": individual_id if rng.random() < 0.5 else None,
                        },
                        at=lead_stamp,
                        created=created_before(lead_stamp),
                    )
                    summary["leads"].append(lead_id)
                    summary["duplicate_emails"].append(email)
                if rng.random() < duplicate_contact_share:
                    dup_stamp = stamp()
                    dup_id = self._insert(
                        self.schema["Contact"],
                        {
                            "FirstName": first,
                            "LastName": last,
                            "Email": email.lower() if rng.random() < 0.5 else email,
                            "MailingCountry": contact_values["MailingCountry"],
                            **_consent_values(rng),
                        },
                        at=dup_stamp,
                        created=created_before(dup_stamp),
                    )
                    summary["contacts"].append(dup_id)
                    summary["duplicate_emails"].append(email)
        return summary

    def _ensure_purposes(self, now: dt.datetime) -> dict[str, str]:
        existing = {
            r["Name"]: r["Id"] for r in self._records["DataUsePurpose"].values() if not r["IsDeleted"]
        }
        for name, description, opt_out in _PURPOSES:
            if name not in existing:
                existing[name] = self._insert(
                    self.schema["DataUsePurpose"],
                    {"Name": name, "Description": description, "CanDataSubjectOptOut": opt_out},
                    at=now - dt.timedelta(days=90),
                )
        return existing

    def _seed_consents(
        self,
        rng: random.Random,
        individual_id: str,
        first: str,
        last: str,
        purposes: Mapping[str, str],
        stamp: Callable[[], dt.datetime],
    ) -> list[str]:
        made = []
        for purpose_name in rng.sample(sorted(purposes), rng.randint(1, 2)):
            modstamp = stamp()
            captured = modstamp - dt.timedelta(seconds=rng.randrange(0, 30 * 86400))
            status = "OptIn" if rng.random() < 0.65 else "OptOut"
            # A confirmation is recorded on the record, so it is never later than the record's
            # last change (a later one would lie in the future of a record stamped just now).
            double = (
                min(captured + dt.timedelta(minutes=rng.randrange(1, 180)), modstamp)
                if status == "OptIn" and rng.random() < 0.5
                else None
            )
            made.append(
                self._insert(
                    self.schema["ContactPointTypeConsent"],
                    {
                        "Name": f"{purpose_name} - {first} {last}"[:255],
                        "PartyId": individual_id,
                        "ContactPointType": "Email",
                        "CaptureContactPointType": "Email",
                        "CaptureDate": captured,
                        "CaptureSource": rng.choice(_CAPTURE_SOURCES),
                        "DataUsePurposeId": purposes[purpose_name],
                        "DoubleConsentCaptureDate": double,
                        "EffectiveFrom": captured,
                        "PrivacyConsentStatus": status,
                    },
                    at=modstamp,
                    created=captured,
                )
            )
        return made


def render_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return format_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _from_json(fdef: FieldDef, value: Any) -> Any:
    if value is None:
        return None
    if fdef.type == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ApiError(
            400,
            "JSON_PARSER_ERROR",
            f"Cannot deserialize instance of boolean from {_json_kind(value)} value {value} or request may "
            "be missing a required field",
        )
    if fdef.type == "datetime":
        parsed = parse_api_datetime(value) if isinstance(value, str) else None
        if parsed is None:
            raise ApiError(
                400,
                "JSON_PARSER_ERROR",
                f"Cannot deserialize instance of datetime from {_json_kind(value)} value {value} or request "
                "may be missing a required field",
            )
        return parsed
    if isinstance(value, (bool, dict, list)):
        raise ApiError(
            400,
            "JSON_PARSER_ERROR",
            f"Cannot deserialize instance of string from {_json_kind(value)} value {value} or request may be "
            "missing a required field",
        )
    return str(value)


def _from_python(fdef: FieldDef, value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if fdef.type != "datetime":
            raise ApiError(
                400, "JSON_PARSER_ERROR", f"{fdef.name}: a datetime is not valid for a {fdef.type} field"
            )
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return aware.astimezone(dt.UTC).replace(microsecond=0)
    return _from_json(fdef, value)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "VALUE_TRUE" if value else "VALUE_FALSE"
    if isinstance(value, (int, float)):
        return "VALUE_NUMBER_INT" if isinstance(value, int) else "VALUE_NUMBER_FLOAT"
    if isinstance(value, dict):
        return "START_OBJECT"
    if isinstance(value, list):
        return "START_ARRAY"
    return "VALUE_STRING"


_T = TypeVar("_T")
_P = TypeVar("_P")


def _plan_each(items: Iterable[_T], plan: Callable[[_T], _P]) -> list[_P | RecordError]:
    """Each item's plan, or the error that refuses it (a write checks every record first)."""
    plans: list[_P | RecordError] = []
    for item in items:
        try:
            plans.append(plan(item))
        except RecordError as exc:
            plans.append(exc)
    return plans


def _rolled_back(plans: Sequence[object], all_or_none: bool) -> list[RecordError | None] | None:
    """With AllOrNone and a refused record, the answer of every record (its own error, or
    ALL_OR_NONE_OPERATION_ROLLED_BACK for the others); None when the write goes ahead."""
    if not (all_or_none and any(isinstance(p, RecordError) for p in plans)):
        return None
    rolled = RecordError(
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "Record rolled back because not all records were valid and the request was using AllOrNone header",
    )
    return [p if isinstance(p, RecordError) else rolled for p in plans]


def _match_key(record: Mapping[str, Any], fields: Sequence[str]) -> tuple[str, ...] | None:
    """What a matching rule compares of ``record``: its ``fields``, case folded; None where one
    is empty (a blank field matches nothing)."""
    values = tuple(str(record.get(name) or "").strip().casefold() for name in fields)
    return None if not all(values) else values


def _refuse_converted(record: Mapping[str, Any]) -> None:
    """A converted lead is read-only: Salesforce refuses every update (and, here, every delete or
    merge) of it with CANNOT_UPDATE_CONVERTED_LEAD, "cannot reference converted lead", per record
    in sObject Collections and Bulk API results, as a 400 on the sObject row."""
    if record.get("IsConverted"):
        raise RecordError("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")


def _consent_values(rng: random.Random) -> dict[str, Any]:
    return {
        "HasOptedOutOfEmail": rng.random() < 0.25,
        "DoNotCall": rng.random() < 0.15,
        "HasOptedOutOfFax": rng.random() < 0.1,
        "Legal_Basis__c": rng.choices(
            ("Consent", "Legitimate Interest", "Contract", "Legal Obligation", None), (35, 25, 15, 3, 22)
        )[0],
    }


_PURPOSES = (
    ("Email Marketing", "Newsletters and offers by email", True),
    ("Profiling", "Segmentation and scoring for personalised offers", True),
    ("Service Communications", "Messages needed to deliver the contracted service", False),
)
_CAPTURE_SOURCES = (
    "Web Form",
    "Preference Center",
    "Double Opt-In",
    "Event Badge Scan",
    "Sales Call",
    "Import",
)
_COMPANIES = (
    "Acme GmbH",
    "Globex Ltd",
    "Initech BV",
    "Umbrella SARL",
    "Hooli Ireland",
    "Stark Industries",
    "Wayne Enterprises",
    "Soylent AG",
)
