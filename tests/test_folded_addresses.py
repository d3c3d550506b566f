"""A CRM that keeps the Basic Multilingual Plane only (a stock Vtiger install: MySQL's 3-byte
``utf8``) shows ``dora🙂@example.test`` as ``dora?@example.test``. The ledger takes such a folded
address for the person holding the real one (black-box finding F1: the person's withdrawal and
erasure, recorded under her real address, never reached her contact), and the real address for
the person made from the folded one; two people whose addresses fold alike are never pooled on a
guess (F2: the CRM itself cannot tell them apart, docs/connectors/vtiger.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from consentsync_vtiger.connector import VtigerConnector
from consentsync_vtiger.sandbox.server import VtigerSandbox
from sqlalchemy import event, func, select

from consentsync.domain import ConsentStatus, email_forms, fold_astral, normalise_email
from consentsync.ledger.identity import CrmLink, Identity
from consentsync.ledger.schema import crm_links, subject_identifiers, subjects
from consentsync.ledger.service import Ledger
from consentsync.sdk import RecordUpdate
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import consent_value, shipped_engine
from tests.integration.test_ledger_query_plans import _capture, _whole_table_reads

DORA = normalise_email("Dora\U0001f642@Example.test")  # dora🙂@example.test
DORA_FOLDED = "dora?@example.test"  # as the stock Vtiger install keeps it
ANNA_GRIN, ANNA_PARTY = "anna\U0001f600@example.test", "anna\U0001f389@example.test"


# -- the fold -----------------------------------------------------------------------------------


def test_the_fold_puts_the_character_in_place_of_each_one_beyond_the_bmp() -> None:
    assert fold_astral(DORA) == DORA_FOLDED
    assert fold_astral("a\U0001f600\U0001f389b\U00020000") == "a??b?"
    assert fold_astral("x\U0001f600", to="#") == "x#"
    for kept in ("plain@example.test", "jürgen.中@exämple.test", ""):
        assert fold_astral(kept) is kept  # ASCII and BMP text: the same object, nothing built


def test_an_address_beyond_the_bmp_is_also_looked_up_folded_last_and_no_other_is() -> None:
    forms = email_forms(DORA)
    assert forms[0] == DORA and forms[-1] == DORA_FOLDED and forms.count(DORA_FOLDED) == 1
    assert email_forms("plain@example.test") == ("plain@example.test",)
    assert all("?" not in form for form in email_forms("jürgen.中@exämple.test"))
    assert email_forms(DORA_FOLDED) == (DORA_FOLDED,)


def test_the_vtiger_connector_says_that_a_utf8_install_folds() -> None:
    settings = {"url": "https://crm.example.test", "username": "u", "access_key": "k"}
    stock = VtigerConnector("vt", settings)
    assert stock.folds_astral_to == "?"
    update = RecordUpdate("Contacts", "12x1", {"lastname": "Dora \U0001f642", "emailoptout": "1"})
    assert stock.as_read_back(update) == {"lastname": "Dora ?", "emailoptout": "1"}
    wide = VtigerConnector("vt", {**settings, "database_charset": "utf8mb4"})
    assert wide.folds_astral_to is None
    assert wide.as_read_back(update) == dict(update.fields)


# -- the resolver -------------------------------------------------------------------------------


def _withdraw(ledger: Ledger, email: str) -> None:
    """The person's own no, recorded under the address they gave (a capture, ``ledger record``)."""
    now = ledger.clock()
    ledger.record(Identity(email=email), consent_value(ConsentStatus.WITHDRAWN, now, now))


def _crm_record(email: str, record_id: str = "12x1001", folds: str | None = "?") -> Identity:
    return Identity(email=email, link=CrmLink("vt", "Contacts", record_id), folds_astral_to=folds)


def _link(ledger: Ledger, *identities: Identity) -> list[int]:
    with ledger.engine.begin() as conn:
        subject_ids, _created = ledger.link_in(conn, list(identities))
    return subject_ids


def _holder(ledger: Ledger, email: str) -> int | None:
    with ledger.engine.connect() as conn:
        return conn.execute(
            select(subject_identifiers.c.subject_id).where(subject_identifiers.c.value == email)
        ).scalar()


def _people(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(subjects)).scalar_one())


def test_a_folded_address_from_a_crm_record_is_the_person_holding_the_real_one(ledger: Ledger) -> None:
    _withdraw(ledger, DORA)
    person = _holder(ledger, DORA)
    assert _link(ledger, _crm_record(DORA_FOLDED)) == [person]
    assert _people(ledger) == 1, "the contact became a person of its own"
    # The folded text is not stored for her: another person's address may fold to it too.
    assert _holder(ledger, DORA_FOLDED) is None
    # The record is hers by its id from now on; a second record folded alike finds her too.
    assert _link(ledger, _crm_record(DORA_FOLDED), _crm_record(DORA_FOLDED, "10x7")) == [person, person]


