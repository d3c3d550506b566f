"""A no the person gives while restricted makes consentsync's removal theirs: lifting the
restriction, and a consent they give afterwards, never set SuperOffice's E-marketing consent
again with the legal basis it had before the restriction. End to end against the SuperOffice
sandbox with the shipped Person mapping and the real engine, on SQLite and PostgreSQL.

The defect (session 59, on e346440): restricted, the person's consent was removed (RemoveConsent,
which SuperOffice keeps as the legal basis Withdrawn). They withdrew meanwhile: nothing was
written, SuperOffice already showing Withdrawn. Lifted, then a new consent given on a web form:
the engine took the Withdrawn for the restriction's alone and put back the consent from before
the restriction, with its old legal basis (a soft opt-in, say), a consent the person had since
withdrawn. Now a no of the person (a withdrawal, a refusal, an upheld objection) recorded since
the removal was queued makes the removal what their no writes there: nothing from before the
restriction is put back, and SuperOffice follows the ledger as any push would (the shipped
mapping copies no consent in: it stays Withdrawn, as after a withdrawal consentsync wrote).
docs/policy.md, "Lifting a restriction puts back what it wrote"; docs/connectors/superoffice.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from consentsync.domain import ConsentStatus, EffectiveState, LawfulBasis
from consentsync.ledger.schema import outbox
from consentsync.mapping import Mapping, OurWrite
from consentsync.sdk.harness import open_sync_engine
from tests.conftest import SQLITE_ONLY
from tests.integration.test_ledger_query_plans import _capture as _capture_statements
from tests.integration.test_ledger_query_plans import _whole_table_reads
from tests.integration.test_s58_superoffice_restriction_lift import (
    GRANTED,
    SHOWN_WITHDRAWN,
    _basis,
    _capture,
    _config,
    _ledger,
    _marketing,
    _person,
    _plan,
    _restrict,
    _run,
    _set_mode,
    person,  # noqa: F401 - the shipped Person mapping, a fixture
    superoffice,  # noqa: F401 - the sandbox, a fixture
)

WITHDREW_CONSENTED = "withdrew.consented@example.test"  # CONSENT before; withdrew; new consent
WITHDREW_SOFT = "withdrew.soft@example.test"  # SOFTOPTIN before; withdrew; new consent
REFUSED = "refused@example.test"  # LEGITIMATE before; refused; new consent
OBJECTED = "objected@example.test"  # CONSENT before; objected to direct marketing; new consent
WITHDREW_ONLY = "withdrew.only@example.test"  # CONSENT before; withdrew; nothing since
LIFTED = "lifted@example.test"  # CONSENT before; said nothing: put back (e346440)
BEFORE = {
    WITHDREW_CONSENTED: "CONSENT",
    WITHDREW_SOFT: "SOFTOPTIN",
    REFUSED: "LEGITIMATE",
    OBJECTED: "CONSENT",
    WITHDREW_ONLY: "CONSENT",
    LIFTED: "CONSENT",
}
CONSENTED_AGAIN = (WITHDREW_CONSENTED, WITHDREW_SOFT, REFUSED, OBJECTED)


def _said_no_while_restricted(harness: Any, config: Path) -> dict[str, str]:
    """Everyone synced, restricted (each consent removed: Withdrawn), the removals read back, the
    nos recorded while restricted (nothing written: SuperOffice shows Withdrawn already), lifted.
    Returns the record ids by address."""
    ids = {email: _person(harness, email, basis) for email, basis in BEFORE.items()}
    _run(config, full=True)
    _restrict(config, tuple(BEFORE), restricted=True)
    _run(config)
    assert {email: _basis(harness, ids[email]) for email in BEFORE} == dict.fromkeys(BEFORE, "WITHDRAWN")
    _run(config)  # the removals read back: consentsync's own writes, not withdrawals
    for email in (WITHDREW_CONSENTED, WITHDREW_SOFT, WITHDREW_ONLY):
        _capture(config, email, ConsentStatus.WITHDRAWN)
    _capture(config, REFUSED, ConsentStatus.REFUSED)
    _ledger(
        config,
        lambda ledger: ledger.raise_objection(OBJECTED, "email_marketing", direct_marketing=True),
    )
    assert _run(config).counts.pushed == 0  # their no already shows: nothing to write
    _restrict(config, tuple(BEFORE), restricted=False)
    return ids


def _withdraw_while_restricted_then_lift(config: Path) -> None:
    """A first sync, a restriction written, a withdrawal given under it (not written: the CRM
    shows the removal already), then the restriction lifted."""
    _run(config, full=True)
    _restrict(config, (WITHDREW_SOFT,), restricted=True)
    _run(config)
    _run(config)
    _capture(config, WITHDREW_SOFT, ConsentStatus.WITHDRAWN)
    _restrict(config, (WITHDREW_SOFT,), restricted=False)


def test_a_no_given_while_restricted_is_not_undone_by_the_lift_nor_by_a_later_consent(
    superoffice: Any,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    ledger_url: str,
) -> None:
    config = _config(superoffice, tmp_path, ledger_url)
    ids = _said_no_while_restricted(superoffice, config)
    # Lifted: only the person who said nothing gets their consent back. A no given while
    # restricted stands (the ledger still says no; the variant without a new consent).
    assert _plan(config) == {ids[LIFTED]: {"LegalBase_EMARKETING": "CONSENT"}}
    assert _run(config).counts.pushed == 1
    # A new consent, on a web form, after the lift: the ledger grants again (it reverses the
    # withdrawal, the refusal and the objection), but nothing from before the restriction is
    # put back (not the soft opt-in, not the legitimate interest, not the old consent).
    for email in CONSENTED_AGAIN:
        _capture(config, email, ConsentStatus.GRANTED)
        state = _marketing(config, email)
        assert (state["status"], state["suppressed"]) == ("granted", False), email
    assert _plan(config) == {}
    engine = open_sync_engine(config)
    captured = _capture_statements(engine.ledger)
    try:
        report = engine.run(full=True)
        scans = _whole_table_reads(engine.ledger, captured)
    finally:
        engine.ledger.engine.dispose()
    assert report.status == "succeeded", report.error
    assert report.counts.pushed == 0
    # The person's nos are looked up for the batch, through indexes, never a scan.
    statements = [" ".join(sql.replace('"', "").split()) for sql, _ in captured]
    assert sum(sql.startswith("SELECT consent_events.subject_id") for sql in statements) == 1
    assert sum(sql.startswith("SELECT objections.subject_id") for sql in statements) == 1
    assert scans == []
    _run(config)
    assert {email: _basis(superoffice, ids[email]) for email in BEFORE} == {
        **dict.fromkeys(BEFORE, "WITHDRAWN"),
        LIFTED: "CONSENT",
    }
    assert _marketing(config, WITHDREW_ONLY)["status"] == "withdrawn"
    assert _plan(config) == {}


def test_a_mapping_that_copies_a_consent_in_writes_the_new_one_never_the_old(
    superoffice: Any,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    """What SuperOffice gets follows the ledger as any push would: a push table that writes a yes
    (``allowed: CONSENT``, docs/connectors/superoffice.md) writes the new consent's, never the
    soft opt-in the restriction removed."""
    shipped = Path(__file__).resolve().parents[2] / "connectors/consentsync_superoffice/mappings/person.yaml"
    copied = tmp_path / "person.yaml"
    copied.write_text(
        shipped.read_text().replace(
            "push: {withdrawn: WITHDRAWN, suppressed: null}",
            "push: {withdrawn: WITHDRAWN, suppressed: null, allowed: CONSENT}",
            1,
        )
    )
    config = _config(superoffice, tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["mappings"] = [str(copied)]
    config.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    record_id = _person(superoffice, WITHDREW_SOFT, "SOFTOPTIN")
    _withdraw_while_restricted_then_lift(config)
    _run(config)
    assert _basis(superoffice, record_id) == "WITHDRAWN"
    _capture(config, WITHDREW_SOFT, ConsentStatus.GRANTED)
    assert _plan(config) == {record_id: {"LegalBase_EMARKETING": "CONSENT"}}
    _run(config)
    assert _basis(superoffice, record_id) == "CONSENT"


@SQLITE_ONLY  # the lookups' SQL runs on PostgreSQL in the first test
def test_a_stale_put_back_an_older_release_left_waiting_is_decided_again(
    superoffice: Any,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    ledger_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PUSH_DECISIONS_VERSION 5: the put-back the release of e346440 (version 4) decided for a
    person who said no while restricted, waiting in the outbox (here: an observing connector),
    is decided again by this release's first run and superseded, never sent as decided."""
    from consentsync.sync import push_rules
    from consentsync.sync.engine import SyncEngine

    config = _config(superoffice, tmp_path, ledger_url)
    record_id = _person(superoffice, WITHDREW_SOFT, "SOFTOPTIN")
    _withdraw_while_restricted_then_lift(config)
    _capture(config, WITHDREW_SOFT, ConsentStatus.GRANTED)
    _set_mode(config, "observe")
    with monkeypatch.context() as older:
        older.setattr(SyncEngine, "_said_no_since", lambda *_: {})
        older.setattr(push_rules, "PUSH_DECISIONS_VERSION", 4)
        _run(config)
        _run(config)  # its rules stored: the stale put-back waits as decided
    engine = open_sync_engine(config)
    try:
        with engine.ledger.engine.connect() as conn:
            waiting = conn.execute(
                select(outbox.c.id).where(
                    outbox.c.status == "pending", outbox.c.fields == '{"LegalBase_EMARKETING":"SOFTOPTIN"}'
                )
            ).scalar_one()
    finally:
        engine.ledger.engine.dispose()
    _run(config)
    engine = open_sync_engine(config)
    try:
        with engine.ledger.engine.connect() as conn:
            status = conn.execute(select(outbox.c.status).where(outbox.c.id == waiting)).scalar_one()
    finally:
        engine.ledger.engine.dispose()
    assert status == "superseded"
    _set_mode(config, "two_way")
    _run(config)
    assert _basis(superoffice, record_id) == "WITHDRAWN"


