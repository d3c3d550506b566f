"""Local accounts of the ops console: roles, argon2id password hashes, login throttling.

Roles are ordered: a viewer reads; a reviewer also decides objections and retries quarantined
records; an admin also manages accounts. Every account change, login and failed login is an
audit entry. A failed login names the account only when it exists (a name typed by mistake may be
a password); throttling counts SHA-256 digests of the name tried and of the client, never either
in clear.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, func, insert, select, update

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import InvalidInput, iso
from consentsync.ledger.schema import console_login_failures, console_users

# argon2id, RFC 9106's second recommended option (64 MiB, 3 passes): memory-hard.
HASHER = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4)
MIN_PASSWORD_LENGTH = 12
# Five wrong passwords for one account, or twenty from one client, within the window lock
# further attempts until the oldest of them leaves the window.
THROTTLE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_ACCOUNT = 5
MAX_FAILURES_PER_CLIENT = 20
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-")
# Verified against when the account does not exist, so that a wrong name costs as long as a
# wrong password and the timing does not tell which accounts exist.
_DUMMY_HASH = HASHER.hash("consentsync-no-such-account")


class Role(IntEnum):
    VIEWER = 1
    REVIEWER = 2
    ADMIN = 3

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value.strip().upper()]
        except KeyError:
            raise InvalidInput(
                f"unknown role {value!r}: accepted are {', '.join(r.label for r in cls)}"
            ) from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    role: Role
    password_changed_at: datetime
    disabled: bool

    def may(self, needed: Role) -> bool:
        return not self.disabled and self.role >= needed

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.label,
            "disabled": self.disabled,
            "password_changed_at": iso(self.password_changed_at),
        }


class LoginThrottled(Exception):
    """Too many failed logins for this account or from this client; retry after ``retry_after``."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins: try again in {retry_after} s")
        self.retry_after = retry_after


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    cleaned = name.strip().lower()
    if not 1 <= len(cleaned) <= 64 or not set(cleaned) <= _NAME_CHARS:
        raise InvalidInput(
            f"account name {name!r}: expected 1 to 64 lower-case letters, digits, '.', '_' or '-'"
        )
    return cleaned


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password) > 1024:
        raise InvalidInput("the password must be at most 1024 characters long")
    return password


def _account(row: Any) -> Account:
    return Account(row.id, row.name, Role(_ROLE_VALUES[row.role]), row.password_changed_at, row.disabled)


_ROLE_VALUES = {role.label: role.value for role in Role}


