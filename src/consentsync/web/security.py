"""Sessions, CSRF tokens and role checks of the console.

A session is a cookie holding the account id, when it was issued and when the account's password
last changed, signed with HMAC-SHA256: changing a password or disabling an account ends its
sessions, and a session lasts at most ``SESSION_HOURS``. The cookie is HttpOnly, SameSite=Strict,
and Secure whenever the request came over HTTPS. Every state-changing request carries a CSRF
token bound to the session (a form field, or the X-CSRF-Token header for the JSON API); the login
form's token is bound to a short-lived pre-session cookie.

The signing key comes from CONSENTSYNC_WEB_SECRET when set, else it is derived from the erasure
key (HMAC with a fixed label), so a fresh install is secure without another secret to manage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from fastapi import Request
from fastapi.responses import Response

from consentsync.accounts import Account, Accounts

SESSION_COOKIE = "consentsync_session"
LOGIN_COOKIE = "consentsync_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_HOURS = 12
SECRET_ENV = "CONSENTSYNC_WEB_SECRET"


def signing_key(erasure_key: bytes) -> bytes:
    explicit = os.environ.get(SECRET_ENV)
    if explicit:
        if len(explicit) < 32:
            raise ValueError(f"{SECRET_ENV} must be at least 32 characters")
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

    def issue(self, account: Account, now: datetime) -> str:
        body = _b64(
            orjson.dumps(
                {
                    "a": account.id,
                    "i": int(now.timestamp()),
                    "p": account.password_changed_at.isoformat(),
                    "n": secrets.token_hex(8),
                }
            )
        )
        return f"{body}.{self._sign('session|' + body)}"

    def read(self, token: str | None, now: datetime) -> Session | None:
        if not token or token.count(".") != 1:
            return None
        body, signature = token.split(".")
        if not hmac.compare_digest(signature, self._sign("session|" + body)):
            return None
        try:
            data = orjson.loads(_unb64(body))
            issued = datetime.fromtimestamp(int(data["i"]), UTC)
            account = self.accounts.by_id(int(data["a"]))
        except (ValueError, KeyError, TypeError):
            return None
        if account is None or account.disabled:
            return None
        if data.get("p") != account.password_changed_at.isoformat():
            return None  # the password changed since: every older session ends
        if not issued <= now + timedelta(minutes=5) or now - issued > timedelta(hours=SESSION_HOURS):
            return None
        return Session(account, token)

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
    return request.client.host if request.client else "unknown"
