"""Commands that make the audit log hold against the database owner (docs/tamper-evidence.md):
``audit keygen`` (the checkpoint signing key), ``audit checkpoint``, ``audit verify`` (the chain,
the consent events, the decision tables, the current states, the identifiers, the notices and API
keys, the signed checkpoints), ``db grant`` (the application role's grants on PostgreSQL) and
``doctor``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from consentsync import exit_codes
from consentsync.checkpoints import CheckpointError
from consentsync.cli_base import (
    audit_group,
    configured,
    current_config,
    emit_json,
    main,
    scriptable,
)
from consentsync.config import Config, ConfigError

# The application role's privileges per table: the append-only tables take rows, never change
# them; the chain head only moves forward (the 0008 trigger checks how); the free text of the
# audit details may only be erased. Every other table: read and write rows. No table: DDL,
# TRUNCATE, triggers, REFERENCES (those stay with the owner, who runs the migrations).
APP_GRANTS: dict[str, list[str]] = {
    "audit_entries": ["SELECT", "INSERT"],
    "consent_events": ["SELECT", "INSERT"],
    "audit_head": ["SELECT", "UPDATE (seq, hash)"],
    "audit_details": ["SELECT", "INSERT", "UPDATE (content)"],
    "alembic_version": ["SELECT"],
    # The erasure key's check: stored once, never deleted (without it the next key is taken).
    "ledger_settings": ["SELECT", "INSERT", "UPDATE (value, set_at)"],
    # The decision tables (`audit verify` holds their rows to the chain): consentsync never
    # deletes their rows, nor changes a suppression entry; an objection changes by its
    # decision, a person by a restriction or an erasure only.
    "objections": ["SELECT", "INSERT", "UPDATE (status, decided_by, decided_at)"],
    # last_erased_at: a second erasure of a suppressed address moves its date (migration 0018).
    "suppressions": ["SELECT", "INSERT", "UPDATE (last_erased_at)"],
    "subjects": ["SELECT", "INSERT", "UPDATE (restricted, erased_at, suppression_id)"],
    # The registries `audit verify` holds to their entries: a notice's text and a key's source,
    # scope and hash are never changed; a notice is dated once (in_effect_from, a version
    # registered before migration 0019), a key revoked and its last use noted.
    "notices": ["SELECT", "INSERT", "UPDATE (in_effect_from)"],
    "api_keys": ["SELECT", "INSERT", "UPDATE (revoked_at, last_used_at)"],
}
DEFAULT_GRANT = ["SELECT", "INSERT", "UPDATE", "DELETE"]
AUDIT_TABLES = ("audit_entries", "audit_head", "audit_details", "consent_events")
# The decision tables and the registries, whose rows the application role may not delete nor
# change but for some columns (their grants above).
DECISION_TABLES = ("objections", "suppressions", "subjects", "notices", "api_keys")
# The triggers that keep the audit tables append-only (migrations 0001 and 0008).
AUDIT_TRIGGERS = {
    "postgresql": (
        "audit_entries_append_only",
        "audit_entries_no_truncate",
        "consent_events_append_only",
        "consent_events_no_truncate",
        "audit_head_forward_only",
        "audit_head_no_truncate",
    ),
    "sqlite": (
        "audit_entries_no_update",
        "audit_entries_no_delete",
        "consent_events_no_update",
        "consent_events_no_delete",
        "audit_head_forward_only",
        "audit_head_no_delete",
    ),
}


# -- audit keygen / checkpoint / verify -----------------------------------------------------------


@audit_group.command("keygen")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the key (default: audit.checkpoints.key_file of the config).",
)
@configured
def audit_keygen(output: Path | None) -> None:
    """Create the Ed25519 key that signs audit checkpoints (mode 0600, never overwritten) and
    its public half beside it (KEY.pub, for `audit verify --public-key`)."""
    from consentsync.checkpoints import generate_key

    if output is None:
        config = current_config()
        key_file = config.settings.audit.checkpoints.key_file
        if not key_file:
            raise CheckpointError(
                f"{config.path}: audit.checkpoints.key_file is not set: pass -o FILE or set it"
            )
        output = config.resolve_path(key_file)
    public, key_id = generate_key(output)
    click.echo(f"wrote signing key {output} (mode 0600; keep it off the database host's backups)")
    click.echo(f"wrote public key {public} (key id {key_id}): keep a copy with the checkpoints")


@audit_group.command("checkpoint")
@configured
def audit_checkpoint() -> None:
    """Sign the audit chain's head now and write the checkpoint (as each sync run does)."""
    from consentsync.app import open_ledger
    from consentsync.checkpoints import signer_for

    config = current_config()
    ledger = open_ledger(config)
    signer = signer_for(config)
    if signer is None:
        raise CheckpointError(
            f"{config.path}: checkpoints are off: set audit.checkpoints.directory and a key "
            "(audit.checkpoints.key_file, or CONSENTSYNC_CHECKPOINT_KEY)"
        )
    path = signer.write(ledger.engine, "manual", None)
    click.echo(f"wrote {path}")


