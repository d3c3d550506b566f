"""Operator input an operator's probe found accepted: an unknown object type under a connector's
``erasure:`` (refused at config load, naming file, line, key and the accepted object types); an
unknown value of a listing's filter (refused with the accepted values, not listed as "(none)");
an unbounded ``sandbox --seed`` / ``--random-seed``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from consentsync import exit_codes
from consentsync.cli import AUDIT_ACTIONS
from consentsync.config import ConfigError, load_config
from consentsync.sandbox.serving import MAX_RANDOM_SEED, MAX_SEED_RECORDS, sandbox_command
from tests.conftest import SQLITE_ONLY, Cli, one_line_error, proof

CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")
MAPPINGS = Path(__file__).resolve().parents[1] / "connectors/consentsync_salesforce/mappings"


def one_line(result: Any, *needles: str) -> str:
    """``result`` (a CliRunner result) is a usage refusal: exit 2, one line naming every needle."""
    return one_line_error(result, exit_codes.CONFIG, *needles)


# -- erasure: object types -----------------------------------------------------------------------


def _with_connector(config_path: Path, **erasure: str) -> None:
    data = yaml.safe_load(config_path.read_text())
    data["connectors"] = [
        {
            "name": "sf",
            "vendor": "salesforce",
            "mappings": [str(MAPPINGS / "contact.yaml"), str(MAPPINGS / "lead.yaml")],
            "settings": {"login_url": "https://127.0.0.1:18499", "client_id": "id", "client_secret": "s"},
            "erasure": erasure,
        }
    ]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _line_of(config_path: Path, text: str) -> int:
    return next(n for n, line in enumerate(config_path.read_text().splitlines(), 1) if text in line)


@SQLITE_ONLY
def test_an_unknown_erasure_object_type_is_refused_at_config_load(config_path: Path) -> None:
    _with_connector(config_path, Contact="anonymise", Bogus="delete")
    with pytest.raises(ConfigError) as refused:
        load_config(config_path)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(
        f"{config_path}:{_line_of(config_path, 'Bogus:')}: connectors[0].erasure.Bogus: "
    )
    assert "unknown object type 'Bogus'" in message and message.endswith(": Contact, Lead")


@SQLITE_ONLY
def test_an_erasure_object_type_in_the_wrong_case_is_refused_with_the_right_one(config_path: Path) -> None:
    _with_connector(config_path, contact="suppress")
    with pytest.raises(ConfigError, match=r"case-sensitive: Contact\)"):
        load_config(config_path)


@SQLITE_ONLY
def test_mapped_erasure_object_types_load(config_path: Path) -> None:
    _with_connector(config_path, Contact="anonymise", Lead="suppress")
    assert dict(load_config(config_path).connector("sf").erasure) == {
        "Contact": "anonymise",
        "Lead": "suppress",
    }


@SQLITE_ONLY
def test_every_command_refuses_a_config_with_an_unknown_erasure_object_type(cli: Cli) -> None:
    _with_connector(cli.config_path, Bogus="delete")
    for args in (("status",), ("runs", "list"), ("audit", "log")):
        one_line(cli(*args), "connectors[0].erasure.Bogus", "unknown object type 'Bogus'", "Contact, Lead")


# -- listing filters -------------------------------------------------------------------------------


@SQLITE_ONLY
def test_audit_log_refuses_an_unknown_action_listing_the_known_ones(cli: Cli) -> None:
    cli.ok("ledger", "record", "--email", "a@example.com", "--purpose", "email_marketing",
           "--status", "granted", "--source", "web_form", *proof())  # fmt: skip
    line = one_line(cli("audit", "log", "--action", "consent.recorde"), "--action consent.recorde")
    assert all(action in line for action in AUDIT_ACTIONS)
    # Known actions are taken in any case; one with no entries yet lists nothing, successfully.
    assert [e["action"] for e in cli.json("audit", "log", "--action", "CONSENT.Recorded")] == [
        "consent.recorded"
    ]
    assert cli.json("audit", "log", "--action", "plan.applied") == []


@SQLITE_ONLY
def test_audit_log_takes_an_action_its_entries_name_though_this_version_does_not_know_it(
    cli: Cli, config_path: Path
) -> None:
    from consentsync import audit
    from consentsync.app import open_ledger
    from consentsync.audit import AuditRecord

    ledger = open_ledger(load_config(config_path))
    with ledger.engine.begin() as conn:
        audit.append(conn, [AuditRecord("future.thing", {"n": 1}, source="ops", actor="x")], ledger.clock())
    assert [e["action"] for e in cli.json("audit", "log", "--action", "future.thing")] == ["future.thing"]


@SQLITE_ONLY
@pytest.mark.parametrize(
    "args",
    [
        ("runs", "list", "--connector", "nope"),
        ("outbox", "list", "--connector", "nope"),
        ("subject", "search", "a@example.com", "--connector", "nope"),
    ],
)
def test_a_listing_refuses_an_unknown_connector_listing_the_configured_ones(
    cli: Cli, args: tuple[str, ...]
) -> None:
    _with_connector(cli.config_path)
    one_line(cli(*args), "--connector nope", "no such connector", "accepted are sf")
    # A configured one (in any case) is taken, and lists what there is: nothing yet.
    assert cli(*args[:-1], "SF", "--json").exit_code == 0


@SQLITE_ONLY
def test_runs_list_takes_a_connector_that_ran_though_it_is_no_longer_configured(
    cli: Cli, config_path: Path
) -> None:
    from datetime import UTC, datetime

    from consentsync.app import open_ledger
    from consentsync.sync.runs import record_unstarted

    ledger = open_ledger(load_config(config_path))
    record_unstarted(ledger.engine, "old-crm", "gone", datetime.now(UTC), status="skipped", kind="skipped")
    assert [run["connector"] for run in cli.json("runs", "list", "--connector", "old-crm")] == ["old-crm"]
    one_line(cli("runs", "list", "--connector", "nope"), "accepted are old-crm")


# -- sandbox --seed and --random-seed ---------------------------------------------------------------


def _served(**kwargs: Any) -> None:
    raise AssertionError(f"served with {kwargs}: the option should have been refused")


@pytest.mark.parametrize(
    "args, option",
    [
        (["--seed", str(MAX_SEED_RECORDS + 1)], "--seed"),
        (["--seed", "99999999999999999999999"], "--seed"),
        (["--seed", "-1"], "--seed"),
        (["--random-seed", "-1"], "--random-seed"),
        (["--random-seed", str(MAX_RANDOM_SEED + 1)], "--random-seed"),
    ],
)
def test_every_sandbox_bounds_its_seeds(args: list[str], option: str) -> None:
    command = sandbox_command(_served, port=0, seed_help="People to seed.", help="A sandbox.")
    group = click.Group(commands={"fake": command})
    result = CliRunner().invoke(group, ["fake", *args])
    assert result.exit_code == 2, result.output
    assert f"'{option}'" in result.output and "range" in result.output


def test_sandbox_seeds_at_their_bounds_are_taken() -> None:
    served: list[dict[str, Any]] = []
    command = sandbox_command(lambda **kw: served.append(kw), port=0, seed_help="People.", help="A sandbox.")
    group = click.Group(commands={"fake": command})
    args = ["fake", "--seed", str(MAX_SEED_RECORDS), "--random-seed", str(MAX_RANDOM_SEED)]
    result = CliRunner().invoke(group, args)
    assert result.exit_code == 0, result.output
    assert served[0]["records"] == MAX_SEED_RECORDS and served[0]["seed"] == MAX_RANDOM_SEED


@pytest.mark.parametrize("args", [["--random-seed", str(2**32)], ["--seed", str(10**12)]])
def test_consentsync_sandbox_refuses_an_out_of_range_seed_in_one_line(
    args: list[str], tmp_path: Path
) -> None:
    try:
        done = subprocess.run(
            [CONSENTSYNC, "sandbox", "salesforce", "--port", "0", *args],
            capture_output=True, text=True, timeout=20, cwd=tmp_path, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"sandbox {args} was not refused: it started seeding or serving")
    assert done.returncode == exit_codes.CONFIG, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("consentsync: error: "), done.stderr
    assert args[0] in lines[0] and "running" not in done.stdout
