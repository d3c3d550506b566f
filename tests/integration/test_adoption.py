"""Connecting a CRM that already holds years of data without damaging it: a connector observes
first (nothing in the CRM changes), reports what it would push, plans it for review, and pushes
exactly the approved plan; suppress_only pushes only what restricts processing; the blast-radius
guard holds an oversized run until a plan is approved."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import func, select

from consentsync.domain import canonical_json
from consentsync.ledger.schema import sync_runs
from tests.conftest import Cli
from tests.integration.test_cli_sync import connect_sandbox

KINDS = ("Contact", "Lead", "Individual", "ContactPointTypeConsent")


@pytest.fixture
def org(cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(80, seed=11)  # opted in and out, unspecified, several bases, consent records
        connect_sandbox(sandbox, config_path, monkeypatch)
        yield sandbox


def _configure(config_path: Path, **settings: Any) -> None:
    data = yaml.safe_load(config_path.read_text())
    connector = data["connectors"][0]
    for key in ("mode", "push_guard"):
        connector.pop(key, None)  # a newly configured connector: the defaults
    connector.update(settings)
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _state(org: SalesforceSandbox) -> str:
    return canonical_json({kind: sorted(org.org.records(kind), key=lambda r: r["Id"]) for kind in KINDS})


def _run(cli: Cli, *args: str, code: int = 0) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.exit_code == code, f"{args} -> {result.exit_code}: {result.output}{result.stderr}"
    return json.loads(result.stdout)


def _changed_fields(before: dict[str, Any], after: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    changed: dict[tuple[str, str], dict[str, Any]] = {}
    for kind in KINDS:
        old = {r["Id"]: r for r in before[kind]}
        for record in after[kind]:
            previous = old.get(record["Id"], {})
            diff = {
                k: v
                for k, v in record.items()
                if previous.get(k) != v and k not in ("SystemModstamp", "LastModifiedDate")
            }
            if diff:
                changed[(kind, record["Id"])] = diff
    return changed


def test_a_new_connector_observes_reports_plans_and_pushes_only_the_approved_plan(
    cli: Cli, config_path: Path, org: SalesforceSandbox
) -> None:
    _configure(config_path)
    before = _state(org)
    # The dry run of a first sync says the pushes it lists would not go: the connector observes.
    dry = _run(cli, "sync", "sf", "--full", "--dry-run")
    assert dry["status"] == "dry_run" and dry["plan"]["pushes"]
    assert dry["would_hold"] and "mode: observe" in dry["would_hold"], dry["would_hold"]
    told = cli("sync", "sf", "--full", "--dry-run")
    assert "a run now would push none of them: the connector observes" in told.stdout, told.stdout
    observed = _run(cli, "sync", "sf", "--full")
    assert observed["status"] == "succeeded"
    assert _state(org) == before, "observe mode changed the CRM"
    held = observed["counts"]["pushes_held"]
    assert held > 0 and observed["counts"]["pushed"] == 0
    report = observed["counts"]["would_push"]
    assert report and all(row["records"] > 0 for row in report)
    # The plan lists exactly what the adoption report counted, and the same figures everywhere.
    plan_path = config_path.parent / "plan.json"
    plan = _run(cli, "plan", "sf", "-o", str(plan_path))
    assert plan == json.loads(plan_path.read_text())
    assert plan["changes"] == report
    assert plan["records"] == held == len(plan["items"])
    shown = _run(cli, "runs", "show", observed["run_id"])
    assert shown["counts"]["would_push"] == report
    assert all("@" not in item["who"] or "***" in item["who"] for item in plan["items"]), "an address leaked"
    # Applying pushes exactly the plan: every planned field, and nothing else.
    snapshot = json.loads(before)
    applied = _run(cli, "apply", str(plan_path), "--actor", "dpo")
    assert applied["status"] == "succeeded", applied["error"]
    assert applied["counts"]["pushed"] == len(plan["items"])
    changed = _changed_fields(snapshot, json.loads(_state(org)))
    planned = {(item["object_type"], item["record_id"]): item["new"] for item in plan["items"]}
    assert changed == planned
    log = _run(cli, "audit", "log", "--action", "plan.applied")
    assert [entry["what"]["digest"] for entry in log] == [plan["digest"]]
    # The apply's run lists what it pushed, and who approved the plan.
    ran = _run(cli, "runs", "show", applied["run_id"])
    assert ran["plan_approved_by"] == "dpo"
    assert {(p["object"], p["record_id"]): p["new"] for p in ran["pushes"]} == planned
    shown = cli("runs", "show", applied["run_id"]).stdout
    assert "applied a plan approved by dpo" in shown and f"pushes ({len(planned)})" in shown, shown
    assert _run(cli, "runs", "show", observed["run_id"])["pushes"] == []  # the observing run pushed none
    # The connector still observes: the next run pushes nothing more.
    after = _state(org)
    assert _run(cli, "sync", "sf")["counts"]["pushed"] == 0
    assert _state(org) == after


def test_a_plan_the_crm_changed_underneath_is_refused_and_nothing_is_pushed(
    cli: Cli, config_path: Path, org: SalesforceSandbox
) -> None:
    _configure(config_path)
    _run(cli, "sync", "sf", "--full")
    plan_path = config_path.parent / "plan.json"
    plan = _run(cli, "plan", "sf", "-o", str(plan_path))
    target = next(item for item in plan["items"] if item["object_type"] == "Contact")
    field, value = next(iter(target["new"].items()))
    org.org.update(target["record_id"], **{field: value})  # a CRM user did it meanwhile
    before = _state(org)
    # exit_codes.STALE_PLAN: the run is recorded as refused, with what to do next.
    refused = _run(cli, "apply", str(plan_path), code=65)
    assert refused["status"] == "failed" and refused["error"].startswith("plan: ")
    assert "make a new plan with `consentsync plan sf`" in refused["error"]
    assert refused["counts"]["pushed"] == 0
    assert _state(org) == before


def test_suppress_only_pushes_only_what_restricts_processing(
    cli: Cli, config_path: Path, org: SalesforceSandbox
) -> None:
    from datetime import UTC, datetime

    _configure(config_path)
    _run(cli, "sync", "sf", "--full")  # observe: the ledger learns the org
    # Someone who ticked the CRM's opt-out subscribes again on the web site, evidenced: the
    # two-way plan clears the box; suppress_only must not.
    opted_out = next(r for r in org.org.records("Contact") if r["HasOptedOutOfEmail"] and r.get("Email"))
    cli.ok(
        "ledger", "record", "--email", str(opted_out["Email"]), "--purpose", "email_marketing",
        "--status", "granted", "--source", "web_form", "--at", datetime.now(UTC).isoformat(),
        "--notice-version", "privacy-2026-01", "--evidence-ref", "form-123",
    )  # fmt: skip
    _configure(config_path, mode="two_way", push_guard={"max_records": None, "max_share": None})
    everything = _run(cli, "plan", "sf", "--full")
    _configure(config_path, mode="suppress_only", push_guard={"max_records": None, "max_share": None})
    restricting = _run(cli, "plan", "sf", "--full")
    assert 0 < restricting["records"] <= everything["records"]
    allowed_values = {"false", "null"}
    for item in restricting["items"]:
        assert all(json.dumps(value) not in allowed_values for value in item["new"].values()), item
    lifted = [i for i in everything["items"] if any(json.dumps(v) == "false" for v in i["new"].values())]
    assert lifted, "the org should hold someone whose opt-out the two-way plan clears"
    before = json.loads(_state(org))
    dry = _run(cli, "sync", "sf", "--full", "--dry-run")
    assert dry["plan"]["pushes"] and dry["would_hold"] is None  # nothing holds them: they would go
    ran = _run(cli, "sync", "sf", "--full")
    assert ran["status"] == "succeeded"
    for (_, _), fields in _changed_fields(before, json.loads(_state(org))).items():
        assert all(value is True for value in fields.values()), fields


def test_the_push_guard_holds_an_oversized_run_until_a_plan_is_approved(
    cli: Cli, config_path: Path, org: SalesforceSandbox
) -> None:
    _configure(config_path, mode="two_way", push_guard={"max_records": 5, "max_share": None})
    before = _state(org)
    dry = _run(cli, "sync", "sf", "--full", "--dry-run")
    assert dry["would_hold"] and dry["would_hold"].startswith("push guard: "), dry["would_hold"]
    held = _run(cli, "sync", "sf", "--full", code=3)
    assert held["error"] == dry["would_hold"]  # the dry run said what the run then did
    assert held["status"] == "held" and "push guard" in held["error"]
    # The hint can be followed as written: apply takes the plan's file, which plan -o writes.
    assert "`consentsync plan sf -o plan.json`" in held["error"], held["error"]
    assert "`consentsync apply plan.json`" in held["error"], held["error"]
    assert held["counts"]["pushed"] == 0 and held["counts"]["pushes_held"] > 5
    assert _state(org) == before
    status = _run(cli, "status")
    assert status[0]["last_run"]["status"] == "held"
    text = cli("status").output
    assert "ALERT" in text and "push guard" in text
    # What the held pushes would write, as people read it: no Python repr of the list.
    shown = cli.ok("runs", "show", held["run_id"]).output
    assert "would_push: [field=" in shown and "object=Contact" in shown and "{'" not in shown, shown
    plan_path = config_path.parent / "plan.json"
    plan = _run(cli, "plan", "sf", "-o", str(plan_path))
    applied = _run(cli, "apply", str(plan_path))
    assert applied["status"] == "succeeded" and applied["counts"]["pushed"] == plan["records"]


def test_a_plan_reads_its_crm_before_it_holds_the_ledger_for_writing(
    config_path: Path, org: SalesforceSandbox
) -> None:
    """A plan is one rolled-back transaction holding the ledger's writer lock; while it waits on
    a slow CRM (a first read of a large org), the daemon's other runs must still commit. Every
    query page is slowed down here: a ledger write made meanwhile does not wait for the plan."""
    from consentsync.app import open_ledger, open_sync
    from consentsync.config import load_config

    _configure(config_path)
    config = load_config(config_path)
    ledger = open_ledger(config, migrate=True)
    engine = open_sync(config, "sf", ledger)
    org.faults.update(delay=0.4, delay_kinds={"query"})
    plans: list[Any] = []
    planner = threading.Thread(target=lambda: plans.append(engine.run(full=True, dry_run=True)))
    planner.start()
    try:
        time.sleep(1.0)  # the plan is reading its second or third page
        assert planner.is_alive()
        started = time.monotonic()
        with ledger.engine.begin() as conn:  # a writer, as another run's page is
            conn.execute(select(func.count()).select_from(sync_runs)).scalar_one()
        waited = time.monotonic() - started
        assert waited < 0.3, f"a ledger writer waited {waited:.1f} s for the plan's CRM reads"
        assert planner.is_alive(), "the plan ended before the write: the check proved nothing"
    finally:
        planner.join(timeout=120)
        org.faults.update(delay=0.0)
    (plan,) = plans
    assert plan.status == "dry_run" and plan.plan is not None and plan.plan.items
    ledger.engine.dispose()


def test_a_run_the_guard_holds_by_share_logs_the_records_and_the_live_ones(
    cli: Cli, config_path: Path, org: SalesforceSandbox
) -> None:
    """The sync.push_held line says how many records wait and of how many live ones, as the
    error does (records, not outbox rows)."""
    _configure(config_path, mode="two_way", push_guard={"max_records": None, "max_share": 0.05})
    result = cli("sync", "sf", "--full", "--json")
    held = json.loads(result.stdout)
    assert held["status"] == "held", held
    (line,) = [json.loads(text) for text in result.stderr.splitlines() if "sync.push_held" in text]
    error = re.search(r"push guard: (\d+) records .* of its (\d+) live records", held["error"])
    assert error is not None, held["error"]
    assert (line["records"], line["live"]) == (int(error[1]), int(error[2])), line
