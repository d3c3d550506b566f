"""The SuperOffice connector passes the connector contract against its sandbox."""

from consentsync_superoffice.sandbox.harness import SuperOfficeHarness

from consentsync.sdk.testing import ConnectorContract


class TestSuperOfficeContract(ConnectorContract):
    harness_class = SuperOfficeHarness
