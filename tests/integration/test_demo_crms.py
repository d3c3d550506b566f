"""`consentsync demo --crms`: one person in every CRM whose connector registers a sandbox harness;
a withdrawal in the first reaches all the others, and the audit log shows each push."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from consentsync.cli import main
from consentsync.demo_crms import PERSON, run_crms_demo
from consentsync.sdk.harness import available_harnesses

VENDORS = sorted(available_harnesses())


@pytest.mark.skipif(len(VENDORS) < 2, reason="fewer than two connectors register a sandbox harness")
def test_a_withdrawal_in_one_crm_reaches_every_other_one(tmp_path: Path) -> None:
    lines: list[str] = []
    summary = run_crms_demo(VENDORS, records=5, workdir=tmp_path, say=lines.append)

    assert summary["ledger_state"]["status"] == "withdrawn"
    assert summary["ledger_state"]["suppressed"] is True
    assert summary["opted_out"] == {vendor: True for vendor in VENDORS}
    pushed_by = {push["connector"] for push in summary["pushes"]}
    assert pushed_by == {f"{vendor}-demo" for vendor in VENDORS[1:]}
    assert all(run["status"] == "succeeded" for run in summary["crms"].values())
    # Credentials are named in the config file, their values live in the environment.
    assert "${CONSENTSYNC_DEMO_" in (tmp_path / "consentsync.yaml").read_text()
    assert any(PERSON in line and "unsubscribes" in line for line in lines)


def test_unknown_crm_is_a_one_line_error_naming_the_known_ones() -> None:
    result = CliRunner().invoke(main, ["demo", "--crms", "salesforce,nosuchcrm"])
    assert result.exit_code == 2
    assert "nosuchcrm" in result.output
    assert "salesforce" in result.output
