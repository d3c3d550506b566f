"""The preference centre's own export (Art. 15, the person downloading their record) says when,
by whom and why their processing was restricted (Art. 18) and lifted, as ops exports do."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from tests.hub.conftest import HubWorld
from tests.hub.people_world import EMAIL, mailed, people_pages, seed, sqlite_ledger_url, token_of

# The module's fixtures: `ledger_url` (SQLite only here) and `people` (the pages, in-process).
FIXTURES = (sqlite_ledger_url, people_pages)


def test_the_person_sees_when_by_whom_and_why_they_were_restricted(
    world: HubWorld, people: TestClient
) -> None:
    token = token_of(world, seed(world))
    world.ledger.restrict(EMAIL, restricted=True, reason="accuracy contested", actor="dpo.anna")
    world.clock.advance(minutes=5)
    world.ledger.restrict(EMAIL, restricted=False, reason="accuracy confirmed", actor="dpo.ben")
    world.clock.advance(minutes=5)
    world.ledger.restrict(EMAIL, restricted=True, reason="legal claim pending", actor="dpo.cara")
    people.post(f"/p/preferences/{token}/export", data={})  # mails the download link
    response = people.post(mailed(world, "/p/export/"), data={"format": "json"})
    assert response.status_code == 200
    view = json.loads(response.content)
    assert view["restricted"] is True
    assert (view["restricted_by"], view["restriction_reason"]) == ("dpo.cara", "legal claim pending")
    assert [(r["change"], r["actor"], r["reason"]) for r in view["restrictions"]] == [
        ("placed", "dpo.anna", "accuracy contested"),
        ("lifted", "dpo.ben", "accuracy confirmed"),
        ("placed", "dpo.cara", "legal claim pending"),
    ]
    assert (
        view["restrictions"][0]["changed_at"]
        < view["restrictions"][2]["changed_at"]
        == view["restricted_since"]
    )
