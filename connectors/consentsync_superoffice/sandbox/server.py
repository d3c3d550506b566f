"""A SuperOffice sandbox: a local HTTPS server on 127.0.0.1 speaking SuperOffice's REST WebAPI
(``/api/v1``) as SuperOffice documents it, backed by an in-memory tenant
(:class:`~consentsync_superoffice.sandbox.tenant.SuperOfficeTenant`), with the fault switches and
call counting every sandbox has (:class:`~consentsync.sandbox.server.HttpsSandbox`).

>>> from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
>>> with SuperOfficeSandbox() as so:
...     so.tenant.seed(300, seed=1)
...     token = so.issue_token()

The tenant's API is served under its current endpoint only, ``/<cluster>/Cust12345/api/v1/...``
(:attr:`SuperOfficeSandbox.tenant_url`; SuperOffice Online's ``https://online3.superoffice.com/
Cust12345``): any other prefix (``/Cust12345/api/v1``, Online's authentication host's address, or
the cluster the tenant left, :meth:`SuperOfficeSandbox.move_tenant`) answers 421 "Wrong subdomain
used to access tenant", as Online has since 2023-11-17. ``GET /api/state/Cust12345`` (no
credentials) answers the tenant's state as SuperOffice's state API does (``ContextIdentifier,
Endpoint, State, IsRunning, ValidUntil, Api``); while :attr:`SuperOfficeSandbox.tenant_state` is
not Running (or OnlineMaintenance), the API answers 503.

Endpoints:

* ``POST /api/v1/Agents/Person/SetConsent`` ``{PersonId, Purpose, Source, LegalBase, Comment}``
  (keys of the purpose, the source and the legal basis), 204;
* ``POST /api/v1/Agents/Person/RemoveConsent`` ``{PersonId, Purpose}``, 204;
* ``POST /api/v1/Agents/Person/HasConsent`` ``{PersonId, Purpose}``, ``true`` / ``false``
  (false for a withdrawn consent);
* ``POST /api/v1/Agents/Person/GetConsentInfos`` ``{PersonId}``: ConsentInfo items
  (``ConsentPersonId, Comment, Registered, RegisteredAssociateId, Updated, UpdatedAssociateId,
  LegalBaseId/Key/Name, ConsentPurposeId/Key/Name, ConsentSourceId/Key/Name``);
* ``GET /api/v1/archive/ConsentPurpose`` (:mod:`consentsync_superoffice.sandbox.archive`):
  ``{"odata.metadata", "odata.nextLink", "value": [...]}``, at most ``max_page_size`` rows a page;
  read live, as SuperOffice's is: a test changes rows between two page calls with
  :attr:`SuperOfficeSandbox.after_archive_page`;
* ``GET /api/v1/Person/{id}``: the person, 404 when there is none (or it was deleted);
* ``PATCH /api/v1/Person/{id}``: a JSON Patch array (``replace``/``add``/``remove`` on
  ``Firstname``, ``MiddleName``, ``Lastname``, ``Title``, ``Emails``, ``MobilePhones``,
  ``OfficePhones``, ``PrivatePhones``; paths case-insensitive, leading slash optional) or a JSON
  Merge Patch object; 200 with the person, 404 when there is none;
* ``DELETE /api/v1/Person/{id}``: 204; the person and its consents are gone from every read
  (SuperOffice soft-deletes to its recycle bin, which the API never shows); 404 when there is none;
* ``POST /api/v1/Agents/Person/Undelete`` ``{Id}``: 204, the person back from the recycle bin with
  its consents as they were (:meth:`SuperOfficeTenant.restore_person`); 404 when it is not there;
* ``POST /login/common/oauth/tokens``: the refresh-token grant of SuperOffice Online's OpenID
  Connect login (``grant_type=refresh_token, client_id, client_secret, refresh_token``).

Authentication: ``Authorization: Bearer <access token>`` (or ``SOTicket <ticket>``, the system user
flow's credential; the sandbox takes any token it issued in either scheme); with ``app_token`` set (as Online
requires of a server-side app), also ``SO-AppToken``. Without valid credentials: 401 with
``WWW-Authenticate: Bearer`` and an error body.

Choices where SuperOffice's documentation is silent, so a connector must not rely on them: the
error body is ``{"Error": message, "ErrorType": type, "ErrorSource": "WebApi"}`` (types
``NotAuthenticated``, ``ArgumentException``, ``EntityNotFoundException``,
``ConcurrencyException`` (a per-record ``fail_ids`` fault, 409), ``RequestLimitExceeded`` and
``TooManyRequests`` (429 with ``Retry-After``), ``ServiceUnavailable``); ConsentInfo times carry
an offset and seven fraction digits as SuperOffice's own sample does; GetConsentInfos of an unknown
person answers an empty list.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from consentsync.sandbox.server import (
    HttpsSandbox,
    PathMatch,
    PathRoute,
    RequestBodyError,
    Route,
    SandboxError,
    SandboxRequest,
    SandboxResponse,
    json_response,
    match_path,
)
from consentsync.sandbox.serving import Serving, credential_lines, running_lines, sandbox_main, seeded
from consentsync.sandbox.tokens import IssuedTokens
from consentsync_superoffice.sandbox.archive import ArchiveQuery, run_query
from consentsync_superoffice.sandbox.tenant import ConsentRow, SuperOfficeTenant, TenantError

__all__ = ["ENDPOINT_KINDS", "SuperOfficeCredentials", "SuperOfficeSandbox", "serve_forever"]

log = logging.getLogger("consentsync_superoffice.sandbox.server")

ENDPOINT_KINDS = (
    "token",
    "state",
    "misdirected",
    "archive",
    "person_get",
    "person_patch",
    "person_delete",
    "person_undelete",
    "set_consent",
    "remove_consent",
    "has_consent",
    "get_consent_infos",
    "not_found",
)
_WRITE_KINDS = ("set_consent", "remove_consent", "person_patch", "person_delete", "person_undelete")
# The tenant's API below its endpoint's path (``/online1/Cust12345``): the prefix is checked
# against the tenant's current endpoint (``SuperOfficeSandbox.route``).
_API = r"(?P<prefix>(?:/[A-Za-z0-9_-]+){0,2})/api/v1"
#: The tenant states whose API answers ("Check tenant status": IsRunning).
RUNNING_STATES = ("Running", "OnlineMaintenance")
_ROUTES: tuple[PathRoute, ...] = tuple(
    (method, re.compile(pattern, re.IGNORECASE), kind, auth)
    for method, pattern, kind, auth in (
        ("POST", r"(?:/[A-Za-z0-9_-]+)?/login/common/oauth/tokens", "token", False),
        ("GET", r"/api/state/(?P<context>[A-Za-z0-9_-]+)", "state", False),
        ("GET", _API + r"/archive/(?P<provider>[A-Za-z0-9_]+)", "archive", True),
        ("GET", _API + r"/Person/(?P<person_id>[^/]+)", "person_get", True),
        ("PATCH", _API + r"/Person/(?P<person_id>[^/]+)", "person_patch", True),
        ("DELETE", _API + r"/Person/(?P<person_id>[^/]+)", "person_delete", True),
        ("POST", _API + r"/Agents/Person/Undelete", "person_undelete", True),
        ("POST", _API + r"/Agents/Person/SetConsent", "set_consent", True),
        ("POST", _API + r"/Agents/Person/RemoveConsent", "remove_consent", True),
        ("POST", _API + r"/Agents/Person/HasConsent", "has_consent", True),
        ("POST", _API + r"/Agents/Person/GetConsentInfos", "get_consent_infos", True),
    )
)


@dataclass
class SuperOfficeCredentials:
    """What the sandbox's login accepts: an OpenID Connect client and one refresh token."""

    client_id: str = "consentsync-sandbox-client"
    client_secret: str = "consentsync-sandbox-client-secret"
    refresh_token: str = "consentsync-sandbox-refresh-token"


