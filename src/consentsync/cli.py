"""The command line: parses, calls a service, prints (tables for people, --json for scripts).

Bad input exits with code 2 and a one-line error naming what was wrong and what is accepted;
nothing is written before all input has been checked.
"""

from __future__ import annotations

import functools
import getpass
import itertools
import json
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.exc import DataError, SQLAlchemyError

from consentsync import exit_codes
from consentsync.app import LedgerNotReady, open_ledger
from consentsync.config import (
    Config,
    ConfigError,
    default_config_path,
    load_config,
    write_starter,
)
from consentsync.domain import (
    ACTOR_MAX,
    EVIDENCE_REF_MAX,
    NOTICE_VERSION_MAX,
    SOURCE_MAX,
    ConsentStatus,
    Evidence,
    InvalidInput,
    LawfulBasis,
    Origin,
    SoftOptIn,
    check_label,
    check_moment,
    normalise_email,
    parse_enum,
    parse_timestamp,
)
from consentsync.ledger.identity import Identity
from consentsync.ledger.problems import ledger_problem
from consentsync.ledger.service import Ledger, NotFound
from consentsync.logs import FORMATS as LOG_FORMATS
from consentsync.logs import LEVELS as LOG_LEVELS
from consentsync.logs import configure as configure_logging
from consentsync.sdk.errors import ConnectorError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_BAD_INPUT = exit_codes.CONFIG
MAX_ROW_ID = 2**31 - 1  # the ledger's integer keys
EXPORT_FORMATS = ("json", "csv", "xlsx")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    click.echo(f"consentsync: error: {message}", err=True)
    sys.exit(code)


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
        except ConnectorError as error:
            # The CRM refused the credentials (exit 77), refused something else the admin must
            # fix (a module or field the install lacks, its TLS certificate: exit 2) or could not
            # be reached now (try again later, exit 69): see exit_codes.py.
            label = "credentials" if error.rule.credentials else error.rule.fault.value
            fail(f"{label}: {error}", exit_codes.for_connector_error(error.rule))

    return wrapper  # type: ignore[return-value]


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


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[_text(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    return str(value)


def _email(value: str) -> str:
    return normalise_email(value)


def _time(value: str | None, option: str) -> datetime | None:
    return parse_timestamp(value, option) if value else None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    click.get_current_context().meta["consentsync.log_format"] = log_format
    configure_logging(log_level, fmt=log_format)


# -- init ------------------------------------------------------------------------------------------


@main.command()
@config_option
@click.option("--ledger-url", metavar="URL", help="Ledger database URL for a new config.")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@handled
def init(ledger_url: str | None, force: bool) -> None:
    """Write a commented starter config (if none exists) and create or upgrade the ledger."""
    path = default_config_path(click.get_current_context().meta.get("consentsync.config"))
    if path.exists() and not force:
        click.echo(f"{path} exists: keeping it (use --force to overwrite)")
    else:
        key_path = write_starter(path, ledger_url)
        click.echo(f"wrote {path} (erasure key in {key_path}, mode 0600: back it up)")
    config = load_config(path)
    open_ledger(config, migrate=True)
    click.echo(f"ledger ready at {config.settings.ledger.url}")


@main.command()
@config_option
@handled
def migrate() -> None:
    """Apply any pending ledger migrations."""
    open_ledger(current_config(), migrate=True)
    click.echo("ledger is up to date")


# -- ledger ----------------------------------------------------------------------------------------


@main.group()
def ledger() -> None:
    """Record consent events and maintain the ledger."""


@ledger.command("record")
@config_option
@click.option("--email", required=True, help="The person's email address.")
@click.option("--purpose", required=True, help="A configured purpose key.")
@click.option("--status", required=True, help="|".join(s.value for s in ConsentStatus))
@click.option("--basis", help="Lawful basis (default: the purpose's).")
@click.option("--channel", default="email", show_default=True, help="A configured channel.")
@click.option("--source", required=True, help="Where it was captured (web_form, phone, ...).")
@click.option("--at", "at", metavar="ISO8601", help="When the person acted (omit if unknown).")
@click.option("--actor", help="Who recorded it (staff or system, never the subject's address).")
@click.option("--notice-version", help="Version of the notice the person was shown.")
@click.option("--double-opt-in-at", metavar="ISO8601", help="Double opt-in confirmation time.")
@click.option("--evidence-ref", help="Reference to the proof (form submission id, recording, ...).")
@click.option(
    "--soft-opt-in-sale",
    metavar="REF",
    help="Soft opt-in (PECR reg. 22(3)), condition 1: the sale or negotiation the contact details "
    "were obtained in (order or quote reference). The soft opt-in needs all four --soft-opt-in "
    "options, --at, --status not_applicable (basis legitimate_interests).",
)
@click.option(
    "--soft-opt-in-similar-products",
    metavar="TEXT",
    help="Soft opt-in, condition 2: the similar products and services the marketing is about.",
)
@click.option(
    "--soft-opt-in-refusal-at-collection",
    metavar="REF",
    help="Soft opt-in, condition 3: where the chance to refuse was given at collection (form version).",
)
@click.option(
    "--soft-opt-in-refusal-in-messages",
    metavar="REF",
    help="Soft opt-in, condition 3: how every message offers it (template with its unsubscribe link).",
)
@json_option
@handled
def ledger_record(
    email: str,
    purpose: str,
    status: str,
    basis: str | None,
    channel: str,
    source: str,
    at: str | None,
    actor: str | None,
    notice_version: str | None,
    double_opt_in_at: str | None,
    evidence_ref: str | None,
    soft_opt_in_sale: str | None,
    soft_opt_in_similar_products: str | None,
    soft_opt_in_refusal_at_collection: str | None,
    soft_opt_in_refusal_in_messages: str | None,
    as_json: bool,
) -> None:
    """Record one consent event (or a soft opt-in) and show the effective state it leads to."""
    address = _email(email)
    if not source.strip():
        raise InvalidInput("--source must not be empty")
    check_label(source.strip(), "--source", SOURCE_MAX, required=True)
    check_label(actor, "--actor", ACTOR_MAX)
    check_label(notice_version, "--notice-version", NOTICE_VERSION_MAX)
    check_label(evidence_ref, "--evidence-ref", EVIDENCE_REF_MAX)
    target = current_ledger()
    now, skew = target.clock(), target.max_clock_skew_seconds
    check_moment(_time(at, "--at"), "--at", now, skew)
    check_moment(_time(double_opt_in_at, "--double-opt-in-at"), "--double-opt-in-at", now, skew)
    soft_opt_in = _soft_opt_in(
        soft_opt_in_sale,
        soft_opt_in_similar_products,
        soft_opt_in_refusal_at_collection,
        soft_opt_in_refusal_in_messages,
    )
    if soft_opt_in is not None and not basis:
        basis = LawfulBasis.LEGITIMATE_INTERESTS.value  # a soft opt-in is no consent
    evidence = Evidence(
        purpose=purpose.strip(),
        channel=channel.strip().lower(),
        status=parse_enum(ConsentStatus, status, "status"),
        basis=parse_enum(LawfulBasis, basis, "lawful basis") if basis else None,
        soft_opt_in=soft_opt_in,
        event_time=_time(at, "--at"),
        observed_at=target.clock(),
        source=source.strip(),
        origin=Origin.CAPTURE,
        actor=actor,
        notice_version=notice_version,
        double_opt_in_at=_time(double_opt_in_at, "--double-opt-in-at"),
        evidence_ref=evidence_ref,
    )
    target.validate(evidence)
    outcome = target.record(Identity(email=address), evidence)
    result = {
        "subject": outcome.subject_uid,
        "duplicate": outcome.duplicate,
        "before": outcome.before.as_dict() if outcome.before else None,
        "after": outcome.after.as_dict() if outcome.after else None,
    }
    if as_json:
        emit_json(result)
    elif outcome.duplicate:
        click.echo("already recorded: the same evidence is in the ledger; nothing changed")
    else:
        assert outcome.before is not None and outcome.after is not None
        before, after = outcome.before, outcome.after
        click.echo(
            f"recorded {evidence.status.value} for {evidence.purpose}/{evidence.channel}: "
            f"{before.status.value} -> {after.status.value}, basis {after.basis.value}, "
            f"suppressed {_text(after.suppressed)} (rule {after.rule})"
        )


def _soft_opt_in(*values: str | None) -> SoftOptIn | None:
    """The four --soft-opt-in options: none of them, or all (each condition evidenced)."""
    names = (
        "--soft-opt-in-sale",
        "--soft-opt-in-similar-products",
        "--soft-opt-in-refusal-at-collection",
        "--soft-opt-in-refusal-in-messages",
    )
    if all(value is None for value in values):
        return None
    missing = [name for name, value in zip(names, values, strict=True) if not (value or "").strip()]
    if missing:
        raise InvalidInput(
            f"a soft opt-in needs each of its conditions evidenced: missing {', '.join(missing)}"
        )
    sale, similar, at_collection, in_messages = (str(value).strip() for value in values)
    return SoftOptIn(sale, similar, at_collection, in_messages)


@ledger.command("expire")
@config_option
@json_option
@handled
def ledger_expire(as_json: bool) -> None:
    """Record the expiry of every granted consent past its purpose's validity window."""
    stats = current_ledger().expire_due()
    if as_json:
        emit_json({"expired": stats.recorded})
    else:
        click.echo(f"expired {stats.recorded} consent(s)")


@ledger.command("requested")
@config_option
@click.option(
    "--older-than",
    type=click.IntRange(min=0),
    metavar="DAYS",
    help="Default: policy.requested_stale_after_days.",
)
@json_option
@handled
def ledger_requested(older_than: int | None, as_json: bool) -> None:
    """Report consents requested and still unanswered after a while."""
    config = current_config()
    days = config.settings.policy.requested_stale_after_days if older_than is None else older_than
    rows = open_ledger(config).stale_requests(days)
    if as_json:
        emit_json(rows)
    else:
        click.echo(f"consents requested more than {days} day(s) ago and still unanswered:")
        print_table(rows, ["email", "purpose", "channel", "requested_since", "subject"])


# -- objections ------------------------------------------------------------------------------------


@main.group(short_help="Raise, review and decide objections (GDPR Article 21).")
def objection() -> None:
    """Raise, review and decide objections (GDPR Art. 21)."""


@objection.command("raise")
@config_option
@click.option("--email", required=True)
@click.option("--purpose", required=True)
@click.option(
    "--direct-marketing",
    is_flag=True,
    help="An objection to direct marketing (Art. 21(2)): always upheld.",
)
@click.option("--at", "at", metavar="ISO8601", help="When the person objected (default: now).")
@click.option("--source", default="ops", show_default=True)
@click.option("--actor")
@json_option
@handled
def objection_raise(
    email: str,
    purpose: str,
    direct_marketing: bool,
    at: str | None,
    source: str,
    actor: str | None,
    as_json: bool,
) -> None:
    """Record an objection; the purpose's configuration decides whether it needs review."""
    address = _email(email)
    raised_at = _time(at, "--at")
    check_label(source, "--source", SOURCE_MAX, required=True)
    check_label(actor, "--actor", ACTOR_MAX)
    target = current_ledger()
    check_moment(raised_at, "--at", target.clock(), target.max_clock_skew_seconds)
    result = target.raise_objection(
        address,
        purpose.strip(),
        direct_marketing=direct_marketing,
        raised_at=raised_at,
        source=source,
        actor=actor,
    )
    if as_json:
        emit_json(result)
    elif result["status"] == "pending":
        click.echo(f"objection {result['id']} is pending review; {purpose} is suppressed until it is decided")
    else:
        click.echo(f"objection {result['id']} upheld ({result['decided_by']})")


@objection.command("list")
@config_option
@click.option("--pending", is_flag=True, help="Only objections waiting for a decision.")
@json_option
@handled
def objection_list(pending: bool, as_json: bool) -> None:
    """List objections: pending first, oldest first."""
    rows = current_ledger().list_objections(pending_only=pending)
    if as_json:
        emit_json(rows)
    else:
        print_table(
            rows,
            ["id", "email", "purpose", "direct_marketing", "status", "raised_at", "decided_by"],
        )


@objection.command("decide")
@config_option
@click.argument("objection_id", type=int, metavar="ID")
@click.option("--uphold", "decision", flag_value="uphold", help="Uphold the objection.")
@click.option(
    "--reject",
    "decision",
    flag_value="reject",
    help="Reject it: the controller's grounds override.",
)
@click.option("--by", required=True, help="Who decides.")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@json_option
@handled
def objection_decide(objection_id: int, decision: str | None, by: str, reason: str, as_json: bool) -> None:
    """Decide a pending objection."""
    if decision is None:
        raise InvalidInput("say --uphold or --reject")
    if not 1 <= objection_id <= MAX_ROW_ID:
        raise NotFound(f"no objection with id {objection_id}")
    result = current_ledger().decide_objection(
        objection_id, uphold=decision == "uphold", by=by, reason=reason
    )
    if as_json:
        emit_json(result)
    else:
        click.echo(f"objection {objection_id} {result['status']} by {by}")


# -- erasure ---------------------------------------------------------------------------------------


@main.command(short_help="Erase a person (GDPR Article 17), keeping a keyed-hash suppression.")
@config_option
@click.option("--email", required=True)
@click.option("--reason", required=True, help="Why (kept with the suppression entry).")
@click.option("--actor")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@handled
def erase(email: str, reason: str, actor: str | None, yes: bool, as_json: bool) -> None:
    """Erase a person (Art. 17), keeping only a keyed-hash suppression entry."""
    address = _email(email)
    target = current_ledger()
    if not yes:
        if not sys.stdin.isatty():
            # A script must say so: an erasure cannot be undone, and nobody is there to ask.
            raise InvalidInput("erase cannot be undone: confirm on a terminal, or pass --yes")
        click.confirm(f"Erase {address}? This cannot be undone", abort=True)
    result = target.erase(address, reason=reason, actor=actor)
    if as_json:
        emit_json(result)
    elif result["subject_known"]:
        click.echo(f"erased subject {result['subject']}; suppression entry {result['suppression_id']} kept")
    else:
        click.echo(f"no subject held that address; suppression entry {result['suppression_id']} recorded")


@main.command(short_help="Restrict processing of a person (GDPR Article 18), or lift it.")
@config_option
@click.option("--email", required=True)
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--lift", is_flag=True, help="Lift an earlier restriction.")
@click.option("--actor")
@json_option
@handled
def restrict(email: str, reason: str, lift: bool, actor: str | None, as_json: bool) -> None:
    """Restrict processing of a person (Art. 18): stored, not otherwise processed."""
    result = current_ledger().restrict(_email(email), restricted=not lift, reason=reason, actor=actor)
    if as_json:
        emit_json(result)
    elif lift:
        click.echo(f"restriction lifted for subject {result['subject']}")
    else:
        click.echo(f"subject {result['subject']} restricted: every purpose is suppressed until lifted")


def login_name() -> str:
    """Who runs the command, for the audit log: the operating system's login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


# -- subjects --------------------------------------------------------------------------------------


@main.group()
def subject() -> None:
    """Look at one person's record."""


@subject.command("show")
@config_option
@click.argument("email")
@json_option
@handled
def subject_show(email: str, as_json: bool) -> None:
    """Effective state per purpose and channel, with the deciding rule, and the full history."""
    ledger = current_ledger()
    view = ledger.subject_view(_email(email))
    ledger.audit_read(view["subject"], "subject.viewed", actor=login_name(), source="cli")
    if as_json:
        emit_json(view)
        return
    click.echo(
        f"subject {view['subject']}  ({view['email']}, since {view['created_at']}, as of {view['as_of']})"
    )
    if view["suppressed_by_erasure"]:
        click.echo("  suppressed: this address was erased before")
    click.echo("\neffective state:")
    print_table(
        view["purposes"],
        ["purpose", "channel", "status", "basis", "suppressed", "rule", "since", "expires_at"],
    )
    click.echo("\nhistory:")
    print_table(
        view["history"],
        ["event_time", "recorded_at", "purpose", "channel", "status", "basis", "source", "actor"],
    )
    if view["objections"]:
        click.echo("\nobjections:")
        print_table(
            view["objections"],
            ["id", "purpose", "direct_marketing", "status", "raised_at", "decided_by"],
        )
    if view["crm_records"]:
        click.echo("\nCRM records:")
        print_table(
            view["crm_records"], ["connector", "object", "record_id", "linked_at", "status", "merged_into"]
        )


@subject.command("export")
@config_option
@click.argument("email")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True)
@handled
def subject_export(email: str, fmt: str, output: Path) -> None:
    """Export one person's record as JSON, CSV or XLSX."""
    from consentsync.export import write_export  # openpyxl is slow to import: only here

    if not output.parent.is_dir():
        raise InvalidInput(f"-o {output}: no folder {output.parent}: create it first, or write elsewhere")
    ledger = current_ledger()
    view = ledger.subject_view(_email(email))
    write_export(view, fmt, output)
    ledger.audit_read(
        view["subject"], "subject.exported", actor=login_name(), source="cli", what={"format": fmt}
    )
    click.echo(f"wrote {output}")


# -- audit -----------------------------------------------------------------------------------------


@main.group("audit")
def audit_group() -> None:
    """Read and verify the tamper-evident audit log."""


@audit_group.command("log")
@config_option
@click.option("--email", help="Only entries about this person (also after erasure).")
@click.option("--since", metavar="ISO8601")
@click.option(
    "--action",
    help="Only this action (consent.recorded, objection.decided, subject.viewed, subject.exported, ...).",
)
@click.option("--limit", type=click.IntRange(min=1))
@json_option
@handled
def audit_log(
    email: str | None, since: str | None, action: str | None, limit: int | None, as_json: bool
) -> None:
    """List audit entries, oldest first."""
    from consentsync import audit

    target = current_ledger()
    since_at = _time(since, "--since")
    uids = target.subject_uids_for_email(_email(email)) if email else None
    with target.engine.connect() as conn:
        if limit is not None and limit > MAX_ROW_ID:
            limit = None  # more than the log can ever hold: no limit
        items = audit.entries(conn, subject_uids=uids, since=since_at, action=action, limit=limit)
        if as_json:
            _stream_json(items)
        else:
            print_table(
                [_audit_row(entry) for entry in items],
                [
                    "seq",
                    "at",
                    "action",
                    "subject",
                    "what",
                    "change",
                    "rule",
                    "source",
                    "actor",
                    "run",
                ],
            )


def _audit_row(entry: dict[str, Any]) -> dict[str, Any]:
    what = {k: v for k, v in (entry.get("what") or {}).items() if not k.endswith("fingerprint")}
    return {
        **entry,
        "subject": (entry.get("subject") or "-")[:8],
        "what": " ".join(f"{k}={_text(v)}" for k, v in what.items() if v is not None),
        "change": f"{_brief(entry.get('old'))} -> {_brief(entry.get('new'))}",
    }


def _brief(state: Any) -> str:
    """A state as people read it: ``granted`` or ``withdrawn (suppressed)``."""
    if isinstance(state, dict) and "status" in state:
        return state["status"] + (" (suppressed)" if state.get("suppressed") else "")
    if isinstance(state, dict) and "suppressed" in state:
        return "suppressed" if state["suppressed"] else "not suppressed"
    return _text(state)


def _stream_json(items: Iterable[dict[str, Any]]) -> None:
    # The query runs (and may refuse the input) before anything is printed.
    iterator = iter(items)
    first = next(iterator, None)
    click.echo("[", nl=False)
    for index, item in enumerate(itertools.chain([first], iterator) if first is not None else ()):
        click.echo(("," if index else "") + "\n  " + json.dumps(item, ensure_ascii=False), nl=False)
    click.echo("\n]")


@audit_group.command("verify")
@config_option
@click.option(
    "--checkpoints",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Also prove the chain extends every signed checkpoint in DIR (docs/tamper-evidence.md).",
)
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The checkpoints' public key (KEY.pub; default: the configured signing key's).",
)
@json_option
@handled
def audit_verify(checkpoints: Path | None, public_key: Path | None, as_json: bool) -> None:
    """Recompute the hash chain and check that the consent events and their audit entries
    agree (and, with --checkpoints, that the chain extends every signed checkpoint); exit 1
    naming the first broken entry, event or checkpoint."""
    from consentsync.cli_audit import verify_command

    verify_command(current_config(), checkpoints, public_key, as_json)


# The CRM, console and hub commands live in their own modules; importing them registers them on ``main``.
from consentsync import cli_admin, cli_audit, cli_hub, cli_sync, cli_web  # noqa: E402, F401

if __name__ == "__main__":
    main()
