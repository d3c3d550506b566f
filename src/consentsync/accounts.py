"""Local accounts of the ops console: roles, argon2id password hashes, login throttling.

Roles are ordered: a viewer reads; a reviewer also decides objections and retries quarantined
records; an admin also manages accounts. Every account change, login and failed login is an
audit entry. A failed login names the account only when it exists (a name typed by mistake may be
a password); throttling counts digests of the name tried and of the client, never either in clear.

Throttling cannot lock an account out for its owner: failures are counted per account *and*
client (each failure past the first few doubles the wait before that client may try that account
again), per client across accounts (a budget), and per account across clients (a ceiling of
MAX_FAILURES_PER_ACCOUNT an hour, ASVS 4.0.3 V2.2.1), which holds back every client but a browser
that logged in to the account before (its device cookie, web/security.py). IPv6 clients are
counted by /64 (one host's share of addresses); an attempt carrying a device cookie of the account
it tries is counted by that device instead, and is not held back by its address's failures (a
neighbour on the owner's /64 cannot lock them out). An admin unlocks an account; a new password
unlocks it too. Sessions live in the ledger (``console_sessions``), keyed by the SHA-256 of a
random id: logging out, disabling the account and an admin end them for good; a new password ends
the account's other sessions; one unused for ``IDLE_TIMEOUT`` ends by itself. Passwords are
at least 12 characters and not in the shipped list of the 10,000 most common passwords
(docs/console-accounts.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from functools import cache
from importlib import resources
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, func, insert, select, update

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import InvalidInput, iso
from consentsync.ledger.schema import console_login_failures, console_sessions, console_users

# argon2id, RFC 9106's second recommended option (64 MiB, 3 passes): memory-hard.
HASHER = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4)
MIN_PASSWORD_LENGTH = 12
# One client may get one account's password wrong FREE_FAILURES times in a row; each further
# failure doubles the wait before it may try that account again (BACKOFF_BASE, 2x, 4x ... at most
# the window). Twenty failures from one client within the window, whatever the accounts, stop
# that client until the oldest leaves the window. Another client is never locked out by these.
THROTTLE_WINDOW = timedelta(minutes=15)
FREE_FAILURES = 3
BACKOFF_BASE = timedelta(seconds=2)
MAX_FAILURES_PER_CLIENT = 20
# ASVS 4.0.3 V2.2.1: no more than 100 failed attempts an hour on one account. Past this many
# failures within ACCOUNT_WINDOW, whatever the clients (an attacker's addresses are many), the
# account is tried by nobody (the right password refused too) until the oldest leave the hour;
# nobody but a browser that logged in to it before, with fewer than DEVICE_FAILURES failures of
# its own within the hour (a device cookie, web/security.py): the owner is not locked out.
ACCOUNT_WINDOW = timedelta(hours=1)
MAX_FAILURES_PER_ACCOUNT = 100
DEVICE_FAILURES = 10
# IPv6 clients are counted by network of this prefix: one host is given a /64, billions of
# addresses, and a count per address would give it as many tries.
IPV6_CLIENT_PREFIX = 64
SESSION_HOURS = 12
# A session not used for this long ends too (ASVS 4.0 V3.3.2 at level 2, after NIST SP 800-63B
# AAL2: 12 hours, or 30 minutes of inactivity): a console left open on a shared desk does not
# stay signed in for the rest of the day. (The overview page reloads itself, so a console shown
# on a wall display stays in until its 12 hours are up.)
IDLE_TIMEOUT = timedelta(minutes=30)
# last_seen_at is written at most this often per session (not on every request).
SEEN_EVERY = timedelta(minutes=1)
# The audit rule of a password check that is no login: an account confirming its own password
# before setting a new one (login.succeeded / login.failed entries, counted by the same throttle).
CURRENT_PASSWORD_RULE = "current_password"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-")
# Verified against when the account does not exist, so that a wrong name costs as long as a
# wrong password and the timing does not tell which accounts exist.
_DUMMY_HASH = HASHER.hash("consentsync-no-such-account")
# Checking the throttle and counting the attempt are one step for the threads of a process.
_THROTTLE_LOCK = threading.Lock()
# Password checks running at once in a process, at most: each takes the hasher's 64 MiB, and the
# login form is open to anyone (a web server's thread pool of 40 would be 2.5 GiB on demand).
# Attempts beyond wait their turn, so that logins sent by the hundred cannot exhaust memory.
VERIFY_SLOTS = 4
_VERIFYING = threading.BoundedSemaphore(VERIFY_SLOTS)


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

    def __init__(self, retry_after: int, message: str = "too many failed logins") -> None:
        super().__init__(f"{message}: try again in {retry_after} s")
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


@cache
def common_passwords() -> frozenset[str]:
    """The 10,000 most common passwords (package data, lower-case; see docs/console.md)."""
    text = (resources.files("consentsync") / "common-passwords.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


_SPACE_RUNS = re.compile(r"\s+")
# Characters that show nothing and are not white space, beyond the format characters (category
# Cf: U+200B, U+FEFF, U+2060, ...): Unicode's other default-ignorable code points (Hangul fillers,
# variation selectors, ...) and the blank Braille pattern.
_INVISIBLE = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0xE0000, 0xE0FFF),
)


def _shown(char: str) -> bool:
    if char.isspace():
        return True
    if unicodedata.category(char) in ("Cf", "Cc"):
        return False
    code = ord(char)
    return not any(low <= code <= high for low, high in _INVISIBLE)


def _visible(password: str) -> str:
    """The password as measured: its invisible characters (format and control characters,
    default-ignorable ones) left out. Not NFKC: it expands a ligature or U+FDFA to many letters."""
    return "".join(char for char in password if _shown(char))


def check_password(password: str) -> str:
    """The password, when the policy accepts it: at least MIN_PASSWORD_LENGTH characters, a run
    of spaces counting as one and invisible characters (U+200B, U+FEFF, ...) as none (ASVS 4.0.3
    V2.1.1), not blank, at most 1024, not a common one. Only checked: the password itself is
    kept as typed."""
    visible = _visible(password)
    if not visible.strip():
        raise InvalidInput(
            f"the password must not be blank or spaces only: give at least {MIN_PASSWORD_LENGTH} "
            "characters, a run of spaces counting as one"
        )
    if len(_SPACE_RUNS.sub(" ", visible)) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"the password must be at least {MIN_PASSWORD_LENGTH} characters long, "
            "a run of spaces counting as one"
        )
    if len(password) > 1024:
        raise InvalidInput("the password must be at most 1024 characters long")
    if visible.strip().lower() in common_passwords():
        raise InvalidInput("the password is one of the most common passwords: choose another")
    return password


def token_hash(token: str) -> str:
    return _digest(token)


def client_group(client: str) -> str:
    """The client as throttling counts it: an IPv4 address as it is, an IPv6 one by its /64
    (an IPv4-mapped one as the IPv4 address), anything else (no address: "unknown") as given."""
    try:
        ip = ipaddress.ip_address(client.strip())
    except ValueError:
        return client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip), IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: int
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    ended_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": iso(self.created_at),
            "last_seen_at": iso(self.last_seen_at),
            "expires_at": iso(self.expires_at),
            "ended_at": iso(self.ended_at) if self.ended_at else None,
        }


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

    def set_password(
        self, name: str, password: str, *, actor: str, keep_session: str | None = None
    ) -> Account:
        """A new password; it ends the account's sessions (but ``keep_session``, the token of the
        session making the change) and clears its login lock."""
        name, password = check_name(name), check_password(password)
        now = self.clock()
        current = self.get(name)
        with self.engine.begin() as conn:
            conn.execute(
                update(console_users)
                .where(console_users.c.id == current.id)
                .values(password_hash=HASHER.hash(password), password_changed_at=now)
            )
            self._end_sessions(conn, current.id, now, keep=keep_session)
            self._clear_failures(conn, name)
            audit.append(
                conn,
                [AuditRecord("user.password_changed", {"user": name}, source="console", actor=actor)],
                now,
            )
        return self.get(name)

    def set_role(self, name: str, role: str, *, actor: str) -> Account:
        current = self.get(name)
        parsed = Role.parse(role)
        if parsed < Role.ADMIN:
            self._keep_an_admin(current, "demoted")
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
        if disabled:
            self._keep_an_admin(current, "disabled")
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                update(console_users).where(console_users.c.id == current.id).values(disabled=disabled)
            )
            if disabled:  # for good: enabling the account again does not revive them
                self._end_sessions(conn, current.id, now)
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

    def update(
        self,
        name: str,
        *,
        actor: str,
        role: str | None = None,
        password: str | None = None,
        disabled: bool | None = None,
        keep_session: str | None = None,
        current_password: str | None = None,
        client: str = "unknown",
        device: str | None = None,
    ) -> Account:
        """Save what differs from the account as it is, and only that: a save that changes nothing
        writes nothing (no audit entry). A password given is always set (it cannot be compared).
        ``keep_session``: the session of whoever sets the password, which stays (the console's
        pages and its API both save through here).

        An account setting its own password must give its current one (ASVS 4.0 V2.1.6): a
        session taken over (a console left open, a stolen cookie) could otherwise change it and
        lock its owner out. It is checked as a login from ``client`` is, throttled and counted
        alike, so the form cannot be used to guess it (``device``: as ``authenticate``). An admin
        resetting another account's password is not asked for that account's (they do not know
        it; it is audited as theirs)."""
        current = self.get(name)
        if password:
            check_password(password)  # a refused new password costs no attempt at the current one
            if actor == current.name:
                self.confirm_password(current.name, current_password or "", client=client, device=device)
        if role and Role.parse(role) != current.role:
            self.set_role(name, role, actor=actor)
        if password:
            self.set_password(name, password, actor=actor, keep_session=keep_session)
        if disabled is not None and disabled != current.disabled:
            self.set_disabled(name, disabled, actor=actor)
        return self.get(name)

    def _keep_an_admin(self, current: Account, change: str) -> None:
        if current.role < Role.ADMIN or current.disabled:
            return
        others = [a for a in self.list() if a.role == Role.ADMIN and not a.disabled and a.id != current.id]
        if not others:
            raise InvalidInput(
                f"{current.name} is the last enabled admin and cannot be {change}: make another admin first"
            )

    def unlock(self, name: str, *, actor: str) -> Account:
        """Clear an account's failed logins (every client's backoff for it)."""
        current = self.get(name)
        now = self.clock()
        with self.engine.begin() as conn:
            self._clear_failures(conn, current.name)
            audit.append(
                conn,
                [AuditRecord("user.unlocked", {"user": current.name}, source="console", actor=actor)],
                now,
            )
        return current

    def locked(self, name: str) -> bool:
        """Whether some client must wait before trying this account again (the account's hourly
        ceiling reached: every client but its owner's browsers)."""
        now = self.clock()
        table = console_login_failures
        name_digest = self._name_digest(name)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(table.c.client_digest, func.count(), func.max(table.c.at))
                .where(table.c.name_digest == name_digest, table.c.at >= now - THROTTLE_WINDOW)
                .group_by(table.c.client_digest)
            ).all()
            ceiling = _ceiling_until(conn, name_digest, now)
        return ceiling is not None or any(_backoff_until(count, last) > now for _client, count, last in rows)

    def _name_digest(self, name: str) -> str:
        return (self.keyed or _digest)(name.strip().lower()[:200])

    def _clear_failures(self, conn: Any, name: str) -> None:
        table = console_login_failures
        conn.execute(delete(table).where(table.c.name_digest == self._name_digest(name)))

    # -- sessions ------------------------------------------------------------------------------

    def start_session(self, account: Account, *, user_agent: str = "") -> str:
        """A new session's token (for the cookie; the ledger keeps its SHA-256 only)."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                insert(console_sessions).values(
                    token_hash=token_hash(token),
                    user_id=account.id,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + timedelta(hours=SESSION_HOURS),
                    user_agent_hash=_digest(user_agent[:1000]) if user_agent else None,
                )
            )
        return token

    def session_account(self, token: str) -> Account | None:
        """The account of a live session (not ended, not expired, account enabled), or None."""
        now = self.clock()
        table = console_sessions
        with self.engine.connect() as conn:
            row = conn.execute(
                select(table, console_users)
                .join(console_users, console_users.c.id == table.c.user_id)
                .where(table.c.token_hash == token_hash(token))
            ).first()
        if row is None or row.ended_at is not None or row.expires_at <= now or row.disabled:
            return None
        if now - row.last_seen_at >= IDLE_TIMEOUT:
            return None
        if now - row.last_seen_at >= SEEN_EVERY:
            with self.engine.begin() as conn:
                conn.execute(update(table).where(table.c.id == row.id).values(last_seen_at=now))
        return Account(
            row.user_id, row.name, Role(_ROLE_VALUES[row.role]), row.password_changed_at, row.disabled
        )

    def session_owner(self, token: str) -> str | None:
        """The name of the account a session was issued to, live or not (ended, expired): whose
        form an expired session sent, so that only they get back what they typed."""
        with self.engine.connect() as conn:
            name = conn.execute(
                select(console_users.c.name)
                .join(console_sessions, console_sessions.c.user_id == console_users.c.id)
                .where(console_sessions.c.token_hash == token_hash(token))
            ).scalar()
        return str(name) if name is not None else None

    def end_session(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(console_sessions)
                .where(
                    console_sessions.c.token_hash == token_hash(token), console_sessions.c.ended_at.is_(None)
                )
                .values(ended_at=self.clock())
            )

    def sessions(self, name: str) -> list[SessionInfo]:
        """An account's live sessions, newest first."""
        current = self.get(name)
        table = console_sessions
        now = self.clock()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(table)
                .where(
                    table.c.user_id == current.id,
                    table.c.ended_at.is_(None),
                    table.c.expires_at > now,
                    table.c.last_seen_at > now - IDLE_TIMEOUT,
                )
                .order_by(table.c.created_at.desc(), table.c.id.desc())
            ).all()
        return [SessionInfo(r.id, r.created_at, r.last_seen_at, r.expires_at, r.ended_at) for r in rows]

    def end_sessions(self, name: str, *, actor: str) -> int:
        """End every session of an account; how many were live."""
        current = self.get(name)
        now = self.clock()
        with self.engine.begin() as conn:
            ended = self._end_sessions(conn, current.id, now)
            audit.append(
                conn,
                [
                    AuditRecord(
                        "user.sessions_ended",
                        {"user": current.name},
                        new=ended,
                        source="console",
                        actor=actor,
                    )
                ],
                now,
            )
        return ended

    def _end_sessions(self, conn: Any, user_id: int, now: datetime, keep: str | None = None) -> int:
        table = console_sessions
        query = update(table).where(table.c.user_id == user_id, table.c.ended_at.is_(None))
        if keep:
            query = query.where(table.c.token_hash != token_hash(keep))
        return int(conn.execute(query.values(ended_at=now)).rowcount)

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

    def last_logins(self) -> dict[str, datetime]:
        """Each account's last login: when its newest session began (sessions are kept, ended)."""
        query = (
            select(console_users.c.name, func.max(console_sessions.c.created_at))
            .join(console_sessions, console_sessions.c.user_id == console_users.c.id)
            .group_by(console_users.c.name)
        )
        with self.engine.connect() as conn:
            return {name: at for name, at in conn.execute(query)}

    # -- login ---------------------------------------------------------------------------------

    def confirm_password(
        self, name: str, password: str, *, client: str, device: str | None = None
    ) -> Account:
        """The account, when ``password`` is its current one: checked by ``authenticate`` (the
        same throttle and count as a login from ``client``; audited with rule
        ``current_password``). Raises ``InvalidInput`` when it is not given or wrong, and
        ``LoginThrottled`` when too many attempts failed."""
        if not password:
            raise InvalidInput(
                "current_password: give your current password to set a new one for your own account"
            )
        account = self.authenticate(name, password, client=client, rule=CURRENT_PASSWORD_RULE, device=device)
        if account is None:
            raise InvalidInput("current_password: the current password is wrong; nothing was changed")
        return account

    def authenticate(
        self,
        name: str,
        password: str,
        *,
        client: str,
        rule: str | None = None,
        device: str | None = None,
    ) -> Account | None:
        """The account when the password is right; None (and an audited, counted failure) when
        not. Raises ``LoginThrottled`` before checking anything when too many attempts failed.
        ``rule`` marks the audit entry of a check that is not a login (``confirm_password``).
        ``client`` is counted by ``client_group``. ``device``: the id of a device cookie the
        caller verified was issued to this account at a login (web/security.py): the attempt is
        then counted by the device, not by ``client`` (its backoff is the device's; the client's
        budget and the failures of others at its address do not hold it back: a neighbour on the
        owner's /64 cannot lock them out), and while the device has fewer than DEVICE_FAILURES
        failures in the hour the account's ceiling does not hold it back either."""
        now = self.clock()
        tried = name.strip().lower()[:200]
        digest = self.keyed or _digest
        device_digest = digest("device|" + device[:200]) if device else None
        name_digest = digest(tried)
        client_digest = device_digest or digest(client_group(client))
        # The attempt counts as a failure before the password is checked (taken back when it is
        # right): attempts sent side by side would otherwise all pass the throttle before any
        # failed, and a client could try as many passwords at once as the server has threads.
        # Checked and counted in one write transaction: the lock above holds only this process's
        # threads, and a second console process (`consentsync web` beside `run --web-port`, or
        # replicas behind a proxy) counted between another's check and its count, so attempts
        # sent to each at once all passed. A write transaction is serialised on both databases
        # (SQLite's BEGIN IMMEDIATE, the writer lock on PostgreSQL: ledger/engine.py).
        with _THROTTLE_LOCK, self.engine.begin() as conn:
            self._check_throttle(conn, name_digest, client_digest, now, device_digest is not None)
            conn.execute(
                insert(console_login_failures).values(
                    name_digest=name_digest, client_digest=client_digest, at=now
                )
            )
        with self.engine.connect() as conn:
            row = conn.execute(select(console_users).where(console_users.c.name == tried)).first()
        ok = False
        with _VERIFYING:
            try:
                ok = HASHER.verify(row.password_hash if row else _DUMMY_HASH, password[:1024])
            except (VerificationError, InvalidHashError):
                ok = False
        ok = ok and row is not None and not row.disabled
        with self.engine.begin() as conn:
            if ok:
                assert row is not None
                conn.execute(
                    delete(console_login_failures).where(
                        console_login_failures.c.name_digest == name_digest,
                        console_login_failures.c.client_digest == client_digest,
                    )
                )
                if HASHER.check_needs_rehash(row.password_hash):
                    conn.execute(
                        update(console_users)
                        .where(console_users.c.id == row.id)
                        .values(password_hash=HASHER.hash(password))
                    )
                record = AuditRecord(
                    "login.succeeded", {"user": row.name}, source="console", actor=row.name, rule=rule
                )
            else:  # counted already, above
                what: dict[str, Any] = {"user": row.name} if row else {"user": None}
                if row is None and self.keyed is not None:
                    what["name_hmac"] = self.keyed(tried)
                record = AuditRecord(
                    "login.failed",
                    what,
                    source="console",
                    actor=row.name if row else None,
                    rule="account_disabled"
                    if row is not None and row.disabled
                    else (rule or "wrong_credentials"),
                )
            audit.append(conn, [record], now)
        return _account(row) if ok and row is not None else None

    def _check_throttle(
        self, conn: Any, name_digest: str, client_digest: str, now: datetime, device: bool = False
    ) -> None:
        """Raises ``LoginThrottled`` when this client must wait for this account, or for any, or
        when the account's hourly ceiling is reached; inside the caller's write transaction, which
        then counts the attempt. With ``device`` (``client_digest`` is then a device cookie of the
        account), there is no budget across accounts (the cookie is good for this one only), and
        the ceiling does not hold it back while it has fewer than DEVICE_FAILURES failures."""
        since = now - THROTTLE_WINDOW
        table = console_login_failures
        conn.execute(delete(table).where(table.c.at < now - ACCOUNT_WINDOW))
        count, last = conn.execute(
            select(func.count(), func.max(table.c.at)).where(
                table.c.name_digest == name_digest,
                table.c.client_digest == client_digest,
                table.c.at >= since,
            )
        ).one()
        until = _backoff_until(count, last)
        if until > now:
            raise LoginThrottled(max(1, int((until - now).total_seconds()) + 1))
        count, oldest = conn.execute(
            select(func.count(), func.min(table.c.at)).where(
                table.c.client_digest == client_digest, table.c.at >= since
            )
        ).one()
        if count >= MAX_FAILURES_PER_CLIENT and not device:
            first = oldest or now
            raise LoginThrottled(max(1, int((first + THROTTLE_WINDOW - now).total_seconds()) + 1))
        ceiling = _ceiling_until(conn, name_digest, now)
        if ceiling is None:
            return
        if device:
            failed = conn.execute(
                select(func.count()).where(
                    table.c.name_digest == name_digest,
                    table.c.client_digest == client_digest,
                    table.c.at >= now - ACCOUNT_WINDOW,
                )
            ).scalar_one()
            if failed < DEVICE_FAILURES:
                return
        raise LoginThrottled(
            max(1, int((ceiling - now).total_seconds()) + 1),
            f"{MAX_FAILURES_PER_ACCOUNT} failed logins for this account within the hour, from "
            "anywhere (a browser that logged in to it before is let through)",
        )


def _ceiling_until(conn: Any, name_digest: str, now: datetime) -> datetime | None:
    """Until when the account's failures within the hour stay at MAX_FAILURES_PER_ACCOUNT or
    more (when the one that brings them below leaves the hour), or None when they are fewer."""
    table = console_login_failures
    recent = table.c.name_digest == name_digest, table.c.at >= now - ACCOUNT_WINDOW
    count = conn.execute(select(func.count()).where(*recent)).scalar_one()
    if count < MAX_FAILURES_PER_ACCOUNT:
        return None
    leaving = conn.execute(
        select(table.c.at)
        .where(*recent)
        .order_by(table.c.at)
        .offset(count - MAX_FAILURES_PER_ACCOUNT)
        .limit(1)
    ).scalar_one()
    return max(now, leaving + ACCOUNT_WINDOW)


def _backoff_until(failures: int, last: datetime | None) -> datetime:
    """Until when a client that failed ``failures`` times in a row, last at ``last``, waits."""
    if last is None or failures < FREE_FAILURES:
        return datetime.min.replace(tzinfo=UTC)
    return last + min(BACKOFF_BASE * 2 ** min(failures - FREE_FAILURES, 20), THROTTLE_WINDOW)
