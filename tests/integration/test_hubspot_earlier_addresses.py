"""HubSpot keys subscription statuses by address (legacy docs "Update email subscription status":
"The subscription status is tied to the email address, and not a specific contact record"). A
person says no as a@, a HubSpot user changes the contact's address to b@ before the next sync.
Through the real connector and sync engine against the sandbox over HTTPS: the ledger takes the
no given as a@ (the connector hands it over as an earlier value) and the contact, under b@, is
told; a yes the person gave under b@ after the no is their latest word for that subscription
and nothing is taken for it."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from consentsync_hubspot.sandbox.harness import MARKETING, HubSpotHarness

from consentsync.sdk.harness import open_sync_engine, write_sync_config

A, B = "a.person@example.test", "b.person@example.test"
Z2 = "z.elsewhere@example.test"


def _marketing(engine: Any, email: str) -> dict[str, Any]:
    view = engine.ledger.subject_view(email)
    return next(s for s in view["purposes"] if (s["purpose"], s["channel"]) == ("email_marketing", "email"))


def _run(config: Path) -> Any:
    time.sleep(1.1)
    engine = open_sync_engine(config)
    report = engine.run()
    assert report.status == "succeeded", report.error
    return engine


@pytest.mark.parametrize("how", ["unsubscribe", "opt_out_of_all"])
@pytest.mark.parametrize("later_yes", [False, True], ids=["no_is_the_latest_word", "later_yes_under_b"])
def test_a_no_given_under_the_old_address_reaches_the_ledger_and_the_new_address(
    hubspot: HubSpotHarness, tmp_path: Path, how: str, later_yes: bool
) -> None:
    portal = hubspot.sandbox.portal
    contact = hubspot.create_person(A)
    portal.set_status(
        A, MARKETING, "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", explanation="form", source="Form"
    )
    config = write_sync_config(hubspot, tmp_path)
    first = open_sync_engine(config)
    assert first.run(full=True).status == "succeeded"
    assert _marketing(first, A)["status"] == "granted"

    time.sleep(1.1)
    if how == "unsubscribe":
        portal.set_status(A, MARKETING, "UNSUBSCRIBED", source="Subscription preferences page")
    else:
        portal.unsubscribe_all(A)
    time.sleep(0.01)
    portal.update(contact, {"email": B})  # a user corrects the address before the next sync
    if later_yes:
        time.sleep(0.01)
        portal.set_status(
            B, MARKETING, "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", explanation="form", source="Form"
        )
    hubspot.sandbox.reset_counters()
    engine = _run(config)
    engine = _run(config)  # the contact is told on the run after the one that read the no

    state = _marketing(engine, A)
    b_status = portal.status(B, MARKETING)
    if later_yes:
        assert (state["status"], state["suppressed"]) == ("granted", False), state
        assert b_status is not None and b_status.status == "SUBSCRIBED", "b@ unsubscribed despite its yes"
        if how == "unsubscribe":
            assert hubspot.sandbox.calls["unsubscribe"] == 0
        else:
            # The opt-out of all email under a@ stays the latest word for the subscription the
            # person did not take up again under b@ (the yes is compared type by type).
            service = portal.status(B, "1002")
            assert service is not None and service.status == "UNSUBSCRIBED"
    else:
        assert (state["status"], state["suppressed"]) == ("withdrawn", True), "the no given as a@ was lost"
        assert b_status is not None and b_status.status == "UNSUBSCRIBED", "b@ was never told"


def test_a_no_given_on_the_address_before_this_contact_had_it_is_not_its_persons(
    hubspot: HubSpotHarness, tmp_path: Path
) -> None:
    """The reviewer's repro: contact Z held a@, unsubscribed long ago and moved to another
    address. A user later creates contact X with a@ (a typo for b@, or an address handed on)
    and corrects it to b@ before the next sync. a@'s no predates X having a@: X's person is not
    recorded withdrawn and b@ is not unsubscribed (for good) for someone else's no; Z's person
    keeps theirs."""
    portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    z = portal.create({"email": A, "lastname": "Z"}, at=base)
    portal.set_status(A, MARKETING, "UNSUBSCRIBED", at=base + dt.timedelta(minutes=5))
    portal.update(z, {"email": Z2}, at=base + dt.timedelta(minutes=10))
    config = write_sync_config(hubspot, tmp_path)
    first = open_sync_engine(config)
    assert first.run(full=True).status == "succeeded"
    assert _marketing(first, Z2)["status"] == "withdrawn"

    time.sleep(1.1)
    x = portal.create({"email": A, "lastname": "X"})
    time.sleep(0.01)
    portal.update(x, {"email": B})  # corrected before the next sync
    hubspot.sandbox.reset_counters()
    engine = _run(config)
    engine = _run(config)

    state = _marketing(engine, B)
    b_status = portal.status(B, MARKETING)
    assert state["status"] != "withdrawn", f"X's person took a no X never gave: {state}"
    assert b_status is None or b_status.status != "UNSUBSCRIBED", "b@ unsubscribed for good"
    assert hubspot.sandbox.calls["unsubscribe"] == 0
    assert _marketing(engine, Z2)["status"] == "withdrawn"
