"""The console's JSON API refuses a body that names a key twice, as the capture API does.

``POST /api/objections/{id}/decision`` with ``{"decision": "uphold", "decision": "reject"}``
recorded a rejection: Python's parser takes the last of two, while a proxy or an audit log that
reads the first saw an objection upheld. Every ``/api`` body is now refused with 422 and
``{"detail": ...}`` naming the key and where (``hub.api.duplicate_key``), nothing done; checked
only once the caller is let in (session, CSRF token, role), and the login's once its body is a
login's, before the password is checked.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from consentsync.ledger.schema import audit_entries, console_login_failures, console_users
from consentsync.web import api
from tests.conftest import SQLITE_ONLY
from tests.web.conftest import PASSWORDS, World, api_login, app, config_path, sf, world

# The console's test world (tests/web/conftest.py), for a module outside tests/web.
FIXTURES = (app, config_path, sf, world)

TWICE = '{"a": 1, "a": 2}'
TWICE_ERROR = {"detail": "a: duplicate key 'a' in the top level"}
JSON = {"Content-Type": "application/json"}

# Each route reading a JSON body, with its path filled in (what the ids name does not matter:
# the body is refused before anything is looked up).
BODY_ROUTES = {
    ("POST", "/api/session"),
    ("POST", "/api/session/password"),
    ("POST", "/api/runs/{run_id}/retry"),
    ("POST", "/api/audit/search"),
    ("POST", "/api/subjects/lookup"),
    ("POST", "/api/objections/{objection_id}/decision"),
    ("POST", "/api/users"),
    ("POST", "/api/users/{name}"),
    ("POST", "/api/plans/{plan_id}/approve"),
    ("POST", "/api/plans/{plan_id}/reject"),
}
FILLED = {"{run_id}": "r1", "{objection_id}": "1", "{name}": "vic", "{plan_id}": "1"}


def body_routes() -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in api.router.routes
        if isinstance(route, APIRoute) and route.body_field is not None
        for method in route.methods
    }


def filled(path: str) -> str:
    for placeholder, value in FILLED.items():
        path = path.replace(placeholder, value)
    return path


def snapshot(world: World) -> tuple[int, int, int, str]:
    """What a request could change: audit entries, counted failed logins, accounts, and the
    world's objection."""
    with world.ledger.engine.connect() as conn:
        counts = [
            conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (audit_entries, console_login_failures, console_users)
        ]
    (status,) = [o["status"] for o in world.ledger.list_objections() if o["id"] == world.objection_id]
    return counts[0], counts[1], counts[2], status


def send(client: TestClient, path: str, body: str, csrf: str | None = None) -> Any:
    headers = {**JSON, **({"X-CSRF-Token": csrf} if csrf else {})}
    return client.post(path, content=body.encode(), headers=headers)


def test_every_route_reading_a_body_is_listed() -> None:
    """A route added with a body fails here until a test below covers its kind."""
    assert body_routes() == BODY_ROUTES


@SQLITE_ONLY
@pytest.mark.parametrize(("method", "path"), sorted(BODY_ROUTES - {("POST", "/api/session")}))
def test_every_body_behind_a_login_naming_a_key_twice_is_refused(
    app: Any, world: World, method: str, path: str
) -> None:
    client = TestClient(app)
    csrf = api_login(client, "ada")  # an admin may call them all
    before = snapshot(world)
    answer = client.request(
        method, filled(path), content=TWICE.encode(), headers={**JSON, "X-CSRF-Token": csrf}
    )
    assert (answer.status_code, answer.json()) == (422, TWICE_ERROR)
    assert snapshot(world) == before


@SQLITE_ONLY
def test_a_login_naming_a_key_twice_is_refused_before_the_password_is_checked(app: Any, world: World) -> None:
    client = TestClient(app)
    before = snapshot(world)
    for password in (PASSWORDS["ada"], "wrong-password"):
        body = f'{{"name": "ada", "password": "{password}", "name": "rex"}}'
        answer = send(client, "/api/session", body)
        assert (answer.status_code, answer.json()) == (
            422,
            {"detail": "name: duplicate key 'name' in the top level"},
        )
    # No session, no failed login counted, nothing audited.
    assert "consentsync_session" not in client.cookies and snapshot(world) == before
    # The same login naming each key once logs in, and the API's description is unchanged.
    assert api_login(client, "ada")
    schema = client.get("/api/openapi.json").json()["paths"]["/api/session"]["post"]["requestBody"]
    assert schema["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Credentials"}


