"""consentsync's SuperOffice connector, registered under the entry-point group
``consentsync.connectors`` exactly as a third-party connector would be."""

from consentsync_superoffice.connector import SuperOfficeConnector

__all__ = ["SuperOfficeConnector"]
