"""The Acme connector passes consentsync's connector contract against its sandbox."""

from consentsync_acme.testing import AcmeHarness

from consentsync.sdk.testing import ConnectorContract


class TestAcmeContract(ConnectorContract):
    harness_class = AcmeHarness