@SQLITE_ONLY
def test_a_body_that_is_no_login_costs_an_anonymous_client_no_check(
    app: Any, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever is not let in gets what they got before; the check is never run for them."""
    checked: list[bytes] = []
    real = api.names_a_key_twice
    monkeypatch.setattr(api, "names_a_key_twice", lambda body: checked.append(body) or real(body))
    client = TestClient(app)
    answer = send(client, "/api/session", TWICE)
    assert answer.status_code == 422 and isinstance(answer.json()["detail"], list)  # the model's
    decision = f"/api/objections/{world.objection_id}/decision"
    twice = '{"decision": "uphold", "reason": "asked", "decision": "reject"}'
    assert send(client, decision, twice).status_code == 401  # no session
    api_login(client, "rex")
    assert send(client, decision, twice).status_code == 403  # no CSRF token
    viewer = TestClient(app)
    assert send(viewer, decision, twice, api_login(viewer, "vic")).status_code == 403  # role
    # Only the two logins, once they were a login's, were checked; none of the bodies refused.
    assert not {TWICE.encode(), twice.encode()} & set(checked) and len(checked) == 2
    assert snapshot(world)[3] == "pending"


@SQLITE_ONLY
def test_a_viewer_looking_a_person_up_by_two_addresses_is_refused_and_nothing_audited(
    app: Any, world: World
) -> None:
    client = TestClient(app)
    csrf = api_login(client, "vic")
    before = snapshot(world)
    body = f'{{"email": "{world.objector}", "email": "someone.else@example.test"}}'
    answer = send(client, "/api/subjects/lookup", body, csrf)
    assert (answer.status_code, answer.json()) == (
        422,
        {"detail": "email: duplicate key 'email' in the top level"},
    )
    assert snapshot(world) == before  # no subject.viewed
    found = send(client, "/api/subjects/lookup", f'{{"email": "{world.objector}"}}', csrf)
    assert found.status_code == 200, found.text


@SQLITE_ONLY
def test_a_reviewers_decision_naming_it_twice_is_refused_and_the_objection_stays_pending(
    app: Any, world: World
) -> None:
    client = TestClient(app)
    csrf = api_login(client, "rex")
    path = f"/api/objections/{world.objection_id}/decision"
    before = snapshot(world)
    answer = send(client, path, '{"decision": "uphold", "reason": "asked", "decision": "reject"}', csrf)
    assert (answer.status_code, answer.json()) == (
        422,
        {"detail": "decision: duplicate key 'decision' in the top level"},
    )
    # Deeper down, the key is named with its place.
    bulk = f"/api/runs/{world.run_id}/retry"
    deep = send(client, bulk, '{"scope": "all", "x": [{}, {"k": 1, "k": 2}]}', csrf)
    assert (deep.status_code, deep.json()) == (422, {"detail": "x[1].k: duplicate key 'k' in x[1]"})
    assert snapshot(world) == before
    decided = send(client, path, '{"decision": "reject", "reason": "asked"}', csrf)
    assert decided.status_code == 200 and snapshot(world)[3] == "rejected", decided.text


@SQLITE_ONLY
def test_an_admin_adding_an_account_with_two_roles_is_refused_and_no_account_added(
    app: Any, world: World
) -> None:
    client = TestClient(app)
    csrf = api_login(client, "ada")
    before = snapshot(world)
    body = '{"name": "eve", "role": "viewer", "password": "eve-password-123", "role": "admin"}'
    answer = send(client, "/api/users", body, csrf)
    assert (answer.status_code, answer.json()) == (
        422,
        {"detail": "role: duplicate key 'role' in the top level"},
    )
    assert snapshot(world) == before
    # Not JSON at all: FastAPI's own answer, as before.
    broken = send(client, "/api/users", '{"name": "eve",', csrf)
    assert broken.status_code == 422 and broken.json()["detail"][0]["msg"] == "JSON decode error"
    added = send(
        client, "/api/users", '{"name": "eve", "role": "viewer", "password": "eve-password-123"}', csrf
    )
    assert added.status_code == 201 and added.json()["role"] == "viewer", added.text
