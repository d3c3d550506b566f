"""`consentsync status` tells the operator and the DPO whether what waits in the outbox (an
erasure above all, Art. 17(2)) will reach the CRM with the next run, or only with an approved plan:
an observing connector's runs push nothing, and the last run held by the push guard means the
next is held too. Against the Salesforce sandbox, through the real commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox

from tests.conftest import Cli
from tests.integration.test_cli_sync import connect_sandbox


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _set(config_path: Path, **values: Any) -> None:
    data = yaml.safe_load(config_path.read_text())
    data["connectors"][0].update(values)
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _erase_a_contact(cli: Cli, sandbox: SalesforceSandbox) -> None:
    email = next(r["Email"] for r in sandbox.org.records("Contact") if r.get("Email"))
    cli.ok("erase", "--email", email, "--reason", "Art. 17 request", "--actor", "Jo DPO", "--yes")


def test_an_observing_connectors_erasures_are_not_said_to_go_with_the_next_run(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(60, seed=3)
        connect_sandbox(sandbox, config_path, monkeypatch)
        _set(config_path, mode="observe")  # a newly connected CRM, as adoption.md says
        cli.ok("sync", "sf")
        _erase_a_contact(cli, sandbox)
        cli.ok("sync", "sf")  # observing: the erasure's push is queued, not sent

        row = cli.json("status")[0]
        assert row["erasures_pending"] == 1 and row["outbox_pending"] >= 1
        assert row["mode"] == "observe" and row["pushes_wait_for"] == "plan"
        shown = cli.ok("status").stdout
        erasures = next(line for line in shown.splitlines() if line.strip().startswith("erasures"))
        assert "the next run pushes them" not in erasures
        assert "approved plan" in erasures and "consentsync plan sf" in erasures
        assert "mode       observe: runs push nothing" in shown

        # Once the connector pushes, the next run does send it, and status says so.
        _set(config_path, mode="suppress_only")
        row = cli.json("status")[0]
        assert row["mode"] == "suppress_only" and row["pushes_wait_for"] is None
        assert "(the next run pushes them)" in cli.ok("status").stdout
        cli.ok("sync", "sf")
        assert cli.json("status")[0]["erasures_pending"] == 0


def test_erasures_behind_a_held_run_wait_for_a_plan(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(60, seed=3)
        connect_sandbox(sandbox, config_path, monkeypatch)
        # A guard that holds any push: the run ends held (exit 3), and so would the next.
        _set(config_path, mode="two_way", push_guard={"max_records": 0, "max_share": None})
        cli("sync", "sf")
        _erase_a_contact(cli, sandbox)
        held = cli("sync", "sf")
        assert held.exit_code == 3, held.output
        row = cli.json("status")[0]
        assert row["last_run"]["status"] == "held" and row["erasures_pending"] == 1
        assert row["pushes_wait_for"] == "plan"
        assert "the next run pushes them" not in cli.ok("status").stdout
