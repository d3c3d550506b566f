"""The HubSpot sandbox: the CRM v3 and communication-preferences wire formats (:mod:`.server`), on the
vendor-neutral sandbox base (:mod:`consentsync.sandbox`). Not part of the runtime install: it ships
with the ``demo`` extra, for the demo and the tests.
"""
