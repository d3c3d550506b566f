"""Inside the allowed clock skew, a grant counts from as early as it can have been given (its
observation) and a no as late as it says: where the order of a grant and a no is in doubt, the no
stands, whatever order they arrive in (black-box finding bb61 F3: a sender a minute ahead sent a
grant then a withdrawal; delivered the other way round, the grant was dated at its arrival, after
the withdrawal, and undid it)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger, RecordRequest
from tests.conftest import Clock


def _said(status: ConsentStatus, stated: datetime, observed: datetime) -> Evidence:
    return Evidence(
        "email_marketing",
        "email",
        status,
        LawfulBasis.CONSENT if status is ConsentStatus.GRANTED else None,
        stated,
        observed,
        "web_form",
        Origin.CAPTURE,
        notice_version="v1" if status is ConsentStatus.GRANTED else None,
        evidence_ref="form:1" if status is ConsentStatus.GRANTED else None,
    )


@pytest.mark.parametrize("grant_first", [True, False])
def test_a_senders_own_order_holds_whatever_order_its_statements_arrive_in(
    ledger: Ledger, clock: Clock, grant_first: bool
) -> None:
    now = clock()
    grant = _said(ConsentStatus.GRANTED, now + timedelta(seconds=60), now)  # the sender is ahead
    withdrawal = _said(ConsentStatus.WITHDRAWN, now + timedelta(seconds=120), now)
    first, second = (grant, withdrawal) if grant_first else (withdrawal, grant)
    person = Identity(email=f"ahead-{grant_first}@example.org")
    ledger.record_many([RecordRequest(person, first)])
    clock.advance(seconds=1)
    ledger.record_many([RecordRequest(person, _arrived(second, clock()))])
    _uid, state = ledger.decision_for(person.email or "", "email_marketing", "email")
    assert state.status is ConsentStatus.WITHDRAWN, state


def test_a_grant_stamped_ahead_does_not_outrank_a_no_given_after_it(ledger: Ledger, clock: Clock) -> None:
    # The reason grants count from their observation: a grant stamped 4 minutes ahead by a fast
    # clock, then the person's no a minute later by a right one.
    now = clock()
    person = Identity(email="fast@example.org")
    ledger.record_many([RecordRequest(person, _said(ConsentStatus.GRANTED, now + timedelta(minutes=4), now))])
    later = now + timedelta(minutes=1)
    clock.advance(minutes=1)
    ledger.record_many([RecordRequest(person, _said(ConsentStatus.WITHDRAWN, later, later))])
    _uid, state = ledger.decision_for(person.email or "", "email_marketing", "email")
    assert state.status is ConsentStatus.WITHDRAWN, state


def test_a_no_read_again_with_the_same_stated_time_is_one_no(ledger: Ledger, clock: Clock) -> None:
    now = clock()
    person = Identity(email="again@example.org")
    stated = now + timedelta(seconds=90)
    outcomes = []
    for observed in (now, now + timedelta(seconds=100)):  # read before its stated time, then after
        clock.now = observed
        no = _said(ConsentStatus.WITHDRAWN, stated, observed)
        outcomes.append(ledger.record_many([RecordRequest(person, no)]))
    assert [(o.recorded, o.duplicates) for o in outcomes] == [(1, 0), (0, 1)]


def _arrived(evidence: Evidence, at: datetime) -> Evidence:
    from dataclasses import replace

    return replace(evidence, observed_at=at)


def test_a_grant_read_again_after_its_stated_time_is_the_same_grant(ledger: Ledger, clock: Clock) -> None:
    # Counted from its observation at first, a grant stated ahead was recorded again at its
    # stated time when read after it (a re-sync, a retry), and undid the no given in between.
    now = clock()
    person = Identity(email="reread@example.org")
    grant = _said(ConsentStatus.GRANTED, now + timedelta(minutes=4), now)
    ledger.record_many([RecordRequest(person, grant)])
    clock.advance(minutes=1)
    ledger.record_many([RecordRequest(person, _said(ConsentStatus.WITHDRAWN, clock(), clock()))])
    clock.advance(minutes=4)
    again = ledger.record_many([RecordRequest(person, _arrived(grant, clock()))])
    assert (again.recorded, again.duplicates) == (0, 1)
    _uid, state = ledger.decision_for(person.email or "", "email_marketing", "email")
    assert state.status is ConsentStatus.WITHDRAWN, state
