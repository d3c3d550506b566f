"""Schemathesis fuzzes every operation of the capture API (from its own OpenAPI document) with a
key that may do everything, valid and invalid data: no request may end in a server error, and
nothing malformed is recorded as something else."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from consentsync.hub.api import create_app
from tests.conftest import SQLITE_ONLY
from tests.hub.conftest import HubWorld

EXAMPLES_PER_OPERATION = 15


@SQLITE_ONLY
def test_no_capture_operation_answers_a_server_error(world: HubWorld) -> None:
    app = create_app(world.hub)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 5
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
                response = case.call(headers=world.auth())
                statuses.setdefault(case.operation.label, set()).add(response.status_code)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} {case.body!r} -> "
                    f"{response.status_code}: {response.text[:500]}"
                )
                if response.status_code == 422:
                    assert set(response.json()) == {"error"}  # one line naming the field

            try:
                call()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert 422 in set().union(*statuses.values())
