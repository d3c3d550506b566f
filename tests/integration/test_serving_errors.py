"""What consentsync serves on (`web`, `run`'s metrics and console, `sandbox VENDOR`) refuses bad
input in one line with exit 2 before anything is served: a host that resolves to no address, a
certificate or key that is not a PEM pair. A sandbox removes its temporary certificates and keys
(`consentsync-sandbox-tls-*` in $TMPDIR) however it ends: failing to bind, SIGTERM, Ctrl-C.

Every command runs as a real process, in an environment of its own (HOME, TMPDIR, the config)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import trustme
from cryptography.hazmat.primitives import serialization

from consentsync import exit_codes
from consentsync.config import write_starter
from tests.conftest import TEST_ERASURE_KEY, own_environment, stop
from tests.integration.helpers import add_absent_salesforce, free_port, local_session

CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")
VENDORS = ["salesforce", "hubspot", "dynamics", "vtiger", "superoffice"]
BAD_HOST = "999.9.9.9"  # four numbers, one over 255: no resolver makes an address of it


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment of the test's own: its HOME and TMPDIR, no config or host from the caller's."""
    return own_environment(tmp_path, TEST_ERASURE_KEY, drop=("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"))


@pytest.fixture
def config(tmp_path: Path, env: dict[str, str]) -> Path:
    """A ledger made with `consentsync init`, and one connector (of a sandbox that is not running:
    `run` refuses a config without one before it gets to its servers)."""
    path = Path(env["CONSENTSYNC_CONFIG"])
    write_starter(path, f"sqlite:///{tmp_path / 'ledger.db'}")
    add_absent_salesforce(path, "${SF_SECRET}")
    env["SF_SECRET"] = "secret"
    init = consentsync(env, "init")
    assert init.returncode == 0, init.stderr
    return path


def consentsync(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CONSENTSYNC, *args], env=env, cwd=Path(env["HOME"]).parent, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The process exited 2 with one `consentsync: error:` line on stderr holding every needle."""
    assert done.returncode == exit_codes.CONFIG, f"{done.returncode}: {done.stdout}{done.stderr}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("consentsync: error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tls_folders(env: dict[str, str]) -> list[Path]:
    return sorted(Path(env["TMPDIR"]).glob("consentsync-sandbox-tls-*"))


# -- a host that resolves to no address -----------------------------------------------------------


def test_web_refuses_a_host_that_resolves_to_nothing(config: Path, env: dict[str, str]) -> None:
    port = free_port()
    line = one_line_error(
        consentsync(env, "web", "--host", BAD_HOST, "--port", str(port)), f"--host {BAD_HOST}"
    )
    assert "127.0.0.1" in line  # what to pass instead
    # The same host from the environment variable is named by the option it stands for.
    one_line_error(consentsync({**env, "CONSENTSYNC_WEB_HOST": BAD_HOST}, "web", "--port", str(port)),
                   f"--host {BAD_HOST}")  # fmt: skip


def test_web_on_a_port_in_use_says_only_that(config: Path, env: dict[str, str]) -> None:
    """No hint about console accounts before the refusal: the refusal is the one line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_error(consentsync(env, "web", "--port", str(port)), f"--port {port}", "in use")


@pytest.mark.parametrize(
    "args, option",
    [
        (["--metrics-host", BAD_HOST], "--metrics-host"),
        (["--web-host", BAD_HOST, "--web-port", "0"], "--web-host"),
        (["--no-metrics", "--web-host", "a" * 64, "--web-port", "0"], "--web-host"),  # a label too long
    ],
)
def test_run_refuses_a_host_that_resolves_to_nothing_before_serving(
    config: Path, env: dict[str, str], args: list[str], option: str
) -> None:
    done = consentsync(env, "run", "--metrics-port", str(free_port()), *args)
    one_line_error(done, option)
    assert "daemon.metrics" not in done.stdout and "health.listening" not in done.stdout  # nothing served


def test_sandbox_refuses_a_host_that_resolves_to_nothing(env: dict[str, str]) -> None:
    done = consentsync(env, "sandbox", "salesforce", "--port", str(free_port()), "--host", BAD_HOST)
    one_line_error(done, f"--host {BAD_HOST}")
    assert "running" not in done.stdout
    assert tls_folders(env) == []


