"""The FastAPI application: shared dependencies (who is asking, may they, is the CSRF token
right), error handling, security headers; the pages and the JSON API are routers of their own."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from consentsync.accounts import Account, LoginThrottled, Role
from consentsync.domain import InvalidInput
from consentsync.hub.bodylimit import BodyLimit
from consentsync.ledger.service import NotFound
from consentsync.web import api, pages
from consentsync.web.console import Console
from consentsync.web.deps import Forbidden, LoginRequired, require
from consentsync.web.drafts import DRAFT_COOKIE, DRAFT_MINUTES, Drafts
from consentsync.web.plans import Conflict
from consentsync.web.rendering import is_utc_time, render, soft_breaks
from consentsync.web.security import CSRF_FIELD, SESSION_COOKIE, Sessions, set_cookie, signing_key
from consentsync.web.swagger import swagger_page

log = structlog.get_logger("consentsync.web")
_PACKAGE = resources.files("consentsync.web")


CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
DOCS_URL = "/api/docs"
OPENAPI_URL = "/api/openapi.json"
SWAGGER = "/static/swagger-ui"  # vendored swagger-ui-dist (static/swagger-ui/README.md)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
# The largest body the console reads (docs/console-ops.md, "Request bodies"). Its largest legitimate
# ones are a bulk retry's: a form of 25 ids, a 4,000-character reason and an 8,000-character
# ``back`` path, percent-encoded (up to 12 bytes a character: about 150 KB), or the API's 1,000
# ids and a reason as JSON escapes (about 60 KB). Anything larger is refused with 413 before it
# is read, whoever sends it: FastAPI reads and parses a body before the login check runs.
BODY_MAX = 256 * 1024
# Where the hub's apps are mounted (_mount_hub): each caps its own bodies (8 MiB, 64 KiB).
HUB_MOUNTS = ("/v1/", "/p/")


def allowed_hosts(console: Console, bind: str | None) -> list[str]:
    """The names a request's Host header may give: ``web.allowed_hosts``, or by default
    localhost and the address the console is bound to (not a wildcard one: those need a list)."""
    configured = console.config.settings.web.allowed_hosts
    if configured is not None:
        return [name.lower() for name in configured]
    extra = [bind.lower()] if bind and bind not in ("0.0.0.0", "::", "") else []
    return [*LOCAL_HOSTS, *extra]


def host_name(header: str) -> str:
    """The name in a Host header, without its port (``[::1]:8080`` is ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(name: str, allowed: list[str]) -> bool:
    return any(
        pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:]))
        for pattern in allowed
    )


def _docs_page() -> tuple[HTMLResponse, str]:
    """Swagger UI from the package's own files, and the CSP that lets exactly its one inline
    script (the page's initialiser, hashed) and the files from 'self' run (web/swagger.py)."""
    body, csp = swagger_page(
        openapi_url=OPENAPI_URL, title="consentsync ops console API", assets=SWAGGER, csp=CSP
    )
    return HTMLResponse(body), csp


