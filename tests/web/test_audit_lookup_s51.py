"""Finding a person's audit trail by their address is a read of their record (session 51).

The subject page writes down who opened whose record (``subject.viewed``, Art. 30), but the
audit trail's search by address did not: any viewer could type an address there and see whether
the person is or was in the ledger (erased people too), their consent history and the reasons
of the decisions about them, and leave no trace. The look-up is audited now, for each person the
address names, on the page and in the API alike; an address naming nobody writes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from consentsync.ledger.schema import audit_entries
from tests.web.conftest import World, api_login, log_in, page_csrf


def _views(world: World) -> list[dict[str, Any]]:
    with world.ledger.engine.connect() as conn:
        texts = conn.execute(
            select(audit_entries.c.payload).where(audit_entries.c.action == "subject.viewed")
        ).scalars()
        return [json.loads(text) for text in texts]


def test_a_trail_found_by_address_on_the_page_is_audited(app: Any, world: World) -> None:
    (uid,) = world.ledger.subject_uids_for_email(world.objector)
    client = log_in(TestClient(app), "vic")
    csrf = page_csrf(client.get("/audit").text)
    assert _views(world) == []
    found = client.post("/audit", data={"csrf_token": csrf, "email": world.objector.upper()})
    assert found.status_code == 200 and uid[:8] in found.text
    (view,) = _views(world)
    assert (view["subject"], view["actor"], view["source"]) == (uid, "vic", "console")
    assert view["what"] == {"by": "email", "via": "audit_trail"}
    # The address itself is never written down.
    assert world.objector not in json.dumps(view)

    # Paging on through the trail (by subject id) is no new look-up.
    client.get("/audit", params={"subject": uid, "page": 2})
    assert len(_views(world)) == 1

    # An address that names nobody: nothing to write down.
    client.post("/audit", data={"csrf_token": csrf, "email": "nobody@nowhere.example"})
    assert len(_views(world)) == 1


def test_a_trail_found_by_address_through_the_api_is_audited_even_once_erased(app: Any, world: World) -> None:
    (uid,) = world.ledger.subject_uids_for_email(world.objector)
    world.ledger.erase(world.objector, reason="Art. 17 request 7")
    client = TestClient(app)
    csrf = api_login(client, "vic")
    answer = client.post("/api/audit/search", json={"email": world.objector}, headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 200 and answer.json()["subjects"] == [uid]
    (view,) = _views(world)
    assert (view["subject"], view["actor"], view["source"]) == (uid, "vic", "api")
    assert view["what"] == {"by": "email", "via": "audit_trail"}
    # A search without an address reads nobody's record by name: not audited.
    client.post("/api/audit/search", json={"subject": uid}, headers={"X-CSRF-Token": csrf})
    assert len(_views(world)) == 1
