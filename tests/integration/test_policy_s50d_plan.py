"""`consentsync apply` of a plan that went through already (a script re-running it after a
timeout, a retried job) is no failure: it exits 0, names the run that applied it and pushes
nothing again (docs/admin-commands.md); a stale plan still exits 65 (test_operator_probe_s48).
Real processes against the Salesforce sandbox, as an operator's script runs them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from consentsync import exit_codes
from tests.integration.test_operator_probe_s48 import consentsync, env  # noqa: F401 (fixture)


@pytest.fixture
def org() -> Iterator[object]:
    from consentsync_salesforce.sandbox import SalesforceSandbox

    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(40, seed=11)
        yield sandbox


def _crm(org: object) -> str:
    return json.dumps(
        {kind: sorted(org.org.records(kind), key=lambda r: r["Id"]) for kind in ("Contact", "Lead")},  # type: ignore[attr-defined]
        sort_keys=True,
        default=str,
    )


def test_applying_a_plan_again_exits_0_and_pushes_nothing_again(
    env: dict[str, str],  # noqa: F811
    org: object,
    tmp_path: Path,
) -> None:
    from consentsync_salesforce.sandbox import SalesforceSandbox

    from consentsync.demo import find_mappings
    from tests.integration.crash_config import write_config

    assert isinstance(org, SalesforceSandbox)
    env["CRASHTEST_SF_SECRET"] = org.credentials.client_secret
    path = write_config(tmp_path / "cfg", org, find_mappings())
    data = yaml.safe_load(path.read_text())
    data["connectors"][0]["mode"] = "observe"  # only an applied plan pushes
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env["CONSENTSYNC_CONFIG"] = str(path)
    assert consentsync(env, "init").returncode == 0
    assert consentsync(env, "sync", "sf", "--full").returncode == 0
    plan_path = tmp_path / "plan.json"
    planned = consentsync(env, "plan", "sf", "-o", str(plan_path), "--json")
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["items"], "the seeded org needs pushes for this test"

    first = consentsync(env, "apply", str(plan_path), "--actor", "dpo", "--json")
    assert first.returncode == 0, first.stderr
    first_run = json.loads(first.stdout)
    assert first_run["counts"]["pushed"] > 0
    crm_after_first = _crm(org)

    again = consentsync(env, "apply", str(plan_path), "--actor", "dpo", "--json")
    assert again.returncode == exit_codes.OK, (again.returncode, again.stderr)
    report = json.loads(again.stdout)
    assert report["status"] == "succeeded" and report["error"] is None
    assert "already applied" in report["note"] and first_run["run_id"] in report["note"]
    assert report["counts"]["pushed"] == 0
    assert _crm(org) == crm_after_first  # nothing pushed again
    assert "Traceback" not in again.stderr

    # Told in words too, without --json.
    words = consentsync(env, "apply", str(plan_path), "--actor", "dpo")
    assert words.returncode == 0 and f"already applied, by run {first_run['run_id']}" in words.stdout
