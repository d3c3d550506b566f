"""The instance URL a Salesforce token endpoint answers is where every later call goes with the
bearer token: https, or plain http to this machine only. Any other answer is refused as the
admin's to look into (a config fault), in one line that never quotes it, before any call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from consentsync_salesforce import SalesforceConnector
from consentsync_salesforce.auth import request_token
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync.sdk import Action, ConnectorError, Cursor, Fault
from tests.connectors.against_sandbox import connector_settings, read_until
from tests.sandbox.serving import serve_seeded


class _AnsweringSandbox(SalesforceSandbox):
    """A sandbox whose token answers name the instance ``answer`` (a class attribute set by the
    test): what a rewriting proxy or a hostile login server hands back."""

    answer: ClassVar[Any] = None

    def _new_session(self, *, scope: bool = False) -> dict[str, Any]:
        out = super()._new_session(scope=scope)
        if self.answer is None:
            out.pop("instance_url")
        else:
            out["instance_url"] = self.answer
        return out


@pytest.fixture
def sandbox() -> Iterator[_AnsweringSandbox]:
    yield from serve_seeded(_AnsweringSandbox(), lambda server: server.org.seed(3, seed=3))


def _connector(sandbox: SalesforceSandbox) -> SalesforceConnector:
    return SalesforceConnector("sf-test", connector_settings(sandbox.connection_settings(), {}, {}))


@pytest.mark.parametrize(
    "answer",
    [
        "http://user:pa55@eu12.my.salesforce.example/",
        "http://10.0.0.7:8080",
        "ftp://eu12.my.salesforce.example",
        "eu12.my.salesforce.example",
        None,
        "http://[::1",
        42,
    ],
)
def test_an_instance_url_the_token_would_go_to_in_clear_is_refused(
    sandbox: _AnsweringSandbox, answer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_AnsweringSandbox, "answer", answer)
    connector = _connector(sandbox)
    with pytest.raises(ConnectorError) as raised:
        request_token(connector.session, connector.config)
    error = raised.value
    assert (error.rule.action, error.rule.fault) == (Action.FAIL, Fault.CONFIG)
    message = str(error)
    assert "\n" not in message and "instance_url" in message and "https" in message
    assert "pa55" not in message and "salesforce.example" not in message, "the answer is never quoted"
    # The run's read fails the same way, one line, no call made with the token.
    queries = sandbox.calls["query"]
    with pytest.raises(ConnectorError) as read:
        list(_connector(sandbox).read_changes("Contact", ["Email"], Cursor(), read_until()))
    assert read.value.rule.fault == Fault.CONFIG
    assert sandbox.calls["query"] == queries


@pytest.mark.parametrize("answer", ["https://{host}", "http://127.0.0.1:{port}", "http://localhost:{port}"])
def test_an_https_instance_or_one_on_this_machine_is_used(
    sandbox: _AnsweringSandbox, answer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_AnsweringSandbox, "answer", sandbox.instance_url)
    connector = _connector(sandbox)
    assert request_token(connector.session, connector.config).instance_url == sandbox.instance_url
    host = "eu12.my.salesforce.example"
    monkeypatch.setattr(_AnsweringSandbox, "answer", answer.format(host=host, port=29999))
    grant = request_token(connector.session, connector.config)
    assert grant.instance_url == answer.format(host=host, port=29999)
