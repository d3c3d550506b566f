"""The Dynamics 365 / Dataverse connector passes the connector contract against its sandbox."""

from consentsync_dynamics.sandbox.harness import DynamicsHarness

from consentsync.sdk.testing import ConnectorContract


class TestDynamicsContract(ConnectorContract):
    harness_class = DynamicsHarness