def test_the_real_address_is_looked_up_before_the_folded_text_itself(ledger: Ledger) -> None:
    # Someone holds the folded text as it is (a CRM that keeps every character showed a "?"):
    # a record from a folding CRM is still the person with the real address.
    _withdraw(ledger, DORA)
    _withdraw(ledger, DORA_FOLDED)
    assert _people(ledger) == 2
    assert _link(ledger, _crm_record(DORA_FOLDED)) == [_holder(ledger, DORA)]
    # A CRM that keeps every character means its "?": the person holding that text.
    assert _link(ledger, _crm_record(DORA_FOLDED, "003x", folds=None)) == [_holder(ledger, DORA_FOLDED)]


def test_a_folded_address_nobody_holds_unfolded_makes_a_person_under_it(ledger: Ledger) -> None:
    _withdraw(ledger, "dora@example.test")  # folds to nothing: not a candidate
    (person,) = _link(ledger, _crm_record(DORA_FOLDED))
    assert _holder(ledger, DORA_FOLDED) == person and _people(ledger) == 2


def test_a_folded_address_two_people_could_have_pools_neither_of_them(ledger: Ledger) -> None:
    _withdraw(ledger, ANNA_GRIN)
    _withdraw(ledger, ANNA_PARTY)
    grin, party = _holder(ledger, ANNA_GRIN), _holder(ledger, ANNA_PARTY)
    with structlog.testing.capture_logs() as logged:
        (person,) = _link(ledger, _crm_record("anna?@example.test", "12x2002"))
    assert person not in (grin, party), "the record was put on one of two people by a guess"
    assert _holder(ledger, "anna?@example.test") == person and _people(ledger) == 3
    (warning,) = [entry for entry in logged if entry["event"] == "identity.folded_address_ambiguous"]
    assert warning["log_level"] == "warning" and warning["record"] == "12x2002"
    assert "anna" not in repr(warning), "the log names an address"


def test_the_real_address_is_the_person_made_from_its_folded_form(ledger: Ledger) -> None:
    (person,) = _link(ledger, _crm_record(DORA_FOLDED))  # the contact first
    _withdraw(ledger, DORA)  # then her no, under her real address
    assert _people(ledger) == 1, "her no made a second person, whom her contact never hears of"
    with ledger.engine.connect() as conn:
        uid = conn.execute(select(subjects.c.uid).where(subjects.c.id == person)).scalar_one()
    assert ledger.erase(DORA, reason="Art. 17 request")["subjects"] == [uid]


def test_the_folded_lookup_binds_its_values_and_searches_the_index(ledger: Ledger) -> None:
    for n in range(30):
        _withdraw(ledger, f"dor{n}\U0001f642@example.test")
    _withdraw(ledger, "a_b%\U0001f642@example.test")  # LIKE's wildcards, escaped
    _withdraw(ledger, DORA)
    statements = _capture(ledger)
    try:
        found = _link(ledger, _crm_record(DORA_FOLDED), _crm_record("a_b%?@example.test", "12x2"))
    finally:
        event.remove(ledger.engine, "before_cursor_execute", statements.append_statement)
    assert found == [_holder(ledger, DORA), _holder(ledger, "a_b%\U0001f642@example.test")]
    lookups = [sql for sql, _ in statements if "LIKE" in sql.upper()]
    assert lookups and not [sql for sql in lookups if "dora" in sql or "a_b" in sql], "values in the SQL"
    assert _whole_table_reads(ledger, statements) == []
    # Searched by the address's text before the "?", not through every address held.
    assert all("value" in condition for condition in _index_conditions(ledger, lookups[0], statements))


