"""`audit verify` holds the decision tables to the chain (docs/tamper-evidence.md, "Decisions and
audit entries agree"), on SQLite and PostgreSQL: an objection, a suppression entry or a person's
restriction or erasure undone by a plain row edit (deleted, inserted, changed) is named in one line
by table, row id and field, exit 5; a ledger that went through every lifecycle (objections
decided, restrictions placed, carried and lifted, erasures of known, unknown and returning
addresses and of a person holding two) verifies clean. On PostgreSQL the application role cannot
delete these rows at all."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Connection, Engine, create_engine, delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from consentsync import audit, audit_decisions, exit_codes
from consentsync.ledger.schema import objections, subjects, suppressions
from consentsync.ledger.service import Ledger
from tests.conftest import Cli, Clock, proof, record_args
from tests.integration.test_policy_s49_sync import _engine, _grant
from tests.integration.test_policy_s50_address import _readdress, _two_people
from tests.integration.test_tamper_evidence import _app_url, _configure_checkpoints

DISAGREE = "objections, suppressions, restrictions or erasures DISAGREE with audit entries: "
AGREE = "objections, suppressions, restrictions and erasures agree with audit entries"


def _subject_id(ledger: Ledger, uid: str) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(subjects.c.id).where(subjects.c.uid == uid)).scalar_one())


def _person(ledger: Ledger, email: str) -> int:
    (uid,) = ledger.subject_uids_for_email(email)
    return _subject_id(ledger, uid)


def _found(cli: Cli, *extra: str) -> str:
    """The one line `audit verify` names the disagreement in (exit 5, no address in the output)."""
    result = cli("audit", "verify", *extra)
    assert result.exit_code == exit_codes.AUDIT_BROKEN, result.output
    assert "audit chain verified" in result.stdout  # the chain itself is whole
    assert "@" not in result.output  # ids and keyed hashes only
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(DISAGREE)]
    return line[len(DISAGREE) :]


def _world(ledger: Ledger, clock: Clock) -> dict[str, int]:
    """The black-box tester's ledger: a direct-marketing objection (upheld by the policy), an
    objection decided by a reviewer, a restriction, an erased person and an erased address nobody
    held. The ids of their rows."""
    for email in ("pat@example.org", "olga@example.org", "rita@example.org", "eve@example.org"):
        _grant(ledger, email, clock.now - timedelta(days=30))
    ids = {"pat": _person(ledger, "pat@example.org"), "rita": _person(ledger, "rita@example.org")}
    ids["eve"] = _person(ledger, "eve@example.org")
    ids["dm"] = ledger.raise_objection("pat@example.org", "email_marketing", direct_marketing=True)["id"]
    clock.advance(minutes=1)
    raised = ledger.raise_objection("olga@example.org", "profiling", raised_at=clock.now - timedelta(days=2))
    ids["decided"] = raised["id"]
    clock.advance(minutes=1)
    ledger.decide_objection(ids["decided"], uphold=True, by="rev", reason="no overriding grounds")
    clock.advance(minutes=1)
    ledger.restrict("rita@example.org", restricted=True, reason="18(1)(a)")
    clock.advance(minutes=1)
    ids["erasure"] = ledger.erase("eve@example.org", reason="ticket 9")["suppression_id"]
    ids["unknown"] = ledger.erase("never@example.org", reason="suppression list import")["suppression_id"]
    clock.advance(minutes=1)
    return ids


def _insert_objection(conn: Connection, ids: dict[str, int], clock: Clock, **values: Any) -> None:
    row = {
        "subject_id": ids["rita"], "purpose": "profiling", "direct_marketing": False, "status": "pending",
        "raised_at": clock.now, "recorded_at": clock.now, "source": "ops", **values,
    }  # fmt: skip
    conn.execute(insert(objections).values(**row))


def _replace_upheld_by_rejected(conn: Connection, ids: dict[str, int], clock: Clock) -> None:
    """The upheld objection deleted and inserted again as a reviewer's rejection, all else kept."""
    row = conn.execute(select(objections).where(objections.c.id == ids["dm"])).one()
    conn.execute(delete(objections).where(objections.c.id == ids["dm"]))
    conn.execute(insert(objections).values(**{**row._asdict(), "status": "rejected", "decided_by": "rev"}))


