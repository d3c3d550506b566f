"""CRM field mappings: which field of a CRM object carries which purpose, channel, consent status
and lawful basis, with the tables that translate the CRM's values, and which way each field
flows (pulled into the ledger, pushed back to the CRM, or both).

Integration admins write one YAML file per CRM object (``mappings/<vendor>/<object>.yaml``). The
file is validated by the models below (``consentsync/mappings/schema.json`` is generated from
them, so editors can check a file as it is typed); every error names the file, the line and the
field, and what would have been accepted.

The loaded ``Mapping`` does the translating for the sync engine:

* ``evidence_from`` turns one CRM record into evidence for the ledger (origin ``crm``: evidence to
  reconcile, never the authority);
* ``identity_from`` gives the record's id, normalised email and links to other records;
* ``updates_for`` gives the field values that make the record show what the ledger decided, and
  only those where the record shows something else: a value its own pull table reads as the same
  status or basis is left as the CRM holds it (one of several picklist values that mean the
  same), and a push can be replayed safely.

A value the tables do not know raises ``MappingValueError``; the engine quarantines that record
and carries on. Beside a value it can read, only what that value says is held back
(``evidence_from(held_back=...)``): a no is read without it, a grant on a basis the tables
cannot name is not read, and the record is quarantined for the value.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from collections.abc import Mapping as RecordMap
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from annotated_types import MinLen
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

from consentsync.domain import (
    EVIDENCE_REF_MAX,
    NOTICE_VERSION_MAX,
    RESTRICTIVENESS,
    ConsentStatus,
    EffectiveState,
    Evidence,
    InvalidInput,
    LawfulBasis,
    Origin,
    as_utc,
    check_label,
    normalise_email,
    parse_timestamp,
    shown,
    without_emails,
)
from consentsync.reconcile import UNANSWERED_STATUSES, Rule
from consentsync.yamlfile import TAG_PREFIX, Problem, Yaml12Loader, describe, not_utf8, read_document

__all__ = [
    "FORMAT_VERSION",
    "PUSH_DECISIONS_VERSION",
    "Direction",
    "Mapping",
    "MappingError",
    "MappingSpec",
    "MappingValueError",
    "OurWrite",
    "json_schema",
    "load_mapping",
    "load_mappings",
    "parse_mapping",
    "schema_text",
]

FORMAT_VERSION = 1
# How ``Mapping.updates_for`` decides what to write, as a number for the push rules' digest
# (sync/push_rules.py): raised when a release decides differently from the same mapping file, so
# that pushes decided the older way and still waiting (an observing connector, a run held by the
# push guard) are decided again before any is sent. 2: a value the field's own pull table reads as
# the status or basis to write is left as the CRM holds it. 3: an opt-out this project wrote
# itself (a restriction's) is put back to the value before it once no state it covers is suppressed.
# 4: also in a field whose push table has no ``allowed`` (SuperOffice's E-marketing consent,
# removed for a restriction or an expiry), unless that write was what a person's no writes.
# 5: nor there where the person said no since that write was queued (``OurWrite.said_no_since``):
# a put-back version 4 decided for them (their earlier consent) and left waiting is decided again.
# 6: a status nobody answered ("requested", "applicable") winning on time is no consent on record,
# not an opt-out (``_for_want_of_consent``): a tick decided for one and left waiting is dropped.
# 7: only where nothing but such statuses is on record (``EffectiveState.basis_stated`` False,
# reconcile's ``Summary.answered``), which also pushes no lawful basis: one over a consent granted
# and since expired (or any other answer) ticks the opt-out again, as the expiry alone does; the
# people version 6 left unticked so are examined again.
# 8: a person known by records without an address alone, all of whose sharers are erased, takes on
# their erasure (engine ``_tell_the_erasures``): an Individual read before the erased person's
# Contact pointing to it kept its opt-in; the ledgers earlier versions left so are repaired.
PUSH_DECISIONS_VERSION = 8


class OurWrite(NamedTuple):
    """A value of ``ours`` (``Mapping.updates_for``) as the sync engine knows it: what the field
    held before this project's latest acknowledged write of it (None where not known), the value
    that write sent (before the CRM's reading of it: SuperOffice's RemoveConsent is sent as null
    and reads back Withdrawn), and the (purpose, channel) pairs the person said no to in the
    ledger since that write was queued (a withdrawal or refusal recorded, an objection upheld:
    sync/engine.py ``_said_no_since``). A plain value in ``ours`` is ``before`` alone, the write
    unknown."""

    before: Any
    sent: Any
    said_no_since: frozenset[tuple[str, str]] = frozenset()


# Field and object names end up in SOQL (and other query languages) as they are written: only
# API-name shapes pass. Letters, digits and _ (custom fields end in __c), starting with a letter;
# a dotted path reads a field of a related record (Account.Name), at most five levels up.
_API_PART = r"[A-Za-z][A-Za-z0-9_]{0,79}"
FIELD_NAME_RE = re.compile(rf"^{_API_PART}(?:\.{_API_PART}){{0,4}}$")
OBJECT_NAME_RE = re.compile(rf"^{_API_PART}$")
VENDOR_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")  # purposes and channels, as in consentsync.yaml

STATUS_PUSH_KEYS = ("suppressed", "allowed", "withdrawn", "no_consent")
# Suppressed because the person said no (not merely for want of a consent): the optional push key
# `withdrawn` is written in these cases instead of `suppressed`.
SAID_NO_STATUSES = frozenset({ConsentStatus.WITHDRAWN, ConsentStatus.REFUSED})
SAID_NO_RULES = frozenset({"objection_direct_marketing", "objection_upheld"})
# States the ledger holds by default, on no evidence: no consent on record (or none valid under
# the ePrivacy rules), or the purpose's default basis. They never overwrite what a CRM shows
# (a status is written from the push key `no_consent` only, where the mapping names one; a lawful
# basis is not written at all): only newer evidence does.
NO_EVIDENCE_RULES = frozenset({"no_consent_on_record", "purpose_default_basis", "eprivacy_consent_required"})
# Statuses under which nobody answered (reconcile.UNANSWERED_STATUSES): consent applies and none
# was given ("applicable"), or it was asked for (a request mailed, a double opt-in sign-up not
# confirmed: "requested"). Suppressed under one of them by the status alone (it won on time) with
# nothing else ever on record (no grant, no expiry, no other basis: the reconciler then states no
# basis, ``basis_stated``), a person is suppressed for want of a consent, exactly as under
# ``no_consent_on_record``: a request nobody answered, or a form anyone can fill in with the
# address, is no opt-out to write (docs/adoption.md, "What is never written on thin evidence").
# Over an earlier answer (a consent granted and since expired, a CRM's own opt-in) the opt-out is
# written: the CRM may still show that opt-in, which the ledger no longer holds. Rules that
# suppress on evidence whatever the status (an erasure, a restriction, an objection, an expiry)
# keep their writes.
EVIDENCE_RULES = frozenset(
    {
        Rule.ERASURE,
        Rule.RESTRICTION,
        Rule.OBJECTION_DIRECT_MARKETING,
        Rule.OBJECTION_UPHELD,
        Rule.OBJECTION_PENDING,
        Rule.EXPIRED,
    }
)
RECORD_ID_MAX = 64  # the ledger's crm_links.record_id
# An id of letters, digits and punctuation without "@": one line, no control character, no
# address. What the CRMs issue; anything else goes through the label checks.
_PLAIN_ID = re.compile(rf"[A-Za-z0-9_.:\-]{{1,{RECORD_ID_MAX}}}")

_CONSTANT = f"{TAG_PREFIX}constant)"
_LIST = f"{TAG_PREFIX}list)"
_FROM_FIELD = f"{TAG_PREFIX}from field)"
_NOT_KNOWN: Any = object()  # what our write sent, where ``ours`` does not say (``_put_back``)


class MappingError(InvalidInput):
    """A mapping file problem, already phrased for the person who wrote the file."""


class MappingValueError(InvalidInput):
    """A CRM record holds a value the mapping cannot translate; the engine quarantines the record.

    The message names the object, the record id, the field, the value and what is accepted.
    """

    def __init__(
        self,
        field: str,
        value: Any,
        accepted: Iterable[Any] | str,
        *,
        object_type: str | None = None,
        record_id: str | None = None,
        path: Path | None = None,
    ) -> None:
        self.field = field
        self.value = value
        self.accepted = accepted if isinstance(accepted, str) else tuple(accepted)
        self.object_type = object_type
        self.record_id = record_id
        self.path = path
        record = " ".join(str(part) for part in (object_type, record_id) if part) or "record"
        # Kept as the quarantine reason and shown to ops: short, one line, no email address.
        value_shown = shown(value, 120)
        known = f" in {path}" if path else ""
        wanted = (
            f"expected {accepted}"
            if isinstance(accepted, str)
            else f"accepted are {', '.join(render_value(a) for a in self.accepted)}"
        )
        super().__init__(
            f"{record}: field {field}: cannot translate {value_shown} (mapping{known}): {wanted}"
        )


# -- CRM values --------------------------------------------------------------------------------


def _is_crm_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, str))


def crm_key(value: Any) -> Any:
    """The form in which CRM values are compared: a table entry ``true`` matches the boolean true
    and the text "true" (HubSpot sends text), ``1`` matches 1 and "1" (Vtiger's checkboxes); text
    is otherwise compared exactly, as picklist values are."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value
    return ("unmatched", repr(value))


def render_value(value: Any) -> str:
    """A CRM value as the mapping file spells it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, StrEnum):
        return value.value
    return str(value)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def field_value(record: RecordMap[str, Any], name: str) -> Any:
    """A field of a record; a dotted name reads a related record (Salesforce nests those:
    ``{"Account": {"Name": ...}}``). A field the record lacks reads as null."""
    if name in record:
        return record[name]
    current: Any = record
    for part in name.split("."):
        if not isinstance(current, RecordMap):
            return None
        current = current.get(part)
    return current


# -- validators (their messages are what the admin reads) ------------------------------------


def _name_checker(pattern: re.Pattern[str], what: str, accepted: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise Problem(f"{value!r} is not {what}: accepted are {accepted}")
        return value

    return check


_FIELD_ACCEPTED = (
    "letters, digits and _ starting with a letter (custom fields end in __c), with dots only "
    "between the parts of a relationship path such as Account.Name"
)
FieldName = Annotated[
    str,
    PlainValidator(_name_checker(FIELD_NAME_RE, "a CRM field's API name", _FIELD_ACCEPTED)),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": FIELD_NAME_RE.pattern,
            "description": "A field's API name (e.g. HasOptedOutOfEmail, Legal_Basis__c, Account.Name).",
        }
    ),
]
ObjectName = Annotated[
    str,
    PlainValidator(
        _name_checker(
            OBJECT_NAME_RE, "a CRM object's API name", "letters, digits and _ starting with a letter"
        )
    ),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": OBJECT_NAME_RE.pattern,
            "description": "An object's API name (e.g. Contact, ContactPointTypeConsent).",
        }
    ),
]
Vendor = Annotated[
    str,
    PlainValidator(
        _name_checker(VENDOR_RE, "a vendor name", "lower-case letters, digits, - and _ (e.g. salesforce)")
    ),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": VENDOR_RE.pattern,
            "description": "The connector plugin that understands this object (e.g. salesforce).",
        }
    ),
]


def _key_checker(what: str) -> Callable[[Any], str]:
    return _name_checker(KEY_RE, f"a {what} key", "lower-case letters, digits and _, starting with a letter")


PurposeKey = Annotated[
    str,
    PlainValidator(_key_checker("purpose")),
    WithJsonSchema(
        {"type": "string", "pattern": KEY_RE.pattern, "description": "A purpose key from consentsync.yaml."}
    ),
]
ChannelKey = Annotated[
    str,
    PlainValidator(_key_checker("channel")),
    WithJsonSchema(
        {"type": "string", "pattern": KEY_RE.pattern, "description": "A channel from consentsync.yaml."}
    ),
]

_CRM_SCALAR_SCHEMA: dict[str, Any] = {"type": ["boolean", "integer", "string", "null"]}
_CRM_SCALAR_ACCEPTED = "true, false, whole numbers, text and null"


def _table(value: Any, what: str, convert: Callable[[Any, Any], Any]) -> dict[Any, Any]:
    """A translation table keyed by CRM values: each key checked and unique as compared."""
    if not isinstance(value, dict) or not value:
        raise Problem(f"expected a table of {what}, with at least one entry (got {value!r})")
    seen: dict[Any, Any] = {}
    out: dict[Any, Any] = {}
    for key, item in value.items():
        if not _is_crm_scalar(key):
            raise Problem(
                f"{key!r} cannot be a CRM value: accepted are {_CRM_SCALAR_ACCEPTED}", line_at=(key,)
            )
        canonical = crm_key(key)
        if canonical in seen:
            raise Problem(
                f"CRM value {render_value(key)} is listed twice (also as {render_value(seen[canonical])})",
                line_at=(key,),
            )
        seen[canonical] = key
        out[key] = convert(key, item)
    return out


def _enum_or_null(enum: type[StrEnum], what: str) -> Callable[[Any, Any], Any]:
    accepted = ", ".join(member.value for member in enum)

    def convert(key: Any, item: Any) -> Any:
        if item is None:
            return None
        try:
            return enum(item)
        except ValueError:
            raise Problem(
                f"unknown {what} {item!r}: accepted are {accepted}, or null (says nothing)", line_at=(key,)
            ) from None

    return convert


def _status_pull(value: Any) -> dict[Any, ConsentStatus | None]:
    return _table(value, "CRM value: status", _enum_or_null(ConsentStatus, "status"))


def _basis_pull(value: Any) -> dict[Any, LawfulBasis | None]:
    return _table(value, "CRM value: lawful basis", _enum_or_null(LawfulBasis, "basis"))


def _key_values(value: Any) -> dict[Any, str | None]:
    def convert(key: Any, item: Any) -> str | None:
        if item is not None and (not isinstance(item, str) or not KEY_RE.match(item)):
            raise Problem(
                f"{item!r} is not a key: accepted are lower-case letters, digits and _, or null (not ours)",
                line_at=(key,),
            )
        return item

    return _table(value, "CRM value: key", convert)


def _crm_push_value(key: Any, item: Any) -> Any:
    if not _is_crm_scalar(item):
        raise Problem(
            f"{item!r} cannot be written to a CRM field: accepted are {_CRM_SCALAR_ACCEPTED}",
            line_at=(key,),
        )
    return item


def _status_push(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise Problem(
            "expected a table with suppressed, allowed, withdrawn, no_consent or some of them "
            f"(got {value!r})"
        )
    for key, item in value.items():
        if key not in STATUS_PUSH_KEYS:
            raise Problem(
                f"unknown key {render_value(key)!r}: accepted are {', '.join(STATUS_PUSH_KEYS)}",
                line_at=(key,),
            )
        _crm_push_value(key, item)
    return dict(value)


def _basis_push(value: Any) -> dict[LawfulBasis, Any]:
    if not isinstance(value, dict) or not value:
        raise Problem(f"expected a table of lawful basis: CRM value, with at least one entry (got {value!r})")
    accepted = ", ".join(member.value for member in LawfulBasis)
    out: dict[LawfulBasis, Any] = {}
    for key, item in value.items():
        try:
            basis = LawfulBasis(key)
        except ValueError:
            raise Problem(f"unknown basis {key!r}: accepted are {accepted}", line_at=(key,)) from None
        out[basis] = _crm_push_value(key, item)
    return out


def _table_schema(values: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": values,
        "description": description,
    }


def _enum_schema(enum: type[StrEnum], nullable: bool) -> dict[str, Any]:
    members: list[Any] = [member.value for member in enum]
    return {"enum": [*members, None] if nullable else members}


StatusPullTable = Annotated[
    dict[Any, ConsentStatus | None],
    PlainValidator(_status_pull),
    WithJsonSchema(
        _table_schema(
            _enum_schema(ConsentStatus, nullable=True),
            "CRM value -> ledger status; null means the value says nothing. Keys may be true, false, "
            "numbers, text or null (an empty field, which otherwise says nothing).",
        )
    ),
]
BasisPullTable = Annotated[
    dict[Any, LawfulBasis | None],
    PlainValidator(_basis_pull),
    WithJsonSchema(
        _table_schema(
            _enum_schema(LawfulBasis, nullable=True),
            "CRM value -> lawful basis; null means the value names no basis.",
        )
    ),
]
KeyValuesTable = Annotated[
    dict[Any, str | None],
    PlainValidator(_key_values),
    WithJsonSchema(
        _table_schema(
            {"type": ["string", "null"], "pattern": KEY_RE.pattern},
            "CRM value -> key; null means a record with that value is not consentsync's concern.",
        )
    ),
]
StatusPushTable = Annotated[
    dict[str, Any],
    PlainValidator(_status_push),
    WithJsonSchema(
        {
            "type": "object",
            "properties": {
                "suppressed": {
                    **_CRM_SCALAR_SCHEMA,
                    "description": "Written when the ledger says the processing must stop.",
                },
                "allowed": {**_CRM_SCALAR_SCHEMA, "description": "Written when the ledger allows it."},
                "withdrawn": {
                    **_CRM_SCALAR_SCHEMA,
                    "description": "Written instead of suppressed when the person said no: a withdrawal, "
                    "a refusal or an upheld objection (not merely no consent on record, or an expiry).",
                },
                "no_consent": {
                    **_CRM_SCALAR_SCHEMA,
                    "description": "Written when the processing stops only because no consent is on record "
                    "(nobody said no). Leave it out to leave the CRM's value alone in that case: a "
                    "default never overwrites what the CRM shows. Choose a value the CRM can undo.",
                },
            },
            "additionalProperties": False,
            "minProperties": 1,
            "description": "Effective state -> CRM value. Leave a key out to never write in that case.",
        }
    ),
]
BasisPushTable = Annotated[
    dict[LawfulBasis, Any],
    PlainValidator(_basis_push),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": _enum_schema(LawfulBasis, nullable=False),
            "additionalProperties": _CRM_SCALAR_SCHEMA,
            "minProperties": 1,
            "description": "Ledger basis -> CRM value; a basis left out is never written.",
        }
    ),
]


# -- the file format ---------------------------------------------------------------------------


class Direction(StrEnum):
    PULL = "pull"  # CRM -> ledger
    PUSH = "push"  # ledger -> CRM
    BOTH = "both"

    @property
    def pulls(self) -> bool:
        return self is not Direction.PUSH

    @property
    def pushes(self) -> bool:
        return self is not Direction.PULL


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinkSpec(_Strict):
    """Another CRM record this one points to (e.g. a Contact's Individual): the engine links both
    records to the same person."""

    object: ObjectName
    field: FieldName = Field(description="The field holding the other record's id.")


class IdentitySpec(_Strict):
    """How records of this object are told apart and matched to a person."""

    record_id: FieldName = Field(description="The CRM's primary key field (Salesforce: Id).")
    modstamp: FieldName = Field(
        description="The change timestamp used for the incremental cursor (Salesforce: SystemModstamp)."
    )
    email: FieldName | None = Field(
        default=None, description="The email field, matched lower-cased and trimmed."
    )
    links: list[LinkSpec] = Field(default_factory=list)


class FromFieldSpec(_Strict):
    """A purpose or channel read from a field, through a table."""

    field: FieldName
    values: KeyValuesTable


class StatusSpec(_Strict):
    """The field that carries the consent status, and its translation both ways."""

    field: FieldName
    direction: Direction = Field(default=Direction.PULL, description="pull, push or both.")
    also_read: list[FieldName] = Field(
        default_factory=list,
        description="More fields read with the same pull table; the most restrictive status wins. "
        "Never written.",
    )
    pull: StatusPullTable | None = None
    push: StatusPushTable | None = None

    @model_validator(mode="after")
    def _tables_match_direction(self) -> StatusSpec:
        _check_direction(self.direction, self.pull, self.push, "{suppressed: ..., allowed: ...}")
        if self.also_read and not self.direction.pulls:
            raise Problem(
                "also_read needs direction pull or both: these fields are only read", at=("also_read",)
            )
        return self


class BasisSpec(_Strict):
    """The field that carries the lawful basis, and its translation both ways."""

    field: FieldName
    direction: Direction = Field(default=Direction.PULL, description="pull, push or both.")
    pull: BasisPullTable | None = None
    push: BasisPushTable | None = None

    @model_validator(mode="after")
    def _tables_match_direction(self) -> BasisSpec:
        _check_direction(self.direction, self.pull, self.push, "{consent: ..., contract: ...}")
        return self


def _check_direction(direction: Direction, pull: Any, push: Any, push_example: str) -> None:
    if direction.pulls and pull is None:
        raise Problem(
            f"direction {direction.value} needs a pull table (CRM value: ledger value)", at=("direction",)
        )
    if direction.pushes and push is None:
        raise Problem(f"direction {direction.value} needs a push table {push_example}", at=("direction",))
    if not direction.pulls and pull is not None:
        raise Problem(
            "direction push never reads this table: set direction: both, or remove it", at=("pull",)
        )
    if not direction.pushes and push is not None:
        raise Problem(
            "direction pull never writes this table: set direction: both, or remove it", at=("push",)
        )


class ValueSpec(_Strict):
    field: FieldName


def _purpose_shape(value: Any) -> str:
    return _FROM_FIELD if isinstance(value, dict) else _CONSTANT


def _channel_shape(value: Any) -> str:
    if isinstance(value, list):
        return _LIST
    return _purpose_shape(value)


PurposeRef = Annotated[
    Annotated[PurposeKey, Tag(_CONSTANT)] | Annotated[FromFieldSpec, Tag(_FROM_FIELD)],
    Discriminator(_purpose_shape),
]
ChannelRef = Annotated[
    Annotated[ChannelKey, Tag(_CONSTANT)]
    | Annotated[list[ChannelKey], Tag(_LIST), MinLen(1)]
    | Annotated[FromFieldSpec, Tag(_FROM_FIELD)],
    Discriminator(_channel_shape),
]


class ConsentSpec(_Strict):
    """One consent a record carries: for which purpose and channel, in which field."""

    purpose: PurposeRef = Field(description="A purpose key, or {field, values} to read it from a field.")
    channel: ChannelRef = Field(
        description="A channel, a list of channels (the same status on each), or {field, values}."
    )
    status: StatusSpec
    basis: BasisSpec | None = None
    event_time: ValueSpec | None = Field(
        default=None, description="When the person acted (not when the record changed)."
    )
    double_opt_in_at: ValueSpec | None = Field(
        default=None, description="When a double opt-in was confirmed."
    )
    source: ValueSpec | None = Field(default=None, description="The capture source, kept with the evidence.")
    notice_version: ValueSpec | None = Field(
        default=None, description="The notice or purpose text version shown."
    )

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> ConsentSpec:
        channels = self.channel if isinstance(self.channel, list) else [self.channel]
        for index, channel in enumerate(channels):
            if isinstance(channel, str) and channels.index(channel) != index:
                raise Problem(f"channel {channel!r} is listed twice", at=("channel", index))
        from_fields = isinstance(self.purpose, FromFieldSpec) or isinstance(self.channel, FromFieldSpec)
        if from_fields and self.basis is not None and self.basis.direction.pushes:
            raise Problem(
                "a consent whose purpose or channel is read from a field writes its status only "
                "(basis direction: pull)",
                at=("basis", "direction"),
            )
        if (
            from_fields
            and self.status.direction.pushes
            and self.status.push
            and "allowed" in self.status.push
        ):
            # A record per purpose (a consent row) is written to show a no; "allowed" would write
            # an opt-in where the ledger allows by default (legitimate interest, no evidence):
            # a consent row claiming a consent nobody gave.
            raise Problem(
                "a consent whose purpose or channel is read from a field is written only to show a "
                "no: its push table takes suppressed, withdrawn or no_consent, not allowed",
                at=("status", "push"),
            )
        for place, spec in (("status", self.status), ("basis", self.basis)):
            if spec is not None and spec.direction.pushes and "." in spec.field:
                raise Problem(
                    f"{spec.field} is a field of a related record: it cannot be written through this "
                    "object (set direction: pull, or map the related object in its own file)",
                    at=(place, "field"),
                )
        _check_known(self, info.context or {})
        return self

    def constant_pairs(self) -> list[tuple[str, str]]:
        """The (purpose, channel) pairs this consent always speaks for (none when read from fields)."""
        if not isinstance(self.purpose, str) or isinstance(self.channel, FromFieldSpec):
            return []
        channels = self.channel if isinstance(self.channel, list) else [self.channel]
        return [(self.purpose, channel) for channel in channels]


def _listed(keys: Iterable[str]) -> str:
    """Keys for a message: in the configuration's order, or sorted when they come as a set."""
    return ", ".join(sorted(keys) if isinstance(keys, (set, frozenset)) else keys)


def _check_known(consent: ConsentSpec, context: RecordMap[str, Any]) -> None:
    """Purposes and channels against the caller's configuration, when it gives one."""
    purposes = context.get("purposes")
    channels = context.get("channels")
    if purposes is not None:
        accepted = _listed(purposes)
        if isinstance(consent.purpose, str):
            if consent.purpose not in purposes:
                raise Problem(
                    f"unknown purpose {consent.purpose!r}: accepted are {accepted}", at=("purpose",)
                )
        else:
            for crm_value, key in consent.purpose.values.items():
                if key is not None and key not in purposes:
                    raise Problem(
                        f"unknown purpose {key!r}: accepted are {accepted}, or null (not ours)",
                        at=("purpose", "values"),
                        line_at=(crm_value,),
                    )
    if channels is not None:
        accepted = _listed(channels)
        if isinstance(consent.channel, FromFieldSpec):
            for crm_value, key in consent.channel.values.items():
                if key is not None and key not in channels:
                    raise Problem(
                        f"unknown channel {key!r}: accepted are {accepted}, or null (not ours)",
                        at=("channel", "values"),
                        line_at=(crm_value,),
                    )
        else:
            listed = consent.channel if isinstance(consent.channel, list) else [consent.channel]
            for index, channel in enumerate(listed):
                if channel not in channels:
                    at = ("channel", index) if isinstance(consent.channel, list) else ("channel",)
                    raise Problem(f"unknown channel {channel!r}: accepted are {accepted}", at=at)
    # Given the configured Purpose objects (not just their keys), each pair is checked as the
    # ledger will check it, so a mistake shows when the file loads, not as quarantined records.
    if isinstance(purposes, RecordMap):
        for purpose, channel in consent.constant_pairs():
            allowed = getattr(purposes.get(purpose), "channels", None)
            if allowed is not None and channel not in allowed:
                at = (
                    ("channel", consent.channel.index(channel))
                    if isinstance(consent.channel, list)
                    else ("channel",)
                )
                raise Problem(
                    f"channel {channel!r} is not configured for purpose {purpose!r}: "
                    f"accepted are {', '.join(allowed)}",
                    at=at,
                )


class MappingSpec(_Strict):
    """A consentsync mapping file (version 1): one CRM object's consent fields."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="consentsync mapping file",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    version: Literal[1] = Field(description="The format version: 1.")
    vendor: Vendor
    object: ObjectName
    identity: IdentitySpec
    consents: list[ConsentSpec] = Field(min_length=1)
    personal_fields: dict[FieldName, str | None] = Field(
        default_factory=dict,
        description=(
            "What the `anonymise` erasure action writes to this object's records of an erased "
            "person: field -> value (null clears the field). Used only where the connector's "
            "`erasure` setting names `anonymise` for this object."
        ),
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> MappingSpec:
        pairs: dict[tuple[str, str], int] = {}
        written: dict[str, str] = {}
        # The fields that say who a record is. A consent read from one of them is an address or
        # an id taken for a choice, and one pushed to one of them writes the ledger's decision
        # over the person's address or the record's links (`mapping check --against` saw only
        # that the field is writable).
        identity = {
            self.identity.record_id: "identity.record_id",
            self.identity.modstamp: "identity.modstamp",
            **({self.identity.email: "identity.email"} if self.identity.email else {}),
            **{link.field: f"identity.links[{i}].field" for i, link in enumerate(self.identity.links)},
        }
        for index, consent in enumerate(self.consents):
            for place, spec in (("status", consent.status), ("basis", consent.basis)):
                if spec is None:
                    continue
                named: list[tuple[tuple[str | int, ...], str]] = [(("field",), spec.field)]
                if isinstance(spec, StatusSpec):
                    named += [(("also_read", i), name) for i, name in enumerate(spec.also_read)]
                for loc, name in named:
                    if name in identity:
                        raise Problem(
                            f"field {name} is the record's {identity[name]}: a consent is read from "
                            "and written to a field of its own (an opt-out box, a picklist), never "
                            "one that says who the record is",
                            at=("consents", index, place, *loc),
                        )
            for pair in consent.constant_pairs():
                if pair in pairs:
                    raise Problem(
                        f"purpose {pair[0]!r} on channel {pair[1]!r} is already mapped by "
                        f"consents[{pairs[pair]}]: one consent per purpose and channel (read more "
                        "fields for it with status.also_read)",
                        at=("consents", index, "purpose"),
                    )
                pairs[pair] = index
            for place, spec in (("status", consent.status), ("basis", consent.basis)):
                if spec is None or not spec.direction.pushes:
                    continue
                if spec.field in written:
                    raise Problem(
                        f"field {spec.field} is already written by {written[spec.field]}: "
                        "two consents writing one field would overwrite each other",
                        at=("consents", index, place, "field"),
                    )
                written[spec.field] = f"consents[{index}].{place}"
        return self


# -- the loaded mapping ------------------------------------------------------------------------


class Mapping:
    """One loaded mapping file: translates records of one CRM object."""

    __slots__ = (
        "_canonical",
        "_consent_fields",
        "_field_lines",
        "_pull_fields",
        "_readers",
        "object",
        "pairs",
        "path",
        "spec",
        "vendor",
    )

    def __init__(self, spec: MappingSpec, path: Path, field_lines: dict[str, int] | None = None) -> None:
        self.spec = spec
        self.path = path
        # The line each CRM field is first named on in the file: an error about a field the CRM
        # lacks, or whose type is wrong for its use, names where to correct it.
        self._field_lines = field_lines or {}
        self.vendor = spec.vendor
        self.object = spec.object
        # Translation tables keyed the way CRM values are compared (see crm_key), built once.
        self._canonical: dict[int, dict[Any, Any]] = {}
        # Asked for every record a sync reads: worked out once, from a spec that never changes.
        self._pull_fields = self._fields_to_pull()
        identity = spec.identity
        leave_out = {identity.email, identity.record_id, identity.modstamp}
        self._consent_fields = tuple(name for name in self._pull_fields if name not in leave_out)
        # Every pull table that reads each field: a value pushed is left alone only where the
        # record's value reads the same through all of them (SuperOffice's legal basis key is read
        # as a status and as a basis).
        readers: dict[str, list[dict[Any, Any]]] = {}
        for consent in spec.consents:
            status, basis = consent.status, consent.basis
            read: list[tuple[str, dict[Any, Any] | None]] = [
                (name, status.pull) for name in (status.field, *status.also_read)
            ]
            if basis is not None:
                read.append((basis.field, basis.pull))
            for ref in (consent.purpose, consent.channel):
                if isinstance(ref, FromFieldSpec):
                    read.append((ref.field, ref.values))
            for name, table in read:
                if table is not None:
                    readers.setdefault(name, []).append(table)
        self._readers = {name: tuple(tables) for name, tables in readers.items()}
        # Each consent with the (purpose, channel) pairs it always speaks for: asked for every
        # record a push is decided for.
        self.pairs = [(consent, consent.constant_pairs()) for consent in spec.consents]

    def __repr__(self) -> str:
        return f"Mapping({self.vendor}:{self.object} from {self.path})"

    # -- fields --------------------------------------------------------------------------------

    def where(self, field: str) -> str:
        """``path:line`` of the line that names ``field`` (the file alone where none does)."""
        line = self._field_lines.get(field)
        return f"{self.path}:{line}" if line else str(self.path)

    def field_names(self) -> list[str]:
        """Every CRM field the file names (read or written), in file order."""
        return list(self._field_lines)

    def problems_against(self, fields: RecordMap[str, Any]) -> list[str]:
        """What the CRM's description of the object (field name -> ``FieldInfo``, as a
        connector's ``describe`` answers) says is wrong with this mapping, each naming the file
        and line: a field read that does not exist (or the user cannot see), a field pushed that
        the user cannot write, a cursor field (``identity.modstamp``) that is not a date-time."""
        problems: list[str] = []
        for name in self.pull_fields():
            if name not in fields:
                problems.append(f"{self.where(name)}: {self.object}.{name} does not exist or is not visible")
        for name in self.push_fields():
            info = fields.get(name)
            if info is not None and not info.updateable:
                problems.append(
                    f"{self.where(name)}: {self.object}.{name} is pushed but not writable by this user"
                )
        cursor = self.spec.identity.modstamp
        info = fields.get(cursor)
        kind = str(getattr(info, "type", "") or "")
        if info is not None and not is_date_time_type(kind):
            problems.append(
                f"{self.where(cursor)}: identity.modstamp {self.object}.{cursor} is a {kind} field: the "
                "cursor must be a date-time field the CRM stamps on every change (its last-modified time)"
            )
        return problems

    def pull_fields(self) -> list[str]:
        """Every CRM field to read, in a stable order without repeats: the id and change
        timestamp first, and the pushed fields too (their current values make pushes idempotent)."""
        return list(self._pull_fields)

    def consent_fields(self) -> tuple[str, ...]:
        """The fields read that carry consent (``pull_fields`` less the record's id, change
        timestamp and email address)."""
        return self._consent_fields

    def _fields_to_pull(self) -> tuple[str, ...]:
        identity = self.spec.identity
        names = [identity.record_id, identity.modstamp]
        if identity.email:
            names.append(identity.email)
        names += [link.field for link in identity.links]
        for consent in self.spec.consents:
            for ref in (consent.purpose, consent.channel):
                if isinstance(ref, FromFieldSpec):
                    names.append(ref.field)
            names += [consent.status.field, *consent.status.also_read]
            optional = (
                consent.basis,
                consent.event_time,
                consent.double_opt_in_at,
                consent.source,
                consent.notice_version,
            )
            names += [spec.field for spec in optional if spec is not None]
        return tuple(dict.fromkeys(names))

    def push_fields(self) -> list[str]:
        """The CRM fields consentsync writes (direction push or both), in file order."""
        names: list[str] = []
        for consent in self.spec.consents:
            for spec in (consent.status, consent.basis):
                if spec is not None and spec.direction.pushes:
                    names.append(spec.field)
        return list(dict.fromkeys(names))

    # -- reading -------------------------------------------------------------------------------

    def identity_from(self, record: RecordMap[str, Any]) -> tuple[str, str | None, list[tuple[str, str]]]:
        """(record id, normalised email or None, [(object, id) of linked records])."""
        record_id = self._record_id(record)
        identity = self.spec.identity
        email = None
        if identity.email:
            raw = field_value(record, identity.email)
            if not _blank(raw):
                email = self._email(record_id, identity.email, raw)
        links: list[tuple[str, str]] = []
        for link in identity.links:
            raw = field_value(record, link.field)
            if _blank(raw):
                continue
            if not isinstance(raw, (str, int)) or isinstance(raw, bool) or not _is_id(str(raw).strip()):
                raise self._bad(record_id, link.field, raw, f"the id of a {link.object} record")
            links.append((link.object, str(raw).strip()))
        return record_id, email, links

    def evidence_from(
        self,
        record: RecordMap[str, Any],
        *,
        connector: str,
        observed_at: datetime,
        record_id: str | None = None,
        given_at: RecordMap[str, datetime] | None = None,
        status_fields: Collection[str] | None = None,
        held_back: list[MappingValueError] | None = None,
        clock_lag: timedelta | None = None,
    ) -> list[Evidence]:
        """What the record says, one Evidence per consent and channel; a consent whose status
        translates to null (or whose purpose or channel is not ours) says nothing. ``record_id``:
        the id ``identity_from`` already read from this record. ``given_at``: by status field,
        when the CRM says its value was given, the event time of a consent the mapping dates
        nothing of (``CrmRecord.earlier_given_at``). ``status_fields``: only the consents whose
        status field is one of these (a record's earlier values: its current ones are weighed
        elsewhere). ``clock_lag``: how far the CRM's clock may run behind ours, as its answers
        showed when the record was read (``Evidence.clock_lag``; None: not known to run behind).

        A value the tables cannot translate raises ``MappingValueError``, unless ``held_back`` is
        given: then it stops only what it says (docs/policy.md, "Event times and input limits"),
        and its error is added to ``held_back`` for the record to be quarantined with. A no
        (withdrawn, refused) is read without it (a withdrawal needs no basis, no time, no notice);
        a consent whose purpose, channel or status cannot be read, or any other status with such a
        value (a grant on a basis the mapping cannot name), is held back, alone: the record's
        other consents are read all the same."""
        if record_id is None:
            record_id = self._record_id(record)
        out: list[Evidence] = []
        for consent in self.spec.consents:
            if not consent.status.direction.pulls:
                continue
            if status_fields is not None and consent.status.field not in status_fields:
                continue
            try:
                out += self._consent_evidence(
                    record, record_id, consent, connector, observed_at, given_at, held_back, clock_lag
                )
            except MappingValueError as error:
                if held_back is None:
                    raise
                held_back.append(error)
        return out

    def _consent_evidence(
        self,
        record: RecordMap[str, Any],
        record_id: str,
        consent: ConsentSpec,
        connector: str,
        observed_at: datetime,
        given_at: RecordMap[str, datetime] | None,
        held_back: list[MappingValueError] | None,
        clock_lag: timedelta | None = None,
    ) -> list[Evidence]:
        """One consent's evidence (``evidence_from``); MappingValueError for a value that stops it."""
        purpose = self._key(record, record_id, consent.purpose)
        channels = self._channels(record, record_id, consent.channel)
        if purpose is None or not channels:
            return []
        status = self._status(record, record_id, consent.status, held_back)
        if status is None:
            return []
        said_no = held_back is not None and status in SAID_NO_STATUSES

        def lenient(read: Callable[[], Any]) -> Any:
            """What ``read`` gives; for a no, None where it cannot be translated (noted)."""
            try:
                return read()
            except MappingValueError as error:
                if not said_no:
                    raise
                assert held_back is not None
                held_back.append(error)
                return None

        basis = None
        if consent.basis is not None and consent.basis.direction.pulls:
            table = consent.basis.pull
            assert table is not None
            field = consent.basis.field
            basis = lenient(lambda: self._translate(record, record_id, field, table))
        event_time = lenient(lambda: self._moment(record, record_id, consent.event_time))
        if event_time is None and given_at is not None:
            event_time = given_at.get(consent.status.field)
        elif event_time is not None:
            event_time = _read_in_doubt(
                event_time, status, _zone_unknown(record, consent.event_time), observed_at
            )
        double_opt_in_at = lenient(lambda: self._moment(record, record_id, consent.double_opt_in_at))
        notice = lenient(lambda: self._text(record, record_id, consent.notice_version, NOTICE_VERSION_MAX))
        captured = lenient(lambda: self._text(record, record_id, consent.source, EVIDENCE_REF_MAX))
        reference = f"{self.object}/{record_id}"
        if captured:
            reference = f"{reference} (capture source: {captured})"[:EVIDENCE_REF_MAX]
        return [
            Evidence(
                purpose=purpose,
                channel=channel,
                status=status,
                basis=basis,
                event_time=event_time,
                observed_at=observed_at,
                source=f"{connector}:{self.object}",
                origin=Origin.CRM,
                notice_version=notice,
                double_opt_in_at=double_opt_in_at,
                evidence_ref=reference,
                # Only beside a time the CRM's clock stamped: an undated value is read as when
                # it was observed, on our clock.
                clock_lag=clock_lag if event_time is not None else None,
            )
            for channel in channels
        ]

    # -- writing -------------------------------------------------------------------------------

    def updates_for(
        self,
        record: RecordMap[str, Any],
        states: dict[tuple[str, str], EffectiveState],
        *,
        ours: RecordMap[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The field values that make ``record`` show the ledger's ``states``: only fields pushed
        (direction push or both), and only where the record shows something else (a field the
        record lacks is written). Never raises: a push must not fail on what a record holds.

        ``ours``: the status fields whose value in ``record`` is one this project wrote itself
        (and nobody has changed since), each with the value the field held just before that write
        (None where it is not known), or an ``OurWrite`` that also says what the write sent. A
        purpose's default basis leaves a CRM's opt-out alone (below), but not one of ours the
        ledger no longer implies: a restriction's Do Not Call once the restriction is lifted, an
        E-marketing consent SuperOffice shows Withdrawn since an expiry removed it and the person
        renewed it, is put back to what the field held before (``_put_back``).
        ``ours`` is asked about a field (``in``) only where that field would be put back if its
        earlier value were known: the engine passes a mapping that notes what it is asked, and
        looks up its own writes only for those fields (sync/engine.py, ``_put_backs``).

        "Something else" is read through the mapping's own pull tables: a value that translates
        to the same status or lawful basis as the one to write (and the same through any other
        table reading that field) already says it, and is left as the CRM holds it. HubSpot's
        three "Legitimate interest" options all read as legitimate_interests: a contact showing
        "prospect/lead" is not relabelled "existing customer", a claim nobody made. A value that
        reads otherwise, says nothing (null in the table), is empty or is not in the table is
        written.

        A status field covering several channels is written as suppressed when any of them is
        suppressed (the most restrictive wins); a basis field is written from the ledger's basis,
        and left alone for a basis its push table does not name.
        """
        updates: dict[str, Any] = {}
        for consent, pairs in self.pairs:
            if not pairs and consent.status.direction.pushes:
                pairs = self._pairs_shown(record, consent)  # a record per purpose: the one it shows
            present = [states[pair] for pair in pairs if pair in states]
            if not present:
                continue
            status = consent.status
            if status.direction.pushes and status.push is not None:
                case = _push_case(present, status.push)
                if case is not None and case in status.push:
                    self._update(updates, record, status.field, status.push[case], status.pull)
                elif ours is not None and (
                    case in (None, "allowed") and record.get(status.field) != status.push["allowed"]
                    if "allowed" in status.push
                    # A mapping that never writes a yes: an empty field may be ours too (a consent
                    # SuperOffice deleted when we removed it), and a suppression for want of a
                    # consent, which leaves the CRM's own value, need not keep our write.
                    else case in (None, "allowed", "no_consent")
                ):
                    # No state the field covers is suppressed on evidence (``_push_case``) and the
                    # record does not show the field cleared: an opt-out of ours may go. Weighed
                    # for every record of every sync, so the rest is left out by the cheapest
                    # tests first.
                    self._put_back(updates, record, status, present, ours)
            basis = consent.basis
            if basis is not None and basis.direction.pushes and basis.push is not None:
                wanted = present[0].basis
                # Never a basis the ledger holds by default (no evidence, or evidence that
                # named none): that would claim in the CRM what nobody stated.
                if wanted in basis.push and present[0].basis_stated:
                    self._update(updates, record, basis.field, basis.push[wanted], basis.pull)
        return updates

    def _put_back(
        self,
        updates: dict[str, Any],
        record: RecordMap[str, Any],
        status: StatusSpec,
        present: list[EffectiveState],
        ours: RecordMap[str, Any],
    ) -> None:
        """Puts back into ``status.field``, which shows an opt-out this project wrote itself, the
        value it held before that write (``ours``), where the ledger no longer implies the opt-out
        (docs/policy.md, "Lifting a restriction puts back what it wrote"): a restriction lifted,
        an objection rejected after its review.

        Only where no state the field covers is suppressed at all (allowed, if only by the
        purpose's default basis: service by phone on a contract). Failing safe, the opt-out is
        kept where any of them is suppressed, whatever the rule: on evidence or by a rule binding
        the person (a withdrawal, an objection upheld or pending, an erasure, a restriction still
        in force), and also for want of a consent (email marketing with none on record), where
        writing the earlier value (an opt-in) would tell the CRM the opposite of what the ledger
        says. Kept too where the field shows anything but an opt-out value of its push table (or,
        without ``allowed``, emptiness), where the field is not one of ``ours``, or where the
        earlier value is unknown, empty, not in the field's pull table or itself a no.

        A field whose push table has no ``allowed`` (the mapping never writes a yes: SuperOffice's
        E-marketing consent is recorded by what captures it) is put back only where our write is
        known (``OurWrite.sent``) and was not what the person's no writes there (``withdrawn``, or
        ``suppressed`` where the table has no ``withdrawn``): a removal for a restriction or an
        expiry goes, a withdrawal written for the person's own no stays, whatever they said since
        (a new consent elsewhere is not copied into such a CRM). So does a removal the person said
        no under since it was queued (``OurWrite.said_no_since``, for a pair the field covers: a
        withdrawal given while restricted, not written as the CRM showed Withdrawn already): it
        is what their no writes there now, and a consent given later is theirs to record anew,
        not a reason to set the one from before the removal again. Where a no and a removal
        write the same value, nothing tells them apart: kept. In such a field a suppression for
        want of a consent alone (``no_consent_on_record``, ``eprivacy_consent_required``, and no
        ``no_consent`` in the table) does not keep our write where the earlier value reads as the
        very status the ledger holds (a soft opt-in the ledger read as granted, and suppresses for
        e-mail for want of a consent): the mapping leaves such a value as the CRM held it (nothing
        contradicts the ledger), and the restriction's write alone would go on claiming a no
        (SuperOffice's Withdrawn) nobody gave.

        ``ours`` is asked last (``in``), once every other test passed: what it is asked is the
        fields worth looking the earlier value up for (``updates_for``)."""
        push, field = status.push or {}, status.field
        clears = "allowed" in push
        suppressed = [state for state in present if state.suppressed]
        if suppressed and (clears or "no_consent" in push or not all(map(_for_want_of_consent, suppressed))):
            return
        if field not in record:
            return
        shown = crm_key(record[field])
        if clears and shown == crm_key(push["allowed"]):
            return  # cleared already: what nearly every record shows
        opt_outs = {crm_key(push[case]) for case in ("suppressed", "withdrawn", "no_consent") if case in push}
        if shown not in opt_outs:
            return
        said_no = _NOT_KNOWN
        if not clears:
            # What the person's no writes here (as ``_push_case`` picks it): a write of that value
            # may have been theirs. A table that writes nothing else has nothing to put back, and
            # its records are not looked up (``ours`` is asked nothing).
            case = "withdrawn" if "withdrawn" in push else "suppressed"
            said_no = crm_key(push[case]) if case in push else _NOT_KNOWN
            if not opt_outs - {said_no}:
                return
        if field not in ours:
            return
        write = ours[field]
        earlier, sent, said_no_since = write if isinstance(write, OurWrite) else OurWrite(write, _NOT_KNOWN)
        if not clears and (
            sent is _NOT_KNOWN
            or crm_key(sent) == said_no
            # A no given since (while restricted, not written: the CRM showed our removal already).
            or any((state.purpose, state.channel) in said_no_since for state in present)
        ):
            return  # perhaps, or now, the person's own no: a mapping that never writes a yes keeps it
        pull = status.pull
        if _blank(earlier) or crm_key(earlier) in opt_outs:
            return
        if pull is not None:
            if crm_key(earlier) not in self._canonical_table(pull):
                return
            reading = self._reading(pull, earlier)
            if reading in SAID_NO_STATUSES:
                return
            if any(reading != state.status for state in suppressed):
                return  # says other than the ledger: the suppression keeps our write
        elif suppressed:
            return  # what the earlier value says is not known
        self._update(updates, record, field, earlier, pull)

    def _pairs_shown(self, record: RecordMap[str, Any], consent: ConsentSpec) -> list[tuple[str, str]]:
        """The (purpose, channel) pairs a record that names its own purpose and channel (a
        consent row) shows, as last read; none where a value is not in the tables."""
        try:
            purpose = self._key(record, "", consent.purpose)
            channels = self._channels(record, "", consent.channel)
        except MappingValueError:
            return []
        return [(purpose, channel) for channel in channels] if purpose else []

    def _update(
        self,
        updates: dict[str, Any],
        record: RecordMap[str, Any],
        field: str,
        value: Any,
        pull: dict[Any, Any] | None,
    ) -> None:
        """Adds ``field: value`` to ``updates`` unless the record already shows it: the same value
        (as CRM values are compared), or one that reads as the same thing (``_reads_the_same``)
        through ``pull``, the pull table of the entry that writes it. A field the record lacks is
        written."""
        if field in record:
            current = record[field]
            if crm_key(current) == crm_key(value):
                return
            if pull is not None and self._reads_the_same(field, pull, current, value):
                return
        updates[field] = value

    def _reads_the_same(self, field: str, pull: dict[Any, Any], current: Any, value: Any) -> bool:
        """Whether the record's ``current`` value of ``field`` says what ``value`` would: the same
        status or basis (never nothing: null in the table, an empty field, a value the table does
        not know) through ``pull``, and the same through every other table reading the field."""
        meaning = self._reading(pull, current)
        if meaning is None or meaning != self._reading(pull, value):
            return False
        return all(
            self._reading(table, current) == self._reading(table, value)
            for table in self._readers.get(field, ())
        )

    def _reading(self, table: dict[Any, Any] | None, value: Any) -> Any:
        """What ``value`` says through the pull ``table``, for a push to compare: None where there
        is no table, the value is empty or not in the table, or the table reads it as nothing.
        Never raises (``_translate`` does, for a record read)."""
        if table is None or _blank(value):
            return None
        return self._canonical_table(table).get(crm_key(value))

    def _canonical_table(self, table: dict[Any, Any]) -> dict[Any, Any]:
        """``table`` keyed the way CRM values are compared (``crm_key``), built once."""
        canonical = self._canonical.get(id(table))
        if canonical is None:
            canonical = self._canonical[id(table)] = {crm_key(key): target for key, target in table.items()}
        return canonical

    # -- helpers -------------------------------------------------------------------------------

    def _bad(
        self, record_id: str | None, field: str, value: Any, accepted: Iterable[Any] | str
    ) -> MappingValueError:
        return MappingValueError(
            field, value, accepted, object_type=self.object, record_id=record_id, path=self.path
        )

    def _email(self, record_id: str, field: str, raw: Any) -> str:
        try:
            if isinstance(raw, str):
                return normalise_email(raw)
        except InvalidInput:
            pass
        # The quarantine reason is kept and shown to ops: say what is wrong, not the address.
        shown = f"<{len(raw)} characters>" if isinstance(raw, str) else raw
        raise self._bad(record_id, field, shown, "an email address like local@domain.tld")

    def _record_id(self, record: RecordMap[str, Any]) -> str:
        name = self.spec.identity.record_id
        raw = field_value(record, name)
        if (
            _blank(raw)
            or not isinstance(raw, (str, int))
            or isinstance(raw, bool)
            or not _is_id(str(raw).strip())
        ):
            raise self._bad(
                None, name, raw, f"the record's id: one line of at most {RECORD_ID_MAX} characters"
            )
        return str(raw).strip()

    def _translate(
        self, record: RecordMap[str, Any], record_id: str, field: str, table: dict[Any, Any]
    ) -> Any:
        raw = field_value(record, field)
        canonical = self._canonical_table(table)
        wanted = crm_key(raw)
        if wanted in canonical:
            return canonical[wanted]
        if _blank(raw):
            return canonical.get(None)  # an empty field says nothing unless the table names null
        raise self._bad(record_id, field, raw, table)

    def _key(self, record: RecordMap[str, Any], record_id: str, ref: str | FromFieldSpec) -> str | None:
        if isinstance(ref, str):
            return ref
        return self._translate(record, record_id, ref.field, ref.values)

    def _channels(
        self, record: RecordMap[str, Any], record_id: str, ref: str | list[str] | FromFieldSpec
    ) -> list[str]:
        if isinstance(ref, list):
            return list(ref)
        key = self._key(record, record_id, ref)
        return [key] if key else []

    def _status(
        self,
        record: RecordMap[str, Any],
        record_id: str,
        spec: StatusSpec,
        held_back: list[MappingValueError] | None = None,
    ) -> ConsentStatus | None:
        """The status ``spec``'s fields say, the most restrictive of them. With ``held_back``, a
        field of ``also_read`` that cannot be translated beside one that says a no leaves that no
        to be read (noted in ``held_back``): whatever the other field meant, the person said no."""
        assert spec.pull is not None
        if not spec.also_read:
            return self._translate(record, record_id, spec.field, spec.pull)
        found: list[ConsentStatus | None] = []
        unread: list[MappingValueError] = []
        for name in (spec.field, *spec.also_read):
            try:
                found.append(self._translate(record, record_id, name, spec.pull))
            except MappingValueError as error:
                unread.append(error)
        said = [status for status in found if status is not None]
        if unread:
            if held_back is None or not any(status in SAID_NO_STATUSES for status in said):
                raise unread[0]
            held_back += unread
        return max(said, key=RESTRICTIVENESS.__getitem__) if said else None

    def _moment(self, record: RecordMap[str, Any], record_id: str, spec: ValueSpec | None) -> datetime | None:
        if spec is None:
            return None
        raw = field_value(record, spec.field)
        if _blank(raw):
            return None
        try:
            if isinstance(raw, datetime):
                return as_utc(raw)
        except OverflowError:  # year 1 or 9999 with an offset: off the calendar in UTC
            raise self._bad(record_id, spec.field, raw, "a time between 1970 and now") from None
        if isinstance(raw, date):
            return datetime(raw.year, raw.month, raw.day, tzinfo=UTC)
        if (span := _span(raw)) is not None:
            return span[0]  # its start; an event time is read within it by _read_in_doubt
        if isinstance(raw, str):
            try:
                return parse_timestamp(raw)
            except InvalidInput:
                pass
        raise self._bad(
            record_id,
            spec.field,
            raw,
            "an ISO 8601 date or time, e.g. 2026-11-23T03:21:24.000+0000, 2026-11-23T03:21:24Z or 2026-11-23",
        )

    def _text(
        self, record: RecordMap[str, Any], record_id: str, spec: ValueSpec | None, limit: int
    ) -> str | None:
        if spec is None:
            return None
        raw = field_value(record, spec.field)
        if _blank(raw):
            return None
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise self._bad(record_id, spec.field, raw, "text")
        # Line breaks and tabs in a CRM's text field read as spaces; an email address in it (a
        # capture note naming the person) is left out: the ledger keeps this text where erasure
        # cannot reach (docs/policy.md, "Erasure"). Anything else that is no label is refused.
        text = without_emails(" ".join(str(raw).split()), "[address left out]")
        if len(text) > limit:
            raise self._bad(record_id, spec.field, raw, f"text of at most {limit} characters")
        try:
            check_label(text, "text", limit)
        except InvalidInput:
            raise self._bad(record_id, spec.field, raw, "printable text without control characters") from None
        return text


def _is_id(text: str) -> bool:
    """A CRM record id the ledger can keep: one line of at most ``RECORD_ID_MAX`` characters."""
    if _PLAIN_ID.fullmatch(text):
        return True  # what CRMs issue, checked by one pattern instead of the label checks
    try:
        check_label(text, "id", RECORD_ID_MAX, required=True)
    except InvalidInput:
        return False
    return True


def _push_case(present: list[EffectiveState], table: dict[str, Any]) -> str | None:
    """Which entry of a status push table applies: ``withdrawn`` (when the table has it) for a
    person who said no, else ``suppressed`` or ``allowed``; None: none, the CRM's value stands.
    CRMs that record a withdrawal as a value of its own (SuperOffice's Withdrawn legal basis)
    must not show it for a consent never given."""
    suppressed = [state for state in present if state.suppressed]
    if not suppressed:
        # Allowed only on evidence: a purpose's default basis (no evidence at all) is no reason
        # to clear a Do Not Call the CRM shows (docs/policy.md, "Defaults are not evidence").
        # A field covering several channels is cleared only when each of them is allowed by
        # evidence.
        if any(s.rule in NO_EVIDENCE_RULES for s in present):
            return None
        return "allowed"
    said_no = any(s.status in SAID_NO_STATUSES or s.rule in SAID_NO_RULES for s in suppressed)
    if said_no:
        return "withdrawn" if "withdrawn" in table else "suppressed"
    if all(map(_for_want_of_consent, suppressed)):
        return "no_consent"  # written only where the table names it
    return "suppressed"


def _for_want_of_consent(state: EffectiveState) -> bool:
    """Whether ``state`` (suppressed) is so only because no consent is on record: by a default
    rule, or by a status under which nobody answered (``UNANSWERED_STATUSES``) over nothing but
    such statuses (the reconciler states no basis for it: ``basis_stated``). A request over a
    consent since expired is not: the CRM may still show the opt-in the ledger no longer holds."""
    return state.rule in NO_EVIDENCE_RULES or (
        state.status in UNANSWERED_STATUSES and not state.basis_stated and state.rule not in EVIDENCE_RULES
    )


# The time zones in use span UTC-12 (Baker Island: a day there ends last, at 12:00 UTC the next
# day) to UTC+14 (the Line Islands: a day there starts first, at 10:00 UTC the day before). A CRM
# time that does not say its zone is read within these bounds.
LATEST_OFFSET = timedelta(hours=12)
EARLIEST_OFFSET = timedelta(hours=14)
# From a date's midnight in UTC to the last moment of that day anywhere (the end of it at UTC-12).
END_OF_DAY = timedelta(days=1) + LATEST_OFFSET - timedelta(microseconds=1)
_DAY_ONLY = re.compile(r"\s*\d{4}-\d{2}-\d{2}\s*")
# How far a value that leaves its moment open reaches before and after what it says read as UTC
# (or, for an interval, its start): the earliest and the latest moment it can mean.
_DAY = (EARLIEST_OFFSET, END_OF_DAY)
_WALL_CLOCK = (EARLIEST_OFFSET, LATEST_OFFSET)
# An ISO 8601 interval "start/end", each a time with its offset or "Z".
_INTERVAL = re.compile(r"\s*([^/\s]+)\s*/\s*([^/\s]+)\s*")


def _span(raw: Any) -> tuple[datetime, datetime] | None:
    """The first and last moment an ISO 8601 interval ("start/end", each with its offset or "Z")
    names, in UTC; None for any other value (a start after its end, or a time without its offset,
    is no such interval). A connector that knows its CRM's zone hands one over for a wall-clock
    time that a daylight-saving change repeats or skips, which may mean either moment
    (docs/policy.md, "A CRM time without its zone")."""
    if not isinstance(raw, str) or (found := _INTERVAL.fullmatch(raw)) is None:
        return None
    try:
        stated = [datetime.fromisoformat(part) for part in found.groups()]
        if any(moment.tzinfo is None for moment in stated):
            return None
        start, end = (as_utc(moment) for moment in stated)
    except (ValueError, OverflowError):
        return None
    return (start, end) if start <= end else None


def _read_in_doubt(
    moment: datetime, status: ConsentStatus, doubt: tuple[timedelta, timedelta] | None, observed_at: datetime
) -> datetime | None:
    """The event time a CRM value says, read in the person's favour where the value leaves the
    moment open (docs/policy.md, "A CRM time without its zone"): ``moment`` is what the value
    says read as UTC (an interval's start); ``doubt`` how far before and after it the moment may
    lie (_DAY for a date alone, _WALL_CLOCK for a time without an offset, an interval's length).

    A no is read as late as it can be (the end of its day, or its time, at UTC-12; an interval's
    end), so that a consent captured after the value's own time in UTC but before the real no
    does not reverse it. While that moment is still to come the no has no time yet: unknown,
    read as when it was first observed (the same on every read; the observation itself would
    move with each read and make it a new value). A grant is read as early as it can be (its
    day's start, or its time, at UTC+14; an interval's start): it reverses no no it might have
    preceded, and its validity runs from then."""
    if doubt is None:
        return moment
    earlier, later = doubt
    if status in SAID_NO_STATUSES:
        late = moment + later
        if moment - earlier > observed_at:
            # Still to come in every zone: a future-dated no (a typo, a server's clock), which
            # the sync records without its time and quarantines for ops to correct.
            return late
        return late if late <= observed_at else None
    if status is ConsentStatus.GRANTED:
        return moment - earlier
    return moment


def _zone_unknown(record: RecordMap[str, Any], spec: ValueSpec | None) -> tuple[timedelta, timedelta] | None:
    """How the field ``spec`` reads leaves its moment open: _DAY for a date without a time of day
    (a CRM's Date field: "2026-11-23", or a ``date``), _WALL_CLOCK for a time without an offset
    (a connector that knows its CRM's zone attaches it before the mapping reads the value), an
    interval's length for an interval (nothing before its start), None for a moment (a time with
    its offset, or "Z")."""
    if spec is None:
        return None
    raw = field_value(record, spec.field)
    if isinstance(raw, datetime):
        return _WALL_CLOCK if raw.tzinfo is None else None
    if isinstance(raw, date) or (isinstance(raw, str) and _DAY_ONLY.fullmatch(raw) is not None):
        return _DAY
    if (span := _span(raw)) is not None:
        return timedelta(0), span[1] - span[0]
    if isinstance(raw, str):
        text = raw.strip()
        if text.endswith(("Z", "z")):
            return None
        try:
            return _WALL_CLOCK if datetime.fromisoformat(text).tzinfo is None else None
        except ValueError:
            return None  # not a time: _moment has refused it already
    return None


# -- loading -----------------------------------------------------------------------------------


Purposes = Collection[str] | RecordMap[str, Any]


def parse_mapping(
    text: str, path: Path, *, purposes: Purposes | None = None, channels: Collection[str] | None = None
) -> Mapping:
    """A mapping from its text; ``path`` is only named in messages. ``purposes`` (keys, or the
    config's ``purposes`` dict, which also checks each purpose's channels) and ``channels`` are
    checked when given."""
    raw, lines = read_document(
        text, path, error=MappingError, loader=Yaml12Loader, typed_keys=True, unique_keys=True
    )
    if not isinstance(raw, dict):
        raise MappingError(f"{path}:1: expected a mapping file: version, vendor, object, identity, consents")
    context = {"purposes": purposes, "channels": channels}
    try:
        spec = MappingSpec.model_validate(raw, context=context)
    except ValidationError as error:
        raise MappingError(describe(error, path, lines, MappingSpec, prefer_unknown_keys=True)) from None
    return Mapping(spec, path, _field_lines(raw, lines))


# The keys whose value is a CRM field's name (``also_read`` holds a list of them).
_FIELD_KEYS = frozenset({"field", "record_id", "modstamp", "email"})


def _field_lines(raw: Any, lines: RecordMap[tuple[Any, ...], int]) -> dict[str, int]:
    """Each CRM field name the file holds, with the line it is first named on."""
    found: dict[str, int] = {}

    def walk(value: Any, loc: tuple[Any, ...]) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*loc, key))
        elif isinstance(value, list):
            for position, item in enumerate(value):
                walk(item, (*loc, position))
        elif isinstance(value, str) and loc and (loc[-1] in _FIELD_KEYS or loc[-2:-1] == ("also_read",)):
            line = lines.get(loc)
            if line is not None:
                found.setdefault(value.strip(), line)

    walk(raw, ())
    return found


def is_date_time_type(kind: str) -> bool:
    """Whether a field type a CRM's describe gives (Salesforce ``datetime``, Dataverse
    ``DateTime``, HubSpot ``datetime/date``, Vtiger ``datetime``) is a date-time: a change cursor
    must be one (a text, number or date alone cannot order changes within a day). An empty type
    is one the CRM does not say, and passes."""
    head = kind.strip().lower().split("/", 1)[0].replace("-", "").replace("_", "")
    return not head or "datetime" in head or head in ("timestamp", "timestamptz")


def load_mapping(
    path: str | Path, *, purposes: Purposes | None = None, channels: Collection[str] | None = None
) -> Mapping:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError(f"{path}: mapping file not found") from None
    except UnicodeDecodeError as error:
        raise MappingError(not_utf8(path, error)) from None
    except OSError as error:
        raise MappingError(f"{path}: cannot read: {error.strerror or error}") from None
    return parse_mapping(text, path, purposes=purposes, channels=channels)


def load_mappings(
    directory: str | Path, *, purposes: Purposes | None = None, channels: Collection[str] | None = None
) -> list[Mapping]:
    """Every ``*.yaml`` / ``*.yml`` file below ``directory``, in path order; two files for the same
    vendor and object are an error."""
    root = Path(directory)
    if not root.is_dir():
        raise MappingError(f"{root}: not a directory of mapping files")
    paths = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    loaded: list[Mapping] = []
    seen: dict[tuple[str, str], Path] = {}
    for path in paths:
        mapping = load_mapping(path, purposes=purposes, channels=channels)
        key = (mapping.vendor, mapping.object)
        if key in seen:
            raise MappingError(f"{path}: {mapping.vendor} {mapping.object} is already mapped by {seen[key]}")
        seen[key] = path
        loaded.append(mapping)
    return loaded


# -- the JSON Schema ---------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a mapping file, generated from the models above (the head first, for
    the person who opens the file)."""
    schema = MappingSpec.model_json_schema()
    head: dict[str, Any] = {
        key: schema.pop(key) for key in ("$schema", "title", "description") if key in schema
    }
    return {**head, **schema}


def schema_text() -> str:
    """``consentsync/mappings/schema.json`` exactly as it should read."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m consentsync.mapping [PATH]``: prints the JSON Schema, or writes it to PATH."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        Path(args[0]).write_text(schema_text(), encoding="utf-8")
    else:
        sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
