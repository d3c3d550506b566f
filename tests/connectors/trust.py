"""The trust check every connector's tests against its sandbox make: the CA file a connector is
configured with (``ca_bundle``) wins over an admin's ``REQUESTS_CA_BUNDLE``, which requests would
otherwise prefer to a session's own ``verify``."""

from __future__ import annotations

import pytest

from consentsync.sandbox import system_ca_bundle_path
from consentsync.sdk import Connector


def check_with_requests_ca_bundle_set(connector: Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    """``connector.check()`` succeeds while ``REQUESTS_CA_BUNDLE`` names this machine's roots,
    a bundle without the sandbox's CA: had the connector let the variable win, TLS would fail."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(system_ca_bundle_path()))
    connector.check()
