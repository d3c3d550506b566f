"""consentsync's Salesforce connector, registered under the entry-point group
``consentsync.connectors`` exactly as a third-party connector would be."""

from consentsync_salesforce.connector import SalesforceConnector

__all__ = ["SalesforceConnector"]
