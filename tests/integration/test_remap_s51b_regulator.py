"""A mapping changed between runs applies to every record, not only to those edited since
(docs/policy.md, "A mapping changed between runs"), against the Salesforce sandbox:

* a consent field mapped anew, whose value on a contact nobody has edited since the last run is a
  no: the next incremental run reads the contact again and the ledger learns the no (the stored
  cursor lay past the contact, so it was never read, and the person stayed opted in);
* a pull rule added for a field already read (it was pushed only): the contact read again is
  taken whole, not skipped as "read as last seen" because its values did not change;
* a push rule added: what the contact should show is decided again and pushed;
* a dry run after the change shows the no it would learn, and moves nothing;
* a cursor stored by an earlier version (no record of its mapping) is read from the start once,
  a cursor an admin placed with ``state reset --to`` is honoured.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from consentsync_dynamics.sandbox.server import DynamicsSandbox
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import select, update

from consentsync.domain import ConsentStatus, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import sync_cursors
from consentsync.ledger.service import Ledger
from consentsync.sync import failpoints
from consentsync.sync.engine import RunReport, SyncEngine, SyncOptions
from tests.integration.helpers import ROOT, consent_value, sandbox_engine

EMAIL_OPTOUT = """\
  - purpose: email_marketing
    channel: email
    status:
      field: HasOptedOutOfEmail
      direction: pull
      pull: {true: withdrawn, false: null}
"""
DO_NOT_CALL_READ = """\
  - purpose: service
    channel: phone
    status:
      field: DoNotCall
      direction: pull
      pull: {true: withdrawn, false: null}
"""
DO_NOT_CALL_PUSHED = """\
  - purpose: service
    channel: phone
    status:
      field: DoNotCall
      direction: push
      push: {suppressed: true}
"""
DO_NOT_CALL_BOTH = """\
  - purpose: service
    channel: phone
    status:
      field: DoNotCall
      direction: both
      pull: {true: withdrawn, false: null}
      push: {suppressed: true}
"""
EMAIL_OPTOUT_PUSHED = """\
  - purpose: email_marketing
    channel: email
    status:
      field: HasOptedOutOfEmail
      direction: both
      pull: {true: withdrawn, false: null}
      push: {suppressed: true}
