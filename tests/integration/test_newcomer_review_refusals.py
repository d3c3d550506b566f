"""A newcomer's review: bad input refused in one line naming what is wrong and what is accepted,
with the exit code of exit_codes.py, nothing changed, no traceback.

- `demo --dir` on a folder holding a setup (config, ledger, mappings) overwrote the config and the
  mappings and wrote synthetic people into its append-only ledger; a previous demo's own folder
  is still taken, with a fresh ledger.
- A PostgreSQL role without privileges was told to run `init` (an unreadable alembic_version
  taken for a ledger without migrations), or shown a traceback (InsufficientPrivilege).
- A server asking for a password the URL does not give was "cannot be reached now" (exit 69: a
  scheduler retries it for ever).
- A failed `init` (an erasure key too short) left a migrated ledger behind.
- A ledger path that is a directory was "check that its folder exists".
- exit_codes.py named a command that does not exist (`consentsync quarantine list`).
- Bytes that are not UTF-8 in --source/--actor were "a control character"; a notice file's were
  "byte 0", not the byte and its offset.
- Another erasure key's refusal listed every table holding a row as "keyed" by the ledger's key.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from consentsync import exit_codes
from consentsync.cli import main
from consentsync.config import ERASURE_KEY_ENV, load_config, write_starter
from consentsync.ledger.problems import ledger_problem
from consentsync.ledger.schema import audit_entries, subjects
from tests.conftest import (
    POSTGRES_ENV,
    SQLITE_ONLY,
    TEST_ERASURE_KEY,
    Cli,
    one_line_error,
    proof,
    record_args,
)
from tests.integration.test_cli import audit_entries as logged_entries

REPO = Path(__file__).resolve().parents[2]


def _run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by its path, with a digest of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# -- 1. demo --dir ----------------------------------------------------------------------------------


@pytest.fixture
def demo_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONSENTSYNC_CONFIG", raising=False)
    monkeypatch.setenv("CONSENTSYNC_DEMO_SF_SECRET", "restored-after-the-test")


def _demo(folder: Path) -> Result:
    return CliRunner().invoke(main, ["demo", "--records", "10", "--dir", str(folder)])


def _people_and_entries(folder: Path) -> tuple[int, int]:
    engine = create_engine(f"sqlite:///{folder / 'consentsync.db'}")
    try:
        with engine.connect() as conn:
            return (
                conn.execute(select(func.count()).select_from(subjects)).scalar_one(),
                conn.execute(select(func.count()).select_from(audit_entries)).scalar_one(),
            )
    finally:
        engine.dispose()


def test_demo_refuses_a_folder_holding_a_setup_and_changes_nothing(tmp_path: Path, demo_env: None) -> None:
    setup = tmp_path / "setup"
    setup.mkdir()
    assert _run(setup / "consentsync.yaml", "init").exit_code == 0
    assert (
        _run(
            setup / "consentsync.yaml",
            *record_args("ana@example.com", "email_marketing", "granted", *proof()),
        ).exit_code
        == 0
    )
    (setup / "mappings").mkdir()
    (setup / "mappings" / "contact.yaml").write_text("# the admin's own mapping\n")
    before = _files(setup)

    message = one_line_error(
        _demo(setup), exit_codes.CONFIG, f"--dir {setup}", "consentsync.yaml", "new or empty"
    )
    assert "ana@example.com" not in message
    assert _files(setup) == before  # no config, mapping or ledger written; no marker either
    assert sorted(p.name for p in setup.iterdir()) == [
        "consentsync.db",
        "consentsync.key",
        "consentsync.yaml",
        "mappings",
    ]

    # A folder holding only a mappings folder (a setup being made) is refused as well.
    only_mappings = tmp_path / "only-mappings"
    (only_mappings / "mappings").mkdir(parents=True)
    (only_mappings / "mappings" / "lead.yaml").write_text("# mine\n")
    one_line_error(_demo(only_mappings), exit_codes.CONFIG, "mappings")
    assert _files(only_mappings) == {"mappings/lead.yaml": hashlib.sha256(b"# mine\n").hexdigest()}


def test_demo_run_again_in_its_own_folder_starts_from_a_fresh_ledger(tmp_path: Path, demo_env: None) -> None:
    folder = tmp_path / "demo"
    first = _demo(folder)
    assert first.exit_code == 0, f"{first.output}{first.stderr}"
    counted = _people_and_entries(folder)

    again = _demo(folder)
    assert again.exit_code == 0, f"{again.output}{again.stderr}"
    assert "full sync: succeeded" in again.stdout
    # The same seeded org into a fresh ledger: as many people and entries, not twice as many.
    assert _people_and_entries(folder) == counted

    # Once its config is made into a setup of someone's, the folder is refused, left as it is.
    config = folder / "consentsync.yaml"
    config.write_text(config.read_text() + "# now pointing at production\n")
    before = _files(folder)
    one_line_error(_demo(folder), exit_codes.CONFIG, "consentsync.yaml was changed")
    assert _files(folder) == before

    # And so is a demo's folder holding files of someone's beside the demo's.
    other = tmp_path / "demo-with-notes"
    assert _demo(other).exit_code == 0
    (other / "notes.txt").write_text("mine\n")
    before = _files(other)
    one_line_error(_demo(other), exit_codes.CONFIG, "notes.txt")
    assert _files(other) == before


# -- 2. a PostgreSQL role without privileges -----------------------------------------------------------


@pytest.fixture
def postgres_roles(tmp_path: Path) -> Iterator[tuple[Path, Path, str, str, Any]]:
    """An owner's config (the server's superuser) and an application role's, both on a schema of
    the test's own; the role logs in without a password (the test server trusts local users)."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: the PostgreSQL variant of this test is skipped")
    schema, role = f"t_{uuid.uuid4().hex[:12]}", f"cs_app_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    separator = "&" if "?" in base else "?"
    owner_url = f"{base}{separator}options=-csearch_path%3D{schema}"
    app_url = make_url(owner_url).set(username=role, password=None).render_as_string(hide_password=False)
    owner, app = tmp_path / "owner.yaml", tmp_path / "app.yaml"
    try:
        write_starter(owner, owner_url)
        assert _run(owner, "init").exit_code == 0
        data = yaml.safe_load(owner.read_text())
        data["ledger"]["url"] = app_url
        app.write_text(yaml.safe_dump(data, sort_keys=False))
        yield owner, app, schema, role, admin
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


