"""Art. 18 through merges and address changes (docs/policy.md, "A restriction reaches the record
that holds the restricted person's data"), on SQLite and PostgreSQL against a scripted CRM: while
A's processing is restricted, a CRM record of another person B that now holds A's data (the
survivor of a merge of A's record, a record that took A's address) is not processed for
marketing; B is restricted as carried from A, the two stay apart, and lifting A's restriction
lifts the carried one (but never B's own)."""

from __future__ import annotations

from pathlib import Path

from consentsync.ledger.service import Ledger
from consentsync.subjects import search
from tests.conftest import Clock
from tests.integration.test_policy_s49_sync import _engine, _pushed
from tests.integration.test_policy_s50_address import _readdress, _two_people


def _restricted(ledger: Ledger, email: str) -> bool:
    (person,) = search(ledger, email, by="email")
    return bool(person["restricted"])


def test_a_merge_of_a_restricted_persons_record_restricts_the_survivor(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    ledger.restrict("b@example.com", restricted=True, reason="accuracy contested")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r2") == [{"optout": True}] and _pushed(org, "r1") == []
    clock.advance(minutes=1)
    org.merge("r2", "r1")  # the CRM merged B's record into A's: r1 now holds B's data
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]
    assert _restricted(ledger, "a@example.com") and _restricted(ledger, "b@example.com")
    assert len(search(ledger, "a@example.com", by="email")) == 1  # still two people
    assert ledger.subject_uids_for_email("a@example.com") != ledger.subject_uids_for_email("b@example.com")
    # B's restriction is lifted: so is the one carried from it, and A is mailed again.
    clock.advance(minutes=1)
    ledger.restrict("b@example.com", restricted=False, reason="accuracy verified")
    assert not _restricted(ledger, "a@example.com")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}, {"optout": False}]


def test_a_record_that_takes_a_restricted_persons_address_is_not_processed(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    ledger.restrict("b@example.com", restricted=True, reason="objection under review")
    clock.advance(minutes=1)
    del org.records["r2"]
    _readdress(org, clock, "r1", "B@example.com")  # A's record now mails B's address
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]
    assert _restricted(ledger, "a@example.com")


def test_a_restriction_placed_after_the_record_took_the_address_reaches_it(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The record is not read again: the restriction finds it by its snapshot, as an erasure does."""
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    del org.records["r2"]
    _readdress(org, clock, "r1", "b@example.com")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == []  # both opted in: nothing to carry
    clock.advance(minutes=1)
    ledger.restrict("b@example.com", restricted=True, reason="accuracy contested")
    assert _restricted(ledger, "a@example.com")
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}]


def test_a_persons_own_restriction_outlives_the_one_carried_to_them(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _two_people(ledger, config_path, clock)
    ledger.restrict("b@example.com", restricted=True, reason="accuracy contested")
    clock.advance(minutes=1)
    org.merge("r2", "r1")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _restricted(ledger, "a@example.com")
    # A asks for a restriction of their own: recorded as theirs, not refused as "already".
    ledger.restrict("a@example.com", restricted=True, reason="A's own request")
    ledger.restrict("b@example.com", restricted=False, reason="accuracy verified")
    assert _restricted(ledger, "a@example.com") and not _restricted(ledger, "b@example.com")


def test_lifting_one_restriction_leaves_the_one_another_restricted_persons_data_still_carries(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """B's record was merged into A's r1 and C's into A's r4, both B and C restricted: lifting
    B's leaves A restricted (C's data is still on r4), carried from C; lifting C's lifts it."""
    from datetime import timedelta

    from tests.integration.test_policy_s49_sync import _grant

    org = _two_people(ledger, config_path, clock)
    org.put("r3", "c@example.com")
    org.put("r4", "a@example.com")
    _grant(ledger, "c@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    ledger.restrict("b@example.com", restricted=True, reason="accuracy contested")
    ledger.restrict("c@example.com", restricted=True, reason="accuracy contested")
    clock.advance(minutes=1)
    org.merge("r2", "r1")
    org.merge("r3", "r4")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _restricted(ledger, "a@example.com")
    ledger.restrict("b@example.com", restricted=False, reason="accuracy verified")
    assert _restricted(ledger, "a@example.com")
    ledger.restrict("c@example.com", restricted=False, reason="accuracy verified")
    assert not _restricted(ledger, "a@example.com")


def test_lifting_a_persons_own_restriction_leaves_the_one_another_restricted_persons_data_carries(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """A was restricted already when B's address reached A's record (so no carry was recorded
    then): lifting A's own restriction leaves A restricted while B is, and says so."""
    org = _two_people(ledger, config_path, clock)
    clock.advance(minutes=1)
    ledger.restrict("a@example.com", restricted=True, reason="A contests accuracy")
    ledger.restrict("b@example.com", restricted=True, reason="B contests accuracy")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)
    del org.records["r2"]
    _readdress(org, clock, "r1", "b@example.com")  # A's record now holds B's address
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=1)
    lifted = ledger.restrict("a@example.com", restricted=False, reason="A's data verified")
    assert lifted["still_restricted_by"] == {
        lifted["subject"]: ledger.subject_uids_for_email("b@example.com")[0]
    }
    assert _restricted(ledger, "a@example.com") and _restricted(ledger, "b@example.com")
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}], "a restricted person's record was mailed again"
    # B's restriction is lifted: the one it carried to A goes with it.
    clock.advance(minutes=1)
    ledger.restrict("b@example.com", restricted=False, reason="B's data verified")
    assert not _restricted(ledger, "a@example.com")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _pushed(org, "r1") == [{"optout": True}, {"optout": False}]
