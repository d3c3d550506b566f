"""A failing child of a run (sync/ahead.py) reports its error in one line the run may log: no
address, no secret, whatever the error's text quoted."""

from __future__ import annotations

from consentsync.sdk.errors import register_secret
from consentsync.sync.ahead import _loggable


def test_an_error_quoting_an_address_and_a_secret_is_logged_without_either() -> None:
    register_secret("s3cr3t-token-value")
    error = ValueError(
        "bad value 'ada@example.com' with s3cr3t-token-value in row 7\n[parameters: ('ada@example.com',)]"
    )
    said = _loggable(error)
    assert "example.com" not in said and "s3cr3t" not in said
    assert said.startswith("bad value") and "row 7" in said and "\n" not in said
