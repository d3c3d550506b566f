"""A Vtiger CRM sandbox: a local HTTPS server on 127.0.0.1 that speaks Vtiger's webservice API
(``webservice.php``, form-encoded, JSON answers) as the open-source edition 8.2.0 does, backed by
an in-memory CRM, with fault injection and call counting.

>>> from consentsync_vtiger.sandbox.server import VtigerSandbox
>>> with VtigerSandbox() as crm:
...     crm.crm.seed(300, seed=1)
...     session = crm.requests_session()
...     token = session.get(crm.webservice_url, params={"operation": "getchallenge",
...                         "username": crm.credentials.username}).json()["result"]["token"]

Written from Vtiger's documentation and source (``webservice.php``, ``include/Webservices/``):

* Every answer is HTTP 200 with ``{"success": true, "result": ...}`` or ``{"success": false,
  "error": {"code", "message"}}``; only a PHP failure (see ``sync_fails``) or an injected fault
  answers otherwise.
* ``GET operation=getchallenge&username=U``: ``{token, serverTime, expireTime}``; the token lives
  ``challenge_ttl`` seconds (300) and a new challenge replaces the user's previous one (a login
  with the replaced token's digest is INVALID_USER_CREDENTIALS). An unknown username is
  ACCESS_DENIED "username does not exists", as 8.2.0 answers it.
* ``POST operation=login`` with ``username`` and ``accessKey = md5(token + access key)``:
  ``{sessionName, userId, version, vtigerVersion}``. INVALID_AUTH_TOKEN when the token expired or
  was never issued for that user, INVALID_USER_CREDENTIALS when the key does not match.
* Every other operation needs ``sessionName``: AUTHENTICATION_REQUIRED without one,
  INVALID_SESSIONID for an unknown (or expired) one, SESSION_LEFT_IDLE after ``session_idle``
  seconds unused.
* ``GET operation=query&query=VTQL``: see :mod:`consentsync_vtiger.sandbox.vtql` (at most 100 rows;
  the statement ends with ``;``). Records the user may not retrieve (``hidden_owners``) are dropped
  from the rows the LIMIT chose, as ``VtigerModuleOperation::query`` does, so a page can come back
  short (or empty) while more rows follow. Every value comes back as a string: checkboxes
  "0"/"1", empty fields "", times ``YYYY-MM-DD HH:MM:SS`` in whole seconds, ids ``<type>x<crmid>``.
* Times are wall-clock times in the install's ``$default_timezone`` (config.inc.php; the CRM's
  ``timezone``, UTC by default), as 8.2.0 stores and serves ``modifiedtime``: neither UTC nor the
  API user's zone. Where the zone has daylight saving time, an hour of wall-clock times repeats
  each autumn and the stored times are ambiguous, as on the real server.
* Values are stored with each character beyond the Basic Multilingual Plane (emoji) as one ``?``,
  as a 3-byte ``utf8`` column keeps a 4-byte character converted to it. A stock install does not
  store that: PearDatabase sends ``SET NAMES utf8`` before every query, so the character is
  invalid on the connection, and MariaDB keeps a ``?`` per byte (``????``), MySQL cuts the value
  there (docs/connectors/vtiger.md, "What a stock install stores instead"). A checkbox is ticked
  by JSON true, 1, "1" or "on"; anything else ("true", "yes" and "false" included) stores 0, as
  8.2.0 does.
* ``GET operation=retrieve&id=``, ``GET operation=describe&elementType=``,
  ``GET operation=listtypes``.
* ``POST operation=revise&element={json}``: partial update, bumps ``modifiedtime``; a mandatory
  field sent empty answers MANDATORY_FIELDS_MISSING. ``POST operation=update&element=``: the
  full record; a mandatory field left out answers MANDATORY_FIELDS_MISSING and the editable
  fields left out are cleared. ``POST operation=create&elementType=&element=``,
  ``POST operation=delete&id=``, ``POST operation=logout``.
* Reading or writing a deleted (or unknown) record answers ACCESS_DENIED "Permission to perform
  the operation is denied" (Vtiger finds no live record to take the module from); one the user
  may not act on answers ACCESS_DENIED "Permission to read given object is denied"; an id of another
  module's type answers INVALID_ID_ATTRIBUTE. A module the install lacks (``missing_modules``)
  answers ACCESS_DENIED "Permission to perform the operation is denied for name : X".
* ``POST operation=delete&id=``: one record a call, ``{"status": "successful"}``; the record is
  marked deleted (its ``modifiedtime`` moves to the deletion) and listed by ``sync``'s ``deleted``.
  :meth:`VtigerCrm.restore` takes it out of the recycle bin as ``CRMEntity::restore`` does
  (``deleted=0``, ``modifiedtime`` moved to the restore): it is live again.
* Lead conversion (:meth:`VtigerCrm.convert_lead`, a CRM user's *Convert Lead*), as
  ``vtws_convertlead`` does it: a Contact is created (``isconvertedfromlead`` "1") with the
  values of the stock ``vtiger_convertleadmapping`` (firstname, lastname, email, secondaryemail,
  phone, mobile: **not** ``emailoptout``, which the stock mapping leaves out), and the lead is
  marked ``converted=1``, its ``modifiedtime`` moved to the conversion
  (``vtws_updateConvertLeadStatus``). ``EntityMeta::getEntityDeletedQuery`` adds
  ``vtiger_leaddetails.converted=0`` to every Leads query, so ``query`` no longer answers the
  lead and ``sync`` lists it under ``deleted``; ``retrieve``, ``revise`` and ``delete`` still
  act on it (they check ``vtiger_crmentity.deleted`` only). Nothing on the contact names the lead.
* Every parameter an operation declares goes through ``vtws_getParameter`` (``addslashes``) and
  then ``OperationManager::handleType`` (``stripslashes``) before it is used: the pair cancels
  out, and a value arrives as it was sent (quotes, backslashes, newlines and all), but for "0",
  which PHP takes as false: it arrives as "". ``sync`` with ``modifiedTime=0`` therefore gets no
  time at all and answers nothing (``date($format, "")``; see :meth:`VtigerCrm.sync`).
* Duplicate Prevention (7.2+; *Module Layouts & Fields > Duplicate Prevention*), off by default:
  :meth:`VtigerCrm.prevent_duplicates` turns it on for a module with its fields (up to three),
  as an administrator does, and :meth:`VtigerCrm.allow_duplicates` off. As
  ``CheckDuplicateHandler`` does on ``vtiger.entity.beforesave`` (and ``beforerestore``), every
  save (``create``, ``revise``, ``update``, a restore; edits included, whoever makes them) looks at
  the record's values after the save: where at least one of the fields is not empty, a live
  record of the module other than this one (a converted lead left out) with the same value in
  every field (an empty one matching an empty one; compared as MySQL's ``utf8_general_ci`` does:
  case and trailing spaces ignored) refuses the save with a ``DuplicateException``, which
  ``webservice.php`` answers ``{"code": 0, "message": "Duplicates detected"}``. Turning it on
  changes no record already there: duplicates made before stay, and their next save is refused.
* A user made inactive (:meth:`VtigerCrm.deactivate_user`) still gets a challenge; its login,
  once the key matches, answers AUTHENTICATION_REQUIRED "Given user is inactive", as
  ``vtws_login`` does.
* A record begun with :meth:`VtigerCrm.begin_late` (a save whose transaction commits late) has
  its id and ``modifiedtime`` from the start but no call sees it until :meth:`VtigerCrm.commit_late`.
* ``GET operation=sync&modifiedTime=UNIX&elementType=M[&syncType=user|userandgroup|application]``
  as ``GetUpdates.php`` does it: the window ends at the latest ``modifiedtime`` among the 100
  oldest changes strictly after ``modifiedTime`` and every change up to that second is returned
  (not capped at 100); only records owned by the logged-in user (``userandgroup``: and by the
  user's groups; ``application``: admins only); ``{updated, deleted, lastModifiedTime, more}``.
  With ``sync_fails`` on, it answers HTTP 500 with an empty body, as the stock 8.2.0 does on PHP 8.

Modules and id prefixes: Leads 10x, Accounts 11x, Contacts 12x, Users 19x, Groups 20x and, when
``privacy_guard`` is on, a Privacy Guard ``Consents`` module (prefix 52x). Contacts carry
``emailoptout`` and ``donotcall``; Leads and Accounts ``emailoptout`` only; Accounts use
``email1``/``email2`` for email.

Where Vtiger is silent the sandbox chooses, so the connector must not rely on these: the Privacy
Guard module's name, prefix and field names (``consent_name``, ``contact_id``,
``consent_status``, ``granted_on``, ``consent_source``) are the sandbox's (Privacy Guard is a
paid extension whose schema is not published: read ``describe`` on a real install); the
``request_limit_after`` and ``enforce_daily_limit`` faults answer HTTP 429 with the error code
API_LIMIT_EXCEEDED (the open-source edition has no API limit; Vtiger Cloud has a daily quota and
a minute one); a server-error fault answers an HTML page, as Apache does.

Vtiger Cloud's limits as its help page ("Vtiger CRM API Limits") documents them: every answer
carries ``X-FloodControl-MinuteLimit``, ``-Remaining`` and ``-Reset`` (the minute window; an epoch
time by default, ``reset_style="seconds"`` for seconds left: the page does not say which) and
``X-RateLimit-DailyLimit`` and ``-Remaining`` (the day's allowance, ``api_limit``). More than
``minute_limit`` calls in a window of ``minute_window`` seconds answer 429 until it resets. A 429
carries no ``Retry-After`` (none is documented) unless ``send_retry_after`` is on; the daily
limit's says ``X-RateLimit-Remaining: 0``, the throttle's and the window's
``X-FloodControl-Remaining: 0`` and their reset.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import click

from consentsync.sandbox.people import LAST_NAMES, crowded_seconds, random_person
from consentsync.sandbox.server import (
    HttpsSandbox,
    Route,
    SandboxRequest,
    SandboxResponse,
    json_response,
)
from consentsync.sandbox.serving import Serving, running_lines, sandbox_main, seeded
from consentsync_vtiger.sandbox.vtql import Query, VtqlError, parse, select

__all__ = [
    "CONSENT_STATES",
    "VTIGER_KINDS",
    "VtigerCredentials",
    "VtigerCrm",
    "VtigerError",
    "VtigerSandbox",
    "serve_forever",
]

log = logging.getLogger("consentsync_vtiger.sandbox.server")

API_VERSION = "0.22"
VTIGER_VERSION = "8.2.0"
# The $default_timezone of the sandbox `consentsync sandbox vtiger` serves and of the contract
# harness's: an install set up in California, so modifiedtime is served in Pacific time and every
# run against it exercises the connector's server_timezone (a UTC sandbox would hide a zone mix-up).
SERVER_TIMEZONE = "America/Los_Angeles"
CONSENT_STATES = ("Not Applicable", "Applicable", "Waiting", "Granted", "Not Granted")
VTIGER_KINDS = (
    "getchallenge",
    "login",
    "logout",
    "listtypes",
    "describe",
    "query",
    "retrieve",
    "create",
    "revise",
    "update",
    "delete",
    "sync",
    "not_found",
)
_WRITE_OPERATIONS = {"login", "logout", "create", "revise", "update", "delete"}
# The parameters each operation declares (vtiger_ws_operation_parameters): the ones webservice.php
# passes through vtws_getParameter (addslashes) and OperationManager::handleType (stripslashes).
_DECLARED = {
    "getchallenge": ("username",),
    "login": ("username", "accessKey"),
    "logout": ("sessionName",),
    "listtypes": ("fieldTypeList",),
    "describe": ("elementType",),
    "query": ("query",),
    "retrieve": ("id",),
    "create": ("elementType", "element"),
    "revise": ("element",),
    "update": ("element",),
    "delete": ("id",),
    "sync": ("modifiedTime", "elementType", "syncType"),
}
# The stock vtiger_convertleadmapping's lead fields for a Contact, as far as the sandbox's modules
# have them (DefaultDataPopulator::addDefaultLeadMapping): emailoptout is not among them.
_LEAD_TO_CONTACT = {
    "firstname": "firstname",
    "lastname": "lastname",
    "email": "email",
    "secondaryemail": "secondaryemail",
    "phone": "phone",
    "mobile": "mobile",
}
_TIME = "%Y-%m-%d %H:%M:%S"
# What 8.2.0 stores as a ticked checkbox; every other text ("true", "yes", "false") is stored as 0.
_TICKED = {"1", "on"}


class VtigerError(Exception):
    """A webservice error: answered as ``{"success": false, "error": {code, message}}``. The code
    is Vtiger's name for it, or 0 for Duplicate Prevention's (``DuplicateException::getCode()``)."""

    def __init__(self, code: str | int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# Vtiger's answer for an id with no live record (its module is looked up among records not
# deleted: vtws_retrieve, vtws_revise, vtws_delete), and for one the user may not act on.
_NO_SUCH_RECORD = "Permission to perform the operation is denied"


# How many fields a module's duplicate check may compare (the settings page's maximum).
_MOST_DUPLICATE_FIELDS = 3


def _duplicates_detected() -> VtigerError:
    """CheckDuplicateHandler's DuplicateException as webservice.php answers it (7.2+):
    ``new WebServiceException($e->getCode(), $e->getMessage())``, the code 0."""
    return VtigerError(0, "Duplicates detected")


def _same_text(one: str | None, other: str | None) -> bool:
    """Two stored values compared as MySQL's ``utf8_general_ci`` compares them in the duplicate
    check's ``WHERE``: case and trailing spaces ignored; an empty field (NULL or "") matches an
    empty one (``(col = '' OR col IS NULL)``)."""
    return (one or "").rstrip(" ").casefold() == (other or "").rstrip(" ").casefold()


def _denied(message: str = "Permission to read given object is denied") -> VtigerError:
    return VtigerError("ACCESS_DENIED", message)


def format_time(moment: dt.datetime, zone: dt.tzinfo = dt.UTC) -> str:
    """A moment as the install stores it: wall-clock time in its ``$default_timezone``."""
    return moment.astimezone(zone).strftime(_TIME)


def parse_time(text: str, zone: dt.tzinfo = dt.UTC) -> dt.datetime:
    """A stored time read as PHP's strtotime does (the first of a repeated autumn hour)."""
    return dt.datetime.strptime(text, _TIME).replace(tzinfo=zone).astimezone(dt.UTC)


