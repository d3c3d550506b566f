"""The sandbox server base: what every CRM sandbox shares, whatever its vendor. A sandbox is a real
HTTPS server on 127.0.0.1 speaking one vendor's documented wire format, with in-memory data,
seeding and fault injection, for the tests and the demo.

Each vendor's sandbox (its server, wire format and query language) lives in its connector package
(``consentsync_<vendor>.sandbox``) and is found through the entry-point group
``consentsync.sandboxes`` (:mod:`consentsync.sandbox.registry`); this package names no vendor.

Shared here: :class:`HttpsSandbox` (the HTTPS server, call counting per endpoint kind and the
fault pipeline, :mod:`consentsync.sandbox.server`, with :class:`ServerOptions` for a vendor's
constructor to pass on, :meth:`SandboxRequest.json_object` and :class:`SandboxError`),
:class:`Faults` (the fault switches), TLS (a trustme CA, :mod:`consentsync.sandbox.tls`),
generated people and the crowded seconds of a seed (:mod:`consentsync.sandbox.people`), tokens
of a query language (:mod:`consentsync.sandbox.lexing`), what ``consentsync sandbox NAME`` prints
and serves (:mod:`consentsync.sandbox.serving`: ``sandbox_main``, ``Serving``,
``running_lines``) and what every contract harness does alike
(:mod:`consentsync.sandbox.harness`).
"""

from consentsync.sandbox.faults import Faults
from consentsync.sandbox.server import HttpsSandbox, Route, SandboxRequest, SandboxResponse, json_response
from consentsync.sandbox.tls import SandboxTLS, create_sandbox_tls, system_ca_bundle_path

__all__ = [
    "Faults",
    "HttpsSandbox",
    "Route",
    "SandboxRequest",
    "SandboxResponse",
    "SandboxTLS",
    "create_sandbox_tls",
    "json_response",
    "system_ca_bundle_path",
]