class SuperOfficeError(SandboxError):
    """An answer of the web API's own (``code`` is SuperOffice's ErrorType)."""


class _OAuthError(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _include_tz_offset(request: SandboxRequest) -> bool:
    """Whether the request's SO-TimeZone header (``<zone>, includeTZOffset``, WebAPI "Headers")
    asks for dates tagged with their offset."""
    parts = (request.header("SO-TimeZone") or "").split(",")
    return any(part.strip().lower() == "includetzoffset" for part in parts[1:])


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"Error": message, "ErrorType": error_type, "ErrorSource": "WebApi"}


def _consent_time(moment: dt.datetime) -> str:
    """``2019-06-16T16:48:30.1899348+02:00``-style, as SuperOffice's sample answers (here UTC)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0+00:00"


class SuperOfficeSandbox(HttpsSandbox):
    """The server. Run-time controls (HTTP-free): :attr:`tenant`, :attr:`faults`,
    :attr:`after_archive_page`, :meth:`issue_token`, :meth:`expire_sessions`,
    :meth:`reset_counters`."""

    endpoint_kinds = ENDPOINT_KINDS
    server_name = "Microsoft-IIS/10.0"
    credentials_class = SuperOfficeCredentials
    # The tenant's settings (SuperOffice Online's values; constructor keywords too).
    app_token = None  # the SO-AppToken every request must carry, when set
    max_page_size = 1000  # rows a page at most
    token_lifetime = 3600.0  # seconds an access token lives
    request_limit_retry_after = 3600  # the Retry-After of the request limit's answer
    tenant_name = "Cust12345"  # the tenant's path segment (its context identifier)
    # The cluster serving the tenant now (its endpoint, https://<cluster>.superoffice.com/Cust12345
    # on Online, is ``/<cluster>/Cust12345`` here): every other prefix answers 421 (``move_tenant``).
    cluster = "online1"
    # What the state API says (``GET /api/state/Cust12345``): Running, OfflineMaintenance, ...
    # Only Running and OnlineMaintenance serve the API; otherwise it answers 503.
    tenant_state = "Running"
    state_valid_seconds = 3600.0  # the state answer's ValidUntil, from now

    def __init__(self, tenant: SuperOfficeTenant | None = None, **options: Any) -> None:
        self.tenant = tenant or SuperOfficeTenant()
        super().__init__(normalize_id=_person_key, **options)
        self._tokens = IssuedTokens()
        #: Called with each archive query once its page is read and before it is sent: what
        #: users do between two page calls (SuperOffice's archive is read live, so a consent
        #: changed meanwhile leaves its place in the order, or enters it). None: nothing.
        self.after_archive_page: Callable[[ArchiveQuery], None] | None = None

    # ------------------------------------------------------------------ addresses, credentials

    @property
    def tenant_url(self) -> str:
        """The tenant's current endpoint (``/api/v1`` follows it): its cluster's, as the state API
        names it. A connector configured with it alone uses it as it is (as onsite), until the
        tenant moves (``move_tenant``)."""
        return f"{self.base_url}/{self.cluster}/{self.tenant_name}"

    @property
    def online_url(self) -> str:
        """The tenant's address on the authentication host (``https://online.superoffice.com/
        Cust12345``): what an Online connector is configured with; API calls there answer 421."""
        return f"{self.base_url}/{self.tenant_name}"

    @property
    def state_url(self) -> str:
        """The tenant's state API (``https://online.superoffice.com/api/state/Cust12345``)."""
        return f"{self.base_url}/api/state/{self.tenant_name}"

    def move_tenant(self, cluster: str) -> None:
        """SuperOffice moves the tenant to another cluster ("to balance the load"): from now on
        its API answers there only, the state API names the new endpoint, and calls to the old
        one answer 421 Misdirected Request."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", cluster):
            raise ValueError(f"not a cluster name: {cluster!r}")
        self.cluster = cluster

    def online_settings(self) -> dict[str, Any]:
        """:meth:`connection_settings`: an Online connector's, the endpoint found from the state
        API."""
        return self.connection_settings()

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/login/common/oauth/tokens"

    def connection_settings(self) -> dict[str, Any]:
        c = self.credentials
        return {
            **super().connection_settings(),
            # As an Online tenant is configured: its Online address (the authentication host's,
            # where API calls answer 421) and its state API, which names its endpoint.
            "base_url": self.online_url,
            "state_url": self.state_url,
            "auth": "refresh_token",
            "client_id": c.client_id,
            "client_secret": c.client_secret,
            "refresh_token": c.refresh_token,
            "token_url": self.token_url,
        }

    def issue_token(self) -> str:
        """A fresh access token without an HTTP call (not counted)."""
        return self._tokens.issue(f"8A:{self.tenant_name}.{secrets.token_urlsafe(48)}", self.token_lifetime)

    def expire_sessions(self) -> None:
        self._tokens.clear()

    @property
    def write_calls(self) -> int:
        return self.calls_of(_WRITE_KINDS)

    # ------------------------------------------------------------------ HttpsSandbox hooks

    def authenticate(self, request: SandboxRequest) -> None:
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        if scheme.lower() not in ("bearer", "soticket") or not self._tokens.valid(token.strip()):
            raise SuperOfficeError(
                401,
                "NotAuthenticated",
                "Authentication failed: the access token is missing, invalid or expired",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if self.app_token is not None and request.header("SO-AppToken") != self.app_token:
            raise SuperOfficeError(
                401,
                "NotAuthenticated",
                "Application token missing or not valid for this tenant (SO-AppToken)",
                {"WWW-Authenticate": "Bearer"},
            )

    def request_limit_error(self) -> Exception:
        return SuperOfficeError(
            429,
            "RequestLimitExceeded",
            "The request limit for this tenant is reached",
            {"Retry-After": str(self.request_limit_retry_after)},
        )

    def throttle_error(self, retry_after: float) -> Exception:
        return SuperOfficeError(
            429,
            "TooManyRequests",
            "Too many requests, slow down",
            {"Retry-After": str(max(1, round(retry_after)))},
        )

    def server_error(self, status: int) -> SandboxResponse:
        return json_response(
            status, _error_body("ServiceUnavailable", "The service is temporarily unavailable")
        )

    def error_response(self, error: Exception) -> SandboxResponse:
        if isinstance(error, RequestBodyError):
            error = SuperOfficeError(400, "ArgumentException", f"Request body: {error}")
        if isinstance(error, TenantError):
            error = SuperOfficeError(error.status, error.code, error.message)
        if isinstance(error, SuperOfficeError):
            return json_response(error.status, _error_body(error.code, error.message), dict(error.headers))
        if isinstance(error, _OAuthError):
            return json_response(400, {"error": error.error, "error_description": error.description})
        log.error("sandbox handler failed", exc_info=error)
        return json_response(500, _error_body(type(error).__name__, "An error has occurred"))

    def route(self, request: SandboxRequest) -> Route:
        found = match_path(_ROUTES, request)
        if isinstance(found, PathMatch):
            params = dict(found.params)
            if "prefix" in params:
                prefix = params.pop("prefix") or ""
                if prefix.lower() != f"/{self.cluster}/{self.tenant_name}".lower():
                    return Route("misdirected", self._misdirected, False)
                if self.tenant_state not in RUNNING_STATES:
                    return Route(found.kind, self._not_running, False)
            handler: Callable[..., SandboxResponse] = getattr(self, f"_h_{found.kind}")
            return Route(found.kind, lambda: handler(request, **params), found.authenticated)
        status, message = (405, "The requested resource does not support this method") if found else (404, "")

        def refuse() -> SandboxResponse:
            raise SuperOfficeError(status, "NotFound", message or f"No HTTP resource matches {request.path}")

        return Route("not_found", refuse, False)

    # ------------------------------------------------------------------ handlers

    def _misdirected(self) -> SandboxResponse:
        # SuperOffice documents the status and the description only ("421 - Misdirected request
        # with an additional error description saying 'Wrong subdomain used to access tenant'");
        # the body is the sandbox's error body.
        raise SuperOfficeError(421, "MisdirectedRequest", "Wrong subdomain used to access tenant")

    def _not_running(self) -> SandboxResponse:
        raise SuperOfficeError(
            503, "ServiceUnavailable", f"The tenant is not available (state {self.tenant_state})"
        )

    def _h_state(self, _request: SandboxRequest, context: str) -> SandboxResponse:
        if context.lower() != self.tenant_name.lower():
            return json_response(
                200,
                {"ContextIdentifier": context, "Endpoint": None, "State": "Unknown", "IsRunning": False},
            )
        valid_until = self.now() + dt.timedelta(seconds=self.state_valid_seconds)
        return json_response(
            200,
            {
                "ContextIdentifier": self.tenant_name,
                "Endpoint": self.tenant_url,
                "State": self.tenant_state,
                "IsRunning": self.tenant_state in RUNNING_STATES,
                "ValidUntil": valid_until.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "Api": self.tenant_url + "/api",
            },
        )

    def _h_token(self, request: SandboxRequest) -> SandboxResponse:
        form = request.form()
        if form.get("grant_type") != "refresh_token":
            raise _OAuthError("unsupported_grant_type", "Only refresh_token is supported here")
        c = self.credentials
        if form.get("client_id") != c.client_id or form.get("client_secret") != c.client_secret:
            raise _OAuthError("invalid_client", "Unknown client or wrong client secret")
        if form.get("refresh_token") != c.refresh_token:
            raise _OAuthError("invalid_grant", "The refresh token is not valid")
        return json_response(
            200,
            {
                "token_type": "Bearer",
                "access_token": self.issue_token(),
                "expires_in": int(self.token_lifetime),
                "id_token": self._id_token(),
            },
        )

    def _id_token(self) -> str:
        """An OpenID Connect id_token with SuperOffice's claims: the tenant (``ctx``) and its API's
        address when the login is made (``webapi_url``, ``netserver_url``). Signed by nobody: the
        sandbox has no signing key (a connector must not take it for proof of anything)."""
        prefix = "http://schemes.superoffice.net/identity/"
        now = int(self.now().timestamp())
        claims = {
            "iss": self.base_url,
            "iat": now,
            "exp": now + int(self.token_lifetime),
            prefix + "ctx": self.tenant_name,
            prefix + "webapi_url": self.tenant_url + "/api/",
            prefix + "netserver_url": self.tenant_url + "/Remote/Services88/",
        }

        def part(value: Any) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

        return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{secrets.token_urlsafe(32)}"

    def _h_archive(self, request: SandboxRequest, provider: str) -> SandboxResponse:
        if provider.lower() != "consentpurpose":
            raise SuperOfficeError(404, "NotFound", f"Archive provider '{provider}' not found")
        params = {key: values[0] for key, values in request.query.items()}
        query = ArchiveQuery.from_params(params)
        with self._lock:
            rows, more = run_query(
                self.tenant, query, max_top=self.max_page_size, tag_times=_include_tz_offset(request)
            )
        if self.after_archive_page is not None:
            self.after_archive_page(query)
        prefix = request.path[: request.path.lower().index("/archive/")]
        body: dict[str, Any] = {"odata.metadata": f"{self.base_url}{prefix}/archive/$metadata", "value": rows}
        if more:
            following = dict(params)
            following["$skip"] = str(query.skip + len(rows))
            following["$top"] = str(min(query.top or self.max_page_size, self.max_page_size))
            body["odata.nextLink"] = f"{self.base_url}{request.path}?{urlencode(following)}"
        return json_response(200, body)

    def _h_person_get(self, _request: SandboxRequest, person_id: str) -> SandboxResponse:
        person = self.tenant.person(_path_person(person_id))
        return json_response(200, _person_entity(person))

    def _h_person_patch(self, request: SandboxRequest, person_id: str) -> SandboxResponse:
        number = _path_person(person_id)
        self._check_write(number)
        changes = _patch_changes(request.json())
        with self._lock:
            person = self.tenant.patch_person(number, changes)
        return json_response(200, _person_entity(person))

    def _h_person_delete(self, _request: SandboxRequest, person_id: str) -> SandboxResponse:
        number = _path_person(person_id)
        self._check_write(number)
        self.tenant.person(number)  # 404 when there is none
        self.tenant.delete_person(number)
        return SandboxResponse(204, b"", None)

    def _h_person_undelete(self, request: SandboxRequest) -> SandboxResponse:
        body = self._body(request, "Id")
        self._check_write(body["Id"])
        self.tenant.restore_person(body["Id"])
        return SandboxResponse(204, b"", None)

    def _body(self, request: SandboxRequest, *names: str) -> dict[str, Any]:
        body = request.json_object()
        # SuperOffice binds properties case-insensitively.
        lowered = {str(k).lower(): v for k, v in body.items()}
        return {name: lowered.get(name.lower()) for name in names}

    def _check_write(self, person_id: Any) -> None:
        if isinstance(person_id, int) and self.faults.consume_failure(str(person_id)):
            raise SuperOfficeError(
                409, "ConcurrencyException", f"Person {person_id} is being updated by another user"
            )

    def _h_set_consent(self, request: SandboxRequest) -> SandboxResponse:
        body = self._body(request, "PersonId", "Purpose", "Source", "LegalBase", "Comment")
        self._check_write(body["PersonId"])
        self.tenant.set_consent(
            body["PersonId"], body["Purpose"], body["Source"], body["LegalBase"], body["Comment"]
        )
        return SandboxResponse(204, b"", None)

    def _h_remove_consent(self, request: SandboxRequest) -> SandboxResponse:
        body = self._body(request, "PersonId", "Purpose")
        self._check_write(body["PersonId"])
        self.tenant.remove_consent(body["PersonId"], body["Purpose"])
        return SandboxResponse(204, b"", None)

    def _h_has_consent(self, request: SandboxRequest) -> SandboxResponse:
        body = self._body(request, "PersonId", "Purpose")
        return json_response(200, self.tenant.has_consent(body["PersonId"], body["Purpose"]))

    def _h_get_consent_infos(self, request: SandboxRequest) -> SandboxResponse:
        body = self._body(request, "PersonId")
        person_id = body["PersonId"]
        if isinstance(person_id, bool) or not isinstance(person_id, int):
            raise SuperOfficeError(
                400, "ArgumentException", f"PersonId must be an integer, not {person_id!r}"
            )
        rows = sorted(self.tenant.consent_rows(person_id), key=lambda r: r.purpose.id)
        return json_response(200, [_consent_info(row) for row in rows])


def _path_person(person_id: str) -> int:
    if not person_id.isdigit():
        raise SuperOfficeError(400, "ArgumentException", f"'{person_id}' is not a valid person id")
    return int(person_id)


def _items(values: list[str]) -> list[dict[str, str]]:
    return [{"Value": value, "StrippedValue": value} for value in values]


def _person_entity(person: Any) -> dict[str, Any]:
    return {
        "PersonId": person.id,
        "Firstname": person.first_name,
        "MiddleName": person.middle_name,
        "Lastname": person.last_name,
        "Title": person.title,
        "Emails": _items([person.email] if person.email else []),
        "MobilePhones": _items(person.phones.get("mobilephones", [])),
        "OfficePhones": _items(person.phones.get("officephones", [])),
        "PrivatePhones": _items(person.phones.get("privatephones", [])),
        "CreatedDate": _consent_time(person.registered),
        "UpdatedDate": _consent_time(person.updated),
        "Registered": _consent_time(person.registered),
        "Updated": _consent_time(person.updated),
    }


def _patch_changes(body: Any) -> dict[str, Any]:
    """A JSON Patch array or a JSON Merge Patch object as property (lower-cased) -> new value."""
    if isinstance(body, dict):
        return {str(name).lower(): value for name, value in body.items()}
    if not isinstance(body, list):
        raise SuperOfficeError(
            400, "ArgumentException", "Expected a JSON Patch array or a merge patch object"
        )
    changes: dict[str, Any] = {}
    for operation in body:
        if not isinstance(operation, dict) or not isinstance(operation.get("path"), str):
            raise SuperOfficeError(400, "ArgumentException", "Each patch operation needs op and path")
        op = str(operation.get("op") or "").lower()
        path = operation["path"].lstrip("/").lower()
        if op in ("replace", "add"):
            changes[path] = operation.get("value")
        elif op == "remove":
            changes[path] = None
        else:
            raise SuperOfficeError(400, "ArgumentException", f"Patch operation '{op}' is not supported")
    return changes


def _person_key(record_id: str) -> str | None:
    text = str(record_id).strip()
    return text if text.isdigit() else None


def _consent_info(row: ConsentRow) -> dict[str, Any]:
    return {
        "ConsentPersonId": row.id,
        "Comment": row.comment,
        "Registered": _consent_time(row.registered),
        "RegisteredAssociateId": row.registered_by,
        "Updated": _consent_time(row.updated),
        "UpdatedAssociateId": row.updated_by,
        "LegalBaseId": row.legal_base.id,
        "LegalBaseKey": row.legal_base.key,
        "LegalBaseName": row.legal_base.name,
        "ConsentPurposeId": row.purpose.id,
        "ConsentPurposeKey": row.purpose.key,
        "ConsentPurposeName": row.purpose.name,
        "ConsentSourceId": row.source.id,
        "ConsentSourceKey": row.source.key,
        "ConsentSourceName": row.source.name,
        "TableRight": {"Mask": "Delete", "Reason": ""},
        "FieldProperties": {},
    }


# ---------------------------------------------------------------------------------------------- CLI


@sandbox_main(
    "superoffice",
    seed_help="Seed the tenant with this many generated persons and their consents.",
)
def serve_forever(*, port: int = 8444, records: int = 500, seed: int, host: str) -> Serving:
    """Run a SuperOffice sandbox (HTTPS, self-signed CA) until interrupted.

    Prints the tenant URL, the CA files and the demo credentials."""
    sandbox, summary = seeded(SuperOfficeSandbox, SuperOfficeTenant(), records, seed, host=host, port=port)
    where = {
        "tenant (base_url)": f"{sandbox.online_url}   (its endpoint now: {sandbox.tenant_url})",
        "state URL": sandbox.state_url,
        "token URL": sandbox.token_url,
    }
    who = {
        **credential_lines(sandbox.credentials, "client_id", "client_secret", "refresh_token"),
        "access token": f"{sandbox.issue_token()}   (valid {int(sandbox.token_lifetime)} s)",
        "seeded": f"{summary['persons']} persons, {summary['emarketing']} e-marketing consents "
        f"({summary['withdrawn']} withdrawn), --random-seed {seed}",
    }
    return Serving(sandbox, running_lines("SuperOffice", sandbox, where, who))


#: ``consentsync sandbox superoffice`` (entry-point group ``consentsync.sandboxes``).
command = serve_forever.command
