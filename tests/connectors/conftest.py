"""Fixtures shared by the connector tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from consentsync_hubspot.sandbox.harness import HubSpotHarness


@pytest.fixture
def merging_hubspot(request: pytest.FixtureRequest) -> Iterator[HubSpotHarness]:
    """A HubSpot sandbox merging contacts as HubSpot does since its 2023 change (into a new
    contact that both old ids answer); ``indirect`` parameters override the harness's settings."""
    made = HubSpotHarness(**{"merges": "new", **getattr(request, "param", {})})
    made.start()
    try:
        yield made
    finally:
        made.stop()
