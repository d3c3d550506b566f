"""No secret, nor any part of one, in any output (issue 15): known secrets are seeded, every
failure path of every connector is run against its sandbox (a wrong secret, a wrong token URL, a
missing environment variable, a refused grant, a misspelt settings key holding the secret, a
certificate that does not verify), from `consentsync sync` and from the daemon; every stream,
the daemon's log file and the ledger itself are searched for any 8-character piece of a secret."""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from consentsync import exit_codes
from consentsync.cli import main
from consentsync.config import write_starter
from consentsync.sdk.errors import SECRET_FRAGMENT
from consentsync.sdk.harness import available_harnesses

VENDORS = ("salesforce", "hubspot", "superoffice", "dynamics", "vtiger")
#: The setting that says where to log in (or, without a login, where the API is).
LOGIN_URL = {
    "salesforce": "login_url",
    "superoffice": "token_url",
    "dynamics": "token_url",
    "hubspot": "api_url",
    "vtiger": "url",
}
#: The setting holding each connector's secret (what bad_credentials_settings sets).
SECRET_KEY = {
    "salesforce": "client_secret",
    "superoffice": "client_secret",
    "dynamics": "client_secret",
    "hubspot": "access_token",
    "vtiger": "access_key",
}


def _secret() -> str:
    # Characters that end a "client_secret=..." pattern early (, " } &) sit inside the secret:
    # redaction must not depend on what surrounds it.
    return f'Zk{secrets.token_hex(6)},"}}&{secrets.token_hex(6)}'


@pytest.fixture(scope="module")
def harnesses() -> Iterator[dict[str, Any]]:
    found = available_harnesses()
    started = {}
    try:
        for vendor in VENDORS:
            harness = found[vendor].load()()
            harness.start()
            started[vendor] = harness
        yield started
    finally:
        for harness in started.values():
            harness.stop()


def _paths(vendor: str, harness: Any, secret: str, env: str, tmp: Path) -> dict[str, dict[str, Any]]:
    """Each failure path of a connector, as its ``settings:`` block."""
    fast = {"max_attempts": 1, "timeout": 2.0}
    bad = {**harness.bad_credentials_settings("${" + env + "}"), **fast}
    refused = dict(bad)
    if vendor == "hubspot":
        token_file = tmp / f"{vendor}-token"
        token_file.write_text(secret + "\n")
        refused.pop("access_token", None)
        refused["access_token_file"] = str(token_file)
    elif vendor == "vtiger":
        refused["username"] = "nobody"
    elif vendor == "superoffice":
        refused["refresh_token"] = "${" + env + "}"
    else:
        refused["client_id"] = "no-such-client"
    typo = {k: v for k, v in bad.items() if k != SECRET_KEY[vendor]}
    typo[SECRET_KEY[vendor][:-2] + SECRET_KEY[vendor][-1] + SECRET_KEY[vendor][-2]] = secret
    return {
        "bad_secret": bad,
        "bad_token_url": {**bad, LOGIN_URL[vendor]: bad[LOGIN_URL[vendor]].rstrip("/") + "/no/such/path"},
        "missing_env": {**bad, SECRET_KEY[vendor]: "${CONSENTSYNC_TEST_UNSET_SECRET}"},
        "refused_grant": refused,
        "settings_typo": typo,
        "tls_refused": {**bad, "ca_bundle": None},
    }


def _config(tmp: Path, connectors: list[dict[str, Any]]) -> Path:
    path = tmp / "consentsync.yaml"
    write_starter(path, f"sqlite:///{tmp / 'ledger.db'}")
    data = yaml.safe_load(path.read_text())
    data["connectors"] = connectors
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _leaks(text: str, seeded: list[str]) -> list[str]:
    return sorted(
        {
            secret[i : i + SECRET_FRAGMENT]
            for secret in seeded
            for i in range(len(secret) - SECRET_FRAGMENT + 1)
            if secret[i : i + SECRET_FRAGMENT] in text
        }
    )


def test_no_failure_path_shows_a_secret(
    harnesses: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("CONSENTSYNC_TEST_UNSET_SECRET", raising=False)
    seeded: list[str] = []
    connectors: list[dict[str, Any]] = []
    expected: dict[str, tuple[int, ...]] = {}
    for vendor, harness in harnesses.items():
        secret, env = _secret(), f"CONSENTSYNC_TEST_{vendor.upper()}_SECRET"
        seeded.append(secret)
        monkeypatch.setenv(env, secret)
        for path, settings in _paths(vendor, harness, secret, env, tmp_path).items():
            name = f"{vendor}-{path}".replace("_", "-")
            connectors.append(
                {
                    "name": name,
                    "vendor": vendor,
                    "mappings": [str(p) for p in harness.mapping_files],
                    "settings": settings,
                    "schedule": {"interval_seconds": 3600},
                }
            )
            expected[name] = {
                "bad_secret": (exit_codes.CREDENTIALS,),
                "refused_grant": (exit_codes.CREDENTIALS,),
                "missing_env": (exit_codes.CONFIG,),
                "settings_typo": (exit_codes.CONFIG,),
                "tls_refused": (exit_codes.CONFIG,),
                # A wrong path answers 404 (the config's) or, on an API root, a refusal.
                "bad_token_url": (exit_codes.CONFIG, exit_codes.CREDENTIALS, exit_codes.FAILED),
            }[path]
    config = _config(tmp_path, connectors)
    runner = CliRunner()
    outputs: list[str] = []
    assert runner.invoke(main, ["--config", str(config), "init"]).exit_code == 0
    for name, codes in expected.items():
        for args in (("sync", name), ("sync", name, "--json"), ("mapping", "check", "--against", name)):
            result = runner.invoke(main, ["--log-level", "DEBUG", "--config", str(config), *args])
            outputs += [result.stdout, result.stderr]
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                name,
                result.exception,
            )
            assert "Traceback" not in result.output, (name, result.output)
            if args[0] == "sync":
                assert result.exit_code in codes, (name, result.exit_code, result.output[-600:])
    for args in (("runs", "list", "--json", "--limit", "200"), ("status", "--json")):
        outputs.append(runner.invoke(main, ["--config", str(config), *args]).output)

    # The daemon: every connector fails its first run; its log goes to a file.
    log_file = tmp_path / "daemon.log"
    with log_file.open("w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "consentsync.cli", "--config", str(config), "run", "--no-metrics"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CONSENTSYNC_LOG_LEVEL": "DEBUG"},
        )
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _runs(tmp_path) < 2 * len(expected):
                time.sleep(0.2)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=15)
    assert _runs(tmp_path) >= 2 * len(expected), log_file.read_text()[-2000:]
    outputs.append(log_file.read_text())
    assert "Traceback" not in outputs[-1], outputs[-1][-3000:]

    captured = capfd.readouterr()  # anything written to the process's own stdout and stderr
    outputs += [captured.out, captured.err]
    ledger = tmp_path / "ledger.db"
    outputs += [
        Path(f"{ledger}{suffix}").read_bytes().decode("latin-1")
        for suffix in ("", "-wal")
        if Path(f"{ledger}{suffix}").exists()
    ]
    everything = "\n".join(outputs)
    assert not _leaks(everything, seeded), _leaks(everything, seeded)
    # The checks above looked at real messages: each path said what it was.
    for needle in ("credentials", "TLS refused", "CONSENTSYNC_TEST_UNSET_SECRET", "unknown key"):
        assert needle in everything, needle


def _runs(directory: Path) -> int:
    try:
        with sqlite3.connect(directory / "ledger.db", timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM sync_runs WHERE status != 'running'").fetchone()[0])
    except sqlite3.Error:
        return 0
