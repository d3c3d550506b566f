"""Migrations: the code's expected revision is Alembic's head, and upgrade/downgrade round-trip."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from consentsync.app import SCHEMA_REVISION, migration_state
from consentsync.ledger.engine import make_engine
from consentsync.ledger.migrate import alembic_config, upgrade
from consentsync.ledger.schema import metadata
from tests.conftest import Cli, proof, record_args

# consent_events' columns added after 0010.
LATER_EVENT_COLUMNS = ("notice_language", "clock_lag_ms")


def test_expected_revision_is_the_head(ledger_url: str) -> None:
    engine = make_engine(ledger_url)
    assert ScriptDirectory.from_config(alembic_config(engine)).get_current_head() == SCHEMA_REVISION
    engine.dispose()


def test_upgrade_creates_every_table_and_downgrade_removes_them(ledger_url: str) -> None:
    engine = make_engine(ledger_url)
    assert migration_state(engine) is None
    upgrade(engine)
    assert migration_state(engine) == SCHEMA_REVISION
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())
    command.downgrade(alembic_config(engine), "base")
    assert not set(metadata.tables) & set(inspect(engine).get_table_names())
    upgrade(engine)
    assert migration_state(engine) == SCHEMA_REVISION
    engine.dispose()


def test_the_migrated_schema_is_the_one_the_code_declares(ledger_url: str) -> None:
    """Alembic's comparison of the migrated database with ``schema.metadata`` finds nothing to
    add, drop or alter: a table or index declared in code but missing from a migration fails."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(ledger_url)
    upgrade(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert differences == []


def test_a_ledger_at_a_squashed_development_revision_is_refused_in_one_line(
    cli: Cli, ledger_url: str
) -> None:
    """Revisions 0001-0009 were squashed into the baseline 0010 before 0.1.0: a ledger stamped
    with one is neither upgraded nor opened, and every command says why and what to do."""
    engine = make_engine(ledger_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0007'"))
    for command_words in (("init",), ("migrate",), ("audit", "log")):
        result = cli(*command_words)
        assert result.exit_code == 2, f"{command_words} -> {result.exit_code}: {result.output}"
        message = result.stderr.strip()
        assert "\n" not in message, f"expected one line, got:\n{message}"
        for needle in (
            make_url(ledger_url).database,
            "at development migration 0007",
            "new ledger",
            "799c0bf",
        ):
            assert needle in message, f"{needle!r} not in {message!r}"
    assert migration_state(engine) == "0007"
    engine.dispose()


def test_a_ledger_from_a_newer_consentsync_is_refused_in_one_line(ledger_url: str, cli: Cli) -> None:
    """A revision this consentsync does not know (a newer one upgraded the ledger) is neither
    downgraded nor opened: one line, exit 2, the ledger left as it was."""
    engine = make_engine(ledger_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    for command_words in (("init",), ("migrate",), ("status",)):
        result = cli(*command_words)
        assert result.exit_code == 2, f"{command_words} -> {result.exit_code}: {result.output}"
        message = result.stderr.strip()
        assert "\n" not in message and "Traceback" not in message, message
        assert "at migration 0099" in message and "newer consentsync" in message, message
    assert migration_state(engine) == "0099"
    engine.dispose()


def test_consent_events_keep_their_rows_and_guards_through_the_key_change_and_back(
    cli: Cli, ledger_url: str
) -> None:
    """0011 rebuilds consent_events on SQLite (a unique key is part of the table there): the
    events a ledger holds survive it both ways, the table stays append-only, and a replayed
    statement is still refused by the new key."""
    cli.ok("init")
    for n, status in enumerate(("granted", "withdrawn", "granted")):
        at = f"2026-05-0{n + 1}T10:00:00Z"
        cli.ok(
            *record_args(f"p{n}@example.org", "email_marketing", status, "--at", at, "--evidence-ref", "f")
        )
    engine = make_engine(ledger_url)

    def events() -> list[tuple[object, ...]]:
        # The columns 0010 has: notice_language (0021) and clock_lag_ms (0026) are dropped on the
        # way down.
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM consent_events ORDER BY id")).mappings()
            return [tuple(v for k, v in row.items() if k not in LATER_EVENT_COLUMNS) for row in rows]

    recorded = events()
    assert len(recorded) == 3
    command.downgrade(alembic_config(engine), "0010")
    assert events() == recorded
    upgrade(engine)
    assert migration_state(engine) == SCHEMA_REVISION and events() == recorded
    assert cli("audit", "verify").exit_code == 0
    with engine.connect() as conn:
        unique_keys = inspect(conn).get_unique_constraints("consent_events")
        assert [key["column_names"] for key in unique_keys] == [["subject_id", "fingerprint"]]
        first = conn.execute(text("SELECT subject_id, fingerprint FROM consent_events LIMIT 1")).one()
        # The table's own columns, so the replayed row is refused for the key, not for a column
        # count a later revision changed (0021 added notice_language).
        columns = [column["name"] for column in inspect(conn).get_columns("consent_events")]
    replayed = ", ".join("id + 100" if name == "id" else name for name in columns)
    for refused, reason in (
        ("UPDATE consent_events SET status = 'withdrawn'", None),
        ("DELETE FROM consent_events", None),
        (
            f"INSERT INTO consent_events ({', '.join(columns)}) SELECT {replayed} FROM consent_events "
            f"WHERE subject_id = {first.subject_id} AND fingerprint = '{first.fingerprint}'",
            "(?i)unique|duplicate key",  # SQLite's and PostgreSQL's words for the key
        ),
    ):
        # Each in its own transaction, after the reading connection closed: a writer waiting
        # behind it would only time out.
        with pytest.raises(DBAPIError, match=reason), engine.begin() as writer:
            writer.execute(text(refused))
    assert events() == recorded
    engine.dispose()


def _audit_rows(engine: Engine) -> list[tuple[int, str | None, int | None]]:
    with engine.connect() as conn:
        query = text("SELECT seq, subject_uid, subject_id FROM audit_entries WHERE subject_uid IS NOT NULL")
        return [(seq, uid, subject_id) for seq, uid, subject_id in conn.execute(query)]


def test_a_persons_trail_holds_the_entries_written_before_0013_and_after(cli: Cli, ledger_url: str) -> None:
    """0013 reads a person's trail by subject id without rewriting the append-only log: the
    entries written before it carry no id and are found by uid, those written after carry the
    person's id (a read of the record, which names the person by uid alone, too), both come back
    in one trail, and the chain still verifies."""
    cli.ok("init")
    for n in range(3):
        cli.ok(
            *record_args(
                f"p{n}@example.org",
                "email_marketing",
                "granted",
                "--at",
                f"2026-05-0{n + 1}T10:00:00Z",
                "--evidence-ref",
                "form:1",
            )
        )
    engine = make_engine(ledger_url)
    command.downgrade(alembic_config(engine), "0012")  # the column goes: every entry is "before"
    upgrade(engine)
    before = _audit_rows(engine)
    assert before and all(subject_id is None for _, _, subject_id in before)
    cli.ok(*record_args("p0@example.org", "email_marketing", "withdrawn", "--at", "2026-05-09T10:00:00Z"))
    cli.ok("subject", "show", "p0@example.org")  # subject.viewed: by uid alone
    after = [row for row in _audit_rows(engine) if row not in before]
    (uid,) = {uid for _, uid, _ in after}
    with engine.connect() as conn:
        subject_id = conn.execute(text("SELECT id FROM subjects WHERE uid = :uid"), {"uid": uid}).scalar()
    assert {row[2] for row in after} == {subject_id}

    trail = cli.json("audit", "log", "--email", "p0@example.org")
    assert [entry["seq"] for entry in trail] == sorted(
        seq for seq, row_uid, _ in before + after if row_uid == uid
    )
    assert {"consent.recorded", "subject.viewed"} <= {entry["action"] for entry in trail}
    assert cli.json("audit", "verify")["ok"] is True
    engine.dispose()


def test_verify_names_an_entry_pointed_at_another_person(cli: Cli, ledger_url: str) -> None:
    """``subject_id`` is outside the chain: an owner who re-points an entry at someone else would
    take it out of its person's trail, and ``audit verify`` names that entry."""
    cli.ok("init")
    for n in range(2):
        cli.ok(*record_args(f"p{n}@example.org", "email_marketing", "granted", *proof()))
    engine = make_engine(ledger_url)
    rows = _audit_rows(engine)
    (seq, _, first), other = rows[0], next(row[2] for row in rows if row[2] != rows[0][2])
    guard = (
        "ALTER TABLE audit_entries {} TRIGGER audit_entries_append_only"
        if engine.dialect.name == "postgresql"
        else None
    )
    with engine.begin() as conn:
        if guard:
            conn.execute(text(guard.format("DISABLE")))
        else:
            conn.execute(text("DROP TRIGGER audit_entries_no_update"))
        conn.execute(
            text("UPDATE audit_entries SET subject_id = :other WHERE seq = :seq"),
            {"other": other, "seq": seq},
        )
        if guard:
            conn.execute(text(guard.format("ENABLE")))
    assert first != other
    result = cli("audit", "verify")
    assert result.exit_code != 0
    assert f"entry {seq}" in result.output and "re-pointed" in result.output
    engine.dispose()


def _converted_lead_and_contact(engine: Engine, revision: str, link_columns: str, link_values: str) -> None:
    """At ``revision``: one person with a lead converted into a contact (the lead gone into it),
    and a snapshot for each link. ``link_columns``/``link_values``: the columns of the revision's
    crm_links past ``merged_into``, and each row's values for them."""
    upgrade(engine, revision)
    lead, contact = link_values.split("|")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subjects (id, uid, created_at, restricted)"
                " VALUES (1, 'u1', CURRENT_TIMESTAMP, false)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO crm_links (id, subject_id, connector, object_type, record_id, linked_at,"
                f" gone_at, merged_into{link_columns}) VALUES"
                f" (1, 1, 'sf', 'Lead', 'L1', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'C1'{lead}),"
                f" (2, 1, 'sf', 'Contact', 'C1', CURRENT_TIMESTAMP, NULL, NULL{contact})"
            )
        )
        conn.execute(
            text(
                "INSERT INTO crm_snapshots (link_id, evidence, fields, updated_at, identity) VALUES"
                " (1, '{}', '{}', CURRENT_TIMESTAMP, 'x'), (2, '{}', '{}', CURRENT_TIMESTAMP, 'y')"
            )
        )


def _link_rows(engine: Engine, columns: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(f"SELECT {columns} FROM crm_links ORDER BY id"))]


