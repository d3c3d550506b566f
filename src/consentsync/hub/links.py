"""Signed, expiring, single-person links to the preference centre.

A link holds a JWT (PyJWT, HS256) naming the person by uid only, with an expiry and an audience:
nothing personal is in it, a changed character breaks its signature, and a link made for one
person opens no one else's page. The signing key is derived from the erasure key, which every
ledger already has and keeps secret; rotating that key ends every link (and every pseudonym)."""

from __future__ import annotations

from datetime import datetime, timedelta

import jwt

from consentsync.ledger.identity import derived_key
from consentsync.ledger.service import Ledger

AUDIENCE = "consentsync:preferences"
ALGORITHM = "HS256"


class LinkRefused(ValueError):
    """A link that is not ours, was changed, or has expired: the message says which."""


def _key(ledger: Ledger) -> bytes:
    # Derived apart from the keyed hashes (``derived_key``): links signed by the key of releases
    # before session 58 (which a failed login could write into the audit log) are refused.
    return derived_key(ledger.erasure_key(), "consentsync/preference-links/v2")


def make_token(ledger: Ledger, uid: str, *, days: int, now: datetime | None = None) -> str:
    issued = now or ledger.clock()
    claims = {"sub": uid, "aud": AUDIENCE, "iat": issued, "exp": issued + timedelta(days=days)}
    return jwt.encode(claims, _key(ledger), algorithm=ALGORITHM)


def _claims(ledger: Ledger, token: str) -> dict[str, object]:
    try:
        return dict(
            jwt.decode(
                token,
                _key(ledger),
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                options={"require": ["sub", "exp", "aud"], "verify_exp": False, "verify_iat": False},
            )
        )
    except jwt.InvalidTokenError:
        raise LinkRefused("this link is not valid: it may have been cut or changed") from None


def expired_uid(ledger: Ledger, token: str) -> str | None:
    """The uid of a link that is ours and unchanged but has expired; None for any other link.
    Such a link may ask for a new one to be mailed to the address on record (never shown)."""
    try:
        claims = _claims(ledger, token)
    except LinkRefused:
        return None
    expiry = claims["exp"]
    if isinstance(expiry, int | float) and expiry > ledger.clock().timestamp():
        return None
    return str(claims["sub"])


def read_token(ledger: Ledger, token: str) -> str:
    """The uid a link was made for; raises ``LinkRefused``. Expiry is judged by the ledger's
    clock, the one that made the link (PyJWT's own check would read the machine's)."""
    claims = _claims(ledger, token)
    if not isinstance(claims["exp"], int | float) or claims["exp"] <= ledger.clock().timestamp():
        raise LinkRefused("this link has expired: ask for a new one")
    return str(claims["sub"])
