"""The hub's mailed links and an address its person no longer holds (docs/hub.md, "Links and
an address the person left"; follows a50b278, which made a grant captured for such an address
wait for the person's confirmation at the address they hold now).

1. Every mail with a link of the person's goes to the address they hold now: the latest they
   took that no CRM record of theirs has left since. Mailed to the latest they ever took, a
   record corrected back from a mistyped address left every link to the mistyped mailbox:
   the confirmation of a sign-up for that address (so a50b278's confirmation went to the very
   mailbox it must not), the receipt of a no given for it, a new link for an expired one.
2. A link mailed to an address before it was superseded (a preference link, an erasure
   confirmation, a link minted by an older version that names no address) stops working once
   a sync shows the person's record with another address: whoever has the old mailbox now may
   be someone else. The page says what an expired link says and offers a new link, mailed to
   the address the person holds now; a link mailed there works.

Through the capture API, the preference pages, the real sync engine and the Salesforce sandbox
(a real SMTP inbox), as tests/hub/test_capture_superseded_address.py does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from consentsync.hub import links
from tests.conftest import Cli
from tests.hub.conftest import Inbox
from tests.hub.crm_world import CHANNEL, PURPOSE, CrmHub, crm_hub

OLD, NEW = "pat.old@example.com", "pat.new@example.com"
# A record that took a mistyped address and was corrected back: the latest address Pat ever
# took is the mistyped one, a mailbox that may be anyone's.
PAT, TYPO = "pat@example.com", "pat@exmaple.com"


@pytest.fixture
def setup(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch, inbox: tuple[Inbox, int]
) -> Iterator[CrmHub]:
    with crm_hub(cli, config_path, monkeypatch, inbox, double_opt_in=True) as world:
        yield world


def _readdress(setup: CrmHub, contact: str, email: str) -> None:
    setup.sandbox.org.update(contact, {"Email": email})
    setup.cli.ok("sync", "sf")


def test_a_link_asked_for_an_address_pat_left_goes_to_the_one_they_hold_now(setup: CrmHub) -> None:
    """Pat's record took a mistyped address and was corrected back: Pat holds both, the mistyped
    one last taken. Whatever is asked for it (a sign-up, a no, a new link for an expired one),
    the link goes to PAT only, and the answer is the one any address gets."""
    contact = setup.sandbox.org.create("Contact", LastName="Pat", Email=PAT, HasOptedOutOfEmail=False)
    setup.cli.ok("sync", "sf")
    _readdress(setup, contact, TYPO)
    _readdress(setup, contact, PAT)
    pat = setup.uid(PAT)
    assert setup.uid(TYPO) == pat
    setup.inbox.messages.clear()

    # A sign-up for the mistyped address waits for Pat (a50b278), its link mailed to PAT.
    result = setup.capture(TYPO, "granted")
    assert (result["subject"], result["recorded"], result["confirmation"]) == (pat, "requested", "queued")
    assert setup.recipients() == [PAT], "the confirmation went to the mailbox Pat left"
    confirm = setup.mailed("/p/confirm/", PAT)
    assert setup.pages.get(confirm).status_code == 200

    # A no for it is Pat's (the safe side); its receipt, with Pat's page, goes to PAT.
    setup.inbox.messages.clear()
    assert setup.capture(TYPO, "withdrawn")["recorded"] == "withdrawn"
    assert setup.recipients() == [PAT]
    page = setup.mailed("/p/preferences/", PAT)
    assert setup.pages.get(page).status_code == 200

    # An expired link asks for a new one: mailed to PAT.
    setup.inbox.messages.clear()
    expired = links.make_token(setup.ledger, pat, days=1, now=setup.ledger.clock().replace(year=2020))
    refused = setup.pages.get(f"/p/preferences/{expired}")
    assert refused.status_code == 410 and "new-link" in refused.text
    assert setup.pages.post(f"/p/preferences/{expired}/new-link", data={"lang": "en"}).status_code == 200
    assert setup.recipients() == [PAT]


def test_a_link_mailed_to_the_old_address_stops_working_once_pat_left_it(setup: CrmHub) -> None:
    org = setup.sandbox.org
    contact = org.create("Contact", LastName="Pat", Email=OLD, HasOptedOutOfEmail=False)
    setup.cli.ok("sync", "sf")
    # Before the re-address: Pat's no under OLD, its receipt (with Pat's page) mailed to OLD;
    # from that page an erasure asked for, its confirmation link mailed to OLD.
    assert setup.capture(OLD, "withdrawn")["recorded"] == "withdrawn"
    page = setup.mailed("/p/preferences/", OLD)
    pat = setup.uid(OLD)
    # A link an older version mailed (it names no address).
    unbound = "/p/preferences/" + links.make_token(setup.ledger, pat, days=30)
    assert setup.pages.get(page).status_code == 200
    assert setup.pages.get(unbound).status_code == 200
    assert setup.pages.post(f"{page}/erase", data={"lang": "en"}).status_code == 200
    erase = setup.mailed("/p/erase/", OLD)
    assert setup.pages.get(erase).status_code == 200
    # A sign-up under OLD, waiting for its confirmation link mailed to OLD.
    assert setup.capture(OLD, "granted")["confirmation"] == "queued"
    confirm = setup.mailed("/p/confirm/", OLD)
    assert setup.pages.get(confirm).status_code == 200

    _readdress(setup, contact, NEW)
    assert setup.uid(NEW) == pat and setup.uid(OLD) == pat
    events = setup.events(pat)
    setup.inbox.messages.clear()

    # The old mailbox's links open nothing and do nothing: said as for an expired link.
    for stale in (page, unbound):
        shown = setup.pages.get(stale)
        assert shown.status_code == 410, stale
        assert "This link has expired" in shown.text and f"{stale}/new-link" in shown.text
        choose = {"purpose": PURPOSE, "channel": CHANNEL, "action": "grant", "lang": "en"}
        assert setup.pages.post(f"{stale}/choose", data=choose).status_code == 410
        assert setup.pages.post(f"{stale}/export", data={"format": "json"}).status_code == 410
        assert setup.pages.post(f"{stale}/erase", data={"lang": "en"}).status_code == 410
    for link in (erase, confirm):
        assert setup.pages.get(link).status_code == 410, link
        assert setup.pages.post(link, data={"lang": "en"}).status_code == 410, link
    assert setup.pages.post(f"{confirm}/decline", data={"lang": "en"}).status_code == 410
    state = setup.ledger.decision_for(NEW, PURPOSE, CHANNEL)[1]
    assert (state.status.value, state.suppressed) == ("withdrawn", True), "the old mailbox confirmed"
    assert setup.ledger.email_of(pat) is not None, "the old mailbox erased Pat"
    assert setup.events(pat) == events
    assert setup.inbox.messages == []

    # The page offers a new link: mailed to NEW only, and it works.
    assert setup.pages.post(f"{page}/new-link", data={"lang": "en"}).status_code == 200
    assert setup.recipients() == [NEW]
    fresh = setup.mailed("/p/preferences/", NEW)
    assert setup.pages.get(fresh).status_code == 200
    # So does a request's confirmation link asked for from it, mailed to NEW.
    assert setup.pages.post(f"{fresh}/restrict", data={"ground": "accuracy", "lang": "en"}).status_code == 200
    assert setup.pages.get(setup.mailed("/p/restrict/", NEW)).status_code == 200
    assert setup.recipients() == [NEW, NEW]


def test_a_link_to_an_address_another_record_still_shows_keeps_working(setup: CrmHub) -> None:
    """Pat's second contact still shows OLD: it is not superseded, and its links work."""
    org = setup.sandbox.org
    contact = org.create("Contact", LastName="Pat", Email=OLD, HasOptedOutOfEmail=False)
    org.create("Contact", LastName="Pat (second)", Email=OLD, HasOptedOutOfEmail=False)
    setup.cli.ok("sync", "sf")
    assert setup.capture(OLD, "withdrawn")["recorded"] == "withdrawn"
    page = setup.mailed("/p/preferences/", OLD)
    _readdress(setup, contact, NEW)
    assert setup.uid(NEW) == setup.uid(OLD)
    assert setup.pages.get(page).status_code == 200


