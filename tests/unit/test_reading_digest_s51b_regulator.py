"""What a change of mapping means for the incremental reads (docs/policy.md, "A mapping changed
between runs"): the digest kept with each object's cursor moves with every change of what the
read asks for or how it understands the answers, and with nothing else."""

from __future__ import annotations

from pathlib import Path

from consentsync.mapping import parse_mapping
from consentsync.sync.engine import reading_digest

BASE = """\
version: 1
vendor: salesforce
object: Contact
identity: {record_id: Id, modstamp: SystemModstamp, email: Email}
consents:
  - purpose: email_marketing
    channel: email
    status: {field: HasOptedOutOfEmail, DIRECTION pull: {true: withdrawn, false: null}}
PERSONAL"""


def _digest(direction: str = "", personal: str = "", text: str = BASE) -> str:
    body = text.replace("DIRECTION ", direction).replace("PERSONAL", personal)
    return reading_digest(parse_mapping(body, Path("contact.yaml")))


def test_the_same_meaning_written_otherwise_keeps_the_digest() -> None:
    # The default direction spelled out, an erasure value added: no record means anything else.
    assert (
        _digest() == _digest("direction: pull, ") == _digest(personal="personal_fields: {LastName: Erased}\n")
    )


def test_a_field_read_or_a_rule_changed_moves_the_digest() -> None:
    also = BASE.replace("DIRECTION ", "also_read: [DoNotCall], ")
    rule = BASE.replace("false: null", "false: granted")
    pushed = BASE.replace("DIRECTION ", "direction: both, push: {suppressed: true}, ")
    digests = {_digest(), _digest(text=also), _digest(text=rule), _digest(text=pushed)}
    assert len(digests) == 4


def test_a_connector_reading_more_by_itself_moves_the_digest() -> None:
    mapping = parse_mapping(BASE.replace("DIRECTION ", "").replace("PERSONAL", ""), Path("c.yaml"))
    assert len({reading_digest(mapping), reading_digest(mapping, "2"), reading_digest(mapping, "3")}) == 3
