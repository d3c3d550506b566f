"""A Global Privacy Control signal sent as ``"gpc": true`` on one consent sent alone (regulatory
tester, finding B). docs/hub.md says 'A ``Sec-GPC: 1`` header, or ``"gpc": true``' records the
opt-out, but only the batch body (``{"consents": [...], "gpc": true}``) took the flag: one
consent with it was refused with 422 ``gpc: Extra inputs are not permitted``, and the grant it
came with was lost with it. Now the single body takes it, with exactly the batch's meaning: the
same answer, the same opt-outs recorded (withdrawn, evidence ``Sec-GPC: 1``, every purpose in
``hub.gpc_purposes``), the same idempotency (the signal is part of the request). A batch's items
still do not take it: the signal is the request's, not one consent's. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from consentsync.hub.capture import GPC_EVIDENCE
from tests.hub.conftest import HubWorld

GRANT = {
    "email": "gpc-one@example.test",
    "purpose": "newsletter",
    "status": "granted",
    "notice_version": "2026-05",
}


def _states(world: HubWorld, email: str) -> dict[tuple[str, str], tuple[str, str | None]]:
    """Per purpose and channel: the status and the evidence reference of what decided it."""
    view = world.ledger.subject_view(email)
    found: dict[tuple[str, str], tuple[str, str | None]] = {}
    for event in view["history"]:
        found[(event["purpose"], event["channel"])] = (event["status"], event["evidence_ref"])
    return found


def _results(answer: Any) -> list[tuple[str, str, Any, Any]]:
    """What an answer says was recorded, without the ids (the subject's uid, the record id)."""
    return [
        (result["purpose"], result["channel"], result["recorded"], result.get("gpc"))
        for result in answer.json()["results"]
    ]


def test_the_testers_repro_gpc_on_one_consent_records_the_grant_and_the_opt_out(world: HubWorld) -> None:
    answer = world.post("/consents", {**GRANT, "gpc": True})
    assert answer.status_code == 201, answer.text
    states = _states(world, GRANT["email"])
    assert states[("newsletter", "email")] == ("granted", None)
    # The opt-out of every GPC purpose (the world's: profiling), on each of its channels.
    assert states[("profiling", "email")] == ("withdrawn", GPC_EVIDENCE)
    contact = world.post("/decisions", {"email": GRANT["email"], "purpose": "profiling"}).json()
    assert contact["contact"] is False and contact["status"] == "withdrawn"


def test_gpc_on_one_consent_means_what_it_means_on_a_batch(world: HubWorld) -> None:
    alone = world.post("/consents", {**GRANT, "gpc": True})
    other = {**GRANT, "email": "gpc-batch@example.test"}
    batch = world.post("/consents", {"consents": [other], "gpc": True})
    assert alone.status_code == batch.status_code == 201, (alone.text, batch.text)
    assert _results(alone) == _results(batch)
    assert any(gpc for *_, gpc in _results(alone))  # the opt-out is in the answer
    assert set(_states(world, GRANT["email"]).values()) == set(_states(world, other["email"]).values())


def test_gpc_false_on_one_consent_is_no_signal(world: HubWorld) -> None:
    answer = world.post("/consents", {**GRANT, "gpc": False})
    assert answer.status_code == 201, answer.text
    assert ("profiling", "email") not in _states(world, GRANT["email"])
    # And it is the same request as one without the flag: a retry of either replays the other.
    again = world.post("/consents", GRANT, **{"Idempotency-Key": "gpc-k"})
    replay = world.post("/consents", {**GRANT, "gpc": False}, **{"Idempotency-Key": "gpc-k"})
    assert again.status_code == replay.status_code == 201
    assert replay.headers.get("Idempotent-Replayed") == "true"


def test_the_signal_added_on_a_retry_is_another_request_never_a_replay(world: HubWorld) -> None:
    first = world.post("/consents", GRANT, **{"Idempotency-Key": "form-gpc"})
    assert first.status_code == 201
    again = world.post("/consents", {**GRANT, "gpc": True}, **{"Idempotency-Key": "form-gpc"})
    assert again.status_code == 409 and "Idempotency-Key" in again.json()["error"]
    assert ("profiling", "email") not in _states(world, GRANT["email"])


def test_a_batch_item_still_does_not_take_the_request_signal(world: HubWorld) -> None:
    refused = world.post("/consents", {"consents": [{**GRANT, "gpc": True}]})
    assert refused.status_code == 422
    assert refused.json()["error"].startswith("consents[0].gpc: ")
    assert world.ledger.subject_uids_for_email(GRANT["email"]) == []


def test_the_spec_documents_gpc_on_one_consent(world: HubWorld) -> None:
    spec = world.client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    body = spec["paths"]["/consents"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    shapes = [schemas[ref["$ref"].rsplit("/", 1)[1]] for ref in body.get("oneOf", body.get("anyOf", []))]
    assert len(shapes) == 2 and all(shape["properties"]["gpc"]["type"] == "boolean" for shape in shapes)
