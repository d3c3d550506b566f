"""The HubSpot sandbox keeps each contact's ``email`` history and answers it to a batch read's
``propertiesWithHistory`` (newest first: value, timestamp, sourceType); the opt-out properties
follow a contact's address (HubSpot keys subscription statuses by address); a batch read of a
merged-away id answers the merged contact under its new id (HubSpot's changelog "Updated merge
functionality for contacts and companies")."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from consentsync_hubspot.sandbox.server import HubSpotSandbox, iso_ms


@pytest.fixture
def sandbox() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox() as made:
        yield made


def _api(sandbox: HubSpotSandbox) -> requests.Session:
    session = sandbox.requests_session()
    session.headers["Authorization"] = f"Bearer {sandbox.credentials.access_token}"
    return session


def _batch_read(sandbox: HubSpotSandbox, ids: list[str], **extra: Any) -> dict[str, Any]:
    response = _api(sandbox).post(
        f"{sandbox.api_url}/crm/v3/objects/contacts/batch/read",
        json={"inputs": [{"id": i} for i in ids], "properties": ["email"], **extra},
    )
    assert response.status_code in (200, 207), response.text
    return response.json()


def test_a_batch_read_answers_the_email_history_newest_first(sandbox: HubSpotSandbox) -> None:
    portal = sandbox.portal
    base = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
    contact = portal.create({"email": "a@example.test"}, at=base, via="import")
    portal.update(contact, {"email": "b@example.test"}, at=base + dt.timedelta(days=1))
    portal.update(contact, {"firstname": "Ada"}, at=base + dt.timedelta(days=2))  # no new version
    portal.api_update(contact, {"email": "c@example.test"})
    (item,) = _batch_read(sandbox, [contact], propertiesWithHistory=["email"])["results"]
    versions = item["propertiesWithHistory"]["email"]
    assert [(v["value"], v["sourceType"]) for v in versions] == [
        ("c@example.test", "API"),
        ("b@example.test", "CRM_UI"),
        ("a@example.test", "IMPORT"),
    ]
    assert versions[1]["timestamp"] == iso_ms(base + dt.timedelta(days=1))
    assert item["properties"]["email"] == "c@example.test"
    assert "propertiesWithHistory" not in _batch_read(sandbox, [contact])["results"][0]


def test_the_opt_out_properties_follow_the_address(sandbox: HubSpotSandbox) -> None:
    portal = sandbox.portal
    contact = portal.create({"email": "a@example.test"})
    portal.set_status("a@example.test", "1001", "UNSUBSCRIBED")
    portal.unsubscribe_all("a@example.test")
    portal.set_status("b@example.test", "1002", "UNSUBSCRIBED")
    portal.update(contact, {"email": "b@example.test"})
    record = portal.get(contact) or {}
    assert (record["hs_email_optout"], record["hs_email_optout_1001"]) == ("false", "false")
    assert record["hs_email_optout_1002"] == "true"
    portal.update(contact, {"email": "a@example.test"})
    record = portal.get(contact) or {}
    assert (record["hs_email_optout"], record["hs_email_optout_1001"]) == ("true", "true")


def test_a_merged_away_id_answers_the_merged_contact_with_its_new_id(sandbox: HubSpotSandbox) -> None:
    portal = sandbox.portal
    first = portal.create({"email": "a@example.test"})
    second = portal.create({"email": "b@example.test"})
    merged = str(portal.merge(first, second)["hs_object_id"])
    answer = _batch_read(sandbox, [first, second, merged])
    assert [item["id"] for item in answer["results"]] == [merged]
    assert "errors" not in answer
    gone = portal.create({"email": "c@example.test"})
    portal.archive(gone)
    answer = _batch_read(sandbox, [gone])
    assert answer["results"] == [] and answer["errors"][0]["context"]["ids"] == [gone]
