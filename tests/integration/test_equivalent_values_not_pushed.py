"""The first plan against a CRM proposes no write over a value that already says what the ledger
would write: the shipped HubSpot mapping reads all three "Legitimate interest" options of
hs_legal_basis as legitimate_interests, and pushes back one of them. A contact showing
"prospect/lead" is not relabelled "existing customer" (a legal claim nobody made), neither by the
first plan nor by the pushes an observing sync queues. (A real sandbox process, as
`consentsync sandbox hubspot` starts it, and the CLI as an admin runs it.)

And a mapping file that is not UTF-8 is refused in one line, naming the file and line, with the
exit code of a config error."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner
from consentsync_hubspot.settings import DEFAULT_LEGAL_BASIS_PRECEDENCE

from consentsync import exit_codes
from consentsync.cli import main
from consentsync.config import write_starter
from consentsync.domain import LawfulBasis
from consentsync.mapping import load_mapping
from tests.conftest import one_line_error
from tests.integration.test_sandbox_paste import CONSENTSYNC, _block_and_exports, _printed

ROOT = Path(__file__).resolve().parents[2]
HUBSPOT_MAPPING = ROOT / "connectors" / "consentsync_hubspot" / "mappings" / "contacts.yaml"
# The connector's default legal_basis_precedence: several boxes ticked, the first is read.
PRECEDENCE = DEFAULT_LEGAL_BASIS_PRECEDENCE


def _shown_bases(settings: dict[str, Any], token: str) -> dict[str, str | None]:
    """Each contact's hs_legal_basis as the connector reads it (one option of the ticked set)."""
    shown: dict[str, str | None] = {}
    body: dict[str, Any] = {"properties": ["hs_legal_basis"], "limit": 100}
    with requests.Session() as session:
        session.trust_env = False  # REQUESTS_CA_BUNDLE would override the sandbox's CA
        session.verify = settings["ca_bundle"]
        session.headers["Authorization"] = f"Bearer {token}"
        while True:
            answer = session.post(
                f"{settings['api_url']}/crm/v3/objects/contacts/search", json=body, timeout=10
            )
            answer.raise_for_status()
            page = answer.json()
            for contact in page["results"]:
                ticked = [v for v in str(contact["properties"].get("hs_legal_basis") or "").split(";") if v]
                shown[str(contact["id"])] = next((v for v in PRECEDENCE if v in ticked), None)
            after = (page.get("paging") or {}).get("next", {}).get("after")
            if not after:
                return shown
            body["after"] = after


def _cli(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        [CONSENTSYNC, *args, "--json"], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, (args, done.returncode, done.stderr)
    return json.loads(done.stdout)


def test_the_first_plan_leaves_a_legal_basis_the_crm_already_agrees_with(tmp_path: Path) -> None:
    sandbox = subprocess.Popen(
        [CONSENTSYNC, "sandbox", "hubspot", "--port", "0", "--seed", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        block, exports = _block_and_exports(_printed(sandbox))
        (connector,) = block["connectors"]
        config = tmp_path / "consentsync.yaml"
        write_starter(config, f"sqlite:///{tmp_path / 'ledger.db'}")
        data = yaml.safe_load(config.read_text())
        data["connectors"] = block["connectors"]
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        env = {**os.environ, "CONSENTSYNC_CONFIG": str(config), **exports}
        assert subprocess.run([CONSENTSYNC, "init"], env=env, capture_output=True).returncode == 0

        basis = load_mapping(HUBSPOT_MAPPING).spec.consents[1].basis
        assert basis is not None and basis.field == "hs_legal_basis" and basis.pull and basis.push
        pull, written_for_li = basis.pull, basis.push[LawfulBasis.LEGITIMATE_INTERESTS]
        (token,) = exports.values()
        shown = _shown_bases(connector["settings"], token)
        # The seeded portal holds contacts on a legitimate interest other than the one pushed.
        equivalent = {
            cid
            for cid, value in shown.items()
            if value != written_for_li and pull.get(value) is LawfulBasis.LEGITIMATE_INTERESTS
        }
        assert len(equivalent) >= 5, shown

        def relabelled(items: list[dict[str, Any]]) -> list[tuple[str, Any, Any]]:
            """Writes of hs_legal_basis over a value the mapping reads as the same basis."""
            return [
                (item["record_id"], shown.get(item["record_id"]), item["new"]["hs_legal_basis"])
                for item in items
                if "hs_legal_basis" in item["new"]
                and pull.get(shown.get(item["record_id"])) is not None
                and pull.get(shown.get(item["record_id"])) == pull.get(item["new"]["hs_legal_basis"])
            ]

        # The first plan, on an empty ledger.
        first = _cli(env, "plan", connector["name"])
        assert relabelled(first["items"]) == []
        assert not equivalent & {item["record_id"] for item in first["items"]}, first["items"]

        # An observing sync reads the portal and queues what it would push: nothing of that kind.
        report = _cli(env, "sync", connector["name"])
        assert report["status"] == "succeeded"
        queued = _cli(env, "outbox", "list")
        assert not any("hs_legal_basis" in json.dumps(row, ensure_ascii=False) for row in queued), queued
        again = _cli(env, "plan", connector["name"])
        assert relabelled(again["items"]) == []
        assert not equivalent & {item["record_id"] for item in again["items"]}, again["items"]
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)


# -- a mapping file that is not UTF-8 ---------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "consentsync.yaml"
    write_starter(path, f"sqlite:///{tmp_path / 'ledger.db'}")
    assert CliRunner().invoke(main, ["--config", str(path), "init"]).exit_code == 0
    return path


def test_a_utf16_mapping_file_is_one_line_naming_file_and_line(config: Path, tmp_path: Path) -> None:
    saved = tmp_path / "m8.yaml"
    saved.write_text(HUBSPOT_MAPPING.read_text(encoding="utf-8"), encoding="utf-16")
    checked = CliRunner().invoke(main, ["--config", str(config), "mapping", "check", str(saved)])
    one_line_error(
        checked,
        exit_codes.CONFIG,
        f"{saved}:1: not UTF-8 text (byte 0xff at offset 0): save the file as UTF-8",
    )
    # Named by a connector: the run refuses it the same way, before reaching any CRM.
    data = yaml.safe_load(config.read_text())
    data["connectors"] = [
        {"name": "hs", "vendor": "hubspot", "mappings": [str(saved)], "settings": {"access_token": "x"}}
    ]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    synced = CliRunner().invoke(main, ["--config", str(config), "sync", "hs"])
    one_line_error(synced, exit_codes.CONFIG, f"{saved}:1: not UTF-8 text", "save the file as UTF-8")
