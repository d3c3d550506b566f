"""The Salesforce sandbox: the REST API's wire format (:mod:`.server`), an in-memory org
(:mod:`.org`), SOQL (:mod:`.soql`) and record ids (:mod:`.ids`), on the vendor-neutral sandbox
base (:mod:`consentsync.sandbox`). Not part of the runtime install: it ships with the ``demo``
extra, for the demo and the tests.
"""

from consentsync_salesforce.sandbox.org import ApiError, RecordError, SalesforceOrg, format_datetime
from consentsync_salesforce.sandbox.server import (
    DEFAULT_API_VERSION,
    SUPPORTED_VERSIONS,
    SalesforceCredentials,
    SalesforceSandbox,
    serve_forever,
)
from consentsync_salesforce.sandbox.soql import SoqlError

__all__ = [
    "DEFAULT_API_VERSION",
    "SUPPORTED_VERSIONS",
    "ApiError",
    "RecordError",
    "SalesforceCredentials",
    "SalesforceOrg",
    "SalesforceSandbox",
    "SoqlError",
    "format_datetime",
    "serve_forever",
]
