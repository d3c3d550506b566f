"""`runs list --status` lists only the runs that ended so, and refuses a status no run can have,
naming the accepted ones; the CLI, the console and the API accept the same statuses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import get_args

from consentsync import exit_codes
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.sync.runs import RUN_STATUSES, record_unstarted
from consentsync.web import api, console
from tests.conftest import Cli, one_line_error


def test_runs_list_filters_by_status(cli: Cli) -> None:
    ledger = open_ledger(load_config(cli.config_path))
    now = datetime(2026, 12, 1, tzinfo=UTC)
    failed = record_unstarted(ledger.engine, "sf", "missing secret", now)
    skipped = record_unstarted(
        ledger.engine, "sf", "another run holds it", now, status="skipped", kind="skipped"
    )
    assert [run["id"] for run in cli.json("runs", "list", "--status", "failed")] == [failed]
    assert [run["id"] for run in cli.json("runs", "list", "--status", "SKIPPED")] == [skipped]
    assert cli.json("runs", "list", "--status", "crashed") == []
    assert {run["id"] for run in cli.json("runs", "list")} == {failed, skipped}
    refused = cli("runs", "list", "--status", "broken")
    one_line_error(refused, exit_codes.CONFIG, "--status", "'broken'", "succeeded", "crashed")


def test_the_cli_console_and_api_accept_the_same_run_statuses() -> None:
    assert get_args(api.RunStatus) == RUN_STATUSES
    assert console.RUN_STATUSES is RUN_STATUSES


def test_runs_list_does_not_offer_the_status_of_a_dry_run(cli: Cli) -> None:
    """A dry run changes nothing and leaves no run row: offered, `--status dry_run` listed
    nothing for ever (session 63 newcomer check). Refused, naming what is accepted."""
    refused = cli("runs", "list", "--status", "dry_run")
    one_line_error(refused, exit_codes.CONFIG, "--status", "'dry_run'", "succeeded")
