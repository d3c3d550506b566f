"""Local sandboxes of the CRMs consentsync talks to: real HTTPS servers on 127.0.0.1 speaking each
vendor's documented wire format, with in-memory data, seeding and fault injection, for the tests
and the demo.

Salesforce: :class:`SalesforceSandbox` (the server), :class:`SalesforceOrg` (the data),
:class:`Faults` (fault switches), :func:`serve_forever` (the demo entry point).
"""

from consentsync.sandbox.faults import ENDPOINT_KINDS, Faults
from consentsync.sandbox.org import ApiError, RecordError, SalesforceOrg, format_datetime
from consentsync.sandbox.salesforce import (
    DEFAULT_API_VERSION,
    SUPPORTED_VERSIONS,
    SalesforceCredentials,
    SalesforceSandbox,
    serve_forever,
)
from consentsync.sandbox.soql import SoqlError
from consentsync.sandbox.tls import SandboxTLS, create_sandbox_tls, system_ca_bundle_path

__all__ = [
    "DEFAULT_API_VERSION",
    "ENDPOINT_KINDS",
    "SUPPORTED_VERSIONS",
    "ApiError",
    "Faults",
    "RecordError",
    "SalesforceCredentials",
    "SalesforceOrg",
    "SalesforceSandbox",
    "SandboxTLS",
    "SoqlError",
    "create_sandbox_tls",
    "format_datetime",
    "serve_forever",
    "system_ca_bundle_path",
]
