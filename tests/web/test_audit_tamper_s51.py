"""An audit entry's details edited outside consentsync (session 51).

The application's database role may update ``audit_details.content`` (erasure blanks it), so
whoever holds the application's credentials can write anything there. Text that was no JSON
object made every reader fail: *Verify chain* answered 500 instead of naming the entry, and the
audit trail, the objection queue and an objection's page answered 500 too, for every viewer,
until someone repaired the row by hand. The check names the edited entry now, and the pages
show the entry without its details, saying why.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from consentsync import exit_codes
from consentsync.ledger.schema import audit_details
from tests.conftest import Cli
from tests.web.conftest import World, api_login, log_in, page_csrf

# Neither is a JSON object: the first no JSON at all, the second a JSON list.
EDITS = ["reason: none", '["none"]']


def _decided_and_edited(world: World, content: str) -> int:
    """The world's objection rejected with a reason, then its details overwritten with ``content``."""
    world.ledger.decide_objection(world.objection_id, uphold=False, by="dpo", reason="fraud checks (case 9)")
    with world.ledger.engine.connect() as conn:
        seq = int(
            conn.execute(select(audit_details.c.seq).order_by(audit_details.c.seq.desc())).scalars().first()
        )
    with world.ledger.engine.begin() as conn:
        conn.execute(audit_details.update().where(audit_details.c.seq == seq).values(content=content))
    return seq


@pytest.mark.parametrize("content", EDITS)
def test_verify_names_the_entry_whose_details_are_no_json_object(
    app: Any, world: World, content: str
) -> None:
    seq = _decided_and_edited(world, content)
    client = TestClient(app, raise_server_exceptions=False)
    csrf = api_login(client, "vic")
    answer = client.post("/api/audit/verify", headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert (found["ok"], found["broken_seq"]) == (False, seq)
    assert "details" in found["problem"]

    # The console's button says where too.
    page = log_in(TestClient(app, raise_server_exceptions=False), "vic")
    shown = page.post("/audit/verify", data={"csrf_token": page_csrf(page.get("/audit").text)})
    assert shown.status_code == 200
    assert f"Chain BROKEN at entry {seq}" in shown.text


@pytest.mark.parametrize("content", EDITS)
def test_the_pages_still_answer_and_show_the_entry_without_its_details(
    app: Any, world: World, content: str
) -> None:
    seq = _decided_and_edited(world, content)
    client = TestClient(app, raise_server_exceptions=False)
    csrf = api_login(client, "vic")
    search = client.post(
        "/api/audit/search", json={"action": "objection.decided"}, headers={"X-CSRF-Token": csrf}
    )
    assert search.status_code == 200, search.text
    (entry,) = search.json()["items"]
    assert entry["seq"] == seq and entry["details"] is None and entry["details_unreadable"] is True
    queue = client.get("/api/objections", params={"status": "all"})
    assert queue.status_code == 200, queue.text
    decided = next(item for item in queue.json()["items"] if item["id"] == world.objection_id)
    assert decided["status"] == "rejected" and decided["reason"] is None
    assert client.get(f"/api/objections/{world.objection_id}").status_code == 200

    pages = log_in(TestClient(app, raise_server_exceptions=False), "vic")
    trail = pages.get("/audit", params={"action": "objection.decided"})
    assert trail.status_code == 200
    assert "details edited outside consentsync" in trail.text
    for path in ("/objections?status=all", f"/objections/{world.objection_id}"):
        assert pages.get(path).status_code == 200, path


def test_the_command_line_check_names_the_entry_too(cli: Cli, world: World) -> None:
    seq = _decided_and_edited(world, EDITS[0])
    result = cli("audit", "verify")
    assert result.exit_code != exit_codes.OK
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert f"audit chain BROKEN at entry {seq}: details" in result.output, result.output