def _index_conditions(ledger: Ledger, sql: str, statements: list[tuple[str, Any]]) -> list[str]:
    """What of ``subject_identifiers``'s index the statement ``sql`` searches by, on the ledger's
    database (sequential scans priced out on PostgreSQL, as test_ledger_query_plans does)."""
    params = next(params for text, params in statements if text == sql)
    raw = ledger.engine.raw_connection()
    try:
        if ledger.engine.dialect.name == "sqlite":
            details = [row[3] for row in raw.cursor().execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            return [d.split("(", 1)[1] for d in details if "subject_identifiers" in d and "(" in d] or [
                "none"
            ]
        conn = raw.driver_connection
        assert conn is not None
        with conn.transaction(force_rollback=True), conn.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN {sql}", params)
            lines = [row[0] for row in cursor.fetchall()]
        return [line.split("Index Cond:", 1)[1] for line in lines if "Index Cond:" in line] or ["none"]
    finally:
        raw.close()


# -- end to end, through the Vtiger sandbox ------------------------------------------------------


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    with VtigerSandbox() as server:
        yield server


def _run(ledger: Ledger, config_path: Path, sandbox: VtigerSandbox, **how: Any) -> None:
    options = SyncOptions(batch_size=40, signpost_lag_seconds=0, erasure_actions={"Contacts": "anonymise"})
    engine: SyncEngine = shipped_engine(
        ledger, config_path, sandbox, "vt", "vtiger", ["contacts.yaml"], {"max_attempts": 4}, options
    )
    report = engine.run(**how)
    assert report.status == "succeeded", report.error
    time.sleep(1.1)  # whole-second stamps: the next change lands after what this run read


def _erased_by_the_real_address(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox, contact: str
) -> None:
    ledger.erase(DORA, reason="Art. 17 request")
    _run(ledger, config_path, sandbox)
    left = sandbox.crm.get(contact)
    assert left is not None
    assert (left["lastname"], left["email"]) == ("Erased", ""), "the erasure did not reach her contact"


@SQLITE_ONLY
def test_a_contact_read_first_takes_the_no_and_the_erasure_given_under_the_real_address(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    contact = sandbox.crm.create("Contacts", lastname="Dora", email=DORA, emailoptout="0")
    control = sandbox.crm.create("Contacts", lastname="Emil", email="emil@example.test", emailoptout="0")
    assert sandbox.crm.get(contact)["email"] == DORA_FOLDED  # the stock install's 3-byte utf8
    _run(ledger, config_path, sandbox, full=True)
    _withdraw(ledger, DORA)
    _withdraw(ledger, "emil@example.test")
    _run(ledger, config_path, sandbox)
    assert _people(ledger) == 2
    assert (sandbox.crm.get(contact)["emailoptout"], sandbox.crm.get(control)["emailoptout"]) == ("1", "1")
    _erased_by_the_real_address(ledger, config_path, sandbox, contact)


@SQLITE_ONLY
def test_a_no_given_first_under_the_real_address_reaches_the_contact_read_after(
    ledger: Ledger, config_path: Path, sandbox: VtigerSandbox
) -> None:
    _run(ledger, config_path, sandbox, full=True)  # the ledger's clock becomes the real one
    _withdraw(ledger, DORA)
    contact = sandbox.crm.create("Contacts", lastname="Dora", email=DORA, emailoptout="0")
    _run(ledger, config_path, sandbox)
    assert _people(ledger) == 1, "the contact became a person of its own"
    with ledger.engine.connect() as conn:
        linked = conn.execute(select(crm_links.c.subject_id).where(crm_links.c.record_id == contact)).scalar()
    assert linked == _holder(ledger, DORA)
    assert sandbox.crm.get(contact)["emailoptout"] == "1", "her no did not reach her contact"
    _erased_by_the_real_address(ledger, config_path, sandbox, contact)


def test_erased_by_the_real_address_a_new_record_showing_the_folded_one_stays_suppressed(
    ledger: Ledger,
) -> None:
    # Her contact made her under the folded text; she is erased under her real address. A new
    # record of a folding CRM showing the folded text (a lead made later) must not import her
    # again, unsuppressed: the folded text gets a suppression entry of its own.
    _link(ledger, _crm_record(DORA_FOLDED))
    _withdraw(ledger, DORA)
    ledger.erase(DORA, reason="Art. 17 request")
    (again,) = _link(ledger, _crm_record(DORA_FOLDED, "10x9", folds=None))
    with ledger.engine.connect() as conn:
        erased = conn.execute(select(subjects.c.suppression_id).where(subjects.c.id == again)).scalar()
    assert erased is not None, "a new record showing the folded address is a person not suppressed"


def test_erased_under_the_real_address_only_a_new_record_showing_it_folded_stays_suppressed(
    ledger: Ledger,
) -> None:
    # The person was only ever known by her real address; erased, nobody holds it, so a new
    # record of a folding CRM showing it folded finds no one to be: it must be suppressed, not
    # a new person the CRM may mail.
    now = ledger.clock()
    ledger.record(Identity(email=DORA), consent_value(ConsentStatus.GRANTED, now, now, evidence_ref="form:1"))
    ledger.erase(DORA, reason="Art. 17 request")
    (again,) = _link(ledger, _crm_record(DORA_FOLDED, "12x99"))
    with ledger.engine.connect() as conn:
        erased = conn.execute(select(subjects.c.suppression_id).where(subjects.c.id == again)).scalar()
    assert erased is not None, "the erased person came back under the folded address, unsuppressed"
