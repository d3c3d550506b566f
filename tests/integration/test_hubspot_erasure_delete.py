"""Art. 17: an erasure passed on to HubSpot with ``erasure: {contacts: delete}`` deletes the contact
for good (HubSpot's ``gdpr-delete``), never into the recycle bin where an archived contact stays
restorable, personal data and all, for 90 days. Through the real sync engine against the sandbox
over HTTPS: deleted once (a later run sends nothing), the link marked gone from HubSpot's answer
(a permanently deleted contact is in no list a read could find it in), and a sync killed after
HubSpot deleted the contact but before the ledger took the answer sends it again harmlessly."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from sqlalchemy import select

from consentsync import audit
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.ledger.schema import crm_links, outbox
from consentsync.sdk.crashtest import sync_command
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from consentsync.sync.status import connector_status

ERASED = "erase.me@example.test"
KEPT = "keep.me@example.test"
CONNECTOR = "contract"


def _config(hubspot: HubSpotHarness, tmp_path: Path) -> Path:
    path = write_sync_config(hubspot, tmp_path)
    data = yaml.safe_load(path.read_text())
    data["connectors"][0]["erasure"] = {"contacts": "delete"}
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _run(config: Path, **options: Any) -> None:
    report = open_sync_engine(config).run(**options)
    assert report.status == "succeeded", report.error


def _synced_and_erased(hubspot: HubSpotHarness, tmp_path: Path) -> tuple[Path, str, str]:
    """Two people synced, one of them then erased in the ledger: the config, and the erased and
    the kept contact's ids."""
    erased = hubspot.create_person(ERASED)
    kept = hubspot.create_person(KEPT)
    config = _config(hubspot, tmp_path)
    _run(config, full=True)
    engine = open_sync_engine(config)
    engine.ledger.erase(ERASED, reason="Art. 17 request")
    engine.ledger.engine.dispose()
    time.sleep(1.1)
    return config, erased, kept


def _ledger(config: Path, record_id: str) -> tuple[Any, list[Any], list[dict[str, Any]], int]:
    """The record's link, its outbox rows, its crm.pushed audit entries, and the connector's
    erasures still to carry out."""
    loaded = load_config(config)
    ledger = open_ledger(loaded)
    with ledger.engine.connect() as conn:
        link = conn.execute(select(crm_links).where(crm_links.c.record_id == record_id)).one()
        rows = conn.execute(select(outbox).where(outbox.c.record_id == record_id).order_by(outbox.c.id)).all()
        pushed = [e for e in audit.entries(conn, action="crm.pushed") if e["what"]["record"] == record_id]
    (status,) = connector_status(loaded, ledger.engine, late_after=timedelta(hours=1))
    ledger.engine.dispose()
    return link, rows, pushed, int(status["erasures_pending"])


def _deleted_for_good(hubspot: HubSpotHarness, record_id: str) -> None:
    portal = hubspot.sandbox.portal
    assert portal.get(record_id) is None, "the contact is still live"
    assert record_id not in {str(cid) for cid, _ in portal.archived()}, (
        "the contact is in the recycle bin (archived), restorable with its personal data"
    )
    assert portal.restore(record_id) is False, "the erased contact could be restored"
    assert portal.purged(record_id)
    assert portal.blocklisted(ERASED)


def test_an_erasure_deletes_the_hubspot_contact_for_good_once(
    hubspot: HubSpotHarness, tmp_path: Path
) -> None:
    config, erased, kept = _synced_and_erased(hubspot, tmp_path)
    _run(config)
    _deleted_for_good(hubspot, erased)
    assert hubspot.sandbox.calls["gdpr_delete"] == 1 and hubspot.sandbox.calls["batch_archive"] == 0
    assert hubspot.sandbox.portal.get(kept) is not None, "the erasure reached another person's contact"
    link, rows, pushed, pending = _ledger(config, erased)
    assert link.gone_at is not None, "the deleted contact's link is still live"
    assert [(row.action, row.rule, row.status) for row in rows if row.rule == "erasure_delete"] == [
        ("delete", "erasure_delete", "done")
    ]
    assert [p["rule"] for p in pushed if p["rule"] == "erasure_delete"] == ["erasure_delete"]
    assert pending == 0
    # Later runs (a full one too) send nothing more, and nothing brings the contact back.
    time.sleep(1.1)
    _run(config)
    _run(config, full=True)
    assert hubspot.sandbox.calls["gdpr_delete"] == 1, "the erasure was sent again"
    assert _ledger(config, erased)[2] == pushed
    assert _ledger(config, kept)[0].gone_at is None


def test_a_sync_killed_after_hubspot_deleted_the_contact_sends_it_again_harmlessly(
    hubspot: HubSpotHarness, tmp_path: Path
) -> None:
    """The run is killed (SIGKILL) when HubSpot has answered the permanent delete and the
    ledger has not committed the answer. The next run sends it again; HubSpot has nothing left
    to delete (404, confirmed by a read of the id) and the erasure is done, once."""
    config, erased, _kept = _synced_and_erased(hubspot, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "CONSENTSYNC_CONFIG"}
    env["CONSENTSYNC_FAILPOINTS"] = "sync.push.answered=kill@1"
    killed = subprocess.run(sync_command(config, CONNECTOR), env=env, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert hubspot.sandbox.calls["gdpr_delete"] == 1
    _deleted_for_good(hubspot, erased)
    link, rows, pushed, pending = _ledger(config, erased)
    assert link.gone_at is None and pending == 1, "the answer was committed before the kill"
    (sent,) = [row for row in rows if row.rule == "erasure_delete"]
    assert sent.status == "pending" and sent.sent_at is not None
    time.sleep(1.1)
    _run(config)
    assert hubspot.sandbox.calls["gdpr_delete"] == 2, "the unanswered delete was not sent again"
    link, rows, pushed, pending = _ledger(config, erased)
    assert link.gone_at is not None and pending == 0
    assert [(row.rule, row.status) for row in rows if row.rule == "erasure_delete"] == [
        ("erasure_delete", "done")
    ]
    assert [p["rule"] for p in pushed if p["rule"] == "erasure_delete"] == ["erasure_delete"]
    time.sleep(1.1)
    _run(config)
    assert hubspot.sandbox.calls["gdpr_delete"] == 2