@audit_group.command("verify")
@click.option(
    "--checkpoints",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Also prove the chain extends every signed checkpoint in DIR (docs/tamper-evidence.md).",
)
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The checkpoints' public key (KEY.pub; default: the configured signing key's).",
)
@scriptable
def audit_verify(checkpoints: Path | None, public_key: Path | None, as_json: bool) -> None:
    """Recompute the hash chain and check that the consent events, the objections, the
    suppression entries and each person's restriction and erasure agree with their audit entries,
    that each person's current states are what their consent events make of them, that each
    address belongs to the person the chain bound it to, that each notice and API key is what
    its audit entries say (and, with --checkpoints, that the chain extends every signed
    checkpoint); exit 5 naming the first broken entry, event, row or checkpoint."""
    verify_command(current_config(), checkpoints, public_key, as_json)


def verify_command(config: Config, checkpoints: Path | None, public_key: Path | None, as_json: bool) -> None:
    """``audit verify``: the chain, the consent events and the decision tables (objections,
    suppressions, people's restrictions and erasures: ``audit_decisions``) against their
    entries, the current states against the fold of their events (``audit_states``), each
    address against the person the chain bound it to, the notices and API keys against their
    entries (``audit_bindings``) and, with ``--checkpoints``, every checkpoint. Exit 5
    (``AUDIT_BROKEN``) when any of them fails: a finding, not an error consentsync did not
    expect (1), nor bad input (2)."""
    from consentsync import audit, audit_bindings, audit_decisions, audit_registry, audit_states
    from consentsync import checkpoints as signed
    from consentsync.app import open_ledger
    from consentsync.ledger.engine import is_postgres, reading

    key = None
    if checkpoints is not None:
        key = _verifying_key(config, public_key)
        signed.read_directory(checkpoints)  # a wrong directory is bad input, found before any work
    elif public_key is not None:
        raise CheckpointError("--public-key goes with --checkpoints DIR")
    # Opening it binds what an older version's API key entries did not carry, once
    # (``audit_registry.bind_api_keys``, after the purposes): before the snapshot below.
    ledger = open_ledger(config)
    # One snapshot, read as a reader: a write transaction (what ``engine.connect()`` begins) held
    # the ledger's writer lock for the whole pass over the chain, the events and the checkpoints,
    # minutes on a large ledger, so every sync, objection and capture of the preference centre
    # waited behind a scheduled `audit verify` and failed once its lock wait ran out. SQLite
    # reads a snapshot in a deferred transaction; PostgreSQL needs REPEATABLE READ for one, else
    # entries appended during the pass would read as a chain running past its head, and events
    # recorded between the two checks as events without their entries.
    with reading(ledger.engine) as conn:
        if is_postgres(ledger.engine):
            conn.execution_options(isolation_level="REPEATABLE READ")
        chain = audit.verify(conn)
        events = audit.agreement(conn)
        decided = audit_decisions.decisions(conn)
        # The events are held to the chain (``agreement``); the states must be their fold.
        held = audit_states.states(conn, ledger.purposes, ledger.policy)
        # Whose each address is: every identifier row against its binding in the chain.
        bound = audit_bindings.bindings(conn, ledger.keyed_hasher())
        # What people were told, and which source each API key speaks for: rows to their entries.
        registry = audit_registry.registry(conn)
        checked = signed.verify(conn, checkpoints, key) if checkpoints is not None and key else None
    ok = all(result.ok for result in (chain, events, decided, held, bound, registry))
    ok = ok and (checked is None or checked.ok)
    if as_json:
        emit_json(
            {
                **chain.as_dict(),
                "ok": ok,
                "chain_ok": chain.ok,
                "events": events.as_dict(),
                "decisions": decided.as_dict(),
                "states": held.as_dict(),
                "identifiers": bound.as_dict(),
                "notices_and_keys": registry.as_dict(),
                "checkpoints": checked.as_dict() if checked is not None else None,
            }
        )
    else:
        if chain.ok:
            click.echo(f"audit chain verified: {chain.entries_checked} entries, head at {chain.head_seq}")
        else:
            click.echo(f"audit chain BROKEN at entry {chain.broken_seq}: {chain.problem}")
        if events.ok:
            click.echo(f"consent events and audit entries agree: {events.events} events")
        else:
            click.echo(f"consent events and audit entries DISAGREE: {events.problem}")
        if decided.ok:
            click.echo(
                f"objections, suppressions, restrictions and erasures agree with audit entries: "
                f"{decided.objections} objections, {decided.suppressions} suppression entries, "
                f"{decided.subjects} people restricted, erased or suppressed"
            )
        else:
            click.echo(
                "objections, suppressions, restrictions or erasures DISAGREE with audit entries: "
                f"{decided.problem}"
            )
        if held.ok:
            click.echo(
                f"current states agree with the consent events: {held.states} states, {held.events} events"
            )
        else:
            click.echo(f"current states DISAGREE with the consent events: {held.problem}")
        if bound.ok:
            click.echo(
                f"identifiers agree with their bindings in the audit chain: {bound.identifiers} "
                f"identifiers of {bound.people} people"
            )
        else:
            for problem in bound.problems:  # one line a person, the first few
                click.echo(f"identifiers DISAGREE with their bindings in the audit chain: {problem}")
            if bound.disagreeing > len(bound.problems):
                click.echo(
                    "identifiers DISAGREE with their bindings in the audit chain: "
                    f"{bound.disagreeing - len(bound.problems)} more people"
                )
        _echo_registry(registry)
        if checked is not None:
            failure = checked.first_failure
            if failure is None:
                newest = max((c.seq or 0) for c in checked.checked)
                click.echo(
                    f"checkpoints verified: the chain extends all {len(checked.checked)} "
                    f"(the latest at entry {newest})"
                )
            else:
                failed = sum(1 for c in checked.checked if not c.ok)
                click.echo(
                    f"checkpoint FAILED: {failure.file} (entry {failure.seq}, signed at {failure.at}): "
                    f"{failure.problem} ({failed} of {len(checked.checked)} checkpoints fail)"
                )
    if not ok:
        sys.exit(exit_codes.AUDIT_BROKEN)


