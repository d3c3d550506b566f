"""HubSpot merges contacts the new way (its changelog "Updated merge functionality for contacts
and companies"): a new contact with a new id is made of both, both old ids point to it. Through
the real connector and sync engine against the sandbox over HTTPS: a no on either original
reaches the person of the merged contact, each original is reported merged once (never also as
a plain deletion), and nobody is made twice. The old kind (the primary keeps its id), which
older portals' histories hold, still passes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from sqlalchemy import func, select

from consentsync import audit
from consentsync.ledger.schema import crm_links, subjects
from consentsync.sdk.harness import open_sync_engine, write_sync_config

SAID_NO = "said.no@example.test"
SILENT = "said.nothing@example.test"


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> Iterator[HubSpotHarness]:
    made = HubSpotHarness(**getattr(request, "param", {}))
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _marketing(engine: Any, email: str) -> dict[str, Any]:
    view = engine.ledger.subject_view(email)
    return next(s for s in view["purposes"] if (s["purpose"], s["channel"]) == ("email_marketing", "email"))


def _ledger(config: Path) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """People, links by record id, and the audit's deletion and merge entries."""
    engine = open_sync_engine(config)
    with engine.ledger.engine.connect() as conn:
        people = int(conn.execute(select(func.count()).select_from(subjects)).scalar_one())
        links = {row.record_id: row for row in conn.execute(select(crm_links)).all()}
        gone = [
            {"action": action, **entry["what"]}
            for action in ("crm.record_merged", "crm.record_deleted")
            for entry in audit.entries(conn, action=action)
        ]
    engine.ledger.engine.dispose()
    return people, links, gone


def _say_no(harness: HubSpotHarness, record_id: str, how: str) -> None:
    if how == "unsubscribe":
        harness.opt_out(record_id)  # the preferences page: Marketing Information UNSUBSCRIBED
    else:
        harness.sandbox.portal.unsubscribe_all(str(harness.stored(record_id)["email"]))


def _shows_no(harness: HubSpotHarness, record_id: str) -> bool:
    """The contact's address is unsubscribed from marketing, or opted out of all email."""
    email = str(harness.stored(record_id)["email"])
    return harness.read_opted_out(record_id) or harness.sandbox.portal.opted_out_of_all(email) is not None


def _merge(harness: HubSpotHarness, primary: str, merged: str, kind: str) -> str:
    """Merges as HubSpot does (new) or did (old): the id of the contact that results."""
    if kind == "new":
        return harness.merge_into_new(primary, merged)
    harness.sandbox.portal.merge(primary, merged, new_record=False)
    return primary


@pytest.mark.parametrize("how", ["unsubscribe", "opt_out_of_all"])
@pytest.mark.parametrize("primary_said_no", [True, False], ids=["no_on_primary", "no_on_other"])
@pytest.mark.parametrize(
    ("kind", "harness"),
    [
        ("new", {"merges": "new"}),
        ("new", {"merges": "new", "merged_archived": False}),
        ("old", {"merges": "old"}),
    ],
    ids=["new", "new_not_archived", "old"],
    indirect=["harness"],
)
def test_a_no_on_either_original_reaches_the_merged_contacts_person(
    harness: HubSpotHarness, tmp_path: Path, kind: str, primary_said_no: bool, how: str
) -> None:
    """Both contacts synced, one said no; a user merges them (either as primary). After the
    next sync the merged contact's person is suppressed and the contact shows the no; each
    original is reported merged into the merged contact once, never as a plain deletion; no
    third person is made for the merged contact."""
    said_no = harness.create_person(SAID_NO)
    silent = harness.create_person(SILENT)
    _say_no(harness, said_no, how)
    config = write_sync_config(harness, tmp_path)
    first = open_sync_engine(config).run(full=True)
    assert first.status == "succeeded", first.error
    people_before, _, _ = _ledger(config)
    assert people_before == 2
    time.sleep(1.1)
    primary, other = (said_no, silent) if primary_said_no else (silent, said_no)
    survivor = _merge(harness, primary, other, kind)
    time.sleep(1.1)
    engine = open_sync_engine(config)
    run = engine.run()
    assert run.status == "succeeded", run.error
    people, links, gone = _ledger(config)
    assert people == people_before, "the merged contact was read into a person of its own"
    owner = links[survivor].subject_id
    survivor_email = str(harness.stored(survivor)["email"])
    state = _marketing(engine, survivor_email)
    assert (state["status"], state["suppressed"]) == ("withdrawn", True), state
    assert _shows_no(harness, survivor), "the no did not reach the merged contact"
    originals = [said_no, silent] if kind == "new" else [other]
    for original in originals:
        assert links[original].gone_at is not None and links[original].merged_into == survivor
    assert links[survivor].gone_at is None
    assert sorted((g["action"], g["record"], g["merged_into"]) for g in gone) == sorted(
        ("crm.record_merged", original, survivor) for original in originals
    ), "each original is reported merged once, and never as a plain deletion"
    assert owner in {links[said_no].subject_id, links[silent].subject_id}
    # Nothing more happens on the next run.
    time.sleep(1.1)
    assert open_sync_engine(config).run().status == "succeeded"
    assert _ledger(config)[2] == gone


@pytest.mark.parametrize("primary_said_no", [True, False], ids=["no_on_primary", "no_on_other"])
@pytest.mark.parametrize("harness", [{"merges": "new"}], indirect=True)
def test_merged_before_any_sync_one_person_keeps_the_no(
    harness: HubSpotHarness, tmp_path: Path, primary_said_no: bool
) -> None:
    """The two contacts are merged the new way before consentsync ever read them, the no on
    one of them: the first sync makes one person, withdrawn and suppressed, and the merged
    contact shows the no. (HubSpot keeps the originals archived with their values, as the
    sandbox assumes by default: the no on the one whose address the merged contact does not
    keep comes from there.)"""
    said_no = harness.create_person(SAID_NO, opted_out=True)
    silent = harness.create_person(SILENT)
    primary, other = (said_no, silent) if primary_said_no else (silent, said_no)
    survivor = harness.merge_into_new(primary, other)
    time.sleep(1.1)
    config = write_sync_config(harness, tmp_path)
    engine = open_sync_engine(config)
    run = engine.run(full=True)
    assert run.status == "succeeded", run.error
    people, links, gone = _ledger(config)
    assert people == 1, "one person, whichever contact was the primary"
    survivor_email = str(harness.stored(survivor)["email"])
    state = _marketing(engine, survivor_email)
    assert (state["status"], state["suppressed"]) == ("withdrawn", True), state
    assert _shows_no(harness, survivor), "the no did not reach the merged contact"
    assert links[survivor].gone_at is None
    assert {rid for rid, row in links.items() if rid != survivor} <= {said_no, silent}
    assert all(row.subject_id == links[survivor].subject_id for row in links.values())
    assert not [g for g in gone if g["action"] == "crm.record_deleted"], gone
