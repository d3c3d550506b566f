"""SuperOffice CRM, through its REST WebAPI (``/api/v1``) and requests.

One CRM record is a Person with the consents it holds, one group of fields per consent purpose
(``LegalBase_<KEY>``, ``Source_<KEY>``, ``Registered_<KEY>``, ``Updated_<KEY>``, ``Comment_<KEY>``,
where KEY is the purpose's key, e.g. EMARKETING), plus ``PersonId``, ``Email`` and
``ConsentUpdated``.

Reading: the ConsentPurpose archive provider lists consents changed after the cursor, read live.
Its ``consentPerson/updatedDate`` is a ``date`` column, compared by its date part only, so the
server is asked for whole UTC days (``updatedDate date '<day>'``) and the seconds are cut here; a
day's rows are walked in pages by the consent's id (``consentPersonId gt <last>``), a key a row
keeps when it changes again, so no row moving between two page calls is lost or read twice, and
no page counts rows ($skip). A day is read in chunks of a few pages, each chunk's persons handed
on in (second, person id) order as soon as its pages are read, the place inside the day kept in the
cursor's token (``read_changes``). Each person found is read
whole with ``Agents/Person/GetConsentInfos`` (the archive shows list values by their display
name, GetConsentInfos by key). Writing: ``LegalBase_<KEY>`` set to a legal-basis key
is ``SetConsent`` (with the configured source and comment), set to null it is ``RemoveConsent``;
``Comment_<KEY>`` rewrites the consent's comment (SetConsent with its legal basis and source);
the person's own fields (``Firstname``, ``MiddleName``, ``Lastname``, ``Title``, ``Email``,
``MobilePhone``, ``OfficePhone``, ``PrivatePhone``: what the ``anonymise`` erasure action
writes) are one ``PATCH Person/{id}`` (JSON Patch). SuperOffice has no batch call for consents:
one call per consent, and each update's answer is handed over as soon as its calls return.
``WriteAction.DELETE`` is ``DELETE Person/{id}``.

Deleted and merged persons: SuperOffice soft-deletes a person (its recycle bin) and hides it from
every API read, archives included; no endpoint lists deleted persons, and a merge (``POST
Person/{id}/MergeTo/{id}``) leaves no trace the API can list (the survivor cannot be found: an
erasure's DELETE of a person merged away answers 404 and is done; docs/connectors/superoffice.md).
The connector reads no deletions. An update answered 404 for a person a GET answers 404 too is
``gone``. A restore from the recycle bin touches no consent: each person the connector deleted or
found gone is noted (``sdk.Journal``) and looked up at each read while the recycle bin may hold
it; one shown again is handed on (``_restored``).

The tenant's endpoint: SuperOffice Online serves a tenant's API only on its current cluster and
answers 421 elsewhere; the connector finds it from the tenant's state API (``state_url``), again
after its ``ValidUntil`` and on a 421 (the call then made once more), and stops the run when the
tenant is not running (``TenantUnavailable``). An onsite base_url is used as it is.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from ipaddress import ip_address
from typing import Any, ClassVar
from urllib.parse import urlsplit

import requests
import structlog
from pydantic import TypeAdapter, ValidationError

from consentsync import sdk
from consentsync.sdk import Action, ConnectorError, ErrorRule, Fault
from consentsync_superoffice.settings import COMMENT_LENGTH, LIST_KEY, SuperOfficeSettings, utf16_units

ERRORS = sdk.ErrorTable(
    [
        ErrorRule(Action.REFRESH_TOKEN, Fault.TRANSIENT, "access token refused", 401),
        ErrorRule(Action.FAIL, Fault.CONFIG, "the integration user may not do this", 403),
        ErrorRule(Action.SKIP, Fault.DATA, "not found", 404),
        ErrorRule(Action.RETRY, Fault.TRANSIENT, "record busy", 409),
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "request limit reached", 429, "RequestLimitExceeded"),
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "too many requests", 429),
        ErrorRule(Action.SKIP, Fault.DATA, "value refused", 400),
        # "Misdirected Request": the tenant is served on another cluster (``_request`` finds it).
        ErrorRule(Action.FAIL, Fault.TRANSIENT, "tenant served elsewhere", 421),
    ]
)

log = structlog.get_logger("consentsync.superoffice")

OBJECT = "Person"
# UTC (the time zone list's code for it) and every date tagged with its offset.
SO_TIMEZONE = "UTC, includeTZOffset"
PURPOSE_ATTRIBUTES = ("LegalBase", "Source", "Registered", "Updated", "Comment")
PERSON_FIELDS = ("PersonId", "Email", "ConsentUpdated")
WRITABLE = ("LegalBase", "Comment")
# The person's own fields written by PATCH Person/{id} (the anonymise erasure action): text
# properties, and list properties written as their only item (null clears the list).
PERSON_TEXTS = ("Firstname", "MiddleName", "Lastname", "Title")
PERSON_LISTS = {
    "Email": "Emails",
    "MobilePhone": "MobilePhones",
    "OfficePhone": "OfficePhones",
    "PrivatePhone": "PrivatePhones",
}
PERSON_WRITABLE = (*PERSON_TEXTS, *PERSON_LISTS)
_UNSET: Any = object()
#: How many archive pages of a day a read walks before it hands their persons on (a chunk): a
#: day of at most that many pages is handed on whole, in (second, person) order.
CHUNK_PAGES = 20
# Updates whose deleted or gone persons are noted in the journal together (``write_batches``).
_NOTE_CHUNK = 100
#: An archive row as read: (its updated second, person id, the person's e-mail, consent id, when
#: the person was registered: None where the row does not say).
_Row = tuple[datetime, int, Any, int, datetime | None]
_PURPOSE_FIELD = re.compile(rf"^({'|'.join(PURPOSE_ATTRIBUTES)})_([A-Za-z0-9]+)$")
_COLUMN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(?:/[A-Za-z][A-Za-z0-9_:]*)*$")
_INFO_KEYS = {
    "LegalBase": "LegalBaseKey",
    "Source": "ConsentSourceKey",
    "Registered": "Registered",
    "Updated": "Updated",
    "Comment": "Comment",
}


def parse_so_time(value: Any) -> datetime:
    """SuperOffice's times: ISO with or without an offset, with any number of fraction digits
    (ConsentInfo carries seven). None means UTC: the connector reads only created/updated times,
    which SuperOffice keeps in UTC whatever the tenant's base time zone ("SOTimezone": "Created and
    updated date ... are always UTC"), and asks for every date in UTC, tagged (``SO_TIMEZONE``)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"not a time: {value!r}")
    text = value.strip().replace(" ", "T")
    match = re.fullmatch(r"([^.+Z]+?)(\.\d+)?(Z|[+-]\d{2}:?\d{2})?", text)
    if match is None:
        raise ValueError(f"not a time: {value!r}")
    base, fraction, zone = match.groups()
    fraction = (fraction or "")[:7]  # datetime keeps six digits
    zone = "+00:00" if zone in (None, "Z") else zone
    return datetime.fromisoformat(base + fraction[:7] + zone).astimezone(UTC)