# -- --certfile and --keyfile of `consentsync web` ------------------------------------------------


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    """A CA, a certificate it signed, its key, another certificate's key, and its key encrypted."""
    ca = trustme.CA()
    made = {name: tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem", "other.key", "encrypted.key")}
    ca.cert_pem.write_to_path(str(made["ca.pem"]))
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(made["cert.pem"]))
    cert.private_key_pem.write_to_path(str(made["key.pem"]))
    ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(made["other.key"]))
    key = serialization.load_pem_private_key(made["key.pem"].read_bytes(), password=None)
    made["encrypted.key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return made


def test_web_refuses_a_certfile_that_is_not_pem(config: Path, env: dict[str, str]) -> None:
    done = consentsync(
        env, "web", "--port", str(free_port()), "--certfile", str(config), "--keyfile", str(config)
    )
    line = one_line_error(done, f"--certfile {config}", "PEM certificate", "--keyfile")
    assert "ops console at" not in done.stderr + line


def test_web_refuses_a_key_that_is_not_pem(config: Path, env: dict[str, str], pem: dict[str, Path]) -> None:
    done = consentsync(env, "web", "--port", str(free_port()), "--certfile", str(pem["cert.pem"]),
                       "--keyfile", str(config))  # fmt: skip
    one_line_error(done, f"--keyfile {config}", "PEM private key")


def test_web_refuses_an_encrypted_key(config: Path, env: dict[str, str], pem: dict[str, Path]) -> None:
    # Without a terminal to prompt on, OpenSSL would fail; with one, it would ask for a passphrase
    # that uvicorn has no way to be given.
    done = subprocess.run(
        [CONSENTSYNC, "web", "--port", str(free_port()), "--certfile", str(pem["cert.pem"]),
         "--keyfile", str(pem["encrypted.key"])],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    one_line_error(done, f"--keyfile {pem['encrypted.key']}", "encrypted")


def test_web_refuses_a_key_of_another_certificate_and_serves_with_its_own(
    config: Path, env: dict[str, str], pem: dict[str, Path]
) -> None:
    port = free_port()
    refused = consentsync(env, "web", "--port", str(port), "--certfile", str(pem["cert.pem"]),
                          "--keyfile", str(pem["other.key"]))  # fmt: skip
    one_line_error(refused, f"--keyfile {pem['other.key']}", f"--certfile {pem['cert.pem']}", "private key")
    # The pair itself passes the same check and serves HTTPS.
    process = subprocess.Popen(
        [CONSENTSYNC, "web", "--port", str(port), "--certfile", str(pem["cert.pem"]),
         "--keyfile", str(pem["key.pem"])],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        session = local_session()
        session.verify = str(pem["ca.pem"])
        answer = until_answered(lambda: session.get(f"https://127.0.0.1:{port}/", allow_redirects=False))
        assert answer.status_code in (200, 303)
        # Stopped while a client keeps its TLS connection open (a browser tab): it ends cleanly
        # within docker stop's 10 s, not when the SIGKILL after them comes, and says no error.
        asked = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, said = process.communicate(timeout=30)
        assert process.returncode == 0
        assert time.monotonic() - asked < 9, time.monotonic() - asked
        assert "ERROR" not in said and '"error"' not in said, said[-1000:]
        session.close()
    finally:
        stop(process)


@pytest.fixture
def _ipv6() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")


@pytest.mark.usefixtures("_ipv6")
def test_run_serves_metrics_on_an_ipv6_address(config: Path, env: dict[str, str]) -> None:
    port = free_port()
    with served(env, "run", "--metrics-host", "::1", "--metrics-port", str(port)) as process:
        answer = until_answered(lambda: local_session().get(f"http://[::1]:{port}/healthz", timeout=2))
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_a_daemon_stopped_as_soon_as_it_answers_stops_cleanly(config: Path, env: dict[str, str]) -> None:
    """SIGTERM the moment /healthz answers, before the scheduler may have started: a clean stop
    (exit 0), not a death by the signal (-15), which CI caught once."""
    for _ in range(3):
        port = free_port()
        with served(env, "run", "--metrics-port", str(port)) as process:
            until_answered(lambda: local_session().get(f"http://127.0.0.1:{port}/healthz", timeout=2))  # noqa: B023
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0


# The daemon's main thread, waiting for a signal, with the SIGTERM handed by the kernel to another
# of its threads (a run's, the scheduler's: any thread that does not block it may get a signal
# sent to the process). Targeted at a worker here, so that the case is met every time.
_SIGNAL_TO_A_WORKER = """
import signal, sys, threading
from consentsync.sync.daemon import Daemon

daemon = Daemon.__new__(Daemon)
daemon._signals_caught = False
daemon._signalled = threading.Event()
daemon.stop = lambda: sys.exit(0)
daemon.catch_signals()
worker = threading.Thread(
    target=lambda: (threading.Event().wait(0.3), signal.pthread_kill(threading.get_ident(), signal.SIGTERM))
)
worker.start()
daemon.serve_until_signalled()
"""


def test_a_sigterm_delivered_to_another_thread_stops_the_daemon() -> None:
    """CI saw a daemon ignore a SIGTERM for good: the signal reached a run's thread while the main
    thread sat in an untimed wait, where Python never ran the handler."""
    command = [sys.executable, "-c", _SIGNAL_TO_A_WORKER]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


# -- a sandbox's certificates and keys, however it ends --------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_sandbox_on_a_port_in_use_leaves_no_keys(env: dict[str, str], vendor: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = consentsync(env, "sandbox", vendor, "--port", str(port), "--seed", "5")
    one_line_error(done, f"--port {port}", "in use")
    assert tls_folders(env) == []


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_sandbox_stopped_by_sigterm_removes_its_keys(env: dict[str, str], vendor: str) -> None:
    stop_running_sandbox(env, vendor, [signal.SIGTERM])


def test_signals_while_a_sandbox_stops_do_not_cut_the_removal_short(env: dict[str, str]) -> None:
    """A burst (a service manager's SIGTERM, a Ctrl-C, another SIGTERM): still one clean stop."""
    stop_running_sandbox(env, "salesforce", [signal.SIGTERM, signal.SIGINT, signal.SIGTERM])


def stop_running_sandbox(env: dict[str, str], vendor: str, signals: list[signal.Signals]) -> None:
    """Starts `consentsync sandbox VENDOR`, sends it ``signals`` once it serves, and checks that it
    exited 0 (stopping is how a sandbox ends) with no traceback and no certificate or key left."""
    process = subprocess.Popen(
        [CONSENTSYNC, "sandbox", vendor, "--port", "0", "--seed", "5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        printed = printed_until(process, "connectors:")
        assert "connectors:" in printed, printed
        (folder,) = tls_folders(env)
        assert (folder / "server.key").is_file()
        if vendor == "salesforce":
            assert (folder / "jwt-private-key.pem").is_file()
        for each in signals:
            process.send_signal(each)
        assert process.wait(timeout=30) == exit_codes.OK
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    assert "Traceback" not in process.stderr.read()
    assert tls_folders(env) == []


def test_a_sandbox_stopped_while_it_starts_removes_its_keys(env: dict[str, str]) -> None:
    """SIGTERM as soon as the certificates are written, before the sandbox prints that it runs."""
    process = subprocess.Popen(
        [CONSENTSYNC, "sandbox", "salesforce", "--port", "0", "--seed", "5"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not tls_folders(env):
            assert process.poll() is None and time.monotonic() < deadline, "the sandbox made no certificates"
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == exit_codes.OK
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert tls_folders(env) == []


# -- helpers --------------------------------------------------------------------------------------


@contextmanager
def served(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[str]]:
    """`consentsync ARGS` running in the background, stopped (SIGTERM, then SIGKILL) on the way out."""
    process = subprocess.Popen(
        [CONSENTSYNC, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    try:
        yield process
    finally:
        stop(process)


def until_answered(request: Callable[[], requests.Response], within: float = 30) -> requests.Response:
    """``request()``'s answer, asked again while the server does not listen yet."""
    deadline = time.monotonic() + within
    while True:
        try:
            return request()
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def printed_until(process: subprocess.Popen[str], marker: str, within: float = 60) -> str:
    """What ``process`` printed on stdout until a line starting with ``marker`` (or its exit)."""
    assert process.stdout is not None
    out: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in iter(process.stdout.readline, ""):  # type: ignore[union-attr]
            out.append(line)
            if line.startswith(marker):
                seen.set()
        seen.set()

    threading.Thread(target=read, daemon=True).start()
    seen.wait(within)
    time.sleep(0.2)  # the block is printed in one write: the rest of it is here too
    return "".join(out)
