"""What integration admins expect of a sync tool (issue 15): `discover` with a starter mapping,
`state show|reset`, `subject search`, short run ids, `sync --all`, and the one-line errors of a
missing object, a refused describe and a sandbox port in use. Against two connectors' sandboxes
(through their harnesses: the commands themselves never name a vendor)."""

from __future__ import annotations

import json
import socket
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, insert, select

from consentsync import exit_codes
from consentsync.cli import main
from consentsync.cli_admin import SEVERITY, worst
from consentsync.ledger.schema import audit_entries, sync_runs
from consentsync.mapping import load_mapping
from consentsync.sdk.harness import available_harnesses, build_connector, write_sync_config
from consentsync.sync.locks import connector_lock
from tests.conftest import proof, record_args

VENDORS = ("salesforce", "vtiger")


class Crm:
    def __init__(self, vendor: str) -> None:
        self.vendor = vendor
        self.harness: Any = available_harnesses()[vendor].load()()
        self.harness.start()
        self.dir = Path(tempfile.mkdtemp(prefix=f"admin-{vendor}-"))
        self.config = write_sync_config(self.harness, self.dir)
        assert run(self.config, "init").exit_code == 0

    def cli(self, *args: str) -> Result:
        return run(self.config, *args)

    def with_connectors(self, extra: list[dict[str, Any]]) -> Path:
        data = yaml.safe_load(self.config.read_text())
        data["connectors"] += extra
        path = self.dir / f"config-{len(list(self.dir.glob('config-*')))}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def bad_object_mapping(self) -> Path:
        data = yaml.safe_load(self.harness.mapping_files[0].read_text())
        data["object"] = "nosuchthing"
        path = self.dir / "missing-object.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


def one_line_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("consentsync: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module", params=VENDORS)
def crm(request: pytest.FixtureRequest) -> Iterator[Crm]:
    made = Crm(request.param)
    yield made
    made.harness.stop()


@pytest.fixture(autouse=True)
def _no_faults(crm: Crm) -> Iterator[None]:
    yield
    crm.harness.clear_faults()


# -- discover --------------------------------------------------------------------------------------


def test_discover_lists_the_objects_and_the_fields_the_crm_describes(crm: Crm) -> None:
    objects = crm.cli("discover", "contract", "--json")
    assert objects.exit_code == 0, objects.output
    rows = {row["object"]: row for row in json.loads(objects.stdout)}
    assert crm.harness.object_type in rows
    assert rows[crm.harness.object_type]["mapped_by"]  # the configured mapping reads it

    shown = crm.cli("discover", "contract", crm.harness.object_type, "--json")
    assert shown.exit_code == 0, shown.output
    fields = {row["field"]: row for row in json.loads(shown.stdout)["fields"]}
    live = build_connector(crm.harness).describe(crm.harness.object_type)
    assert set(fields) == set(live)
    for name, info in live.items():
        assert fields[name]["type"] == info.type
        assert fields[name]["writable"] == info.updateable
        assert fields[name]["picklist_values"] == list(info.picklist_values)
    table = crm.cli("discover", "contract", crm.harness.object_type)
    assert crm.harness.text_field in table.stdout and "WRITABLE" in table.stdout


def test_the_starter_mapping_loads_and_maps_the_opt_out_box(crm: Crm, tmp_path: Path) -> None:
    out = tmp_path / "starter.yaml"
    made = crm.cli("discover", "contract", crm.harness.object_type, "--mapping-out", str(out))
    assert made.exit_code == 0, made.output
    checked = crm.cli("mapping", "check", str(out), "--against", "contract")
    assert checked.exit_code == 0, checked.output

    shipped = load_mapping(crm.harness.mapping_files[0])
    starter = load_mapping(out)
    assert starter.object == shipped.object
    assert starter.spec.identity.email == shipped.spec.identity.email
    assert starter.spec.identity.record_id == shipped.spec.identity.record_id
    assert starter.spec.identity.modstamp == shipped.spec.identity.modstamp

    def opt_out_field(mapping: Any) -> set[str]:
        return {
            c.status.field
            for c in mapping.spec.consents
            if (c.purpose, c.channel) == ("email_marketing", "email")
        }

    assert opt_out_field(starter) == opt_out_field(shipped)
    assert starter.push_fields() == []  # nothing is written until the admin says so
    again = crm.cli("discover", "contract", crm.harness.object_type, "--mapping-out", str(out))
    assert "exists" in one_line_error(again, exit_codes.CONFIG)


