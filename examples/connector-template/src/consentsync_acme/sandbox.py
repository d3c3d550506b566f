"""A sandbox of the Acme API, built on consentsync's shared HTTPS sandbox server.

The (imaginary) Acme CRM documents:

* ``POST /api/v1/session`` ``{"api_key"}``: ``{"token", "expires_in"}``, or 401
  ``{"error": "invalid_api_key"}``. Every other call sends ``Authorization: Bearer <token>``; an
  unknown or expired token answers 401 ``{"error": "session_expired"}``.
* ``GET /api/v1/me``: the account.
* ``GET /api/v1/contacts?since=&since_id=&until=&limit=``: contacts changed after
  (``since``, ``since_id``) and at or before ``until``, ordered by (``updated_at``, ``id``), at most
  ``limit`` (1..100) with ``has_more``. Times are ISO 8601 UTC with milliseconds.
* ``POST /api/v1/contacts/batch`` ``{"updates": [{"id", "fields"}]}``, at most 50: one result per
  update, in order, ``{"id", "ok"}`` or ``{"id", "ok": false, "error"}``. ``null`` clears a text
  field.
* A change can show in the contact list up to 2 minutes after its ``updated_at``.
* Limits: 429 ``{"error": "rate_limited"}`` with ``Retry-After`` (seconds) for a burst,
  429 ``{"error": "daily_quota_exceeded"}`` once the day's quota is spent.
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
import threading
from typing import Any

from consentsync.sandbox.people import random_person
from consentsync.sandbox.server import HttpsSandbox, Route, SandboxRequest, SandboxResponse, json_response
from consentsync.sandbox.serving import Serving, running_lines, sandbox_main

FIELDS = {"email": str, "name": str, "note": str, "unsubscribed": bool}
MAX_BATCH = 50


class AcmeError(Exception):
    def __init__(self, status: int, error: str, retry_after: float | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.retry_after = status, error, retry_after


def stamp(moment: dt.datetime) -> str:
    moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


class AcmeSandbox(HttpsSandbox):
    endpoint_kinds = ("session", "me", "list", "batch", "not_found")
    server_name = "Acme"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.api_key = secrets.token_urlsafe(24)
        self.sessions: set[str] = set()
        self.contacts: dict[str, dict[str, Any]] = {}
        self.uncommitted: dict[str, dict[str, Any]] = {}  # written, not yet visible to any read
        self._serial = 0
        self._data = threading.Lock()

    # -- the data, as Acme's users change it ---------------------------------------------------

    def create(self, fields: dict[str, Any], *, at: dt.datetime | None = None, visible: bool = True) -> str:
        """A new contact; with ``visible`` False its transaction commits late: it has its id and
        ``updated_at`` now, but no read sees it until :meth:`commit`."""
        with self._data:
            self._serial += 1
            contact_id = f"c-{self._serial:06d}"
            made = at or self.now()
            contact = {
                "unsubscribed": False,
                **fields,
                "id": contact_id,
                "created_at": made,
                "updated_at": made,
            }
            (self.contacts if visible else self.uncommitted)[contact_id] = contact
            return contact_id

    def commit(self, contact_id: str) -> None:
        with self._data:
            self.contacts[contact_id] = self.uncommitted.pop(contact_id)

    def update(self, contact_id: str, fields: dict[str, Any]) -> None:
        with self._data:
            self.contacts[contact_id].update(fields, updated_at=self.now())

    def connection_settings(self) -> dict[str, Any]:
        """Where Acme's connector reaches this sandbox and the key it signs in with (with the CA)."""
        return {**super().connection_settings(), "api_url": self.base_url, "api_key": self.api_key}

    def now(self) -> dt.datetime:
        """Acme's clock (this machine's, or off it by ``skew_clock``), to the millisecond."""
        moment = super().now()
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    # -- the hooks of the shared server --------------------------------------------------------

    def route(self, request: SandboxRequest) -> Route:
        if (request.method, request.path.rstrip("/")) == ("POST", "/api/v1/session"):
            return Route("session", lambda: self._session(request), authenticated=False)
        table = {
            ("GET", "/api/v1/me"): ("me", self._me),
            ("GET", "/api/v1/contacts"): ("list", self._list),
            ("POST", "/api/v1/contacts/batch"): ("batch", self._batch),
        }
        kind, handler = table.get((request.method, request.path.rstrip("/")), ("not_found", None))
        if handler is None:
            return Route("not_found", lambda: json_response(404, {"error": "not_found"}), authenticated=False)
        return Route(kind, lambda: handler(request))

    def authenticate(self, request: SandboxRequest) -> None:
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        with self._data:
            if scheme != "Bearer" or token not in self.sessions:
                raise AcmeError(401, "session_expired")

    def expire_sessions(self) -> None:
        with self._data:
            self.sessions.clear()

    def request_limit_error(self) -> Exception:
        return AcmeError(429, "daily_quota_exceeded")

    def throttle_error(self, retry_after: float) -> Exception:
        return AcmeError(429, "rate_limited", retry_after)

    def server_error(self, status: int) -> SandboxResponse:
        return json_response(status, {"error": "unavailable"})

    def error_response(self, error: Exception) -> SandboxResponse:
        if isinstance(error, AcmeError):
            headers = {"Retry-After": f"{error.retry_after:g}"} if error.retry_after else {}
            return json_response(error.status, {"error": error.error}, headers)
        if isinstance(error, (ValueError, KeyError, TypeError)):
            return json_response(400, {"error": f"bad_request: {error}"})
        return super().error_response(error)

    # -- the endpoints -------------------------------------------------------------------------

    def _session(self, request: SandboxRequest) -> SandboxResponse:
        if request.json().get("api_key") != self.api_key:
            raise AcmeError(401, "invalid_api_key")
        token = secrets.token_urlsafe(24)
        with self._data:
            self.sessions.add(token)
        return json_response(200, {"token": token, "expires_in": 3600})

    def _me(self, _request: SandboxRequest) -> SandboxResponse:
        return json_response(200, {"account": "acme-sandbox"})

    def _list(self, request: SandboxRequest) -> SandboxResponse:
        limit = int(request.param("limit") or 100)
        if not 1 <= limit <= 100:
            raise ValueError("limit must be 1..100")
        since, since_id = request.param("since"), request.param("since_id") or ""
        until = parse(request.param("until")) if request.param("until") else None
        after = (parse(since), since_id) if since else None
        with self._data:
            rows = sorted(self.contacts.values(), key=lambda c: (c["updated_at"], c["id"]))
        chosen = [
            c
            for c in rows
            if (after is None or (c["updated_at"], c["id"]) > after)
            and (until is None or c["updated_at"] <= until)
        ]
        page = chosen[:limit]
        body = [
            {**c, "created_at": stamp(c["created_at"]), "updated_at": stamp(c["updated_at"])} for c in page
        ]
        return json_response(200, {"contacts": body, "has_more": len(chosen) > limit})

    def _batch(self, request: SandboxRequest) -> SandboxResponse:
        updates = request.json()["updates"]
        if not isinstance(updates, list) or not 1 <= len(updates) <= MAX_BATCH:
            raise ValueError(f"updates must be a list of 1..{MAX_BATCH}")
        results = []
        for item in updates:
            contact_id, fields = str(item["id"]), dict(item["fields"])
            bad = [k for k, v in fields.items() if k not in FIELDS or not _valid(FIELDS[k], v)]
            if contact_id not in self.contacts:
                results.append({"id": contact_id, "ok": False, "error": "not_found"})
            elif bad:
                results.append({"id": contact_id, "ok": False, "error": f"invalid_field: {bad[0]}"})
            elif self.faults.consume_failure(contact_id):
                results.append({"id": contact_id, "ok": False, "error": "locked"})
            else:
                self.update(contact_id, fields)
                results.append({"id": contact_id, "ok": True})
        return json_response(200, {"results": results})


