"""The Salesforce connector passes the connector contract against its sandbox."""

from consentsync_salesforce.sandbox.harness import SalesforceHarness

from consentsync.sdk.testing import ConnectorContract


class TestSalesforceContract(ConnectorContract):
    harness_class = SalesforceHarness
