"""TLS for the sandbox servers: a throw-away certificate authority and a server certificate for
127.0.0.1 / localhost, made at start-up with ``trustme`` (which exists for exactly this: test CAs
whose keys never leave the process's temporary files).

Clients verify the server with :attr:`SandboxTLS.ca_cert_path`. Beware that ``requests`` lets the
``REQUESTS_CA_BUNDLE`` (and ``CURL_CA_BUNDLE``) environment variables override ``Session.verify``
whenever ``Session.trust_env`` is true, which is the default. Two ways out:

* a session with ``trust_env = False`` and ``verify = ca_cert_path`` (proxies, if any, then have to
  be configured explicitly), see :meth:`SandboxTLS.requests_session`;
* a bundle holding the sandbox CA *and* the system roots (:meth:`SandboxTLS.write_bundle`), which
  can itself be named by ``REQUESTS_CA_BUNDLE`` without breaking calls to real hosts.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trustme

if TYPE_CHECKING:
    import requests

__all__ = ["SandboxTLS", "create_sandbox_tls", "removing_tls_folders", "system_ca_bundle_path"]

_SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, OpenBSD
)


def system_ca_bundle_path() -> Path | None:
    """The bundle of trusted roots this machine uses: ``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE``
    when set, else the distribution's bundle, else certifi's."""
    for env in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        value = os.environ.get(env)
        if value and Path(value).is_file():
            return Path(value)
    for candidate in _SYSTEM_BUNDLES:
        if Path(candidate).is_file():
            return Path(candidate)
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with requests
        return None
    return Path(certifi.where())


@dataclass
class SandboxTLS:
    """Certificate files for one sandbox server (all PEM)."""

    directory: Path
    ca_cert_path: Path
    cert_path: Path
    key_path: Path
    owns_directory: bool = False
    _bundle_path: Path | None = field(default=None, repr=False)

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert_path.read_bytes()

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_path), str(self.key_path))
        return context

    def client_context(self) -> ssl.SSLContext:
        """An ``ssl`` context trusting only the sandbox CA (for http.client / urllib users)."""
        return ssl.create_default_context(cafile=str(self.ca_cert_path))

    def write_bundle(self, path: str | Path | None = None) -> Path:
        """Write the sandbox CA followed by the system roots to ``path`` (default: ``bundle.pem``
        beside the certificates) and return its path. Suitable for ``REQUESTS_CA_BUNDLE``."""
        target = Path(path) if path is not None else self.directory / "bundle.pem"
        parts = [self.ca_pem.rstrip(b"\n") + b"\n"]
        system = system_ca_bundle_path()
        if system is not None and system.resolve() != target.resolve():
            parts.append(system.read_bytes())
        target.write_bytes(b"".join(parts))
        if path is None:
            self._bundle_path = target
        return target

    @property
    def bundle_path(self) -> Path:
        """The combined bundle (CA + system roots), written on first use."""
        if self._bundle_path is None or not self._bundle_path.is_file():
            return self.write_bundle()
        return self._bundle_path

    def requests_session(self) -> requests.Session:
        """A ``requests.Session`` that verifies the sandbox and ignores REQUESTS_CA_BUNDLE (and the
        proxy variables: ``trust_env`` is off)."""
        import requests

        session = requests.Session()
        session.trust_env = False
        session.verify = str(self.ca_cert_path)
        return session

    def cleanup(self) -> None:
        if self.owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            _made_here().discard(self.directory)


# The temporary folders create_sandbox_tls made in this thread that cleanup has not removed yet:
# what removing_tls_folders removes, whichever way a sandbox command ends. Per thread, so that it
# never removes the folder of a sandbox another thread runs.
_made = threading.local()


def _made_here() -> set[Path]:
    folders: set[Path] | None = getattr(_made, "folders", None)
    if folders is None:
        folders = _made.folders = set()
    return folders


def _new_temporary_folder() -> Path:
    """A new folder only this user may enter, in the temporary directory (as tempfile.mkdtemp
    makes one), registered for removing_tls_folders BEFORE it exists: registered after, an
    interrupt (SIGTERM while a sandbox starts) in between would leave it behind."""
    made = _made_here()
    for _ in range(100):
        folder = Path(tempfile.gettempdir()) / f"consentsync-sandbox-tls-{secrets.token_hex(6)}"
        made.add(folder)
        try:
            folder.mkdir(mode=0o700)  # fails if it exists: never a folder someone else made
        except FileExistsError:
            made.discard(folder)
            continue
        return folder
    raise FileExistsError(f"no new folder could be made in {tempfile.gettempdir()}")


@contextmanager
def removing_tls_folders() -> Iterator[None]:
    """Removes, on the way out however it is (a return, an exception, an interrupt), every
    temporary folder :func:`create_sandbox_tls` made in this thread meanwhile and left, with what
    was written beside the certificates (a sandbox's JWT private key): the keys of a stopped
    sandbox never stay in $TMPDIR."""
    before = set(_made_here())
    try:
        yield
    finally:
        for folder in _made_here() - before:
            shutil.rmtree(folder, ignore_errors=True)
            _made_here().discard(folder)


def create_sandbox_tls(
    directory: str | Path | None = None,
    *,
    hostnames: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    valid_days: int = 30,
) -> SandboxTLS:
    """Create a CA and a server certificate signed by it for ``hostnames`` and ``ip_addresses``,
    and write them to ``directory`` (a new temporary directory when omitted, removed by
    :meth:`SandboxTLS.cleanup`)."""
    owns = directory is None
    folder = _new_temporary_folder() if owns else Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    # A few minutes back: a client whose clock runs slightly behind still accepts the certificate.
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca = trustme.CA(organization_name="consentsync sandbox")
    cert = ca.issue_cert(
        *hostnames,
        *ip_addresses,
        organization_name="consentsync sandbox",
        not_before=now,
        not_after=now + dt.timedelta(days=valid_days),
    )
    ca_path = folder / "ca.pem"
    cert_path = folder / "server.pem"
    key_path = folder / "server.key"
    ca.cert_pem.write_to_path(str(ca_path))
    for index, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(cert_path), append=index > 0)
    cert.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    return SandboxTLS(
        directory=folder, ca_cert_path=ca_path, cert_path=cert_path, key_path=key_path, owns_directory=owns
    )
