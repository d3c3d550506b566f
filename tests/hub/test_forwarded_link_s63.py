"""A forwarded preference link (session 63 black-box, tester2 finding 1). Every receipt we mail
carries the person's preference link; whoever the mail was forwarded to held the link and no
more, and (1) downloaded the whole Art. 15 copy of the record from it, (2) granted consent in the
person's name (source preference_center, trusted), reversing their withdrawal, which the next
sync pushed to the CRMs. Now (docs/hub.md, "What a preference link lets its holder do"):

1. the page's export mails a download link to the address the person holds now, and the copy
   opens only from that link (24 hours; one hour more once used), never from the page's link;
   a download link mailed to an address the person left opens nothing;
2. a grant on the page over the person's no (a withdrawal, a refusal, an objection) is a double
   opt-in mailed to the address held now: nothing is recorded, nor pushed, until it is
   confirmed. A grant with nothing on record, and a withdrawal, are recorded as before.

Through the pages in-process, a real SMTP inbox, and (for the sync and a left address) the real
sync engine beside the Salesforce sandbox; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook

from consentsync import audit
from consentsync.domain import ConsentStatus, Origin
from consentsync.hub import preferences
from consentsync.ledger.identity import Identity
from tests.conftest import Cli
from tests.hub.conftest import HubWorld, Inbox
from tests.hub.crm_world import CHANNEL, PURPOSE, CrmHub, crm_hub
from tests.hub.people_world import EMAIL, GRANT, mailed, mails_with, people_pages, token_of
from tests.integration.helpers import consent_value

FIXTURES = (people_pages,)
FORM = {"purpose": "newsletter", "channel": "email", "lang": "en", "notice_version": "2026-05"}


def _ada(world: HubWorld) -> tuple[str, str]:
    """Ada with a newsletter grant (nothing else on record); her uid and preference link."""
    assert world.post("/consents", GRANT).status_code == 201
    (uid,) = world.ledger.subject_uids_for_email(EMAIL)
    return uid, token_of(world, uid)


def _exports(world: HubWorld, uid: str) -> list[dict[str, Any]]:
    with world.ledger.engine.connect() as conn:
        return list(audit.entries(conn, subject_uids=[uid], action="subject.exported"))


def _newest(world: HubWorld, purpose: str = "newsletter") -> dict[str, Any]:
    history = world.ledger.subject_view(EMAIL)["history"]
    return [e for e in history if e["purpose"] == purpose and e["channel"] == "email"][-1]


def _post(people: TestClient, token: str, action: str, data: dict[str, str]) -> str:
    """A page's form sent; the page it redirects to, as text."""
    response = people.post(f"/p/preferences/{token}/{action}", data=data, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith(f"/p/preferences/{token}?")
    return str(people.get(response.headers["location"]).text)


# -- 1. the copy of the record (Art. 15) ---------------------------------------------------------


def test_the_pages_export_mails_a_link_and_hands_over_nothing(world: HubWorld, people: TestClient) -> None:
    uid, token = _ada(world)
    before = len(world.inbox.messages)
    response = people.post(f"/p/preferences/{token}/export", data={"format": "json"}, follow_redirects=False)
    assert response.status_code == 303  # the page again, not the copy
    assert "attachment" not in response.headers.get("content-disposition", "")
    page = people.get(response.headers["location"]).text
    assert "We sent you a mail with a link to download a copy of your data" in page
    assert EMAIL not in page and not _exports(world, uid)
    assert len(world.inbox.messages) == before + 1
    assert world.inbox.messages[-1]["To"] == EMAIL and "/p/export/" in world.inbox.text()
    # Pressed again at once: the mail of a moment ago answers, no second one.
    people.post(f"/p/preferences/{token}/export", data={})
    assert mails_with(world, "/p/export/") == 1


def test_the_mailed_link_downloads_for_its_window_then_opens_nothing(
    world: HubWorld, people: TestClient
) -> None:
    uid, token = _ada(world)
    people.post(f"/p/preferences/{token}/export", data={})
    link = mailed(world, "/p/export/")
    shown = people.get(link)
    assert shown.status_code == 200 and 'name="format"' in shown.text and EMAIL not in shown.text
    assert not _exports(world, uid)  # showing the formats (a mail scanner's fetch) hands over nothing
    first = people.post(link, data={"format": "json"})
    assert first.status_code == 200
    assert first.headers["content-disposition"] == 'attachment; filename="my-data-2026-06-01.json"'
    assert json.loads(first.content)["email"] == EMAIL
    world.clock.advance(minutes=30)  # the other formats, within the hour after the first download
    assert uid in people.post(link, data={"format": "csv"}).text
    assert len(load_workbook(BytesIO(people.post(link, data={"format": "xlsx"}).content)).sheetnames) > 1
    assert [(e["actor"], e["source"]) for e in _exports(world, uid)] == [
        ("data subject", "preference_center")
    ] * 3
    assert people.post(link, data={"format": "pdf"}).status_code == 400
    world.clock.advance(minutes=31)
    spent = people.post(link, data={"format": "json"})
    assert spent.status_code == 410 and EMAIL not in spent.text
    assert people.get(link).status_code == 410 and len(_exports(world, uid)) == 3


def test_an_unused_link_expires_after_a_day(world: HubWorld, people: TestClient) -> None:
    uid, token = _ada(world)
    people.post(f"/p/preferences/{token}/export", data={})
    link = mailed(world, "/p/export/")
    world.clock.advance(hours=24)
    assert people.post(link, data={"format": "json"}).status_code == 410
    assert not _exports(world, uid)
    # Asked again: a new link, which works.
    people.post(f"/p/preferences/{token}/export", data={})
    fresh = mailed(world, "/p/export/")
    assert fresh != link and people.post(fresh, data={"format": "json"}).status_code == 200


# -- 2. a grant over the person's no ---------------------------------------------------------------


def test_a_grant_after_a_withdrawal_waits_for_the_mailed_confirmation(
    world: HubWorld, people: TestClient
) -> None:
    _uid, token = _ada(world)
    world.clock.advance(minutes=1)
    withdrawal = {**GRANT, "status": "withdrawn"}
    del withdrawal["notice_version"]
    assert world.post("/consents", withdrawal).status_code == 201
    world.clock.advance(minutes=5)
    confirmations = mails_with(world, "/p/confirm/")
    page = _post(people, token, "choose", {**FORM, "action": "grant"})
    assert "You had said no to Newsletter (Email). We sent you a mail" in page
    assert _newest(world)["status"] == "withdrawn"  # nothing recorded
    _uid, state = world.ledger.decision_for(EMAIL, "newsletter", "email")
    assert state.suppressed and state.rule == "sticky_withdrawal"
    assert mails_with(world, "/p/confirm/") == confirmations + 1
    assert world.inbox.messages[-1]["To"] == EMAIL
    link = mailed(world, "/p/confirm/")
    world.clock.advance(minutes=2)
    assert people.post(link, data={"lang": "en"}, follow_redirects=False).status_code == 303
    granted = _newest(world)
    assert (granted["status"], granted["source"]) == ("granted", "double_opt_in")
    _uid, state = world.ledger.decision_for(EMAIL, "newsletter", "email")
    assert not state.suppressed and state.rule == "trusted_opt_in_reverses"


def test_saying_it_was_not_me_leaves_the_withdrawal_as_it_is(world: HubWorld, people: TestClient) -> None:
    _uid, token = _ada(world)
    world.clock.advance(minutes=1)
    _post(people, token, "choose", {**FORM, "action": "withdraw"})
    world.clock.advance(minutes=5)
    _post(people, token, "choose", {**FORM, "action": "grant"})
    link = mailed(world, "/p/confirm/")
    assert "stay as they are" in people.get(link).text
    people.post(f"{link}/decline", data={"lang": "en"})
    assert _newest(world)["status"] == "withdrawn"
    assert people.post(link, data={"lang": "en"}).status_code == 410
    assert _newest(world)["status"] == "withdrawn"


def test_a_grant_after_an_objection_to_direct_marketing_waits_too(
    world: HubWorld, people: TestClient
) -> None:
    _uid, token = _ada(world)
    world.clock.advance(minutes=1)
    _post(people, token, "object", {"purpose": "email_marketing", "lang": "en"})
    world.clock.advance(minutes=5)
    _uid, state = world.ledger.decision_for(EMAIL, "email_marketing", "email")
    assert state.rule == "objection_direct_marketing"
    page = _post(people, token, "choose", {**FORM, "purpose": "email_marketing", "action": "grant"})
    assert "We sent you a mail" in page
    _uid, after = world.ledger.decision_for(EMAIL, "email_marketing", "email")
    assert after.suppressed and after.rule == "objection_direct_marketing"
    assert mailed(world, "/p/confirm/")


def test_a_gpc_opt_out_after_the_persons_own_no_and_an_unheeded_grant_is_not_gpc_only(
    world: HubWorld, people: TestClient
) -> None:
    """Ada withdraws herself; a CRM's stale copy says subscribed (an untrusted grant, which her
    withdrawal outranks); then a GPC signal reaches the capture API. Counting only the nos since
    the last grant, her no read as the signal's alone, and the forwarded link's grant was recorded
    at once over it (session 63 review): it waits for the mailed confirmation."""
    world.hub.settings = world.hub.settings.model_copy(update={"gpc_purposes": ["newsletter"]})
    _uid, token = _ada(world)
    world.clock.advance(minutes=1)
    assert "Done: you withdrew" in _post(people, token, "choose", {**FORM, "action": "withdraw"})
    world.clock.advance(minutes=1)
    now = world.clock()
    stale = consent_value(
        ConsentStatus.GRANTED, now, now, purpose="newsletter", source="crm-sf", origin=Origin.CRM
    )
    world.ledger.record(Identity(email=EMAIL), stale)
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].suppressed
    world.clock.advance(minutes=1)
    withdrawal = {"email": EMAIL, "purpose": "profiling", "status": "withdrawn"}
    assert world.post("/consents", withdrawal, **{"Sec-GPC": "1"}).status_code == 201
    world.clock.advance(minutes=1)
    before = mails_with(world, "/p/confirm/")
    assert "We sent you a mail" in _post(people, token, "choose", {**FORM, "action": "grant"})
    assert mails_with(world, "/p/confirm/") == before + 1
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].suppressed


