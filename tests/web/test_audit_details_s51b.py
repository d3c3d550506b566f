"""Blanked audit details are named unless their person was erased (session 51, round 2).

The free text of an entry (an objection decision's reason, a restriction's grounds, an erasure's
request reference) lives outside the chain, in ``audit_details``, so that erasure can remove it;
the application's role may therefore update that column. `audit verify` took any blanked details
for erased ones: whoever holds that role could remove the reason a reviewer gave for rejecting
someone's objection, and every check still said the log was whole. Details are only ever blanked
by an erasure, for the erased person's entries, in the transaction that marks them erased: blanked
for anyone else, or for no one, or deleted, they are named.
"""

from __future__ import annotations

import json

from sqlalchemy import func, select

from consentsync import audit, exit_codes
from consentsync.ledger.schema import audit_details, audit_entries
from consentsync.ledger.service import Ledger
from tests.conftest import Cli


def _decided(ledger: Ledger, email: str) -> int:
    """An objection to profiling, rejected with a reason: the seq of the decision's entry."""
    raised = ledger.raise_objection(email, "profiling")
    ledger.decide_objection(raised["id"], uphold=False, by="dpo", reason="overriding grounds: fraud")
    with ledger.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.max(audit_entries.c.seq)).where(audit_entries.c.action == "objection.decided")
            ).scalar_one()
        )


def _blank(ledger: Ledger, seq: int) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(audit_details.update().where(audit_details.c.seq == seq).values(content=None))


def _verify(ledger: Ledger) -> audit.VerifyResult:
    with ledger.engine.connect() as conn:
        return audit.verify(conn)


def test_details_blanked_for_a_person_not_erased_are_named_by_audit_verify(cli: Cli, ledger: Ledger) -> None:
    kept = _decided(ledger, "kept@example.com")
    _decided(ledger, "gone@example.com")
    ledger.erase("gone@example.com", reason="Art. 17 request 7")  # blanks gone's details: fine
    assert cli.json("audit", "verify")["ok"]
    _blank(ledger, kept)
    result = cli("audit", "verify", "--json")
    assert result.exit_code == exit_codes.AUDIT_BROKEN, result.output
    found = json.loads(result.stdout)
    assert (found["ok"], found["broken_seq"]) == (False, kept), found
    assert "not erased" in found["problem"]
    assert f"audit chain BROKEN at entry {kept}" in cli("audit", "verify").stdout


def test_details_about_no_person_blanked_are_named(ledger: Ledger) -> None:
    # An erasure of an address the ledger never held: its reason is about no person, so no
    # erasure can ever blank it.
    ledger.erase("stranger@example.com", reason="Art. 17 request 8")
    with ledger.engine.connect() as conn:
        seq = conn.execute(
            select(audit_details.c.seq).where(audit_details.c.subject_id.is_(None))
        ).scalar_one()
    assert _verify(ledger).ok
    _blank(ledger, seq)
    result = _verify(ledger)
    assert (result.ok, result.broken_seq) == (False, seq), result


def test_details_deleted_for_a_person_not_erased_are_named(ledger: Ledger) -> None:
    decided = _decided(ledger, "other@example.com")
    assert _verify(ledger).ok
    with ledger.engine.begin() as conn:  # the tables' owner can delete the row outright
        conn.execute(audit_details.delete().where(audit_details.c.seq == decided))
    result = _verify(ledger)
    assert (result.ok, result.broken_seq) == (False, decided), result
