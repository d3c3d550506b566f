"""Session 66 review of 7ddf9dd: an erasure's anonymise marked sent but never delivered (SIGKILL at
sync.push.sent); meanwhile a CRM user, following a manual GDPR checklist, blanks the Email and ticks
the opt-out flags but leaves the name and phone. The next run's read-back judges the anonymise by
the fields the mapping reads only, settled it "done" (crm.pushed confirmed_by read_back, new
LastName "Erased") and never sent it: the erased person's name and phone stayed in Salesforce.
Now the row stays and is sent again, whole."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from consentsync.sdk.crashtest import sync_command
from tests.integration.test_s64_lost_delete_answer import CONNECTOR, _run, _trail
from tests.integration.test_s64_lost_delete_answer import salesforce as salesforce  # the fixture
from tests.integration.test_s65_lost_anonymise_answer import erased_after_a_sync


def test_anonymise_never_delivered_is_not_settled_by_a_users_partial_edit(
    salesforce: Any, tmp_path: Path
) -> None:
    erased, config = erased_after_a_sync(salesforce, tmp_path, Phone="+44 20 7946 0000")
    org = salesforce.sandbox.org
    before = dict(org.get(erased))

    env = {k: v for k, v in os.environ.items() if k != "CONSENTSYNC_CONFIG"}
    env["CONSENTSYNC_FAILPOINTS"] = "sync.push.sent=kill@1"
    killed = subprocess.run(sync_command(config, CONNECTOR), env=env, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert org.get(erased)["LastName"] == before["LastName"], "the CRM saw the write"
    _, rows, _ = _trail(config, erased)
    (sent,) = [row for row in rows if row.rule == "erasure_anonymise"]
    fields = orjson.loads(sent.fields)
    print("anonymise fields:", fields)
    # The CRM user's edit: every field the anonymise writes but the name and phone.
    org.update(erased, {k: v for k, v in fields.items() if k not in ("FirstName", "LastName", "Phone")})
    time.sleep(1.1)
    _run(config)
    time.sleep(1.1)
    _run(config)
    _, rows, entries = _trail(config, erased)
    record = org.get(erased)
    pushed = [e for e in entries if e["action"] == "crm.pushed" and e.get("rule") == "erasure_anonymise"]
    print("rows:", [(r.id, r.status) for r in rows if r.rule == "erasure_anonymise"])
    print("audit new:", [(e["new"].get("LastName"), e["what"].get("confirmed_by")) for e in pushed])
    print("CRM now:", record["FirstName"], record["LastName"], record["Phone"])
    assert (record["FirstName"], record["LastName"], record["Phone"]) == (None, "Erased", None), (
        "anonymise settled by read-back, but the erased person's name/phone are still in the CRM"
    )
    # The same row, sent again whole: its entry names every field it wrote, none confirmed by
    # a read that could not see the name and phone.
    assert [(r.id, r.status) for r in rows if r.rule == "erasure_anonymise"] == [(sent.id, "done")]
    (entry,) = pushed
    assert "confirmed_by" not in entry["what"] and set(entry["new"]) == set(fields), entry