# -- the rule itself, on the shipped Person mapping ---------------------------------------------

MARKETING_BY_EMAIL = ("email_marketing", "email")


def test_only_a_no_to_what_the_field_shows_makes_a_removal_the_persons(person: Mapping) -> None:  # noqa: F811
    removal = OurWrite("SOFTOPTIN", None)
    assert person.updates_for(SHOWN_WITHDRAWN, GRANTED, ours={"LegalBase_EMARKETING": removal}) == {
        "LegalBase_EMARKETING": "SOFTOPTIN"
    }
    said_no = removal._replace(said_no_since=frozenset({MARKETING_BY_EMAIL}))
    assert person.updates_for(SHOWN_WITHDRAWN, GRANTED, ours={"LegalBase_EMARKETING": said_no}) == {}
    # A no to another purpose or channel says nothing of this field.
    elsewhere = removal._replace(said_no_since=frozenset({("email_marketing", "sms"), ("service", "email")}))
    assert person.updates_for(SHOWN_WITHDRAWN, GRANTED, ours={"LegalBase_EMARKETING": elsewhere}) == {
        "LegalBase_EMARKETING": "SOFTOPTIN"
    }


def test_a_field_that_clears_follows_the_ledger_whatever_was_said_since() -> None:
    """Where the table writes a yes (a Do Not Call), the opt-out goes once the ledger no longer
    implies it, whoever's it was (e346440 and before): a no since changes nothing there."""
    from consentsync.mapping import parse_mapping
    from tests.unit.test_s57_restriction_lift_mapping import NEVER_CLEARED

    mapping = parse_mapping(
        NEVER_CLEARED.replace("push: {suppressed: true}", "push: {suppressed: true, allowed: false}"),
        Path("contact.yaml"),
    )
    lifted = {
        ("service", "phone"): EffectiveState(
            "service", "phone", ConsentStatus.NOT_APPLICABLE, LawfulBasis.CONTRACT,
            suppressed=False, rule="purpose_default_basis",
        )
    }  # fmt: skip
    ours = {"DoNotCall": OurWrite(False, True, frozenset({("service", "phone")}))}
    assert mapping.updates_for({"Id": "003A", "DoNotCall": True}, lifted, ours=ours) == {"DoNotCall": False}