def test_a_grant_under_a_restriction_waits_too(world: HubWorld, people: TestClient) -> None:
    """A restriction may hide an objection or an erasure behind it, which a grant recorded now
    would reverse once the restriction is lifted: the grant waits for the mailed confirmation."""
    _uid, token = _ada(world)
    world.clock.advance(minutes=1)
    world.ledger.restrict(EMAIL, restricted=True, reason="accuracy contested")
    _uid, state = world.ledger.decision_for(EMAIL, "newsletter", "email")
    assert state.rule == "restriction_art18"
    before = world.ledger.subject_view(EMAIL)["history"]
    page = _post(people, token, "choose", {**FORM, "action": "grant"})
    assert "We sent you a mail" in page
    assert world.ledger.subject_view(EMAIL)["history"] == before  # nothing recorded
    assert mailed(world, "/p/confirm/")


def test_a_grant_with_nothing_on_record_and_a_withdrawal_are_recorded_at_once(
    world: HubWorld, people: TestClient
) -> None:
    _uid, token = _ada(world)
    confirmations = mails_with(world, "/p/confirm/")
    world.clock.advance(minutes=1)
    page = _post(people, token, "choose", {**FORM, "purpose": "email_marketing", "action": "grant"})
    assert "Thank you: you agreed to" in page
    granted = _newest(world, "email_marketing")
    assert (granted["status"], granted["source"]) == ("granted", "preference_center")
    world.clock.advance(minutes=1)
    assert "Done: you withdrew" in _post(people, token, "choose", {**FORM, "action": "withdraw"})
    assert _newest(world)["status"] == "withdrawn"
    assert mails_with(world, "/p/confirm/") == confirmations


