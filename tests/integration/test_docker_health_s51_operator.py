"""The image's HEALTHCHECK, run as Docker runs it (`/bin/sh -c`, in the image's environment), says
healthy for both ways the Dockerfile documents to run the image: the daemon (`consentsync run`,
/healthz on the metrics port) and the ops console (`consentsync web`, which serves no metrics
port), and unhealthy when neither listens. Marked unhealthy for ever, a console container was held
back by `depends_on: condition: service_healthy` and replaced over and over by Swarm."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consentsync.config import write_starter
from tests.conftest import TEST_ERASURE_KEY, own_environment
from tests.integration.helpers import add_absent_salesforce, free_port
from tests.integration.test_serving_errors import served

ROOT = Path(__file__).resolve().parents[2]
CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment of the test's own: its HOME and TMPDIR, no config or port from the caller's."""
    return own_environment(tmp_path, TEST_ERASURE_KEY, drop=("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"))


def _healthcheck() -> str:
    """The HEALTHCHECK's command, as the Dockerfile gives it (shell form)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    found = [line.strip() for line in text.splitlines() if line.strip().upper().startswith("HEALTHCHECK")]
    assert len(found) == 1
    return found[0].split(" CMD ", 1)[1]


def _image_env(base: dict[str, str], metrics_port: int, web_port: int | None) -> dict[str, str]:
    """The image's ENV lines (its ports as this test serves them) over the test's environment."""
    image = {**base, "CONSENTSYNC_METRICS_PORT": str(metrics_port), "CONSENTSYNC_METRICS_HOST": "127.0.0.1"}
    if web_port is not None:
        image["CONSENTSYNC_WEB_PORT"] = str(web_port)
    return image


def _healthy(image_env: dict[str, str], within: float = 30) -> bool:
    """Whether the health check passes, asked again while the server is still starting."""
    deadline = time.monotonic() + within
    while True:
        done = subprocess.run(
            ["/bin/sh", "-c", _healthcheck()], env=image_env, capture_output=True, timeout=30
        )
        if done.returncode == 0 or time.monotonic() > deadline:
            return done.returncode == 0
        time.sleep(0.3)


@pytest.fixture
def config(tmp_path: Path, env: dict[str, str]) -> Path:
    path = Path(env["CONSENTSYNC_CONFIG"])
    write_starter(path, f"sqlite:///{tmp_path / 'ledger.db'}")
    add_absent_salesforce(path)
    subprocess.run([CONSENTSYNC, "migrate"], env=env, check=True, capture_output=True)
    return path


def test_the_console_image_is_healthy_while_it_serves(env: dict[str, str], config: Path) -> None:
    web_port, metrics_port = free_port(), free_port()
    image_env = _image_env(env, metrics_port, web_port)
    assert not _healthy(image_env, within=0), "nothing listens yet"
    with served(image_env, "web", "--host", "127.0.0.1"):  # the port from CONSENTSYNC_WEB_PORT
        assert _healthy(image_env)
    assert not _healthy(image_env, within=0)


def test_the_daemon_image_is_healthy_while_it_serves(env: dict[str, str], config: Path) -> None:
    metrics_port = free_port()
    image_env = _image_env(env, metrics_port, None)
    with served(image_env, "run"):  # the port from CONSENTSYNC_METRICS_PORT
        assert _healthy(image_env)
    assert not _healthy(image_env, within=0)