def _round_trip(engine: Engine, down_to: str, column: str, set_it: str, columns: str) -> None:
    """Upgrades to the head, sets the new ``column`` (``set_it``), downgrades to ``down_to`` and
    upgrades again: every link and snapshot is kept each way, and the column goes and comes."""
    before = _link_rows(engine, columns)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(set_it))
    command.downgrade(alembic_config(engine), down_to)
    assert migration_state(engine) == down_to
    assert _link_rows(engine, columns) == before
    assert column not in {c["name"] for c in inspect(engine).get_columns("crm_links")}
    upgrade(engine)
    assert migration_state(engine) == SCHEMA_REVISION and _link_rows(engine, columns) == before
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM crm_snapshots")).scalar_one() == 2
    engine.dispose()


def test_0016_keeps_every_link_and_snapshot_both_ways(ledger_url: str) -> None:
    """0016 adds crm_links.merged_into_object; downgrading drops it. Both ways with links and the
    snapshots that reference them: a rebuild of crm_links (SQLite's batch mode) was refused by
    the foreign keys, and the ledger stayed at 0016."""
    engine = make_engine(ledger_url)
    _converted_lead_and_contact(engine, "0015", "", "|")
    _round_trip(
        engine,
        "0015",
        "merged_into_object",
        "UPDATE crm_links SET merged_into_object = 'Contact' WHERE id = 1",
        "id, object_type, record_id, merged_into",
    )


