"""The project's own promises about itself: one install step everywhere, lint clean, and the
README's first command working as written."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from string import Formatter

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks]


def test_readme_leads_with_the_two_commands_and_ci_runs_the_second_exactly() -> None:
    run_main, run_tests = _readme_commands()[:2]
    assert run_main.startswith("python3 -m venv .venv && .venv/bin/pip install -e '.")
    # The demo needs the sandboxes, which the runtime install leaves out: the first command asks
    # for them (the `demo` extra, from the checkout's sandboxes/), as does the test command.
    for command in (run_main, run_tests):
        assert "-e ./sandboxes" in command, command
    assert "'.[demo]'" in run_main and run_main.endswith("consentsync demo")
    assert "pytest" in run_tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert run_tests in ci, ".ci/run must run the README's test command exactly as written"


def test_the_sandboxes_are_their_own_distribution_and_the_demo_extra() -> None:
    """The runtime wheel leaves every sandbox package out; consentsync-sandboxes (sandboxes/)
    packages exactly those, at consentsync's version, registers them, and is the `demo` extra."""
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())
    own = tomllib.loads((ROOT / "sandboxes" / "pyproject.toml").read_text())
    version = main["project"]["version"]
    assert own["project"]["version"] == version
    # consentsync at the same version, and trustme for the sandboxes' throw-away CA (only they need it).
    assert sorted(own["project"]["dependencies"]) == [f"consentsync=={version}", "trustme>=1.2"]
    assert not [d for d in main["project"]["dependencies"] if d.startswith("trustme")]
    assert f"consentsync-sandboxes=={version}" in main["project"]["optional-dependencies"]["demo"]
    excluded = main["tool"]["setuptools"]["packages"]["find"]["exclude"]
    assert {"consentsync.sandbox", "*.sandbox", "*.sandbox.*"} <= set(excluded)
    sandboxes = sorted(
        ".".join(path.relative_to(root).parts)
        for root in (ROOT / "src", ROOT / "connectors")
        for path in root.glob("*/sandbox")
        if (path / "__init__.py").is_file()
    )
    setup = ast.parse((ROOT / "sandboxes" / "setup.py").read_text())
    (packages,) = (
        ast.literal_eval(node.value)
        for node in setup.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PACKAGES"
    )
    assert sorted(packages) == sandboxes
    for package, folder in packages.items():
        assert (ROOT / "sandboxes" / folder).resolve() == (
            ROOT / ("src" if package.startswith("consentsync.") else "connectors") / package.replace(".", "/")
        )
    groups = set(own["project"]["entry-points"])
    assert groups == {"consentsync.sandboxes", "consentsync.demos", "consentsync.harnesses"}
    assert not groups & set(main["project"].get("entry-points", {}))
    # The production image installs the runtime wheel and never the sandboxes.
    installs = " ".join(args for keyword, args in _instructions() if keyword == "RUN")
    assert "demo" not in installs and "sandboxes" not in installs and "_sandboxes" not in installs


def _template(template: str) -> re.Pattern[str]:
    """A shell template of tests/integration/test_wheel_install.py as a pattern: each ``{name}``
    is any word, the same each time it appears."""
    pattern, seen = "", set()
    for literal, name, _, _ in Formatter().parse(template):
        pattern += re.escape(literal)
        if name is not None:
            pattern += f"(?P={name})" if name in seen else f'(?P<{name}>[^\\s"$]*)'
            seen.add(name)
    return re.compile(pattern + "$")


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_builds_and_installs_the_wheel_as_the_wheel_test_does() -> None:
    from tests.integration.test_wheel_install import BUILD, INSTALL

    runs = [args for keyword, args in _instructions() if keyword == "RUN"]
    built = [m for m in (_template(BUILD).search(args) for args in runs) if m]
    installed = [m for m in (_template(INSTALL).search(args) for args in runs) if m]
    assert built and installed, f"no RUN line builds ({BUILD}) and installs ({INSTALL}) the wheel"
    assert installed[-1]["dist"] == built[0]["dist"], "the install takes the wheel the build made"
    extras = set(installed[-1]["extras"].strip("[]").split(","))
    assert {"console", "postgres"} <= extras and "test" not in extras
    whole = (ROOT / "Dockerfile").read_text()
    for tooling in ("-e ", "[test]", "pytest", "playwright", "chromium", "ruff"):
        assert tooling not in whole, f"the production image must not install {tooling!r}"


def test_dockerfile_runs_as_a_user_exposes_its_ports_and_checks_health() -> None:
    from consentsync.cli import main

    instructions = _instructions()
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    run = main.commands["run"]
    web = main.commands["web"]
    defaults = {p.name: p for p in (*run.params, *web.params)}
    exposed = {port for keyword, args in instructions if keyword == "EXPOSE" for port in args.split()}
    assert {str(defaults["metrics_port"].default), str(defaults["port"].default)} <= exposed
    health = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    assert health and "/healthz" in health[0] and "curl" not in health[0]
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    for option in ("metrics_host", "web_host"):
        assert f"{defaults[option].envvar}=0.0.0.0" in env, f"--{option} is set from the environment"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching, enough for these checks: ``**`` any folders, ``*`` and
    ``?`` within one name; a matched folder takes its contents; ``!`` re-includes."""
    ignored = False
    parts = path.split("/")
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = "".join(
            ".*"
            if token == "**"
            else "[^/]*"
            if token == "*"
            else "[^/]"
            if token == "?"
            else re.escape(token)
            for token in re.split(r"(\*\*|\*|\?)", pattern)
        ).replace(".*/", "(?:.*/)?")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_key_the_venv_and_ledgers_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in (
        "consentsync.key",
        "deploy/consentsync.key",
        ".venv/bin/python",
        "consentsync.db",
        "data/ledger.db",
        "consentsync.db-wal",
        "consentsync.sqlite3",
        "deploy/ledger.sqlite-journal",
        ".env",
    ):
        assert _ignored(path, patterns), f".dockerignore lets {path} into the image"
    for path in ("pyproject.toml", "README.md", "src/consentsync/cli.py", "connectors/README.md"):
        assert not _ignored(path, patterns), f"the build needs {path}"


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a test dependency: pip install -e '.[test]'"
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


VENDORS = ("salesforce", "hubspot", "dynamics", "superoffice", "vtiger")

# Where the core may still name a vendor in code, and why. Comments and docstrings (docs) may name
# vendors anywhere.
VENDOR_NAMED_IN_CORE = {
    # configuration default: the CRM `consentsync demo` runs when --crm names none
    "demo.py": ("salesforce",),
    # the demo command's help text (docs) gives example names
    "cli_sync.py": VENDORS,
    # the mapping file format's field descriptions (docs, in the JSON Schema) give examples
    "mapping.py": ("salesforce",),
}


def _named_in_code(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every import and every string that is not a docstring, in ``path``."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.append((node.lineno, node.value))
    return found


def test_core_names_no_vendor() -> None:
    """Vendors are plugins under connectors/, found through entry points (connectors, sandboxes,
    harnesses, demos): no module of the core imports one or names one in its code."""
    core = ROOT / "src" / "consentsync"
    for path in core.rglob("*.py"):
        allowed = VENDOR_NAMED_IN_CORE.get(str(path.relative_to(core)), ())
        for line, text in _named_in_code(path):
            named = [v for v in VENDORS if v in text.lower() and v not in allowed]
            assert not named, f"{path}:{line} names {named}: {text[:100]!r}"


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
