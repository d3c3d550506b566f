"""consentsync's Dynamics 365 / Dataverse connector, registered under the entry-point group
``consentsync.connectors`` exactly as a third-party connector would be."""

from consentsync_dynamics.connector import DynamicsConnector

__all__ = ["DynamicsConnector"]
