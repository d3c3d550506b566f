"""What every command module of the command line shares, and nothing else: the root group
``main``, the ``--config`` and ``--json`` options, the handling that turns the errors people cause
into one line and exit code 2, the config and ledger a command works on, JSON and table output,
and the groups more than one module adds commands to (``subject``, ``audit``, ``runs``).

It imports no command module: they import it (consentsync.cli is the entry point that imports
them all, which registers their commands on ``main``).
"""

from __future__ import annotations

import errno
import functools
import getpass
import json
import os
import socket
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.exc import DataError, SQLAlchemyError

from consentsync import exit_codes
from consentsync.app import LedgerNotReady, open_ledger
from consentsync.config import Config, ConfigError, default_config_path, load_config
from consentsync.domain import ACTOR_MAX, API_KEY_ACTOR_PREFIX, InvalidInput, check_label, holds_value
from consentsync.ledger.problems import ledger_problem
from consentsync.ledger.service import Ledger, NotFound
from consentsync.logs import FORMATS as LOG_FORMATS
from consentsync.logs import LEVELS as LOG_LEVELS
from consentsync.logs import configure as configure_logging
from consentsync.sdk.errors import ConnectorError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_BAD_INPUT = exit_codes.CONFIG
MAX_ROW_ID = 2**31 - 1  # the ledger's integer keys (PostgreSQL's integer)
# A count of rows or a row's id as the ledger's integers hold them: a larger number is refused
# naming its option, not by the database ("a value the ledger cannot store or compare").
ROW_COUNT = click.IntRange(min=1, max=MAX_ROW_ID)
ROW_ID = click.IntRange(min=1, max=MAX_ROW_ID)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    click.echo(f"consentsync: error: {message}", err=True)
    sys.exit(code)


# Why the OS refused to listen where an option said, by errno.
_BIND_REFUSED = {
    errno.EADDRINUSE: "is in use (another program listens there)",
    errno.EACCES: "needs privileges this user lacks",
    errno.EADDRNOTAVAIL: "is not an address of this machine",
}


def _shown(host: str) -> str:
    """``host`` as an error line can print it: as typed, or quoted with escapes when it holds
    characters a terminal would not show (or could not encode: bytes that are not UTF-8)."""
    return host if host.isprintable() else ascii(host)


def _unresolvable(host_option: str, host: str, why: str) -> NoReturn:
    fail(f"{host_option} {_shown(host)} is not an address or host name this machine resolves ({why}): "
         f"pass {host_option} 127.0.0.1, 0.0.0.0 (every address) or an address of this machine",
         exit_codes.CONFIG)  # fmt: skip


def check_host(host_option: str, host: str) -> None:
    """Refuses a ``host`` (named by ``host_option``) that resolves to no address, before anything
    is made or bound: binding it would fail with a resolver error, after the work done so far."""
    try:
        # AI_PASSIVE: an address to listen on; "" means every address, as for bind().
        socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        _unresolvable(host_option, host, error.strerror or str(error))
    except (UnicodeError, ValueError):
        # The IDNA codec refuses a label over 63 characters or a character no host name holds.
        _unresolvable(host_option, host, "not a valid host name")


@contextmanager
def listening_where_asked(port_option: str, port: int | None, host_option: str, host: str) -> Iterator[None]:
    """Around binding ``host``:``port``, which the options ``port_option`` and ``host_option``
    named: a host that resolves to no address is refused first, before the body runs; a refusal
    (a port in use, a privileged port, a foreign address, an unresolvable host) is one line,
    exit 2."""
    check_host(host_option, host)
    try:
        yield
    except socket.gaierror as error:
        # Resolved above, yet not for this socket's family (an IPv6-only name on an IPv4 socket),
        # or the resolver changed its answer meanwhile.
        _unresolvable(host_option, host, error.strerror or str(error))
    except OSError as error:
        why = _BIND_REFUSED.get(error.errno or 0)
        if why is None:
            raise
        if error.errno == errno.EADDRNOTAVAIL:
            fail(f"{host_option} {host} {why}: pass {host_option} 127.0.0.1 or an address of this machine",
                 exit_codes.CONFIG)  # fmt: skip
        fail(f"{port_option} {port} on {host} {why}: pass {port_option} with a free port (or 0 to pick one)",
             exit_codes.CONFIG)  # fmt: skip


# Output that could not be written: no space (69: free some and run again) or nowhere to write
# it (2). What the command changed before it wrote its output stays: the message says only that
# the output was lost.
_SPACE = exit_codes.NO_SPACE_ERRNOS
_UNWRITABLE = _SPACE | {errno.EROFS, errno.EACCES, errno.EISDIR, errno.ENOENT, errno.EBADF}


