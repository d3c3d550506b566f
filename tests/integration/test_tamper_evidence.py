"""Tamper evidence that holds against the database owner (docs/tamper-evidence.md): the owner
can rewrite the whole chain or cut its tail so that `audit verify` passes, but not so that the
chain still extends the signed checkpoints; consent events and their audit entries must agree;
on PostgreSQL an application role cannot rewrite the audit tables at all."""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import DBAPIError

from consentsync import audit, exit_codes
from consentsync.checkpoints import KEY_ENV
from consentsync.config import load_config
from consentsync.ledger.schema import (
    audit_details,
    audit_entries,
    audit_head,
    consent_events,
    consent_states,
    subject_identifiers,
    subjects,
)
from consentsync.ledger.service import Ledger
from tests.conftest import Cli, proof
from tests.integration.test_audit_chain import _grant
from tests.integration.test_cli_sync import connect_sandbox

EXIT_CONFIG = 2


def _configure_checkpoints(cli: Cli, **extra: Any) -> Path:
    """Writes a signing key with `audit keygen` and turns checkpoints on; returns their directory."""
    data = yaml.safe_load(cli.config_path.read_text())
    data["audit"] = {"checkpoints": {"directory": "checkpoints", "key_file": "signing.key", **extra}}
    cli.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    cli.ok("audit", "keygen")
    return cli.config_path.parent / "checkpoints"


