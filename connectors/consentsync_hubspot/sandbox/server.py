"""A HubSpot sandbox: a local HTTPS server on 127.0.0.1 speaking the CRM v3 and
communication-preferences wire formats as HubSpot documents them, backed by an in-memory portal,
with the shared fault switches and call counting (:mod:`consentsync.sandbox.server`).

>>> from consentsync_hubspot.sandbox.server import HubSpotSandbox
>>> with HubSpotSandbox() as hs:
...     hs.portal.seed(300, seed=1)
...     session = hs.requests_session()
...     session.headers["Authorization"] = f"Bearer {hs.credentials.access_token}"

Endpoints (endpoint kind in brackets):

* ``POST /crm/v3/objects/contacts/search`` [search]: ``filterGroups`` (at most 5 groups of at most
  6 filters, 18 in all; groups OR, filters AND), operators EQ, NEQ, LT, LTE, GT, GTE, BETWEEN
  (``value`` .. ``highValue``), IN, NOT_IN, HAS_PROPERTY, NOT_HAS_PROPERTY, CONTAINS_TOKEN,
  NOT_CONTAINS_TOKEN; one sort at most (``{"propertyName", "direction"}``); ``limit`` 1..200
  (default 10); ``after`` an offset. At most ``search_result_cap`` (10,000) results per search:
  asking for ``after`` at or past the cap answers 400. Datetime filter values are epoch
  milliseconds or ISO 8601; text EQ ignores case. ``total`` counts every match.
* ``GET /crm/v3/objects/contacts`` [list], ``POST .../batch/read`` [batch_read],
  ``POST .../batch/update`` [batch_update] (at most ``batch_limit`` inputs, 100): 200 when every
  input was written, 207 with ``errors`` and ``numErrors`` when some were not (unknown ids:
  OBJECT_NOT_FOUND with ``context.ids``); an invalid property value fails the whole batch with
  400 VALIDATION_ERROR, as HubSpot does.
* ``GET /crm/v3/objects/contacts?archived=true`` [list]: archived (deleted) contacts, each with
  ``"archived": true`` and ``archivedAt``, paged with ``after``, in id order (not archivedAt).
  ``POST .../batch/read?archived=true`` [batch_read] answers archived contacts only, with the
  properties they held when archived (a live id is OBJECT_NOT_FOUND there). A batch read of live
  contacts answers a merged-away id with the contact it was merged into, under that contact's
  id (HubSpot's changelog "Updated merge functionality for contacts and companies": "fetching
  any records using the original IDs will return the new merged record with the new ID").
  ``propertiesWithHistory`` (a batch read's body) answers each named property's versions, newest
  first, as ``{"value", "timestamp", "sourceType"}``; the sandbox keeps the history of ``email``
  (a user's edit ``CRM_UI``, an API write ``API``, an import ``IMPORT``, a form ``FORM``) and
  answers another property with its current value alone. A batch read carrying
  ``propertiesWithHistory`` takes at most ``history_batch_limit`` (50) inputs: more answers 400
  VALIDATION_ERROR "The maximum number of inputs supported in a batch request for property
  histories is 50. Please reduce the number of items and try again", as HubSpot answers it
  (quoted in https://github.com/activepieces/activepieces/pull/9359). A contact's address
  changing moves its ``hs_email_optout_<id>`` and ``hs_email_optout`` to the new address's
  statuses (HubSpot keys them by address).
* ``GET /crm/v3/objects/contacts/{id}`` [get]: one contact; a merged-away id answers the contact
  it was merged into (its own id is gone); archived or unknown ids answer 404 OBJECT_NOT_FOUND.
* ``POST /crm/v3/objects/contacts/batch/archive`` [batch_archive] ``{"inputs": [{"id"}]}`` (at
  most ``batch_limit``): 204 No Content; an unknown or already archived id is no error. An
  archived contact can be restored (:meth:`HubSpotPortal.restore`, a user's "Restore records").
* ``POST /crm/v3/objects/contacts/gdpr-delete`` [gdpr_delete] ``{"objectId", "idProperty"?}``,
  one contact a call (HubSpot's reference "Permanently delete a contact (GDPR-compliant)"):
  204 No Content. The contact is deleted for good: in no list (not the archived one either),
  its id answers 404, it cannot be restored (HubSpot's knowledge base: permanent deletions
  "aren't held in the recycle bin"), and its address (and its additional ones) is blocklisted:
  a user or an import cannot add it back (:meth:`HubSpotPortal.create` refuses it), a form, an
  email to a connected inbox or an API call can. With ``"idProperty": "email"`` the contact
  having that address is deleted, and an address no contact has is blocklisted all the same.
* ``POST /crm/v3/objects/contacts/merge`` [merge] ``{"primaryObjectId", "objectIdToMerge"}``,
  as HubSpot merges contacts now (``HubSpotPortal(merges="new")``, the default; HubSpot's
  changelog "Updated merge functionality for contacts and companies"): a new contact with a new
  id is made of both, the primary's values current (the other's where the primary has none),
  the primary's ``email`` its address and the other's in ``hs_additional_emails``; both
  previous ids point to it (``GET`` of either answers the new contact, with its new id), and
  its ``hs_merged_object_ids`` names both (and the ids merged into either before). The answer
  is the new contact. As HubSpot merged before the change (``merges="old"``, kept for portals
  whose histories predate it, or per merge ``portal.merge(..., new_record=False)``): the
  primary keeps its id, the merged contact leaves every list and search (it is not archived),
  the primary's ``lastmodifieddate`` moves and its ``hs_merged_object_ids`` ("id1;id2") names
  the merged id.
* ``GET /crm/v3/properties/contacts`` [properties].
* ``GET /communication-preferences/v3/definitions`` [definitions],
  ``POST /communication-preferences/v3/subscribe|unsubscribe`` [subscribe, unsubscribe]
  (``emailAddress``, ``subscriptionId``, ``legalBasis``, ``legalBasisExplanation``). On a GDPR
  portal (``HubSpotSandbox.gdpr``, the default) both need the legal basis and its explanation
  (HubSpot's v3 spec, PublicUpdateSubscriptionStatusRequest, the body of both: "required for
  GDPR enabled portals"): 400 VALIDATION_ERROR without them; ``gdpr=False``: an unsubscribe
  without a basis keeps the one held. v3 never resubscribes a contact who unsubscribed: that
  answers 400.
* ``GET /communication-preferences/v4/statuses/{email}?channel=EMAIL`` [status_read] and
  ``GET .../v4/statuses/{email}/unsubscribe-all?channel=EMAIL`` [wide_status_read] (one
  address; its opt-outs of all email, ``results`` empty where it has none), scope
  ``communication_preferences.read``;
  ``POST /communication-preferences/v4/statuses/batch/read?channel=EMAIL`` [status_batch_read],
  ``POST /communication-preferences/v4/statuses/batch/unsubscribe-all/read?channel=EMAIL``
  [wide_status_batch_read]: the addresses opted out of all email, each with its
  ``wideStatuses`` (an address not opted out is left out of ``results``). The two batch reads
  need the scope ``communication_preferences.statuses.batch.read`` (HubSpot's spec:
  subscription-status-batch-read; its 2026-03 guide: only a Marketing Hub Enterprise portal can
  grant it): a private app without it is answered 403 MISSING_SCOPES. An opt-in fault
  (:meth:`HubSpotSandbox.fail_status_reads`) answers them 207 "multiple statuses" (the spec's
  ``...WithErrors`` answers) with an error entry for chosen addresses, or leaves those out of
  ``results``; :attr:`HubSpotSandbox.echo_spelling` answers ``subscriberIdString`` in another
  spelling than asked.
* Secondary addresses (``hs_additional_emails``, ";"-joined): a merge of the new kind keeps the
  other contact's address there, a user adds or removes one
  (:meth:`HubSpotPortal.add_additional_email`); each keeps its own subscription statuses and
  opt-out of all email (kept by address), and ``propertiesWithHistory`` answers the property's
  versions. A status change or opt-out under a secondary address moves neither the contact's
  ``lastmodifieddate`` nor its ``hs_email_optout*`` properties (HubSpot does not say whether it
  does: the connector must not rely on it).
* Business units (the Business Units add-on): ``HubSpotPortal(business_units={sid: unit})``
  puts subscription types in a unit other than the default one (0, "Account"); each
  definition answers its ``businessUnitId``, each v4 status too. The v4 status reads take an
  optional ``businessUnitId`` query parameter (HubSpot: "include this parameter to filter
  results by business unit ID. The default Account business unit will always use 0") and
  answer that unit's subscription types only; the wide statuses of a unit are its
  ``BUSINESS_UNIT_WIDE`` opt-out (:meth:`HubSpotPortal.unsubscribe_all` with
  ``business_unit``), and the default unit's read answers the ``PORTAL_WIDE`` one too (every
  wide status with a ``businessUnitId``, as HubSpot's reference shows it). Without the
  parameter a read answers the default unit's, a choice (HubSpot does not say), so that the
  connector must not rely on a read without it answering the other units.

Auth: ``Authorization: Bearer <private app token>``; a missing or unknown token answers 401
INVALID_AUTHENTICATION, a token without the scope a call needs 403 MISSING_SCOPES.

Limits (HubSpot's usage guidelines, https://developers.hubspot.com/docs/developer-tooling/
platform/usage-guidelines): every call counts against a daily allowance (``daily_limit``) and a
rolling window of ``burst_interval_ms`` (10,000: ten seconds) holding at most ``burst_limit``
calls (190, a Professional or Enterprise account's private app); searches also against
``search_per_second`` per token. Over a limit: 429 ``{"status": "error", "errorType":
"RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING" | "SECONDLY" | "DAILY", "message": "You have
reached your ten_secondly_rolling limit." | "You have reached your secondly limit." | "You have
reached your daily limit.", ...}`` (search's limit is ``SECONDLY``), without Retry-After (HubSpot
documents none). Responses other than search carry ``X-HubSpot-RateLimit-Daily``,
``-Daily-Remaining``, ``-Max``, ``-Remaining`` and ``-Interval-Milliseconds`` (the window
``-Max`` and ``-Remaining`` count; HubSpot leaves them all off search responses), a 429 too.
The one-second window of HubSpot's older limits (``secondly_limit``: off unless given) answers
429 ``SECONDLY`` and adds ``-Secondly`` and ``-Secondly-Remaining``.

Where HubSpot's documentation is silent the sandbox chooses, so that the connector must not rely
on it: the search index lags writes (HubSpot: a new or changed object can take a few seconds to
appear in search), modelled by :meth:`HubSpotPortal.begin_late` (a contact found by no search
until :meth:`HubSpotPortal.index`, then with its original ``lastmodifieddate``; reads by id see
it at once); records that tie on the sort property come in an order that is neither id nor insertion
order; the text of error messages; an injected per-record write failure (``Faults.fail_ids``) is
a 207 error entry of category CONFLICT (a 409 CONFLICT from v3 subscribe/unsubscribe); an
unsubscribe without a legal basis keeps the one held (``gdpr=False``); a resubscribe refusal is 400
VALIDATION_ERROR whose message says the contact unsubscribed (HubSpot's v3 wording was not
found; its v1 API's was "You cannot subscribe an unsubscribed address."); subscribe or
unsubscribe to the state already held answers 400 VALIDATION_ERROR "<email> is already
subscribed to subscription <id>" (or "is already unsubscribed from subscription <id>"), as
integrators quote HubSpot's answer; a batch update naming a merged-away id answers it
OBJECT_NOT_FOUND, as for a deleted one (HubSpot documents what a read of it answers, not a
write); a subscription change bumps the contact's
``lastmodifieddate`` and its ``hs_email_optout_{id}`` property; a contact's "unsubscribe from
all email" (:meth:`HubSpotPortal.unsubscribe_all`) is kept apart from the subscription statuses,
as HubSpot's v4 API keeps it (its own endpoint, ``wideStatuses``): the contact's
``hs_email_optout`` reads true and every subscription status stays as it was, so the connector
must not rely on HubSpot copying the opt-out into each status; the contact subscribing again to
a subscription type (a form, the preferences page) ends it, and v3 subscribe refuses an address
opted out of all. A permanent (GDPR) delete: HubSpot does not document its answer to an id it
does not know; the sandbox answers 404 OBJECT_NOT_FOUND (an id deleted already included), and
permanently deletes an archived contact too (out of the recycle bin); what becomes of the
address's subscription statuses HubSpot does not say: the sandbox keeps them, by address, as
for an archived contact; an ``idProperty`` other than ``email`` or ``hs_object_id`` answers 400.
A merge of the new kind: HubSpot documents the new id, both old ids pointing to
it and the primary's values; not whether the two originals show in the archived list. Third
parties report them archived, so by default (``merged_archived=True``) they are, stamped
``archivedAt`` at the merge, with the values they held (``batch/read?archived=true``), while
``GET`` of their ids answers the new contact; ``merged_archived=False`` leaves them in no list
at all, so the connector must work either way. The new contact's ``hs_merged_object_ids``
naming both originals and its ``createdate`` (the merge's time) are the sandbox's choices too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from consentsync.sandbox.people import crowded_seconds
from consentsync.sandbox.server import (
    HttpsSandbox,
    RequestBodyError,
    Route,
    SandboxRequest,
    SandboxResponse,
    json_response,
)
from consentsync.sandbox.serving import Serving, running_lines, sandbox_main, seeded

# The ``legalBasis`` values of the communication-preferences API: HubSpot's documented list,
# written once for the connector and its sandbox.
from consentsync_hubspot.connector import V3_LEGAL_BASES

__all__ = [
    "ENDPOINT_KINDS",
    "LEGAL_BASIS_OPTIONS",
    "V3_LEGAL_BASES",
    "HubSpotApiError",
    "HubSpotCredentials",
    "HubSpotPortal",
    "HubSpotSandbox",
    "Subscription",
    "serve_forever",
]

WRITE_KINDS = ("batch_update", "batch_archive", "gdpr_delete", "merge", "subscribe", "unsubscribe")
#: The two ways HubSpot has merged contacts (``HubSpotPortal(merges=...)``).
MERGE_KINDS = ("new", "old")

#: The options of the contact property ``hs_legal_basis`` (a multiple checkbox: values joined by ;).
LEGAL_BASIS_OPTIONS = (
    "Legitimate interest – prospect/lead",
    "Legitimate interest – existing customer",
    "Legitimate interest - other",
    "Performance of a contract",
    "Freely given consent from contact",
    "Not applicable",
)
#: The private-app scope of the v4 batch status reads (Marketing Hub Enterprise only).
BATCH_READ_SCOPE = "communication_preferences.statuses.batch.read"
_SCOPE_OF_KIND = {
    "search": "crm.objects.contacts.read",
    "list": "crm.objects.contacts.read",
    "get": "crm.objects.contacts.read",
    "batch_read": "crm.objects.contacts.read",
    "batch_update": "crm.objects.contacts.write",
    "batch_archive": "crm.objects.contacts.write",
    # HubSpot's reference names this scope alone for gdpr-delete: no GDPR-specific one.
    "gdpr_delete": "crm.objects.contacts.write",
    "merge": "crm.objects.contacts.write",
    "properties": "crm.schemas.contacts.read",
    "definitions": "communication_preferences.read",
    "subscribe": "communication_preferences.write",
    "unsubscribe": "communication_preferences.write",
    "status_read": "communication_preferences.read",
    "wide_status_read": "communication_preferences.read",
    # HubSpot's v4 batch status reads need a scope of their own (its spec: subscription-status-
    # batch-read; a private app's communication_preferences.statuses.batch.read), which only a
    # portal on Marketing Hub Enterprise can grant (the 2026-03 communication-preferences guide).
    "status_batch_read": BATCH_READ_SCOPE,
    "wide_status_batch_read": BATCH_READ_SCOPE,
}
#: Every kind of call (each needs its scope), and the answer to a path HubSpot does not serve.
ENDPOINT_KINDS = (*_SCOPE_OF_KIND, "not_found")
#: The scopes a private app granted all of them has.
ALL_SCOPES = frozenset(_SCOPE_OF_KIND.values())
_OPERATORS = frozenset(
    {
        "EQ",
        "NEQ",
        "LT",
        "LTE",
        "GT",
        "GTE",
        "BETWEEN",
        "IN",
        "NOT_IN",
        "HAS_PROPERTY",
        "NOT_HAS_PROPERTY",
        "CONTAINS_TOKEN",
        "NOT_CONTAINS_TOKEN",
    }
)
MAX_FILTER_GROUPS = 5
MAX_FILTERS_PER_GROUP = 6
MAX_FILTERS = 18
MAX_SEARCH_LIMIT = 200


class HubSpotApiError(Exception):
    """An error answer: ``{"status": "error", "message", "correlationId", "category", ...}``."""

    def __init__(self, status: int, category: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.category = category
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "error", "message": self.message, "correlationId": str(uuid.uuid4())}
        if self.category:
            out["category"] = self.category
        out.update(self.extra)
        return out


@dataclass
class HubSpotCredentials:
    """The private app: its access token and the scopes granted to it."""

    access_token: str = field(default_factory=lambda: "pat-na1-" + str(uuid.uuid4()))
    scopes: frozenset[str] = ALL_SCOPES
    portal_id: int = 20261201


@dataclass
class Subscription:
    """One contact's status for one subscription type (v4 words: SUBSCRIBED, UNSUBSCRIBED,
    NOT_SPECIFIED)."""

    status: str
    legal_basis: str | None
    explanation: str | None
    timestamp: dt.datetime
    source: str


@dataclass(frozen=True)
class PropertyDef:
    name: str
    label: str
    type: str  # string, enumeration, datetime, bool, number
    field_type: str  # text, checkbox, booleancheckbox, date, number
    options: tuple[str, ...] = ()
    read_only: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "fieldType": self.field_type,
            "groupName": "contactinformation",
            "options": [
                {"label": o, "value": o, "displayOrder": i, "hidden": False}
                for i, o in enumerate(self.options)
            ],
            "modificationMetadata": {"readOnlyValue": self.read_only, "archivable": True},
            "hidden": False,
            "formField": not self.read_only,
        }


#: The business unit of the default "Account" unit (HubSpot: "The default Account business unit
#: will always use 0"), and so of every subscription type of a portal without the add-on.
DEFAULT_UNIT = 0
#: Inputs a batch read carrying ``propertiesWithHistory`` takes (HubSpot's 400 above it).
HISTORY_BATCH_LIMIT = 50
HISTORY_LIMIT_MESSAGE = (
    "The maximum number of inputs supported in a batch request for property histories is 50. "
    "Please reduce the number of items and try again"
)

DEFAULT_SUBSCRIPTIONS: dict[str, tuple[str, str]] = {
    "1001": ("Marketing Information", "Marketing"),
    "1002": ("Customer Service Communication", "Service"),
    "1003": ("One to One", "Sales"),
}


def _now_ms() -> dt.datetime:
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso_ms(moment: dt.datetime) -> str:
    """HubSpot's timestamp spelling: ``2026-11-23T03:21:24.123Z``."""
    moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_moment(value: Any) -> dt.datetime | None:
    """Epoch milliseconds (number or digits) or ISO 8601 to an aware datetime; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value / 1000, dt.UTC)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.lstrip("-").isdigit():
        return dt.datetime.fromtimestamp(int(text) / 1000, dt.UTC)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class HubSpotPortal:
    """A portal's contacts and subscription statuses. Thread-safe. The helpers act as HubSpot's
    users (and contacts, on the preferences page) would: every change moves ``lastmodifieddate``
    to :attr:`clock`'s time (millisecond precision)."""

    def __init__(
        self,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        subscriptions: Mapping[str, tuple[str, str]] | None = None,
        business_units: Mapping[str, int] | None = None,
        first_id: int = 101,
        merges: str = "new",
        merged_archived: bool = True,
    ) -> None:
        if merges not in MERGE_KINDS:
            raise ValueError(f"merges must be one of {', '.join(MERGE_KINDS)}, not {merges!r}")
        #: How a merge behaves: "new" (a new contact with a new id; HubSpot now) or "old" (the
        #: primary keeps its id; HubSpot before its change, kept by older portals' histories).
        self.merges = merges
        #: A merge of the new kind lists both originals as archived (see the module's notes).
        self.merged_archived = merged_archived
        self.clock = clock or _now_ms
        self.definitions = dict(subscriptions or DEFAULT_SUBSCRIPTIONS)
        unknown = sorted(set(business_units or {}) - set(self.definitions))
        if unknown:
            raise ValueError(f"business_units names subscription types the portal lacks: {unknown}")
        #: Each subscription type's business unit (the Business Units add-on; its definition's
        #: ``businessUnitId``): DEFAULT_UNIT (0, the default "Account" unit) unless given.
        self.business_units = {
            sid: int((business_units or {}).get(sid, DEFAULT_UNIT)) for sid in self.definitions
        }
        self.lock = threading.RLock()
        self._next_id = first_id
        self._contacts: dict[int, dict[str, Any]] = {}
        # Archived (deleted) contacts, with their "archivedAt", as the archived list shows them.
        self._archived: dict[int, dict[str, Any]] = {}
        # Permanently (GDPR) deleted ids, in no list and never restorable, and the addresses
        # that blocklists (lower case): a user or an import cannot add them back.
        self._purged: set[int] = set()
        self._blocklist: set[str] = set()
        # Merged-away id -> the id of the contact that survived the merge.
        self._merged_into: dict[int, int] = {}
        # Contacts written but not yet in the search index (HubSpot's search lags writes).
        self._unindexed: set[int] = set()
        self._statuses: dict[tuple[str, str], Subscription] = {}
        # Each contact's ``email`` property history, oldest first: (value, when, sourceType), as
        # ``propertiesWithHistory`` answers it (newest first).
        self._email_history: dict[int, list[tuple[str | None, dt.datetime, str]]] = {}
        # Each contact's ``hs_additional_emails`` history, oldest first, the same way: (the
        # ";"-joined addresses or None, when set, sourceType).
        self._additional_history: dict[int, list[tuple[str | None, dt.datetime, str]]] = {}
        # Addresses opted out of all email ("wide" status), with when they opted out.
        self._opted_out_of_all: dict[str, dt.datetime] = {}
        # (address, business unit) opted out of all of that unit's email, with when.
        self._opted_out_of_unit: dict[tuple[str, int], dt.datetime] = {}
        self.properties: dict[str, PropertyDef] = {
            p.name: p
            for p in (
                PropertyDef("hs_object_id", "Record ID", "number", "number", read_only=True),
                PropertyDef("createdate", "Create Date", "datetime", "date", read_only=True),
                PropertyDef("lastmodifieddate", "Last Modified Date", "datetime", "date", read_only=True),
                # Set by merges only: the ids merged into the contact, joined by ";".
                PropertyDef(
                    "hs_merged_object_ids", "Merged Contact IDs", "enumeration", "checkbox", read_only=True
                ),
                PropertyDef("email", "Email", "string", "text"),
                # Set by merges: the other contact's address, kept on the merged one (";"-joined).
                PropertyDef(
                    "hs_additional_emails",
                    "Additional email addresses",
                    "enumeration",
                    "checkbox",
                    read_only=True,
                ),
                PropertyDef("firstname", "First Name", "string", "text"),
                PropertyDef("lastname", "Last Name", "string", "text"),
                PropertyDef("jobtitle", "Job Title", "string", "text"),
                PropertyDef("phone", "Phone Number", "string", "text"),
                PropertyDef("mobilephone", "Mobile Phone Number", "string", "text"),
                PropertyDef("company", "Company Name", "string", "text"),
                PropertyDef(
                    "hs_legal_basis",
                    "Legal basis for processing contact's data",
                    "enumeration",
                    "checkbox",
                    LEGAL_BASIS_OPTIONS,
                ),
                PropertyDef(
                    "hs_email_optout",
                    "Unsubscribed from all email",
                    "bool",
                    "booleancheckbox",
                    read_only=True,
                ),
                *(
                    PropertyDef(
                        f"hs_email_optout_{sid}",
                        f"Opted out of email: {name}",
                        "enumeration",
                        "booleancheckbox",
                        ("true", "false"),
                        read_only=True,
                    )
                    for sid, (name, _purpose) in self.definitions.items()
                ),
            )
        }

    def now(self) -> dt.datetime:
        moment = self.clock().astimezone(dt.UTC)
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    # -- contacts ------------------------------------------------------------------------------

    def create(
        self,
        properties: Mapping[str, Any] | None = None,
        /,
        *,
        at: dt.datetime | None = None,
        via: str = "ui",
    ) -> str:
        """A new contact; returns its id. ``via``: how it is added ("ui", "import", "form",
        "inbox", "api"). An address a permanent delete blocklisted is refused to a user and an
        import (400), as HubSpot refuses it; a form, a connected inbox or the API add it."""
        moment = at or self.now()
        values = self._checked(properties or {}, user=True)
        with self.lock:
            email = str(values.get("email") or "").strip().lower()
            if via in ("ui", "import") and email in self._blocklist:
                raise HubSpotApiError(
                    400,
                    "VALIDATION_ERROR",
                    "This email address belongs to a permanently deleted contact and cannot be added back",
                )
            contact_id = self._next_id
            self._next_id += 1
            self._contacts[contact_id] = {
                **values,
                "hs_object_id": str(contact_id),
                "createdate": moment,
                "lastmodifieddate": moment,
            }
            if values.get("email") is not None:
                source = _SOURCE_TYPES.get(via, "CRM_UI")
                self._email_history[contact_id] = [(str(values["email"]), moment, source)]
        return str(contact_id)

    def update(
        self, contact_id: str, properties: Mapping[str, Any], /, *, at: dt.datetime | None = None
    ) -> None:
        """Edit a contact as a user would (read-only properties included: HubSpot's own UI
        moves those)."""
        values = self._checked(properties, user=True)
        moment = at or self.now()
        with self.lock:
            record = self._contacts[int(contact_id)]
            before, more = record.get("email"), record.get("hs_additional_emails")
            record.update(values)
            record["lastmodifieddate"] = moment
            self._after_edit(int(contact_id), before, moment, "CRM_UI")
            self._note_additional(int(contact_id), more, moment, "CRM_UI")

    def get(self, contact_id: str) -> dict[str, Any] | None:
        with self.lock:
            try:
                record = self._contacts.get(int(contact_id))
            except ValueError:
                return None
            return dict(record) if record is not None else None

    def begin_late(self, properties: Mapping[str, Any] | None = None, /) -> str:
        """A contact written now (its id and ``lastmodifieddate`` given now) that the search
        index has not caught up with: no search finds it until :meth:`index`. HubSpot documents
        that a new or changed object can take a few seconds to appear in search results."""
        contact_id = self.create(properties)
        with self.lock:
            self._unindexed.add(int(contact_id))
        return contact_id

    def index(self, contact_id: str) -> None:
        """The search index catches up: the contact is found with its original stamp."""
        with self.lock:
            self._unindexed.discard(int(contact_id))

    def indexed(self, contact_id: int) -> bool:
        with self.lock:
            return contact_id not in self._unindexed

    def archive(self, contact_id: str, /, *, at: dt.datetime | None = None) -> bool:
        """Delete (archive) a contact, as a user or ``batch/archive`` does: it leaves search,
        reads and writes and shows in ``GET /crm/v3/objects/contacts?archived=true`` with its
        ``archivedAt``. False when there was no such live contact."""
        moment = at or self.now()
        with self.lock:
            record = self._contacts.pop(_as_int(contact_id), None)
            if record is None:
                return False
            record["archivedAt"] = moment
            self._archived[int(contact_id)] = record
            self._unindexed.discard(int(contact_id))
            return True

    def gdpr_delete(self, contact_id: str, /) -> bool:
        """Permanently delete a contact, as ``POST .../gdpr-delete`` or a user's "permanently
        delete" does: out of every list (the archived one too: a contact in the recycle bin is
        taken out of it), its id answering 404, never restorable, its addresses blocklisted.
        False when there was no such contact (unknown, or deleted for good already)."""
        with self.lock:
            wanted = _as_int(contact_id)
            record = self._contacts.pop(wanted, None)
            if record is None:
                record = self._archived.pop(wanted, None)
            if record is None:
                return False
            self._unindexed.discard(wanted)
            self._purged.add(wanted)
            self._email_history.pop(wanted, None)
            self._additional_history.pop(wanted, None)
            for address in (record.get("email"), *_merged_ids(record.get("hs_additional_emails"))):
                if address:
                    self._blocklist.add(str(address).strip().lower())
            return True

    def gdpr_delete_email(self, email: str, /) -> bool:
        """``gdpr-delete`` with ``"idProperty": "email"``: the contact having the address is
        deleted for good; the address is blocklisted either way. False when no contact had it."""
        found = self.find_by_email(email)
        with self.lock:
            self._blocklist.add(email.strip().lower())
            return found is not None and self.gdpr_delete(found)

    def purged(self, contact_id: str) -> bool:
        """Whether the contact was deleted for good (``gdpr-delete``)."""
        with self.lock:
            return _as_int(contact_id) in self._purged

    def blocklisted(self, email: str) -> bool:
        """Whether a permanent delete blocklisted the address."""
        with self.lock:
            return email.strip().lower() in self._blocklist

    def restore(self, contact_id: str, /, *, at: dt.datetime | None = None) -> bool:
        """A user restores a deleted contact from the recycle bin (HubSpot keeps an archived
        contact restorable for 90 days): it is live again, with the values it held, its
        ``lastmodifieddate`` moved. False when the id is not in the bin: a permanently deleted
        contact cannot be restored, nor one whose address a live contact now has, nor a
        merged-away original."""
        moment = at or self.now()
        with self.lock:
            wanted = _as_int(contact_id)
            record = self._archived.get(wanted)
            if record is None or wanted in self._merged_into:
                return False
            email = str(record.get("email") or "")
            if email and self.find_by_email(email) is not None:
                return False
            del self._archived[wanted]
            live = {name: value for name, value in record.items() if name != "archivedAt"}
            live["lastmodifieddate"] = moment
            self._contacts[wanted] = live
            return True

    def archived_one(self, contact_id: str) -> dict[str, Any] | None:
        """An archived contact as it was when archived, or None (live, merged or unknown)."""
        with self.lock:
            if not str(contact_id).strip().isdigit():
                return None
            record = self._archived.get(int(contact_id))
            return dict(record) if record is not None else None

    def archived(self) -> list[tuple[int, dict[str, Any]]]:
        """Archived contacts in id order (the archived list's order)."""
        with self.lock:
            return [(cid, dict(record)) for cid, record in sorted(self._archived.items())]

    def merge(
        self,
        primary_id: str,
        merged_id: str,
        /,
        *,
        at: dt.datetime | None = None,
        new_record: bool | None = None,
    ) -> dict[str, Any]:
        """Merge ``merged_id`` into ``primary_id`` as ``POST /crm/v3/objects/contacts/merge``
        does; answers the contact that results (its ``hs_object_id`` is its id).

        New (``new_record``, by default when the portal's ``merges`` is "new"): a new contact
        with a new id, the primary's values over the other's, the other's address in
        ``hs_additional_emails``; both originals leave every search and live list (listed as
        archived at the merge when ``merged_archived``), a read of either id answers the new
        contact, whose ``hs_merged_object_ids`` names both (and those merged into either).

        Old: the merged contact is gone (not archived: it is in no list), a read of its id
        answers the primary, and the primary's ``hs_merged_object_ids`` names it (and the ids
        merged into it before)."""
        moment = at or self.now()
        fresh = self.merges == "new" if new_record is None else new_record
        with self.lock:
            primary, merged = _as_int(primary_id), _as_int(merged_id)
            if primary == merged or primary not in self._contacts or merged not in self._contacts:
                raise HubSpotApiError(
                    400, "VALIDATION_ERROR", f"Cannot merge contact {merged_id} into {primary_id}"
                )
            if fresh:
                return self._merge_into_new(primary, merged, moment)
            gone = self._contacts.pop(merged)
            self._unindexed.discard(merged)
            names = [
                *_merged_ids(self._contacts[primary].get("hs_merged_object_ids")),
                str(merged),
                *_merged_ids(gone.get("hs_merged_object_ids")),
            ]
            record = self._contacts[primary]
            record["hs_merged_object_ids"] = ";".join(dict.fromkeys(names))
            record["lastmodifieddate"] = moment
            for earlier, survivor in list(self._merged_into.items()):
                if survivor == merged:
                    self._merged_into[earlier] = primary
            self._merged_into[merged] = primary
            return dict(record)

    def _merge_into_new(self, primary: int, merged: int, moment: dt.datetime) -> dict[str, Any]:
        """The new kind of merge (the lock held, both contacts live)."""
        first, second = self._contacts.pop(primary), self._contacts.pop(merged)
        self._unindexed.discard(primary)
        self._unindexed.discard(merged)
        new_id = self._next_id
        self._next_id += 1
        names = [
            *_merged_ids(first.get("hs_merged_object_ids")),
            *_merged_ids(second.get("hs_merged_object_ids")),
            str(primary),
            str(merged),
        ]
        addresses = [
            *_merged_ids(first.get("hs_additional_emails")),
            *([str(second["email"])] if second.get("email") else []),
            *_merged_ids(second.get("hs_additional_emails")),
        ]
        # The primary's values, the other's where the primary has none; but the opt-out
        # properties follow the merged contact's address (the primary's): HubSpot ties an
        # opt-out to an address, not to a record, and the other's stays with its address.
        by_address = {"hs_email_optout", *(f"hs_email_optout_{sid}" for sid in self.definitions)}
        record = {
            **{name: value for name, value in second.items() if value is not None and name not in by_address},
            **{name: value for name, value in first.items() if value is not None},
        }
        record.pop("archivedAt", None)
        record.update(
            {
                "hs_object_id": str(new_id),
                "createdate": moment,
                "lastmodifieddate": moment,
                "hs_merged_object_ids": ";".join(dict.fromkeys(names)),
                "hs_additional_emails": ";".join(
                    dict.fromkeys(a for a in addresses if a.lower() != str(record.get("email") or "").lower())
                )
                or None,
            }
        )
        self._contacts[new_id] = record
        more = record.get("hs_additional_emails")
        held = list(self._additional_history.get(primary, []))
        if more and (not held or held[-1][0] != more):
            held.append((str(more), moment, "MERGE"))
        if held:
            self._additional_history[new_id] = held
        # The new contact's address is the primary's, with the primary's history of it.
        self._email_history[new_id] = list(self._email_history.get(primary, [])) or (
            [(str(record["email"]), moment, "MERGE")] if record.get("email") else []
        )
        for earlier, survivor in list(self._merged_into.items()):
            if survivor in (primary, merged):
                self._merged_into[earlier] = new_id
        self._merged_into[primary] = new_id
        self._merged_into[merged] = new_id
        if self.merged_archived:
            for old_id, old in ((primary, first), (merged, second)):
                self._archived[old_id] = {**old, "archivedAt": moment}
        return dict(record)

    def merged_into(self, contact_id: str) -> str | None:
        """The live contact a merged-away id now points to; None when it was never merged."""
        with self.lock:
            survivor = self._merged_into.get(_as_int(contact_id))
            return str(survivor) if survivor is not None else None

    def canonical(self, contact_id: str) -> str | None:
        """The id a read of ``contact_id`` answers: itself, or the contact it was merged into;
        None when it is neither live nor merged."""
        with self.lock:
            try:
                wanted = int(contact_id)
            except ValueError:
                return None
            wanted = self._merged_into.get(wanted, wanted)
            return str(wanted) if wanted in self._contacts else None

    def ids(self) -> list[str]:
        with self.lock:
            return [str(i) for i in self._contacts]

    def count(self) -> int:
        with self.lock:
            return len(self._contacts)

    def find_by_email(self, email: str) -> str | None:
        wanted = email.strip().lower()
        with self.lock:
            for contact_id, record in self._contacts.items():
                if str(record.get("email") or "").lower() == wanted:
                    return str(contact_id)
        return None

    # -- subscriptions -------------------------------------------------------------------------

    def status(self, email: str, subscription_id: str) -> Subscription | None:
        with self.lock:
            return self._statuses.get((email.strip().lower(), str(subscription_id)))

    def statuses(self, email: str) -> dict[str, Subscription]:
        wanted = email.strip().lower()
        with self.lock:
            return {sid: s for (address, sid), s in self._statuses.items() if address == wanted}

    def set_status(
        self,
        email: str,
        subscription_id: str,
        status: str,
        *,
        legal_basis: str | None = None,
        explanation: str | None = None,
        source: str = "Subscription preferences page",
        at: dt.datetime | None = None,
    ) -> None:
        """A status change as a contact (preferences page) or user would make it; the contact's
        ``hs_email_optout_{id}`` and ``lastmodifieddate`` follow."""
        if str(subscription_id) not in self.definitions:
            raise KeyError(subscription_id)
        if status not in ("SUBSCRIBED", "UNSUBSCRIBED", "NOT_SPECIFIED"):
            raise ValueError(status)
        moment = at or self.now()
        with self.lock:
            self._statuses[(email.strip().lower(), str(subscription_id))] = Subscription(
                status, legal_basis, explanation, moment, source
            )
            resubscribed = status == "SUBSCRIBED" and source != "API"
            if resubscribed:
                # The contact's own opt-in to a subscription type ends its opt-out of all email
                # (and of all of the type's business unit's email).
                self._opted_out_of_all.pop(email.strip().lower(), None)
                unit = self.business_units[str(subscription_id)]
                self._opted_out_of_unit.pop((email.strip().lower(), unit), None)
            contact_id = self.find_by_email(email)
            if contact_id is not None:
                record = self._contacts[int(contact_id)]
                record[f"hs_email_optout_{subscription_id}"] = "true" if status == "UNSUBSCRIBED" else "false"
                if resubscribed:
                    record["hs_email_optout"] = "false"
                record["lastmodifieddate"] = moment

    def unsubscribe_all(
        self, email: str, /, *, at: dt.datetime | None = None, business_unit: int | None = None
    ) -> None:
        """The contact's "unsubscribe from all email" (the link in a marketing email, or a user's
        "opt out of email"): ``hs_email_optout`` and ``lastmodifieddate`` follow; the statuses
        of the subscription types stay as they were (v4: a ``PORTAL_WIDE`` wide status).

        With ``business_unit`` (the Business Units add-on): an opt-out of all of that unit's
        email only (HubSpot's knowledge base, https://knowledge.hubspot.com/sv/records/how-do-i-
        unsubscribe-or-opt-out-contacts-from-email: a contact opted out of all email while
        working in a business unit is opted out of that unit's subscriptions only; v4: a
        ``BUSINESS_UNIT_WIDE`` wide status naming it). ``lastmodifieddate`` moves;
        ``hs_email_optout`` does not (HubSpot does not say whether it follows, so the connector
        must not rely on it)."""
        moment = at or self.now()
        address = email.strip().lower()
        with self.lock:
            if business_unit is None:
                self._opted_out_of_all[address] = moment
            else:
                if int(business_unit) not in set(self.business_units.values()):
                    raise ValueError(f"the portal has no business unit {business_unit}")
                self._opted_out_of_unit[(address, int(business_unit))] = moment
            contact_id = self.find_by_email(email)
            if contact_id is not None:
                record = self._contacts[int(contact_id)]
                if business_unit is None:
                    record["hs_email_optout"] = "true"
                record["lastmodifieddate"] = moment

    def opted_out_of_all(self, email: str) -> dt.datetime | None:
        """When the address opted out of all email; None when it has not (or subscribed since)."""
        with self.lock:
            return self._opted_out_of_all.get(email.strip().lower())

    def opted_out_of_unit(self, email: str, business_unit: int) -> dt.datetime | None:
        """When the address opted out of all of ``business_unit``'s email; None when it has not
        (or subscribed to one of its types since)."""
        with self.lock:
            return self._opted_out_of_unit.get((email.strip().lower(), int(business_unit)))

    # -- API-side writes -----------------------------------------------------------------------

    def api_update(self, contact_id: str, properties: Mapping[str, Any]) -> dict[str, Any]:
        """An update through the API: read-only properties and invalid values raise
        :class:`HubSpotApiError` (400 VALIDATION_ERROR)."""
        values = self._checked(properties, user=False)
        with self.lock:
            record = self._contacts[int(contact_id)]
            before, more = record.get("email"), record.get("hs_additional_emails")
            record.update(values)
            record["lastmodifieddate"] = moment = self.now()
            self._after_edit(int(contact_id), before, moment, "API")
            self._note_additional(int(contact_id), more, moment, "API")
            return dict(record)

    def _after_edit(self, contact_id: int, before: Any, moment: dt.datetime, source: str) -> None:
        """After an edit of a contact (the lock held): a new address goes into the ``email``
        history, and the opt-out properties follow the address (HubSpot keys subscription
        statuses by address, not by contact): ``hs_email_optout_<id>`` reads the new address's
        status of each type, ``hs_email_optout`` its opt-out of all email."""
        record = self._contacts[contact_id]
        after = record.get("email")
        if str(before or "").strip().lower() == str(after or "").strip().lower():
            return
        history = self._email_history.setdefault(contact_id, [])
        if not history and before is not None:
            history.append((str(before), record["createdate"], "CRM_UI"))
        history.append((str(after) if after is not None else None, moment, source))
        address = str(after or "").strip().lower()
        held = self.statuses(address) if address else {}
        for sid in self.definitions:
            status = held.get(sid)
            name = f"hs_email_optout_{sid}"
            if status is not None:
                record[name] = "true" if status.status == "UNSUBSCRIBED" else "false"
            elif record.get(name) is not None:
                record[name] = "false"
        if address and address in self._opted_out_of_all:
            record["hs_email_optout"] = "true"
        elif record.get("hs_email_optout") is not None:
            record["hs_email_optout"] = "false"

    def email_history(self, contact_id: str) -> list[tuple[str | None, dt.datetime, str]]:
        """The contact's ``email`` values, oldest first: (value, when set, sourceType)."""
        with self.lock:
            return list(self._email_history.get(_as_int(contact_id), []))

    def additional_history(self, contact_id: str) -> list[tuple[str | None, dt.datetime, str]]:
        """The contact's ``hs_additional_emails`` values, oldest first: (the ";"-joined
        addresses or None, when set, sourceType)."""
        with self.lock:
            return list(self._additional_history.get(_as_int(contact_id), []))

    def add_additional_email(self, contact_id: str, email: str, /, *, at: dt.datetime | None = None) -> None:
        """A user adds a secondary address to the contact (its record's "Additional email
        addresses"): ``hs_additional_emails`` and ``lastmodifieddate`` follow. The address keeps
        its own subscription statuses (HubSpot keys them by address)."""
        moment = at or self.now()
        with self.lock:
            record = self._contacts[int(contact_id)]
            more = record.get("hs_additional_emails")
            addresses = [*_merged_ids(more), email]
            record["hs_additional_emails"] = ";".join(dict.fromkeys(addresses))
            record["lastmodifieddate"] = moment
            self._note_additional(int(contact_id), more, moment, "CRM_UI")

    def remove_additional_email(
        self, contact_id: str, email: str, /, *, at: dt.datetime | None = None
    ) -> None:
        """A user removes a secondary address from the contact."""
        moment = at or self.now()
        with self.lock:
            record = self._contacts[int(contact_id)]
            more = record.get("hs_additional_emails")
            kept = [a for a in _merged_ids(more) if a.lower() != email.strip().lower()]
            record["hs_additional_emails"] = ";".join(kept) or None
            record["lastmodifieddate"] = moment
            self._note_additional(int(contact_id), more, moment, "CRM_UI")

    def _note_additional(self, contact_id: int, before: Any, moment: dt.datetime, source: str) -> None:
        """After an edit (the lock held): a changed ``hs_additional_emails`` goes into its history."""
        after = self._contacts[contact_id].get("hs_additional_emails")
        if (before or None) == (after or None):
            return
        history = self._additional_history.setdefault(contact_id, [])
        if not history and before:
            history.append((str(before), self._contacts[contact_id]["createdate"], source))
        history.append((str(after) if after else None, moment, source))

    def _checked(self, properties: Mapping[str, Any], *, user: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in properties.items():
            prop = self.properties.get(name)
            if prop is None:
                raise _not_valid(name, "PROPERTY_DOESNT_EXIST", f'Property \\"{name}\\" does not exist')
            if prop.read_only and not user:
                raise _not_valid(
                    name, "READ_ONLY_VALUE", f"{name} is a read only property; its value cannot be set."
                )
            out[name] = self._value(prop, value)
        return out

    @staticmethod
    def _value(prop: PropertyDef, value: Any) -> Any:
        if value is None or value == "":
            return None
        if prop.type == "datetime":
            return parse_moment(value) if not isinstance(value, dt.datetime) else value
        if prop.type == "bool" or prop.field_type == "booleancheckbox":
            text = str(value).lower() if not isinstance(value, bool) else ("true" if value else "false")
            if text not in ("true", "false"):
                raise _invalid(prop.name, value, "INVALID_BOOLEAN")
            return text
        if prop.type == "enumeration":
            chosen = str(value).split(";")
            for option in chosen:
                if option not in prop.options:
                    raise _invalid(prop.name, option, "INVALID_OPTION")
            return ";".join(chosen)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise _invalid(prop.name, value, "INVALID_STRING")
        text = str(value)
        if len(text) > 65536:
            raise _invalid(prop.name, "<long>", "MAX_CHARACTERS")
        return text

    # -- seeding -------------------------------------------------------------------------------

    def seed(self, count: int, seed: int = 0, *, days: int = 7) -> list[str]:
        """``count`` contacts with names, emails, legal bases and subscription statuses, their
        ``lastmodifieddate`` spread over the past ``days`` days and clustered on a few
        milliseconds (imports and workflows touch many contacts at once)."""
        rng = random.Random(seed)
        now = self.now()
        moments = crowded_seconds(rng, now, max(3, count // 30), days=days)
        made = []
        for index in range(count):
            first = rng.choice(
                ("Ada", "Bo", "Chloé", "Dev", "Emeka", "Fatima", "Grete", "Hiro", "Ines", "Jon")
            )
            last = rng.choice(("Okafor", "Lind", "García", "Nakamura", "O'Neil", "Schmidt", "Nowak", "Silva"))
            email = f"{first.lower()}.{last.lower().replace(chr(39), '')}.{index}.{seed}@example.test"
            basis = rng.sample(LEGAL_BASIS_OPTIONS[:5], k=rng.choice((0, 1, 1, 2)))
            moment = rng.choice(moments)
            contact_id = self.create(
                {
                    "email": email,
                    "firstname": first,
                    "lastname": last,
                    "hs_legal_basis": ";".join(basis) or None,
                },
                at=moment,
            )
            for sid in self.definitions:
                roll = rng.random()
                if roll < 0.35:
                    self.set_status(
                        email,
                        sid,
                        "SUBSCRIBED",
                        legal_basis="CONSENT_WITH_NOTICE",
                        explanation="Signed up on the website",
                        source="Form",
                        at=moment,
                    )
                elif roll < 0.5:
                    self.set_status(email, sid, "UNSUBSCRIBED", at=moment)
            made.append(contact_id)
        return made


#: The ``sourceType`` an address gets in the ``email`` history by how the contact was added.
_SOURCE_TYPES = {
    "ui": "CRM_UI",
    "import": "IMPORT",
    "form": "FORM",
    "inbox": "EMAIL_INTEGRATION",
    "api": "API",
}


def _history_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return iso_ms(value)
    return "" if value is None else value


def _as_int(contact_id: str | int) -> int:
    try:
        return int(contact_id)
    except ValueError:
        return -1


def _merged_ids(value: Any) -> list[str]:
    return [part for part in str(value or "").split(";") if part]


def _not_valid(name: str, code: str, message: str) -> HubSpotApiError:
    """HubSpot's 400 for a property value it refuses: ``message`` and ``code`` in its JSON list."""
    return HubSpotApiError(
        400,
        "VALIDATION_ERROR",
        f'Property values were not valid: [{{"isValid":false,"message":"{message}","error":"{code}",'
        f'"name":"{name}"}}]',
    )


def _invalid(name: str, value: Any, code: str) -> HubSpotApiError:
    return _not_valid(name, code, f"{value!s:.80} was not a valid value for {name}")


def _tie_order(contact_id: int) -> str:
    # Ties on the sort property come in an order that is neither id nor insertion order.
    return hashlib.sha1(str(contact_id).encode()).hexdigest()


class HubSpotSandbox(HttpsSandbox):
    """The server. Run-time controls: :attr:`faults`, :attr:`portal`, :meth:`rotate_token`,
    :meth:`set_daily_usage`, :meth:`reset_counters`."""

    endpoint_kinds = ENDPOINT_KINDS
    server_name = "HubSpot-sandbox"
    credentials_class = HubSpotCredentials
    # The portal's limits (HubSpot's documented private-app values; constructor keywords too).
    daily_limit = 250_000
    #: Calls an app may make in a rolling window of ``burst_interval_ms`` (HubSpot's usage
    #: guidelines: 190 per ten seconds for a Professional or Enterprise account, 100 for Free and
    #: Starter).
    burst_limit = 190
    burst_interval_ms = 10_000
    #: A one-second window as HubSpot's older limits had (policy SECONDLY); None: none.
    secondly_limit: int | None = None
    search_per_second = 4
    search_result_cap = 10_000
    batch_limit = 100
    #: Inputs of a batch read carrying ``propertiesWithHistory`` (HubSpot: at most 50).
    history_batch_limit = HISTORY_BATCH_LIMIT
    status_batch_limit = 100
    #: GDPR features on: a subscription change must carry a legal basis and its explanation.
    gdpr = True

    def __init__(
        self, portal: HubSpotPortal | None = None, *, token_file: str | Path | None = None, **options: Any
    ) -> None:
        self.portal = portal or HubSpotPortal()
        super().__init__(normalize_id=_id_or_none, **options)
        self.token_file = Path(token_file) if token_file else None
        self._daily_used = 0
        # Calls refused by the limits themselves (not by fault switches), by policy.
        self.rejections: Counter[str] = Counter()
        self._window: deque[float] = deque()
        self._burst_window: deque[float] = deque()
        self._search_window: deque[float] = deque()
        # The opt-in fault of the v4 batch status reads (:meth:`fail_status_reads`): address ->
        # (reads left to fail, -1 for every one; left unanswered rather than named in an error;
        # the kinds of read it takes).
        self._status_faults: dict[str, tuple[int, bool, frozenset[str]]] = {}
        #: How a v4 status read spells each ``subscriberIdString`` it answers (HubSpot does not
        #: promise to echo the input as sent): the input itself unless a test says otherwise.
        self.echo_spelling: Callable[[str], str] = str
        if self.token_file:
            self.token_file.write_text(self.credentials.access_token + "\n")

    @property
    def api_url(self) -> str:
        return self.base_url

    def connection_settings(self) -> dict[str, Any]:
        # A sandbox served on its own (`consentsync sandbox hubspot`) keeps its token in no file.
        token = (
            {"access_token_file": str(self.token_file)}
            if self.token_file
            else {"access_token": self.credentials.access_token}
        )
        return {**super().connection_settings(), "api_url": self.api_url, **token}

    # -- credentials ---------------------------------------------------------------------------

    def rotate_token(self) -> str:
        """A new private-app token, as an admin rotating it in HubSpot; the old one stops working.
        With ``token_file``, the new token is written there (the secret store the connector
        reads)."""
        with self._lock:
            self.credentials.access_token = "pat-na1-" + str(uuid.uuid4())
            if self.token_file:
                self.token_file.write_text(self.credentials.access_token + "\n")
            return self.credentials.access_token

    def expire_sessions(self) -> None:
        self.rotate_token()

    def fail_status_reads(
        self,
        *emails: str,
        times: int = 1,
        unanswered: bool = False,
        reads: tuple[str, ...] = ("status_batch_read", "wide_status_batch_read"),
    ) -> None:
        """An opt-in fault: the next ``times`` v4 batch status reads (of the kinds ``reads``:
        subscription statuses, opt-outs of all email) naming one of ``emails`` answer 207
        "multiple statuses" (HubSpot's ``BatchResponsePublicStatusBulkResponseWithErrors``)
        without that address's result, with an error entry naming it (category INTERNAL_ERROR,
        ``context.ids``); ``unanswered``: the address is simply left out of ``results``, with no
        error. ``times`` -1: every read; 0: the fault is lifted."""
        with self._lock:
            for email in emails:
                self._status_faults[email.strip().lower()] = (times, unanswered, frozenset(reads))

    def _status_fault(self, email: str, kind: str) -> str | None:
        """Whether a fault of :meth:`fail_status_reads` takes this read (of kind ``kind``) of
        ``email`` (one of its reads used up): "error", "unanswered", or None."""
        with self._lock:
            key = email.strip().lower()
            left, unanswered, kinds = self._status_faults.get(key, (0, False, frozenset()))
            if left == 0 or kind not in kinds:
                return None
            if left > 0:
                self._status_faults[key] = (left - 1, unanswered, kinds)
            return "unanswered" if unanswered else "error"

    def authenticate(self, request: SandboxRequest) -> None:
        header = request.header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if not header:
            raise HubSpotApiError(
                401,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 authentication and "
                "you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            )
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), self.credentials.access_token.encode()
        ):
            raise HubSpotApiError(
                401,
                "INVALID_AUTHENTICATION",
                "The access token provided is invalid or has been revoked.",
            )

    def _require_scope(self, kind: str) -> None:
        needed = _SCOPE_OF_KIND.get(kind)
        if needed and needed not in self.credentials.scopes:
            raise HubSpotApiError(
                403,
                "MISSING_SCOPES",
                "This app hasn't been granted all required scopes to make this call. Read more about "
                "required scopes here: https://developers.hubspot.com/scopes.",
                errors=[
                    {
                        "message": "One or more of the following scopes are required.",
                        "context": {"requiredGranularScopes": [needed]},
                    }
                ],
            )

    # -- limits --------------------------------------------------------------------------------

    def set_daily_usage(self, used: int, limit: int | None = None) -> None:
        with self._lock:
            self._daily_used = used
            if limit is not None:
                self.daily_limit = limit

    def daily_usage(self) -> tuple[int | None, int | None]:
        with self._lock:
            return self._daily_used, self.daily_limit

    def request_limit_error(self) -> Exception:
        return _rate_limit("DAILY", "You have reached your daily limit.")

    def throttle_error(self, retry_after: float) -> Exception:
        return _rate_limit("SECONDLY", "You have reached your secondly limit.")

    def note_api_call(self, request: SandboxRequest) -> None:
        now = time.monotonic()
        with self._lock:
            if self._daily_used >= self.daily_limit:
                self.rejections["DAILY"] += 1
                raise self.request_limit_error()
            interval = self.burst_interval_ms / 1000
            while self._burst_window and now - self._burst_window[0] >= interval:
                self._burst_window.popleft()
            if len(self._burst_window) >= self.burst_limit:
                self.rejections["TEN_SECONDLY_ROLLING"] += 1
                raise _rate_limit("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.")
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if self.secondly_limit is not None and len(self._window) >= self.secondly_limit:
                self.rejections["SECONDLY"] += 1
                raise _rate_limit("SECONDLY", "You have reached your secondly limit.")
            if request.path.endswith("/search"):
                while self._search_window and now - self._search_window[0] >= 1.0:
                    self._search_window.popleft()
                if len(self._search_window) >= self.search_per_second:
                    self.rejections["SEARCH_SECONDLY"] += 1
                    raise _rate_limit("SECONDLY", "You have reached your secondly limit.")
                self._search_window.append(now)
            self._window.append(now)
            self._burst_window.append(now)
            self._daily_used += 1

    def server_error(self, status: int) -> SandboxResponse:
        return json_response(
            status,
            {
                "status": "error",
                "message": "internal error",
                "correlationId": str(uuid.uuid4()),
                "category": "INTERNAL_ERROR" if status == 500 else "SERVICE_UNAVAILABLE",
            },
        )

    def error_response(self, error: Exception) -> SandboxResponse:
        if isinstance(error, RequestBodyError):
            error = HubSpotApiError(400, "VALIDATION_ERROR", f"Invalid input JSON: {error}")
        if isinstance(error, HubSpotApiError):
            return json_response(error.status, error.body())
        return super().error_response(error)

    def finish(self, response: SandboxResponse, request: SandboxRequest) -> SandboxResponse:
        if request.path.endswith("/search"):
            return response  # HubSpot sends no rate-limit headers with search responses
        now = time.monotonic()
        interval = self.burst_interval_ms / 1000
        with self._lock:
            recent = sum(1 for t in self._window if now - t < 1.0)
            in_window = sum(1 for t in self._burst_window if now - t < interval)
            used, limit = self._daily_used, self.daily_limit
        response.headers.update(
            {
                "X-HubSpot-RateLimit-Daily": str(limit),
                "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, limit - used)),
                "X-HubSpot-RateLimit-Max": str(self.burst_limit),
                "X-HubSpot-RateLimit-Remaining": str(max(0, self.burst_limit - in_window)),
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(self.burst_interval_ms),
            }
        )
        if self.secondly_limit is not None:
            response.headers.update(
                {
                    "X-HubSpot-RateLimit-Secondly": str(self.secondly_limit),
                    "X-HubSpot-RateLimit-Secondly-Remaining": str(max(0, self.secondly_limit - recent)),
                }
            )
        return response

    # -- routing -------------------------------------------------------------------------------

    def route(self, request: SandboxRequest) -> Route:
        path, method = request.path.rstrip("/"), request.method
        table: dict[tuple[str, str], tuple[str, Callable[[SandboxRequest], SandboxResponse]]] = {
            ("POST", "/crm/v3/objects/contacts/search"): ("search", self._h_search),
            ("GET", "/crm/v3/objects/contacts"): ("list", self._h_list),
            ("POST", "/crm/v3/objects/contacts/batch/read"): ("batch_read", self._h_batch_read),
            ("POST", "/crm/v3/objects/contacts/batch/update"): ("batch_update", self._h_batch_update),
            ("POST", "/crm/v3/objects/contacts/batch/archive"): ("batch_archive", self._h_batch_archive),
            ("POST", "/crm/v3/objects/contacts/gdpr-delete"): ("gdpr_delete", self._h_gdpr_delete),
            ("POST", "/crm/v3/objects/contacts/merge"): ("merge", self._h_merge),
            ("GET", "/crm/v3/properties/contacts"): ("properties", self._h_properties),
            ("GET", "/communication-preferences/v3/definitions"): ("definitions", self._h_definitions),
            ("POST", "/communication-preferences/v3/subscribe"): ("subscribe", self._h_subscribe),
            ("POST", "/communication-preferences/v3/unsubscribe"): ("unsubscribe", self._h_unsubscribe),
            ("POST", "/communication-preferences/v4/statuses/batch/read"): (
                "status_batch_read",
                self._h_status_batch_read,
            ),
            ("POST", "/communication-preferences/v4/statuses/batch/unsubscribe-all/read"): (
                "wide_status_batch_read",
                self._h_wide_status_batch_read,
            ),
        }
        found = table.get((method, path))
        if found is None and method == "GET" and path.startswith("/communication-preferences/v4/statuses/"):
            if path.endswith("/unsubscribe-all"):
                found = ("wide_status_read", self._h_wide_status_read)
            else:
                found = ("status_read", self._h_status_read)
        if found is None and method == "GET" and path.startswith("/crm/v3/objects/contacts/"):
            found = ("get", self._h_get)
        if found is None:
            return Route("not_found", lambda: self._not_found(request), authenticated=False)
        kind, handler = found

        def answer() -> SandboxResponse:
            self._require_scope(kind)
            return handler(request)

        return Route(kind, answer)

    def _not_found(self, request: SandboxRequest) -> SandboxResponse:
        raise HubSpotApiError(404, "OBJECT_NOT_FOUND", f"No route for {request.method} {request.path}")

    # -- CRM objects ---------------------------------------------------------------------------

    def _h_search(self, request: SandboxRequest) -> SandboxResponse:
        body = request.json_object()
        groups = body.get("filterGroups") or []
        sorts = body.get("sorts") or []
        limit = body.get("limit", 10)
        after = body.get("after") or "0"
        if not isinstance(groups, list) or len(groups) > MAX_FILTER_GROUPS:
            raise HubSpotApiError(
                400, "VALIDATION_ERROR", f"At most {MAX_FILTER_GROUPS} filterGroups are allowed"
            )
        total_filters = 0
        for group in groups:
            filters = group.get("filters") if isinstance(group, dict) else None
            if not isinstance(filters, list) or len(filters) > MAX_FILTERS_PER_GROUP:
                raise HubSpotApiError(
                    400,
                    "VALIDATION_ERROR",
                    f"Each filterGroup holds a list of at most {MAX_FILTERS_PER_GROUP} filters",
                )
            total_filters += len(filters)
        if total_filters > MAX_FILTERS:
            raise HubSpotApiError(
                400, "VALIDATION_ERROR", f"At most {MAX_FILTERS} filters are allowed in all"
            )
        if not isinstance(sorts, list) or len(sorts) > 1:
            raise HubSpotApiError(400, "VALIDATION_ERROR", "Only one sort is supported")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_SEARCH_LIMIT:
            raise HubSpotApiError(
                400, "VALIDATION_ERROR", f"limit must be between 1 and {MAX_SEARCH_LIMIT}, was {limit!r}"
            )
        try:
            offset = int(str(after))
        except ValueError:
            raise HubSpotApiError(
                400, "VALIDATION_ERROR", f"after must be a paging cursor, was {after!r}"
            ) from None
        if offset >= self.search_result_cap:
            raise HubSpotApiError(
                400,
                "VALIDATION_ERROR",
                f"The search API only returns the first {self.search_result_cap} results: "
                "narrow the search with filters to read further",
            )
        wanted = body.get("properties") or [
            "createdate",
            "email",
            "firstname",
            "hs_object_id",
            "lastmodifieddate",
            "lastname",
        ]
        with self.portal.lock:
            # The search index lags writes: a contact not indexed yet is not found.
            contacts = [
                (int(cid), rec)
                for cid, rec in self.portal._contacts.items()
                if int(cid) not in self.portal._unindexed
            ]
        matched = [(cid, rec) for cid, rec in contacts if self._matches(rec, groups)]
        prop, descending = self._sort_spec(sorts)

        def key(item: tuple[int, dict[str, Any]]) -> tuple[Any, ...]:
            value = item[1].get(prop) if prop != "hs_object_id" else item[0]
            present = value is not None
            return (present, self._sort_value(prop, value) if present else 0, _tie_order(item[0]))

        matched.sort(key=key, reverse=descending)
        end = min(offset + limit, self.search_result_cap)
        page = matched[offset:end]
        out: dict[str, Any] = {
            "total": len(matched),
            "results": [self._object(c, r, wanted) for c, r in page],
        }
        if end < len(matched):
            out["paging"] = {"next": {"after": str(end), "link": f"?after={end}"}}
        return json_response(200, out)

    def _sort_spec(self, sorts: list[Any]) -> tuple[str, bool]:
        if not sorts:
            return "hs_object_id", False
        item = sorts[0]
        if isinstance(item, str):
            return item.lstrip("-"), item.startswith("-")
        if not isinstance(item, dict) or not isinstance(item.get("propertyName"), str):
            raise HubSpotApiError(400, "VALIDATION_ERROR", "A sort needs a propertyName")
        direction = str(item.get("direction", "ASCENDING")).upper()
        if direction not in ("ASCENDING", "DESCENDING"):
            raise HubSpotApiError(400, "VALIDATION_ERROR", f"Unknown sort direction {direction}")
        name = item["propertyName"]
        if name not in self.portal.properties:
            raise HubSpotApiError(400, "VALIDATION_ERROR", f"Cannot sort by unknown property {name}")
        return name, direction == "DESCENDING"

    def _sort_value(self, prop: str, value: Any) -> Any:
        definition = self.portal.properties[prop]
        if definition.type == "number":
            return float(value)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        return str(value).lower()

    def _matches(self, record: dict[str, Any], groups: list[dict[str, Any]]) -> bool:
        if not groups:
            return True
        return any(all(self._filter(record, f) for f in group["filters"]) for group in groups)

    def _filter(self, record: dict[str, Any], spec: Any) -> bool:
        if not isinstance(spec, dict):
            raise HubSpotApiError(400, "VALIDATION_ERROR", "A filter must be an object")
        name, operator = spec.get("propertyName"), str(spec.get("operator", "EQ")).upper()
        if operator not in _OPERATORS:
            raise HubSpotApiError(400, "VALIDATION_ERROR", f"Unknown operator {operator}")
        prop = self.portal.properties.get(name) if isinstance(name, str) else None
        if prop is None:
            raise HubSpotApiError(
                400, "VALIDATION_ERROR", f"There was a problem with the request: unknown property {name!r}"
            )
        held = record.get(name)
        if operator == "HAS_PROPERTY":
            return held is not None
        if operator == "NOT_HAS_PROPERTY":
            return held is None
        if operator in ("IN", "NOT_IN"):
            values = spec.get("values")
            if not isinstance(values, list):
                raise HubSpotApiError(400, "VALIDATION_ERROR", f"{operator} needs a list of values")
            inside = held is not None and any(self._compare(prop, held, v) == 0 for v in values)
            return inside if operator == "IN" else not inside
        if operator in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
            token = str(spec.get("value", "")).lower().strip("*")
            found = held is not None and token in str(held).lower()
            return found if operator == "CONTAINS_TOKEN" else not found
        if "value" not in spec:
            raise HubSpotApiError(400, "VALIDATION_ERROR", f"{operator} on {name} needs a value")
        if held is None:
            return operator == "NEQ"
        order = self._compare(prop, held, spec["value"])
        if operator == "BETWEEN":
            if "highValue" not in spec:
                raise HubSpotApiError(400, "VALIDATION_ERROR", "BETWEEN needs a highValue")
            return order >= 0 and self._compare(prop, held, spec["highValue"]) <= 0
        return {
            "EQ": order == 0,
            "NEQ": order != 0,
            "LT": order < 0,
            "LTE": order <= 0,
            "GT": order > 0,
            "GTE": order >= 0,
        }[operator]

    @staticmethod
    def _compare(prop: PropertyDef, held: Any, given: Any) -> int:
        if prop.type == "datetime":
            wanted = parse_moment(given)
            if wanted is None:
                raise HubSpotApiError(
                    400, "VALIDATION_ERROR", f"{given!r} is not a valid value for {prop.name}"
                )
            left = held if isinstance(held, dt.datetime) else parse_moment(held)
            assert left is not None
            return (left > wanted) - (left < wanted)
        if prop.type == "number":
            try:
                a, b = float(held), float(str(given))
            except ValueError:
                raise HubSpotApiError(
                    400, "VALIDATION_ERROR", f"{given!r} is not a valid value for {prop.name}"
                ) from None
            return (a > b) - (a < b)
        a_text, b_text = str(held).lower(), str(given).lower()
        return (a_text > b_text) - (a_text < b_text)

    def _object(self, contact_id: int, record: dict[str, Any], wanted: Iterable[str]) -> dict[str, Any]:
        names = dict.fromkeys(["hs_object_id", "createdate", "lastmodifieddate", *wanted])
        properties = {}
        for name in names:
            if name not in self.portal.properties:
                continue  # HubSpot leaves out properties that do not exist
            value = record.get(name)
            properties[name] = iso_ms(value) if isinstance(value, dt.datetime) else value
        out: dict[str, Any] = {
            "id": str(contact_id),
            "properties": properties,
            "createdAt": iso_ms(record["createdate"]),
            "updatedAt": iso_ms(record["lastmodifieddate"]),
            "archived": "archivedAt" in record,
        }
        if "archivedAt" in record:
            out["archivedAt"] = iso_ms(record["archivedAt"])
        return out

    def _h_list(self, request: SandboxRequest) -> SandboxResponse:
        try:
            limit = int(request.param("limit") or 10)
            offset = int(request.param("after") or 0)
        except ValueError:
            raise HubSpotApiError(400, "VALIDATION_ERROR", "limit and after must be numbers") from None
        if not 1 <= limit <= 100:
            raise HubSpotApiError(400, "VALIDATION_ERROR", "limit must be between 1 and 100")
        wanted = (request.param("properties") or "").split(",") if request.param("properties") else []
        archived = (request.param("archived") or "false").lower() == "true"
        with self.portal.lock:
            contacts = self.portal.archived() if archived else sorted(self.portal._contacts.items())
        page = contacts[offset : offset + limit]
        out: dict[str, Any] = {"results": [self._object(c, r, wanted) for c, r in page]}
        if offset + limit < len(contacts):
            out["paging"] = {"next": {"after": str(offset + limit)}}
        return json_response(200, out)

    def _h_get(self, request: SandboxRequest) -> SandboxResponse:
        """One contact by id; a merged-away id answers the contact it was merged into."""
        asked = unquote(request.path.rstrip("/").rsplit("/", 1)[-1])
        found = self.portal.canonical(asked)
        record = self.portal.get(found) if found else None
        if found is None or record is None:
            raise HubSpotApiError(404, "OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric.")
        wanted = (request.param("properties") or "").split(",") if request.param("properties") else []
        return json_response(200, self._object(int(found), record, wanted))

    def _h_batch_archive(self, request: SandboxRequest) -> SandboxResponse:
        """Archive up to ``batch_limit`` contacts: 204 No Content, ids unknown or already
        archived included (the answer says nothing per record)."""
        inputs = self._inputs(request.json(), self.batch_limit)
        ids = []
        for item in inputs:
            if not isinstance(item, dict) or not str(item.get("id") or "").strip():
                raise HubSpotApiError(400, "VALIDATION_ERROR", "each input needs an id")
            ids.append(str(item["id"]).strip())
        for contact_id in ids:
            self.portal.archive(contact_id)
        return SandboxResponse(204, b"", None)

    def _h_gdpr_delete(self, request: SandboxRequest) -> SandboxResponse:
        """Permanently delete one contact (by id, or by ``"idProperty": "email"``): 204 No
        Content; an id no contact has answers 404 OBJECT_NOT_FOUND (the sandbox's choice)."""
        body = request.json()
        object_id = str(body.get("objectId") or "").strip() if isinstance(body, dict) else ""
        if not object_id:
            raise HubSpotApiError(400, "VALIDATION_ERROR", "objectId must not be empty")
        id_property = body.get("idProperty")
        if id_property in (None, "", "hs_object_id"):
            if not self.portal.gdpr_delete(object_id):
                raise HubSpotApiError(404, "OBJECT_NOT_FOUND", "Object not found.")
        elif id_property == "email":
            self.portal.gdpr_delete_email(object_id)
        else:
            raise HubSpotApiError(400, "VALIDATION_ERROR", f"{id_property} is not a unique contact property")
        return SandboxResponse(204, b"", None)

    def _h_merge(self, request: SandboxRequest) -> SandboxResponse:
        body = request.json()
        if not isinstance(body, dict) or not body.get("primaryObjectId") or not body.get("objectIdToMerge"):
            raise HubSpotApiError(400, "VALIDATION_ERROR", "primaryObjectId and objectIdToMerge are required")
        primary = str(body["primaryObjectId"])
        record = self.portal.merge(primary, str(body["objectIdToMerge"]))
        return json_response(200, self._object(int(record["hs_object_id"]), record, ["hs_merged_object_ids"]))

    def _inputs(self, body: Any, limit: int) -> list[Any]:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            raise HubSpotApiError(400, "VALIDATION_ERROR", "inputs must be a non-empty list")
        if len(inputs) > limit:
            raise HubSpotApiError(
                400, "VALIDATION_ERROR", f"Batch input is limited to {limit} inputs, {len(inputs)} were sent"
            )
        return inputs

    def _h_batch_read(self, request: SandboxRequest) -> SandboxResponse:
        """Contacts by id; with ``archived=true`` archived ones only, with the properties they
        held when archived (HubSpot keeps them: an archived contact can be restored). A
        merged-away id answers the contact it was merged into, with that contact's id (HubSpot's
        changelog: "fetching any records using the original IDs will return the new merged
        record with the new ID"), once however many of its ids are asked. ``propertiesWithHistory``:
        each named property's values, newest first (``value``, ``timestamp``, ``sourceType``),
        under ``propertiesWithHistory``; the sandbox keeps the history of ``email`` and answers
        any other property with its current value alone, stamped at the contact's last change."""
        body = request.json()
        inputs = self._inputs(body, self.batch_limit)
        wanted = body.get("properties") or []
        with_history = body.get("propertiesWithHistory") or []
        if not isinstance(with_history, list):
            raise HubSpotApiError(400, "VALIDATION_ERROR", "propertiesWithHistory must be a list")
        if with_history and len(inputs) > self.history_batch_limit:
            # HubSpot's answer, word for word (quoted in integrators' fixes of it).
            raise HubSpotApiError(400, "VALIDATION_ERROR", HISTORY_LIMIT_MESSAGE)
        archived = (request.param("archived") or "false").lower() == "true"
        results, missing, answered = [], [], set()
        started = iso_ms(self.portal.now())
        for item in inputs:
            contact_id = str(item.get("id")) if isinstance(item, dict) else None
            if contact_id and archived:
                found, record = contact_id, self.portal.archived_one(contact_id)
            else:
                found = self.portal.canonical(contact_id) if contact_id else None
                record = self.portal.get(found) if found else None
            if record is None or found is None:
                missing.append(str(contact_id))
                continue
            if found in answered:
                continue
            answered.add(found)
            answer = self._object(int(found), record, wanted)
            if with_history:
                answer["propertiesWithHistory"] = self._histories(found, record, with_history)
            results.append(answer)
        return self._batch_answer(results, missing, [], started)

    def _histories(self, contact_id: str, record: dict[str, Any], names: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in map(str, names):
            if name not in self.portal.properties:
                continue  # HubSpot leaves out properties that do not exist
            if name == "email":
                versions = self.portal.email_history(contact_id)
            elif name == "hs_additional_emails" and self.portal.additional_history(contact_id):
                versions = self.portal.additional_history(contact_id)
            else:
                value = record.get(name)
                versions = [(value, record["lastmodifieddate"], "CRM_UI")] if value is not None else []
            out[name] = [
                {
                    "value": _history_value(value),
                    "timestamp": iso_ms(when),
                    "sourceType": source,
                }
                for value, when, source in reversed(versions)
            ]
        return out

    def _h_batch_update(self, request: SandboxRequest) -> SandboxResponse:
        inputs = self._inputs(request.json(), self.batch_limit)
        started = iso_ms(self.portal.now())
        plan: list[tuple[str, dict[str, Any]]] = []
        for item in inputs:
            if not isinstance(item, dict) or not isinstance(item.get("properties"), dict):
                raise HubSpotApiError(400, "VALIDATION_ERROR", "each input needs an id and properties")
            plan.append((str(item.get("id")), item["properties"]))
        # An invalid value anywhere fails the whole batch before anything is written.
        for _contact_id, properties in plan:
            self.portal._checked(properties, user=False)
        results, missing, conflicts = [], [], []
        for contact_id, properties in plan:
            if self.portal.get(contact_id) is None:
                missing.append(contact_id)
                continue
            if self.faults.consume_failure(contact_id):
                conflicts.append(contact_id)
                continue
            record = self.portal.api_update(contact_id, properties)
            results.append(self._object(int(contact_id), record, properties))
        return self._batch_answer(results, missing, conflicts, started)

    def _batch_answer(
        self, results: list[dict[str, Any]], missing: list[str], conflicts: list[str], started: str
    ) -> SandboxResponse:
        errors = []
        if missing:
            errors.append(
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": "Could not get some CONTACT objects, they may be deleted or not exist. "
                    "Check that ids are valid.",
                    "context": {"ids": missing},
                }
            )
        for contact_id in conflicts:
            errors.append(
                {
                    "status": "error",
                    "category": "CONFLICT",
                    "message": f"Contact {contact_id} is being modified by another process; try again later",
                    "context": {"ids": [contact_id]},
                }
            )
        out: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": iso_ms(self.portal.now()),
        }
        if errors:
            out["errors"] = errors
            out["numErrors"] = len(errors)
        return json_response(207 if errors else 200, out)

    def _h_properties(self, _request: SandboxRequest) -> SandboxResponse:
        return json_response(200, {"results": [p.describe() for p in self.portal.properties.values()]})

    # -- communication preferences -------------------------------------------------------------

    def _h_definitions(self, _request: SandboxRequest) -> SandboxResponse:
        created = "2019-08-05T13:01:15.875Z"
        return json_response(
            200,
            {
                "subscriptionDefinitions": [
                    {
                        "id": sid,
                        "name": name,
                        "description": f"{name} emails",
                        "purpose": purpose,
                        "communicationMethod": "Email",
                        "isActive": True,
                        "isDefault": True,
                        "isInternal": False,
                        "createdAt": created,
                        "updatedAt": created,
                        "businessUnitId": self.portal.business_units[sid],
                    }
                    for sid, (name, purpose) in self.portal.definitions.items()
                ]
            },
        )

    def _subscription_request(self, request: SandboxRequest) -> tuple[str, str, str | None, str | None]:
        body = request.json_object()
        missing = [k for k in ("emailAddress", "subscriptionId") if not body.get(k)]
        if missing:
            raise HubSpotApiError(
                400,
                "VALIDATION_ERROR",
                "Invalid input JSON on line 1, column 2: Cannot build PublicUpdateSubscriptionStatusRequest, "
                f"some of required attributes are not set [{', '.join(missing)}]",
            )
        email, sid = str(body["emailAddress"]), str(body["subscriptionId"])
        contact_id = self.portal.find_by_email(email)
        if contact_id is not None and self.faults.consume_failure(contact_id):
            raise HubSpotApiError(
                409, "CONFLICT", f"The subscription status of {email} is being changed by another process"
            )
        if sid not in self.portal.definitions:
            raise HubSpotApiError(400, "VALIDATION_ERROR", f"Subscription {sid} does not exist")
        basis, explanation = body.get("legalBasis"), body.get("legalBasisExplanation")
        if basis is not None and basis not in V3_LEGAL_BASES:
            raise HubSpotApiError(
                400,
                "VALIDATION_ERROR",
                f"legalBasis must be one of {', '.join(V3_LEGAL_BASES)}, was {basis!r}",
            )
        return email, sid, basis, explanation

    def _status_body(self, email: str, sid: str) -> dict[str, Any]:
        name, _purpose = self.portal.definitions[sid]
        held = self.portal.status(email, sid)
        out: dict[str, Any] = {
            "id": sid,
            "name": name,
            "description": f"{name} emails",
            "status": "SUBSCRIBED" if held and held.status == "SUBSCRIBED" else "NOT_SUBSCRIBED",
            "sourceOfStatus": "SUBSCRIPTION_STATUS",
        }
        if held and held.legal_basis:
            out["legalBasis"] = held.legal_basis
            out["legalBasisExplanation"] = held.explanation or ""
        return out

    def _h_subscribe(self, request: SandboxRequest) -> SandboxResponse:
        email, sid, basis, explanation = self._subscription_request(request)
        if self.gdpr and (not basis or not explanation):
            raise HubSpotApiError(
                400,
                "VALIDATION_ERROR",
                "legalBasis and legalBasisExplanation are required for portals with GDPR features enabled",
            )
        held = self.portal.status(email, sid)
        unit = self.portal.business_units[sid]
        if self.portal.opted_out_of_all(email) is not None or (
            self.portal.opted_out_of_unit(email, unit) is not None
        ):
            raise HubSpotApiError(
                400,
                "VALIDATION_ERROR",
                f"{email} has unsubscribed from all email and cannot be resubscribed through this API; "
                "the contact must resubscribe through a HubSpot form or the preferences page",
            )
        if held is not None and held.status == "UNSUBSCRIBED":
            raise HubSpotApiError(
                400,
                "VALIDATION_ERROR",
                f"{email} has unsubscribed from subscription {sid} and cannot be resubscribed through this "
                "API; the contact must resubscribe through a HubSpot form or the preferences page",
            )
        if held is not None and held.status == "SUBSCRIBED":
            # HubSpot's answer as integrators quote it (a 400, not the status unchanged).
            raise HubSpotApiError(
                400, "VALIDATION_ERROR", f"{email} is already subscribed to subscription {sid}"
            )
        self.portal.set_status(
            email, sid, "SUBSCRIBED", legal_basis=basis, explanation=explanation, source="API"
        )
        return json_response(200, self._status_body(email, sid))

    def _h_unsubscribe(self, request: SandboxRequest) -> SandboxResponse:
        email, sid, basis, explanation = self._subscription_request(request)
        if self.gdpr and (not basis or not explanation):
            # HubSpot's v3 spec: PublicUpdateSubscriptionStatusRequest, the body of subscribe and
            # unsubscribe alike, needs both "for GDPR enabled portals".
            raise HubSpotApiError(
                400,
                "VALIDATION_ERROR",
                "legalBasis and legalBasisExplanation are required for portals with GDPR features enabled",
            )
        held = self.portal.status(email, sid)
        if held is not None and held.status == "UNSUBSCRIBED":
            raise HubSpotApiError(
                400, "VALIDATION_ERROR", f"{email} is already unsubscribed from subscription {sid}"
            )
        # Without a legal basis in the request, the one held stays.
        self.portal.set_status(
            email,
            sid,
            "UNSUBSCRIBED",
            legal_basis=basis or (held.legal_basis if held else None),
            explanation=explanation or (held.explanation if held else None),
            source="API",
        )
        return json_response(200, self._status_body(email, sid))

    def _v4_statuses(self, email: str) -> list[dict[str, Any]]:
        """The address's statuses of every subscription type, each naming its business unit."""
        held = self.portal.statuses(email)
        out = []
        for sid, (name, _purpose) in self.portal.definitions.items():
            status = held.get(sid)
            item: dict[str, Any] = {
                "channel": "EMAIL",
                "subscriberIdString": email,
                "subscriptionId": int(sid),
                "subscriptionName": name,
                "status": status.status if status else "NOT_SPECIFIED",
                "source": status.source if status else "",
                "timestamp": iso_ms(status.timestamp) if status else None,
                "businessUnitId": self.portal.business_units[sid],
            }
            if status and status.legal_basis:
                item["legalBasis"] = status.legal_basis
                item["legalBasisExplanation"] = status.explanation or ""
            out.append(item)
        return out

    def _unit_statuses(self, email: str, unit: int) -> list[dict[str, Any]]:
        """The address's statuses of the subscription types of business unit ``unit``."""
        return [status for status in self._v4_statuses(email) if status.get("businessUnitId") == unit]

    def _channel(self, request: SandboxRequest) -> None:
        if (request.param("channel") or "").upper() != "EMAIL":
            raise HubSpotApiError(
                400, "VALIDATION_ERROR", "The query parameter channel is required and must be EMAIL"
            )

    @staticmethod
    def _business_unit(request: SandboxRequest) -> int:
        """The ``businessUnitId`` query parameter of a v4 status read (HubSpot: "include this
        parameter to filter results by business unit ID. The default Account business unit
        will always use 0"); without it, the default unit (the sandbox's choice: HubSpot does
        not say which units' statuses come without it)."""
        given = (request.param("businessUnitId") or "").strip()
        if not given:
            return DEFAULT_UNIT
        if not given.isdigit():
            raise HubSpotApiError(400, "VALIDATION_ERROR", f"businessUnitId must be a number, was {given!r}")
        return int(given)

    def _h_status_read(self, request: SandboxRequest) -> SandboxResponse:
        self._channel(request)
        email = unquote(request.path.rstrip("/").rsplit("/", 1)[-1])
        started = iso_ms(self.portal.now())
        return json_response(
            200,
            {
                "status": "COMPLETE",
                "results": [
                    {**status, "subscriberIdString": self.echo_spelling(email)}
                    for status in self._unit_statuses(email, self._business_unit(request))
                ],
                "startedAt": started,
                "completedAt": started,
            },
        )

    def _h_status_batch_read(self, request: SandboxRequest) -> SandboxResponse:
        self._channel(request)
        inputs = self._inputs(request.json(), self.status_batch_limit)
        unit = self._business_unit(request)
        started = iso_ms(self.portal.now())
        results, failed = [], []
        for email in map(str, inputs):
            fault = self._status_fault(email, "status_batch_read")
            if fault is not None:
                if fault == "error":
                    failed.append(email)
                continue
            statuses = [
                {**status, "subscriberIdString": self.echo_spelling(email)}
                for status in self._unit_statuses(email, unit)
            ]
            results.append({"subscriberIdString": self.echo_spelling(email), "statuses": statuses})
        return self._status_answer(results, failed, started)

    def _status_answer(
        self, results: list[dict[str, Any]], failed: list[str], started: str
    ) -> SandboxResponse:
        """A v4 batch status read's answer: 200, or 207 with an error entry per address of
        ``failed`` (the ``...WithErrors`` answer of HubSpot's spec)."""
        out: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": iso_ms(self.portal.now()),
        }
        if failed:
            out["errors"] = [
                {
                    "status": "error",
                    "category": "INTERNAL_ERROR",
                    "message": f"Could not read the subscription statuses of {email}",
                    "context": {"ids": [email]},
                }
                for email in failed
            ]
            out["numErrors"] = len(failed)
        return json_response(207 if failed else 200, out)

    def _wide_statuses(self, email: str, unit: int) -> list[dict[str, Any]]:
        """The address's opt-outs of all email of business unit ``unit`` ("wide" statuses): the
        unit's ``BUSINESS_UNIT_WIDE`` one and, for the default unit, the ``PORTAL_WIDE`` one."""
        opt_outs = [("BUSINESS_UNIT_WIDE", self.portal.opted_out_of_unit(email, unit))]
        if unit == DEFAULT_UNIT:
            opt_outs.insert(0, ("PORTAL_WIDE", self.portal.opted_out_of_all(email)))
        return [
            {
                "channel": "EMAIL",
                "status": "UNSUBSCRIBED",
                "subscriberIdString": self.echo_spelling(email),
                "timestamp": iso_ms(since),
                "wideStatusType": kind,
                "businessUnitId": unit,
            }
            for kind, since in opt_outs
            if since is not None
        ]

    def _h_wide_status_batch_read(self, request: SandboxRequest) -> SandboxResponse:
        self._channel(request)
        inputs = self._inputs(request.json(), self.status_batch_limit)
        unit = self._business_unit(request)
        started = iso_ms(self.portal.now())
        results, failed = [], []
        for email in map(str, inputs):
            fault = self._status_fault(email, "wide_status_batch_read")
            if fault is not None:
                if fault == "error":
                    failed.append(email)
                continue
            wide = self._wide_statuses(email, unit)
            if wide:
                results.append({"subscriberIdString": self.echo_spelling(email), "wideStatuses": wide})
        return self._status_answer(results, failed, started)

    def _h_wide_status_read(self, request: SandboxRequest) -> SandboxResponse:
        """``GET .../v4/statuses/{email}/unsubscribe-all``: the address's opt-outs of all email
        (HubSpot: "If a contact has not opted out of all communications, the response
        ``results`` array will be empty")."""
        self._channel(request)
        email = unquote(request.path.rstrip("/").rsplit("/", 2)[-2])
        started = iso_ms(self.portal.now())
        return json_response(
            200,
            {
                "status": "COMPLETE",
                "results": self._wide_statuses(email, self._business_unit(request)),
                "startedAt": started,
                "completedAt": started,
            },
        )


