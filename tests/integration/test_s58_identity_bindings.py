"""`audit verify` holds whose each address is (docs/tamper-evidence.md, "Addresses and their
people"), on SQLite and PostgreSQL.

The defect (docs/tamper-evidence.md before session 58): the chain said a person was created with
an email address, not which, and an address a person took later (a CRM record re-addressed) wrote
no entry, so an address moved to another person by an UPDATE of ``subject_identifiers`` (bob's,
who withdrew, to alice, who granted) went unnoticed: the chain, the events and the states were
whole. Now every identifier the ledger stores is bound to its person in the chain by its keyed
hash (``subject.created``, ``subject.identifier_added``), an erasure unbinds what it deletes, a
one-time step at open binds what an older version stored (``subject.identifiers_bound``), and
verify names each person whose rows differ from their bindings, by uid, exit 5.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, delete, event, insert, select, update

import consentsync.ledger.service as service
from consentsync import audit, audit_bindings, exit_codes
from consentsync.domain import ConsentStatus
from consentsync.ledger.engine import reading
from consentsync.ledger.identity import BOUND, UNBOUND, CrmLink, Identity, SubjectResolver, email_hmac
from consentsync.ledger.schema import (
    audit_entries,
    audit_head,
    consent_events,
    consent_states,
    ledger_settings,
    subject_identifiers,
    subjects,
)
from consentsync.ledger.service import BINDINGS_DONE, BINDINGS_SETTING, Ledger
from tests.conftest import SQLITE_ONLY, Cli, Clock
from tests.integration.helpers import consent_value
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _state
from tests.integration.test_policy_s50_address import _readdress
from tests.integration.test_tamper_evidence import _as_owner_unprotected, _head

AGREE = "identifiers agree with their bindings in the audit chain: "
DISAGREE = "identifiers DISAGREE with their bindings in the audit chain: "
ANN, ANN_NEW, BEN, CAT = "ann@example.com", "ann.new@example.com", "ben@example.com", "cat@example.com"


def _sync(ledger: Ledger, config_path: Path, org: Org, clock: Clock) -> None:
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)


def _people(ledger: Ledger, config_path: Path, clock: Clock) -> Org:
    """ann (record r1) and ben (r2) opted in, read once; then r1 re-addressed to ann.new, which
    ann takes (she holds both addresses)."""
    org = Org(clock)
    org.put("r1", ANN)
    org.put("r2", BEN)
    for email in (ANN, BEN):
        _grant(ledger, email, clock.now - timedelta(days=30))
    _sync(ledger, config_path, org, clock)
    _readdress(org, clock, "r1", ANN_NEW)
    _sync(ledger, config_path, org, clock)
    assert ledger.subject_uids_for_email(ANN_NEW) == ledger.subject_uids_for_email(ANN)
    return org


def _ids(ledger: Ledger, *emails: str) -> list[tuple[str, int]]:
    """(uid, id) of the person holding each address."""
    found = []
    with ledger.engine.connect() as conn:
        for email in emails:
            (uid,) = ledger.subject_uids_for_email(email)
            found.append((uid, conn.execute(select(subjects.c.id).where(subjects.c.uid == uid)).scalar_one()))
    return found


def _entries(ledger: Ledger, action: str) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        return list(audit.entries(conn, action=action))


def _problems(stdout: str) -> list[str]:
    return [line[len(DISAGREE) :] for line in stdout.splitlines() if line.startswith(DISAGREE)]


def _checked(ledger: Ledger, batch: int = 5000) -> audit_bindings.BindingsResult:
    """The check alone, on the ledger as it is (``cli audit verify`` opens the ledger first,
    which runs the one-time step)."""
    with reading(ledger.engine) as conn:
        return audit_bindings.bindings(conn, ledger.keyed_hasher(), batch)


# -- an address taken later, then moved -----------------------------------------------------------


def test_an_address_taken_later_is_bound_and_moving_it_fails_verify(
    cli: Cli, ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    _people(ledger, config_path, clock)
    (ann, ann_id), (ben, ben_id) = _ids(ledger, ANN, BEN)
    (added,) = _entries(ledger, "subject.identifier_added")
    key = ledger.erasure_key()
    assert added["subject"] == ann
    assert added["what"] == {
        BOUND: {"email": [email_hmac(key, ANN_NEW)]},
        "crm_record": {"connector": "scripted", "object": "thing", "id": "r1"},
    }
    created = {entry["subject"]: entry["what"][BOUND] for entry in _entries(ledger, "subject.created")}
    assert created == {ann: {"email": [email_hmac(key, ANN)]}, ben: {"email": [email_hmac(key, BEN)]}}
    trail = json.dumps([*_entries(ledger, "subject.created"), added])
    assert "@" not in trail  # keyed hashes only
    verified = cli.ok("audit", "verify").stdout
    assert f"{AGREE}3 identifiers of 2 people" in verified

    # ann's new address moved to ben (who granted, as ann did: whatever either says goes to the
    # other): both are named, by uid, and the entry that binds the address to ann.
    with ledger.engine.begin() as conn:
        conn.execute(
            update(subject_identifiers)
            .where(subject_identifiers.c.value == ANN_NEW)
            .values(subject_id=ben_id)
        )
    assert ledger.subject_uids_for_email(ANN_NEW) == [ben]
    result = cli("audit", "verify")
    assert result.exit_code == exit_codes.AUDIT_BROKEN, result.output
    assert "audit chain verified" in result.stdout and "current states agree" in result.stdout
    assert "@" not in result.output and "Traceback" not in result.output
    digest = email_hmac(key, ANN_NEW)[:16]
    assert _problems(result.stdout) == [
        f"subject {ann} (id {ann_id}): lost an identifier (email, keyed hash {digest}) the chain binds "
        f"to them (audit entry {added['seq']}): edited outside consentsync",
        f"subject {ben} (id {ben_id}): holds an identifier (email, keyed hash {digest}) the chain binds "
        f"to subject {ann} (audit entry {added['seq']}), not to them: edited outside consentsync",
    ]
    as_json = json.loads(cli("audit", "verify", "--json").stdout)
    assert as_json["ok"] is False and as_json["chain_ok"] is True
    assert as_json["identifiers"]["disagreeing"] == 2 and as_json["identifiers"]["identifiers"] == 3


def _inserted(conn: Connection, ids: dict[str, int]) -> None:
    conn.execute(
        insert(subject_identifiers).values(subject_id=ids["ben"], kind="email", value="ben2@example.com")
    )


def _edited(conn: Connection, ids: dict[str, int]) -> None:
    conn.execute(
        update(subject_identifiers)
        .where(subject_identifiers.c.value == BEN)
        .values(value="mallory@example.com")
    )


def _deleted(conn: Connection, ids: dict[str, int]) -> None:
    conn.execute(delete(subject_identifiers).where(subject_identifiers.c.value == BEN))


TAMPERINGS: dict[str, tuple[Callable[[Connection, dict[str, int]], None], str]] = {
    "a row inserted": (
        _inserted,
        r"holds an identifier \(email, keyed hash [0-9a-f]{16}\) the chain does not bind",
    ),
    "a value edited": (
        _edited,
        r"holds an identifier \(email, keyed hash [0-9a-f]{16}\) the chain does not bind to them; lost an "
        r"identifier \(email, keyed hash [0-9a-f]{16}\) the chain binds to them \(audit entry \d+\)",
    ),
    "a row deleted": (_deleted, r"lost an identifier \(email, keyed hash [0-9a-f]{16}\) the chain binds"),
}


@SQLITE_ONLY
@pytest.mark.parametrize("tamper", list(TAMPERINGS))
def test_every_edit_of_an_identifier_row_is_named(
    cli: Cli, ledger: Ledger, config_path: Path, clock: Clock, tamper: str
) -> None:
    _people(ledger, config_path, clock)
    ((ben, ben_id),) = _ids(ledger, BEN)
    change, expected = TAMPERINGS[tamper]
    with ledger.engine.begin() as conn:
        change(conn, {"ben": ben_id})
    result = cli("audit", "verify")
    assert result.exit_code == exit_codes.AUDIT_BROKEN, result.output
    assert "@" not in result.output
    (line,) = _problems(result.stdout)
    assert re.fullmatch(f"subject {ben} \\(id {ben_id}\\): {expected}.*: edited outside consentsync", line), (
        line
    )


@SQLITE_ONLY
def test_a_cut_tail_leaving_the_persons_address_is_named(cli: Cli, ledger: Ledger, clock: Clock) -> None:
    """The owner cuts the chain's tail (ben's entries, his event and state, the head moved back:
    tests/integration/test_tamper_evidence.py) but leaves ben and his address: the address is
    bound by nothing now. Cut with his address too, only signed checkpoints find it."""
    _grant(ledger, ANN, clock.now - timedelta(days=1))
    kept, kept_hash = _head(ledger.engine)
    _grant(ledger, BEN, clock.now - timedelta(days=1))
    ((ben, ben_id),) = _ids(ledger, BEN)
    _as_owner_unprotected(ledger.engine)
    with ledger.engine.begin() as conn:
        conn.execute(delete(audit_entries).where(audit_entries.c.seq > kept))
        conn.execute(delete(consent_events).where(consent_events.c.subject_id == ben_id))
        conn.execute(delete(consent_states).where(consent_states.c.subject_id == ben_id))
        conn.execute(update(audit_head).values(seq=kept, hash=kept_hash))
    result = cli("audit", "verify")
    assert result.exit_code == exit_codes.AUDIT_BROKEN, result.output
    assert "audit chain verified" in result.stdout and "current states agree" in result.stdout
    (line,) = _problems(result.stdout)
    assert line.startswith(f"subject {ben} (id {ben_id}): holds an identifier (email, keyed hash ")
    assert line.endswith(" the chain does not bind to them: edited outside consentsync")
    with ledger.engine.begin() as conn:
        conn.execute(delete(subject_identifiers).where(subject_identifiers.c.subject_id == ben_id))
    assert cli("audit", "verify").exit_code == 0


# -- honest ledgers verify clean --------------------------------------------------------------------


def test_re_addressing_merges_erasure_and_a_comeback_verify_clean(
    cli: Cli, ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _people(ledger, config_path, clock)
    # A third person, whose record the CRM merges into ben's (the people stay two; nobody's
    # address moves).
    org.put("r3", CAT)
    _grant(ledger, CAT, clock.now - timedelta(days=3))
    _sync(ledger, config_path, org, clock)
    org.merge("r3", "r2")
    _sync(ledger, config_path, org, clock)
    assert _entries(ledger, "crm.record_merged")
    assert cli.ok("audit", "verify").stdout.count(AGREE + "4 identifiers of 3 people") == 1

    # ann erased (by her first address): both of hers are deleted, and unbound.
    ((ann, _),) = _ids(ledger, ANN)
    ledger.erase(ANN, reason="Art. 17 request")
    (erased,) = _entries(ledger, "subject.erased")
    key = ledger.erasure_key()
    assert erased["subject"] == ann
    assert erased["what"][UNBOUND] == {"email": sorted([email_hmac(key, ANN), email_hmac(key, ANN_NEW)])}
    clock.advance(minutes=1)
    _sync(ledger, config_path, org, clock)  # r1 still shows ann.new: kept as a hash, no row
    assert f"{AGREE}2 identifiers of 3 people" in cli.ok("audit", "verify").stdout

    # ann comes back with her first address (a new consent, evidenced, after the erasure): a new
    # person holds it, bound to them; the erased one holds nothing.
    _grant(ledger, ANN, clock.now)
    (back,) = set(ledger.subject_uids_for_email(ANN)) - {ann}  # (and the erased person)
    assert _state(ledger, ANN) == ("granted", False)
    created = {entry["subject"]: entry["what"][BOUND] for entry in _entries(ledger, "subject.created")}
    assert created[back] == created[ann] == {"email": [email_hmac(key, ANN)]}
    result = cli.ok("audit", "verify")
    assert f"{AGREE}3 identifiers of 4 people" in result.stdout
    assert _checked(ledger, batch=1) == _checked(ledger)  # read a row a page: the same


def test_a_non_ascii_address_is_bound_under_its_stored_form(cli: Cli, ledger: Ledger, clock: Clock) -> None:
    """The binding of a new person's address reuses the hash of its first form (``email_forms``):
    it must be the hash of the value stored."""
    ledger.record(
        Identity(email="zoë@bücher.example"), consent_value(ConsentStatus.GRANTED, clock.now, clock.now)
    )
    with ledger.engine.connect() as conn:
        (stored,) = conn.execute(select(subject_identifiers.c.value)).scalars()
    (created,) = _entries(ledger, "subject.created")
    assert created["what"][BOUND] == {"email": [email_hmac(ledger.erasure_key(), stored)]}
    assert f"{AGREE}1 identifiers of 1 people" in cli.ok("audit", "verify").stdout


# -- a ledger an older version wrote ----------------------------------------------------------------


def _as_an_older_version(ledger: Ledger, config_path: Path, clock: Clock, mp: pytest.MonkeyPatch) -> Org:
    """ann and ben recorded (ann re-addressed) as a version before session 58 did: no binding
    entries; and the marker of the one-time step gone, as in a ledger such a version wrote."""
    with mp.context() as older:
        older.setattr(SubjectResolver, "binds", False)
        org = _people(ledger, config_path, clock)
    assert _entries(ledger, "subject.identifier_added") == []
    assert all(BOUND not in entry["what"] for entry in _entries(ledger, "subject.created"))
    with ledger.engine.begin() as conn:
        conn.execute(delete(ledger_settings).where(ledger_settings.c.name == BINDINGS_SETTING))
    return org


def _marker(ledger: Ledger) -> str | None:
    with ledger.engine.connect() as conn:
        return conn.execute(
            select(ledger_settings.c.value).where(ledger_settings.c.name == BINDINGS_SETTING)
        ).scalar()


def test_an_upgraded_ledger_is_bound_once_at_open_and_verifies(
    cli: Cli, ledger: Ledger, config_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _as_an_older_version(ledger, config_path, clock, monkeypatch)
    found = _checked(ledger)
    assert not found.ok and found.disagreeing == 2  # without the step: every person named

    result = cli.ok("audit", "verify")  # the next open binds them
    assert f"{AGREE}3 identifiers of 2 people" in result.stdout
    assert _marker(ledger) == BINDINGS_DONE
    key = ledger.erasure_key()
    (ann, ann_id), (ben, _) = _ids(ledger, ANN, BEN)
    bound = {entry["subject"]: entry for entry in _entries(ledger, "subject.identifiers_bound")}
    assert {uid: entry["what"] for uid, entry in bound.items()} == {
        ann: {BOUND: {"email": sorted([email_hmac(key, ANN), email_hmac(key, ANN_NEW)])}},
        ben: {BOUND: {"email": [email_hmac(key, BEN)]}},
    }
    assert {entry["source"] for entry in bound.values()} == {"consentsync:upgrade"}
    assert "@" not in json.dumps(list(bound.values()))
    with ledger.engine.connect() as conn:
        head = (
            conn.execute(select(audit_entries.c.seq).order_by(audit_entries.c.seq.desc())).scalars().first()
        )
    assert ledger.bind_identifiers() == 0
    cli.ok("audit", "verify")
    with ledger.engine.connect() as conn:  # once: later opens write nothing
        assert (
            conn.execute(select(audit_entries.c.seq).order_by(audit_entries.c.seq.desc())).scalars().first()
            == head
        )

    # From the upgrade on, a move is found as on any ledger.
    with ledger.engine.begin() as conn:
        conn.execute(
            update(subject_identifiers).where(subject_identifiers.c.value == BEN).values(subject_id=ann_id)
        )
    assert cli("audit", "verify").exit_code == exit_codes.AUDIT_BROKEN


@SQLITE_ONLY
def test_an_address_moved_before_the_upgrade_is_not_detectable(
    cli: Cli, ledger: Ledger, config_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the rows say at the upgrade is bound as it is (docs/tamper-evidence.md)."""
    _as_an_older_version(ledger, config_path, clock, monkeypatch)
    ((_, ann_id),) = _ids(ledger, ANN)
    with ledger.engine.begin() as conn:
        conn.execute(
            update(subject_identifiers).where(subject_identifiers.c.value == BEN).values(subject_id=ann_id)
        )
    assert f"{AGREE}3 identifiers of 2 people" in cli.ok("audit", "verify").stdout


