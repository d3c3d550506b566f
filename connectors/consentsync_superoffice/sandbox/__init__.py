"""The SuperOffice sandbox: the REST WebAPI (:mod:`.server`), an in-memory tenant (:mod:`.tenant`) and
archive queries (:mod:`.archive`), on the vendor-neutral sandbox base (:mod:`consentsync.sandbox`).
Not part of the runtime install: it ships with the ``demo`` extra, for the demo and the tests.
"""
