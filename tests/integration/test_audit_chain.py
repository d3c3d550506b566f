"""The audit log is tamper-evident on both databases, append-only, and survives erasure."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from consentsync import audit
from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import audit_details, audit_entries
from consentsync.ledger.service import Ledger
from tests.conftest import Cli
from tests.integration.helpers import consent_value


def _grant(ledger: Ledger, email: str, day: int, status: ConsentStatus = ConsentStatus.GRANTED) -> None:
    at = datetime(2026, 1, day, tzinfo=UTC)
    ledger.record(Identity(email=email), consent_value(status, at, ledger.clock(), notice_version="v1"))


def _populated(ledger: Ledger) -> int:
    for day, email in enumerate(["a@example.com", "b@example.com", "c@example.com"], start=1):
        _grant(ledger, email, day)
    _grant(ledger, "a@example.com", 9, ConsentStatus.WITHDRAWN)
    with ledger.engine.connect() as conn:
        result = audit.verify(conn)
    assert result.ok, result
    return result.head_seq


def _disable_guards(engine: Engine) -> None:
    """What an attacker with DBA rights would do first; our triggers stop everyone else."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_entries DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER audit_entries_no_update"))
            conn.execute(text("DROP TRIGGER audit_entries_no_delete"))


def _verify(ledger: Ledger) -> audit.VerifyResult:
    with ledger.engine.connect() as conn:
        return audit.verify(conn)


def test_untouched_chain_verifies_and_links_every_entry(ledger: Ledger) -> None:
    head = _populated(ledger)
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(audit_entries).order_by(audit_entries.c.seq)).all()
    assert [r.seq for r in rows] == list(range(1, head + 1))
    assert rows[0].prev_hash == audit.GENESIS_HASH
    for before, after in itertools.pairwise(rows):
        assert after.prev_hash == before.hash
        assert audit.chain_hash(after.prev_hash, after.payload) == after.hash


def test_update_and_delete_are_refused_by_the_database(ledger: Ledger) -> None:
    _populated(ledger)
    for statement in (
        "UPDATE audit_entries SET action = 'x' WHERE seq = 2",
        "DELETE FROM audit_entries WHERE seq = 2",
        "UPDATE consent_events SET status = 'granted'",
        "DELETE FROM consent_events",
        *(["TRUNCATE audit_entries CASCADE"] if ledger.engine.dialect.name == "postgresql" else []),
    ):
        with pytest.raises(DBAPIError, match="append-only"), ledger.engine.begin() as conn:
            conn.execute(text(statement))
    assert _verify(ledger).ok


def test_edited_entry_is_named(ledger: Ledger) -> None:
    _populated(ledger)
    _disable_guards(ledger.engine)
    with ledger.engine.begin() as conn:
        payload = json.loads(
            conn.execute(select(audit_entries.c.payload).where(audit_entries.c.seq == 5)).scalar_one()
        )
        payload["new"] = {"status": "granted", "basis": "consent", "suppressed": False}
        conn.execute(
            audit_entries.update().where(audit_entries.c.seq == 5).values(payload=json.dumps(payload))
        )
    result = _verify(ledger)
    assert not result.ok
    assert result.broken_seq == 5
    assert "edited" in (result.problem or "")


def test_edit_with_recomputed_hash_breaks_the_next_link(ledger: Ledger) -> None:
    _populated(ledger)
    _disable_guards(ledger.engine)
    with ledger.engine.begin() as conn:
        # The first consent.recorded (after the entries of the ledger's first opening).
        row = conn.execute(
            select(audit_entries)
            .where(audit_entries.c.action == "consent.recorded")
            .order_by(audit_entries.c.seq)
            .limit(1)
        ).one()
        forged = row.payload.replace('"web_form"', '"forged"')
        assert forged != row.payload
        conn.execute(
            audit_entries.update()
            .where(audit_entries.c.seq == row.seq)
            .values(payload=forged, hash=audit.chain_hash(row.prev_hash, forged))
        )
    result = _verify(ledger)
    assert (result.ok, result.broken_seq) == (False, row.seq + 1)
    assert "prev_hash" in (result.problem or "")


def test_deleted_entry_is_named(ledger: Ledger) -> None:
    _populated(ledger)
    _disable_guards(ledger.engine)
    with ledger.engine.begin() as conn:
        conn.execute(audit_entries.delete().where(audit_entries.c.seq == 3))
    result = _verify(ledger)
    assert (result.ok, result.broken_seq) == (False, 3)
    assert "missing" in (result.problem or "")


