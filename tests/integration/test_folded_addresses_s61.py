"""Reviewer finding D2: the folded form of an address holding an emoji (``dora?@example.test``, as a
CRM keeping the BMP only shows ``dora🙂@example.test``) stands for the real address only where the
person holding it got it from such a CRM's record. ``a?b@example.test`` is a legal address of its
own: held because a capture, an import or a CRM keeping every character said so, it is another
person's mailbox, and a capture, lookup, export, restriction or erasure of the emoji address must
never reach them (before: it did, as the last lookup form, ``domain.email_forms``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import event, func, select, text

from consentsync.app import SCHEMA_REVISION, migration_state, open_ledger
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, normalise_email
from consentsync.ledger.engine import make_engine
from consentsync.ledger.identity import CrmLink, Identity, SubjectResolver
from consentsync.ledger.migrate import alembic_config, upgrade
from consentsync.ledger.schema import subject_identifiers, subjects, suppressions
from consentsync.ledger.service import Ledger, NotFound
from tests.integration.helpers import consent_value
from tests.test_folded_addresses import _holder, _link

DORA = normalise_email("Dora\U0001f642@Example.test")  # dora🙂@example.test
FOLDED = "dora?@example.test"  # a mailbox of its own, and how a Vtiger on utf8 shows DORA


def _capture(ledger: Ledger, email: str, status: ConsentStatus = ConsentStatus.WITHDRAWN) -> None:
    """The person's own word under the address they gave (a capture, ``ledger record``)."""
    now = ledger.clock()
    ledger.record(Identity(email=email), consent_value(status, now, now, evidence_ref="form:1"))


def _record(email: str, record_id: str, folds: str | None, connector: str = "vt") -> Identity:
    """A CRM record showing ``email``: of a CRM that folds (``folds="?"``: Vtiger on utf8) or
    keeps every character (None: HubSpot, Salesforce)."""
    return Identity(email=email, link=CrmLink(connector, "Contacts", record_id), folds_astral_to=folds)


def _mark(ledger: Ledger, email: str) -> str | None:
    with ledger.engine.connect() as conn:
        return conn.execute(
            select(subject_identifiers.c.folds_astral_to).where(subject_identifiers.c.value == email)
        ).scalar()


def _uid(ledger: Ledger, subject_id: int | None) -> str:
    with ledger.engine.connect() as conn:
        return str(conn.execute(select(subjects.c.uid).where(subjects.c.id == subject_id)).scalar_one())


def _people(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(subjects)).scalar_one())


def _erased(ledger: Ledger, subject_id: int | None) -> bool:
    with ledger.engine.connect() as conn:
        return (
            conn.execute(select(subjects.c.erased_at).where(subjects.c.id == subject_id)).scalar() is not None
        )


# -- a "?" from a source keeping every character is a "?" -------------------------------------


@pytest.mark.parametrize("source", ["capture", "crm keeping every character"])
def test_a_literal_question_mark_address_is_not_found_by_the_emoji_address(
    ledger: Ledger, source: str
) -> None:
    if source == "capture":
        _capture(ledger, FOLDED, ConsentStatus.GRANTED)
    else:
        _link(ledger, _record(FOLDED, "hs-1", None, connector="hubspot"))
    other = _holder(ledger, FOLDED)
    assert other is not None and _mark(ledger, FOLDED) is None

    # Looked up (search, subject show, the access export: ``subject_view``), decided on, restricted.
    assert ledger.subject_uids_for_email(DORA) == []
    with pytest.raises(NotFound):
        ledger.subject_view(DORA)
    uid, _state = ledger.decision_for(DORA, *_a_purpose_channel(ledger))
    assert uid is None, "the decision for the emoji address is another person's"
    # A capture of the emoji address is a person of its own, not the other's consent.
    _capture(ledger, DORA)
    dora = _holder(ledger, DORA)
    assert dora is not None and dora != other and _people(ledger) == 2
    assert ledger.subject_uids_for_email(DORA) == [_uid(ledger, dora)]
    assert ledger.subject_view(DORA)["subject"] == _uid(ledger, dora)
    # Her erasure reaches her only; the other's address is not suppressed with it.
    result = ledger.erase(DORA, reason="Art. 17 request")
    assert result["subjects"] == [_uid(ledger, dora)]
    assert not _erased(ledger, other) and _holder(ledger, FOLDED) == other
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(suppressions)).scalar_one() == 1
    with ledger.engine.begin() as conn:
        resolver = SubjectResolver(conn, ledger.erasure_key(), ledger.clock(), None)
        assert not resolver.is_erased_only(FOLDED)
    assert ledger.subject_view(FOLDED)["subject"] == _uid(ledger, other)


def test_an_erasure_of_the_emoji_address_nobody_holds_leaves_the_literal_holder(ledger: Ledger) -> None:
    _capture(ledger, FOLDED, ConsentStatus.GRANTED)
    other = _holder(ledger, FOLDED)
    result = ledger.erase(DORA, reason="Art. 17 request")
    assert result["subjects"] == [] and not result["subject_known"]
    assert not _erased(ledger, other) and _holder(ledger, FOLDED) == other


def test_the_emoji_address_restricted_leaves_the_literal_holder(ledger: Ledger) -> None:
    _capture(ledger, FOLDED, ConsentStatus.GRANTED)
    other = _holder(ledger, FOLDED)
    with pytest.raises(NotFound):
        ledger.restrict(DORA, restricted=True, reason="Art. 18 request")
    with ledger.engine.connect() as conn:
        assert conn.execute(select(subjects.c.restricted).where(subjects.c.id == other)).scalar() is False


# -- the folding CRM's case still holds ---------------------------------------------------------


