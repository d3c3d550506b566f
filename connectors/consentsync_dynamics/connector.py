"""Dynamics 365 / Dataverse, through the Web API (OData v4) with requests.

Authenticates with OAuth 2.0 client credentials against a configurable token URL (an app
registration with a Dataverse application user). Reads with change tracking: a read without a
delta link (the first) takes one (``Prefer: odata.track-changes``, ids only), reads the rows by a
(modifiedon, id) keyset ``$filter`` up to the run's signpost, and hands the link over as the
cursor's token; later reads GET that link and receive only what changed, deleted rows
(``$deletedEntity``) among them, yielded as ``CrmRecord(deleted=True)``. A contact merged away
(the Merge action deactivates it, sets ``merged`` and ``masterid``) is yielded as
``CrmRecord(deleted=True, merged_into=masterid)``. A refused delta link (expired or invalid)
triggers one full reload. A full read (the first, or a reload) that outlasts a run keeps its
position with the link it took first, and the next run goes on from there. Tables without change
tracking, or ``change_tracking: false``, are always read by the keyset ``$filter``. Writes go as
``$batch`` requests (``batch_size``, 10 by default; a batch that times out is sent again in
halves) of ``PATCH`` with ``If-Match``: the ETag the row was read with (a row changed since is
not overwritten: 412), else ``*`` (a PATCH alone would create a missing row), or ``DELETE`` for
the delete action, and ``Prefer: odata.continue-on-error``, one result per request, handed over
batch by batch.
429 answers are waited out per ``Retry-After`` (tenacity, the sdk policy).

The object ``consentsync_journeys_contact`` (:mod:`consentsync_dynamics.journeys`) is the contact
table read again as Customer Insights - Journeys' consent center sees it: whether each address
the contact holds in Journeys' recipient fields (``journeys_email_fields``) has a consent row per
purpose. Pushed for a person's no, the connector creates the missing rows (Opted out); read
back, a row it created and nobody changed is left out of the consent-row read.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import requests
import structlog

from consentsync import sdk
from consentsync.sdk import Action, ConnectorError, ErrorRule, Fault
from consentsync_dynamics import journeys
from consentsync_dynamics.batch import PartRequest, PartResponse, decode, encode
from consentsync_dynamics.journeys import CONSENT_TABLE, JOURNEYS_CONTACT
from consentsync_dynamics.settings import DynamicsSettings

log = structlog.get_logger("consentsync.dynamics")

ERRORS = sdk.ErrorTable(
    [
        # Service protection: requests, execution time, concurrent requests (5-minute window).
        ErrorRule(
            Action.RATE_LIMITED, Fault.LIMIT, "service protection: too many requests", code="0x80072322"
        ),
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "service protection: execution time", code="0x80072321"),
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "service protection: concurrency", code="0x80072326"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "query or property rejected", 400, "0x80060888"),
        ErrorRule(
            Action.FAIL, Fault.CONFIG, "missing privilege (check the security role)", code="0x80040220"
        ),
        ErrorRule(Action.FAIL, Fault.CONFIG, "access denied (check the security role)", 403),
        ErrorRule(Action.SKIP, Fault.DATA, "record not found", code="0x80040217"),
        ErrorRule(Action.SKIP, Fault.DATA, "field value rejected", code="0x80048d19"),
        ErrorRule(Action.SKIP, Fault.DATA, "option set value out of range", code="0x8004431a"),
        ErrorRule(Action.SKIP, Fault.DATA, "value too long", code="0x80044331"),
        ErrorRule(Action.RETRY, Fault.TRANSIENT, "SQL error (row locked or timeout)", code="0x80044150"),
    ]
)
# Set by the Merge action on the subordinate row: read with every row of a table that has them.
MERGE_COLUMNS = ("merged", "masterid")
# When the row was created (UTC, whole seconds, as modifiedon), read with every row of a table that
# has it and handed over as ``CrmRecord.created_at``, not among the fields (unless mapped). A
# delta link taken by a version that did not select it still serves: its rows come without it
# (no full reload for it); the next link taken afresh selects it.
CREATED_COLUMN = "createdon"
_AFTER = "consentsync-after="  # the fragment of a first read's link: its signpost
# The fragment of a full read's link while the read is under way (a first read, a reload after a
# refused link): the cursor's position is how far the read got, the link the one it took before
# its first row. Never sent (a fragment): the link stays the service's own.
_WALK = "consentsync-walk"
# Matched whole (``fullmatch``): ``$`` would let a trailing newline through, into a URL or the
# request line of a $batch part.
_LOGICAL_NAME = re.compile(r"[a-z][a-z0-9_]{0,99}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# The longest URL a GET inside a $batch may have: "a longer URL, up to 64 KB (65,536
# characters), is allowed" there ("Execute batch operations using the Web API"), counted as the
# URL is sent, percent-encoded (a Cyrillic letter is 6 characters then, a CJK one 9, an emoji 12).
URL_LIMIT = 65_536
# What a look-up's URL is held to: the limit less room for the $skiptoken (a paging cookie) the
# service adds to a page's next link, which is sent the same way and must fit too.
_URL_BUDGET = URL_LIMIT - 8_192
# The most requests one $batch may hold ("Execute batch operations using the Web API": "Batch
# requests can contain up to 1000 individual requests"). A Journeys write's look-ups are sized
# on it; its creates go in ``batch_size`` parts (``_batch``).
BATCH_MAX = 1_000
# A row that exists, answered to a create: 0x80040237 (the id: If-None-Match) or 0x80060892 (an
# alternate key an admin defined).
_EXISTS = frozenset({"0x80040237", "0x80060892"})
_KEY_TAKEN = "0x80060892"  # 412: an alternate key's values are another row's
_NOT_FOUND = "0x80040217"
#: The answer to an update of a row changed since this run read it (412 to its ETag): retryable,
#: but kept for the next run, whose read hands the change over first (``write_batches``).
CHANGED_SINCE_READ = "CHANGED_SINCE_READ"
# ExpiredVersionStamp: a delta link past the change-tracking retention (Organization
# ExpireChangeTrackingInDays, 7 days by default), and the message that goes with it.
_EXPIRED_VERSION_STAMP = "0x80044352"
_EXPIRED_MESSAGE = "version stamp associated with the client has expired"
# How many rows' ETags the connector keeps from its reads (the most recent): a row read longer
# ago, or not read in this run, is written with If-Match: * (as a row of a table without
# optimistic concurrency).
_ETAGS_KEPT = 200_000


def odata_literal(value: Any) -> str:
    """A value as an OData literal: text quoted with its quotes doubled, GUIDs, numbers,
    booleans and DateTimeOffset unquoted. Every value reaching a $filter goes through here."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no OData literal for {type(value).__name__}")


def parse_dataverse_datetime(value: str) -> datetime:
    return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).astimezone(UTC)


def _created_after(created: Any, seen: datetime | None) -> bool:
    """Whether a row created at ``created`` (its createdon, as answered) was created after
    ``seen`` (a moment of the service's clock), its clocks allowed to disagree a little."""
    if seen is None or not isinstance(created, str):
        return False
    try:
        return parse_dataverse_datetime(created) > seen + _CLOCK_MARGIN
    except ValueError:
        return False


def _moment(value: Any) -> datetime | None:
    """A date and time as Dataverse answers it, or None (absent, not one)."""
    if not isinstance(value, str):
        return None
    try:
        return parse_dataverse_datetime(value)
    except ValueError:
        return None


_AuditDetails = list[dict[str, Any]]


def _holds_update_since(details: Sequence[Mapping[str, Any]], modified: datetime) -> bool:
    """Whether a row's audit history (RetrieveRecordChangeHistory's AuditDetails) holds an
    update at least as new as ``modified`` (its modifiedon), less :data:`_AUDIT_MARGIN`."""
    for detail in details:
        record = detail.get("AuditRecord")
        if not isinstance(record, Mapping) or record.get("operation") != _AUDIT_UPDATE:
            continue
        stamped = _moment(record.get("createdon"))
        if stamped is not None and stamped >= modified - _AUDIT_MARGIN:
            return True
    return False


def _changes_value(detail: Mapping[str, Any]) -> bool:
    """Whether an audit detail (an AttributeAuditDetail) changed a column of
    ``journeys.VALUE_COLUMNS`` (what the row says, not what surrounds it)."""
    for side in ("OldValue", "NewValue"):
        values = detail.get(side)
        if isinstance(values, Mapping) and any(column in values for column in journeys.VALUE_COLUMNS):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Entity:
    logical_name: str
    entity_set: str
    primary_id: str
    change_tracking: bool
    # IsOptimisticConcurrencyEnabled: an update may go with the row's ETag (If-Match).
    concurrency: bool = False


