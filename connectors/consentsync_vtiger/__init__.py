"""consentsync's Vtiger CRM connector, registered under the entry-point group
``consentsync.connectors`` exactly as a third-party connector would be."""

from consentsync_vtiger.connector import VtigerConnector

__all__ = ["VtigerConnector"]
