"""`consentsync mapping examples`: the example mappings are package data of each connector,
found through its entry point, and copied out in the layout the docs use."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from consentsync.cli import main
from consentsync.config import parse_config, starter_config_text
from consentsync.mapping import load_mappings
from consentsync.mapping_examples import vendor_dirs
from consentsync.sdk.registry import available

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["mapping", "examples", *args])
    return result.exit_code, result.stdout, result.stderr


def test_every_connector_carries_its_examples_in_its_own_package() -> None:
    found = vendor_dirs()
    assert set(found) == set(available())
    for vendor, folder in found.items():
        module = available()[vendor].module
        assert Path(str(folder)) == ROOT / "connectors" / module / "mappings"


def test_copies_one_vendor_with_the_schema_and_the_copies_load(tmp_path: Path) -> None:
    out = tmp_path / "mappings"
    code, stdout, _ = run("salesforce", "-o", str(out))
    assert code == 0
    shipped = sorted(p.name for p in (ROOT / "connectors/consentsync_salesforce/mappings").glob("*.yaml"))
    assert sorted(p.name for p in (out / "salesforce").iterdir()) == shipped
    assert sorted(stdout.split()) == sorted(
        [str(out / "schema.json"), *(str(out / "salesforce" / n) for n in shipped)]
    )
    assert (out / "schema.json").read_bytes() == (ROOT / "src/consentsync/mappings/schema.json").read_bytes()
    for path in (out / "salesforce").iterdir():
        assert path.read_text(encoding="utf-8").startswith("# yaml-language-server: $schema=../schema.json\n")
    assert not (out / "hubspot").exists()
    starter = parse_config(starter_config_text(), tmp_path / "consentsync.yaml")
    loaded = load_mappings(out, purposes=starter.purposes, channels=starter.channels)
    assert {m.vendor for m in loaded} == {"salesforce"}


def test_without_a_vendor_copies_every_installed_connectors(tmp_path: Path) -> None:
    code, _, _ = run("-o", str(tmp_path))
    assert code == 0
    assert {p.name for p in tmp_path.iterdir() if p.is_dir()} == set(available())


def test_unknown_vendor_is_one_line_naming_the_known_ones(tmp_path: Path) -> None:
    code, _, stderr = run("sap", "-o", str(tmp_path / "out"))
    assert code == 2
    assert stderr.count("\n") == 1
    assert stderr.startswith("consentsync: error: no example mappings for vendor 'sap': known are ")
    assert all(vendor in stderr for vendor in available())
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    assert run("hubspot", "-o", str(tmp_path))[0] == 0
    edited = tmp_path / "hubspot" / "contacts.yaml"
    edited.write_text("# mine\n", encoding="utf-8")
    (tmp_path / "schema.json").unlink()
    code, _, stderr = run("hubspot", "-o", str(tmp_path))
    assert code == 2
    assert stderr.count("\n") == 1
    assert str(edited) in stderr and "--force" in stderr
    assert edited.read_text(encoding="utf-8") == "# mine\n"
    assert not (tmp_path / "schema.json").exists(), "nothing is written when one file is refused"
    assert run("hubspot", "-o", str(tmp_path), "--force")[0] == 0
    assert edited.read_text(encoding="utf-8") != "# mine\n"


@pytest.mark.parametrize("target", ["file", "unwritable"])
def test_a_destination_that_cannot_take_files_is_one_line(tmp_path: Path, target: str) -> None:
    out = tmp_path / "out"
    if target == "file":
        out.write_text("", encoding="utf-8")
    else:
        out = Path("/proc/consentsync-no-such-place")
    code, _, stderr = run("vtiger", "-o", str(out))
    assert code == 2
    assert stderr.startswith(f"consentsync: error: {out}") and stderr.count("\n") == 1
