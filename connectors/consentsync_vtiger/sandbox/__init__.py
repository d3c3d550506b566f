"""The Vtiger sandbox: webservice.php (:mod:`.server`) and VTQL (:mod:`.vtql`), on the vendor-neutral
sandbox base (:mod:`consentsync.sandbox`). Not part of the runtime install: it ships with the
``demo`` extra, for the demo and the tests.
"""