def test_0017_keeps_every_link_and_snapshot_both_ways(ledger_url: str) -> None:
    """0017 adds crm_links.gone_by_write in place, NULL for every link gone before it;
    downgrading drops it, keeping every link and snapshot."""
    engine = make_engine(ledger_url)
    _converted_lead_and_contact(engine, "0016", ", merged_into_object", ", 'Contact'|, NULL")
    upgrade(engine)
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM crm_links WHERE gone_by_write IS NULL")).scalar_one() == 2
        )
    _round_trip(
        engine,
        "0016",
        "gone_by_write",
        "UPDATE crm_links SET gone_by_write = true WHERE id = 2",
        "id, record_id, merged_into, merged_into_object",
    )


def test_0026_adds_the_clock_lag_in_place_and_downgrade_drops_it(cli: Cli, ledger_url: str) -> None:
    """0026 adds consent_events.clock_lag_ms, NULL for every event before it (read as stamped, as
    before); downgrading drops it and keeps every event, and the ledger verifies both ways."""
    cli.ok("init")
    cli.ok(*record_args("lag@example.org", "email_marketing", "granted", *proof()))
    cli.ok(*record_args("lag@example.org", "email_marketing", "withdrawn", source="salesforce"))
    engine = make_engine(ledger_url)

    def events() -> list[tuple[object, ...]]:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM consent_events ORDER BY id")).mappings()
            return [tuple(v for k, v in row.items() if k != "clock_lag_ms") for row in rows]

    def columns() -> set[str]:
        return {column["name"] for column in inspect(engine).get_columns("consent_events")}

    recorded = events()
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM consent_events WHERE clock_lag_ms IS NULL")).scalar() == 2
        )
    command.downgrade(alembic_config(engine), "0025")
    assert migration_state(engine) == "0025"
    assert "clock_lag_ms" not in columns() and events() == recorded
    upgrade(engine)
    assert migration_state(engine) == SCHEMA_REVISION == "0026"
    assert "clock_lag_ms" in columns() and events() == recorded
    engine.dispose()
    verified = cli("audit", "verify")
    assert verified.exit_code == 0, verified.output + verified.stderr
