"""Schemathesis fuzzes every operation of the JSON API (from its own OpenAPI document) as an admin,
with valid and invalid data, on SQLite (CI time): no request may end in a server error."""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi.testclient import TestClient

from tests.conftest import SQLITE_ONLY
from tests.web.conftest import World, api_login
from tests.web.fuzzing import fuzz_operations

EXAMPLES_PER_OPERATION = 6


@SQLITE_ONLY  # the API's handling; its SQL runs on PostgreSQL in the web tests (CI time)
def test_no_api_operation_answers_a_server_error(app: Any, world: World) -> None:
    client = TestClient(app)
    csrf = api_login(client, "ada")
    session = {"consentsync_session": client.cookies["consentsync_session"]}
    # The API's description needs a login like everything else.
    cookie = {"Cookie": f"consentsync_session={session['consentsync_session']}"}
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app, headers=cookie)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    statuses = fuzz_operations(
        operations,
        lambda case: case.call(headers={"X-CSRF-Token": csrf}, cookies=session),
        EXAMPLES_PER_OPERATION,
    )
    # The fuzzing reached the operations themselves, not only the doors in front of them.
    assert any(200 in codes for codes in statuses.values())
    assert 422 in set().union(*statuses.values())
