"""What every vendor sandbox shares: an HTTPS server on 127.0.0.1 (a throw-away CA made at
start-up), the request and response values its handlers exchange, call counting per endpoint
kind, and one fault pipeline driven by :class:`~consentsync.sandbox.faults.Faults`.

A vendor sandbox subclasses :class:`HttpsSandbox`, says its credentials
(:attr:`HttpsSandbox.credentials_class`) and the limits a test may change (plain class attributes,
:attr:`HttpsSandbox.tunings`, each a constructor keyword too), and implements a few hooks:

* :meth:`HttpsSandbox.route` names the endpoint kind of a request and the function answering it;
* :meth:`HttpsSandbox.authenticate` refuses a request without valid credentials (raising the
  vendor's error);
* :meth:`HttpsSandbox.request_limit_error`, :meth:`HttpsSandbox.throttle_error` and
  :meth:`HttpsSandbox.server_error` answer the fault switches in the vendor's wire format;
* :meth:`HttpsSandbox.error_response` turns the vendor's exceptions into responses, and
  :meth:`HttpsSandbox.finish` adds the headers every response of that vendor carries.

:meth:`HttpsSandbox.handle` runs them in a fixed order, the same for every vendor: connection
reset, delay, authentication, the request limit, throttling, session expiry, a server error, and
only then the handler; every answered request is counted under its kind in :attr:`calls`, and
every injected fault in :attr:`faults_injected`.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import struct
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self, TypedDict
from urllib.parse import parse_qs, urlsplit

from consentsync.sandbox.faults import Faults
from consentsync.sandbox.tls import SandboxTLS, create_sandbox_tls

__all__ = [
    "RESET",
    "HttpsSandbox",
    "PathMatch",
    "PathRoute",
    "RequestBodyError",
    "Route",
    "SandboxError",
    "SandboxRequest",
    "SandboxResponse",
    "ServerOptions",
    "json_response",
    "match_path",
]

log = logging.getLogger("consentsync.sandbox")

RESET = object()  # a handler's answer meaning: close the connection with RST, answer nothing
JSON_TYPE = "application/json;charset=UTF-8"


class SandboxError(Exception):
    """A refusal a vendor sandbox answers in its wire format: the HTTP status, the vendor's error
    code and message, and headers to send with them. A vendor's errors subclass it; its
    :meth:`HttpsSandbox.error_response` writes the body its CRM writes."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class RequestBodyError(ValueError):
    """The request body is not the JSON the endpoint expects; vendors answer it their way."""


@dataclass
class SandboxRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        if not self.body.strip():
            raise RequestBodyError("The request body is empty")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestBodyError(f"Unexpected character: {exc}") from None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; anything else is the client's error (:class:`RequestBodyError`,
        which each vendor's ``error_response`` answers its way)."""
        body = self.json()
        if not isinstance(body, dict):
            raise RequestBodyError("Expected a JSON object")
        return body

    def form(self) -> dict[str, str]:
        """Query parameters and a form-encoded body, first value of each."""
        values = {k: v[0] for k, v in self.query.items()}
        if self.body and "json" not in (self.header("Content-Type") or "").lower():
            parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
            values.update({k: v[0] for k, v in parsed.items()})
        return values


@dataclass
class SandboxResponse:
    status: int
    body: bytes = b""
    content_type: str | None = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> SandboxResponse:
    return SandboxResponse(status, json.dumps(payload, ensure_ascii=False).encode(), JSON_TYPE, headers or {})


@dataclass(frozen=True, slots=True)
class Route:
    """What :meth:`HttpsSandbox.route` found: the endpoint kind (for counting and for faults
    limited to some kinds), the function answering, and whether it needs credentials (an API call
    that counts against the limits)."""

    kind: str
    answer: Callable[[], SandboxResponse | object]
    authenticated: bool = True


#: One row of a vendor's URL table: the method, the path's pattern (matched whole), the endpoint
#: kind and whether the call needs credentials.
PathRoute = tuple[str, re.Pattern[str], str, bool]