def test_discover_of_a_missing_object_and_a_refused_describe(crm: Crm) -> None:
    missing = one_line_error(crm.cli("discover", "contract", "nosuchthing"), exit_codes.CONFIG)
    assert "nosuchthing" in missing
    crm.harness.sandbox.faults.update(error_rate=1.0, error_status=403, error_kinds=["describe"])
    refused = one_line_error(crm.cli("discover", "contract", crm.harness.object_type), exit_codes.CONFIG)
    assert "refused to describe" in refused and "403" in refused


def test_a_mapping_whose_object_does_not_exist(crm: Crm) -> None:
    bad = crm.bad_object_mapping()
    checked = one_line_error(
        crm.cli("mapping", "check", str(bad), "--against", "contract"), exit_codes.CONFIG
    )
    assert "nosuchthing" in checked
    config = crm.with_connectors([])
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["mappings"] = [str(bad)]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    synced = one_line_error(run(config, "sync", "contract"), exit_codes.CONFIG)
    assert "nosuchthing" in synced
    if crm.vendor == "salesforce":  # a 404: said as a missing object, naming the mapping file
        assert "does not exist" in synced and str(bad) in synced


def test_a_refused_describe_at_sync_and_mapping_check(crm: Crm) -> None:
    crm.harness.sandbox.faults.update(error_rate=1.0, error_status=403, error_kinds=["describe"])
    mapping = str(crm.harness.mapping_files[0])
    checked = one_line_error(crm.cli("mapping", "check", mapping, "--against", "contract"), exit_codes.CONFIG)
    synced = one_line_error(crm.cli("sync", "contract"), exit_codes.CONFIG)
    for line in (checked, synced):
        assert "refused to describe" in line and crm.harness.object_type in line


# -- state -----------------------------------------------------------------------------------------


def test_state_show_and_reset_audited_refused_while_a_run_holds_it(crm: Crm) -> None:
    crm.harness.seed(3)
    recorded = crm.cli(*record_args("feed@example.test", "email_marketing", "granted", *proof()))
    assert recorded.exit_code == 0, recorded.output  # a change in the ledger's feed
    assert crm.cli("sync", "contract").exit_code in (0, exit_codes.QUARANTINED)
    obj = crm.harness.object_type
    shown = json.loads(crm.cli("state", "show", "contract", "--json").stdout)
    by_object = {row["object"]: row for row in shown}
    assert obj in by_object and "(ledger feed)" in by_object
    assert by_object[obj]["position"]["modstamp"] is not None

    moved = crm.cli("state", "reset", "contract", obj, "--to", "2024-01-02T03:04:05Z", "--actor", "ops-anna")
    assert moved.exit_code == 0, moved.output
    after = json.loads(crm.cli("state", "show", "contract", obj, "--json").stdout)
    assert after[0]["position"]["modstamp"].startswith("2024-01-02T03:04:05")
    engine = create_engine(yaml.safe_load(crm.config.read_text())["ledger"]["url"])
    with engine.connect() as conn:
        entry = conn.execute(select(audit_entries).order_by(audit_entries.c.seq.desc())).first()
    assert entry is not None and "sync.cursor_reset" in entry.payload and "ops-anna" in entry.payload

    feed = crm.cli("state", "reset", "contract", "ledger", "--actor", "ops-anna")
    assert feed.exit_code == 0, feed.output
    assert "(ledger feed)" not in crm.cli("state", "show", "contract").stdout

    with connector_lock(engine, "contract"):
        busy = crm.cli("state", "reset", "contract", obj, "--actor", "ops-anna")
        assert "nothing was changed" in one_line_error(busy, exit_codes.STOPPED)
    assert json.loads(crm.cli("state", "show", "contract", obj, "--json").stdout) == after
    engine.dispose()

    assert "nope" in one_line_error(crm.cli("state", "show", "nope"), exit_codes.CONFIG)
    assert "accepted are" in one_line_error(crm.cli("state", "reset", "contract", "Nope"), exit_codes.CONFIG)
    assert "ISO 8601" in one_line_error(
        crm.cli("state", "reset", "contract", obj, "--to", "yesterday"), exit_codes.CONFIG
    )


