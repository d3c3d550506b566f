"""The access tokens a sandbox issues, and the OAuth 2.0 form that asks for one: what the
sandboxes of CRMs signing in with expiring bearer tokens share (the token's spelling, the schemes
accepted and the refusal stay the vendor's)."""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["IssuedTokens", "client_credentials_form"]


class IssuedTokens:
    """Access tokens issued so far, each good until its expiry; thread-safe. An expired token is
    forgotten when it is next presented."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}  # token -> expiry (time.monotonic)
        self._lock = threading.Lock()

    def issue(self, token: str, lifetime: float) -> str:
        """``token``, good for ``lifetime`` seconds from now."""
        with self._lock:
            self._expiry[token] = time.monotonic() + lifetime
        return token

    def valid(self, token: str) -> bool:
        """Whether ``token`` was issued and has not expired (nor been :meth:`clear`-ed)."""
        with self._lock:
            expiry = self._expiry.get(token)
            if expiry is not None and expiry < time.monotonic():
                del self._expiry[token]
                expiry = None
            return expiry is not None

    def clear(self) -> None:
        """Every token issued so far is refused from now on (sessions expire)."""
        with self._lock:
            self._expiry.clear()


def client_credentials_form(credentials: Any, **extra: str) -> dict[str, str]:
    """The form of an OAuth 2.0 client-credentials grant (RFC 6749, 4.4) for ``credentials`` (its
    ``client_id`` and ``client_secret``), with the vendor's ``extra`` fields (a ``scope``)."""
    return {
        "grant_type": "client_credentials",
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
        **extra,
    }
