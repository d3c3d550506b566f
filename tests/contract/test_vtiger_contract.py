"""The Vtiger connector passes the connector contract against its sandbox."""

from consentsync_vtiger.sandbox.harness import VtigerHarness

from consentsync.sdk.testing import ConnectorContract


class TestVtigerContract(ConnectorContract):
    harness_class = VtigerHarness
