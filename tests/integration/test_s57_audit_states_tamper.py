"""`audit verify` holds each person's current states (``consent_states``) to their consent events
(docs/tamper-evidence.md, "Current states and consent events agree"), on SQLite and PostgreSQL.

The black-box tester's defect: a withdrawal undone by editing the state row's summary (restriction
cleared, latest made a grant) made `subject show` and the decisions say granted, and `audit verify`
passed every check, exit 0. Now each state row is compared with the fold of its events: a summary,
status, basis, since or expiry edited, a row deleted or inserted, is named in one line by the
person's uid, purpose and channel, exit 5. An honest ledger through every lifecycle (trusted
reversals, undated grants, soft opt-ins, objections, restrictions, erasures, the expiry sweep, a
purpose's validity and the trusted sources changed in the config) verifies clean.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from sqlalchemy import Connection, delete, insert, select, update

from consentsync import audit_states, exit_codes
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, LawfulBasis, Origin, SoftOptIn
from consentsync.ledger.engine import reading
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import consent_events, consent_states, subjects
from consentsync.ledger.service import Ledger, _event_evidence
from tests.conftest import SQLITE_ONLY, TEST_ERASURE_KEY, Cli, Clock, own_environment
from tests.integration.helpers import consent_value

CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")
DISAGREE = "current states DISAGREE with the consent events: "
AGREE = "current states agree with the consent events: "
EDITED = ": edited outside consentsync"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [CONSENTSYNC, "--config", str(tmp_path / "consentsync.yaml"), *args]
    environment = own_environment(tmp_path, TEST_ERASURE_KEY)
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120, check=False)


def _ok(tmp_path: Path, *args: str) -> str:
    done = _run(tmp_path, *args)
    assert done.returncode == 0, f"{args}: {done.returncode} {done.stdout}{done.stderr}"
    return done.stdout


def _disagreement(stdout: str) -> str:
    """The one line naming the state row (no address in it), without its prefix."""
    (line,) = [line for line in stdout.splitlines() if line.startswith(DISAGREE)]
    return line[len(DISAGREE) :]


# -- the tester's repro, with real processes ------------------------------------------------------


@SQLITE_ONLY
def test_a_withdrawal_undone_in_the_state_row_fails_verify(tmp_path: Path, config_path: Path) -> None:
    """`ledger record` granted then withdrawn for bob; the state row's summary edited with
    python3 + sqlite3 (restriction null, latest granted): `subject show` says granted, and `audit
    verify` names bob's row by uid, purpose and channel, exit 5."""
    _ok(tmp_path, "init")
    base = ("--purpose", "email_marketing", "--source", "web_form")
    _ok(tmp_path, "ledger", "record", "--email", "bob@example.com", *base, "--status", "granted",
        "--at", "2026-01-01T10:00:00Z", "--evidence-ref", "form:1")  # fmt: skip
    _ok(tmp_path, "ledger", "record", "--email", "bob@example.com", *base, "--status", "withdrawn",
        "--at", "2026-01-02T10:00:00Z")  # fmt: skip
    _ok(tmp_path, "ledger", "record", "--email", "alice@example.com", *base, "--status", "granted",
        "--at", "2026-01-01T10:00:00Z", "--evidence-ref", "form:1")  # fmt: skip
    assert DISAGREE not in _ok(tmp_path, "audit", "verify")

    database = sqlite3.connect(tmp_path / "ledger.db")
    with database:
        (subject_id, uid) = database.execute(
            "SELECT s.id, s.uid FROM subjects s JOIN subject_identifiers i ON i.subject_id = s.id"
            " WHERE i.value = 'bob@example.com'"
        ).fetchone()
        (text,) = database.execute(
            "SELECT summary FROM consent_states WHERE subject_id = ?", (subject_id,)
        ).fetchone()
        summary = orjson.loads(text)
        summary["restriction"] = None
        summary["latest"] = {**summary["latest"], "status": "granted", "rank": 0}
        database.execute(
            "UPDATE consent_states SET summary = ? WHERE subject_id = ?",
            (orjson.dumps(summary).decode(), subject_id),
        )
    database.close()
    shown = _ok(tmp_path, "subject", "show", "bob@example.com")
    assert re.search(r"email_marketing\s+email\s+granted\s+consent\s+no\s", shown)  # the harm done

    done = _run(tmp_path, "audit", "verify")
    assert done.returncode == exit_codes.AUDIT_BROKEN, done.stdout + done.stderr
    assert "audit chain verified" in done.stdout  # the chain and the events are whole
    assert "consent events and audit entries agree" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert "@" not in done.stdout + done.stderr
    assert _disagreement(done.stdout) == (
        f"subject {uid} (id {subject_id}), purpose email_marketing, channel email: summary latest is "
        "granted of 2026-01-02T10:00:00Z where the consent events say withdrawn of 2026-01-02T10:00:00Z; "
        "summary restriction is none where the consent events say withdrawn of 2026-01-02T10:00:00Z" + EDITED
    )
    json_out = _run(tmp_path, "audit", "verify", "--json")
    assert json_out.returncode == exit_codes.AUDIT_BROKEN
    states = orjson.loads(json_out.stdout)["states"]
    assert states["ok"] is False and states["disagreeing"] == 1 and states["states"] == 2


