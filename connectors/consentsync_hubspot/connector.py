"""HubSpot, through requests: CRM v3 contacts and the communication-preferences API.

Reading: contacts search on ``lastmodifieddate`` with an (updated, id) cursor. HubSpot sorts a
search by one property only and pages with an offset (``after``) that stops at 10,000 results
and shifts when a record changes mid-read, so every page is a fresh search from the cursor
(keyset paging: the filter moves, ``after`` is never used). Records sharing a
``lastmodifieddate`` are ordered by id here; a page whose records all share one timestamp is
finished by a search on that timestamp sorted by ``hs_object_id``. Subscription statuses come
from v4 batch status reads, one per page (without the Enterprise-only batch scope, one read
per address: ``_per_address``; an address HubSpot never answers, every retry over, has its
contact read ``UNREAD``, quarantined by the engine, and the page passes), as virtual
fields ``subscription_<id>``,
``subscription_<id>_legal_basis`` and ``subscription_<id>_timestamp``. A contact opted out of all
email (``hs_email_optout``, which HubSpot keeps apart from the subscription statuses) reads
UNSUBSCRIBED for every subscription, as of its opt-out (v4 "wide" status reads, for those
contacts only). On a portal with business units an opt-out of all of one unit's email
(``BUSINESS_UNIT_WIDE``) is a no for that unit's subscription types only (each definition's
``businessUnitId``); where the mapping names a type of a unit other than the default one, the
statuses are read per unit and every contact's wide statuses are read.
HubSpot keys those statuses by address, not by contact: a user changing a contact's address
hides the old address's no. Each page's ``email`` history (batch read, ``propertiesWithHistory``)
names the addresses a contact had since the read's lower bound; a no among their statuses that
the contact no longer shows, and that no later yes under the new address outranks, comes as the
record's ``earlier_values``; so does a no under one of its secondary addresses
(``hs_additional_emails``: HubSpot's merge keeps the other contact's there), given while the
contact had it (that property's history). A read of every contact again that names what the
reads before it passed (``Cursor.history_from``) reads no address left before that bound:
history a read passed is not acted on twice. An archived contact's history comes with its last values.

Writing: properties by batch update (per-record results from the 207 answer; a batch HubSpot
rejects whole is retried record by record), subscription statuses by v3 subscribe/unsubscribe,
each with a legal basis and its explanation (a GDPR portal requires them of both). consentsync
never resubscribes a contact who unsubscribed in HubSpot, by its own policy (HubSpot's v4 could:
``RESUBSCRIBE_OCCURRED``; a resubscribe must come from the person, through HubSpot's preferences
page or a HubSpot form): v3 subscribe declines it, a permanent per-record outcome
(``HUBSPOT_REFUSES_RESUBSCRIBE``), never retried. The ``delete`` erasure
action permanently deletes each contact (``POST .../gdpr-delete``, one call a contact: not
restorable, unlike an archive, which HubSpot keeps in its recycle bin for 90 days); setting
``delete_mode: archive`` archives instead (``batch/archive``).

A write to a contact deleted (a read of its id answers 404) or merged away since the read (the
read answers the merged contact, under its new id) is answered ``gone``; the deletion listing
then names the merge and its survivor.

Limits: the ``X-HubSpot-RateLimit-*`` headers keep a daily budget (stopping with a reserve
left) and pace calls to the rolling ten-second window (``-Remaining`` at 0: wait out
``-Interval-Milliseconds``); a 429 ``TEN_SECONDLY_ROLLING`` (or of a policy not known) without
Retry-After is waited out for that window (ten seconds where the answer does not say), a 429 of
the search limit (``SECONDLY``) for a second, and a 429 DAILY stops the run cleanly.
"""

from __future__ import annotations

import heapq
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import requests
import structlog

from consentsync import sdk
from consentsync.sdk import Action, ConnectorError, ErrorRule, Fault
from consentsync_hubspot.settings import HubSpotSettings

log = structlog.get_logger("consentsync.hubspot")

#: A v4 batch status read that answered 207 with error entries, or left addresses it was asked
#: about without a result: read again; given up, their contacts read ``UNREAD`` (quarantined),
#: or, where the entries name no address asked about, the run fails and the next one reads it
#: again (the cursor never passes a contact whose statuses were not read unquarantined).
PARTIAL_READ = ErrorRule(
    Action.RETRY, Fault.TRANSIENT, "subscription statuses not answered for every address", 207, "PARTIAL_READ"
)

ERRORS = sdk.ErrorTable(
    [
        ErrorRule(Action.REFRESH_TOKEN, Fault.TRANSIENT, "token rotated", 401, "TOKEN_ROTATED"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "private app token refused", 401, credentials=True),
        ErrorRule(Action.FAIL, Fault.CONFIG, "private app lacks a scope", 403, "MISSING_SCOPES"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "request refused", 403),
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "daily API limit reached", 429, "DAILY"),
        ErrorRule(
            Action.RATE_LIMITED, Fault.LIMIT, "ten-second API limit reached", 429, "TEN_SECONDLY_ROLLING"
        ),
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "search API limit reached", 429, "SECONDLY"),
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "API rate limit reached", 429),
        ErrorRule(Action.FAIL, Fault.CONFIG, "request rejected", 400, "VALIDATION_ERROR"),
        # Per record: in a 207 answer (retry next run) or a v3 409 (not retried within the call).
        ErrorRule(Action.RETRY, Fault.TRANSIENT, "record being modified", code="CONFLICT"),
        ErrorRule(Action.SKIP, Fault.TRANSIENT, "record being modified", 409, "CONFLICT"),
        ErrorRule(Action.SKIP, Fault.DATA, "record not found", code="OBJECT_NOT_FOUND"),
        PARTIAL_READ,
    ]
)

REFUSES_RESUBSCRIBE = "HUBSPOT_REFUSES_RESUBSCRIBE"
SUBSCRIPTION_STATES = ("SUBSCRIBED", "UNSUBSCRIBED", "NOT_SPECIFIED")
#: The ``legalBasis`` values of the communication-preferences API (HubSpot's documented list).
V3_LEGAL_BASES = (
    "CONSENT_WITH_NOTICE",
    "LEGITIMATE_INTEREST_CLIENT",
    "LEGITIMATE_INTEREST_OTHER",
    "LEGITIMATE_INTEREST_PQL",
    "NON_GDPR",
    "PERFORMANCE_OF_CONTRACT",
    "PROCESS_AND_STORE",
)
_VIRTUAL = re.compile(r"^subscription_(?P<id>\d+)(?:_(?P<part>legal_basis|timestamp))?$")
_PROPERTY = re.compile(r"^[a-z][a-z0-9_]*$")
_REFUSAL = re.compile(r"(?i)unsubscribed|opted out|cannot be resubscribed|resubscribe")
# HubSpot's v3 answers a change to the state already held with 400 VALIDATION_ERROR "<email> is
# already subscribed to subscription <id>" (or "is already unsubscribed from ..."): done, but
# only for the state that was asked for. A subscribe refused with "already unsubscribed" is a
# refusal; taken as done, the ledger would believe HubSpot holds a yes it never accepted.
_ALREADY = {
    "SUBSCRIBED": re.compile(r"(?i)\balready subscribed\b"),
    "UNSUBSCRIBED": re.compile(r"(?i)\balready unsubscribed\b"),
}
#: The 429 policies (``policyName``) HubSpot names: its usage guidelines limit every app to a
#: number of calls per rolling ten seconds (``TEN_SECONDLY_ROLLING``, the window the
#: ``X-HubSpot-RateLimit-Max`` / ``-Remaining`` / ``-Interval-Milliseconds`` headers describe), the
#: search endpoints to a few calls a second (its 429 says "You have reached your secondly
#: limit."), and the account to a daily allowance (``DAILY``).
DAILY_POLICY = "DAILY"
SEARCH_POLICY = "SECONDLY"
SECONDLY_MESSAGE = "you have reached your secondly limit."
#: How long a rolling window lasts where a 429 does not say (HubSpot's documented ten seconds).
BURST_WINDOW_SECONDS = 10.0
OBJECT = "contacts"
BATCH_READ_LIMIT = 100  # inputs a batch read takes
# Inputs a batch read carrying ``propertiesWithHistory`` takes: HubSpot refuses more with 400
# VALIDATION_ERROR "The maximum number of inputs supported in a batch request for property
# histories is 50" (quoted in https://github.com/activepieces/activepieces/pull/9359 and
# https://github.com/PipedreamHQ/pipedream/pull/8462).
HISTORY_BATCH_LIMIT = 50
#: The business unit HubSpot gives the default "Account" unit (and every subscription type of a
#: portal without the Business Units add-on).
DEFAULT_UNIT = 0
#: The private-app scope HubSpot's v4 batch status reads need (its spec: subscription-status-
#: batch-read): "You must have an Marketing Hub Enterprise subscription to authorize these
#: scopes" (the 2026-03 communication-preferences guide). Without it (a 403 MISSING_SCOPES),
#: statuses are read one address at a time (``GET .../v4/statuses/{email}``, which needs only
#: ``communication_preferences.read``) for the rest of the run.
BATCH_READ_SCOPE = "communication_preferences.statuses.batch.read"
#: A contact's secondary addresses (";"-joined): HubSpot's merge keeps the other contact's
#: address there, and a user may add some. Each keeps its own subscription statuses.
ADDITIONAL_EMAILS = "hs_additional_emails"
#: The end of the span of an address the contact still has.
STILL_HELD = datetime.max.replace(tzinfo=UTC)
MERGED_IDS = "hs_merged_object_ids"  # on the survivor of a merge: the merged-away ids, ";"-joined
# "Unsubscribed from all email": true once the contact opted out of all email (the unsubscribe
# link of a marketing email, a user's "opt out of email"). HubSpot keeps that opt-out apart from
# the subscription statuses (v4 reads it with its own endpoint, as "wide" statuses).
OPTED_OUT_OF_ALL = "hs_email_optout"
#: An address's opt-outs of all email (v4 "wide" statuses, read by ``_wide_unsubscribes``): what
#: each covers (``PORTAL_WIDE``: every subscription type; a business unit's id: that unit's
#: types) -> when it was given (None: not known).
OptOuts = dict[str | int, str | None]
PORTAL_WIDE = "PORTAL_WIDE"
#: What a subscription field reads where HubSpot would not answer the address's statuses (a
#: 207 error entry, or no result, to every attempt of the run; a one-address read it refused):
#: no mapping translates it, so the engine quarantines the contact with a reason naming its id
#: and records the rest of the page. Read NOT_SPECIFIED, the address's no would be lost; failing
#: the page, one address HubSpot never answers would hold every later contact's no, and every
#: push, back for good. Ops re-read the contact with ``consentsync runs retry``
#: (``read_records``).
UNREAD = "UNREAD: HubSpot did not answer this contact's subscription status (retry the record)"
#: An email address anywhere in a text (once NFKC-normalised: a fullwidth "＠" is an "@"), as
#: written or percent-encoded as a URL carries it.
_ADDRESS_IN_TEXT = re.compile(
    r"[^\s@<>()\[\]{},;:\"'`|/\\]+(?:@|%40)[^\s@<>()\[\]{},;:\"'`|/\\]+", re.IGNORECASE
)


def parse_hs_datetime(value: str) -> datetime:
    """``2026-11-23T03:21:24.123Z`` (or epoch milliseconds) to an aware UTC datetime."""
    text = str(value).strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def epoch_ms(moment: datetime) -> str:
    return str(int(moment.astimezone(UTC).timestamp() * 1000))


