"""A person's no is not reversed by whoever holds a label or a stale request (black-box session
67), through the real HTTP API and the preference pages, on SQLite and PostgreSQL.

1. An explicit withdrawal sent with ``"evidence_ref": "Sec-GPC: 1"`` (no header, no ``gpc``)
   was answered ``"gpc": true``, mailed no receipt, and read as a Global Privacy Control
   opt-out alone: a grant pressed on the preference page (a forwarded receipt's link) was
   recorded at once over it. A no counts as the signal's only where it was recorded from the
   signal (``preferences.recorded_from_the_signal``); the label is the hub's: refused on a grant
   (422), set aside on a no (recorded as the person's own, receipted).
2. A sign-up retried with the same Idempotency-Key and body past the key's day, after the person
   withdrew, was recorded as a new grant dated now and reversed the withdrawal. It is refused
   (409) while the key's record is known, as a late retry after an erasure is (410); past the
   upkeep's purge, a sign-up sent with its ``event_time`` reverses nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, Evidence, Origin, iso
from consentsync.hub import keys, notices
from consentsync.hub.api import create_app
from consentsync.hub.capture import IDEMPOTENCY_WINDOW, Hub
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import capture_requests, consent_events
from tests.hub.conftest import NEWSLETTER_NOTICE, NOTICE_IN_EFFECT, HubWorld, hub_config
from tests.hub.people_world import EMAIL, GRANT, mails_with, people_pages, token_of
from tests.hub.test_s57_capture_requests_erasure import holders_of
from tests.hub.test_s57_capture_requests_erasure import people as people_in_the_ledger

FIXTURES = (people_pages,)
FORM = {"purpose": "newsletter", "channel": "email", "lang": "en", "notice_version": "2026-05"}
WITHDRAWAL = {"email": EMAIL, "purpose": "newsletter", "status": "withdrawn"}
PAST_THE_WINDOW = IDEMPOTENCY_WINDOW + timedelta(minutes=1)


def _state(world: HubWorld, purpose: str = "newsletter") -> dict[str, Any]:
    response = world.post("/decisions", {"email": EMAIL, "purpose": purpose, "channel": "email"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _newest(world: HubWorld, purpose: str = "newsletter") -> dict[str, Any]:
    history = world.ledger.subject_view(EMAIL)["history"]
    return [e for e in history if e["purpose"] == purpose and e["channel"] == "email"][-1]


def _events(world: HubWorld) -> int:
    with world.ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(consent_events)).scalar_one()


def _grant_on_the_page(world: HubWorld, people: TestClient) -> str:
    """Grant pressed on Ada's preference page (whoever holds the link); the page it leads to."""
    (uid,) = world.ledger.subject_uids_for_email(EMAIL)
    token = token_of(world, uid)
    response = people.post(
        f"/p/preferences/{token}/choose", data={**FORM, "action": "grant"}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    return str(people.get(response.headers["location"]).text)


def _use_gpc_for_the_newsletter(world: HubWorld) -> None:
    world.hub.settings = world.hub.settings.model_copy(update={"gpc_purposes": ["newsletter"]})


# -- 1. the GPC label ----------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["Sec-GPC: 1", "sec-gpc:1", " SEC-GPC :  1 ", "Sec-GPC\uff1a 1"])
@pytest.mark.parametrize("gpc_purpose", [False, True], ids=["other_purpose", "gpc_purpose"])
def test_a_withdrawal_labelled_as_the_signal_is_the_persons_own_no(
    world: HubWorld, people: TestClient, label: str, gpc_purpose: bool
) -> None:
    if gpc_purpose:  # the signal opts out of this very purpose: the label still proves nothing
        _use_gpc_for_the_newsletter(world)
    assert world.post("/consents", {**GRANT, "evidence_ref": "form:1"}).status_code == 201
    world.clock.advance(minutes=1)
    receipts = len(world.inbox.messages)
    answer = world.post("/consents", {**WITHDRAWAL, "evidence_ref": label})
    assert answer.status_code == 201, answer.text
    (entry,) = answer.json()["results"]
    assert "gpc" not in entry and entry["recorded"] == "withdrawn" and entry["record_id"]
    withdrawn = _newest(world)
    assert (withdrawn["status"], withdrawn["evidence_ref"]) == ("withdrawn", None)
    assert len(world.inbox.messages) == receipts + 1  # its receipt, as any withdrawal's
    assert _state(world)["contact"] is False

    world.clock.advance(minutes=1)
    confirmations = mails_with(world, "/p/confirm/")
    page = _grant_on_the_page(world, people)
    assert "We sent you a mail" in page and "Thank you: you agreed to" not in page
    assert mails_with(world, "/p/confirm/") == confirmations + 1
    assert _newest(world)["status"] == "withdrawn"
    assert _state(world)["contact"] is False


def test_a_grant_labelled_as_the_signal_is_refused_naming_the_field(world: HubWorld) -> None:
    before = _events(world)
    one = world.post("/consents", {**GRANT, "evidence_ref": "Sec-GPC: 1"})
    assert one.status_code == 422
    error = one.json()["error"]
    assert error.startswith("consents[0].evidence_ref: 'Sec-GPC: 1' is reserved") and "\n" not in error
    batch = {"consents": [WITHDRAWAL, {**GRANT, "evidence_ref": "sec-gpc: 1"}]}
    refused = world.post("/consents", batch)
    assert refused.status_code == 422 and refused.json()["error"].startswith("consents[1].evidence_ref: ")
    assert _events(world) == before  # nothing of either request, its withdrawal included


def test_the_signals_own_opt_out_through_the_api_may_still_be_consented_over(
    world: HubWorld, people: TestClient
) -> None:
    """CCPA regs § 7025(c)(3): the signal's opt-out alone (the header) is the browser's, and the
    person may consent despite it on their page at once."""
    _use_gpc_for_the_newsletter(world)
    assert world.post("/consents", GRANT).status_code == 201
    world.clock.advance(minutes=1)
    signalled = world.post("/consents", {**GRANT, "purpose": "profiling"}, **{"Sec-GPC": "1"})
    assert signalled.status_code == 201, signalled.text
    opt_outs = [r for r in signalled.json()["results"] if r.get("gpc")]
    assert [(r["purpose"], r["recorded"]) for r in opt_outs] == [("newsletter", "withdrawn")]
    assert _newest(world)["evidence_ref"] == "Sec-GPC: 1"
    world.clock.advance(minutes=1)
    confirmations = mails_with(world, "/p/confirm/")
    assert "Thank you: you agreed to" in _grant_on_the_page(world, people)
    assert mails_with(world, "/p/confirm/") == confirmations
    assert _state(world)["contact"] is True


def test_a_labelled_withdrawal_recorded_before_the_fix_is_the_persons_own(
    world: HubWorld, people: TestClient
) -> None:
    """What the ledger holds from before: a client's withdrawal labelled as the signal's, for a
    purpose the signal does not opt out of, recorded as the capture API recorded it then."""
    assert world.post("/consents", GRANT).status_code == 201
    world.clock.advance(minutes=1)
    now = world.clock()
    forged = Evidence.witnessed(
        now,
        purpose="newsletter",
        channel="email",
        status=ConsentStatus.WITHDRAWN,
        basis=None,
        source="web_form",
        origin=Origin.CAPTURE,
        actor="apikey:website",
        evidence_ref="Sec-GPC: 1",
    )
    world.ledger.record(Identity(email=EMAIL, says_no=True), forged)
    world.clock.advance(minutes=1)
    assert "We sent you a mail" in _grant_on_the_page(world, people)
    assert _state(world)["contact"] is False


# -- 2. a sign-up retried past its key's day ------------------------------------------------------


def _sign_up(world: HubWorld, body: dict[str, Any], key: str = "signup-42") -> Any:
    return world.post("/consents", body, **{"Idempotency-Key": key})


@pytest.mark.parametrize("no", ["withdrawn", "refused"])
def test_a_sign_up_retried_past_its_day_after_a_no_does_not_reverse_it(world: HubWorld, no: str) -> None:
    first = _sign_up(world, GRANT)
    assert first.status_code == 201, first.text
    world.clock.advance(minutes=1)
    assert world.post("/consents", {**WITHDRAWAL, "status": no}).status_code == 201
    world.clock.advance(minutes=1)
    replay = _sign_up(world, GRANT)  # within the day: the first answer again, nothing recorded
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json() == first.json()
    events = _events(world)

    world.clock.advance(seconds=PAST_THE_WINDOW.total_seconds())
    late = _sign_up(world, GRANT)
    assert late.status_code == 409, late.text
    error = late.json()["error"]
    assert "said no to 'newsletter' since" in error and "nothing was recorded" in error
    assert "\n" not in error and EMAIL not in error
    assert _events(world) == events
    assert _state(world)["contact"] is False and _newest(world)["status"] == no
    # Again later: the same answer, while the record is known.
    world.clock.advance(minutes=10)
    assert _sign_up(world, GRANT).status_code == 409
    # Another request under the key past its day is a new one, recorded as one.
    other = _sign_up(world, {**GRANT, "purpose": "profiling"})
    assert other.status_code == 201 and other.headers.get("Idempotent-Replayed") is None


def test_a_double_opt_in_sign_up_retried_past_its_day_after_an_objection_is_refused(world: HubWorld) -> None:
    sign_up = {**GRANT, "purpose": "email_marketing"}
    first = _sign_up(world, sign_up, key="dm-1")
    assert first.status_code == 201 and first.json()["results"][0]["recorded"] == "requested"
    world.clock.advance(minutes=1)
    objection = world.post("/objections", {"email": EMAIL, "purpose": "email_marketing"})
    assert objection.status_code == 201, objection.text
    world.clock.advance(seconds=PAST_THE_WINDOW.total_seconds())
    confirmations = mails_with(world, "/p/confirm/")
    late = _sign_up(world, sign_up, key="dm-1")
    assert late.status_code == 409 and "said no to 'email_marketing'" in late.json()["error"]
    assert mails_with(world, "/p/confirm/") == confirmations


def test_a_sign_up_retried_past_its_day_without_a_no_since_is_a_new_request(world: HubWorld) -> None:
    first = _sign_up(world, GRANT)
    world.clock.advance(seconds=PAST_THE_WINDOW.total_seconds())
    late = _sign_up(world, GRANT)
    assert late.status_code == 201 and late.headers.get("Idempotent-Replayed") is None
    assert late.json()["results"][0]["subject"] == first.json()["results"][0]["subject"]
    assert _state(world)["contact"] is True


def test_a_sign_up_retried_past_its_day_after_an_erasure_does_not_bring_the_person_back(
    world: HubWorld,
) -> None:
    assert _sign_up(world, GRANT).status_code == 201
    world.clock.advance(minutes=1)
    erased = world.post("/erasure-requests", {"email": EMAIL, "reason": "Art 17 request"})
    assert erased.status_code == 200, erased.text
    world.clock.advance(seconds=PAST_THE_WINDOW.total_seconds())
    late = _sign_up(world, GRANT)
    assert late.status_code == 410, late.text
    # Nobody holds the address again: the erased person is the only one.
    assert holders_of(world, EMAIL) == 0 and people_in_the_ledger(world) == 1
    assert _state(world)["contact"] is False


def test_past_the_upkeep_a_sign_up_sent_with_its_time_reverses_nothing(world: HubWorld) -> None:
    """The limit (docs/hub.md): once the upkeep deleted the key's record, the key is unknown and
    the retry is a new request. A sign-up sent with the time the person signed up is dated then,
    before their no, which stands."""
    signed_up = {**GRANT, "event_time": iso(world.clock())}
    assert _sign_up(world, signed_up).status_code == 201
    world.clock.advance(minutes=1)
    assert world.post("/consents", WITHDRAWAL).status_code == 201
    world.clock.advance(seconds=PAST_THE_WINDOW.total_seconds())
    world.hub.lapse_unconfirmed()  # the hub's upkeep
    with world.ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(capture_requests)).scalar_one() == 0
    late = _sign_up(world, signed_up)
    assert late.status_code == 201, late.text
    assert _state(world)["contact"] is False


