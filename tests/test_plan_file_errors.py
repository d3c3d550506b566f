"""`consentsync apply PLAN` on a damaged or hand-edited plan file: one line naming the file, the
field by its JSON path (``items[3].object_type``) and what is accepted; exit 2; nothing changed
(no run recorded, no audit entry). Never a Python exception's words (``('items')``,
``'NoneType' object is not subscriptable``), never the file's content (it may name a person)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from consentsync.app import open_ledger
from consentsync.cli_base import EXIT_BAD_INPUT
from consentsync.config import load_config
from consentsync.ledger.schema import audit_entries, sync_runs
from tests.conftest import Cli

A_RECORD = '{"object_type": "Contact", "record_id": "003A"}'

# (what the file holds, the field the error names, a word of what it says is accepted)
DAMAGED = [
    # the tester's shapes (F7)
    ("{}", "connector: missing", "a connector's name"),
    ('{"items": 5}', "connector: missing", "a connector's name"),
    ('{"connector": "sf", "items": 5}', "items: is a number", "a list of the records"),
    ('{"connector": "sf", "items": [{}]}', "items[0].object_type: missing", "the CRM object's name"),
    ('{"connector": "sf", "items": [null]}', "items[0]: is null", "an object for one record"),
    ('"x"', "the file holds a string", "an object with `connector` and `items`"),
    ("[1,2]", "the file holds a list", "an object with `connector` and `items`"),
    # more: missing keys, wrong types, null, not JSON, an empty file
    ('{"connector": "sf"}', "items: missing", "a list of the records"),
    ('{"connector": null, "items": []}', "connector: is null", "a connector's name"),
    ('{"connector": " ", "items": []}', "connector: is empty", "a connector's name"),
    ('{"connector": "sf", "items": null}', "items: is null", "a list of the records"),
    (
        f'{{"connector": "sf", "items": [{A_RECORD}, {A_RECORD}, {A_RECORD}, {{"record_id": "003D"}}]}}',
        "items[3].object_type: missing",
        "the CRM object's name",
    ),
    (
        '{"connector": "sf", "items": [{"object_type": "Contact", "record_id": 7}]}',
        "items[0].record_id: is a number",
        "the CRM record's id",
    ),
    (
        '{"connector": "sf", "items": [{"object_type": ["Contact"], "record_id": "003A"}]}',
        "items[0].object_type: is a list",
        "the CRM object's name",
    ),
    (
        '{"connector": "sf", "items": [{"object_type": "Contact", "record_id": "003A", "action": "drop"}]}',
        "items[0].action: is not an action",
        '"update" or "delete"',
    ),
    (
        '{"connector": "sf", "items": [{"object_type": "Contact", "record_id": "003A", "new": [1]}]}',
        "items[0].new: is a list",
        "an object of field values",
    ),
    (
        '{"connector": "sf", "items": [{"object_type": "Contact", "record_id": "003A", "old": "x"}]}',
        "items[0].old: is a string",
        "an object of field values",
    ),
    (
        '{"connector": "sf", "items": [{"object_type": "Contact", "record_id": "003A", "rule": true}]}',
        "items[0].rule: is true or false",
        "a rule's name or null",
    ),
    ('{"connector": "sf", "digest": 7, "items": []}', "digest: is a number", "a string (the plan's digest)"),
    ("", "the file is empty", "a plan written by `consentsync plan -o`"),
    ("   \n", "the file is empty", "a plan written by `consentsync plan -o`"),
    ("{", "not JSON (line 1 column 2)", "a plan written by `consentsync plan -o`"),
    ("connector: sf\n", "not JSON (line 1 column 1)", "a plan written by `consentsync plan -o`"),
    ("[" * 100_000, "not a plan (nested too deeply)", "a plan written by `consentsync plan -o`"),
]

EXCEPTION_WORDS = ("object is not", "indices must be", "('", "Traceback", "Error")


def _ledger_rows(config_path: Path) -> tuple[int, int]:
    ledger = open_ledger(load_config(config_path))
    try:
        with ledger.engine.connect() as conn:
            runs = conn.execute(select(func.count()).select_from(sync_runs)).scalar_one()
            audited = conn.execute(select(func.count()).select_from(audit_entries)).scalar_one()
        return runs, audited
    finally:
        ledger.engine.dispose()


@pytest.mark.parametrize(("body", "named", "accepted"), DAMAGED)
def test_a_damaged_plan_file_is_refused_naming_its_field(
    cli: Cli, tmp_path: Path, body: str, named: str, accepted: str
) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(body, encoding="utf-8")
    before = _ledger_rows(cli.config_path)

    result = cli("apply", str(plan_file), "--actor", "dpo")

    assert result.exit_code == EXIT_BAD_INPUT, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"consentsync: error: {plan_file}: {named}"), lines[0]
    assert f"accepted: {accepted}" in lines[0], lines[0]
    assert not any(word in lines[0] for word in EXCEPTION_WORDS), lines[0]
    assert _ledger_rows(cli.config_path) == before  # no run recorded, nothing audited


def test_the_error_never_repeats_what_the_file_holds(cli: Cli, tmp_path: Path) -> None:
    """A hand-edited plan can hold a person's address where a field name belongs: the error
    names the field and the type it holds, never the value."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        '{"connector": "sf", "items": [{"object_type": "Contact", "record_id": "003A", '
        '"who": {"email": "rita@example.org"}}]}',
        encoding="utf-8",
    )
    result = cli("apply", str(plan_file), "--actor", "dpo")
    assert result.exit_code == EXIT_BAD_INPUT
    assert "items[0].who: is an object" in result.stderr
    assert "rita" not in result.stderr + result.output


def test_a_file_that_is_not_utf8_is_refused(cli: Cli, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_bytes(b"\xff\xfe{}")
    result = cli("apply", str(plan_file), "--actor", "dpo")
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr.strip() == (
        f"consentsync: error: {plan_file}: not UTF-8 text; accepted: a plan written by `consentsync plan -o`"
    )
