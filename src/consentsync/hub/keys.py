"""API keys for capture sources: created once (the secret is shown once), stored as a SHA-256,
scoped to purposes and actions, revocable; every change is in the audit log."""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from sqlalchemy import bindparam, insert, select, update

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import SOURCE_MAX, InvalidInput, check_label, shown
from consentsync.ledger.engine import reading
from consentsync.ledger.schema import api_keys
from consentsync.ledger.service import Ledger, NotFound

ACTIONS = ("consents", "objections", "erasure", "decisions")
ANY = "*"
KEY_PREFIX = "csk_"
# A key's last use is written at most this often: the decision endpoint is a hot path.
LAST_USED_RESOLUTION = timedelta(minutes=5)
# What the chain binds of a key besides its name (``apikey.created``'s ``new``), which ``audit
# verify`` holds its row to (audit_registry.py): the row stays writable (its last use is written
# on the hot path), and the hub decides by it. Its source decides whether its grants may reverse
# a withdrawal or an erasure (policy.trusted_sources), its purposes and actions what it may
# record, its rate how much; its stored hash which secret opens it (two keys' hashes swapped hand
# one key's holder the other's source). The hash is bound by a digest of it: the chain is read
# more widely than the table (audit log, exports), and the digest opens nothing.
KEY_HASH_DIGEST = "key_hash_sha256"
# Bound by ``audit_registry.bind_api_keys`` for a key an older version created: its entry carried the
# source, purposes, actions and prefix, not these.
LATER_BOUND = ("rate_per_minute", KEY_HASH_DIGEST)
# The sources consentsync records its own evidence under (docs/hub.md, "Setting it up"): the
# hub's confirmations (capture.DOUBLE_OPT_IN_SOURCE), the preference page (preferences.SOURCE),
# its consent requests (outreach.REQUEST_SOURCE), what an erasure or a restriction carries to
# another record (sync.engine.ERASURE_CARRIED_SOURCE, ledger.service.RESTRICTION_CARRIED_SOURCE),
# and every "consentsync:" one (the expiry sweep, an upgrade, a sign-up closed). Claimed by an
# API key or a hand-made record, a plain form post would read as a confirmed double opt-in
# (Art. 7(1): how consent was collected), and the first two are trusted by default
# (policy.trusted_sources): such a grant would lift an erasure. Kept here as text, not imported
# (the hub's modules import this one); tests/test_cli_reserved_sources_and_actors.py holds each
# of those constants to this list.
RESERVED_SOURCES = frozenset(
    {"double_opt_in", "preference_center", "consent_request", "erasure", "restriction"}
)
RESERVED_SOURCE_PREFIX = "consentsync:"
RESERVED_SOURCES_SHOWN = ", ".join([*sorted(RESERVED_SOURCES), f"{RESERVED_SOURCE_PREFIX}*"])


# What a reader takes for a separator beside every dash, connector and space (by category): dots,
# and the minus and bullet look-alikes of other categories.
_LOOK_ALIKE_SEPARATORS = frozenset(".\u00b7\u2027\u2219\u30fb\u02d7\u2043\u2212\u30fc")
_SEPARATOR_CATEGORIES = frozenset({"Pd", "Pc", "Zs"})


def _is_separator(char: str) -> bool:
    return (
        char in _LOOK_ALIKE_SEPARATORS
        or char.isspace()
        or unicodedata.category(char) in _SEPARATOR_CATEGORIES
    )


def _separators_folded(text: str) -> str:
    """``text`` with each run of dashes, connectors, spaces and dots as one "_"."""
    return re.sub(r"_+", "_", "".join("_" if _is_separator(char) else char for char in text))


def is_reserved_source(source: str) -> bool:
    """Whether ``source`` is one consentsync records its own evidence under (``RESERVED_SOURCES``),
    in any case, padding, width or separator: "Double-Opt-In ", a fullwidth "ｄouble_opt_in" or
    "consentsync : expiry" misstate to a reader as much, if no policy trusts them (NFKC folds
    widths and compatibility forms; letters of other scripts that look alike are not folded)."""
    folded = _separators_folded(unicodedata.normalize("NFKC", source).casefold()).strip("_")
    folded = re.sub(r"_?:_?", ":", folded)
    return folded in RESERVED_SOURCES or folded.startswith(RESERVED_SOURCE_PREFIX)


def check_own_source(source: str, what: str = "--source") -> str:
    """A capture source as an API key or a hand-made record names it: refused (``InvalidInput``,
    one line naming ``what``) where consentsync keeps it for its own records. Returns it unchanged."""
    if is_reserved_source(source):
        raise InvalidInput(
            f"{what} {shown(source)} is reserved for consentsync's own records ({RESERVED_SOURCES_SHOWN}): "
            "accepted is the name of where it was captured (web_form, phone, a shop's checkout, ...)"
        )
    return source


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    name: str
    source: str
    purposes: tuple[str, ...]
    actions: tuple[str, ...]
    prefix: str
    rate_per_minute: int | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    def may(self, action: str) -> bool:
        return ANY in self.actions or action in self.actions

    def covers(self, purpose: str) -> bool:
        return ANY in self.purposes or purpose in self.purposes

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "purposes": list(self.purposes),
            "actions": list(self.actions),
            "prefix": self.prefix,
            "rate_per_minute": self.rate_per_minute,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }


