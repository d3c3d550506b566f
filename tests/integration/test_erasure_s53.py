"""An erasure reaches every CRM whatever the person's state read before it, checked against a
scripted CRM on SQLite and PostgreSQL:

* a person who came back after an erasure (a new sign-up, standing on the address's old entry)
  and asks to be erased again is suppressed from the second erasure: the consent they gave in
  between no longer outranks the entry's first date, and their CRM records are told;
* a restricted person's erasure is passed on with the object's configured action (delete), although
  the restriction decides their state before and after it (Art. 17(2), 19).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.sdk.connector import WriteAction
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock
from tests.integration.test_policy_s49_sync import MAPPING, Org, _grant, _pushed, _state

ADDRESS = "ann@example.com"


def _engine(ledger: Ledger, config_path: Path, org: Org, **erasure_actions: str) -> SyncEngine:
    mapping = parse_mapping(MAPPING, config_path.parent / "thing.yaml")
    options = SyncOptions(signpost_lag_seconds=0, erasure_actions=erasure_actions)
    return SyncEngine(ledger, org, [mapping], options)


def _writes(org: Org, record_id: str) -> list[tuple[WriteAction, dict[str, object]]]:
    return [(update.action, dict(update.fields)) for update in org.written if update.record_id == record_id]


def _erased_again_after_coming_back(
    ledger: Ledger, config_path: Path, clock: Clock, **erasure_actions: str
) -> Org:
    """The person is erased, signs up again (evidenced: a new person on the old entry), is read
    on a CRM record opted in, and asks to be erased again. The org, before the next run."""
    _grant(ledger, ADDRESS, clock.now - timedelta(days=30))
    assert not ledger.erase(ADDRESS, reason="Art. 17 request")["already_suppressed"]
    clock.advance(days=1)
    _grant(ledger, ADDRESS, clock.now)
    clock.advance(minutes=1)
    assert _state(ledger, ADDRESS) == ("granted", False)
    org = Org(clock)
    org.put("r1", ADDRESS)
    assert _engine(ledger, config_path, org, **erasure_actions).run().status == "succeeded"
    assert _pushed(org, "r1") == []  # opted in, as the CRM shows
    clock.advance(days=1)
    assert ledger.erase(ADDRESS, reason="asked again")["already_suppressed"]
    clock.advance(minutes=1)
    return org


def test_a_person_erased_again_after_coming_back_is_suppressed_and_every_crm_told(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _erased_again_after_coming_back(ledger, config_path, clock)
    _uid, state = ledger.decision_for(ADDRESS, "email_marketing", "email")
    assert state.suppressed
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}], "the second erasure never reached the CRM"


def test_a_person_erased_again_gets_the_configured_delete(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _erased_again_after_coming_back(ledger, config_path, clock, thing="delete")
    assert _engine(ledger, config_path, org, thing="delete").run().status == "succeeded"
    assert [action for action, _ in _writes(org, "r1")] == [WriteAction.DELETE]


def test_a_restricted_persons_erasure_gets_the_configured_delete(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = Org(clock)
    _grant(ledger, ADDRESS, clock.now - timedelta(days=30))
    org.put("r1", ADDRESS)
    assert _engine(ledger, config_path, org, thing="delete").run().status == "succeeded"
    clock.advance(minutes=1)
    ledger.restrict(ADDRESS, restricted=True, reason="accuracy contested")
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org, thing="delete").run().status == "succeeded"
    assert _writes(org, "r1") == [(WriteAction.UPDATE, {"optout": True})]  # restricted: not mailed
    clock.advance(minutes=1)
    ledger.erase(ADDRESS, reason="Art. 17 request")
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org, thing="delete").run().status == "succeeded"
    assert _writes(org, "r1")[1:] == [(WriteAction.DELETE, {})], "the erasure never reached the CRM"


def test_an_erasure_takes_every_address_the_person_holds(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """A CRM record kept its id and took a new address: the person holds both, and mail goes to
    the one they are known by now. Erased by either, both are kept out: a record showing the
    other address later is suppressed, and neither address is written to the ledger again."""
    from consentsync.ledger.schema import subject_identifiers
    from tests.integration.test_policy_s50_address import _readdress

    org = Org(clock)
    org.put("r1", "ada@oldjob.example")
    _grant(ledger, "ada@oldjob.example", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)
    _readdress(org, clock, "r1", "ada.private@home.example")
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    (uid,) = ledger.subject_uids_for_email("ada@oldjob.example")
    assert ledger.subject_uids_for_email("ada.private@home.example") == [uid]
    assert ledger.email_of(uid) == "ada.private@home.example"  # where she is now
    clock.advance(minutes=1)
    ledger.erase("ada@oldjob.example", reason="Art. 17 request")
    clock.advance(minutes=1)
    org.put("r2", "ada.private@home.example")  # another record shows her other address
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r2") == [{"optout": True}], "her other address was imported again, unsuppressed"
    with ledger.engine.connect() as conn:
        held = list(conn.execute(select(subject_identifiers.c.value)).scalars())
    assert not {"ada@oldjob.example", "ada.private@home.example"} & set(held)


def test_a_no_or_an_objection_recorded_by_ops_after_erasure_keeps_the_address_out(cli: Any) -> None:
    """`ledger record ... withdrawn` and `objection raise` for an erased address (an ESP's
    unsubscribe list imported, a complaint forwarded): the erasure already keeps the person out;
    the address is not written to the ledger again, nor a new person made to hold it."""
    from consentsync.app import open_ledger
    from consentsync.config import load_config
    from consentsync.ledger.schema import subject_identifiers
    from tests.conftest import proof, record_args

    cli.ok(*record_args("gone@example.com", "email_marketing", "granted", *proof()))
    cli.ok("erase", "--email", "gone@example.com", "--reason", "Art. 17 request", "--yes")
    cli.ok(*record_args("gone@example.com", "email_marketing", "withdrawn"))
    cli.ok(*record_args("gone@example.com", "email_marketing", "expired"))  # any status but a grant
    raised = cli.json("objection", "raise", "--email", "Gone@Example.com", "--purpose", "profiling")
    assert (raised["erased"], raised["id"], raised["status"]) == (True, None, "suppressed")
    assert cli.json("objection", "list", "--pending") == [], "an objection opened on the erased person"
    ledger = open_ledger(load_config(cli.config_path))
    try:
        with ledger.engine.connect() as conn:
            held = list(conn.execute(select(subject_identifiers.c.value)).scalars())
        assert "gone@example.com" not in held, "the erased address was written back"
        _uid, state = ledger.decision_for("gone@example.com", "email_marketing", "email")
        assert state.suppressed
    finally:
        ledger.engine.dispose()
