"""Art. 17(2): an erasure is passed on to the CRMs holding the person, by the action configured per
connector and object (suppress, anonymise, delete), through the outbox, audited, once; and the CRM
records read afterwards never bring the address back into the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import select

from consentsync import audit
from consentsync.app import open_ledger, open_sync
from consentsync.config import ConfigError, load_config
from consentsync.demo import find_mappings
from consentsync.ledger.schema import crm_links, subject_identifiers
from consentsync.sync.engine import SyncOptions
from tests.integration.crash_config import CONNECTOR, write_config

ERASED = "erase.me@example.test"
KEPT = "keep.me@example.test"


@pytest.fixture
def org() -> Any:
    with SalesforceSandbox() as sandbox:
        yield sandbox


def _config(
    tmp_path: Path, ledger_url: str, org: Any, monkeypatch: pytest.MonkeyPatch, **erasure: str
) -> Path:
    monkeypatch.setenv("CRASHTEST_SF_SECRET", org.credentials.client_secret)
    path = write_config(tmp_path / "cfg", org, find_mappings(), ledger_url)
    data = yaml.safe_load(path.read_text())
    data["connectors"][0]["erasure"] = erasure
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _sync(path: Path) -> Any:
    engine = open_sync(load_config(path), CONNECTOR)
    engine.ledger.clock = __import__("consentsync.ledger.service", fromlist=["utcnow"]).utcnow
    engine.options = SyncOptions(
        batch_size=50, signpost_lag_seconds=0, erasure_actions=engine.options.erasure_actions
    )
    report = engine.run()
    assert report.status == "succeeded", report.error
    return report


def _erasures_pending(path: Path) -> int:
    from datetime import timedelta

    from consentsync.sync.status import connector_status

    config = load_config(path)
    ledger = open_ledger(config)
    (row,) = connector_status(config, ledger.engine, late_after=timedelta(hours=1))
    ledger.engine.dispose()
    return int(row["erasures_pending"])


def _pushes(path: Path, record_id: str) -> list[dict[str, Any]]:
    ledger = open_ledger(load_config(path))
    with ledger.engine.connect() as conn:
        found = [e for e in audit.entries(conn, action="crm.pushed") if e["what"]["record"] == record_id]
    ledger.engine.dispose()
    return found


@pytest.mark.parametrize("action", ["anonymise", "delete", "suppress"])
def test_the_configured_erasure_action_reaches_the_crm_once(
    tmp_path: Path, ledger_url: str, org: Any, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    erased = org.org.create("Contact", FirstName="Erin", LastName="Rased", Email=ERASED, Phone="+44 20 1")
    kept = org.org.create("Contact", FirstName="Kim", LastName="Kept", Email=KEPT)
    path = _config(tmp_path, ledger_url, org, monkeypatch, Contact=action)
    open_ledger(load_config(path), migrate=True).engine.dispose()
    _sync(path)
    before = len(_pushes(path, erased))
    ledger = open_ledger(load_config(path))
    ledger.erase(ERASED, reason="Art. 17 request")
    assert _erasures_pending(path) == 1, "status does not show the erasure waiting for this CRM"
    ledger.engine.dispose()
    if action == "anonymise":
        # The plan says what is not known of the record rather than that it is empty already.
        from click.testing import CliRunner

        from consentsync.cli import main

        shown = CliRunner().invoke(main, ["--config", str(path), "plan", CONNECTOR])
        assert shown.exit_code == 0, shown.output
        assert "Email: (not kept: personal data) -> None" in shown.stdout, shown.stdout
        assert "Email: None" not in shown.stdout
    _sync(path)
    _sync(path)  # reads its own writes back; nothing more to do
    assert _erasures_pending(path) == 0
    record = org.org.get(erased)
    pushes = _pushes(path, erased)[before:]
    if action == "delete":
        assert record is None or record.get("IsDeleted"), "the record was not deleted"
        assert [p["rule"] for p in pushes] == ["erasure_delete"]
    elif action == "anonymise":
        assert record is not None
        assert (record["FirstName"], record["LastName"], record["Email"], record["Phone"]) == (
            None,
            "Erased",
            None,
            None,
        )
        assert [p["rule"] for p in pushes] == ["erasure_anonymise"]
    else:
        assert record is not None and record["Email"] == ERASED and record["HasOptedOutOfEmail"] is True
        assert all(p["rule"] != "erasure_anonymise" for p in pushes)
    assert org.org.get(kept)["LastName"] == "Kept", "the erasure reached another person's record"
    # Whatever the action, the address is not in the ledger any more, and the link stays.
    ledger = open_ledger(load_config(path))
    with ledger.engine.connect() as conn:
        addresses = conn.execute(select(subject_identifiers.c.value)).scalars().all()
        links = conn.execute(select(crm_links.c.record_id, crm_links.c.gone_at)).all()
    ledger.engine.dispose()
    assert ERASED not in addresses and KEPT in addresses
    gone = {row.record_id: row.gone_at for row in links}
    assert erased in gone
    assert (gone[erased] is not None) == (action == "delete"), "a deleted record's link is gone, others stay"


def test_an_erasure_action_the_connector_cannot_carry_out_is_a_config_error(
    tmp_path: Path, ledger_url: str, org: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _config(tmp_path, ledger_url, org, monkeypatch, ContactPointTypeConsent="anonymise")
    with pytest.raises(
        ConfigError, match=r"erasure\.ContactPointTypeConsent: anonymise needs personal_fields"
    ):
        open_sync(load_config(path), CONNECTOR)
    path = _config(tmp_path, ledger_url, org, monkeypatch, Account="delete")
    # An object no mapping maps is refused as the config loads (its line, the accepted ones).
    with pytest.raises(
        ConfigError,
        match=r":\d+: connectors\[0\]\.erasure\.Account: unknown object type 'Account'.*: Contact, ",
    ):
        load_config(path)
