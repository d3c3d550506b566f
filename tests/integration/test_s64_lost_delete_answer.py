"""An erasure's delete whose answer was lost (session 64 fault test): the run is killed
(SIGKILL) after Salesforce moved the contact to its recycle bin and before the ledger took the
answer. The next run's deletion listing names the contact: that is the delete carried out, audited
``crm.pushed`` (rule ``erasure_delete``, confirmed by reading it back) and done, exactly as an
uninterrupted run leaves it; not a deletion made in the CRM superseding the erasure (the ledger
would lose its proof that the erasure was passed on, Art. 17(2), 5(2)), and not sent again."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from consentsync import audit
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.ledger.schema import crm_links, outbox
from consentsync.sdk.crashtest import sync_command
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from tests.conftest import running_harness

ERASED, KEPT = "erase.me@example.test", "keep.me@example.test"
CONNECTOR = "contract"


@pytest.fixture
def salesforce() -> Iterator[Any]:
    with running_harness("salesforce") as started:
        yield started


def _run(config: Path) -> None:
    report = open_sync_engine(config).run()
    assert report.status == "succeeded", report.error


def _erased_contact(salesforce: Any, tmp_path: Path) -> tuple[Path, str, list[str]]:
    """Two people synced, one then erased; the config, the erased contact, and the ids of the
    delete calls Salesforce receives from then on."""
    erased = salesforce.create_person(ERASED)
    salesforce.create_person(KEPT)
    path = write_sync_config(salesforce, tmp_path)
    data = yaml.safe_load(path.read_text())
    data["connectors"][0]["erasure"] = {"Contact": "delete"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    open_sync_engine(path).run(full=True)
    engine = open_sync_engine(path)
    engine.ledger.erase(ERASED, reason="Art. 17 request")
    engine.ledger.engine.dispose()
    deletes: list[str] = []
    org = salesforce.sandbox.org
    original = org.delete_many

    def counted(record_ids: Any, **options: Any) -> Any:
        deletes.extend(record_ids)
        return original(record_ids, **options)

    org.delete_many = counted
    time.sleep(1.1)
    return path, erased, deletes


def _trail(config: Path, record_id: str) -> tuple[Any, list[Any], list[dict[str, Any]]]:
    ledger = open_ledger(load_config(config))
    with ledger.engine.connect() as conn:
        link = conn.execute(select(crm_links).where(crm_links.c.record_id == record_id)).one()
        rows = conn.execute(select(outbox).where(outbox.c.record_id == record_id).order_by(outbox.c.id)).all()
        entries = [e for e in audit.entries(conn) if (e.get("what") or {}).get("record") == record_id]
    ledger.engine.dispose()
    return link, rows, entries


def test_a_delete_whose_answer_was_lost_is_recognised_as_carried_out(salesforce: Any, tmp_path: Path) -> None:
    config, erased, deletes = _erased_contact(salesforce, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "CONSENTSYNC_CONFIG"}
    env["CONSENTSYNC_FAILPOINTS"] = "sync.push.answered=kill@1"
    killed = subprocess.run(sync_command(config, CONNECTOR), env=env, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert deletes == [erased] and salesforce.sandbox.org.get(erased)["IsDeleted"]
    link, rows, _ = _trail(config, erased)
    (sent,) = [row for row in rows if row.rule == "erasure_delete"]
    assert sent.status == "pending" and sent.sent_at is not None and link.gone_at is None

    time.sleep(1.1)
    _run(config)
    link, rows, entries = _trail(config, erased)
    assert deletes == [erased], "the delete was sent again"
    assert [(row.rule, row.status) for row in rows if row.rule == "erasure_delete"] == [
        ("erasure_delete", "done")
    ]
    assert link.gone_at is not None
    actions = [(e["action"], e.get("rule")) for e in entries if e["action"].startswith("crm.")]
    assert ("crm.pushed", "erasure_delete") in actions
    assert not [a for a in actions if a[0] == "crm.record_deleted"], actions
    (pushed,) = [e for e in entries if e["action"] == "crm.pushed" and e.get("rule") == "erasure_delete"]
    assert pushed["what"]["action"] == "delete" and pushed["what"]["confirmed_by"] == "read_back"

    time.sleep(1.1)
    _run(config)
    assert deletes == [erased] and _trail(config, erased)[2] == entries