def test_a_person_made_from_a_folding_crms_record_is_found_by_the_real_address(
    ledger: Ledger, config_path: Path
) -> None:
    (person,) = _link(ledger, _record(FOLDED, "12x1", "?"))
    assert _mark(ledger, FOLDED) == "?"
    assert ledger.subject_uids_for_email(DORA) == [_uid(ledger, person)]
    assert ledger.subject_view(DORA)["subject"] == _uid(ledger, person)
    _capture(ledger, DORA)  # her no, under her real address
    assert _people(ledger) == 1 and ledger.decision_for(DORA, *_a_purpose_channel(ledger))[0] == _uid(
        ledger, person
    )
    # The mark is the ledger's: a new process (a restart) reads it as this one did.
    reopened = open_ledger(load_config(config_path))
    try:
        assert reopened.subject_uids_for_email(DORA) == [_uid(ledger, person)]
    finally:
        reopened.engine.dispose()
    assert ledger.erase(DORA, reason="Art. 17 request")["subjects"] == [_uid(ledger, person)]


def test_a_record_re_addressed_in_a_folding_crm_marks_the_address_it_took(ledger: Ledger) -> None:
    (person,) = _link(ledger, _record("dora@example.test", "12x2", "?"))
    assert _link(ledger, _record(FOLDED, "12x2", "?")) == [person]  # the contact's address edited
    assert _holder(ledger, FOLDED) == person and _mark(ledger, FOLDED) == "?"
    assert ledger.subject_uids_for_email(DORA) == [_uid(ledger, person)]


def test_a_folding_record_meeting_a_literal_holder_does_not_make_their_address_folded(ledger: Ledger) -> None:
    _capture(ledger, FOLDED, ConsentStatus.GRANTED)  # a "?" first said as it is
    other = _holder(ledger, FOLDED)
    assert _link(ledger, _record(FOLDED, "12x3", "?")) == [other]  # nobody holds a real address
    assert _mark(ledger, FOLDED) is None and ledger.subject_uids_for_email(DORA) == []


def test_one_batch_naming_the_address_from_both_kinds_of_source_does_not_mark_it(ledger: Ledger) -> None:
    _link(ledger, _record(FOLDED, "12x4", "?"), _record(FOLDED, "hs-4", None, connector="hubspot"))
    assert _holder(ledger, FOLDED) is not None and _mark(ledger, FOLDED) is None
    assert ledger.subject_uids_for_email(DORA) == []


@pytest.mark.parametrize("source", ["capture", "crm keeping every character"])
def test_a_source_keeping_every_character_showing_the_folded_text_does_not_unmark_it(
    ledger: Ledger, source: str
) -> None:
    # Else anyone could cut the person from their real address (their no, their erasure) by one
    # form typed "dora?@".
    (person,) = _link(ledger, _record(FOLDED, "12x5", "?"))
    assert _mark(ledger, FOLDED) == "?"
    if source == "capture":
        _capture(ledger, FOLDED)
    else:
        assert _link(ledger, _record(FOLDED, "hs-5", None, connector="hubspot")) == [person]
    assert _mark(ledger, FOLDED) == "?" and len(ledger.subject_uids_for_email(DORA)) == 1


def test_plain_addresses_cost_no_statement_more(ledger: Ledger) -> None:
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, sql: str, *_args: object) -> None:
        statements.append(sql)

    event.listen(ledger.engine, "before_cursor_execute", seen)
    try:
        _link(ledger, *(_record(f"p{n}@example.test", f"12x{n}", "?") for n in range(20)))
        _link(ledger, *(_record(f"p{n}@example.test", f"hs{n}", None, "hubspot") for n in range(20)))
    finally:
        event.remove(ledger.engine, "before_cursor_execute", seen)
    assert not [sql for sql in statements if "folds_astral_to" in sql and "UPDATE" in sql.upper()]


# -- existing ledgers (migration 0020) ----------------------------------------------------------


def test_0020_marks_the_question_mark_addresses_of_people_known_through_a_crm_record(ledger_url: str) -> None:
    engine = make_engine(ledger_url)
    upgrade(engine, "0019")
    with engine.begin() as conn:
        for subject_id in (1, 2, 3):
            conn.execute(
                text(
                    "INSERT INTO subjects (id, uid, created_at, restricted)"
                    f" VALUES ({subject_id}, 'u{subject_id}', CURRENT_TIMESTAMP, false)"
                )
            )
        conn.execute(
            text(
                "INSERT INTO subject_identifiers (id, subject_id, kind, value) VALUES"
                " (1, 1, 'email', 'dora?@example.test'),"  # a contact of the folding CRM
                " (2, 2, 'email', 'a?b@example.test'),"  # a capture's literal "?": no CRM record
                " (3, 3, 'email', 'plain@example.test')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO crm_links (id, subject_id, connector, object_type, record_id, linked_at)"
                " VALUES (1, 1, 'vt', 'Contacts', '12x1', CURRENT_TIMESTAMP),"
                " (2, 3, 'vt', 'Contacts', '12x3', CURRENT_TIMESTAMP)"
            )
        )
    upgrade(engine)
    assert migration_state(engine) == SCHEMA_REVISION
    with engine.connect() as conn:
        marks = dict(conn.execute(text("SELECT id, folds_astral_to FROM subject_identifiers")).all())
    assert marks == {1: "?", 2: None, 3: None}
    command.downgrade(alembic_config(engine), "0019")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM subject_identifiers")).scalar_one() == 3
    upgrade(engine)
    assert migration_state(engine) == SCHEMA_REVISION
    engine.dispose()


def _a_purpose_channel(ledger: Ledger) -> tuple[str, str]:
    purpose = next(iter(ledger.purposes.values()))
    return purpose.key, purpose.channels[0]
