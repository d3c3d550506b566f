"""Session 64: login throttling counted failures per exact client address only: 111 wrong
passwords against one account from 37 loopback addresses were all answered 401, and an IPv6 /64
gives one host unlimited addresses. ASVS 4.0.3 V2.2.1: no more than 100 failed attempts an hour
on one account. Now IPv6 clients are counted by /64, and past 100 failures within the hour the
account is tried by nobody (429 with Retry-After, the right password refused too) but a browser
that logged in to it before (its device cookie): the owner is not locked out
(docs/console-accounts.md keeps its no-hard-lock-out choice)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient
from requests.adapters import HTTPAdapter

from consentsync import accounts
from consentsync.accounts import FREE_FAILURES, MAX_FAILURES_PER_ACCOUNT, Accounts, LoginThrottled
from consentsync.config import load_config
from consentsync.ledger.service import Ledger
from consentsync.web.security import DEVICE_COOKIE, SESSION_COOKIE
from consentsync.web.server import WebServer, build
from tests.conftest import SQLITE_ONLY, Clock
from tests.web.conftest import login_csrf

pytestmark = SQLITE_ONLY  # the throttle's SQL runs on both databases in test_accounts_s50/s51

PASSWORD = "rex-reviewer-password-1"
ADMIN_PASSWORD = "ada-admin-password-1"


class FromAddress(HTTPAdapter):
    """Requests sent from a given local address (127.0.0.x: Linux answers the whole /8)."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def client_from(source: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", FromAddress(source))
    return session


@pytest.fixture
def users(ledger: Ledger) -> Accounts:
    made = Accounts(ledger.engine, clock=lambda: ledger.clock(), keyed=ledger.keyed_hasher())
    made.add("rex", "reviewer", PASSWORD, actor="test")
    made.add("ada", "admin", ADMIN_PASSWORD, actor="test")
    return made


@pytest.fixture
def server(config_path: Path, ledger: Ledger, users: Accounts) -> Iterator[WebServer]:
    with WebServer(build(load_config(config_path), ledger)) as served:
        yield served


def test_many_addresses_get_no_more_than_the_hourly_ceiling_and_the_owner_still_gets_in(
    server: WebServer, users: Accounts, clock: Clock
) -> None:
    url = server.url + "/api/session"
    # The owner logged in from their browser before: it holds a device cookie for rex.
    owner = client_from("127.0.0.1")
    assert owner.post(url, json={"name": "rex", "password": PASSWORD}, timeout=30).status_code == 200
    assert owner.cookies.get(DEVICE_COOKIE)

    answers: list[int] = []
    for host in range(2, 39):  # 37 addresses, 3 wrong passwords each: none of them throttled alone
        attacker = client_from(f"127.0.0.{host}")
        for attempt in range(FREE_FAILURES):
            guess = {"name": "rex", "password": f"guess-{host}-{attempt}-xxxxxxxx"}
            answers.append(attacker.post(url, json=guess, timeout=30).status_code)
    assert answers.count(401) == MAX_FAILURES_PER_ACCOUNT
    assert answers[MAX_FAILURES_PER_ACCOUNT:] == [429] * (len(answers) - MAX_FAILURES_PER_ACCOUNT)

    # The right password from anywhere else is refused too while the ceiling holds ...
    elsewhere = client_from("127.0.0.50").post(url, json={"name": "rex", "password": PASSWORD}, timeout=30)
    assert elsewhere.status_code == 429
    assert 3500 <= int(elsewhere.headers["Retry-After"]) <= 3601
    assert "within the hour" in elsewhere.json()["detail"]
    assert users.locked("rex")
    # ... but not from the owner's browser, nor for another account.
    assert owner.post(url, json={"name": "rex", "password": PASSWORD}, timeout=30).status_code == 200
    ada = client_from("127.0.0.51").post(url, json={"name": "ada", "password": ADMIN_PASSWORD}, timeout=30)
    assert ada.status_code == 200
    # An hour on, the failures have left the window.
    clock.advance(minutes=61)
    again = client_from("127.0.0.50").post(url, json={"name": "rex", "password": PASSWORD}, timeout=30)
    assert again.status_code == 200
    assert not users.locked("rex")


