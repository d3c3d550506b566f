"""The Dynamics 365 / Dataverse sandbox: the Web API (:mod:`.server`), an in-memory environment
(:mod:`.dataverse`) and OData queries (:mod:`.odata`), on the vendor-neutral sandbox base
(:mod:`consentsync.sandbox`). Not part of the runtime install: it ships with the ``demo`` extra, for
the demo and the tests.
"""
