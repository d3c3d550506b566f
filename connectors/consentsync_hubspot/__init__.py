"""consentsync's HubSpot connector (CRM v3 and communication preferences, private-app token),
registered under the entry-point group ``consentsync.connectors`` as ``hubspot``."""

from consentsync_hubspot.connector import HubSpotConnector

__all__ = ["HubSpotConnector"]
