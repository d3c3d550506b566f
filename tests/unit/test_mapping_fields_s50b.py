"""A mapping field the CRM lacks, or a cursor field that is no date-time, is named with the
mapping file and the line to correct (docs/admin-commands.md, "One-line errors")."""

from __future__ import annotations

from pathlib import Path

import pytest

from consentsync.mapping import is_date_time_type, parse_mapping
from consentsync.sdk.connector import FieldInfo
from tests.integration.helpers import mapping_text

CONSENTS = """\
  - purpose: email_marketing
    channel: email
    status:
      field: HasOptedOutOfEmale
      direction: both
      also_read: [Other_Optout__c]
      pull: {true: withdrawn, false: null}
      push: {suppressed: true, allowed: false}
"""


def _mapping(modstamp: str = "SystemModstamp"):  # type: ignore[no-untyped-def]
    text = mapping_text("scripted", "Contact", ("Id", modstamp, "Email"), CONSENTS)
    return parse_mapping(text, Path("mappings/contact.yaml")), text.splitlines()


def _line_of(lines: list[str], needle: str) -> int:
    return next(number for number, line in enumerate(lines, 1) if needle in line)


def test_each_field_is_named_with_the_line_it_is_written_on() -> None:
    mapping, lines = _mapping()
    for name in ("Id", "SystemModstamp", "Email", "HasOptedOutOfEmale", "Other_Optout__c"):
        assert mapping.where(name) == f"mappings/contact.yaml:{_line_of(lines, name)}"
    assert mapping.where("Unnamed") == "mappings/contact.yaml"


def _described(modstamp_type: str) -> dict[str, FieldInfo]:
    return {
        "Id": FieldInfo("Id", "id", False),
        "SystemModstamp": FieldInfo("SystemModstamp", modstamp_type, False),
        "Name": FieldInfo("Name", "string", True),
        "Email": FieldInfo("Email", "email", True),
        "HasOptedOutOfEmale": FieldInfo("HasOptedOutOfEmale", "boolean", True),
        "Other_Optout__c": FieldInfo("Other_Optout__c", "boolean", True),
    }


def test_a_text_field_as_the_cursor_is_refused_with_its_line() -> None:
    mapping, lines = _mapping("Name")
    problems = mapping.problems_against(_described("datetime"))
    assert problems == [
        f"mappings/contact.yaml:{_line_of(lines, 'modstamp: Name')}: identity.modstamp Contact.Name is a "
        "string field: the cursor must be a date-time field the CRM stamps on every change "
        "(its last-modified time)"
    ]


def test_a_missing_field_names_its_line() -> None:
    mapping, lines = _mapping()
    fields = _described("datetime")
    del fields["HasOptedOutOfEmale"]
    assert mapping.problems_against(fields) == [
        f"mappings/contact.yaml:{_line_of(lines, 'HasOptedOutOfEmale')}: Contact.HasOptedOutOfEmale "
        "does not exist or is not visible"
    ]


@pytest.mark.parametrize("kind", ["datetime", "DateTime", "datetime/date", "dateTime", "timestamp", ""])
def test_date_time_types_pass(kind: str) -> None:
    assert is_date_time_type(kind)
    assert _mapping()[0].problems_against(_described(kind)) == []


@pytest.mark.parametrize("kind", ["string", "date", "date/date", "int", "BigInt", "boolean", "picklist"])
def test_other_types_are_no_cursor(kind: str) -> None:
    assert not is_date_time_type(kind)
    assert len(_mapping()[0].problems_against(_described(kind))) == 1