def _new_link_goes_to(setup: CrmHub, pat: str) -> list[str]:
    """Where a new link asked for from an expired one of Pat's is mailed."""
    setup.inbox.messages.clear()
    expired = links.make_token(setup.ledger, pat, days=1, now=setup.ledger.clock().replace(year=2020))
    assert setup.pages.post(f"/p/preferences/{expired}/new-link", data={"lang": "en"}).status_code == 200
    return setup.recipients()


@pytest.mark.parametrize("shows", ["a_malformed_address", "another_persons_address"])
def test_a_record_showing_no_address_of_pats_leaves_pat_their_own(setup: CrmHub, shows: str) -> None:
    """Pat's only record takes a malformed address (quarantined as a typo: never Pat's), or the
    address of another person: neither is an address Pat took, so Pat has left none. Counted as
    left, Pat held no address at all: nothing was mailed to them, no link worked, and no way was
    left to withdraw through the hub (Art. 7(3), Art. 12(2); session 62 review)."""
    org = setup.sandbox.org
    contact = org.create("Contact", LastName="Pat", Email=OLD, HasOptedOutOfEmail=False)
    if shows == "another_persons_address":
        org.create("Contact", LastName="Quinn", Email=NEW, HasOptedOutOfEmail=False)
    setup.cli.ok("sync", "sf")
    assert setup.capture(OLD, "withdrawn")["recorded"] == "withdrawn"
    page = setup.mailed("/p/preferences/", OLD)
    pat = setup.uid(OLD)

    org.update(contact, {"Email": "pat.old@example.com-" if shows == "a_malformed_address" else NEW})
    setup.cli("sync", "sf")  # a malformed address is quarantined: the run says so
    if shows == "another_persons_address":
        assert setup.uid(NEW) != pat
    assert setup.hub.address_now(pat) == OLD
    assert setup.pages.get(page).status_code == 200
    assert _new_link_goes_to(setup, pat) == [OLD]
    # A no through the hub still reaches Pat: their page works.
    choose = {"purpose": PURPOSE, "channel": CHANNEL, "action": "withdraw", "lang": "en"}
    assert setup.pages.post(f"{page}/choose", data=choose).status_code in (200, 303)


