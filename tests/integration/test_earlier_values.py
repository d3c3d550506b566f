"""A live record's earlier values (``CrmRecord.earlier_values``): what it held since the last
read and no longer shows, where the value is not the record's own (HubSpot keys subscription
statuses by address, and a user changing a contact's address hides the old one's). A no among
them is the person's: it reaches the ledger, and the record is then told, like any other record
of the person. Against a scripted CRM, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from consentsync.sdk import CrmRecord, Cursor, RecordUpdate, WriteResult
from tests.conftest import Clock
from tests.integration.helpers import consent_value
from tests.integration.test_policy_s49_sync import Org, _engine, _grant, _pushed, _state

OLD, NEW = "old.address@example.com", "new.address@example.com"


class ReAddressedOrg(Org):
    """The scripted org whose records may carry earlier values for one read."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.earlier: dict[str, dict[str, object]] = {}
        self.given_at: dict[str, dict[str, datetime]] = {}

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        earlier, self.earlier = self.earlier, {}
        given_at, self.given_at = self.given_at, {}
        for record in super().read_changes(object_type, fields, since, until):
            values = earlier.get(record.record_id)
            times = given_at.get(record.record_id)
            yield replace(record, earlier_values=values, earlier_given_at=times) if values else record


def _run(ledger: Ledger, config_path: Path, org: Org, clock: Clock) -> None:
    clock.advance(minutes=1)
    report = _engine(ledger, config_path, org).run()
    assert report.status == "succeeded", report.error


def _readdressed(ledger: Ledger, config_path: Path, clock: Clock, earlier_optout: bool) -> ReAddressedOrg:
    """The person's record read and linked, opted in; then a CRM user changes its address: the
    record shows NEW's status (nothing said), and what OLD showed (``earlier_optout``) only
    among its earlier values, on the next read."""
    org = ReAddressedOrg(clock)
    org.put("r1", OLD)
    _grant(ledger, OLD, clock.now - timedelta(days=30))
    _run(ledger, config_path, org, clock)
    org.records["r1"].update(email=NEW, modifiedon=clock())
    org.earlier["r1"] = {"optout": earlier_optout}
    _run(ledger, config_path, org, clock)
    return org


def test_a_no_among_a_records_earlier_values_reaches_the_ledger_and_the_record(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _readdressed(ledger, config_path, clock, earlier_optout=True)
    assert _state(ledger, OLD) == ("withdrawn", True), "the no given under the old address was lost"
    _run(ledger, config_path, org, clock)
    assert _pushed(org, "r1") == [{"optout": True}], "the record under its new address was never told"


def test_earlier_values_saying_nothing_new_change_nothing(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _readdressed(ledger, config_path, clock, earlier_optout=False)  # a yes: not taken
    _run(ledger, config_path, org, clock)
    assert _state(ledger, OLD) == ("granted", False)
    assert _pushed(org, "r1") == []


def test_an_earlier_no_is_dated_by_when_it_was_given_and_never_undoes_a_later_yes(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The person said no as OLD (read: the ledger took it), then opted in again on the web form
    (trusted, newer); a CRM user then changes the address. The old no, read again among the
    earlier values, is the one already taken, given before the yes: nothing changes, and the
    record under its new address is not told a no (HubSpot would unsubscribe it for good)."""
    org = ReAddressedOrg(clock)
    org.put("r1", OLD)
    _grant(ledger, OLD, clock.now - timedelta(days=30))
    _run(ledger, config_path, org, clock)
    said_no = clock()
    org.records["r1"].update(optout=True, modifiedon=said_no)
    _run(ledger, config_path, org, clock)
    assert _state(ledger, OLD) == ("withdrawn", True)
    clock.advance(minutes=5)
    _grant(ledger, OLD, clock.now)
    _run(ledger, config_path, org, clock)
    assert _state(ledger, OLD) == ("granted", False)
    pushed_before = list(_pushed(org, "r1"))
    org.records["r1"].update(email=NEW, modifiedon=clock())
    org.earlier["r1"] = {"optout": True}
    org.given_at["r1"] = {"optout": said_no}
    _run(ledger, config_path, org, clock)
    _run(ledger, config_path, org, clock)
    assert _state(ledger, OLD) == ("granted", False), "an old no re-dated now undid the person's later yes"
    assert _pushed(org, "r1") == pushed_before, "the new address was told a no the person took back"


def test_a_no_given_again_after_the_last_read_is_taken_though_the_record_showed_one_then(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The record showed a no when last read; the person then said yes elsewhere (the CRM refused
    the push: HubSpot never resubscribes), and later no again under the old address; a CRM user
    changes the address before the next read. The old address's status reads as it did, but the
    no was given after the snapshot was taken: it is new, and the later word."""
    org = ReAddressedOrg(clock)
    org.put("r1", OLD, optout=True)
    _run(ledger, config_path, org, clock)
    assert _state(ledger, OLD) == ("withdrawn", True)
    clock.advance(minutes=5)
    org.refuse_writes = True
    _grant(ledger, OLD, clock.now)
    _run(ledger, config_path, org, clock)
    assert _state(ledger, OLD) == ("granted", False)
    clock.advance(minutes=5)
    said_no_again = clock()
    org.records["r1"].update(email=NEW, optout=False, modifiedon=clock())
    org.earlier["r1"] = {"optout": True}
    org.given_at["r1"] = {"optout": said_no_again}
    _run(ledger, config_path, org, clock)
    assert _state(ledger, OLD) == ("withdrawn", True), "the no given again after the last read was lost"


class AppliedButUnanswered(ReAddressedOrg):
    """Writes are applied, but every answer is lost (a gateway timeout, a crash before the
    settle): the engine reads its own write back before it knows it was made."""

    def write(self, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        super().write(updates)
        return [
            WriteResult(u.record_id, False, "GATEWAY_TIMEOUT", "no answer in time", False) for u in updates
        ]


@pytest.mark.parametrize(
    "earlier",
    [{"another_subscription": "UNSUBSCRIBED"}, {"optout": True}],
    ids=["earlier-values-of-another-field", "earlier-value-our-own-write"],
)
def test_our_own_write_read_back_with_earlier_values_is_not_the_persons_no(
    ledger: Ledger, config_path: Path, clock: Clock, earlier: dict[str, object]
) -> None:
    org = AppliedButUnanswered(clock)
    org.put("r1", OLD)
    _grant(ledger, OLD, clock.now - timedelta(days=30))
    _run(ledger, config_path, org, clock)
    # The person withdraws on the web site: the opt-out is pushed, applied, its answer lost.
    ledger.record(Identity(email=OLD), consent_value(ConsentStatus.WITHDRAWN, clock.now, ledger.clock()))
    _run(ledger, config_path, org, clock)
    assert org.records["r1"]["optout"] is True
    # Then they opt in again on the web form (trusted, newer than our write).
    clock.advance(minutes=5)
    _grant(ledger, OLD, clock.now)
    # The record is read again with earlier values: its current opt-out is our write, not theirs.
    org.earlier["r1"] = earlier
    org.refuse_writes = True
    _run(ledger, config_path, org, clock)
    assert _state(ledger, OLD) == ("granted", False), "our own write came back as the person's no"