@SQLITE_ONLY
def test_a_state_row_deleted_with_sqlite3_fails_verify(tmp_path: Path, config_path: Path) -> None:
    """A withdrawal of profiling (legitimate interests: without evidence, not suppressed) undone by
    deleting its state row: the person reads as processable again; verify names the missing row."""
    _ok(tmp_path, "init")
    _ok(tmp_path, "ledger", "record", "--email", "bob@example.com", "--purpose", "profiling",
        "--status", "withdrawn", "--source", "ops", "--at", "2026-01-02T10:00:00Z")  # fmt: skip
    database = sqlite3.connect(tmp_path / "ledger.db")
    with database:
        database.execute("DELETE FROM consent_states WHERE purpose = 'profiling'")
    database.close()
    done = _run(tmp_path, "audit", "verify")
    assert done.returncode == exit_codes.AUDIT_BROKEN, done.stdout + done.stderr
    assert re.fullmatch(
        r"subject [0-9a-f-]{36} \(id 1\), purpose profiling, channel email: no state row where 1 "
        r"consent events are \(deleted\)" + EDITED,
        _disagreement(done.stdout),
    )


# -- every edit, on both databases ----------------------------------------------------------------


def _world(ledger: Ledger, clock: Clock) -> dict[str, int]:
    """bob granted then withdrew; alice granted (and her grant is the only row of hers); carol
    objected to profiling by a withdrawal. The people's ids."""
    at = clock.now - timedelta(days=30)
    for email, status, when in (
        ("bob@example.com", ConsentStatus.GRANTED, at),
        ("bob@example.com", ConsentStatus.WITHDRAWN, at + timedelta(days=1)),
        ("alice@example.com", ConsentStatus.GRANTED, at),
    ):
        ledger.record(Identity(email=email), consent_value(status, when, clock.now))
    ledger.record(
        Identity(email="carol@example.com"),
        consent_value(ConsentStatus.WITHDRAWN, at, clock.now, purpose="profiling", basis=None, source="ops"),
    )
    ids = {}
    with ledger.engine.connect() as conn:
        for name in ("bob", "alice", "carol"):
            (uid,) = ledger.subject_uids_for_email(f"{name}@example.com")
            ids[name] = conn.execute(select(subjects.c.id).where(subjects.c.uid == uid)).scalar_one()
    clock.advance(minutes=1)
    return ids


def _state(conn: Connection, subject_id: int, purpose: str = "email_marketing") -> Any:
    return conn.execute(
        select(consent_states).where(
            consent_states.c.subject_id == subject_id, consent_states.c.purpose == purpose
        )
    ).one()


def _edit_summary(conn: Connection, subject_id: int, change: Callable[[dict[str, Any]], None]) -> None:
    summary = orjson.loads(_state(conn, subject_id).summary)
    change(summary)
    conn.execute(
        update(consent_states)
        .where(consent_states.c.subject_id == subject_id, consent_states.c.purpose == "email_marketing")
        .values(summary=orjson.dumps(summary).decode())
    )


def _withdrawal_undone(summary: dict[str, Any]) -> None:
    summary["restriction"] = None
    summary["latest"] = {**summary["latest"], "status": "granted", "rank": 0}


