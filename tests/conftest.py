"""Shared fixtures: a fresh ledger on SQLite and, where CONSENTSYNC_TEST_POSTGRES_URL is set, on
a real PostgreSQL (each test in a schema of its own, dropped afterwards)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from consentsync import accounts
from consentsync.app import open_ledger
from consentsync.cli import main
from consentsync.config import ERASURE_KEY_ENV, load_config, write_starter
from consentsync.ledger.service import Ledger
from consentsync.sdk.journal import STATE_DIR_ENV

# Bytecode is cached while the suite runs, even where the environment says not to (some
# machines set PYTHONDONTWRITEBYTECODE): without it each of the xdist workers rewrote and compiled
# every test module again (pytest's assertion rewriting caches only in __pycache__), and each of
# the suite's thousands of consentsync subprocesses compiled the package's modules from source,
# about a tenth of a second each. Cached where Python caches, in __pycache__ (.gitignore'd); set
# here, before the workers start, so that they and every process they start inherit it.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
    sys.dont_write_bytecode = False

POSTGRES_ENV = "CONSENTSYNC_TEST_POSTGRES_URL"
TEST_ERASURE_KEY = "test-erasure-key-0123456789abcdef"


def _postgres_base_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set: the PostgreSQL variant of this test is skipped")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    base = _postgres_base_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    # pre_ping: a test may cut every session of the database (the ledger going away mid-run).
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1), pool_pre_ping=True)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    # The schema is also the sessions' application_name, so that a test cutting "every ledger
    # session" cuts this test's only, not those of other test runs sharing the database. A commit
    # does not wait for the server's WAL flush (synchronous_commit=off, this session's only): a
    # commit is still durable against any client's death, which is what the tests kill; only a
    # crash of the server itself could lose the last commits, and no test crashes it. It takes
    # about a sixth off the PostgreSQL variants (CI has 15 minutes on two cores).
    options = quote(f"-csearch_path={schema} -csynchronous_commit=off")
    yield f"{base}{separator}options={options}&application_name={schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


# For tests whose subject does not depend on the database (pages, headers, commands, mails): the
# SQL behind them runs on both databases in other tests, and CI has 15 minutes on two cores.
SQLITE_ONLY = pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)


@pytest.fixture(autouse=True)
def _erasure_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ERASURE_KEY_ENV, TEST_ERASURE_KEY)


@pytest.fixture(autouse=True)
def _connector_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connectors' journals (sdk.Journal: a Salesforce Bulk job left running) of a test's own,
    not the user's ~/.local/state, where one test's left job would be settled by another's."""
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "connector-state"))


# The console's accounts hash passwords with argon2id at 64 MiB and 3 passes: about 0.2 s a hash
# or a login here, the product's setting, which tests/web/test_sessions.py checks (marked
# ``production_hashing``). The other tests, of roles, sessions and pages, hash with argon2id's
# smallest cost: what they test is not the hash's cost, and the console's tests log in some
# thousand times (Django's own test settings swap in a fast hasher for the same reason).
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture(autouse=True)
def _cheap_password_hashing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("production_hashing") is None:
        monkeypatch.setattr(accounts, "HASHER", CHEAP_HASHER)


@pytest.fixture
def config_path(tmp_path: Path, ledger_url: str) -> Path:
    path = tmp_path / "consentsync.yaml"
    write_starter(path, ledger_url)
    return path


