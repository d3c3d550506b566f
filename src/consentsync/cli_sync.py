"""Commands around CRMs: sync, runs, mapping checks and the sandboxes."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from consentsync import exit_codes
from consentsync.app import open_connector, open_ledger, open_sync
from consentsync.cli_base import (
    ROW_COUNT,
    ROW_ID,
    cell_text,
    check_output_folder,
    configured,
    connector_filter,
    current_config,
    emit_json,
    emit_rows,
    fail,
    handled,
    json_option,
    listening_where_asked,
    login_name,
    main,
    print_table,
    private_output,
    runs,
    scriptable,
)
from consentsync.config import ConfigError
from consentsync.domain import ACTOR_MAX, InvalidInput, check_label, iso
from consentsync.logs import configure as configure_logging
from consentsync.progress import progress_interval_option, shown_progress
from consentsync.sdk.errors import ConnectorError
from consentsync.sync.locks import RunInProgress
from consentsync.sync.runs import RUN_STATUSES

EXIT_HELD = exit_codes.HELD  # the push guard held the run's pushes: review `plan`, then `apply`
EXIT_STOPPED = exit_codes.STOPPED  # stopped cleanly (budget, rate limit); the next run resumes

#: How bad each exit code is, worst first, as a scheduler acts on them (exit_codes.py): an
#: unexpected failure, then what an admin must fix (credentials, config, held pushes), then what
#: clears by itself (the CRM out of reach, a clean stop), then quarantined records, then success.
#: ``sync --all`` exits with the worst code of its runs.
SEVERITY = (
    exit_codes.FAILED,
    exit_codes.CREDENTIALS,
    exit_codes.CONFIG,
    exit_codes.HELD,
    exit_codes.UNAVAILABLE,
    exit_codes.STOPPED,
    exit_codes.QUARANTINED,
    exit_codes.OK,
)


def worst(codes: list[int]) -> int:
    """The worst of ``codes`` by :data:`SEVERITY` (an unknown code counts as FAILED)."""
    rank = {code: index for index, code in enumerate(SEVERITY)}
    return min(codes, key=lambda code: rank.get(code, 0), default=exit_codes.OK)


@main.command()
@click.argument("connector", required=False)
@click.option("--all", "run_all", is_flag=True, help="Every configured connector in turn (exit: the worst).")
@click.option("--full", is_flag=True, help="Read everything again, not only what changed since the last run.")
@click.option(
    "--dry-run", is_flag=True, help="Print every ledger change and push it would make; change nothing."
)
@progress_interval_option
@scriptable
def sync(connector: str | None, run_all: bool, full: bool, dry_run: bool, as_json: bool) -> None:
    """Run one sync of CONNECTOR now (or, with --all, of every configured connector)."""
    if run_all == (connector is not None):
        raise InvalidInput("give a CONNECTOR or --all (not both)")
    if connector is None:
        return sync_all(full, dry_run, as_json)
    config = current_config()
    try:
        config.check_vendor(connector)
        engine = open_sync(config, connector)
    except (ConfigError, InvalidInput) as error:
        _record_unstarted(config, connector, error)
        raise
    try:
        with stopped_by_signals(engine.stop_requested), shown_progress(engine), said_once():
            report = engine.run(full=full, dry_run=dry_run)
    except RunInProgress as busy:
        fail(str(busy), EXIT_STOPPED)
    finally:
        engine.connector.close()
    _finish(report, as_json)


class _SaidByTheCommand(logging.Filter):
    """Drops the engine's log lines that say why a run failed: the command says it itself, once,
    on its one ``consentsync: error:`` line (and in the report on stdout). Logged as well, the
    reason came three times, twice on stderr (a JSON line off a terminal, which a script or
    journald then stored beside the error line). A run stopped cleanly (exit 75) prints no
    error line, so its log line stays; so does an unexpected failure's (its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        event = record.msg if isinstance(record.msg, dict) else {}
        name = event.get("event")
        if name in ("sync.failed", "sync.plan_outdated"):
            return False
        return not (name == "sync.interrupted" and event.get("status") == "failed")


@contextmanager
def said_once() -> Iterator[None]:
    """Around a run a command reports itself: the reason it failed is said once, not again in a
    log line (``_SaidByTheCommand``), unless the log level or format was chosen (--log-level,
    --log-format or their environment variables): whoever asked for log lines gets them all."""
    root = click.get_current_context().find_root()
    asked = root.meta.get("consentsync.log_format") is not None or (
        root.get_parameter_source("log_level") not in (None, click.core.ParameterSource.DEFAULT)
    )
    if asked:
        yield
        return
    quiet = _SaidByTheCommand()
    logger = logging.getLogger("consentsync.sync")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _record_unstarted(config: Any, connector: str, error: Exception) -> None:
    """A run that fails before it starts leaves a failed run row with its reason, where the
    ledger itself can be opened (the error is then raised as the command's one-line error)."""
    from consentsync.sync.runs import record_unstarted

    if not any(c.name == connector for c in config.settings.connectors):
        return  # no such connector: nothing ran, nothing to record
    try:
        ledger = open_ledger(config)
    except Exception:
        return
    record_unstarted(ledger.engine, connector, str(error), ledger.clock())
    ledger.engine.dispose()