def _echo_registry(registry: Any) -> None:
    """``audit verify``'s lines on the notices and the API keys (``audit_registry.registry``)."""
    if registry.ok:
        click.echo(
            f"notices and API keys agree with audit entries: {registry.notices} notices, "
            f"{registry.api_keys} API keys, {registry.key_events} consent events recorded through them, "
            f"{registry.confirmations} confirmation links"
        )
        return
    for problem in registry.problems:  # one line a finding, the first few
        click.echo(f"notices and API keys DISAGREE with audit entries: {problem}")
    if registry.findings > len(registry.problems):
        click.echo(
            "notices and API keys DISAGREE with audit entries: "
            f"{registry.findings - len(registry.problems)} more findings"
        )


def _verifying_key(config: Config, public_key: Path | None) -> Any:
    from consentsync.checkpoints import configured_key, load_public_key

    if public_key is not None:
        return load_public_key(public_key)
    private = configured_key(config)
    if private is None:
        raise CheckpointError(
            "--checkpoints needs the signing key's public half: pass --public-key FILE (the KEY.pub "
            "that `consentsync audit keygen` wrote)"
        )
    return private.public_key()


# -- db grant / doctor -------------------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """PostgreSQL roles: the owner runs migrations, the application role cannot rewrite the audit log."""


