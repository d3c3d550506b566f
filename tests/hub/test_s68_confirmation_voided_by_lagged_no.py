"""A double opt-in link asked for before a withdrawal made in a CRM whose clock runs behind ours
(session 68 review of 989a4d8): the no is stamped by the CRM's clock, before the sign-up, and read
with that clock's lag, so the ledger ranks it after the sign-up (withdrawn). The link's guard
judged the no by its stamp alone: following the old link recorded a trusted grant that reversed
the withdrawal. It reads the no as the reconciler does (``reconcile.no_counts_at``) now: the link
is refused. A lagged no that even with its lag came before the sign-up leaves the link working."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.hub.links import LinkRefused
from consentsync.ledger.identity import Identity
from tests.hub.conftest import HubWorld
from tests.hub.test_confirmation_voided import EMAIL, _decision, _signed_up, _statuses

CRM_SOURCE = "crm:person"


def _crm_withdrawal(world: HubWorld, stamped: str, lag: timedelta) -> None:
    """A withdrawal as the sync records one read from a CRM whose clock runs ``lag`` behind."""
    world.ledger.record(
        Identity(email=EMAIL),
        Evidence(
            purpose="email_marketing",
            channel="email",
            status=ConsentStatus.WITHDRAWN,
            basis=LawfulBasis.CONSENT,
            event_time=datetime.fromisoformat(stamped),
            observed_at=world.clock(),
            source=CRM_SOURCE,
            origin=Origin.CRM,
            clock_lag=lag,
        ),
    )


def test_a_withdrawal_stamped_early_by_a_clock_behind_voids_the_link(world: HubWorld) -> None:
    token = _signed_up(world)  # asked for at 11:30Z; the clock reads 12:00Z
    world.clock.advance(minutes=5)
    # Made at our 11:31Z in a CRM two minutes behind: stamped 11:29Z.
    _crm_withdrawal(world, "2026-06-01T11:29:00+00:00", timedelta(minutes=2))
    assert _decision(world)["status"] == "withdrawn"
    world.clock.advance(minutes=5)
    with pytest.raises(LinkRefused, match="you said no"):
        world.hub.confirm(token)
    decided = _decision(world)
    assert (decided["contact"], decided["status"]) == (False, "withdrawn")
    assert _statuses(world) == [("requested", "web_form"), ("withdrawn", CRM_SOURCE)]


def test_a_lagged_withdrawal_that_came_before_the_sign_up_leaves_the_link_working(world: HubWorld) -> None:
    token = _signed_up(world)
    world.clock.advance(minutes=5)
    # Stamped 11:20Z by a clock at most a minute behind: made by 11:21Z, before the 11:30Z sign-up.
    _crm_withdrawal(world, "2026-06-01T11:20:00+00:00", timedelta(minutes=1))
    world.clock.advance(minutes=5)
    assert world.hub.confirm(token)["already"] is False
    assert _decision(world)["contact"] is True