def digest(secret: str) -> str:
    # 32 random bytes: a plain SHA-256 cannot be reversed, and needs no per-key salt.
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def chain_binding(
    *,
    source: str,
    purposes: list[str],
    actions: list[str],
    prefix: str,
    rate_per_minute: int | None,
    key_hash: str,
) -> dict[str, object]:
    """What the chain binds of a key (``KEY_HASH_DIGEST``): never its secret nor its hash."""
    return {
        "source": source,
        "purposes": purposes,
        "actions": actions,
        "prefix": prefix,
        "rate_per_minute": rate_per_minute,
        KEY_HASH_DIGEST: hashlib.sha256(key_hash.encode("utf-8")).hexdigest(),
    }


def _row_key(row: object) -> ApiKey:
    return ApiKey(
        id=row.id,  # type: ignore[attr-defined]
        name=row.name,  # type: ignore[attr-defined]
        source=row.source,  # type: ignore[attr-defined]
        purposes=tuple(orjson.loads(row.purposes)),  # type: ignore[attr-defined]
        actions=tuple(orjson.loads(row.actions)),  # type: ignore[attr-defined]
        prefix=row.key_prefix,  # type: ignore[attr-defined]
        rate_per_minute=row.rate_per_minute,  # type: ignore[attr-defined]
        created_at=row.created_at,  # type: ignore[attr-defined]
        revoked_at=row.revoked_at,  # type: ignore[attr-defined]
        last_used_at=row.last_used_at,  # type: ignore[attr-defined]
    )


def _checked_scope(values: list[str], accepted: tuple[str, ...], what: str) -> list[str]:
    if not values:
        raise InvalidInput(f"--{what} needs at least one value: {', '.join(accepted)} or {ANY}")
    for value in values:
        if value != ANY and value not in accepted:
            raise InvalidInput(f"--{what}: unknown {value!r}: accepted are {', '.join(accepted)} or {ANY}")
    return sorted(set(values))


def create(
    ledger: Ledger,
    name: str,
    *,
    source: str,
    purposes: list[str],
    actions: list[str],
    rate_per_minute: int | None = None,
    actor: str | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its secret, which is shown this once and never stored."""
    check_label(name, "name", 64, required=True)
    check_label(source, "--source", SOURCE_MAX, required=True)
    check_own_source(source)
    purposes = _checked_scope(purposes, tuple(ledger.purposes), "purposes")
    actions = _checked_scope(actions, ACTIONS, "actions")
    if rate_per_minute is not None and rate_per_minute < 1:
        raise InvalidInput("--rate must be at least 1 request a minute")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    now = ledger.clock()
    with ledger.engine.begin() as conn:
        if conn.execute(select(api_keys.c.id).where(api_keys.c.name == name)).first():
            raise InvalidInput(f"an API key named {name!r} exists already (revoke it, or pick another name)")
        conn.execute(
            insert(api_keys).values(
                name=name,
                source=source,
                purposes=orjson.dumps(purposes).decode(),
                actions=orjson.dumps(actions).decode(),
                key_prefix=secret[:12],
                key_hash=digest(secret),
                rate_per_minute=rate_per_minute,
                created_at=now,
                created_by=actor,
            )
        )
        row = conn.execute(select(api_keys).where(api_keys.c.name == name)).one()
        audit.append(
            conn,
            [
                AuditRecord(
                    "apikey.created",
                    {"apikey": name},
                    new=chain_binding(
                        source=source,
                        purposes=purposes,
                        actions=actions,
                        prefix=secret[:12],
                        rate_per_minute=rate_per_minute,
                        key_hash=digest(secret),
                    ),
                    source="cli",
                    actor=actor,
                )
            ],
            now,
        )
    return _row_key(row), secret


def listed(ledger: Ledger) -> list[ApiKey]:
    with ledger.engine.connect() as conn:
        return [_row_key(row) for row in conn.execute(select(api_keys).order_by(api_keys.c.id))]


def revoke(ledger: Ledger, name: str, *, actor: str | None = None) -> ApiKey:
    now = ledger.clock()
    with ledger.engine.begin() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.name == name)).one_or_none()
        if row is None:
            raise NotFound(f"no API key named {name!r}")
        if row.revoked_at is not None:
            raise InvalidInput(f"API key {name!r} was revoked already")
        conn.execute(update(api_keys).where(api_keys.c.id == row.id).values(revoked_at=now))
        audit.append(
            conn,
            [
                AuditRecord(
                    "apikey.revoked", {"apikey": name}, old="active", new="revoked", source="cli", actor=actor
                )
            ],
            now,
        )
        return _row_key(conn.execute(select(api_keys).where(api_keys.c.id == row.id)).one())


_BY_HASH = select(api_keys).where(api_keys.c.key_hash == bindparam("key_hash"))


def authenticate(ledger: Ledger, secret: str) -> ApiKey | None:
    """The live key with this secret, or None (unknown or revoked: the caller says 401 either
    way, so a probe cannot tell a revoked key from a wrong one)."""
    if not secret.startswith(KEY_PREFIX):
        return None
    # Looked up on every request (a revoked key is refused from the next one on): a prepared
    # statement on a connection that takes no write lock.
    with reading(ledger.engine) as conn:
        row = conn.execute(_BY_HASH, {"key_hash": digest(secret)}).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    key = _row_key(row)
    now = ledger.clock()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        with ledger.engine.begin() as conn:
            conn.execute(update(api_keys).where(api_keys.c.id == key.id).values(last_used_at=now))
    return key
