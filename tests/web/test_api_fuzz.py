"""Schemathesis fuzzes every operation of the JSON API (from its own OpenAPI document) as an admin,
with valid and invalid data, on SQLite and PostgreSQL: no request may end in a server error."""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.web.conftest import World, api_login

EXAMPLES_PER_OPERATION = 6


def test_no_api_operation_answers_a_server_error(app: Any, world: World) -> None:
    client = TestClient(app)
    csrf = api_login(client, "ada")
    session = {"consentsync_session": client.cookies["consentsync_session"]}
    # The API's description needs a login like everything else.
    cookie = {"Cookie": f"consentsync_session={session['consentsync_session']}"}
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app, headers=cookie)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    statuses: dict[str, set[int]] = {}

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def call(case: Any) -> None:
                response = case.call(headers={"X-CSRF-Token": csrf}, cookies=session)
                statuses.setdefault(case.operation.label, set()).add(response.status_code)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} {case.query} {case.body!r} -> "
                    f"{response.status_code}: {response.text[:500]}"
                )

            try:
                call()
            except Unsatisfiable:
                # An operation that takes no input has no invalid input to try.
                assert mode is GenerationMode.NEGATIVE, operation.label
    # The fuzzing reached the operations themselves, not only the doors in front of them.
    assert any(200 in codes for codes in statuses.values())
    assert 422 in set().union(*statuses.values())