@pytest.mark.postgres
def test_a_role_without_privileges_is_told_which_and_what_to_run(postgres_roles: Any) -> None:
    owner, app, schema, role, admin = postgres_roles
    grant = f"run `consentsync db grant --app-role {role}` as the ledger's owner"

    def head() -> Any:
        with admin.connect() as conn:
            return conn.execute(text(f'SELECT seq, hash FROM "{schema}".audit_head')).all()

    before = head()
    # No USAGE on the schema: its tables look absent (not "the ledger is at migration none").
    said = one_line_error(_run(app, "status"), exit_codes.CONFIG, f"role {role}", f"schema {schema}", grant)
    assert "init" not in said
    said = one_line_error(_run(app, "migrate"), exit_codes.CONFIG, f"role {role}", "as the ledger's owner")
    assert "`consentsync migrate`" in said

    with admin.begin() as conn:
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
    said = one_line_error(
        _run(app, "status"), exit_codes.CONFIG, f"role {role} may not read alembic_version", grant
    )
    assert "migration none" not in said
    one_line_error(_run(app, "migrate"), exit_codes.CONFIG, f"role {role}", "migrations are the owner's")

    with admin.begin() as conn:
        conn.execute(text(f'GRANT SELECT ON "{schema}".alembic_version TO "{role}"'))
    one_line_error(_run(app, "status"), exit_codes.CONFIG, f"role {role} may not read ledger_settings", grant)

    assert _run(owner, "db", "grant", "--app-role", role).exit_code == 0
    with admin.begin() as conn:
        conn.execute(text(f'REVOKE ALL ON "{schema}".sync_runs FROM "{role}"'))
    one_line_error(_run(app, "runs", "list"), exit_codes.CONFIG, f"role {role} may not read sync_runs", grant)
    assert head() == before  # nothing was written by any of the refused commands


