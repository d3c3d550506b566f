"""HubSpot's new merges (a new contact with a new id; both old ids point to it) as the connector
reads them over HTTPS from the sandbox: each original once, merged into the new contact, never
also as a plain deletion; with its last values where HubSpot lists it archived; found by a read
of its id when the merged contact's stamp lies outside the window. The old kind (the primary
keeps its id) reads as before."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.sandbox.harness import HubSpotHarness

from consentsync.sdk import Cursor
from tests.connectors.against_sandbox import read_until

FIELDS = ["email", "jobtitle", "subscription_1001"]


def _connector(merging_hubspot: HubSpotHarness) -> HubSpotConnector:
    return HubSpotConnector("hs-test", merging_hubspot.connector_settings())


def _gone(merging_hubspot: HubSpotHarness, fields: list[str] | None = None, **window: Any) -> list[Any]:
    since, until = window.get("since", Cursor()), window.get("until", read_until())
    return list(_connector(merging_hubspot).read_deletions("contacts", since, until, fields or []))


def test_the_sandbox_merges_into_a_new_contact_that_both_old_ids_answer(
    merging_hubspot: HubSpotHarness,
) -> None:
    portal = merging_hubspot.sandbox.portal
    first, second = merging_hubspot.seed(2)
    emails = [portal.get(first)["email"], portal.get(second)["email"]]
    session = merging_hubspot.sandbox.requests_session()
    session.headers["Authorization"] = f"Bearer {merging_hubspot.sandbox.credentials.access_token}"
    base = f"{merging_hubspot.sandbox.api_url}/crm/v3/objects/contacts"
    answer = session.post(f"{base}/merge", json={"primaryObjectId": first, "objectIdToMerge": second}).json()
    new_id = answer["id"]
    assert new_id not in (first, second)
    assert answer["properties"]["hs_merged_object_ids"] == f"{first};{second}"
    for old in (first, second):
        got = session.get(f"{base}/{old}", params={"properties": "email"}).json()
        assert got["id"] == new_id and got["properties"]["email"] == emails[0], "the primary's address"
    assert portal.get(new_id)["hs_additional_emails"] == emails[1]
    archived = session.get(base, params={"archived": "true"}).json()["results"]
    assert sorted(r["id"] for r in archived) == sorted([first, second])


@pytest.mark.parametrize(
    "merging_hubspot", [{}, {"merged_archived": False}], indirect=True, ids=["archived", "unlisted"]
)
def test_each_original_is_reported_once_merged_into_the_new_contact(merging_hubspot: HubSpotHarness) -> None:
    portal = merging_hubspot.sandbox.portal
    ids = merging_hubspot.seed(4)
    base = portal.now() - dt.timedelta(minutes=5)
    portal.archive(ids[3], at=base + dt.timedelta(seconds=1))
    new_id = portal.merge(ids[0], ids[1], at=base + dt.timedelta(seconds=2))["hs_object_id"]
    gone = _gone(merging_hubspot)
    assert [(r.record_id, r.deleted, r.merged_into) for r in gone] == [
        (ids[3], True, None),
        (ids[0], True, new_id),
        (ids[1], True, new_id),
    ]


def test_an_archived_original_comes_with_its_last_values(merging_hubspot: HubSpotHarness) -> None:
    """The other contact unsubscribed just before the merge, no sync in between: its last
    values carry the no (the merged contact shows the primary's address, which said nothing)."""
    portal = merging_hubspot.sandbox.portal
    primary, other = merging_hubspot.seed(2)
    merging_hubspot.opt_out(other)
    new_id = portal.merge(primary, other)["hs_object_id"]
    gone = {r.record_id: r for r in _gone(merging_hubspot, FIELDS)}
    assert set(gone) == {primary, other}
    assert gone[other].merged_into == gone[primary].merged_into == new_id
    assert gone[other].fields["subscription_1001"] == "UNSUBSCRIBED"
    assert gone[other].fields["email"] == portal.archived_one(other)["email"]


def test_a_merge_whose_new_contact_changed_after_the_window_is_found_by_reading_the_old_id(
    merging_hubspot: HubSpotHarness,
) -> None:
    """The merged contact was edited after the read's upper bound: no search of the window
    finds it, but the originals are archived in the window, and a read of their ids answers the
    new contact. A contact merely deleted answers 404 and stays a deletion."""
    portal = merging_hubspot.sandbox.portal
    ids = merging_hubspot.seed(3)
    base = portal.now() - dt.timedelta(minutes=5)
    new_id = portal.merge(ids[0], ids[1], at=base)["hs_object_id"]
    portal.archive(ids[2], at=base + dt.timedelta(seconds=1))
    portal.update(new_id, {"jobtitle": "edited later"})
    gone = _gone(merging_hubspot, until=base + dt.timedelta(seconds=2))
    assert [(r.record_id, r.merged_into) for r in gone] == [
        (ids[0], new_id),
        (ids[1], new_id),
        (ids[2], None),
    ]


def test_merges_of_merges_name_the_contact_that_stands_now_once_each(merging_hubspot: HubSpotHarness) -> None:
    portal = merging_hubspot.sandbox.portal
    ids = merging_hubspot.seed(3)
    base = portal.now() - dt.timedelta(minutes=5)
    middle = portal.merge(ids[0], ids[1], at=base)["hs_object_id"]
    last = portal.merge(ids[2], middle, at=base + dt.timedelta(seconds=1))["hs_object_id"]
    gone = _gone(merging_hubspot)
    assert sorted((r.record_id, r.merged_into) for r in gone) == sorted(
        (old, last) for old in (ids[0], ids[1], ids[2], middle)
    )
    assert len(gone) == len({r.record_id for r in gone})


@pytest.mark.parametrize("merging_hubspot", [{"merges": "old"}], indirect=True)
def test_the_old_kind_reads_as_before(merging_hubspot: HubSpotHarness) -> None:
    portal = merging_hubspot.sandbox.portal
    ids = merging_hubspot.seed(3)
    base = portal.now() - dt.timedelta(minutes=5)
    portal.merge(ids[0], ids[1], at=base)
    portal.archive(ids[2], at=base + dt.timedelta(seconds=1))
    gone = _gone(merging_hubspot, FIELDS)
    assert [(r.record_id, r.merged_into) for r in gone] == [(ids[1], ids[0]), (ids[2], None)]
    assert gone[0].fields == {}, "a merged-away id of the old kind has no values of its own left"
    assert portal.get(ids[0]) is not None, "the primary kept its id"
