"""The project's own promises about itself: one install step everywhere, lint clean, and the
README's first command working as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks]


def test_readme_leads_with_the_two_commands_and_ci_runs_the_second_exactly() -> None:
    run_main, run_tests = _readme_commands()[:2]
    assert run_main.startswith("python3 -m venv .venv && .venv/bin/pip install -e .")
    assert "pytest" in run_tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert run_tests in ci, ".ci/run must run the README's test command exactly as written"


def test_dockerfile_installs_the_way_ci_does() -> None:
    run_tests = _readme_commands()[1]
    install = run_tests.split(" && .venv/bin/python -m pytest")[0]
    assert f"RUN {install}" in (ROOT / "Dockerfile").read_text()


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a test dependency: pip install -e '.[test]'"
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_never_imports_a_vendor() -> None:
    """Vendors are plugins under connectors/, found through entry points. (The sandboxes imitate
    vendors' servers for demos and tests; they are not connectors.)"""
    vendors = ("salesforce", "hubspot", "dynamics", "superoffice", "vtiger")
    core = ROOT / "src" / "consentsync"
    for path in core.rglob("*.py"):
        if "sandbox" in path.parts:
            continue
        for line in path.read_text().splitlines():
            statement = line.strip()
            if not statement.startswith(("import ", "from ")) or "consentsync.sandbox" in statement:
                continue
            assert not any(v in statement for v in vendors), f"{path}: {statement}"


def test_walkthrough_from_the_readme_runs(tmp_path: Path) -> None:
    env = dict(os.environ, CONSENTSYNC=str(Path(sys.executable).parent / "consentsync"), TMPDIR=str(tmp_path))
    env.pop("CONSENTSYNC_CONFIG", None)
    result = subprocess.run(
        ["sh", str(ROOT / "examples" / "ledger-walkthrough.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sticky_withdrawal" in result.stdout
    assert "objection_pending_review" in result.stdout
    assert "audit chain verified" in result.stdout
