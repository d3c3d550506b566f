"""A grant captured for an address its person no longer holds is no word of theirs (black-box
finding bb61 F5). Pat said no under pat.old@; the CRM record then took pat.new@, and Pat keeps
the old address beside the new one (their nos under it, Art. 15). Whoever has the old mailbox
now (recycled, a former employer's alias) posted a grant for it: it reversed Pat's no, and the
next sync cleared the Email Opt Out of the record holding Pat's new address. Now the grant waits
for Pat's own confirmation, mailed to the address they hold now; a no under the old address
still reaches them. Through the capture API, the real sync engine and the Salesforce sandbox
(docs/policy.md, "An address a person no longer holds")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.hub.conftest import Inbox
from tests.hub.crm_world import CrmHub, crm_hub

OLD, NEW = "pat.old@example.com", "pat.new@example.com"


@pytest.fixture
def setup(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch, inbox: tuple[Inbox, int]
) -> Iterator[CrmHub]:
    with crm_hub(cli, config_path, monkeypatch, inbox) as world:
        yield world


def _said_no_then_readdressed(setup: CrmHub, *also_at_old: str) -> str:
    """Pat's contact synced, Pat's no under the old address (the sync ticks the Email Opt Out),
    then the contact's address changed in the CRM and synced: Pat holds both addresses.
    ``also_at_old``: last names of more contacts of Pat's that keep the old address."""
    org = setup.sandbox.org
    contact = org.create("Contact", LastName="Pat", Email=OLD, HasOptedOutOfEmail=False)
    for name in also_at_old:
        org.create("Contact", LastName=name, Email=OLD, HasOptedOutOfEmail=False)
    setup.cli.ok("sync", "sf")
    assert setup.capture(OLD, "withdrawn")["recorded"] == "withdrawn"
    assert setup.opted_out(contact)
    org.update(contact, {"Email": NEW})
    setup.cli.ok("sync", "sf")
    pat, suppressed, rule = setup.state(NEW)
    assert pat is not None and setup.state(OLD)[0] == pat and suppressed, rule
    setup.inbox.messages.clear()
    return contact


def test_a_grant_for_the_old_address_waits_for_the_person_at_their_new_one(setup: CrmHub) -> None:
    contact = _said_no_then_readdressed(setup)
    pat = setup.state(NEW)[0]

    result = setup.capture(OLD, "granted")
    # Recorded on Pat as a sign-up waiting for their confirmation, not as their grant.
    assert (result["subject"], result["recorded"], result["confirmation"]) == (pat, "requested", "queued")
    assert setup.state(NEW) == (pat, True, "sticky_withdrawal")
    assert setup.people() == 1, "no second person, and none linked to Pat's record"
    # The link went to the address Pat holds now, never to the old mailbox.
    assert [message["To"] for message in setup.inbox.messages] == [NEW]
    assert setup.opted_out(contact), "the sync cleared the opt-out on the old address's word"

    # Pat's own confirmation, from the new mailbox, is Pat's new consent.
    token = setup.inbox.link("/p/confirm/").rsplit("/", 1)[1]
    assert setup.hub.confirm(token)["subject"] == pat
    assert setup.state(NEW)[:2] == (pat, False)
    assert not setup.opted_out(contact)

    # A no under the old address is still Pat's: the safe side.
    assert setup.capture(OLD, "withdrawn")["subject"] == pat
    assert setup.state(NEW)[:2] == (pat, True)
    assert setup.opted_out(contact)


def test_an_address_another_record_of_the_person_still_shows_is_theirs(setup: CrmHub) -> None:
    """Pat's second contact still shows the old address: it is not superseded, and Pat's grant
    under it is taken as ever (a trusted form's new consent reverses the no)."""
    contact = _said_no_then_readdressed(setup, "Pat (second)")
    pat = setup.state(NEW)[0]
    result = setup.capture(OLD, "granted")
    assert (result["subject"], result["recorded"]) == (pat, "granted")
    assert "confirmation" not in result
    assert setup.state(NEW)[:2] == (pat, False)
    assert not setup.opted_out(contact)


@pytest.mark.parametrize(
    "evidence_goes", ["new_lead_at_old", "new_lead_at_old_before_the_move", "blanked", "deleted"]
)
def test_the_old_address_stays_left_when_the_records_stop_saying_so(
    setup: CrmHub, evidence_goes: str
) -> None:
    """Whether Pat left the old address is kept, not recomputed from the records (session 62
    review): it stays left when the new owner of the old mailbox fills a web-to-lead form with
    it (the sync links that lead to Pat: an address has one holder), also when that lead was
    synced before Pat's record moved (a record linked by the address alone after Pat's record
    showed it says nothing of Pat), when the re-addressed record's address is blanked, or when
    the record is deleted. Recomputed, each made the old address Pat's again: its grant
    reversed Pat's no, and Pat's old page link opened again."""
    org = setup.sandbox.org
    contact = org.create("Contact", LastName="Pat", Email=OLD, HasOptedOutOfEmail=False)
    setup.cli.ok("sync", "sf")
    assert setup.capture(OLD, "withdrawn")["recorded"] == "withdrawn"
    page = setup.mailed("/p/preferences/", OLD)
    pat = setup.uid(OLD)
    if evidence_goes == "new_lead_at_old_before_the_move":
        org.create("Lead", LastName="Xavier", Company="Recycled", Email=OLD)
        setup.cli.ok("sync", "sf")
    org.update(contact, {"Email": NEW})
    setup.cli.ok("sync", "sf")
    assert setup.pages.get(page).status_code == 410

    if evidence_goes == "new_lead_at_old":
        org.create("Lead", LastName="Xavier", Company="Recycled", Email=OLD)
    elif evidence_goes == "blanked":
        org.update(contact, {"Email": None})
    else:
        org.delete(contact)
    setup.cli.ok("sync", "sf")
    assert setup.uid(OLD) == pat and setup.uid(NEW) == pat

    assert setup.pages.get(page).status_code == 410, "the old mailbox's link opened Pat's page again"
    setup.inbox.messages.clear()
    result = setup.capture(OLD, "granted")
    assert (result["subject"], result["recorded"], result["confirmation"]) == (pat, "requested", "queued")
    assert setup.recipients() == [NEW]
    assert setup.state(NEW) == (pat, True, "sticky_withdrawal"), "the old mailbox reversed Pat's no"
    assert setup.cli("audit", "verify").exit_code == 0
