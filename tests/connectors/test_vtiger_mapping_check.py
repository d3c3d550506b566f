"""`consentsync mapping check --against` on a Vtiger install that lacks a mapped module: Vtiger
answers describe with ACCESS_DENIED "... denied for name : Leads", and the check names the module
and what to do, on one line, instead of a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from consentsync_vtiger.sandbox.harness import VtigerHarness
from consentsync_vtiger.sandbox.server import VtigerCrm, VtigerSandbox

from consentsync.cli import main
from consentsync.sdk.harness import write_sync_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def harness() -> Iterator[VtigerHarness]:
    made = VtigerHarness()
    made.sandbox = VtigerSandbox(VtigerCrm(privacy_guard=False, missing_modules=("Leads",)))
    made.start()
    yield made
    made.stop()


def _check(config: Path, mapping: str) -> object:
    return CliRunner().invoke(
        main, ["--config", str(config), "mapping", "check", mapping, "--against", "vtiger-main"]
    )


def test_the_contacts_mapping_checks_against_the_sandbox(harness: VtigerHarness, tmp_path: Path) -> None:
    config = write_sync_config(harness, tmp_path, name="vtiger-main")
    result = _check(config, str(ROOT / "connectors/consentsync_vtiger/mappings/contacts.yaml"))
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "Contacts: ok" in result.output  # type: ignore[attr-defined]


def test_a_module_the_install_lacks_is_one_line_and_exit_code_2(
    harness: VtigerHarness, tmp_path: Path
) -> None:
    config = write_sync_config(harness, tmp_path, name="vtiger-main")
    result = _check(config, str(ROOT / "connectors/consentsync_vtiger/mappings/leads.yaml"))
    output = result.output.strip()  # type: ignore[attr-defined]
    assert result.exit_code == 2, (result.exit_code, output, result.exception)  # type: ignore[attr-defined]
    assert "Traceback" not in output and len(output.splitlines()) == 1, output
    assert "'Leads'" in output and "enable the module" in output
