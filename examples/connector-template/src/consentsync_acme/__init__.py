"""The Acme connector: a small, complete consentsync connector to copy."""

from consentsync_acme.connector import AcmeConnector

__all__ = ["AcmeConnector"]
