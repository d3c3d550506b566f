"""A ledger erased by a version before bf255f8 still holds the people absorbed into the person
erased (ledger/absorb.py: known only through records without an address, proven to be them):
their row, their consent history and its audit details outlived the erasure (Art. 17). Opening
the ledger erases them once (``Ledger.erase_absorbed``), as ``erase`` erases them today, onto
the holder's suppression entry, naming the erasure entry it completes; ``audit verify`` holds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import Engine, delete, func, select

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.ledger import service
from consentsync.ledger.schema import (
    audit_details,
    audit_entries,
    audit_head,
    consent_states,
    ledger_settings,
    subjects,
    suppressions,
)
from consentsync.ledger.service import ABSORBED_ERASED_SETTING, ERASURE_REPAIR_ACTOR
from tests.conftest import Cli, proof
from tests.integration.test_cli_sync import connect_sandbox
from tests.test_absorb_addressless_person import absorb_an_individual

EMAIL_MARKETING = "0ZW8d00007CB5wrGAD"  # the sandbox's "Email Marketing" DataUsePurpose
ADDRESS = "erin.repair@erase-probe.test"
NOTE = "Erin Probe phoned from 07700 900123: she objects to profiling"


@pytest.fixture
def sf(cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(3, seed=62)
        connect_sandbox(sandbox, config_path, monkeypatch)
        yield sandbox


def _sync(cli: Cli) -> None:
    report = json.loads(cli.ok("sync", "sf", "--json").stdout)
    assert report["status"] == "succeeded", report["error"]


def _verified(cli: Cli) -> None:
    result = cli("audit", "verify", "--json")
    assert result.exit_code == 0, f"audit verify -> {result.exit_code}: {result.output}{result.stderr}"


def _absorbed_into_erased_holder(
    cli: Cli, config_path: Path, sf: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The address holder, with a person absorbed into them (an Individual and its consent
    record synced before the Contact tying it to the address), erased as a version before
    bf255f8 erased: not the absorbed person. Returns the absorbed person's uid."""
    cli.ok(
        "ledger", "record", "--email", ADDRESS, "--purpose", "email_marketing", "--status", "granted",
        "--source", "web_form", "--at", (datetime.now(UTC) - timedelta(days=1)).isoformat(),
        "--evidence-ref", "form:repair",
    )  # fmt: skip
    absorbed = absorb_an_individual(cli, sf, ADDRESS, "OptIn")
    # Free text about them, which an erasure reaches (an objection's decision's reason).
    ledger = open_ledger(load_config(config_path))
    try:
        raised = ledger.raise_objection_of(absorbed, "profiling", source="ops", actor="dpo")
        ledger.decide_objection(raised["id"], uphold=True, by="dpo", reason=NOTE)
    finally:
        ledger.engine.dispose()
    with monkeypatch.context() as older:
        older.setattr(service, "absorbed_into", lambda _conn, _holders: [])  # erase before bf255f8
        cli.ok("erase", "--email", ADDRESS, "--reason", "Art. 17 request", "--yes")
    return str(absorbed)


def _person(engine: Engine, uid: str) -> dict[str, Any]:
    """The person's row, what their audit entries keep of details beside the erasure's reason,
    and their stored states."""
    with engine.connect() as conn:
        row = conn.execute(select(subjects).where(subjects.c.uid == uid)).one()
        kept = conn.execute(
            select(func.count())
            .select_from(audit_details.join(audit_entries, audit_entries.c.seq == audit_details.c.seq))
            .where(
                audit_entries.c.subject_id == row.id,
                audit_entries.c.action != "subject.erased",  # its reason is kept, by design
                audit_details.c.content.is_not(None),
            )
        ).scalar_one()
        states = conn.execute(
            select(consent_states.c.status, consent_states.c.suppressed).where(
                consent_states.c.subject_id == row.id
            )
        ).all()
    return {"row": row, "details_kept": kept, "states": states}


def _head(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(audit_head.c.seq)).scalar_one())