def addslashes(text: str) -> str:
    """PHP's ``addslashes``: a backslash before each quote, double quote and backslash; NUL as
    ``\\0``."""
    return "".join("\\0" if char == "\0" else "\\" + char if char in "'\"\\" else char for char in text)


def stripslashes(text: str) -> str:
    """PHP's ``stripslashes``: each backslash is dropped and the character after it kept as it is
    (``\\\\`` becomes ``\\``), but ``\\0``, which becomes NUL; a backslash ending the text is
    dropped."""
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        following = next(chars, None)
        if following is not None:
            out.append("\0" if following == "0" else following)
    return "".join(out)


def _bmp_only(text: str) -> str:
    """What MySQL's 3-byte ``utf8`` keeps of ``text``: characters beyond the BMP become ``?``."""
    return "".join("?" if ord(char) > 0xFFFF else char for char in text)


# -- schema ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldDef:
    name: str
    label: str
    type: str  # string, email, boolean, datetime, reference, owner, picklist, autogenerated
    mandatory: bool = False
    editable: bool = True
    refers_to: tuple[str, ...] = ()
    picklist: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        kind: dict[str, Any] = {"name": self.type}
        if self.type == "reference":
            kind["refersTo"] = list(self.refers_to)
        if self.type == "picklist":
            kind["picklistValues"] = [{"label": v, "value": v} for v in self.picklist]
            kind["defaultValue"] = self.picklist[0] if self.picklist else ""
        if self.type == "owner":
            kind["name"] = "owner"
        return {
            "name": self.name,
            "label": self.label,
            "mandatory": self.mandatory,
            "type": kind,
            "isunique": False,
            "nullable": not self.mandatory,
            "editable": self.editable,
        }


