"""Every connector registered in the entry-point group ``consentsync.connectors`` runs the
contract kit (a test module in tests/contract/ with a ``Test...`` class subclassing
ConnectorContract for its harness), registers its harness, and has its documentation page."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from consentsync.sdk import registry
from consentsync.sdk.harness import ContractHarness, available_harnesses
from consentsync.sdk.testing import ConnectorContract

ROOT = Path(__file__).resolve().parents[2]
CONTRACT_DIR = Path(__file__).resolve().parent


def contract_vendors() -> dict[str, str]:
    """vendor -> the test class running the kit for it, from every module in tests/contract/."""
    found: dict[str, str] = {}
    for path in sorted(CONTRACT_DIR.glob("test_*.py")):
        module = importlib.import_module(f"tests.contract.{path.stem}")
        for name, value in inspect.getmembers(module, inspect.isclass):
            if not (name.startswith("Test") and issubclass(value, ConnectorContract)):
                continue
            harness = value().make_harness()
            found[harness.vendor] = f"{path.name}::{name}"
    return found


VENDORS = sorted(registry.available())


def test_the_built_in_connectors_are_registered() -> None:
    assert "salesforce" in VENDORS


@pytest.mark.parametrize("vendor", VENDORS)
def test_registered_connector_runs_the_contract_kit(vendor: str) -> None:
    covered = contract_vendors()
    assert vendor in covered, (
        f"connector {vendor!r} is registered in consentsync.connectors but no test class in "
        f"tests/contract/ subclasses consentsync.sdk.testing.ConnectorContract for it "
        "(see docs/writing-a-connector.md)"
    )


@pytest.mark.parametrize("vendor", VENDORS)
def test_registered_connector_has_a_registered_harness(vendor: str) -> None:
    harnesses = available_harnesses()
    assert vendor in harnesses, f"no entry point {vendor!r} in the group consentsync.harnesses"
    harness = harnesses[vendor].load()()
    assert isinstance(harness, ContractHarness)
    assert harness.vendor == vendor


@pytest.mark.parametrize("vendor", VENDORS)
def test_registered_connector_has_documentation(vendor: str) -> None:
    page = ROOT / "docs" / "connectors" / f"{vendor}.md"
    assert page.is_file(), f"connector {vendor!r} has no {page.relative_to(ROOT)}"
    assert len(page.read_text().split()) > 100, f"{page.relative_to(ROOT)} is a stub"


def test_the_meta_test_notices_a_connector_without_a_contract() -> None:
    assert "no-such-vendor" not in contract_vendors()


@pytest.mark.parametrize("vendor", VENDORS)
def test_the_trust_contract_runs_for_what_the_connector_declares(vendor: str) -> None:
    """A connector that says it reports deletions (or merges) has a harness that can delete (or
    merge) records, so that the trust contract checks the claim instead of skipping it; every
    harness can commit a record late (the look-back window is every connector's duty) and set
    the CRM's clock off ours (a window in the CRM's time is too)."""
    from consentsync.sdk.harness import ClockSkewHarness, DeletionHarness, LateCommitHarness

    declared = registry.load(vendor).capabilities()
    harness = available_harnesses()[vendor].load()()
    assert isinstance(harness, LateCommitHarness), f"{vendor}: the harness cannot commit a record late"
    assert isinstance(harness, ClockSkewHarness), f"{vendor}: the harness cannot set the CRM's clock off"
    assert declared["lookback_seconds"] > 0, f"{vendor}: no look-back window"
    if declared["deletions"] != "none":
        assert isinstance(harness, DeletionHarness), f"{vendor} reports deletions; its harness cannot delete"
    if declared["merges"]:
        assert isinstance(harness, DeletionHarness) and harness.can_merge, f"{vendor}: merges unchecked"


def test_connectors_command_lists_what_each_connector_does() -> None:
    from click.testing import CliRunner

    from consentsync.cli import main

    result = CliRunner().invoke(main, ["connectors", "--json"])
    assert result.exit_code == 0, result.output
    import json

    listed = {row["vendor"]: row for row in json.loads(result.output)}
    assert set(listed) == set(VENDORS)
    for vendor, row in listed.items():
        assert row == registry.load(vendor).capabilities()
