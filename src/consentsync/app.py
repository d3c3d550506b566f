"""Wires a loaded config to the services the CLI (and later the daemon and web console) use."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, insert, inspect, literal, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, ProgrammingError

from consentsync import exit_codes
from consentsync.audit_registry import bind_api_keys
from consentsync.config import Config, ConfigError
from consentsync.hub.confirmation_terms import mark_confirmations_bound
from consentsync.ledger.engine import make_engine
from consentsync.ledger.identity import backfill_left
from consentsync.ledger.problems import ledger_problem
from consentsync.ledger.service import Ledger
from consentsync.sdk.errors import scrub
from consentsync.yamlfile import describe

if TYPE_CHECKING:
    from consentsync.mapping import Mapping
    from consentsync.sdk import Connector
    from consentsync.sync.engine import SyncEngine, SyncOptions


class LedgerNotReady(RuntimeError):
    """The ledger database is missing, unreachable, damaged or behind the code's migrations."""

    def __init__(self, message: str, exit_code: int = exit_codes.CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# The newest migration this code expects; tests/integration/test_migrations.py checks that it is
# Alembic's head, so normal commands need not load Alembic to know.
SCHEMA_REVISION = "0026"

# Development revisions squashed into the baseline 0010 before 0.1.0 (ledger/migrations/versions/
# 0010_baseline.py). This code cannot upgrade a ledger stamped with one; the last commit that can
# is named, so that such a ledger can still be brought to 0010 and then used as it is.
SQUASHED_REVISIONS = frozenset({"0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009"})
LAST_COMMIT_WITH_SQUASHED_REVISIONS = "799c0bf"


def migration_state(engine: Engine, *, migrating: bool = False) -> str | None:
    """The ledger's migration, or None where it has none yet (no ``alembic_version`` table). A
    table there but not readable (a role without its privileges) is the database's refusal, not
    a ledger without migrations: raised, for ``ledger_problem`` to name the role and the table."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError) as error:
        said = str(error.orig).lower()
        state = getattr(error.orig, "sqlstate", None)
        if "alembic_version" in said and (state == "42P01" or "no such table" in said):
            _check_schema_usage(engine, migrating=migrating)
            return None
        raise


def _check_schema_usage(engine: Engine, *, migrating: bool) -> None:
    """On PostgreSQL, a schema of the sessions' search path that the role may not use is left out
    of it silently: the ledger's tables then look absent, and "run init" would be the wrong
    advice. Such a schema is named, with the role, as the privilege refused (LedgerNotReady)."""
    if engine.dialect.name != "postgresql":
        return
    from consentsync.ledger.problems import not_allowed

    with engine.connect() as conn:
        role, in_effect, path = conn.execute(
            text("SELECT current_user, current_schema(), current_setting('search_path')")
        ).one()
        names = [part.strip().strip('"') for part in path.split(",")]
        names = [role if name == "$user" else name for name in names if name]
        unusable = set(
            conn.execute(
                text(
                    "SELECT nspname FROM pg_namespace WHERE nspname = ANY(:names)"
                    " AND NOT has_schema_privilege(oid, 'USAGE')"
                ),
                {"names": names},
            ).scalars()
        )
    # Only a schema before the one in effect was skipped: one after it is not where the ledger is.
    for name in names:
        if name == in_effect:
            return
        if name in unusable:
            said = f"permission denied for schema {name}"
            raise LedgerNotReady(
                f"the ledger database at {_server(engine)}: {not_allowed(role, said, migrating=migrating)}"
            )


def _server(engine: Engine) -> str:
    url = engine.url
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database}"


@contextmanager
def ledger_refusals(url: str, *, migrating: bool = False) -> Iterator[None]:
    """A damaged, read-only, full or unreachable ledger as ``LedgerNotReady`` with one line
    naming the file (or server) and what to do (ledger/problems.py). ``migrating``: the block
    applies migrations (a privilege refused is the tables' owner's to hold)."""
    try:
        yield
    except (DBAPIError, sqlite3.DatabaseError) as error:
        problem = ledger_problem(error, url, migrating=migrating)
        if problem is None:
            raise
        raise LedgerNotReady(problem.message, problem.exit_code) from None


# The engines this process opened, for ``close_opened``: a command's connections are closed when
# it ends, not whenever the garbage collector gets to its engine (a process running commands in
# turn, such as a test suite's CliRunner, held their PostgreSQL sessions up to the server's limit).
_OPENED: weakref.WeakSet[Engine] = weakref.WeakSet()


def close_opened() -> None:
    """Closes the pooled connections of every ledger engine this process opened (a command's end)."""
    for engine in list(_OPENED):
        engine.dispose()


def ledger_engine(config: Config, *, checkpoints: bool = True) -> Engine:
    """The ledger's engine; a URL no installed driver serves is a config error naming the line.
    ``checkpoints``: see ``make_engine``."""
    url = config.settings.ledger.url
    try:
        engine = make_engine(config.ledger_url, checkpoints=checkpoints)
        _OPENED.add(engine)
        return engine
    except ArgumentError:
        raise ConfigError(f"{config.where('ledger', 'url')}not a database URL: {safe_url(url)}") from None
    except NoSuchModuleError:
        scheme = url.split(":", 1)[0]
        raise ConfigError(
            f"{config.where('ledger', 'url')}unknown URL scheme {scheme!r}: accepted are "
            "sqlite:///PATH and postgresql://USER@HOST:PORT/DATABASE"
        ) from None
    except ModuleNotFoundError as error:
        if url.startswith(("postgresql", "postgres")):
            raise ConfigError(
                f"{config.where('ledger', 'url')}a PostgreSQL ledger needs its driver (psycopg, "
                f"not installed: {error.name}): pip install 'consentsync[postgres]'"
            ) from None
        raise ConfigError(
            f"{config.where('ledger', 'url')}the driver for {url.split(':', 1)[0]} is not installed "
            f"({error.name})"
        ) from None


def safe_url(url: str) -> str:
    """A URL as it may be shown: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(url.split("@")[-1])


def open_ledger(config: Config, *, migrate: bool = False) -> Ledger:
    engine = ledger_engine(config)
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not migrate and database and not database.startswith("file:") and not Path(database).exists():
        # Opening it would leave an empty file behind, which the next command takes for a
        # ledger (a read must change nothing).
        engine.dispose()
        raise LedgerNotReady(
            f"no ledger at {database}: run 'consentsync init' to create it "
            f"(or fix ledger.url in {config.path})"
        )
    # The erasure key is checked first: a key refused (too short, its file unreadable) must leave
    # no ledger behind that init made or a migration changed (check_erasure_key, below, compares
    # it with the ledger's once the ledger is there).
    try:
        config.erasure_key_and_source()
    except ConfigError:
        engine.dispose()
        raise
    with ledger_refusals(config.ledger_url, migrating=migrate):
        current = migration_state(engine, migrating=migrate)
        if current in SQUASHED_REVISIONS:
            raise LedgerNotReady(
                f"the ledger {safe_url(config.ledger_url)} is at development migration {current}, which "
                "this consentsync cannot upgrade (0001-0009 were squashed into 0010 "
                "before 0.1.0): create a new ledger, or first upgrade this one with consentsync at "
                f"commit {LAST_COMMIT_WITH_SQUASHED_REVISIONS} ('consentsync migrate')"
            )
        from consentsync.ledger.migrate import known_revisions, upgrade

        if current is not None and current not in known_revisions(engine):
            raise LedgerNotReady(
                f"the ledger {safe_url(config.ledger_url)} is at migration {current}, which this "
                f"consentsync ({SCHEMA_REVISION} at the newest) does not know: a newer consentsync "
                "upgraded it; run that version"
            )
        if migrate and current != SCHEMA_REVISION:  # at the newest already: nothing to run
            upgrade(engine)
            current = migration_state(engine)
    if current != SCHEMA_REVISION:
        raise LedgerNotReady(
            f"the ledger is at migration {current or 'none'} but this consentsync needs "
            f"{SCHEMA_REVISION}: run 'consentsync init' (or 'consentsync migrate')"
        )
    # Fail now, with the config's words, rather than at the first erasure; and before anything is
    # written (the purposes below), refuse a key the ledger was not keyed with.
    with ledger_refusals(config.ledger_url):
        key = check_erasure_key(engine, config)
    ledger = Ledger(
        engine,
        config.purposes,
        config.policy,
        pinned(key),
        max_clock_skew_seconds=config.settings.policy.max_clock_skew_seconds,
    )
    # Events reference purposes, so the ledger must know every configured one before recording.
    with ledger_refusals(config.ledger_url):
        # Once, first: where in the chain this version's binding of unstated bases begins, which
        # audit verify holds the values recorded before it to leniently (Ledger.mark_binding_by_chain).
        ledger.mark_binding_by_chain()
        # Once: which confirmation rows an older version opened, unbound (hub/confirmation_terms.py).
        mark_confirmations_bound(ledger)
        ledger.sync_purposes()
        bind_api_keys(ledger)  # once: what an older version's key entries did not carry
        # Once: the people an older version's erasures left (absorbed into the person erased).
        ledger.erase_absorbed()
        # Once: the addresses people left before migration 0022 kept it (it needs the key).
        backfill_left(ledger.engine, key, ledger.clock())
    return ledger


# The ledger_settings row holding the erasure key's check value, and the text it is an HMAC of.
KEY_CHECK_SETTING = "erasure_key_check"
KEY_CHECK_TEXT = b"consentsync erasure key check v1"
# The audit entries opening a ledger writes itself, naming no person: no key keyed them.
INIT_ACTIONS = ("purpose.configured", "ledger.binding_by_chain", "ledger.confirmations_bound")
# Tables whose rows are what init itself records (keyed by no key), and the settings.
_UNKEYED_TABLES = frozenset({"alembic_version", "purposes", "audit_head", "ledger_settings"})
# Tables holding hashes keyed by the erasure key, by which an erased person is recognised: the
# suppression list (the erased addresses) and the CRM records' snapshots (the address each record
# last showed). (The console's throttle and a failed login's audit entry hold keyed digests too,
# of names tried: another key loses no erased person there.)
KEYED_HASH_TABLES = ("suppressions", "crm_snapshots")


def erasure_key_check(key: bytes) -> str:
    """A check value of ``key``: which key it is, not the key (an HMAC of a fixed text, 64 of
    its bits: enough to tell two keys apart, far too few to test guesses of a key against)."""
    return "hmac-sha256:" + hmac.new(key, KEY_CHECK_TEXT, hashlib.sha256).hexdigest()[:16]


def pinned(key: bytes) -> Callable[[], bytes]:
    """The erasure key a ledger is opened with, as ``Ledger`` asks for it: the key that was
    checked, not the config's key file read again at each use. A daemon running for weeks whose
    key file was replaced meanwhile (rotated, overwritten) went on with the new key unchecked and
    no longer recognised the people erased under the old one."""
    return lambda: key


def check_erasure_key(engine: Engine, config: Config) -> bytes:
    """The erasure key in use is the one the ledger is keyed with: its check value is stored the
    first time a key opens the ledger and compared on every opening after. Another key (the
    environment variable a container sets, winning over the key file an admin shell reads; a
    rotated or mistyped key) would no longer recognise the erased people, and a sync would import
    them again: refused in one line naming where the key came from, nothing changed. A ledger
    holding nothing keyed yet (what init records only) takes the new key: nothing is lost.
    Returns the key checked, for the process to keep (``pinned``)."""
    from sqlalchemy.exc import IntegrityError

    from consentsync.ledger.engine import reading
    from consentsync.ledger.schema import ledger_settings

    key, source = config.erasure_key_and_source()
    mine = erasure_key_check(key)
    by_name = ledger_settings.c.name == KEY_CHECK_SETTING
    with reading(engine) as conn:
        stored = conn.execute(select(ledger_settings.c.value).where(by_name)).scalar()
    if stored == mine:
        return key
    now, held = datetime.now(UTC), ""
    try:
        with engine.begin() as conn:
            stored = conn.execute(select(ledger_settings.c.value).where(by_name)).scalar()
            if stored is None:
                # A ledger from before its key was checked (0014) stores the first key that
                # opens it: where it holds snapshots keyed by the key it was made with, that
                # key must be this one, or the wrong key would lock the right one out.
                if _fits_keyed_snapshots(conn, key) is not False:
                    conn.execute(
                        insert(ledger_settings).values(name=KEY_CHECK_SETTING, value=mine, set_at=now)
                    )
                    return key
                stored, held = "none stored", "crm_snapshots"
            if stored == mine:
                return key
            held = _keyed_rows(conn)
            if not held:
                conn.execute(update(ledger_settings).where(by_name).values(value=mine, set_at=now))
                return key
    except IntegrityError:  # another process stored its key's check meanwhile: compare with it
        return check_erasure_key(engine, config)
    raise LedgerNotReady(
        f"{source}: this erasure key is not the one the ledger {safe_url(config.ledger_url)} is keyed "
        f"with (key check {mine}; the ledger's is {stored}): with it the erased people would not "
        f"be recognised and a sync would import them again; use the ledger's key ({_keyed_said(held)})"
    )


def _keyed_said(held: str) -> str:
    """What a refusal of another key says the ledger's key keyed: the tables holding its keyed
    hashes, not every table holding a row (runs, cursors, leases, notices: no hash of a key)."""
    keyed = [name for name in held.split(", ") if name in KEYED_HASH_TABLES]
    if keyed:
        return f"its keyed hashes are in: {', '.join(keyed)}"
    return "none of its keyed hashes is stored yet, but it takes a new key only before anything is recorded"


def _key_the_ledger_holds(engine: Engine, config: Config) -> bytes:
    """The config's erasure key if its check is the one the ledger stores, else LedgerNotReady:
    a comparison only, for a process that must not write (the decide-ahead child, whose run
    holds the write lock: the parent stored its key's check when it opened the ledger). A key
    changed since the parent read it is refused, and the parent decides alone."""
    from consentsync.ledger.engine import reading
    from consentsync.ledger.schema import ledger_settings

    key, source = config.erasure_key_and_source()
    with reading(engine) as conn:
        stored = conn.execute(
            select(ledger_settings.c.value).where(ledger_settings.c.name == KEY_CHECK_SETTING)
        ).scalar()
    if stored != erasure_key_check(key):
        raise LedgerNotReady(f"{source}: this erasure key is not the one the run opened the ledger with")
    return key


def _fits_keyed_snapshots(conn: Connection, key: bytes) -> bool | None:
    """Whether ``key`` made the identity hashes of CRM snapshots the ledger holds: a sample of
    snapshots with a person's address beside them, one of which must hash alike (a person's
    record may show another of their addresses); None where the ledger has none to tell by."""
    from consentsync.ledger.identity import EMAIL, keyed_hasher
    from consentsync.ledger.schema import crm_links, crm_snapshots, subject_identifiers

    rows = conn.execute(
        select(crm_snapshots.c.identity, subject_identifiers.c.value)
        .join(crm_links, crm_links.c.id == crm_snapshots.c.link_id)
        .join(subject_identifiers, subject_identifiers.c.subject_id == crm_links.c.subject_id)
        .where(subject_identifiers.c.kind == EMAIL)
        .where(crm_snapshots.c.identity.is_not(None))
        .limit(200)
    ).all()
    if not rows:
        return None
    digest = keyed_hasher(key)
    return any(digest(address.strip().lower()) == identity for identity, address in rows)


def _keyed_rows(conn: Connection) -> str:
    """The tables holding rows other than init's own (what a key may have keyed), by name."""
    from consentsync.ledger import schema

    present = set(inspect(conn).get_table_names())
    held = []
    for table in schema.metadata.sorted_tables:
        if table.name not in present or table.name in _UNKEYED_TABLES:
            continue
        query = select(literal(1)).select_from(table).limit(1)  # one row tells: no count
        if table.name == "audit_entries":
            query = query.where(table.c.action.not_in(INIT_ACTIONS))
        if conn.execute(query).first() is not None:
            held.append(table.name)
    return ", ".join(held)


def open_connector(config: Config, name: str) -> tuple[Connector, list[Mapping]]:
    """The configured connector instance ``name`` with its mapping files loaded and checked
    against the configured purposes and channels."""
    from consentsync.mapping import load_mapping
    from consentsync.sdk import registry

    settings = config.connector(name)
    connector_class = registry.load(settings.vendor)
    vendor_settings = config.connector_settings(name)
    at = ("connectors", config.settings.connectors.index(settings), "settings")
    model = connector_class.settings_model
    if model is not None:
        try:
            model.model_validate(vendor_settings)
        except ValidationError as error:
            # file:line, the key and what is accepted; never the value (it may be a secret).
            raise ConfigError(
                describe(
                    error, config.path, config.lines, model, prefer_unknown_keys=True, at=at, show_input=False
                )
            ) from None
    try:
        connector = connector_class(settings.name, vendor_settings)
    except ValueError as error:  # the vendor's settings model names the bad key
        raise ConfigError(f"{config.where(*at)}{scrub(str(error))}") from None
    mappings = [
        load_mapping(config.resolve_path(path), purposes=config.purposes, channels=set(config.channels))
        for path in settings.mappings
    ]
    for mapping in mappings:
        if mapping.vendor != settings.vendor:
            raise ConfigError(
                f"{mapping.path}: maps {mapping.vendor} objects, but connector {name!r} is {settings.vendor}"
            )
    return connector, mappings


def can_reread(config: Config, name: str) -> bool:
    """Whether connector ``name`` can fetch one record by id (to retry a quarantined record)."""
    from consentsync.domain import InvalidInput
    from consentsync.sdk import registry

    try:
        return registry.load(config.connector(name).vendor).can_read_by_id
    except (ConfigError, InvalidInput):
        return False


def open_sync(config: Config, name: str, ledger: Ledger | None = None) -> SyncEngine:
    from consentsync.sdk.objects import guard_describe
    from consentsync.sync.ahead import Recipe
    from consentsync.sync.engine import SyncEngine, SyncOptions

    connector, mappings = open_connector(config, name)
    # A describe the CRM refuses, or of an object it lacks, names the mapping file (every caller:
    # sync, apply, the daemon).
    guard_describe(connector, {m.object: str(m.path) for m in mappings})
    settings = config.connector(name)
    _check_erasure_actions(config, name, connector, mappings)
    options = SyncOptions(
        batch_size=settings.batch_size,
        signpost_lag_seconds=settings.signpost_lag_seconds,
        push_batch_size=settings.push_batch_size,
        push_concurrency=settings.push_concurrency,
        max_push_attempts=settings.max_push_attempts,
        lookback_seconds=settings.lookback_seconds,
        erasure_actions=dict(settings.erasure),
        mode=settings.mode,
        guard_max_records=settings.push_guard.max_records,
        guard_max_share=settings.push_guard.max_share,
        decide_ahead_from=settings.decide_ahead_from,
        lease_seconds=settings.lease_seconds,
    )
    from consentsync.checkpoints import signer_for

    ledger = ledger or open_ledger(config)
    engine = SyncEngine(ledger, connector, mappings, options)
    engine.decide_ahead = Recipe(examining_engine, (config, name, options))
    signer = signer_for(config, ledger.clock)  # checkpoints of the audit chain's head, when configured
    if signer is not None:
        engine.after_run = lambda report: signer.checkpoint(ledger.engine, "run", report.run_id)
    return engine


def examining_engine(config: Config, name: str, options: SyncOptions) -> SyncEngine:
    """In a second process of a run (sync/ahead.py): an engine that only reads the ledger to
    decide the examination's pushes. Not ``open_ledger``: the run checked the ledger's migration,
    and syncing the purposes takes the write lock, which the run holds page after page."""
    from consentsync.sync.engine import SyncEngine

    connector, mappings = open_connector(config, name)
    engine = ledger_engine(config, checkpoints=False)
    ledger = Ledger(
        engine,
        config.purposes,
        config.policy,
        pinned(_key_the_ledger_holds(engine, config)),
        max_clock_skew_seconds=config.settings.policy.max_clock_skew_seconds,
    )
    return SyncEngine(ledger, connector, mappings, options)


def _check_erasure_actions(config: Config, name: str, connector: Connector, mappings: list[Mapping]) -> None:
    """Each object named under ``erasure:`` is mapped, and its action can be carried out."""
    by_object = {mapping.object: mapping for mapping in mappings}
    for object_type, action in config.connector(name).erasure.items():
        where = f"{config.path}: connectors[{name}].erasure.{object_type}"
        mapping = by_object.get(object_type)
        if mapping is None:
            raise ConfigError(
                f"{where}: no mapping file maps {object_type}; mapped: {', '.join(sorted(by_object))}"
            )
        if action == "delete" and not connector.can_delete:
            raise ConfigError(
                f"{where}: the {connector.vendor} connector cannot delete records; use suppress or anonymise"
            )
        if action == "anonymise" and not mapping.spec.personal_fields:
            raise ConfigError(
                f"{where}: anonymise needs personal_fields in {mapping.path} (the fields to overwrite)"
            )
