"""Serving the console with uvicorn: in the foreground (`consentsync web`) or in a thread beside
the daemon (`consentsync run --web-port`) and in tests."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI

from consentsync.config import Config
from consentsync.ledger.service import Ledger
from consentsync.web.app import create_app
from consentsync.web.console import Console


def build(config: Config, ledger: Ledger, *, host: str | None = None) -> FastAPI:
    """The console's app; ``host``, the address it is bound to, is a name it answers to."""
    return create_app(Console(config, ledger), host=host)


GRACEFUL_SHUTDOWN_SECONDS = 5


def uvicorn_config(
    app: FastAPI,
    *,
    host: str,
    port: int,
    certfile: str | None = None,
    keyfile: str | None = None,
    **extra: Any,
) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # uvicorn's access log prints query strings; the app logs method, path and status itself.
        access_log=False,
        log_level="warning",
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        # Behind a TLS-terminating proxy listed in web.trusted_proxies, X-Forwarded-Proto marks
        # requests as HTTPS (and so the cookies as Secure) and X-Forwarded-For names the client;
        # from anyone else (loopback included) both are ignored.
        proxy_headers=bool(_trusted(app)),
        # A stop waits this long for open connections: a browser's idle keep-alive TLS connection
        # never answers the server's close, and uvicorn waited for it until the caller's SIGKILL
        # (docker stop gives 10 s, systemd 90 s): a console stopped with a tab open died of it.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        forwarded_allow_ips=",".join(_trusted(app)) or None,
        **extra,
    )
    # uvicorn.Config set up uvicorn's loggers just now: its line for connections closed at the
    # end of that wait is an ERROR a log alert would page on for a clean stop; said as an event.
    logging.getLogger("uvicorn.error").addFilter(_CLOSED_AT_STOP)
    return config


class _ClosedAtStop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "timeout graceful shutdown exceeded" not in record.getMessage():
            return True
        structlog.get_logger("consentsync.web").info(
            "web.stopped", connections_closed_after_seconds=GRACEFUL_SHUTDOWN_SECONDS
        )
        return False


_CLOSED_AT_STOP = _ClosedAtStop()


class ForegroundServer(uvicorn.Server):
    """uvicorn serving in the foreground (`consentsync web`): SIGTERM and SIGINT stop it cleanly
    (open requests get ``GRACEFUL_SHUTDOWN_SECONDS`` to finish, the app shuts down) and the
    command then exits 0, as `consentsync run` does when told to stop. uvicorn itself raises the
    signal again once it has shut down, so that the process dies of it (exit 143 for SIGTERM): a
    scheduler or systemd would take the stop it asked for for a failure."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        previous = {signum: signal.signal(signum, self.handle_exit) for signum in stops}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _trusted(app: FastAPI) -> list[str]:
    return [str(network) for network in getattr(app.state, "trusted_proxies", ())]


def tls_problem(certfile: str, keyfile: str) -> str | None:
    """What keeps ``certfile`` and ``keyfile`` from serving HTTPS, as an error line says it (None:
    they load): checked before anything is bound, since uvicorn loads them only once it serves."""
    accepted = "--certfile takes a PEM certificate (chain), --keyfile its PEM private key"
    asked_password = False

    def password() -> bytes:
        # uvicorn is given no password: OpenSSL would prompt on the terminal for an encrypted key.
        nonlocal asked_password
        asked_password = True
        return b""

    try:
        try:
            # The certificate alone first: OpenSSL's error for the pair does not say which is wrong.
            ssl.create_default_context().load_verify_locations(cafile=certfile)
        except ssl.SSLError:
            return f"--certfile {certfile} holds no PEM certificate: {accepted}"
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile, password)
    except ssl.SSLError as error:
        if asked_password:
            return f"--keyfile {keyfile} is encrypted: {accepted}, without a passphrase"
        if error.reason == "KEY_VALUES_MISMATCH":
            return f"--keyfile {keyfile} is not the private key of --certfile {certfile}: {accepted}"
        return f"--keyfile {keyfile} holds no PEM private key: {accepted}"
    except OSError as error:  # gone or unreadable since the options were checked
        return f"--certfile {certfile} / --keyfile {keyfile}: {error.strerror or error}: {accepted}"
    return None


def bound_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: a free port) for uvicorn to serve on: binding
    first tells the caller the port, or the OS's refusal, before anything is served."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening at once: a port merely bound (SO_REUSEADDR) could be bound again by another
        # server of this process (the daemon's /metrics on the same port), and the console then
        # failed to start with a traceback instead of a one-line refusal.
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class WebServer:
    """uvicorn in a background thread, on a given port or a free one (port 0)."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, **tls: Any) -> None:
        self.host = host
        self.sock = bound_socket(host, port)
        self.port = self.sock.getsockname()[1]
        self.scheme = "https" if tls.get("certfile") else "http"
        self.server = uvicorn.Server(uvicorn_config(app, host=host, port=self.port, **tls))
        self.thread = threading.Thread(target=self._serve, name="consentsync-web", daemon=True)

    def _serve(self) -> None:
        self.server.run(sockets=[self.sock])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self) -> WebServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the console did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
