"""Errors an admin can act on (issue 15): each bad config, damaged ledger or refused command ends
in one line `consentsync: error: ...` naming the file, line or field and what to do, with the exit
code of exit_codes.py, no traceback, and nothing changed."""

from __future__ import annotations

import gc
import os
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from consentsync_salesforce.sandbox.harness import MAPPINGS as SALESFORCE_MAPPINGS
from sqlalchemy import event

from consentsync import exit_codes
from consentsync.cli import main
from consentsync.config import write_starter
from consentsync.sdk.errors import Action, ErrorRule, Fault, network_error
from tests.conftest import one_line_error, proof

EMAIL = "ana@example.test"


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "consentsync.yaml"
    write_starter(path, f"sqlite:///{tmp_path / 'ledger.db'}")
    assert run(path, "init").exit_code == 0
    return path


def line_of(path: Path, text: str) -> int:
    return next(
        n for n, line in enumerate(path.read_text().splitlines(), 1) if line.lstrip().startswith(text)
    )


# -- the config file ------------------------------------------------------------------------------


def test_a_duplicate_key_names_both_lines(config: Path) -> None:
    first = line_of(config, "channels:")
    config.write_text(config.read_text() + "channels: [email]\n")
    second = len(config.read_text().splitlines())
    one_line_error(
        run(config, "status"),
        exit_codes.CONFIG,
        f"{config}:{second}: duplicate key 'channels'",
        f"first written at line {first}",
    )


def test_a_second_connectors_block_does_not_replace_the_first(config: Path) -> None:
    data = config.read_text()
    block = "connectors:\n  - name: {0}\n    vendor: salesforce\n    mappings: []\n    settings: {{}}\n"
    config.write_text(data + block.format("first") + block.format("second"))
    one_line_error(run(config, "status"), exit_codes.CONFIG, "duplicate key 'connectors'")


def test_a_config_that_is_not_utf8_names_its_line(config: Path) -> None:
    lines = config.read_bytes().splitlines(keepends=True)
    lines.insert(3, "# Zoë's notes\n".encode("latin-1"))
    config.write_bytes(b"".join(lines))
    one_line_error(
        run(config, "status"), exit_codes.CONFIG, f"{config}:4: not UTF-8", "save the file as UTF-8"
    )


def test_an_unknown_ledger_url_scheme(config: Path) -> None:
    config.write_text(config.read_text().replace("url: sqlite:///", "url: mysql://app:pw@db/x#", 1))
    message = one_line_error(
        run(config, "status"), exit_codes.CONFIG, f"{config}:{line_of(config, 'url: mysql')}: ledger.url"
    )
    assert "unknown URL scheme 'mysql'" in message and "postgresql://" in message
    assert "pw" not in message  # the URL (and its password) is not repeated