def _rate_limit(policy: str, message: str) -> HubSpotApiError:
    error = HubSpotApiError(429, "", message, errorType="RATE_LIMIT", policyName=policy)
    error.extra["requestId"] = str(uuid.uuid4())
    return error


def _id_or_none(record_id: str) -> str | None:
    text = str(record_id).strip()
    return text if text.isdigit() else None


@sandbox_main(
    "hubspot",
    seed_help="Seed the portal with this many generated contacts (with subscription statuses).",
)
def serve_forever(*, port: int = 8445, records: int = 500, seed: int, host: str) -> Serving:
    """Run a HubSpot sandbox (HTTPS, self-signed CA) until interrupted.

    Prints its URL, CA files and private-app token."""
    sandbox, _summary = seeded(HubSpotSandbox, HubSpotPortal(), records, seed, host=host, port=port)
    portal = sandbox.portal
    who = {
        "access token": f"{sandbox.credentials.access_token}   (private app; all scopes)",
        "subscriptions": ", ".join(f"{k} {v[0]}" for k, v in portal.definitions.items()),
        "seeded": f"{portal.count()} contacts (--random-seed {seed})",
    }
    return Serving(sandbox, running_lines("HubSpot", sandbox, {"API URL": sandbox.api_url}, who))


#: ``consentsync sandbox hubspot`` (entry-point group ``consentsync.sandboxes``).
command = serve_forever.command