@db_group.command("grant")
@click.option(
    "--app-role", required=True, metavar="NAME", help="The role the daemon and the console log in as."
)
@click.option("--dry-run", is_flag=True, help="Print the statements; change nothing.")
@configured
def db_grant(app_role: str, dry_run: bool) -> None:
    """Grant the application role what it needs and no more (run as the tables' owner, after
    every `consentsync migrate`): it can append to the audit log and move its head forward, but
    not alter tables, disable or drop triggers, or change or delete audit entries."""
    from consentsync.app import open_ledger

    config = current_config()
    ledger = open_ledger(config)
    if ledger.engine.dialect.name != "postgresql":
        raise CheckpointError(
            f"{config.path}: ledger.url: db grant is for PostgreSQL; a SQLite ledger has no roles "
            "(protect the file's permissions, and use signed checkpoints)"
        )
    try:
        with ledger.engine.begin() as conn:
            statements = grant_statements(conn, app_role)
            if dry_run:
                for statement in statements:
                    click.echo(statement + ";")
                return
            for statement in statements:
                conn.exec_driver_sql(statement)
    except DBAPIError as error:
        first = str(getattr(error, "orig", error)).strip().splitlines()[0]
        raise CheckpointError(
            f"db grant: the database refused: {first} (run it as the tables' owner)"
        ) from None
    tables = (len(statements) - 2) // 2
    click.echo(f"granted {app_role} the application role's privileges on {tables} tables")


