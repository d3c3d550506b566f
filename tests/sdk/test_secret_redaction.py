"""What the SDK shows of a URL and of a registered secret: a URL never with its user and password
(wherever the URL comes from: a setting, requests' request, a connector's message), a secret never
whole nor in a piece that gives it away, and the ordinary words a secret happens to share (the
sandbox's "consentsync-sandbox-consumer-secret" and "consentsync") left as they are."""

from __future__ import annotations

import json
import socket
from urllib.parse import quote

import pytest
import requests
from structlog.testing import capture_logs

from consentsync import sdk
from consentsync.sdk.errors import (
    Action,
    ConnectorError,
    ErrorRule,
    Fault,
    mask_secret_params,
    network_error,
    register_secret,
    scrub,
)
from consentsync.sdk.retry import RetryPolicy, call

SANDBOX_SECRET = "consentsync-sandbox-consumer-secret"
USERINFO = "user:Pw12345secret@"


def _closed_port() -> int:
    """A local port nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_secret_made_of_words_leaves_those_words_alone_and_is_still_never_shown() -> None:
    register_secret(SANDBOX_SECRET)
    register_secret("sandbox-password")
    ordinary = [
        "config: see `consentsync discover salesforce-sandbox` for the objects it has",
        "/work/main/connectors/consentsync_salesforce/mappings/contact.yaml: line 3",
        "auth password needs username, password",
        "the consumer secret of the sandbox",
    ]
    for text in ordinary:
        assert scrub(text) == text
    # Whole, as a CRM echoes it (JSON, a form or a URL), a long piece of it, and cut short at the
    # end of a truncated text: never shown.
    shown = [
        f"invalid_client: {SANDBOX_SECRET} is wrong",
        json.dumps({"echo": SANDBOX_SECRET + '"x'}),
        f"body=client_id%3Dx%26s%3D{quote(SANDBOX_SECRET, safe='')}",
        f"secret starts with {SANDBOX_SECRET[:24]}!",
        f"a dump cut at its limit: {SANDBOX_SECRET[:11]}",
        f"a dump cut at its limit: {SANDBOX_SECRET[:14]}... (truncated)",
        "login with sandbox-password refused",
    ]
    for text in shown:
        cleaned = scrub(text)
        assert "[redacted]" in cleaned, cleaned
        assert SANDBOX_SECRET[:11] not in cleaned and "sandbox-password" not in cleaned, cleaned
    # Escapes cut a secret holding quotes and ampersands into pieces each shorter than half of
    # it: the spellings registered with it (JSON, percent-encoded, repr) keep them hidden.
    secret = 'Zk0123ab,"}&cdef4567'
    register_secret(secret)
    for text in (json.dumps({"said": secret}), "x=" + quote(secret, safe=""), repr(secret)):
        cleaned = scrub(text)
        assert "0123ab" not in cleaned and "cdef4567" not in cleaned, cleaned


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://user:Pw12345secret@127.0.0.1:18799/services/oauth2/token",
            "https://[redacted]@127.0.0.1:18799/services/oauth2/token",
        ),
        ("http://user:Pw12345secret@crm.example.com/x?y=1", "http://[redacted]@crm.example.com/x?y=1"),
        # A password with a raw "@": everything up to the last "@" of the authority is userinfo.
        ("https://user:Pw12@345secret@crm.example.com:8443", "https://[redacted]@crm.example.com:8443"),
    ],
)
def test_a_url_in_any_message_loses_its_user_and_password_and_keeps_the_rest(url: str, shown: str) -> None:
    error = ConnectorError(f"describe Contact: cannot reach {url}", ErrorRule(Action.FAIL, Fault.CONFIG, "x"))
    assert str(error) == f"describe Contact: cannot reach {shown}"
    assert sdk.mask_userinfo(f"({url})") == f"({shown})"
    # An email address, or a URL without userinfo, is not a URL's userinfo.
    assert scrub("mailto ada@example.com at https://crm.example.com/a@b") == (
        "mailto ada@example.com at https://crm.example.com/a@b"
    )


def test_a_network_error_names_the_host_without_userinfo_wherever_it_comes_from() -> None:
    request = requests.Request("GET", f"https://{USERINFO}crm.example.com:8443/x").prepare()
    derived = network_error(
        "describe Contact", requests.exceptions.ConnectionError("refused", request=request)
    )
    assert "cannot connect to crm.example.com:8443" in str(derived), derived
    given = network_error("login", requests.exceptions.ConnectTimeout("slow"), f"{USERINFO}crm.example.com")
    assert "no answer from crm.example.com in time" in str(given), given
    for error in (derived, given):
        assert "Pw12345secret" not in str(error) and "user:" not in str(error)


def test_a_token_request_to_an_unreachable_url_with_userinfo_never_shows_it() -> None:
    url = f"https://{USERINFO}127.0.0.1:{_closed_port()}/services/oauth2/token"
    session = requests.Session()
    with pytest.raises(ConnectorError) as raised:
        sdk.request_token(session, url, {"grant_type": "client_credentials"}, login="login", timeout=2)
    text = str(raised.value)
    assert "host unreachable" in text and "token request to https://[redacted]@127.0.0.1:" in text, text
    assert "Pw12345secret" not in text and "user:" not in text, text


def test_an_http_client_call_to_a_url_with_userinfo_and_its_retry_log_never_show_it() -> None:
    url = f"http://{USERINFO}127.0.0.1:{_closed_port()}/api"
    api = sdk.HttpClient(
        session=requests.Session(),
        policy=RetryPolicy(max_attempts=2, initial_wait=0.0, max_backoff=0.0),
        classify=lambda describe, response: ConnectorError(
            describe, ErrorRule(Action.FAIL, Fault.CONFIG, "x")
        ),
    )
    with capture_logs() as logs, pytest.raises(ConnectorError) as raised:
        # A connector that names the URL in what it calls the call (its retry log line says it).
        api.send("GET", url, describe=f"GET {url}", timeout=2)
    text = str(raised.value) + json.dumps(logs)
    assert [entry["event"] for entry in logs] == ["crm.retry"]
    assert "Pw12345secret" not in text and "user:" not in text, text
    assert "127.0.0.1:" in logs[0]["call"]


def test_the_retry_log_scrubs_what_a_call_is_called() -> None:
    attempts = iter([ConnectorError("busy", ErrorRule(Action.RETRY, Fault.TRANSIENT, "busy"))])

    def operation() -> str:
        error = next(attempts, None)
        if error is not None:
            raise error
        return "ok"

    with capture_logs() as logs:
        answer = call(
            operation,
            policy=RetryPolicy(max_attempts=2),
            describe=f"GET https://{USERINFO}crm.example.com/x",
            sleep=lambda _seconds: None,
        )
    assert answer == "ok"
    assert logs[0]["call"] == "GET https://[redacted]@crm.example.com/x"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "token request to https://[redacted]@127.0.0.1:1/?token=abc/services/oauth2/token: unreachable",
            "token request to https://[redacted]@127.0.0.1:1/?token=[redacted]",
        ),
        (
            "GET https://crm.example.com/api?limit=5&api_key=Zq81&x=1",
            "GET https://crm.example.com/api?limit=5&api_key=[redacted]&x=1",
        ),
        (
            "https://crm.example.com/cb?code=4/0Ab&state=s1",
            "https://crm.example.com/cb?code=[redacted]&state=s1",
        ),
        (
            "https://crm.example.com/p?hapikey=k1;sid=99",
            "https://crm.example.com/p?hapikey=[redacted];sid=[redacted]",
        ),
    ],
)
def test_a_credential_in_a_url_query_is_redacted_wherever_the_url_is_quoted(text: str, shown: str) -> None:
    # A base URL configured with a token in its query ("?token=...") was quoted whole by the
    # connectors' messages and stored in the run's reason: only its userinfo was hidden.
    assert scrub(text).startswith(shown), scrub(text)
    error = ConnectorError(text, ErrorRule(Action.RETRY, Fault.TRANSIENT, "x"))
    assert scrub(text) == str(error)
    # Parameters that name no credential, and text that is no query, stay as they are.
    assert scrub("see https://crm.example.com/q?limit=5&offset=10 and a=b") == (
        "see https://crm.example.com/q?limit=5&offset=10 and a=b"
    )


@pytest.mark.parametrize(
    "name",
    [
        "X-Amz-Signature",
        "x-amz-signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "X-Goog-Signature",
        "Signature",
        "sig",
        "SIG",
        "jwt",
        "JWT",
        "client_assertion",
        "clientAssertion",
        "authkey",
        "authKey",
        "ticket",
        "consumerKey",
        "sessionKey",
        "appKey",
        "hmacKey",
        "hapikey",
        "access_key",
        "accessKey",
        "subscription-key",
        "api_key",
    ],
)
def test_a_credential_under_any_usual_query_name_is_redacted_in_any_case(name: str) -> None:
    text = f"GET https://h/x?limit=5&{name}=SEKRET2&offset=10"
    assert scrub(text) == f"GET https://h/x?limit=5&{name}=[redacted]&offset=10"
    assert scrub(f"https://h/x?{name}=SEKRET2") == f"https://h/x?{name}=[redacted]"
    assert mask_secret_params(f"https://h/x?{name}=SEKRET2#f") == f"https://h/x?{name}=[redacted]#f"


@pytest.mark.parametrize(
    "name",
    [
        "limit",
        "offset",
        "state",
        "after",
        "properties",
        "archived",
        "client_assertion_type",
        "X-Amz-SignedHeaders",
        "X-Amz-Expires",
        "X-Amz-Algorithm",
        "X-Amz-Date",
        "response_type",
        "email",
        # Keys that name no secret: not hidden from ops.
        "sortKey",
        "objectKey",
        "fieldKey",
        "ExternalKey",
    ],
)
def test_an_ordinary_query_parameter_stays_readable(name: str) -> None:
    text = f"GET https://h/x?{name}=visible1&limit=5"
    assert scrub(text) == text