@dataclass(frozen=True, slots=True)
class ModuleDef:
    name: str
    singular: str
    prefix: str
    fields: dict[str, FieldDef]
    label_fields: str

    def field(self, name: str) -> FieldDef | None:
        return self.fields.get(name)


def _system_fields(number_field: str, number_label: str) -> list[FieldDef]:
    return [
        FieldDef(number_field, number_label, "string", editable=False),
        FieldDef("assigned_user_id", "Assigned To", "owner", mandatory=True),
        FieldDef("createdtime", "Created Time", "datetime", editable=False),
        FieldDef("modifiedtime", "Modified Time", "datetime", editable=False),
        FieldDef("modifiedby", "Last Modified By", "reference", editable=False, refers_to=("Users",)),
        FieldDef("source", "Source", "string", editable=False),
        FieldDef("id", "Id", "autogenerated", editable=False),
    ]


def build_schema(*, privacy_guard: bool) -> dict[str, ModuleDef]:
    def module(name: str, singular: str, prefix: str, labels: str, fields: Iterable[FieldDef]) -> ModuleDef:
        return ModuleDef(name, singular, prefix, {f.name: f for f in fields}, labels)

    person = [
        FieldDef("firstname", "First Name", "string"),
        FieldDef("lastname", "Last Name", "string", mandatory=True),
        FieldDef("email", "Primary Email", "email"),
        FieldDef("secondaryemail", "Secondary Email", "email"),
        FieldDef("phone", "Office Phone", "phone"),
        FieldDef("mobile", "Mobile Phone", "phone"),
        FieldDef("emailoptout", "Email Opt Out", "boolean"),
    ]
    schema = {
        "Contacts": module(
            "Contacts",
            "Contact",
            "12",
            "firstname,lastname",
            [
                *person,
                FieldDef("donotcall", "Do Not Call", "boolean"),
                FieldDef("account_id", "Organization Name", "reference", refers_to=("Accounts",)),
                # Set by vtws_convertlead on the contact it creates; nothing names the lead.
                FieldDef("isconvertedfromlead", "Is Converted From Lead", "boolean", editable=False),
                *_system_fields("contact_no", "Contact Id"),
            ],
        ),
        "Leads": module(
            "Leads",
            "Lead",
            "10",
            "firstname,lastname",
            [
                *person,
                FieldDef("company", "Company", "string"),
                *_system_fields("lead_no", "Lead No"),
            ],
        ),
        "Accounts": module(
            "Accounts",
            "Organization",
            "11",
            "accountname",
            [
                FieldDef("accountname", "Organization Name", "string", mandatory=True),
                FieldDef("email1", "Email", "email"),
                FieldDef("email2", "Other Email", "email"),
                FieldDef("phone", "Phone", "phone"),
                FieldDef("emailoptout", "Email Opt Out", "boolean"),
                *_system_fields("account_no", "Organization No"),
            ],
        ),
    }
    if privacy_guard:
        schema["Consents"] = module(
            "Consents",
            "Consent",
            "52",
            "consent_name",
            [
                FieldDef(
                    "consent_name",
                    "Consent",
                    "picklist",
                    mandatory=True,
                    picklist=("Email Marketing", "Phone Calls", "Profiling", "Store Personal Data"),
                ),
                FieldDef("contact_id", "Contact", "reference", refers_to=("Contacts",)),
                FieldDef("consent_status", "Status", "picklist", picklist=CONSENT_STATES),
                FieldDef("granted_on", "Granted On", "datetime"),
                FieldDef("consent_source", "Consent Source", "string"),
                *_system_fields("consent_no", "Consent No"),
            ],
        )
    return schema


_USER_PREFIX, _GROUP_PREFIX = "19", "20"


@dataclass
class _Record:
    module: ModuleDef
    crmid: int
    values: dict[str, str | None]
    owner: str
    deleted: bool = False
    # A lead converted (vtiger_leaddetails.converted=1): no query answers it, sync lists it as
    # deleted, retrieve and revise still act on it.
    converted: bool = False
    # Saved in a transaction not committed yet: no call sees the record (see begin_late).
    pending: bool = False

    @property
    def wsid(self) -> str:
        return f"{self.module.prefix}x{self.crmid}"


# -- the data ----------------------------------------------------------------------------------