@contextmanager
def stopped_by_signals(
    stop: threading.Event, forward: Callable[[], threading.Event | None] | None = None
) -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM ask the run to stop as the daemon's do: the page or push
    batch in hand is committed, the run is recorded as stopped, and the command exits 75. A
    second signal stops the process at once (what it left half done, the next run finds).
    ``forward``: the stop event of the run in hand, when ``stop`` is the whole command's (``sync
    --all`` runs one connector after another, each with an event of its own)."""

    def handle(signum: int, _frame: Any) -> None:
        if stop.is_set():
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        click.echo(
            f"\n{signal.Signals(signum).name}: stopping after the page or push batch in hand "
            "(again to stop at once)",
            err=True,
        )
        stop.set()
        in_hand = forward() if forward is not None else None
        if in_hand is not None:
            in_hand.set()

    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only (the CLI's tests call commands in threads)
        return
    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _finish(report: Any, as_json: bool) -> None:
    """Prints a run's report and exits with its status's code (0 when it succeeded)."""
    if as_json:
        emit_json(_report_json(report))
    else:
        _print_report(report)
    code = run_exit_code(report)
    if report.status == "failed" and report.error:
        fail(" ".join(report.error.split()), code)  # the reason, on the one line a script reads
    if code:
        sys.exit(code)


def run_exit_code(report: Any) -> int:
    """A run's result as the exit code a scheduler acts on (exit_codes.py)."""
    if report.status == "failed":
        return report.exit_code or exit_codes.FAILED
    if report.status == "stopped":
        return exit_codes.STOPPED
    if report.status == "held":
        return exit_codes.HELD
    if report.status == "succeeded" and report.counts.quarantined:
        return exit_codes.QUARANTINED
    return exit_codes.OK


def _report_json(report: Any) -> dict[str, Any]:
    return {
        "run_id": report.run_id,
        "connector": report.connector,
        "status": report.status,
        "started_at": iso(report.started_at),
        "finished_at": iso(report.finished_at),
        "counts": asdict(report.counts),
        "error": report.error,
        "note": report.note,
        "plan": {
            "ledger_changes": [asdict(c) for c in report.plan_changes],
            "pushes": [asdict(p) for p in report.plan_pushes],
        }
        if report.status == "dry_run"
        else None,
        "would_hold": report.would_hold,
    }


def _print_report(report: Any) -> None:
    c = report.counts
    if report.status == "dry_run":
        click.echo(f"dry run of {report.connector}: nothing was changed, in the ledger or in the CRM")
        click.echo(f"\nledger changes it would make ({len(report.plan_changes)}):")
        print_table(
            [asdict(p) for p in report.plan_changes],
            ["subject", "purpose", "channel", "before", "after", "rule"],
        )
        click.echo(f"\npushes it would make ({len(report.plan_pushes)}):")
        print_table(
            [{**asdict(p), "fields": p.fields} for p in report.plan_pushes],
            ["object_type", "record_id", "fields", "rule"],
        )
        if report.plan_pushes:
            click.echo(
                f"\na run now would push none of them: {report.would_hold}"
                if report.would_hold
                else "\na run now would push them (neither the connector's mode nor its guard holds them)"
            )
        return
    click.echo(f"run {report.run_id} of {report.connector}: {report.status}")
    click.echo(
        f"  read {c.read} records ({c.unchanged_records} with nothing new), quarantined {c.quarantined}\n"
        f"  evidence recorded {c.evidence_recorded} ({c.evidence_duplicates} already known), "
        f"ledger state changes {c.state_changes}, new subjects {c.subjects_created}\n"
        + (f"  consents expired (validity ended) {c.expired}\n" if c.expired else "")
        + f"  pushes to the CRM: done {c.pushed}, failed {c.push_failed}\n"
        f"  API calls {c.api_calls}" + (f" (org usage {c.api_used}/{c.api_limit})" if c.api_limit else "")
    )
    if c.pushes_held:
        click.echo(f"  pushes held: {c.pushes_held} (what they would write, per field and value:)")
        for change in c.would_push:
            click.echo(
                f"    {change['object']}.{change['field']} -> {change['new']}: {change['records']} record(s)"
            )
    if c.irreversible_held:
        click.echo(_irreversible_held_lines(report.connector, c.irreversible_held, report.run_id))
    if report.error:
        label = {"stopped": "stopped cleanly (the next run resumes from here)", "held": "held"}.get(
            report.status, "failed"
        )
        click.echo(f"  {label}: {report.error}")
    if report.note:
        click.echo(f"  {report.note}")
    if c.quarantined:
        click.echo(f"  see the quarantined records with: consentsync runs show {report.run_id}")


#: Where ops reads what a held irreversible write means and what they can do about it.
IRREVERSIBLE_DOC = 'docs/adoption.md, "Irreversible writes held"'


def _irreversible_held_lines(connector: str, writes: int, run_id: str | None = None) -> str:
    """What a run says of the writes it held back as irreversible: how many, why, and what ops can
    do. Said because the CRM keeps acting on the value it shows (HubSpot keeps mailing a contact
    a restriction did not unsubscribe) while the other CRMs and the ledger say otherwise. Counts
    only here: `runs show` lists the records by id (never a person's address)."""
    return (
        f"  irreversible writes held: {writes} (writes {connector} could never undo, such as an\n"
        "    unsubscribe: left out, as the person's state rests on a restriction (Art. 18), an expiry\n"
        "    or no consent on record, not on their own withdrawal, refusal, objection or erasure);\n"
        f"    {connector} still shows those records as before. "
        + (f"See `consentsync runs show {run_id}`; " if run_id else "")
        + f"what to do: {IRREVERSIBLE_DOC}"
    )


# -- sync --all ------------------------------------------------------------------------------------