def archive_literal(value: str) -> str:
    """A text value in an archive restriction: single-quoted, quotes and backslashes escaped
    with a backslash as SuperOffice documents."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def purpose_fields(fields: Sequence[str]) -> dict[str, list[str]]:
    """Requested fields by purpose key; raises a config error naming what is accepted."""
    wanted: dict[str, list[str]] = {}
    unknown: list[str] = []
    for name in fields:
        if name in PERSON_FIELDS:
            continue
        if name in PERSON_WRITABLE:
            raise ConnectorError(
                f"Person field {name} is written only (personal_fields), never read: map it nowhere else",
                ErrorRule(Action.FAIL, Fault.CONFIG, "write-only field read"),
            )
        match = _PURPOSE_FIELD.match(name)
        if match is None:
            unknown.append(name)
            continue
        wanted.setdefault(match.group(2), []).append(name)
    if unknown:
        raise ConnectorError(
            f"Person has no field(s) {', '.join(unknown)}: accepted are {', '.join(PERSON_FIELDS)} and "
            f"{', '.join(a + '_<PURPOSE KEY>' for a in PURPOSE_ATTRIBUTES)} (e.g. LegalBase_EMARKETING)",
            ErrorRule(Action.FAIL, Fault.CONFIG, "mapped field missing"),
        )
    return wanted


class SuperOfficeConnector(sdk.Connector):
    vendor = "superoffice"
    settings_model = SuperOfficeSettings
    # The archive reads the database as it is (no search index between): a consent shows once
    # its transaction commits. SuperOffice documents no bound on how long a save (with its
    # NetServer scripts and triggers, or a bulk import) may hold its stamp before the commit:
    # five minutes is an assumption (docs/connectors/superoffice.md).
    lookback: ClassVar[timedelta] = timedelta(minutes=5)
    can_delete: ClassVar[bool] = True

    def as_read_back(self, update: sdk.RecordUpdate) -> dict[str, Any]:
        """A removed consent (LegalBase_<KEY> set to null: RemoveConsent) reads back as the
        tenant's mark for it (``removal_reads_back_as``). The engine knows its own removal by it:
        never the person's withdrawal, and put back (SetConsent with the earlier legal basis)
        once its reason ends, unless the person said no since (it stands for theirs then:
        sync/engine.py ``_put_backs``, ``Mapping._put_back``)."""
        fields = dict(update.fields)
        for name, value in update.fields.items():
            if name.startswith("LegalBase_") and value is None:
                fields[name] = self.config.removal_reads_back_as
        return fields

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        self.config = SuperOfficeSettings.model_validate(dict(settings))
        columns = (
            self.config.column_person_id,
            self.config.column_updated,
            self.config.column_email,
            self.config.column_consent_id,
            *([self.config.column_person_registered] if self.config.column_person_registered else []),
        )
        for column in columns:
            if not _COLUMN.match(column):
                raise ConnectorError(
                    f"{column!r} is not an archive column name",
                    ErrorRule(Action.FAIL, Fault.CONFIG, "bad column name"),
                )
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", self.config.archive_provider):
            raise ConnectorError(
                f"{self.config.archive_provider!r} is not an archive provider name",
                ErrorRule(Action.FAIL, Fault.CONFIG, "bad provider name"),
            )
        # The tenant's root (``/api/v1`` follows it): SuperOffice Online's moves ("will change
        # routinely to balance the load"), found from the tenant's state API before the first
        # call, again once the state said it is no longer valid, and on a 421; an onsite
        # installation's is base_url.
        self._root = self.config.base_url.rstrip("/")
        self._root_found = not self.config.online
        self._root_until: datetime | None = None
        self._root_lock = threading.Lock()
        # The id_token's webapi_url claim (the refresh-token flow's login answers one): the
        # tenant's API where its state API cannot be asked.
        self._claimed_root: str | None = None
        self.api = sdk.HttpClient.configured(
            self.config,
            _classified,
            guard=lambda: self.config.budget.check(self.name, self.usage),
            headers=self._headers,
            refresh_session=self._forget_session,
        )
        # Shared by the threads that write side by side: one logs in, the others wait for it.
        self._token = sdk.SharedLogin(self._login)
        self._token_refused = False
        # Persons this connector deleted or found gone (``_note_gone``), each with when: looked up
        # again at each read while the tenant's recycle bin may still restore them
        # (``_restored``). One journal per tenant and principal.
        config = self.config
        self._journal = sdk.Journal(
            sdk.state_dir(config.state_dir),
            self.vendor,
            name,
            config.base_url.rstrip("/").lower(),
            config.client_id or config.auth,
            required=bool(config.state_dir or os.environ.get(sdk.STATE_DIR_ENV)),
        )
        self._purposes: list[str] | None = None
        # The look-back window of this run's reads (``resume_from``): a sweep starts that long
        # before the last one started.
        self._window = self.lookback

    # -- session -------------------------------------------------------------------------------

    def _login(self) -> str:
        config = self.config
        if config.auth == "token":
            if self._token_refused:
                raise ConnectorError(
                    f"{self.name}: SuperOffice refused the configured access token (401): it has expired "
                    "or was revoked; use auth refresh_token, or put a fresh token in the settings",
                    ErrorRule(Action.FAIL, Fault.CONFIG, "access token refused"),
                )
            assert config.access_token
            return config.access_token
        form = {
            "grant_type": "refresh_token",
            "client_id": config.client_id or "",
            "client_secret": config.client_secret or "",
            "refresh_token": config.refresh_token or "",
        }
        if config.redirect_uri:
            form["redirect_uri"] = config.redirect_uri
        self.usage.count("token")
        body = sdk.request_token(
            self.api.session, config.token_url, form, login="login", who=f"{self.name}: "
        )
        claimed = _claimed_api_root(body.get("id_token"))
        if claimed is not None:
            self._claimed_root = claimed
        return str(body["access_token"])

    def _headers(self) -> dict[str, str]:
        headers = {
            "Authorization": f"{self.config.auth_scheme} {self._token.get()}",
            "Accept": "application/json",
            # Dates in UTC both ways, each answer's tagged with its offset (WebAPI "Headers":
            # SO-TimeZone "will convert dates to/from the given time zone"; includeTZOffset tags
            # them). Without it a tenant with time zones on answers ordinary dates in its base
            # time zone, untagged, and takes restriction values as such; the created/updated
            # times read here are UTC either way ("SOTimezone"), so this only makes that explicit.
            "SO-TimeZone": SO_TIMEZONE,
        }
        if self.config.app_token:
            headers[self.config.app_token_header] = self.config.app_token
        return headers

    def _forget_session(self) -> None:
        if self.config.auth == "token":
            self._token_refused = True
        self._token.forget()

    def _request(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        busy_is_final: bool = False,
    ) -> Any:
        """One call, retried by the error table; answers the decoded JSON (None for 204). With
        ``busy_is_final`` a record another user holds (409) is not waited for: the write reports
        it as a retryable failure and the next run tries again."""

        root = self._api_root()
        response = self._send(kind, method, root, path, params, body, busy_is_final)
        if response.status_code == 421:
            # "Misdirected Request": the tenant moved to another cluster since its endpoint was
            # found (or the configured one is not its cluster). Found again, the call is made
            # once more there, within the run's budget as every call.
            moved = self._find_root(stale=root)
            if moved != root:
                response = self._send(kind, method, moved, path, params, body, busy_is_final)
            if response.status_code == 421:
                raise self._misdirected(kind, response)
        if response.status_code == 409:
            error = _classified(kind, response)
            rule = error.rule
            raise ConnectorError(
                str(error), ErrorRule(Action.SKIP, Fault.TRANSIENT, rule.reason, 409, rule.code)
            )
        if response.status_code == 204:
            return None
        return response.json()

    def _send(
        self,
        kind: str,
        method: str,
        root: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Any,
        busy_is_final: bool,
    ) -> requests.Response:
        return self.api.send(
            method,
            root + "/api/v1" + path,
            describe=kind,
            params=params,
            json=body,
            # A busy record's 409 is taken here, not retried, when the caller says so; a 421
            # (the tenant is served elsewhere) by ``_request``.
            accept=lambda answer: answer.status_code == 421 or (busy_is_final and answer.status_code == 409),
            before=lambda: self.usage.count(kind),
        )

    def _misdirected(self, kind: str, response: requests.Response) -> ConnectorError:
        error = _classified(kind, response)
        if self.config.online:
            message = (
                f"{self.name}: {error}: SuperOffice serves the tenant elsewhere (421 Misdirected "
                f"Request), and its state API ({self.config.state_url}) names no other endpoint: "
                "it is moving; the next run tries again"
            )
            return TenantUnavailable(
                message, ErrorRule(Action.FAIL, Fault.TRANSIENT, "tenant served elsewhere", 421)
            )
        message = (
            f"{self.name}: {error}: base_url is not where SuperOffice serves the tenant (421 "
            "Misdirected Request). For SuperOffice Online set base_url to the tenant's Online "
            "address, https://online.superoffice.com/CustNNNNN: the connector then finds its "
            "current endpoint"
        )
        rule = ErrorRule(Action.FAIL, Fault.CONFIG, "tenant served elsewhere", 421)
        return TenantUnavailable(message, rule)

    # -- the tenant's endpoint (SuperOffice Online) ---------------------------------------------

    def _api_root(self) -> str:
        """The tenant's root for the next call: found first where it is not known yet, and again
        once the state API's ``ValidUntil`` passed."""
        if self._root_found and (self._root_until is None or datetime.now(UTC) < self._root_until):
            return self._root
        return self._find_root(stale=None)

    def _find_root(self, *, stale: str | None) -> str:
        """Asks the tenant's state API where the tenant is served now (``Endpoint``): SuperOffice
        Online's documented way ("Check tenant status"; the endpoint "will change routinely to
        balance the load"). ``stale``: the root a call was just refused at (421); where another
        thread found a new one meanwhile, that one is answered without a call. A tenant that is
        not running (offline for maintenance, being provisioned) stops the run as a passing
        failure; one deleted or suspended as a configuration problem. Where the state API cannot
        be reached, the login's id_token ``webapi_url`` claim is taken, when there is one. Onsite
        (no state API): base_url."""
        config = self.config
        if not config.online:
            return self._root
        with self._root_lock:
            if self._root_found and stale is not None and self._root != stale:
                return self._root
            if (
                self._root_found
                and stale is None
                and (self._root_until is None or datetime.now(UTC) < self._root_until)
            ):
                return self._root
            try:
                state = self._tenant_state()
            except ConnectorError as error:
                if isinstance(error, sdk.BudgetExhausted | TenantUnavailable) or error.action in (
                    Action.RATE_LIMITED,
                    Action.REFRESH_TOKEN,
                ):
                    raise
                claimed = self._claim_root() if error.rule.fault is Fault.TRANSIENT else None
                if claimed is None:
                    # Never one record's failure: no call to the tenant can be made.
                    raise TenantUnavailable(
                        f"{self.name}: the tenant's endpoint cannot be found: {error}",
                        replace(error.rule, action=Action.FAIL),
                    ) from None
                log.warning("superoffice.state_unreachable_claim_used", connector=self.name, error=str(error))
                self._root, self._root_found, self._root_until = claimed, True, None
                return self._root
            root, valid_until = self._running_root(state)
            if root != self._root:
                log.info("superoffice.tenant_endpoint", connector=self.name, endpoint=root)
            now = datetime.now(UTC)
            self._root, self._root_found = root, True
            # A ValidUntil already past (SuperOffice's own sample is from 2020) says nothing: the
            # endpoint is then kept until a call is refused with 421.
            self._root_until = valid_until if valid_until is not None and valid_until > now else None
            return self._root

    def _tenant_state(self) -> dict[str, Any]:
        """``GET <state_url>``: the tenant's ``Endpoint``, ``State``, ``IsRunning``,
        ``ValidUntil`` (no credentials)."""
        assert self.config.state_url is not None
        response = self.api.send(
            "GET",
            self.config.state_url,
            describe="tenant state",
            authenticated=False,
            headers={"Accept": "application/json"},
            # A refusal (4xx) is answered here: never taken for the access token's (it is sent
            # none), nor retried. 5xx and 429 go by the error table.
            accept=lambda answer: 400 <= answer.status_code < 500 and answer.status_code != 429,
            before=lambda: self.usage.count("state"),
        )
        if response.status_code >= 400:
            raise TenantUnavailable(
                f"{self.name}: the tenant state API ({self.config.state_url}) refused: "
                f"{response.status_code} {response.text[:200]}; check the context identifier in base_url",
                ErrorRule(Action.FAIL, Fault.CONFIG, "tenant state refused", response.status_code),
            )
        body = sdk.json_or_none(response)
        if not isinstance(body, dict):
            raise TenantUnavailable(
                f"{self.name}: the tenant state API ({self.config.state_url}) answered no JSON object",
                ErrorRule(Action.FAIL, Fault.TRANSIENT, "tenant state unreadable", response.status_code),
            )
        return body

    def _claim_root(self) -> str | None:
        """The id_token's ``webapi_url`` of the refresh-token flow's login (logging in for it
        where it has not yet), checked as an endpoint from the state API is; None where the flow
        has none (a fixed access token) or it is not a SuperOffice address."""
        if self.config.auth != "refresh_token":
            return None
        if self._claimed_root is None:
            try:
                self._token.get()
            except ConnectorError:
                return None
        claimed = self._claimed_root
        if claimed is None:
            return None
        try:
            return self._checked_root(claimed, "the id_token's webapi_url")
        except ConnectorError:
            return None

    def _running_root(self, state: Mapping[str, Any]) -> tuple[str, datetime | None]:
        """The tenant's root and until when it holds, from a state answer; raises where the
        tenant is not running."""
        name = str(state.get("State") or "").strip()
        running = state.get("IsRunning")
        context = state.get("ContextIdentifier") or self.config.state_url
        if running is not True:
            shown = name or "not said"
            if name.lower() in _TENANT_GONE:
                raise TenantUnavailable(
                    f"{self.name}: the SuperOffice tenant {context} is {shown} (state API "
                    f"{self.config.state_url}): its API is not available; the tenant must be "
                    "reactivated, or the connector removed",
                    ErrorRule(Action.FAIL, Fault.CONFIG, "tenant not available"),
                )
            raise TenantUnavailable(
                f"{self.name}: the SuperOffice tenant {context} is not running (state {shown}, "
                f"state API {self.config.state_url}): maintenance or an upgrade usually takes "
                "minutes; the next run tries again (nothing was read or written)",
                ErrorRule(Action.FAIL, Fault.TRANSIENT, "tenant not running"),
            )
        endpoint = state.get("Endpoint")
        if not isinstance(endpoint, str) or not endpoint.strip():
            api = str(state.get("Api") or "").strip().rstrip("/")
            endpoint = api[: -len("/api")] if api.lower().endswith("/api") else None
        if not isinstance(endpoint, str) or not endpoint.strip():
            raise TenantUnavailable(
                f"{self.name}: the tenant state API ({self.config.state_url}) names no Endpoint",
                ErrorRule(Action.FAIL, Fault.TRANSIENT, "tenant endpoint unknown"),
            )
        root = self._checked_root(endpoint, "the tenant state API's Endpoint")
        valid_until = None
        with contextlib.suppress(ValueError):
            valid_until = parse_so_time(state.get("ValidUntil"))
        return root, valid_until

    def _checked_root(self, endpoint: str, said_by: str) -> str:
        """``endpoint`` as the tenant's root, where calls carrying the access token may go: https
        (plain http to a loopback host only, a sandbox), on the state API's host or another of
        its domain (``online3.superoffice.com`` for ``online.superoffice.com``)."""
        root = endpoint.strip().rstrip("/")
        assert self.config.state_url is not None
        try:
            _WEB_URL.validate_python(root)
        except ValidationError:
            usable = False
        else:
            usable = _same_site(urlsplit(root).hostname, urlsplit(self.config.state_url).hostname)
        if not usable:
            raise TenantUnavailable(
                f"{self.name}: {said_by} is not a SuperOffice address the connector sends its "
                f"credentials to: {root[:120]!r}",
                ErrorRule(Action.FAIL, Fault.CONFIG, "tenant endpoint refused"),
            )
        return root

    def _read(self, kind: str, method: str, path: str, **kwargs: Any) -> Any:
        """A read: a refusal the table would skip (a bad restriction, a missing provider) is a
        configuration problem for the whole run, not one record's."""
        try:
            return self._request(kind, method, path, **kwargs)
        except ConnectorError as error:
            if error.action is Action.SKIP:
                raise ConnectorError(
                    str(error), ErrorRule(Action.FAIL, Fault.CONFIG, error.rule.reason, error.rule.status)
                ) from None
            raise

    # -- the four operations -------------------------------------------------------------------

    def check(self) -> None:
        self._purposes = None  # always one real call
        self._tenant_purposes()

    def _tenant_purposes(self) -> list[str]:
        if self._purposes is None:
            answer = self._read(
                "archive",
                "GET",
                f"/archive/{self.config.archive_provider}",
                params={"$select": "key,name,active", "$top": "1000"},
            )
            self._purposes = [str(row.get("key")) for row in answer.get("value") or [] if row.get("key")]
        return self._purposes

    def describe(self, object_type: str) -> dict[str, sdk.FieldInfo]:
        _check_object(object_type)
        try:
            keys = self._tenant_purposes()
        except ConnectorError:
            keys = list(self.config.purposes)
        out = {
            "PersonId": sdk.FieldInfo("PersonId", "int", updateable=False, nillable=False),
            "Email": sdk.FieldInfo("Email", "string", updateable=False),
            "ConsentUpdated": sdk.FieldInfo("ConsentUpdated", "datetime", updateable=False, nillable=False),
        }
        out["Email"] = sdk.FieldInfo("Email", "string", updateable=True)
        for name in PERSON_WRITABLE:
            out.setdefault(name, sdk.FieldInfo(name, "string", updateable=True))
        for key in keys:
            for attribute in PURPOSE_ATTRIBUTES:
                name = f"{attribute}_{key}"
                kind = "datetime" if attribute in ("Registered", "Updated") else "string"
                out[name] = sdk.FieldInfo(name, kind, updateable=attribute in WRITABLE)
        return out

    def resume_from(self, cursor: sdk.Cursor, lookback: timedelta | None = None) -> sdk.Cursor:
        """As every connector resumes a cursor of (second, person) (one stored before the read
        kept its place in a token, or set by an admin); a cursor with the read's token is kept
        as it is: the token holds its own look-back (``_Walk``). The window is kept for the read:
        the next sweep starts that long before the last one started."""
        self._window = self.lookback if lookback is None else lookback
        return super().resume_from(cursor, lookback)

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: sdk.Cursor, until: datetime
    ) -> Iterator[sdk.CrmRecord]:
        """Persons whose consents changed after ``since`` and before ``until``'s second.

        ``consentPerson/updatedDate`` is of restriction type ``date``: SuperOffice compares only
        its date part, so the server is asked for whole days and the seconds are cut here. The
        read is a *sweep*: from the day of its floor (every change before the floor is handled)
        to the day of ``until``, a UTC day at a time (``updatedDate date '<day>'``), each day's
        rows in pages walked by the consent's id (``consentPersonId gt <last>``, ordered by it),
        a key a consent keeps when it is changed again, so a row changed, added or committed late
        between two page calls pushes no other out of sight, and no page counts rows ($skip).
        Each page's persons with a change at or after the floor and before ``until``'s second are
        handed on as soon as the page is read, in (second, person id) order, each read whole with
        GetConsentInfos; the position (day, last consent id walked, last person handed on) goes
        into the cursor's token with each person (``completed_cursor``), so the engine keeps it
        with every page it commits and a run cut anywhere (its budget, a kill) resumes there.

        A sweep that started at S has seen every row committed before S; a row committed after
        S behind its position (a consent changed again keeps its low id; a save committed late)
        is stamped no earlier than S less the look-back window. So once a sweep ends, the next
        one starts at that moment (its floor), walking that day's pages again and handing on
        only what changed since: a sweep cut across runs is followed, in the run that ends it, by
        the next one. A day holding no change is skipped by asking for the first change after
        it (``updatedDate after '<day>'``). With ``latest_page_first`` (off by default: it
        assumes the archive orders by the full updated time), a sweep begun again on the floor's
        day asks first for that day's page newest first (``_Sweeps._latest``): where it holds
        every change since the floor, the day is done without its walk. Records come in (second,
        person) order within a page; across pages of a day in the order of the walk (the token,
        not the records' seconds, is the position)."""
        _check_object(object_type)
        wanted = purpose_fields(fields)
        self.expected_records = None
        walk = _Walk.resumed(since, self.name)
        yield from self._restored(walk, until, wanted)
        sweeps = _Sweeps(self, walk, until, wanted)
        # A run's budget spent inside a day stops the read as any error does: the engine keeps
        # what was handed over with the position reached (the token), and the next run goes on.
        yield from sweeps.run()

    # -- the recycle bin ---------------------------------------------------------------------------

    def _note_gone(self, persons: Iterable[int]) -> dict[int, str]:
        """Notes persons this connector deletes (DELETE Person/{id}: SuperOffice moves it to its
        recycle bin) or found gone (a write answered 404, and a GET too), with when, all in one
        write of the journal: until the recycle bin may have purged them, each read looks them
        up again (``_restored``). Answers each person's entry (none where the lookups are off)."""
        if self.config.recycle_bin_days <= 0:
            return {}
        now = _second(datetime.now(UTC)).isoformat()
        entries = {person: f"{person}@{now}" for person in persons}
        self._journal.add_many(entries.values())
        return entries

    def _restored(
        self, walk: _Walk, until: datetime, wanted: dict[str, list[str]]
    ) -> Iterator[sdk.CrmRecord]:
        """Persons noted gone (``_note_gone``) that SuperOffice shows again: restored from its
        recycle bin (a user's Restore, or ``Agents/Person/Undelete``), each read whole, so that
        its link is live again and an erasure's delete on it is sent again. A restore leaves the
        person's consents as they were (ConsentPerson has no deleted date: its rows are not
        touched), and SuperOffice documents no change time it stamps: the consents' archive never
        names such a person. So each noted person is asked for (``GET Person/{id}``: 404 while it
        is in the recycle bin) at every read, until ``recycle_bin_days`` after it went (then it
        is purged for good). A person handed on is forgotten once the engine kept the position
        of the read that handed it on (its token names it): a run stopped before that hands it
        on again (read again unchanged, it changes nothing)."""
        if walk.restored:
            self._journal.discard(walk.restored)
            walk.restored = []
        days = self.config.recycle_bin_days
        if days <= 0:
            return
        now = datetime.now(UTC)
        by_person: dict[int, list[str]] = {}
        purged: list[str] = []
        for entry in self._journal.names():
            person, gone_at = _noted(entry)
            if person is None or gone_at is None or now - gone_at > timedelta(days=days + 1):
                purged.append(entry)
            else:
                by_person.setdefault(person, []).append(entry)
        if purged:
            self._journal.discard(purged)
        # Where the run has a budget, a quarter of what is left of it at most, so that the read
        # of the changes always goes on; the next read goes on after the last person asked for.
        persons = sorted(by_person, key=lambda person: (person <= walk.rechecked, person))
        budget = self.config.budget.per_run
        if budget is not None:
            persons = persons[: max(1, (budget - self.usage.calls) // 4)]
        handed: list[str] = []
        for person in persons:
            try:
                entity = self._request("person_get", "GET", f"/Person/{person}")
            except ConnectorError as error:
                if error.rule.status == 404 and not isinstance(error, TenantUnavailable):
                    continue  # still in the recycle bin
                raise
            finally:
                walk.rechecked = person if len(persons) < len(by_person) else 0
            infos = self._request(
                "get_consent_infos", "POST", "/Agents/Person/GetConsentInfos", body={"PersonId": person}
            )
            log.info("superoffice.person_restored", connector=self.name, person=person)
            handed += by_person[person]
            # The position stays where it was until every restored person is handed on.
            self.completed_cursor = walk.cursor(until)
            yield _record(
                person,
                _restored_stamp(entity, infos),
                _first_email(entity),
                infos or [],
                wanted,
                _registered(entity.get("CreatedDate") if isinstance(entity, dict) else None),
            )
        if handed:
            walk.restored = handed
        if handed or walk.rechecked:
            self.completed_cursor = walk.cursor(until)

    def _sweep_start(self, until: datetime, asked: datetime) -> datetime:
        """When a sweep whose first call was made at ``asked`` (our clock) started, by
        SuperOffice's clock: ``until`` at the latest, earlier where its answers (that first one's
        included) showed its clock behind ours. Every row committed before it is on the pages
        the sweep reads."""
        moment = until
        clock = self.crm_clock()
        offset = clock.offset() if clock is not None else None
        if offset is not None and offset.behind:
            moment = min(moment, asked + offset.low)
        return _second(moment)

    def _first_change(self) -> datetime | None:
        """The second of the earliest change of all (a read from the start), None when none."""
        first = self._first_row(None)
        return first[0] if first else None

    def _next_day_with_changes(self, day: date) -> date | None:
        """The next day after ``day`` holding a change, None when none does. Whether SuperOffice's
        ``after`` takes the day itself is not documented: when its first row is of ``day``, the
        next day is read (and, when empty, skipped from there)."""
        first = self._first_row(f"{self.config.column_updated} after {self._day_literal(day)}")
        if first is None:
            return None
        following = day + timedelta(days=1)
        return max(first[0].date(), following)

    def _first_row(self, where: str | None) -> _Row | None:
        config = self.config
        order = f"{config.column_updated} asc,{config.column_consent_id} asc"
        rows, _more = self._archive_page(where, order, top=1)
        return rows[0] if rows else None

    def _day_page(self, day: date, after: int) -> tuple[list[_Row], bool]:
        """One page of a day's archive rows (the date part of the updated column), in consent-id
        order, after consent ``after`` (0: from the first); and whether more may follow. Fails
        the run when the page makes no progress (the server ignoring the restriction or the
        order) rather than asking the same again."""
        config = self.config
        on_day = f"{config.column_updated} date {self._day_literal(day)}"
        where = on_day if not after else f"{on_day} and {config.column_consent_id} gt {int(after)}"
        page, more = self._archive_page(where, f"{config.column_consent_id} asc")
        ids = [row[3] for row in page]
        if any(b <= a for a, b in itertools.pairwise(ids)) or (after and ids and ids[0] <= after):
            raise ConnectorError(
                f"{self.name}: the archive ignored the consent-id order or restriction "
                f"({config.column_consent_id} gt {after}, ordered by it)",
                ErrorRule(Action.FAIL, Fault.CONFIG, "archive paging refused"),
            )
        if more and not page:
            raise ConnectorError(
                f"{self.name}: the archive answered an empty page with a next page to follow "
                f"({where}): no progress",
                ErrorRule(Action.FAIL, Fault.CONFIG, "archive paging made no progress"),
            )
        return page, more

    def _latest_page(self, day: date) -> tuple[list[_Row], bool]:
        """The first page of a day's archive rows newest first (by the updated column, then the
        consent id, both descending), and whether more may follow. One call: a consistent
        snapshot of the day's latest changes, not a walk."""
        config = self.config
        on_day = f"{config.column_updated} date {self._day_literal(day)}"
        return self._archive_page(on_day, f"{config.column_updated} desc,{config.column_consent_id} desc")

    def _day_literal(self, day: date) -> str:
        return archive_literal(day.strftime(self.config.restriction_date_format))

    def _archive_page(self, where: str | None, order: str, top: int | None = None) -> tuple[list[_Row], bool]:
        """One page of the archive: its rows as (second, person id, e-mail, consent id), and
        whether more may follow (a full page, or one the server cut short with a next link)."""
        config = self.config
        size = top or config.page_size
        registered = config.column_person_registered
        params = {
            "$select": ",".join(
                (
                    config.column_person_id,
                    config.column_updated,
                    config.column_email,
                    config.column_consent_id,
                    *([registered] if registered else []),
                )
            ),
            "$orderby": order,
            "$top": str(size),
        }
        if where:
            params["$filter"] = where
        answer = self._read("archive", "GET", f"/archive/{config.archive_provider}", params=params)
        rows = [
            (
                _second(parse_so_time(row.get(config.column_updated))),
                _person_id(row.get(config.column_person_id)),
                row.get(config.column_email),
                _person_id(row.get(config.column_consent_id)),
                _registered(row.get(registered)) if registered else None,
            )
            for row in answer.get("value") or []
        ]
        more = len(rows) >= size or bool(answer.get("odata.nextLink"))
        return rows, more

    def write_batches(self, updates: Sequence[sdk.RecordUpdate]) -> Iterator[dict[int, sdk.WriteResult]]:
        """Each update's answer as soon as its calls return (SuperOffice has no batch call: one
        SetConsent or RemoveConsent per person and purpose, one PATCH for the person's own
        fields, one DELETE). A limit or a run-wide error propagates after the answers before.

        The persons deleted or found gone are noted for the recycle bin's lookups
        (``_note_gone``) before the engine takes their answers, in one write of the journal a
        ``_NOTE_CHUNK`` updates (each write rewrites and syncs the file): the persons a chunk
        deletes before its first DELETE is sent (forgotten again where their delete is not
        done), those its updates find gone at its end, their answers held back until then
        (nothing of such a write was applied: held back, nothing is lost if the run stops)."""
        for start in range(0, len(updates), _NOTE_CHUNK):
            yield from self._write_chunk(updates, range(start, min(len(updates), start + _NOTE_CHUNK)))

    def _write_chunk(
        self, updates: Sequence[sdk.RecordUpdate], positions: range
    ) -> Iterator[dict[int, sdk.WriteResult]]:
        noted = self._note_gone(
            dict.fromkeys(int(updates[p].record_id) for p in positions if _deletes_person(updates[p]))
        )
        deleted: set[int] = set()
        found: dict[int, sdk.WriteResult] = {}  # answered gone: held back until noted
        settled = False

        def unused() -> list[str]:
            kept = deleted | {int(updates[p].record_id) for p in found}
            return [entry for person, entry in noted.items() if person not in kept]

        try:
            last: dict[int, sdk.WriteResult] = {}
            stop: BaseException | None = None
            for position in positions:
                update = updates[position]
                try:
                    result = self._write_one(update)
                except _Interrupted as cut:
                    # Some of the update's calls were applied before the run stopped: its answer
                    # comes before the error, so the ledger knows what SuperOffice holds from it.
                    last, stop = {position: cut.result}, cut.error
                    break
                except Exception as error:  # the run stops: the answers held back go first
                    stop = error
                    break
                if result.gone:
                    found[position] = result
                    continue
                if result.ok and _deletes_person(update):
                    deleted.add(int(update.record_id))
                yield {position: result}
            gone = dict.fromkeys(int(updates[p].record_id) for p in found)
            self._note_gone(person for person in gone if person not in noted)
            if forgotten := unused():
                self._journal.discard(forgotten)
            settled = True
            for answers in (found, last):
                if answers:
                    yield answers
            if stop is not None:
                raise stop from None
        finally:
            if not settled and (forgotten := unused()):
                # Stopped early (the engine closed the write, or the journal failed): a delete
                # not sent stays noted at worst, looked up (in vain) until recycle_bin_days.
                with contextlib.suppress(ConnectorError):
                    self._journal.discard(forgotten)

    def _write_one(self, update: sdk.RecordUpdate) -> sdk.WriteResult:
        record_id = update.record_id
        if update.object_type != OBJECT or not str(record_id).isdigit():
            return sdk.WriteResult(
                record_id, False, "INVALID_RECORD", f"not a SuperOffice Person id: {record_id!r}"
            )
        person = int(record_id)
        if update.action is sdk.WriteAction.DELETE:
            return self._outcome(record_id, lambda: self._delete_person(person))
        by_purpose: dict[str, dict[str, Any]] = {}
        person_fields: dict[str, Any] = {}
        for name, value in update.fields.items():
            if name in PERSON_WRITABLE:
                person_fields[name] = value
                continue
            match = _PURPOSE_FIELD.match(name)
            if match is None or match.group(1) not in WRITABLE:
                return sdk.WriteResult(
                    record_id,
                    False,
                    "FIELD_NOT_WRITABLE",
                    f"{name}: only {' and '.join(a + '_<PURPOSE KEY>' for a in WRITABLE)} and the "
                    f"person's {', '.join(PERSON_WRITABLE)} are written",
                )
            by_purpose.setdefault(match.group(2), {})[match.group(1)] = value
        patch = _person_patch(person_fields)
        if isinstance(patch, str):
            return sdk.WriteResult(record_id, False, "INVALID_VALUE", patch)
        calls: list[Callable[[], tuple[str, str] | None]] = [
            lambda p=purpose, v=values: self._write_consent(person, p, v)
            for purpose, values in by_purpose.items()
        ]
        if patch:
            calls.append(lambda: self._patch_person(person, patch))
        for number, call in enumerate(calls):
            try:
                answer = self._outcome(record_id, call)
            except ConnectorError as error:
                if number == 0:
                    raise  # nothing of this update was applied
                message = (
                    f"{number} of its {len(calls)} calls applied, then the run stopped: {error.rule.reason}"
                )
                raise _Interrupted(
                    sdk.WriteResult(record_id, False, INTERRUPTED, message, True), error
                ) from None
            if not answer.ok:
                return answer
        return sdk.WriteResult(record_id, True)

    def _outcome(self, record_id: str, action: Callable[[], tuple[str, str] | None]) -> sdk.WriteResult:
        """Runs one record's calls: a refusal of this record is its answer; what concerns the
        whole run (a limit, the token, the configuration) is raised. A 404 of an update is
        checked with a read of the person: when that answers 404 too, SuperOffice holds no
        person under the id (deleted, or merged away) and the answer says ``gone``."""
        try:
            problem = action()
        except sdk.BudgetExhausted:
            raise
        except _PersonGone as gone:
            return sdk.WriteResult(record_id, False, "NOT_FOUND", str(gone), False, gone=True)
        except ConnectorError as error:
            if (
                error.action in (Action.RATE_LIMITED, Action.REFRESH_TOKEN)
                or error.rule.fault is Fault.CONFIG
                or isinstance(error, TenantUnavailable)
            ):
                raise  # the whole run's problem: it stops, the rows stay pending
            code = error.rule.code or str(error.rule.status)
            if error.rule.status == 404 and self._person_gone(int(record_id)):
                return sdk.WriteResult(record_id, False, code, str(error), False, gone=True)
            retryable = error.action is Action.RETRY or error.rule.fault is Fault.TRANSIENT
            return sdk.WriteResult(record_id, False, code, str(error), retryable)
        if problem is not None:
            return sdk.WriteResult(record_id, False, problem[0], problem[1])
        return sdk.WriteResult(record_id, True)

    def _person_gone(self, person: int) -> bool:
        """Whether ``GET Person/{id}`` answers 404: no such person (deleted, or merged away)."""
        try:
            self._request("person_get", "GET", f"/Person/{person}")
        except ConnectorError as error:
            if error.rule.status == 404:
                return True
            run_wide = error.action in (Action.RATE_LIMITED, Action.REFRESH_TOKEN)
            if run_wide or error.rule.fault is Fault.CONFIG or isinstance(error, TenantUnavailable):
                raise
            return False
        return False

    def _delete_person(self, person: int) -> tuple[str, str] | None:
        """DELETE Person/{id}: SuperOffice soft-deletes it (recycle bin). A person already gone
        (404) is what the deletion wants: done. A person merged into another (``POST
        Person/{id}/MergeTo/{id}``) answers 404 as well, and SuperOffice's API tells nothing
        of the person that kept its data (docs/connectors/superoffice.md, "Merged persons")."""
        try:
            self._request("person_delete", "DELETE", f"/Person/{person}", busy_is_final=True)
        except ConnectorError as error:
            if error.rule.status != 404 or isinstance(error, TenantUnavailable):
                raise
        return None  # noted gone before it was sent (``write_batches``)

    def _patch_person(self, person: int, patch: list[dict[str, Any]]) -> tuple[str, str] | None:
        self._request("person_patch", "PATCH", f"/Person/{person}", body=patch, busy_is_final=True)
        return None

    def _write_consent(self, person: int, purpose: str, values: dict[str, Any]) -> tuple[str, str] | None:
        """One consent's new legal basis and/or comment: SetConsent, or RemoveConsent for a null
        legal basis. A comment alone keeps the consent's legal basis and source (SetConsent
        takes them all, so they are read first). Answers (code, message) for a value refused
        before any call."""
        legal = values.get("LegalBase", _UNSET)
        comment = values.get("Comment", _UNSET)
        if comment is not _UNSET and not isinstance(comment, str | None):
            return "INVALID_VALUE", f"Comment_{purpose}: text expected, not {type(comment).__name__}"
        if isinstance(comment, str) and utf16_units(comment) > COMMENT_LENGTH:
            return "INVALID_VALUE", (
                f"Comment_{purpose}: {utf16_units(comment)} UTF-16 code units; SuperOffice's consent "
                f"comment holds at most {COMMENT_LENGTH}"
            )
        if legal is None:
            self._request(
                "remove_consent",
                "POST",
                "/Agents/Person/RemoveConsent",
                body={"PersonId": person, "Purpose": purpose},
                busy_is_final=True,
            )
            return None
        source = self.config.write_source
        if legal is _UNSET:
            infos = self._request(
                "get_consent_infos", "POST", "/Agents/Person/GetConsentInfos", body={"PersonId": person}
            )
            current = next(
                (i for i in infos or [] if str(i.get("ConsentPurposeKey") or "").upper() == purpose.upper()),
                None,
            )
            if current is None or not current.get("LegalBaseKey"):
                if not infos and self._person_gone(person):
                    raise _PersonGone(f"person {person} not found (GET Person/{person}: 404)")
                return "NO_CONSENT", f"person {person} has no {purpose} consent to comment on"
            legal, source = current["LegalBaseKey"], current.get("ConsentSourceKey") or source
        elif not isinstance(legal, str) or not LIST_KEY.match(legal):
            return "INVALID_VALUE", f"LegalBase_{purpose}: {legal!r} is not a legal basis key"
        self._request(
            "set_consent",
            "POST",
            "/Agents/Person/SetConsent",
            body={
                "PersonId": person,
                "Purpose": purpose,
                "Source": source,
                "LegalBase": legal,
                "Comment": self.config.write_comment if comment is _UNSET else (comment or ""),
            },
            busy_is_final=True,
        )
        return None

    def close(self) -> None:
        self.api.close()


# -- helpers -----------------------------------------------------------------------------------

_WEB_URL: TypeAdapter[str] = TypeAdapter(sdk.WebUrl)
#: Tenant states whose API stays unavailable until a person acts ("Check tenant status": Deleted,
#: Deleting, DeleteFailed, Suspended "in termination", ProvisioningFailed).
_TENANT_GONE = frozenset({"deleted", "deleting", "deletefailed", "suspended", "provisioningfailed"})
#: The id_token claim naming the tenant's REST API (SuperOffice's OpenID Connect claims).
WEBAPI_URL_CLAIM = "http://schemes.superoffice.net/identity/webapi_url"


class TenantUnavailable(ConnectorError):
    """The tenant's API cannot be called now (not running, or served on an endpoint that is not
    found): the whole run's problem, never one record's."""


def _same_site(host: str | None, of: str | None) -> bool:
    """Whether ``host`` is ``of`` or another host of its parent domain (``online3.superoffice.com``
    beside ``online.superoffice.com``)."""
    if not host or not of:
        return False
    host, of = host.lower().rstrip("."), of.lower().rstrip(".")
    if host == of:
        return True
    with contextlib.suppress(ValueError):
        ip_address(of)
        return False  # an address (a sandbox on 127.0.0.1) has no domain: itself only
    parent = of.split(".", 1)[1] if of.count(".") >= 2 else None
    return parent is not None and host.endswith("." + parent)


def _claimed_api_root(id_token: Any) -> str | None:
    """The tenant root an id_token's ``webapi_url`` claim names (``https://online3.superoffice.
    com/Cust12345/api/`` gives ``https://online3.superoffice.com/Cust12345``); None where the
    token has none. Its signature is not checked: the token came from the token endpoint over
    TLS, and the root is checked as any discovered one (``_checked_root``)."""
    if not isinstance(id_token, str) or id_token.count(".") < 2:
        return None
    payload = id_token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    url = claims.get(WEBAPI_URL_CLAIM) if isinstance(claims, dict) else None
    if not isinstance(url, str) or not url.strip():
        return None
    root = url.strip().rstrip("/")
    for suffix in ("/api/v1", "/api"):
        if root.lower().endswith(suffix):
            return root[: -len(suffix)]
    return root


#: The answer of an update of which SuperOffice applied some calls (a consent set or removed)
#: before the run stopped (a limit, the token, the service): not done, sent again next run.
INTERRUPTED = "INTERRUPTED"


class _PersonGone(Exception):
    """SuperOffice holds no person under the id an update names (a read of it answered 404)."""


class _Interrupted(Exception):
    """The run stops (``error``) after part of an update was applied (``result`` answers it)."""

    def __init__(self, result: sdk.WriteResult, error: ConnectorError) -> None:
        super().__init__(str(error))
        self.result = result
        self.error = error


def _deletes_person(update: sdk.RecordUpdate) -> bool:
    """A DELETE of a Person by a valid id (``_write_one`` refuses the others unsent)."""
    return (
        update.action is sdk.WriteAction.DELETE
        and update.object_type == OBJECT
        and str(update.record_id).isdigit()
    )


def _check_object(object_type: str) -> None:
    message = f"SuperOffice objects: {OBJECT} (its consents are fields of it), not {object_type!r}"
    sdk.require_object(object_type, {OBJECT}, message)


@dataclass(slots=True)
class _Walk:
    """Where the read stands, kept in the cursor's token (JSON) between runs.

    ``floor`` (with ``floor_id``, a person id, 0 for none): every change before it, in (second,
    person) order, is handled; the sweep under way hands on the changes after it. ``sweep``:
    when (SuperOffice's clock) the sweep under way started; None when none is, and ``done``
    then says when the last one started: the next sweep's floor is the look-back window before
    that. ``day`` and ``after``: the day being walked and the last consent id of it whose
    persons are all handed on. ``upto``: the last consent id of the chunk of that day being
    handed on, ``at`` the (second, person) of its last person handed on (None: none yet)."""

    floor: datetime | None = None
    floor_id: int = 0
    done: datetime | None = None
    sweep: datetime | None = None
    day: date | None = None
    after: int = 0
    upto: int | None = None
    at: tuple[datetime, int] | None = None
    # The chunk under way is the day's latest page (``_Sweeps._latest``), not a stretch of the id
    # walk: a cut one is asked again newest first, ``at`` telling what it handed on.
    latest: bool = False
    # Persons noted gone that the read this token is of handed on as restored (``_restored``):
    # once the engine keeps it, they are forgotten.
    restored: list[str] = field(default_factory=list)
    # The last noted person looked up where a run's budget let a read look up only some (0: none).
    rechecked: int = 0

    @classmethod
    def resumed(cls, since: sdk.Cursor, name: str) -> _Walk:
        """The walk a cursor stands for: its token, or, for a cursor without one (stored by an
        earlier version, set by an admin, a look-back start), a sweep to begin from its (second,
        person): every change after it is handed on."""
        if since.token is not None:
            try:
                return cls.from_token(since.token)
            except (ValueError, TypeError, KeyError, IndexError) as error:
                log.warning("superoffice.cursor_token_unreadable", connector=name, error=str(error))
        if since.modstamp is None:
            return cls()
        return cls(_second(since.modstamp), _person_id(since.record_id or "0"))

    @classmethod
    def from_token(cls, token: str) -> _Walk:
        data = json.loads(token)
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError("not a SuperOffice read position")
        at, upto = data.get("at"), data.get("upto")
        return cls(
            _moment(data.get("floor")),
            int(data.get("floor_id") or 0),
            _moment(data.get("done")),
            _moment(data.get("sweep")),
            date.fromisoformat(data["day"]) if data.get("day") else None,
            int(data.get("after") or 0),
            int(upto) if upto is not None else None,
            (_required(at[0]), int(at[1])) if at else None,
            data.get("latest") is True,
            [str(entry) for entry in data.get("restored") or []],
            int(data.get("rechecked") or 0),
        )

    def token(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "floor": _iso(self.floor),
                "floor_id": self.floor_id,
                "done": _iso(self.done),
                "sweep": _iso(self.sweep),
                "day": self.day.isoformat() if self.day else None,
                "after": self.after,
                "upto": self.upto,
                "at": [_iso(self.at[0]), self.at[1]] if self.at else None,
                # Only while it is so: tokens of a read without it stay as they were.
                **({"latest": True} if self.latest else {}),
                **({"restored": list(self.restored)} if self.restored else {}),
                **({"rechecked": self.rechecked} if self.rechecked else {}),
            },
            separators=(",", ":"),
        )

    def cursor(self, until: datetime) -> sdk.Cursor:
        """The cursor the engine keeps: (floor, floor person) as its position, which only moves
        forward, and the walk in its token."""
        return sdk.Cursor(self.floor, str(self.floor_id) if self.floor_id else None, self.token(), until)


class _Sweeps:
    """One read: the sweep under way carried on (or one begun), and, once a sweep begun in an
    earlier run ends, the next one begun in this run (a sweep begun in this run that ends ends
    the read: the next one is the next run's)."""

    def __init__(
        self, connector: SuperOfficeConnector, walk: _Walk, until: datetime, wanted: dict[str, list[str]]
    ) -> None:
        self.connector = connector
        self.walk = walk
        self.until = until
        self.end = _second(until)  # rows of seconds before it: every second read is complete
        self.wanted = wanted
        self.window = max(connector._window, timedelta(0))
        # Persons read whole (GetConsentInfos) in this read: all after ``until``.
        self.handed: set[int] = set()
        # Whether the position moved (a chunk walked, a person handed on, a sweep ended).
        self.moved = False
        # When (our clock) the sweep begun in this read made its first call; None once its
        # start is known by SuperOffice's clock (its first answer's Date) or none was begun.
        self.asked: datetime | None = None

    def run(self) -> Iterator[sdk.CrmRecord]:
        walk = self.walk
        begun_here = walk.sweep is None
        if begun_here and not self._begin():
            return
        while True:
            yield from self._sweep()
            self._started()
            walk.done, walk.sweep = walk.sweep, None
            walk.day, walk.after, walk.upto, walk.at = None, 0, None, None
            self._moved()
            if begun_here or not self._begin():
                return
            begun_here = True

    def _begin(self) -> bool:
        """Begins a sweep: from the floor, raised to the look-back window before the start of
        the last sweep (every row committed before that start was on its pages; one committed
        since behind its position is stamped no earlier than the window before it). False when
        SuperOffice holds no change at all."""
        walk, connector = self.walk, self.connector
        self.asked = datetime.now(UTC)
        if walk.done is not None:
            settled = _second(walk.done - self.window)
            if walk.floor is None or (settled, 0) > (walk.floor, walk.floor_id):
                walk.floor, walk.floor_id = settled, 0
        if walk.floor is None:
            first = connector._first_change()
            if first is None:
                return False
            # From the start of its day: the archive may order the date column by its date part
            # only (ties by consent id, as the restrictions compare it), so the first row may be
            # a later change of that day than another row's; a floor at its second would pass
            # the earlier ones over, a withdrawal among them.
            walk.floor = datetime.combine(first.date(), time(), UTC)
        walk.sweep = _second(self.until)  # until its first answer tells SuperOffice's clock
        walk.day, walk.after, walk.upto, walk.at = walk.floor.date(), 0, None, None
        return True

    def _sweep(self) -> Iterator[sdk.CrmRecord]:
        """The sweep under way, from its position to its end: the day of ``until``, or the last
        day holding a change."""
        walk, connector = self.walk, self.connector
        while walk.day is not None:
            midnight = datetime.combine(walk.day, time(), UTC)
            if midnight >= self.end:
                return
            # Opt-in (``latest_page_first``): the page is whole only where the archive orders by
            # the full time, which SuperOffice does not document. A token cut on a latest page
            # with the setting since turned off walks the day from its start (below).
            shortcut = connector.config.latest_page_first and (walk.latest or self._at_floor_day_start())
            latest = self._latest() if shortcut else None
            if latest is not None:
                # Every change of the day at or after the floor, in one page: the chunk is the
                # page (a run cut while handing it on asks for it again: ``latest``).
                rows, more = latest, False
                walk.latest = True
            else:
                if walk.latest:
                    # A cut latest page no longer holds every change since the floor: the day is
                    # walked by id from its start, a chunk of its own (persons handed on from
                    # the page come again: read again unchanged, they change nothing).
                    walk.latest, walk.after, walk.upto, walk.at = False, 0, None, None
                rows, more = self._chunk()
            yield from self._hand_on(rows)
            walk.after, walk.upto, walk.at, walk.latest = walk.upto or walk.after, None, None, False
            self._moved()
            if more:
                continue
            following = midnight + timedelta(days=1)
            day = None if following >= self.end else connector._next_day_with_changes(walk.day)
            if day is None:
                return
            walk.day, walk.after = day, 0
            self._moved()

    def _at_floor_day_start(self) -> bool:
        """Whether the walk stands at the start of the floor's day in a sweep begun after another
        ended: the day it walks again (today's, usually), where most rows are older than the
        floor. (A first sweep's floor is the earliest change of all: its day is walked.)"""
        walk = self.walk
        return (
            walk.done is not None
            and walk.floor is not None
            and walk.day == walk.floor.date()
            and walk.after == 0
            and walk.upto is None
            and walk.at is None
        )

    def _latest(self) -> list[_Row] | None:
        """The floor's day's rows changed at or after the floor, where one page newest first
        holds them all: the page is not full, or its oldest row is older than the floor's
        second, where the archive orders by the updated time, not its date part (an assumption
        SuperOffice does not document: only with ``latest_page_first``). None otherwise (a busy
        day's latest page, or rows not in time order): the day is walked by consent id, as every
        day is. So a sweep begun again on today does not walk today's pages from the first
        consent id to find the few changes since the last one: a consent changed again keeps its
        low id, which only the walk, or this order, finds."""
        walk, connector = self.walk, self.connector
        assert walk.day is not None and walk.floor is not None
        rows, more = connector._latest_page(walk.day)
        self._started()
        if any(later[0] > earlier[0] for earlier, later in itertools.pairwise(rows)):
            return None  # not newest first: nothing can be concluded from the page
        if more and (not rows or rows[-1][0] >= walk.floor):
            return None
        return rows

    def _chunk(self) -> tuple[list[_Row], bool]:
        """The rows of the day's next chunk: a few pages (``_chunk_pages``), or the chunk cut
        before, walked again up to its last consent id; and whether the day holds more.
        ``upto`` holds the chunk's last consent id while its persons are handed on; ``after``
        moves there once they all are."""
        walk, connector = self.walk, self.connector
        assert walk.day is not None
        limit = walk.upto
        pages = self._chunk_pages() if limit is None else None
        rows: list[_Row] = []
        after, count, more = walk.after, 0, True
        while more:
            page, more = connector._day_page(walk.day, after)
            self._started()
            count += 1
            if limit is not None and any(row[3] > limit for row in page):
                rows += [row for row in page if row[3] <= limit]
                after, more = limit, True
                break
            rows += page
            after = page[-1][3] if page else after
            if (limit is not None and after >= limit) or (pages is not None and count >= pages):
                break
        walk.upto = after
        return rows, more

    def _chunk_pages(self) -> int:
        """``CHUNK_PAGES``, or fewer where the run's budget could not read every person of them
        (a page's rows may each be a person: a call each): a chunk the budget cuts is walked
        again by the next run."""
        config = self.connector.config
        if config.budget.per_run is None:
            return CHUNK_PAGES
        left = config.budget.per_run - self.connector.usage.calls
        return max(1, min(CHUNK_PAGES, left // (config.page_size + 1)))

    def _started(self) -> None:
        """After the first answer of a sweep begun in this read: its start by SuperOffice's clock."""
        if self.asked is not None:
            self.walk.sweep = self.connector._sweep_start(self.until, self.asked)
            self.asked = None

    def _hand_on(self, rows: list[_Row]) -> Iterator[sdk.CrmRecord]:
        """Each person of one chunk with a change after the floor and before ``until``'s
        second, once, at its last such second, in (second, person) order, read whole; the
        position after each. Passed over: what the position says was handed on from this chunk
        (a chunk walked again after a cut), and a person read whole earlier in this read whose
        change here is older than the look-back window before ``until`` (committed before that
        read)."""
        walk = self.walk
        assert walk.floor is not None
        floor = (walk.floor, walk.floor_id)
        latest: dict[int, tuple[datetime, Any, datetime | None]] = {}
        for second, person, email, _consent, registered in rows:
            if second >= self.end or (second, person) <= floor:
                continue
            known = latest.get(person)
            if known is None or second > known[0]:
                latest[person] = (second, email, registered)
        settled = self.end - self.window
        todo = [
            (second, person, email, registered)
            for person, (second, email, registered) in sorted(
                latest.items(), key=lambda item: (item[1][0], item[0])
            )
            if (walk.at is None or (second, person) > walk.at)
            and not (person in self.handed and second < settled)
        ]
        for number, (second, person, email, registered) in enumerate(todo, 1):
            infos = self.connector._request(
                "get_consent_infos", "POST", "/Agents/Person/GetConsentInfos", body={"PersonId": person}
            )
            self.handed.add(person)
            if number < len(todo):
                walk.at = (second, person)
            else:
                # The chunk's last person: once committed, the whole chunk is (where the engine
                # commits the read's last page, the position must not stop short of it).
                walk.after, walk.upto, walk.at, walk.latest = walk.upto or walk.after, None, None, False
            self._moved()
            yield _record(person, second, email, infos or [], self.wanted, registered)

    def _moved(self) -> None:
        self.moved = True
        self.connector.completed_cursor = self.walk.cursor(self.until)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def _moment(text: Any) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(str(text))
    if moment.tzinfo is None:
        raise ValueError(f"a time without its zone: {text!r}")
    return moment.astimezone(UTC)


def _required(text: Any) -> datetime:
    moment = _moment(text)
    if moment is None:
        raise ValueError("a position without its second")
    return moment


def _second(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


def _person_id(value: Any) -> int:
    if isinstance(value, bool):
        raise ConnectorError(f"not a person id: {value!r}", ErrorRule(Action.FAIL, Fault.DATA, "bad id"))
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConnectorError(
            f"not a person id: {str(value)[:40]!r}", ErrorRule(Action.FAIL, Fault.DATA, "bad id")
        ) from None
    return number


def _noted(entry: str) -> tuple[int | None, datetime | None]:
    """A journal entry of ``_note_gone``: ``<person id>@<when>``."""
    person, _, when = entry.partition("@")
    try:
        return int(person), _moment(when)
    except ValueError:
        return None, None


def _first_email(entity: Any) -> Any:
    emails = entity.get("Emails") if isinstance(entity, dict) else None
    first = emails[0] if isinstance(emails, list) and emails else None
    return first.get("Value") if isinstance(first, dict) else None


def _restored_stamp(entity: Any, infos: Any) -> datetime:
    """A restored person's change time as an ordinary read gives it: its consents' latest
    updated time (the restore stamps none of them), else the person's own."""
    stamps = []
    for info in infos if isinstance(infos, list) else []:
        with contextlib.suppress(ValueError, AttributeError):
            stamps.append(parse_so_time(info.get("Updated")))
    if not stamps and isinstance(entity, dict):
        with contextlib.suppress(ValueError):
            stamps.append(parse_so_time(entity.get("UpdatedDate") or entity.get("Updated")))
    return _second(max(stamps)) if stamps else _second(datetime.now(UTC))


def _person_patch(fields: Mapping[str, Any]) -> list[dict[str, Any]] | str:
    """The JSON Patch of PATCH Person/{id} for the person's own fields (a list field gets its
    value as its only item, null clears it); a message when a value is not text."""
    operations: list[dict[str, Any]] = []
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            return f"{name}: text or null expected, not {type(value).__name__}"
        if name in PERSON_LISTS:
            items = [{"Value": value}] if value else []
            operations.append({"op": "replace", "path": f"/{PERSON_LISTS[name]}", "value": items})
        else:
            operations.append({"op": "replace", "path": f"/{name}", "value": value or ""})
    return operations


def _registered(value: Any) -> datetime | None:
    """When the person was registered (the archive's ``personRegisteredDate``, the PersonEntity's
    ``CreatedDate``): UTC whatever the tenant's zone, as the updated times ("SOTimezone"), to the
    second; None where it is missing or not a time."""
    if value in (None, ""):
        return None
    try:
        return _second(parse_so_time(value))
    except ValueError:
        return None


def _record(
    person: int,
    stamp: datetime,
    email: Any,
    infos: list[Mapping[str, Any]],
    wanted: dict[str, list[str]],
    registered: datetime | None = None,
) -> sdk.CrmRecord:
    fields: dict[str, Any] = {
        "PersonId": str(person),
        "Email": email if isinstance(email, str) and email.strip() else None,
        "ConsentUpdated": stamp.isoformat().replace("+00:00", "Z"),
    }
    by_purpose = {str(info.get("ConsentPurposeKey") or "").upper(): info for info in infos}
    for key, names in wanted.items():
        info = by_purpose.get(key.upper())
        for name in names:
            attribute = name.split("_", 1)[0]
            value = info.get(_INFO_KEYS[attribute]) if info is not None else None
            value = value if value not in ("", None) else None
            if attribute in ("Registered", "Updated") and value is not None:
                # Always UTC (SOTimezone), tagged here: a time the mapping got without its zone
                # would be read as one in an unknown zone (a no up to 12 hours later).
                with contextlib.suppress(ValueError):  # not a time: the mapping says so
                    value = parse_so_time(value).isoformat().replace("+00:00", "Z")
            fields[name] = value
    return sdk.CrmRecord(OBJECT, str(person), stamp, fields, created_at=registered)


def _classified(kind: str, response: requests.Response) -> ConnectorError:
    body = sdk.json_or_none(response)
    code = message = None
    if isinstance(body, dict):
        code = body.get("ErrorType") or body.get("ExceptionType")
        message = body.get("Error") or body.get("Message") or body.get("ExceptionMessage")
    code = str(code) if code else None
    shown = message or (response.text[:200] if body is None else body)
    error = sdk.response_error(kind, response, ERRORS, code, str(shown))
    # The rule as matched, with SuperOffice's own error type as the code the run report shows.
    error.rule = replace(error.rule, status=response.status_code, code=code)
    return error


__all__ = ["ERRORS", "SuperOfficeConnector", "archive_literal", "parse_so_time", "purpose_fields"]