@dataclass(frozen=True, slots=True)
class PathMatch:
    """The row of a URL table a request matched (:func:`match_path`), with its pattern's named
    groups (None for an optional group that matched nothing)."""

    method: str
    kind: str
    params: dict[str, str | None]
    authenticated: bool


def match_path(routes: Iterable[PathRoute], request: SandboxRequest) -> PathMatch | frozenset[str]:
    """The first route taking ``request``'s method at its path; where none does, the methods the
    routes of that path take: none for a path the vendor does not serve (its 404), some for a
    method it does not take there (its 405, which names them)."""
    allowed: set[str] = set()
    for method, pattern, kind, authenticated in routes:
        match = pattern.fullmatch(request.path)
        if match is None:
            continue
        if method != request.method:
            allowed.add(method)
            continue
        return PathMatch(method, kind, match.groupdict(), authenticated)
    return frozenset(allowed)


class ServerOptions(TypedDict, total=False):
    """Where and how an :class:`HttpsSandbox` serves: keywords a vendor sandbox's constructor
    hands on unchanged to the base (with ``credentials`` and the vendor's :attr:`~HttpsSandbox.tunings`)."""

    host: str
    port: int
    faults: Faults | Mapping[str, Any] | None
    tls: SandboxTLS | None
    tls_dir: str | Path | None


def _is_plain_value(value: object) -> bool:
    """A class attribute that holds a value: not a method, property or other descriptor."""
    return not callable(value) and not hasattr(value, "__get__")


