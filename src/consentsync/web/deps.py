"""What every console request depends on: the console and the sessions of the application, who
is asking, may they, and is the CSRF token right. Imports no other module of the web package but
the console facade and the session machinery, so that the application, the pages and the API can
all import it without a cycle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from consentsync.accounts import Account, Role
from consentsync.web.console import Console
from consentsync.web.security import CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE, Session, Sessions

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class LoginRequired(Exception):
    """A page asked for by someone not logged in: redirect to the login page."""


class Forbidden(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def sessions_of(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def session_of(request: Request) -> Session | None:
    cached = getattr(request.state, "session", False)
    if cached is not False:
        return cached  # type: ignore[no-any-return]
    found = sessions_of(request).read(request.cookies.get(SESSION_COOKIE))
    request.state.session = found
    return found


async def _csrf_offered(request: Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def require(role: Role, *, api: bool) -> Callable[[Request], Awaitable[Account]]:
    """A dependency: the logged-in account, which holds at least ``role``; on unsafe methods the
    request must also carry the session's CSRF token."""

    async def dependency(request: Request) -> Account:
        session = session_of(request)
        if session is None:
            if api:
                raise StarletteHTTPException(401, "log in first: POST /api/session")
            raise LoginRequired
        if request.method not in SAFE_METHODS:
            offered = await _csrf_offered(request)
            if not sessions_of(request).csrf_ok(session.token, offered):
                raise Forbidden(
                    f"missing or wrong CSRF token (send the {CSRF_HEADER} header from POST /api/session)"
                    if api
                    else "the form was out of date or not sent from this console: reload it and try again"
                )
        if not session.account.may(role):
            raise Forbidden(
                f"this needs the {role.label} role; {session.account.name} is {session.account.role.label}"
            )
        return session.account

    return dependency


TZ_FIELD = "tz"  # the viewer's IANA time zone: a hidden field the page's script fills, and a cookie


@dataclass(frozen=True, slots=True)
class ViewerZone:
    """The time zone a viewer's dates mean: the one their browser named, or UTC when it named none
    (no JavaScript) or one this machine does not know (``known`` False: the page says so)."""

    zone: tzinfo
    name: str
    known: bool


def viewer_zone(request: Request, given: str | None = None) -> ViewerZone:
    """The zone from ``given`` (a form's or query's ``tz``), else the ``tz`` cookie the console's
    script sets on every page, else UTC."""
    for name in (given, request.query_params.get(TZ_FIELD), request.cookies.get(TZ_FIELD)):
        if name and len(name) <= 64:
            try:
                return ViewerZone(ZoneInfo(name), name, True)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ViewerZone(UTC, "UTC", False)
