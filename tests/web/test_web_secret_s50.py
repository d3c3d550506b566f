"""CONSENTSYNC_WEB_SECRET shorter than the 32 characters README.md asks for (session 50): `web` and
`run --web-port` printed a ValueError's traceback (exit 1). Now one line naming the variable and
what is accepted, exit 2, before anything listens, and never the value."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from consentsync_salesforce.sandbox.harness import MAPPINGS as SALESFORCE_MAPPINGS

from consentsync import exit_codes
from consentsync.cli import main
from consentsync.config import write_starter
from tests.conftest import one_line_error
from tests.integration.helpers import free_port

SHORT = "shortZq7secret"  # 14 characters: too short, and never to be echoed


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "consentsync.yaml"
    write_starter(path, f"sqlite:///{tmp_path / 'ledger.db'}")
    data = yaml.safe_load(path.read_text())
    # A connector, so that `run` would otherwise start (a config without one is refused first).
    data["connectors"] = [
        {
            "name": "sf",
            "vendor": "salesforce",
            "mappings": [str(SALESFORCE_MAPPINGS / "contact.yaml")],
            "settings": {"login_url": "https://127.0.0.1:1", "auth": "client_credentials"},
        }
    ]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert CliRunner().invoke(main, ["--config", str(path), "init"]).exit_code == 0
    return path


def invoke(config: Path, *args: str, secret: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args], env={"CONSENTSYNC_WEB_SECRET": secret})


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("command", [["web", "--port"], ["run", "--no-metrics", "--web-port"]])
def test_a_short_web_secret_is_one_line_before_anything_listens(config: Path, command: list[str]) -> None:
    port = free_port()
    result = invoke(config, *command, str(port), secret=SHORT)
    line = one_line_error(result, exit_codes.CONFIG, "CONSENTSYNC_WEB_SECRET", "32 or more")
    assert SHORT not in result.output + result.stderr, line
    assert port_is_free(port)


def test_a_long_enough_secret_is_the_signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check refuses only a short secret: one of 32 characters signs, an unset one derives."""
    from consentsync.web.security import SECRET_ENV, signing_key

    monkeypatch.setenv(SECRET_ENV, "x" * 32)
    assert signing_key(b"k" * 32) == b"x" * 32
    monkeypatch.delenv(SECRET_ENV)
    assert len(signing_key(b"k" * 32)) == 32 and signing_key(b"k" * 32) != signing_key(b"j" * 32)