class Clock:
    """A clock the tests move by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))


_MIGRATED_SQLITE: list[Path] = []  # this process's SQLite ledger at the newest migration


_MIGRATED_POSTGRES: list[str] = []  # this process's PostgreSQL ledger at the newest migration, as SQL
_TEMPLATE_SCHEMA = "cs_template_schema_"  # the dump's schema name, put in place of the test's


def _postgres_template_sql(ledger_url: str) -> str:
    """A ledger at the newest migration, dumped as SQL (schema and rows, INSERTs: one execute
    can run it) with its schema's name left to be filled in: migrated once a process into a
    schema of its own, dumped by pg_dump, the schema dropped."""
    from consentsync.ledger.engine import make_engine
    from consentsync.ledger.migrate import upgrade

    base = _postgres_base_url()
    schema = f"{_TEMPLATE_SCHEMA}{uuid.uuid4().hex[:12]}"
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    engine = make_engine(f"{base}{separator}options={quote(f'-csearch_path={schema}')}")
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    try:
        dump = subprocess.run(
            ["pg_dump", "--schema", schema, "--inserts", "--no-owner", "--no-privileges", base],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    kept = [
        line for line in dump.splitlines()
        if not line.startswith(("CREATE SCHEMA ", "SET ", "--", "\\"))  # \restrict: psql only
    ]  # fmt: skip
    return "\n".join(kept).replace(schema, _TEMPLATE_SCHEMA)


def _postgres_at_head(ledger_url: str) -> None:
    """``sqlite_at_head`` for a test's PostgreSQL schema that holds nothing yet: the tables,
    triggers and rows the migrations leave, made from this process's dump of them in one
    execute (about a tenth of the time the migrations take, for each of the PostgreSQL
    variants). The tests of the migrations themselves and of init on an empty schema still
    migrate: they do not come here."""
    from consentsync.ledger.engine import make_engine

    engine = make_engine(ledger_url)
    try:
        with engine.connect() as conn:
            if conn.execute(text("SELECT to_regclass('alembic_version')")).scalar() is not None:
                return
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        if not _MIGRATED_POSTGRES:
            _MIGRATED_POSTGRES.append(_postgres_template_sql(ledger_url))
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cursor:
                cursor.execute(_MIGRATED_POSTGRES[0].replace(_TEMPLATE_SCHEMA, schema))
            raw.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()


def sqlite_at_head(ledger_url: str) -> None:
    """Where ``ledger_url`` names a SQLite file not there yet: a copy of a ledger this process
    migrated once, so that opening it (init, ``migrated_ledger``) runs no migration. Running the
    nine migrations took about a tenth of the suite's CPU, once for every test with a ledger; a
    copy is the same file (the schema, the chain's genesis: what the migrations write) the
    migrations leave. A PostgreSQL schema holding nothing yet gets the same from a dump
    (``_postgres_at_head``). The tests of init and of the migrations themselves still
    migrate."""
    if ledger_url.startswith("postgresql"):
        _postgres_at_head(ledger_url)
        return
    if not ledger_url.startswith("sqlite:///"):
        return
    target = Path(ledger_url.removeprefix("sqlite:///"))
    if target.exists():
        return
    if not _MIGRATED_SQLITE:
        from consentsync.ledger.engine import make_engine
        from consentsync.ledger.migrate import upgrade

        template = Path(tempfile.mkdtemp(prefix="consentsync-ledger-")) / "ledger.db"
        engine = make_engine(f"sqlite:///{template}")
        upgrade(engine)
        engine.dispose()  # the last connection's close folds the log into the file
        _MIGRATED_SQLITE.append(template)
    shutil.copyfile(_MIGRATED_SQLITE[0], target)


@contextmanager
def migrated_ledger(config_path: Path, clock: Clock) -> Iterator[Ledger]:
    """The ledger of the config at ``config_path``, migrated, on the test's clock; disposed of
    afterwards (for a ``ledger`` fixture of a config of its own)."""
    config = load_config(config_path)
    sqlite_at_head(config.ledger_url)
    opened = open_ledger(config, migrate=True)
    opened.clock = clock
    yield opened
    opened.engine.dispose()


@pytest.fixture
def ledger(config_path: Path, clock: Clock) -> Iterator[Ledger]:
    with migrated_ledger(config_path, clock) as opened:
        yield opened


def record_args(
    email: str, purpose: str, status: str, *extra: str, source: str = "web_form"
) -> tuple[str, ...]:
    """The words of ``consentsync ledger record`` for one value: who (by email), the purpose, the
    status and where it came from, then ``extra`` options (``--at``, ``--channel``, ...)."""
    value = ("--email", email, "--purpose", purpose, "--status", status, "--source", source)
    return ("ledger", "record", *value, *extra)


def proof(**ago: float) -> tuple[str, ...]:
    """The proof ``ledger record`` asks of a grant (docs/admin-commands.md), for tests that record
    one as setup: when the person gave it (``ago`` before now, a minute unless said) and where its
    proof is kept (an evidence reference; the starter purposes register no notice)."""
    moment = datetime.now(UTC) - timedelta(**(ago or {"minutes": 1}))
    return ("--at", moment.isoformat().replace("+00:00", "Z"), "--evidence-ref", "form:signup/test")


@dataclass
class Cli:
    config_path: Path
    runner: CliRunner

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(main, ["--config", str(self.config_path), *args], input=input)

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.exit_code == 0, f"{args} -> {result.exit_code}: {result.output}{result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        import json

        return json.loads(self.ok(*args, "--json").stdout)


@pytest.fixture
def cli(config_path: Path) -> Cli:
    runner = CliRunner()
    cli = Cli(config_path, runner)
    sqlite_at_head(load_config(config_path).ledger_url)
    cli.ok("init")
    return cli


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Stops a process a test started: ``sig``, then SIGKILL if it has not ended within
    ``timeout`` seconds (a test must not leave a server behind)."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# The longest tests (a wheel built and installed, a browser driven) go first: pytest-xdist's work
# stealing then runs them beside the short ones instead of leaving one to finish alone at the end.
_SLOW_FIRST = (
    "test_wheel_install", "browser", "crash", "soak", "demo", "test_the_template_passes", "two_daemons",
    "first_hour", "paused_past", "walkthrough",
)  # fmt: skip


# Where the PostgreSQL variant of a test adds nothing the integration tests' variants do not: the
# hub and the console reach the ledger through the same service code, and these files check input
# refused before any transaction or a field at a time. Each variant costs about half a second of
# the machine (its own schema made and dropped, a server beside the workers): these took some 4 of
# CI's 15 minutes on a slow machine (session 60: 1.5 times session 59's). CONSENTSYNC_TEST_EVERY_POSTGRES=1
# runs them all.
_POSTGRES_COVERED_ELSEWHERE = (
    "tests/hub/", "tests/web/", "tests/integration/test_input_bounds.py", "tests/integration/test_cli.py",
    "tests/test_tamper_notices_keys.py::test_a_notice_edited_in_the_database",
    "tests/test_tamper_notices_keys.py::test_an_api_key_edited_in_the_database",
    # Policy and regulator scenarios: the reconciler's rules through the ledger's service code,
    # whose SQL the integration tests of the ledger, the sync, the audit and erasure run on both.
    "tests/integration/test_policy_", "tests/integration/test_address_forms_",
    "tests/integration/test_remap_", "tests/integration/test_identity_s51_regulator",
    "tests/integration/test_clock_s51b_regulator", "tests/integration/test_audit_s51_regulator",
    "tests/integration/test_review_", "tests/integration/test_s57_proof_blank",
    "tests/integration/test_s57_objection_basis_ledger", "tests/integration/test_earlier_values",
    "tests/integration/test_ops_visibility", "tests/integration/test_observability",
    "tests/integration/test_adoption", "tests/test_folded_addresses",
    "tests/test_objection_purpose_now", "tests/test_export_restriction",
    # Whole orders of arrival through the sandboxes (shared records, addresses left): the SQL of
    # their lookups runs on PostgreSQL in the sync's query-plan test and the erasure tests.
    "tests/integration/test_s64_shared_individual_sandboxes",
    "tests/integration/test_s64_left_address_sandboxes", "tests/integration/test_s64b_left_address_sandboxes",
    "tests/integration/test_s65_shared_", "tests/integration/test_s65_left_",
    # Input refused before any transaction, and older scenarios through the service code whose SQL
    # the ledger's, the sync's and the erasure's integration tests run on both (session 67: the
    # suite took 16 to 17 minutes on a slow machine; these were some 180 s of its workers' time).
    "tests/test_plan_file_errors", "tests/test_cli_reserved_sources_and_actors",
    "tests/integration/test_audit_decision_tables.py::test_a_decision_row_changed_by_hand",
    "tests/integration/test_s57_restriction_lift_sync", "tests/integration/test_s57_audit_states_tamper",
    "tests/integration/test_s57_erasure_restriction", "tests/integration/test_s57_blank_proof_upgrade",
    "tests/integration/test_s57_erased_trusted_record", "tests/integration/test_s58_",
    "tests/integration/test_superoffice_s59_", "tests/integration/test_restored_records",
    "tests/integration/test_write_finds_record_gone", "tests/test_absorb_addressless_person",
    "tests/integration/test_person_with_two_addresses_s61", "tests/test_basis_bound_at_recording",
    "tests/integration/test_folded_addresses_s61", "tests/unit/test_no_keeps_its_time_ahead",
    "tests/integration/test_notice_text_shown_by_then_s61",
    "tests/integration/test_s67_erasure_reaches_individual_read_before.py::test_an_individual_shared_with",
    # The same SQL as the variant made before (session 68: this file was the suite's longest, 165 s).
    "tests/integration/test_s67_erasure_reaches_individual_read_before.py::test_the_erasure_reaches_the"
    "_individual_whatever_was_read_first[postgres-individual_made_after]",
    "tests/integration/test_s67_erasure_reaches_individual_read_before.py::test_an_individual_whose_sharers",
)  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("CONSENTSYNC_TEST_EVERY_POSTGRES"):
        covered = [
            item for item in items
            if "[postgres" in item.nodeid and item.nodeid.startswith(_POSTGRES_COVERED_ELSEWHERE)
        ]  # fmt: skip
        if covered:
            config.hook.pytest_deselected(items=covered)
            kept = set(map(id, covered))
            items[:] = [item for item in items if id(item) not in kept]
    items.sort(key=lambda item: not any(part in item.nodeid for part in _SLOW_FIRST))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: two workers more than the cores this process may use. Much of the suite
    waits (on the processes it starts, on servers, on real intervals): two workers on two cores
    kept them 55% busy (11:37 for the suite), three 70% (9:10; session 55, 3,512 tests: 71%,
    14:26), four: see docs/performance.md; ``--maxprocesses`` caps it. None (xdist's own count)
    for ``-n logical`` or where PYTEST_XDIST_AUTO_NUM_WORKERS says."""
    if config.option.numprocesses == "logical" or os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        cores = os.cpu_count() or 1
    return cores + 2


def one_line_error(result: Result, code: int, *needles: str) -> str:
    """``result`` (a CliRunner result) is exit ``code`` with one `consentsync: error:` line on
    stderr holding every needle, and no traceback."""
    assert result.exit_code == code, f"{result.exit_code}: {result.output}{result.stderr}"
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("consentsync: error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def own_environment(tmp_path: Path, erasure_key: str, *, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """An environment of a test's own for a `consentsync` process: its HOME and TMPDIR under
    ``tmp_path``, its config there, and no CONSENTSYNC_* (nor ``drop``) setting from the caller's."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    (tmp_path / "home").mkdir(exist_ok=True)
    own = {key: value for key, value in os.environ.items() if not key.startswith(("CONSENTSYNC_", *drop))}
    own.update(
        HOME=str(tmp_path / "home"),
        TMPDIR=str(tmp_path / "tmp"),
        CONSENTSYNC_ERASURE_KEY=erasure_key,
        CONSENTSYNC_CONFIG=str(tmp_path / "consentsync.yaml"),
    )
    return own


@contextmanager
def running_harness(vendor: str) -> Iterator[Any]:
    """The registered sandbox harness of ``vendor``, started, and stopped on the way out."""
    from consentsync.sdk.harness import available_harnesses

    started = available_harnesses()[vendor].load()()
    started.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def hubspot() -> Iterator[Any]:
    """The HubSpot sandbox harness, started for the test."""
    with running_harness("hubspot") as started:
        yield started
