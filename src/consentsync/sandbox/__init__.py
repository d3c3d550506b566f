"""Local sandboxes of the CRMs consentsync talks to: real HTTPS servers on 127.0.0.1 speaking each
vendor's documented wire format, with in-memory data, seeding and fault injection, for the tests
and the demo.

Shared by every vendor: :class:`HttpsSandbox` (the HTTPS server, call counting per endpoint kind
and the fault pipeline, :mod:`consentsync.sandbox.server`), :class:`Faults` (the fault switches),
TLS (:mod:`consentsync.sandbox.tls`).

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
from consentsync.sandbox.server import HttpsSandbox, Route, SandboxRequest, SandboxResponse, json_response
from consentsync.sandbox.soql import SoqlError
from consentsync.sandbox.tls import SandboxTLS, create_sandbox_tls, system_ca_bundle_path

__all__ = [
    "DEFAULT_API_VERSION",
    "ENDPOINT_KINDS",
    "SUPPORTED_VERSIONS",
    "ApiError",
    "Faults",
    "HttpsSandbox",
    "RecordError",
    "Route",
    "SalesforceCredentials",
    "SalesforceOrg",
    "SalesforceSandbox",
    "SandboxRequest",
    "SandboxResponse",
    "SandboxTLS",
    "SoqlError",
    "create_sandbox_tls",
    "format_datetime",
    "json_response",
    "serve_forever",
    "system_ca_bundle_path",
]