def test_a_grant_over_a_gpc_opt_out_alone_is_recorded_at_once(world: HubWorld, people: TestClient) -> None:
    """A no that is only a Global Privacy Control opt-out is the visiting browser's, not an act
    of the person's: CCPA regs § 7025(c)(3) let them consent despite the signal on the page. The
    grant is recorded at once with its GPC mark, which the next visit with the signal respects.
    A withdrawal they make on the page themselves, signal on or not, is their own no."""
    world.hub.settings = world.hub.settings.model_copy(update={"gpc_purposes": ["newsletter"]})
    _uid, token = _ada(world)
    gpc = {"Sec-GPC": "1"}
    world.clock.advance(minutes=1)
    people.get(f"/p/preferences/{token}", headers=gpc)
    opted_out = _newest(world)
    assert (opted_out["status"], opted_out["evidence_ref"]) == ("withdrawn", "Sec-GPC: 1")
    confirmations = mails_with(world, "/p/confirm/")
    world.clock.advance(minutes=1)
    chosen = people.post(f"/p/preferences/{token}/choose", data={**FORM, "action": "grant"}, headers=gpc)
    assert chosen.status_code == 200 and "Thank you: you agreed to" in chosen.text
    granted = _newest(world)
    assert (granted["status"], granted["source"]) == ("granted", "preference_center")
    assert str(granted["evidence_ref"]).endswith(" gpc:1")
    assert mails_with(world, "/p/confirm/") == confirmations
    world.clock.advance(minutes=1)
    people.get(f"/p/preferences/{token}", headers=gpc)
    assert _newest(world)["status"] == "granted"
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "granted"
    # Withdrawn by the person on the page, the signal on: their no, which a grant must confirm.
    world.clock.advance(minutes=1)
    people.post(f"/p/preferences/{token}/choose", data={**FORM, "action": "withdraw"}, headers=gpc)
    world.clock.advance(minutes=1)
    again = people.post(f"/p/preferences/{token}/choose", data={**FORM, "action": "grant"}, headers=gpc)
    assert "We sent you a mail" in again.text and _newest(world)["status"] == "withdrawn"
    assert mails_with(world, "/p/confirm/") == confirmations + 1


