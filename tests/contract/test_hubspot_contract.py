"""The HubSpot connector passes the connector contract against its sandbox."""

from consentsync_hubspot.sandbox.harness import HubSpotHarness

from consentsync.sdk.testing import ConnectorContract


class TestHubSpotContract(ConnectorContract):
    harness_class = HubSpotHarness