def _reversal_forged(summary: dict[str, Any]) -> None:
    summary["trusted_opt_in_at"] = "2026-05-30T00:00:00Z"  # no event of bob's was given then


def _copy_row(conn: Connection, ids: dict[str, int], clock: Clock) -> None:
    """alice's grant copied onto carol, who gave none (a row inserted by hand)."""
    row = _state(conn, ids["alice"])._asdict()
    conn.execute(insert(consent_states).values(**{**row, "subject_id": ids["carol"]}))


Tamper = Callable[[Connection, dict[str, int], Clock], Any]
TAMPERINGS: dict[str, tuple[Tamper, str]] = {
    "withdrawal undone in the summary": (
        lambda conn, ids, clock: _edit_summary(conn, ids["bob"], _withdrawal_undone),
        "{bob}, purpose email_marketing, channel email: summary latest is granted of .* where the consent "
        "events say withdrawn of .*; summary restriction is none where the consent events say withdrawn",
    ),
    "a trusted reversal forged": (
        lambda conn, ids, clock: _edit_summary(conn, ids["bob"], _reversal_forged),
        "{bob}, purpose email_marketing, channel email: summary trusted_opt_in_at is "
        "2026-05-30T00:00:00Z where the consent events say none",
    ),
    "summary no JSON": (
        lambda conn, ids, clock: conn.execute(
            update(consent_states).where(consent_states.c.subject_id == ids["bob"]).values(summary="{")
        ),
        "{bob}, purpose email_marketing, channel email: the summary is no JSON",
    ),
    "status column edited": (
        lambda conn, ids, clock: conn.execute(
            update(consent_states).where(consent_states.c.subject_id == ids["bob"]).values(status="granted")
        ),
        "{bob}, purpose email_marketing, channel email: status is granted where the summary says withdrawn",
    ),
    "expiry pushed out": (
        lambda conn, ids, clock: conn.execute(
            update(consent_states)
            .where(consent_states.c.subject_id == ids["alice"])
            .values(expires_at=clock.now + timedelta(days=9000))
        ),
        "{alice}, purpose email_marketing, channel email: expires_at is .* where the summary says .*",
    ),
    "row deleted": (
        lambda conn, ids, clock: conn.execute(
            delete(consent_states).where(consent_states.c.subject_id == ids["carol"])
        ),
        "{carol}, purpose profiling, channel email: no state row where 1 consent events are \\(deleted\\)",
    ),
    "row inserted": (
        _copy_row,
        "{carol}, purpose email_marketing, channel email: summary latest is granted of .* where the "
        "consent events say none",
    ),
}


@pytest.mark.parametrize("tamper", list(TAMPERINGS))
def test_every_edit_of_a_state_row_is_named(cli: Cli, ledger: Ledger, clock: Clock, tamper: str) -> None:
    ids = _world(ledger, clock)
    assert AGREE in cli.ok("audit", "verify").stdout
    change, expected = TAMPERINGS[tamper]
    with ledger.engine.begin() as conn:
        change(conn, ids, clock)
    result = cli("audit", "verify")
    assert result.exit_code == exit_codes.AUDIT_BROKEN, result.output
    assert "@" not in result.output
    who = {name: f"subject [0-9a-f-]{{36}} \\(id {subject_id}\\)" for name, subject_id in ids.items()}
    line = _disagreement(result.stdout)
    assert re.fullmatch(expected.format(**who) + ".*" + EDITED, line), line


def test_a_forged_state_changes_the_decision_and_is_caught(cli: Cli, ledger: Ledger, clock: Clock) -> None:
    """What the edit does (the decisions API's answer: contact allowed) and that verify says so."""
    ids = _world(ledger, clock)
    assert ledger.decision_for("bob@example.com", "email_marketing", "email")[1].suppressed
    with ledger.engine.begin() as conn:
        _edit_summary(conn, ids["bob"], _withdrawal_undone)
    assert not ledger.decision_for("bob@example.com", "email_marketing", "email")[1].suppressed
    assert cli("audit", "verify").exit_code == exit_codes.AUDIT_BROKEN


# -- honest ledgers verify clean -------------------------------------------------------------------