class VtigerCrm:
    """The in-memory CRM behind the sandbox (thread-safe). Records are stored as Vtiger returns
    them: text, with None for an empty field; ``modifiedtime`` in whole seconds."""

    def __init__(
        self,
        *,
        privacy_guard: bool = True,
        clock: Callable[[], dt.datetime] | None = None,
        integration_user_id: int = 5,
        timezone: str = "UTC",
        missing_modules: Iterable[str] = (),
        duplicate_prevention: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.lock = threading.RLock()
        # The install's $default_timezone: the zone of every stored time.
        self.zone = ZoneInfo(timezone)
        self.schema = build_schema(privacy_guard=privacy_guard)
        for name in missing_modules:  # an install without that module (or the user's profile hides it)
            self.schema.pop(name, None)
        self.by_prefix = {m.prefix: m for m in self.schema.values()}
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.users = {1: "admin", integration_user_id: "integration"}
        self.admins = {1}
        self.inactive_users: set[int] = set()  # status 'Inactive' (deactivate_user)
        self.groups = {2: "Team Selling", 3: "Marketing Group"}
        self.group_members = {2: {1}, 3: {1, integration_user_id}}
        self.integration_user_id = integration_user_id
        self._records: dict[int, _Record] = {}
        self._next_crmid = 1000
        # Duplicate Prevention per module: the fields its check compares (prevent_duplicates).
        self.duplicate_checks: dict[str, tuple[str, ...]] = {}
        for name, checked in (duplicate_prevention or {}).items():
            self.prevent_duplicates(name, *checked)

    def now(self) -> dt.datetime:
        return self.clock().astimezone(dt.UTC).replace(microsecond=0)

    def format_time(self, moment: dt.datetime) -> str:
        return format_time(moment, self.zone)

    def parse_time(self, text: str) -> dt.datetime:
        return parse_time(text, self.zone)

    # -- reading (no HTTP, not counted) --

    def module(self, name: str) -> ModuleDef:
        if name not in self.schema:
            raise _denied(f"Permission to perform the operation is denied for name : {name}")
        return self.schema[name]

    def get(self, wsid: str, *, include_deleted: bool = False) -> dict[str, str] | None:
        with self.lock:
            record = self._lookup(wsid)
            if record is None or record.pending or (record.deleted and not include_deleted):
                return None
            return self._render(record)

    def records(self, module: str, *, include_deleted: bool = False) -> list[dict[str, str]]:
        with self.lock:
            return [
                self._render(r)
                for r in self._records.values()
                if r.module.name == module
                and not r.pending
                and (include_deleted or not (r.deleted or r.converted))
            ]

    def count(self, module: str) -> int:
        with self.lock:
            return sum(
                1
                for r in self._records.values()
                if r.module.name == module and not r.deleted and not r.converted and not r.pending
            )

    def owner_of(self, wsid: str) -> str | None:
        with self.lock:
            record = self._lookup(wsid)
            return record.owner if record else None

    # -- writing (no HTTP, not counted) --

    def create(
        self,
        module: str,
        values: Mapping[str, Any] | None = None,
        *,
        owner: str | None = None,
        at: dt.datetime | None = None,
        **more: Any,
    ) -> str:
        """Adds a record as a user would in the CRM; returns its id (``12x1001``)."""
        mod = self.module(module)
        given = {**dict(values or {}), **more}
        with self.lock:
            stored = self._coerce(mod, given, partial=False)
            self._check_duplicates(mod, stored, None)
            self._next_crmid += 1
            crmid = self._next_crmid
            stamp = self.format_time(at or self.now())
            number = next(n for n, f in mod.fields.items() if n.endswith("_no") and not f.editable)
            stored.update(
                {
                    number: f"{mod.singular[:3].upper()}{crmid}",
                    "createdtime": stamp,
                    "modifiedtime": stamp,
                    "modifiedby": f"{_USER_PREFIX}x{self.integration_user_id}",
                    "source": "CRM",
                }
            )
            if "isconvertedfromlead" in mod.fields:
                stored["isconvertedfromlead"] = "0"
            record = _Record(mod, crmid, stored, owner or f"{_USER_PREFIX}x{self.integration_user_id}")
            stored["assigned_user_id"] = record.owner
            self._records[crmid] = record
            return record.wsid

    def begin_late(self, module: str, values: Mapping[str, Any] | None = None, **more: Any) -> str:
        """A save whose transaction commits late: the id and ``modifiedtime`` are given now, but
        no call sees the record until :meth:`commit_late`."""
        with self.lock:
            wsid = self.create(module, values, **more)
            record = self._lookup(wsid)
            assert record is not None
            record.pending = True
            return wsid

    def commit_late(self, wsid: str) -> None:
        """The transaction commits: the record shows, stamped when the save began."""
        with self.lock:
            record = self._lookup(wsid)
            if record is None or not record.pending:
                raise KeyError(wsid)
            record.pending = False

    def revise(
        self,
        wsid: str,
        values: Mapping[str, Any] | None = None,
        *,
        at: dt.datetime | None = None,
        **more: Any,
    ) -> dict[str, str]:
        """A partial update (what ``operation=revise`` does), bumping ``modifiedtime``."""
        given = {**dict(values or {}), **more}
        with self.lock:
            record = self._writable(wsid)
            changes = self._coerce(record.module, given, partial=True)
            self._check_duplicates(record.module, {**record.values, **changes}, record.crmid)
            record.values.update(changes)
            if changes.get("assigned_user_id"):
                record.owner = changes["assigned_user_id"]
            self._touch(record, at)
            return self._render(record)

    def replace(self, wsid: str, values: Mapping[str, Any]) -> dict[str, str]:
        """A full update (what ``operation=update`` does): editable fields left out are cleared."""
        with self.lock:
            record = self._writable(wsid)
            changes = self._coerce(record.module, values, partial=False)
            after = {
                **record.values,
                **{name: changes.get(name) for name, fdef in record.module.fields.items() if fdef.editable},
            }
            self._check_duplicates(record.module, after, record.crmid)
            for name, fdef in record.module.fields.items():
                if fdef.editable:
                    record.values[name] = changes.get(name)
            record.owner = changes.get("assigned_user_id") or record.owner
            record.values["assigned_user_id"] = record.owner
            self._touch(record, None)
            return self._render(record)

    def delete(self, wsid: str, *, at: dt.datetime | None = None) -> None:
        with self.lock:
            record = self._writable(wsid)
            record.deleted = True
            self._touch(record, at)

    def restore(self, wsid: str, *, at: dt.datetime | None = None) -> None:
        """A user restores the record from the recycle bin (``CRMEntity::restore``: deleted=0,
        ``modifiedtime`` and ``modifiedby`` moved to the restore): it is live again."""
        with self.lock:
            record = self._lookup(wsid)
            if record is None or not record.deleted:
                raise KeyError(wsid)
            self._check_duplicates(record.module, record.values, record.crmid)  # beforerestore
            record.deleted = False
            self._touch(record, at)

    def convert_lead(self, wsid: str, *, owner: str | None = None, at: dt.datetime | None = None) -> str:
        """A user converts the lead (*Convert Lead*, ``vtws_convertlead`` with a Contact): a
        contact is created from the lead's values through the stock conversion mapping (its
        ``emailoptout`` is not carried), owned by ``owner`` (the lead's owner by default), marked
        ``isconvertedfromlead``; the lead is marked converted and its ``modifiedtime`` moves to
        the conversion. Returns the contact's id."""
        with self.lock:
            lead = self._writable(wsid)
            if lead.module.name != "Leads":
                raise VtigerError("INVALID_ID_ATTRIBUTE", "Id specified is incorrect")
            if lead.converted:
                raise VtigerError("LEAD_ALREADY_CONVERTED", "Lead is already converted")
            values = {
                target: lead.values.get(source)
                for source, target in _LEAD_TO_CONTACT.items()
                if lead.values.get(source)
            }
            contact = self.create("Contacts", values, owner=owner or lead.owner, at=at)
            created = self._lookup(contact)
            assert created is not None
            created.values["isconvertedfromlead"] = "1"
            lead.converted = True
            self._touch(lead, at)
            return contact

    def prevent_duplicates(self, module: str, *fields: str) -> None:
        """An administrator turns Duplicate Prevention on for ``module`` (*Module Layouts &
        Fields > Duplicate Prevention*, "Enable duplicate check") with ``fields`` (one to three)
        as the ones compared. Records already there are left as they are."""
        mod = self.module(module)
        if not 1 <= len(fields) <= _MOST_DUPLICATE_FIELDS:
            raise ValueError(f"a duplicate check compares 1 to {_MOST_DUPLICATE_FIELDS} fields")
        unknown = [name for name in fields if mod.field(name) is None or not mod.fields[name].editable]
        if unknown:
            raise ValueError(f"{module} has no editable field(s) {', '.join(unknown)}")
        with self.lock:
            self.duplicate_checks[module] = tuple(fields)

    def allow_duplicates(self, module: str) -> None:
        """An administrator turns Duplicate Prevention off for ``module``."""
        with self.lock:
            self.duplicate_checks.pop(module, None)

    def deactivate_user(self, username: str) -> None:
        """An administrator makes the user inactive (status 'Inactive')."""
        with self.lock:
            user_id = next(uid for uid, name in self.users.items() if name == username)
            self.inactive_users.add(user_id)

    def set_modifiedtime(self, wsid: str, moment: dt.datetime) -> None:
        """Moves a record's ``modifiedtime`` (tests: many records in one second)."""
        with self.lock:
            record = self._lookup(wsid)
            if record is None:
                raise KeyError(wsid)
            record.values["modifiedtime"] = self.format_time(moment)

    # -- queries --

    def query(self, vtql: str) -> list[dict[str, str]]:
        query = parse(vtql)
        with self.lock:
            mod = self.module(query.module)
            for name in query.referenced_columns():
                if name not in mod.fields:
                    raise _denied(f"Permission to access '{name}' attribute denied.")
            rows = [
                self._row(r)
                for r in sorted(self._records.values(), key=lambda r: r.crmid)
                # EntityMeta::getEntityDeletedQuery: deleted=0, and for Leads converted=0 too.
                if r.module is mod and not r.deleted and not r.converted and not r.pending
            ]
            if query.is_count:
                counted = Query(query.module, ["*"], query.where)
                counted.limit = len(rows)
                return [{"count": str(len(select(counted, rows, self._kind(mod))))}]
            chosen = select(query, rows, self._kind(mod))
            return [self._project(mod, row, query.columns) for row in chosen]

    def sync(
        self,
        module: str,
        since_unix: int | None,
        *,
        user_id: int,
        sync_type: str = "user",
        limit: int = 100,
    ) -> dict[str, Any]:
        """What ``vtws_sync`` answers. ``since_unix`` None: no time reached it (``modifiedTime``
        sent as 0 or empty: see ``_as_declared``); ``date($format, "")`` then gives no time, the
        query ``modifiedtime > NULL`` matches nothing, and the answer is empty (PHP 7; PHP 8
        throws a TypeError there instead)."""
        mod = self.module(module)
        if sync_type == "application" and user_id not in self.admins:
            raise _denied("Only admin users can perform application sync")
        if since_unix is None:
            return {"updated": [], "deleted": [], "lastModifiedTime": 0, "more": False}
        # GetUpdates.php turns the Unix time into the install's wall-clock time (PHP's date()).
        since = self.format_time(dt.datetime.fromtimestamp(since_unix, dt.UTC))
        owners: set[str] | None = {f"{_USER_PREFIX}x{user_id}"}
        if sync_type == "userandgroup":
            owners |= {
                f"{_GROUP_PREFIX}x{g}" for g, members in self.group_members.items() if user_id in members
            }
        elif sync_type == "application":
            owners = None
        with self.lock:
            changed = sorted(
                (
                    r
                    for r in self._records.values()
                    if r.module is mod
                    and not r.pending
                    and str(r.values["modifiedtime"]) > since
                    and (owners is None or r.owner in owners)
                ),
                key=lambda r: str(r.values["modifiedtime"]),
            )
            if not changed:
                # $maxModifiedTime falls back to the wall-clock time asked from, read back with
                # strtotime: the time asked from, but for the second pass of a repeated hour.
                return {
                    "updated": [],
                    "deleted": [],
                    "lastModifiedTime": int(self.parse_time(since).timestamp()),
                    "more": False,
                }
            last = max(str(r.values["modifiedtime"]) for r in changed[:limit])
            window = [r for r in changed if str(r.values["modifiedtime"]) <= last]
            return {
                # vtws_isRecordDeleted tests every column of the deleted query: a converted lead
                # fails converted=0 and is listed as deleted.
                "updated": [self._render(r) for r in window if not (r.deleted or r.converted)],
                "deleted": [r.wsid for r in window if r.deleted or r.converted],
                "lastModifiedTime": int(self.parse_time(last).timestamp()),
                "more": any(str(r.values["modifiedtime"]) > last for r in changed),
            }

    # -- seeding --

    def seed(
        self,
        n: int,
        seed: int = 0,
        *,
        now: dt.datetime | None = None,
        days: int = 7,
        lead_share: float = 0.25,
        account_share: float = 0.1,
        consent_share: float = 0.4,
        burst: int | None = None,
    ) -> dict[str, list[str]]:
        """Adds ``n`` contacts (with leads sharing some of their addresses, organisations and,
        with Privacy Guard, consent records), stamped over the past ``days`` days on a few
        crowded seconds; ``burst`` records (default n // 3) share one second, as after an import.
        Deterministic for a given ``seed`` and ``now``."""
        rng = random.Random(seed)
        now = (now or self.now()).replace(microsecond=0)
        buckets = crowded_seconds(rng, now, max(5, n // 20), days=days, after=120)
        (import_second,) = crowded_seconds(rng, now, 1, days=days, after=120)
        burst = n // 3 if burst is None else burst
        used: set[str] = set()
        made: dict[str, list[str]] = {"contacts": [], "leads": [], "accounts": [], "consents": []}

        def owner() -> str:
            roll = rng.random()
            if roll < 0.8:
                return f"{_USER_PREFIX}x{self.integration_user_id}"
            return f"{_GROUP_PREFIX}x2" if roll < 0.95 else f"{_USER_PREFIX}x1"

        def stamp(index: int) -> dt.datetime:
            return import_second if index < burst else rng.choice(buckets)

        with self.lock:
            for index in range(max(1, int(n * account_share)) if n else 0):
                name = f"{rng.choice(LAST_NAMES)} {rng.choice(('GmbH', 'Ltd', 'S.A.', 'Inc.', '& Söhne'))}"
                made["accounts"].append(
                    self.create(
                        "Accounts",
                        accountname=name,
                        email1=f"info{index}@{name.split()[0].lower()}.example",
                        emailoptout=rng.random() < 0.2,
                        owner=owner(),
                        at=rng.choice(buckets),
                    )
                )
            for index in range(n):
                first, last, email = random_person(rng, index, used)
                if index % 41 == 7:
                    email = f"o'{email}"  # a quote in the address, as people do have
                contact = self.create(
                    "Contacts",
                    firstname=first,
                    lastname=last,
                    email=email,
                    emailoptout=rng.random() < 0.25,
                    donotcall=rng.random() < 0.15,
                    account_id=rng.choice(made["accounts"])
                    if made["accounts"] and rng.random() < 0.5
                    else "",
                    owner=owner(),
                    at=stamp(index),
                )
                made["contacts"].append(contact)
                if rng.random() < lead_share:
                    made["leads"].append(
                        self.create(
                            "Leads",
                            firstname=first,
                            lastname=last,
                            company=rng.choice(LAST_NAMES) + " Ltd",
                            email=email.upper() if rng.random() < 0.2 else email,
                            emailoptout=rng.random() < 0.3,
                            owner=owner(),
                            at=rng.choice(buckets),
                        )
                    )
                if "Consents" in self.schema and rng.random() < consent_share:
                    stamp_at = rng.choice(buckets)
                    made["consents"].append(
                        self.create(
                            "Consents",
                            consent_name=rng.choice(("Email Marketing", "Phone Calls", "Profiling")),
                            contact_id=contact,
                            consent_status=rng.choices(CONSENT_STATES, (5, 10, 15, 45, 25))[0],
                            granted_on=self.format_time(stamp_at - dt.timedelta(days=rng.randrange(0, 400))),
                            consent_source=rng.choice(("Webform", "Email", "Manual", "Import")),
                            owner=owner(),
                            at=stamp_at,
                        )
                    )
        return made

    # -- internals --

    def _lookup(self, wsid: str) -> _Record | None:
        prefix, _, number = str(wsid).partition("x")
        if not prefix.isdigit() or not number.isdigit():
            return None
        record = self._records.get(int(number))
        if record is None or record.module.prefix != prefix:
            return None
        return record

    def _writable(self, wsid: str) -> _Record:
        prefix, _, number = str(wsid).partition("x")
        if not prefix.isdigit() or not number.isdigit() or prefix not in self.by_prefix:
            raise VtigerError("INVALID_ID_ATTRIBUTE", "Id specified is incorrect")
        record = self._records.get(int(number))
        if record is not None and record.module.prefix != prefix:
            raise VtigerError("INVALID_ID_ATTRIBUTE", "Id specified is incorrect")
        if record is None or record.deleted or record.pending:
            # vtws_retrieve/revise/delete look the id's module up among live records first: an
            # id without one (deleted, never there, not committed yet) fails that check. A
            # converted lead passes it (only vtiger_crmentity.deleted is looked at).
            raise _denied(_NO_SUCH_RECORD)
        return record

    def _check_duplicates(self, mod: ModuleDef, values: Mapping[str, str | None], crmid: int | None) -> None:
        """Duplicate Prevention on a save of a ``mod`` record (``crmid``; None: a new one) whose
        values after the save are ``values``: refused (code 0) where another live record of the
        module holds the same value in every checked field; no check where all of them are
        empty (CheckDuplicateHandler::triggerCheckDuplicateHandler)."""
        fields = self.duplicate_checks.get(mod.name)
        if not fields or not any(values.get(name) for name in fields):
            return
        for other in self._records.values():
            if (
                other.module is not mod
                or other.crmid == crmid
                or other.deleted
                or other.pending  # another transaction's, not committed: not seen
                or other.converted  # Leads: "AND converted = 0"
            ):
                continue
            if all(_same_text(values.get(name), other.values.get(name)) for name in fields):
                raise _duplicates_detected()

    def _touch(self, record: _Record, at: dt.datetime | None) -> None:
        record.values["modifiedtime"] = self.format_time(at or self.now())
        record.values["modifiedby"] = f"{_USER_PREFIX}x{self.integration_user_id}"

    def _coerce(self, mod: ModuleDef, given: Mapping[str, Any], *, partial: bool) -> dict[str, str | None]:
        """Values as Vtiger stores them; unknown and read-only fields are ignored, as Vtiger's
        DataTransform does."""
        out: dict[str, str | None] = {}
        for name, value in given.items():
            fdef = mod.field(name)
            if fdef is None or (not fdef.editable and name != "assigned_user_id"):
                continue
            out[name] = self._value(mod, fdef, value)
        for name, fdef in mod.fields.items():
            if not fdef.mandatory or name == "assigned_user_id":
                continue
            if (name in out or not partial) and not out.get(name):
                raise VtigerError("MANDATORY_FIELDS_MISSING", f"{name} does not have a value")
        return out

    def _value(self, mod: ModuleDef, fdef: FieldDef, value: Any) -> str | None:
        if value is None or value == "":
            return None
        if fdef.type == "boolean":
            ticked = value is True or (type(value) is int and value == 1) or str(value).strip() in _TICKED
            return "1" if ticked else "0"
        text = str(value) if not isinstance(value, (dict, list)) else json.dumps(value)
        text = _bmp_only(text)
        if fdef.type == "reference":
            target = self._lookup(text)
            if target is None or target.module.name not in fdef.refers_to:
                raise VtigerError("REFERENCE_INVALID", f"Invalid reference specified for {fdef.name}")
        if fdef.type == "owner":
            prefix, _, number = text.partition("x")
            known = (prefix == _USER_PREFIX and number.isdigit() and int(number) in self.users) or (
                prefix == _GROUP_PREFIX and number.isdigit() and int(number) in self.groups
            )
            if not known:
                raise _denied("Cannot assign record to the given user")
        if fdef.type == "datetime":
            try:
                self.parse_time(text)
            except ValueError:
                raise VtigerError(
                    "INVALID_MANDATORY_VALUE" if fdef.mandatory else "DATABASE_QUERY_ERROR",
                    f"{fdef.name}: expected YYYY-MM-DD HH:MM:SS",
                ) from None
        return text

    def _row(self, record: _Record) -> dict[str, Any]:
        return {**record.values, "id": record.crmid, "assigned_user_id": record.owner}

    @staticmethod
    def _kind(mod: ModuleDef) -> Callable[[str], str]:
        def kind(name: str) -> str:
            fdef = mod.fields[name]
            if name == "id":
                return "id"
            return "datetime" if fdef.type == "datetime" else "text"

        return kind

    def _project(self, mod: ModuleDef, row: Mapping[str, Any], columns: list[str]) -> dict[str, str]:
        names = list(mod.fields) if columns == ["*"] else [*columns, "id"]
        out: dict[str, str] = {}
        for name in names:
            if name == "id":
                out["id"] = f"{mod.prefix}x{row['id']}"
            else:
                value = row.get(name)
                out[name] = "" if value is None else str(value)
        return out

    def _render(self, record: _Record) -> dict[str, str]:
        return self._project(record.module, self._row(record), ["*"])


# -- the server --------------------------------------------------------------------------------


@dataclass
class VtigerCredentials:
    """The integration user and the access key from its My Preferences page."""

    username: str = "integration"
    access_key: str = "sAnDbOxAcCeSsKeY"


@dataclass
class _Session:
    user_id: int
    started: float
    last_used: float


@dataclass
class _Challenge:
    token: str
    expires: float


class _HttpAnswer(Exception):
    """An answer outside the webservice's own errors: the limit faults (HTTP 429)."""

    def __init__(self, status: int, error: VtigerError, headers: dict[str, str]) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error
        self.headers = headers


class VtigerSandbox(HttpsSandbox):
    """The sandbox server. Construct, :meth:`start` (or use as a context manager), point clients
    at :attr:`url` (the install's address; the API is :attr:`webservice_url`) with
    :attr:`ca_cert_path` for TLS.

    Run-time controls: :attr:`faults` (``fail_ids``: writes of those records answer
    DATABASE_QUERY_ERROR, as a MySQL lock wait does), :attr:`crm` (the data),
    :attr:`sync_fails`, :attr:`hidden_owners`, :meth:`expire_sessions`, :meth:`expire_challenges`,
    :meth:`reset_counters`; :attr:`calls` counts the answered calls per operation.
    """

    endpoint_kinds = VTIGER_KINDS
    server_name = "Apache"
    credentials_class = VtigerCredentials
    # The install's lifetimes and limits (vtiger's defaults; constructor keywords too).
    challenge_ttl = 300.0  # seconds a getchallenge token is good for
    session_idle = 1800.0  # seconds a session lives without use
    session_lifetime = 86400.0  # seconds a session lives at most
    sync_fails = False  # sync answers HTTP 500 with an empty body, as stock 8.2.0 on PHP 8 does
    api_limit = 100_000  # API calls before API_LIMIT_EXCEEDED (enforce_daily_limit)
    # Vtiger Cloud's flood control: calls a window of minute_window seconds lets through (30, 60
    # or 90 a minute by plan; the default is out of a test's reach), then 429 until it resets.
    # Every answer says the window's limit, calls left and reset, and the day's allowance and
    # calls left, in the headers Vtiger documents (X-FloodControl-*, X-RateLimit-*).
    minute_limit = 100_000
    minute_window = 60.0
    # X-FloodControl-Reset as an epoch time ("epoch", as the example of Vtiger's page reads) or
    # as seconds left ("seconds"): the page does not say which, and the connector takes both.
    reset_style = "epoch"
    # Vtiger documents no Retry-After on its 429s: sent only when this is on (retry_after on the
    # daily limit, the throttle's own on the others).
    send_retry_after = False
    retry_after = 3600  # the Retry-After of API_LIMIT_EXCEEDED, with send_retry_after
    # Owners ("19x1", a group "20x2") whose records the integration user may not retrieve (no
    # sharing rule gives its role access): query drops them after the LIMIT, as Vtiger does
    # (VtigerModuleOperation::query skips each row failing hasPermission(RETRIEVE)), and
    # retrieve refuses them. Empty (the default): the user sees every record.
    hidden_owners: tuple[str, ...] = ()

    def __init__(self, crm: VtigerCrm | None = None, **options: Any) -> None:
        self.crm = crm or VtigerCrm()
        super().__init__(normalize_id=_normalise_wsid, **options)
        self._api_used = 0
        # The flood-control window: when it started (time.monotonic()) and the calls it let through.
        self._window_started = time.monotonic()
        self._window_calls = 0
        self._sessions: dict[str, _Session] = {}
        self._challenges: dict[int | None, _Challenge] = {}

    # -- addresses --

    @property
    def url(self) -> str:
        return self.base_url

    def connection_settings(self) -> dict[str, Any]:
        c = self.credentials
        where = {"url": self.url, "username": c.username}
        return {**super().connection_settings(), **where, "access_key": c.access_key}

    @property
    def webservice_url(self) -> str:
        return f"{self.base_url}/webservice.php"

    # -- controls --

    def expire_sessions(self) -> None:
        self.forget(self._sessions)

    def expire_challenges(self) -> None:
        self.forget(self._challenges)

    def login_key(self, token: str) -> str:
        return hashlib.md5((token + self.credentials.access_key).encode()).hexdigest()

    # -- the shared pipeline's hooks --

    def route(self, request: SandboxRequest) -> Route:
        params = request.form()
        operation = (params.get("operation") or "").lower()
        if not request.path.rstrip("/").endswith("/webservice.php"):
            page = SandboxResponse(404, b"<html><body><h1>Not Found</h1></body></html>", "text/html")
            return Route("not_found", lambda: page, authenticated=False)
        kind = operation if operation in VTIGER_KINDS else "not_found"
        return Route(
            kind,
            lambda: self._answer(request.method, operation, params),
            authenticated=kind not in ("getchallenge", "login", "not_found"),
        )

    def authenticate(self, request: SandboxRequest) -> None:
        self._user(request.form())
        with self._lock:
            now = time.monotonic()
            if now - self._window_started >= self.minute_window:
                self._window_started, self._window_calls = now, 0
            if self._window_calls >= self.minute_limit:
                self._injected("flood_control")
                left = self._window_started + self.minute_window - now
                raise self._limited("Too many requests, retry later", left, spent_today=False)
            self._window_calls += 1

    def finish(self, response: SandboxResponse, request: SandboxRequest) -> SandboxResponse:
        # The usage headers of every answer; a 429's own (its window, its day) stand.
        response.headers = {**self._usage_headers(), **response.headers}
        return response

    def _usage_headers(self) -> dict[str, str]:
        with self._lock:
            left = self._window_started + self.minute_window - time.monotonic()
            minute_left = max(0, self.minute_limit - self._window_calls)
            day_left = max(0, self.api_limit - self._api_used)
        return {
            "X-FloodControl-MinuteLimit": str(self.minute_limit),
            "X-FloodControl-Remaining": str(minute_left),
            "X-FloodControl-Reset": self._reset(max(0.0, left)),
            "X-RateLimit-DailyLimit": str(self.api_limit),
            "X-RateLimit-Remaining": str(day_left),
        }

    def _reset(self, seconds: float) -> str:
        """X-FloodControl-Reset for a window resetting ``seconds`` from now, rounded up (a
        client waiting for it must not come back before)."""
        if self.reset_style == "seconds":
            return str(math.ceil(seconds))
        return str(math.ceil(self.now().timestamp() + seconds))

    def _limited(self, message: str, seconds: float, *, spent_today: bool) -> _HttpAnswer:
        """A 429 of flood control (the window resets in ``seconds``) or of the day's allowance
        (``spent_today``), with the headers Vtiger documents and Retry-After only if asked."""
        headers = {"X-FloodControl-Remaining": "0", "X-FloodControl-Reset": self._reset(seconds)}
        if spent_today:
            headers = {"X-RateLimit-Remaining": "0"}
        if self.send_retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(seconds)))
        return _HttpAnswer(429, VtigerError("API_LIMIT_EXCEEDED", message), headers)

    def daily_usage(self) -> tuple[int | None, int | None]:
        with self._lock:
            return self._api_used, self.api_limit

    def note_api_call(self, request: SandboxRequest) -> None:
        with self._lock:
            self._api_used += 1

    def request_limit_error(self) -> Exception:
        return self._limited("API request limit exceeded", self.retry_after, spent_today=True)

    def throttle_error(self, retry_after: float) -> Exception:
        return self._limited("Too many requests, retry later", retry_after, spent_today=False)

    def server_error(self, status: int) -> SandboxResponse:
        body = f"<html><head><title>{status}</title></head><body>Service Unavailable</body></html>"
        return SandboxResponse(status, body.encode(), "text/html")

    def error_response(self, error: Exception) -> SandboxResponse:
        if isinstance(error, _HttpAnswer):
            return _failure(error.error, error.status, error.headers)
        if isinstance(error, VtigerError):
            return _failure(error)
        if isinstance(error, VtqlError):
            return _failure(VtigerError(error.code, error.message))
        log.error("vtiger sandbox operation failed", exc_info=error)
        return _failure(VtigerError("INTERNAL_SERVER_ERROR", "Unknown Error while processing request"))

    # -- dispatch --

    def _answer(self, method: str, operation: str, params: Mapping[str, str]) -> SandboxResponse:
        if operation not in VTIGER_KINDS or operation == "not_found":
            raise VtigerError("UNKNOWN_OPERATION", f"Unknown operation requested {operation}")
        expected = "POST" if operation in _WRITE_OPERATIONS else "GET"
        if method != expected:
            raise VtigerError("UNKNOWN_OPERATION", "Permission to perform the operation is denied")
        if operation == "sync" and self.sync_fails:
            return SandboxResponse(500, b"", "text/html; charset=UTF-8")
        result = getattr(self, f"_op_{operation}")(_as_declared(operation, params))
        return json_response(200, {"success": True, "result": result})

    def _user(self, params: Mapping[str, str]) -> int:
        name = params.get("sessionName")
        if not name or name.lower() == "null":
            raise VtigerError("AUTHENTICATION_REQUIRED", "Authencation required")
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(name)
            if session is None:
                raise VtigerError("INVALID_SESSIONID", "Session Identifier provided is Invalid")
            if now - session.started > self.session_lifetime:
                del self._sessions[name]
                raise VtigerError("SESSION_EXPIRED", "Session has life span over please login again")
            if now - session.last_used > self.session_idle:
                del self._sessions[name]
                raise VtigerError("SESSION_LEFT_IDLE", "Session has been invalidated to due lack activity")
            session.last_used = now
            return session.user_id

    def _user_id_for(self, username: str | None) -> int | None:
        return next((uid for uid, name in self.crm.users.items() if name == username), None)

    def _check_write(self, wsid: str) -> None:
        if self.faults.consume_failure(wsid):
            self._injected("record_failure")
            raise VtigerError("DATABASE_QUERY_ERROR", "Database query error")

    # -- operations --

    def _op_getchallenge(self, params: Mapping[str, str]) -> dict[str, Any]:
        user_id = self._user_id_for(params.get("username"))
        if user_id is None:
            # 8.2.0's own words (and its spelling) for a username it does not know.
            raise VtigerError("ACCESS_DENIED", "username does not exists")
        token = uuid.uuid4().hex[:13]
        now = time.time()
        with self._lock:
            self._challenges[user_id] = _Challenge(token, time.monotonic() + self.challenge_ttl)
        return {"token": token, "serverTime": int(now), "expireTime": int(now + self.challenge_ttl)}

    def _op_login(self, params: Mapping[str, str]) -> dict[str, Any]:
        username = params.get("username")
        user_id = self._user_id_for(username)
        with self._lock:
            challenge = self._challenges.get(user_id) if user_id is not None else None
            if challenge is None or challenge.expires < time.monotonic():
                raise VtigerError("INVALID_AUTH_TOKEN", "Specified token is invalid or expired")
        if username != self.credentials.username or not secrets.compare_digest(
            params.get("accessKey") or "", self.login_key(challenge.token)
        ):
            raise VtigerError("INVALID_USER_CREDENTIALS", "Invalid username or password")
        assert user_id is not None
        if user_id in self.crm.inactive_users:
            # vtws_login: the key matched, then the user's status is looked at.
            raise VtigerError("AUTHENTICATION_REQUIRED", "Given user is inactive")
        session_name = secrets.token_hex(12)[:21]
        now = time.monotonic()
        with self._lock:
            self._sessions[session_name] = _Session(user_id, now, now)
        return {
            "sessionName": session_name,
            "userId": f"{_USER_PREFIX}x{user_id}",
            "version": API_VERSION,
            "vtigerVersion": VTIGER_VERSION,
        }

    def _op_logout(self, params: Mapping[str, str]) -> dict[str, Any]:
        self._user(params)
        with self._lock:
            self._sessions.pop(params.get("sessionName") or "", None)
        return {"message": "successfull"}

    def _op_listtypes(self, params: Mapping[str, str]) -> dict[str, Any]:
        self._user(params)
        modules = list(self.crm.schema.values())
        return {
            "types": [m.name for m in modules],
            "information": {
                m.name: {"isEntity": True, "label": m.name, "singular": m.singular} for m in modules
            },
        }

    def _op_describe(self, params: Mapping[str, str]) -> dict[str, Any]:
        self._user(params)
        mod = self.crm.module(params.get("elementType") or "")
        return {
            "label": mod.name,
            "name": mod.name,
            "createable": True,
            "updateable": True,
            "deleteable": True,
            "retrieveable": True,
            "fields": [f.describe() for f in mod.fields.values()],
            "idPrefix": mod.prefix,
            "isEntity": True,
            "allowDuplicates": True,
            "labelFields": mod.label_fields,
        }

    def _op_query(self, params: Mapping[str, str]) -> list[dict[str, str]]:
        self._user(params)
        rows = self.crm.query(params.get("query") or "")
        # After the LIMIT, as on the real server: the page comes back short.
        return [row for row in rows if not self._hidden(row.get("id"))]

    def _hidden(self, wsid: str | None) -> bool:
        return bool(self.hidden_owners) and wsid is not None and self.crm.owner_of(wsid) in self.hidden_owners

    def _op_retrieve(self, params: Mapping[str, str]) -> dict[str, str]:
        self._user(params)
        wsid = params.get("id") or ""
        self.crm._writable(wsid)  # the same checks as a write: type, deleted
        record = self.crm.get(wsid)
        if record is None:
            raise _denied(_NO_SUCH_RECORD)
        if self._hidden(wsid):
            raise _denied()  # "Permission to read given object is denied"
        return record

    def _element(self, params: Mapping[str, str]) -> dict[str, Any]:
        try:
            element = json.loads(params.get("element") or "")
        except ValueError:
            raise VtigerError("INVALID_ELEMENT", "element is not valid JSON") from None
        if not isinstance(element, dict):
            raise VtigerError("INVALID_ELEMENT", "element must be a JSON object")
        return element

    def _op_revise(self, params: Mapping[str, str]) -> dict[str, str]:
        return self.crm.revise(*self._write_of(params))

    def _op_update(self, params: Mapping[str, str]) -> dict[str, str]:
        return self.crm.replace(*self._write_of(params))

    def _write_of(self, params: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
        """The record a revise or update names and the values it writes, once its session and
        the record's write faults are checked."""
        self._user(params)
        element = self._element(params)
        wsid = str(element.pop("id", ""))
        self._check_write(wsid)
        return wsid, element

    def _op_create(self, params: Mapping[str, str]) -> dict[str, str]:
        self._user(params)
        element = self._element(params)
        owner = element.pop("assigned_user_id", None)
        if not owner:
            raise VtigerError("MANDATORY_FIELDS_MISSING", "assigned_user_id does not have a value")
        module = params.get("elementType") or ""
        wsid = self.crm.create(module, element, owner=str(owner))
        record = self.crm.get(wsid)
        assert record is not None
        return record

    def _op_delete(self, params: Mapping[str, str]) -> dict[str, str]:
        self._user(params)
        self.crm.delete(params.get("id") or "")
        return {"status": "successful"}

    def _op_sync(self, params: Mapping[str, str]) -> dict[str, Any]:
        user_id = self._user(params)
        try:
            # "" where the client sent 0: see _as_declared.
            since: int | None = int(params["modifiedTime"]) if params.get("modifiedTime") else None
        except ValueError:
            since = None
        return self.crm.sync(
            params.get("elementType") or "",
            since,
            user_id=user_id,
            sync_type=(params.get("syncType") or "user").lower(),
        )


def _as_declared(operation: str, params: Mapping[str, str]) -> dict[str, str]:
    """The parameters as the operation's handler gets them: each one it declares through
    ``vtws_getParameter`` (``addslashes``; a value PHP takes as false, "" or "0", is not given)
    and then ``OperationManager::handleType`` (``$value ? stripslashes($value) : ""``): a text
    arrives as sent, and "0" as ""; the others (``sessionName``) as they came."""
    declared = _DECLARED.get(operation, ())
    return {
        name: (stripslashes(addslashes(value)) if value not in ("", "0") else "")
        if name in declared
        else value
        for name, value in params.items()
    }


def _normalise_wsid(value: str) -> str | None:
    prefix, sep, number = str(value).partition("x")
    return value if sep and prefix.isdigit() and number.isdigit() else None


def _failure(error: VtigerError, status: int = 200, headers: dict[str, str] | None = None) -> SandboxResponse:
    payload = {"success": False, "error": {"code": error.code, "message": error.message}}
    return json_response(status, payload, headers)


# -- CLI -----------------------------------------------------------------------------------------


@sandbox_main(
    "vtiger",
    seed_help="Seed the CRM with this many generated contacts (with leads, organisations, consents).",
    options=(
        click.option(
            "--privacy-guard/--no-privacy-guard",
            default=True,
            help="With (the default) or without the Privacy Guard Consents module.",
        ),
        click.option("--sync-fails", is_flag=True, help="operation=sync answers HTTP 500 (8.2.0 on PHP 8)."),
    ),
)
def serve_forever(
    *,
    port: int = 8446,
    records: int = 200,
    seed: int,
    host: str,
    privacy_guard: bool = True,
    sync_fails: bool = False,
    timezone: str = SERVER_TIMEZONE,
) -> Serving:
    """Run a Vtiger CRM sandbox (webservice.php over HTTPS, self-signed CA) until interrupted.

    Prints its address, CA and credentials. It serves its times in ``timezone`` (an install whose
    $default_timezone is not UTC, as the contract harness's), and the printed block's
    ``server_timezone`` is the zone it serves (``VtigerHarness.connector_settings``)."""
    crm = VtigerCrm(privacy_guard=privacy_guard, timezone=timezone)
    sandbox, made = seeded(VtigerSandbox, crm, records, seed, host=host, port=port, sync_fails=sync_fails)
    c = sandbox.credentials
    who = {
        "username": c.username,
        "access key": c.access_key,
        "seeded": f"{len(made['contacts'])} contacts, {len(made['leads'])} leads, "
        f"{len(made['accounts'])} organisations, {len(made['consents'])} Privacy Guard consents "
        f"(--random-seed {seed})",
    }
    where = {"url": f"{sandbox.url}   (API: {sandbox.webservice_url})"}
    return Serving(sandbox, running_lines("Vtiger", sandbox, where, who))


#: ``consentsync sandbox vtiger`` (entry-point group ``consentsync.sandboxes``).
command = serve_forever.command
