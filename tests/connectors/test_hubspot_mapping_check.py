"""`consentsync mapping check --against` checks the HubSpot mapping on the live portal."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from consentsync_hubspot.sandbox.harness import HubSpotHarness

from consentsync.cli import main
from consentsync.sdk.harness import write_sync_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_mapping_checks_against_the_sandbox(hubspot: HubSpotHarness, tmp_path: Path) -> None:
    config = write_sync_config(hubspot, tmp_path, name="hubspot-main")
    mapping = str(ROOT / "connectors/consentsync_hubspot/mappings/contacts.yaml")
    result = CliRunner().invoke(
        main, ["--config", str(config), "mapping", "check", mapping, "--against", "hubspot-main"]
    )
    assert result.exit_code == 0, result.output
    assert "contacts: ok" in result.output


def test_a_subscription_the_portal_lacks_is_named(hubspot: HubSpotHarness, tmp_path: Path) -> None:
    config = write_sync_config(hubspot, tmp_path, name="hubspot-main")
    text = (
        (ROOT / "connectors/consentsync_hubspot/mappings/contacts.yaml")
        .read_text()
        .replace("subscription_1002", "subscription_4242")
    )
    mapping = tmp_path / "contacts.yaml"
    mapping.write_text(text)
    result = CliRunner().invoke(
        main, ["--config", str(config), "mapping", "check", str(mapping), "--against", "hubspot-main"]
    )
    assert result.exit_code != 0
    assert "subscription_4242 does not exist" in result.output
