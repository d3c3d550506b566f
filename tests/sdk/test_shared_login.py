"""``SharedLogin``: the threads of one connector log in once between them, log in again when the
login is forgotten or no longer fresh, and a login that failed is tried again by the next call."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from consentsync.sdk import ConnectorError, SharedLogin
from consentsync.sdk.errors import Action, ErrorRule, Fault


class Logins:
    def __init__(self, fail_first: int = 0) -> None:
        self.made = 0
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def __call__(self) -> str:
        time.sleep(0.05)  # long enough for every waiting thread to arrive meanwhile
        with self.lock:
            self.made += 1
            made = self.made
        if made <= self.fail_first:
            raise ConnectorError("login: refused", ErrorRule(Action.RETRY, Fault.TRANSIENT, "login failed"))
        return f"session {made}"


def test_threads_needing_a_login_at_once_share_one() -> None:
    logins = Logins()
    shared = SharedLogin(logins)
    start = threading.Barrier(8)

    def use(_: int) -> str:
        start.wait()
        return shared.get()

    with ThreadPoolExecutor(8) as pool:
        sessions = list(pool.map(use, range(8)))
    assert sessions == ["session 1"] * 8 and logins.made == 1
    assert shared.current == "session 1"


def test_a_forgotten_or_stale_login_is_made_again() -> None:
    logins = Logins()
    stale = {"session 2"}
    shared = SharedLogin(logins, fresh=lambda session: session not in stale)
    assert shared.get() == shared.get() == "session 1"
    shared.forget()
    assert shared.current is None
    assert shared.get() == "session 2"
    assert shared.get() == "session 3"  # session 2 was no longer fresh
    assert logins.made == 3


def test_a_failed_login_reaches_its_caller_and_the_next_call_logs_in_again() -> None:
    logins = Logins(fail_first=1)
    shared = SharedLogin(logins)
    with pytest.raises(ConnectorError, match="refused"):
        shared.get()
    assert shared.current is None
    assert shared.get() == "session 2"


def test_threads_refused_the_same_login_log_in_again_once() -> None:
    """Every thread was refused the old login: the first to log in again keeps its new one, which
    the others' forgetting, later, leaves alone."""
    logins = Logins()
    shared = SharedLogin(logins)
    start, refused = threading.Barrier(6), threading.Barrier(6)

    def refused_then_again(index: int) -> str:
        start.wait()
        assert shared.get() == "session 1"
        refused.wait()  # the CRM refused session 1 to every thread
        if index % 2:
            time.sleep(0.1)  # half of them forget only after a new login was made
        shared.forget()
        return shared.get()

    with ThreadPoolExecutor(6) as pool:
        sessions = list(pool.map(refused_then_again, range(6)))
    assert sessions == ["session 2"] * 6 and logins.made == 2


def test_forgetting_from_a_thread_that_was_given_no_login_forgets_it() -> None:
    logins = Logins()
    shared = SharedLogin(logins)
    assert shared.get() == "session 1"
    with ThreadPoolExecutor(1) as pool:
        pool.submit(shared.forget).result()
    assert shared.current is None
