"""The Salesforce sandbox configured with its Contact and Individual mappings, both anonymised on
erasure, two-way, no push guard: the setting of the tests of records two people share and of
erasures reaching them (test_s64_shared_*, test_s65_shared_*, test_s66_pointer_created)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from consentsync.demo_crms import _past_this_second
from tests.conftest import Cli, running_harness

MAPPINGS = Path(__file__).resolve().parents[2] / "connectors" / "consentsync_salesforce" / "mappings"


def individual_connector(name: str, harness: Any) -> dict[str, Any]:
    """A connector entry of the config for ``harness``'s sandbox, named ``name``."""
    return {
        "name": name,
        "vendor": harness.vendor,
        "mappings": [str(MAPPINGS / "contact.yaml"), str(MAPPINGS / "individual.yaml")],
        "settings": harness.connector_settings(),
        "signpost_lag_seconds": 0,
        "mode": "two_way",
        "push_guard": {"max_records": None, "max_share": None},
        "erasure": {"Contact": "anonymise", "Individual": "anonymise"},
    }


def write_connectors(config_path: Path, connectors: list[dict[str, Any]]) -> None:
    data = yaml.safe_load(config_path.read_text())
    data["connectors"] = connectors
    config_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


@contextmanager
def salesforce_individuals(config_path: Path) -> Iterator[Any]:
    """A running sandbox configured as connector ``sf``; yields its org."""
    with running_harness("salesforce") as harness:
        write_connectors(config_path, [individual_connector("sf", harness)])
        yield harness.sandbox.org


def sync(cli: Cli, *more: str, connector: str = "sf") -> None:
    """One sync of ``connector``, in a second after the last change (whole-second stamps)."""
    _past_this_second()
    result = cli("sync", connector, *more)
    assert result.exit_code == 0, result.output + result.stderr