def sync_all(full: bool, dry_run: bool, as_json: bool) -> None:
    """``consentsync sync --all``: every configured connector in turn, in the config's order,
    each run reported as ``sync`` reports it; a connector that cannot start does not stop the
    others. Exits with the worst code of the runs, by :data:`SEVERITY` (exit_codes.py)."""
    config = current_config()
    names = [c.name for c in config.settings.connectors]
    if not names:
        raise InvalidInput(f"{config.path}: no connectors configured: add them under `connectors:`")
    results: list[dict[str, Any]] = []
    # SIGTERM (cron's or systemd's timeout, a deploy) and Ctrl-C stop this command as they stop
    # `sync CONNECTOR`: the run in hand commits its page and is recorded as stopped, and the
    # connectors after it are not started (the command was asked to end, exit 75). Left to
    # their defaults, the process died mid-page and its run was found later as crashed.
    asked = threading.Event()
    in_hand: list[Any] = []
    with stopped_by_signals(asked, lambda: in_hand[0].stop_requested if in_hand else None):
        for name in names:
            results.append(_sync_one(config, name, full, dry_run, as_json, asked, in_hand))
    code = worst([r["exit_code"] for r in results])
    if as_json:
        emit_json(results)
    else:
        click.echo("")
        columns = ["connector", "status", "exit_code", "error"]
        for result in results:
            result["irreversible_held"] = (result.get("counts") or {}).get("irreversible_held")
        if any(result["irreversible_held"] for result in results):
            # Only then: a column of zeros on every run would teach ops to read past it.
            columns.insert(3, "irreversible_held")
        print_table(results, columns)
    if code:
        sys.exit(code)


def _sync_one(
    config: Any,
    name: str,
    full: bool,
    dry_run: bool,
    as_json: bool,
    asked: threading.Event,
    in_hand: list[Any],
) -> dict[str, Any]:
    """One connector's run of ``sync --all``, as the outcome its table shows. ``asked``: a stop
    signal came (the connector is then not started); ``in_hand`` holds the engine running, whose
    run that signal stops."""
    outcome: dict[str, Any] = {"connector": name}
    not_started = {
        "status": "stopped",
        "error": "not started: the command was stopped",
        "exit_code": EXIT_STOPPED,
    }
    if asked.is_set():
        outcome.update(not_started)
        return outcome
    try:
        config.check_vendor(name)
        engine = open_sync(config, name)
    except (ConfigError, InvalidInput) as error:
        _record_unstarted(config, name, error)
        outcome.update(status="failed", error=str(error), exit_code=exit_codes.CONFIG)
        click.echo(f"consentsync: error: {name}: {error}", err=True)
        return outcome
    in_hand[:] = [engine]
    try:
        if asked.is_set():  # the signal came while the connector was being opened
            outcome.update(not_started)
            return outcome
        try:
            with said_once():
                report = engine.run(full=full, dry_run=dry_run)
        except RunInProgress as busy:
            outcome.update(status="skipped", error=str(busy), exit_code=exit_codes.STOPPED)
        except ConnectorError as error:
            outcome.update(
                status="failed", error=str(error), exit_code=exit_codes.for_connector_error(error.rule)
            )
        else:
            outcome.update(_report_json(report), exit_code=run_exit_code(report))
            if not as_json:
                _print_report(report)
    finally:
        in_hand.clear()
        engine.connector.close()
    if outcome["status"] in ("failed", "skipped") and outcome.get("error"):
        click.echo(f"consentsync: error: {name}: {' '.join(str(outcome['error']).split())}", err=True)
    return outcome


# -- runs ------------------------------------------------------------------------------------------


