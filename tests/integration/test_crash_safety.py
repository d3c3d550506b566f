"""A few SIGKILL trials in the suite (bench/crash_soak.py runs 50+): killed and restarted syncs
end exactly where an uninterrupted one does, with the audit chain whole and nothing twice."""

from __future__ import annotations

from pathlib import Path

from consentsync.sync.crashtest import run_trials


def test_killed_syncs_end_like_an_uninterrupted_one(tmp_path: Path) -> None:
    results = run_trials(3, records=40, seed=2, workdir=tmp_path, max_kill_after=2.0)
    assert sum(t.kills for t in results) >= 1, "no run was killed: the trials proved nothing"
    assert [t.problems for t in results] == [[], [], []]