def test_a_device_cookie_counts_for_its_own_account_and_only_a_few_failures(
    config_path: Path, ledger: Ledger, users: Accounts, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    monkeypatch.setattr(accounts, "MAX_FAILURES_PER_ACCOUNT", 5)
    app = build(load_config(config_path), ledger)
    browser = TestClient(app, client=("192.0.2.10", 1))
    assert browser.post("/api/session", json={"name": "rex", "password": PASSWORD}).status_code == 200
    device = browser.cookies.get(DEVICE_COOKIE)
    assert device
    # The login page sets one too.
    page = TestClient(app, client=("192.0.2.12", 1))

    def form_login() -> int:
        fields = {"name": "rex", "password": PASSWORD, "csrf_token": login_csrf(page), "next": "/"}
        return page.post("/login", data=fields, follow_redirects=False).status_code

    assert form_login() == 303 and page.cookies.get(DEVICE_COOKIE)
    for n in range(5):  # the ceiling reached, from five other addresses
        other = TestClient(app, client=(f"198.51.100.{n}", 1))
        assert (
            other.post("/api/session", json={"name": "rex", "password": "wrong-password-xx"}).status_code
            == 401
        )
    page.cookies.delete(SESSION_COOKIE)  # logged out since (the device cookie stays)
    assert form_login() == 303  # the ceiling reached, and the owner's browser let in
    # The cookie is rex's: it lets nobody through for ada, nor once tampered with.
    for name, value in (("rex", device[:-2] + "xx"), ("rex", "x.1.y"), ("ada", device)):
        forged = TestClient(app, client=("192.0.2.11", 1), cookies={DEVICE_COOKIE: value})
        if name == "ada":  # ada's ceiling, reached too
            for n in range(5):
                TestClient(app, client=(f"198.51.100.{n}", 1)).post(
                    "/api/session", json={"name": "ada", "password": "wrong-password-xx"}
                )
        tried = forged.post("/api/session", json={"name": name, "password": PASSWORD})
        assert tried.status_code == 429, (name, value)
    # A browser whose device gets the password wrong too often is held back like any other:
    # a stolen cookie gives no more than DEVICE_FAILURES tries an hour, each from a new address
    # (it is counted by the cookie, not the address: its own doubling wait past FREE_FAILURES).
    wrong = {"name": "rex", "password": "wrong-password-xx"}
    for n in range(accounts.DEVICE_FAILURES):
        thief = TestClient(app, client=(f"203.0.113.{n}", 1), cookies={DEVICE_COOKIE: device})
        answer = thief.post("/api/session", json=wrong)
        if n >= FREE_FAILURES:
            assert answer.status_code == 429
            clock.advance(seconds=int(answer.headers["Retry-After"]))
            answer = thief.post("/api/session", json=wrong)
        assert answer.status_code == 401
    clock.advance(minutes=15)  # past the device's own wait: only the ceiling holds it now
    thief = TestClient(app, client=("203.0.113.99", 1), cookies={DEVICE_COOKIE: device})
    held = thief.post("/api/session", json={"name": "rex", "password": PASSWORD})
    assert held.status_code == 429 and "within the hour" in held.json()["detail"]


def test_ipv6_clients_are_counted_by_their_64(config_path: Path, ledger: Ledger, users: Accounts) -> None:
    app = build(load_config(config_path), ledger)

    def attempt(address: str, password: str = "wrong-password-xx") -> int:
        client = TestClient(app, client=(address, 1))
        return client.post("/api/session", json={"name": "rex", "password": password}).status_code

    assert [attempt(f"2001:db8:1:2::{n}") for n in range(1, FREE_FAILURES + 1)] == [401] * FREE_FAILURES
    # Another address of the same /64 is the same client: it waits.
    assert attempt("2001:db8:1:2:ffff:ffff:ffff:fffe", PASSWORD) == 429
    # Another /64 is another client.
    assert attempt("2001:db8:1:3::1", PASSWORD) == 200


def test_the_ceiling_holds_in_the_accounts_and_an_unlock_lifts_it(users: Accounts, clock: Clock) -> None:
    for n in range(MAX_FAILURES_PER_ACCOUNT):
        clock.advance(seconds=30)
        assert users.authenticate("rex", "wrong-password-xx", client=f"10.0.{n // 250}.{n % 250}") is None
    with pytest.raises(LoginThrottled) as throttled:
        users.authenticate("rex", PASSWORD, client="10.9.9.9")
    # Until the oldest failure leaves the hour: 30 s after the first of them was made.
    assert throttled.value.retry_after == 3600 - 30 * (MAX_FAILURES_PER_ACCOUNT - 1) + 1
    clock.advance(seconds=throttled.value.retry_after)
    assert users.authenticate("rex", PASSWORD, client="10.9.9.9") is not None
    assert users.authenticate("rex", "wrong-password-xx", client="10.9.9.10") is None
    with pytest.raises(LoginThrottled):
        users.authenticate("rex", PASSWORD, client="10.9.9.11")
    users.unlock("rex", actor="ada")
    assert users.authenticate("rex", PASSWORD, client="10.9.9.11") is not None