@runs.command("list")
@click.option("--connector", help="Only this connector's runs.")
@click.option(
    "--status",
    type=click.Choice(RUN_STATUSES, case_sensitive=False),
    help="Only runs that ended so (or are running).",
)
@click.option("--limit", type=ROW_COUNT, default=20, show_default=True)
@scriptable
def runs_list(connector: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """The latest runs, newest first."""
    from consentsync.ledger.schema import sync_runs
    from consentsync.sync.runs import list_runs, settle_crashed

    ledger = open_ledger(current_config())
    connector = connector_filter("--connector", connector, ledger, sync_runs.c.connector)
    settle_crashed(ledger.engine, ledger.clock())  # a run whose process died shows as crashed
    rows = list_runs(ledger.engine, connector=connector, status=status and status.lower(), limit=limit)
    if as_json:
        emit_json(rows)
        return
    print_table(
        [
            {
                **row,
                "read": row["counts"].get("read"),
                "changes": row["counts"].get("state_changes"),
                "pushed": row["counts"].get("pushed"),
                "quarantined": row["counts"].get("quarantined"),
                "api_calls": row["counts"].get("api_calls"),
                "reason": _short(row["error"]),
            }
            for row in rows
        ],
        [
            "id",
            "connector",
            "status",
            "started_at",
            "read",
            "changes",
            "pushed",
            "quarantined",
            "api_calls",
            "reason",
        ],
    )


def _short(text: str | None, width: int = 72) -> str | None:
    """A run's reason on one table line (in full with `runs show`)."""
    if not text:
        return None
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


@runs.command("show")
@click.argument("run_id")
@scriptable
def runs_show(run_id: str, as_json: bool) -> None:
    """One run: counts, API calls, errors, what it pushed (and who approved the plan it applied)
    and quarantined records with their reasons."""
    from consentsync.sync.runs import show_run

    run = show_run(open_ledger(current_config()).engine, run_id)
    if run is None:
        raise InvalidInput(f"no sync run with id {run_id!r} (see consentsync runs list)")
    if as_json:
        emit_json(run)
        return
    click.echo(f"run {run['id']} of {run['connector']}: {run['status']}")
    click.echo(f"  started {run['started_at']}, finished {run['finished_at']}, full load: {run['full']}")
    for name, value in run["counts"].items():
        click.echo(f"  {name}: {cell_text(value)}")
    if run["error"]:
        click.echo(f"  error: {run['error']}")
    if run["counts"].get("irreversible_held"):
        click.echo(_irreversible_held_lines(run["connector"], run["counts"]["irreversible_held"]))
    if run["irreversible_held_records"]:
        click.echo("\nrecords whose irreversible writes were held:")
        records = run["irreversible_held_records"]
        print_table(
            [{**kept, "fields": ", ".join(kept["fields"] or ())} for kept in records],
            ["object", "record_id", "fields", "rule"],
        )
    if run["plan_approved_by"]:
        click.echo(f"  applied a plan approved by {run['plan_approved_by']}")
    if run["pushes"]:
        shown, done = len(run["pushes"]), run["counts"].get("pushed") or 0
        click.echo(f"\npushes ({shown}{f' of {done}' if done > shown else ''}):")
        print_table(
            [{**push, "new": cell_text(push["new"])} for push in run["pushes"]],
            ["object", "record_id", "action", "new", "rule"],
        )
    click.echo("\nquarantined records:")
    print_table(run["quarantined_records"], ["object", "record_id", "stage", "reason"])


@main.group()
def mapping() -> None:
    """Check CRM field mappings, and copy out the shipped examples."""


@mapping.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--against", "connector", metavar="CONNECTOR", help="Also check every field on the live CRM.")
@scriptable
def mapping_check(files: tuple[Path, ...], connector: str | None, as_json: bool) -> None:
    """Validate mapping FILES; with --against, check each field exists and is writable where pushed."""
    from consentsync.mapping import load_mapping
    from consentsync.sdk.objects import describe_object

    config = current_config()
    results: list[dict[str, Any]] = []
    if connector:
        config.check_vendor(connector)
    live = open_connector(config, connector)[0] if connector else None
    try:
        for path in files:
            loaded = load_mapping(path, purposes=config.purposes, channels=set(config.channels))
            problems: list[str] = []
            if live is not None:
                problems += loaded.problems_against(describe_object(live, loaded.object, source=str(path)))
            results.append(
                {"file": str(path), "object": loaded.object, "ok": not problems, "problems": problems}
            )
    finally:
        if live is not None:
            live.close()
    if as_json:
        emit_json(results)
    else:
        for result in results:
            verdict = "ok" if result["ok"] else "PROBLEMS"
            click.echo(f"{result['file']}: {result['object']}: {verdict}")
            for problem in result["problems"]:
                click.echo(f"  - {problem}")
    if any(not r["ok"] for r in results):
        fail("; ".join(p for r in results for p in r["problems"]))


@mapping.command("examples")
@click.argument("vendor", required=False)
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Folder to copy them into."
)
@click.option("--force", is_flag=True, help="Overwrite files that are there already.")
def mapping_examples(vendor: str | None, out: Path, force: bool) -> None:
    """Copy the example mappings of VENDOR (default: every installed connector's) into OUT, as
    OUT/<vendor>/<object>.yaml beside OUT/schema.json, to adapt and name in consentsync.yaml."""
    from consentsync import exit_codes
    from consentsync.mapping_examples import copy_examples

    try:
        written = copy_examples(vendor, out, force=force)
    except InvalidInput as error:
        fail(str(error), exit_codes.CONFIG)
    for path in written:
        click.echo(str(path))


class SandboxGroup(click.Group):
    """``consentsync sandbox NAME``: the sandbox commands the installed connector packages register
    under the entry-point group ``consentsync.sandboxes`` (none in the runtime install: they come
    with the ``demo`` extra). Each is loaded only when named or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from consentsync.sdk.registry import SANDBOX_GROUP, available

        return sorted(available(SANDBOX_GROUP))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from consentsync.sdk.registry import SANDBOX_GROUP, available

        entry = available(SANDBOX_GROUP).get(cmd_name)
        if entry is None:
            return None
        command = entry.load()
        if not isinstance(command, click.Command):
            raise click.ClickException(f"sandbox entry point {cmd_name!r} ({entry.value}) is no command")
        command.name = cmd_name  # the entry point's name is the command's, whatever its function
        if command.callback is not None:
            # A port in use (or a host not of this machine) is a one-line error, whatever the sandbox.
            command.callback = _port_checked(command.callback)
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        from consentsync.sdk.registry import SANDBOX_EXTRA

        if args and not args[0].startswith("-") and not self.list_commands(ctx):
            ctx.fail(f"no CRM sandbox is installed: {SANDBOX_EXTRA}")
        return super().resolve_command(ctx, args)


def _port_checked(command: Any) -> Any:
    if getattr(command, "port_checked", False):
        return command  # an entry point loads the same command each time: wrapped once

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        with listening_where_asked("--port", kwargs.get("port"), "--host", kwargs.get("host", "127.0.0.1")):
            return command(*args, **kwargs)

    run.port_checked = True  # type: ignore[attr-defined]
    return run


@main.group(cls=SandboxGroup)
def sandbox() -> None:
    """Local CRM sandboxes that speak each vendor's wire format, for demos and tests."""


