"""bb64 dynfix item 5: Microsoft Learn documents only that Dataverse "throws an exception" for a
change-tracking token older than the retention period (Organization ExpireChangeTrackingInDays,
7 days by default: "Use change tracking to synchronize data with external systems"), not the
status it answers with. The connector took a delta link as refused only on 400 or 410: an
ExpiredVersionStamp (0x80044352) answered with a 5xx was retried as a server error and failed
the run, every run, instead of reading the table again in full. It is the link's expiry at any
status (its code, or its message)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from consentsync_dynamics import DynamicsConnector
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.sdk import Cursor
from tests.connectors.against_sandbox import connector_settings, read_until
from tests.sandbox.serving import serve_seeded


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    yield from serve_seeded(DynamicsSandbox(), lambda server: server.environment.seed(30, seed=5))


@pytest.mark.parametrize("status", [500, 503, 400])
def test_an_expired_link_is_read_again_in_full_whatever_its_status(dv: DynamicsSandbox, status: int) -> None:
    settings = connector_settings(dv.connection_settings(), {"page_size": 40, "max_attempts": 2})
    connector = DynamicsConnector("dyn", settings)
    list(connector.read_changes("contact", ["donotbulkemail"], Cursor(), read_until()))
    cursor = connector.completed_cursor
    assert cursor is not None and cursor.token
    dv.expired_delta_status = status
    dv.expire_delta_tokens()
    before = connector.usage.per_endpoint.get("delta", 0)
    connector.completed_cursor = None
    again = list(connector.read_changes("contact", ["donotbulkemail"], cursor, read_until()))
    assert connector.full_reloads == 1
    assert len(again) == dv.environment.count("contact")
    assert connector.usage.per_endpoint.get("delta", 0) - before == 1  # refused once, not retried
    assert connector.completed_cursor is not None and connector.completed_cursor.token


def test_a_server_error_of_another_kind_is_still_retried(dv: DynamicsSandbox) -> None:
    """Only the expiry reloads: a 5xx without its code or message is a transient failure."""
    settings = connector_settings(dv.connection_settings(), {"page_size": 40, "max_attempts": 2})
    connector = DynamicsConnector("dyn", settings)
    list(connector.read_changes("contact", ["donotbulkemail"], Cursor(), read_until()))
    cursor = connector.completed_cursor
    assert cursor is not None
    dv.faults.update(error_rate=1.0, error_status=503, error_kinds={"delta"}, error_calls=1)
    connector.completed_cursor = None
    list(connector.read_changes("contact", ["donotbulkemail"], cursor, read_until()))
    assert connector.full_reloads == 0