def grant_statements(conn: Connection, role: str) -> list[str]:
    """The GRANT statements for ``role`` on every table of the ledger's schema."""
    quote = conn.dialect.identifier_preparer.quote
    facts = conn.execute(
        text(
            "SELECT r.rolsuper, pg_has_role(r.oid, c.relowner, 'MEMBER') AS owner"
            " FROM pg_roles r, pg_class c WHERE r.rolname = :role AND c.oid = to_regclass('audit_entries')"
        ),
        {"role": role},
    ).first()
    if facts is None:
        exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}).first()
        if exists is None:
            raise CheckpointError(f"--app-role: no role {role!r}: create it first (CREATE ROLE ... LOGIN)")
        raise CheckpointError("the ledger has no audit tables: run 'consentsync migrate' first")
    if facts.rolsuper or facts.owner:
        raise CheckpointError(
            f"--app-role: {role!r} is a superuser or owns the tables: the application role must be "
            "another role, so that it cannot alter them"
        )
    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    tables = conn.execute(
        text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename")
    ).scalars()
    who, where = quote(role), quote(schema)
    statements = [f"GRANT USAGE ON SCHEMA {where} TO {who}"]
    for table in tables:
        name = f"{where}.{quote(table)}"
        statements.append(f"REVOKE ALL ON {name} FROM {who}")
        statements.append(f"GRANT {', '.join(APP_GRANTS.get(table, DEFAULT_GRANT))} ON {name} TO {who}")
    statements.append(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {where} TO {who}")
    return statements


@main.command("doctor")
@scriptable
def doctor(as_json: bool) -> None:
    """Check that the audit log holds: the append-only triggers are in place and enabled, the
    role consentsync runs as cannot alter the audit tables, and the checkpoints are configured.
    Exit 6 when the audit log is not append-only (a trigger missing or disabled), 2 when the
    checkpoints are misconfigured; warnings are printed and exit 0."""
    from consentsync.app import open_ledger
    from consentsync.checkpoints import signer_for

    config = current_config()
    ledger = open_ledger(config)
    with ledger.engine.connect() as conn:
        findings = audit_protection(conn)
    try:
        signer = signer_for(config)
    except (CheckpointError, ConfigError) as error:
        # Said among the findings (the triggers and the role are checked all the same), exit 2.
        findings.append(("config", f"checkpoints: {error}"))
    else:
        if signer is None:
            findings.append(
                ("warning", "checkpoints are off: set audit.checkpoints (docs/tamper-evidence.md)")
            )
        else:
            findings.append(("ok", f"checkpoints signed by key {signer.key_id} into {signer.directory}"))
    # A misconfigured checkpoint is an error as shown ("config" only picks its exit code).
    shown = [("error" if level == "config" else level, message) for level, message in findings]
    if as_json:
        emit_json([{"level": level, "message": message} for level, message in shown])
    else:
        for level, message in shown:
            click.echo(f"{level.upper():7}  {message}")
    if any(level == "error" for level, _ in findings):
        sys.exit(exit_codes.UNPROTECTED)  # the audit log is not append-only
    if any(level == "config" for level, _ in findings):
        sys.exit(exit_codes.CONFIG)


def audit_protection(conn: Connection) -> list[tuple[str, str]]:
    """What protects the audit tables from the role of ``conn``: (level, message) pairs."""
    dialect = conn.dialect.name
    findings: list[tuple[str, str]] = []
    if dialect == "sqlite":
        present = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars())
    else:
        rows = conn.execute(
            text(
                "SELECT t.tgname, t.tgenabled FROM pg_trigger t"
                " WHERE t.tgrelid = ANY(ARRAY[to_regclass('audit_entries'), to_regclass('consent_events'),"
                " to_regclass('audit_head')]) AND NOT t.tgisinternal"
            )
        ).all()
        present = {row.tgname for row in rows}
        for row in rows:
            if row.tgenabled == "D":
                findings.append(
                    ("error", f"trigger {row.tgname} is disabled: the audit log is not append-only")
                )
    missing = [name for name in AUDIT_TRIGGERS.get(dialect, ()) if name not in present]
    if missing:
        findings.append(
            ("error", f"triggers missing: {', '.join(missing)}: the audit log is not append-only")
        )
    elif not findings:
        findings.append(("ok", "append-only triggers in place on the audit tables"))
    if dialect == "sqlite":
        findings.append(
            (
                "warning",
                "SQLite: whoever can write the ledger file can rewrite the audit log; signed "
                "checkpoints are what catch it (PostgreSQL with two roles in production)",
            )
        )
        return findings
    role = conn.execute(
        text(
            "SELECT current_user AS name, r.rolsuper AS superuser,"
            " pg_has_role(current_user, c.relowner, 'MEMBER') AS owner"
            " FROM pg_roles r, pg_class c"
            " WHERE r.rolname = current_user AND c.oid = to_regclass('audit_entries')"
        )
    ).one()
    if role.superuser or role.owner:
        what = "a superuser" if role.superuser else "the owner of the audit tables"
        findings.append(
            (
                "warning",
                f"consentsync runs as {role.name}, {what}: "
                "it can disable the triggers and rewrite the audit log. Run the daemon and the console as "
                "an application role (consentsync db grant --app-role NAME, docs/tamper-evidence.md)",
            )
        )
        return findings
    # On the decision tables an UPDATE of the whole table: their grants are of some columns.
    checked = [
        *((table, ("UPDATE", "DELETE", "TRUNCATE", "TRIGGER", "REFERENCES")) for table in AUDIT_TABLES),
        *((table, ("UPDATE", "DELETE", "TRUNCATE")) for table in DECISION_TABLES),
    ]
    can = [
        f"{privilege} on {table}"
        for table, privileges in checked
        for privilege in privileges
        if conn.execute(
            text("SELECT has_table_privilege(:table, :privilege)"), {"table": table, "privilege": privilege}
        ).scalar()
    ]
    if can:
        findings.append(
            ("warning", f"role {role.name} holds {', '.join(can)}: run consentsync db grant again")
        )
    else:
        findings.append(("ok", f"role {role.name} cannot alter, truncate or rewrite the audit tables"))
    return findings
