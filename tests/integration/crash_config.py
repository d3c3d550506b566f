"""A Salesforce sandbox's consentsync.yaml for the tests that run `consentsync sync` in a process
of its own (leases, the ledger going away, erasure actions): one connector, ``sf``, its secret read
from CRASHTEST_SF_SECRET, a ledger beside it (SQLite by default)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from consentsync.config import write_starter
from consentsync.sdk import crashtest

MAPPINGS = ("contact.yaml", "lead.yaml", "individual.yaml", "contact_point_type_consent.yaml")
CONNECTOR = "sf"


def write_config(folder: Path, sandbox: Any, mappings: Path, ledger_url: str | None = None) -> Path:
    """A consentsync.yaml in ``folder`` with one Salesforce connector, ``sf``, against ``sandbox``
    (its secret read from CRASHTEST_SF_SECRET) and a ledger (SQLite beside it by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "consentsync.yaml"
    write_starter(config_path, ledger_url or f"sqlite:///{folder / 'ledger.db'}")
    ca = folder / "ca.pem"
    shutil.copy(sandbox.ca_cert_path, ca)
    data = yaml.safe_load(config_path.read_text())
    data["connectors"] = [
        {
            "name": CONNECTOR,
            "vendor": "salesforce",
            "mappings": [str(mappings / name) for name in MAPPINGS],
            "settings": {
                "login_url": sandbox.login_url,
                "auth": "client_credentials",
                "client_id": sandbox.credentials.client_id,
                "client_secret": "${CRASHTEST_SF_SECRET}",
                "ca_bundle": str(ca),
            },
            "signpost_lag_seconds": 0,
            "batch_size": 25,
            "mode": "two_way",
            "push_guard": {"max_records": None, "max_share": None},
        }
    ]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return config_path


def sync_command(config_path: Path) -> list[str]:
    """`consentsync --config PATH sync sf`, with this interpreter's consentsync."""
    return crashtest.sync_command(config_path, CONNECTOR)
