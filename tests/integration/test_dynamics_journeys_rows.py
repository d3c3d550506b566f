"""Customer Insights - Journeys messages, for a purpose whose enforcement model is
non-restrictive, every address without an Opted out consent row for that purpose: a person's no
that the ledger holds, given anywhere, must reach Journeys as a row even where the person has none
yet. The connector creates it (journeys_contact.yaml): Opted out, once (a second sync, or a create
sent again after a crash, adds no second row), read back as its own write (the ledger does not
change); a yes, or a suppression that is no one's no, creates nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from consentsync_dynamics.connector import DynamicsConnector
from consentsync_dynamics.sandbox.server import DynamicsSandbox
from sqlalchemy import func, select

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import consent_events, crm_links
from consentsync.ledger.service import Ledger
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import consent_value, shipped_engine
from tests.integration.test_dynamics_consent_rows import (
    EMAIL,
    EMAIL_MARKETING,
    OPTED_IN,
    OPTED_OUT,
    PROFILING,
)
from tests.sandbox.serving import serve_seeded

# The connector's rules against its sandbox: the ledger's SQL under them runs on PostgreSQL in
# the engine's and the ledger's own tests (CI has 15 minutes on two cores).
pytestmark = SQLITE_ONLY

MAPPINGS = ["contact.yaml", "contact_point_consent.yaml", "journeys_contact.yaml"]
CONSENTS = "msdynmkt_contactpointconsent4"


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    yield from serve_seeded(DynamicsSandbox(), lambda server: None)


def _engine(ledger: Ledger, config_path: Path, dv: DynamicsSandbox) -> SyncEngine:
    options = SyncOptions(batch_size=50, signpost_lag_seconds=0)
    return shipped_engine(ledger, config_path, dv, "dyn", "dynamics", MAPPINGS, {"page_size": 40}, options)


def _run(ledger: Ledger, config_path: Path, dv: DynamicsSandbox, **kwargs: Any) -> Any:
    report = _engine(ledger, config_path, dv).run(**kwargs)
    assert report.status == "succeeded", report.error
    return report


def _contact(dv: DynamicsSandbox, email: str) -> str:
    return dv.environment.create("contact", {"lastname": "Person", "emailaddress1": email})


def _rows(dv: DynamicsSandbox, email: str, purpose: str | None = None) -> list[dict[str, Any]]:
    return [
        row
        for row in dv.environment.records(CONSENTS)
        if str(row["msdynmkt_contactpointvalue"]).lower() == email.lower()
        and (purpose is None or row["_msdynmkt_purposeid_value"] == purpose)
    ]


def _said(ledger: Ledger, email: str, status: ConsentStatus, purpose: str = "email_marketing") -> None:
    now = datetime.now(UTC)
    ledger.record(Identity(email=email), consent_value(status, now, now, purpose=purpose))


def _ledger_rows(ledger: Ledger) -> tuple[int, int]:
    with ledger.engine.connect() as conn:
        events = conn.execute(select(func.count()).select_from(consent_events)).scalar_one()
        links = conn.execute(select(func.count()).select_from(crm_links)).scalar_one()
    return events, links


def test_a_no_given_elsewhere_creates_the_missing_opted_out_row_once(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox
) -> None:
    _contact(dv, "Withdraws@Example.test")
    _contact(dv, "stays@example.test")
    _run(ledger, config_path, dv, full=True)
    assert dv.environment.records(CONSENTS) == []  # nobody said no: nothing to create
    # The person withdraws email marketing on the web form (the ledger's capture API).
    _said(ledger, "withdraws@example.test", ConsentStatus.WITHDRAWN)
    _run(ledger, config_path, dv)
    (row,) = _rows(dv, "withdraws@example.test")
    assert row["_msdynmkt_purposeid_value"] == EMAIL_MARKETING
    assert (row["msdynmkt_value"], row["msdynmkt_contactpointtype"]) == (OPTED_OUT, EMAIL)
    assert row["msdynmkt_contactpointvalue"] == "Withdraws@Example.test"  # as the contact holds it
    assert row["msdynmkt_contactpointconsenttype"] == 534120000  # the purpose, not a topic
    assert (row["msdynmkt_source"], row["msdynmkt_logicalreason"]) == (534120000, 534119999)
    assert row["msdynmkt_reason"].startswith("consentsync:")
    assert row["_createdby_value"] == dv.environment.user_id  # the application user
    assert _rows(dv, "stays@example.test") == []
    # Read back, the row is the connector's own write: nothing recorded, nothing more to push,
    # no second row, and the ledger holds what it held.
    before = _ledger_rows(ledger)
    for _ in range(2):
        again = _run(ledger, config_path, dv)
        assert (again.counts.evidence_recorded, again.counts.pushes_enqueued) == (0, 0)
        assert again.counts.state_changes == 0
    assert len(_rows(dv, "withdraws@example.test")) == 1
    assert _ledger_rows(ledger) == before


def test_a_create_whose_answer_was_lost_is_not_made_twice(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run dies after Dataverse created the row and before the answer was committed (a
    crash, SIGKILL): the push is still owed, and the next run finds the row instead of adding
    one."""
    _contact(dv, "crash@example.test")
    _run(ledger, config_path, dv, full=True)
    _said(ledger, "crash@example.test", ConsentStatus.REFUSED, purpose="profiling")
    send = DynamicsConnector._send_creates

    def crash(self: DynamicsConnector, *args: Any, **kwargs: Any) -> Any:
        send(self, *args, **kwargs)
        raise SystemExit("killed after the create")

    monkeypatch.setattr(DynamicsConnector, "_send_creates", crash)
    with pytest.raises(SystemExit):
        _engine(ledger, config_path, dv).run()
    assert len(_rows(dv, "crash@example.test", PROFILING)) == 1
    monkeypatch.setattr(DynamicsConnector, "_send_creates", send)
    report = _run(ledger, config_path, dv)
    assert report.counts.pushed >= 1 and report.counts.push_failed == 0
    (row,) = _rows(dv, "crash@example.test")
    assert (row["_msdynmkt_purposeid_value"], row["msdynmkt_value"]) == (PROFILING, OPTED_OUT)
    again = _run(ledger, config_path, dv)
    assert (again.counts.evidence_recorded, again.counts.pushes_enqueued) == (0, 0)


