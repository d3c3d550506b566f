"""examples/connector-template is a connector packaged on its own: found through its entry
points (read from distribution metadata, as pip would install it), passing the contract kit, and
given `consentsync sandbox acme`, a place in `demo --crms` and `mapping examples acme` with no
change to the core.

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
CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")


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


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `consentsync` process that sees the template as pip would have
    installed it (its entry points from the written metadata, its package on the path)."""
    _install_metadata(tmp_path / "site")
    path = os.pathsep.join([str(tmp_path / "site"), str(TEMPLATE / "src")])
    env = {k: v for k, v in os.environ.items() if k != "CONSENTSYNC_CONFIG"}
    return {**env, "PYTHONPATH": path, **extra}


def _consentsync(tmp_path: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``consentsync ARGS`` run to its end, the template installed as :func:`_env` says."""
    return subprocess.run(
        [CONSENTSYNC, *args], env=_env(tmp_path), capture_output=True, text=True, timeout=timeout
    )


def test_consentsync_sandbox_acme_serves_and_its_printed_block_syncs(tmp_path: Path) -> None:
    """`consentsync sandbox acme` comes from the template's own entry point (the core names no
    vendor): it prints the `connectors:` block, and pasted as printed, `consentsync sync` reads
    every seeded contact."""
    from tests.integration.test_sandbox_paste import _block_and_exports, _printed, sync_as_pasted

    env = _env(tmp_path)
    listed = subprocess.run([CONSENTSYNC, "sandbox", "--help"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "acme" in listed.stdout, listed.stdout + listed.stderr
    sandbox = subprocess.Popen(
        [CONSENTSYNC, "sandbox", "acme", "--port", "0", "--seed", "25"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        text = _printed(sandbox)
        assert "Acme sandbox is running" in text and "seeded         25 contacts" in text, text
        block, exports = _block_and_exports(text)
        (connector,) = block["connectors"]
        assert connector["vendor"] == "acme" and set(exports) == {"ACME_API_KEY"}

        assert sync_as_pasted(block, exports, tmp_path, env)["counts"]["read"] == 25
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)


def test_demo_across_crms_takes_acme_in(tmp_path: Path) -> None:
    """`consentsync demo --crms acme,salesforce`: Acme's harness (its entry point) gives the demo
    its sandbox; the withdrawal given in Acme reaches Salesforce. (The demo needs two CRMs.)"""
    done = _consentsync(
        tmp_path, "demo", "--crms", "acme,salesforce", "--dir", str(tmp_path / "demo"), timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "unsubscribes from email marketing in acme" in done.stdout
    assert "opted out of email = True" in done.stdout
    assert re.search(r"API calls served: \{'acme': [1-9]\d*, 'salesforce': [1-9]\d*\}", done.stdout)


def test_mapping_examples_acme_copies_the_templates_mapping(tmp_path: Path) -> None:
    done = _consentsync(tmp_path, "mapping", "examples", "acme", "-o", str(tmp_path / "mappings"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mappings" / "acme" / "contacts.yaml").is_file()
