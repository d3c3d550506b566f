"""The Accounts page's controls say whose they are (session 51, round 2).

Each account's row holds a role select, a state select, a password field and its buttons. The
selects were labelled "role" and "state" alone: a screen reader's list of form controls (or a
tab through the table, which reads no column and no row header) gave "role, combo box: viewer"
once per account, and an admin disabling one account could not tell which one they were on.
Each control now names its account.
"""

from __future__ import annotations

from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

from fastapi.testclient import TestClient

from consentsync.accounts import Accounts
from consentsync.config import load_config
from consentsync.ledger.service import Ledger
from consentsync.web.server import build
from tests.conftest import SQLITE_ONLY
from tests.web.conftest import PASSWORDS, ROLES, log_in


class _RowControls(HTMLParser):
    """The per-account forms' controls (``form action="/users/NAME..."``): (account, tag, name
    attribute, accessible name: the aria-label, else a button's own text)."""

    def __init__(self) -> None:
        super().__init__()
        self.account: str | None = None
        self.controls: list[tuple[str, str, str | None, str | None]] = []
        self.text: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "form":
            action = found.get("action") or ""
            self.account = action.split("/")[2] if action.startswith("/users/") else None
        elif self.account and tag in ("select", "input", "button") and found.get("type") != "hidden":
            self.controls.append((self.account, tag, found.get("name"), found.get("aria-label")))
            self.text = None if found.get("aria-label") or tag != "button" else ""

    def handle_data(self, data: str) -> None:
        if self.text is not None:
            self.text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self.text is not None:
            account, tag, field, _ = self.controls[-1]
            self.controls[-1] = (account, tag, field, self.text.strip())
            self.text = None
        if tag == "form":
            self.account = None


@SQLITE_ONLY
def test_every_control_of_an_accounts_row_names_its_account(ledger: Ledger, config_path: Path) -> None:
    accounts = Accounts(ledger.engine)
    for name, role in ROLES.items():
        accounts.add(name, role, PASSWORDS[name], actor="test")
    client = log_in(TestClient(build(load_config(config_path), ledger)), "ada")
    page = client.get("/users")
    assert page.status_code == 200
    parser = _RowControls()
    parser.feed(page.text)
    selects = [c for c in parser.controls if c[1] == "select"]
    # A role and a state select for every account.
    assert Counter(account for account, *_ in selects) == {name: 2 for name in ROLES}
    for account, _tag, field, label in selects:
        assert label and account in label, (account, field, label)
    # The other accounts' password fields and their buttons say whose they are too (the admin's
    # own row says "Change my password").
    for account, tag, field, label in parser.controls:
        if (tag == "button" and label != "Change my password") or (field == "password" and account != "ada"):
            assert label and account in label, (account, tag, field, label)
    labelled = [label for *_, label in parser.controls if label]
    assert len(labelled) == len(set(labelled)), Counter(labelled).most_common(3)
