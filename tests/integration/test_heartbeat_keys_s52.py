"""Two daemons on one host whose holder names (host:pid/pid-namespace/start-time) run past the
heartbeat row's 64-character name: each keeps a row of its own. Cut to fit, they shared one
(the hostname and the PID filled it), each beat overwrote the other's, and `status` and the
daemons' turn-taking saw one daemon where two ran."""

from __future__ import annotations

import pytest

from consentsync.ledger.service import Ledger
from consentsync.sync import heartbeat as heartbeat_module
from consentsync.sync.heartbeat import Heartbeat, running_daemons

LONG_HOST = "consentsync-daemon-7f9c4d-eu-west-1a.prod.internal.example"  # 58 characters


def test_daemons_with_long_holder_names_keep_a_row_each(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    holders = [f"{LONG_HOST}:1/4026532{n}/1234567" for n in (101, 202)]
    beats = []
    for holder in holders:
        monkeypatch.setattr(heartbeat_module, "this_process", lambda holder=holder: holder)
        beat = Heartbeat(ledger.engine, ledger.clock)
        beat.beat()
        beats.append(beat)
    monkeypatch.setattr(heartbeat_module, "holder_dead", lambda _holder: False)
    assert sorted(seen.holder for seen in running_daemons(ledger.engine, ledger.clock())) == sorted(holders)
    # One stops cleanly: its row goes, the other's stays.
    beats[0].stop()
    assert [seen.holder for seen in running_daemons(ledger.engine, ledger.clock())] == [holders[1]]
    beats[1].stop()
    assert running_daemons(ledger.engine, ledger.clock()) == []