def test_a_postgres_ledger_without_its_driver_names_the_extra(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config.write_text(
        config.read_text().replace("url: sqlite:///", "url: postgresql://app@127.0.0.1:1/x#", 1)
    )
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if `pip install consentsync` alone
    one_line_error(
        run(config, "status"),
        exit_codes.CONFIG,
        "ledger.url",
        "pip install 'consentsync[postgres]'",
    )


# -- command-line input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("objection", "decide", str(2**63), "--uphold", "--by", "ops", "--reason", "r"),
        ("objection", "decide", str(2**64 + 5), "--reject", "--by", "ops", "--reason", "r"),
        ("outbox", "retry", str(2**63)),
        ("outbox", "retry", "1", str(2**70)),
    ],
)
def test_ids_beyond_64_bits_are_one_line_errors(config: Path, args: tuple[str, ...]) -> None:
    one_line_error(run(config, *args), exit_codes.CONFIG)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("runs", "list", "--limit", str(10**23)), "Invalid value for '--limit'"),
        (("outbox", "list", "--limit", "0"), "Invalid value for '--limit'"),
        (("apikey", "create"), "No such command 'create'"),
        (("user", "add", "x", "--role", "god"), "Invalid value for '--role'"),
        (("notice", "add"), "Missing argument 'PURPOSE'"),
        (("--nope", "status"), "No such option '--nope'"),
        (("objection", "decide", "1", "--uphold", "--reason", "r", "--by"), "'--by' requires an argument"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_command_s_help(
    config: Path, args: tuple[str, ...], words: str
) -> None:
    """click's own refusals (four lines: usage, hint, blank, error) are said like every other."""
    one_line_error(run(config, *args), exit_codes.CONFIG, words)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_output_that_cannot_be_written_is_one_line(config: Path) -> None:
    """stdout on a full disk: one line and exit 69, not an OSError's traceback; what the command
    recorded before it wrote its output stays recorded."""
    import subprocess

    command = [str(Path(sys.executable).parent / "consentsync"), "--config", str(config)]
    record = ["ledger", "record", "--email", EMAIL, "--purpose", "service", "--status", "granted", *proof()]
    for args in (["audit", "log"], ["status", "--json"], [*record, "--source", "web_form"]):
        with open("/dev/full", "w") as full:
            result = subprocess.run([*command, *args], stdout=full, stderr=subprocess.PIPE, text=True)
        assert result.returncode == exit_codes.UNAVAILABLE, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("consentsync: error: the output could not be written: No space left")
    assert EMAIL in run(config, "subject", "show", EMAIL).stdout


def test_a_bad_value_from_the_environment_names_the_variable(config: Path) -> None:
    result = CliRunner().invoke(
        main, ["--config", str(config), "status"], env={"CONSENTSYNC_LOG_LEVEL": "bogus"}
    )
    one_line_error(result, exit_codes.CONFIG, "'--log-level'", "environment variable CONSENTSYNC_LOG_LEVEL")
    given = CliRunner().invoke(main, ["--config", str(config), "--log-level", "bogus", "status"])
    assert "environment" not in one_line_error(given, exit_codes.CONFIG, "'--log-level'")


@pytest.mark.parametrize(
    "command",
    [
        ("subject", "export", EMAIL, "--format", "json", "-o"),
        ("plan", "sf", "-o"),
        ("discover", "sf", "Contact", "--mapping-out"),
    ],
)
def test_an_output_into_a_missing_folder(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    assert _record(config).exit_code == 0
    # The connector's CRM cannot be reached: the command is refused before it asks, not after.
    monkeypatch.setenv("SF_ADMIN_TEST_SECRET", "s3cret-value-for-this-test")
    _with_connector(config, SF_SETTINGS)
    target = tmp_path / "no" / "such" / "folder" / "out.json"
    one_line_error(run(config, *command, str(target)), exit_codes.CONFIG, f"no folder {target.parent}")
    assert not target.parent.exists()


# -- damaged ledgers ------------------------------------------------------------------------------


def _ledger(config: Path) -> Path:
    """The ledger file, with every connection of the commands run so far in this process closed
    (a pooled connection left open would write its pages back over the damage done below)."""
    gc.collect()
    return config.parent / "ledger.db"


def _record(config: Path, email: str = EMAIL) -> Result:
    args = "ledger record --purpose email_marketing --status granted --source web_form --email"
    return run(config, *args.split(), email, *proof())


def test_a_file_that_is_not_a_database(config: Path) -> None:
    _with_connector(config, SF_SETTINGS)  # for `consentsync run`
    ledger = _ledger(config)
    for suffix in ("-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    ledger.write_bytes(os.urandom(6000))
    for args in (("status",), ("audit", "verify"), ("subject", "show", EMAIL), ("run", "--no-metrics")):
        one_line_error(run(config, *args), exit_codes.CONFIG, str(ledger), "not a SQLite database", "backup")


def test_a_truncated_ledger(config: Path) -> None:
    for n in range(30):
        assert _record(config, f"p{n}@example.test").exit_code == 0
    ledger = _ledger(config)
    with sqlite3.connect(ledger) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = ledger.stat().st_size
    with ledger.open("r+b") as handle:
        handle.truncate(size // 2)
    for args in (("subject", "show", "p29@example.test"), ("audit", "verify"), ("runs", "list")):
        message = one_line_error(run(config, *args), exit_codes.CONFIG, str(ledger), "backup")
        assert "damaged" in message or "not a SQLite database" in message


def test_a_read_only_ledger_changes_nothing(config: Path) -> None:
    assert _record(config).exit_code == 0
    ledger = _ledger(config)
    with sqlite3.connect(ledger) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = ledger.read_bytes()
    # As root a 0444 file is still writable: SQLite's read-only open gives the same refusal.
    url = f"sqlite:///file:{ledger}?mode=ro&uri=true"
    config.write_text(config.read_text().replace(f"sqlite:///{ledger}", url))
    one_line_error(
        _record(config, "new@example.test"), exit_codes.CONFIG, str(ledger), "read-only", "writable"
    )
    assert ledger.read_bytes() == before


def test_a_full_disk_leaves_no_half_written_page(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _record(config).exit_code == 0
    ledger = _ledger(config)
    from consentsync.ledger import engine as engine_module

    made = engine_module.make_engine

    def full(url: str, **kwargs: Any) -> Any:
        engine = made(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _no_room(dbapi_connection: Any, _record: Any) -> None:
            pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

        return engine

    monkeypatch.setattr("consentsync.app.make_engine", full)
    failed = None
    for n in range(200):  # until a page more is needed (the free room left differs by layout)
        counts_before = _counts(ledger)
        result = _record(config, f"{'x' * 60}{n}@example.test")
        if result.exit_code != 0:
            failed = result
            break
        assert _counts(ledger)[0] == counts_before[0] + 1
    assert failed is not None, "the ledger never ran out of room"
    one_line_error(failed, exit_codes.UNAVAILABLE, str(ledger), "full", "free space")
    monkeypatch.setattr("consentsync.app.make_engine", made)  # room again (the key stays set)
    # The refused event left nothing behind (no event, no audit entry), every recorded event has
    # its audit entry, and the chain verifies.
    assert _counts(ledger) == counts_before
    with sqlite3.connect(ledger) as conn:
        recorded = conn.execute(
            "SELECT count(*) FROM audit_entries WHERE action = 'consent.recorded'"
        ).fetchone()[0]
    assert recorded == counts_before[0] == n + 1
    verified = run(config, "audit", "verify")
    assert verified.exit_code == 0, verified.output + verified.stderr


def _counts(ledger: Path) -> tuple[int, int]:
    with sqlite3.connect(ledger) as conn:
        events = conn.execute("SELECT count(*) FROM consent_events").fetchone()[0]
        entries = conn.execute("SELECT count(*) FROM audit_entries").fetchone()[0]
    return events, entries


def test_an_unreachable_postgres_ledger_is_transient(config: Path) -> None:
    config.write_text(
        config.read_text().replace(f"sqlite:///{_ledger(config)}", "postgresql://app@127.0.0.1:1/x")
    )
    one_line_error(run(config, "status"), exit_codes.UNAVAILABLE, "127.0.0.1:1/x", "cannot be reached")


# -- connectors -----------------------------------------------------------------------------------


def _with_connector(config: Path, settings: dict[str, Any]) -> None:
    data = yaml.safe_load(config.read_text())
    mapping = str(SALESFORCE_MAPPINGS / "contact.yaml")
    data["connectors"] = [{"name": "sf", "vendor": "salesforce", "mappings": [mapping], "settings": settings}]
    config.write_text(yaml.safe_dump(data, sort_keys=False))


SF_SETTINGS = {
    "login_url": "https://127.0.0.1:1",
    "auth": "client_credentials",
    "client_id": "cid",
    "client_secret": "${SF_ADMIN_TEST_SECRET}",
}


def test_a_settings_typo_names_the_line_and_the_accepted_keys(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SF_ADMIN_TEST_SECRET", "not-shown-anywhere-0123")
    _with_connector(config, {**SF_SETTINGS, "client_secrte": "also-not-shown-4567"})
    message = one_line_error(
        run(config, "sync", "sf"),
        exit_codes.CONFIG,
        f"{config}:{line_of(config, 'client_secrte')}: unknown key 'client_secrte'",
        "connectors[0].settings",
        "accepted are ",
        "client_secret",
    )
    assert "not-shown" not in message and "also-not-shown" not in message


def test_a_missing_environment_variable_names_the_line(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SF_ADMIN_TEST_SECRET", raising=False)
    _with_connector(config, SF_SETTINGS)
    one_line_error(
        run(config, "sync", "sf"),
        exit_codes.CONFIG,
        f"{config}:{line_of(config, 'client_secret:')}: connectors[0].settings.client_secret",
        "environment variable SF_ADMIN_TEST_SECRET is not set",
    )


JWT_SETTINGS = {"login_url": "https://127.0.0.1:1", "auth": "jwt", "client_id": "cid", "username": "u@x"}


@pytest.mark.parametrize(
    ("settings", "key"), [(SF_SETTINGS, "ca_bundle"), (JWT_SETTINGS, "private_key_file")]
)
def test_a_settings_file_that_is_not_there_names_the_line(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], key: str
) -> None:
    """Not an OSError at the run's first call (a traceback, exit 1): the setting and its line."""
    monkeypatch.setenv("SF_ADMIN_TEST_SECRET", "s3cret-value-for-this-test")
    missing = tmp_path / "gone" / "file.pem"
    _with_connector(config, {**settings, key: str(missing)})
    one_line_error(
        run(config, "sync", "sf"),
        exit_codes.CONFIG,
        f"{config}:{line_of(config, f'{key}:')}: connectors[0].settings.{key}",
        f"{missing}: no such file",
    )


def test_a_jwt_key_file_that_holds_no_key_is_the_admins_to_fix(config: Path, tmp_path: Path) -> None:
    garbled = tmp_path / "garbled.pem"
    garbled.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    _with_connector(config, {**JWT_SETTINGS, "private_key_file": str(garbled)})
    # Found at the run's first login: a failed run (its log line too), ended as a config error.
    result = run(config, "sync", "sf")
    assert result.exit_code == exit_codes.CONFIG, result.output
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[-1] == (
        f"consentsync: error: config: settings.private_key_file {garbled}: not an RSA private key in PEM"
    )


@pytest.mark.parametrize(
    "command",
    [("run", "--metrics-port"), ("run", "--no-metrics", "--web-port"), ("web", "--port")],
)
def test_a_port_in_use_is_one_line_before_anything_is_served(
    config: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    """Not the OSError's traceback of the daemon's metrics server, nor uvicorn's own error
    after the console said where it was."""
    monkeypatch.setenv("SF_ADMIN_TEST_SECRET", "s3cret-value-for-this-test")
    _with_connector(config, SF_SETTINGS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(config, *command, str(port))
    assert result.exit_code == exit_codes.CONFIG, result.output
    assert "Traceback" not in result.output and "ops console at" not in result.output
    assert result.stderr.splitlines()[-1] == (
        f"consentsync: error: {command[-1]} {port} on 127.0.0.1 is in use (another program listens "
        f"there): pass {command[-1]} with a free port (or 0 to pick one)"
    )


def test_an_unreachable_crm_is_transient_and_says_so(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_ADMIN_TEST_SECRET", "s3cret-value-for-this-test")
    _with_connector(config, {**SF_SETTINGS, "max_attempts": 1, "timeout": 2})
    result = run(config, "sync", "sf")
    assert result.exit_code == exit_codes.UNAVAILABLE, result.output
    assert "host unreachable: cannot connect to 127.0.0.1:1" in result.stdout
    assert "Traceback" not in result.output


def test_network_errors_say_which_they_are() -> None:
    import requests

    tls = network_error(
        "describe Contact", requests.exceptions.SSLError("certificate verify failed"), "crm:443"
    )
    assert "TLS refused" in str(tls) and "ca_bundle" in str(tls)
    assert exit_codes.for_connector_error(tls.rule) == exit_codes.CONFIG and tls.action is Action.FAIL
    down = network_error("describe Contact", requests.exceptions.ConnectionError("refused"), "crm:443")
    assert "host unreachable" in str(down) and down.action is Action.RETRY
    assert exit_codes.for_connector_error(down.rule) == exit_codes.UNAVAILABLE
    refused = ErrorRule(Action.FAIL, Fault.CONFIG, "credentials refused", 401, credentials=True)
    assert exit_codes.for_connector_error(refused) == exit_codes.CREDENTIALS
    limit = ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "budget")
    assert exit_codes.for_connector_error(limit) == exit_codes.STOPPED
