"""Session 64: the console read request bodies of any size before any login check (a 300 MiB JSON
body to POST /api/session was read and parsed; a file part posted to /login was spooled to /tmp),
on every route, unauthenticated. Only the hub's /v1 and /p capped theirs. Now every body over the
console's cap is refused with 413 before it is read, told by its Content-Length or, sent in
chunks, as it arrives; the hub's apps keep their own caps; the largest legitimate bodies fit.
Over real HTTP, against the console served by uvicorn."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from consentsync.accounts import Accounts
from consentsync.config import load_config
from consentsync.ledger.service import Ledger
from consentsync.web.app import BODY_MAX
from consentsync.web.server import WebServer, build
from tests.conftest import SQLITE_ONLY

pytestmark = SQLITE_ONLY  # what is tested is the HTTP layer, before any query

PASSWORD = "rex-reviewer-password-1"


@pytest.fixture
def server(config_path: Path, ledger: Ledger) -> Iterator[WebServer]:
    Accounts(ledger.engine).add("rex", "reviewer", PASSWORD, actor="test")
    with WebServer(build(load_config(config_path), ledger)) as served:
        yield served


def declared_only(server: WebServer, path: str, length: int, content_type: str) -> tuple[int, bytes]:
    """A request that declares a body of ``length`` bytes and sends none of it: the answer must
    come from the Content-Length alone (a server that reads first waits, and times out here)."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
            ).encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer


def chunked(server: WebServer, path: str, total: int, content_type: str, prefix: bytes) -> int:
    """A body with no Content-Length, sent in 64 KiB chunks (Transfer-Encoding: chunked)."""

    def parts() -> Iterator[bytes]:
        yield prefix
        sent = len(prefix)
        while sent < total:
            yield b"a" * 65536
            sent += 65536

    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        # Answered and closed before everything was sent: the answer is read all the same.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request(
                "POST", path, body=parts(), headers={"Content-Type": content_type}, encode_chunked=True
            )
        return conn.getresponse().status
    finally:
        conn.close()


ROUTES = [
    ("/api/session", "application/json"),
    ("/login", "application/x-www-form-urlencoded"),
    ("/login", "multipart/form-data; boundary=XyZ"),
    ("/api/users", "application/json"),
    ("/runs/x/retry", "application/x-www-form-urlencoded"),
]


@pytest.mark.parametrize(("path", "content_type"), ROUTES)
def test_an_oversized_body_is_refused_from_its_content_length_before_it_is_read(
    server: WebServer, path: str, content_type: str
) -> None:
    status, answer = declared_only(server, path, 300 * 1024 * 1024, content_type)
    assert status == 413, answer[:300]
    # The console's headers are on the refusal too.
    assert b"x-content-type-options: nosniff" in answer.lower()


@pytest.mark.parametrize(("path", "content_type"), ROUTES)
def test_an_oversized_chunked_body_is_refused_as_it_arrives(
    server: WebServer, path: str, content_type: str
) -> None:
    prefix = (
        b'{"name": "rex", "password": "'
        if "json" in content_type
        else b'--XyZ\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n\r\n'
        if "multipart" in content_type
        else b"name=rex&password="
    )
    assert chunked(server, path, BODY_MAX + 65536, content_type, prefix) == 413


def test_the_hub_keeps_its_own_caps(server: WebServer) -> None:
    # The capture API takes bodies up to 8 MiB: one over the console's cap still reaches it
    # (and is refused for want of a key, not for its size).
    grant = {"email": "a@example.test", "purpose": "newsletter", "evidence_ref": "x" * (BODY_MAX * 2)}
    big = requests.post(server.url + "/v1/consents", json=grant, timeout=30)
    assert big.status_code == 401, big.text[:200]
    # The preference centre's forms stop at 64 KiB, below the console's cap.
    form = requests.post(server.url + "/p/preferences/x/choose", data={"pad": "x" * 100_000}, timeout=30)
    assert form.status_code == 413


def test_the_largest_legitimate_bodies_fit(server: WebServer) -> None:
    session = requests.Session()
    login = session.post(server.url + "/api/session", json={"name": "rex", "password": PASSWORD}, timeout=30)
    assert login.status_code == 200, login.text
    token = login.json()["csrf_token"]
    # The API's bulk retry at the longest its fields allow, escaped as JSON (12 bytes a character).
    bulk = {"scope": "selected", "ids": [2**31 - 1] * 1000, "reason": "\U0001f600" * 4000}
    body = json.dumps(bulk, indent=2).encode()
    api = session.post(
        server.url + "/api/runs/no-such-run/retry",
        data=body,
        headers={"Content-Type": "application/json", "X-CSRF-Token": token},
        timeout=30,
    )
    assert api.status_code == 404, api.text[:200]  # read, and the run looked for
    # The page's form: a page of ids, the longest reason and `back`, every character escaped.
    fields: list[tuple[str, Any]] = [("csrf_token", token), ("scope", "selected")]
    fields += [("ids", str(2**31 - 1))] * 25
    fields += [("reason", "\U0001f600" * 4000), ("back", "/runs/x?" + "\U0001f600" * 7990)]
    form = urlencode(fields).encode()
    assert len(form) > 140_000
    page = session.post(
        server.url + "/runs/no-such-run/retry",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
        allow_redirects=False,
    )
    assert page.status_code == 404, page.text[:200]
