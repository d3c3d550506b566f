"""Signed, expiring, single-person links to the preference centre.

A link holds a JWT (PyJWT, HS256) naming the person by uid only, with an expiry and an audience:
nothing personal is in it, a changed character breaks its signature, and a link made for one
person opens no one else's page. The signing key is derived from the erasure key, which every
ledger already has and keeps secret; rotating that key ends every link (and every pseudonym).

A mailed link also names the address it was mailed to, as a keyed hash (``address_tag``: in the
preference link's ``to`` claim, after ``BOUND_MARK`` in a confirmation link's token): once that
address is one its person left (``SubjectResolver.superseded``: a CRM record of theirs took
another of their own), whoever has the old mailbox now may be someone else, and the link opens nothing
(``sent_elsewhere``). Mail goes to the address the person holds now (``holds_now``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection, select

from consentsync.domain import email_forms
from consentsync.ledger.engine import reading
from consentsync.ledger.identity import derived_key
from consentsync.ledger.schema import subject_identifiers, subjects
from consentsync.ledger.service import Ledger

AUDIENCE = "consentsync:preferences"
ALGORITHM = "HS256"
# Between a confirmation link's random part (``secrets.token_urlsafe``: none in it, nor in a
# sealed address, capture.SEAL_MARK) and the tag of the address it was mailed to.
BOUND_MARK = "~"
# What a link mailed to an address its person no longer holds says: what an expired one says, so
# that whoever has the old mailbox learns nothing of the person's new address, or of any.
STALE_LINK = "this link has expired: ask for a new one"

log = structlog.get_logger("consentsync.hub")


class LinkRefused(ValueError):
    """A link that is not ours, was changed, or has expired: the message says which."""


def _key(ledger: Ledger) -> bytes:
    # Derived apart from the keyed hashes (``derived_key``): links signed by the key of releases
    # before session 58 (which a failed login could write into the audit log) are refused.
    return derived_key(ledger.erasure_key(), "consentsync/preference-links/v2")


def address_tag(ledger: Ledger, address: str) -> str:
    """A keyed hash of ``address`` (128 bits, its own derived key): says in a link which address
    it was mailed to without naming it."""
    key = derived_key(ledger.erasure_key(), "consentsync/link-address/v1")
    digest = hmac.new(key, address.encode("utf-8"), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def bound(ledger: Ledger, token: str, address: str) -> str:
    """A confirmation link's token (its random part, ``token``) bound to the address it is mailed
    to. The tag is part of what the ledger keeps the digest of, so a changed tag opens nothing."""
    return token + BOUND_MARK + address_tag(ledger, address)


def mailed_tag(token: str) -> str | None:
    """The address tag a confirmation link's token carries; None for one made before links
    were bound (or never mailed)."""
    _random, mark, tag = token.rpartition(BOUND_MARK)
    return tag if mark else None


def _addresses(conn: Connection, subject_id: int) -> list[tuple[str, datetime | None]]:
    """The person's addresses, the latest they took first, each with when they left it
    (``subject_identifiers.left_at``; None: held)."""
    held = subject_identifiers.c
    return [
        (value, left_at)
        for value, left_at in conn.execute(
            select(held.value, held.left_at)
            .where(held.subject_id == subject_id, held.kind == "email")
            .order_by(held.id.desc())
        )
    ]


def _now_and_gone(
    subject_id: int, addresses: list[tuple[str, datetime | None]]
) -> tuple[str | None, set[str]]:
    """The address the person holds now, and those they left, of ``_addresses``. The sync never
    leaves a person with every address left (``SubjectResolver.note_rereads``: an address is left
    only for another of their own, which the same read holds). Should it happen all the same
    (rows edited outside consentsync; ``audit verify`` names them), the one left last is taken
    as held, with a warning: a person mailed nothing could neither withdraw nor ask for erasure
    through the hub (Art. 7(3), Art. 12(2))."""
    gone = {value for value, left_at in addresses if left_at is not None}
    now = next((value for value, left_at in addresses if left_at is None), None)
    if now is None and addresses:
        # The latest left, the latest taken among those left at once (``addresses``: latest first).
        now = max(enumerate(addresses), key=lambda item: (item[1][1], -item[0]))[1][0]
        gone.discard(now)
        log.warning("hub.every_address_left", subject=subject_id, addresses=len(addresses))
    return now, gone


def holds_now(conn: Connection, ledger: Ledger, subject_id: int) -> str | None:
    """The address a mail with a link of the person's goes to: the latest they took that they
    have not left (``SubjectResolver.superseded``). Not simply the latest: a record corrected back
    from a mistyped address leaves the latest to a mailbox that may be anyone's. None for a
    person holding no address (erased; a sign-up's held back)."""
    return _now_and_gone(subject_id, _addresses(conn, subject_id))[0]


def held_and_left(ledger: Ledger, uid: str) -> tuple[str | None, set[str]]:
    """The address person ``uid`` holds now and those they left, by the rule every mailed link
    follows (``_now_and_gone``): what ops are told of an address (``subject show``, ``erase``)
    agrees with where the hub mails. (None, empty) for no such person."""
    with reading(ledger.engine) as conn:
        subject_id = conn.execute(select(subjects.c.id).where(subjects.c.uid == uid)).scalar()
        if subject_id is None:
            return None, set()
        return _now_and_gone(int(subject_id), _addresses(conn, int(subject_id)))


def sent_elsewhere(conn: Connection, ledger: Ledger, subject_id: int, tag: str | None) -> bool:
    """Whether a link of the person's, mailed to the address ``tag`` names, went to a mailbox
    they no longer hold: one they left, or one not theirs. A link with no tag was made by a
    version before links were bound: where it went is unknown, so it is taken as mailed
    elsewhere once the person left any address (the safe side; its page offers a new link,
    mailed to the address they hold now), and works as before otherwise."""
    addresses = _addresses(conn, subject_id)
    if not addresses:
        return False  # erased, or a held-back sign-up: refused, or bound, by their own rules
    _now, gone = _now_and_gone(subject_id, addresses)
    if tag is None:
        return bool(gone)
    for address, _left_at in addresses:
        if any(hmac.compare_digest(tag, address_tag(ledger, form)) for form in email_forms(address)):
            return address in gone
    return True


def make_token(
    ledger: Ledger, uid: str, *, days: int, now: datetime | None = None, to: str | None = None
) -> str:
    """A preference link for person ``uid``; ``to``: the address it is mailed to (bound)."""
    issued = now or ledger.clock()
    claims: dict[str, object] = {
        "sub": uid,
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + timedelta(days=days),
    }
    if to is not None:
        claims["to"] = address_tag(ledger, to)
    import jwt  # here, not at the top: PyJWT loads cryptography, 40 ms of every command's start

    return jwt.encode(claims, _key(ledger), algorithm=ALGORITHM)


def _claims(ledger: Ledger, token: str) -> dict[str, object]:
    import jwt  # as in ``link``: only where a link is read

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


def _stale(ledger: Ledger, claims: dict[str, object]) -> bool:
    """Whether a preference link went to an address its person no longer holds (``sent_elsewhere``)."""
    tag = claims.get("to")
    with reading(ledger.engine) as conn:
        subject_id = conn.execute(select(subjects.c.id).where(subjects.c.uid == str(claims["sub"]))).scalar()
        if subject_id is None:
            return False  # gone: refused as erased by the caller
        return sent_elsewhere(conn, ledger, int(subject_id), tag if isinstance(tag, str) else None)


def expired_uid(ledger: Ledger, token: str) -> str | None:
    """The uid of a link that is ours and unchanged but has expired, or went to an address its
    person no longer holds (``sent_elsewhere``); None for any other link. Such a link may ask
    for a new one to be mailed to the address the person holds now (never shown)."""
    try:
        claims = _claims(ledger, token)
    except LinkRefused:
        return None
    expiry = claims["exp"]
    if isinstance(expiry, int | float) and expiry > ledger.clock().timestamp() and not _stale(ledger, claims):
        return None
    return str(claims["sub"])


def read_token(ledger: Ledger, token: str) -> str:
    """The uid a link was made for; raises ``LinkRefused``. Expiry is judged by the ledger's
    clock, the one that made the link (PyJWT's own check would read the machine's). A link
    mailed to an address its person no longer holds is refused as an expired one is: whoever
    has that mailbox now may be someone else, and must neither see the person's data (Art. 15)
    nor act as them."""
    claims = _claims(ledger, token)
    if not isinstance(claims["exp"], int | float) or claims["exp"] <= ledger.clock().timestamp():
        raise LinkRefused("this link has expired: ask for a new one")
    if _stale(ledger, claims):
        raise LinkRefused(STALE_LINK)
    return str(claims["sub"])
