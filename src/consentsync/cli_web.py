"""Commands of the ops console: `web`, `user add|passwd|list|role|disable|enable|sessions|
end-sessions|unlock`, and
`runs retry` (the console's retry action, from the shell)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import click

from consentsync.app import open_ledger
from consentsync.cli_base import (
    ROW_ID,
    F,
    acting,
    check_host,
    configured,
    current_config,
    emit_result,
    emit_rows,
    handled,
    listening_where_asked,
    main,
    runs,
    scriptable,
)
from consentsync.domain import InvalidInput
from consentsync.extras import require

if TYPE_CHECKING:
    from consentsync.accounts import Accounts


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="CONSENTSYNC_WEB_HOST",
    help="Address to listen on.",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, envvar="CONSENTSYNC_WEB_PORT"
)
@click.option(
    "--certfile", type=click.Path(exists=True, dir_okay=False), help="Serve HTTPS with this certificate."
)
@click.option(
    "--keyfile", type=click.Path(exists=True, dir_okay=False), help="The certificate's private key."
)
@configured
def web(host: str, port: int, certfile: str | None, keyfile: str | None) -> None:
    """Serve the ops console (log in with an account from `consentsync user add`)."""
    require("console", "the ops console")

    from consentsync.accounts import Accounts
    from consentsync.web.security import web_secret
    from consentsync.web.server import ForegroundServer, bound_socket, build, tls_problem, uvicorn_config

    if bool(certfile) != bool(keyfile):
        raise InvalidInput("give --certfile and --keyfile together")
    # Loaded now, not when uvicorn starts serving: a file that is no certificate or key is one
    # line, before the ledger opens or the port is bound.
    problem = tls_problem(certfile, keyfile) if certfile and keyfile else None
    if problem is not None:
        raise InvalidInput(problem)
    check_host("--host", host)  # before the ledger opens, not only when the socket is bound
    web_secret()  # a CSRF key too short: refused before the ledger opens or the port is bound
    config = current_config()
    ledger = open_ledger(config)
    # Bound here, before anything says where the console is: a port in use is one line (uvicorn
    # logged an error and exited 3), and --port 0 is told the port it got.
    with listening_where_asked("--port", port, "--host", host):
        sock = bound_socket(host, port)
    if not Accounts(ledger.engine).list():  # said once it serves: a refusal above is one line
        click.echo("no console account yet: add one with `consentsync user add NAME --role admin`", err=True)
    port = sock.getsockname()[1]
    scheme = "https" if certfile else "http"
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address, bracketed as a URL needs
    click.echo(f"ops console at {scheme}://{shown}:{port}/ (Ctrl-C stops)", err=True)
    # SIGTERM or Ctrl-C: a clean stop, exit 0 (uvicorn's own server would die of the signal).
    ForegroundServer(
        uvicorn_config(
            build(config, ledger, host=host), host=host, port=port, certfile=certfile, keyfile=keyfile
        )
    ).run(sockets=[sock])


@main.group()
@handled
def user() -> None:
    """Local accounts of the ops console (viewer, reviewer, admin)."""
    require("console", "the ops console's accounts")


def _accounts() -> Accounts:
    """The accounts, with the deployment's keyed hash (the one the console counts failed logins by)."""
    from consentsync.accounts import Accounts

    ledger = open_ledger(current_config())
    return Accounts(ledger.engine, clock=lambda: ledger.clock(), keyed=ledger.keyed_hasher())


def _password(from_stdin: bool) -> str:
    """The new password: one line of standard input (--password-stdin), else asked twice on the
    terminal. Without a terminal, or with stdin closed or empty, one line says what to do (getpass
    warned that the password might be echoed, then click said "Aborted!")."""
    if from_stdin:
        line = sys.stdin.readline() if sys.stdin is not None and not sys.stdin.closed else ""
        if not line.strip():
            raise InvalidInput("--password-stdin: no password line on standard input: pipe one in")
        return line.rstrip("\n")
    if sys.stdin is None or sys.stdin.closed or not sys.stdin.isatty():
        raise InvalidInput("no terminal to ask for the password on: run it on one, or pass --password-stdin")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


_ROLE = click.Choice(["viewer", "reviewer", "admin"])
_ACTOR = click.option("--actor", help="Who changes it (kept in the audit log; default: your login name).")
_PASSWORD_STDIN = click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (for scripts)."
)


