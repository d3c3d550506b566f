"""`consentsync sync`, `runs`, `mapping check` and `demo` from the command line, against the
Salesforce sandbox, on SQLite and PostgreSQL (the `cli` fixture): what a person typing the commands
sees, what the ledger and the audit log end up holding, and what the org ends up showing."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync import exit_codes
from consentsync.cli import main
from tests.conftest import Cli
from tests.integration.test_cli import audit_entries

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "connectors/consentsync_salesforce/mappings"
OBJECTS = ("Contact", "Lead", "Individual", "ContactPointTypeConsent")
SEED = 5
SECRET_ENV = "SF_TEST_SECRET"
EXIT_STOPPED = exit_codes.STOPPED


@pytest.fixture
def sf(cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceSandbox]:
    """A seeded sandbox org, configured in the test's consentsync.yaml as connector `sf` with
    copies of the example mappings next to the config and the secret in the environment."""
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(150, seed=SEED)
        connect_sandbox(sandbox, config_path, monkeypatch)
        yield sandbox


def connect_sandbox(sandbox: SalesforceSandbox, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configures ``sandbox`` as connector `sf` in the config at ``config_path``."""
    mapping_dir = config_path.parent / "mappings"
    mapping_dir.mkdir()
    names = sorted(path.name for path in MAPPINGS.glob("*.yaml"))
    # Contacts first: the order the demo and the docs use (people before their records).
    names.sort(key=lambda name: name != "contact.yaml")
    for name in names:
        shutil.copy(MAPPINGS / name, mapping_dir / name)
    data = yaml.safe_load(config_path.read_text())
    data["connectors"] = [
        {
            "name": "sf",
            "vendor": "salesforce",
            "mappings": [f"mappings/{name}" for name in names],
            # The sandbox's own settings, but the secret is read from the environment.
            "settings": {**sandbox.connection_settings(), "client_secret": "${" + SECRET_ENV + "}"},
            # The sandbox stamps whole seconds of the real clock: read up to the run's start.
            "signpost_lag_seconds": 0,
            "mode": "two_way",
            "push_guard": {"max_records": None, "max_share": None},
        }
    ]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv(SECRET_ENV, sandbox.credentials.client_secret)


def _sync(cli: Cli, *args: str, code: int = 0) -> dict[str, Any]:
    result = cli("sync", "sf", "--json", *args)
    assert result.exit_code == code, f"sync {args} -> {result.exit_code}: {result.output}{result.stderr}"
    return json.loads(result.stdout)


def _org_total(sandbox: SalesforceSandbox) -> int:
    return sum(sandbox.org.count(kind) for kind in OBJECTS)


def _email_flags(sandbox: SalesforceSandbox) -> dict[str, bool]:
    return {
        r["Id"]: r["HasOptedOutOfEmail"] for kind in ("Contact", "Lead") for r in sandbox.org.records(kind)
    }


def _people(sandbox: SalesforceSandbox) -> set[str]:
    return {
        str(r["Email"]).strip().lower()
        for kind in ("Contact", "Lead")
        for r in sandbox.org.records(kind)
        if r.get("Email")
    }


def _records_of(sandbox: SalesforceSandbox, email: str) -> list[dict[str, Any]]:
    return [
        r
        for kind in ("Contact", "Lead")
        for r in sandbox.org.records(kind)
        if str(r.get("Email") or "").strip().lower() == email
    ]


def _email_state(cli: Cli, email: str) -> dict[str, Any]:
    view = cli.json("subject", "show", email)
    return next(p for p in view["purposes"] if (p["purpose"], p["channel"]) == ("email_marketing", "email"))


# -- a run, what it leaves behind and how it is shown ---------------------------------------------


def add_odd_consent(sandbox: SalesforceSandbox) -> str:
    """A consent record naming a purpose the mapping does not list: it is quarantined on reading."""
    individual = sandbox.org.records("Individual")[0]["Id"]
    purpose = sandbox.org.create("DataUsePurpose", {"Name": "Newsletter"})
    return sandbox.org.create(
        "ContactPointTypeConsent",
        {
            "Name": "Newsletter by email",
            "PartyId": individual,
            "DataUsePurposeId": purpose,
            "ContactPointType": "Email",
            "PrivacyConsentStatus": "OptIn",
        },
    )


