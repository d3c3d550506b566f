"""A Salesforce ``budget.per_run`` below what every run spends on its reads (1 login, then a Get
Updated and a first query page per mapped object) stopped every run on its budget, exit 75
("retry later"), run after run for good, the daemon looping on it. It is refused as the admin's
to fix: one line naming the setting, the value and the minimum, exit 2, before any call to
Salesforce, nothing read or written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import create_engine, func, select

from consentsync import exit_codes
from consentsync.config import load_config
from consentsync.ledger.schema import crm_links, sync_cursors, sync_runs
from tests.conftest import SQLITE_ONLY, Cli
from tests.integration.test_cli_sync import OBJECTS, connect_sandbox


@pytest.fixture
def sf(cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceSandbox]:
    """A seeded org, configured as connector `sf` with the four shipped mappings."""
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(20, seed=61)
        connect_sandbox(sandbox, config_path, monkeypatch)
        yield sandbox


def _configure(config_path: Path, per_run: int, mappings: int | None = None) -> None:
    data = yaml.safe_load(config_path.read_text())
    connector = data["connectors"][0]
    connector["settings"]["budget"] = {"per_run": per_run}
    if mappings is not None:
        connector["mappings"] = connector["mappings"][:mappings]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _ledger_rows(config_path: Path) -> tuple[int, int, list[str]]:
    """Read positions stored for the mapped objects, records linked, and the statuses of the
    runs recorded."""
    engine = create_engine(load_config(config_path).ledger_url)
    try:
        with engine.connect() as conn:
            cursors = conn.execute(
                select(func.count()).select_from(sync_cursors).where(sync_cursors.c.object_type.in_(OBJECTS))
            ).scalar_one()
            links = conn.execute(select(func.count()).select_from(crm_links)).scalar_one()
            runs = list(conn.execute(select(sync_runs.c.status)).scalars())
    finally:
        engine.dispose()
    return cursors, links, runs


@SQLITE_ONLY  # the connector's rule; the ledger's SQL is the same run recording on PostgreSQL
@pytest.mark.parametrize(("mappings", "per_run", "floor"), [(None, 8, 9), (1, 2, 3)])
def test_a_budget_below_every_runs_reads_is_refused_before_any_call(
    cli: Cli,
    config_path: Path,
    sf: SalesforceSandbox,
    mappings: int | None,
    per_run: int,
    floor: int,
) -> None:
    _configure(config_path, per_run, mappings)
    before = {record["Id"]: dict(record) for record in sf.org.records("Contact")}
    for _ in range(2):  # refused every time, never "stopped, retry later"
        result = cli("sync", "sf")
        assert result.exit_code == exit_codes.CONFIG, (result.exit_code, result.output, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
        assert f"budget.per_run {per_run}" in lines[0] and f"the {floor} API calls" in lines[0], lines
        assert f"above {floor}" in lines[0], lines
    assert sum(sf.calls.values()) == 0, dict(sf.calls)  # not even the login
    assert {record["Id"]: dict(record) for record in sf.org.records("Contact")} == before
    cursors, links, runs = _ledger_rows(config_path)
    assert (cursors, links) == (0, 0)
    assert runs == ["failed", "failed"]


@SQLITE_ONLY
def test_the_refusal_comes_as_json_too_with_the_runs_report(
    cli: Cli, config_path: Path, sf: SalesforceSandbox
) -> None:
    _configure(config_path, 5)
    result = cli("sync", "sf", "--json")
    assert result.exit_code == exit_codes.CONFIG, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "failed" and "budget.per_run 5" in report["error"], report
    assert report["counts"]["api_calls"] == 0


@SQLITE_ONLY
def test_a_budget_above_the_reads_gets_runs_through(
    cli: Cli, config_path: Path, sf: SalesforceSandbox
) -> None:
    """10 calls, 4 mapped objects: the reads (9) and one write call a run; the hour's first run
    (4 describes more) stops on its budget, the next ones push what is owed, a call a run."""
    _configure(config_path, 10)
    codes = [cli("sync", "sf").exit_code for _ in range(8)]
    assert exit_codes.CONFIG not in codes, codes
    assert codes[0] == exit_codes.STOPPED and codes[-1] in (exit_codes.OK, exit_codes.QUARANTINED), codes
