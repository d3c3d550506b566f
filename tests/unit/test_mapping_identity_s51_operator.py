"""A mapping whose consent reads or writes one of the fields that say who the record is (its
id, its cursor, its email, a link) is refused where it is written, with the file and line: pushed,
the ledger's decision (`true`, "Opted Out") would be written over the person's address or the
record's links, and `mapping check --against` only saw that the field is writable."""

from __future__ import annotations

from pathlib import Path

import pytest

from consentsync import exit_codes
from tests.conftest import Cli

ROOT = Path(__file__).resolve().parents[2]
CONTACT = ROOT / "connectors/consentsync_salesforce/mappings/contact.yaml"
PUSHED = "      field: DoNotCall\n      direction: both\n"


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    """`mapping check` reads the config's purposes and channels: a starter config, on SQLite."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.mark.parametrize(
    ("field", "named"),
    [
        ("Email", "identity.email"),
        ("Id", "identity.record_id"),
        ("SystemModstamp", "identity.modstamp"),
        ("IndividualId", "identity.links[0].field"),
    ],
)
def test_a_consent_on_an_identity_field_is_refused_with_its_line(
    cli: Cli, tmp_path: Path, field: str, named: str
) -> None:
    text = CONTACT.read_text(encoding="utf-8")
    assert PUSHED in text
    mapping = tmp_path / "contact.yaml"
    mapping.write_text(
        text.replace(PUSHED, f"      field: {field}\n      direction: both\n", 1), encoding="utf-8"
    )
    line = text[: text.index(PUSHED)].count("\n") + 1

    result = cli("mapping", "check", str(mapping))

    assert result.exit_code == exit_codes.CONFIG, result.output
    said = result.stderr.strip()
    assert said.count("\n") == 0 and "Traceback" not in said
    assert f"{mapping}:{line}: consents[1].status.field: field {field} is the record's {named}" in said


def test_a_consent_reading_the_email_as_well_is_refused(cli: Cli, tmp_path: Path) -> None:
    text = CONTACT.read_text(encoding="utf-8")
    mapping = tmp_path / "contact.yaml"
    mapping.write_text(
        text.replace(PUSHED, f"{PUSHED}      also_read: [Email]\n", 1),
        encoding="utf-8",
    )
    result = cli("mapping", "check", str(mapping))
    assert result.exit_code == exit_codes.CONFIG, result.output
    assert "consents[1].status.also_read[0]: field Email is the record's identity.email" in result.stderr


def test_the_shipped_mapping_still_passes(cli: Cli) -> None:
    result = cli("mapping", "check", str(CONTACT))
    assert result.exit_code == 0, result.output