def _quiet_stdout() -> None:
    """Points stdout at /dev/null, so that what is still buffered for it is dropped at exit
    instead of failing a second time in Python's shutdown (a traceback-like warning)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):  # no real file behind stdout (a test runner)
        pass


def _reader_gone() -> NoReturn:
    """The reader of the output went away before it was all written (``... | head -1``): no
    message (there is nowhere it could usefully go), and exit 141 as a process killed by SIGPIPE
    would (the shell's 128 + 13): the output is not complete, so this is not success. What is
    still buffered for stdout is dropped, not written a second time at exit."""
    _quiet_stdout()
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stderr.fileno())  # a reader of both (2>&1) is gone from stderr too
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass
    sys.exit(exit_codes.READER_GONE)


def _is_broken_pipe(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno == errno.EPIPE


@contextmanager
def _output_to_a_reader() -> Iterator[None]:
    """Around a whole command (and its --help): a broken pipe on its output is ``_reader_gone``,
    whichever command wrote, instead of click's silent exit 1."""
    try:
        yield
    except OSError as error:
        if not _is_broken_pipe(error):
            raise
        _reader_gone()


def check_output_folder(output: Path, option: str = "-o", *, force: bool | None = None) -> None:
    """Refuses an output FILE in a folder that is not there, before any work is done for it;
    and, for a command with ``--force`` (``force`` not None), one that exists (a symlink too)."""
    if not output.parent.is_dir():
        raise InvalidInput(
            f"{option} {output}: no folder {output.parent}: create it first, or write elsewhere"
        )
    if force is False and (output.exists() or output.is_symlink()):
        raise InvalidInput(f"{option} {output}: the file exists (--force overwrites it)")


@contextmanager
def private_output(output: Path, option: str = "-o", *, force: bool) -> Iterator[Path]:
    """A file to write ``output``'s content to: readable by its owner only (0600: a person's
    record, a plan naming people), written aside in the same folder and put in place whole once
    the block ends: linked in where nothing is there yet (a file or link made meanwhile is
    refused, never followed), renamed over it with ``force`` (a symlink is replaced, not written
    through). Removed if the block fails."""
    # Its suffix kept last: a writer may go by it.
    aside = output.with_name(f".{output.name}.{os.getpid()}{output.suffix}")
    try:
        os.close(os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        raise InvalidInput(f"{option} {output}: {error.strerror}") from None
    try:
        yield aside
        if force:
            os.replace(aside, output)
        else:
            try:
                os.link(aside, output, follow_symlinks=False)
            except FileExistsError:
                raise InvalidInput(f"{option} {output}: the file exists (--force overwrites it)") from None
    finally:
        aside.unlink(missing_ok=True)


def _store_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta["consentsync.config"] = value


def config_option(func: F) -> F:
    """``--config`` is accepted before the command name and after it, on every command."""
    return click.option(
        "--config",
        "config_path",
        metavar="PATH",
        expose_value=False,
        is_eager=True,
        callback=_store_config,
        help="Config file (default ./consentsync.yaml, or $CONSENTSYNC_CONFIG).",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def handled(func: F) -> F:
    """Turns the errors people cause into one line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        refuse_undecodable_options()
        try:
            return func(*args, **kwargs)
        except LedgerNotReady as error:
            fail(str(error), error.exit_code)
        except (InvalidInput, ConfigError, NotFound) as error:
            fail(str(error))
        except UnicodeError:
            # Bytes that are not UTF-8 in an argument (the shell passes them as lone surrogates).
            fail("the input holds bytes that are not UTF-8 text: nothing was changed")
        except (DataError, OverflowError):
            # The database refused a value as data (PostgreSQL: a NUL character, a number beyond
            # its integers; SQLite: an integer beyond 64 bits): bad input, rolled back.
            fail("the input holds a value the ledger cannot store or compare: nothing was changed")
        except (SQLAlchemyError, sqlite3.DatabaseError) as error:
            # The ledger refused mid-command (a damaged or read-only file, a full disk, the server
            # gone): the transaction in hand was rolled back whole.
            problem = ledger_problem(error, _ledger_url())
            if problem is None:
                raise
            fail(problem.message, problem.exit_code)
        except OSError as error:
            if error.errno not in _UNWRITABLE:
                raise  # a broken pipe (the reader went away): _Commands exits 141, quietly
            _quiet_stdout()
            why = error.strerror or str(error)
            said = f"{error.filename}: {why}" if error.filename else f"the output could not be written: {why}"
            code = exit_codes.UNAVAILABLE if error.errno in _SPACE else exit_codes.CONFIG
            fail(f"{said} (what the command changed before that is kept)", code)
        except ConnectorError as error:
            # The CRM refused the credentials (exit 77), refused something else the admin must
            # fix (a module or field the install lacks, its TLS certificate: exit 2) or could not
            # be reached now (try again later, exit 69): see exit_codes.py.
            label = "credentials" if error.rule.credentials else error.rule.fault.value
            fail(f"{label}: {error}", exit_codes.for_connector_error(error.rule))

    return wrapper  # type: ignore[return-value]


def not_utf8(data: bytes) -> str | None:
    """Where ``data`` stops being UTF-8, as an error line says it ("byte 0xe9 at offset 3"), or
    None where it is UTF-8 throughout."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"byte {data[error.start]:#04x} at offset {error.start}"
    return None


def refuse_undecodable_options() -> None:
    """Refuses, before the command does anything, an option or argument holding bytes that are not
    UTF-8 (the shell passes them as lone surrogates): named with the byte and its offset, never its
    value (an address, a name). Paths are exempt: a file's name need not be UTF-8."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    for param in ctx.command.params:
        if isinstance(param.type, (click.Path, click.File)) or param.name not in ctx.params:
            continue
        given = ctx.params[param.name]
        for value in given if isinstance(given, (tuple, list)) else (given,):
            if not isinstance(value, str) or value.isascii():
                continue
            try:
                where = not_utf8(value.encode("utf-8", "surrogateescape"))
            except UnicodeEncodeError:  # a surrogate no byte stands for
                where = "a character that is no Unicode text"
            if where is not None:
                long_names = [opt for opt in param.opts if opt.startswith("--")]
                is_option = isinstance(param, click.Option)
                name = (long_names or param.opts)[0] if is_option else param.human_readable_name
                if "email" in (param.name or ""):  # said as every malformed address is
                    name += ": malformed email address"
                fail(f"{name}: not UTF-8 text ({where}): accepted is UTF-8 text; nothing was changed")


def configured(func: F) -> F:
    """What every command has, below its own options: ``--config``, and the errors people cause
    as one line and exit code 2 (``handled``)."""
    return config_option(handled(func))


def scriptable(func: F) -> F:
    """``configured``, and ``--json``: the command answers scripts in JSON, people in text."""
    return configured(json_option(func))


def _ledger_url() -> str:
    try:
        return current_config().ledger_url
    except ConfigError:
        return ""


def current_config() -> Config:
    ctx = click.get_current_context()
    return load_config(default_config_path(ctx.meta.get("consentsync.config")))


def current_ledger() -> Ledger:
    return open_ledger(current_config())


def known_filter(
    option: str, value: str | None, known: Sequence[str], *, found: Callable[[str], bool], what: str
) -> str | None:
    """A listing's filter ``value`` (of ``option``), refused when it names nothing there could be
    (a typo listed "(none)", as if nothing matched): accepted are the ``known`` values (compared
    without case: they are lower-case) and any value ``found`` finds in the ledger (a connector
    removed from the config, an action of another version). Returns the value to filter by."""
    if value is None:
        return None
    lowered = value.lower()
    if lowered in known or found(value) or (lowered != value and found(lowered)):
        return lowered if lowered in known else value
    accepted = f"accepted are {', '.join(known)}" if known else f"there is no {what} to filter by"
    raise InvalidInput(f"{option} {_shown(value)}: no such {what}: {accepted}")


def connector_filter(option: str, value: str | None, ledger: Ledger, column: Any) -> str | None:
    """``--connector NAME`` of a listing: a configured connector, or one with rows in ``column``'s
    table (a connector since removed from the config)."""
    from sqlalchemy import select

    from consentsync.ledger.schema import sync_runs

    configured = [c.name for c in current_config().settings.connectors]
    with ledger.engine.connect() as conn:

        def found(name: str) -> bool:
            return conn.execute(select(column).where(column == name).limit(1)).first() is not None

        if value is None or value.lower() in configured:
            return known_filter(option, value, configured, found=found, what="connector")
        # Not configured: what the error lists (and what else is accepted) includes every
        # connector that ever ran.
        ran = conn.execute(select(sync_runs.c.connector).distinct()).scalars().all()
        return known_filter(option, value, sorted({*configured, *ran}), found=found, what="connector")


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[cell_text(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def emit_result(result: Any, as_json: bool, line: str) -> None:
    """A command's answer: ``result`` as JSON with ``--json``, else the one ``line`` a person reads."""
    if as_json:
        emit_json(result)
    else:
        click.echo(line)


def emit_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool) -> None:
    """A listing command's answer: its rows as JSON with ``--json``, else these columns as a table."""
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, columns)


def cell_text(value: Any) -> str:
    """A value as a table cell shows it: "-" for none, yes/no, k=v pairs."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        # A list of changes or records: each item in brackets, never Python's repr of it.
        shown = (f"[{cell_text(item)}]" if isinstance(item, dict) else cell_text(item) for item in value)
        return "; ".join(shown)
    return str(value)


def login_name() -> str:
    """Who runs the command, for the audit log: the operating system's login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def acting(actor: str | None, option: str = "--actor") -> str:
    """Who acts, for the record (Art. 5(2): the controller shows who captured a consent, raised
    an objection, erased or restricted): ``option`` as given, else the login name. A blank one is
    refused, not recorded as nobody: a script's unset variable (--actor "$OPERATOR") would
    otherwise pass the default by. ``InvalidInput`` (exit 2), one line naming ``option``."""
    if actor is None:
        return login_name()
    if not holds_value(actor):
        raise InvalidInput(
            f"{option} is blank: name who acts (staff or a system, never the person's address), "
            f"or leave {option} out for your login name"
        )
    check_label(actor, option, ACTOR_MAX, required=True)  # kept in the audit chain: one line
    if actor.strip().casefold().startswith(API_KEY_ACTOR_PREFIX):
        # The hub's actor for what it records through a key: taken by hand, an operator's no
        # labelled as the GPC signal's read as the browser's, which the person's page lets anyone
        # holding the link grant over at once (hub/preferences.recorded_from_the_signal).
        raise InvalidInput(
            f"{option} {actor!r} is reserved for what the hub records through an API key: name who "
            f"acts (staff or a system), or leave {option} out for your login name"
        )
    return actor


class _OneLineUsageError(click.UsageError):
    """A usage error (a missing argument, a value out of range, an unknown option or command)
    said as every other refusal is: one ``consentsync: error:`` line, exit 2 (click prints the
    usage, a hint and the error over four lines)."""

    def show(self, file: Any = None) -> None:
        where = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"consentsync: error: {self.format_message()}{where}", err=True)


def _one_line(error: click.UsageError) -> _OneLineUsageError:
    message = error.format_message()
    param = getattr(error, "param", None)
    envvar = getattr(param, "envvar", None)
    ctx = error.ctx
    # A value from the environment is fixed there, not on the command line: say where.
    if (
        isinstance(envvar, str)
        and ctx is not None
        and param is not None
        and param.name
        and ctx.get_parameter_source(param.name) is click.core.ParameterSource.ENVIRONMENT
    ):
        message = f"{message} (from the environment variable {envvar})"
    return _OneLineUsageError(message, ctx)


class _Commands(click.Group):
    """consentsync's command tree; usage errors anywhere in it are one line (``_OneLineUsageError``)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            with _output_to_a_reader():  # --help, --version into a closed pipe
                return super().make_context(*args, **kwargs)
        except _OneLineUsageError:
            raise
        except click.UsageError as error:
            raise _one_line(error) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _output_to_a_reader():
                return super().invoke(ctx)
        except _OneLineUsageError:
            raise
        except click.UsageError as error:
            raise _one_line(error) from None


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="consentsync", prog_name="consentsync", message="%(prog)s %(version)s")
@config_option
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="WARNING",
    show_default=True,
    envvar="CONSENTSYNC_LOG_LEVEL",
    help="Log level (`consentsync run`: INFO unless set). Env: CONSENTSYNC_LOG_LEVEL.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    envvar="CONSENTSYNC_LOG_FORMAT",
    help="Log lines as JSON or for people (default: console on a terminal, else JSON). "
    "Logs go to stderr; `consentsync run` logs to stdout. Env: CONSENTSYNC_LOG_FORMAT.",
)
def main(log_level: str, log_format: str | None) -> None:
    """consentsync: one truthful record of consent and lawful basis, every CRM in step with it."""
    context = click.get_current_context()
    context.meta["consentsync.log_format"] = log_format
    configure_logging(log_level, fmt=log_format)
    from consentsync.app import close_opened

    context.call_on_close(close_opened)


# -- groups more than one command module adds commands to ------------------------------------------


@main.group()
def subject() -> None:
    """Look at one person's record."""


@main.group("audit")
def audit_group() -> None:
    """Read and verify the tamper-evident audit log."""


@main.group()
def runs() -> None:
    """Past sync runs: counts, API calls, errors and quarantined records."""