def test_deleted_tail_is_caught_by_the_head(ledger: Ledger) -> None:
    head = _populated(ledger)
    _disable_guards(ledger.engine)
    with ledger.engine.begin() as conn:
        conn.execute(audit_entries.delete().where(audit_entries.c.seq == head))
    result = _verify(ledger)
    assert not result.ok
    assert result.broken_seq == head
    assert "removed from the end" in (result.problem or "")


def test_reordered_entries_are_named(ledger: Ledger) -> None:
    _populated(ledger)
    _disable_guards(ledger.engine)
    with ledger.engine.begin() as conn:
        four, five = (
            conn.execute(select(audit_entries).where(audit_entries.c.seq == n)).one() for n in (4, 5)
        )
        columns = ("at", "action", "subject_uid", "run_id", "payload", "prev_hash", "hash")
        for target, source in ((4, five), (5, four)):
            conn.execute(
                audit_entries.update()
                .where(audit_entries.c.seq == target)
                .values({c: getattr(source, c) for c in columns})
            )
    result = _verify(ledger)
    assert (result.ok, result.broken_seq) == (False, 4)


def test_edited_details_are_caught_and_erased_details_are_not(ledger: Ledger) -> None:
    ledger.raise_objection("p@example.com", "profiling")
    (pending,) = ledger.list_objections(pending_only=True)
    ledger.decide_objection(pending["id"], uphold=False, by="dpo", reason="overriding grounds: fraud checks")
    with ledger.engine.connect() as conn:
        seq = conn.execute(select(audit_details.c.seq)).scalar_one()
    with ledger.engine.begin() as conn:
        conn.execute(
            audit_details.update().where(audit_details.c.seq == seq).values(content='{"reason":"none"}')
        )
    result = _verify(ledger)
    assert (result.ok, result.broken_seq) == (False, seq)
    assert "details" in (result.problem or "")
    # Blanking the details is what erasure does, and only erasure: blanked for a person who is
    # not erased, they were removed outside consentsync (the reason of a decision on an
    # objection gone unflagged), and the entry is named.
    with ledger.engine.begin() as conn:
        conn.execute(audit_details.update().values(content=None))
    result = _verify(ledger)
    assert (result.ok, result.broken_seq) == (False, seq)
    assert "not erased" in (result.problem or "")
    # Erased, the person's details are gone as they should be, and the chain verifies.
    ledger.erase("p@example.com", reason="Art. 17")
    assert _verify(ledger).ok


def test_erasure_keeps_the_chain_whole_and_the_address_out_of_it(ledger: Ledger) -> None:
    _populated(ledger)
    ledger.erase("a@example.com", reason="Art. 17 request 42")
    result = _verify(ledger)
    assert result.ok
    with ledger.engine.connect() as conn:
        payloads = conn.execute(select(audit_entries.c.payload)).scalars().all()
    assert not any("a@example.com" in p for p in payloads)
    erased_uid = ledger.subject_uids_for_email("a@example.com")
    assert len(erased_uid) == 1
    with ledger.engine.connect() as conn:
        mine = list(audit.entries(conn, subject_uids=erased_uid))
    assert [e["action"] for e in mine][:2] == ["subject.created", "consent.recorded"]
    assert any(e["action"] == "subject.erased" for e in mine)


def test_concurrent_writers_keep_one_gapless_chain(ledger: Ledger) -> None:
    """Writers serialise on the chain head: on PostgreSQL by its row lock, on SQLite by
    BEGIN IMMEDIATE. Eight threads, each with its own connection, never fork the chain."""
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for day in range(1, 6):
                _grant(ledger, f"w{worker}-{day}@example.com", day)
        except BaseException as error:
            errors.append(error)

    with ledger.engine.connect() as conn:  # the entries of the ledger's first opening
        opened = conn.execute(select(func.count()).select_from(audit_entries)).scalar_one()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    result = _verify(ledger)
    assert result.ok, result
    # Then subject.created + consent.recorded for each grant, none lost or forked.
    assert result.entries_checked == opened + 8 * 5 * 2


def test_cli_verify_exits_5_and_names_the_entry(cli: Cli, ledger: Ledger) -> None:
    _populated(ledger)
    assert cli("audit", "verify").exit_code == 0
    _disable_guards(ledger.engine)
    with ledger.engine.begin() as conn:
        conn.execute(audit_entries.delete().where(audit_entries.c.seq == 6))
    result = cli("audit", "verify")
    assert result.exit_code == 5  # AUDIT_BROKEN
    assert "BROKEN at entry 6" in result.stdout
    as_json = cli("audit", "verify", "--json")
    assert as_json.exit_code == 5
    assert json.loads(as_json.stdout)["broken_seq"] == 6
