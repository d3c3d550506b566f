"""Session 64: a password of 12 spaces, or 'a' + 10 spaces + 'b', was accepted for an admin
account: the length rule counted raw characters. ASVS 4.0.3 V2.1.1: at least 12 characters once
runs of spaces are combined; a password that is blank once stripped is refused. One line naming
the password and what is accepted, from the command line and the API alike."""

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


@pytest.mark.parametrize(
    ("password", "error"),
    [
        (" " * 12, BLANK),
        ("\t" * 6 + " " * 6, BLANK),
        ("a          b", SHORT),
        ("abc   def   gh", SHORT),  # 14 characters typed, 10 once the runs are combined
    ],
)
def test_spaces_count_once_and_blank_is_refused(password: str, error: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_password(password)
    assert str(refused.value) == error


def test_a_passphrase_with_single_spaces_is_accepted_as_typed() -> None:
    for password in ("correct horse battery", "  twelve chars+  ", "a b c d e f g"):
        assert check_password(password) == password  # checked, never changed


@SQLITE_ONLY  # the policy, not the database
def test_the_command_line_refuses_them_in_one_line(cli: Cli) -> None:
    spaced = cli("user", "add", "bob", "--role", "admin", "--password-stdin", input="a          b\n")
    assert spaced.exit_code == exit_codes.CONFIG
    assert spaced.stderr.strip() == f"consentsync: error: {SHORT}"
    padded = cli("user", "add", "bob", "--role", "admin", "--password-stdin", input="x" + " " * 30 + "y\n")
    assert padded.exit_code == exit_codes.CONFIG and SHORT in padded.stderr
    blank = cli("user", "add", "bob", "--role", "admin", "--password-stdin", input=" " * 12 + "\n")
    assert blank.exit_code == exit_codes.CONFIG and len(blank.stderr.strip().splitlines()) == 1
    assert cli("user", "list", "--json").stdout.count('"bob"') == 0


@SQLITE_ONLY
def test_the_api_refuses_them_for_new_and_changed_passwords(config_path: Path, ledger: Ledger) -> None:
    Accounts(ledger.engine).add("ada", "admin", ADMIN_PASSWORD, actor="test")
    client = TestClient(build(load_config(config_path), ledger))
    login = client.post("/api/session", json={"name": "ada", "password": ADMIN_PASSWORD})
    token = login.json()["csrf_token"]
    headers = {"X-CSRF-Token": token}
    for name, password, error in (("blank12", " " * 12, BLANK), ("spaced12", "a          b", SHORT)):
        added = client.post(
            "/api/users", json={"name": name, "role": "admin", "password": password}, headers=headers
        )
        assert added.status_code == 400, added.text
        assert added.json() == {"detail": error}
        # Never created, so never a login.
        assert (
            TestClient(client.app).post("/api/session", json={"name": name, "password": password}).status_code
            == 401
        )
    reset = client.post(
        "/api/users/ada", json={"password": " " * 12, "current_password": ADMIN_PASSWORD}, headers=headers
    )
    assert reset.status_code == 400 and reset.json() == {"detail": BLANK}
    own = client.post(
        "/api/session/password",
        json={"current_password": ADMIN_PASSWORD, "password": "a" + " " * 20 + "b"},
        headers=headers,
    )
    assert own.status_code == 400 and own.json() == {"detail": SHORT}