def test_a_privilege_refused_is_classified_with_the_role_and_the_table() -> None:
    import psycopg
    from sqlalchemy.exc import ProgrammingError

    Denied = psycopg.errors.InsufficientPrivilege  # SQLSTATE 42501
    url = "postgresql://app@db.internal:5432/ledger"
    error = ProgrammingError(
        "SELECT sync_runs.id FROM sync_runs", {}, Denied("permission denied for table sync_runs")
    )
    problem = ledger_problem(error, url)
    assert problem is not None and problem.exit_code == exit_codes.CONFIG
    assert "role app may not read sync_runs" in problem.message
    assert "consentsync db grant --app-role app" in problem.message
    insert = ProgrammingError("INSERT INTO outbox ...", {}, Denied("permission denied for table outbox"))
    assert "role app may not write to outbox" in ledger_problem(insert, url).message  # type: ignore[union-attr]
    as_role = ledger_problem(error, url + "?options=-c%20role%3Dcs_app")
    assert as_role is not None and "role cs_app may not read" in as_role.message
    altering = ProgrammingError("ALTER TABLE outbox ...", {}, Denied("must be owner of table outbox"))
    migrating = ledger_problem(altering, url)
    assert migrating is not None and "run `consentsync migrate` as the ledger's owner" in migrating.message


# -- 3. a server asking for a password the URL does not give --------------------------------------------


NO_PASSWORD = (
    'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
    "fe_sendauth: no password supplied"
)


def test_no_password_is_a_config_error_not_a_server_gone() -> None:
    import psycopg
    from sqlalchemy.exc import OperationalError

    error = OperationalError("SELECT 1", {}, psycopg.OperationalError(NO_PASSWORD))
    problem = ledger_problem(error, "postgresql://app@127.0.0.1:5432/ledger")
    assert problem is not None and problem.exit_code == exit_codes.CONFIG
    assert "ledger.url" in problem.message and "PGPASSWORD" in problem.message
    assert "cannot be reached" not in problem.message and "retry" not in problem.message


