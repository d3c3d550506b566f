"""What every connector's tests against its sandbox share: the settings a test's connector gets
(the sandbox's, the file's tunings, the test's own), where a test's read stops, and the budget
check of a full read."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from consentsync.sdk import BudgetExhausted, Connector, Cursor

# Enough to ride out the one fault at a time the tests inject, few enough that a test meant to
# fail fails fast; a test that needs more or fewer says so in its own settings.
TEST_ATTEMPTS = 4


def connector_settings(connection: Mapping[str, Any], *layers: Mapping[str, Any]) -> dict[str, Any]:
    """A connector's settings: how to reach the sandbox, :data:`TEST_ATTEMPTS`, then each layer
    in turn (the file's tunings, then a test's own), a later layer winning."""
    merged: dict[str, Any] = {**connection, "max_attempts": TEST_ATTEMPTS}
    for layer in layers:
        merged.update(layer)
    return merged


def read_until() -> datetime:
    """Where a test's read stops: a little after now, so that every change a test has made is
    inside the window (a connector never reads up to the present)."""
    return datetime.now(UTC) + timedelta(seconds=5)


def assert_budget_stops_a_full_read(connector: Connector, object_type: str, fields: list[str]) -> None:
    """A full read of ``object_type`` ends in :class:`BudgetExhausted` (not a partial answer)."""
    with pytest.raises(BudgetExhausted):
        list(connector.read_changes(object_type, fields, Cursor(), read_until()))


def lose_answers(session: requests.Session, match: Callable[[Any], bool], times: int = 1) -> list[str]:
    """The first ``times`` requests ``match`` takes reach the CRM (and are applied there), then
    their answer is lost, as when the connection drops after the CRM wrote."""
    lost: list[str] = []
    for adapter in list(session.adapters.values()):
        original = adapter.send

        def send(request: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            response = _original(request, *args, **kwargs)
            if len(lost) < times and match(request):
                lost.append(str(request.url))
                raise requests.exceptions.ReadTimeout("answer lost", request=request)
            return response

        adapter.send = send  # type: ignore[method-assign]
    return lost
