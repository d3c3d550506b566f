"""A Dynamics 365 / Dataverse sandbox: a local HTTPS server on 127.0.0.1 that speaks the
Dataverse Web API (OData v4) and the Microsoft identity platform's client-credentials token
endpoint, backed by an in-memory environment (:mod:`consentsync_dynamics.sandbox.dataverse`), with fault
injection and call counting like the Salesforce sandbox.

>>> from consentsync_dynamics.sandbox.server import DynamicsSandbox
>>> with DynamicsSandbox() as dv:
...     dv.environment.seed(500, seed=1)
...     session = dv.requests_session()
...     token = session.post(dv.token_url, data=dv.client_credentials_form()).json()["access_token"]

Endpoints (``v9.0`` to ``v9.2``; others answer 404):

* ``POST {token_path}`` (default ``/{tenant}/oauth2/v2.0/token``): ``grant_type=client_credentials``
  with ``client_id``, ``client_secret`` and ``scope={resource}/.default``. Errors are the identity
  platform's bodies ``{"error", "error_description": "AADSTSnnnn: ...", "error_codes", "timestamp",
  "trace_id", "correlation_id"}``: AADSTS90002 unknown tenant, AADSTS900144 a missing parameter,
  AADSTS700016 unknown application, AADSTS7000215 wrong secret (401), AADSTS1002012 a scope
  without ``/.default``, AADSTS500011 an unknown resource, AADSTS70003 another grant type.
  Tokens live ``token_lifetime`` seconds; afterwards the Web API answers 401 with
  ``WWW-Authenticate: Bearer error="invalid_token"``.
* ``GET /api/data/v9.2/WhoAmI``.
* ``GET /api/data/v9.2/EntityDefinitions(LogicalName='contact')`` and ``.../Attributes``.
* ``GET /api/data/v9.2/{set}`` with ``$select``, ``$filter`` (see :mod:`consentsync_dynamics.sandbox.odata`),
  ``$orderby``, ``$top``; ``Prefer: odata.maxpagesize=N`` (at most 5000, the default) pages with
  ``@odata.nextLink``; ``Prefer: odata.track-changes`` answers ``@odata.deltaLink`` on the last
  page; a GET of the delta link answers what changed since, deleted rows as
  ``{"@odata.context": ".../$metadata#{set}/$deletedEntity", "id", "reason": "deleted"}``.
* ``GET|PATCH|DELETE /api/data/v9.2/{set}({id})``, ``POST /api/data/v9.2/{set}``. PATCH is an
  upsert unless ``If-Match: *`` (then 404 for a missing row) or ``If-None-Match: *`` (create
  only: 412 "A record with matching key values already exists." for a row that exists). Every
  row is read with ``@odata.etag`` (``W/"<versionnumber>"``); a PATCH or DELETE with an ETag in
  ``If-Match`` ("Perform conditional operations using the Web API", Apply optimistic
  concurrency) is refused 412 "The version of the existing record doesn't match the RowVersion
  property provided." (code ``0x80060882``) when the row has changed since, and 404 for a
  missing row; tables report ``IsOptimisticConcurrencyEnabled`` (``Table.optimistic_concurrency``). POST
  creates (204 with ``OData-EntityId``, or with ``Prefer: return=representation`` 201 with the
  row, ``$select`` honoured, and no ``OData-EntityId``); a lookup is set with
  ``{navigation property}@odata.bind`` (case as declared). A row whose values an alternate key
  already holds is refused with 412 ``0x80060892`` (no table has one unless a test adds it:
  ``DataverseEnvironment.add_alternate_key``). Changes made through the Web API are the
  application user's (``modifiedby``, ``createdby``: WhoAmI's UserId).
* ``POST /api/data/v9.2/Merge`` (contacts): the subordinate row is deactivated (``statecode`` 1)
  with ``merged`` true and ``masterid`` (read ``_masterid_value``) naming the target; it stays
  readable and comes in the next delta as a changed row.
* Auditing (off unless a test turns it on: ``environment.auditing``, ``Table.audited``,
  ``Column.audited``): ``GET /api/data/v9.2/organizations?$select=isauditenabled``;
  ``IsAuditEnabled`` (``{"Value", "CanBeChanged", "ManagedPropertyLogicalName"}``) in a table's
  and its attributes' metadata; ``GET .../RetrieveRecordChangeHistory(Target=@target)?@target=
  {'@odata.id':'{set}({id})'}`` answers the row's audited updates, newest first, as
  ``AuditDetailCollection.AuditDetails`` of ``AttributeAuditDetail`` (``AuditRecord``,
  ``OldValue``, ``NewValue``: the changed columns); 403 ``0x80040220`` without
  ``prvReadRecordAuditHistory`` (``audit_readable`` false), and for ``organizations`` without
  ``prvReadOrganization`` (``organization_readable`` false): the privileges :data:`PRIVILEGES`
  names, which the security role in docs/connectors/dynamics.md grants.
* Late commits: :meth:`~consentsync_dynamics.sandbox.dataverse.DataverseEnvironment.begin_late` makes a
  row no read sees until it commits; it then comes in the next delta (its row version is the
  commit's) with its original ``modifiedon``.
* ``POST /api/data/v9.2/$batch`` (multipart/mixed, change sets atomic, at most 1000 requests):
  with ``Prefer: odata.continue-on-error`` it answers 200 (``Preference-Applied``) and every
  request's answer in its part; without it, it stops at the first failed request and answers
  the batch with that request's status, its answer the last part ("Execute batch operations
  using the Web API", Handling errors). A request inside a batch whose URL is longer than 64 KB
  (65,536 characters, as sent: percent-encoded) is refused, 414. The requests run one after
  another, as Dataverse runs them ("These operations will be performed sequentially"), each for
  ``batch_request_seconds`` (0 by default; a contact update with plug-ins takes tens of
  milliseconds): a batch answers when its last request is done, and one whose caller gave up
  waiting is executed to its end all the same.

Every response carries ``OData-Version: 4.0``. Service protection ("Service protection API
limits"): more than ``rate_limit`` requests in a sliding window of ``rate_window`` seconds answer
429 with ``Retry-After`` (seconds until the window has room) and code ``0x80072322``; a
``$batch`` is one request there, whatever it holds. The execution-time limit, which the
requests inside a batch do count toward, is modelled as ``execution_limit`` requests executed
(one each, those inside a batch too) in the same window: 429 with code ``0x80072321``.

Where the documentation is silent the sandbox chooses, and the connector must not rely on it:
change tracking refuses ``$filter``, ``$orderby``, ``$top`` (400, 0x80060888); an expired delta
token (older than ``change_retention``: Organization ExpireChangeTrackingInDays, 7 days by
default) answers ``expired_delta_status`` (400 by default: Microsoft Learn says only that "the
system throws an exception") with ``0x80044352`` (ExpiredVersionStamp) and a malformed one 400
0x80060888; a
row in the fault switch ``fail_ids`` answers 500 ``0x80044150``; more than 1000 batch requests
answer 400 ``0x8006088a``; a batch stopped at a failed request carries that request's
``Retry-After`` on the batch's answer too; a request of a batch over the URL limit answers 414
``0x80060888``; GUIDs sort as their lower-case text; a POST naming the id of a row
that exists answers 412 ``0x80040237``; a lookup bound to a row that does not exist answers 404
``0x80040217``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cmp_to_key
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from consentsync.sandbox.server import HttpsSandbox, Route, SandboxRequest, SandboxResponse
from consentsync.sandbox.serving import Serving, credential_lines, running_lines, sandbox_main, seeded
from consentsync.sandbox.tokens import IssuedTokens, client_credentials_form
from consentsync_dynamics.sandbox.dataverse import DataverseEnvironment, RowError, Table
from consentsync_dynamics.sandbox.odata import ODataError, no_property, parse_filter, parse_orderby

__all__ = [
    "DYNAMICS_KINDS",
    "PRIVILEGES",
    "DataverseCredentials",
    "DynamicsSandbox",
    "normalize_guid",
    "serve_forever",
]

log = logging.getLogger("consentsync_dynamics.sandbox.server")

MAX_PAGE_SIZE = 5000
MAX_BATCH_REQUESTS = 1000
EXPIRED_VERSION_STAMP = "0x80044352"
VERSION_MISMATCH = "0x80060882"  # 412 to an If-Match ETag the row no longer has
#: The privileges the sandbox checks beyond table access, by the switch that takes each away
#: (the application user's security role lacks it): docs/connectors/dynamics.md lists them in the
#: role it asks for.
PRIVILEGES = {"audit_readable": "prvReadRecordAuditHistory", "organization_readable": "prvReadOrganization"}
THROTTLED = "0x80072322"
THROTTLED_EXECUTION = "0x80072321"
URL_LIMIT = 65_536  # characters of a URL inside a $batch, as sent
_JSON = "application/json; odata.metadata=minimal"
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

DYNAMICS_KINDS = (
    "token",
    "whoami",
    "metadata",
    "query",
    "delta",
    "get",
    "create",
    "update",
    "delete",
    "merge",
    "batch",
    "not_found",
)


def normalize_guid(value: str) -> str | None:
    """A row id in its canonical (lower-case) spelling; None when it is not a GUID."""
    try:
        return str(uuid.UUID(str(value))).lower()
    except ValueError:
        return None


@dataclass
class DataverseCredentials:
    """The app registration (and its application user) the token endpoint accepts."""

    tenant_id: str = "5eed0000-0000-4000-8000-00000000a11d"
    client_id: str = "0c5b1a2e-7a4f-4b1e-9c3d-5a1e00c0ffee"
    client_secret: str = "consentsync~sandbox~client~secret"


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> SandboxResponse:
    return SandboxResponse(status, json.dumps(payload, ensure_ascii=False).encode(), _JSON, headers or {})


class _TokenError(Exception):
    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.code, self.description = status, error, code, description


def _token_error(error: _TokenError) -> SandboxResponse:
    now = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%SZ}"
    trace, correlation = uuid.uuid4(), uuid.uuid4()
    return _json(
        error.status,
        {
            "error": error.error,
            "error_description": f"AADSTS{error.code}: {error.description} Trace ID: {trace} "
            f"Correlation ID: {correlation} Timestamp: {now}",
            "error_codes": [error.code],
            "timestamp": now,
            "trace_id": str(trace),
            "correlation_id": str(correlation),
            "error_uri": f"https://login.microsoftonline.com/error?code={error.code}",
        },
    )


def _stamp(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def _encode_state(state: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, default=str).encode()).decode().rstrip("=")


def _decode_state(text: str) -> dict[str, Any]:
    try:
        padded = text + "=" * (-len(text) % 4)
        state = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError):
        raise ODataError("The $skiptoken value is not valid.") from None
    if not isinstance(state, dict):
        raise ODataError("The $skiptoken value is not valid.")
    return state


class DynamicsSandbox(HttpsSandbox):
    """The sandbox server. :meth:`start` it (or use it as a context manager) and point clients at
    :attr:`environment_url` and :attr:`token_url`, trusting :attr:`ca_cert_path`.

    Run-time controls (HTTP-free): :attr:`faults` (``fail_ids`` make PATCHes of those rows fail
    with 0x80044150; ``throttle_*`` and ``request_limit_after`` answer 429 with Retry-After, the
    latter with ``limit_retry_after`` seconds), :attr:`environment` (the data),
    :meth:`expire_sessions`, :meth:`expire_delta_tokens`, :meth:`set_rate_limit`,
    :meth:`reset_counters`; :attr:`calls` counts answered calls per endpoint kind and
    :attr:`batch_requests` the requests inside batches.
    """

    endpoint_kinds = DYNAMICS_KINDS
    server_name = "Microsoft-IIS/10.0"
    credentials_class = DataverseCredentials
    # The environment's settings (Dataverse's values; constructor keywords too).
    token_path = "/{tenant}/oauth2/v2.0/token"  # the token endpoint, below the sandbox's address
    token_lifetime = 3599.0  # seconds an access token lives
    rate_limit = None  # requests a window (service protection), None for no limit; a $batch is one
    # The execution-time limit, as requests executed a window (one each, every request inside a
    # $batch too: bundling requests into batches does not get round it), None for no limit.
    execution_limit = None
    rate_window = 300.0  # seconds of the sliding windows
    limit_retry_after = 300  # the Retry-After of request_limit_after's 429
    # The execution-time limit judged request by request inside a $batch: the batch is let in
    # and each of its requests beyond the limit answers 429 with a Retry-After of its own, in its
    # part. False: a batch whose requests would pass the limit is refused whole.
    throttle_in_batch = False
    change_retention = 7 * 24 * 3600.0  # seconds a delta token stays good for
    # The status an expired delta token is refused with (its code is 0x80044352 whatever it is).
    expired_delta_status = 400
    # The application user holds prvReadRecordAuditHistory (RetrieveRecordChangeHistory answers).
    audit_readable = True
    # The application user holds prvReadOrganization (organizations answers).
    organization_readable = True
    # Seconds each request inside a $batch takes to execute (one after another).
    batch_request_seconds = 0.0

    def __init__(self, environment: DataverseEnvironment | None = None, **options: Any) -> None:
        self.environment = environment or DataverseEnvironment()
        super().__init__(normalize_id=normalize_guid, **options)
        self.batch_requests = 0
        self.throttled = 0
        self._tokens = IssuedTokens()
        self._window: deque[float] = deque()  # requests (a batch is one)
        self._executed: deque[float] = deque()  # requests executed (those inside batches too)
        self._min_delta_version = 0
        pattern = re.escape(self.token_path).replace(re.escape("{tenant}"), r"(?P<tenant>[^/]+)")
        self._token_route = re.compile(pattern + "/?")

    # -- addresses -----------------------------------------------------------------------------

    @property
    def environment_url(self) -> str:
        return self.base_url

    @property
    def token_url(self) -> str:
        return self.base_url + self.token_path.format(tenant=self.credentials.tenant_id)

    def api_url(self, version: str = "9.2") -> str:
        return f"{self.base_url}/api/data/v{version}"

    def connection_settings(self) -> dict[str, Any]:
        c = self.credentials
        return {
            **super().connection_settings(),
            "environment_url": self.environment_url,
            "token_url": self.token_url,
            "client_id": c.client_id,
            "client_secret": c.client_secret,
        }

    def client_credentials_form(self) -> dict[str, str]:
        return client_credentials_form(self.credentials, scope=f"{self.environment_url}/.default")

    # -- run-time controls ---------------------------------------------------------------------

    def issue_token(self) -> str:
        """A fresh access token without an HTTP call (not counted)."""
        return self._tokens.issue("eyJ0eXAiOiJKV1QifQ." + secrets.token_urlsafe(48), self.token_lifetime)

    def expire_sessions(self) -> None:
        """Every access token issued so far is refused from now on (401)."""
        self._tokens.clear()

    def expire_delta_tokens(self) -> None:
        """Every delta token issued so far is refused from now on (as after the retention period)."""
        with self.environment.lock, self._lock:
            self.environment.version += 1  # tokens issued from now on name a newer version
            self._min_delta_version = self.environment.version

    def set_rate_limit(self, requests: int | None, window: float | None = None) -> None:
        """The number-of-requests limit: ``requests`` a window (a $batch is one)."""
        with self._lock:
            self.rate_limit = requests
            if window is not None:
                self.rate_window = window
            self._window.clear()

    def set_execution_limit(self, requests: int | None, window: float | None = None) -> None:
        """The execution-time limit, as ``requests`` executed a window (each inside a batch too)."""
        with self._lock:
            self.execution_limit = requests
            if window is not None:
                self.rate_window = window
            self._executed.clear()

    def reset_counters(self) -> None:
        super().reset_counters()
        with self._lock:
            self.batch_requests = self.throttled = 0

    # -- the hooks of HttpsSandbox -------------------------------------------------------------

    def route(self, request: SandboxRequest) -> Route:
        match = self._token_route.fullmatch(request.path)
        if match and request.method == "POST":
            tenant = match.group("tenant")
            return Route("token", lambda: self._token(request, tenant), authenticated=False)
        kind = self._kind(request.method, request.path)
        if kind == "query" and request.param("$deltatoken") is not None:
            kind = "delta"
        return Route(kind, lambda: self._answer(request))

    def authenticate(self, request: SandboxRequest) -> None:
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not self._tokens.valid(token.strip()):
            raise _Unauthorized

    def request_limit_error(self) -> Exception:
        with self._lock:
            self.throttled += 1
        return _Throttled(
            "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
            self.limit_retry_after,
        )

    def throttle_error(self, retry_after: float) -> Exception:
        with self._lock:
            self.throttled += 1
        return _Throttled(
            "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
            max(1, math.ceil(retry_after)),
        )

    def note_api_call(self, request: SandboxRequest) -> None:
        """Service protection over sliding windows: the number of requests (a $batch counts
        once, "Service protection API limits": a batch "will avoid the number of requests
        limit"), and the execution time, which each request inside a batch adds to (with
        ``throttle_in_batch`` judged one by one as they run, in ``_inner``)."""
        batch = self._kind(request.method, request.path) == "batch"
        refused = self._admit(1)
        if refused is None and not (batch and self.throttle_in_batch):
            refused = self._admit_execution(self._count_parts(request) if batch else 1)
        if refused is not None:
            raise refused

    def _admit(self, weight: int) -> _Throttled | None:
        """``weight`` requests into the requests window, or the 429 that refuses them."""
        return self._admit_into(
            self._window,
            self.rate_limit,
            weight,
            THROTTLED,
            f"Number of requests exceeded the limit of {self.rate_limit} over time window of "
            f"{int(self.rate_window)} seconds.",
        )

    def _admit_execution(self, weight: int) -> _Throttled | None:
        """``weight`` requests into the execution window, or the 429 that refuses them."""
        return self._admit_into(
            self._executed,
            self.execution_limit,
            weight,
            THROTTLED_EXECUTION,
            "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds "
            f"over time window of {int(self.rate_window)} seconds. Decrease number of concurrent "
            "requests or reduce the duration of requests and try again later.",
        )

    def _admit_into(
        self, window: deque[float], limit: int | None, weight: int, code: str, message: str
    ) -> _Throttled | None:
        with self._lock:
            if limit is None:
                return None
            now = time.monotonic()
            while window and window[0] <= now - self.rate_window:
                window.popleft()
            if len(window) + weight > limit:
                self.throttled += 1
                oldest = window[0] if window else now
                return _Throttled(message, max(1, math.ceil(oldest + self.rate_window - now)), code)
            window.extend([now] * weight)
            return None

    def server_error(self, status: int) -> SandboxResponse:
        return _json(status, {"error": {"code": "0x80040216", "message": "An unexpected error occurred."}})

    def error_response(self, error: Exception) -> SandboxResponse:
        if isinstance(error, _Unauthorized):
            return SandboxResponse(
                401,
                b"",
                None,
                {
                    "WWW-Authenticate": 'Bearer error="invalid_token", error_description="The access token '
                    'is missing, invalid or expired", authorization_uri='
                    f'"https://login.microsoftonline.com/{self.credentials.tenant_id}/oauth2/authorize"',
                },
            )
        if isinstance(error, _Throttled):
            return _json(
                429,
                {"error": {"code": error.code, "message": error.message}},
                {"Retry-After": str(error.retry_after)},
            )
        if isinstance(error, ODataError):
            return _json(error.status, error.body())
        if isinstance(error, RowError):
            return _json(error.status, {"error": {"code": error.code, "message": error.message}})
        if isinstance(error, _TokenError):
            return _token_error(error)
        log.error("dynamics sandbox handler failed", exc_info=error)
        return _json(500, {"error": {"code": "0x80040216", "message": "An unexpected error occurred."}})

    def finish(self, response: SandboxResponse, request: SandboxRequest) -> SandboxResponse:
        if not self._token_route.fullmatch(request.path):
            response.headers = {"OData-Version": "4.0", **response.headers}
        return response

    def _answer(self, request: SandboxRequest) -> SandboxResponse:
        version = request.header("OData-Version")
        if version and version.strip() not in ("4.0", "4.01"):
            raise ODataError(f"The OData-Version '{version}' is not supported. Supported: 4.0.")
        return self._route(request.method, request.path, request.query, request.headers, request.body)

    @staticmethod
    def _kind(method: str, path: str) -> str:
        match = re.fullmatch(r"/api/data/v9\.[0-2]/(.+?)/?", path)
        if match is None:
            return "not_found"
        rest = match.group(1)
        if rest in ("WhoAmI", "WhoAmI()"):
            return "whoami" if method == "GET" else "not_found"
        if rest.startswith("EntityDefinitions"):
            return "metadata"
        if rest == "$batch":
            return "batch" if method == "POST" else "not_found"
        if rest == "Merge":
            return "merge" if method == "POST" else "not_found"
        if rest.startswith("RetrieveRecordChangeHistory("):
            return "audit" if method == "GET" else "not_found"
        if re.fullmatch(rf"\w+\({_GUID}\)", rest):
            return {"GET": "get", "PATCH": "update", "DELETE": "delete"}.get(method, "not_found")
        if re.fullmatch(r"\w+", rest):
            return {"GET": "query", "POST": "create"}.get(method, "not_found")
        return "not_found"

    # -- the token endpoint --------------------------------------------------------------------

    def _token(self, request: SandboxRequest, tenant: str) -> SandboxResponse:
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        c = self.credentials
        if tenant.lower() != c.tenant_id.lower():
            raise _TokenError(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and "
                "are signing into the correct cloud.",
            )
        grant = form.get("grant_type")
        if not grant:
            raise _TokenError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            )
        if grant != "client_credentials":
            raise _TokenError(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        for name in ("client_id", "scope"):
            if not form.get(name):
                raise _TokenError(
                    400,
                    "invalid_request",
                    900144,
                    f"The request body must contain the following parameter: '{name}'.",
                )
        if form["client_id"] != c.client_id:
            raise _TokenError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form['client_id']}' was not found in the directory "
                f"'{c.tenant_id}'.",
            )
        if not form.get("client_secret"):
            raise _TokenError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'.",
            )
        if form["client_secret"] != c.client_secret:
            raise _TokenError(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the "
                "client secret value, not the client secret ID, for a secret added to app "
                f"'{c.client_id}'.",
            )
        scope = form["scope"]
        if not scope.endswith("/.default"):
            raise _TokenError(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows must have "
                "a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        resource = scope[: -len("/.default")].rstrip("/")
        if resource.lower() != self.environment_url.lower():
            raise _TokenError(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named {c.tenant_id}.",
            )
        lifetime = int(self.token_lifetime)
        return _json(
            200,
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": self.issue_token(),
            },
        )

    # -- the Web API ---------------------------------------------------------------------------

    def _count_parts(self, request: SandboxRequest) -> int:
        try:
            return sum(len(group) for group, _ in _parse_batch(request))
        except ODataError:
            return 0

    def _route(
        self, method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> SandboxResponse:
        match = re.fullmatch(r"/api/data/v(9\.[0-2])/(.+?)/?", path)
        if match is None:
            raise ODataError(
                f"Resource not found for the segment '{path.strip('/').split('/')[-1]}'.", status=404
            )
        version, rest = match.groups()
        request = SandboxRequest(method, path, dict(query), headers, body)
        if rest in ("WhoAmI", "WhoAmI()") and method == "GET":
            env = self.environment
            return _json(
                200,
                {
                    "@odata.context": f"{self.api_url(version)}/$metadata"
                    "#Microsoft.Dynamics.CRM.WhoAmIResponse",
                    "BusinessUnitId": env.business_unit_id,
                    "UserId": env.user_id,
                    "OrganizationId": env.organization_id,
                },
            )
        definition = re.fullmatch(r"EntityDefinitions\(LogicalName='(\w+)'\)(/Attributes)?", rest)
        if definition and method == "GET":
            return self._metadata(version, definition.group(1), bool(definition.group(2)))
        if rest == "$batch" and method == "POST":
            return self._batch(version, request)
        if rest == "Merge" and method == "POST":
            return self._merge(request)
        if re.fullmatch(r"RetrieveRecordChangeHistory\(Target=@\w+\)", rest) and method == "GET":
            return self._change_history(version, rest, request)
        if rest == "organizations" and method == "GET":
            env = self.environment
            if not self.organization_readable:
                raise RowError(
                    403,
                    "0x80040220",
                    f"Principal user (Id={env.user_id}, type=8) is missing prvReadOrganization privilege",
                )
            return _json(
                200,
                {
                    "@odata.context": f"{self.api_url(version)}/$metadata#organizations",
                    "value": [{"organizationid": env.organization_id, "isauditenabled": env.auditing}],
                },
            )
        single = re.fullmatch(rf"(\w+)\(({_GUID})\)", rest)
        if single:
            table = self._table(single.group(1))
            record_id = single.group(2).lower()
            if method == "GET":
                return self._get(version, table, record_id, request)
            if method == "PATCH":
                return self._patch(version, table, record_id, request)
            if method == "DELETE":
                self._check_version(table, record_id, request)
                self.environment.delete(table.logical_name, record_id)
                return SandboxResponse(204, b"", None)
        elif re.fullmatch(r"\w+", rest):
            table = self._table(rest)
            if method == "GET":
                return self._query(version, table, request)
            if method == "POST":
                return self._create(version, table, request)
        raise ODataError(f"Resource not found for the segment '{rest}'.", status=404)

    def _table(self, entity_set: str) -> Table:
        table = self.environment.by_set.get(entity_set)
        if table is None:
            raise ODataError(f"Resource not found for the segment '{entity_set}'.", status=404)
        return table

    def _merge(self, request: SandboxRequest) -> SandboxResponse:
        """The Merge action: ``{"Target": {"@odata.type": "Microsoft.Dynamics.CRM.contact",
        "contactid"}, "Subordinate": {...}, "UpdateContent": {...}, "PerformParentingChecks"}``;
        204. The subordinate is deactivated with ``merged`` and ``masterid`` set."""
        body = _body(request)
        target, subordinate = body.get("Target"), body.get("Subordinate")
        if not isinstance(target, dict) or not isinstance(subordinate, dict):
            raise ODataError("Merge needs the Target and Subordinate parameters.")
        kind = str(target.get("@odata.type") or "").rsplit(".", 1)[-1]
        table = self.environment.tables.get(kind)
        if table is None or table.logical_name != "contact":
            raise ODataError(f"Merge is not supported for the entity '{kind}'.", "0x80040203")
        ids = [normalize_guid(str(part.get(table.primary_id) or "")) for part in (target, subordinate)]
        if ids[0] is None or ids[1] is None:
            raise ODataError(f"Target and Subordinate must name the {table.primary_id}.")
        by = self.environment.user_id
        self.environment.merge(table.logical_name, ids[0], ids[1], by=by)
        update = body.get("UpdateContent")
        if isinstance(update, dict):
            values = self.environment.convert(table, update, creating=False)
            if values:
                self.environment.update(table.logical_name, ids[0], values, by=by)
        return SandboxResponse(204, b"", None)

    def _change_history(self, version: str, rest: str, request: SandboxRequest) -> SandboxResponse:
        """The RetrieveRecordChangeHistory function ("Retrieve the history of audited data
        changes"): ``RetrieveRecordChangeHistory(Target=@target)?@target={'@odata.id':
        'msdynmkt_contactpointconsent4s(<id>)'}``; the row's audit rows, newest first, each an
        AttributeAuditDetail with the changed columns' OldValue and NewValue. Without the
        prvReadRecordAuditHistory privilege (``audit_readable`` false): 403."""
        alias = rest[rest.index("@") + 1 : -1]
        target = request.param(f"@{alias}") or ""
        found = re.search(r"['\"]@odata\.id['\"]\s*:\s*['\"](\w+)\(([0-9a-fA-F-]{36})\)['\"]", target)
        if found is None:
            raise ODataError(f"The parameter '@{alias}' is not an entity reference.")
        table = self._table(found.group(1))
        if not self.audit_readable:
            raise RowError(403, "0x80040220", "Principal user is missing prvReadRecordAuditHistory privilege")
        if self.environment.get(table.logical_name, found.group(2).lower()) is None:
            raise RowError(
                404, "0x80040217", f"{table.logical_name} With Id = {found.group(2)} Does Not Exist"
            )
        kind = f"#Microsoft.Dynamics.CRM.{table.logical_name}"
        details = [
            {
                "@odata.type": "#Microsoft.Dynamics.CRM.AttributeAuditDetail",
                "InvalidNewValueAttributes": [],
                "LocLabelLanguageCode": 0,
                "DeletedAttributes": {"Count": 0, "Keys": [], "Values": []},
                "AuditRecord": {
                    "@odata.type": "#Microsoft.Dynamics.CRM.audit",
                    "auditid": entry["auditid"],
                    "action": entry["action"],
                    "operation": entry["operation"],
                    "objecttypecode": entry["objecttypecode"],
                    "_objectid_value": entry["objectid"],
                    "createdon": _stamp(entry["createdon"]),
                },
                "OldValue": {"@odata.type": kind, **{k: _plain(v) for k, v in entry["old"].items()}},
                "NewValue": {"@odata.type": kind, **{k: _plain(v) for k, v in entry["new"].items()}},
            }
            for entry in self.environment.audit_history(table.logical_name, found.group(2))
        ]
        return _json(
            200,
            {
                "@odata.context": f"{self.api_url(version)}/$metadata"
                "#Microsoft.Dynamics.CRM.RetrieveRecordChangeHistoryResponse",
                "AuditDetailCollection": {
                    "MoreRecords": False,
                    "PagingCookie": None,
                    "TotalRecordCount": len(details),
                    "AuditDetails": details,
                },
            },
        )

    # -- metadata ------------------------------------------------------------------------------

    def _metadata(self, version: str, logical_name: str, attributes: bool) -> SandboxResponse:
        table = self.environment.tables.get(logical_name)
        if table is None:
            raise ODataError(
                f"Could not find entity with LogicalName = '{logical_name}'.", "0x80040217", status=404
            )
        api = self.api_url(version)
        if not attributes:
            return _json(
                200,
                {
                    "@odata.context": f"{api}/$metadata#EntityDefinitions/$entity",
                    "LogicalName": table.logical_name,
                    "EntitySetName": table.entity_set,
                    "PrimaryIdAttribute": table.primary_id,
                    "ChangeTrackingEnabled": table.change_tracking,
                    "IsOptimisticConcurrencyEnabled": table.optimistic_concurrency,
                    "IsAuditEnabled": _managed(table.audited),
                    "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, table.logical_name)),
                },
            )
        return _json(
            200,
            {
                "@odata.context": f"{api}/$metadata#EntityDefinitions('{logical_name}')/Attributes",
                "value": [
                    {
                        "LogicalName": column.logical_name or column.name,
                        "AttributeType": column.type,
                        "IsValidForUpdate": column.updatable or column.navigation is not None,
                        "IsValidForRead": True,
                        "IsAuditEnabled": _managed(column.audited),
                        "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{logical_name}.{column.name}")),
                    }
                    for column in table.columns.values()
                ],
            },
        )

    # -- reading -------------------------------------------------------------------------------

    def _select(self, table: Table, request: SandboxRequest) -> list[str]:
        raw = request.param("$select")
        if not raw:
            return list(table.columns)
        names = [name.strip() for name in raw.split(",") if name.strip()]
        for name in names:
            if name not in table.columns:
                raise no_property(name, table.logical_name)
        return list(dict.fromkeys([*names, table.primary_id]))

    def _render(self, table: Table, row: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.etag": f'W/"{row["versionnumber"]}"'}
        for name in names:
            value = row.get(name)
            if isinstance(value, datetime):
                value = _stamp(value)
            out[name] = value
        return out

    def _get(self, version: str, table: Table, record_id: str, request: SandboxRequest) -> SandboxResponse:
        names = self._select(table, request)
        row = self.environment.get(table.logical_name, record_id)
        if row is None:
            raise RowError(404, "0x80040217", f"{table.logical_name} With Id = {record_id} Does Not Exist")
        body = {"@odata.context": f"{self.api_url(version)}/$metadata#{table.entity_set}/$entity"}
        return _json(200, body | self._render(table, row, names))

    def _query(self, version: str, table: Table, request: SandboxRequest) -> SandboxResponse:
        prefer = _preferences(request.header("Prefer"))
        size = MAX_PAGE_SIZE
        if "odata.maxpagesize" in prefer:
            try:
                size = max(1, min(MAX_PAGE_SIZE, int(prefer["odata.maxpagesize"])))
            except ValueError:
                raise ODataError("The value of odata.maxpagesize must be a positive integer.") from None
        applied = [f"odata.maxpagesize={size}"] if "odata.maxpagesize" in prefer else []
        names = self._select(table, request)
        api = self.api_url(version)
        select_text = ",".join(n for n in names if n != table.primary_id) or table.primary_id
        context = f"{api}/$metadata#{table.entity_set}({select_text})"
        delta = request.param("$deltatoken")
        skip = request.param("$skiptoken")
        state = _decode_state(skip) if skip else {}
        tracking = "odata.track-changes" in prefer or delta is not None
        if tracking:
            for option in ("$filter", "$orderby", "$top", "$expand", "$apply"):
                if request.param(option) is not None:
                    raise ODataError(f"The query parameter {option} is not supported with change tracking.")
            if not table.change_tracking:
                raise ODataError(
                    f"Entity '{table.logical_name}' is not enabled for change tracking.", "0x80072491"
                )
            applied.append("odata.track-changes")
            headers = {"Preference-Applied": ",".join(applied)}
            # Links keep the $select as the client wrote it.
            link_select = request.param("$select") or select_text
            read = _TrackedRead(api, table, names, link_select, context, size, headers)
            if delta is not None:
                return self._delta(read, delta, state)
            return self._initial_load(read, state)
        headers = {"Preference-Applied": ",".join(applied)} if applied else {}
        types = table.types()
        keep = (
            parse_filter(request.param("$filter") or "", types, table.logical_name)
            if request.param("$filter") is not None
            else (lambda _row: True)
        )
        order = (
            parse_orderby(request.param("$orderby"), types, table.logical_name)
            if request.param("$orderby")
            else []
        )
        if all(name != table.primary_id for name, _ in order):
            order.append((table.primary_id, False))  # a stable order, so the paging cookie is exact
        top = request.param("$top")
        limit = None
        if top is not None:
            if not top.isdigit():
                raise ODataError(f"Invalid value '{top}' for $top query option found.")
            limit = int(top)
        rows = sorted(self.environment.rows_matching(table, keep), key=cmp_to_key(_comparer(order)))
        served = int(state.get("served", 0))
        if "after" in state:
            after = {name: _restore(value) for name, value in state["after"].items()}
            compare = _comparer(order)
            rows = [row for row in rows if compare(row, after) > 0]
        if limit is not None:
            rows = rows[: max(0, limit - served)]
        page = rows[:size]
        body: dict[str, Any] = {
            "@odata.context": context,
            "value": [self._render(table, r, names) for r in page],
        }
        if len(rows) > size:
            last = page[-1]
            cookie = {
                "after": {name: _keep(last.get(name)) for name, _ in order},
                "served": served + len(page),
            }
            params = {k: v[0] for k, v in request.query.items() if k != "$skiptoken"}
            params["$skiptoken"] = _encode_state(cookie)
            body["@odata.nextLink"] = f"{api}/{table.entity_set}?{urlencode(params, quote_via=quote)}"
        return _json(200, body, headers)

    def _initial_load(self, read: _TrackedRead, state: dict[str, Any]) -> SandboxResponse:
        """Every row, by id; the delta link names the version at the first page, so a change made
        while the pages are read comes again in the next delta."""
        table, size = read.table, read.size
        with self.environment.lock:
            snapshot = int(state.get("v", self.environment.version))
            after = state.get("after")
            rows = sorted(
                (
                    r
                    for r in self.environment.records(table.logical_name)
                    if after is None or r[table.primary_id] > after
                ),
                key=lambda r: r[table.primary_id],
            )
        page = rows[:size]
        more = {"v": snapshot, "after": page[-1][table.primary_id]} if len(rows) > size else None
        value = [self._render(table, r, read.names) for r in page]
        return read.page(value, more=more, delta_token=self._delta_token(snapshot))

    def _delta_token(self, version: int) -> str:
        return f"{version}!{datetime.now(UTC):%m/%d/%Y %H:%M:%S}"

    def _delta(self, read: _TrackedRead, token: str, state: dict[str, Any]) -> SandboxResponse:
        """The changes (and deletions) since the version ``token`` names, by version."""
        table, size = read.table, read.size
        match = re.fullmatch(r"(\d+)!(\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2})", unquote(token))
        if match is None:
            raise ODataError(f"The delta token '{token}' is not valid.")
        since = int(match.group(1))
        issued = datetime.strptime(match.group(2), "%m/%d/%Y %H:%M:%S").replace(tzinfo=UTC)
        with self._lock:
            floor = self._min_delta_version
        age = (datetime.now(UTC) - issued).total_seconds()
        if since < floor or age > self.change_retention or since > self.environment.version:
            raise ODataError(
                "Version stamp associated with the client has expired. Please perform a full sync.",
                EXPIRED_VERSION_STAMP,
                status=self.expired_delta_status,
            )
        with self.environment.lock:
            upto = int(state.get("v", self.environment.version))
            changed, deleted_ids = self.environment.changes_since(table, since)
            tombstones = {rid: v for v, rid in table.tombstones if since < v <= upto}
        events: list[tuple[int, str, dict[str, Any] | None]] = [
            (row["versionnumber"], row[table.primary_id], row)
            for row in changed
            if row["versionnumber"] <= upto
        ]
        events += [(tombstones[rid], rid, None) for rid in deleted_ids if rid in tombstones]
        events.sort(key=lambda e: (e[0], e[1]))
        after = state.get("after")
        if after is not None:
            events = [e for e in events if (e[0], e[1]) > (after[0], after[1])]
        page = events[:size]
        value = []
        for _version, rid, row in page:
            if row is None:
                value.append(
                    {
                        "@odata.context": f"{read.api}/$metadata#{table.entity_set}/$deletedEntity",
                        "id": rid,
                        "reason": "deleted",
                    }
                )
            else:
                value.append(self._render(table, row, read.names))
        more = {"v": upto, "after": [page[-1][0], page[-1][1]]} if len(events) > size else None
        return read.page(value, more=more, delta_token=self._delta_token(upto), token=token)

    # -- writing -------------------------------------------------------------------------------

    def _create(self, version: str, table: Table, request: SandboxRequest) -> SandboxResponse:
        """POST to the entity set: 204 with the new row's URI in ``OData-EntityId``; with ``Prefer:
        return=representation`` 201 with the row (its ``$select`` columns) instead."""
        values = self.environment.convert(table, _body(request), creating=True)
        new_id = self.environment.create(
            table.logical_name,
            values,
            record_id=values.get(table.primary_id),
            by=self.environment.user_id,
        )
        entity = f"{self.api_url(version)}/{table.entity_set}({new_id})"
        if "return=representation" in (request.header("Prefer") or ""):
            row = self.environment.get(table.logical_name, new_id)
            assert row is not None
            context = f"{self.api_url(version)}/$metadata#{table.entity_set}/$entity"
            return _json(
                201,
                {"@odata.context": context} | self._render(table, row, self._select(table, request)),
                {"Preference-Applied": "return=representation"},
            )
        return SandboxResponse(204, b"", None, {"OData-EntityId": entity})

    def _patch(self, version: str, table: Table, record_id: str, request: SandboxRequest) -> SandboxResponse:
        values = self.environment.convert(table, _body(request), creating=False)
        exists = self.environment.get(table.logical_name, record_id) is not None
        if request.header("If-Match") is not None and not exists:
            raise RowError(404, "0x80040217", f"{table.logical_name} With Id = {record_id} Does Not Exist")
        self._check_version(table, record_id, request)
        if request.header("If-None-Match") == "*" and exists:
            raise RowError(412, "0x80040237", "A record with matching key values already exists.")
        if exists and self.faults.consume_failure(record_id):
            self._injected("fail_record")
            raise RowError(
                500, "0x80044150", "Generic SQL error: the row is locked by another transaction (timeout)."
            )
        by = self.environment.user_id
        if exists:
            self.environment.update(table.logical_name, record_id, values, by=by)
        else:
            self.environment.create(table.logical_name, values, record_id=record_id, by=by)
        entity = f"{self.api_url(version)}/{table.entity_set}({record_id})"
        if "return=representation" in (request.header("Prefer") or ""):
            row = self.environment.get(table.logical_name, record_id)
            assert row is not None
            return _json(
                200 if exists else 201,
                self._render(table, row, list(table.columns)),
                {"OData-EntityId": entity},
            )
        return SandboxResponse(204, b"", None, {"OData-EntityId": entity})

    def _check_version(self, table: Table, record_id: str, request: SandboxRequest) -> None:
        """Optimistic concurrency: an ``If-Match`` ETag that is not the row's current one."""
        wanted = request.header("If-Match")
        row = self.environment.get(table.logical_name, record_id)
        if wanted is None or wanted.strip() == "*" or row is None or not table.optimistic_concurrency:
            return
        if wanted.strip() != f'W/"{row["versionnumber"]}"':
            raise RowError(
                412,
                VERSION_MISMATCH,
                "The version of the existing record doesn't match the RowVersion property provided.",
            )

    def _batch(self, version: str, request: SandboxRequest) -> SandboxResponse:
        groups = _parse_batch(request)
        total = sum(len(group) for group, _ in groups)
        if total > MAX_BATCH_REQUESTS:
            raise ODataError(
                f"The number of requests in the batch ({total}) exceeds the limit of {MAX_BATCH_REQUESTS}.",
                "0x8006088a",
            )
        continue_on_error = "odata.continue-on-error" in _preferences(request.header("Prefer"))
        with self._lock:
            self.batch_requests += total
        boundary = f"batchresponse_{uuid.uuid4()}"
        parts: list[str] = []
        for group, changeset in groups:
            answers = self._run_group(group, changeset)
            if changeset:
                inner = f"changesetresponse_{uuid.uuid4()}"
                text = (
                    "".join(f"--{inner}\r\n{_http_part(a, cid)}" for a, cid in answers) + f"--{inner}--\r\n"
                )
                parts.append(f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={inner}\r\n\r\n{text}")
            else:
                parts += [f"--{boundary}\r\n{_http_part(a, cid)}" for a, cid in answers]
            failed = next((a for a, _ in answers if a.status >= 400), None)
            if failed is not None and not continue_on_error:
                # "The batch error represents the error of the first failing request."
                body = "".join(parts) + f"--{boundary}--\r\n"
                retry = {k: v for k, v in failed.headers.items() if k.lower() == "retry-after"}
                return SandboxResponse(
                    failed.status, body.encode(), f"multipart/mixed; boundary={boundary}", retry
                )
        body = "".join(parts) + f"--{boundary}--\r\n"
        headers = {"Preference-Applied": "odata.continue-on-error"} if continue_on_error else {}
        return SandboxResponse(200, body.encode(), f"multipart/mixed; boundary={boundary}", headers)

    def _run_group(self, group: list[_Part], changeset: bool) -> list[tuple[SandboxResponse, str | None]]:
        if not changeset:
            return [(self._inner(part), part.content_id) for part in group]
        with self.environment.lock:
            saved = {
                name: (dict((k, dict(v)) for k, v in t.rows.items()), list(t.tombstones))
                for name, t in self.environment.tables.items()
            }
            answers = []
            for part in group:
                answer = self._inner(part)
                if answer.status >= 400:
                    for name, (rows, tombstones) in saved.items():
                        self.environment.tables[name].rows = rows
                        self.environment.tables[name].tombstones = tombstones
                    return [(answer, part.content_id)]
                answers.append((answer, part.content_id))
            return answers

    def _inner(self, part: _Part) -> SandboxResponse:
        split = urlsplit(part.url)
        path = split.path
        if not path.startswith("/"):
            path = "/api/data/v9.2/" + path
        try:
            if self._kind(part.method, path) == "batch":
                raise ODataError("A batch cannot contain another batch.")
            if len(part.url) > URL_LIMIT:
                return _json(
                    414,
                    {"error": {"code": "0x80060888", "message": "The request URL is too long."}},
                )
            refused = self._admit_execution(1) if self.throttle_in_batch else None
            if refused is not None:
                return self.error_response(refused)
            if self.batch_request_seconds > 0:
                time.sleep(self.batch_request_seconds)  # executed one after another
            response = self._route(
                part.method, path, parse_qs(split.query, keep_blank_values=True), part.headers, part.body
            )
        except ODataError as error:
            response = _json(error.status, error.body())
        except RowError as error:
            response = _json(error.status, {"error": {"code": error.code, "message": error.message}})
        response.headers = {"OData-Version": "4.0", **response.headers}
        return response


@dataclass(frozen=True)
class _TrackedRead:
    """What every page of one change-tracking read shares: its API root, table and columns, the
    ``$select`` its links keep as the client wrote it, its context, page size and headers."""

    api: str
    table: Table
    names: list[str]
    select_text: str
    context: str
    size: int
    headers: dict[str, str]

    def page(
        self,
        value: list[dict[str, Any]],
        *,
        more: dict[str, Any] | None,
        delta_token: str,
        token: str | None = None,
    ) -> SandboxResponse:
        """One page: a next link going on from ``more`` (with the read's own ``token``, for a
        delta) while rows remain, else the delta link naming ``delta_token``."""
        body: dict[str, Any] = {"@odata.context": self.context + "/$delta", "value": value}
        params = {"$select": self.select_text}
        if more is not None:
            if token is not None:
                params["$deltatoken"] = token
            params["$skiptoken"] = _encode_state(more)
            body["@odata.nextLink"] = self._link(params)
        else:
            params["$deltatoken"] = delta_token
            body["@odata.deltaLink"] = self._link(params)
        return _json(200, body, self.headers)

    def _link(self, params: dict[str, str]) -> str:
        return f"{self.api}/{self.table.entity_set}?{urlencode(params, quote_via=quote)}"


class _Unauthorized(Exception):
    pass


class _Throttled(Exception):
    def __init__(self, message: str, retry_after: int, code: str = THROTTLED) -> None:
        super().__init__(message)
        self.message, self.retry_after, self.code = message, retry_after, code


@dataclass
class _Part:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None


def _managed(value: bool) -> dict[str, Any]:
    """A BooleanManagedProperty as the metadata answers it (IsAuditEnabled)."""
    return {"Value": value, "CanBeChanged": True, "ManagedPropertyLogicalName": "canmodifyauditsettings"}


def _plain(value: Any) -> Any:
    return _stamp(value) if isinstance(value, datetime) else value


def _preferences(header: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (header or "").split(","):
        name, _, value = item.strip().partition("=")
        if name:
            out[name.strip().lower()] = value.strip().strip('"')
    return out


def _body(request: SandboxRequest) -> dict[str, Any]:
    if not request.body.strip():
        raise ODataError("The request body is empty: a JSON object was expected.")
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ODataError(f"Invalid JSON. {error}") from None
    if not isinstance(data, dict):
        raise ODataError("Invalid JSON. A JSON object was expected.")
    return data


def _boundary(content_type: str | None) -> str:
    match = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not (content_type or "").lower().startswith("multipart/mixed") or match is None:
        raise ODataError("The content type of a $batch request must be multipart/mixed with a boundary.")
    return match.group(1)


def _split(body: str, boundary: str) -> list[str]:
    marker = f"--{boundary}"
    if f"{marker}--" not in body:
        raise ODataError("The $batch body does not end with its closing boundary.")
    chunks = body.split(marker)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith("--"):
            break
        parts.append(chunk.lstrip("\r\n"))
    return parts


def _headers_and_rest(text: str) -> tuple[dict[str, str], str]:
    parts = re.split(r"\r?\n\r?\n", text, maxsplit=1)
    head, rest = parts[0], (parts[1] if len(parts) > 1 else "")
    headers: dict[str, str] = {}
    for line in re.split(r"\r?\n", head):
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers, rest


_HEADER_NAMES = {"odata-version": "OData-Version", "if-match": "If-Match", "if-none-match": "If-None-Match"}


def _parse_request(text: str, content_id: str | None) -> _Part:
    lines = re.split(r"\r?\n", text, maxsplit=1)
    match = re.fullmatch(r"(GET|POST|PATCH|PUT|DELETE) (\S+) HTTP/1\.1", lines[0].strip())
    if match is None:
        raise ODataError(f"The request line of a batch part is not valid: '{lines[0][:80]}'.")
    headers, body = _headers_and_rest(lines[1] if len(lines) > 1 else "")
    named = {_HEADER_NAMES.get(k, k.title()): v for k, v in headers.items()}
    return _Part(match.group(1), match.group(2), named, body.rstrip("\r\n").encode(), content_id)


def _parse_batch(request: SandboxRequest) -> list[tuple[list[_Part], bool]]:
    """The batch's requests in order, grouped: a change set (True) is one atomic group, every
    other request a group of its own."""
    boundary = _boundary(request.header("Content-Type"))
    groups: list[tuple[list[_Part], bool]] = []
    for chunk in _split(request.body.decode("utf-8", "replace"), boundary):
        headers, rest = _headers_and_rest(chunk)
        kind = headers.get("content-type", "").lower()
        if kind.startswith("multipart/mixed"):
            group = []
            for sub in _split(rest, _boundary(headers["content-type"])):
                sub_headers, sub_rest = _headers_and_rest(sub)
                group.append(_parse_request(sub_rest, sub_headers.get("content-id")))
            groups.append((group, True))
        elif kind.startswith("application/http"):
            groups.append(([_parse_request(rest, headers.get("content-id"))], False))
        else:
            raise ODataError(f"A batch part must be application/http or multipart/mixed, not '{kind}'.")
    return groups


def _http_part(response: SandboxResponse, content_id: str | None) -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        lines.append(f"Content-ID: {content_id}")
    head = [f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}"]
    head += [f"{name}: {value}" for name, value in response.headers.items()]
    if response.content_type and response.body:
        head.append(f"Content-Type: {response.content_type}")
    return "\r\n".join(lines) + "\r\n\r\n" + "\r\n".join(head) + "\r\n\r\n" + response.body.decode() + "\r\n"


def _keep(value: Any) -> Any:
    return {"$dt": _stamp(value)} if isinstance(value, datetime) else value


def _restore(value: Any) -> Any:
    if isinstance(value, dict) and "$dt" in value:
        return datetime.fromisoformat(value["$dt"].replace("Z", "+00:00"))
    return value


def _comparer(order: list[tuple[str, bool]]) -> Callable[[Mapping[str, Any], Mapping[str, Any]], int]:
    """Orders rows as SQL Server does: nulls first ascending, text without regard to case."""

    def key(value: Any) -> tuple[int, Any]:
        if value is None:
            return (0, 0)
        return (1, value.casefold() if isinstance(value, str) else value)

    def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
        for name, descending in order:
            left, right = key(a.get(name)), key(b.get(name))
            if left != right:
                result = -1 if left < right else 1
                return -result if descending else result
        return 0

    return compare


# ---------------------------------------------------------------------------------------------- CLI


@sandbox_main(
    "dynamics",
    seed_help="Seed the environment with this many generated contacts (with duplicates and consent rows).",
)
def serve_forever(*, port: int = 8447, records: int = 200, seed: int, host: str) -> Serving:
    """Run a Dynamics 365 / Dataverse sandbox (HTTPS, self-signed CA) until interrupted.

    Prints the URLs, the CA files and the demo credentials."""
    sandbox, made = seeded(DynamicsSandbox, DataverseEnvironment(), records, seed, host=host, port=port)
    where = {
        "environment URL": f"{sandbox.environment_url}   (Web API {sandbox.api_url()})",
        "token URL": sandbox.token_url,
        "scope": f"{sandbox.environment_url}/.default",
    }
    who = {
        **credential_lines(sandbox.credentials, "tenant_id", "client_id", "client_secret"),
        "seeded": f"{len(made['contacts'])} contacts, {len(made['consents'])} consents "
        f"(--random-seed {seed})",
    }
    return Serving(sandbox, running_lines("Dynamics 365 / Dataverse", sandbox, where, who))


#: ``consentsync sandbox dynamics`` (entry-point group ``consentsync.sandboxes``).
command = serve_forever.command
