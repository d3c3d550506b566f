"""A ledger the database refuses, said in one line an admin can act on: which file (or server),
what is wrong with it, and what to do; with the exit code a scheduler acts on (exit_codes.py).

SQLite names its troubles in its messages (a file that is not a database, a damaged or truncated
one, a read-only file, a full disk); PostgreSQL's server going away is an ``OperationalError``
whose connection is gone, and a role without the privileges a table needs is SQLSTATE 42501.
Neither is shown as a traceback.
"""

from __future__ import annotations

import getpass
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from consentsync import exit_codes
from consentsync.ledger.engine import WRITER_WAIT


@dataclass(frozen=True)
class LedgerProblem:
    message: str
    exit_code: int


# SQLite's message (lower case) -> what it means for the file, what to do, the exit code.
_SQLITE = (
    (
        "file is not a database",
        "is not a SQLite database (damaged, truncated or another file)",
        "restore it from a backup, or point ledger.url at the right file",
        exit_codes.CONFIG,
    ),
    (
        "malformed",
        "is damaged (the database image is malformed, e.g. truncated)",
        "restore it from a backup",
        exit_codes.CONFIG,
    ),
    (
        "readonly database",
        "is read-only",
        "make the file and its folder writable by this user (SQLite writes a -wal file beside it)",
        exit_codes.CONFIG,
    ),
    (
        "database is locked",
        "was held by another writer for longer than the 30 s wait (a plan, an import)",
        "run again once it has ended; nothing of this transaction was kept",
        exit_codes.UNAVAILABLE,
    ),
    (
        "disk is full",
        "cannot grow: the disk (or the database's size limit) is full",
        "free space on its disk, then run again; nothing was half-written",
        exit_codes.UNAVAILABLE,
    ),
    (
        "disk i/o error",
        "could not be read or written (disk I/O error)",
        "check the disk, then restore the file from a backup if it is damaged",
        exit_codes.UNAVAILABLE,
    ),
    (
        "unable to open database file",
        "cannot be opened",
        "check that its folder exists and is writable by this user",
        exit_codes.CONFIG,
    ),
)


def _orig(error: BaseException) -> BaseException:
    return error.orig if isinstance(error, DBAPIError) and error.orig is not None else error


def ledger_problem(error: BaseException, url: str, *, migrating: bool = False) -> LedgerProblem | None:
    """The one-line explanation of ``error`` raised by the ledger at ``url``, or None where the
    error is not the database's (a bug, bad input: the caller's to handle). ``migrating``: the
    error came from applying migrations (a privilege refused is then the owner's to hold)."""
    cause = _orig(error)
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    try:
        parsed = make_url(url)
    except Exception:  # an unparseable URL is reported before any query runs
        parsed = None
    if parsed is not None and parsed.get_backend_name() == "sqlite":
        lowered = text.lower()
        for needle, what, todo, code in _SQLITE:
            if needle in lowered:
                if needle == "unable to open database file" and Path(_file(parsed.database)).is_dir():
                    what, todo = "is a directory, not a SQLite file", "point ledger.url at a database file"
                return LedgerProblem(f"the ledger file {_file(parsed.database)} {what}: {todo}", code)
        if isinstance(cause, sqlite3.DatabaseError):
            return LedgerProblem(
                f"the ledger file {_file(parsed.database)} was refused by SQLite ({text}): "
                "restore it from a backup if it is damaged",
                exit_codes.FAILED,
            )
        return None
    server = f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database}" if parsed else "server"
    state = getattr(cause, "sqlstate", None) or ""
    if state.startswith("40"):  # transaction rollback: deadlock, serialization failure
        return LedgerProblem(
            f"the ledger database at {server} rolled a transaction back ({text}): "
            "what it was writing was not kept; run again",
            exit_codes.UNAVAILABLE,
        )
    if state == "55P03":  # lock_not_available: the writer lock's wait (engine.WRITER_WAIT)
        return LedgerProblem(
            f"the ledger database at {server} was held by another writer for longer than "
            f"{WRITER_WAIT} ({text}): find the long transaction (pg_stat_activity), then run again",
            exit_codes.UNAVAILABLE,
        )
    refused = _refused_at_login(state, text)
    if refused is not None:
        return LedgerProblem(f"the ledger database at {server} {refused}", exit_codes.CONFIG)
    if state == "42501":  # insufficient_privilege: the role's grants, which waiting will not mend
        refused = not_allowed(_role(parsed), text, error, migrating=migrating)
        return LedgerProblem(f"the ledger database at {server}: {refused}", exit_codes.CONFIG)
    if isinstance(error, SQLAlchemyError) and _connection_gone(error):
        return LedgerProblem(
            f"the ledger database at {server} cannot be reached now ({text}): retry when it is back",
            exit_codes.UNAVAILABLE,
        )
    return None