def _head(engine: Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        row = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
    return row.seq, row.hash


def _as_owner_unprotected(engine: Engine) -> None:
    """What the owner of the tables does first: the append-only triggers go."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            for table in ("audit_entries", "consent_events", "audit_head"):
                conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        else:
            names = (
                conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars().all()
            )
            for name in names:
                conn.execute(text(f'DROP TRIGGER "{name}"'))


def _rewrite_from(engine: Engine, first: int, edit: Any) -> None:
    """Edits entry ``first`` with ``edit(payload)`` and recomputes every hash after it, and the head."""
    with engine.begin() as conn:
        rows = conn.execute(
            select(audit_entries.c.seq, audit_entries.c.payload, audit_entries.c.prev_hash)
            .where(audit_entries.c.seq >= first)
            .order_by(audit_entries.c.seq)
        ).all()
        prev = rows[0].prev_hash
        for row in rows:
            payload = row.payload
            if row.seq == first:
                payload = json.dumps(edit(json.loads(payload)), sort_keys=True, separators=(",", ":"))
            digest = audit.chain_hash(prev, payload)
            conn.execute(
                audit_entries.update()
                .where(audit_entries.c.seq == row.seq)
                .values(payload=payload, prev_hash=prev, hash=digest)
            )
            prev = digest
        conn.execute(audit_head.update().values(hash=prev))


def _recorded_seq(engine: Engine, email_uid: str) -> int:
    with engine.connect() as conn:
        return (
            conn.execute(
                select(audit_entries.c.seq).where(
                    audit_entries.c.action == "consent.recorded", audit_entries.c.subject_uid == email_uid
                )
            )
            .scalars()
            .first()
        )


def test_a_recomputed_chain_passes_verify_but_not_the_checkpoints(cli: Cli, ledger: Ledger) -> None:
    directory = _configure_checkpoints(cli)
    for day, email in enumerate(["a@example.com", "b@example.com", "c@example.com"], start=1):
        _grant(ledger, email, day)
    cli.ok("audit", "checkpoint")
    signed_seq, _ = _head(ledger.engine)
    _grant(ledger, "d@example.com", 4)
    assert "checkpoints verified" in cli.ok("audit", "verify", "--checkpoints", str(directory)).stdout

    # The owner changes what b's consent became, and recomputes the chain from there on.
    (uid,) = ledger.subject_uids_for_email("b@example.com")
    edited = _recorded_seq(ledger.engine, uid)
    assert edited < signed_seq
    _as_owner_unprotected(ledger.engine)
    _rewrite_from(ledger.engine, edited, lambda p: {**p, "new": {**p["new"], "status": "withdrawn"}})

    plain = cli("audit", "verify")
    assert plain.exit_code == 0, plain.output  # the chain alone cannot tell
    result = cli("audit", "verify", "--checkpoints", str(directory))
    assert result.exit_code == exit_codes.AUDIT_BROKEN
    (checkpoint,) = sorted(directory.glob("checkpoint-*.json"))
    assert f"checkpoint FAILED: {checkpoint.name} (entry {signed_seq}" in result.stdout
    assert "rewritten" in result.stdout
    as_json = json.loads(cli("audit", "verify", "--checkpoints", str(directory), "--json").stdout)
    assert as_json["ok"] is False and as_json["chain_ok"] is True
    assert as_json["checkpoints"]["first_failure"]["file"] == checkpoint.name


def test_a_cut_tail_passes_verify_but_not_the_checkpoints(cli: Cli, ledger: Ledger) -> None:
    directory = _configure_checkpoints(cli)
    _grant(ledger, "a@example.com", 1)
    kept, kept_hash = _head(ledger.engine)
    _grant(ledger, "b@example.com", 2)  # the entries the owner wants gone
    cli.ok("audit", "checkpoint")
    signed_seq, _ = _head(ledger.engine)
    assert cli("audit", "verify", "--checkpoints", str(directory)).exit_code == 0

    # The owner deletes b's event, its state and every entry after `kept`, and moves the head
    # back (a state left without its event is named by verify since session 57).
    (uid,) = ledger.subject_uids_for_email("b@example.com")
    _as_owner_unprotected(ledger.engine)
    with ledger.engine.begin() as conn:
        conn.execute(audit_details.delete().where(audit_details.c.seq > kept))
        conn.execute(audit_entries.delete().where(audit_entries.c.seq > kept))
        b_id = select(subjects.c.id).where(subjects.c.uid == uid).scalar_subquery()
        conn.execute(consent_events.delete().where(consent_events.c.subject_id == b_id))
        conn.execute(consent_states.delete().where(consent_states.c.subject_id == b_id))
        # b's address too: the chain bound it to b (audit_bindings), so left behind it would be
        # named by verify, an address the chain no longer holds.
        conn.execute(subject_identifiers.delete().where(subject_identifiers.c.subject_id == b_id))
        conn.execute(audit_head.update().values(seq=kept, hash=kept_hash))

    assert cli("audit", "verify").exit_code == 0
    result = cli("audit", "verify", "--checkpoints", str(directory))
    assert result.exit_code == exit_codes.AUDIT_BROKEN
    (checkpoint,) = directory.glob("checkpoint-*.json")
    assert f"checkpoint FAILED: {checkpoint.name} (entry {signed_seq}" in result.stdout
    assert f"signed entry {signed_seq}, but the chain's head is at entry {kept}" in result.stdout
    assert "cut" in result.stdout


def test_a_bad_signature_or_another_key_is_named(cli: Cli, ledger: Ledger, tmp_path: Path) -> None:
    directory = _configure_checkpoints(cli)
    _grant(ledger, "a@example.com", 1)
    cli.ok("audit", "checkpoint")
    (path,) = directory.glob("checkpoint-*.json")
    other = tmp_path / "other.key"
    cli.ok("audit", "keygen", "-o", str(other))
    result = cli("audit", "verify", "--checkpoints", str(directory), "--public-key", f"{other}.pub")
    assert result.exit_code == exit_codes.AUDIT_BROKEN
    assert "bad signature: signed by key" in result.stdout

    fields = json.loads(path.read_text())
    path.write_text(json.dumps({**fields, "seq": fields["seq"] - 1}))
    public = cli.config_path.parent / "signing.key.pub"
    result = cli("audit", "verify", "--checkpoints", str(directory), "--public-key", str(public))
    assert result.exit_code == exit_codes.AUDIT_BROKEN
    assert f"checkpoint FAILED: {path.name}" in result.stdout
    assert "bad signature: the checkpoint was edited after it was signed" in result.stdout


def test_events_and_entries_must_agree(cli: Cli, ledger: Ledger) -> None:
    _grant(ledger, "a@example.com", 1)
    _grant(ledger, "b@example.com", 2)
    result = cli.ok("audit", "verify")
    assert "consent events and audit entries agree: 2 events" in result.stdout
    _as_owner_unprotected(ledger.engine)
    with ledger.engine.begin() as conn:
        first = conn.execute(select(consent_events.c.id).order_by(consent_events.c.id)).scalars().first()
        conn.execute(consent_events.update().where(consent_events.c.id == first).values(status="withdrawn"))
    result = cli("audit", "verify")
    assert result.exit_code == exit_codes.AUDIT_BROKEN
    assert "audit chain verified" in result.stdout  # the chain itself is whole
    assert f"consent event {first} has no audit entry saying the same" in result.stdout


def test_keygen_writes_0600_and_never_overwrites(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "keys" / "signing.key"
    key.parent.mkdir()
    cli.ok("audit", "keygen", "-o", str(key))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    result = cli("audit", "keygen", "-o", str(key))
    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.startswith(f"consentsync: error: {key} exists: refusing to overwrite")
    assert "Traceback" not in result.output and key.read_bytes() == before


def test_checkpoint_settings_without_a_key_are_one_line_errors(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = yaml.safe_load(cli.config_path.read_text())
    data["audit"] = {"checkpoints": {"directory": "checkpoints"}}
    cli.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.delenv(KEY_ENV, raising=False)
    result = cli("audit", "checkpoint")
    assert result.exit_code == EXIT_CONFIG
    assert "audit.checkpoints.directory is set but there is no signing key" in result.stderr
    monkeypatch.setenv(KEY_ENV, "not a key")
    result = cli("audit", "checkpoint")
    assert result.exit_code == EXIT_CONFIG
    assert f"environment variable {KEY_ENV}: not an Ed25519 private key" in result.stderr
    result = cli("audit", "verify", "--checkpoints", str(cli.config_path.parent / "nowhere"))
    assert result.exit_code == EXIT_CONFIG and "Traceback" not in result.output


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)  # the same hooks on PostgreSQL
def test_each_sync_run_and_the_daemon_write_checkpoints(
    cli: Cli, ledger: Ledger, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consentsync.sync.daemon import Daemon

    directory = _configure_checkpoints(cli, interval_seconds=1)
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(5, seed=3)
        connect_sandbox(sandbox, config_path, monkeypatch)
        run = json.loads(cli.ok("sync", "sf", "--json").stdout)
    (written,) = directory.glob("checkpoint-*.json")
    checkpoint = json.loads(written.read_text())
    assert (checkpoint["reason"], checkpoint["run_id"]) == ("run", run["run_id"])
    assert checkpoint["seq"] == _head(ledger.engine)[0] > 0

    _grant(ledger, "late@example.com", 3)  # the head moves: the daemon's interval signs it
    daemon = Daemon(load_config(config_path), ledger)
    daemon.start(run_now=False)
    try:
        deadline = time.monotonic() + 10
        while len(list(directory.glob("checkpoint-*.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        daemon.stop()
    newest = json.loads(max(directory.glob("checkpoint-*.json")).read_text())
    assert (newest["reason"], newest["seq"]) == ("interval", _head(ledger.engine)[0])
    assert cli("audit", "verify", "--checkpoints", str(directory)).exit_code == 0


# -- PostgreSQL: the application role ----------------------------------------------------------------


def _app_url(owner_url: str, role: str) -> str:
    """The ledger URL as the application role: the same session user, its privileges dropped to
    ``role`` at connection start (as if it had logged in; no password set-up needed)."""
    marker = "options=-csearch_path%3D"
    assert marker in owner_url
    return owner_url.replace(marker, f"options={quote(f'-crole={role} ')}-csearch_path%3D", 1)


@pytest.mark.parametrize("ledger_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_the_application_role_cannot_rewrite_the_audit_log(
    cli: Cli, ledger: Ledger, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = f"cs_app_{uuid.uuid4().hex[:10]}"
    owner = ledger.engine
    with owner.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} NOLOGIN"))
    app: Engine | None = None
    try:
        _grant(ledger, "a@example.com", 1)
        warned = cli("doctor")
        assert "WARNING" in warned.stdout
        assert "the owner of the audit tables" in warned.stdout or "a superuser" in warned.stdout
        cli.ok("db", "grant", "--app-role", role)

        app_url = _app_url(ledger_url, role)
        app = create_engine(app_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with app.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == role
        head_seq, _ = _head(owner)
        for statement in (
            "ALTER TABLE audit_entries DISABLE TRIGGER USER",
            "DROP TRIGGER audit_entries_append_only ON audit_entries",
            "UPDATE audit_entries SET payload = '{}' WHERE seq = 1",
            "DELETE FROM audit_entries WHERE seq = 1",
            "TRUNCATE audit_entries",
            f"UPDATE audit_head SET seq = {head_seq - 1}",
            "UPDATE audit_head SET hash = repeat('0', 64)",
            "DELETE FROM audit_head",
            "UPDATE consent_events SET status = 'withdrawn'",
            "DELETE FROM ledger_settings",  # the erasure key's check: gone, another key was taken
        ):
            with pytest.raises(DBAPIError), app.begin() as conn:
                conn.execute(text(statement))

        # The daemon and the CLI as the application role: recording still appends and moves the head.
        data = yaml.safe_load(cli.config_path.read_text())
        data["ledger"]["url"] = app_url
        cli.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        cli.ok(
            "ledger", "record", "--email", "b@example.com", "--purpose", "email_marketing",
            "--status", "granted", "--source", "web_form", *proof(),
        )  # fmt: skip
        assert _head(owner)[0] > head_seq
        with SalesforceSandbox() as sandbox:  # a sync run: leases, cursors, outbox, runs, analyse
            sandbox.org.seed(5, seed=3)
            connect_sandbox(sandbox, cli.config_path, monkeypatch)
            run = json.loads(cli.ok("sync", "sf", "--json").stdout)
        assert run["status"] == "succeeded" and run["counts"]["evidence_recorded"] > 0
        assert "audit chain verified" in cli.ok("audit", "verify").stdout
        checked = cli("doctor", "--json")
        assert checked.exit_code == 0, checked.output
        findings = json.loads(checked.stdout)
        assert {
            "level": "ok",
            "message": f"role {role} cannot alter, truncate or rewrite the audit tables",
        } in (findings)
    finally:
        if app is not None:
            app.dispose()
        with owner.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))


def test_doctor_names_a_disabled_trigger(cli: Cli, ledger: Ledger) -> None:
    _as_owner_unprotected(ledger.engine)
    result = cli("doctor")
    assert result.exit_code == exit_codes.UNPROTECTED
    assert "ERROR" in result.stdout and "append-only" in result.stdout
    assert os.linesep not in result.stderr.strip()


def test_the_head_only_moves_forward_even_for_the_owner_while_the_trigger_stands(ledger: Ledger) -> None:
    _grant(ledger, "a@example.com", 1)
    seq, _ = _head(ledger.engine)
    for statement in (f"UPDATE audit_head SET seq = {seq - 1}", "DELETE FROM audit_head"):
        with pytest.raises(DBAPIError), ledger.engine.begin() as conn:
            conn.execute(text(statement))
    _grant(ledger, "b@example.com", 2)  # the append path still moves it
    assert _head(ledger.engine)[0] > seq


def test_the_starter_config_documents_the_checkpoint_settings(tmp_path: Path) -> None:
    from consentsync.config import parse_config, starter_config_text

    lines = starter_config_text().splitlines()
    start = lines.index("# audit:")
    block = [line.removeprefix("# ") for line in lines[start : start + 5]]
    text_ = "\n".join([*lines[:start], *block, *lines[start + 5 :]])
    settings = parse_config(text_, tmp_path / "consentsync.yaml").settings.audit.checkpoints
    assert (settings.directory, settings.key_file, settings.interval_seconds) == (
        "checkpoints",
        "checkpoint-signing.key",
        3600,
    )