@pytest.mark.parametrize(
    ("said", "purpose"),
    [("refused", PROFILING), ("objected", EMAIL_MARKETING), ("withdrawn", EMAIL_MARKETING)],
)
def test_every_kind_of_no_creates_the_row_of_its_purpose(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox, said: str, purpose: str
) -> None:
    """A refusal, an upheld objection (Art. 21), a withdrawal: each is the person's no."""
    _contact(dv, "no@example.test")
    _run(ledger, config_path, dv, full=True)
    if said == "objected":
        # To direct marketing: upheld at once (Art. 21(3)).
        assert ledger.raise_objection("no@example.test", "email_marketing")["status"] == "upheld"
    else:
        key = "profiling" if purpose == PROFILING else "email_marketing"
        _said(ledger, "no@example.test", ConsentStatus(said), purpose=key)
    _run(ledger, config_path, dv)
    assert [(r["_msdynmkt_purposeid_value"], r["msdynmkt_value"]) for r in _rows(dv, "no@example.test")] == [
        (purpose, OPTED_OUT)
    ]


@pytest.mark.parametrize("said", ["granted", "restricted"])
def test_nothing_but_a_no_creates_a_row(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox, said: str
) -> None:
    """An opt-in is the person's to give in Journeys; a restriction (Art. 18) suppresses, but it
    is no one's no, and it ends."""
    _contact(dv, "person@example.test")
    _run(ledger, config_path, dv, full=True)
    _said(ledger, "person@example.test", ConsentStatus.GRANTED)
    if said == "restricted":
        ledger.restrict("person@example.test", restricted=True, reason="accuracy contested")
    report = _run(ledger, config_path, dv)
    assert dv.environment.records(CONSENTS) == []
    if said == "restricted":
        assert report.counts.pushed >= 1  # the contact's checkboxes show it


