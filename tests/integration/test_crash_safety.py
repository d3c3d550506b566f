"""A few SIGKILL trials in the suite (bench/crash_soak.py runs 50+ a connector): killed and
restarted syncs end exactly where an uninterrupted one does, with the audit chain whole and
nothing twice. The sandbox comes through the connector's harness, as any connector's would."""

from __future__ import annotations

from pathlib import Path

from consentsync.sdk.crashtest import run_trials


def test_killed_syncs_end_like_an_uninterrupted_one(tmp_path: Path) -> None:
    results = run_trials("salesforce", 3, seed=2, workdir=tmp_path, max_kill_after=2.0)
    assert sum(t.kills for t in results) >= 1, "no run was killed: the trials proved nothing"
    assert [t.problems for t in results] == [[], [], []]


def test_syncs_killed_while_pushing_end_like_an_uninterrupted_one(tmp_path: Path) -> None:
    """Killed after the CRM applied a push batch and before the ledger recorded its answer, or
    after the batch was marked sent and before the CRM saw it: the next runs neither take the
    project's own writes for the person's choice nor push or audit anything twice."""
    results = run_trials("vtiger", 3, seed=5, workdir=tmp_path, phases=("push-answered", "push-sent"))
    killed = sum(t.kills_by_phase["push-answered"] + t.kills_by_phase["push-sent"] for t in results)
    assert killed >= 2, f"only {killed} runs died while pushing: the trials proved little"
    assert [t.problems for t in results] == [[], [], []]