def _valid(kind: type, value: Any) -> bool:
    return isinstance(value, kind) or (value is None and kind is str)


@sandbox_main(
    "acme",
    seed_help="Seed Acme with this many generated contacts (a fifth unsubscribed).",
)
def serve_forever(*, port: int = 8450, records: int = 200, seed: int, host: str) -> Serving:
    """Run an Acme sandbox (HTTPS, self-signed CA) until interrupted.

    Prints its URL, CA files and API key; the kit adds the ``connectors:`` block to paste (from
    :class:`AcmeHarness`)."""
    sandbox = AcmeSandbox(host=host, port=port)
    rng, used = random.Random(seed), set()
    # An org that was in use before the sandbox started: one change a second, ending two minutes
    # back (a sync started at once reads them all; its signpost stays seconds behind "now").
    ended = sandbox.now() - dt.timedelta(minutes=2)
    for index in range(records):
        first, last, email = random_person(rng, index, used)
        sandbox.create(
            {"email": email, "name": f"{first} {last}", "unsubscribed": rng.random() < 0.2},
            at=ended - dt.timedelta(seconds=records - index),
        )
    sandbox.start()
    who = {"api_key": sandbox.api_key, "seeded": f"{len(sandbox.contacts)} contacts (--random-seed {seed})"}
    return Serving(sandbox, running_lines("Acme", sandbox, {"API URL": sandbox.base_url}, who))


#: ``consentsync sandbox acme``, registered under the entry-point group ``consentsync.sandboxes``.
command = serve_forever.command
