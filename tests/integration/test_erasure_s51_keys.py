"""Session 51: the erasure key in use must be the one the ledger is keyed with. A process with
another key (CONSENTSYNC_ERASURE_KEY in a container winning over the key file an admin shell
reads; a rotated or mistyped key) no longer recognised an erased person, and recorded her again
as someone new: an erasure undone by the next sync."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, func, select

from consentsync.config import ERASURE_KEY_ENV, load_config
from consentsync.ledger.schema import audit_head, ledger_settings, subjects, suppressions
from tests.conftest import TEST_ERASURE_KEY, Cli, own_environment, proof, record_args

CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")
OTHER_KEY = "another-erasure-key-0123456789abcdef"


def _consentsync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CONSENTSYNC, *args], env=env, capture_output=True, text=True, timeout=120)


def _state(cli: Cli) -> tuple[Any, ...]:
    """What a refused command must leave as it was: people, suppressions, the chain's head and
    the stored key check."""
    engine = create_engine(load_config(cli.config_path).ledger_url)
    try:
        with engine.connect() as conn:
            return (
                conn.execute(select(func.count()).select_from(subjects)).scalar_one(),
                conn.execute(select(func.count()).select_from(suppressions)).scalar_one(),
                tuple(conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()),
                tuple(
                    conn.execute(
                        select(ledger_settings.c.name, ledger_settings.c.value).where(
                            ledger_settings.c.name == "erasure_key_check"
                        )
                    ).all()
                ),
            )
    finally:
        engine.dispose()


def _refused(done: subprocess.CompletedProcess[str], *named: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert (
        "Traceback" not in done.stderr
        and TEST_ERASURE_KEY not in done.stderr
        and OTHER_KEY not in done.stderr
    )
    assert "is not the one the ledger" in lines[0] and "import them again" in lines[0]
    for words in named:
        assert words in lines[0], lines[0]


def test_a_process_with_another_key_is_refused_and_changes_nothing(cli: Cli, tmp_path: Path) -> None:
    cli.ok(*record_args("gone@example.com", "email_marketing", "granted", *proof()))
    cli.ok("erase", "--email", "gone@example.com", "--reason", "art17 request", "--yes")
    before = _state(cli)
    comes_back = record_args("gone@example.com", "email_marketing", "granted", *proof(), source="crm")

    # A container's environment variable, winning over the config's key file.
    in_container = own_environment(tmp_path, OTHER_KEY)
    _refused(_consentsync(in_container, *comes_back), f"environment variable {ERASURE_KEY_ENV}", "wins over")
    assert _state(cli) == before

    # An admin shell without the variable: the config's key file (init wrote another key).
    in_shell = own_environment(tmp_path, TEST_ERASURE_KEY)
    del in_shell[ERASURE_KEY_ENV]
    key_file = cli.config_path.parent / "consentsync.key"
    _refused(_consentsync(in_shell, *comes_back), f"key file {key_file}")
    _refused(_consentsync(in_shell, "status"), f"key file {key_file}")  # reads are refused too
    assert _state(cli) == before

    # The ledger's own key: the address is recognised as erased, and an untrusted grant for it
    # is refused (session 57: ops' `ledger record` applies the capture API's rule).
    done = _consentsync(own_environment(tmp_path, TEST_ERASURE_KEY), *comes_back, "--json")
    assert done.returncode == 2, done.stderr
    assert "the address was erased" in done.stderr and "gone@example.com" not in done.stderr
    assert _state(cli) == before  # nothing recorded, no second suppression


def test_the_check_value_is_no_key_and_is_stored_once(cli: Cli) -> None:
    (stored,) = _state(cli)[3]
    assert stored[0] == "erasure_key_check"
    assert stored[1].startswith("hmac-sha256:") and TEST_ERASURE_KEY not in stored[1]
    cli.ok("status")
    assert _state(cli)[3] == (stored,)


def test_a_ledger_holding_nothing_keyed_takes_a_new_key(cli: Cli, tmp_path: Path) -> None:
    """Right after init nothing is keyed: a new key loses nothing (session 50's init writes a
    key file lost before anything was recorded), and from then on it is the ledger's key."""
    (first,) = _state(cli)[3]
    env = own_environment(tmp_path, OTHER_KEY)
    done = _consentsync(env, *record_args("new@example.com", "email_marketing", "granted", *proof()))
    assert done.returncode == 0, done.stderr
    (taken,) = _state(cli)[3]
    assert taken != first
    refused = cli("status")  # in-process, with the harness's key: the one the ledger had first
    assert refused.exit_code == 2
    assert f"environment variable {ERASURE_KEY_ENV}" in refused.stderr
    assert "is not the one the ledger" in refused.stderr


def test_a_ledger_from_before_the_check_takes_only_the_key_its_snapshots_were_made_with(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger an older version made holds no key check: the first key that opens it after the
    upgrade is stored. Where its CRM snapshots were keyed by another key, that first key is the
    wrong one (the container's env key, say): it is refused, nothing stored, and the right key,
    opening it next, is taken."""
    from consentsync_salesforce.sandbox import SalesforceSandbox

    from tests.integration.test_cli_sync import connect_sandbox

    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(8, seed=51)
        connect_sandbox(sandbox, cli.config_path, monkeypatch)
        env = own_environment(tmp_path, OTHER_KEY)
        assert cli.ok("sync", "sf", "--full")
    engine = create_engine(load_config(cli.config_path).ledger_url)
    try:
        with engine.begin() as conn:
            conn.execute(delete(ledger_settings))  # as a ledger migrated from 0013 is
    finally:
        engine.dispose()

    refused = _consentsync({**env, "CONSENTSYNC_CONFIG": str(cli.config_path)}, "status")
    _refused(refused, f"environment variable {ERASURE_KEY_ENV}", "crm_snapshots")
    assert _state(cli)[3] == ()
    assert cli("status").exit_code == 0  # the key the ledger was made with
    assert len(_state(cli)[3]) == 1


def test_a_running_process_keeps_the_key_it_checked(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon runs for weeks: the key its environment or key file gives may change under it (a
    rotation, a file overwritten). It goes on with the key the ledger was checked against: with
    the new one it no longer recognised the people erased under the old, and recorded them anew."""
    from dataclasses import replace
    from datetime import timedelta

    from consentsync.app import open_ledger
    from consentsync.domain import ConsentStatus, Evidence, Origin
    from consentsync.ledger.identity import Identity
    from consentsync.ledger.service import utcnow

    cli.ok(*record_args("gone@example.com", "email_marketing", "granted", *proof()))
    cli.ok("erase", "--email", "gone@example.com", "--reason", "art17 request", "--yes")
    ledger = open_ledger(load_config(cli.config_path))
    try:
        monkeypatch.setenv(ERASURE_KEY_ENV, OTHER_KEY)  # the key changed under the running process
        now = utcnow()
        read_from_a_crm = replace(
            Evidence.from_web_form(ConsentStatus.GRANTED, now - timedelta(seconds=5), now),
            source="crm",
            origin=Origin.CRM,
        )
        outcome = ledger.record(Identity(email="gone@example.com"), read_from_a_crm)
        assert outcome.after is not None
        assert outcome.after.suppressed and outcome.after.rule == "erasure_suppression", (
            "the erased person was recorded again as someone who may be mailed"
        )
        assert ledger.erasure_key() == TEST_ERASURE_KEY.encode()
    finally:
        ledger.engine.dispose()