def _set_config(config_path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    settings = yaml.safe_load(config_path.read_text())
    change(settings)
    config_path.write_text(yaml.safe_dump(settings))


def _lifecycle(ledger: Ledger, clock: Clock) -> None:
    start = clock.now
    record = ledger.record
    # A trusted reversal: granted, withdrawn, granted again on the web form with its evidence.
    for status, days in ((ConsentStatus.GRANTED, 400), (ConsentStatus.WITHDRAWN, 300)):
        record(Identity(email="ann@example.com"), consent_value(status, start - timedelta(days=days), start))
    record(
        Identity(email="ann@example.com"),
        consent_value(ConsentStatus.GRANTED, start - timedelta(days=200), start, evidence_ref="form#12"),
    )
    # An undated grant, seen twice; a grant and a refusal in the same second (a tie).
    record(Identity(email="ben@example.com"), consent_value(ConsentStatus.GRANTED, None, start))
    clock.advance(days=1)
    record(Identity(email="ben@example.com"), consent_value(ConsentStatus.GRANTED, None, clock.now))
    tie = start - timedelta(days=3)
    record(Identity(email="cas@example.com"), consent_value(ConsentStatus.GRANTED, tie, clock.now))
    record(Identity(email="cas@example.com"), consent_value(ConsentStatus.REFUSED, tie, clock.now))
    # A soft opt-in, and another basis after a withdrawal (no switching).
    soft = SoftOptIn("order 7", "similar", "box at checkout", "footer link")
    record(
        Identity(email="dee@example.com"),
        consent_value(
            ConsentStatus.NOT_APPLICABLE, start - timedelta(days=5), clock.now,
            basis=LawfulBasis.LEGITIMATE_INTERESTS, source="shop", origin=Origin.CRM, soft_opt_in=soft,
        ),
    )  # fmt: skip
    record(
        Identity(email="dee@example.com"),
        consent_value(ConsentStatus.WITHDRAWN, start - timedelta(days=4), clock.now, purpose="profiling",
                      basis=None, source="ops"),
    )  # fmt: skip
    record(
        Identity(email="dee@example.com"),
        consent_value(ConsentStatus.GRANTED, start - timedelta(days=2), clock.now, purpose="profiling",
                      basis=LawfulBasis.LEGITIMATE_INTERESTS, source="crm", origin=Origin.CRM),
    )  # fmt: skip
    # Objections (one decided), a restriction, an erasure, a person with no evidence objecting.
    for email in ("eli@example.com", "fay@example.com", "gus@example.com"):
        record(
            Identity(email=email), consent_value(ConsentStatus.GRANTED, start - timedelta(days=9), clock.now)
        )
    ledger.raise_objection("eli@example.com", "email_marketing", direct_marketing=True)
    pending = ledger.raise_objection("fay@example.com", "profiling")
    ledger.decide_objection(pending["id"], uphold=True, by="rev", reason="no overriding grounds")
    ledger.raise_objection("nobody-yet@example.com", "profiling")
    ledger.restrict("fay@example.com", restricted=True, reason="18(1)(a)")
    ledger.erase("gus@example.com", reason="ticket 9")
    # Lapses: a grant older than its validity, recorded by the expiry sweep.
    record(
        Identity(email="hal@example.com"),
        consent_value(ConsentStatus.GRANTED, start - timedelta(days=729), start),
    )
    clock.advance(days=3)
    assert ledger.expire_due().recorded >= 1


def _verified(config_path: Path, clock: Clock) -> audit_states.StatesResult:
    opened = open_ledger(load_config(config_path))  # restates what a changed purpose decides
    opened.clock = clock
    try:
        with reading(opened.engine) as conn:
            return audit_states.states(conn, opened.purposes, opened.policy)
    finally:
        opened.engine.dispose()


def test_an_honest_ledger_through_every_lifecycle_verifies_clean(
    cli: Cli, ledger: Ledger, clock: Clock, config_path: Path
) -> None:
    _lifecycle(ledger, clock)
    result = cli.ok("audit", "verify")
    assert AGREE in result.stdout, result.stdout
    found = _verified(config_path, clock)
    assert found.ok and found.events >= 15 and found.states >= 12, found

    # The purpose's validity shortened: the next ledger opened restates its rows (expires_at).
    _set_config(config_path, lambda s: s["purposes"][0].update(validity_days=100))
    assert _verified(config_path, clock).ok
    # The web form trusted no more: ann's reversal stays as the ledger folded it then.
    _set_config(config_path, lambda s: s["policy"].update(trusted_sources=["preference_center"]))
    found = _verified(config_path, clock)
    assert found.ok, found.problem
    assert AGREE in cli.ok("audit", "verify").stdout


def test_the_check_reads_events_as_the_ledger_refolds_them(ledger: Ledger, clock: Clock) -> None:
    """``audit_states`` reads each event from its columns in order, for speed: the same evidence
    as ``service._event_evidence``, the ledger's own reading (soft opt-ins, bases, undated)."""
    _lifecycle(ledger, clock)
    with ledger.engine.connect() as conn:
        quick = [audit_states._evidence(row) for row in conn.execute(audit_states._EVENTS)]
        rows = conn.execute(select(consent_events).order_by(consent_events.c.subject_id)).all()
    ledgers = [_event_evidence(row) for row in rows]
    assert len(quick) == len(ledgers) >= 15
    assert any(item.soft_opt_in is not None for item in quick)
    assert any(item.event_time is None for item in quick)
    for mine, theirs, row in zip(quick, ledgers, rows, strict=True):
        assert mine == theirs
        assert mine.fingerprint() == row.fingerprint == theirs.fingerprint()


def test_a_reversal_under_a_source_trusted_then_passes_only_at_its_events_time(
    cli: Cli, ledger: Ledger, clock: Clock, config_path: Path
) -> None:
    """With the web form trusted no more, ann's stored reversal (the time of her evidenced grant
    on it) passes; moved to any other time, it is named."""
    _lifecycle(ledger, clock)
    _set_config(config_path, lambda s: s["policy"].update(trusted_sources=["preference_center"]))
    assert _verified(config_path, clock).ok
    (uid,) = ledger.subject_uids_for_email("ann@example.com")
    with ledger.engine.begin() as conn:
        subject_id = conn.execute(select(subjects.c.id).where(subjects.c.uid == uid)).scalar_one()
        _edit_summary(conn, subject_id, lambda s: s.update(trusted_opt_in_at="2026-05-31T00:00:00Z"))
    result = cli("audit", "verify")
    assert result.exit_code == exit_codes.AUDIT_BROKEN
    assert (
        f"subject {uid} (id {subject_id}), purpose email_marketing, channel email: summary " in result.stdout
    )
    assert "trusted_opt_in_at is 2026-05-31T00:00:00Z where the consent events say none" in result.stdout


# -- the address's binding (held since session 58: test_s58_identity_bindings.py) -------------------


@SQLITE_ONLY
def test_an_address_moved_to_another_person_fails_verify(cli: Cli, ledger: Ledger, clock: Clock) -> None:
    ids = _world(ledger, clock)
    from consentsync.ledger.schema import subject_identifiers

    with ledger.engine.begin() as conn:
        conn.execute(
            update(subject_identifiers)
            .where(subject_identifiers.c.value == "bob@example.com")
            .values(subject_id=ids["alice"])
        )
    assert not ledger.decision_for("bob@example.com", "email_marketing", "email")[1].suppressed
    result = cli("audit", "verify")
    assert result.exit_code == exit_codes.AUDIT_BROKEN
    assert AGREE in result.stdout and "audit chain verified" in result.stdout  # all else whole
    with ledger.engine.connect() as conn:
        bob, alice = (
            conn.execute(select(subjects.c.uid).where(subjects.c.id == ids[name])).scalar_one()
            for name in ("bob", "alice")
        )
    assert ledger.subject_uids_for_email("bob@example.com") == [alice]  # the harm done
    lines = [line for line in result.stdout.splitlines() if "identifiers DISAGREE" in line]
    assert len(lines) == 2 and "@" not in result.stdout
    assert f"subject {bob} (id {ids['bob']}): lost an identifier (email, keyed hash " in lines[0]
    assert f"subject {alice} (id {ids['alice']}): holds an identifier (email, keyed hash " in lines[1]
    assert f"the chain binds to subject {bob} (audit entry " in lines[1]