# What the server says when it will not let the ledger's user in, by SQLSTATE where the driver
# has one and by the server's words where it has none (a refusal at connection time): the URL
# (or the server's set-up) is wrong, which waiting will not mend.
_LOGIN_REFUSED = (
    ("3D000", "does not exist", "database", "does not exist on that server: create it, or fix ledger.url"),
    ("28000", "does not exist", "role", "has no such user: create the role, or fix ledger.url"),
    ("28P01", "password authentication failed", "", "refused its user's password: fix ledger.url"),
    ("28000", "no pg_hba.conf entry", "", "does not let this user in from this host (pg_hba.conf)"),
)

# What libpq itself says when the server asks for a password the URL does not give (no SQLSTATE:
# the client gives up before the server has refused anything): a scheduler retrying it would
# retry for ever.
_NO_PASSWORD = "fe_sendauth: no password supplied"


def _refused_at_login(state: str, text: str) -> str | None:
    lowered = text.lower()
    if _NO_PASSWORD in lowered:
        return (
            "asks for a password and none was given: put it in ledger.url (percent-encoded: "
            "postgresql://USER:PASSWORD@HOST/DATABASE) or in the environment variable PGPASSWORD "
            f"({_NO_PASSWORD})"
        )
    for code, words, subject, what in _LOGIN_REFUSED:
        if (state == code and words in lowered) or (words in lowered and f"fatal:  {subject}" in lowered):
            return f"{what} ({text})"
    return None


# "permission denied for table sync_runs", "... for schema ledger", "must be owner of table x".
_DENIED = re.compile(r"(?:permission denied for|must be owner of) (\w+) \"?([^\"\s]+)\"?", re.IGNORECASE)
_READS = ("select", "with")
_WRITES = ("insert", "update", "delete")


def not_allowed(role: str, text: str, error: BaseException | None = None, *, migrating: bool = False) -> str:
    """What a role refused a privilege (SQLSTATE 42501) may not do, and who can mend it: the
    tables' owner, by granting (``db grant``) or by migrating itself (a migration alters tables,
    which only their owner may)."""
    found = _DENIED.search(text)
    kind, name = (found.group(1).lower(), found.group(2)) if found else ("", "")
    if migrating or text.lower().startswith("must be owner"):
        return (
            f"role {role} may not change the ledger's tables ({text}): migrations are the owner's to "
            "run: run `consentsync migrate` as the ledger's owner, then "
            f"`consentsync db grant --app-role {role}`"
        )
    statement = (getattr(error, "statement", None) or "").lstrip().lower()
    verb = "read" if statement.startswith(_READS) else "write to" if statement.startswith(_WRITES) else "use"
    what = f"{kind} {name}" if kind and kind != "table" else name or "the ledger's tables"
    return (
        f"role {role} may not {verb} {what} ({text}): run `consentsync db grant --app-role {role}` "
        "as the ledger's owner"
    )


def _role(parsed: object) -> str:
    """The role a PostgreSQL URL's sessions act as: its ``-c role=`` option (SET ROLE at connection
    start), else its user, else libpq's default (PGUSER, then the login name)."""
    options = " ".join(_values(getattr(parsed, "query", {}).get("options")))
    set_role = re.search(r"-c\s*role=(\S+)", options)
    if set_role:
        return set_role.group(1)
    named = getattr(parsed, "username", None) or os.environ.get("PGUSER")
    if named:
        return str(named)
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container's user without a passwd entry)
        return "(this process's user)"


def _values(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, tuple) else (str(value),)


def _file(database: str | None) -> str:
    """The file of a SQLite URL's database (``file:PATH?mode=ro`` URIs included)."""
    return (database or "").removeprefix("file:").split("?", 1)[0] or "(in memory)"


def _connection_gone(error: SQLAlchemyError) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, (OperationalError, InterfaceError))