"""


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as sandbox:
        yield sandbox


def _write(path: Path, consents: str) -> None:
    path.write_text(
        "\n".join(
            [
                "version: 1",
                "vendor: salesforce",
                "object: Contact",
                "identity: {record_id: Id, modstamp: SystemModstamp, email: Email}",
                "consents:",
                consents,
            ]
        )
    )


def _engine(ledger: Ledger, config_path: Path, org: SalesforceSandbox, consents: str) -> SyncEngine:
    mapping = config_path.parent / "contact.yaml"
    _write(mapping, consents)
    connector = {
        "name": "sf",
        "vendor": "salesforce",
        "mappings": [str(mapping)],
        "settings": org.connection_settings(),
    }
    # No look-back window: a contact edited before the last run is behind the cursor, as a
    # contact edited last month is in production.
    options = SyncOptions(signpost_lag_seconds=0, lookback_seconds=0)
    return sandbox_engine(ledger, config_path, connector, options)


def _run(engine: SyncEngine, *, dry_run: bool = False) -> RunReport:
    report = engine.run(dry_run=dry_run)
    assert report.status == ("dry_run" if dry_run else "succeeded"), report.error
    return report


def _status(ledger: Ledger, email: str, purpose: str, channel: str) -> str:
    _uid, state = ledger.decision_for(email, purpose, channel)
    return state.status.value


def _contacts(org: SalesforceSandbox) -> tuple[str, str]:
    """Two contacts: one ticked Do Not Call long ago, one not; both opted in to email."""
    no = org.org.create("Contact", LastName="Ng", Email="ng@example.com", DoNotCall=True)
    org.org.create("Contact", LastName="Ode", Email="ode@example.com")
    return no, "ode@example.com"


def test_a_field_mapped_anew_is_read_on_contacts_nobody_edited_since(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox
) -> None:
    _contacts(org)
    _run(_engine(ledger, config_path, org, EMAIL_OPTOUT))
    assert _status(ledger, "ng@example.com", "service", "phone") != "withdrawn"
    # The admin maps Do Not Call. Nobody touches the contact.
    report = _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_READ))
    assert _status(ledger, "ng@example.com", "service", "phone") == "withdrawn"
    assert _status(ledger, "ode@example.com", "service", "phone") != "withdrawn"
    assert report.note is not None
    assert "mapping for Contact changed: reading every record again" in report.note
    assert report.counts.read == 2
    # The next run, under the same mapping, goes on from the cursor: nothing is read again.
    again = _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_READ))
    assert again.counts.read == 0 and again.note is None


def test_a_pull_rule_added_to_a_field_already_read_is_applied_to_contacts_read_as_last_seen(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox
) -> None:
    _contacts(org)
    # Do Not Call is written (and so read, to compare) but its values are not yet understood.
    _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_PUSHED))
    assert _status(ledger, "ng@example.com", "service", "phone") != "withdrawn"
    # The admin makes it both ways: the contact's values are those its snapshot holds, but what
    # they mean changed.
    _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_BOTH))
    assert _status(ledger, "ng@example.com", "service", "phone") == "withdrawn"


def test_a_push_rule_added_reaches_contacts_whose_person_said_no_before(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox
) -> None:
    contact = org.org.create("Contact", LastName="Ng", Email="ng@example.com")
    # The person withdrew through the preference centre; the mapping only reads the box.
    ledger.record(
        Identity(email="ng@example.com"),
        consent_value(
            ConsentStatus.WITHDRAWN,
            ledger.clock(),
            ledger.clock(),
            basis=LawfulBasis.CONSENT,
            origin=Origin.CAPTURE,
        ),
    )
    _run(_engine(ledger, config_path, org, EMAIL_OPTOUT))
    assert org.org.get(contact)["HasOptedOutOfEmail"] is False  # pull only: nothing written
    # The admin lets consentsync tick the box: the person's no must reach the contact.
    report = _run(_engine(ledger, config_path, org, EMAIL_OPTOUT_PUSHED))
    assert report.counts.pushed >= 1
    assert org.org.get(contact)["HasOptedOutOfEmail"] is True


def test_a_dry_run_after_a_mapping_change_shows_the_no_it_would_learn_and_moves_nothing(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox
) -> None:
    _contacts(org)
    _run(_engine(ledger, config_path, org, EMAIL_OPTOUT))
    plan = _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_READ), dry_run=True)
    assert plan.note is not None and "mapping for Contact changed" in plan.note
    assert [(c.purpose, c.channel, c.after.split()[0]) for c in plan.plan_changes] == [
        ("service", "phone", "withdrawn")
    ]
    assert _status(ledger, "ng@example.com", "service", "phone") != "withdrawn"
    # The plan stored nothing: the real run still reads everything again and learns the no.
    _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_READ))
    assert _status(ledger, "ng@example.com", "service", "phone") == "withdrawn"


def _rewrite_cursor(ledger: Ledger, *, run_id: str | None = None) -> None:
    """The Contact cursor as an earlier version stored it (its position alone), or as an admin
    placed it (``run_id``)."""
    with ledger.engine.begin() as conn:
        contact = sync_cursors.c.object_type == "Contact"
        raw = conn.execute(select(sync_cursors.c.cursor).where(contact)).scalar()
        data = orjson.loads(raw)
        old = {key: data[key] for key in ("modstamp", "record_id") if key in data}
        values: dict[str, str] = {"cursor": orjson.dumps(old).decode()}
        if run_id is not None:
            values["run_id"] = run_id
        conn.execute(update(sync_cursors).where(contact).values(**values))


def test_a_cursor_stored_by_an_earlier_version_is_read_from_the_start_once(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox
) -> None:
    _contacts(org)
    _run(_engine(ledger, config_path, org, EMAIL_OPTOUT))
    _rewrite_cursor(ledger)
    # The mapping was changed before the upgrade: which mapping the cursor was read under is
    # not known, so the object is read again.
    report = _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_READ))
    assert report.note is not None and "is not recorded with the cursor" in report.note
    assert _status(ledger, "ng@example.com", "service", "phone") == "withdrawn"
    assert _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_READ)).counts.read == 0


def test_a_cursor_an_admin_placed_is_honoured(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox
) -> None:
    _contacts(org)
    _run(_engine(ledger, config_path, org, EMAIL_OPTOUT))
    _rewrite_cursor(ledger, run_id="state-reset-0123456789abcdef")
    report = _run(_engine(ledger, config_path, org, EMAIL_OPTOUT))
    assert report.counts.read == 0 and report.note is None


def test_a_reread_cut_short_goes_on_taking_every_record_whole(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash (or a stop) in the middle of the read under the new mapping: the next run goes on
    from where it was, and the records left are still taken whole, not skipped as read as last
    seen (their values did not change, their meaning did)."""
    emails = [f"p{i}@example.com" for i in range(3)]
    for email in emails:
        org.org.create("Contact", LastName="P", Email=email, DoNotCall=True)
    _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_PUSHED))
    cut = _engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_BOTH)
    cut.options = replace(cut.options, batch_size=1)
    monkeypatch.setattr(failpoints, "_POINTS", {"sync.page.read": ("raise", 2)})
    monkeypatch.setattr(failpoints, "_hits", Counter())
    with pytest.raises(failpoints.FailpointHit):
        cut.run()
    learned = [_status(ledger, email, "service", "phone") for email in emails]
    assert learned.count("withdrawn") == 1  # the first page only
    monkeypatch.setattr(failpoints, "_POINTS", {})
    report = _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_BOTH))
    assert report.counts.read == 2  # went on from the cursor
    assert [_status(ledger, email, "service", "phone") for email in emails] == ["withdrawn"] * 3
    # Done: the next run under the same mapping reads nothing.
    assert _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_BOTH)).counts.read == 0


