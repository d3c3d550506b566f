"""Review of 8873f90: a password of only invisible characters was accepted (12 zero-width
spaces U+200B, 12 U+FEFF, "a" and 11 U+200B): Python's white space and strip() do not cover
format characters. Now a password is measured with its invisible characters (Unicode category
Cf, other default-ignorable ones, controls) left out and runs of spaces combined; blank after
that, it is refused with the one line a blank password gets (docs/console-accounts.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from consentsync import exit_codes
from consentsync.accounts import Accounts, check_password
from consentsync.config import load_config
from consentsync.domain import InvalidInput
from consentsync.ledger.service import Ledger
from consentsync.web.server import build
from tests.conftest import SQLITE_ONLY, Cli

ADMIN_PASSWORD = "ada-admin-password-1"
SHORT = "the password must be at least 12 characters long, a run of spaces counting as one"
BLANK = (
    "the password must not be blank or spaces only: give at least 12 characters, "
    "a run of spaces counting as one"
)
COMMON = "the password is one of the most common passwords: choose another"


@pytest.mark.parametrize(
    ("password", "error"),
    [
        ("\u200b" * 12, BLANK),
        ("\ufeff" * 12, BLANK),
        ("\u2060\u200d\u200c" * 4, BLANK),
        (" \u200b" * 12, BLANK),
        ("\u3164" * 12, BLANK),  # Hangul filler: a letter that shows nothing
        ("\u2800" * 12, BLANK),  # blank Braille pattern
        ("\x00" * 12, BLANK),
        ("a" + "\u200b" * 11, SHORT),
        ("abcdef" + "\u00ad" * 6, SHORT),  # soft hyphens
        ("abc\u200b \u200b def gh", SHORT),  # 9 once the invisible are out and the run combined
        ("1qaz2wsx3edc\u200b", COMMON),
    ],
)
def test_invisible_characters_count_as_none(password: str, error: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_password(password)
    assert str(refused.value) == error


def test_visible_passwords_with_invisible_ones_are_accepted_as_typed() -> None:
    for password in (
        "correct\u200dhorse battery",
        "\ufeffabcdefghijkl",
        "tab\tseparated pw",
        "日本語のパスワードですね",
    ):
        assert check_password(password) == password


@SQLITE_ONLY
def test_the_command_line_and_the_api_refuse_them_in_one_line(
    cli: Cli, config_path: Path, ledger: Ledger
) -> None:
    blank = cli("user", "add", "bob", "--role", "admin", "--password-stdin", input="\ufeff" * 12 + "\n")
    assert blank.exit_code == exit_codes.CONFIG
    assert blank.stderr.strip() == f"consentsync: error: {BLANK}"
    Accounts(ledger.engine).add("ada", "admin", ADMIN_PASSWORD, actor="test")
    client = TestClient(build(load_config(config_path), ledger))
    token = client.post("/api/session", json={"name": "ada", "password": ADMIN_PASSWORD}).json()["csrf_token"]
    added = client.post(
        "/api/users",
        json={"name": "zed", "role": "admin", "password": "\u200b" * 12},
        headers={"X-CSRF-Token": token},
    )
    assert added.status_code == 400 and added.json() == {"detail": BLANK}
    assert cli("user", "list", "--json").stdout.count('"zed"') == 0
