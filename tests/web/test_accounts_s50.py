"""Console accounts, as an attacker would try them (session 50, second pass).

- Login attempts sent side by side all passed the throttle before any of them failed: a client
  could try as many passwords for an account at once as the server has threads (the throttle
  allows FREE_FAILURES, then doubles the wait), and the per-client budget was passed the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from argon2.exceptions import VerifyMismatchError

from consentsync import accounts
from consentsync.accounts import FREE_FAILURES, Accounts, LoginThrottled
from consentsync.ledger.service import Ledger
from tests.conftest import Clock

# The ledger's database does not change what is tested here (CI's 15 minutes do).
pytestmark = pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)

PASSWORD = "a-long-admin-password-7"


class SlowHasher:
    """The product's hasher, but a verify takes long enough for attempts sent together to
    overlap on any machine; counts the passwords it was asked to check."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.checked = 0
        self.lock = threading.Lock()

    def verify(self, stored: str, password: str) -> bool:
        with self.lock:
            self.checked += 1
        time.sleep(0.3)
        if password != PASSWORD:
            raise VerifyMismatchError("wrong")
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def slow(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowHasher]:
    hasher = SlowHasher(accounts.HASHER)
    monkeypatch.setattr(accounts, "HASHER", hasher)
    yield hasher


def side_by_side(attempts: int, call: Any) -> list[Any]:
    results: list[Any] = [None] * attempts
    start = threading.Barrier(attempts)

    def one(index: int) -> None:
        start.wait()
        try:
            results[index] = call()
        except LoginThrottled as throttled:
            results[index] = throttled

    threads = [threading.Thread(target=one, args=(i,)) for i in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_attempts_sent_side_by_side_are_throttled_as_if_sent_one_after_another(
    ledger: Ledger, clock: Clock, slow: SlowHasher
) -> None:
    users = Accounts(ledger.engine, clock, keyed=ledger.keyed_hasher())
    users.add("root", "admin", PASSWORD, actor="test")
    results = side_by_side(10, lambda: users.authenticate("root", "guess-guess-guess", client="203.0.113.9"))
    assert slow.checked == FREE_FAILURES  # only as many passwords checked as the throttle allows
    assert sum(isinstance(r, LoginThrottled) for r in results) == 10 - FREE_FAILURES
    assert all(r is None for r in results if not isinstance(r, LoginThrottled))
    # Another client is not held back by them, and its right password is not left counted.
    assert users.authenticate("root", PASSWORD, client="198.51.100.4") is not None
    for _ in range(FREE_FAILURES + 2):
        assert users.authenticate("root", PASSWORD, client="198.51.100.4") is not None
    # The attacking client waits; once it has waited, the owner's right password works from it.
    assert users.locked("root")
    clock.advance(minutes=16)
    assert users.authenticate("root", PASSWORD, client="203.0.113.9") is not None
    assert not users.locked("root")


def test_the_per_client_budget_holds_for_attempts_sent_side_by_side(
    ledger: Ledger, clock: Clock, slow: SlowHasher
) -> None:
    users = Accounts(ledger.engine, clock)
    names = [f"user{i}" for i in range(30)]
    # Thirty names tried at once from one client (a spray over accounts, existing or not).
    pending = iter(names)
    lock = threading.Lock()

    def next_name() -> Any:
        with lock:
            name = next(pending)
        return users.authenticate(name, "guess-guess-guess", client="203.0.113.9")

    results = side_by_side(30, next_name)
    assert slow.checked == accounts.MAX_FAILURES_PER_CLIENT
    assert sum(isinstance(r, LoginThrottled) for r in results) == 30 - accounts.MAX_FAILURES_PER_CLIENT


def test_password_checks_run_a_bounded_number_at_once(
    ledger: Ledger, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = Accounts(ledger.engine, clock)
    users.add("root", "admin", PASSWORD, actor="test")
    running, most = 0, 0
    lock = threading.Lock()
    real = accounts.HASHER

    class Counting(SlowHasher):
        def verify(self, stored: str, password: str) -> bool:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            try:
                time.sleep(0.1)
                return bool(real.verify(stored, password))
            finally:
                with lock:
                    running -= 1

    monkeypatch.setattr(accounts, "HASHER", Counting(real))
    # Each from its own client (a botnet): the throttle holds none of them back.
    counter = iter(range(12))
    pick = threading.Lock()

    def attempt() -> Any:
        with pick:
            index = next(counter)
        password = PASSWORD if index == 0 else "guess-guess-guess"
        return users.authenticate("root", password, client=f"203.0.113.{index}")

    results = side_by_side(12, attempt)
    assert 1 < most <= accounts.VERIFY_SLOTS  # side by side, but never more than the slots
    assert sum(r is not None for r in results) == 1  # and every password checked all the same


def test_a_session_left_unused_ends_and_one_in_use_lasts_until_its_hours_are_up(
    ledger: Ledger, clock: Clock
) -> None:
    users = Accounts(ledger.engine, clock)
    root = users.add("root", "admin", PASSWORD, actor="test")
    used, left = users.start_session(root), users.start_session(root)
    for _ in range(6):  # used every 20 minutes for two hours
        clock.advance(minutes=20)
        assert users.session_account(used) is not None
    # The other was not used since the login: it ended, and is not listed as open.
    assert users.session_account(left) is None
    assert len(users.sessions("root")) == 1
    # Used or not, a session ends SESSION_HOURS after the login.
    for _ in range(accounts.SESSION_HOURS * 3 - 7):  # on to 20 minutes before its end
        clock.advance(minutes=20)
        assert users.session_account(used) is not None
    clock.advance(minutes=20)
    assert users.session_account(used) is None