@main.command()
@click.option(
    "--records",
    type=click.IntRange(min=10, max=20_000),
    default=300,
    show_default=True,
    help="Contacts in the seeded sandbox org.",
)
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the demo's config, ledger and mappings here: a new or empty folder, or one a previous "
    "demo made, whose ledger is replaced by a fresh one (default: a new temporary folder).",
)
@click.option(
    "--crms",
    help="Comma-separated CRMs (e.g. salesforce,hubspot,dynamics,superoffice,vtiger): one person in "
    "all of them; a withdrawal in the first reaches every other one.",
)
@click.option(
    "--hub",
    is_flag=True,
    help="The ledger as the hub: a web form's capture with double opt-in through a local SMTP "
    "server, the grant pushed to every CRM (--crms, default all installed), then a withdrawal on "
    "the preference page reaching them all.",
)
@handled
def demo(records: int, workdir: Path | None, crms: str | None, hub: bool) -> None:
    """Sync a seeded Salesforce sandbox with a fresh ledger, change it, sync again, report
    (with --crms: one person across several CRMs' sandboxes; with --hub: capture and preference
    centre end to end)."""
    from consentsync.demo import claim_workdir, mark_finished

    if workdir is not None:
        # A new or empty folder, or a previous demo's: never a setup's, whose config and mappings
        # the demo would overwrite and whose append-only ledger it would fill with synthetic people.
        workdir = claim_workdir(workdir, say=click.echo)
    if hub:
        from consentsync.demo_hub import run_hub_demo

        chosen = [name.strip() for name in crms.split(",") if name.strip()] if crms else None
        run_hub_demo(chosen, records=min(records, 50), workdir=workdir, say=click.echo)
    elif crms:
        from consentsync.demo_crms import run_crms_demo

        vendors = [name.strip() for name in crms.split(",") if name.strip()]
        run_crms_demo(vendors, records=min(records, 50), workdir=workdir, say=click.echo)
    else:
        from consentsync.demo import run_demo

        run_demo(records=records, workdir=workdir, say=click.echo)
    if workdir is not None:
        mark_finished(workdir)


@main.command("plan")
@click.argument("connector")
@click.option("--full", is_flag=True, help="Read everything again first, not only what changed.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the plan here (JSON)."
)
@scriptable
def plan_command(connector: str, full: bool, output: Path | None, as_json: bool) -> None:
    """What the next run of CONNECTOR would push, per CRM record: field, old -> new, and the rule
    that decided it. Nothing is changed; approve the plan with `consentsync apply PLAN`."""
    from consentsync.sync.plan import NOT_KEPT

    if output is not None:
        check_output_folder(output)
    config = current_config()
    config.check_vendor(connector)
    engine = open_sync(config, connector)
    try:
        # A stop ends the plan's read cleanly (its transaction rolled back, its spool removed):
        # "no plan: stopped", exit 75.
        with stopped_by_signals(engine.stop_requested), said_once():
            report = engine.run(full=full, dry_run=True)
    except RunInProgress as busy:
        fail(str(busy), EXIT_STOPPED)
    finally:
        engine.connector.close()
    if report.plan is None:
        # Why it could not be made decides what to do: the exit code a run would have (69 for an
        # unreachable CRM, 77 for refused credentials, 75 when stopped), 1 only when nothing says.
        reason = " ".join(str(report.error or report.status).split())
        fail(f"no plan: {reason}", run_exit_code(report) or exit_codes.FAILED)
    document = report.plan.to_json()
    if output is not None:
        try:
            # A plan names people and their records: their owner's to read. Made again and again
            # (plan, review, apply), it replaces the one before, a symlink included (never
            # written through).
            with private_output(output, force=True) as aside:
                aside.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as error:  # a folder removed meanwhile, no permission, a full disk
            raise InvalidInput(f"-o {output}: {error.strerror}") from None
    if as_json:
        emit_json(document)
        return
    click.echo(
        f"plan for {connector}: {document['records']} record(s) to push to "
        f"(mode {engine.options.mode}); digest {document['digest'][:16]}"
    )
    print_table(document["changes"], ["object", "field", "new", "records"])
    click.echo("")
    print_table(
        [
            {
                "object": item["object_type"],
                "record": item["record_id"],
                "person": item["who"],
                "change": "delete the record"
                if item["action"] == "delete"
                else ", ".join(
                    f"{k}: {repr(item['old'][k]) if k in item['old'] else NOT_KEPT} -> {v!r}"
                    for k, v in item["new"].items()
                ),
                "rule": item["rule"],
            }
            for item in document["items"]
        ],
        ["object", "record", "person", "change", "rule"],
    )
    if output is not None:
        click.echo(f"\nwritten to {output}; push exactly this with: consentsync apply {output}")


@main.command("apply")
@click.argument("plan_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="PLAN")
@click.option("--actor", help="Who approved the plan (kept in the audit log; default: your login name).")
@scriptable
def apply_command(plan_file: Path, actor: str | None, as_json: bool) -> None:
    """Push exactly the plan in PLAN (written by `consentsync plan -o`), whatever the connector's
    mode and push guard; nothing is pushed when the ledger or the CRM changed in a way that alters
    the plan. Audited with the plan's digest."""
    from consentsync.sync.plan import Plan

    actor = login_name() if actor is None else actor  # who approved it is part of the record
    check_label(actor, "--actor", ACTOR_MAX, required=True)  # kept in the audit chain: one line
    data = _read_plan_file(plan_file)
    plan = Plan.from_json(data)
    if data.get("digest") not in (None, plan.digest):
        raise InvalidInput(f"{plan_file}: the plan was edited after it was made (its digest does not match)")
    config = current_config()
    config.check_vendor(plan.connector)
    engine = open_sync(config, plan.connector)
    engine.plan_actor = actor
    try:
        # A stop (SIGTERM, Ctrl-C) lets the push batch in hand be acknowledged and ends the run
        # as stopped (exit 75, "apply the same plan again"): by default the process died between
        # a write and the record of its answer.
        with stopped_by_signals(engine.stop_requested), said_once():
            report = engine.run(apply_plan=plan)
    except RunInProgress as busy:
        fail(str(busy), EXIT_STOPPED)
    finally:
        engine.connector.close()
    _finish(report, as_json)


#: What `apply` takes from a plan file, by field, as `consentsync plan -o` writes it: whether it
#: must be there, the JSON types it may hold, and what the error says is accepted. Other fields
#: (``records``, ``changes``: what `plan` shows) are read by nobody and may be anything.
_PLAN_FIELDS: dict[str, tuple[bool, tuple[type, ...], str]] = {
    "connector": (True, (str,), "a connector's name"),
    "digest": (False, (str,), "a string (the plan's digest)"),
    "items": (True, (list,), "a list of the records to push to"),
}
_PLAN_ITEM_FIELDS: dict[str, tuple[bool, tuple[type, ...], str]] = {
    "object_type": (True, (str,), "the CRM object's name"),
    "record_id": (True, (str,), "the CRM record's id"),
    "who": (False, (str,), "the person's masked address"),
    "action": (False, (str,), '"update" or "delete"'),
    "old": (False, (dict, type(None)), "an object of field values"),
    "new": (False, (dict, type(None)), "an object of field values"),
    "rule": (False, (str, type(None)), "a rule's name or null"),
}
_PLAN_ACTIONS = ("update", "delete")
_JSON_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "true or false"}