# -- subjects and runs -----------------------------------------------------------------------------


def test_subject_search_by_email_record_id_and_uid(crm: Crm) -> None:
    record_id = crm.harness.create_person(f"search.{crm.vendor}@example.test")
    assert crm.cli("sync", "contract").exit_code in (0, exit_codes.QUARANTINED)
    by_email = json.loads(crm.cli("subject", "search", f"Search.{crm.vendor}@example.test", "--json").stdout)
    assert len(by_email) == 1
    uid = by_email[0]["subject"]
    assert record_id in {r["record_id"] for r in by_email[0]["crm_records"]}
    by_record = json.loads(crm.cli("subject", "search", record_id, "--json").stdout)
    assert [row["subject"] for row in by_record] == [uid]
    by_uid = json.loads(crm.cli("subject", "search", uid[:8], "--by", "uid", "--json").stdout)
    assert [row["subject"] for row in by_uid] == [uid]
    assert "no subject" in crm.cli("subject", "search", "nobody@example.test").stdout


def test_short_run_ids(crm: Crm) -> None:
    synced = crm.cli("sync", "contract", "--json")
    run_id = json.loads(synced.stdout)["run_id"]
    shown = crm.cli("runs", "show", run_id[:8], "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["id"] == run_id
    engine = create_engine(yaml.safe_load(crm.config.read_text())["ledger"]["url"])
    with engine.begin() as conn:
        for suffix in ("1", "2"):
            conn.execute(
                insert(sync_runs).values(
                    id=f"fffff{suffix}00-0000-4000-8000-000000000000",
                    connector="contract",
                    started_at=datetime.now(UTC),
                    status="failed",
                    full_load=False,
                    counts="{}",
                )
            )
    engine.dispose()
    assert "ambiguous" in one_line_error(crm.cli("runs", "show", "fffff"), exit_codes.CONFIG)
    assert crm.cli("runs", "show", "fffff1", "--json").exit_code == 0
    assert "no sync run" in one_line_error(crm.cli("runs", "show", "abcdef"), exit_codes.CONFIG)


def test_sync_all_runs_every_connector_and_exits_with_the_worst(crm: Crm) -> None:
    data = yaml.safe_load(crm.config.read_text())
    broken = {**data["connectors"][0], "name": "broken", "mappings": [str(crm.bad_object_mapping())]}
    config = crm.with_connectors([broken])
    result = run(config, "sync", "--all", "--json")
    assert result.exit_code == exit_codes.CONFIG, result.output
    outcomes = {row["connector"]: row for row in json.loads(result.stdout)}
    assert outcomes["contract"]["status"] == "succeeded"
    assert outcomes["broken"]["status"] == "failed"
    assert "consentsync: error: broken: " in result.stderr and "nosuchthing" in result.stderr
    assert "not both" in one_line_error(run(config, "sync", "contract", "--all"), exit_codes.CONFIG)


def test_worst_follows_the_severity_table() -> None:
    assert worst([]) == exit_codes.OK
    assert worst([exit_codes.OK, exit_codes.QUARANTINED]) == exit_codes.QUARANTINED
    assert (
        worst([exit_codes.STOPPED, exit_codes.UNAVAILABLE, exit_codes.QUARANTINED]) == exit_codes.UNAVAILABLE
    )
    assert worst([exit_codes.HELD, exit_codes.CREDENTIALS, exit_codes.CONFIG]) == exit_codes.CREDENTIALS
    for index, code in enumerate(SEVERITY):
        assert worst([*SEVERITY[index:]]) == code


# -- sandboxes -------------------------------------------------------------------------------------


def test_a_sandbox_port_in_use_is_a_one_line_error(crm: Crm) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["sandbox", crm.vendor, "--port", str(port), "--seed", "0"])
    line = one_line_error(result, exit_codes.CONFIG)
    assert f"--port {port}" in line and "in use" in line
