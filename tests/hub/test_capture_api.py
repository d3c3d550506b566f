"""The capture API from a capture source's side: keys and scopes, consents recorded once however
often retried, double opt-in through a real SMTP server, GPC, objections, erasure, and the
decision a sending tool asks for; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

from consentsync.hub import keys
from tests.hub.conftest import HubWorld

GRANT = {
    "email": "Ada@Example.test",
    "purpose": "newsletter",
    "status": "granted",
    "notice_version": "2026-05",
}


def decision(world: HubWorld, email: str, purpose: str = "newsletter", channel: str = "email") -> Any:
    response = world.post("/decisions", {"email": email, "purpose": purpose, "channel": channel})
    assert response.status_code == 200, response.text
    return response.json()


def history(world: HubWorld, email: str) -> list[dict[str, Any]]:
    return list(world.ledger.subject_view(email)["history"])


def test_without_a_valid_key_nothing_is_recorded(world: HubWorld) -> None:
    for headers in ({}, {"Authorization": "Bearer csk_wrong"}, {"Authorization": "Basic x"}):
        response = world.client.post("/consents", json=GRANT, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
    keys.revoke(world.ledger, "website")
    assert world.post("/consents", GRANT).status_code == 401
    assert world.ledger.subject_uids_for_email("ada@example.test") == []


def test_a_key_is_held_to_its_actions_and_purposes(world: HubWorld) -> None:
    _key, sender = keys.create(
        world.ledger, "mailer", source="esp", purposes=["newsletter"], actions=["decisions"]
    )
    refused = world.post("/consents", GRANT, secret=sender)
    assert refused.status_code == 403 and "may not record consents" in refused.json()["error"]
    assert (
        world.post(
            "/decisions", {"email": "x@example.test", "purpose": "profiling"}, secret=sender
        ).status_code
        == 403
    )
    assert (
        world.post(
            "/decisions", {"email": "x@example.test", "purpose": "newsletter"}, secret=sender
        ).status_code
        == 200
    )
    _key, form = keys.create(
        world.ledger, "form", source="web_form", purposes=["profiling"], actions=["consents"]
    )
    outside = world.post("/consents", GRANT, secret=form)
    assert outside.status_code == 403 and "consents[0].purpose" in outside.json()["error"]


def test_a_grant_names_a_registered_notice_and_bad_input_names_its_field(world: HubWorld) -> None:
    cases = [
        ({**GRANT, "notice_version": None}, "consents[0].notice_version: a grant must name"),
        ({**GRANT, "notice_version": "1999"}, "not a registered notice"),
        ({**GRANT, "email": "not-an-address"}, "consents[0].email"),
        ({**GRANT, "purpose": "nope"}, "consents[0].purpose: unknown purpose 'nope'"),
        ({**GRANT, "channel": "fax"}, "consents[0]: channel 'fax'"),
        ({**GRANT, "status": "maybe"}, "status"),
        ({**GRANT, "event_time": "2030-01-01T00:00:00+00:00"}, "event time"),
        # No offset: hours from the truth anywhere but UTC; the field says what it lacks.
        ({**GRANT, "event_time": "2026-05-01T11:00:00"}, "event_time: Input should have timezone info"),
        # A number is no time: pydantic took it for Unix seconds (123: a grant of 1970).
        (
            {**GRANT, "event_time": 123},
            "event_time: Value error, accepted is an ISO 8601 time with its offset",
        ),
        ({**GRANT, "event_time": 1780000000.5}, "accepted is an ISO 8601 time"),
        ({**GRANT, "surprise": 1}, "surprise"),
    ]
    for body, message in cases:
        response = world.post("/consents", body)
        assert response.status_code == 422, (body, response.text)
        assert message in response.json()["error"], (message, response.text)
    # One bad item refuses the whole batch: the good one before it is not recorded either.
    batch = {"consents": [GRANT, {**GRANT, "email": "bob@example.test", "notice_version": "nope"}]}
    response = world.post("/consents", batch)
    assert response.status_code == 422 and "consents[1].notice_version" in response.json()["error"]
    assert world.ledger.subject_uids_for_email("ada@example.test") == []


def test_a_retried_capture_records_once_and_gets_the_first_answer(world: HubWorld) -> None:
    first = world.post("/consents", GRANT, **{"Idempotency-Key": "form-42"})
    assert first.status_code == 201
    assert first.json()["results"][0]["state"]["status"] == "granted"
    world.clock.advance(seconds=30)  # a retry later: "now" differs, the answer must not
    again = world.post("/consents", GRANT, **{"Idempotency-Key": "form-42"})
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(history(world, "ada@example.test")) == 1
    other = world.post("/consents", {**GRANT, "status": "withdrawn"}, **{"Idempotency-Key": "form-42"})
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["error"]
    # Without the header, a second grant at another time is a second statement.
    assert world.post("/consents", GRANT).status_code == 201
    assert len(history(world, "ada@example.test")) == 2


def test_the_decision_follows_the_ledger(world: HubWorld) -> None:
    unknown = decision(world, "ada@example.test")
    assert unknown == {**unknown, "contact": False, "known": False, "rule": "no_consent_on_record"}
    world.post("/consents", GRANT)
    granted = decision(world, "ADA@example.test ")
    assert granted["contact"] is True and granted["status"] == "granted" and granted["known"] is True
    world.clock.advance(minutes=1)
    world.post("/consents", {**GRANT, "status": "withdrawn"})
    assert decision(world, "ada@example.test")["contact"] is False
    world.clock.advance(minutes=1)
    # The withdrawal is sticky against a re-grant from an untrusted source ...
    _key, shop = keys.create(
        world.ledger, "shop", source="shop_checkout", purposes=["*"], actions=["consents"]
    )
    world.post("/consents", GRANT, secret=shop)
    assert decision(world, "ada@example.test")["rule"] == "sticky_withdrawal"
    # ... and a legitimate-interests purpose allows contact until the person objects.
    assert decision(world, "ada@example.test", "profiling")["contact"] is True
    objection = world.post("/objections", {"email": "ada@example.test", "purpose": "profiling"})
    assert objection.status_code == 201
    assert decision(world, "ada@example.test", "profiling")["contact"] is False


def test_an_erasure_request_suppresses_the_address_for_good(world: HubWorld) -> None:
    world.post("/consents", GRANT)
    erased = world.post("/erasure-requests", {"email": "ada@example.test", "reason": "asked on the phone"})
    assert erased.status_code == 200 and erased.json()["subject_known"] is True
    after = decision(world, "ada@example.test")
    assert after["contact"] is False and after["rule"] == "erasure_suppression" and after["known"] is False
    # A grant from a source that is not trusted cannot revive contact: it is refused, and the
    # suppression holds (tests/hub/test_capture_untrusted_grant_after_erasure.py) ...
    world.clock.advance(minutes=1)
    _key, shop = keys.create(
        world.ledger, "shop", source="shop_checkout", purposes=["*"], actions=["consents"]
    )
    assert world.post("/consents", GRANT, secret=shop).status_code == 409
    assert decision(world, "ada@example.test")["rule"] == "erasure_suppression"
    # ... only the person's own new consent, evidenced, from a trusted capture source does.
    world.clock.advance(minutes=1)
    world.post("/consents", GRANT)
    again = decision(world, "ada@example.test")
    assert again["contact"] is True and again["rule"] == "latest_event_time"
    refused = world.post(
        "/erasure-requests", {"email": "bob@example.test", "reason": "bob@example.test asked"}
    )
    assert refused.status_code == 422


def test_a_gpc_signal_opts_out_of_the_configured_purposes(world: HubWorld) -> None:
    assert decision(world, "ada@example.test", "profiling")["contact"] is True
    response = world.post("/consents", GRANT, **{"Sec-GPC": "1"})
    assert response.status_code == 201
    gpc = [r for r in response.json()["results"] if r.get("gpc")]
    assert [(r["purpose"], r["recorded"]) for r in gpc] == [("profiling", "withdrawn")] * len(gpc) and gpc
    assert decision(world, "ada@example.test", "profiling")["contact"] is False
    assert decision(world, "ada@example.test", "newsletter")["contact"] is True
    events = [e for e in history(world, "ada@example.test") if e["purpose"] == "profiling"]
    assert events and all(e["evidence_ref"] == "Sec-GPC: 1" for e in events)


def test_double_opt_in_grants_only_when_the_mailed_link_is_followed(world: HubWorld) -> None:
    body = {**GRANT, "purpose": "email_marketing"}
    response = world.post("/consents", body)
    assert response.status_code == 201
    result = response.json()["results"][0]
    assert result["recorded"] == "requested" and result["confirmation"] == "queued"
    assert decision(world, "ada@example.test", "email_marketing")["contact"] is False
    assert len(world.inbox.messages) == 1
    mail = world.inbox.messages[0]
    assert mail["To"] == "ada@example.test" and "Email marketing" in mail["Subject"]
    assert "Globex privacy" in mail["From"]
    link = world.inbox.link("/p/confirm/")
    token = link.rsplit("/", 1)[1]
    assert world.hub.pending_confirmation(token)["purpose"] == "email_marketing"
    world.clock.advance(hours=2)
    assert world.hub.confirm(token)["already"] is False
    granted = decision(world, "ada@example.test", "email_marketing")
    assert granted["contact"] is True and granted["status"] == "granted"
    confirmed = history(world, "ada@example.test")[-1]
    assert confirmed["source"] == "double_opt_in" and confirmed["double_opt_in_at"] == granted["since"]
    assert confirmed["notice_version"] == "2026-05"
    assert world.hub.confirm(token)["already"] is True
    assert len(history(world, "ada@example.test")) == 2


def test_an_unconfirmed_double_opt_in_lapses(world: HubWorld) -> None:
    from consentsync.hub.links import LinkRefused

    world.post("/consents", {**GRANT, "purpose": "email_marketing"})
    token = world.inbox.link("/p/confirm/").rsplit("/", 1)[1]
    world.clock.advance(days=8)
    assert world.hub.lapse_unconfirmed() == 1
    try:
        world.hub.confirm(token)
    except LinkRefused as refused:
        assert "expired" in str(refused)
    else:
        raise AssertionError("a lapsed confirmation link granted consent")
    assert decision(world, "ada@example.test", "email_marketing")["contact"] is False


def test_each_key_has_its_rate(world: HubWorld) -> None:
    _key, slow = keys.create(
        world.ledger, "slow", source="web_form", purposes=["*"], actions=["decisions"], rate_per_minute=2
    )
    ask = {"email": "ada@example.test", "purpose": "newsletter"}
    assert [world.post("/decisions", ask, secret=slow).status_code for _ in range(2)] == [200, 200]
    limited = world.post("/decisions", ask, secret=slow)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert world.post("/decisions", ask).status_code == 200  # another key is not limited by it


def test_the_api_is_documented(world: HubWorld) -> None:
    spec = world.client.get("/openapi.json").json()
    assert {"/consents", "/objections", "/erasure-requests", "/decisions"} <= set(spec["paths"])


def test_every_grant_and_withdrawal_gets_a_receipt(world: HubWorld) -> None:
    granted = world.post("/consents", GRANT).json()["results"][0]
    (mail,) = world.inbox.messages
    assert mail["To"] == "ada@example.test" and "receipt" in mail["Subject"].lower()
    (attachment,) = [part for part in mail.iter_attachments()]
    receipt = json.loads(attachment.get_content())
    assert receipt["schema_version"].startswith("ISO/IEC TS 27560")
    assert receipt["pii_principal_id"] == granted["subject"] and "ada@" not in json.dumps(receipt)
    assert receipt["record_id"] == granted["record_id"]
    assert receipt["notice"]["version"] == "2026-05" and len(receipt["notice"]["content_sha256"]) == 64
    assert receipt["purposes"][0]["legal_basis"] == "consent"
    assert receipt["events"][0]["event_state"] == "given"
    assert receipt["events"][0]["collection_method"] == "web_form"
    assert receipt["pii_controller"]["name"] == "Globex privacy"
    # The same receipt can be fetched later by the capture source.
    fetched = world.client.get(f"/receipts/{granted['subject']}/{granted['record_id']}", headers=world.auth())
    assert fetched.status_code == 200
    assert {k: v for k, v in fetched.json().items() if k != "receipt_timestamp"} == {
        k: v for k, v in receipt.items() if k != "receipt_timestamp"
    }
    assert world.client.get(f"/receipts/{granted['subject']}/nope", headers=world.auth()).status_code == 404
    world.clock.advance(minutes=1)
    world.post("/consents", {**GRANT, "status": "withdrawn"})
    withdrawn = json.loads(next(world.inbox.messages[-1].iter_attachments()).get_content())
    assert withdrawn["events"][0]["event_state"] == "withdrawn"
    assert withdrawn["receipt_id"] != receipt["receipt_id"]
    # A replayed capture mails nothing more.
    world.post("/consents", GRANT, **{"Idempotency-Key": "k1"})
    count = len(world.inbox.messages)
    world.post("/consents", GRANT, **{"Idempotency-Key": "k1"})
    assert len(world.inbox.messages) == count