def test_sync_reads_the_org_pushes_and_audits_every_push(cli: Cli, sf: SalesforceSandbox) -> None:
    report = _sync(cli)
    assert report["status"] == "succeeded", report["error"]
    counts = report["counts"]
    assert counts["read"] == _org_total(sf)
    assert counts["pushed"] > 0
    assert (counts["push_failed"], counts["quarantined"]) == (0, 0)
    assert counts["subjects_created"] == len(_people(sf))

    runs = cli.json("runs", "list")
    assert [(r["id"], r["status"]) for r in runs] == [(report["run_id"], "succeeded")]
    shown = cli.json("runs", "show", report["run_id"])
    assert shown["status"] == "succeeded"
    assert shown["counts"] == counts
    assert shown["quarantined_records"] == []

    cli.ok("audit", "verify")
    pushes = cli.json("audit", "log", "--action", "crm.pushed")
    assert len(pushes) == counts["pushed"]
    assert {entry["run"] for entry in pushes} == {report["run_id"]}
    assert len({(e["what"]["object"], e["what"]["record"]) for e in pushes}) == len(pushes)
    # Every audited push is what the org now shows.
    for entry in pushes:
        record = sf.org.get(entry["what"]["record"])
        assert record is not None
        assert {name: record[name] for name in entry["new"]} == entry["new"]

    human = cli.ok("sync", "sf").stdout
    latest = cli.json("runs", "list")[0]
    assert latest["id"] != report["run_id"]
    assert f"run {latest['id']} of sf: succeeded" in human
    assert "pushes to the CRM: done 0" in human


def test_dry_run_shows_the_plan_and_changes_nothing(cli: Cli, sf: SalesforceSandbox) -> None:
    audit_before = len(audit_entries(cli))
    flags_before = _email_flags(sf)

    report = _sync(cli, "--dry-run")
    assert report["status"] == "dry_run"
    plan = report["plan"]
    assert plan["ledger_changes"] and plan["pushes"]
    assert {"subject", "purpose", "channel", "before", "after", "rule"} <= set(plan["ledger_changes"][0])
    push = plan["pushes"][0]
    assert push["object_type"] in ("Contact", "Lead", "Individual") and push["fields"]
    human = cli.ok("sync", "sf", "--dry-run").stdout
    assert "nothing was changed" in human

    assert len(audit_entries(cli)) == audit_before
    cli.ok("audit", "verify")
    assert cli.json("runs", "list") == []
    assert _email_flags(sf) == flags_before
    assert not {"composite", "bulk_create", "sobject_patch"} & set(sf.calls)


def test_dry_run_plans_the_pushes_the_real_run_makes(cli: Cli, sf: SalesforceSandbox) -> None:
    plan = _sync(cli, "--dry-run")
    report = _sync(cli)
    planned = [(p["object_type"], p["record_id"]) for p in plan["plan"]["pushes"]]
    pushed = {
        (e["what"]["object"], e["what"]["record"]) for e in cli.json("audit", "log", "--action", "crm.pushed")
    }
    assert set(planned) == pushed
    assert len(planned) == len(set(planned))  # one planned push per record
    assert plan["counts"]["subjects_created"] == report["counts"]["subjects_created"]