def test_a_pull_rule_added_is_applied_where_the_crm_hands_out_delta_links(
    ledger: Ledger, config_path: Path
) -> None:
    """Dynamics 365 reads changes through a delta link (the CRM's own position, kept in the
    cursor): a pull rule added to a field already read reads the whole table again, without the
    link, and keeps the new link the full read ends with."""
    shipped = (ROOT / "connectors/consentsync_dynamics/mappings/contact.yaml").read_text()
    # Before: "Do Not Allow Phone Calls" was written, not read (the same fields, so the same
    # select and the same delta link: only what the values mean changes).
    both = (
        "      field: donotphone\n      direction: both\n      pull: {true: withdrawn, false: null}\n"
        "      push: {suppressed: true, allowed: false}\n"
    )
    assert both in shipped
    pushed_only = shipped.replace(
        both, "      field: donotphone\n      direction: push\n      push: {suppressed: true}\n"
    )
    mapping = config_path.parent / "contact.yaml"

    def engine(dv: DynamicsSandbox, text: str) -> SyncEngine:
        mapping.write_text(text)
        connector = {
            "name": "dyn",
            "vendor": "dynamics",
            "mappings": [str(mapping)],
            "settings": {**dv.connection_settings(), "page_size": 40},
        }
        options = SyncOptions(signpost_lag_seconds=0, lookback_seconds=0)
        return sandbox_engine(ledger, config_path, connector, options)

    with DynamicsSandbox() as dv:
        dv.environment.create(
            "contact", {"lastname": "Ng", "emailaddress1": "ng@example.com", "donotphone": True}
        )
        dv.environment.create("contact", {"lastname": "Ode", "emailaddress1": "ode@example.com"})
        # Until the delta link has nothing more to hand over (the sandbox's first delta may
        # repeat what the full read saw, as the service does for changes in the same second).
        assert any(_run(engine(dv, pushed_only)).counts.read == 0 for _ in range(4))
        assert _status(ledger, "ng@example.com", "service", "phone") != "withdrawn"
        report = _run(engine(dv, shipped))
        assert report.counts.read == 2
        assert _status(ledger, "ng@example.com", "service", "phone") == "withdrawn"
        assert any(_run(engine(dv, shipped)).counts.read == 0 for _ in range(4))
        with ledger.engine.connect() as conn:
            raw = conn.execute(select(sync_cursors.c.cursor).where(sync_cursors.c.object_type == "contact"))
            assert orjson.loads(raw.scalar_one()).get("token")  # a delta link again


def test_a_connector_that_reads_more_by_itself_reads_every_record_again(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connector upgraded to read a field of its own for a mapping (HubSpot's opt-out of all
    email, read beside the subscription statuses) says so by its ``reading_version``: the same
    mapping then means more, and the object is read again."""
    _contacts(org)
    first = _engine(ledger, config_path, org, EMAIL_OPTOUT)
    _run(first)
    assert _run(_engine(ledger, config_path, org, EMAIL_OPTOUT)).counts.read == 0
    monkeypatch.setattr(type(first.connector), "reading_version", "2", raising=False)
    report = _run(_engine(ledger, config_path, org, EMAIL_OPTOUT))
    assert report.counts.read == 2
    assert report.note is not None and "mapping for Contact changed" in report.note
