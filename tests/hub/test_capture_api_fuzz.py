"""Schemathesis fuzzes every operation of the capture API (from its own OpenAPI document) with a
key that may do everything, valid and invalid data: no request may end in a server error, and
nothing malformed is recorded as something else."""

from __future__ import annotations

from typing import Any

import schemathesis

from consentsync.hub.api import create_app
from tests.conftest import SQLITE_ONLY
from tests.hub.conftest import HubWorld
from tests.web.fuzzing import fuzz_operations

EXAMPLES_PER_OPERATION = 15


def _one_line_error(response: Any) -> None:
    """A refusal of malformed data is one line naming the field, never a half-read value."""
    if response.status_code == 422:
        assert set(response.json()) == {"error"}  # one line naming the field


@SQLITE_ONLY
def test_no_capture_operation_answers_a_server_error(world: HubWorld) -> None:
    app = create_app(world.hub)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 5
    statuses = fuzz_operations(
        operations, lambda case: case.call(headers=world.auth()), EXAMPLES_PER_OPERATION, _one_line_error
    )
    assert 422 in set().union(*statuses.values())