# -- beside a CRM: the sync, and an address the person left ------------------------------------------

OLD, NEW = "pat.old@example.com", "pat.new@example.com"


@pytest.fixture
def setup(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch, inbox: tuple[Inbox, int]
) -> Iterator[CrmHub]:
    with crm_hub(cli, config_path, monkeypatch, inbox) as world:
        yield world


def _path(url: str) -> str:
    return urlsplit(url).path


def test_the_sync_pushes_a_page_grant_over_a_withdrawal_only_once_confirmed(setup: CrmHub) -> None:
    contact = setup.sandbox.org.create("Contact", LastName="Pat", Email=OLD, HasOptedOutOfEmail=False)
    setup.cli.ok("sync", "sf")
    setup.capture(OLD, "withdrawn")  # its receipt carries the preference link
    assert setup.opted_out(contact)
    forwarded = _path(setup.inbox.link("/p/preferences/"))
    form = {"purpose": PURPOSE, "channel": CHANNEL, "lang": "en", "notice_version": "2026-05"}
    answer = setup.pages.post(f"{forwarded}/choose", data={**form, "action": "grant"})
    assert answer.status_code == 200 and "We sent you a mail" in answer.text
    assert setup.state(OLD)[1:] == (True, "sticky_withdrawal")
    assert setup.opted_out(contact) and setup.opted_out(contact)  # nothing pushed
    confirm = setup.mailed("/p/confirm/", OLD)
    assert setup.pages.post(confirm, data={"lang": "en"}).status_code == 200
    assert setup.state(OLD)[1:] == (False, "trusted_opt_in_reverses")
    assert not setup.opted_out(contact)


def test_a_download_link_mailed_to_an_address_the_person_left_opens_nothing(
    setup: CrmHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    contact = setup.sandbox.org.create("Contact", LastName="Pat", Email=OLD, HasOptedOutOfEmail=False)
    setup.cli.ok("sync", "sf")
    uid = setup.uid(OLD)
    setup.pages.post(f"{_path(setup.hub.preference_link(uid, to=OLD))}/export", data={})
    old_download = setup.mailed("/p/export/", OLD)
    setup.sandbox.org.update(contact, {"Email": NEW})
    setup.cli.ok("sync", "sf")
    refused = setup.pages.post(old_download, data={"format": "json"})
    assert refused.status_code == 410 and OLD not in refused.text and NEW not in refused.text
    assert setup.pages.get(old_download).status_code == 410
    # Asked through a link of theirs now (past the wait between two requests, which the real
    # clock of this world does not pass): mailed to the address they hold, and it works.
    monkeypatch.setattr(preferences, "NEW_LINK_INTERVAL", timedelta(0))
    setup.pages.post(f"{_path(setup.hub.preference_link(uid))}/export", data={})
    new_download = setup.mailed("/p/export/", NEW)
    assert json.loads(setup.pages.post(new_download, data={"format": "json"}).content)["subject"] == uid