def _undo_erasure(conn: Connection, ids: dict[str, int], clock: Clock) -> None:
    """What the erasure's suppression takes on PostgreSQL (and SQLite with foreign keys on):
    the person first, then their suppression entry."""
    conn.execute(
        update(subjects).where(subjects.c.id == ids["eve"]).values(suppression_id=None, erased_at=None)
    )
    conn.execute(delete(suppressions).where(suppressions.c.id == ids["erasure"]))


Tamper = Callable[[Connection, dict[str, int], Clock], None]
TAMPERINGS: dict[str, tuple[Tamper, str]] = {
    "objection deleted": (
        lambda conn, ids, clock: conn.execute(delete(objections).where(objections.c.id == ids["dm"])),
        "objections row {dm} is gone but audit entry \\d+ records it: deleted outside consentsync",
    ),
    "objection decision edited": (
        lambda conn, ids, clock: conn.execute(
            update(objections).where(objections.c.id == ids["decided"]).values(status="rejected")
        ),
        "objections row {decided}: status is rejected where audit entry \\d+ says upheld: "
        "edited outside consentsync",
    ),
    "upheld objection replaced by a forged rejected one": (
        _replace_upheld_by_rejected,
        "objections row {dm}: status is rejected where audit entry \\d+ says upheld; "
        "decided_by differs from audit entry \\d+: edited outside consentsync",
    ),
    "objection inserted": (
        lambda conn, ids, clock: _insert_objection(conn, ids, clock, id=99),
        "objections row 99 has no audit entry: inserted outside consentsync",
    ),
    "objection time moved": (
        lambda conn, ids, clock: conn.execute(
            update(objections)
            .where(objections.c.id == ids["dm"])
            .values(raised_at=clock.now + timedelta(days=9))
        ),
        "objections row {dm}: raised_at is .* where audit entry \\d+ says .*: edited outside consentsync",
    ),
    "suppression of an unknown address deleted": (
        lambda conn, ids, clock: conn.execute(
            delete(suppressions).where(suppressions.c.id == ids["unknown"])
        ),
        "suppressions row {unknown} is gone but audit entry \\d+ records it: deleted outside consentsync",
    ),
    "erasure undone": (
        _undo_erasure,
        "suppressions row {erasure} is gone but audit entry \\d+ records it: deleted outside consentsync",
    ),
    "suppression reason edited": (
        lambda conn, ids, clock: conn.execute(
            update(suppressions).where(suppressions.c.id == ids["erasure"]).values(reason="nothing to see")
        ),
        "suppressions row {erasure}: reason differs from audit entry \\d+: edited outside consentsync",
    ),
    "suppression re-hashed (the address no longer matches)": (
        lambda conn, ids, clock: conn.execute(
            update(suppressions).where(suppressions.c.id == ids["erasure"]).values(email_hmac="0" * 64)
        ),
        "suppressions row {erasure}: email_hmac is 0{{64}} where audit entry \\d+ says [0-9a-f]{{64}}: "
        "edited outside consentsync",
    ),
    "suppression inserted": (
        lambda conn, ids, clock: conn.execute(
            insert(suppressions).values(id=99, email_hmac="f" * 64, reason="forged", created_at=clock.now)
        ),
        "suppressions row 99 has no audit entry: inserted outside consentsync",
    ),
    "restriction cleared": (
        lambda conn, ids, clock: conn.execute(
            update(subjects).where(subjects.c.id == ids["rita"]).values(restricted=False)
        ),
        "subjects row {rita}: restricted is false where audit entry \\d+ says true: "
        "edited outside consentsync",
    ),
    "restriction set by hand": (
        lambda conn, ids, clock: conn.execute(
            update(subjects).where(subjects.c.id == ids["pat"]).values(restricted=True)
        ),
        "subjects row {pat}: restricted is true where no audit entry says false: edited outside consentsync",
    ),
    "erased person un-erased": (
        lambda conn, ids, clock: conn.execute(
            update(subjects).where(subjects.c.id == ids["eve"]).values(erased_at=None)
        ),
        "subjects row {eve}: erased_at is none where audit entry \\d+ says .*: edited outside consentsync",
    ),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_decision_row_changed_by_hand_is_named_in_one_line(
    cli: Cli, ledger: Ledger, clock: Clock, tampering: str
) -> None:
    ids = _world(ledger, clock)
    assert AGREE in cli.ok("audit", "verify").stdout
    tamper, expected = TAMPERINGS[tampering]
    with ledger.engine.begin() as conn:
        tamper(conn, ids, clock)
    assert re.fullmatch(expected.format(**ids), _found(cli)), _found(cli)
    verdict = json.loads(cli("audit", "verify", "--json").stdout)
    assert verdict["ok"] is False and verdict["chain_ok"] is True and verdict["decisions"]["ok"] is False


def test_the_testers_undoing_is_caught_even_with_signed_checkpoints(cli: Cli, ledger: Ledger) -> None:
    """The report as filed: an objector, a restricted person and an erased one, a checkpoint,
    then their rows deleted or cleared (on PostgreSQL the erased person's link to their
    suppression first: the foreign key asks for it)."""
    directory = _configure_checkpoints(cli)
    at = ("--at", "2026-11-01T10:00:00Z", "--notice-version", "v1")
    for email in ("pat@example.org", "rita@example.org", "eve@example.org"):
        cli.ok(*record_args(email, "email_marketing", "granted", *at))
    cli.ok(
        "objection",
        "raise",
        "--email",
        "pat@example.org",
        "--purpose",
        "email_marketing",
        "--direct-marketing",
    )
    cli.ok("restrict", "--email", "rita@example.org", "--reason", "18(1)(a)")
    cli.ok("erase", "--email", "eve@example.org", "--reason", "ticket 9", "--yes")
    cli.ok("audit", "checkpoint")
    assert AGREE in cli.ok("audit", "verify", "--checkpoints", str(directory)).stdout
    with ledger.engine.begin() as conn:
        conn.execute(update(subjects).values(suppression_id=None))
        conn.execute(delete(objections))
        conn.execute(delete(suppressions))
        conn.execute(update(subjects).values(restricted=False))
    found = _found(cli, "--checkpoints", str(directory))
    assert re.fullmatch(
        "objections row 1 is gone but audit entry \\d+ records it: deleted outside consentsync", found
    )


def _every_lifecycle(ledger: Ledger, config_path: Path, clock: Clock) -> None:
    """Every way consentsync itself changes these rows."""
    org = _two_people(ledger, config_path, clock)  # a@ and b@, each on a CRM record
    clock.advance(minutes=1)
    # Objections: upheld by the policy (direct marketing; a purpose's auto_uphold), pending then
    # upheld, pending then rejected, pending still; one raised for an earlier moment.
    for email in ("pat@example.org", "olga@example.org", "rita@example.org", "eve@example.org"):
        _grant(ledger, email, clock.now - timedelta(days=30))
    ledger.raise_objection("pat@example.org", "email_marketing")
    ledger.raise_objection("olga@example.org", "profiling", direct_marketing=True)
    upheld = ledger.raise_objection("olga@example.org", "profiling", raised_at=clock.now - timedelta(hours=3))
    rejected = ledger.raise_objection("rita@example.org", "profiling")
    ledger.raise_objection("eve@example.org", "profiling")
    clock.advance(minutes=1)
    ledger.decide_objection(upheld["id"], uphold=True, by="rev", reason="no overriding grounds")
    ledger.decide_objection(rejected["id"], uphold=False, by="rev", reason="compelling grounds")
    # Restrictions: placed and lifted, placed and kept, carried to another person's record by a
    # merge and lifted by the erasure of the person it came from.
    clock.advance(minutes=1)
    ledger.restrict("rita@example.org", restricted=True, reason="18(1)(a)")
    clock.advance(minutes=1)
    ledger.restrict("rita@example.org", restricted=False, reason="accuracy verified")
    ledger.restrict("olga@example.org", restricted=True, reason="18(1)(d)")
    ledger.restrict("b@example.com", restricted=True, reason="accuracy contested")
    clock.advance(minutes=1)
    org.merge("r2", "r1")  # B's record merged into A's: A is restricted, carried from B
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)
    # Erasures: a restricted person (lifting what was carried from them), a person holding the
    # objection still pending, an address nobody held, an address erased again after its person
    # came back (a new person, created suppressed), and a person holding two addresses.
    ledger.erase("b@example.com", reason="Art. 17 request")
    ledger.erase("eve@example.org", reason="ticket 9")
    ledger.erase("never@example.org", reason="suppression list import")
    _grant(ledger, "back@example.org", clock.now - timedelta(days=3))
    ledger.erase("back@example.org", reason="first request")
    clock.advance(minutes=1)
    _grant(ledger, "back@example.org", clock.now)
    clock.advance(minutes=1)
    ledger.erase("back@example.org", reason="asked again")
    org.put("r3", "ada@oldjob.example")
    _grant(ledger, "ada@oldjob.example", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)
    _readdress(org, clock, "r3", "ada.private@home.example")
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    ledger.erase("ada@oldjob.example", reason="Art. 17 request")
    clock.advance(minutes=1)
    org.put("r4", "ada.private@home.example")  # her other address comes back: a person created suppressed
    assert _engine(ledger, config_path, org).run().status == "succeeded"