def _actor_named(func: F) -> F:
    """``--actor`` as ``acting`` takes it (inside ``configured``: a blank one is a one-line error):
    the login name when left out, as every other command records who acted."""

    @functools.wraps(func)
    def with_actor(*args: Any, **kwargs: Any) -> Any:
        kwargs["actor"] = acting(kwargs.get("actor"))
        return func(*args, **kwargs)

    return cast(F, with_actor)


def _account_change(name: str, *options: Callable[[F], F]) -> Callable[[F], click.Command]:
    """A `user` command that changes the account NAME: the command's own ``options``, and --actor."""

    def command(func: F) -> click.Command:
        for decorator in reversed((click.argument("name"), *options, _ACTOR, configured, _actor_named)):
            func = decorator(func)
        return user.command(name)(func)

    return command


@_account_change("add", click.option("--role", type=_ROLE, required=True), _PASSWORD_STDIN)
def user_add(name: str, role: str, actor: str, password_stdin: bool) -> None:
    """Add an account; asks for its password (12 characters or more)."""
    accounts = _accounts()
    password = _password(password_stdin)
    account = accounts.add(name, role, password, actor=actor)
    click.echo(f"account {account.name} added with role {account.role.label}")


@_account_change("passwd", _PASSWORD_STDIN)
def user_passwd(name: str, actor: str, password_stdin: bool) -> None:
    """Set an account's password; its open sessions end."""
    accounts = _accounts()
    password = _password(password_stdin)
    accounts.set_password(name, password, actor=actor)
    click.echo(f"password of {name} changed; its sessions have ended")


@_account_change("role", click.argument("role", type=_ROLE))
def user_role(name: str, role: str, actor: str) -> None:
    """Change an account's role."""
    _accounts().set_role(name, role, actor=actor)
    click.echo(f"{name} is now {role}")


@_account_change("disable", click.option("--enable", is_flag=True, help="Enable it again."))
def user_disable(name: str, enable: bool, actor: str) -> None:
    """Disable an account (its sessions end at once), or with --enable, enable it again."""
    _accounts().set_disabled(name, not enable, actor=actor)
    click.echo(f"{name} {'enabled' if enable else 'disabled'}")


@user.command("list")
@scriptable
def user_list(as_json: bool) -> None:
    """Every account, with its role."""

    rows = [a.as_dict() for a in _accounts().list()]
    emit_rows(rows, ["name", "role", "disabled", "password_changed_at"], as_json)


@user.command("sessions")
@click.argument("name")
@scriptable
def user_sessions(name: str, as_json: bool) -> None:
    """An account's open sessions (started, last seen, expires)."""
    rows = [s.as_dict() for s in _accounts().sessions(name)]
    emit_rows(rows, ["id", "created_at", "last_seen_at", "expires_at"], as_json)


@_account_change("end-sessions")
def user_end_sessions(name: str, actor: str) -> None:
    """End every open session of an account (it must log in again)."""
    ended = _accounts().end_sessions(name, actor=actor)
    click.echo(f"{ended} session(s) of {name} ended")


@_account_change("unlock")
def user_unlock(name: str, actor: str) -> None:
    """Clear an account's failed logins, so that every client may try it again at once."""
    _accounts().unlock(name, actor=actor)
    click.echo(f"{name} unlocked")


@runs.command("retry")
@click.argument("quarantine_id", type=ROW_ID, metavar="QUARANTINE_ID")
@click.option("--actor", help="Who asks (kept in the audit log; default: your login name).")
@scriptable
def runs_retry(quarantine_id: int, actor: str | None, as_json: bool) -> None:
    """Retry a quarantined record: re-read on the connector's next run, or its push re-queued."""
    from consentsync.app import can_reread
    from consentsync.sync.quarantine import retry

    actor = acting(actor)  # kept in the audit chain: a blank one is refused
    config = current_config()
    ledger = open_ledger(config)
    row = retry(
        ledger.engine,
        quarantine_id,
        actor=actor,
        now=ledger.clock(),
        can_reread=lambda name: can_reread(config, name),
    )
    emit_result(
        row,
        as_json,
        f"quarantined record {quarantine_id}: its push is back in the queue for the next run"
        if row["stage"] == "push"
        else f"quarantined record {quarantine_id}: the next run of {row['connector']} reads it again",
    )
