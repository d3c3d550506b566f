"""An erased address is never contacted again, whoever's record holds it (docs/policy.md,
"A record that carries another person's address"; Art. 17, the suppression list), checked on
SQLite and PostgreSQL against a scripted CRM: the rule is per address, so a record of person A
that holds erased person B's address stays suppressed even after A's own new consent lifts the
carried erasure for A (that consent is to A's address, which the record no longer holds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from consentsync.ledger.schema import quarantine
from consentsync.ledger.service import Ledger
from tests.conftest import Clock
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _pushed, _state
from tests.integration.test_policy_s50_address import _readdress, _two_people


def test_a_record_holding_an_erased_address_stays_suppressed_after_its_persons_new_consent(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    ledger.erase("b@example.com", reason="Art. 17 request")
    clock.advance(minutes=1)
    del org.records["r2"]
    _readdress(org, clock, "r1", "B@Example.com")  # B's erased address, written otherwise
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]
    # A consents anew: A is opted in again (A's own address), but r1 still holds B's address.
    clock.advance(minutes=1)
    _grant(ledger, "a@example.com", clock.now)
    assert _state(ledger, "a@example.com") == ("granted", False)
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]  # never told it may mail B's address
    # Once the CRM holds A's address again, A's consent reaches the record.
    clock.advance(minutes=1)
    _readdress(org, clock, "r1", "a@example.com")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}, {"optout": False}]


def test_a_merge_survivor_holding_an_erased_address_stays_suppressed(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """B's record is merged into A's, and the survivor kept B's (erased) address."""
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    ledger.erase("b@example.com", reason="Art. 17 request")
    clock.advance(minutes=1)
    org.merge("r2", "r1")
    _readdress(org, clock, "r1", "b@example.com")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]
    clock.advance(minutes=1)
    _grant(ledger, "a@example.com", clock.now)
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]


def test_a_record_whose_own_address_is_fine_is_pushed_as_its_person_decides(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The rule is the address's only: B's erasure changes nothing on A's own record."""
    org = _two_people(ledger, config_path, clock)
    ledger.erase("b@example.com", reason="Art. 17 request")
    clock.advance(minutes=1)
    org.records["r1"]["optout"] = True
    org.records["r1"]["modifiedon"] = clock.now
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)
    _grant(ledger, "a@example.com", clock.now)
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": False}]


def test_an_address_erased_after_another_persons_record_took_it_suppresses_that_record(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """A's record took B's address while B was not erased; B is erased afterwards. A's record
    does not change again, yet the next run must stop it being mailed."""
    org = _two_people(ledger, config_path, clock)
    del org.records["r2"]
    _readdress(org, clock, "r1", "b@example.com")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == []  # both opted in: nothing to carry
    clock.advance(minutes=1)
    ledger.erase("b@example.com", reason="Art. 17 request")
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]


# -- an address a mail header reads as several recipients -----------------------------------------


def test_a_new_crm_record_whose_address_is_a_list_is_quarantined_whole(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """'a@b.example,ceo' is two recipients to a mail header (the second completed by the SMTP
    server): nobody knows whose such a record is, and the ledger must not mail either."""
    org = Org(clock)
    org.put("r1", "x@evil.example,ceo")
    org.put("r2", "y@evil.example>,<boss@example.com")
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded"
    assert (report.counts.quarantined, report.counts.subjects_created) == (2, 0)
    assert ledger.subject_uids_for_email("x@evil.example,ceo") == []
    with ledger.engine.connect() as conn:
        reasons = conn.execute(select(quarantine.c.reason)).scalars().all()
    assert all("email" in reason and "evil" not in reason for reason in reasons)


def test_a_known_record_given_a_list_for_an_address_keeps_its_persons_no(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    org.records["r1"].update(email="a@example.com;ceo", optout=True, modifiedon=clock.now)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded"
    assert _state(ledger, "a@example.com") == ("withdrawn", True)
    assert ledger.subject_uids_for_email("a@example.com;ceo") == []
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(quarantine.c.record_id, quarantine.c.reason)).all()
    assert [row.record_id for row in rows] == ["r1"] and "ceo" not in rows[0].reason


def test_the_cli_refuses_a_list_for_an_address(cli: Any) -> None:
    result = cli(
        "ledger", "record", "--email", "a@b.example,ceo", "--purpose", "email_marketing",
        "--status", "granted", "--source", "web_form",
    )  # fmt: skip
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "one address local@domain.tld" in result.stderr


def test_an_address_an_older_version_took_in_is_still_found_to_be_erased(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """A ledger from before this rule may hold 'a@b.example,ceo' (read from a CRM then): ops can
    still find that person by it, so the erasure can be carried out."""
    from sqlalchemy import update

    from consentsync.domain import lookup_email
    from consentsync.ledger.schema import subject_identifiers
    from consentsync.subjects import search

    _grant(ledger, "legacy@b.example", clock.now)
    with ledger.engine.begin() as conn:
        conn.execute(
            update(subject_identifiers)
            .where(subject_identifiers.c.value == "legacy@b.example")
            .values(value="legacy@b.example,ceo")
        )
    found = search(ledger, "Legacy@B.example,CEO", by="email")
    assert len(found) == 1
    assert ledger.erase(lookup_email("legacy@b.example,ceo"), reason="Art. 17 request")["subject_known"]