class HttpsSandbox(ABC):
    """The server half every vendor sandbox shares. Construct, :meth:`start` (or use as a
    context manager), point clients at :attr:`base_url` and trust :attr:`ca_cert_path`."""

    #: The vendor's endpoint kinds; fault switches limited to kinds are checked against them.
    endpoint_kinds: tuple[str, ...] = ()
    #: The fault switches a sandbox makes when it is given none (or only their settings).
    faults_class: type[Faults] = Faults
    #: The ``Server`` header.
    server_name = "consentsync-sandbox"
    #: The vendor's credentials, made with their throw-away defaults when none are given.
    credentials_class: Callable[[], Any] = type(None)
    #: The vendor's limits and behaviours that a test or a demo may change: the plain class
    #: attributes a vendor sandbox adds (``daily_limit = 250_000``, the CRM's documented value),
    #: each also a keyword of its constructor, which sets it on the instance.
    tunings: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.tunings = cls.tunings | {
            name
            for name, value in vars(cls).items()
            if not name.startswith("_") and name not in vars(HttpsSandbox) and _is_plain_value(value)
        }

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | Mapping[str, Any] | None = None,
        tls: SandboxTLS | None = None,
        tls_dir: str | Path | None = None,
        normalize_id: Callable[[str], str | None] | None = None,
        credentials: Any = None,
        **tunings: Any,
    ) -> None:
        unknown = sorted(set(tunings) - self.tunings)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no setting {', '.join(unknown)}")
        for name, value in tunings.items():
            setattr(self, name, value)
        #: What a client signs in with (the vendor's credentials: ids, secrets, tokens).
        self.credentials = credentials if credentials is not None else self.default_credentials()
        self.host = host
        self.port = port
        self.faults = faults if isinstance(faults, Faults) else self.faults_class(**dict(faults or {}))
        self.faults.bind(self.endpoint_kinds, normalize_id)
        self.calls: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._tls = tls
        self._tls_dir = tls_dir
        self._owns_tls = tls is None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: How far the CRM's clock runs ahead of this machine's (negative: behind): its ``Date``
        #: headers and its stores' change stamps say the time with it (:meth:`skew_clock`).
        self.clock_offset = timedelta(0)

    # ------------------------------------------------------------------ the CRM's clock

    def now(self) -> datetime:
        """The CRM's clock: this machine's, :attr:`clock_offset` off."""
        return datetime.now(UTC) + self.clock_offset

    def stores(self) -> list[Any]:
        """The sandbox's data stores whose ``clock`` stamps its changes (an org, a portal, a
        tenant): by default every attribute holding an object with a callable ``clock``, as each
        vendor's store has (the harness's ``clock_at`` sets it too). A vendor overrides it where
        that finds the wrong ones."""
        return [value for name, value in vars(self).items() if not name.startswith("_") and _has_clock(value)]

    def skew_clock(self, offset: timedelta) -> None:
        """From now on the CRM's clock runs ``offset`` ahead of this machine's (negative:
        behind), as a CRM's server whose clock is off: every answer's ``Date`` header and every
        change its stores (:meth:`stores`) stamp say the CRM's time. Moments a harness gives by
        hand (``clock_at``) are taken as they are."""
        with self._lock:
            shift = offset - self.clock_offset
            self.clock_offset = offset
            for store in self.stores():
                store.clock = _shifted(store.clock, shift)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        if self._tls is None:
            self._tls = create_sandbox_tls(self._tls_dir)
        try:
            self._httpd = _HTTPServer((self.host, self.port), _Handler, self, self._tls.server_context())
        except BaseException:
            # Not bound (a port in use, a bad host, an interrupt): the certificates made for this
            # server, its private key among them, are not left behind in the temporary folder.
            if self._owns_tls:
                self._tls.cleanup()
                self._tls = None
            raise
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=type(self).__name__,  # the vendor's sandbox, in thread dumps and logs
            daemon=True,
        )
        self._thread.start()
        log.info("%s listening on %s", type(self).__name__, self.base_url)
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        """Stop and remove the certificate files made for this server."""
        self.stop()
        if self._tls is not None and self._owns_tls:
            self._tls.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    # ------------------------------------------------------------------ addresses and TLS

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def tls(self) -> SandboxTLS:
        if self._tls is None:
            raise RuntimeError("the sandbox has not been started")
        return self._tls

    @property
    def ca_cert_path(self) -> Path:
        """The sandbox CA alone (PEM): ``Session.verify`` with ``Session.trust_env = False``."""
        return self.tls.ca_cert_path

    @property
    def ca_bundle_path(self) -> Path:
        """The sandbox CA plus the system roots (PEM), usable as ``REQUESTS_CA_BUNDLE``."""
        return self.tls.bundle_path

    def requests_session(self) -> Any:
        """A ``requests.Session`` verifying the sandbox CA, immune to REQUESTS_CA_BUNDLE."""
        return self.tls.requests_session()

    def connection_settings(self) -> dict[str, Any]:
        """The connector settings that reach and sign in to this running sandbox: trust its CA
        (``ca_bundle``) and, in each vendor's sandbox, its addresses and credentials. Tests and
        harnesses add their own tunings (page sizes, attempts) to these."""
        return {"ca_bundle": str(self.ca_cert_path)}

    # ------------------------------------------------------------------ counters

    @property
    def total_calls(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def calls_of(self, kinds: Iterable[str]) -> int:
        with self._lock:
            return sum(self.calls[k] for k in kinds)

    def reset_counters(self) -> None:
        with self._lock:
            self.calls.clear()
            self.faults_injected.clear()

    def forget(self, *tables: MutableMapping[Any, Any]) -> None:
        """Empty these tables of the sandbox's own state (its sessions, challenges, query cursors)
        under its lock: what a run-time control that expires them all at once does."""
        with self._lock:
            for table in tables:
                table.clear()

    def _injected(self, what: str) -> None:
        with self._lock:
            self.faults_injected[what] += 1

    # ------------------------------------------------------------------ hooks (vendor specific)

    def default_credentials(self) -> Any:
        """The credentials of a sandbox constructed without any: the vendor's throw-away ones."""
        return self.credentials_class()

    @abstractmethod
    def route(self, request: SandboxRequest) -> Route:
        """The handler for one request (the vendor's URL space)."""

    def authenticate(self, request: SandboxRequest) -> None:  # noqa: B027 - optional hook
        """Raise the vendor's error when the request carries no valid credentials."""

    def expire_sessions(self) -> None:  # noqa: B027 - optional hook
        """Invalidate every session or token issued so far (session_expiry_after)."""

    def daily_usage(self) -> tuple[int | None, int | None]:
        """(used, limit) of the daily allocation, for ``enforce_daily_limit``."""
        return None, None

    def note_api_call(self, request: SandboxRequest) -> None:  # noqa: B027 - optional hook
        """One authenticated call went through: count it against the vendor's allocations."""

    @abstractmethod
    def request_limit_error(self) -> Exception:
        """The vendor's answer once the (daily) request limit is reached: raised, then turned into
        a response by :meth:`error_response`."""

    @abstractmethod
    def throttle_error(self, retry_after: float) -> Exception:
        """The vendor's short-term throttling answer (its per-second or per-window limit)."""

    def server_error(self, status: int) -> SandboxResponse:
        return json_response(status, {"message": "Server temporarily unavailable, retry later"})

    def error_response(self, error: Exception) -> SandboxResponse:
        """A vendor exception as the vendor would answer it; anything else is a sandbox bug and
        answers 500."""
        log.error("sandbox handler failed", exc_info=error)
        return json_response(500, {"message": type(error).__name__})

    def finish(self, response: SandboxResponse, request: SandboxRequest) -> SandboxResponse:
        """Headers every response carries (limits, usage)."""
        return response

    # ------------------------------------------------------------------ dispatch

    def handle(self, request: SandboxRequest) -> SandboxResponse | object:
        """Answer one request (HTTP-free entry point used by the HTTP handler)."""
        route = self.route(request)
        kind = route.kind
        if self.faults.decide_reset(kind):
            self._injected("reset")
            return RESET
        delay = self.faults.delay_for(kind, request.path)
        if delay > 0:
            self._injected("delay")
            time.sleep(delay)
        response: SandboxResponse | object
        try:
            if route.authenticated:
                self.authenticate(request)
                used, limit = self.daily_usage()
                if self.faults.request_limit_reached(used, limit):
                    self._injected("request_limit")
                    raise self.request_limit_error()
                throttle = self.faults.throttle_now()
                if throttle is not None:
                    self._injected("throttle")
                    raise self.throttle_error(throttle)
                self.note_api_call(request)
                if self.faults.note_call():
                    self._injected("session_expiry")
                    self.expire_sessions()
            status = self.faults.decide_error(kind)
            if status is not None:
                self._injected(f"http_{status}")
                response = self.server_error(status)
            else:
                response = route.answer()
        except Exception as exc:
            response = self.error_response(exc)
        with self._lock:
            self.calls[kind] += 1
        if response is RESET:
            return RESET
        assert isinstance(response, SandboxResponse)
        return self.finish(response, request)


def _has_clock(value: object) -> bool:
    return not isinstance(value, type) and callable(getattr(value, "clock", None))


def _shifted(clock: Callable[[], datetime], shift: timedelta) -> Callable[[], datetime]:
    return lambda: clock() + shift


# ---------------------------------------------------------------------------------------------- HTTP


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self, address: tuple[str, int], handler: type, app: HttpsSandbox, context: ssl.SSLContext
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.app = app
        self.ssl_context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, not in the accept loop.
        try:
            request.settimeout(30)
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls_socket = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls_socket, client_address, self)
        finally:
            self.shutdown_request(tls_socket)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError, OSError)):
            return
        log.exception("sandbox connection error from %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sys_version = ""
    server: _HTTPServer

    @property
    def server_version(self) -> str:  # type: ignore[override]
        return self.server.app.server_name

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header: the CRM's clock (:meth:`HttpsSandbox.now`), in whole seconds."""
        if timestamp is None:
            timestamp = self.server.app.now().timestamp()
        return super().date_time_string(timestamp)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        split = urlsplit(self.path)
        body = self._read_body()
        request = SandboxRequest(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
        )
        result = self.server.app.handle(request)
        if result is RESET:
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            except OSError:
                pass
            return
        assert isinstance(result, SandboxResponse)
        self.send_response(result.status)
        for name, value in result.headers.items():
            self.send_header(name, value)
        if result.content_type:
            self.send_header("Content-Type", result.content_type)
        self.send_header("Content-Length", str(len(result.body)))
        self.end_headers()
        if result.body and self.command != "HEAD":
            self.wfile.write(result.body)