class Accounts:
    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        keyed: Callable[[str], str] | None = None,
    ) -> None:
        # The deployment's keyed hash (Ledger.keyed_hasher) for a login name that matches no
        # account in the audit log: it may be someone's address, and a bare SHA-256 of an address
        # is reversed by anyone holding a list of them.
        self.keyed = keyed
        self.engine = engine
        self.clock = clock

    # -- management ----------------------------------------------------------------------------

    def add(self, name: str, role: str, password: str, *, actor: str) -> Account:
        name, parsed, password = check_name(name), Role.parse(role), check_password(password)
        now = self.clock()
        with self.engine.begin() as conn:
            if conn.execute(select(console_users.c.id).where(console_users.c.name == name)).first():
                raise InvalidInput(f"account {name!r} exists already (change its password with passwd)")
            conn.execute(
                insert(console_users).values(
                    name=name,
                    role=parsed.label,
                    password_hash=HASHER.hash(password),
                    created_at=now,
                    password_changed_at=now,
                    disabled=False,
                )
            )
            audit.append(
                conn,
                [AuditRecord("user.added", {"user": name}, new=parsed.label, source="console", actor=actor)],
                now,
            )
        return self.get(name)

    def set_password(self, name: str, password: str, *, actor: str) -> Account:
        name, password = check_name(name), check_password(password)
        now = self.clock()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(console_users)
                .where(console_users.c.name == name)
                .values(password_hash=HASHER.hash(password), password_changed_at=now)
            ).rowcount
            if not done:
                raise InvalidInput(f"no account named {name!r}")
            # A new password ends the sessions signed with the old one (they carry its time).
            audit.append(
                conn,
                [AuditRecord("user.password_changed", {"user": name}, source="console", actor=actor)],
                now,
            )
        return self.get(name)

    def set_role(self, name: str, role: str, *, actor: str) -> Account:
        current = self.get(name)
        parsed = Role.parse(role)
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                update(console_users).where(console_users.c.id == current.id).values(role=parsed.label)
            )
            audit.append(
                conn,
                [
                    AuditRecord(
                        "user.role_changed",
                        {"user": current.name},
                        old=current.role.label,
                        new=parsed.label,
                        source="console",
                        actor=actor,
                    )
                ],
                now,
            )
        return self.get(name)

    def set_disabled(self, name: str, disabled: bool, *, actor: str) -> Account:
        current = self.get(name)
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                update(console_users).where(console_users.c.id == current.id).values(disabled=disabled)
            )
            audit.append(
                conn,
                [
                    AuditRecord(
                        "user.disabled" if disabled else "user.enabled",
                        {"user": current.name},
                        old=current.disabled,
                        new=disabled,
                        source="console",
                        actor=actor,
                    )
                ],
                now,
            )
        return self.get(name)

    def get(self, name: str) -> Account:
        found = self.find(name)
        if found is None:
            raise InvalidInput(f"no account named {name!r}")
        return found

    def find(self, name: str) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(console_users).where(console_users.c.name == name)).first()
        return _account(row) if row else None

    def by_id(self, account_id: int) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(console_users).where(console_users.c.id == account_id)).first()
        return _account(row) if row else None

    def list(self) -> list[Account]:
        with self.engine.connect() as conn:
            return [
                _account(row) for row in conn.execute(select(console_users).order_by(console_users.c.name))
            ]

    # -- login ---------------------------------------------------------------------------------

    def authenticate(self, name: str, password: str, *, client: str) -> Account | None:
        """The account when the password is right; None (and an audited, counted failure) when
        not. Raises ``LoginThrottled`` before checking anything when too many attempts failed."""
        now = self.clock()
        tried = name.strip().lower()[:200]
        digest = self.keyed or _digest
        name_digest, client_digest = digest(tried), digest(client)
        self._check_throttle(name_digest, client_digest, now)
        with self.engine.connect() as conn:
            row = conn.execute(select(console_users).where(console_users.c.name == tried)).first()
        ok = False
        try:
            ok = HASHER.verify(row.password_hash if row else _DUMMY_HASH, password[:1024])
        except (VerificationError, InvalidHashError):
            ok = False
        ok = ok and row is not None and not row.disabled
        with self.engine.begin() as conn:
            if ok:
                assert row is not None
                conn.execute(
                    delete(console_login_failures).where(console_login_failures.c.name_digest == name_digest)
                )
                if HASHER.check_needs_rehash(row.password_hash):
                    conn.execute(
                        update(console_users)
                        .where(console_users.c.id == row.id)
                        .values(password_hash=HASHER.hash(password))
                    )
                record = AuditRecord("login.succeeded", {"user": row.name}, source="console", actor=row.name)
            else:
                conn.execute(
                    insert(console_login_failures).values(
                        name_digest=name_digest, client_digest=client_digest, at=now
                    )
                )
                what: dict[str, Any] = {"user": row.name} if row else {"user": None}
                if row is None and self.keyed is not None:
                    what["name_hmac"] = self.keyed(tried)
                record = AuditRecord(
                    "login.failed",
                    what,
                    source="console",
                    actor=row.name if row else None,
                    rule="account_disabled" if row is not None and row.disabled else "wrong_credentials",
                )
            audit.append(conn, [record], now)
        return _account(row) if ok and row is not None else None

    def _check_throttle(self, name_digest: str, client_digest: str, now: datetime) -> None:
        since = now - THROTTLE_WINDOW
        table = console_login_failures
        with self.engine.begin() as conn:
            conn.execute(delete(table).where(table.c.at < since))
            for column, limit in (
                (table.c.name_digest == name_digest, MAX_FAILURES_PER_ACCOUNT),
                (table.c.client_digest == client_digest, MAX_FAILURES_PER_CLIENT),
            ):
                count, oldest = conn.execute(
                    select(func.count(), func.min(table.c.at)).where(column, table.c.at >= since)
                ).one()
                if count >= limit:
                    first = oldest or now
                    raise LoginThrottled(max(1, int((first + THROTTLE_WINDOW - now).total_seconds()) + 1))