def test_a_person_with_a_row_gets_it_opted_out_and_no_second_one(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox
) -> None:
    _contact(dv, "has@example.test")
    existing = dv.environment.create(
        CONSENTS,
        {
            "msdynmkt_contactpointvalue": "has@example.test",
            "msdynmkt_contactpointtype": EMAIL,
            "msdynmkt_value": OPTED_IN,
            "_msdynmkt_purposeid_value": EMAIL_MARKETING,
            "msdynmkt_source": 534120005,
        },
    )
    _run(ledger, config_path, dv, full=True)
    _said(ledger, "has@example.test", ConsentStatus.WITHDRAWN)
    _run(ledger, config_path, dv)
    assert [r["msdynmkt_contactpointconsent4id"] for r in _rows(dv, "has@example.test")] == [existing]
    assert _rows(dv, "has@example.test")[0]["msdynmkt_value"] == OPTED_OUT


def test_two_contacts_with_one_address_get_one_row_and_a_new_address_gets_its_own(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox
) -> None:
    first = _contact(dv, "twice@example.test")
    _contact(dv, "TWICE@example.test")
    _run(ledger, config_path, dv, full=True)
    _said(ledger, "twice@example.test", ConsentStatus.WITHDRAWN)
    _run(ledger, config_path, dv)
    assert len(_rows(dv, "twice@example.test")) == 1
    # The person's first contact moves to a new address: Journeys would mail it; it gets its row.
    dv.environment.update("contact", first, {"emailaddress1": "moved@example.test"})
    _run(ledger, config_path, dv)
    assert [r["msdynmkt_value"] for r in _rows(dv, "moved@example.test", EMAIL_MARKETING)] == [OPTED_OUT]
    assert len(_rows(dv, "twice@example.test")) == 1


def test_a_created_row_the_person_changes_in_journeys_is_their_choice(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox
) -> None:
    """Once someone else changes the row (the person opting in on a preference center), it is read
    as any row: their new choice reaches the ledger."""
    _contact(dv, "changes@example.test")
    _run(ledger, config_path, dv, full=True)
    _said(ledger, "changes@example.test", ConsentStatus.WITHDRAWN)
    _run(ledger, config_path, dv)
    (row,) = _rows(dv, "changes@example.test")
    dv.environment.update(
        CONSENTS,
        row["msdynmkt_contactpointconsent4id"],
        {"msdynmkt_value": OPTED_IN, "msdynmkt_source": 534120004},
    )
    report = _run(ledger, config_path, dv)
    assert report.counts.evidence_recorded == 1


@pytest.mark.parametrize("how", ["deleted", "moved"])
def test_an_opted_out_row_deleted_or_moved_in_dataverse_is_created_again(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox, how: str
) -> None:
    """An admin's clean-up deletes the row the connector created (or edits its address): the
    contact does not change, but the consent table's delta shows it, the Journeys view shows the
    purpose without a row again, and the person's no creates it once more. The consent rows are
    not a mapped object here: the Journeys view alone sees the change."""
    options = SyncOptions(batch_size=50, signpost_lag_seconds=0)
    mappings = ["contact.yaml", "journeys_contact.yaml"]

    def run() -> Any:
        engine = shipped_engine(
            ledger, config_path, dv, "dyn", "dynamics", mappings, {"page_size": 40}, options
        )
        report = engine.run()
        assert report.status == "succeeded", report.error
        return report

    _contact(dv, "cleaned@example.test")
    _contact(dv, "bystander@example.test")
    run()
    _said(ledger, "cleaned@example.test", ConsentStatus.WITHDRAWN)
    run()
    (row,) = _rows(dv, "cleaned@example.test")
    row_id = row["msdynmkt_contactpointconsent4id"]
    if how == "deleted":
        dv.environment.delete(CONSENTS, row_id)
    else:
        dv.environment.update(CONSENTS, row_id, {"msdynmkt_contactpointvalue": "elsewhere@example.test"})
    assert _rows(dv, "cleaned@example.test") == []
    run()
    run()  # a push owed is sent at the latest by the run after
    (again,) = _rows(dv, "cleaned@example.test")
    assert (again["_msdynmkt_purposeid_value"], again["msdynmkt_value"]) == (EMAIL_MARKETING, OPTED_OUT)
    # Deleted, the row's id is free again; moved, its row keeps it and the new one takes the next.
    assert (again["msdynmkt_contactpointconsent4id"] == row_id) is (how == "deleted")
    assert _rows(dv, "bystander@example.test") == []
    settled = run()
    assert (settled.counts.evidence_recorded, settled.counts.pushes_enqueued) == (0, 0)
