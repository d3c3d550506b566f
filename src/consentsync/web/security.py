"""Sessions, CSRF tokens and role checks of the console.

A session is a random id in a cookie; the ledger keeps its SHA-256 (``console_sessions``, see
accounts.py): logging out, disabling the account, a new password (the account's other sessions)
and an admin end it on the server for good, and a session lasts at most ``SESSION_HOURS``. The
cookie is HttpOnly, SameSite=Strict, and Secure whenever the request came over HTTPS. Every
state-changing request carries a CSRF token bound to the session (a form field, or the
X-CSRF-Token header for the JSON API); the login form's token is bound to a short-lived pre-session cookie.

A login also sets a device cookie (``consentsync_device``, DEVICE_DAYS): a random id bound to
the account by an HMAC. A browser holding one for the account it tries is counted by it, not by
its address (accounts.py): neither the failures of others at its address (an office's shared
IPv6 /64 or NAT address) nor that account's hourly ceiling of failed logins hold it back, so an
attacker does not lock the owner out of the browsers they used before (OWASP's device cookies).

The signing key comes from CONSENTSYNC_WEB_SECRET when set, else it is derived from the erasure
key (HMAC with a fixed label), so a fresh install is secure without another secret to manage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from consentsync.accounts import SESSION_HOURS, Account, Accounts
from consentsync.domain import InvalidInput

__all__ = ["SESSION_HOURS"]

SESSION_COOKIE = "consentsync_session"
LOGIN_COOKIE = "consentsync_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SECRET_ENV = "CONSENTSYNC_WEB_SECRET"
DEVICE_COOKIE = "consentsync_device"
DEVICE_DAYS = 90


SECRET_MIN_CHARS = 32


def web_secret() -> str | None:
    """CONSENTSYNC_WEB_SECRET when set; one that is too short is bad input (one line, exit 2,
    never the value), checked by `web` and `run --web-port` before the ledger opens or a port
    is bound. A ValueError here was a traceback."""
    explicit = os.environ.get(SECRET_ENV)
    if explicit and len(explicit) < SECRET_MIN_CHARS:
        raise InvalidInput(
            f"{SECRET_ENV} is shorter than {SECRET_MIN_CHARS} characters: set it to "
            f"{SECRET_MIN_CHARS} or more random characters (python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'), or unset it to derive the key from the erasure key"
        )
    return explicit or None


def signing_key(erasure_key: bytes) -> bytes:
    explicit = web_secret()
    if explicit:
        return explicit.encode()
    return hmac.new(erasure_key, b"consentsync console session signing v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    account: Account
    token: str  # the cookie's value, to which the CSRF token is bound


class Sessions:
    def __init__(self, key: bytes, accounts: Accounts) -> None:
        self.key = key
        self.accounts = accounts

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self.key, text.encode(), hashlib.sha256).digest())

    def issue(self, account: Account, user_agent: str = "", *, replacing: str | None = None) -> str:
        """A new session; ``replacing``, the session cookie the browser logging in still holds,
        ends on the server first (whoever's it was): a login replaces that browser's session, and
        a copy of the old cookie (taken from the shared desk, a proxy log) stops working."""
        if replacing and len(replacing) <= 200:
            self.accounts.end_session(replacing)
        return self.accounts.start_session(account, user_agent=user_agent)

    def read(self, token: str | None) -> Session | None:
        if not token or len(token) > 200:
            return None
        account = self.accounts.session_account(token)
        return Session(account, token) if account is not None else None

    def end(self, token: str) -> None:
        self.accounts.end_session(token)

    def device_cookie(self, account: Account) -> str:
        """A device cookie's value for a browser that just logged in to ``account``: a random id,
        when it was issued, and an HMAC binding both to the account's name."""
        device = secrets.token_urlsafe(16)
        issued = int(self.accounts.clock().timestamp())
        return f"{device}.{issued}.{self._sign(f'device|{account.name}|{device}|{issued}')}"

    def device_of(self, value: str | None, name: str) -> str | None:
        """The id of a device cookie issued at a login to the account ``name`` less than
        DEVICE_DAYS ago; None for any other value."""
        if not value or len(value) > 200 or value.count(".") != 2:
            return None
        device, issued, mac = value.split(".")
        tried = name.strip().lower()[:200]
        if not hmac.compare_digest(self._sign(f"device|{tried}|{device}|{issued}"), mac):
            return None
        try:
            age = self.accounts.clock().timestamp() - int(issued)
        except ValueError:
            return None
        return device if 0 <= age <= DEVICE_DAYS * 86400 else None

    def csrf_for(self, bound_to: str) -> str:
        return self._sign("csrf|" + bound_to)

    def csrf_ok(self, bound_to: str | None, offered: str | None) -> bool:
        return bool(bound_to and offered) and hmac.compare_digest(
            self.csrf_for(bound_to or ""), offered or ""
        )


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
        path="/",
    )


def client_of(request: Request) -> str:
    """The client's address for throttling: the socket's peer, unless that peer is a trusted
    proxy (``web.trusted_proxies``); then the right-most address of X-Forwarded-For that is not
    a trusted proxy."""
    peer = request.client.host if request.client else "unknown"
    trusted: tuple[IPNetwork, ...] = getattr(request.app.state, "trusted_proxies", ())
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop[:100]
    return hops[0][:100] if hops else peer


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, trusted: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted if network.version == ip.version)


def request_device(request: Request, name: str) -> str | None:
    """The device id of the request's device cookie when it was issued for the account ``name``."""
    sessions: Sessions = request.app.state.sessions
    return sessions.device_of(request.cookies.get(DEVICE_COOKIE), name)


def remember_device(response: Response, request: Request, account: Account) -> None:
    """A new device cookie for the browser that just logged in to ``account`` (it outlives the
    session and a logout: it only says that this browser logged in to the account before)."""
    sessions: Sessions = request.app.state.sessions
    set_cookie(response, request, DEVICE_COOKIE, sessions.device_cookie(account), DEVICE_DAYS * 86400)
