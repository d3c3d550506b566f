"""The SDK's kit for a connector's HTTP calls: the session it sets up from the settings, the client
that sorts answers through the error table, retries and counts them, the OAuth token request, and
the shared settings base. Answers are scripted on a requests transport adapter: no socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.adapters
from pydantic import ValidationError, model_validator

from consentsync import sdk
from consentsync.sdk import Action, ConnectorError, ErrorRule, Fault
from consentsync.sdk.http import TimeoutAdapter

BASE = "https://crm.test"
TABLE = sdk.ErrorTable(
    [
        ErrorRule(Action.REFRESH_TOKEN, Fault.TRANSIENT, "session expired", 401, "expired"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "key refused", 401, credentials=True),
    ]
)
FAST = sdk.RetryPolicy(max_attempts=3, initial_wait=0, max_backoff=0)


class Scripted(requests.adapters.BaseAdapter):
    """Answers each request with the next scripted (status, body, headers), or raises it."""

    def __init__(self, *answers: Any) -> None:
        super().__init__()
        self.answers = list(answers)
        self.sent: list[tuple[requests.PreparedRequest, dict[str, Any]]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append((request, kwargs))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body, headers = answer
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(body).encode() if not isinstance(body, bytes) else body
        response.headers.update(headers)
        response.request, response.url = request, request.url or ""
        return response

    def close(self) -> None:
        pass


class Settings(sdk.ConnectorSettings):
    auth: str = "key"
    api_key: str | None = None
    username: str | None = None

    @model_validator(mode="after")
    def _credentials(self) -> Settings:
        self.require(self.auth, {"key": ("api_key",), "password": ("username", "api_key")})
        return self


def _session(*answers: Any, **settings: Any) -> tuple[requests.Session, Scripted, sdk.ApiUsage]:
    usage = sdk.ApiUsage()
    session = sdk.http_session(
        Settings(api_key="k", **settings),
        on_response=lambda response: usage.count(response.request.method or ""),
    )
    adapter = Scripted(*answers)
    session.mount(BASE, adapter)
    return session, adapter, usage


def _classify(describe: str, response: requests.Response) -> ConnectorError:
    body = sdk.json_or_none(response) or {}
    return sdk.response_error(describe, response, TABLE, body.get("code"), str(body.get("message", "")))


def test_the_session_trusts_the_configured_ca_only_and_never_waits_without_a_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "crm-ca.pem"
    ca.write_text("")  # only its name reaches the session here
    session = sdk.http_session(Settings(api_key="k", ca_bundle=str(ca), proxy="http://p:3128", timeout=7))
    assert session.trust_env is False  # REQUESTS_CA_BUNDLE and proxy variables are not read
    assert session.verify == str(ca)
    assert session.proxies == {"https": "http://p:3128", "http": "http://p:3128"}
    adapter = session.get_adapter(BASE)
    assert isinstance(adapter, TimeoutAdapter)
    seen: list[Any] = []
    monkeypatch.setattr(
        requests.adapters.HTTPAdapter, "send", lambda self, request, **kwargs: seen.append(kwargs["timeout"])
    )
    adapter.send(requests.Request("GET", BASE).prepare())
    adapter.send(requests.Request("GET", BASE).prepare(), timeout=2)
    assert seen == [7.0, 2]


def test_a_401_echoing_the_secret_is_classified_and_the_secret_never_shown() -> None:
    secret = "s3cr3t-api-key-9f8e7d6c"
    sdk.register_secret(secret)
    session, _adapter, usage = _session(
        (401, {"code": "nope", "message": f"key {secret} refused; Authorization: Bearer {secret}"}, {})
    )
    api = sdk.HttpClient(session=session, policy=FAST, classify=_classify, headers=lambda: {"X-Key": secret})
    with pytest.raises(ConnectorError) as raised:
        api.send("GET", f"{BASE}/me", describe="me")
    assert raised.value.rule.credentials and raised.value.action is Action.FAIL
    assert "401" in str(raised.value) and secret not in str(raised.value)
    assert secret[:10] not in str(raised.value)  # nor a part of it
    assert usage.calls == 1  # a refusal of the credentials is not retried


def test_transient_answers_are_retried_and_every_answer_counted() -> None:
    session, adapter, usage = _session(
        (503, {"message": "busy"}, {}), (429, {}, {"Retry-After": "0"}), (200, {"ok": True}, {})
    )
    api = sdk.HttpClient(session=session, policy=FAST, classify=_classify)
    assert api.send("POST", f"{BASE}/x", describe="x", json={"a": 1}).json() == {"ok": True}
    assert len(adapter.sent) == 3 and usage.calls == 3 and usage.per_endpoint == {"POST": 3}


def test_an_expired_session_is_refreshed_and_the_new_token_sent() -> None:
    tokens = iter(["first", "second"])
    token: list[str] = []
    session, adapter, _usage = _session((401, {"code": "expired"}, {}), (200, {}, {}))
    api = sdk.HttpClient(
        session=session,
        policy=FAST,
        classify=_classify,
        headers=lambda: {
            "Authorization": f"Bearer {token[0] if token else token.append(next(tokens)) or token[0]}"
        },
        refresh_session=token.clear,
    )
    api.send("GET", f"{BASE}/x", describe="x")
    assert [request.headers["Authorization"] for request, _ in adapter.sent] == [
        "Bearer first",
        "Bearer second",
    ]


def test_accept_takes_a_refusal_and_retry_false_makes_one_attempt() -> None:
    session, adapter, _usage = _session((410, {}, {}), (503, {}, {}))
    api = sdk.HttpClient(session=session, policy=FAST, classify=_classify)
    assert (
        api.send("GET", f"{BASE}/delta", describe="delta", accept=lambda r: r.status_code == 410).status_code
        == 410
    )
    with pytest.raises(ConnectorError) as raised:
        api.send("GET", f"{BASE}/x", describe="x", retry=False)
    assert raised.value.action is Action.RETRY and len(adapter.sent) == 2


def test_no_answer_is_said_without_the_url_and_its_query() -> None:
    session, _adapter, _usage = _session(
        requests.ConnectionError(f"{BASE}/x?session=abc123secretvalue"),
        *[requests.ConnectionError("again")] * 2,
    )
    api = sdk.HttpClient(session=session, policy=FAST, classify=_classify)
    with pytest.raises(ConnectorError) as raised:
        api.send("GET", f"{BASE}/x", describe="read")
    assert "host unreachable" in str(raised.value) and "abc123secretvalue" not in str(raised.value)


def test_the_budget_stops_the_run_before_the_call_is_sent() -> None:
    session, adapter, usage = _session((200, {}, {}), (200, {}, {}), (200, {}, {}))
    budget = sdk.RunBudget(per_run=2)
    api = sdk.HttpClient(
        session=session, policy=FAST, classify=_classify, guard=lambda: budget.check("crm", usage)
    )
    api.send("GET", f"{BASE}/a", describe="a")
    api.send("GET", f"{BASE}/b", describe="b")
    with pytest.raises(sdk.BudgetExhausted, match="crm: the run's API budget of 2 calls is spent"):
        api.send("GET", f"{BASE}/c", describe="c")
    assert len(adapter.sent) == 2


def test_a_daily_budget_keeps_its_reserve() -> None:
    usage = sdk.ApiUsage(calls=1, used=79, limit=100)  # 20% kept: the run stops at 80 of 100
    sdk.DailyBudget(daily_reserve_percent=20).check("crm", usage, calls="Acme API")
    usage.used = 80
    with pytest.raises(sdk.BudgetExhausted, match=r"80/100 daily Acme API calls used; 20\.0% is kept"):
        sdk.DailyBudget(daily_reserve_percent=20).check("crm", usage, calls="Acme API")


def test_a_refused_token_request_is_the_credentials_and_its_secret_never_shown() -> None:
    secret = "client-secret-5a4b3c2d1e"
    sdk.register_secret(secret)
    body = {"error": "invalid_client", "error_description": f"client_secret={secret} is wrong\ntrace 1"}
    session, adapter, _usage = _session((401, body, {}), (503, b"down", {}), (200, {"expires_in": 5}, {}))
    form = {"grant_type": "client_credentials", "client_secret": secret}
    with pytest.raises(ConnectorError) as raised:
        sdk.request_token(session, f"{BASE}/token", form, login="login with client credentials", who="crm: ")
    text = str(raised.value)
    assert text.startswith(
        f"crm: login with client credentials at {BASE}/token refused (401): invalid_client"
    )
    assert secret not in text and "trace" not in text
    assert raised.value.rule.credentials and raised.value.action is Action.FAIL
    with pytest.raises(ConnectorError) as raised:
        sdk.request_token(session, f"{BASE}/token", form, login="login")
    assert raised.value.action is Action.RETRY and not raised.value.rule.credentials
    with pytest.raises(ConnectorError, match=r"the login at .* answered no access_token"):
        sdk.request_token(session, f"{BASE}/token", form, login="login")
    assert adapter.sent[0][0].body == f"grant_type=client_credentials&client_secret={secret}"


def test_settings_keep_the_shared_keys_refuse_unknown_ones_and_say_what_a_flow_needs() -> None:
    settings = Settings(api_key="k")
    assert (settings.timeout, settings.max_attempts, settings.max_rate_limit_wait) == (30.0, 5, 60.0)
    assert settings.retry_policy() == sdk.RetryPolicy(max_attempts=5, max_rate_limit_wait=60.0)
    assert settings.budget.per_run is None
    with pytest.raises(ValidationError, match=r"timout\s+Extra inputs are not permitted"):
        Settings(api_key="k", timout=3)
    with pytest.raises(ValidationError, match="auth password needs username"):
        Settings(auth="password", api_key="k")
    with pytest.raises(ValidationError):
        Settings(api_key="k", budget={"per_run": 0})


@pytest.mark.parametrize(
    ("header", "seconds"), [("5", 5.0), ("0.5", 0.5), ("Wed, 21 Oct 2015 07:28:00 GMT", None)]
)
def test_retry_after_in_seconds(header: str, seconds: float | None) -> None:
    response = requests.Response()
    response.headers["Retry-After"] = header
    assert sdk.retry_after(response) == seconds


def test_mapped_fields_the_crm_lacks_are_a_configuration_error_naming_them() -> None:
    sdk.require_fields(["a", "b"], {"a": 1, "b": 2}, "Thing has no field(s)", "(hidden?)")
    with pytest.raises(ConnectorError) as raised:
        sdk.require_fields(["a", "x", "y"], {"a"}, "Thing has no field(s)", "(or the user cannot see them)")
    assert str(raised.value) == "Thing has no field(s) x, y (or the user cannot see them)"
    assert (raised.value.action, raised.value.rule.fault, raised.value.rule.reason) == (
        Action.FAIL,
        Fault.CONFIG,
        "mapped field missing",
    )


def test_retryable_answers_are_sent_again_in_a_later_pass_without_holding_back_the_rest() -> None:
    locked_once = {2, 5}
    calls: list[list[int]] = []
    pauses: list[float] = []

    def send(chunk: list[int]) -> list[sdk.WriteResult]:
        calls.append(chunk)
        answers = [sdk.WriteResult(str(p), p not in locked_once, retryable=p in locked_once) for p in chunk]
        locked_once.difference_update(chunk)  # unlocked by the next pass
        return answers

    batches = list(sdk.write_in_passes(range(6), send, size=4, retries=2, sleep=pauses.append))
    assert calls == [[0, 1, 2, 3], [4, 5], [2, 5]]
    assert [sorted(batch) for batch in batches] == [[0, 1, 3], [4], [2, 5]]
    assert all(result.ok for batch in batches for result in batch.values()) and pauses == [0.5]
    # Still refused after the last pass: reported as it is, each position answered once.
    stuck = list(
        sdk.write_in_passes(
            [7],
            lambda c: [sdk.WriteResult("7", False, retryable=True)],
            size=4,
            retries=1,
            sleep=pauses.append,
        )
    )
    assert stuck == [{7: sdk.WriteResult("7", False, retryable=True)}]