class HubSpotConnector(sdk.Connector):
    vendor = "hubspot"
    settings_model = HubSpotSettings
    # HubSpot's search index lags writes: a contact created or changed can take a few seconds to
    # appear in search results (HubSpot's CRM search docs), longer under load, imports and
    # workflows. A read from the stored cursor would pass such a contact by for good; five
    # minutes back covers the lag many times over for the cost of re-reading five minutes.
    lookback: ClassVar[timedelta] = timedelta(minutes=5)
    # Since session 50 a contact's opt-out of all email (hs_email_optout) and the v4 "wide"
    # statuses are read beside the subscription statuses: a contact passed by an older version
    # was never read with them (its no stayed unknown), so every contact is read again once.
    # The statuses of the addresses a contact had since the last read are read too (session
    # 55): not a reason to read every contact again. A no hidden that way before the upgrade
    # would become, on every contact at once, an unsubscribe consentsync never undoes: an admin
    # asks for it with a planned `sync --full` (docs/connectors/hubspot.md).
    reading_version: ClassVar[str | None] = "2-email-optout-wide"
    reads_deletions = True  # archived contacts (archivedAt) and merged-away ids
    # POST /crm/v3/objects/contacts/gdpr-delete, one contact a call (delete_mode: gdpr, the
    # default); POST .../batch/archive with delete_mode: archive.
    can_delete = True
    reports_merges = True  # hs_merged_object_ids on the contact that stands (either kind of merge)
    # ``read_records``: a contact quarantined because HubSpot did not answer its statuses
    # (``UNREAD``) is read again on ``consentsync runs retry``.
    can_read_by_id = True

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        self.config = HubSpotSettings.model_validate(dict(settings))
        self.base = self.config.api_url.rstrip("/")
        self.api = sdk.HttpClient.configured(
            self.config,
            self._classified,
            on_response=self._count,
            guard=self._guard,
            headers=lambda: {"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
        )
        self._token = self._read_token()
        self._describes: dict[str, dict[str, sdk.FieldInfo]] = {}
        # Subscription id -> the business unit it belongs to (its definition's businessUnitId).
        self._units: dict[str, int | None] = {}
        self._pace = threading.Lock()
        self._last_search = 0.0
        self._secondly_remaining: int | None = None
        self._secondly_at = 0.0
        # The rolling window of the last answer's X-HubSpot-RateLimit-Remaining and
        # -Interval-Milliseconds: calls left in it, its length (seconds), when it was answered.
        self._window_remaining: int | None = None
        self._window_seconds = BURST_WINDOW_SECONDS
        self._window_at = 0.0
        # The private app lacks BATCH_READ_SCOPE (a 403 MISSING_SCOPES answered a v4 batch
        # status read): statuses are read one address at a time for the rest of the run.
        self._per_address = False

    # -- token ---------------------------------------------------------------------------------

    def _read_token(self) -> str:
        if self.config.access_token:
            return self.config.access_token.strip()
        path = Path(self.config.access_token_file or "")
        try:
            token = path.read_text().strip()
        except OSError as error:
            raise ConnectorError(
                f"{self.name}: cannot read access_token_file {path}: {error.strerror}",
                ErrorRule(Action.FAIL, Fault.CONFIG, "token file unreadable"),
            ) from None
        if not token:
            raise ConnectorError(
                f"{self.name}: access_token_file {path} is empty",
                ErrorRule(Action.FAIL, Fault.CONFIG, "token file empty"),
            )
        return token

    def _token_changed(self) -> bool:
        """Re-reads the token file: True when it now holds another token (it was rotated)."""
        if not self.config.access_token_file:
            return False
        fresh = self._read_token()
        changed = fresh != self._token
        self._token = fresh
        return changed

    # -- calling -------------------------------------------------------------------------------

    def _count(self, response: requests.Response) -> None:
        usage = self.usage
        usage.count(sdk.endpoint_kind(response.request.url or "", _ENDPOINTS))
        headers = response.headers
        daily, left = (
            headers.get("X-HubSpot-RateLimit-Daily"),
            headers.get("X-HubSpot-RateLimit-Daily-Remaining"),
        )
        if daily and left and daily.isdigit() and left.isdigit():
            usage.said(int(daily) - int(left), int(daily))
        secondly = headers.get("X-HubSpot-RateLimit-Secondly-Remaining")
        if secondly and secondly.isdigit():
            self._secondly_remaining, self._secondly_at = int(secondly), time.monotonic()
        remaining = headers.get("X-HubSpot-RateLimit-Remaining")
        if remaining and remaining.isdigit():
            self._window_remaining, self._window_at = int(remaining), time.monotonic()
            self._window_seconds = _window_seconds(response) or BURST_WINDOW_SECONDS

    def _guard(self) -> None:
        """Stops before the budget is spent (per run, and the daily allowance less the reserve)
        and paces calls by the rate-limit headers: the rolling window's (``-Remaining`` at 0:
        wait until the window the answer counted has passed, the latest a slot frees in a
        rolling window), the older secondly ones where HubSpot still sends them, and the search
        rate."""
        self.config.budget.check(self.name, self.usage, calls="HubSpot API")
        if self._window_remaining == 0:
            wait = self._window_seconds - (time.monotonic() - self._window_at)
            if wait > self.config.max_rate_limit_wait:
                # Held to the wait a 429 may cost (max_rate_limit_wait: 0 never sits one out), so
                # that an odd header cannot keep the run asleep: the run stops cleanly, the rest
                # waits for the next one.
                self._window_remaining = None
                raise ConnectorError(
                    f"HubSpot's rate-limit window is spent for {wait:.0f}s, longer than "
                    f"max_rate_limit_wait ({self.config.max_rate_limit_wait:g}s)",
                    ERRORS.classify(429, "TEN_SECONDLY_ROLLING"),
                    retry_after=wait,
                )
            if wait > 0:
                time.sleep(wait)
            self._window_remaining = None
        if self._secondly_remaining == 0:
            wait = 1.0 - (time.monotonic() - self._secondly_at)
            if wait > 0:
                time.sleep(wait)
            self._secondly_remaining = None

    def _pace_search(self) -> None:
        with self._pace:
            gap = 1.0 / self.config.search_requests_per_second
            wait = self._last_search + gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_search = time.monotonic()

    def _request(self, method: str, path: str, *, describe: str, **kwargs: Any) -> requests.Response:
        """One API call under the retry policy; answers the response of a 2xx (207 included)."""
        pace = self._pace_search if path.endswith("/search") else None
        return self.api.send(method, self.base + path, describe=describe, before=pace, **kwargs)

    def _classified(self, describe: str, response: requests.Response) -> ConnectorError:
        body = sdk.json_or_none(response)
        status = response.status_code
        category = str(body.get("category") or "") if isinstance(body, dict) else ""
        # HubSpot's messages may quote the address a call named (a one-address status read, a
        # v3 unsubscribe): masked before anything is cut, so no part of one is kept.
        message = (
            _redacted(str(body.get("message") or ""))[:300]
            if isinstance(body, dict)
            else _redacted(response.text[:1000])[:200]
        )
        if status == 429:
            policy = str(body.get("policyName") or "") if isinstance(body, dict) else ""
            rule = ERRORS.classify(429, policy or None)
            text = f"{describe}: 429 {policy or 'RATE_LIMIT'}: {message}"
            if policy == DAILY_POLICY:
                return sdk.BudgetExhausted(text, rule)
            wait = sdk.retry_after(response)
            return ConnectorError(text, rule, retry_after=_rate_limit_wait(policy, message, response, wait))
        if status == 401:
            if self._token_changed():
                return ConnectorError(f"{describe}: token rotated", ERRORS.classify(401, "TOKEN_ROTATED"))
            where = "access_token_file" if self.config.access_token_file else "access_token"
            return ConnectorError(
                f"{describe}: HubSpot refused the private app token (401 {category}): {message} "
                f"Check the token in {where} (Settings > Integrations > Private apps).",
                ERRORS.classify(401, None),
            )
        if status == 403 and category == "MISSING_SCOPES":
            needed = _required_scopes(body)
            return ConnectorError(
                f"{describe}: the private app lacks the scope(s) {', '.join(needed) or '?'}: {message}",
                ERRORS.classify(403, "MISSING_SCOPES"),
            )
        return ConnectorError(
            f"{describe}: {status} {category} {message}".strip(), ERRORS.classify(status, category)
        )

    # -- the four operations -------------------------------------------------------------------

    def check(self) -> None:
        self._request("GET", f"/crm/v3/objects/{OBJECT}", params={"limit": 1}, describe="list contacts")

    def describe(self, object_type: str) -> dict[str, sdk.FieldInfo]:
        _check_object(object_type)
        if object_type not in self._describes:
            props = self._request(
                "GET", f"/crm/v3/properties/{OBJECT}", describe="contact properties"
            ).json()["results"]
            fields = {
                p["name"]: sdk.FieldInfo(
                    name=p["name"],
                    type=f"{p.get('type')}/{p.get('fieldType')}",
                    updateable=not (p.get("modificationMetadata") or {}).get("readOnlyValue", False),
                    picklist_values=tuple(o["value"] for o in p.get("options") or []),
                )
                for p in props
            }
            definitions = self._request(
                "GET", "/communication-preferences/v3/definitions", describe="subscription definitions"
            ).json()["subscriptionDefinitions"]
            for item in definitions:
                sid = str(item["id"])
                self._units[sid] = _unit(item.get("businessUnitId"))
                fields[f"subscription_{sid}"] = sdk.FieldInfo(
                    f"subscription_{sid}", "subscription", True, picklist_values=SUBSCRIPTION_STATES
                )
                fields[f"subscription_{sid}_legal_basis"] = sdk.FieldInfo(
                    f"subscription_{sid}_legal_basis", "legal_basis", True, picklist_values=V3_LEGAL_BASES
                )
                fields[f"subscription_{sid}_timestamp"] = sdk.FieldInfo(
                    f"subscription_{sid}_timestamp", "datetime", False
                )
            self._describes[object_type] = fields
        return self._describes[object_type]

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: sdk.Cursor, until: datetime
    ) -> Iterator[sdk.CrmRecord]:
        wanted, subscriptions = self._wanted(object_type, fields)
        self.expected_records = None

        def note_total(total: int | None) -> None:
            self.expected_records = total

        pages = self._keyset_pages(since.modstamp, _cursor_id(since), until, wanted, [], note_total)
        horizon = self._history_horizon(since)
        for batch in pages:
            earlier = self._earlier_addresses(batch, horizon) if subscriptions else {}
            yield from self._records(object_type, batch, subscriptions, earlier=earlier)

    def read_records(
        self, object_type: str, fields: Sequence[str], record_ids: Sequence[str]
    ) -> Iterator[sdk.CrmRecord]:
        """The contacts ``record_ids`` as they are now (ops retrying a quarantined contact: one
        whose statuses HubSpot did not answer, ``UNREAD``), read as a page of a full read is:
        ``POST .../batch/read`` (``batch_size`` ids a call, at most 100) with their statuses,
        opt-outs and every address they had (a retried contact's earlier addresses are read
        whatever the cursor). An id HubSpot no longer answers as itself (deleted, or merged away:
        the deletion listing names it) is left out."""
        _check_object(object_type)
        wanted, subscriptions = self._wanted(object_type, fields)
        ids = list(dict.fromkeys(str(record_id) for record_id in record_ids if str(record_id).isdigit()))
        size = min(self.config.batch_size, BATCH_READ_LIMIT)
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            body = {"properties": wanted, "inputs": [{"id": record_id} for record_id in chunk]}
            answer = self._request(
                "POST", f"/crm/v3/objects/{OBJECT}/batch/read", json=body, describe="read contacts by id"
            ).json()
            asked = set(chunk)
            results = answer.get("results") or []
            batch = [raw for raw in results if isinstance(raw, dict) and str(raw.get("id")) in asked]
            if not batch:
                continue
            earlier = self._earlier_addresses(batch, None) if subscriptions else {}
            yield from self._records(object_type, batch, subscriptions, earlier=earlier)

    def _history_horizon(self, since: sdk.Cursor) -> tuple[datetime, int | None] | None:
        """From when the addresses a contact left are read (``_addresses_held``), and the id up
        to which a contact's address left at exactly that moment was read already: the read's
        lower bound (no id: a contact at or before the position is not read at all); for a read
        of every record again that names what the reads before it passed
        (``Cursor.history_from``, the engine's: after a mapping change, and on every run that
        resumes that read after a cut), that bound where it is the later of the two. A
        contact's address change moved its ``lastmodifieddate``, so an address left before the
        bound was in a read already: its no was taken then (the ledger holds it), superseded
        since, or left out on purpose (a no hidden before this connector read earlier
        addresses, taken only by a planned ``sync --full``). Read again, each would be taken
        anew, on every re-addressed contact at once, as an unsubscribe consentsync never undoes.
        The bound is where an incremental read would resume (the engine's ``resume_from`` with
        the configured look-back): no look-back is taken off here. None (a first read,
        ``sync --full``): every address the contact ever had."""
        position, passed = since.modstamp, since.history_from
        if passed is None or (position is not None and position > passed):
            return None if position is None else (position, None)
        return passed, _cursor_id(sdk.Cursor(record_id=since.history_from_id))

    def _wanted(self, object_type: str, fields: Sequence[str]) -> tuple[list[str], list[str]]:
        """The properties a read of ``fields`` asks HubSpot for, and the subscription ids whose
        statuses it reads (the virtual ``subscription_<id>`` fields)."""
        known = self.describe(object_type)
        sdk.require_fields(
            fields, known, "contacts have no property or subscription", "(or the private app cannot see it)"
        )
        subscriptions = sorted({m["id"] for f in fields if (m := _VIRTUAL.match(f))})
        properties = [f for f in fields if not _VIRTUAL.match(f)]
        # ``createdate``: when the contact was created (``CrmRecord.created_at``). HubSpot answers
        # it (with ``hs_object_id`` and ``lastmodifieddate``) unasked; asked all the same.
        wanted = list(dict.fromkeys(["hs_object_id", "createdate", "lastmodifieddate", *properties]))
        if subscriptions and "email" not in wanted:
            wanted.append("email")
        if subscriptions and OPTED_OUT_OF_ALL in known and OPTED_OUT_OF_ALL not in wanted:
            wanted.append(OPTED_OUT_OF_ALL)
        return wanted, subscriptions

    def _keyset_pages(
        self,
        stamp: datetime | None,
        cursor_id: int | None,
        until: datetime,
        wanted: list[str],
        extra: list[dict[str, Any]],
        note_total: Callable[[int | None], None] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Contacts matching ``extra`` filters after the (updated, id) cursor and at or before
        ``until``, page by page in (lastmodifieddate, id) order. Without a cursor id every contact
        stamped at ``stamp`` or later comes (a look-back cursor is inclusive)."""
        first = True
        while True:
            page = self._search(self._window(stamp, cursor_id, until, extra), wanted, "lastmodifieddate")
            results = page["results"]
            if first and note_total is not None:
                note_total(page.get("total"))
            first = False
            if not results:
                return
            groups = _groups(results)
            full = len(results) == self.config.page_size
            if full and len(groups) == 1:
                # One timestamp fills the page: read that second in id order, then go on after it.
                only = groups[0][0]
                last = cursor_id if stamp == only else None
                for batch in self._same_stamp(only, last, wanted, extra):
                    yield batch
                    cursor_id = int(batch[-1]["id"])
                stamp = only
                continue
            done = groups[:-1] if full else groups
            yield [raw for _, members in done for raw in members]
            if not full:
                return
            stamp, cursor_id = done[-1][0], int(done[-1][1][-1]["id"])

    def _window(
        self, stamp: datetime | None, cursor_id: int | None, until: datetime, extra: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Filter groups for records after the (updated, id) cursor and at or before ``until``;
        a cursor without an id takes its whole timestamp (GTE)."""
        upper = {"propertyName": "lastmodifieddate", "operator": "LTE", "value": epoch_ms(until)}
        if stamp is None:
            return [{"filters": [*extra, upper]}]
        operator = "GTE" if cursor_id is None else "GT"
        later = {"propertyName": "lastmodifieddate", "operator": operator, "value": epoch_ms(stamp)}
        groups = [{"filters": [*extra, later, upper]}]
        if cursor_id is not None:
            same = {"propertyName": "lastmodifieddate", "operator": "EQ", "value": epoch_ms(stamp)}
            after = {"propertyName": "hs_object_id", "operator": "GT", "value": str(cursor_id)}
            groups.append({"filters": [*extra, same, after, upper]})
        return groups

    def _same_stamp(
        self, stamp: datetime, after_id: int | None, wanted: list[str], extra: list[dict[str, Any]]
    ) -> Iterator[list[dict[str, Any]]]:
        while True:
            filters = [
                *extra,
                {"propertyName": "lastmodifieddate", "operator": "EQ", "value": epoch_ms(stamp)},
            ]
            if after_id is not None:
                filters.append({"propertyName": "hs_object_id", "operator": "GT", "value": str(after_id)})
            page = self._search([{"filters": filters}], wanted, "hs_object_id")
            results = page["results"]
            if results:
                yield results
                after_id = int(results[-1]["id"])
            if len(results) < self.config.page_size:
                return

    def _search(self, groups: list[dict[str, Any]], wanted: list[str], sort: str) -> dict[str, Any]:
        body = {
            "filterGroups": groups,
            "sorts": [{"propertyName": sort, "direction": "ASCENDING"}],
            "properties": wanted,
            "limit": self.config.page_size,
        }
        return self._request(
            "POST", f"/crm/v3/objects/{OBJECT}/search", json=body, describe="search contacts"
        ).json()

    def _records(
        self,
        object_type: str,
        batch: list[dict[str, Any]],
        subscriptions: list[str],
        *,
        earlier: Mapping[str, Mapping[str, list[tuple[datetime, datetime]]]] | None = None,
    ) -> Iterator[sdk.CrmRecord]:
        """``batch`` (contacts as HubSpot answers them) as records, with their subscription
        statuses. ``earlier``: by contact id, the addresses it had before the one it has and
        the spans it had them (``_earlier_addresses``): their statuses are read too, and a no
        among them that the contact no longer shows goes into ``CrmRecord.earlier_values``
        (``_earlier_values``).

        An address whose statuses HubSpot would not answer, every retry of the run over
        (``_batch_status_read``), makes each subscription field its contact cannot be read to
        say no in ``UNREAD``, which no mapping translates: the engine quarantines the contact,
        with a reason naming its id (never the address), records the rest of the page and moves
        on; ``consentsync runs retry`` reads it again (``read_records``). A field that
        says no all the same (the contact's opt-out of all email covers it) keeps its no. An
        earlier address left unanswered puts ``UNREAD`` in ``earlier_values`` where no other no
        was found there and no later yes under the new address outranks whatever it held."""
        earlier = earlier if subscriptions and earlier else {}
        earlier_addresses = sorted({address for held in earlier.values() for address in held})
        current = [str((r["properties"] or {}).get("email") or "").strip().lower() for r in batch]
        unread: set[str] = set()
        everyone = [*current, *earlier_addresses]
        statuses = self._statuses(everyone, subscriptions, unread=unread) if subscriptions else {}
        flagged = [
            email
            for email, r in zip(current, batch, strict=True)
            if email and str((r["properties"] or {}).get(OPTED_OUT_OF_ALL) or "").lower() == "true"
        ]
        # Where the mapping names a subscription type of a business unit other than the default
        # one, every address's wide statuses are read: HubSpot does not say that an opt-out of
        # all of one unit's email sets hs_email_optout.
        every_address = bool(subscriptions and self._other_units(subscriptions))
        asked = [*(current if every_address else flagged), *earlier_addresses]
        opted_out: dict[str, OptOuts] = {}
        earlier_opted_out: dict[str, OptOuts] = {}
        held_back: list[str] = []  # the contacts a status HubSpot did not answer holds back
        if subscriptions and any(asked):
            wide = self._wide_unsubscribes(asked, subscriptions, unread)
            # The flag decides for the address a contact has: where the wide statuses answer it
            # they say which email it opted out of (all, or one business unit's) and when; where
            # they answer nothing (or are not served) the flag alone says all of it, undated.
            # An earlier address, and an unflagged one, only where the wide statuses say so.
            for email in dict.fromkeys(current):
                answered = (wide or {}).get(email)
                if email in flagged:
                    # The flag is the account's own: where the wide statuses name only other
                    # units' opt-outs, it still covers the default unit's email (undated, unless
                    # they date it), and where they disagree the no is kept.
                    opted_out[email] = (
                        answered
                        if answered and (PORTAL_WIDE in answered or DEFAULT_UNIT in answered)
                        else {**(answered or {}), DEFAULT_UNIT if answered else PORTAL_WIDE: None}
                    )
                elif answered:
                    opted_out[email] = answered
            earlier_opted_out = {a: wide[a] for a in earlier_addresses if wide and a in wide}
        for raw in batch:
            props = dict(raw.get("properties") or {})
            props["hs_object_id"] = str(raw["id"])
            basis = self.config.legal_basis_property
            if isinstance(props.get(basis), str):
                props[basis] = self._one_basis(props[basis])
            email = str(props.get("email") or "").strip().lower()
            held = statuses.get(email, {})
            for sid in subscriptions:
                status = held.get(sid, {})
                props[f"subscription_{sid}"] = status.get("status") or ("NOT_SPECIFIED" if email else None)
                props[f"subscription_{sid}_legal_basis"] = status.get("legalBasis")
                props[f"subscription_{sid}_timestamp"] = status.get("timestamp")
                covered, opted_out_at = _covering(opted_out.get(email), self._unit_of(sid))
                if covered:
                    # Opted out of all email (of the portal, or of the type's business unit): no
                    # email of this type reaches the person, whatever the type's own status still
                    # says. A no for the subscription, as of the latest of the two noes (the
                    # opt-out, the type's own unsubscribe).
                    props[f"subscription_{sid}"] = "UNSUBSCRIBED"
                    props[f"subscription_{sid}_timestamp"] = _latest_no(status, opted_out_at)
                if email in unread and props[f"subscription_{sid}"] != "UNSUBSCRIBED":
                    props[f"subscription_{sid}"] = UNREAD
                    props[f"subscription_{sid}_legal_basis"] = None
                    props[f"subscription_{sid}_timestamp"] = None
            modstamp = parse_hs_datetime(str(props.get("lastmodifieddate") or raw["updatedAt"]))
            created_at = _stamp(props.get("createdate") or raw.get("createdAt"))
            held_before = earlier.get(str(raw["id"]))
            values, given_at = (
                _earlier_values(
                    props,
                    {sid: self._unit_of(sid) for sid in subscriptions},
                    held_before,
                    statuses,
                    earlier_opted_out,
                    unread,
                )
                if held_before
                else ({}, {})
            )
            if UNREAD in props.values() or UNREAD in values.values():
                held_back.append(str(raw["id"]))
            yield sdk.CrmRecord(
                object_type,
                str(raw["id"]),
                modstamp,
                props,
                earlier_values=values or None,
                earlier_given_at=given_at or None,
                created_at=created_at,
            )
        if held_back:
            log.warning(
                "hubspot.contacts_unread",
                connector=self.name,
                contacts=held_back[:50],
                count=len(held_back),
                note="HubSpot did not answer their subscription statuses: quarantined by the engine; "
                "`consentsync runs retry` reads them again",
            )

    def _earlier_addresses(
        self, batch: list[dict[str, Any]], horizon: tuple[datetime, int | None] | None
    ) -> dict[str, dict[str, list[tuple[datetime, datetime]]]]:
        """contact id -> each address (lower case) the contact left after ``horizon``
        (``_history_horizon``; ever, when None) and no longer has -> the spans it had it (from,
        to: ``_addresses_held``).
        HubSpot's search cannot answer a property's history (and no property says when
        ``email`` last changed), so every contact of the page is asked: ``POST
        .../batch/read`` with ``propertiesWithHistory: ["email"]``, ``batch_size`` contacts a
        call and never more than 50 (``HISTORY_BATCH_LIMIT``: HubSpot refuses a history read of
        more with 400 VALIDATION_ERROR, which would stop every run on its first page). Results
        are keyed by the id HubSpot answers: a contact merged away since the search answers the
        merged contact under its new id, whose history is not this contact's (the merge is
        reported by ``read_deletions``)."""
        current = {
            str(raw["id"]): str((raw.get("properties") or {}).get("email") or "").strip().lower()
            for raw in batch
        }
        ids = list(current)
        out: dict[str, dict[str, list[tuple[datetime, datetime]]]] = {}
        size = min(self.config.batch_size, HISTORY_BATCH_LIMIT)
        for start in range(0, len(ids), size):
            body = {
                "properties": ["email", ADDITIONAL_EMAILS],
                "propertiesWithHistory": ["email", ADDITIONAL_EMAILS],
                "inputs": [{"id": record_id} for record_id in ids[start : start + size]],
            }
            answer = self._request(
                "POST", f"/crm/v3/objects/{OBJECT}/batch/read", json=body, describe="email history"
            ).json()
            since, passed_id = horizon if horizon is not None else (None, None)
            out.update(_held_before(answer.get("results") or [], current, since, passed_id))
        return out

    # -- deletions and merges ------------------------------------------------------------------

    def read_deletions(
        self, object_type: str, since: sdk.Cursor, until: datetime, fields: Sequence[str] = ()
    ) -> Iterator[sdk.CrmRecord]:
        """Contacts archived (deleted) or merged away after ``since`` and at or before ``until``,
        in (time, id) order, each id once: a merged-away id as merged into the contact it now
        points to, never as a plain deletion.

        HubSpot has merged contacts two ways. Before its change (histories of older portals)
        the primary kept its id and the other contact left every list. Now a new contact with a
        new id is made of both; both old ids point to it (a read of either answers it, with its
        new id) and, by third parties' reports (HubSpot does not say), both show as archived.
        Merged ids are found as survivors name them in ``hs_merged_object_ids`` (contacts having
        it, changed in the window: the merge moved their ``lastmodifieddate``; a later change
        names them again, which only repeats news of a record already gone). An archived contact
        in the window that no survivor named is read by id: a merged-away id answers the contact
        it points to (another id), a deleted one 404. So a merge is reported as one, whichever
        of the two traces of it the window holds.

        With ``fields``, an archived contact comes with its last values: HubSpot keeps an
        archived contact's properties (it can be restored for 90 days) and answers them to a
        batch read with ``archived=true``, one call per 100 in the window (per 50 where
        subscriptions are read: the read then carries the ``email`` history) and none when there
        are none; the values are then what ``read_changes`` gives for a live contact
        (subscription statuses included, read as for a page of changes). A merged-away original
        listed as archived comes with them as well, so that a no on it reaches the survivor's
        person; one in no list (the old kind of merge) has no values of its own left to read:
        it comes bare."""
        _check_object(object_type)
        floor = _cursor_id(since)

        def in_window(record: sdk.CrmRecord) -> bool:
            return _after(record, since.modstamp, floor) and record.modstamp <= until

        named = {record.record_id: record for record in self._merged_away(since.modstamp, until)}
        archived: list[sdk.CrmRecord] = []
        for record in sorted(filter(in_window, self._archived()), key=_deletion_key):
            merged = named.pop(record.record_id, None)
            survivor = merged.merged_into if merged is not None else self._points_to(record.record_id)
            archived.append(replace(record, merged_into=survivor) if survivor else record)
        stream: Iterator[sdk.CrmRecord] = iter(archived)
        if fields:
            stream = self._with_last_values(object_type, stream, fields, since.modstamp)
        merged_only = sorted(filter(in_window, named.values()), key=_deletion_key)
        yield from heapq.merge(stream, merged_only, key=_deletion_key)

    def _points_to(self, record_id: str) -> str | None:
        """The contact an archived id now points to (a merge's result), or None (deleted).
        ``GET`` of a merged-away id answers the merged contact, with its own id."""
        answered = self._answered_id(record_id)
        return answered if answered is not None and answered != record_id else None

    def _with_last_values(
        self,
        object_type: str,
        deleted: Iterator[sdk.CrmRecord],
        fields: Sequence[str],
        since: datetime | None,
    ) -> Iterator[sdk.CrmRecord]:
        """``deleted`` (archived contacts, in order) with their last values, read in batches of
        100 (``POST .../batch/read?archived=true``, which answers archived contacts only; of 50,
        ``HISTORY_BATCH_LIMIT``, where the read carries ``propertiesWithHistory``). A
        contact the read no longer finds (restored or purged since it was listed) comes bare.

        The same read answers each contact's ``email`` history (``propertiesWithHistory``, no
        call more): a user who changed the address and then deleted the contact, both before
        the next sync, hid the old address's no twice over. A no among the statuses of the
        addresses it had after ``since`` (the listing's lower bound: one left before was in a
        read of the live contact), that its last values do not outrank (``_earlier_values``),
        is its last no: it comes among the fields, dated by ``earlier_given_at`` (the engine
        takes a deleted record's no from its fields)."""
        wanted, subscriptions = self._wanted(object_type, fields)
        size = HISTORY_BATCH_LIMIT if subscriptions else BATCH_READ_LIMIT
        while chunk := list(islice(deleted, size)):
            request: dict[str, Any] = {
                "properties": wanted,
                "inputs": [{"id": record.record_id} for record in chunk],
            }
            if subscriptions:
                request["propertiesWithHistory"] = ["email", ADDITIONAL_EMAILS]
            body = self._request(
                "POST",
                f"/crm/v3/objects/{OBJECT}/batch/read",
                params={"archived": "true"},
                json=request,
                describe="read archived contacts",
            ).json()
            found = [raw for raw in body.get("results") or [] if isinstance(raw, dict) and raw.get("id")]
            current = {
                str(raw["id"]): str((raw.get("properties") or {}).get("email") or "").strip().lower()
                for raw in found
            }
            earlier = _held_before(found, current, since) if subscriptions else {}
            values = {
                record.record_id: record
                for record in self._records(object_type, found, subscriptions, earlier=earlier)
            }
            for record in chunk:
                last = values.get(record.record_id)
                yield sdk.CrmRecord(
                    object_type,
                    record.record_id,
                    record.modstamp,
                    {**last.fields, **(last.earlier_values or {})} if last else {},
                    deleted=True,
                    merged_into=record.merged_into,
                    earlier_given_at=last.earlier_given_at if last else None,
                    created_at=last.created_at if last else record.created_at,
                )

    def _archived(self) -> Iterator[sdk.CrmRecord]:
        """Every archived contact, page by page (the list comes in id order, not by
        ``archivedAt``: the caller sorts what falls in its window)."""
        params: dict[str, Any] = {"archived": "true", "limit": 100, "properties": "hs_object_id"}
        while True:
            body = self._request(
                "GET", f"/crm/v3/objects/{OBJECT}", params=params, describe="list archived contacts"
            ).json()
            for raw in body.get("results") or []:
                stamp = raw.get("archivedAt") or raw.get("updatedAt")
                if stamp:
                    yield sdk.CrmRecord(
                        OBJECT,
                        str(raw["id"]),
                        parse_hs_datetime(str(stamp)),
                        {},
                        deleted=True,
                        created_at=_stamp(raw.get("createdAt")),
                    )
            after = ((body.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return
            params = {**params, "after": after}

    def _merged_away(self, stamp: datetime | None, until: datetime) -> Iterator[sdk.CrmRecord]:
        """Ids merged into survivors changed at or after ``stamp``, in (time, id) order. A merged
        id leaves every list (it is not archived): only its survivor names it."""
        merged_filter = [{"propertyName": MERGED_IDS, "operator": "HAS_PROPERTY"}]
        wanted = ["hs_object_id", "lastmodifieddate", MERGED_IDS]
        pending: list[sdk.CrmRecord] = []
        for batch in self._keyset_pages(stamp, None, until, wanted, merged_filter):
            for raw in batch:
                props = raw.get("properties") or {}
                moment = parse_hs_datetime(str(props.get("lastmodifieddate") or raw["updatedAt"]))
                if pending and pending[0].modstamp != moment:
                    yield from sorted(pending, key=_deletion_key)
                    pending = []
                survivor = str(raw["id"])
                for merged_id in str(props.get(MERGED_IDS) or "").split(";"):
                    if merged_id.strip().isdigit() and merged_id.strip() != survivor:
                        pending.append(
                            sdk.CrmRecord(
                                OBJECT, merged_id.strip(), moment, {}, deleted=True, merged_into=survivor
                            )
                        )
        yield from sorted(pending, key=_deletion_key)

    def _unit_of(self, sid: str) -> int | None:
        """The business unit of subscription type ``sid``; None where its definition's could not
        be read (only an opt-out of all of the portal's email is then known to cover it)."""
        return self._units.get(sid, DEFAULT_UNIT)

    def _other_units(self, subscriptions: Sequence[str]) -> list[int]:
        """The business units other than the default one that ``subscriptions`` belong to (a unit
        that could not be read is none of them: it cannot be asked for)."""
        units = {self._unit_of(sid) for sid in subscriptions}
        return sorted(unit for unit in units if unit is not None and unit != DEFAULT_UNIT)

    def _wide_unsubscribes(
        self, emails: list[str], subscriptions: Sequence[str] = (), unread: set[str] | None = None
    ) -> dict[str, OptOuts] | None:
        """email (lower case) -> what it opted out of all email of, and when (``OptOuts``), for
        those of ``emails`` the v4 read of the "wide" statuses answers opted out; None where the
        portal does not serve that endpoint (404). A ``PORTAL_WIDE`` status (or one of no type:
        a portal without business units) is an opt-out of all email; a ``BUSINESS_UNIT_WIDE``
        one only of the email of its ``businessUnitId`` (the subscription types whose
        definitions name that unit): a contact opting out of all of one brand's email still
        takes the other brands'. A wide status of another type, or naming no unit, is not
        taken. The read is made without a business unit and, for each unit other than the
        default one that ``subscriptions`` belong to, with it (``businessUnitId``: HubSpot
        documents it as a filter and does not say which units' statuses come without it). For
        the contacts whose ``hs_email_optout`` reads true the flag decides where these statuses
        answer nothing (``_records``).

        By ``POST .../v4/statuses/batch/unsubscribe-all/read``, ``status_batch_size`` addresses
        a call (an address not opted out may be left out of its ``results``; one a 207 error
        entry names, every retry of the run over, goes into ``unread``: ``_batch_status_read``);
        without the batch scope, one ``GET .../v4/statuses/{email}/unsubscribe-all`` per address
        (``_per_address``)."""
        wanted = list(dict.fromkeys(e.strip().lower() for e in emails if e.strip()))
        out: dict[str, OptOuts] = {}
        size = self.config.status_batch_size
        for unit in [None, *self._other_units(subscriptions)]:
            params: dict[str, Any] = {"channel": "EMAIL"}
            if unit is not None:
                params["businessUnitId"] = unit
            for start in range(0, len(wanted), size):
                answered = self._wide_chunk(wanted[start : start + size], params, unread)
                if answered is None:
                    return None  # not served: the flag alone
                for email, wides in answered.items():
                    for wide in wides:
                        scope = _wide_scope(wide)
                        if scope is None or wide.get("status") != "UNSUBSCRIBED":
                            continue
                        held = out.setdefault(email, {})
                        if held.get(scope) is None:
                            held[scope] = str(wide["timestamp"]) if wide.get("timestamp") else None
        return out

    def _wide_chunk(
        self, chunk: list[str], params: dict[str, Any], unread: set[str] | None = None
    ) -> dict[str, list[dict[str, Any]]] | None:
        """Each address of ``chunk`` (as asked) -> its wide statuses; None where HubSpot does
        not serve the read (404). An address HubSpot would not answer is left out and noted in
        ``unread``."""
        if not self._per_address:
            try:
                answered = self._batch_status_read(
                    "/communication-preferences/v4/statuses/batch/unsubscribe-all/read",
                    chunk,
                    params,
                    "opted out of all email",
                    every_input=False,
                    unread=unread,
                )
            except ConnectorError as error:
                if not _lacks_scope(error):
                    raise
                self._read_per_address(error)
            else:
                if answered is None:
                    return None
                return {email: list(result.get("wideStatuses") or []) for email, result in answered.items()}
        out: dict[str, list[dict[str, Any]]] = {}
        failed: list[tuple[str, ConnectorError]] = []
        describe = "opted out of all email (one address)"
        for email in chunk:
            try:
                response = self._request(
                    "GET",
                    f"/communication-preferences/v4/statuses/{quote(email, safe='@')}/unsubscribe-all",
                    params=params,
                    describe=describe,
                    accept=lambda answer: answer.status_code == 404,
                )
            except ConnectorError as error:
                if _stops_the_run(error):
                    raise
                failed.append((email, error))
                continue
            if response.status_code == 404:
                return None
            out[email] = [
                wide
                for wide in (sdk.json_or_none(response) or {}).get("results") or []
                if isinstance(wide, dict)
                and _address(wide.get("subscriberIdString") or email) == _address(email)
            ]
        self._one_address_errors(failed, bool(out), describe, strict=True, unread=unread)
        return out

    def _one_basis(self, value: str) -> str:
        """A multiple checkbox holds several bases (``a;b``): the first in the configured
        precedence is the one read; values outside it are left for the mapping to refuse."""
        ticked = [v for v in value.split(";") if v]
        for candidate in self.config.legal_basis_precedence:
            if candidate in ticked:
                return candidate
        return value

    def _statuses(
        self,
        emails: list[str],
        subscriptions: Sequence[str] = (),
        *,
        strict: bool = True,
        unread: set[str] | None = None,
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """email (as given) -> subscription id -> v4 status, by batch reads: without a business
        unit where ``subscriptions`` name one of the default unit's (or none), and with each
        other unit they belong to (``businessUnitId``, HubSpot's filter: "If you have the
        business unit add-on, include this parameter to filter results by business unit ID";
        it does not say which units' statuses come without it). A unit's own read decides its
        subscription types.

        ``POST .../v4/statuses/batch/read``, ``status_batch_size`` addresses a call. An answer
        that leaves an address without its statuses (a 207 error entry, or no result for it) is
        read again; every retry of the run over, the address goes into ``unread`` (its contact
        is quarantined: ``_records``), or, without ``unread``, the read fails
        (``_batch_status_read``): read as NOT_SPECIFIED, its no would be lost and the cursor
        would pass it. ``strict=False`` (the basis held, looked up before an unsubscribe) takes
        what was answered. Without the batch scope (a 403 MISSING_SCOPES: Marketing Hub
        Enterprise only), one ``GET .../v4/statuses/{email}`` per address and unit for the rest
        of the run (``_per_address``), its refusals handled alike (``_one_address_errors``)."""
        wanted = list(dict.fromkeys(e for e in emails if e))
        out: dict[str, dict[str, dict[str, Any]]] = {}
        size = self.config.status_batch_size
        others = self._other_units(subscriptions)
        default = not subscriptions or any(self._unit_of(sid) == DEFAULT_UNIT for sid in subscriptions)
        for unit in [*([None] if default else []), *others]:
            params: dict[str, Any] = {"channel": "EMAIL"}
            if unit is not None:
                params["businessUnitId"] = unit
            for start in range(0, len(wanted), size):
                for email, statuses in self._status_chunk(
                    wanted[start : start + size], params, strict, unread
                ).items():
                    held = out.setdefault(email, {})
                    for status in statuses:
                        sid = str(status["subscriptionId"])
                        if unit is None or self._unit_of(sid) == unit:
                            held[sid] = status
        return out

    def _status_chunk(
        self, chunk: list[str], params: dict[str, Any], strict: bool, unread: set[str] | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """Each address of ``chunk`` (as asked) -> its v4 statuses; an address HubSpot would not
        answer is left out (and noted in ``unread``, ``_batch_status_read``,
        ``_one_address_errors``)."""
        if not self._per_address:
            try:
                answered = self._batch_status_read(
                    "/communication-preferences/v4/statuses/batch/read",
                    chunk,
                    params,
                    "subscription statuses",
                    every_input=True,
                    strict=strict,
                    unread=unread,
                )
            except ConnectorError as error:
                if not _lacks_scope(error):
                    raise
                self._read_per_address(error)
            else:
                return {
                    email: list(result.get("statuses") or []) for email, result in (answered or {}).items()
                }
        out: dict[str, list[dict[str, Any]]] = {}
        failed: list[tuple[str, ConnectorError]] = []
        describe = "subscription statuses (one address)"
        for email in chunk:
            try:
                body = self._request(
                    "GET",
                    f"/communication-preferences/v4/statuses/{quote(email, safe='@')}",
                    params=params,
                    describe=describe,
                ).json()
            except ConnectorError as error:
                if _stops_the_run(error):
                    raise
                failed.append((email, error))
                continue
            out[email] = [
                status
                for status in body.get("results") or []
                if isinstance(status, dict)
                and _address(status.get("subscriberIdString") or email) == _address(email)
            ]
        self._one_address_errors(failed, bool(out), describe, strict=strict, unread=unread)
        return out

    def _batch_status_read(
        self,
        path: str,
        chunk: list[str],
        params: dict[str, Any],
        describe: str,
        *,
        every_input: bool,
        strict: bool = True,
        unread: set[str] | None = None,
    ) -> dict[str, dict[str, Any]] | None:
        """One v4 batch status read of ``chunk``: each address (as asked) -> its result, matched
        by ``subscriberIdString`` compared as ``_address`` (HubSpot may answer another
        spelling); None on a 404 (not served). HubSpot's spec answers these reads 207 "multiple
        statuses" (``...WithErrors``) when some inputs fail: an error entry, or (``every_input``:
        the subscription statuses, which answer every address) an address left without a
        result, fails the read (``_partial_read``), retried under the error table's rule with
        the call's own retries. Given up, the addresses it named (or left out) go into
        ``unread`` and the others' results are answered (``_records`` has the engine quarantine
        those contacts); where it cannot be told which addresses failed, or without ``unread``,
        the error stops the run and the cursor stays before the page. ``strict=False`` takes
        what was answered."""
        asked = {_address(email): email for email in chunk}
        last: dict[str, dict[str, Any]] = {}

        def attempt() -> dict[str, dict[str, Any]] | None:
            nonlocal last
            response = self.api.send(
                "POST",
                self.base + path,
                describe=describe,
                params=params,
                json={"inputs": chunk},
                # The opt-outs of all email only: a portal not serving that read leaves the flag.
                accept=lambda answer: answer.status_code == 404 and not every_input,
                retry=False,
            )
            if response.status_code == 404:
                return None
            body = sdk.json_or_none(response) or {}
            answered: dict[str, dict[str, Any]] = {}
            for result in body.get("results") or []:
                key = _address(result.get("subscriberIdString")) if isinstance(result, dict) else ""
                if key in asked:
                    answered[asked[key]] = result
            last = answered
            errors = [entry for entry in body.get("errors") or [] if isinstance(entry, dict)]
            missing = [email for email in chunk if email not in answered] if every_input else []
            if strict and (errors or missing):
                raise _partial_read(describe, response.status_code, errors, missing, chunk)
            return answered

        try:
            return sdk.call(attempt, policy=self.api.policy, describe=describe)
        except _PartialRead as error:
            if unread is None or error.failed is None:
                raise
            self._unanswered(describe, error.failed, len(chunk), unread, str(error))
            return {email: result for email, result in last.items() if email not in error.failed}

    def _unanswered(self, describe: str, failed: set[str], asked: int, unread: set[str], reason: str) -> None:
        """Notes addresses HubSpot would not answer (as asked) in ``unread``; logged without
        them (``reason`` is masked)."""
        unread.update(failed)
        log.warning(
            "hubspot.statuses_unanswered",
            connector=self.name,
            read=describe,
            addresses=len(failed),
            asked=asked,
            reason=reason[:300],
            note="their contacts are quarantined by id, read again on `consentsync runs retry`",
        )

    def _one_address_errors(
        self,
        failed: Sequence[tuple[str, ConnectorError]],
        answered: bool,
        describe: str,
        *,
        strict: bool,
        unread: set[str] | None,
    ) -> None:
        """The errors of one-address status reads (each given up after its retries, none of a
        kind that stops the run: ``_stops_the_run``): with ``strict=False`` (a look-up of the
        basis held) what was answered is taken; else each address HubSpot refused (a 4xx), or
        failed where another address of the same group was answered (``answered``; an outage
        fails them all, and then the run stops), is noted in ``unread``."""
        for email, error in failed:
            if not strict:
                continue
            status = error.rule.status
            if unread is None or status is None or (status >= 500 and not answered):
                raise error
            self._unanswered(describe, {email}, 1, unread, str(error))

    def _read_per_address(self, error: ConnectorError) -> None:
        """The private app lacks ``BATCH_READ_SCOPE``: the v4 statuses are read one address at a
        time from now on, in this run (each address and business unit one call, counted against
        the run's budget like any other)."""
        if not self._per_address:
            log.warning(
                "hubspot.status_reads_per_address",
                connector=self.name,
                missing_scope=BATCH_READ_SCOPE,
                reason=str(error)[:300],
                note="one GET /communication-preferences/v4/statuses/{email} per address read",
            )
        self._per_address = True

    # -- writing -------------------------------------------------------------------------------

    def irreversible(self, update: sdk.RecordUpdate) -> set[str]:
        """An unsubscribe: consentsync never resubscribes a contact who unsubscribed in HubSpot
        (its own policy: a resubscribe comes from the person, through HubSpot's preferences page
        or a HubSpot form; v3 subscribe declines it, and v4's resubscribe is not used)."""
        fields = {
            name
            for name, value in update.fields.items()
            if (match := _VIRTUAL.match(name)) and not match["part"] and str(value).upper() == "UNSUBSCRIBED"
        }
        return fields | super().irreversible(update)

    def as_read_back(self, update: sdk.RecordUpdate) -> dict[str, Any]:
        """A subscribe pushed without a legal basis is sent with ``default_legal_basis``
        (``_set_subscription``), and HubSpot shows that basis with the status from then on: read
        back, it is still our own write, not the person's consent."""
        fields = dict(update.fields)
        for name, value in update.fields.items():
            match = _VIRTUAL.match(name)
            if match and not match["part"] and str(value) == "SUBSCRIBED":
                fields.setdefault(f"subscription_{match['id']}_legal_basis", self.config.default_legal_basis)
        return fields

    def write_batches(self, updates: Sequence[sdk.RecordUpdate]) -> Iterator[dict[int, sdk.WriteResult]]:
        """Property changes by batch update, ``batch_size`` contacts a call, each group's
        subscription changes one v3 call each just before its batch, deletions one permanent
        (GDPR) delete a contact (or by batch archive, ``delete_mode: archive``): every call's
        answers are handed over as it returns. An update with both properties and subscriptions
        is answered once its last call returned (one answer per update)."""
        if not updates:
            return
        known = self.describe(OBJECT) if any(u.action is sdk.WriteAction.UPDATE for u in updates) else {}
        refused: dict[int, sdk.WriteResult] = {}
        plans: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        deletes: list[int] = []
        for index, item in enumerate(updates):
            _check_object(item.object_type)
            if item.action is sdk.WriteAction.DELETE:
                if item.record_id.isdigit():
                    deletes.append(index)
                else:
                    refused[index] = sdk.WriteResult(
                        item.record_id, False, "INVALID_ID", "not a HubSpot record id"
                    )
                continue
            props = {k: v for k, v in item.fields.items() if not _VIRTUAL.match(k)}
            subs = {k: v for k, v in item.fields.items() if _VIRTUAL.match(k)}
            bad = [k for k in props if k not in known or not known[k].updateable]
            bad += [k for k in subs if k not in known]
            if bad:
                refused[index] = sdk.WriteResult(
                    item.record_id, False, "INVALID_FIELD", f"not a writable HubSpot field: {', '.join(bad)}"
                )
            elif not props and not subs:
                refused[index] = sdk.WriteResult(item.record_id, True)  # nothing to change
            else:
                plans[index] = (props, subs)
        if refused:
            yield refused
        for group in _unique_groups(list(plans), updates, self.config.batch_size):
            yield from self._write_group(updates, group, plans)
        if self.config.delete_mode == "archive":
            for start in range(0, len(deletes), self.config.batch_size):
                yield self._archive_batch(updates, deletes[start : start + self.config.batch_size])
            return
        done: set[str] = set()
        for index in deletes:
            record_id = updates[index].record_id
            if record_id in done:  # the same contact twice: deleted by the first
                yield {index: sdk.WriteResult(record_id, True)}
                continue
            result = self._gdpr_delete(record_id)
            if result.ok:
                done.add(record_id)
            yield {index: result}

    def _write_group(
        self,
        updates: Sequence[sdk.RecordUpdate],
        group: list[int],
        plans: Mapping[int, tuple[dict[str, Any], dict[str, Any]]],
    ) -> Iterator[dict[int, sdk.WriteResult]]:
        """The group's subscription changes first (one v3 call each), then one batch update for
        the properties of the updates whose subscription changes went through. An update whose
        subscription change HubSpot refuses (a resubscribe, a contact without an email) gets none
        of its properties written: its failed answer is then the whole truth, where a property
        written under it would be read back as the person's own change (the engine takes only
        acknowledged writes for its own)."""
        with_subs = [index for index in group if plans[index][1]]
        taken: dict[int, list[sdk.WriteResult]] = {}
        try:
            if with_subs:
                emails = self._emails([updates[i].record_id for i in with_subs])
                held = self._held_bases(emails, [(updates[i].record_id, plans[i][1]) for i in with_subs])
                for index in with_subs:
                    record_id = updates[index].record_id
                    outcomes = self._subscription_results(
                        record_id,
                        emails.get(record_id),
                        plans[index][1],
                        held.get(emails.get(record_id) or "", {}),
                    )
                    if plans[index][0] and all(outcome.ok for outcome in outcomes):
                        taken[index] = outcomes  # answered with its properties
                    else:
                        yield {index: _combined(record_id, outcomes)}
            property_parts = [
                (index, plans[index][0])
                for index in group
                if plans[index][0] and (not plans[index][1] or index in taken)
            ]
            if not property_parts:
                return
            for answered in self._update_calls(updates, property_parts):
                yield {
                    index: _combined(result.record_id, [*taken.pop(index), result])
                    if index in taken
                    else result
                    for index, result in answered.items()
                }
        except ConnectorError as error:
            # The run stops (a limit, the token, the service) after HubSpot applied some of the
            # group's subscription changes, whose updates wait for their properties: their
            # answers are handed over before the error, or a change HubSpot made (an
            # unsubscribe it can never undo) would be unknown to the ledger. Not done: the
            # properties were not written; sent again, the update finds the subscription as
            # it left it.
            if taken:
                yield {
                    index: sdk.WriteResult(
                        updates[index].record_id,
                        False,
                        INTERRUPTED,
                        f"subscription changes applied, properties not written: {error.rule.reason}",
                        True,
                    )
                    for index in taken
                }
            raise

    def _update_calls(
        self, updates: Sequence[sdk.RecordUpdate], chunk: list[tuple[int, dict[str, Any]]]
    ) -> Iterator[dict[int, sdk.WriteResult]]:
        """One batch update (or, when HubSpot refuses the whole batch for one bad value, one
        call per contact to find it): each call's answers as it returns."""
        inputs = [{"id": updates[i].record_id, "properties": _property_values(props)} for i, props in chunk]
        try:
            response = self._request(
                "POST",
                f"/crm/v3/objects/{OBJECT}/batch/update",
                json={"inputs": inputs},
                describe="batch update",
            )
        except ConnectorError as error:
            if error.rule.status != 400:
                raise
            if len(chunk) > 1:
                for single in chunk:
                    yield from self._update_calls(updates, [single])
                return
            index = chunk[0][0]
            record_id = updates[index].record_id
            # Whether HubSpot refuses a batch naming a contact it no longer has with a 400 or a
            # 207 is not documented: either way, a read of the id says whether it is gone (404)
            # or merged away (it answers another contact).
            if (gone := self._no_longer_here(record_id)) is not None:
                yield {index: gone}
                return
            yield {index: sdk.WriteResult(record_id, False, "VALIDATION_ERROR", str(error))}
            return
        body = response.json()
        failed: dict[str, tuple[str, str]] = {}
        for error in body.get("errors") or []:
            category = str(error.get("category") or "ERROR")
            for record_id in (error.get("context") or {}).get("ids") or []:
                failed[str(record_id)] = (category, _redacted(str(error.get("message") or "")))
        answers: dict[int, sdk.WriteResult] = {}
        for index, _props in chunk:
            record_id = updates[index].record_id
            if record_id in failed:
                category, message = failed[record_id]
                if category == "OBJECT_NOT_FOUND" and (gone := self._no_longer_here(record_id)) is not None:
                    answers[index] = gone
                    continue
                retryable = ERRORS.classify(207, category).action in (Action.RETRY, Action.RATE_LIMITED)
                answers[index] = sdk.WriteResult(record_id, False, category, message, retryable)
            else:
                answers[index] = sdk.WriteResult(record_id, True)
        yield answers

    def _archive_batch(
        self, updates: Sequence[sdk.RecordUpdate], chunk: list[int]
    ) -> dict[int, sdk.WriteResult]:
        """``POST .../batch/archive``: HubSpot answers 204 for the whole batch (an id already
        gone is no error: the record is deleted either way)."""
        inputs = [{"id": updates[index].record_id} for index in chunk]
        try:
            self._request(
                "POST", f"/crm/v3/objects/{OBJECT}/batch/archive", json={"inputs": inputs}, describe="archive"
            )
        except ConnectorError as error:
            if error.rule.status != 400:
                raise
            return {
                i: sdk.WriteResult(updates[i].record_id, False, "VALIDATION_ERROR", str(error)) for i in chunk
            }
        return {index: sdk.WriteResult(updates[index].record_id, True) for index in chunk}

    def _gdpr_delete(self, record_id: str) -> sdk.WriteResult:
        """``POST .../gdpr-delete`` ``{"objectId": id}``: HubSpot permanently deletes the contact
        and its associated content (204 No Content), keeps it out of the recycle bin (it cannot
        be restored, nor is it listed with ``archived=true``) and blocklists its addresses. One
        contact a call: HubSpot has no batch form of it.

        A contact already gone is done: the erasure asked for nothing more (a run stopped after
        HubSpot deleted it and before the ledger took the answer sends it again). HubSpot does
        not document its answer to an id it does not know; a 404 is taken for "gone" only once a
        read of the id answers 404 too, so that a 404 of another kind (a path a proxy or a
        portal does not serve) never counts as an erasure carried out."""
        try:
            response = self._request(
                "POST",
                f"/crm/v3/objects/{OBJECT}/gdpr-delete",
                json={"objectId": record_id},
                describe="permanently delete a contact (GDPR)",
                accept=lambda answer: answer.status_code == 404,
            )
        except ConnectorError as error:
            if error.rule.status != 400:
                raise
            return sdk.WriteResult(record_id, False, "VALIDATION_ERROR", str(error))
        if response.status_code != 404 or self._gone(record_id):
            return sdk.WriteResult(record_id, True)
        return sdk.WriteResult(
            record_id,
            False,
            "NOT_DELETED",
            "HubSpot answered 404 to the permanent delete, yet a read of the contact still finds it",
        )

    def _gone(self, record_id: str) -> bool:
        """Whether no contact answers ``GET .../contacts/{id}`` (404): deleted, permanently or
        not. A merged-away id answers the contact it was merged into: not gone (its person's
        data lives on there, so an erasure of it is not done)."""
        return self._answered_id(record_id) is None

    def _answered_id(self, record_id: str) -> str | None:
        """The id of the contact ``GET .../contacts/{id}`` answers: ``record_id`` itself, the
        contact it was merged into (HubSpot's changelog "Updated merge functionality for
        contacts and companies": fetching a record by an original id "will return the new
        merged record with the new ID"), or None where it answers 404 (deleted)."""
        response = self._request(
            "GET",
            f"/crm/v3/objects/{OBJECT}/{record_id}",
            params={"properties": "hs_object_id"},
            describe="read a contact's id",
            accept=lambda answer: answer.status_code == 404,
        )
        if response.status_code == 404:
            return None
        answered = str((sdk.json_or_none(response) or {}).get("id") or "")
        return answered if answered.isdigit() else record_id

    def _no_longer_here(self, record_id: str) -> sdk.WriteResult | None:
        """The answer of a write to a contact HubSpot no longer holds under ``record_id``:
        deleted (a read of the id answers 404) or merged away since it was read (the read
        answers another contact); None where the id still answers itself. Both are ``gone``: the
        engine marks the link gone and sends it nothing more, and the deletion listing names the
        merge and its survivor (``read_deletions``), to which the person's state is pushed from
        then on. Not gone, a merged-away id's write would be refused for good with a wrong
        reason (no email, no such object) and dead-lettered."""
        answered = self._answered_id(record_id)
        if answered is None:
            return _no_such_contact(record_id)
        if answered != record_id:
            return _merged_away(record_id, answered)
        return None

    def _held_bases(
        self, emails: Mapping[str, str], changes: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> dict[str, dict[str, str]]:
        """address -> subscription id -> the legal basis HubSpot holds with the status, for the
        unsubscribes of ``changes`` (record id, its subscription fields) that push no basis of
        their own: an unsubscribe sends it back (a GDPR portal refuses one without a basis, and
        the default sent instead would change what the contact shows). One status read for the
        group's addresses (per 100; one call per address without the batch scope); an address
        it leaves unanswered, or a read that fails (but for an error that stops the run:
        ``_stops_the_run``), gets ``default_legal_basis``: a failed look-up never holds back a
        person's no."""
        wanted: dict[str, set[str]] = {}
        for record_id, subs in changes:
            email = emails.get(record_id)
            for key, value in subs.items():
                match = _VIRTUAL.match(key)
                if (
                    email
                    and match
                    and not match["part"]
                    and str(value).upper() == "UNSUBSCRIBED"
                    and not subs.get(f"subscription_{match['id']}_legal_basis")
                ):
                    wanted.setdefault(email, set()).add(match["id"])
        if not wanted:
            return {}
        sids = sorted({sid for ids in wanted.values() for sid in ids})
        try:
            statuses = self._statuses(list(wanted), sids, strict=False)
        except ConnectorError as error:
            if _stops_the_run(error):
                raise  # a limit, the token, a permission: the unsubscribes would be refused alike
            # Given up after its retries (a 5xx): the unsubscribes go with default_legal_basis.
            log.warning(
                "hubspot.held_basis_unread",
                connector=self.name,
                records=[record_id for record_id, _subs in changes if emails.get(record_id) in wanted],
                status=error.rule.status,
                reason=error.rule.reason,
                note="unsubscribes sent with default_legal_basis",
            )
            statuses = {}
        return {
            email: {
                sid: str(status["legalBasis"])
                for sid, status in statuses.get(email, {}).items()
                if sid in ids and status.get("legalBasis") in V3_LEGAL_BASES
            }
            for email, ids in wanted.items()
        }

    def _subscription_results(
        self,
        record_id: str,
        email: str | None,
        subs: Mapping[str, Any],
        held: Mapping[str, str] | None = None,
    ) -> list[sdk.WriteResult]:
        """One contact's subscription changes, one v3 call each. No address found for the id:
        a contact deleted or merged away since the read (a batch read answers a merged-away id
        with the merged contact, under its new id) is gone; else the contact has none."""
        if not email and (gone := self._no_longer_here(record_id)) is not None:
            return [gone]
        if not email:
            return [
                sdk.WriteResult(
                    record_id,
                    False,
                    "NO_EMAIL",
                    "the contact has no email address: HubSpot keys subscriptions by it",
                )
            ]
        results = []
        for key, value in subs.items():
            match = _VIRTUAL.match(key)
            assert match is not None
            if match["part"] == "timestamp":
                results.append(sdk.WriteResult(record_id, False, "INVALID_FIELD", f"{key} is read-only"))
                continue
            if match["part"] == "legal_basis":
                if f"subscription_{match['id']}" not in subs:
                    # HubSpot records a legal basis only with a status change: claiming this
                    # written would make the next read look like new evidence.
                    results.append(
                        sdk.WriteResult(
                            record_id,
                            False,
                            "LEGAL_BASIS_WITHOUT_STATUS",
                            f"HubSpot sets {key} only with a subscribe or unsubscribe; map it pull-only",
                        )
                    )
                continue  # sent with the status it belongs to
            basis = subs.get(f"subscription_{match['id']}_legal_basis")
            if not basis and str(value).upper() == "UNSUBSCRIBED":
                basis = (held or {}).get(match["id"])
            results.append(
                self._set_subscription(
                    record_id, email, match["id"], str(value), str(basis) if basis else None
                )
            )
        return results

    def _set_subscription(
        self, record_id: str, email: str, sid: str, state: str, basis: str | None
    ) -> sdk.WriteResult:
        """One v3 subscribe or unsubscribe. Both carry a legal basis and its explanation, which a
        portal with the GDPR features on requires of either (HubSpot's v3 spec,
        PublicUpdateSubscriptionStatusRequest: "required for GDPR enabled portals"): ``basis``
        (the mapping's, or for an unsubscribe the one HubSpot holds with the status) else
        ``default_legal_basis``; the explanation ``legal_basis_explanation`` with a subscribe,
        ``unsubscribe_explanation`` with an unsubscribe (naming consentsync and the ledger's
        rule; never personal data)."""
        if state not in ("SUBSCRIBED", "UNSUBSCRIBED"):
            return sdk.WriteResult(
                record_id, False, "INVALID_VALUE", f"v3 sets SUBSCRIBED or UNSUBSCRIBED, not {state!r}"
            )
        action = "subscribe" if state == "SUBSCRIBED" else "unsubscribe"
        body = {
            "emailAddress": email,
            "subscriptionId": sid,
            "legalBasis": basis or self.config.default_legal_basis,
            "legalBasisExplanation": self.config.legal_basis_explanation
            if action == "subscribe"
            else self.config.unsubscribe_explanation,
        }
        try:
            self._request("POST", f"/communication-preferences/v3/{action}", json=body, describe=action)
        except ConnectorError as error:
            if error.rule.status == 409:
                return sdk.WriteResult(record_id, False, "CONFLICT", str(error), retryable=True)
            if error.rule.status != 400:
                raise
            # HubSpot's messages name the address: kept out of the answer, which the outbox and
            # the quarantine store and run reports show.
            text = re.sub(re.escape(email), "<email>", str(error), flags=re.IGNORECASE)
            if _ALREADY[state].search(text):
                return sdk.WriteResult(record_id, True)  # the state asked for is held already
            if action == "subscribe" and _REFUSAL.search(text):
                return sdk.WriteResult(
                    record_id,
                    False,
                    REFUSES_RESUBSCRIBE,
                    f"consentsync does not resubscribe a contact who unsubscribed from subscription {sid} "
                    "in HubSpot (its own policy: it never overrides a HubSpot unsubscribe; v3 subscribe "
                    "declined it and v4's resubscribe is not used). The person can opt in again themselves "
                    "through HubSpot's preferences page or a HubSpot form, which HubSpot records as theirs; "
                    "the ledger keeps the opt-in. Not retried.",
                    retryable=False,
                )
            return sdk.WriteResult(record_id, False, "VALIDATION_ERROR", text)
        return sdk.WriteResult(record_id, True)

    def _emails(self, record_ids: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        unique = list(dict.fromkeys(record_ids))
        size = self.config.batch_size
        for start in range(0, len(unique), size):
            chunk = unique[start : start + size]
            body = {"properties": ["email"], "inputs": [{"id": rid} for rid in chunk]}
            answer = self._request(
                "POST", f"/crm/v3/objects/{OBJECT}/batch/read", json=body, describe="batch read emails"
            ).json()
            for item in answer.get("results") or []:
                email = (item.get("properties") or {}).get("email")
                if email:
                    out[str(item["id"])] = str(email)
        return out

    def close(self) -> None:
        self.api.close()


# -- helpers -----------------------------------------------------------------------------------


def _stamp(value: Any) -> datetime | None:
    """A HubSpot time, or None where there is none or it cannot be read."""
    if value in (None, ""):
        return None
    try:
        return parse_hs_datetime(str(value))
    except ValueError:
        return None


def _addresses_held(
    versions: Sequence[Mapping[str, Any]], current: str, since: datetime | None, *, at_since: bool = True
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Of a contact's ``email`` history (``propertiesWithHistory``), each address (lower case)
    that it left after ``since`` (ever, when None; at it too where ``at_since``) before the one
    it has now (``current``), with the spans it had it: (from the time of the version that set
    it, to the time of the one that replaced it). Versions newer than the value the page read
    (a change since the search) are left for the next read. A history with a version of no
    readable time gives nothing: its spans could not be told apart (a no given on an address
    while another contact had it would pass for this one's)."""
    ordered: list[tuple[datetime, str]] = []
    for version in versions:
        stamp = _stamp(version.get("timestamp"))
        if stamp is None:
            return {}
        ordered.append((stamp, str(version.get("value") or "").strip().lower()))
    ordered.sort(key=lambda item: item[0], reverse=True)
    now_at = next((i for i, (_stamp_, value) in enumerate(ordered) if value == current), None)
    if now_at is None:
        return {}  # the value read is not in the history answered: nothing to go by
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    for newer, (held_from, address) in zip(ordered[now_at:], ordered[now_at + 1 :], strict=False):
        left_at = newer[0]
        if not address or address == current:
            continue
        if since is not None and (left_at < since or (left_at == since and not at_since)):
            continue
        out.setdefault(address, []).append((held_from, left_at))
    return out


def _held_before(
    results: Sequence[Mapping[str, Any]],
    current: Mapping[str, str],
    since: datetime | None,
    passed_id: int | None = None,
) -> dict[str, dict[str, list[tuple[datetime, datetime]]]]:
    """Of a batch read's ``results`` (with ``propertiesWithHistory: ["email"]``), contact id ->
    the addresses it left after ``since`` and the spans it had them (``_addresses_held``), for
    the contacts of ``current`` (id -> the address the contact was read with, lower case). At
    ``since`` itself too, but for a contact whose id is not after ``passed_id``: the read
    before passed that moment up to that contact (``_history_horizon``).
    Keyed by the id HubSpot answers: a contact merged away since answers the merged contact
    under its new id, whose history is not this contact's."""
    out: dict[str, dict[str, list[tuple[datetime, datetime]]]] = {}
    for item in results:
        record_id = str(item.get("id") or "")
        if record_id not in current:
            continue
        histories = item.get("propertiesWithHistory") or {}
        versions = histories.get("email") or []
        passed = passed_id is not None and record_id.isdigit() and int(record_id) <= passed_id
        left = _addresses_held(versions, current[record_id], since, at_since=not passed)
        more = _additional_held(histories.get(ADDITIONAL_EMAILS) or [], current[record_id], since, not passed)
        for address, spans in more.items():
            left.setdefault(address, []).extend(spans)
        if left:
            out[record_id] = left
    return out


def _address(value: Any) -> str:
    """An address as the connector compares it: NFC, trimmed, lower case (HubSpot may answer a
    ``subscriberIdString`` in another spelling than the one asked about)."""
    return unicodedata.normalize("NFC", str(value or "")).strip().lower()


def _additional_held(
    versions: Sequence[Mapping[str, Any]], current: str, since: datetime | None, at_since: bool = True
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Of a contact's ``hs_additional_emails`` history (``propertiesWithHistory``: each version
    the ";"-joined addresses), each secondary address (lower case) and the spans the contact had
    it: from the version that added it to the one that removed it, ``STILL_HELD`` where it still
    has it. Statuses are kept by address, so a no given under a secondary address while the
    contact had it (an older email's unsubscribe link, followed after HubSpot's merge kept that
    address as the merged contact's additional one) is the contact's, as an earlier address's
    is (``_earlier_values``). One the contact still has comes whatever the read's bound (it is
    the contact's current state; the same no handed over twice is one statement in the
    ledger); one it removed only if it left after ``since`` (as ``_addresses_held``). The
    address the contact has as its own (``current``) is read as the record's. A history with a
    version of no readable time gives nothing."""
    ordered: list[tuple[datetime, set[str]]] = []
    for version in versions:
        stamp = _stamp(version.get("timestamp"))
        if stamp is None:
            return {}
        ordered.append((stamp, {a for a in map(_address, str(version.get("value") or "").split(";")) if a}))
    ordered.sort(key=lambda item: item[0])
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    added: dict[str, datetime] = {}
    for stamp, present in ordered:
        for address in present - added.keys():
            added[address] = stamp
        for address in [a for a in added if a not in present]:
            held_from = added.pop(address)
            if since is not None and (stamp < since or (stamp == since and not at_since)):
                continue
            out.setdefault(address, []).append((held_from, stamp))
    for address, held_from in added.items():
        out.setdefault(address, []).append((held_from, STILL_HELD))
    out.pop(current, None)
    return out


def _earlier_no(
    status: Mapping[str, Any],
    opted_out: bool,
    opted_out_at: str | None,
    spans: Sequence[tuple[datetime, datetime]],
) -> datetime | None:
    """When an earlier address last showed a no for one subscription type given while the
    contact had it (its own unsubscribe, or its opt-out of all email, within one of ``spans``),
    or None where it showed none. A no given before the contact had the address (another
    contact's, or a previous holder's) or after it left it is not the contact's; nor is one of
    no readable time, which cannot be placed (taken, it would unsubscribe the contact's new
    address, which consentsync never undoes)."""
    noes: list[datetime | None] = []
    if status.get("status") == "UNSUBSCRIBED":
        noes.append(_stamp(status.get("timestamp")))
    if opted_out:
        noes.append(_stamp(opted_out_at))
    held = [
        no
        for no in noes
        if no is not None and any(held_from <= no <= left_at for held_from, left_at in spans)
    ]
    return max(held, default=None)


def _earlier_values(
    props: Mapping[str, Any],
    units: Mapping[str, int | None],
    held_before: Mapping[str, Sequence[tuple[datetime, datetime]]],
    statuses: Mapping[str, Mapping[str, Mapping[str, Any]]],
    opted_out: Mapping[str, OptOuts],
    unread: Collection[str] = (),
) -> tuple[dict[str, Any], dict[str, datetime]]:
    """The noes of a contact's earlier addresses that its record no longer shows, as
    ``subscription_<id>`` UNSUBSCRIBED with the legal basis and time of that no, and when each
    of those fields was given (the no's own time: ``CrmRecord.earlier_given_at``): for each
    subscription type read (``units``: id -> its business unit) the record does not show a no
    for, the latest no an earlier address showed while the contact had it (its own unsubscribe,
    or an opt-out of all email covering the type: ``_covering``). Left out where the record
    shows a yes given after it (the person's latest word, under the new address) or a yes whose
    order against it is not known: taken, a wrong no would have the engine unsubscribe the new
    address, which consentsync never undoes. Where none was found and an earlier address's
    statuses went unanswered (``unread``), ``UNREAD`` (the engine quarantines the contact for
    it), unless the record shows a yes given after the contact left every such address."""
    out: dict[str, Any] = {}
    given_at: dict[str, datetime] = {}
    for sid, unit in units.items():
        shown = props.get(f"subscription_{sid}")
        if shown == "UNSUBSCRIBED":
            continue  # the record says no itself
        latest: tuple[datetime, Mapping[str, Any]] | None = None
        for address, spans in held_before.items():
            status = statuses.get(address, {}).get(sid, {})
            covered, opted_out_at = _covering(opted_out.get(address), unit)
            when = _earlier_no(status, covered, opted_out_at, spans)
            if when is not None and (latest is None or when > latest[0]):
                latest = (when, status)
        if latest is None:
            left = [at for address, spans in held_before.items() if address in unread for _, at in spans]
            yes_at = _stamp(props.get(f"subscription_{sid}_timestamp")) if shown == "SUBSCRIBED" else None
            if left and (yes_at is None or yes_at < max(left)):
                out[f"subscription_{sid}"] = UNREAD
            continue
        when, status = latest
        if shown == "SUBSCRIBED":
            yes_at = _stamp(props.get(f"subscription_{sid}_timestamp"))
            if yes_at is None or yes_at >= when:
                continue  # the yes under the new address is later (or not known to be earlier)
        fields = {
            f"subscription_{sid}": "UNSUBSCRIBED",
            f"subscription_{sid}_legal_basis": status.get("legalBasis"),
            f"subscription_{sid}_timestamp": _iso(when),
        }
        out.update(fields)
        given_at.update(dict.fromkeys(fields, when))
    return out, given_at


def _iso(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _latest_no(status: Mapping[str, Any], opted_out_at: str | None) -> str | None:
    """When a contact opted out of all email last said no to a subscription type: the later of
    the opt-out and the type's own unsubscribe. The earlier one would date the no before a
    consent the person gave between the two, and that consent would then outrank the opt-out
    that came after it. An opt-out of unknown time leaves the no undated (read as late as
    possible, docs/policy.md), whatever the type's own unsubscribe says."""
    if opted_out_at is None:
        return None
    own = status.get("timestamp") if status.get("status") == "UNSUBSCRIBED" else None
    if not own:
        return opted_out_at
    try:
        return max(opted_out_at, str(own), key=parse_hs_datetime)
    except ValueError:  # an unreadable stamp dates nothing: the opt-out's stands
        return opted_out_at


def _unit(value: Any) -> int | None:
    """A ``businessUnitId`` as HubSpot answers it (a number); none given: the default unit;
    None where it cannot be read."""
    if value is None or value == "":
        return DEFAULT_UNIT
    text = str(value).strip()
    return int(text) if text.isdigit() else None


def _wide_scope(wide: Mapping[str, Any]) -> str | int | None:
    """What an EMAIL "wide" status covers: ``PORTAL_WIDE`` (its type, or no type: a portal
    without business units), or the id of the business unit of a ``BUSINESS_UNIT_WIDE`` one;
    None for another channel, another type or a unit that cannot be read (not taken: it could
    not be told which subscription types it covers)."""
    if str(wide.get("channel") or "EMAIL") != "EMAIL":
        return None
    kind = str(wide.get("wideStatusType") or PORTAL_WIDE)
    if kind == PORTAL_WIDE:
        return PORTAL_WIDE
    if kind == "BUSINESS_UNIT_WIDE":
        return _unit(wide.get("businessUnitId"))
    return None


def _covering(opt_outs: Mapping[str | int, str | None] | None, unit: int | None) -> tuple[bool, str | None]:
    """Whether an address's opt-outs of all email (``OptOuts``) cover a subscription type of
    business unit ``unit`` (an opt-out of the portal's email, or of that unit's), and when the
    latest of those that do was given: None where one of them has no time (the no is then
    undated, read as late as possible) or their times cannot be compared."""
    times = [at for scope, at in (opt_outs or {}).items() if scope in (PORTAL_WIDE, unit)]
    if not times:
        return False, None
    if None in times:
        return True, None
    try:
        return True, max(times, key=lambda at: parse_hs_datetime(str(at)))
    except ValueError:
        return True, times[0] if len(times) == 1 else None


def _stops_the_run(error: ConnectorError) -> bool:
    """Whether a one-address read's error is the run's, not the address's: a limit, the token,
    a permission."""
    return (
        isinstance(error, sdk.BudgetExhausted)
        or error.action in (Action.RATE_LIMITED, Action.REFRESH_TOKEN)
        or error.rule.status in (401, 403, 429)
    )


def _lacks_scope(error: ConnectorError) -> bool:
    """A 403 MISSING_SCOPES: the private app was not granted the scope the call needs."""
    return error.rule.status == 403 and error.rule.code == "MISSING_SCOPES"


def _redacted(text: str) -> str:
    """``text`` (a HubSpot message: it may quote the address a call named, in whatever spelling
    HubSpot answers it) with every email address in it replaced by ``<email>``, after NFKC
    normalisation (another Unicode form, a fullwidth "＠"): error texts reach logs, run reports,
    the quarantine and dead-letter reasons."""
    if not text:
        return text
    folded = unicodedata.normalize("NFKC", text)
    if "@" not in folded and "%40" not in folded.lower():
        return text
    return _ADDRESS_IN_TEXT.sub("<email>", folded)


class _PartialRead(ConnectorError):
    """A v4 batch status read that did not answer every address (``_partial_read``).
    ``failed``: the addresses (as asked) it named in an error entry or left without a result;
    None where that cannot be told address by address (an entry naming none of them), or where
    the entries say to wait (a rate limit): then only the whole read can fail."""

    def __init__(self, message: str, rule: ErrorRule, failed: set[str] | None) -> None:
        super().__init__(message, rule)
        self.failed = failed


def _partial_read(
    describe: str,
    status: int,
    errors: Sequence[Mapping[str, Any]],
    missing: Sequence[str],
    asked: Sequence[str],
) -> _PartialRead:
    """The error of a v4 batch status read that did not answer every address: by the error
    table, the rule of its error entries' ``status`` (an HTTP status, where HubSpot gives one)
    and ``category``, a refused request (VALIDATION_ERROR) a config failure, anything else (an
    address left unanswered, an internal error, an entry of a kind that would skip the record)
    ``PARTIAL_READ``, retried. The addresses are never named (they would reach the run's
    report): only how many; HubSpot's message goes with every address in it masked."""
    rules: list[ErrorRule] = []
    categories: list[str] = []
    keys = {_address(email): email for email in asked}
    failed: set[str] | None = {email for email in missing if _address(email) in keys}
    for entry in errors:
        category = str(entry.get("category") or "") or None
        code = str(entry.get("status") or "")
        if code.isdigit() and int(code) >= 400:
            rule = ERRORS.classify(int(code), category)
        elif category == "VALIDATION_ERROR":
            rule = ERRORS.classify(400, category)
        else:
            rule = PARTIAL_READ
        rules.append(PARTIAL_READ if rule.action is Action.SKIP else rule)
        categories.append(category or "ERROR")
        named = [keys.get(_address(i)) for i in (entry.get("context") or {}).get("ids") or []]
        if failed is not None and named and all(named):
            failed.update(email for email in named if email)
        else:
            failed = None  # an entry that names no address asked about
    rule = next(
        (r for r in rules if r.action is Action.FAIL),
        next((r for r in rules if r.action is Action.RATE_LIMITED), PARTIAL_READ),
    )
    if rule.action in (Action.RATE_LIMITED, Action.REFRESH_TOKEN) or not failed:
        failed = None
    count = len(failed) if failed else len({_address(m) for m in missing}) or len(errors)
    message = _redacted(str(errors[0].get("message") or ""))[:200] if errors else "no result for them"
    return _PartialRead(
        f"{describe}: {status}: HubSpot answered without the statuses of {count} of {len(asked)} "
        f"address(es) ({', '.join(sorted(set(categories))) or 'unanswered'}: {message})",
        rule,
        failed,
    )


def _check_object(object_type: str) -> None:
    message = f"the HubSpot connector reads and writes contacts, not {object_type!r}"
    sdk.require_object(object_type, {OBJECT}, message, "unsupported object")


def _cursor_id(since: sdk.Cursor) -> int | None:
    if since.record_id is None:
        return None
    if not since.record_id.isdigit():
        raise ConnectorError(
            f"cursor record id {since.record_id!r} is not a HubSpot record id",
            ErrorRule(Action.FAIL, Fault.CONFIG, "bad cursor"),
        )
    return int(since.record_id)


def _groups(results: list[dict[str, Any]]) -> list[tuple[datetime, list[dict[str, Any]]]]:
    """Consecutive results sharing a ``lastmodifieddate``, each sorted by id (HubSpot leaves the
    order of ties open)."""
    groups: list[tuple[datetime, list[dict[str, Any]]]] = []
    for raw in results:
        props = raw.get("properties") or {}
        stamp = parse_hs_datetime(str(props.get("lastmodifieddate") or raw["updatedAt"]))
        if groups and groups[-1][0] == stamp:
            groups[-1][1].append(raw)
        else:
            groups.append((stamp, [raw]))
    for _stamp, members in groups:
        members.sort(key=lambda raw: int(raw["id"]))
    return groups


def _unique_groups(indexes: list[int], updates: Sequence[sdk.RecordUpdate], size: int) -> Iterator[list[int]]:
    """Positions in groups of at most ``size``, in input order, no record twice in one group
    (HubSpot refuses duplicate ids in a batch)."""
    group: list[int] = []
    ids: set[str] = set()
    for index in indexes:
        record_id = updates[index].record_id
        if len(group) >= size or record_id in ids:
            yield group
            group, ids = [], set()
        group.append(index)
        ids.add(record_id)
    if group:
        yield group


def _deletion_key(record: sdk.CrmRecord) -> tuple[datetime, int]:
    return record.modstamp, int(record.record_id)


def _after(record: sdk.CrmRecord, stamp: datetime | None, record_id: int | None) -> bool:
    """After the (time, id) cursor; a cursor without an id takes its whole timestamp."""
    if stamp is None:
        return True
    if record_id is None:
        return record.modstamp >= stamp
    return _deletion_key(record) > (stamp, record_id)


def _property_values(props: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in props.items():
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif value is None:
            out[name] = ""
        else:
            out[name] = value
    return out


#: The answer of an update whose subscription changes HubSpot applied before the run stopped and
#: whose properties were never sent (sent again next run).
INTERRUPTED = "INTERRUPTED"
#: The answer of a write to a contact merged into another since the read (``_merged_away``).
MERGED_AWAY = "MERGED_AWAY"


def _no_such_contact(record_id: str) -> sdk.WriteResult:
    """A write to a contact a read of the id answers 404 too: archived (its recycle bin, which
    the archived listing will name with its last values) or deleted for good: gone."""
    return sdk.WriteResult(
        record_id, False, "OBJECT_NOT_FOUND", "no such contact: archived or deleted", False, gone=True
    )


def _merged_away(record_id: str, survivor: str) -> sdk.WriteResult:
    """A write to a contact merged into another since it was read (a read of the id answers
    ``survivor``): gone under this id (``WriteResult.gone``: merged away)."""
    return sdk.WriteResult(
        record_id,
        False,
        MERGED_AWAY,
        f"the contact was merged into contact {survivor}: HubSpot answers this id with that contact",
        False,
        gone=True,
    )


def _combined(record_id: str, parts: list[sdk.WriteResult]) -> sdk.WriteResult:
    failures = [p for p in parts if not p.ok]
    if not failures:
        return sdk.WriteResult(record_id, True)
    first = next((p for p in failures if p.gone), failures[0])
    return sdk.WriteResult(
        record_id,
        False,
        first.error_code,
        first.message,
        not first.gone and all(p.retryable for p in failures),
        gone=first.gone,
    )


def _window_seconds(response: requests.Response) -> float | None:
    """The rolling window an answer's rate-limit headers count (``X-HubSpot-RateLimit-Interval-
    Milliseconds``, e.g. 10000), in seconds; None where it says none."""
    value = str(response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds") or "").strip()
    return int(value) / 1000 if value.isdigit() and int(value) > 0 else None


def _rate_limit_wait(
    policy: str, message: str, response: requests.Response, retry_after: float | None
) -> float:
    """How long to wait before a call a 429 (not DAILY) refused is sent again: its Retry-After
    where it has one; a second for the search limit (policy SECONDLY, or its message, which is
    what HubSpot's own client goes by); else the rolling window (the 429's
    ``-Interval-Milliseconds``, or HubSpot's documented ten seconds). A window policy not known
    here is waited out as the longer: a one-second wait against a ten-second window would spend
    every retry inside the same window and fail the run."""
    if retry_after is not None:
        return retry_after
    if policy == SEARCH_POLICY or message.strip().lower() == SECONDLY_MESSAGE:
        return 1.0
    return _window_seconds(response) or BURST_WINDOW_SECONDS


def _required_scopes(body: Any) -> list[str]:
    scopes: list[str] = []
    for item in (body or {}).get("errors") or []:
        scopes += (item.get("context") or {}).get("requiredGranularScopes") or []
    return scopes


#: What each call counts as in the run's usage (``ApiUsage.per_endpoint``), most specific first.
_ENDPOINTS = (
    ("/search", "search"),
    ("/batch/update", "batch_update"),
    ("/batch/archive", "batch_archive"),
    ("/gdpr-delete", "gdpr_delete"),
    ("/contacts/merge", "merge"),
    ("/statuses/batch/read", "status_batch_read"),
    ("/unsubscribe-all/read", "wide_status_batch_read"),
    ("/unsubscribe-all", "wide_status_read"),
    ("/batch/read", "batch_read"),
    ("/v3/subscribe", "subscribe"),
    ("/v3/unsubscribe", "unsubscribe"),
    ("/v3/definitions", "definitions"),
    ("/properties/", "properties"),
    ("/v4/statuses/", "status_read"),
    ("/crm/v3/objects/", "list"),
)


__all__ = ["ERRORS", "REFUSES_RESUBSCRIBE", "HubSpotConnector", "parse_hs_datetime"]