@pytest.fixture
def dm_world(config_path: Path, clock: Any, inbox: Any) -> Iterator[HubWorld]:
    """The hub tests' world (``tests.hub.conftest.world``) with the newsletter flagged direct
    marketing, as a newsletter is."""
    handler, port = inbox
    hub_config(config_path, port)
    data = yaml.safe_load(config_path.read_text())
    for purpose in data["purposes"]:
        purpose["direct_marketing"] = purpose.get("direct_marketing") or purpose["key"] == "newsletter"
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(config_path)
    ledger = open_ledger(config, migrate=True)
    ledger.clock = clock
    ledger.sync_purposes()
    for purpose in ("newsletter", "email_marketing", "profiling"):
        notices.add(ledger, purpose, "2026-05", NEWSLETTER_NOTICE, in_effect_from=NOTICE_IN_EFFECT)
    _key, secret = keys.create(ledger, "website", source="web_form", purposes=["*"], actions=["*"])
    hub = Hub(config, ledger)
    with TestClient(create_app(hub)) as client:
        yield HubWorld(hub, ledger, client, handler, clock, secret)
    ledger.engine.dispose()


@pytest.mark.parametrize("flagged", [True, False], ids=["direct_marketing", "email_marketing_only"])
def test_a_sign_up_retried_past_its_day_after_an_objection_to_direct_marketing_is_refused(
    dm_world: HubWorld, flagged: bool
) -> None:
    """An objection to direct marketing binds every purpose serving it (Art. 21(3)), the
    newsletter included, whichever purpose it was raised to (email marketing serves it: the
    ledger makes it one to all direct marketing); the retry of the newsletter's sign-up would
    lift it."""
    world = dm_world
    assert _sign_up(world, GRANT).status_code == 201
    world.clock.advance(minutes=1)
    body = {"email": EMAIL, "purpose": "email_marketing", **({"direct_marketing": True} if flagged else {})}
    assert world.post("/objections", body).status_code == 201
    assert _state(world)["contact"] is False
    world.clock.advance(seconds=PAST_THE_WINDOW.total_seconds())
    late = _sign_up(world, GRANT)
    assert late.status_code == 409 and "said no to 'newsletter'" in late.json()["error"]
    assert _state(world)["contact"] is False


