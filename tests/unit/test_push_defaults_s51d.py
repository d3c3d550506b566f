"""A status push table's `allowed` is written on evidence only: a state the ledger holds by
default (the purpose's default basis: no evidence at all) never clears what a CRM shows."""

from __future__ import annotations

from pathlib import Path

from consentsync.config import parse_config, starter_config_text
from consentsync.domain import ConsentStatus, EffectiveState, LawfulBasis
from consentsync.mapping import load_mapping, parse_mapping

DYNAMICS = Path(__file__).resolve().parents[2] / "connectors/consentsync_dynamics/mappings/contact.yaml"


def _state(
    purpose: str, channel: str, rule: str, *, status: ConsentStatus = ConsentStatus.NOT_APPLICABLE
) -> EffectiveState:
    return EffectiveState(purpose, channel, status, LawfulBasis.CONTRACT, suppressed=False, rule=rule)


def _push_only_dynamics(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The Dynamics contact mapping with Do Not Call pushed only (the ledger never reads it)."""
    text = DYNAMICS.read_text()
    block = "      field: donotphone\n      direction: both\n      pull: {true: withdrawn, false: null}\n"
    assert block in text
    path = tmp_path / "contact.yaml"
    path.write_text(text.replace(block, "      field: donotphone\n      direction: push\n"))
    starter = parse_config(starter_config_text(), Path("/srv/consentsync/consentsync.yaml"))
    return load_mapping(path, purposes=starter.purposes, channels=starter.channels)


def test_a_default_basis_never_clears_a_ticked_do_not_call(tmp_path: Path) -> None:
    mapping = _push_only_dynamics(tmp_path)
    record = {"contactid": "c1", "donotphone": True}
    by_default = {("service", "phone"): _state("service", "phone", "purpose_default_basis")}
    assert "donotphone" not in mapping.updates_for(record, by_default)
    # Evidence that allows the calls clears it, as before.
    evidenced = {
        ("service", "phone"): _state("service", "phone", "latest_event_time", status=ConsentStatus.GRANTED)
    }
    assert mapping.updates_for(record, evidenced)["donotphone"] is False


def test_a_field_over_several_channels_is_cleared_only_when_each_is_allowed_on_evidence() -> None:
    text = """\
version: 1
vendor: acme
object: Contact
identity: {record_id: Id, modstamp: Modified, email: Email}
consents:
  - purpose: service
    channel: [email, phone]
    status:
      field: DoNotContact
      direction: push
      push: {suppressed: true, allowed: false}
"""
    mapping = parse_mapping(text, Path("contact.yaml"))
    granted = _state("service", "email", "latest_event_time", status=ConsentStatus.GRANTED)
    by_default = _state("service", "phone", "purpose_default_basis")
    mixed = {("service", "email"): granted, ("service", "phone"): by_default}
    assert mapping.updates_for({"DoNotContact": True}, mixed) == {}
    both = {("service", "email"): granted, ("service", "phone"): granted}
    assert mapping.updates_for({"DoNotContact": True}, both) == {"DoNotContact": False}