def test_an_honest_ledger_through_every_lifecycle_verifies_clean(
    cli: Cli, ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    _every_lifecycle(ledger, config_path, clock)
    result = cli.ok("audit", "verify")
    line = next(line for line in result.stdout.splitlines() if line.startswith(AGREE))
    assert line == (
        f"{AGREE}: 5 objections, 6 suppression entries, 7 people restricted, erased or suppressed"
    ), result.stdout
    with ledger.engine.connect() as conn:  # a page of one row or entry at a time: the same
        assert audit_decisions.decisions(conn, batch=1) == audit_decisions.decisions(conn)


def test_entries_written_before_the_check_verify_clean(
    cli: Cli, ledger: Ledger, config_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ledgers an older version wrote: objection entries without the objection's time, erasure
    entries without the keyed hash, and no entry for an erased person's other address (whose
    suppression entry goes with the erasure entry of its time and reason)."""
    real = audit.append

    def as_older_versions_wrote(conn: Connection, records: Any, at: Any) -> list[int]:
        older = [
            replace(r, what={k: v for k, v in r.what.items() if k not in ("email_hmac", "raised_at")})
            for r in records
            if r.action != "suppression.added"
        ]
        return real(conn, older, at)

    with monkeypatch.context() as older:
        older.setattr(audit, "append", as_older_versions_wrote)
        _every_lifecycle(ledger, config_path, clock)
    assert AGREE in cli.ok("audit", "verify").stdout
    with ledger.engine.begin() as conn:  # still: the status an older entry does say
        conn.execute(update(objections).where(objections.c.status == "rejected").values(status="upheld"))
    assert re.fullmatch(
        "objections row \\d+: status is upheld where audit entry \\d+ says rejected: .*", _found(cli)
    )


@pytest.mark.parametrize("ledger_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_the_application_role_cannot_delete_decisions_yet_makes_them(
    cli: Cli, ledger: Ledger, ledger_url: str, clock: Clock
) -> None:
    role = f"cs_app_{uuid.uuid4().hex[:10]}"
    owner = ledger.engine
    with owner.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} NOLOGIN"))
    app: Engine | None = None
    try:
        _world(ledger, clock)
        cli.ok("db", "grant", "--app-role", role)
        app = create_engine(_app_url(ledger_url, role).replace("postgresql://", "postgresql+psycopg://", 1))
        for statement in (
            "DELETE FROM objections",
            "DELETE FROM suppressions",
            "UPDATE suppressions SET reason = 'x'",
            "DELETE FROM subjects WHERE id = 1",
            "UPDATE subjects SET uid = 'x' WHERE id = 1",
            "UPDATE objections SET subject_id = 1",
            "TRUNCATE objections",
        ):
            with pytest.raises(DBAPIError), app.begin() as conn:
                conn.execute(text(statement))
        # What consentsync does as the application role: every decision still made.
        data = yaml.safe_load(cli.config_path.read_text())
        data["ledger"]["url"] = _app_url(ledger_url, role)
        cli.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        cli.ok(*record_args("zoe@example.org", "profiling", "granted", *proof(), source="ops"))
        raised = cli.json("objection", "raise", "--email", "zoe@example.org", "--purpose", "profiling")
        cli.ok("objection", "decide", str(raised["id"]), "--reject", "--by", "rev", "--reason", "grounds")
        cli.ok("restrict", "--email", "zoe@example.org", "--reason", "18(1)(a)")
        cli.ok("restrict", "--email", "zoe@example.org", "--lift", "--reason", "verified")
        cli.ok("erase", "--email", "zoe@example.org", "--reason", "ticket 10", "--yes")
        assert AGREE in cli.ok("audit", "verify").stdout
        findings = json.loads(cli.ok("doctor", "--json").stdout)
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