def test_a_sign_up_retried_past_its_day_after_the_person_consented_again_is_a_new_request(
    world: HubWorld,
) -> None:
    """The person withdrew, then consented again themselves: no no stands for the retry to undo."""
    assert _sign_up(world, GRANT).status_code == 201
    world.clock.advance(minutes=1)
    assert world.post("/consents", WITHDRAWAL).status_code == 201
    world.clock.advance(minutes=1)
    assert world.post("/consents", GRANT).status_code == 201
    assert _state(world)["contact"] is True
    world.clock.advance(seconds=PAST_THE_WINDOW.total_seconds())
    assert _sign_up(world, GRANT).status_code == 201


def test_a_sign_up_retried_past_its_day_after_a_rejected_objection_is_a_new_request(world: HubWorld) -> None:
    """An objection the controller rejected (compelling grounds, Art. 21(1)) is no no of the
    person's in force: the retry reverses nothing."""
    profiling = {**GRANT, "purpose": "profiling"}
    assert _sign_up(world, profiling, key="prof-1").status_code == 201
    world.clock.advance(minutes=1)
    objection = world.post("/objections", {"email": EMAIL, "purpose": "profiling"})
    assert objection.status_code == 201, objection.text
    world.clock.advance(minutes=1)
    world.ledger.decide_objection(objection.json()["id"], uphold=False, by="dpo", reason="compelling grounds")
    world.clock.advance(seconds=PAST_THE_WINDOW.total_seconds())
    assert _sign_up(world, profiling, key="prof-1").status_code == 201