def test_an_erasure_asked_for_the_address_pat_left_waits_for_pat(setup: CrmHub) -> None:
    """An erasure the capture API receives for an address Pat left (whoever has the old mailbox
    now may be someone else; an erasure cannot be undone) is mailed to Pat at the address they
    hold now, as a page's erasure request is: nothing is erased until Pat confirms. It stays so
    after a new lead at the old address is linked to Pat."""
    org = setup.sandbox.org
    contact = org.create("Contact", LastName="Pat", Email=OLD, HasOptedOutOfEmail=False)
    setup.cli.ok("sync", "sf")
    _readdress(setup, contact, NEW)
    org.create("Lead", LastName="Xavier", Company="Recycled", Email=OLD)
    setup.cli.ok("sync", "sf")
    pat = setup.uid(OLD)
    setup.inbox.messages.clear()

    response = setup.client.post(
        "/erasure-requests",
        json={"email": OLD, "reason": "asked for by mail"},
        headers={"Authorization": f"Bearer {setup.secret}"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "erased": False,
        "subject_known": True,
        "suppression_id": None,
        "confirmation": "queued",
    }
    assert setup.ledger.email_of(pat) is not None, "the old mailbox erased Pat"
    assert setup.recipients() == [NEW]
    erase = setup.mailed("/p/erase/", NEW)
    assert setup.pages.post(erase, data={"lang": "en"}).status_code == 200
    assert setup.ledger.email_of(pat) is None
    assert setup.cli("audit", "verify").exit_code == 0


def test_audit_verify_names_a_left_address_edited_back_to_held(setup: CrmHub) -> None:
    """Whether Pat left an address is bound in the chain: a flag cleared outside consentsync
    (the old mailbox's links and grants would work again) is named by ``audit verify``."""
    from sqlalchemy import update

    from consentsync.ledger.schema import subject_identifiers

    contact = setup.sandbox.org.create("Contact", LastName="Pat", Email=OLD, HasOptedOutOfEmail=False)
    setup.cli.ok("sync", "sf")
    _readdress(setup, contact, NEW)
    setup.cli.ok("audit", "verify")
    with setup.ledger.engine.begin() as conn:
        conn.execute(update(subject_identifiers).values(left_at=None))
    failed = setup.cli("audit", "verify")
    assert failed.exit_code != 0
    assert "left or held otherwise than the chain says" in failed.output + failed.stderr


def test_the_addresses_left_before_0022_are_marked_once(setup: CrmHub) -> None:
    """A ledger an older version left holds no flag: the first open after migration 0022 marks
    the addresses left by the rule of before (none of the person's live records shows it, one
    shows another address of theirs), bound in the chain, once."""
    from sqlalchemy import delete, select, update

    from consentsync.ledger.identity import LEFT_BACKFILL_SETTING, backfill_left
    from consentsync.ledger.schema import ledger_settings, subject_identifiers

    contact = setup.sandbox.org.create("Contact", LastName="Pat", Email=OLD, HasOptedOutOfEmail=False)
    setup.cli.ok("sync", "sf")
    _readdress(setup, contact, NEW)
    with setup.ledger.engine.begin() as conn:  # as the older version left it
        conn.execute(update(subject_identifiers).values(left_at=None))
        conn.execute(delete(ledger_settings).where(ledger_settings.c.name == LEFT_BACKFILL_SETTING))
    assert setup.hub.address_now(setup.uid(OLD)) == NEW
    key, now = setup.ledger.erasure_key(), setup.ledger.clock()
    assert backfill_left(setup.ledger.engine, key, now) == 1
    assert backfill_left(setup.ledger.engine, key, now) == 0
    with setup.ledger.engine.connect() as conn:
        left = conn.execute(
            select(subject_identifiers.c.value).where(subject_identifiers.c.left_at.is_not(None))
        ).scalars()
        assert list(left) == [OLD]
    setup.cli.ok("audit", "verify")


def test_the_addresses_left_survive_a_downgrade_past_0022_and_an_upgrade(
    setup: CrmHub, config_path: Path
) -> None:
    """Downgrading to 0021 drops ``left_at``; upgrading again and opening the ledger sets the flags
    the chain says again (its entries survive: the log is append-only), even where the records'
    rule would not (Pat's record is deleted: no record shows any address of theirs), and the
    ledger verifies. Before, the backfill's settings row survived the downgrade, no flag came
    back, and ``audit verify`` named the chain's as tampered."""
    from alembic import command
    from sqlalchemy import select

    from consentsync.app import SCHEMA_REVISION, migration_state, open_ledger
    from consentsync.config import load_config
    from consentsync.ledger.engine import make_engine
    from consentsync.ledger.identity import SubjectResolver
    from consentsync.ledger.migrate import alembic_config, upgrade
    from consentsync.ledger.schema import subject_identifiers

    contact = setup.sandbox.org.create("Contact", LastName="Pat", Email=OLD, HasOptedOutOfEmail=False)
    setup.cli.ok("sync", "sf")
    _readdress(setup, contact, NEW)
    setup.sandbox.org.delete(contact)
    setup.cli.ok("sync", "sf")
    config = load_config(config_path)

    def superseded() -> set[str]:
        ledger = open_ledger(config)  # as every command opens it: the backfill runs here
        with ledger.engine.connect() as conn:
            resolver = SubjectResolver(conn, ledger.erasure_key(), ledger.clock(), None)
            found = resolver.superseded({OLD, NEW})
        ledger.engine.dispose()
        return found

    assert superseded() == {OLD}
    engine = make_engine(config.ledger_url)
    command.downgrade(alembic_config(engine), "0021")
    upgrade(engine)
    assert migration_state(engine) == SCHEMA_REVISION
    assert superseded() == {OLD}
    with engine.connect() as conn:
        left = conn.execute(
            select(subject_identifiers.c.value).where(subject_identifiers.c.left_at.is_not(None))
        ).scalars()
        assert list(left) == [OLD]
    engine.dispose()
    verified = setup.cli("audit", "verify")
    assert verified.exit_code == 0, verified.output + verified.stderr