def _json_type(value: Any) -> str:
    """What a JSON value is, as the error names it: never the value itself (a hand-edited plan
    may hold a person's address where a field name was)."""
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _check_plan_fields(
    plan_file: Path, where: str, value: Any, fields: dict[str, tuple[bool, tuple[type, ...], str]]
) -> None:
    """``value`` (at JSON path ``where``) is an object whose ``fields`` are there when needed and
    of a type they may hold; the first that is not, named by its JSON path, is a one-line error."""
    for name, (required, types, accepted) in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in value:
            if required:
                raise _bad_plan(plan_file, path, "missing", accepted)
            continue
        field_value = value[name]
        # bool is an int in Python, and no field takes a number: checked by exact type.
        if type(field_value) not in types:
            raise _bad_plan(plan_file, path, f"is {_json_type(field_value)}", accepted)
        if required and isinstance(field_value, str) and not field_value.strip():
            raise _bad_plan(plan_file, path, "is empty", accepted)


def _bad_plan(plan_file: Path, path: str, problem: str, accepted: str) -> InvalidInput:
    return InvalidInput(
        f"{plan_file}: {path}: {problem}; accepted: {accepted} (a plan written by `consentsync plan -o`)"
    )


def _read_plan_file(plan_file: Path) -> dict[str, Any]:
    """The plan file's JSON, checked field by field before anything is opened: a damaged or
    hand-edited file is refused on one line naming the field (its JSON path, such as
    ``items[3].object_type``) and what is accepted, before the ledger or the CRM is touched."""
    try:
        text = plan_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(
            f"{plan_file}: not UTF-8 text; accepted: a plan written by `consentsync plan -o`"
        ) from None
    except OSError as error:  # removed meanwhile, no permission to read it
        raise InvalidInput(f"{plan_file}: {error.strerror}") from None
    if not text.strip():
        raise InvalidInput(
            f"{plan_file}: the file is empty; accepted: a plan written by `consentsync plan -o`"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        # Where the parser stopped (line, column), never the text there (it may name a person).
        raise InvalidInput(
            f"{plan_file}: not JSON (line {error.lineno} column {error.colno}); "
            "accepted: a plan written by `consentsync plan -o`"
        ) from None
    except RecursionError:  # thousands of nested brackets: no plan nests deeper than three
        raise InvalidInput(
            f"{plan_file}: not a plan (nested too deeply); accepted: a plan written by `consentsync plan -o`"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInput(
            f"{plan_file}: the file holds {_json_type(data)}; accepted: an object with `connector` "
            "and `items` (a plan written by `consentsync plan -o`)"
        )
    _check_plan_fields(plan_file, "", data, _PLAN_FIELDS)
    for index, item in enumerate(data["items"]):
        where = f"items[{index}]"
        if not isinstance(item, dict):
            raise _bad_plan(plan_file, where, f"is {_json_type(item)}", "an object for one record")
        _check_plan_fields(plan_file, where, item, _PLAN_ITEM_FIELDS)
        if item.get("action", "update") not in _PLAN_ACTIONS:
            raise _bad_plan(plan_file, f"{where}.action", "is not an action", _PLAN_ITEM_FIELDS["action"][2])
    return data


@main.command("connectors")
@json_option
@handled
def connectors(as_json: bool) -> None:
    """The installed connector plugins and what each does with changes committed late (its
    look-back window), records deleted or merged in the CRM, and erasures, and how many write
    calls it makes side by side."""
    from consentsync.sdk import registry

    rows = [registry.load(name).capabilities() for name in sorted(registry.available())]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        row["lookback"] = f"{row['lookback_seconds'] / 60:g} min"
        row["erasure_actions"] = ", ".join(row["erasure_actions"])
    print_table(
        rows,
        ["vendor", "lookback", "deletions", "merges", "erasure_actions", "read_by_id", "write_concurrency"],
    )


@main.group()
def outbox() -> None:
    """Pushes waiting to reach a CRM, and the dead-lettered ones."""


@outbox.command("list")
@click.option("--dead", is_flag=True, help="Dead-lettered rows instead of pending ones.")
@click.option("--connector", help="Only this connector's rows.")
@click.option("--limit", type=ROW_COUNT, default=100, show_default=True)
@scriptable
def outbox_list(dead: bool, connector: str | None, limit: int, as_json: bool) -> None:
    """Pending (or, with --dead, dead-lettered) pushes, oldest first."""
    from consentsync.ledger.schema import outbox as outbox_rows
    from consentsync.sync.outbox import list_rows

    ledger = open_ledger(current_config())
    connector = connector_filter("--connector", connector, ledger, outbox_rows.c.connector)
    rows = list_rows(ledger.engine, dead=dead, connector=connector, limit=limit)
    emit_rows(
        rows,
        ["id", "connector", "object", "record_id", "fields", "rule", "attempts", "last_error", "created_at"],
        as_json,
    )


@outbox.command("retry")
@click.argument("ids", nargs=-1, type=ROW_ID, metavar="[ID]...")
@click.option("--all", "retry_all", is_flag=True, help="Every dead-lettered row.")
@click.option("--actor", help="Who decided to retry (kept in the audit log; default: your login name).")
@configured
def outbox_retry(ids: tuple[int, ...], retry_all: bool, actor: str | None) -> None:
    """Put dead-lettered pushes back in the queue for the next run."""
    from consentsync.sync.outbox import retry

    if bool(ids) == retry_all:
        raise InvalidInput("give outbox row ids or --all (not both)")
    actor = login_name() if actor is None else actor
    check_label(actor, "--actor", ACTOR_MAX, required=True)  # kept in the audit chain: one line
    ledger = open_ledger(current_config())
    count = retry(ledger.engine, None if retry_all else list(ids), actor=actor, now=ledger.clock())
    click.echo(f"{count} row(s) back in the queue; the next run of their connector pushes them")


@main.command()
@scriptable
def status(as_json: bool) -> None:
    """Per connector: last run, next run, outbox depth, dead letters, quarantine, API budget, alerts."""
    from datetime import timedelta

    from consentsync.sync.status import connector_status

    config = current_config()
    hours = config.settings.policy.late_suppression_hours
    engine = open_ledger(config).engine
    rows = connector_status(config, engine, late_after=timedelta(hours=hours))
    for row in rows:
        row["irreversible_held"] = _latest_irreversible_hold(engine, row["connector"])
    problems = [problem for row in rows for problem in row["problems"]]
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo("no connectors configured (add them under `connectors:` in the config)")
    else:
        _print_status(rows, hours)
    if problems:  # what status reports cannot run as configured: an error, with the first reason
        more = f" (and {len(problems) - 1} more problem(s) above)" if len(problems) > 1 else ""
        fail(problems[0] + more, exit_codes.CONFIG)


def _latest_irreversible_hold(engine: Any, connector: str) -> dict[str, Any] | None:
    """The latest run of ``connector`` that held writes back as irreversible: its id, start and
    how many writes. Not only the last run's: a run counts a held write once, when it decides on
    the record's new state (a restriction); the runs after it pass over the unchanged record and
    count nothing, while the CRM keeps showing the old value. None when no run held any."""
    from sqlalchemy import select

    from consentsync.ledger.schema import sync_runs

    # Counts are canonical JSON (sorted keys, no spaces; `irreversible_held` is never the last
    # key): the LIKEs keep the scan to the runs that held some; the count is checked in Python.
    query = (
        select(sync_runs.c.id, sync_runs.c.started_at, sync_runs.c.counts)
        .where(
            sync_runs.c.connector == connector,
            sync_runs.c.counts.like('%"irreversible_held":%'),
            sync_runs.c.counts.not_like('%"irreversible_held":0,%'),
        )
        .order_by(sync_runs.c.started_at.desc(), sync_runs.c.id)
        .limit(20)
    )
    with engine.connect() as conn:
        for row in conn.execute(query):
            writes = json.loads(row.counts).get("irreversible_held") or 0
            if writes > 0:
                return {"run": row.id, "started_at": iso(row.started_at), "writes": writes}
    return None


def _print_status(rows: list[dict[str, Any]], hours: float) -> None:
    daemons = rows[0]["daemon"]
    if daemons:
        click.echo("daemon     " + ", ".join(f"{d['holder']} (since {d['since']})" for d in daemons))
    else:
        click.echo("daemon     no daemon running (no next runs: start one with `consentsync run`)")
    for row in rows:
        last = row["last_run"]
        name = row["connector"]
        click.echo(f"{name} ({row['vendor']})")
        for problem in row["problems"]:
            click.echo(f"  ERROR      {problem}")
        if row["mode"] == "observe":
            # Said, because "pending" reads as "on its way": an observing connector's runs push
            # nothing, so what waits reaches the CRM only through an approved plan.
            click.echo(
                "  mode       observe: runs push nothing to this CRM; what waits goes only with an "
                f"approved plan (`consentsync plan {name} -o plan.json`, then `consentsync apply "
                "plan.json`) or in mode suppress_only or two_way"
            )
        else:
            click.echo(f"  mode       {row['mode']}")
        if last:
            click.echo(
                f"  last run   {last['status']} at {last['started_at']}: read {last['read']}, "
                f"changes {last['ledger_changes']}, pushed {last['pushed']}"
                + (f"; {last['error']}" if last["error"] else "")
            )
        else:
            click.echo("  last run   never")
        failing, success = row.get("failing"), row.get("last_success")
        if failing:
            click.echo(
                f"  ALERT      failing since {failing['since']}: {failing['runs']} run(s) in a row; "
                + (
                    f"last success {failing['last_success_at']}"
                    if failing["last_success_at"]
                    else "never succeeded"
                )
            )
        elif success:
            click.echo(f"  last success {success['finished_at']} (run {success['id']})")
        click.echo(f"  next run   {row['next_run'] or 'none: no daemon running'}")
        budget = row["api_budget"]
        click.echo(
            f"  outbox     {row['outbox_pending']} pending, {row['dead_letters']} dead-lettered; "
            f"quarantined {row['quarantined_open']}"
        )
        click.echo(
            f"  API budget {budget['left']} of {budget['limit']} calls left (as of {budget['as_of']})"
            if budget
            else "  API budget not reported by this CRM"
            if row.get("api_budget_status") == "not_reported"
            else "  API budget not known yet: no run has reached this CRM"
        )
        if last and last["status"] == "held":
            click.echo(f"  ALERT      {last['error']}")
        hold = row.get("irreversible_held")
        if hold:
            click.echo(
                f"  held       {hold['writes']} irreversible write(s) left out by run {hold['run']} "
                f"(at {hold['started_at']}): {name} kept the value those records showed then, as a "
                "restriction (Art. 18), an expiry or no consent on record never unsubscribes or deletes; "
                f"what to do: {IRREVERSIBLE_DOC}"
            )
        if row["erasures_pending"]:
            # Art. 17(2): whoever reads this must not be told the CRM will hear of an erasure
            # that no scheduled run will send.
            when = (
                f"no run pushes them: they wait for an approved plan, `consentsync plan {name}`"
                if row["pushes_wait_for"] == "plan"
                else "the next run pushes them"
            )
            click.echo(
                f"  erasures   {row['erasures_pending']} person(s) erased in the ledger, "
                f"not yet passed on to this CRM ({when})"
            )
        if row.get("dead_suppressions"):
            click.echo(
                f"  ALERT      {row['dead_suppressions']} suppression(s) dead-lettered: this CRM will not "
                f"get them unless retried (`consentsync outbox list --dead --connector {row['connector']}`, "
                "then `consentsync outbox retry ID`)"
            )
        for late in row["late_suppressions"]:
            click.echo(
                f"  ALERT      suppression for {late['object']} {late['record_id']} pending for "
                f"{late['age_seconds'] / 3600:.1f} h (over {hours} h)"
            )


@main.command("run")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, envvar="CONSENTSYNC_METRICS_HOST")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=9181,
    show_default=True,
    envvar="CONSENTSYNC_METRICS_PORT",
    help="/metrics, /healthz and /readyz (0 picks a free port).",
)
@click.option("--no-metrics", is_flag=True, help="Do not serve /metrics and the health checks.")
@click.option(
    "--unready-after",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    envvar="CONSENTSYNC_UNREADY_AFTER",
    help="/readyz is not ready while a connector's last this many runs all failed.",
)
@click.option("--web-host", default="127.0.0.1", show_default=True, envvar="CONSENTSYNC_WEB_HOST")
@click.option(
    "--web-port",
    type=click.IntRange(0, 65535),
    envvar="CONSENTSYNC_WEB_PORT",
    help="Also serve the ops console on this port (0 picks a free one).",
)
@configured
def run_daemon(
    metrics_host: str,
    metrics_port: int,
    no_metrics: bool,
    unready_after: int,
    web_host: str,
    web_port: int | None,
) -> None:
    """Run every configured connector on its schedule until SIGTERM or Ctrl-C. Logs go to
    stdout, one JSON object a line unless --log-format console."""
    from datetime import timedelta

    if web_port is not None:
        from consentsync.extras import require

        require("console", "--web-port (the ops console)")
        from consentsync.web.security import web_secret

        web_secret()  # a CSRF key too short: refused before the daemon starts anything

    import structlog

    from consentsync.cli_base import check_host
    from consentsync.observability import HealthServer, Metrics
    from consentsync.sync.daemon import Daemon

    root = click.get_current_context().find_root()
    quieter = root.get_parameter_source("log_level") is not click.core.ParameterSource.DEFAULT
    configure_logging(
        root.params["log_level"] if quieter else "INFO",  # a service says what it does unless told
        fmt=root.meta.get("consentsync.log_format"),
        stream="stdout",
    )
    log = structlog.get_logger("consentsync.daemon")
    if web_port is not None and not no_metrics and web_port == metrics_port != 0:
        raise InvalidInput(
            f"--web-port {web_port} is the --metrics-port too: "
            "give each its own port (or 0 to pick a free one)"
        )
    # Hosts that resolve to no address are refused before the ledger opens or anything listens.
    if not no_metrics:
        check_host("--metrics-host", metrics_host)
    if web_port is not None:
        check_host("--web-host", web_host)
    config = current_config()
    if not config.settings.connectors:
        raise InvalidInput(f"{config.path}: no connectors configured: add them under `connectors:`")
    ledger = open_ledger(config)
    metrics = Metrics(ledger.engine)
    metrics.watch(c.name for c in config.settings.connectors)
    server = (
        None
        if no_metrics
        else HealthServer(
            metrics, ledger.engine, host=metrics_host, port=metrics_port, failure_threshold=unready_after
        )
    )
    hours = config.settings.policy.late_suppression_hours
    daemon = Daemon(
        config,
        ledger,
        on_report=metrics.observe_run,
        on_crashed=metrics.observe_crashed,
        late_suppression_age=timedelta(hours=hours),
    )
    daemon.catch_signals()  # a stop from here on, even before the first run, is a clean one
    console = None
    if web_port is not None:
        from consentsync.web.server import WebServer, build

        # Bound (not yet served) before the metrics server starts: a bad --web-host or --web-port
        # is refused before anything is served.
        with listening_where_asked("--web-port", web_port, "--web-host", web_host):
            console = WebServer(build(config, ledger, host=web_host), host=web_host, port=web_port)
    if server is not None:
        with listening_where_asked("--metrics-port", metrics_port, "--metrics-host", metrics_host):
            server.start()
        log.info("daemon.metrics", url=f"{server.url}/metrics", health=["/healthz", "/readyz"])
    if console is not None:
        console.start()
        log.info("daemon.console", url=f"{console.url}/")
    try:
        if not daemon.signalled:  # stopped while starting: no run is begun only to be stopped
            daemon.start()
            daemon.serve_until_signalled()
    finally:
        if server is not None:
            server.stop()
        if console is not None:
            console.stop()