@dataclass(frozen=True, slots=True)
class _TableRead:
    """What a read of one table asks for: the table, the wire names of the fields it reads (by
    mapped name) and the record filters it keeps (by mapped name too)."""

    entity: _Entity
    wire: Mapping[str, str]
    filters: Mapping[str, list[Any]]
    # Rows left out of what is read (the connector's own consent rows): given a page's rows and
    # the wire names, the positions of those to leave out.
    skip: Callable[[Sequence[Mapping[str, Any]], Mapping[str, str]], set[int]] | None = None
    # Columns of ``wire`` read along, outside the mapping (``CREATED_COLUMN``): left out of the
    # fields handed over, and not required of a delta link an earlier version took.
    along: frozenset[str] = frozenset()

    def record(self, row: Mapping[str, Any]) -> sdk.CrmRecord:
        return _record(self.entity, row, self.wire, self.along)

    def unselected(self, link: str) -> set[str]:
        """The columns this read needs that ``link``'s $select lacks (the key always comes)."""
        selected = parse_qs(urlsplit(link).query).get("$select", [""])[0].split(",")
        return set(self.wire.values()) - set(selected) - {self.entity.primary_id} - self.along

    def kept(self, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """``rows`` (one page) less those :attr:`skip` leaves out."""
        rows = list(rows)
        if self.skip is None or not rows:
            return rows
        out = self.skip(rows, self.wire)
        return [row for index, row in enumerate(rows) if index not in out]

    def keeps(self, row: Mapping[str, Any]) -> bool:
        return bool(self.kept([row]))


@dataclass(slots=True)
class _ConsentChanges:
    """What a read of the consent rows' delta found: the link after it, the addresses of the rows
    that changed (and those an edited row's audit history shows it at before), and whether a row
    may have left an address it does not name (deleted, or an existing row edited where the audit
    history cannot tell: every contact is to be checked again)."""

    link: str
    addresses: set[str]
    recheck: bool


# The token of a Journeys view's cursor (:class:`_JourneysState`).
_JOURNEYS_TOKEN = "consentsync-journeys:"
# How far the service's clocks may disagree: its answers' Date and its rows' createdon.
_CLOCK_MARGIN = timedelta(seconds=30)
# How much older than an edited consent row's modifiedon its newest audited update may be and
# still be that edit's: both stamped in the same transaction, each in whole seconds.
_AUDIT_MARGIN = timedelta(seconds=1)
# RetrieveRecordChangeHistory's AuditRecord.operation of an update (audit EntityType: 1 Create,
# 2 Update, 3 Delete, 4 Access, 5 Upsert).
_AUDIT_UPDATE = 2


def _position(cursor: sdk.Cursor) -> list[str | None]:
    return [cursor.modstamp.isoformat() if cursor.modstamp else None, cursor.record_id]


def _cursor_at(value: Any) -> sdk.Cursor | None:
    if not isinstance(value, list) or len(value) != 2:
        return None
    stamp, record_id = value
    if not (stamp is None or isinstance(stamp, str)) or not (record_id is None or isinstance(record_id, str)):
        return None
    try:
        return sdk.Cursor(parse_dataverse_datetime(stamp) if stamp else None, record_id)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _JourneysState:
    """Where a Journeys view's read stands, kept as its cursor's token (JSON after
    :data:`_JOURNEYS_TOKEN`), stored by the engine with every page that carries it.

    * ``contact``: the contacts' token (a delta link, with its signpost); during a first read,
      the contacts' delta link it took before its first contact;
    * ``consents``: the consent rows' delta link; during a first read, the one it took first;
    * ``walk``: a first read in progress, the (modifiedon, id) position it walked the contacts to
      (``Cursor()``: none yet), each contact looked up after ``consents`` was taken;
    * ``seen``: a moment of the service's clock after every look-up whose answer was handed over
      since ``consents`` was taken: a consent row created later was seen by none;
    * ``recheck``: a check of every contact in progress (a consent row deleted or edited), the
      position it reached; ``again``: one more from the first contact is due after it (a row
      deleted or edited after it began, when contacts before its position were checked).
    """

    contact: str
    consents: str
    walk: sdk.Cursor | None = None
    seen: datetime | None = None
    recheck: sdk.Cursor | None = None
    again: bool = False

    def token(self) -> str:
        data: dict[str, Any] = {"contact": self.contact, "consents": self.consents}
        if self.walk is not None:
            data["walk"] = _position(self.walk)
        if self.seen is not None:
            data["seen"] = odata_literal(self.seen)
        if self.recheck is not None:
            data["recheck"] = _position(self.recheck)
            data["again"] = self.again
        return _JOURNEYS_TOKEN + json.dumps(data)

    @classmethod
    def of(cls, token: str | None) -> _JourneysState | None:
        """The state a token holds; None for none, for an unreadable one, or for a token of the
        contacts alone (an earlier version's)."""
        if not token or not token.startswith(_JOURNEYS_TOKEN):
            return None
        try:
            data = json.loads(token[len(_JOURNEYS_TOKEN) :])
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        contact, consents = data.get("contact"), data.get("consents")
        if not isinstance(contact, str) or not isinstance(consents, str):
            return None
        walk = _cursor_at(data["walk"]) if "walk" in data else None
        recheck = _cursor_at(data["recheck"]) if "recheck" in data else None
        if ("walk" in data and walk is None) or ("recheck" in data and recheck is None):
            return None
        seen = None
        if isinstance(data.get("seen"), str):
            try:
                seen = parse_dataverse_datetime(data["seen"])
            except ValueError:
                seen = None
        return cls(contact, consents, walk, seen, recheck, data.get("again") is True)


class _DeltaRefused(Exception):
    """The delta link was refused (expired or invalid): read the table again from the start."""


class _BatchTimedOut(Exception):
    """A ``$batch`` got no answer in time: :meth:`DynamicsConnector._batch` sends it in halves."""


class DynamicsConnector(sdk.Connector):
    vendor = "dynamics"
    settings_model = DynamicsSettings
    # Only the (modifiedon, id) keyset read (the first read, a refused delta link, tables without
    # change tracking) needs it: modifiedon is stamped when the operation runs, and a row
    # becomes visible when its transaction commits, up to the 2-minute limit of synchronous
    # plug-ins later (longer behind a bulk job). Five minutes covers that with room. A cursor
    # holding a delta link is kept as it is (resume_from): change tracking hands rows over by
    # the row version assigned at commit, so a late commit comes in the next delta.
    lookback: ClassVar[timedelta] = timedelta(minutes=5)
    can_delete = True  # DELETE /{set}({id}) inside $batch
    # The erasure actions an object accepts where it accepts fewer than the connector's, read
    # at config load (consentsync.config): consentsync_journeys_contact is the contact seen from
    # Journeys, whose erasure is the contact's own (erasure.contact); a delete or anonymise of
    # it would do nothing, and the still-live contact, read again, would bring it back each run.
    erasure_actions_by_object: ClassVar[Mapping[str, tuple[str, ...]]] = {JOURNEYS_CONTACT: ("suppress",)}
    deletions = "stream"  # $deletedEntity rows in the delta; merged = true with masterid
    reports_merges = True

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        self.config = DynamicsSettings.model_validate(dict(settings))
        # The sdk redacts the secrets it finds by a setting's name, a list's items not among
        # them: the earlier keys are redacted from errors and logs as any secret.
        for earlier in self.config.earlier_own_rows_secrets:
            sdk.register_secret(earlier)
        self._own_rows_key_warned = False
        self.api = sdk.HttpClient.configured(
            self.config,
            _classified,
            on_response=self._count,
            guard=lambda: self.config.budget.check(self.name, self.usage),
            headers=lambda: {
                "Authorization": f"Bearer {self._access_token()}",
                "OData-MaxVersion": "4.0",
                "OData-Version": "4.0",
                "Accept": "application/json",
            },
            refresh_session=self._forget_token,
        )
        # (token, when it lapses); shared by the threads that write side by side.
        self._token = sdk.SharedLogin(self._login, fresh=_not_lapsing)
        self._entities: dict[str, _Entity] = {}
        self._describes: dict[str, dict[str, sdk.FieldInfo]] = {}
        self._purposes: list[str] | None = None  # msdynmkt_purpose ids, read once
        self.rows_created = 0  # Journeys consent rows created (journeys.py)
        self.deleted_rows = 0  # $deletedEntity rows seen by delta reads (yielded as deleted)
        self.full_reloads = 0  # delta links refused, tables read again from the start
        # Whether every change of a consent row's address is audited (read once, when needed).
        self._audited: bool | None = None
        # The consent table's audited columns (empty: the environment or the table audits
        # nothing), read once, when needed.
        self._audited_columns: frozenset[str] | None = None
        # The latest Date this environment's Web API answered with (the service's clock).
        self._answered_at: datetime | None = None
        # (table, row id as an int) -> the row's @odata.etag as a read of it was handed over: an
        # update goes with it (If-Match), so a change made since is not overwritten unseen.
        self._etags: dict[tuple[str, int], str] = {}
        # Requests per $batch: batch_size, halved for the rest of the run by a batch that timed
        # out (_batch).
        self._batch_limit = self.config.batch_size

    # -- session -------------------------------------------------------------------------------

    def _count(self, response: requests.Response) -> None:
        self.usage.count(_endpoint_kind(response.request.url or "", response.request.method or ""))
        date = response.headers.get("Date")
        if date and self._ours(response.request.url or ""):
            try:
                moment = parsedate_to_datetime(date).astimezone(UTC)
            except (TypeError, ValueError):
                return
            if self._answered_at is None or moment > self._answered_at:
                self._answered_at = moment

    def _access_token(self) -> str:
        # Renewed a minute before it lapses, and whenever the API answered 401.
        return self._token.get()[0]

    def _login(self) -> tuple[str, float]:
        c = self.config
        form = {
            "grant_type": "client_credentials",
            "client_id": c.client_id,
            "client_secret": c.client_secret,
            "scope": c.scope or "",
        }
        body = sdk.request_token(
            self.api.session, c.token_url, form, login="login with client credentials", who=f"{self.name}: "
        )
        return str(body["access_token"]), time.monotonic() + float(body.get("expires_in", 3599))

    def _forget_token(self) -> None:
        self._token.forget()

    def _request(self, method: str, url: str, describe: str, **kwargs: Any) -> requests.Response:
        """One Web API call under the retry policy (``HttpClient.send``: ``accept`` lets a caller
        take a non-2xx answer itself, a refused delta link)."""
        return self.api.send(method, url, describe=describe, **kwargs)

    # -- metadata ------------------------------------------------------------------------------

    def _entity(self, logical_name: str) -> _Entity:
        if logical_name not in self._entities:
            _check_name(logical_name, "table")
            url = f"{self.config.api_url}/EntityDefinitions(LogicalName='{logical_name}')"
            body = self._request(
                "GET",
                url,
                f"EntityDefinitions {logical_name}",
                params={
                    "$select": "LogicalName,EntitySetName,PrimaryIdAttribute,ChangeTrackingEnabled,"
                    "IsOptimisticConcurrencyEnabled"
                },
            ).json()
            self._entities[logical_name] = _Entity(
                logical_name,
                body["EntitySetName"],
                body["PrimaryIdAttribute"],
                bool(body.get("ChangeTrackingEnabled")),
                body.get("IsOptimisticConcurrencyEnabled") is True,
            )
        return self._entities[logical_name]

    def check(self) -> None:
        self._request("GET", f"{self.config.api_url}/WhoAmI", "WhoAmI")

    def describe(self, object_type: str) -> dict[str, sdk.FieldInfo]:
        if object_type == JOURNEYS_CONTACT and object_type not in self._describes:
            # The contact's columns, and one per purpose of the environment: true when the
            # contact's address has a consent row for it (journeys.py).
            fields = dict(self.describe("contact"))
            for purpose in self._purpose_ids():
                name = journeys.field_for(purpose)
                fields[name] = sdk.FieldInfo(name=name, type="Boolean", updateable=True)
            self._describes[object_type] = fields
        if object_type not in self._describes:
            _check_name(object_type, "table")
            body = self._request(
                "GET",
                f"{self.config.api_url}/EntityDefinitions(LogicalName='{object_type}')/Attributes",
                f"Attributes {object_type}",
                params={"$select": "LogicalName,AttributeType,IsValidForUpdate"},
            ).json()
            self._describes[object_type] = {
                item["LogicalName"]: sdk.FieldInfo(
                    name=item["LogicalName"],
                    type=str(item.get("AttributeType", "")),
                    updateable=bool(item.get("IsValidForUpdate")),
                )
                for item in body["value"]
            }
        return self._describes[object_type]

    def _wire_names(self, object_type: str, fields: Sequence[str]) -> dict[str, str]:
        """Logical name -> Web API property (a lookup reads as ``_name_value``); every name
        checked against the table's attributes."""
        known = self.describe(object_type)
        sdk.require_fields(
            fields,
            known,
            f"{object_type} has no column(s)",
            "(or the application user's security role cannot read them)",
            reason="mapped column missing",
        )
        return {
            name: f"_{name}_value" if known[name].type in ("Lookup", "Customer", "Owner") else name
            for name in fields
        }

    # -- reading -------------------------------------------------------------------------------

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: sdk.Cursor, until: datetime
    ) -> Iterator[sdk.CrmRecord]:
        """With change tracking (the default, where the table has it enabled):

        * a cursor holding a delta link reads what changed since (the link is the server's row
          version: no same-second race, so ``until`` does not apply; a row changed after it comes
          now, and the next link starts after it). A refused link (expired, invalid) means one
          full reload, as below from the start;
        * a cursor without one (the first sync, a --full run, a crash before the first link was
          kept) takes a delta link first, then reads by (modifiedon, id) after the cursor up to
          ``until``; the link is handed over once that read is done, so every change made
          after it was taken comes in the next delta (a row read twice is harmless), marked with
          the signpost: the next read also reads what changed after it, once, so a row changed
          between the signpost and the link is not lost. Until then each record carries its
          position with that link (``#consentsync-walk``): a read stopped part way goes on from
          there in the next run, with the same link.

        Without change tracking every read is the (modifiedon, id) keyset read.

        ``consentsync_journeys_contact`` is read as the contact table is, each page's addresses
        then looked up among the consent rows (journeys.py); a consent row the connector created
        and nobody changed since is left out of the consent rows read.
        """
        if object_type == JOURNEYS_CONTACT:
            yield from self._read_journeys(fields, since, until)
            return
        entity = self._entity(object_type)
        skip = None
        known = self.describe(object_type)
        if object_type == CONSENT_TABLE and all(column in known for column in journeys.OWN_COLUMNS):
            extra = [column for column in journeys.OWN_ROW_COLUMNS if column in known]
            fields, skip = [*fields, *journeys.OWN_COLUMNS, *extra], self._own_rows
        yield from self._read_table(self._table_read(entity, object_type, fields, skip), since, until)

    def _table_read(
        self,
        entity: _Entity,
        source: str,
        fields: Sequence[str],
        skip: Callable[[Sequence[Mapping[str, Any]], Mapping[str, str]], set[int]] | None = None,
    ) -> _TableRead:
        """What a read of ``entity`` asks for: the columns of the table ``source`` (checked
        against its metadata), with the merge columns and the record filters it has."""
        known = self.describe(source)
        merges = [name for name in MERGE_COLUMNS if name in known]
        along = [CREATED_COLUMN] if CREATED_COLUMN in known and CREATED_COLUMN not in fields else []
        wanted = list(dict.fromkeys([entity.primary_id, "modifiedon", *fields, *merges, *along]))
        filters = self.config.record_filters.get(source, {})
        wire = self._wire_names(source, list(dict.fromkeys([*wanted, *filters])))
        return _TableRead(entity, wire, filters, skip, frozenset(along) - set(filters))

    def _read_table(self, table: _TableRead, since: sdk.Cursor, until: datetime) -> Iterator[sdk.CrmRecord]:
        yield from self._handed_over(self._table_steps(table, since, until))

    def _table_steps(
        self, table: _TableRead, since: sdk.Cursor, until: datetime
    ) -> Iterator[tuple[sdk.CrmRecord | None, sdk.Cursor | None]]:
        """The table's records, each with the cursor that holds once it is handed over (None:
        the engine's own, the record's position with the token the read started from), then
        ``(None, the read's last cursor)`` (None where the read hands over no token)."""
        entity, wire = table.entity, table.wire
        if not (self.config.change_tracking and entity.change_tracking):
            for record in self._read_keyset(table, since, until):
                yield record, None
            yield None, None
            return
        link: str | None = None
        if since.token and since.token.partition("#")[2] == _WALK:
            # A full read under way, stopped by an earlier run (its budget, a kill): it goes on
            # from its position with the link it took first. Taking a new link would page through
            # the whole table again every run (a table larger than a run's budget never done), and
            # a row deleted before the new link, behind the position, would come in neither.
            link = self._walk_link(table, since.token)
            since = sdk.Cursor(since.modstamp, since.record_id) if link else sdk.Cursor()
        elif since.token:
            try:
                for record in self._read_delta(table, since, until):
                    yield record, None
                # Set by the delta as it ends (None: it ended without its link).
                final, self.completed_cursor = self.completed_cursor, None
                yield None, final
                return
            except _DeltaRefused as refused:
                log.warning(
                    "dynamics.delta_link_refused",
                    connector=self.name,
                    table=entity.logical_name,
                    code=str(refused),
                )
                self.full_reloads += 1
                since = sdk.Cursor()
        if link is None:
            link = self._new_delta_link(entity, wire)
        settled = self._settled(until)
        walking = f"{link}#{_WALK}"
        last: sdk.CrmRecord | None = None
        for record in self._read_keyset(table, since, until):
            last = record
            # Each record carries its position with the link taken before the read's first row
            # (the engine would keep the token the read started from: a refused link, refused
            # again next run, or none, a new link taken each run). A run stopped part way (its
            # budget, a kill) leaves the next to go on from there with the same link, whose delta
            # holds every change made since it was taken, deletions of rows behind the position
            # among them; a row changed later than the position is read by the walk as well.
            yield record, sdk.Cursor(record.modstamp, record.record_id, walking, settled)
        position = (last.modstamp, last.record_id) if last else (since.modstamp, since.record_id)
        # The link was taken after the signpost: a row changed between the two is in neither this
        # read nor the link's delta. The next read also reads what changed after the signpost,
        # once (a URL fragment, never sent: the link stays the service's own).
        yield None, sdk.Cursor(*position, token=f"{link}#{_AFTER}{odata_literal(until)}")

    def _walk_link(self, table: _TableRead, token: str) -> str | None:
        """The link a full read under way took before its first row (``token``), where it can
        still serve: None (the read starts again from the first row, with a new link) for a link
        of another environment or one that does not select every column the mapping reads now."""
        link = token.partition("#")[0]
        if not self._ours(link) or table.unselected(link):
            log.warning(
                "dynamics.full_read_restarted",
                connector=self.name,
                table=table.entity.logical_name,
                reason="its link is of another environment or selects fewer columns",
            )
            return None
        return link

    def _settled(self, until: datetime) -> datetime:
        """``until`` as the bound a cursor keeps (``Cursor.read_until``), no later than the one the
        engine keeps with its own: where the service's clock is known to run behind ours, that far
        before it (the engine's is the service's clock at the run's start, after ``until``)."""
        clock = self.crm_clock()
        offset = clock.offset() if clock is not None else None
        return until + offset.low if offset is not None and offset.behind else until

    def _prefer(self, *extra: str) -> dict[str, str]:
        return {"Prefer": ", ".join([*extra, f"odata.maxpagesize={self.config.page_size}"])}

    def _new_delta_link(self, entity: _Entity, wire: Mapping[str, str]) -> str:
        """A delta link for the table as it is now (the initial change-tracking read; its pages
        are not yielded: the keyset read that follows is ordered and resumable). The link keeps
        its $select, so it names every column the later deltas must carry."""
        url: str = f"{self.config.api_url}/{entity.entity_set}"
        params: dict[str, str] | None = {"$select": ",".join(wire.values())}
        while True:
            body = self._page(url, params, entity, delta=False)
            if body.get("@odata.nextLink"):
                url, params = self._checked_link(body["@odata.nextLink"]), None
                continue
            if not body.get("@odata.deltaLink"):
                raise ConnectorError(
                    f"{self.name}: {entity.entity_set} answered no delta link: is change tracking on?",
                    ErrorRule(Action.FAIL, Fault.CONFIG, "no delta link"),
                )
            return self._checked_link(body["@odata.deltaLink"])

    def _read_delta(self, table: _TableRead, since: sdk.Cursor, until: datetime) -> Iterator[sdk.CrmRecord]:
        entity, wire, filters = table.entity, table.wire, table.filters
        assert since.token
        url, _, fragment = since.token.partition("#")
        if not self._ours(url):
            raise _DeltaRefused("a delta link of another environment")
        if table.unselected(url):
            raise _DeltaRefused("the mapping reads columns the delta link does not select")
        catch_up = None
        if fragment.startswith(_AFTER):
            try:
                catch_up = parse_dataverse_datetime(fragment[len(_AFTER) :])
            except ValueError:
                raise _DeltaRefused("a delta link with an unreadable signpost") from None
        first = True
        newest: tuple[datetime | None, str | None] = (since.modstamp, since.record_id)
        # Only once after a first read (its catch-up follows): the ids this delta yields, bounded
        # by the changes since that read, so that the catch-up does not yield them again.
        # With the ETag each was handed over with: the catch-up's read of it is not handed over.
        delivered: dict[str, str | None] = {}

        def note(record: sdk.CrmRecord) -> sdk.CrmRecord:
            nonlocal newest
            if newest[0] is None or (record.modstamp, record.record_id) > (newest[0], newest[1] or ""):
                newest = (record.modstamp, record.record_id)
            return record

        while True:
            body = self._page(url, None, entity, delta=first)
            first = False
            for row in table.kept(body.get("value", [])):
                if "$deletedEntity" in str(row.get("@odata.context", "")) or row.get("reason") == "deleted":
                    # The delta carries no time of deletion: it happened before this page was read.
                    self.deleted_rows += 1
                    yield self._seen(entity, row, _deleted(entity, row))
                    continue
                if _wanted(row, wire, filters):
                    record = note(self._seen(entity, row, table.record(row)))
                    if catch_up is not None:
                        delivered[record.record_id] = self._etag(entity, record.record_id)
                    yield record
            if body.get("@odata.nextLink"):
                url = self._checked_link(body["@odata.nextLink"])
                continue
            link = body.get("@odata.deltaLink")
            if not link:
                return
            if catch_up is not None:
                # Rows changed after the first read's signpost, up to this run's: with the delta
                # (everything after the link) nothing between the first read and its link is lost.
                for record in self._read_keyset(table, sdk.Cursor(catch_up), until):
                    if record.record_id not in delivered:  # else the delta carried it already
                        yield note(record)
                        continue
                    self._forget_etag(entity, record.record_id)
                    if (etag := delivered[record.record_id]) is not None:
                        self._seen(entity, {"@odata.etag": etag}, record)
            self.completed_cursor = sdk.Cursor(*newest, token=self._checked_link(link))
            return

    def _page(self, url: str, params: Mapping[str, str] | None, entity: _Entity, *, delta: bool) -> Any:
        """One page of a read; of a delta (its first page), a refusal of the link raises
        :class:`_DeltaRefused`: any 400 or 410, and the expired-link error at any status.
        Microsoft Learn says only that Dataverse "throws an exception" for changes older than
        the retention period ("Use change tracking to synchronize data with external systems",
        Organization ExpireChangeTrackingInDays, 7 days by default), not its status: an
        ExpiredVersionStamp (0x80044352) or its message answered with a 5xx is the link's expiry
        too, read again in full rather than retried, and failed, every run."""

        def refused(response: requests.Response) -> bool:
            return delta and (response.status_code in (400, 410) or _expired_link(response))

        response = self._request(
            "GET",
            url,
            f"{'delta' if delta else 'read'} {entity.entity_set}",
            headers=self._prefer("odata.track-changes"),
            params=params,
            accept=refused,
        )
        if response.status_code >= 300:
            code, _message = _error_of(response)
            raise _DeltaRefused(code or str(response.status_code))
        return response.json()

    def _read_keyset(
        self, table: _TableRead, since: sdk.Cursor, until: datetime | None
    ) -> Iterator[sdk.CrmRecord]:
        """The rows after ``since`` in (modifiedon, id) order, up to ``until`` (None: every one)."""
        entity, wire, filters = table.entity, table.wire, table.filters
        key = entity.primary_id
        terms = [f"modifiedon le {odata_literal(until)}"] if until is not None else []
        if since.modstamp is not None:
            stamp = odata_literal(since.modstamp)
            if since.record_id is None:
                # A look-back cursor: every row stamped at that second or later.
                terms.insert(0, f"modifiedon ge {stamp}")
            elif _GUID.fullmatch(since.record_id):
                after = uuid.UUID(since.record_id)
                terms.insert(0, f"(modifiedon gt {stamp} or (modifiedon eq {stamp} and {key} gt {after}))")
            else:
                raise ConnectorError(
                    f"{self.name}: the cursor names {since.record_id[:40]!r}, "
                    "which is not a Dataverse row id",
                    ErrorRule(Action.FAIL, Fault.DATA, "cursor id is not a row id"),
                )
        for column, allowed in filters.items():
            terms.append("(" + " or ".join(f"{wire[column]} eq {odata_literal(v)}" for v in allowed) + ")")
        params: dict[str, str] | None = {
            "$select": ",".join(wire.values()),
            **({"$filter": " and ".join(terms)} if terms else {}),
            "$orderby": f"modifiedon asc,{key} asc",
        }
        url = f"{self.config.api_url}/{entity.entity_set}"
        while True:
            body = self._request(
                "GET", url, f"read {entity.entity_set}", headers=self._prefer(), params=params
            ).json()
            for row in table.kept(body.get("value", [])):
                yield self._seen(entity, row, table.record(row))
            next_link = body.get("@odata.nextLink")
            if not next_link:
                return
            url, params = self._checked_link(next_link), None

    def _ours(self, link: str) -> bool:
        """Whether ``link`` points into this environment's Web API. Scheme and host compare as
        URLs compare them: case-insensitively, the default port implied (the service writes its
        links with its own spelling of the host, which need not be the one configured, e.g.
        ``https://Contoso.crm4.dynamics.com``); no user info; the API path as it is."""
        mine, theirs = urlsplit(self.config.api_url + "/"), urlsplit(link)
        try:
            ports = (theirs.port or 443, mine.port or 443)
        except ValueError:  # a port that is not a number
            return False
        return (
            theirs.scheme.lower() == "https"
            and theirs.hostname is not None
            and theirs.hostname == mine.hostname  # both lower-cased by urlsplit
            and ports[0] == ports[1]
            and theirs.username is None
            and theirs.password is None
            and theirs.path.startswith(mine.path)
        )

    def _checked_link(self, link: str) -> str:
        # The bearer token goes wherever a link points: only to this environment.
        if not self._ours(link):
            raise ConnectorError(
                f"{self.name}: the service answered a link outside {self.config.environment_url}",
                ErrorRule(Action.FAIL, Fault.CONFIG, "foreign link"),
            )
        return link

    # -- the rows' versions, for writes ------------------------------------------------------------

    def _seen(self, entity: _Entity, row: Mapping[str, Any], record: sdk.CrmRecord) -> sdk.CrmRecord:
        """``record`` (read from ``row``), its ETag kept for a write to it: only for a record
        handed over as read (a row the read leaves out, or whose values do not reach the engine,
        must not vouch for a write), of a table with optimistic concurrency; a deleted or merged
        record has none."""
        if entity.logical_name == JOURNEYS_CONTACT or not entity.concurrency:
            return record
        try:
            key = (entity.logical_name, uuid.UUID(record.record_id).int)
        except ValueError:
            return record
        etag = row.get("@odata.etag")
        self._etags.pop(key, None)  # re-inserted last: the most recently read are kept
        if isinstance(etag, str) and etag and not record.deleted:
            self._etags[key] = etag
            if len(self._etags) > _ETAGS_KEPT:
                self._etags.pop(next(iter(self._etags)))
        return record

    def _etag(self, entity: _Entity, record_id: str) -> str | None:
        if not entity.concurrency:
            return None
        try:
            return self._etags.get((entity.logical_name, uuid.UUID(record_id).int))
        except ValueError:
            return None

    def _forget_etag(self, entity: _Entity, record_id: str) -> None:
        with suppress(ValueError):
            self._etags.pop((entity.logical_name, uuid.UUID(record_id).int), None)

    # -- Customer Insights - Journeys: the contact as its consent center sees it --------------------

    def _purpose_ids(self) -> list[str]:
        """The ids of the environment's purposes (``msdynmkt_purpose``), read once."""
        if self._purposes is None:
            entity = self._entity("msdynmkt_purpose")
            url: str = f"{self.config.api_url}/{entity.entity_set}"
            params: dict[str, str] | None = {"$select": entity.primary_id}
            found: list[str] = []
            while True:
                body = self._request(
                    "GET", url, f"read {entity.entity_set}", headers=self._prefer(), params=params
                ).json()
                found += [str(row[entity.primary_id]).lower() for row in body.get("value", [])]
                if not body.get("@odata.nextLink"):
                    break
                url, params = self._checked_link(body["@odata.nextLink"]), None
            self._purposes = found
        return self._purposes

    def _journeys_purposes(self, fields: Collection[str]) -> dict[str, str]:
        """The purpose fields among ``fields`` (field -> purpose id), each a purpose of the
        environment; a field naming none is a configuration error."""
        wanted = {name: purpose for name in fields if (purpose := journeys.purpose_of(name))}
        sdk.require_fields(
            wanted,
            self.describe(JOURNEYS_CONTACT),
            f"{JOURNEYS_CONTACT}: no purpose for the column(s)",
            "(purpose_ and the purpose's id without dashes: list them with "
            "GET /api/data/v9.2/msdynmkt_purposes?$select=msdynmkt_purposeid,msdynmkt_name)",
            reason="mapped column missing",
        )
        return wanted

    def _read_journeys(
        self, fields: Sequence[str], since: sdk.Cursor, until: datetime
    ) -> Iterator[sdk.CrmRecord]:
        """The contacts, each with its purpose fields: true where its address has a consent row
        for the purpose, or where it has no address, else empty. One lookup of the consent rows
        per page read.

        A purpose field changes when a contact changes (its address) and when a consent row does
        (created, deleted, edited) while the contact does not. With change tracking the read
        follows both tables, each by its own delta link, kept in the cursor's token
        (:class:`_JourneysState`), which the engine stores with every page:

        * a first read (a --full run, a token of an earlier version, a refused link) takes the
          consent rows' link, then the contacts', and walks the contacts by (modifiedon, id), each
          page looked up after that link was taken. Its token holds both links and the position
          walked to, so a read stopped part way goes on from there. Once the walk is done, the
          consent rows' delta from the link it took first hands over what changed meanwhile;
        * a later read takes the consent rows' delta first, to its new link: the addresses of
          the rows it shows changed, and those an existing row edited held before (it may have
          left another address: the delta shows a row as it is), from its audit history where
          Dataverse audits the address; a deleted row (its id alone), or an edited one without
          that history, has every contact checked again. Then the contacts' delta, each page
          looked up after that link was taken; then the contacts at the changed addresses;
        * a check of every contact hands over those with an address that a purpose shows without
          a row (the only ones a lost row can have changed); its position is kept in the token
          with both new links, so it goes on in the next run where it stopped.

        Without change tracking the contacts alone are read by modifiedon; a consent row's change
        shows once its contact changes."""
        purposes = self._journeys_purposes(fields)
        contact = self._entity("contact")
        entity = _Entity(JOURNEYS_CONTACT, contact.entity_set, contact.primary_id, contact.change_tracking)
        columns = [name for name in fields if name not in purposes]
        table = self._table_read(entity, "contact", [*columns, *self.config.journeys_email_fields])
        consents = self._entity(CONSENT_TABLE)
        if not (self.config.change_tracking and contact.change_tracking and consents.change_tracking):
            # Each contact's cursor (and the read's last one) goes with the contact once its page
            # is looked up and handed over: set as the table's read reaches it, a stop in that
            # look-up would commit a position past contacts never handed over.
            marks: dict[str, sdk.Cursor | None] = {}
            ended: list[sdk.Cursor | None] = []

            def contacts() -> Iterator[sdk.CrmRecord]:
                for record, mark in self._table_steps(table, since, until):
                    if record is None:
                        ended.append(mark)
                        continue
                    marks[record.record_id] = mark
                    yield record

            def steps() -> Iterator[tuple[sdk.CrmRecord | None, sdk.Cursor | None]]:
                for record in self._journeys_pages(contacts(), purposes, set()):
                    yield record, marks.pop(record.record_id, None)
                yield None, ended[0] if ended else None

            yield from self._handed_over(steps())
            return
        yield from self._handed_over(self._journeys_steps(table, purposes, since, until))

    def _handed_over(
        self, steps: Iterator[tuple[sdk.CrmRecord | None, sdk.Cursor | None]]
    ) -> Iterator[sdk.CrmRecord]:
        """The records of ``steps``, each with ``completed_cursor`` set to the cursor that holds
        once it is handed over (the engine stores it with the page it ends); the read's last
        cursor (``(None, cursor)``) goes with its last record, or alone where there is none.
        One record is held back for that: the engine keeps a cursor handed over after a page
        carrying one only if it is that page's. A read stopped by an error (the run's budget, a
        failure) hands over the record held, with its own cursor, before the error: the engine
        commits it with the records before it (``pages_read``), and a read that makes progress
        only a page per run does not lose it each time."""
        held: tuple[sdk.CrmRecord, sdk.Cursor | None] | None = None
        final: sdk.Cursor | None = None
        try:
            for record, mark in steps:
                if record is None:
                    final = mark
                    continue
                if held is not None:
                    self.completed_cursor = held[1]
                    yield held[0]
                held = (record, mark)
        except Exception:
            if held is not None:
                self.completed_cursor = held[1]
                yield held[0]
            raise
        if final is None and held is not None:
            final = held[1]
        self.completed_cursor = final
        if held is not None:
            yield held[0]

    def _journeys_steps(
        self, table: _TableRead, purposes: Mapping[str, str], since: sdk.Cursor, until: datetime
    ) -> Iterator[tuple[sdk.CrmRecord | None, sdk.Cursor | None]]:
        """The Journeys view's records, each with the cursor that holds once it is handed over,
        then ``(None, the read's last cursor)`` (see :meth:`_read_journeys`)."""
        wire = self._consent_change_wire()
        state = _JourneysState.of(since.token)
        if state is None and (since.token is not None or since.modstamp is not None):
            # A token of an earlier version (the contacts' link alone), or a position without one
            # (a first read of an earlier version, stopped): its look-ups are of no known link.
            log.info("dynamics.journeys_read_in_full", connector=self.name, reason="no consent link")
        position = sdk.Cursor(since.modstamp, since.record_id)
        handed: set[str] = set()
        if state is not None and state.walk is None:
            # A later read: the consent rows' changes, then the contacts'.
            changes = self._refused_as_none(lambda: self._consent_changes(state.consents, wire, state.seen))
            if changes is None:
                state = None
            else:
                # Until the new links are handed over, the old ones hold; each page carries the
                # time of its look-ups (a row created later was seen by none of them).
                def holding() -> sdk.Cursor:
                    kept = replace(state, seen=self._answered_at)
                    return replace(position, token=kept.token())

                contact_since = sdk.Cursor(since.modstamp, since.record_id, state.contact)
                ended: list[sdk.Cursor | None] = []

                def contacts() -> Iterator[sdk.CrmRecord]:
                    yield from self._read_delta(table, contact_since, until)
                    # Taken as the delta ends: the records of its last page are yet to come.
                    ended.append(self.completed_cursor)
                    self.completed_cursor = None

                try:
                    for record in self._journeys_pages(contacts(), purposes, handed):
                        yield record, holding()
                except _DeltaRefused as refused:
                    self._log_refused("contact", refused)
                    # A first read after the consent rows' new link: every contact is looked up
                    # after it, whatever the changes before it did.
                    state = self._new_walk(table, changes.link)
                else:
                    done = ended[0] if ended else None
                    if done is None or done.token is None:
                        yield None, holding()  # the delta ended without its link: read it again
                        return
                    position = sdk.Cursor(done.modstamp, done.record_id)
                    if changes.addresses:
                        at = (
                            r
                            for r in self._contacts_at(table, changes.addresses)
                            if r.record_id.lower() not in handed
                        )
                        for record in self._journeys_pages(at, purposes, handed):
                            yield record, holding()
                    lap, again = state.recheck, state.again
                    if changes.recheck:
                        lap, again = (sdk.Cursor(), False) if lap is None else (lap, True)
                    after = _JourneysState(done.token, changes.link)
                    yield from self._recheck(table, purposes, handed, after, position, lap, again)
                    return
        if state is None or state.walk is None:
            state = self._new_walk(table, self._new_delta_link(self._entity(CONSENT_TABLE), wire))
        yield from self._walk(table, purposes, handed, state, wire, until)

    def _refused_as_none(self, read: Callable[[], _ConsentChanges]) -> _ConsentChanges | None:
        try:
            return read()
        except _DeltaRefused as refused:
            self._log_refused(CONSENT_TABLE, refused)
            return None

    def _log_refused(self, table: str, refused: _DeltaRefused) -> None:
        log.warning("dynamics.delta_link_refused", connector=self.name, table=table, code=str(refused))
        self.full_reloads += 1

    def _new_walk(self, table: _TableRead, consent_link: str) -> _JourneysState:
        """A first read's state: the consent rows' link (taken first), the contacts' link, no
        contact walked yet."""
        return _JourneysState(self._new_delta_link(table.entity, table.wire), consent_link, walk=sdk.Cursor())

    def _walk(
        self,
        table: _TableRead,
        purposes: Mapping[str, str],
        handed: set[str],
        state: _JourneysState,
        wire: Mapping[str, str],
        until: datetime,
    ) -> Iterator[tuple[sdk.CrmRecord | None, sdk.Cursor | None]]:
        """A first read, from the position its state holds: every contact up to ``until`` by
        (modifiedon, id), each page looked up after the consent rows' link was taken; then that
        link's delta (rows changed during the walk, whatever run it went on in): the contacts at
        their addresses, and a check of every contact where a row was deleted or edited."""
        assert state.walk is not None
        walked = state.walk

        def at(cursor: sdk.Cursor) -> sdk.Cursor:
            return replace(cursor, token=replace(state, walk=cursor).token())

        for record in self._journeys_pages(self._read_keyset(table, walked, until), purposes, handed):
            walked = sdk.Cursor(record.modstamp, record.record_id)
            yield record, at(walked)
        changes = self._refused_as_none(lambda: self._consent_changes(state.consents, wire, None))
        if changes is None:
            # The link taken first is past the retention period: the walk's look-ups are of no
            # link the service still knows. Once more from the first contact.
            yield from self._walk(
                table,
                purposes,
                set(),
                self._new_walk(table, self._new_delta_link(self._entity(CONSENT_TABLE), wire)),
                wire,
                until,
            )
            return
        if changes.addresses:
            named = self._contacts_at(table, changes.addresses)
            again = (r for r in named if r.record_id.lower() not in handed)
            for record in self._journeys_pages(again, purposes, handed):
                yield record, at(walked)
        # The link was taken before the walk's first contact, ``until`` is this run's: the next
        # read also reads, once, the contacts changed after it (as :meth:`_read_table`).
        after = _JourneysState(f"{state.contact}#{_AFTER}{odata_literal(until)}", changes.link)
        lap = sdk.Cursor() if changes.recheck else None
        yield from self._recheck(table, purposes, handed, after, walked, lap, False)

    def _recheck(
        self,
        table: _TableRead,
        purposes: Mapping[str, str],
        handed: set[str],
        after: _JourneysState,
        position: sdk.Cursor,
        lap: sdk.Cursor | None,
        again: bool,
    ) -> Iterator[tuple[sdk.CrmRecord | None, sdk.Cursor | None]]:
        """The check of every contact ``lap`` holds (None: none due) from its position, then one
        more from the first contact where ``again``; the contacts with an address that a purpose
        shows without a row are handed over, each with the state that resumes after it. Ends with
        ``after``'s state: its links, the time of the last look-up, and no check due. Each page's
        last contact is handed over too, with the position (see :meth:`_journeys_pages`)."""

        def at(cursor: sdk.Cursor | None, more: bool) -> sdk.Cursor:
            state = replace(after, seen=self._answered_at, recheck=cursor, again=more)
            return replace(position, token=state.token())

        while lap is not None:
            log.info("dynamics.journeys_recheck", connector=self.name, reason="consent row deleted or edited")
            every = (
                r
                for r in self._read_keyset(table, lap, None)
                if not r.deleted and r.record_id.lower() not in handed
            )
            for record in self._journeys_pages(every, purposes, handed, lost_only=True):
                lap = sdk.Cursor(record.modstamp, record.record_id)
                yield record, at(lap, again)
            lap, again = (sdk.Cursor(), False) if again else (None, False)
        yield None, at(None, False)

    def _journeys_pages(
        self,
        records: Iterable[sdk.CrmRecord],
        purposes: Mapping[str, str],
        handed: set[str],
        *,
        lost_only: bool = False,
    ) -> Iterator[sdk.CrmRecord]:
        """``records`` with their purpose fields, looked up a page at a time; each id handed over
        goes into ``handed``. ``lost_only``: only the contacts with an address that a purpose
        shows without a row, and each page's last contact: it carries the position a check of
        every contact reached, which the engine keeps only with a record handed over (a check
        that finds none within a run's budget would otherwise start again each run). Read again
        as it is, it costs nothing more: the engine skips a record its snapshot holds as read,
        and the view's fields are pushed, never read as anyone's choice."""

        def shown(page: list[sdk.CrmRecord]) -> Iterator[sdk.CrmRecord]:
            for n, record in enumerate(self._with_consent_rows(page, purposes), 1):
                if (
                    lost_only
                    and n < len(page)
                    and not (
                        self._addresses(record.fields)
                        and any(record.fields.get(name) is None for name in purposes)
                    )
                ):
                    continue
                handed.add(record.record_id.lower())
                yield record

        page: list[sdk.CrmRecord] = []
        for record in records:
            page.append(record)
            if len(page) >= self.config.page_size:
                yield from shown(page)
                page = []
        yield from shown(page)

    def _consent_change_wire(self) -> dict[str, str]:
        """The consent-row columns a read of their changes selects: the address, the purpose,
        when the row was created (an edit of an existing row may have moved it) and last changed
        (its audit history answers for the edit only once it holds an update that new)."""
        known = self.describe(CONSENT_TABLE)
        names = ["msdynmkt_contactpointvalue", "msdynmkt_purposeid"]
        if "createdon" in known:
            names.append("createdon")
        if "modifiedon" in known:
            names.append("modifiedon")
        return self._wire_names(CONSENT_TABLE, names)

    def _consent_changes(self, link: str, wire: Mapping[str, str], seen: datetime | None) -> _ConsentChanges:
        """What changed among the consent rows since ``link``, to the service's next link.

        A changed row names its address (its contacts are handed over). Whether it left another
        one the delta does not say (it shows a row as it is now, not which columns changed), so
        a deleted row (its id alone) has every contact checked again. A row that existed before
        ``seen`` (the service's time after the last look-up handed over since ``link`` was taken;
        None: any row) may have been moved from another address that a look-up saw it at: where
        Dataverse audits every change of a row's address, the addresses its audit history shows
        it at before are handed over too (a move between purposes or channels at one address
        changes only the contacts there); where it does not, every contact is checked again. Not
        for a row created after ``seen`` (no look-up saw it), nor for a row the connector created
        that sits at the address and purpose its id was derived from."""
        entity = self._entity(CONSENT_TABLE)
        if not self._ours(link):
            raise _DeltaRefused("a delta link of another environment")
        selected = parse_qs(urlsplit(link).query).get("$select", [""])[0].split(",")
        if set(wire.values()) - set(selected) - {entity.primary_id}:
            raise _DeltaRefused("the read needs columns the delta link does not select")
        value, purpose, created_on, modified_on = (
            wire["msdynmkt_contactpointvalue"],
            wire["msdynmkt_purposeid"],
            wire.get("createdon"),
            wire.get("modifiedon"),
        )
        keys = self._own_rows_keys()
        changes = _ConsentChanges(link, set(), recheck=False)
        # Rows that existed before a look-up saw them (they may have moved), with their
        # modifiedon as the delta shows it: the edit their audit history has to hold.
        edited: dict[str, datetime] = {}
        url, first = link, True
        while True:
            body = self._page(url, None, entity, delta=first)
            first = False
            for row in body.get("value", []):
                if "$deletedEntity" in str(row.get("@odata.context", "")) or row.get("reason") == "deleted":
                    changes.recheck = True  # its id alone: any address may have lost a row
                    continue
                address, of = journeys.address_key(row.get(value)), row.get(purpose)
                if address is not None:
                    changes.addresses.add(address)
                if changes.recheck:
                    continue
                rid = str(row.get(entity.primary_id) or "").lower()
                if (
                    address is not None
                    and isinstance(of, str)
                    and rid in journeys.own_row_ids(keys, of, address)
                ):
                    continue  # the connector's own row, where it created it
                if not _created_after(row.get(created_on) if created_on else None, seen):
                    changed = _moment(row.get(modified_on)) if modified_on else None
                    if rid and changed is not None:
                        edited[rid] = max(changed, edited.get(rid, changed))
                    else:
                        # No id to ask its history of, or no time to know the history is whole.
                        changes.recheck = True
            if body.get("@odata.nextLink"):
                url = self._checked_link(body["@odata.nextLink"])
                continue
            if not body.get("@odata.deltaLink"):
                raise _DeltaRefused("a delta without its next link")
            changes.link = self._checked_link(body["@odata.deltaLink"])
            if edited and not changes.recheck:
                # Where each edited row was before (its audit history): the contacts there are
                # the only ones its edit can have changed. Unknown: every contact is checked.
                earlier = self._earlier_addresses(edited)
                if earlier is None:
                    changes.recheck = True
                else:
                    changes.addresses |= earlier
            return changes

    def _earlier_addresses(self, edited: Mapping[str, datetime]) -> set[str] | None:
        """Every address (:func:`journeys.address_key`) the consent rows ``edited`` (id -> its
        modifiedon in the delta) held before an edit, from their audit history
        (RetrieveRecordChangeHistory, "Retrieve the history of audited data changes": each
        audited update's OldValue); None where that history cannot be complete: auditing off for
        the environment, the consent table or its address column, the history unreadable (the
        application user lacks prvReadRecordAuditHistory) or paged, or a row's history without an
        update as new as its modifiedon. Dataverse may show an audit row late ("Audit logs may
        show up with a delay", as they are kept in its log storage), while the delta shows the
        edit at once and its link moves past it: a history read too early would lose the address
        the row left, for good."""
        if not self._addresses_audited():
            return None
        value = self._consent_change_wire()["msdynmkt_contactpointvalue"]
        found: set[str] = set()
        for _row_id, details in self._audit_histories(edited):
            if details is None:
                return None
            for detail in details:
                old = detail.get("OldValue")
                if isinstance(old, dict) and (address := journeys.address_key(old.get(value))):
                    found.add(address)
        return found

    def _addresses_audited(self) -> bool:
        """Whether Dataverse records every change of a consent row's address: auditing on for
        the environment (organization ``isauditenabled``), the consent table and its
        ``msdynmkt_contactpointvalue`` column (``IsAuditEnabled``), read once. A setting the
        application user may not read counts as off."""
        if self._audited is None:
            try:
                self._audited = self._read_audit_settings()
            except ConnectorError as error:
                if error.rule.fault is not Fault.CONFIG or isinstance(error, sdk.BudgetExhausted):
                    raise
                log.warning("dynamics.audit_settings_unread", connector=self.name, error=str(error)[:200])
                self._audited = False
            if not self._audited:
                log.info(
                    "dynamics.journeys_edits_recheck_every_contact",
                    connector=self.name,
                    reason="the consent rows' addresses are not audited",
                )
        return self._audited

    def _read_audit_settings(self) -> bool:
        return "msdynmkt_contactpointvalue" in self._consent_audited_columns()

    def _consent_audited_columns(self) -> frozenset[str]:
        """The consent table's columns whose every change Dataverse records: auditing on for the
        environment (organization ``isauditenabled``) and the table, and the column's own
        ``IsAuditEnabled``; empty where the environment or the table audits nothing. Read once."""
        if self._audited_columns is not None:
            return self._audited_columns
        api = self.config.api_url
        organization = self._request(
            "GET", f"{api}/organizations", "read organization", params={"$select": "isauditenabled"}
        ).json()
        rows = organization.get("value") or []
        if not rows or rows[0].get("isauditenabled") is not True:
            self._audited_columns = frozenset()
            return self._audited_columns
        definition = f"{api}/EntityDefinitions(LogicalName='{CONSENT_TABLE}')"
        table = self._request(
            "GET", definition, f"EntityDefinitions {CONSENT_TABLE}", params={"$select": "IsAuditEnabled"}
        ).json()
        if not _managed_true(table.get("IsAuditEnabled")):
            self._audited_columns = frozenset()
            return self._audited_columns
        columns = self._request(
            "GET",
            f"{definition}/Attributes",
            f"Attributes {CONSENT_TABLE}",
            params={"$select": "LogicalName,IsAuditEnabled"},
        ).json()
        self._audited_columns = frozenset(
            str(item.get("LogicalName"))
            for item in columns.get("value", [])
            if _managed_true(item.get("IsAuditEnabled"))
        )
        return self._audited_columns

    # -- the connector's own consent rows, read back ---------------------------------------------

    def _own_rows_keys(self) -> tuple[bytes, ...]:
        """The keys the ids of the connector's own rows are derived from, the one new rows get
        first (settings ``own_rows_secret``, ``earlier_own_rows_secrets``). Without an
        ``own_rows_secret`` that is the client secret: said once a run, since rotating it
        without keeping the old one makes every row created before read as the person's no."""
        if self.config.own_rows_secret is None and not self._own_rows_key_warned:
            self._own_rows_key_warned = True
            # Never a key itself: the setting's name only.
            log.warning(
                "dynamics.own_rows_secret_unset",
                connector=self.name,
                advice="own-row ids use client_secret: set own_rows_secret, or list the old "
                "client secret in earlier_own_rows_secrets when rotating it",
            )
        return self.config.own_rows_keys

    def _own_rows(self, rows: Sequence[Mapping[str, Any]], wire: Mapping[str, str]) -> set[int]:
        """The positions of ``rows`` (a page of consent rows) that are the connector's own write
        (journeys.py), left out of the read: never the person's choice.

        * A row the connector created that nobody has changed since (:func:`journeys.own_untouched`).
        * A row the connector created that someone else has changed since, where only what
          surrounds the value changed: still Opted out, at the address and purpose its id was
          derived from (:func:`journeys.own_value_kept`), and its audit history (complete: as new
          as its ``modifiedon``) shows no update of its value nor of its contact point type or
          consent type (``journeys.VALUE_COLUMNS``). A marketer changing its source, its reason
          description or its owner, or deactivating it, leaves the no consentsync wrote, not a no
          of the person. Where that history cannot tell (``msdynmkt_value`` not audited, the
          history unreadable, paged or behind the row), the row is read as any row: a value set
          Opted in and then Opted out again by the person (their preference center) would look
          the same, and their no must not be lost."""
        out = {index for index, row in enumerate(rows) if journeys.own_untouched(row, wire)}
        keys = self._own_rows_keys()
        primary = self._entity(CONSENT_TABLE).primary_id
        candidates: dict[str, tuple[int, datetime]] = {}
        for index, row in enumerate(rows):
            if index in out or not journeys.own_value_kept(row, wire, keys, primary):
                continue
            modified = _moment(row.get(wire.get("modifiedon", "modifiedon")))
            rid = str(row.get(primary) or "").lower()
            if modified is not None and rid:
                candidates[rid] = (index, modified)
        if candidates:
            kept = self._value_never_changed({rid: moment for rid, (_, moment) in candidates.items()})
            out |= {candidates[rid][0] for rid in kept}
        return out

    def _value_never_changed(self, rows: Mapping[str, datetime]) -> set[str]:
        """Those of ``rows`` (consent row id -> its modifiedon) whose audit history is whole (not
        paged, holding an update as new as its ``modifiedon``) and shows no update of a column of
        ``journeys.VALUE_COLUMNS``. Empty where the environment does not audit ``msdynmkt_value``."""
        try:
            audited = self._consent_audited_columns()
        except ConnectorError as error:
            if error.rule.fault is not Fault.CONFIG or isinstance(error, sdk.BudgetExhausted):
                raise
            log.warning("dynamics.audit_settings_unread", connector=self.name, error=str(error)[:200])
            self._audited_columns = audited = frozenset()
        if "msdynmkt_value" not in audited:
            log.info(
                "dynamics.own_rows_edited_read",
                connector=self.name,
                rows=len(rows),
                reason="msdynmkt_value is not audited",
            )
            return set()
        return {
            row_id
            for row_id, details in self._audit_histories(rows)
            if details is not None and not any(_changes_value(detail) for detail in details)
        }

    def _audit_histories(
        self, rows: Mapping[str, datetime]
    ) -> Iterator[tuple[str, list[dict[str, Any]] | None]]:
        """Each of ``rows`` (consent row id -> its modifiedon) with the details of its audit
        history (RetrieveRecordChangeHistory, in ``$batch`` calls), or None where that history is
        not whole: unread (the application user lacks prvReadRecordAuditHistory), paged, not
        answered, or without an update as new as the row's modifiedon (Dataverse may show an
        audit row late: "Audit logs may show up with a delay", as they are kept in its log
        storage, while the delta shows the edit at once)."""
        entity = self._entity(CONSENT_TABLE)
        pending = sorted(rows)
        while pending:
            chunk, pending = pending[: self.config.batch_size], pending[self.config.batch_size :]
            parts = []
            for row_id in chunk:
                target = quote(f"{{'@odata.id':'{entity.entity_set}({row_id})'}}", safe="")
                url = f"{self.config.api_url}/RetrieveRecordChangeHistory(Target=@target)?@target={target}"
                parts.append(PartRequest("GET", url))
            answers = self._batch(parts, f"$batch reading the audit history of {len(parts)} rows")
            for position, row_id in enumerate(chunk):
                if position >= len(answers):
                    yield row_id, None
                    continue
                answer = answers[position]
                history = answer.body.get("AuditDetailCollection") if isinstance(answer.body, dict) else None
                if answer.status >= 300 or not isinstance(history, dict) or history.get("MoreRecords"):
                    log.warning(
                        "dynamics.audit_history_unread",
                        connector=self.name,
                        status=answer.status,
                        code=answer.error[0] if answer.status >= 300 else None,
                    )
                    yield row_id, None
                    continue
                details = [d for d in history.get("AuditDetails") or [] if isinstance(d, dict)]
                if not _holds_update_since(details, rows[row_id]):
                    log.info("dynamics.audit_history_behind", connector=self.name, row=row_id)
                    yield row_id, None
                    continue
                yield row_id, details

    def _contacts_at(self, table: _TableRead, addresses: Collection[str]) -> Iterator[sdk.CrmRecord]:
        """The live contacts holding one of ``addresses`` (as :func:`journeys.address_key` gives
        them: Dataverse compares text without regard to case) in any of the recipient fields
        (``journeys_email_fields``), read in long GETs inside ``$batch`` calls."""
        entity, wire = table.entity, table.wire
        terms = [
            f"{wire[field]} eq {odata_literal(address)}"
            for address in sorted(addresses)
            for field in self.config.journeys_email_fields
        ]
        urls = self._query_urls(entity, list(wire.values()), "", terms)
        for row in self._get_in_batches(urls, f"read {entity.entity_set} by address"):
            if _wanted(row, wire, table.filters) and table.keeps(row):
                record = table.record(row)
                if not record.deleted:  # merged away: nothing of it changed
                    yield record

    def _with_consent_rows(
        self, page: list[sdk.CrmRecord], purposes: Mapping[str, str]
    ) -> Iterator[sdk.CrmRecord]:
        """``page`` with each contact's purpose fields: true where every address it holds in the
        recipient fields (``journeys_email_fields``) has a consent row for the purpose, or where
        it holds none; empty where one of them has none (Journeys checks consent per address:
        a no pushed then creates the missing rows)."""
        live = [record for record in page if not record.deleted]
        addresses = {key for record in live for key in self._addresses(record.fields)}
        rows = self._consent_rows(addresses, set(purposes.values()))
        for record in page:
            if record.deleted:
                yield record
                continue
            keys = self._addresses(record.fields)
            shown = {
                name: True if all((key, purpose) in rows for key in keys) else None
                for name, purpose in purposes.items()
            }
            yield replace(record, fields={**record.fields, **shown})

    def _addresses(self, fields: Mapping[str, Any]) -> dict[str, str]:
        """The addresses a contact's ``fields`` hold in the recipient fields (address key -> the
        address as written, the first field's spelling where two hold one address)."""
        found: dict[str, str] = {}
        for field in self.config.journeys_email_fields:
            written = fields.get(field)
            key = journeys.address_key(written)
            if key is not None and isinstance(written, str):
                found.setdefault(key, written.strip())
        return found

    def _consent_rows(self, addresses: Collection[str], purposes: Collection[str]) -> set[tuple[str, str]]:
        """(address, purpose id) of every purpose-level Email consent row of these addresses
        (:func:`journeys.address_key`) and purposes, whatever its value or state (Journeys enforces
        deactivated rows too). Sent as GET requests inside ``$batch`` calls, whose URLs may be long
        enough for a few hundred addresses each."""
        if not addresses or not purposes:
            return set()
        entity = self._entity(CONSENT_TABLE)
        known = self.describe(CONSENT_TABLE)
        names = ["msdynmkt_contactpointvalue", "msdynmkt_purposeid", "msdynmkt_contactpointtype"]
        topic = "msdynmkt_topicid" in known
        wire = self._wire_names(CONSENT_TABLE, [*names, *(["msdynmkt_topicid"] if topic else [])])
        value, purpose = wire["msdynmkt_contactpointvalue"], wire["msdynmkt_purposeid"]
        terms = [
            f"{wire['msdynmkt_contactpointtype']} eq {journeys.EMAIL_POINT}",
            # A topic's row answers for the topic, not for its purpose.
            *([f"{wire['msdynmkt_topicid']} eq null"] if topic else []),
            "(" + " or ".join(f"{purpose} eq {odata_literal(uuid.UUID(p))}" for p in sorted(purposes)) + ")",
        ]
        alternatives = [f"{value} eq {odata_literal(address)}" for address in sorted(addresses)]
        urls = self._query_urls(entity, [value, purpose], " and ".join(terms), alternatives)
        found = set()
        for row in self._get_in_batches(urls, f"look up {entity.entity_set}"):
            key, of = journeys.address_key(row.get(value)), row.get(purpose)
            if key is not None and isinstance(of, str):
                found.add((key, of.lower()))
        return found

    def _query_urls(
        self, entity: _Entity, select: Sequence[str], base: str, alternatives: Sequence[str]
    ) -> list[str]:
        """GET URLs of ``entity`` reading ``select`` where ``base`` holds and any of
        ``alternatives`` does, as few as hold them all, each at most :data:`_URL_BUDGET`
        characters as sent: percent-encoded, which is how the service counts a URL inside a
        ``$batch`` (an internationalised address grows up to twelvefold)."""

        def url(chosen: Sequence[str]) -> str:
            either = " or ".join(chosen)
            params = {"$select": ",".join(select), "$filter": f"{base} and ({either})" if base else either}
            return f"{self.config.api_url}/{entity.entity_set}?{urlencode(params, quote_via=quote)}"

        # Percent-encoding goes character by character: a URL's length is that of the URL
        # without alternatives plus each alternative's encoded length and the " or "s between.
        empty, joint = len(url([""])), len(quote(" or ", safe=""))
        urls: list[str] = []
        chunk: list[str] = []
        size = empty
        for term in alternatives:
            cost = len(quote(term, safe="")) + (joint if chunk else 0)
            if chunk and size + cost > _URL_BUDGET:
                urls.append(url(chunk))
                chunk, size, cost = [], empty, cost - joint
            chunk.append(term)
            size += cost
        if chunk:
            urls.append(url(chunk))
        return urls

    def _get_in_batches(self, urls: Sequence[str], describe: str) -> list[dict[str, Any]]:
        """The rows every GET of ``urls`` answers (following their next links), the GETs sent
        inside ``$batch`` calls of at most ``batch_size``, each with ``Prefer:
        odata.continue-on-error``: without it the service stops at the first refused GET and
        answers the whole batch with its status ("Execute batch operations using the Web API",
        Handling errors). A refused GET fails the call as its error says (a 429 with its
        Retry-After stops the run cleanly), every address left out of the text."""
        rows: list[dict[str, Any]] = []
        pending = list(urls)
        while pending:
            chunk, pending = pending[: self.config.batch_size], pending[self.config.batch_size :]
            prefer = {"Prefer": f"odata.maxpagesize={self.config.page_size}"}
            parts = [PartRequest("GET", url, None, prefer) for url in chunk]
            answers = self._batch(parts, f"{describe}: $batch of {len(chunk)}")
            for answer in answers:
                if answer.status >= 300:
                    raise _part_error(describe, answer)
                page = answer.body if isinstance(answer.body, dict) else {}
                rows += page.get("value", [])
                if page.get("@odata.nextLink"):
                    pending.append(self._checked_link(page["@odata.nextLink"]))
            if len(answers) < len(chunk):
                raise ConnectorError(
                    f"{describe}: the $batch answered {len(answers)} of {len(chunk)} requests",
                    ErrorRule(Action.RETRY, Fault.TRANSIENT, "batch cut short"),
                )
        return rows

    def _write_journeys(
        self, updates: Sequence[sdk.RecordUpdate], positions: Sequence[int]
    ) -> Iterator[dict[int, sdk.WriteResult]]:
        """Pushes to ``consentsync_journeys_contact``: each purpose field set to true creates that
        purpose's consent row for the contact's address, Opted out, where it has none. Nothing
        else is written: a row is never created for anything but a no (the mapping pushes true
        only for it: ``push: {withdrawn: true}``), never changed, never deleted."""
        answered: dict[int, sdk.WriteResult] = {}
        valid: list[int] = []
        for index in positions:
            item = updates[index]
            if item.action is sdk.WriteAction.DELETE:
                # The record is the contact's view: an erasure's delete is the contact's own.
                # The config refuses delete for this object (erasure_actions_by_object), so
                # none is sent; one that comes anyway changes nothing here.
                answered[index] = sdk.WriteResult(item.record_id, True)
            elif not _GUID.fullmatch(item.record_id):
                answered[index] = sdk.WriteResult(
                    item.record_id, False, "INVALID_ID", "not a Dataverse row id"
                )
            elif any(journeys.purpose_of(n) is None or v is not True for n, v in item.fields.items()):
                answered[index] = sdk.WriteResult(
                    item.record_id,
                    False,
                    "INVALID_FIELD",
                    f"{JOURNEYS_CONTACT} takes purpose_<id> fields set to true (create the "
                    "purpose's consent row, Opted out) and nothing else",
                )
            else:
                valid.append(index)
        if answered:
            yield answered
        most = max((len(updates[index].fields) for index in valid), default=1)
        most *= len(self.config.journeys_email_fields)  # a row per purpose and address
        tally: Counter[str] = Counter()
        try:
            # A pass is as many contacts as one $batch could create every row of: its look-ups
            # (addresses, existing rows) are a few $batch calls whatever ``batch_size`` is, and
            # its creates go in ``batch_size`` parts (``_batch``). Sized on ``batch_size``,
            # 2,000 contacts cost 604 calls where 168 do (docs/connectors/dynamics.md).
            yield from sdk.write_in_passes(
                valid,
                lambda chunk: self._create_rows([updates[i] for i in chunk], tally),
                size=max(1, BATCH_MAX // max(1, most)),
                retries=self.config.write_retries,
                max_wait=self.config.max_rate_limit_wait,
            )
        finally:
            if tally:
                # Once per write, ids and counts only: the rows hold addresses.
                log.info(
                    "dynamics.journeys_rows_created",
                    connector=self.name,
                    created=tally["created"],
                    already_there=tally["already_there"],
                    refused=tally["refused"],
                )

    def _create_rows(
        self, items: Sequence[sdk.RecordUpdate], tally: Counter[str] | None = None
    ) -> list[sdk.WriteResult]:
        """One ``$batch`` for the contacts' addresses (every one they hold in the recipient
        fields, ``journeys_email_fields``; a GET per some hundreds of contacts), one for the
        consent rows they have, then the missing rows' creates, one request per address and
        purpose (``PATCH`` of the row's derived id with ``If-None-Match: *``: a create sent
        again answers 412 and creates nothing) in ``$batch`` calls of ``batch_size``. Counts go
        into ``tally``."""
        addresses = self._contact_addresses([item.record_id for item in items])
        wanted: dict[tuple[str, str], str] = {}  # (address key, purpose) -> the address as written
        for item in items:
            # No address (or the contact is gone): nothing to create.
            for key, written in addresses.get(item.record_id.lower(), {}).items():
                for name in item.fields:
                    purpose = journeys.purpose_of(name)
                    assert purpose is not None
                    wanted.setdefault((key, purpose), written)
        existing = self._consent_rows({key for key, _ in wanted}, {purpose for _, purpose in wanted})
        missing = [pair for pair in wanted if pair not in existing]
        answers: dict[tuple[str, str], sdk.WriteResult] = {}
        if missing:
            answers = self._send_creates(missing, wanted, tally)
        results = []
        for item in items:
            keys = addresses.get(item.record_id.lower(), {})
            failed = [
                answers[pair]
                for key in keys
                for name in item.fields
                if (pair := (key, str(journeys.purpose_of(name)))) in answers and not answers[pair].ok
            ]
            done = sdk.WriteResult(item.record_id, True)
            results.append(replace(failed[0], record_id=item.record_id) if failed else done)
        return results

    def _contact_addresses(self, record_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Contact id -> the addresses it holds in the recipient fields (:meth:`_addresses`); a
        contact that no longer exists is left out."""
        entity = self._entity("contact")
        ids = sorted({record_id.lower() for record_id in record_ids})
        terms = [f"{entity.primary_id} eq {i}" for i in ids]
        fields = self.config.journeys_email_fields
        wire = self._wire_names("contact", list(fields))  # checked against the table's columns
        urls = self._query_urls(entity, [entity.primary_id, *wire.values()], "", terms)
        return {
            str(row[entity.primary_id]).lower(): self._addresses({f: row.get(wire[f]) for f in fields})
            for row in self._get_in_batches(urls, f"read {entity.entity_set}")
        }

    def _send_creates(
        self,
        missing: Sequence[tuple[str, str]],
        written: Mapping[tuple[str, str], str],
        tally: Counter[str] | None = None,
    ) -> dict[tuple[str, str], sdk.WriteResult]:
        """Creates the row of each (address key, purpose) of ``missing`` under its derived id. An
        id that holds a row already holds this pair's (a create sent again) or a row someone
        moved to another address (the id is the address it was created for): read to tell, the
        second is created under the pair's next id (:data:`journeys.GENERATIONS`)."""
        entity = self._entity(CONSENT_TABLE)
        purpose_set = self._entity("msdynmkt_purpose").entity_set
        # Always the current key: the earlier ones only recognise rows made before a rotation.
        key = self._own_rows_keys()[0]
        out: dict[tuple[str, str], sdk.WriteResult] = {}
        created = 0
        todo = list(missing)
        for generation in range(journeys.GENERATIONS):
            ids = {pair: journeys.row_id(key, pair[1], pair[0], generation) for pair in todo}
            parts = [
                PartRequest(
                    "PATCH",
                    f"{self.config.api_url}/{entity.entity_set}({ids[pair]})",
                    journeys.new_row(written[pair], pair[1], purpose_set),
                    {"If-None-Match": "*"},  # create only: a row with this id is not changed
                )
                for pair in todo
            ]
            answers = self._batch(parts, f"$batch creating {len(parts)} {entity.entity_set}")
            taken: list[tuple[str, str]] = []
            for position, pair in enumerate(todo):
                if position >= len(answers):
                    out[pair] = sdk.WriteResult(ids[pair], False, "NOT_EXECUTED", "not executed", True)
                    continue
                answer = answers[position]
                code, _message = answer.error
                if answer.status < 300:
                    created += 1
                    out[pair] = sdk.WriteResult(ids[pair], True)
                elif code == _KEY_TAKEN:
                    out[pair] = sdk.WriteResult(ids[pair], True)  # an alternate key: a row is there
                elif answer.status == 412 or code in _EXISTS:
                    out[pair] = sdk.WriteResult(ids[pair], True)  # there already (a create re-sent)
                    taken.append(pair)
                else:
                    out[pair] = _part_result(ids[pair], answer)
            held = self._row_pairs([ids[pair] for pair in taken]) if taken else {}
            todo = [pair for pair in taken if held.get(ids[pair], pair) != pair]  # moved away
            if not todo:
                break
        for pair in todo:
            out[pair] = sdk.WriteResult(
                out[pair].record_id, False, "ROW_IDS_TAKEN", "every id of the row is held by a moved row"
            )
        self.rows_created += created
        if tally is not None:  # logged once per write (``_write_journeys``)
            tally["created"] += created
            tally["already_there"] += sum(1 for r in out.values() if r.ok) - created
            tally["refused"] += sum(1 for r in out.values() if not r.ok)
        return out

    def _row_pairs(self, row_ids: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        """Consent row id -> (address key, purpose id) of the rows there are under ``row_ids``."""
        entity = self._entity(CONSENT_TABLE)
        wire = self._consent_change_wire()
        value, purpose = wire["msdynmkt_contactpointvalue"], wire["msdynmkt_purposeid"]
        select = f"$select={entity.primary_id},{value},{purpose}"
        url = f"{self.config.api_url}/{entity.entity_set}"
        parts = [PartRequest("GET", f"{url}({row_id})?{select}") for row_id in row_ids]
        answers = self._batch(parts, f"$batch reading {len(parts)} {entity.entity_set}")
        held: dict[str, tuple[str | None, str | None]] = {}
        for row_id, answer in zip(row_ids, answers, strict=False):
            row = answer.body if answer.status < 300 and isinstance(answer.body, dict) else None
            if row is not None:
                of = row.get(purpose)
                held[row_id] = (
                    journeys.address_key(row.get(value)),
                    of.lower() if isinstance(of, str) else None,
                )
        return held

    def irreversible(self, update: sdk.RecordUpdate) -> set[str]:
        """A consent row the connector creates is not undone by it (it never deletes one, nor
        writes Opted in): the engine writes it only for an evidenced no."""
        if update.object_type == JOURNEYS_CONTACT and update.action is sdk.WriteAction.UPDATE:
            return set(update.fields)
        return super().irreversible(update)

    # -- writing -------------------------------------------------------------------------------

    def write_batches(self, updates: Sequence[sdk.RecordUpdate]) -> Iterator[dict[int, sdk.WriteResult]]:
        """One ``$batch`` per yield: its answers as it returns. Requests refused with a transient
        error are sent again (``write_retries`` times) in later batches and answered when those
        return; the rest of their batch is answered at once. Pushes to
        ``consentsync_journeys_contact`` (consent rows to create) go last, so that an erasure's
        anonymise of the same contact is written first.

        An update of a row changed since this run read it (412, see :meth:`_write_batch`) is
        answered as worth another try, but not sent again in this run: it stays pending for the
        next, whose read hands the change over first, so the engine decides the write again on
        it (superseded where it no longer holds) instead of overwriting it unseen."""
        refused: dict[int, sdk.WriteResult] = {}
        pending: list[int] = []
        created: list[int] = []
        for index, item in enumerate(updates):
            if item.object_type == JOURNEYS_CONTACT:
                created.append(index)  # after the rest: an erasure's anonymise goes first
            elif not _GUID.fullmatch(item.record_id):
                refused[index] = sdk.WriteResult(
                    item.record_id, False, "INVALID_ID", "not a Dataverse row id"
                )
            else:
                pending.append(index)
        if refused:
            yield refused
        for answered in sdk.write_in_passes(
            pending,
            lambda chunk: self._write_batch([updates[i] for i in chunk]),
            size=self.config.batch_size,
            retries=self.config.write_retries,
            max_wait=self.config.max_rate_limit_wait,
        ):
            # Kept out of this run's passes (not retryable there), pending for the next run.
            yield {
                index: replace(result, retryable=True) if result.error_code == CHANGED_SINCE_READ else result
                for index, result in answered.items()
            }
        if created:
            yield from self._write_journeys(updates, created)

    def _write_batch(self, updates: Sequence[sdk.RecordUpdate]) -> list[sdk.WriteResult]:
        """One ``$batch`` of the updates (``PATCH``) and deletes, one result each.

        An update goes with ``If-Match``: the row's ETag (``@odata.etag``) as this run's read
        handed the row over, where the table has optimistic concurrency ("Perform conditional
        operations using the Web API", Apply optimistic concurrency), else ``*`` (update only: a
        PATCH without it creates a missing row). A 412 then means the row changed since that
        read (a person's opt-in made in Journeys, an agent's tick): it is not overwritten. Where
        the row already holds every value written (a write of this run that a timed-out batch
        executed, someone else's identical change) the update is done; otherwise it is answered
        :data:`CHANGED_SINCE_READ`, for the next run to read the change first."""
        parts = []
        guarded: set[int] = set()
        for position, item in enumerate(updates):
            entity = self._entity(item.object_type)
            url = f"{self.config.api_url}/{entity.entity_set}({item.record_id.lower()})"
            if item.action is sdk.WriteAction.DELETE:
                parts.append(PartRequest("DELETE", url))
                continue
            for name in item.fields:
                _check_name(name, "column")
            etag = self._etag(entity, item.record_id)
            if etag is not None:
                guarded.add(position)
            # ``*``: update only (a PATCH without If-Match creates a missing row); an ETag also
            # only the row as it was read.
            parts.append(PartRequest("PATCH", url, dict(item.fields), {"If-Match": etag or "*"}))
        answers = self._batch(parts, f"$batch of {len(parts)}")
        results = []
        not_found: list[int] = []
        changed: list[int] = []
        for position, item in enumerate(updates):
            if position >= len(answers):
                # Not executed (the service stopped at an earlier failure): safe to send again.
                results.append(sdk.WriteResult(item.record_id, False, "NOT_EXECUTED", "not executed", True))
                continue
            answer = answers[position]
            if item.action is sdk.WriteAction.DELETE and answer.status == 404:
                # Already gone (deleted in Dataverse, or by a delete sent before a crash).
                answer = PartResponse(204, None, answer.headers)
            elif answer.status == 404:
                not_found.append(position)
            elif answer.status == 412 and position in guarded and answer.error[0] != _KEY_TAKEN:
                changed.append(position)  # (an alternate key's refusal is the value's fault)
            if position in guarded and answer.status < 300:
                # Written: its ETag moves on, and a later write of this run goes unguarded rather
                # than with an ETag that no longer is the row's. A refusal wrote nothing and keeps
                # it: sent again (a 429 inside the batch, a lock, a 5xx), the row still goes with
                # the ETag read, and a change made since that read answers 412, not overwritten.
                self._forget_etag(self._entity(item.object_type), item.record_id)
            results.append(_part_result(item.record_id, answer))
        if changed:
            holding = self._holding([updates[position] for position in changed])
            for position in changed:
                item = updates[position]
                if (item.object_type, item.record_id.lower()) in holding:
                    results[position] = sdk.WriteResult(item.record_id, True)
                    self._forget_etag(self._entity(item.object_type), item.record_id)  # done, as a 2xx
                else:
                    # The ETag read stays: a later write of the row in this run is refused too.
                    results[position] = sdk.WriteResult(
                        item.record_id,
                        False,
                        CHANGED_SINCE_READ,
                        "the row changed in Dynamics after this run read it: not overwritten; the "
                        "next run reads the change and decides the write again",
                    )
            log.info(
                "dynamics.changed_since_read",
                connector=self.name,
                rows=len(changed),
                already_holding=len(holding),
            )
        if not_found:
            gone = self._gone([updates[position] for position in not_found])
            for position in not_found:
                item = updates[position]
                if (item.object_type, item.record_id.lower()) in gone:
                    # No record under this id: the engine marks it gone instead of holding it.
                    refused = results[position]
                    results[position] = replace(refused, retryable=False, retry_after=None, gone=True)
        return results

    def _holding(self, items: Sequence[sdk.RecordUpdate]) -> set[tuple[str, str]]:
        """(object, id) of the ``items`` (updates) whose row holds every value they write now, by
        a GET of those columns in one ``$batch``; none where the check could not be made, nor
        for a value not read back as written (a lookup bound with ``@odata.bind``)."""
        parts = []
        for item in items:
            entity = self._entity(item.object_type)
            url = f"{self.config.api_url}/{entity.entity_set}({item.record_id.lower()})"
            columns = ",".join(name for name in item.fields if "@" not in name) or entity.primary_id
            parts.append(PartRequest("GET", f"{url}?$select={columns}"))
        try:
            answers = self._batch(parts, f"$batch reading {len(parts)} rows changed since the read")
        except ConnectorError as error:
            log.warning("dynamics.changed_row_unread", connector=self.name, error=str(error)[:200])
            return set()
        return {
            (item.object_type, item.record_id.lower())
            for item, answer in zip(items, answers, strict=False)
            if answer.status < 300
            and isinstance(answer.body, dict)
            and all("@" not in name and answer.body.get(name) == value for name, value in item.fields.items())
        }

    def _gone(self, items: Sequence[sdk.RecordUpdate]) -> set[tuple[str, str]]:
        """(object, id) of the ``items`` whose record a GET answers 404 too. An update's 404 alone
        does not say the record is gone: a lookup it binds to a row that does not exist answers
        404 as well. Nothing is said gone where the check could not be made."""
        parts = []
        for item in items:
            entity = self._entity(item.object_type)
            url = f"{self.config.api_url}/{entity.entity_set}({item.record_id.lower()})"
            parts.append(PartRequest("GET", f"{url}?$select={entity.primary_id}"))
        try:
            answers = self._batch(parts, f"$batch checking {len(parts)} rows answered 404")
        except ConnectorError as error:
            log.warning("dynamics.gone_check_failed", connector=self.name, error=str(error))
            return set()
        return {
            (item.object_type, item.record_id.lower())
            for item, answer in zip(items, answers, strict=False)
            # 0x80040217: "... With Id = ... Does Not Exist" (not a segment the service lacks).
            if answer.status == 404 and answer.error[0] in (None, _NOT_FOUND)
        }

    def _batch(self, parts: list[PartRequest], describe: str) -> list[PartResponse]:
        """Sends ``parts`` as ``$batch`` calls that go on past a failed part; their answers, in
        order (fewer where the service stopped: the rest was not executed).

        Dataverse runs a batch's requests one after another and answers when the last is done
        ("Execute batch operations using the Web API"), so a batch too large for the call's
        ``timeout`` is executed whole and never answered; sent again whole (the retry policy's
        attempts), it is executed again each time and never answered either. A batch that times
        out is sent again in halves instead, and the run's later batches are held to that size
        (``dynamics.batch_timed_out``); a single request that times out is retried as any call.
        A request executed by the timed-out call and again by its half is written twice, with the
        same values (a write whose row changed since the read then answers 412, see
        :meth:`_write_batch`)."""
        answers: list[PartResponse] = []
        start = 0
        while start < len(parts):
            size = min(len(parts) - start, self._batch_limit)
            chunk = parts[start : start + size]
            said = describe if size == len(parts) else f"{describe} ({size} of them)"
            try:
                answered = self._post_batch(chunk, said, halve=size > 1)
            except _BatchTimedOut:
                self._batch_limit = max(1, size // 2)
                log.warning(
                    "dynamics.batch_timed_out",
                    connector=self.name,
                    requests=size,
                    next_size=self._batch_limit,
                )
                continue
            answers += answered
            if len(answered) < len(chunk):
                return answers  # the service stopped: nothing after it was executed
            start += size
        return answers

    def _post_batch(self, parts: Sequence[PartRequest], describe: str, *, halve: bool) -> list[PartResponse]:
        """One ``$batch`` call of ``parts`` under the retry policy, but for a timeout where
        ``halve``: :class:`_BatchTimedOut`, for :meth:`_batch` to send the parts again in halves.
        A part refused with a Retry-After given as a date carries the batch answer's Date."""
        content_type, body = encode(parts)
        url = f"{self.config.api_url}/$batch"
        headers = {"Content-Type": content_type, "Prefer": "odata.continue-on-error"}
        if not halve:
            response = self._request("POST", url, describe, headers=headers, data=body)
        else:

            def attempt() -> requests.Response:
                try:
                    return self.api.send(
                        "POST", url, describe=describe, headers=headers, data=body, retry=False
                    )
                except ConnectorError as error:
                    if _timed_out(error):
                        raise _BatchTimedOut(str(error)) from None
                    raise

            response = sdk.call(
                attempt, policy=self.api.policy, refresh_session=self._forget_token, describe=describe
            )
        date = response.headers.get("Date")
        return [
            replace(answer, headers={**answer.headers, "date": date})
            if date and "retry-after" in answer.headers and "date" not in answer.headers
            else answer
            for answer in decode(response.headers.get("Content-Type", ""), response.content)
        ]

    def close(self) -> None:
        self.api.close()


# -- helpers -----------------------------------------------------------------------------------


def _check_name(name: str, what: str) -> None:
    if not _LOGICAL_NAME.fullmatch(name):
        raise ConnectorError(
            f"{name!r} is not a Dataverse {what} logical name (lower-case letters, digits and _)",
            ErrorRule(Action.FAIL, Fault.CONFIG, f"bad {what} name"),
        )


def _managed_true(value: Any) -> bool:
    """Whether a BooleanManagedProperty of the metadata (``{"Value": true, ...}``) is on."""
    return isinstance(value, dict) and value.get("Value") is True


def _wanted(row: Mapping[str, Any], wire: Mapping[str, str], filters: Mapping[str, list[Any]]) -> bool:
    # Change tracking takes no $filter: the record filters are applied here instead.
    return all(row.get(wire[column]) in allowed for column, allowed in filters.items())


def _record(
    entity: _Entity, row: Mapping[str, Any], wire: Mapping[str, str], along: Collection[str] = ()
) -> sdk.CrmRecord:
    fields = {name: row.get(prop) for name, prop in wire.items() if name not in along}
    modified = row.get("modifiedon")
    if not isinstance(modified, str):
        raise ConnectorError(
            f"{entity.entity_set} row {row.get(entity.primary_id)} has no modifiedon",
            ErrorRule(Action.FAIL, Fault.TRANSIENT, "row without modifiedon"),
        )
    record_id, stamp = str(row[entity.primary_id]), parse_dataverse_datetime(modified)
    # createdon as modifiedon: UTC (the Web API answers a User Local column in UTC), whole seconds.
    # None where the row does not carry it (a delta link that does not select it).
    created = _moment(row.get(CREATED_COLUMN))
    if row.get("merged") is True:
        # Merged away: the subordinate row stays, deactivated, naming the survivor in masterid.
        master = row.get("_masterid_value")
        return sdk.CrmRecord(
            entity.logical_name,
            record_id,
            stamp,
            fields,
            True,
            str(master) if master else None,
            created_at=created,
        )
    return sdk.CrmRecord(entity.logical_name, record_id, stamp, fields, created_at=created)


def _deleted(entity: _Entity, row: Mapping[str, Any]) -> sdk.CrmRecord:
    """A ``$deletedEntity`` row (``{"id", "reason": "deleted"}``): stamped with the time it was
    read, the latest its deletion can have happened."""
    now = datetime.now(UTC).replace(microsecond=0)
    return sdk.CrmRecord(entity.logical_name, str(row.get("id") or ""), now, {}, deleted=True)


def _error_of(response: requests.Response) -> tuple[str | None, str]:
    """(code, message) of a refused answer, every address left out of the message (a refused
    look-up may quote its $filter). A ``$batch`` the service stopped at a failed request (sent
    without ``Prefer: odata.continue-on-error``) answers with that request's status and its
    answer as the one part of a multipart body: its error is that part's."""
    kind = response.headers.get("Content-Type", "")
    if kind.lower().startswith("multipart/"):
        try:
            failed = [part for part in decode(kind, response.content) if part.status >= 300]
        except ValueError:
            failed = []
        if failed:
            code, message = failed[0].error
            return code, str(journeys.redacted(message))[:300]
    try:
        code, message = PartResponse(response.status_code, response.json(), {}).error
    except ValueError:
        code, message = None, response.text
    return code, str(journeys.redacted(message))[:300]


def _expired_link(response: requests.Response) -> bool:
    """Whether a refused delta read says its link expired (ExpiredVersionStamp), whatever its
    status."""
    if response.status_code < 400:
        return False
    code, message = _error_of(response)
    return (code or "").lower() == _EXPIRED_VERSION_STAMP or _EXPIRED_MESSAGE in message.lower()


def _timed_out(error: ConnectorError) -> bool:
    """Whether ``error`` is a call sent that got no answer in time (a read timeout: the service
    may be executing it). A connect timeout sent nothing: it is retried as any call."""
    return (
        error.rule.reason == "timed out" and error.rule.status is None and "ConnectTimeout" not in str(error)
    )


def _classified(describe: str, response: requests.Response) -> ConnectorError:
    return sdk.response_error(describe, response, ERRORS, *_error_of(response))


def _part_error(describe: str, answer: PartResponse) -> ConnectorError:
    """A request of a ``$batch`` refused, as the error the table says (with its Retry-After; a
    date is read against the batch answer's Date, which :meth:`DynamicsConnector._post_batch`
    gives the part)."""
    code, message = answer.error
    rule = ERRORS.classify(answer.status, code)
    wait = sdk.retry_after_value(answer.headers.get("retry-after"), answer.headers.get("date"))
    text = str(journeys.redacted(message))[:300]  # a refused look-up may quote its $filter
    return ConnectorError(f"{describe}: {answer.status} {code or ''} {text}", rule, retry_after=wait)


def _part_result(record_id: str, answer: PartResponse) -> sdk.WriteResult:
    if answer.status < 300:
        return sdk.WriteResult(record_id, True)
    code, message = answer.error
    rule = ERRORS.classify(answer.status, code)
    retryable = rule.action in (Action.RETRY, Action.RATE_LIMITED, Action.REFRESH_TOKEN)
    # A request of the batch refused by service protection carries its own Retry-After (the
    # part's headers, with the batch answer's Date): resent before then, it is refused again and
    # the throttle runs on.
    date = answer.headers.get("date")
    wait = sdk.retry_after_value(answer.headers.get("retry-after"), date) if retryable else None
    # Redacted whole, then cut: a cut address would keep its first half.
    text = str(journeys.redacted(message))[:500]
    return sdk.WriteResult(record_id, False, code or str(answer.status), text, retryable, wait)


def _endpoint_kind(url: str, method: str) -> str:
    if "/oauth2/" in url or url.endswith("/token"):
        return "token"
    if "/$batch" in url:
        return "batch"
    if "/WhoAmI" in url:
        return "whoami"
    if "/EntityDefinitions" in url:
        return "metadata"
    if "deltatoken" in url:
        return "delta"
    return "query" if method == "GET" else "other"


def _not_lapsing(token: tuple[str, float]) -> bool:
    return time.monotonic() < token[1] - 60


__all__ = ["ERRORS", "DynamicsConnector", "odata_literal", "parse_dataverse_datetime"]
