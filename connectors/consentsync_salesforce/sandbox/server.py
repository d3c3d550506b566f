"""A Salesforce sandbox: a local HTTPS server on 127.0.0.1 that speaks the REST API's wire format
as Salesforce documents it (OAuth token endpoint, query/queryMore, describe, sObject rows, sObject
Collections, Bulk API 2.0 ingest, limits), backed by an in-memory org, with fault injection.

>>> from consentsync_salesforce.sandbox import SalesforceSandbox
>>> with SalesforceSandbox() as sf:
...     sf.org.seed(500, seed=1)
...     session = sf.requests_session()
...     token = session.post(sf.token_url, data=sf.client_credentials_form()).json()["access_token"]

Every response carries ``Sforce-Limit-Info: api-usage=USED/LIMIT``; every authenticated call adds
one to USED (usage may run past the limit, as in Salesforce). The server counts the calls it
answered per endpoint kind in :attr:`SalesforceSandbox.calls`.

Endpoints (``vNN.N`` is any version from 59.0 on; older ones answer 404 NOT_FOUND):

* ``POST /services/oauth2/token``: ``password``, ``client_credentials`` (form or HTTP Basic) and
  ``urn:ietf:params:oauth:grant-type:jwt-bearer`` (RS256 signature checked with the configured
  public key; ``iss``, ``sub``, ``aud``, ``exp`` required). Errors are OAuth bodies:
  ``invalid_grant``/"authentication failure", ``invalid_client``/"invalid client credentials",
  ``invalid_client_id``/"client identifier invalid", ``invalid_grant``/"invalid assertion",
  "expired authorization code", "audience is invalid", "user hasn't approved this consumer",
  ``unsupported_grant_type``.
* ``GET /services/data/``, ``GET /vNN.N/``, ``/vNN.N/limits``, ``/id/{org}/{user}``.
* ``GET /vNN.N/query?q=`` and ``/queryAll?q=`` (see :mod:`consentsync_salesforce.sandbox.soql`; only
  ``queryAll`` shows the recycle bin: records deleted or merged away, with ``IsDeleted`` true,
  ``SystemModstamp`` at the deletion and ``MasterRecordId`` naming a merge's survivor), pages of
  ``Sforce-Query-Options: batchSize=N`` (200..2000, default 2000) over a snapshot taken at the
  first call, ``nextRecordsUrl`` ``/services/data/vNN.N/query/01g...-2000``; a locator expires
  after ``locator_ttl`` seconds unused and only ``max_open_locators`` stay open (oldest dropped):
  then 400 INVALID_QUERY_LOCATOR.
* ``GET /vNN.N/sobjects``, ``/sobjects/{Object}``, ``/sobjects/{Object}/describe``,
  ``/sobjects/{Object}/updated|deleted?start=&end=`` (whole minutes, at most 30 days back),
  ``GET|PATCH|DELETE /sobjects/{Object}/{Id}``, ``POST /sobjects/{Object}``.
* A converted lead (``org.convert_lead``) stays in every query (``IsConverted`` true,
  ``ConvertedContactId``, ``ConvertedAccountId``, ``ConvertedDate``) and is read-only: an update
  of it is refused with CANNOT_UPDATE_CONVERTED_LEAD ("cannot reference converted lead"), a 400
  on ``PATCH /sobjects/Lead/{Id}`` and a per-record error in sObject Collections and Bulk API
  results.
* ``PATCH /vNN.N/composite/sobjects`` (at most 200 records, else 400 EXCEEDED_ID_LIMIT) and
  ``DELETE /vNN.N/composite/sobjects?ids=ID,ID&allOrNone=false`` (at most 200 ids, any objects;
  one DeleteResult per id, in order; deleted records go to the recycle bin).
* Bulk API 2.0 ingest: ``POST|GET /vNN.N/jobs/ingest``, ``GET|PATCH|DELETE .../{id}``,
  ``PUT .../{id}/batches`` (201), ``GET .../{id}/successfulResults|failedResults|
  unprocessedrecords``. Operations insert, update and delete; processed when the job is closed
  (after ``bulk_delay`` seconds when set).
* The org's setup, off by default (:class:`~consentsync_salesforce.sandbox.org.SalesforceOrg`):
  an active duplicate rule (``org.add_duplicate_rule``) refuses an update that changes a field
  of its matching rule's criteria (never a consent flag's alone) and leaves the record matching
  another, with a per-record DUPLICATES_DETECTED (its alert text and a ``duplicateResult``): a
  Block rule always, an Allow-with-Alert rule unless the call's ``Sforce-Duplicate-Rule-Header``
  says ``allowSave=true`` (sObject rows and Collections; a Bulk API 2.0 job takes no such header,
  so its rows are refused). An active lead assignment rule
  (``org.activate_lead_assignment_rule``) sets the OwnerId of every Lead a REST call creates or
  updates unless its ``Sforce-Auto-Assign`` header is FALSE (any case); a Bulk API 2.0 job runs
  none (it names no ``assignmentRuleId``).
* The token endpoint refuses the client credentials grant at a generic login host (a request
  whose ``Host`` is login.salesforce.com or test.salesforce.com): 400 ``invalid_grant``
  "request not supported on this domain"; the flow takes the org's My Domain only.

Where the vendor documentation is silent the sandbox makes a choice, listed here so the
connector does not rely on it: Bulk API 2.0 HTTP errors use the codes INVALIDJOB, INVALIDENTITY,
INVALIDJOBSTATE (409 for an upload to a job that is not Open or already has data: one upload per
job) and INVALIDCONTENTTYPE; results of an unfinished job are a header-only CSV; a 503 fault body
is ``[{"errorCode": "SERVER_UNAVAILABLE", ...}]``; the token response carries ``issued_at`` and
``signature`` for every grant; the ``nextRecordsUrl`` of a queryAll names ``queryAll``; a delete
of a converted lead is refused like an update (CANNOT_UPDATE_CONVERTED_LEAD, per record; a 400 on
the sObject row), and the integration user never has *View and Edit Converted Leads*.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import hmac
import io
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt

from consentsync.sandbox.faults import Faults
from consentsync.sandbox.server import (
    HttpsSandbox,
    PathMatch,
    PathRoute,
    RequestBodyError,
    Route,
    SandboxRequest,
    SandboxResponse,
    match_path,
)
from consentsync.sandbox.server import json_response as _json_response
from consentsync.sandbox.serving import Serving, running_lines, sandbox_main
from consentsync.sandbox.tls import create_sandbox_tls
from consentsync.sandbox.tokens import client_credentials_form
from consentsync_salesforce.sandbox.ids import KEY_PREFIXES, to18
from consentsync_salesforce.sandbox.org import (
    ApiError,
    FieldDef,
    ObjectDef,
    RecordError,
    SalesforceOrg,
    format_datetime,
    parse_api_datetime,
)
from consentsync_salesforce.sandbox.soql import SoqlError, bind, no_such_column, parse

__all__ = [
    "DEFAULT_API_VERSION",
    "SUPPORTED_VERSIONS",
    "SalesforceCredentials",
    "SalesforceOrg",
    "SalesforceSandbox",
    "serve_forever",
]

log = logging.getLogger("consentsync_salesforce.sandbox.server")

DEFAULT_API_VERSION = "59.0"
MIN_API_VERSION = 59.0
SUPPORTED_VERSIONS = (
    ("Winter '24", "59.0"),
    ("Spring '24", "60.0"),
    ("Summer '24", "61.0"),
    ("Winter '25", "62.0"),
    ("Spring '25", "63.0"),
    ("Summer '25", "64.0"),
    ("Winter '26", "65.0"),
    ("Spring '26", "66.0"),
)
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_COLLECTION_RECORDS = 200
DEFAULT_BATCH_SIZE = 2000
MIN_BATCH_SIZE = 200
MAX_REPLICATION_IDS = 600_000

_NOT_FOUND = "The requested resource does not exist"
# Salesforce's own login servers, shared by every org: the client credentials grant is refused
# there (the flow needs the org's My Domain).
GENERIC_LOGIN_HOSTS = frozenset({"login.salesforce.com", "test.salesforce.com"})


class SalesforceFaults(Faults):
    """The shared fault switches, with Salesforce's words for the per-record write failure (its
    error is UNABLE_TO_LOCK_ROW): ``lock_ids``, :meth:`lock_records`, :meth:`consume_lock`.

    Salesforce's own switches (``update``, ``reset`` and ``settings`` as the shared ones):

    ``trigger_locks``
        the locked rows are met by a trigger the write fires (its DML on a related record, a
        roll-up to the parent): the write is refused with CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY,
        UNABLE_TO_LOCK_ROW in its message, instead of UNABLE_TO_LOCK_ROW itself.
    ``bulk_unrecorded_after``
        a Bulk API 2.0 job's rows past this many are processed (saved or refused, and counted in
        ``numberRecordsProcessed``/``numberRecordsFailed``) but in neither result file: "Results
        are not recorded for batches that exceed the daily batch allocation".
    ``internal_errors``
        the failing rows are refused with Salesforce's platform error, UNKNOWN_EXCEPTION ("An
        unexpected error occurred. Please include this ErrorId if you contact support: ..."),
        instead of UNABLE_TO_LOCK_ROW: per record in sObject Collections and Bulk API results.
    ``query_timeouts``
        the next this many queries (query, queryAll, queryMore) are answered 400 QUERY_TIMEOUT
        ("Your query request was running for too long."), as a busy org answers one it stopped.
    """

    id_settings = ("fail_ids", "lock_ids")
    lock_records = Faults.fail_records
    unlock_records = Faults.release_records
    consume_lock = Faults.consume_failure
    # their defaults: just below
    own_settings = ("trigger_locks", "bulk_unrecorded_after", "internal_errors", "query_timeouts")
    trigger_locks: bool = False
    bulk_unrecorded_after: int | None = None
    internal_errors: bool = False
    query_timeouts: int = 0

    def update(self, **settings: Any) -> None:
        for name in set(self.own_settings) & settings.keys():
            setattr(self, name, settings.pop(name))
        super().update(**settings)

    def reset(self) -> None:
        super().reset()
        for name in self.own_settings:
            vars(self).pop(name, None)  # the class's default again

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), **{name: getattr(self, name) for name in self.own_settings}}

    def consume_query_timeout(self) -> bool:
        """True when this query must be answered QUERY_TIMEOUT (spends one of ``query_timeouts``)."""
        with self._mutex:
            if self.query_timeouts <= 0:
                return False
            self.query_timeouts -= 1
            return True

    def consume_failure(self, record_id: str) -> bool:
        locked = super().consume_failure(record_id)
        if locked and self.internal_errors:
            raise RecordError(
                "UNKNOWN_EXCEPTION",
                "An unexpected error occurred. Please include this ErrorId if you contact support: "
                "1498613519-40812 (-1209493416)",
            )
        if locked and self.trigger_locks:
            raise RecordError(
                "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
                "ConsentTrigger: execution of AfterUpdate caused by: System.DmlException: Update "
                f"failed. First exception on row 0 with id {record_id}; first error: "
                "UNABLE_TO_LOCK_ROW, unable to obtain exclusive access to this record: []: "
                "Trigger.ConsentTrigger: line 12, column 1",
            )
        return locked


# The endpoint kinds this sandbox counts calls of and aims faults at.
ENDPOINT_KINDS = (
    "token",
    "versions",
    "resources",
    "identity",
    "limits",
    "query",
    "queryMore",
    "describe_global",
    "sobject_info",
    "describe",
    "updated",
    "deleted",
    "sobject_get",
    "sobject_create",
    "sobject_patch",
    "sobject_delete",
    "composite",
    "bulk_create",
    "bulk_list",
    "bulk_status",
    "bulk_state",
    "bulk_upload",
    "bulk_results",
    "bulk_delete",
    "not_found",
)


@dataclass
class SalesforceCredentials:
    """The connected app and integration user the token endpoint accepts.

    ``password`` grant: ``client_id``, ``client_secret``, ``username`` and ``password`` followed by
    ``security_token`` (empty by default). ``client_credentials``: ``client_id`` and
    ``client_secret`` (form fields or HTTP Basic). JWT bearer: an RS256 assertion with
    ``iss=client_id``, ``sub=username``, ``aud`` one of ``jwt_audiences`` (as Salesforce: its
    login servers, or an Experience Cloud site's URL; never its own URL) and a future ``exp``,
    signed by the private key matching ``jwt_public_key_pem``.
    """

    client_id: str = "3MVG9consentsyncSandboxConsumerKey"
    client_secret: str = "consentsync-sandbox-consumer-secret"
    username: str = "integration@consentsync.sandbox"
    password: str = "sandbox-password"
    security_token: str = ""
    jwt_public_key_pem: str | bytes | None = None
    jwt_audiences: tuple[str, ...] = ("https://login.salesforce.com", "https://test.salesforce.com")


@dataclass
class _Session:
    token: str
    issued: float
    last_used: float


@dataclass
class _Locator:
    records: list[dict[str, Any]]
    batch_size: int
    version: str
    endpoint: str
    last_used: float


@dataclass
class _IngestJob:
    id: str
    operation: str
    sobject: ObjectDef
    line_ending: str
    column_delimiter: str
    external_id: str | None
    version: str
    created: dt.datetime
    modstamp: dt.datetime
    state: str = "Open"
    data: bytes | None = None
    processed: int = 0
    failed: int = 0
    error_message: str | None = None
    successful_csv: str = ""
    failed_csv: str = ""
    processing_ms: int = 0
    timer: threading.Timer | None = None

    def info(self, user_id: str, *, full: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "operation": self.operation,
            "object": self.sobject.name,
            "createdById": user_id,
            "createdDate": format_datetime(self.created),
            "systemModstamp": format_datetime(self.modstamp),
            "state": self.state,
        }
        if self.external_id:
            out["externalIdFieldName"] = self.external_id
        out.update(
            {
                "concurrencyMode": "Parallel",
                "contentType": "CSV",
                "apiVersion": float(self.version),
                "contentUrl": f"services/data/v{self.version}/jobs/ingest/{self.id}/batches",
                "lineEnding": self.line_ending,
                "columnDelimiter": self.column_delimiter,
            }
        )
        if full:
            out.update(
                {
                    "jobType": "V2Ingest",
                    "numberRecordsProcessed": self.processed,
                    "numberRecordsFailed": self.failed,
                    "retries": 0,
                    "totalProcessingTime": self.processing_ms,
                    "apiActiveProcessingTime": self.processing_ms,
                    "apexProcessingTime": 0,
                }
            )
            if self.error_message:
                out["errorMessage"] = self.error_message
        return out


_DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}

_V = r"/services/data/v(?P<version>\d+\.\d)"
_ROUTES: list[PathRoute] = [
    (method, re.compile(pattern), kind, auth)
    for method, pattern, kind, auth in (
        ("POST", r"/services/oauth2/token/?", "token", False),
        ("GET", r"/services/data/?", "versions", False),
        ("GET", r"/id/(?P<org>\w+)/(?P<user>\w+)/?", "identity", True),
        ("GET", _V + r"/?", "resources", True),
        ("GET", _V + r"/limits/?", "limits", True),
        ("GET", _V + r"/(?P<endpoint>query|queryAll)/?", "query", True),
        ("GET", _V + r"/(?P<endpoint>query|queryAll)/(?P<locator>\w+)-(?P<offset>\d+)/?", "queryMore", True),
        ("GET", _V + r"/sobjects/?", "describe_global", True),
        ("GET", _V + r"/sobjects/(?P<sobject>\w+)/describe/?", "describe", True),
        ("GET", _V + r"/sobjects/(?P<sobject>\w+)/updated/?", "updated", True),
        ("GET", _V + r"/sobjects/(?P<sobject>\w+)/deleted/?", "deleted", True),
        ("GET", _V + r"/sobjects/(?P<sobject>\w+)/?", "sobject_info", True),
        ("POST", _V + r"/sobjects/(?P<sobject>\w+)/?", "sobject_create", True),
        ("GET", _V + r"/sobjects/(?P<sobject>\w+)/(?P<record_id>\w+)/?", "sobject_get", True),
        ("PATCH", _V + r"/sobjects/(?P<sobject>\w+)/(?P<record_id>\w+)/?", "sobject_patch", True),
        ("DELETE", _V + r"/sobjects/(?P<sobject>\w+)/(?P<record_id>\w+)/?", "sobject_delete", True),
        ("PATCH", _V + r"/composite/sobjects/?", "composite", True),
        ("DELETE", _V + r"/composite/sobjects/?", "composite", True),
        ("POST", _V + r"/jobs/ingest/?", "bulk_create", True),
        ("GET", _V + r"/jobs/ingest/?", "bulk_list", True),
        ("GET", _V + r"/jobs/ingest/(?P<job_id>\w+)/?", "bulk_status", True),
        ("PATCH", _V + r"/jobs/ingest/(?P<job_id>\w+)/?", "bulk_state", True),
        ("DELETE", _V + r"/jobs/ingest/(?P<job_id>\w+)/?", "bulk_delete", True),
        ("PUT", _V + r"/jobs/ingest/(?P<job_id>\w+)/batches/?", "bulk_upload", True),
        (
            "GET",
            _V
            + r"/jobs/ingest/(?P<job_id>\w+)/(?P<which>successfulResults|failedResults|unprocessedrecords)/?",
            "bulk_results",
            True,
        ),
    )
]

_HANDLER_BY_METHOD = {("DELETE", "composite"): "_h_composite_delete"}


class SalesforceSandbox(HttpsSandbox):
    """The sandbox server. Construct, :meth:`start` (or use as a context manager), point clients
    at :attr:`instance_url` with :attr:`ca_cert_path` (or :attr:`ca_bundle_path`) for TLS.

    Run-time controls (HTTP-free): :attr:`faults` (:class:`~consentsync.sandbox.faults.Faults`),
    :attr:`org` (the data; ``org.merge``, ``org.delete``, ``org.convert_lead`` and
    ``org.begin_create``/``org.commit`` for records merged, deleted, converted or committed late
    by a user), :meth:`issue_token`, :meth:`expire_sessions`,
    :meth:`expire_query_locators`, :meth:`set_api_usage`, :meth:`reset_counters`.
    """

    endpoint_kinds = ENDPOINT_KINDS
    faults_class = SalesforceFaults
    server_name = "SFDC"
    # The org's limits and lifetimes (Salesforce's defaults; constructor keywords too).
    api_limit = 100_000  # the daily API request allocation
    session_timeout = 7200.0  # seconds a session lives without use
    bulk_delay = 0.0  # seconds a closed Bulk API job takes to process
    locator_ttl = 900.0  # seconds a query locator lives unused
    max_open_locators = 10  # query locators that stay open (the oldest is dropped)

    def __init__(self, org: SalesforceOrg | None = None, *, api_usage: int = 0, **options: Any) -> None:
        self.org = org or SalesforceOrg()
        super().__init__(normalize_id=to18, **options)
        self._api_used = api_usage
        self._sessions: dict[str, _Session] = {}
        self._locators: OrderedDict[str, _Locator] = OrderedDict()
        self._jobs: dict[str, _IngestJob] = {}

    def default_credentials(self) -> SalesforceCredentials:
        """A connected app of its own, signing in as the org's user."""
        return SalesforceCredentials(username=self.org.username)

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        super().stop()
        with self._lock:
            for job in self._jobs.values():
                if job.timer is not None:
                    job.timer.cancel()

    # ------------------------------------------------------------------ addresses

    @property
    def instance_url(self) -> str:
        return self.base_url

    @property
    def login_url(self) -> str:
        """Where the token endpoint lives (the same server)."""
        return self.base_url

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/services/oauth2/token"

    def connection_settings(self) -> dict[str, Any]:
        c = self.credentials
        sign_in = {"auth": "client_credentials", "client_id": c.client_id, "client_secret": c.client_secret}
        return {**super().connection_settings(), "login_url": self.login_url, **sign_in}

    def data_url(self, version: str = DEFAULT_API_VERSION) -> str:
        return f"{self.base_url}/services/data/v{version}"

    # ------------------------------------------------------------------ credentials and sessions

    def password_form(self) -> dict[str, str]:
        """The username-password flow's form: the client's, the user's password and token."""
        c = self.credentials
        form = self.client_credentials_form()
        return {
            **form,
            "grant_type": "password",
            "username": c.username,
            "password": c.password + c.security_token,
        }

    def client_credentials_form(self) -> dict[str, str]:
        return client_credentials_form(self.credentials)

    def issue_token(self) -> str:
        """A fresh access token without an HTTP call (not counted)."""
        return self._new_session()["access_token"]

    def expire_sessions(self) -> None:
        """Invalidate every access token issued so far."""
        self.forget(self._sessions)

    def expire_query_locators(self) -> None:
        self.forget(self._locators)

    @property
    def api_usage(self) -> tuple[int, int]:
        with self._lock:
            return self._api_used, self.api_limit

    def set_api_usage(self, used: int, limit: int | None = None) -> None:
        with self._lock:
            self._api_used = used
            if limit is not None:
                self.api_limit = limit

    def _new_session(self, *, scope: bool = False) -> dict[str, Any]:
        token = f"{self.org.org_id[:15]}!AQ{secrets.token_urlsafe(72)}"
        now = time.monotonic()
        with self._lock:
            self._sessions[token] = _Session(token, now, now)
        issued_at = str(int(time.time() * 1000))
        identity = f"{self.login_url}/id/{self.org.org_id}/{self.org.user_id}"
        signature = base64.b64encode(
            hmac.new(
                self.credentials.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256
            ).digest()
        ).decode()
        out: dict[str, Any] = {
            "access_token": token,
            "instance_url": self.instance_url,
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
            "signature": signature,
        }
        if scope:
            out["scope"] = "api"
        return out

    def _authenticate(self, request: SandboxRequest) -> None:
        header = request.header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        with self._lock:
            session = self._sessions.get(token) if scheme.lower() in ("bearer", "oauth") else None
            now = time.monotonic()
            if session is not None and now - session.last_used > self.session_timeout:
                del self._sessions[token]
                session = None
            if session is None:
                raise ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid")
            session.last_used = now

    # ------------------------------------------------------------------ dispatch

    def authenticate(self, request: SandboxRequest) -> None:
        self._authenticate(request)

    def daily_usage(self) -> tuple[int | None, int | None]:
        return self.api_usage

    def note_api_call(self, request: SandboxRequest) -> None:
        with self._lock:
            self._api_used += 1

    def request_limit_error(self) -> Exception:
        return ApiError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")

    def throttle_error(self, retry_after: float) -> Exception:
        # Salesforce has no short-term throttle on REST calls but its concurrency cap, which it
        # answers with the same error code as the daily limit.
        return ApiError(403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded.")

    def server_error(self, status: int) -> SandboxResponse:
        return _json_response(
            status,
            [{"errorCode": "SERVER_UNAVAILABLE", "message": "Server temporarily unavailable, retry later"}],
        )

    def error_response(self, error: Exception) -> SandboxResponse:
        if isinstance(error, RequestBodyError):
            error = ApiError(400, "JSON_PARSER_ERROR", str(error))
        if isinstance(error, ApiError):
            return _json_response(error.status, error.body())
        if isinstance(error, SoqlError):
            return _json_response(400, [{"message": error.message, "errorCode": error.error_code}])
        if isinstance(error, _OAuthError):
            return _json_response(400, {"error": error.error, "error_description": error.description})
        # A sandbox bug must still answer like Salesforce does.
        log.error("sandbox handler failed", exc_info=error)
        return _json_response(500, [{"errorCode": "UNKNOWN_EXCEPTION", "message": f"{type(error).__name__}"}])

    def finish(self, response: SandboxResponse, request: SandboxRequest) -> SandboxResponse:
        used, limit = self.api_usage
        response.headers["Sforce-Limit-Info"] = f"api-usage={used}/{limit}"
        return response

    def route(self, request: SandboxRequest) -> Route:
        kind, handler, params, auth = self._route(request)
        return Route(kind, lambda: handler(request, **params), auth)

    def _route(
        self, request: SandboxRequest
    ) -> tuple[str, Callable[..., SandboxResponse], dict[str, str], bool]:
        found = match_path(_ROUTES, request)
        if isinstance(found, PathMatch):
            params = {k: v for k, v in found.params.items() if v is not None}
            version = params.get("version")
            if version is not None and float(version) < MIN_API_VERSION:
                return "not_found", self._not_found, {}, False
            # One endpoint kind (counted and faulted as one) may take several methods.
            handler = getattr(self, _HANDLER_BY_METHOD.get((found.method, found.kind), f"_h_{found.kind}"))
            return found.kind, handler, params, found.authenticated
        if found:
            methods = ",".join(sorted(found))

            def not_allowed(_request: SandboxRequest) -> SandboxResponse:
                raise ApiError(
                    405,
                    "METHOD_NOT_ALLOWED",
                    f"HTTP Method '{request.method}' not allowed. Allowed are {methods}",
                )

            return "not_found", not_allowed, {}, False
        return "not_found", self._not_found, {}, False

    def _not_found(self, _request: SandboxRequest) -> SandboxResponse:
        raise ApiError(404, "NOT_FOUND", _NOT_FOUND)

    # ------------------------------------------------------------------ OAuth

    def _h_token(self, request: SandboxRequest) -> SandboxResponse:
        form = {k: v[0] for k, v in request.query.items()}
        content_type = (request.header("Content-Type") or "").lower()
        if request.body and "json" not in content_type:
            form.update({k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()})
        grant = form.get("grant_type")
        c = self.credentials
        if grant == "password":
            self._check_client(form.get("client_id"), form.get("client_secret"), request)
            if form.get("username") != c.username or form.get("password") != c.password + c.security_token:
                raise _OAuthError("invalid_grant", "authentication failure")
            return _json_response(200, self._new_session())
        if grant == "client_credentials":
            # "The client credentials flow doesn't support calls to login.salesforce.com or
            # test.salesforce.com": the org's My Domain login URL only (Salesforce Help 000886201).
            host = (request.header("Host") or "").rsplit(":", 1)[0].strip().lower().rstrip(".")
            if host in GENERIC_LOGIN_HOSTS:
                raise _OAuthError("invalid_grant", "request not supported on this domain")
            self._check_client(form.get("client_id"), form.get("client_secret"), request)
            return _json_response(200, self._new_session(scope=True))
        if grant == JWT_GRANT:
            self._check_jwt(form.get("assertion") or "")
            return _json_response(200, self._new_session(scope=True))
        raise _OAuthError("unsupported_grant_type", "grant type not supported")

    def _check_client(
        self, client_id: str | None, client_secret: str | None, request: SandboxRequest
    ) -> None:
        basic = request.header("Authorization") or ""
        if basic.lower().startswith("basic ") and client_id is None:
            try:
                client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise _OAuthError("invalid_client", "invalid client credentials") from None
        if client_id != self.credentials.client_id:
            raise _OAuthError("invalid_client_id", "client identifier invalid")
        if client_secret != self.credentials.client_secret:
            raise _OAuthError("invalid_client", "invalid client credentials")

    def _check_jwt(self, assertion: str) -> None:
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _OAuthError("invalid_grant", "invalid assertion") from None
        if claims.get("iss") != self.credentials.client_id:
            raise _OAuthError("invalid_client_id", "client identifier invalid")
        key = self.credentials.jwt_public_key_pem
        if not key:
            raise _OAuthError("invalid_grant", "invalid assertion")
        # Salesforce's authorization servers (or an Experience Cloud site) only: a My Domain
        # or instance URL, such as this sandbox's own, is "audience is invalid".
        audiences = list(self.credentials.jwt_audiences)
        try:
            claims = jwt.decode(
                assertion,
                key=key,
                algorithms=["RS256"],
                audience=audiences,
                options={"require": ["iss", "sub", "aud", "exp"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise _OAuthError("invalid_grant", "expired authorization code") from None
        except jwt.InvalidAudienceError:
            raise _OAuthError("invalid_grant", "audience is invalid") from None
        except jwt.PyJWTError:
            raise _OAuthError("invalid_grant", "invalid assertion") from None
        if claims.get("sub") != self.credentials.username:
            raise _OAuthError("invalid_grant", "user hasn't approved this consumer")

    # ------------------------------------------------------------------ discovery, limits, identity

    def _h_versions(self, _request: SandboxRequest) -> SandboxResponse:
        return _json_response(
            200,
            [
                {"label": label, "url": f"/services/data/v{v}", "version": v}
                for label, v in SUPPORTED_VERSIONS
            ],
        )

    def _h_resources(self, _request: SandboxRequest, version: str) -> SandboxResponse:
        base = f"/services/data/v{version}"
        names = (
            "sobjects",
            "query",
            "queryAll",
            "limits",
            "composite",
            "jobs",
            "search",
            "recent",
            "tooling",
        )
        return _json_response(200, {name: f"{base}/{name}" for name in names})

    def _h_limits(self, _request: SandboxRequest, version: str) -> SandboxResponse:
        used, limit = self.api_usage
        return _json_response(
            200,
            {
                "DailyApiRequests": {"Max": limit, "Remaining": max(0, limit - used)},
                "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
                "DailyBulkV2QueryFileStorageMB": {"Max": 976562, "Remaining": 976562},
                "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
                "DataStorageMB": {"Max": 1024, "Remaining": 1000},
                "SingleEmail": {"Max": 5000, "Remaining": 5000},
            },
        )

    def _h_identity(self, _request: SandboxRequest, org: str, user: str) -> SandboxResponse:
        if to18(org) != self.org.org_id or to18(user) != self.org.user_id:
            raise ApiError(404, "NOT_FOUND", _NOT_FOUND)
        base = f"{self.base_url}/services/data/v{{version}}"
        return _json_response(
            200,
            {
                "id": f"{self.login_url}/id/{self.org.org_id}/{self.org.user_id}",
                "asserted_user": True,
                "user_id": self.org.user_id,
                "organization_id": self.org.org_id,
                "username": self.credentials.username,
                "nick_name": self.credentials.username.split("@")[0],
                "display_name": "Integration User",
                "email": self.credentials.username,
                "active": True,
                "user_type": "STANDARD",
                "language": "en_US",
                "locale": "en_GB",
                "utcOffset": 0,
                "urls": {
                    "rest": base + "/",
                    "sobjects": base + "/sobjects/",
                    "query": base + "/query/",
                },
            },
        )

    # ------------------------------------------------------------------ query

    def _h_query(self, request: SandboxRequest, version: str, endpoint: str) -> SandboxResponse:
        soql = request.param("q")
        if not soql or not soql.strip():
            raise ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
        self._query_timeout()
        bound = bind(parse(soql), self.org.resolve)
        include_deleted = endpoint == "queryAll"
        with self.org.lock:
            rows = self.org.select(bound, include_deleted=include_deleted)
            if bound.is_count:
                return _json_response(200, {"totalSize": len(rows), "done": True, "records": []})
            records = [self.org.render(r, bound.fields, bound.sobject, version) for r in rows]
        batch_size = self._batch_size(request, DEFAULT_BATCH_SIZE)
        if len(records) <= batch_size:
            return _json_response(200, {"totalSize": len(records), "done": True, "records": records})
        locator_id = self.org.ids.new(KEY_PREFIXES["QueryLocator"])
        with self._lock:
            self._locators[locator_id] = _Locator(records, batch_size, version, endpoint, time.monotonic())
            while len(self._locators) > self.max_open_locators:
                self._locators.popitem(last=False)
        return self._page(locator_id, 0)

    def _h_queryMore(
        self, request: SandboxRequest, version: str, endpoint: str, locator: str, offset: str
    ) -> SandboxResponse:
        self._query_timeout()
        with self._lock:
            found = self._locators.get(locator)
            now = time.monotonic()
            if found is not None and now - found.last_used > self.locator_ttl:
                del self._locators[locator]
                found = None
            position = int(offset)
            if found is None or not 0 < position < len(found.records):
                raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            found.last_used = now
            found.batch_size = self._batch_size(request, found.batch_size)
            self._locators.move_to_end(locator)
        return self._page(locator, position)

    def _query_timeout(self) -> None:
        """A query the org stopped for running too long (``faults.query_timeouts``)."""
        if self.faults.consume_query_timeout():
            self._injected("query_timeout")
            raise ApiError(400, "QUERY_TIMEOUT", "Your query request was running for too long.")

    def _page(self, locator_id: str, position: int) -> SandboxResponse:
        with self._lock:
            loc = self._locators[locator_id]
            end = position + loc.batch_size
            out: dict[str, Any] = {"totalSize": len(loc.records), "done": end >= len(loc.records)}
            if end < len(loc.records):
                out["nextRecordsUrl"] = f"/services/data/v{loc.version}/{loc.endpoint}/{locator_id}-{end}"
            out["records"] = loc.records[position:end]
        return _json_response(200, out)

    @staticmethod
    def _batch_size(request: SandboxRequest, default: int) -> int:
        header = request.header("Sforce-Query-Options") or ""
        match = re.search(r"batchSize\s*=\s*(\d+)", header, re.IGNORECASE)
        if not match:
            return default
        return max(MIN_BATCH_SIZE, min(DEFAULT_BATCH_SIZE, int(match.group(1))))

    # ------------------------------------------------------------------ sObjects

    def _object(self, name: str) -> ObjectDef:
        obj = self.org.resolve(name)
        if obj is None:
            raise ApiError(404, "NOT_FOUND", _NOT_FOUND)
        return obj

    def _h_describe_global(self, _request: SandboxRequest, version: str) -> SandboxResponse:
        return _json_response(
            200,
            {
                "encoding": "UTF-8",
                "maxBatchSize": MAX_COLLECTION_RECORDS,
                "sobjects": [o.summary(version) for o in self.org.schema.values()],
            },
        )

    def _h_sobject_info(self, _request: SandboxRequest, version: str, sobject: str) -> SandboxResponse:
        obj = self._object(sobject)
        return _json_response(200, {"objectDescribe": obj.summary(version), "recentItems": []})

    def _h_describe(self, _request: SandboxRequest, version: str, sobject: str) -> SandboxResponse:
        return _json_response(200, self._object(sobject).describe(version))

    def _record_path(self, sobject: str, record_id: str) -> tuple[ObjectDef, str]:
        """The object and the 18-character id a record URL names; 404 when the id is no id of
        that object (as Salesforce reads it then: an external id it does not know)."""
        obj = self._object(sobject)
        full = to18(record_id)
        if full is None or full[:3] != obj.key_prefix:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {record_id}",
            )
        return obj, full

    def _h_sobject_get(
        self, request: SandboxRequest, version: str, sobject: str, record_id: str
    ) -> SandboxResponse:
        obj, full = self._record_path(sobject, record_id)
        names = list(obj.fields)
        wanted = request.param("fields")
        if wanted:
            names = []
            for name in (n.strip() for n in wanted.split(",") if n.strip()):
                fdef = obj.field(name)
                if fdef is None:
                    raise ApiError(
                        400,
                        "INVALID_FIELD",
                        no_such_column(name, obj.name),
                    )
                names.append(fdef.name)
        record = self.org.get(full)
        if record is None:
            raise ApiError(404, "NOT_FOUND", _NOT_FOUND)
        if record["IsDeleted"]:
            raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted")
        return _json_response(200, self.org.render(record, names, obj, version))

    def _h_sobject_create(self, request: SandboxRequest, version: str, sobject: str) -> SandboxResponse:
        obj = self._object(sobject)
        body = request.json_object()
        fields = {k: v for k, v in body.items() if k != "attributes"}
        converted = self.org.convert_json_fields(obj, fields)
        owner = self.org.lead_assignment_owner
        if obj.name == "Lead" and owner and _auto_assign(request, creating=True):
            converted["OwnerId"] = owner
        try:
            new_id = self.org.create(obj.name, converted)
        except RecordError as exc:
            raise ApiError(400, exc.status_code, exc.message, exc.fields) from None
        return _json_response(201, {"id": new_id, "success": True, "errors": []})

    def _h_sobject_patch(
        self, request: SandboxRequest, version: str, sobject: str, record_id: str
    ) -> SandboxResponse:
        obj = self._object(sobject)
        body = request.json_object()
        fields = {k: v for k, v in body.items() if k not in ("attributes", "Id", "id")}
        converted = self.org.convert_json_fields(obj, fields)
        result = self.org.apply_updates(
            [(obj.name, record_id, converted)],
            all_or_none=True,
            lock_check=self.faults.consume_failure,
            allow_duplicates=_allow_save(request),
            auto_assign=_auto_assign(request, creating=False),
        )[0]
        if result is None:
            return SandboxResponse(204, b"", None)
        if result.status_code == "MALFORMED_ID":
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {record_id}",
            )
        if result.status_code == "INVALID_CROSS_REFERENCE_KEY" and not result.fields:
            raise ApiError(404, "NOT_FOUND", _NOT_FOUND)
        if result.status_code == "ENTITY_IS_DELETED":
            raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted")
        raise ApiError(400, result.status_code, result.message, result.fields)

    def _h_sobject_delete(
        self, request: SandboxRequest, version: str, sobject: str, record_id: str
    ) -> SandboxResponse:
        full = self._record_path(sobject, record_id)[1]
        try:
            self.org.delete(full)
        except RecordError as exc:
            if exc.status_code == "ENTITY_IS_DELETED":
                raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted") from None
            if exc.status_code == "CANNOT_UPDATE_CONVERTED_LEAD":
                raise ApiError(400, exc.status_code, exc.message, exc.fields) from None
            raise ApiError(404, "NOT_FOUND", _NOT_FOUND) from None
        return SandboxResponse(204, b"", None)

    def _replication_window(self, request: SandboxRequest) -> tuple[dt.datetime, dt.datetime]:
        start_text, end_text = request.param("start"), request.param("end")
        if not start_text or not end_text:
            raise ApiError(400, "MISSING_ARGUMENT", "start and end are both required")
        start, end = parse_api_datetime(start_text), parse_api_datetime(end_text)
        if start is None or end is None:
            bad = start_text if start is None else end_text
            raise ApiError(400, "INVALID_REPLICATION_DATE", f"Invalid date time value: {bad}")
        start = start.replace(second=0, microsecond=0)
        end = end.replace(second=0, microsecond=0)
        # The org's clock, which stamps its changes; a test that stamps a change at a moment of
        # its choosing, in the past, does not turn back the clock its answers' Date tell.
        now = max(self.org.now(), self.now().replace(microsecond=0))
        if start < now - dt.timedelta(days=30):
            raise ApiError(400, "INVALID_REPLICATION_DATE", "startDate cannot be more than 30 days ago")
        if end <= start:
            raise ApiError(
                400,
                "INVALID_REPLICATION_DATE",
                "startDate must chronologically precede endDate by more than one minute",
            )
        if end - start > dt.timedelta(days=30):
            raise ApiError(
                400, "INVALID_REPLICATION_DATE", "endDate cannot be more than 30 days after startDate"
            )
        return start, min(end, now.replace(second=0))

    def _h_updated(self, request: SandboxRequest, version: str, sobject: str) -> SandboxResponse:
        """The ids changed in the window; latestDateCovered is its end (the last whole minute at
        the latest) or, while a transaction that began in it is still open (``begin_create``),
        the moment it began: "for safety, you should use this value for the startDate of your
        next call" (GetUpdatedResult)."""
        ids, start, end = self._replicated(request, sobject, self.org.updated_ids)
        opened = self.org.open_since(sobject, start, end)
        covered = end if opened is None else min(end, opened)
        return _json_response(200, {"ids": ids, "latestDateCovered": format_datetime(covered)})

    def _h_deleted(self, request: SandboxRequest, version: str, sobject: str) -> SandboxResponse:
        rows, start, end = self._replicated(request, sobject, self.org.deleted_records)
        earliest = min((at for _, at in rows), default=start)
        return _json_response(
            200,
            {
                "deletedRecords": [{"id": rid, "deletedDate": format_datetime(at)} for rid, at in rows],
                "earliestDateAvailable": format_datetime(earliest),
                "latestDateCovered": format_datetime(end),
            },
        )

    def _replicated(
        self,
        request: SandboxRequest,
        sobject: str,
        read: Callable[[str, dt.datetime, dt.datetime], list[Any]],
    ) -> tuple[list[Any], dt.datetime, dt.datetime]:
        """What ``read`` finds of ``sobject`` in the request's replication window, and the window;
        too many answers EXCEEDED_ID_LIMIT."""
        obj = self._object(sobject)  # an unknown object answers before a bad window
        start, end = self._replication_window(request)
        found = read(obj.name, start, end)
        if len(found) > MAX_REPLICATION_IDS:
            raise ApiError(400, "EXCEEDED_ID_LIMIT", "too many ids: use a smaller window")
        return found, start, end

    # ------------------------------------------------------------------ sObject Collections

    def _h_composite(self, request: SandboxRequest, version: str) -> SandboxResponse:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise ApiError(400, "JSON_PARSER_ERROR", "Expected an object with a 'records' list")
        records = body["records"]
        if len(records) > MAX_COLLECTION_RECORDS:
            raise ApiError(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than "
                f"{MAX_COLLECTION_RECORDS} records into this call",
            )
        all_or_none = bool(body.get("allOrNone", False))
        items: list[tuple[str | None, str | None, dict[str, Any]]] = []
        for record in records:
            if not isinstance(record, dict):
                raise ApiError(400, "JSON_PARSER_ERROR", "Each record must be a JSON object")
            attributes = record.get("attributes")
            type_name = attributes.get("type") if isinstance(attributes, dict) else None
            if not type_name:
                raise ApiError(400, "INVALID_TYPE", "Must send a concrete entity type.")
            obj = self.org.resolve(type_name)
            if obj is None:
                raise ApiError(400, "INVALID_TYPE", f"sObject type '{type_name}' is not supported.")
            record_id = record.get("id", record.get("Id"))
            fields = {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}
            items.append((obj.name, record_id, self.org.convert_json_fields(obj, fields)))
        results = self.org.apply_updates(
            items,
            all_or_none=all_or_none,
            lock_check=self.faults.consume_failure,
            allow_duplicates=_allow_save(request),
            auto_assign=_auto_assign(request, creating=False),
        )
        out = []
        for (_, record_id, _), result in zip(items, results, strict=True):
            if result is None:
                out.append({"id": to18(str(record_id)), "success": True, "errors": []})
            else:
                out.append({"success": False, "errors": [result.as_save_error()]})
        return _json_response(200, out)

    def _h_composite_delete(self, request: SandboxRequest, version: str) -> SandboxResponse:
        """``DELETE composite/sobjects?ids=a,b&allOrNone=false``: up to 200 ids of any objects,
        one DeleteResult per id in the order given (failed ones carry no id)."""
        ids = [part.strip() for part in (request.param("ids") or "").split(",") if part.strip()]
        if not ids:
            raise ApiError(400, "MISSING_ARGUMENT", "ids parameter is required")
        if len(ids) > MAX_COLLECTION_RECORDS:
            raise ApiError(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than "
                f"{MAX_COLLECTION_RECORDS} records into this call",
            )
        all_or_none = (request.param("allOrNone") or "false").lower() == "true"
        results = self.org.delete_many(ids, all_or_none=all_or_none, lock_check=self.faults.consume_failure)
        out = [
            {"id": to18(record_id), "success": True, "errors": []}
            if error is None
            else {"success": False, "errors": [error.as_save_error()]}
            for record_id, error in zip(ids, results, strict=True)
        ]
        return _json_response(200, out)

    # ------------------------------------------------------------------ Bulk API 2.0 ingest

    def _job(self, job_id: str) -> _IngestJob:
        with self._lock:
            job = self._jobs.get(to18(job_id) or job_id)
        if job is None:
            raise ApiError(404, "NOT_FOUND", _NOT_FOUND)
        return job

    def _h_bulk_create(self, request: SandboxRequest, version: str) -> SandboxResponse:
        body = request.json_object()
        obj = self.org.resolve(str(body.get("object") or ""))
        if obj is None:
            raise ApiError(
                400, "INVALIDENTITY", f"Entity '{body.get('object')}' is not supported by the Bulk API."
            )
        operation = body.get("operation")
        if operation not in ("insert", "update", "delete"):
            raise ApiError(
                400,
                "INVALIDJOB",
                f"InvalidJob : operation '{operation}' is not supported by this sandbox "
                "(insert, update, delete)",
            )
        if (body.get("contentType") or "CSV") != "CSV":
            raise ApiError(400, "INVALIDJOB", "InvalidJob : contentType must be CSV")
        line_ending = body.get("lineEnding") or "LF"
        delimiter = body.get("columnDelimiter") or "COMMA"
        if line_ending not in ("LF", "CRLF"):
            raise ApiError(400, "INVALIDJOB", f"InvalidJob : invalid lineEnding '{line_ending}'")
        if delimiter not in _DELIMITERS:
            raise ApiError(400, "INVALIDJOB", f"InvalidJob : invalid columnDelimiter '{delimiter}'")
        now = self.org.now()
        job = _IngestJob(
            id=self.org.ids.new(KEY_PREFIXES["AsyncApexJob"]),
            operation=operation,
            sobject=obj,
            line_ending=line_ending,
            column_delimiter=delimiter,
            external_id=body.get("externalIdFieldName"),
            version=version,
            created=now,
            modstamp=now,
        )
        with self._lock:
            self._jobs[job.id] = job
        return _json_response(200, job.info(self.org.user_id, full=False))

    def _h_bulk_list(self, _request: SandboxRequest, version: str) -> SandboxResponse:
        with self._lock:
            jobs = [j.info(self.org.user_id, full=False) for j in self._jobs.values()]
        return _json_response(200, {"done": True, "records": jobs, "nextRecordsUrl": None})

    def _h_bulk_status(self, _request: SandboxRequest, version: str, job_id: str) -> SandboxResponse:
        job = self._job(job_id)
        with self._lock:
            return _json_response(200, job.info(self.org.user_id, full=True))

    def _h_bulk_upload(self, request: SandboxRequest, version: str, job_id: str) -> SandboxResponse:
        job = self._job(job_id)
        content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "text/csv":
            raise ApiError(400, "INVALIDCONTENTTYPE", f"Content-Type must be text/csv, not '{content_type}'")
        with self._lock:
            if job.state != "Open":
                raise ApiError(
                    409, "INVALIDJOBSTATE", f"InvalidJobState : Job state is {job.state}, not Open"
                )
            if job.data is not None:
                raise ApiError(
                    409, "INVALIDJOBSTATE", "InvalidJobState : Data has already been uploaded for this job"
                )
            job.data = request.body
            job.modstamp = self.org.now()
        return SandboxResponse(201, b"", None)

    def _h_bulk_state(self, request: SandboxRequest, version: str, job_id: str) -> SandboxResponse:
        job = self._job(job_id)
        body = request.json()
        state = body.get("state") if isinstance(body, dict) else None
        with self._lock:
            if state == "UploadComplete" and job.state == "Open":
                job.state = "UploadComplete"
                job.modstamp = self.org.now()
                process_now = self.bulk_delay <= 0
                if not process_now:
                    job.timer = threading.Timer(self.bulk_delay, self._process_job, args=(job,))
                    job.timer.daemon = True
                    job.timer.start()
            elif state == "Aborted" and job.state in ("Open", "UploadComplete", "InProgress"):
                job.state = "Aborted"
                job.modstamp = self.org.now()
                if job.timer is not None:
                    job.timer.cancel()
                process_now = False
            else:
                raise ApiError(
                    400,
                    "INVALIDJOBSTATE",
                    f"InvalidJobState : Cannot change state of job from {job.state} to {state}",
                )
            info = job.info(self.org.user_id, full=False)
        if process_now:
            self._process_job(job)
        return _json_response(200, info)

    def _h_bulk_delete(self, _request: SandboxRequest, version: str, job_id: str) -> SandboxResponse:
        job = self._job(job_id)
        with self._lock:
            if job.state not in ("JobComplete", "Failed", "Aborted", "UploadComplete"):
                raise ApiError(
                    400, "INVALIDJOBSTATE", f"InvalidJobState : Cannot delete a job in state {job.state}"
                )
            if job.timer is not None:
                job.timer.cancel()
            self._jobs.pop(job.id, None)
        return SandboxResponse(204, b"", None)

    def _h_bulk_results(
        self, _request: SandboxRequest, version: str, job_id: str, which: str
    ) -> SandboxResponse:
        job = self._job(job_id)
        with self._lock:
            if which == "successfulResults":
                text = job.successful_csv or _csv_line(["sf__Id", "sf__Created"])
            elif which == "failedResults":
                text = job.failed_csv or _csv_line(["sf__Id", "sf__Error"])
            elif job.state in ("Failed", "Aborted") and job.data is not None:
                text = job.data.decode("utf-8-sig", "replace")
            else:
                text = ""
        return SandboxResponse(200, text.encode(), "text/csv")

    def _process_job(self, job: _IngestJob) -> None:
        started = time.monotonic()
        with self._lock:
            if job.state != "UploadComplete":
                return
            job.state = "InProgress"
        try:
            self._run_job(job)
        except _JobFailed as exc:
            with self._lock:
                if job.state != "Aborted":
                    job.state = "Failed"
                    job.error_message = str(exc)
        except Exception:  # keep the job answerable even when the sandbox has a bug
            log.exception("bulk job processing failed")
            with self._lock:
                if job.state != "Aborted":
                    job.state = "Failed"
                    job.error_message = "UnknownException : internal error in the sandbox"
        else:
            with self._lock:
                # Aborted while in progress: Salesforce keeps what it saved and the job Aborted.
                if job.state != "Aborted":
                    job.state = "JobComplete"
        with self._lock:
            job.processing_ms = int((time.monotonic() - started) * 1000)
            job.modstamp = self.org.now()

    def _run_job(self, job: _IngestJob) -> None:
        if not job.data:
            raise _JobFailed("InvalidBatch : No data uploaded for this job")
        text = job.data.decode("utf-8-sig", "replace")
        if job.line_ending == "LF" and "\r\n" in text:
            raise _JobFailed(
                "ClientInputError : LineEnding is invalid on user data. Current LineEnding setting is LF"
            )
        if job.line_ending == "CRLF" and re.search(r"(?<!\r)\n", text):
            raise _JobFailed(
                "ClientInputError : LineEnding is invalid on user data. Current LineEnding setting is CRLF"
            )
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=_DELIMITERS[job.column_delimiter]))
        rows = [r for r in rows if r]
        if not rows:
            raise _JobFailed("InvalidBatch : The CSV file is empty")
        header, data = rows[0], rows[1:]
        fields: list[FieldDef] = []
        for name in header:
            fdef = job.sobject.field(name.strip())
            if fdef is None:
                raise _JobFailed(f"InvalidBatch : Field name not found : {name}")
            if fdef in fields:
                raise _JobFailed(f"InvalidBatch : Duplicate field name: {name}")
            fields.append(fdef)
        outcomes: list[tuple[str, RecordError | None, bool]] = [("", None, False)] * len(data)
        pending: list[tuple[int, str, dict[str, Any]]] = []
        id_column = next((i for i, f in enumerate(fields) if f.name == "Id"), None)
        for index, row in enumerate(data):
            row_id = row[id_column].strip() if id_column is not None and id_column < len(row) else ""
            try:
                if len(row) != len(header):
                    raise RecordError(
                        "INVALID_FIELD", f"Row has {len(row)} columns, the header has {len(header)}", []
                    )
                values: dict[str, Any] = {}
                for column, (fdef, cell) in enumerate(zip(fields, row, strict=True), start=1):
                    if fdef.name == "Id" or cell == "":
                        continue  # an empty cell leaves the field as it is
                    values[fdef.name] = self.org.convert_csv_value(fdef, cell, column)
                if job.operation == "insert":
                    new_id = self.org.create(job.sobject.name, values)
                    outcomes[index] = (new_id, None, True)
                elif job.operation == "delete":
                    if not row_id:
                        raise RecordError("MISSING_ARGUMENT", "Id not specified in a delete call")
                    if self.faults.consume_failure(to18(row_id) or row_id):
                        raise RecordError(
                            "UNABLE_TO_LOCK_ROW",
                            f"unable to obtain exclusive access to this record or 1 records: {row_id}",
                        )
                    self.org.delete(row_id)
                    outcomes[index] = (to18(row_id) or row_id, None, False)
                else:
                    pending.append((index, row_id, values))
            except RecordError as exc:
                outcomes[index] = (to18(row_id) or "", exc, False)
            except ApiError as exc:
                outcomes[index] = (to18(row_id) or "", RecordError(exc.error_code, exc.message), False)
        if pending:
            # Bulk API 2.0 takes no duplicate rule header (an alert refuses the row) and runs an
            # assignment rule only where the job names one (assignmentRuleId: not modelled).
            results = self.org.apply_updates(
                [(job.sobject.name, row_id or None, values) for _, row_id, values in pending],
                all_or_none=False,
                lock_check=self.faults.consume_failure,
                allow_duplicates=False,
            )
            for (index, row_id, _), result in zip(pending, results, strict=True):
                outcomes[index] = (to18(row_id) or "", result, False)
        success_lines = [_csv_line(["sf__Id", "sf__Created", *header])]
        failed_lines = [_csv_line(["sf__Id", "sf__Error", *header])]
        failed = 0
        recorded = self.faults.bulk_unrecorded_after
        for index, (row, (record_id, error, created)) in enumerate(zip(data, outcomes, strict=True)):
            if recorded is not None and index >= recorded:
                # Processed and counted, its result not recorded (the daily batch allocation).
                failed += error is not None
                self._injected("bulk_unrecorded")
            elif error is None:
                success_lines.append(_csv_line([record_id, "true" if created else "false", *row]))
            else:
                failed += 1
                failed_lines.append(_csv_line([record_id, error.as_bulk_error(), *row]))
        with self._lock:
            job.processed = len(data)
            job.failed = failed
            job.successful_csv = "".join(success_lines)
            job.failed_csv = "".join(failed_lines)


def _allow_save(request: SandboxRequest) -> bool:
    """``allowSave`` of the call's ``Sforce-Duplicate-Rule-Header`` ("allowSave=true;
    includeRecordDetails=false; ..."): "The default value for all fields is false"."""
    header = request.header("Sforce-Duplicate-Rule-Header") or ""
    fields = dict(part.strip().partition("=")[::2] for part in header.split(";") if part.strip())
    return fields.get("allowSave", "").strip().lower() == "true"


def _auto_assign(request: SandboxRequest, *, creating: bool) -> bool:
    """Whether the active assignment rules run on what the call saves (``Sforce-Auto-Assign``):
    TRUE or no header, yes; FALSE (any case), no; an AssignmentRule id runs that rule on
    records created (this org has one rule)."""
    value = (request.header("Sforce-Auto-Assign") or "TRUE").strip().lower()
    if value in ("true", "false"):
        return value == "true"
    return creating


def _csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n").writerow(values)
    return buffer.getvalue()


class _OAuthError(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


class _JobFailed(Exception):
    pass


# ---------------------------------------------------------------------------------------------- CLI


@sandbox_main(
    "salesforce",
    seed_help="Seed the org with this many generated contacts (with duplicates and leads).",
)
def serve_forever(*, port: int = 8443, records: int = 2000, seed: int, host: str) -> Serving:
    """Run a Salesforce sandbox (HTTPS, self-signed CA) until interrupted.

    Prints the instance URL, the CA files and the demo credentials, with a JWT key written beside
    the certificates (removed when the sandbox stops)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    org = SalesforceOrg()
    summary = org.seed(records, seed=seed)
    tls = create_sandbox_tls()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwt_key_path = tls.directory / "jwt-private-key.pem"
    jwt_key_path.write_bytes(private_pem)
    jwt_key_path.chmod(0o600)
    credentials = SalesforceCredentials(username=org.username, jwt_public_key_pem=public_pem)
    sandbox = SalesforceSandbox(org, host=host, port=port, credentials=credentials, tls=tls).start()
    c = sandbox.credentials
    where = {
        "instance URL": sandbox.instance_url,
        "token URL": sandbox.token_url,
        "API versions": f"{SUPPORTED_VERSIONS[0][1]}+ (e.g. {sandbox.data_url()})",
    }
    who = {
        "client_id": c.client_id,
        "client_secret": c.client_secret,
        "username": c.username,
        "password": c.password,
        "JWT key": f"{jwt_key_path}   (RS256; iss=client_id, sub=username, aud={c.jwt_audiences[0]})",
        "seeded": f"{len(summary['contacts'])} contacts, {len(summary['leads'])} leads, "
        f"{len(summary['individuals'])} individuals, {len(summary['consents'])} consents "
        f"(--random-seed {seed})",
    }
    return Serving(sandbox, running_lines("Salesforce", sandbox, where, who), cleanup=tls.cleanup)


#: ``consentsync sandbox salesforce`` (entry-point group ``consentsync.sandboxes``).
command = serve_forever.command