@SQLITE_ONLY
def test_a_step_stopped_midway_is_finished_by_the_next_open_binding_nobody_twice(
    ledger: Ledger, config_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _as_an_older_version(ledger, config_path, clock, monkeypatch)
    ledger.record(Identity(email=CAT), consent_value(ConsentStatus.GRANTED, clock.now, clock.now))
    # cat was recorded by this version: bound at creation, not again by the step.

    class Stopped(Exception):
        pass

    def stop(name: str) -> None:
        if name == "ledger.bindings.chunk":
            raise Stopped(name)

    with monkeypatch.context() as mp:
        mp.setattr(service, "failpoint", stop)
        with pytest.raises(Stopped):
            ledger.bind_identifiers(chunk_size=1)
    ((_, ann_id),) = _ids(ledger, ANN)
    assert _marker(ledger) == f"through:{ann_id}"
    assert len(_entries(ledger, "subject.identifiers_bound")) == 1
    assert ledger.bind_identifiers(chunk_size=1) == 1  # ben; cat is bound already
    assert _marker(ledger) == BINDINGS_DONE
    bound = [entry["subject"] for entry in _entries(ledger, "subject.identifiers_bound")]
    assert sorted(bound) == sorted(uid for uid, _ in _ids(ledger, ANN, BEN))
    assert _checked(ledger).ok


# -- the sync's path stays batched ------------------------------------------------------------------


@pytest.fixture
def statements(ledger: Ledger) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(ledger.engine, "before_cursor_execute", count)
    yield seen
    event.remove(ledger.engine, "before_cursor_execute", count)


@SQLITE_ONLY
def test_re_addressed_records_are_bound_without_a_query_per_record(
    ledger: Ledger, statements: list[str]
) -> None:
    def readdressed(count: int, batch: str) -> int:
        links = [CrmLink("scripted", "thing", f"{batch}-{n}") for n in range(count)]
        with ledger.engine.begin() as conn:
            ledger.link_in(
                conn, [Identity(email=f"{batch}-{n}@example.com", link=link) for n, link in enumerate(links)]
            )
        statements.clear()
        with ledger.engine.begin() as conn:
            ledger.link_in(
                conn, [Identity(email=f"{batch}-{n}@new.example", link=link) for n, link in enumerate(links)]
            )
        return len(statements)

    few, many = readdressed(3, "few"), readdressed(300, "many")
    assert few == many, (few, many)
    assert len(_entries(ledger, "subject.identifier_added")) == 303
    assert _checked(ledger).ok