def test_incremental_sync_carries_a_withdrawal_to_every_record_of_the_person(
    cli: Cli, sf: SalesforceSandbox
) -> None:
    assert _sync(cli)["status"] == "succeeded"
    # A person who may be emailed (both boxes clear after the first sync) with a Contact and a Lead.
    leads = {str(r["Email"]).lower(): r for r in sf.org.records("Lead") if not r["HasOptedOutOfEmail"]}
    contact = next(
        c
        for c in sf.org.records("Contact")
        if not c["HasOptedOutOfEmail"] and str(c["Email"]).lower() in leads
    )
    email = str(contact["Email"]).lower()
    lead = leads[email]
    sf.org.update(contact["Id"], {"HasOptedOutOfEmail": True})

    second = _sync(cli)
    assert second["status"] == "succeeded", second["error"]
    assert second["counts"]["evidence_recorded"] >= 1
    assert second["counts"]["pushed"] >= 1
    assert sf.org.get(lead["Id"])["HasOptedOutOfEmail"] is True
    assert all(r["HasOptedOutOfEmail"] for r in _records_of(sf, email))
    state = _email_state(cli, email)
    assert (state["status"], state["suppressed"], state["rule"]) == ("withdrawn", True, "sticky_withdrawal")
    lead_pushes = [
        e
        for e in cli.json("audit", "log", "--email", email, "--action", "crm.pushed")
        if e["what"]["record"] == lead["Id"] and e["run"] == second["run_id"]
    ]
    assert [e["new"] for e in lead_pushes] == [{"HasOptedOutOfEmail": True}]

    third = _sync(cli)
    assert third["status"] == "succeeded"
    assert third["counts"]["evidence_recorded"] == 0
    assert (third["counts"]["pushes_enqueued"], third["counts"]["pushed"]) == (0, 0)
    cli.ok("audit", "verify")


def test_a_record_that_does_not_translate_is_quarantined_and_the_rest_synced(
    cli: Cli, sf: SalesforceSandbox
) -> None:
    # The sandbox refuses a malformed email as Salesforce does, so the record that cannot be
    # translated is a consent record naming a purpose the mapping does not list.
    odd = add_odd_consent(sf)
    # Finished, with records quarantined: exit 4 (exit_codes.QUARANTINED), for a scheduler to warn.
    report = _sync(cli, code=exit_codes.QUARANTINED)
    assert report["status"] == "succeeded", report["error"]
    assert report["counts"]["quarantined"] >= 1
    assert report["counts"]["read"] == _org_total(sf)
    assert report["counts"]["subjects_created"] == len(_people(sf))
    assert report["counts"]["pushed"] > 0

    held = cli.json("runs", "show", report["run_id"])["quarantined_records"]
    mine = [q for q in held if q["record_id"] == odd]
    assert len(mine) == 1
    assert mine[0]["object"] == "ContactPointTypeConsent"
    assert "DataUsePurposeId" in mine[0]["reason"]
    assert "@" not in mine[0]["reason"]
    human = cli.ok("runs", "show", report["run_id"]).stdout
    assert odd in human and "DataUsePurposeId" in human


# -- faults --------------------------------------------------------------------------------------


def test_server_errors_are_retried_and_the_run_succeeds(cli: Cli, sf: SalesforceSandbox) -> None:
    sf.faults.update(error_rate=0.2, seed=3)
    report = _sync(cli)
    assert report["status"] == "succeeded", report["error"]
    assert sf.faults_injected["http_503"] > 0
    assert report["counts"]["read"] == _org_total(sf)
    assert report["counts"]["push_failed"] == 0