def create_app(console: Console, *, host: str | None = None) -> FastAPI:
    app = FastAPI(
        title="consentsync ops console API",
        version="1",
        description=(
            "The actions of the ops console, with the same roles. Authenticate with "
            "`POST /api/session` (name and password): it sets an HttpOnly session cookie and "
            "answers a `csrf_token`; send it as the `X-CSRF-Token` header on every POST, PUT and "
            "DELETE. Viewers read; reviewers also decide objections, retry quarantined "
            "records and make push plans; admins also approve or reject plans and manage "
            "accounts."
        ),
        # Served below, behind a login like every other page.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.console = console
    app.state.sessions = Sessions(signing_key(console.ledger.erasure_key()), console.accounts)
    app.state.drafts = Drafts()
    app.state.trusted_proxies = tuple(console.config.settings.web.trusted_networks())
    app.state.templates = Jinja2Templates(directory=str(_PACKAGE / "templates"))
    app.state.templates.env.tests["utc_time"] = is_utc_time
    app.state.templates.env.filters["soft"] = soft_breaks
    # Named apart from the preference centre's own /static (hub/people.py): url_for finds a name
    # from the outermost app down, and the first mount of a name wins.
    app.mount("/static", StaticFiles(directory=str(_PACKAGE / "static")), name="console_static")
    _mount_hub(app, console)
    app.include_router(api.router)
    app.include_router(pages.router)
    _install_handlers(app)
    docs_page, docs_csp = _docs_page()
    hosts = allowed_hosts(console, host)

    @app.get(OPENAPI_URL, include_in_schema=False)
    def openapi(_account: Annotated[Account, Depends(require(Role.VIEWER, api=True))]) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get(DOCS_URL, include_in_schema=False)
    def docs(_account: Annotated[Account, Depends(require(Role.VIEWER, api=False))]) -> Response:
        return HTMLResponse(docs_page.body, headers={"Content-Security-Policy": docs_csp})

    # Inside security_headers: a refused body is answered with the console's headers, and logged.
    app.add_middleware(
        BodyLimit,
        limit=BODY_MAX,
        answer={"detail": f"the request body is larger than {BODY_MAX} bytes"},
        capped_below=HUB_MOUNTS,
    )

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not host_allowed(host_name(request.headers.get("host", "")), hosts):
            # A name this console does not answer to (DNS rebinding, a misrouted proxy).
            response: Response = PlainTextResponse("unknown Host header", status_code=400)
        else:
            response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        # The preference centre sets no-referrer: its URLs hold the person's link token.
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy", CSP)
        if request.url.scheme == "https":
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        # Paths only: a query string may hold filters an operator typed; never log it.
        log.info(
            "web.request",
            method=request.method,
            path=logged_path(request.url.path),
            status=response.status_code,
        )
        return response

    return app


# The hub's people pages carry a person's link or confirmation token in their path: a credential.
_PEOPLE_TOKEN = re.compile(r"^(/p/(?:preferences|confirm|erase)/)[^/]+")


# A segment longer than a uuid (a run id, a subject uid): a link's token in a path no route
# matched ("//p/preferences/<token>", "/P/PREFERENCES/<token>", a link a mail client mangled).
_TOKEN_LIKE = re.compile(r"[^/]{37,}")


# A path segment holding an address (typed into the console's URL: /subjects/<address>),
# encoded or not: the log holds no personal data.
_ADDRESS_LIKE = re.compile(r"[^/]*(?:@|%40)[^/]*", re.IGNORECASE)


def logged_path(path: str) -> str:
    """A request path as the log may hold it: a people page's token replaced by ``<token>``, and
    so is any segment too long to be one of the console's ids; a segment holding an address by
    ``<address>``."""
    path = _ADDRESS_LIKE.sub("<address>", path)
    return _TOKEN_LIKE.sub("<token>", _PEOPLE_TOKEN.sub(r"\1<token>", path))


def _mount_hub(app: FastAPI, console: Console) -> None:
    """The hub (docs/hub.md) beside the console: the capture API at /v1 (API keys) and the
    preference centre at /p (signed links); neither uses the console's logins."""
    from consentsync.hub import people
    from consentsync.hub.api import create_app as capture_app
    from consentsync.hub.capture import Hub

    hub = Hub(console.config, console.ledger)
    app.mount("/v1", capture_app(hub))
    app.mount("/p", people.create_app(hub))


async def keep_draft(request: Request) -> Response:
    """A form sent after its session ended: back to the login page, saying so; what was typed
    (not passwords) is kept for the session's account, and after logging in again they return to
    the page the form was on, filled in again (web/drafts.py). Kept only for a form this console
    served that session (its CSRF token is right for the ended session)."""
    console: Console = request.app.state.console
    sessions: Sessions = request.app.state.sessions
    token = request.cookies.get(SESSION_COOKIE)
    back = _same_origin_path(request)
    query = {"next": back, "expired": "1"}
    owner = console.accounts.session_owner(token) if token and len(token) <= 200 else None
    draft = None
    if owner is not None and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        form = await request.form()
        if sessions.csrf_ok(token, form.get(CSRF_FIELD) if isinstance(form.get(CSRF_FIELD), str) else None):
            fields = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
            draft = request.app.state.drafts.keep(owner, urlsplit(back).path, fields)
    if draft is None:
        query["expired"] = "lost"
    response = RedirectResponse("/login?" + urlencode(query), status_code=303)
    if draft is not None:
        set_cookie(response, request, DRAFT_COOKIE, draft, DRAFT_MINUTES * 60)
    return response


def _same_origin_path(request: Request) -> str:
    """The page a form was sent from (its Referer, when it is this console's), else the overview."""
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc and referer.netloc != request.headers.get("host", ""):
        return "/"
    path = referer.path or "/"
    if not path.startswith("/") or path.startswith("//") or path.startswith("/login"):
        return "/"
    return path + (f"?{referer.query}" if referer.query else "")


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _install_handlers(app: FastAPI) -> None:
    def problem(
        request: Request, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": message}, status_code=status, headers=headers)
        return render(
            request, "error.html", {"status": status, "message": message}, status=status, headers=headers
        )

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _error: LoginRequired) -> Response:
        if request.url.path == "/logout":  # already logged out: nothing to keep or explain
            return RedirectResponse("/login", status_code=303)
        if request.method == "GET":
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?" + urlencode({"next": here}, safe="/"), status_code=303)
        return await keep_draft(request)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, error: Forbidden) -> Response:
        return problem(request, 403, error.message)

    @app.exception_handler(InvalidInput)
    async def _invalid(request: Request, error: InvalidInput) -> Response:
        return problem(request, 400, str(error))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, error: Conflict) -> Response:
        return problem(request, 409, str(error))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, error: NotFound) -> Response:
        return problem(request, 404, str(error))

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, _error: DataError) -> Response:
        # The database refused a value as data (PostgreSQL: a NUL character in text): bad input.
        return problem(request, 400, "the input holds characters the ledger cannot store or compare")

    @app.exception_handler(LoginThrottled)
    async def _throttled(request: Request, error: LoginThrottled) -> Response:
        return problem(request, 429, str(error), {"Retry-After": str(error.retry_after)})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        return problem(request, error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": _plain(error.errors())}, status_code=422)
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return problem(request, 422, f"{where}: {first.get('msg', 'invalid input')}")


def _plain(errors: Any) -> Any:
    """Validation errors as JSON-safe values (pydantic may put the offending bytes in them)."""
    return [
        {
            "loc": [str(part) for part in item.get("loc", ())],
            "msg": str(item.get("msg")),
            "type": str(item.get("type")),
        }
        for item in errors
    ]