def _as_before_this_version(engine: Engine) -> None:
    """The ledger as an older version left it: no row saying the step was done (this version
    wrote it at the first opening, before the erasure above)."""
    with engine.begin() as conn:
        conn.execute(delete(ledger_settings).where(ledger_settings.c.name == ABSORBED_ERASED_SETTING))


def test_opening_a_ledger_erased_before_the_fix_erases_the_absorbed_person_once(
    cli: Cli, config_path: Path, sf: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    absorbed = _absorbed_into_erased_holder(cli, config_path, sf, monkeypatch)
    config = load_config(config_path)
    ledger = open_ledger(config)
    engine = ledger.engine
    try:
        _as_before_this_version(engine)
        before = _person(engine, absorbed)
        assert before["row"].erased_at is None and before["row"].suppression_id is None, before
        assert before["details_kept"] > 0, before
        assert ("granted", False) in {tuple(state) for state in before["states"]}, before
        erasure = next(
            e
            for e in cli.json("audit", "log")
            if e["action"] == "subject.erased" and e["subject"] != absorbed
        )
        with engine.connect() as conn:
            entry_before = conn.execute(
                select(suppressions).where(suppressions.c.id == erasure["what"]["suppression"])
            ).one()
        _verified(cli)  # the pre-fix ledger is consistent: nothing for verify to name

        ledger.engine.dispose()
        ledger = open_ledger(config)  # a process of this version opens it: the upgrade step runs
        engine = ledger.engine

        after = _person(engine, absorbed)
        assert after["row"].erased_at is not None, "the absorbed person outlived the holder's erasure"
        assert after["row"].suppression_id == erasure["what"]["suppression"]
        assert after["details_kept"] == 0, f"{after['details_kept']} audit details about them were kept"
        assert all(suppressed for _status, suppressed in after["states"]), after["states"]
        (repair,) = [
            e for e in cli.json("audit", "log", "--action", "subject.erased") if e["subject"] == absorbed
        ]
        assert repair["what"]["erasure_entry"] == erasure["seq"]
        assert repair["what"]["suppression"] == erasure["what"]["suppression"]
        assert (repair["actor"], repair["source"]) == (ERASURE_REPAIR_ACTOR, "erasure")
        assert f"audit entry {erasure['seq']}" in repair["details"]["reason"]
        assert ADDRESS not in json.dumps(repair)
        assert NOTE not in json.dumps(cli.json("audit", "log"))
        with engine.connect() as conn:
            entry_after = conn.execute(select(suppressions).where(suppressions.c.id == entry_before.id)).one()
        # The address was not erased again: a consent given since its erasure still lifts it.
        assert entry_after.last_erased_at == entry_before.last_erased_at
        _verified(cli)

        # Once: opened again, and even run again without its row, it writes nothing.
        head = _head(engine)
        ledger.engine.dispose()
        ledger = open_ledger(config)
        engine = ledger.engine
        assert _head(engine) == head
        _as_before_this_version(engine)
        assert ledger.erase_absorbed() == 0
        assert _head(engine) == head
        _verified(cli)
    finally:
        ledger.engine.dispose()


def test_a_ledger_without_absorbed_people_is_left_as_it_is(cli: Cli, config_path: Path) -> None:
    cli.ok(
        "ledger", "record", "--email", ADDRESS, "--purpose", "email_marketing", "--status", "granted",
        "--source", "web_form", *proof(),
    )  # fmt: skip
    cli.ok("erase", "--email", ADDRESS, "--reason", "Art. 17 request", "--yes")
    ledger = open_ledger(load_config(config_path))
    try:
        _as_before_this_version(ledger.engine)
        head = _head(ledger.engine)
        assert ledger.erase_absorbed() == 0
        assert _head(ledger.engine) == head
        with ledger.engine.connect() as conn:
            done = conn.execute(
                select(ledger_settings.c.value).where(ledger_settings.c.name == ABSORBED_ERASED_SETTING)
            ).scalar()
        assert done == "done"
    finally:
        ledger.engine.dispose()
    _verified(cli)
