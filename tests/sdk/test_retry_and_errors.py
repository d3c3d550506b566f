"""The error table and the retry policy decide what happens to each failed CRM call."""

from __future__ import annotations

import pytest

from consentsync.sdk import Action, ConnectorError, ErrorRule, ErrorTable, Fault, RetryPolicy, call
from consentsync.sdk.errors import register_secret, scrub

TABLE = ErrorTable(
    [
        ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "daily limit", status=403, code="REQUEST_LIMIT_EXCEEDED"),
        ErrorRule(Action.SKIP, Fault.DATA, "row locked", code="UNABLE_TO_LOCK_ROW"),
        ErrorRule(Action.FAIL, Fault.CONFIG, "bad query", status=400),
    ]
)


@pytest.mark.parametrize(
    ("status", "code", "action"),
    [
        (403, "REQUEST_LIMIT_EXCEEDED", Action.RATE_LIMITED),  # status and code
        (400, "UNABLE_TO_LOCK_ROW", Action.SKIP),  # code beats status
        (400, "MALFORMED_QUERY", Action.FAIL),  # status alone
        (403, "INSUFFICIENT_ACCESS", Action.FAIL),  # default for 4xx
        (503, None, Action.RETRY),
        (429, None, Action.RATE_LIMITED),
        (401, "INVALID_SESSION_ID", Action.REFRESH_TOKEN),
        (None, None, Action.RETRY),  # no answer at all
    ],
)
def test_most_specific_rule_wins(status: int | None, code: str | None, action: Action) -> None:
    assert TABLE.classify(status, code).action is action


class Script:
    """Fails with the given errors, then succeeds."""

    def __init__(self, *errors: ConnectorError) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _error(status: int | None, code: str | None = None, retry_after: float | None = None) -> ConnectorError:
    return ConnectorError(f"{status} {code}", TABLE.classify(status, code), retry_after=retry_after)


def test_transient_errors_are_retried_with_backoff() -> None:
    sleeps: list[float] = []
    script = Script(_error(503), _error(None), _error(502))
    assert call(script, policy=RetryPolicy(initial_wait=0.1), sleep=sleeps.append) == "ok"
    assert script.calls == 4
    assert len(sleeps) == 3 and all(0 <= s <= 20 for s in sleeps)


def test_retry_after_is_honoured() -> None:
    sleeps: list[float] = []
    script = Script(_error(429, retry_after=7))
    assert call(script, policy=RetryPolicy(), sleep=sleeps.append) == "ok"
    assert sleeps == [7]


def test_long_rate_limit_stops_instead_of_waiting() -> None:
    sleeps: list[float] = []
    script = Script(_error(429, retry_after=3600))
    with pytest.raises(ConnectorError) as raised:
        call(script, policy=RetryPolicy(max_rate_limit_wait=60), sleep=sleeps.append)
    assert raised.value.action is Action.RATE_LIMITED
    assert sleeps == [] and script.calls == 1


def test_expired_session_is_refreshed_once_then_retried() -> None:
    refreshed: list[bool] = []
    script = Script(_error(401, "INVALID_SESSION_ID"))
    result = call(
        script, policy=RetryPolicy(), refresh_session=lambda: refreshed.append(True), sleep=lambda _: None
    )
    assert result == "ok" and refreshed == [True]


@pytest.mark.parametrize(("status", "code"), [(400, "MALFORMED_QUERY"), (400, "UNABLE_TO_LOCK_ROW")])
def test_data_and_config_errors_are_not_retried(status: int, code: str) -> None:
    script = Script(_error(status, code))
    with pytest.raises(ConnectorError):
        call(script, policy=RetryPolicy(), sleep=lambda _: None)
    assert script.calls == 1


def test_gives_up_after_max_attempts() -> None:
    script = Script(*[_error(503) for _ in range(10)])
    with pytest.raises(ConnectorError):
        call(script, policy=RetryPolicy(max_attempts=3), sleep=lambda _: None)
    assert script.calls == 3


def test_secrets_are_scrubbed_from_messages() -> None:
    text = (
        "Authorization: Bearer 00D5g000004abcd!AQ4AQFakeSessionToken1234567890 failed; "
        'client_secret=sup3rs3cret&password=hunter2 {"access_token": "tok_abcdef123456"}'
    )
    cleaned = scrub(text)
    for secret in ("AQ4AQFakeSessionToken", "sup3rs3cret", "hunter2", "tok_abcdef123456"):
        assert secret not in cleaned
    assert "[redacted]" in cleaned
    assert "sup3rs3cret" not in str(ConnectorError(text, TABLE.classify(500, None)))


def test_a_registered_secret_sharing_a_part_with_a_key_name_does_not_unmask_its_value() -> None:
    # A sandbox's password "sandbox-password" shares "password" with the key of password=...: its
    # redaction must not hide the key from the pattern that redacts the value.
    register_secret("sandbox-password")
    cleaned = scrub("login failed: username=ada&password=hunter2xyz")
    assert "hunter2xyz" not in cleaned
