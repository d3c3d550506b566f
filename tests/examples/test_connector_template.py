"""examples/connector-template is a connector packaged on its own: found through its entry
points (read from distribution metadata, as pip would install it) and passing the contract kit.

Installing it with pip in the test run would be slow, so the test writes the metadata pip would
write (a ``.dist-info`` with the package's entry points) beside its sources and runs the
template's own test suite in a fresh interpreter with both on PYTHONPATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "examples" / "connector-template"


def _install_metadata(target: Path) -> None:
    project = tomllib.loads((TEMPLATE / "pyproject.toml").read_text())["project"]
    name = project["name"].replace("-", "_")
    dist = target / f"{name}-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
        lines.append("")
    (dist / "entry_points.txt").write_text("\n".join(lines))


def _run(code: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(TEMPLATE / "src")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=TEMPLATE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_template_is_found_through_its_entry_points(tmp_path: Path) -> None:
    _install_metadata(tmp_path / "site")
    probe = (
        "from consentsync.sdk import registry\n"
        "from consentsync.sdk.harness import available_harnesses\n"
        "from consentsync.mapping_examples import vendor_dirs\n"
        "print(registry.load('acme').__name__, available_harnesses()['acme'].value)\n"
        "print(*(item.name for item in vendor_dirs()['acme'].iterdir()))\n"
    )
    done = _run(probe, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["AcmeConnector", "consentsync_acme.testing:AcmeHarness", "contacts.yaml"]


def test_the_template_passes_the_contract_kit(tmp_path: Path) -> None:
    _install_metadata(tmp_path / "site")
    done = _run(
        "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))", tmp_path, "-q", "-p", "no:cacheprovider"
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= 17 and "failed" not in done.stdout, done.stdout[-500:]
