"""Through the CLI, against the Salesforce sandbox: a login URL written with a user and password
(``https://user:password@host``) never shows them, in the error, the run summary, the JSON log,
the stored run or the ledger; the sandbox's own secret, made of words ("consentsync-sandbox-
consumer-secret"), is redacted without redacting those words from every message; and an
``api_version`` that is not one is refused when the settings are read."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from consentsync import exit_codes
from consentsync.cli import main
from consentsync.config import write_starter
from tests.conftest import running_harness

NAME = "salesforce-sandbox"
PASSWORD = "Pw12345secret"


@pytest.fixture(scope="module")
def harness() -> Iterator[Any]:
    with running_harness("salesforce") as started:
        yield started


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(tmp_path: Path, harness: Any, **settings: Any) -> Path:
    path = tmp_path / "consentsync.yaml"
    write_starter(path, f"sqlite:///{tmp_path / 'ledger.db'}")
    data = yaml.safe_load(path.read_text())
    data["connectors"] = [
        {
            "name": NAME,
            "vendor": "salesforce",
            "mappings": [str(p) for p in harness.mapping_files],
            "settings": {**harness.connector_settings(), "max_attempts": 2, **settings},
        }
    ]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert _run(path, "init").exit_code == 0
    return path


def _run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


def test_a_login_url_with_a_user_and_password_never_shows_them(tmp_path: Path, harness: Any) -> None:
    port = _closed_port()
    config = _config(tmp_path, harness, login_url=f"https://user:{PASSWORD}@127.0.0.1:{port}")
    synced = _run(config, "--log-format", "json", "sync", NAME)
    assert synced.exit_code == exit_codes.UNAVAILABLE, synced.output
    # Still says where it could not get (scheme, host, port and path) and that credentials were hidden.
    said = f"token request to https://[redacted]@127.0.0.1:{port}/services/oauth2/token: host unreachable"
    assert said in synced.stdout and said in synced.stderr, synced.output
    assert f"cannot connect to 127.0.0.1:{port}" in synced.stdout
    assert '"event": "sync.interrupted"' in synced.stderr
    listed = _run(config, "runs", "list", "--json")
    assert listed.exit_code == 0 and said in listed.stdout, listed.output
    ledger = (tmp_path / "ledger.db").read_bytes()
    for text in (synced.stdout, synced.stderr, listed.stdout, ledger.decode("latin-1")):
        assert PASSWORD not in text and "user:" not in text


def test_the_sandbox_secret_is_redacted_without_the_words_it_shares(tmp_path: Path, harness: Any) -> None:
    secret = harness.connector_settings()["client_secret"]
    assert secret == "consentsync-sandbox-consumer-secret"  # the words this test is about
    config = _config(tmp_path, harness)
    # The connector registers the secret; the error then names the command to run, in full.
    missing = _run(config, "discover", NAME, "NoSuchObject")
    assert missing.exit_code == exit_codes.CONFIG, missing.output
    assert f"see `consentsync discover {NAME}` for the objects it has" in missing.stderr, missing.stderr
    assert "[redacted]" not in missing.output
    # An error that quotes the secret itself (here as the object asked for): that is hidden.
    quoted = _run(config, "discover", NAME, secret)
    assert quoted.exit_code == exit_codes.CONFIG, quoted.output
    assert "'[redacted]' is not a Salesforce API name" in quoted.stderr, quoted.stderr
    assert secret not in quoted.output


@pytest.mark.parametrize("version", ["v59.0", "59", "abc"])
def test_an_api_version_that_is_not_one_is_refused_when_the_settings_are_read(
    tmp_path: Path, harness: Any, version: str
) -> None:
    config = _config(tmp_path, harness, api_version=version)
    result = _run(config, "sync", NAME)
    assert result.exit_code == exit_codes.CONFIG, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if "api_version:" in text)
    assert lines == [
        f"consentsync: error: {config}:{line}: connectors[0].settings.api_version: expected a Salesforce "
        'API version such as "59.0" (a number and ".0", no "v"; 42.0 or later)'
    ], result.stderr
    assert "Traceback" not in result.output and "NOT_FOUND" not in result.output


def test_a_plan_that_cannot_be_made_exits_as_a_run_would(tmp_path: Path, harness: Any) -> None:
    """`plan` says why no plan could be made with the exit code a scheduler acts on: 69 for a CRM
    it cannot reach (retry later), 77 for refused credentials (alert an admin), not a bare 1."""
    unreachable = _config(tmp_path / "a", harness, login_url=f"https://127.0.0.1:{_closed_port()}")
    planned = _run(unreachable, "plan", NAME)
    assert planned.exit_code == exit_codes.UNAVAILABLE, planned.output
    said = planned.stderr.splitlines()[-1]  # after the retry log's lines
    assert said.startswith("consentsync: error: no plan: ") and "unreachable" in said, planned.stderr
    refused = _config(tmp_path / "b", harness, client_secret="not-the-secret")
    planned = _run(refused, "plan", NAME)
    assert planned.exit_code == exit_codes.CREDENTIALS, planned.output
    assert PASSWORD not in planned.output and "not-the-secret" not in planned.output