@pytest.fixture
def asks_for_a_password() -> Iterator[int]:
    """A server speaking just enough of PostgreSQL's protocol to ask for a password (libpq then
    gives up, "fe_sendauth: no password supplied"): its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    done = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            while True:
                head = conn.recv(8, socket.MSG_WAITALL)
                if len(head) < 8:
                    return
                length, code = struct.unpack("!ii", head)
                if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not here
                    conn.sendall(b"N")
                    continue
                conn.recv(length - 8, socket.MSG_WAITALL)
                conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
                conn.recv(1024)
                return

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        server.join()
        listener.close()


def test_a_server_asking_for_a_password_is_told_where_to_put_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asks_for_a_password: int
) -> None:
    pytest.importorskip("psycopg")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    config = tmp_path / "consentsync.yaml"
    write_starter(config, f"postgresql://app@127.0.0.1:{asks_for_a_password}/ledger")
    for command in ("status", "migrate"):
        said = one_line_error(
            _run(config, command), exit_codes.CONFIG, "ledger.url", "PGPASSWORD", "percent-encoded"
        )
        assert "cannot be reached" not in said


# -- 4. a failed init leaves no ledger ------------------------------------------------------------------


def test_init_refused_for_its_erasure_key_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ERASURE_KEY_ENV, "short")
    folder = tmp_path / "new"
    folder.mkdir()
    one_line_error(
        _run(folder / "consentsync.yaml", "init"), exit_codes.CONFIG, ERASURE_KEY_ENV, "at least 16"
    )
    assert list(folder.iterdir()) == []  # no config, no key file, no ledger


@SQLITE_ONLY
def test_migrate_with_a_short_key_changes_nothing(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Path(make_url(load_config(cli.config_path).ledger_url).database or "")
    engine = create_engine(f"sqlite:///{ledger}")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0014')"))
        conn.execute(text("DROP INDEX ix_outbox_unanswered"))
    monkeypatch.setenv(ERASURE_KEY_ENV, "short")
    one_line_error(cli("migrate"), exit_codes.CONFIG, "at least 16")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0014"
    engine.dispose()


# -- 5. a ledger path that is a directory ---------------------------------------------------------------


def test_a_ledger_path_that_is_a_directory_is_said_to_be_one(tmp_path: Path) -> None:
    (tmp_path / "dirdb.db").mkdir()
    config = tmp_path / "consentsync.yaml"
    write_starter(config, "sqlite:///dirdb.db")
    said = one_line_error(
        _run(config, "status"), exit_codes.CONFIG, f"{tmp_path / 'dirdb.db'} is a directory"
    )
    assert "check that its folder exists" not in said

    fresh = tmp_path / "fresh"
    (fresh / "dirdb.db").mkdir(parents=True)
    one_line_error(
        _run(fresh / "consentsync.yaml", "init", "--ledger-url", "sqlite:///dirdb.db"),
        exit_codes.CONFIG,
        "is a directory",
    )
    assert sorted(p.name for p in fresh.iterdir()) == ["dirdb.db"]  # the config and key written were removed


# -- 6. the exit codes' documentation names real commands -----------------------------------------------


def _command_spans(doc: str) -> list[str]:
    spans = re.findall(r"`([^`]+)`", doc)
    return [span.removeprefix("consentsync ") for span in spans if span not in {"head"}]


def _resolves(span: str) -> bool:
    command: click.Command = main
    words = span.split()
    for index, word in enumerate(words):
        if not isinstance(command, click.Group) or word not in command.commands:
            return index > 0 and (word.isupper() or word.startswith("-"))  # an argument or an option
        command = command.commands[word]
    return True


def test_the_exit_codes_documented_name_commands_that_exist() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("| code | meaning | what a scheduler should do |", 1)[1].split("\n\n", 1)[0]
    for where, doc in (("exit_codes.py", exit_codes.__doc__ or ""), ("README.md", table)):
        spans = _command_spans(doc)
        assert spans, where
        unknown = [span for span in spans if not _resolves(span)]
        assert not unknown, f"{where} names commands that do not exist: {unknown}"
    assert "runs show RUN" in (exit_codes.__doc__ or "")


# -- 7. bytes that are not UTF-8 ------------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize("option", ["--source", "--actor"])
def test_an_option_not_utf8_is_said_to_be_so(cli: Cli, option: str) -> None:
    before = logged_entries(cli)
    args = dict(zip(("--source", "--actor"), ("web_form", "ops"), strict=True))
    args[option] = "web\udcffform"  # the byte 0xff, as the shell passes it
    options = [word for pair in args.items() for word in pair]
    recorded = cli(*record_args("a@example.com", "email_marketing", "granted")[:-2], *options)
    said = one_line_error(recorded, exit_codes.CONFIG, f"{option}: not UTF-8 text (byte 0xff at offset 3)")
    assert "control character" not in said
    assert logged_entries(cli) == before


@SQLITE_ONLY
def test_a_notice_file_not_utf8_names_its_line_byte_and_offset(cli: Cli, tmp_path: Path) -> None:
    notice = tmp_path / "notice.txt"
    notice.write_bytes("We mail you offers.\nCafé news, twice a month.\n".encode("latin-1"))
    one_line_error(
        cli("notice", "add", "email_marketing", str(notice), "--version", "v1"),
        exit_codes.CONFIG,
        f"{notice}:2: not UTF-8 text (byte 0xe9 at offset 23)",
        "save the file as UTF-8",
    )
    assert cli.json("notice", "list") == []


# -- 8. another key's refusal names the tables keyed with the ledger's ------------------------------------


@SQLITE_ONLY
def test_another_keys_refusal_lists_only_the_tables_holding_keyed_hashes(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli.ok(*record_args("kept@example.com", "email_marketing", "granted", *proof()))
    monkeypatch.setenv(ERASURE_KEY_ENV, "another-key-0123456789abcdef")
    said = one_line_error(
        cli("status"), exit_codes.CONFIG, "is not the one the ledger", "none of its keyed hashes"
    )
    for table in ("audit_entries", "consent_events", "subjects", "sync_runs", "it keyed:"):
        assert table not in said, said

    monkeypatch.setenv(ERASURE_KEY_ENV, TEST_ERASURE_KEY)  # the ledger's own key, to erase someone
    cli.ok("erase", "--email", "kept@example.com", "--reason", "art17 request", "--yes")
    monkeypatch.setenv(ERASURE_KEY_ENV, "another-key-0123456789abcdef")
    said = one_line_error(cli("status"), exit_codes.CONFIG, "its keyed hashes are in: suppressions)")
    for table in ("audit_entries", "audit_details", "consent_events", "subjects", "outbox"):
        assert table not in said, said
