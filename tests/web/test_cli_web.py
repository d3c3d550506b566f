"""`consentsync user`, `consentsync web` and `consentsync runs retry` from the command line, on
SQLite and PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import SQLITE_ONLY, Cli
from tests.web.conftest import World

CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")


@SQLITE_ONLY
def test_user_commands_hash_passwords_check_input_and_audit(cli: Cli) -> None:
    result = cli(
        "user", "add", "Ops.Lead", "--role", "reviewer", "--password-stdin", input="a-long-enough-password\n"
    )
    assert result.exit_code == 0, result.output
    assert "ops.lead added with role reviewer" in result.output
    (row,) = cli.json("user", "list")
    assert (row["name"], row["role"], row["disabled"]) == ("ops.lead", "reviewer", False)
    short = cli("user", "add", "bob", "--role", "viewer", "--password-stdin", input="short\n")
    assert short.exit_code == 2 and "at least 12 characters" in short.stderr
    again = cli(
        "user", "add", "ops.lead", "--role", "viewer", "--password-stdin", input="another-long-password\n"
    )
    assert again.exit_code == 2 and "exists already" in again.stderr
    bad = cli(
        "user", "add", "no spaces", "--role", "viewer", "--password-stdin", input="another-long-password\n"
    )
    assert bad.exit_code == 2 and "lower-case letters" in bad.stderr
    # No password to read: one line each, no getpass warning, no "Aborted!".
    for args, said in (
        (("--password-stdin",), "--password-stdin: no password line on standard input: pipe one in"),
        ((), "no terminal to ask for the password on: run it on one, or pass --password-stdin"),
    ):
        for command in (("user", "add", "carol", "--role", "viewer"), ("user", "passwd", "ops.lead")):
            none = cli(*command, *args, input="")
            assert none.exit_code == 2 and none.stderr.strip() == f"consentsync: error: {said}", none.stderr
    cli.ok("user", "role", "ops.lead", "admin")
    assert (
        cli(
            "user", "add", "second", "--role", "admin", "--password-stdin", input="yet-another-pw-1\n"
        ).exit_code
        == 0
    )
    cli.ok("user", "disable", "ops.lead")
    row = cli.json("user", "list")[0]
    assert (row["name"], row["role"], row["disabled"]) == ("ops.lead", "admin", True)
    actions = [e["action"] for e in cli.json("audit", "log") if e["action"].startswith("user.")]
    assert actions == ["user.added", "user.role_changed", "user.added", "user.disabled"]
    assert "a-long-enough-password" not in str(cli.json("audit", "log"))
    # Who changed an account: the login name by default, as every other command records it; a
    # blank --actor is refused (one line, exit 2, nothing changed), never recorded as nobody.
    from consentsync.cli_base import login_name

    changes = [e for e in cli.json("audit", "log") if e["action"].startswith("user.")]
    assert {e["actor"] for e in changes} == {login_name()}, changes
    blank = cli("user", "disable", "ops.lead", "--enable", "--actor", "  ")
    assert blank.exit_code == 2 and "--actor is blank" in blank.stderr and "Traceback" not in blank.output
    assert cli.json("user", "list")[0]["disabled"] is True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@SQLITE_ONLY
def test_consentsync_web_serves_the_login_page_and_nothing_else_anonymously(cli: Cli) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [CONSENTSYNC, "--config", str(cli.config_path), "web", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                login = requests.get(f"{base}/login", timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the console did not start"
                time.sleep(0.2)
        assert login.status_code == 200 and "Log in" in login.text
        assert requests.get(f"{base}/", allow_redirects=False, timeout=5).status_code == 303
        assert requests.get(f"{base}/api/runs", timeout=5).status_code == 401
        assert requests.get(f"{base}/api/openapi.json", timeout=5).status_code == 401
        docs = requests.get(f"{base}/api/docs", allow_redirects=False, timeout=5)
        assert docs.status_code == 303 and docs.headers["location"] == "/login?next=/api/docs"
        foreign = requests.get(f"{base}/login", headers={"Host": f"attacker.example:{port}"}, timeout=5)
        assert foreign.status_code == 400
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=20)
    assert b"user add" in err  # no account yet: it says how to add one


@SQLITE_ONLY
def test_runs_retry_from_the_shell(world: World, cli: Cli) -> None:
    run = cli.json("runs", "show", world.run_id)
    (held,) = [q for q in run["quarantined_records"] if q["record_id"] == world.odd_record]
    result = cli.ok("runs", "retry", str(held["id"]), "--actor", "ops-oncall")
    assert "reads it again" in result.stdout
    (entry,) = cli.json("audit", "log", "--action", "quarantine.retried")
    assert entry["actor"] == "ops-oncall"
    missing = cli("runs", "retry", "424242", "--actor", "ops")
    assert missing.exit_code == 2 and "no quarantined record with id 424242" in missing.stderr