def test_a_request_limit_stops_the_run_and_the_next_one_resumes(cli: Cli, sf: SalesforceSandbox) -> None:
    sf.faults.update(request_limit_after=5)
    stopped = _sync(cli, code=EXIT_STOPPED)
    assert stopped["status"] == "stopped"
    assert "REQUEST_LIMIT_EXCEEDED" in stopped["error"]
    shown = cli.json("runs", "show", stopped["run_id"])
    assert shown["status"] == "stopped" and shown["error"]
    human = cli("sync", "sf")
    assert human.exit_code == EXIT_STOPPED
    assert "stopped" in human.stdout

    sf.faults.reset()
    resumed = _sync(cli)
    assert resumed["status"] == "succeeded", resumed["error"]
    # The same people an uninterrupted run makes: one per address, none without one.
    created = cli.json("audit", "log", "--action", "subject.created")
    assert len(created) == len(_people(sf))
    assert all(entry["what"]["identifiers"] == ["email"] for entry in created)
    for email in sorted(_people(sf))[:: len(_people(sf)) // 5]:
        linked = {r["record_id"] for r in cli.json("subject", "show", email)["crm_records"]}
        assert {r["Id"] for r in _records_of(sf, email)} <= linked
    # Nothing was left half done: a further run finds nothing to record or push.
    after = _sync(cli)
    assert (after["counts"]["evidence_recorded"], after["counts"]["pushes_enqueued"]) == (0, 0)
    assert cli.json("audit", "verify")["ok"] is True


# -- ledger changes reach the CRM -----------------------------------------------------------------


def test_an_objection_reaches_every_record_of_the_person(cli: Cli, sf: SalesforceSandbox) -> None:
    assert _sync(cli)["status"] == "succeeded"
    allowed = [r for r in sf.org.records("Contact") if not r["HasOptedOutOfEmail"]]
    # Prefer a person with more than one record in the org.
    allowed.sort(key=lambda r: -len(_records_of(sf, str(r["Email"]).lower())))
    email = str(allowed[0]["Email"]).lower()
    records = _records_of(sf, email)
    assert not all(r["HasOptedOutOfEmail"] for r in records)

    cli.ok("objection", "raise", "--email", email, "--purpose", "email_marketing")
    report = _sync(cli)
    assert report["status"] == "succeeded", report["error"]
    assert all(sf.org.get(r["Id"])["HasOptedOutOfEmail"] for r in records)
    pushes = cli.json("audit", "log", "--email", email, "--action", "crm.pushed")
    objected = [e for e in pushes if e["run"] == report["run_id"]]
    assert objected
    assert {e["rule"] for e in objected} == {"objection_direct_marketing"}
    # The Contacts and Leads whose box was clear, and the person's Individual where it has one.
    assert {r["Id"] for r in records if not r["HasOptedOutOfEmail"]} <= {
        e["what"]["record"] for e in objected
    }
    assert {e["what"]["object"] for e in objected} <= {"Contact", "Lead", "Individual"}


# -- mapping check ---------------------------------------------------------------------------------


def _variant(tmp: Path, name: str, old: str, new: str) -> tuple[Path, int]:
    """contact.yaml with the first ``old`` replaced by ``new``, and the line it is on."""
    text = (MAPPINGS / "contact.yaml").read_text()
    assert old in text
    line = text[: text.index(old)].count("\n") + 1
    path = tmp / name
    path.write_text(text.replace(old, new, 1))
    return path, line


def test_mapping_check(cli: Cli, sf: SalesforceSandbox, tmp_path: Path) -> None:
    contact = str(MAPPINGS / "contact.yaml")
    assert f"{contact}: Contact: ok" in cli.ok("mapping", "check", contact).stdout
    assert [r["ok"] for r in cli.json("mapping", "check", contact, "--against", "sf")] == [True]

    broken, line = _variant(tmp_path, "broken.yaml", "pull: {true: withdrawn,", "pull: {true: withdrawn_ish,")
    result = cli("mapping", "check", str(broken))
    assert result.exit_code == 2, result.output
    assert f"{broken}:{line}" in result.stderr
    assert "withdrawn_ish" in result.stderr

    missing, line = _variant(tmp_path, "missing.yaml", "field: DoNotCall", "field: Do_Not_Call__c")
    cli.ok("mapping", "check", str(missing))  # well formed; only the org can tell
    result = cli("mapping", "check", str(missing), "--against", "sf")
    assert result.exit_code == 2, result.output
    assert f"{missing}:{line}: Contact.Do_Not_Call__c" in result.stderr
    assert "does not exist" in result.stderr

    # A text field as the cursor would be accepted by the file's syntax, and miss changes.
    text_cursor, line = _variant(tmp_path, "cursor.yaml", "modstamp: SystemModstamp", "modstamp: LastName")
    cli.ok("mapping", "check", str(text_cursor))
    result = cli("mapping", "check", str(text_cursor), "--against", "sf")
    assert result.exit_code == 2, result.output
    assert f"{text_cursor}:{line}: identity.modstamp Contact.LastName" in result.stderr
    assert "must be a date-time field" in result.stderr


# -- bad input -------------------------------------------------------------------------------------


def test_an_unknown_connector_is_named_with_the_configured_ones(cli: Cli, sf: SalesforceSandbox) -> None:
    result = cli("sync", "unknown-connector")
    assert result.exit_code == 2
    assert "'unknown-connector'" in result.stderr
    assert "configured are sf" in result.stderr
    assert cli.json("runs", "list") == []


def test_a_refused_login_fails_the_run_without_showing_the_secret(
    cli: Cli, sf: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"wrong-{secrets.token_hex(12)}"
    monkeypatch.setenv(SECRET_ENV, secret)
    human = cli("sync", "sf")
    assert human.exit_code == exit_codes.CREDENTIALS
    assert "login" in human.stdout and "invalid_client" in human.stdout
    report = _sync(cli, code=exit_codes.CREDENTIALS)
    assert report["status"] == "failed" and "login" in report["error"]
    runs = cli("runs", "list", "--json")
    for output in (human.stdout, human.stderr, runs.stdout, json.dumps(report)):
        assert secret not in output
    assert len(json.loads(runs.stdout)) == 2

    monkeypatch.delenv(SECRET_ENV)
    result = cli("sync", "sf")
    assert result.exit_code == 2
    assert SECRET_ENV in result.stderr


# -- the demo ----------------------------------------------------------------------------------------


def test_demo_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONSENTSYNC_CONFIG", raising=False)
    monkeypatch.setenv("CONSENTSYNC_DEMO_SF_SECRET", "restored-after-the-test")
    started = time.monotonic()
    result = CliRunner().invoke(main, ["demo", "--records", "60", "--dir", str(tmp_path / "demo")])
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, f"{result.output}{result.stderr}"
    assert elapsed < 60
    assert "full sync: succeeded" in result.stdout
    assert "incremental sync: succeeded" in result.stdout
    assert (tmp_path / "demo" / "consentsync.yaml").exists()


def test_every_sandbox_listens_on_a_port_of_its_own_by_default() -> None:
    # The demo and ops run several sandboxes side by side: a shared default port would make the
    # second one fail to start.
    import click

    from consentsync.cli import main

    sandboxes = main.commands["sandbox"]
    assert isinstance(sandboxes, click.Group)
    context = click.Context(sandboxes)
    commands = {name: sandboxes.get_command(context, name) for name in sandboxes.list_commands(context)}
    ports = {
        name: next(p.default for p in command.params if p.name == "port")
        for name, command in commands.items()
        if command is not None
    }
    assert len(ports) >= 5, ports
    assert len(set(ports.values())) == len(ports), ports


def test_a_run_that_fails_before_its_first_call_leaves_a_failed_run_with_its_reason(
    cli: Cli, sf: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch, config_path: Path
) -> None:
    """A missing secret, then a missing mapping file: each is a one-line error and a failed run
    that `runs list` (and so the console, status and /metrics) shows with its reason."""
    monkeypatch.delenv(SECRET_ENV)
    missing_secret = cli("sync", "sf")
    assert missing_secret.exit_code not in (0, 1), missing_secret.output
    assert "Traceback" not in missing_secret.output + missing_secret.stderr
    assert SECRET_ENV in missing_secret.stderr
    monkeypatch.setenv(SECRET_ENV, sf.credentials.client_secret)
    (config_path.parent / "mappings" / "lead.yaml").unlink()
    missing_mapping = cli("sync", "sf")
    assert missing_mapping.exit_code == missing_secret.exit_code
    assert "lead.yaml" in missing_mapping.stderr
    runs = cli.json("runs", "list")
    assert [run["status"] for run in runs] == ["failed", "failed"]
    reasons = [run["error"] for run in runs]
    assert any("lead.yaml" in reason for reason in reasons)
    assert any(SECRET_ENV in reason for reason in reasons)
    assert sf.total_calls == 0  # neither run reached the CRM


def test_the_daemon_records_a_run_that_cannot_start(
    cli: Cli, sf: SalesforceSandbox, config_path: Path
) -> None:
    from consentsync.app import open_ledger
    from consentsync.config import load_config
    from consentsync.sync.daemon import Daemon
    from consentsync.sync.runs import list_runs

    (config_path.parent / "mappings" / "lead.yaml").unlink()
    config = load_config(config_path)
    ledger = open_ledger(config)
    daemon = Daemon(config, ledger)
    report = daemon.run_connector("sf")
    assert report is not None and report.status == "failed" and "lead.yaml" in (report.error or "")
    runs = list_runs(ledger.engine, connector="sf")
    assert [run["status"] for run in runs] == ["failed"] and "lead.yaml" in runs[0]["error"]
    assert runs[0]["id"] == report.run_id
