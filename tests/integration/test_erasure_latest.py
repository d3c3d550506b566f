"""Every "newer than the erasure" is weighed against the address's latest erasure (review report),
on SQLite and PostgreSQL.

Erasing an address erased before keeps its suppression entry, whose date stays the first
erasure's. A person erased (T1) who came back through a trusted sign-up (T2) and was erased again
(T3) must be lifted only by a consent newer than T3; the ledger compared with T1:

* the decision (``decision_for``) and the person's states (``_contexts``, as the CRM sync and
  ``ledger show`` read them) of someone whose trusted grant dated between T2 and T3 reached the
  ledger late were granted;
* a CRM merge of the erased person's record into another carried the erasure at T1, so the
  survivor's person's consent dated between T2 and T3 lifted it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from consentsync.domain import ConsentStatus, iso
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger, RecordRequest
from tests.conftest import Clock
from tests.integration.helpers import consent_value
from tests.integration.test_policy_s49_sync import _grant, _state
from tests.integration.test_policy_s50_address import _engine, _pushed, _two_people

ADDRESS = "ann@example.com"


def _erased_came_back_erased_again(ledger: Ledger, clock: Clock, address: str) -> tuple[datetime, datetime]:
    """``address`` (granted before) is erased, comes back through a trusted sign-up and is erased
    again: when it came back and when it was erased the second time."""
    clock.advance(minutes=1)
    assert not ledger.erase(address, reason="Art. 17 request")["already_suppressed"]
    clock.advance(days=1)
    came_back = clock.now
    _grant(ledger, address, came_back)
    assert _state(ledger, address) == ("granted", False)
    clock.advance(days=1)
    second = clock.now
    assert ledger.erase(address, reason="asked again")["already_suppressed"]
    clock.advance(days=1)
    return came_back, second


def _shown(ledger: Ledger, address: str) -> tuple[str, bool, str]:
    """The person's email-marketing state as ``ledger show`` recomputes it (``_contexts``)."""
    view = ledger.subject_view(address)
    state = next(s for s in view["purposes"] if (s["purpose"], s["channel"]) == ("email_marketing", "email"))
    return state["status"], state["suppressed"], state["rule"]


def test_an_address_erased_twice_that_nobody_holds_is_suppressed_since_the_second_erasure(
    ledger: Ledger, clock: Clock
) -> None:
    _grant(ledger, ADDRESS, clock.now - timedelta(days=30))
    _came_back, second = _erased_came_back_erased_again(ledger, clock, ADDRESS)
    uid, state = ledger.decision_for(ADDRESS, "email_marketing", "email")
    assert uid is None and state.suppressed and state.rule == "erasure_suppression"
    assert iso(second) in state.detail, state.detail


def test_a_grant_dated_between_the_comeback_and_the_second_erasure_does_not_lift_it(
    ledger: Ledger, clock: Clock
) -> None:
    _grant(ledger, ADDRESS, clock.now - timedelta(days=30))
    came_back, second = _erased_came_back_erased_again(ledger, clock, ADDRESS)
    # A trusted grant dated between the two, delivered late, past the capture API's check (a
    # path that records without it, as an older version's `ledger record` did; both refuse it
    # since session 57): a person with the address again, still suppressed.
    with ledger.engine.begin() as conn:
        ledger.record_in(
            conn,
            [
                RecordRequest(
                    Identity(email=ADDRESS),
                    consent_value(
                        ConsentStatus.GRANTED,
                        came_back + timedelta(hours=12),
                        ledger.clock(),
                        notice_version="privacy-v3",
                    ),
                )
            ],
        )
    uid, state = ledger.decision_for(ADDRESS, "email_marketing", "email")
    assert uid is not None
    assert (state.suppressed, state.rule) == (True, "erasure_suppression"), state
    assert iso(second) in state.detail, state.detail
    assert _shown(ledger, ADDRESS) == ("granted", True, "erasure_suppression")
    # A grant dated after the second erasure lifts it.
    _grant(ledger, ADDRESS, second + timedelta(minutes=1))
    assert _state(ledger, ADDRESS) == ("granted", False)
    assert _shown(ledger, ADDRESS)[1] is False


def test_a_merge_carries_the_latest_erasure_of_the_erased_persons_address(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """A (record r1) is erased, comes back, is erased again; A's record is then merged into B's
    (r2). B's consent dated between A's comeback and A's second erasure does not lift it."""
    org = _two_people(ledger, config_path, clock)
    came_back, second = _erased_came_back_erased_again(ledger, clock, "a@example.com")
    _grant(ledger, "b@example.com", came_back + timedelta(hours=12))  # delivered late
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=5)
    org.merge("r1", "r2")
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    assert _state(ledger, "b@example.com") == ("withdrawn", True)
    assert _pushed(org, "r2") == [{"optout": True}]
    # B's own new consent, newer than the second erasure, lifts it.
    clock.advance(minutes=1)
    _grant(ledger, "b@example.com", clock.now)
    assert _state(ledger, "b@example.com") == ("granted", False)
    assert second < clock.now
