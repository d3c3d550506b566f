"""The built wheel is the product: installed with pip into a fresh venv (not an editable checkout)
and run from a folder outside the repository, `init`, the example mappings and the console work.
The runtime wheel has no sandbox code: the demo then names the `demo` extra, and once that is
installed (consentsync-sandboxes, the wheel built from sandboxes/) the demo runs. The Dockerfile
installs the same way (tests/test_packaging.py holds it to BUILD and INSTALL below).

Needs a package index or pip's cache for the dependencies (and for setuptools, to build): where
pip cannot reach one, the tests skip saying so. `-m "not wheel"` leaves them out.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[2]

# The install steps, shared with the Dockerfile: build the wheel alone, then install it (with
# `extras`, e.g. "[console,postgres]") into a fresh venv.
BUILD = "python3 -m pip wheel --no-deps --wheel-dir {dist} {src}"
INSTALL = 'python3 -m venv {venv} && {venv}/bin/pip install "$(ls {dist}/consentsync-*.whl){extras}"'

# What pip says when it cannot reach an index (or finds nothing it needs in the cache).
OFFLINE = re.compile(
    r"No matching distribution found|Could not find a version that satisfies|NewConnectionError|"
    r"Failed to establish a new connection|Temporary failure in name resolution|Network is unreachable"
)

pytestmark = pytest.mark.wheel


@dataclass
class Installed:
    venv: Path
    dist: Path
    home: Path  # a folder outside the repository, the cwd of every command
    # What the runtime install (no extra) answered, asked before any test installs an extra.
    runtime: dict[str, subprocess.CompletedProcess[str]]

    def run(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "consentsync"), *args],
            cwd=self.home,
            env=env or _clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSENTSYNC_", "PYTHON", "VIRTUAL_ENV"))}
    # No trace of the checkout's venv: commands find python3 and pip as an operator's shell would.
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if str(ROOT) not in p)
    return env


def _shell(command: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["sh", "-c", command], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        output = done.stdout + done.stderr
        if OFFLINE.search(output):
            pytest.skip(f"pip cannot reach a package index nor find the dependencies in its cache: {command}")
        pytest.fail(f"{command} -> {done.returncode}\n{output[-3000:]}")
    return done


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The two wheels, built once for every xdist worker that runs these tests: two builds side by
    side share the checkout's build/ folder and break each other (seen with two workers)."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent  # the folder every worker's own temporary folder is in
    dist = shared / "wheels"
    with FileLock(str(shared / "wheels.lock")):
        if not (dist / ".built").exists():
            shutil.rmtree(dist, ignore_errors=True)  # what a build that failed left behind
            _shell(BUILD.format(dist=dist, src=ROOT), cwd=shared)
            _shell(BUILD.format(dist=dist, src=ROOT / "sandboxes"), cwd=shared)
            (dist / ".built").touch()
    return dist


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    dist, venv, home = wheels, base / "venv", base / "home"
    home.mkdir()
    _shell(INSTALL.format(venv=venv, dist=dist, extras=""), cwd=base)
    installed = Installed(venv, dist, home, {})
    installed.runtime = {
        "demo": installed.run("demo", "--records", "20", "--dir", "no-demo"),
        "demo --crms": installed.run("demo", "--crms", "salesforce,hubspot", "--dir", "no-demo"),
        "sandbox": installed.run("sandbox", "salesforce", "--port", "0"),
        "import": subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import consentsync.sandbox"],
            cwd=home,
            env=_clean_env(),
            capture_output=True,
            text=True,
            check=False,
        ),
    }
    return installed


@pytest.fixture(scope="module")
def demo(installed: Installed) -> Installed:
    """The same venv with the `demo` extra: pip takes consentsync-sandboxes from the wheels built."""
    (wheel,) = installed.dist.glob("consentsync-*.whl")
    _shell(
        f'{installed.venv}/bin/pip install --find-links "{installed.dist}" "{wheel}[demo]"',
        cwd=installed.home,
    )
    return installed


def test_the_runtime_wheel_has_no_sandbox_code_and_the_demo_names_its_extra(installed: Installed) -> None:
    import zipfile

    (wheel,) = installed.dist.glob("consentsync-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if "/sandbox/" in n or (n.endswith("/testing.py") and "/sdk/" not in n)]
    (sandboxes,) = installed.dist.glob("consentsync_sandboxes-*.whl")
    assert any(n.startswith("consentsync_salesforce/sandbox/") for n in zipfile.ZipFile(sandboxes).namelist())
    site = next((installed.venv / "lib").glob("python3*/site-packages"))
    assert not list(site.glob("consentsync*/sandbox")), "a sandbox package in the runtime install"
    assert installed.runtime["import"].returncode == 1
    for command in ("demo", "demo --crms", "sandbox"):
        answer = installed.runtime[command]
        assert answer.returncode == 2, (command, answer.stdout, answer.stderr)
        assert "Traceback" not in answer.stderr
        assert "pip install 'consentsync[demo]'" in answer.stderr, (command, answer.stderr)


def test_installed_from_the_wheel_not_the_checkout(installed: Installed) -> None:
    (wheel,) = installed.dist.glob("consentsync-*.whl")
    where = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import consentsync, consentsync_salesforce as s;print(consentsync.__file__); print(s.__file__)",
        ],
        cwd=installed.home,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(Path(path).is_relative_to(installed.venv) for path in where), where
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert wheel.name.startswith(f"consentsync-{version}-")
    result = installed.run("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"consentsync {version}")


def test_demo_runs_outside_the_repository(demo: Installed) -> None:
    installed = demo
    result = installed.run("demo", "--records", "50", "--dir", "demo")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "incremental sync" in result.stdout
    assert "HasOptedOutOfEmail=True" in result.stdout
    copied = sorted(p.name for p in (installed.home / "demo" / "mappings").iterdir())
    assert copied == sorted(
        p.name for p in (ROOT / "connectors/consentsync_salesforce/mappings").glob("*.yaml")
    )


def test_demo_across_crms(demo: Installed) -> None:
    result = demo.run("demo", "--crms", "salesforce,hubspot", "--dir", "crms")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"API calls served: \{'salesforce': [1-9]\d*, 'hubspot': [1-9]\d*\}", result.stdout)


def test_init_then_the_example_mappings_check_against_it(installed: Installed) -> None:
    assert installed.run("init").returncode == 0
    assert (installed.home / "consentsync.yaml").is_file() and (installed.home / "consentsync.key").is_file()
    result = installed.run("mapping", "examples", "salesforce", "-o", "mappings")
    assert result.returncode == 0, result.stderr
    files = sorted(str(p.relative_to(installed.home)) for p in (installed.home / "mappings").rglob("*.yaml"))
    assert len(files) == 4
    assert (installed.home / "mappings" / "schema.json").is_file()
    check = installed.run("mapping", "check", *files)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": ok") == 4
    again = installed.run("mapping", "examples", "salesforce", "-o", "mappings")
    assert again.returncode == 2 and "--force" in again.stderr


def test_the_console_names_its_extra_then_serves_once_installed(installed: Installed) -> None:
    if not (installed.home / "consentsync.yaml").exists():
        assert installed.run("init").returncode == 0
    result = installed.run("web")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "pip install 'consentsync[console]'" in result.stderr
    assert installed.run("user", "list").returncode == 2

    (wheel,) = installed.dist.glob("consentsync-*.whl")
    _shell(f'{installed.venv}/bin/pip install "{wheel}[console]"', cwd=installed.home)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**_clean_env(), "CONSENTSYNC_WEB_PORT": str(port)}  # bind address from the environment
    server = subprocess.Popen(
        [str(installed.venv / "bin" / "consentsync"), "web"],
        cwd=installed.home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        page = _get(f"http://127.0.0.1:{port}/login", server)
        assert "<form" in page  # a template shipped in the wheel
        stylesheet = re.search(r'href="(/static/[^"]+\.css)"', page)
        assert stylesheet, page[:500]
        assert _get(f"http://127.0.0.1:{port}{stylesheet.group(1)}", server)
        # The API docs' Swagger UI is vendored in the wheel (no CDN).
        assert "SwaggerUIBundle" in _get(
            f"http://127.0.0.1:{port}/static/swagger-ui/swagger-ui-bundle.js", server
        )
    finally:
        server.terminate()
        server.wait(timeout=10)


def _get(url: str, server: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"consentsync web exited {server.returncode}: {server.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
