"""Login throttling across console processes (session 51).

The throttle's check and its count of the attempt were two transactions, made one step by a lock
that holds only one process's threads. Two console processes on one ledger (`consentsync web`
beside `run --web-port`, or replicas behind a proxy) each let an attempt through between
another's check and its count: attempts sent to each at once were all checked, as many
passwords as there are processes times threads, where the throttle allows FREE_FAILURES. Here
each attempt stands for a process of its own (no shared in-process lock), and each pauses
between its check and its count, as any process may be paused by the machine.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest

from consentsync import accounts
from consentsync.accounts import FREE_FAILURES, Accounts, LoginThrottled
from consentsync.ledger.service import Ledger
from tests.conftest import Clock
from tests.web.test_accounts_s50 import PASSWORD, SlowHasher, side_by_side
from tests.web.test_accounts_s50 import slow as slow


@pytest.fixture
def processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attempt as if in its own process: no lock shared in memory, and a pause after the
    throttle's check (the window another process's attempt used to pass through)."""
    monkeypatch.setattr(accounts, "_THROTTLE_LOCK", contextlib.nullcontext())
    check = Accounts._check_throttle

    def paused(self: Accounts, *args: Any) -> None:
        check(self, *args)
        time.sleep(0.2)

    monkeypatch.setattr(Accounts, "_check_throttle", paused)


def test_attempts_sent_to_several_processes_at_once_are_throttled_as_one_after_another(
    ledger: Ledger, clock: Clock, slow: SlowHasher, processes: None
) -> None:
    users = Accounts(ledger.engine, clock, keyed=ledger.keyed_hasher())
    users.add("root", "admin", PASSWORD, actor="test")
    results = side_by_side(8, lambda: users.authenticate("root", "guess-guess-guess", client="203.0.113.9"))
    assert slow.checked == FREE_FAILURES  # only as many passwords checked as the throttle allows
    assert sum(isinstance(r, LoginThrottled) for r in results) == 8 - FREE_FAILURES
    # The owner, from their own client, is not held back; a right password still logs in.
    assert users.authenticate("root", PASSWORD, client="198.51.100.4") is not None
