"""Migration 0018 on a ledger written before it, on SQLite and PostgreSQL:

* ``suppressions.last_erased_at`` is backfilled with each entry's latest erasure, from the chain
  where the rows alone kept the first (an address nobody held, erased twice);
* a suppression an older version made for an erased person's other address, with no chain
  entry of its own, gets a backfill ``suppression.added`` entry (source ``migration``), so that
  `audit verify` names its deletion; before, the row could be deleted unseen;
* the chain still verifies, and a downgrade and upgrade again keep every row.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic import command
from sqlalchemy import Connection, delete, select

from consentsync import audit, exit_codes
from consentsync.domain import iso
from consentsync.ledger.migrate import alembic_config, upgrade
from consentsync.ledger.schema import audit_entries, suppressions
from consentsync.ledger.service import Ledger
from tests.conftest import Cli, Clock
from tests.integration.test_policy_s49_sync import Org, _engine, _grant
from tests.integration.test_policy_s50_address import _readdress

AGREE = "objections, suppressions, restrictions and erasures agree with audit entries"
DISAGREE = "objections, suppressions, restrictions or erasures DISAGREE with audit entries: "


def _as_older_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Erasures as a version before the suppression.added entry wrote them: no entry for an
    erased person's other address, no keyed hash in the erasure's entry."""
    real = audit.append

    def older(conn: Connection, records: Any, at: Any) -> list[int]:
        kept = [
            replace(r, what={k: v for k, v in r.what.items() if k != "email_hmac"})
            for r in records
            if r.action != "suppression.added"
        ]
        return real(conn, kept, at)

    monkeypatch.setattr(audit, "append", older)


def _old_ledger(
    ledger: Ledger, config_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> tuple[datetime, datetime, datetime]:
    """Ada (two addresses) erased, and an address nobody held erased twice, by an older version;
    the ledger then taken back to 0017. The times of Ada's erasure and of the two others."""
    with monkeypatch.context() as older:
        _as_older_versions(older)
        org = Org(clock)
        org.put("r1", "ada@oldjob.example")
        _grant(ledger, "ada@oldjob.example", clock.now - timedelta(days=30))
        assert _engine(ledger, config_path, org).run().status == "succeeded"
        clock.advance(minutes=1)
        _readdress(org, clock, "r1", "ada.private@home.example")
        clock.advance(minutes=1)
        assert _engine(ledger, config_path, org).run().status == "succeeded"
        ada = clock.now
        ledger.erase("ada@oldjob.example", reason="Art. 17 request")
        clock.advance(days=1)
        first = clock.now
        ledger.erase("never@example.org", reason="suppression list import")
        clock.advance(days=1)
        second = clock.now
        ledger.erase("never@example.org", reason="asked again")
        clock.advance(days=1)
    command.downgrade(alembic_config(ledger.engine), "0017")
    return ada, first, second


def _rows(ledger: Ledger) -> dict[str, tuple[int, datetime, datetime]]:
    digest = ledger.keyed_hasher()
    names = ("ada@oldjob.example", "ada.private@home.example", "never@example.org")
    by_digest = {digest(name): name for name in names}
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(suppressions)).all()
    return {by_digest[row.email_hmac]: (row.id, row.created_at, row.last_erased_at) for row in rows}


def _verify(cli: Cli) -> tuple[int, str]:
    result = cli("audit", "verify")
    (line,) = [line for line in result.stdout.splitlines() if line.startswith((AGREE, DISAGREE))]
    return result.exit_code, line


def test_0018_backfills_the_latest_erasure_and_chains_older_other_addresses(
    cli: Cli, ledger: Ledger, config_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ada, first, second = _old_ledger(ledger, config_path, clock, monkeypatch)
    with ledger.engine.connect() as conn:
        head = (
            conn.execute(select(audit_entries.c.seq).order_by(audit_entries.c.seq.desc())).scalars().first()
        )
    upgrade(ledger.engine)
    rows = _rows(ledger)
    # Each entry's latest erasure; the address erased twice from the chain's second entry.
    assert rows["ada@oldjob.example"][1:] == (ada, ada)
    assert rows["ada.private@home.example"][1:] == (ada, ada)
    assert rows["never@example.org"][1:] == (first, second)
    # One backfill entry, for Ada's other address only, appended to the chain.
    with ledger.engine.connect() as conn:
        added = conn.execute(
            select(audit_entries.c.seq, audit_entries.c.payload).where(audit_entries.c.seq > head)
        ).all()
    ((seq, text),) = added
    entry = orjson.loads(text)
    other_id = rows["ada.private@home.example"][0]
    assert entry["action"] == "suppression.added"
    assert (entry["source"], entry["actor"]) == ("migration", "migration 0018")
    assert entry["what"]["suppression"] == other_id
    assert entry["new"] == {"suppressed": True, "created_at": iso(ada), "last_erased_at": iso(ada)}
    code, line = _verify(cli)
    assert (code, line.startswith(AGREE)) == (0, True), line
    assert cli.json("audit", "verify")["ok"] is True
    # Its deletion is now seen (before 0018 the row had no entry: verify could not tell).
    with ledger.engine.begin() as conn:
        conn.execute(delete(suppressions).where(suppressions.c.id == other_id))
    code, line = _verify(cli)
    assert code == exit_codes.AUDIT_BROKEN
    assert line == (
        f"{DISAGREE}suppressions row {other_id} is gone but audit entry {seq} records it: "
        "deleted outside consentsync"
    ), line


def test_0018_round_trips_and_adds_no_second_backfill(
    cli: Cli, ledger: Ledger, config_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_ledger(ledger, config_path, clock, monkeypatch)
    upgrade(ledger.engine)
    rows = _rows(ledger)
    command.downgrade(alembic_config(ledger.engine), "0017")
    upgrade(ledger.engine)
    assert _rows(ledger) == rows
    with ledger.engine.connect() as conn:
        sources = [
            orjson.loads(text).get("source")
            for text in conn.execute(
                select(audit_entries.c.payload).where(audit_entries.c.action == "suppression.added")
            ).scalars()
        ]
    assert sources == ["migration"]
    code, line = _verify(cli)
    assert (code, line.startswith(AGREE)) == (0, True), line
