"""Review of 8873f90: IPv6 clients were counted by /64 for every throttle rule, so anyone on the
owner's /64 (an office LAN with SLAAC) locked the owner out: 8 failures from a neighbour on
"ada" made the owner's right password answer 429 (rising to 15 minutes), and 20 failures from
::99 on any names held back ``bob`` at ::10, device cookie or not. Now an attempt with a device
cookie of the account it tries is counted by that cookie (OWASP's device cookies): its backoff is
its own and its address's budget does not hold it back. Without one, the /64 stays one client,
as docs/console-accounts.md says under *Shared networks*."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from consentsync.accounts import FREE_FAILURES, MAX_FAILURES_PER_CLIENT, Accounts, LoginThrottled
from consentsync.config import load_config
from consentsync.ledger.service import Ledger
from consentsync.web.security import DEVICE_COOKIE
from consentsync.web.server import build
from tests.conftest import SQLITE_ONLY, Clock

pytestmark = SQLITE_ONLY  # the throttle's SQL runs on both databases in test_accounts_s50/s51

PASSWORD = "ada-admin-password-1"
BOB_PASSWORD = "bob-viewer-password-1"
OWNER, FRESH, NEIGHBOUR = "2001:db8:1:2::10", "2001:db8:1:2::11", "2001:db8:1:2::99"  # one /64


@pytest.fixture
def users(ledger: Ledger) -> Accounts:
    made = Accounts(ledger.engine, clock=lambda: ledger.clock(), keyed=ledger.keyed_hasher())
    made.add("ada", "admin", PASSWORD, actor="test")
    made.add("bob", "viewer", BOB_PASSWORD, actor="test")
    return made


def fail_through_the_wait(users: Accounts, clock: Clock, name: str, times: int, client: str) -> None:
    for n in range(times):
        while True:
            try:
                assert users.authenticate(name, f"wrong-guess-{n}-xxxxxx", client=client) is None
                break
            except LoginThrottled as held:
                clock.advance(seconds=held.retry_after)


def test_a_neighbour_on_the_owners_64_does_not_hold_back_the_owners_browser(
    users: Accounts, clock: Clock
) -> None:
    assert users.authenticate("ada", PASSWORD, client=OWNER, device="dev-1") is not None
    fail_through_the_wait(users, clock, "ada", 8, NEIGHBOUR)
    # The owner's browser, counted by its device cookie, gets in at once ...
    assert users.authenticate("ada", PASSWORD, client=OWNER, device="dev-1") is not None
    # ... a fresh browser on that /64 is one client with the neighbour (documented), until an
    # Unlock clears the account's counts.
    with pytest.raises(LoginThrottled):
        users.authenticate("ada", PASSWORD, client=FRESH)
    assert users.locked("ada")
    users.unlock("ada", actor="bob")
    assert users.authenticate("ada", PASSWORD, client=FRESH) is not None


def test_a_neighbours_budget_is_not_the_owners_browsers(users: Accounts, clock: Clock) -> None:
    for n in range(MAX_FAILURES_PER_CLIENT):
        assert users.authenticate(f"nobody{n}", "x" * 12, client=NEIGHBOUR) is None
    assert users.authenticate("bob", BOB_PASSWORD, client=OWNER, device="d") is not None
    # Without a device cookie the /64's budget holds (Unlock does not lift a network's budget);
    # it ends when the oldest failure leaves the 15 minutes.
    with pytest.raises(LoginThrottled) as held:
        users.authenticate("bob", BOB_PASSWORD, client=FRESH)
    users.unlock("bob", actor="ada")
    with pytest.raises(LoginThrottled):
        users.authenticate("bob", BOB_PASSWORD, client=FRESH)
    clock.advance(seconds=held.value.retry_after)
    assert users.authenticate("bob", BOB_PASSWORD, client=FRESH) is not None


def test_a_device_is_counted_by_itself(users: Accounts, clock: Clock) -> None:
    # A device cookie's failures have their own doubling wait, from any address ...
    for n in range(FREE_FAILURES):
        assert users.authenticate("ada", "wrong-guess-xxxxxx", client=f"192.0.2.{n}", device="dev-2") is None
    with pytest.raises(LoginThrottled):
        users.authenticate("ada", PASSWORD, client="192.0.2.50", device="dev-2")
    assert users.locked("ada")
    # ... which hold back neither its address nor another device of the account.
    assert users.authenticate("ada", PASSWORD, client="192.0.2.0") is not None
    assert users.authenticate("ada", PASSWORD, client="192.0.2.0", device="dev-3") is not None
    # An Unlock clears it, as a right password from it does.
    users.unlock("ada", actor="bob")
    assert not users.locked("ada")
    assert users.authenticate("ada", PASSWORD, client="192.0.2.50", device="dev-2") is not None


def test_through_the_api_the_owners_browser_gets_in_beside_a_neighbour(
    config_path: Path, ledger: Ledger, users: Accounts, clock: Clock
) -> None:
    app = build(load_config(config_path), ledger)
    owner = TestClient(app, client=(OWNER, 1))
    assert owner.post("/api/session", json={"name": "ada", "password": PASSWORD}).status_code == 200
    assert owner.cookies.get(DEVICE_COOKIE)
    neighbour = TestClient(app, client=(NEIGHBOUR, 1))
    for n in range(8):
        guess = {"name": "ada", "password": f"wrong-guess-{n}-xxxxxx"}
        answer = neighbour.post("/api/session", json=guess)
        while answer.status_code == 429:
            clock.advance(seconds=int(answer.headers["Retry-After"]))
            answer = neighbour.post("/api/session", json=guess)
        assert answer.status_code == 401
    for n in range(MAX_FAILURES_PER_CLIENT):
        neighbour.post("/api/session", json={"name": f"nobody{n}", "password": "x" * 12})
    assert owner.post("/api/session", json={"name": "ada", "password": PASSWORD}).status_code == 200
    fresh = TestClient(app, client=(FRESH, 1))
    assert fresh.post("/api/session", json={"name": "ada", "password": PASSWORD}).status_code == 429
    # The cookie is ada's: it does not carry bob past the /64's budget.
    owner.cookies.delete("consentsync_session")
    assert owner.post("/api/session", json={"name": "bob", "password": BOB_PASSWORD}).status_code == 429
