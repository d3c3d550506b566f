"""A push leaves a CRM value alone when the mapping's own pull table reads it as what the ledger
would write (one of several picklist values meaning the same basis, status or flag): HubSpot's
"Legitimate interest – prospect/lead" is never relabelled "existing customer", a claim the person
never made. A value that reads otherwise, says nothing, is empty or is unknown is written.

And a mapping file that is not UTF-8 is refused as a config file is: file, line, byte, advice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consentsync.config import ConfigError, load_config, parse_config, starter_config_text
from consentsync.domain import ConsentStatus, EffectiveState, LawfulBasis
from consentsync.mapping import Mapping, MappingError, crm_key, load_mapping, parse_mapping

ROOT = Path(__file__).resolve().parents[2]
CONNECTORS = ROOT / "connectors"
HUBSPOT = CONNECTORS / "consentsync_hubspot" / "mappings" / "contacts.yaml"
FILE = Path("mappings/acme/contact.yaml")

LI_LEAD = "Legitimate interest – prospect/lead"
LI_CUSTOMER = "Legitimate interest – existing customer"  # what the shipped push table writes
LI_OTHER = "Legitimate interest - other"


@pytest.fixture(scope="module")
def hubspot() -> Mapping:
    starter = parse_config(starter_config_text(), Path("/srv/consentsync/consentsync.yaml"))
    return load_mapping(HUBSPOT, purposes=starter.purposes, channels=starter.channels)


def service(
    basis: LawfulBasis, *, suppressed: bool = False, stated: bool = True
) -> dict[Any, EffectiveState]:
    """The ledger's state for HubSpot's service consent (the one that pushes hs_legal_basis)."""
    status = ConsentStatus.WITHDRAWN if suppressed else ConsentStatus.GRANTED
    return {
        ("service", "email"): EffectiveState(
            "service", "email", status, basis, suppressed=suppressed, rule="test", basis_stated=stated
        )
    }


def contact(basis: Any, **more: Any) -> dict[str, Any]:
    return {"hs_object_id": "127", "subscription_1002": "SUBSCRIBED", "hs_legal_basis": basis, **more}


# -- HubSpot's hs_legal_basis: three options, one lawful basis -------------------------------------


@pytest.mark.parametrize("shown", [LI_LEAD, LI_OTHER, LI_CUSTOMER])
def test_a_legitimate_interest_the_contact_shows_is_not_relabelled(hubspot: Mapping, shown: str) -> None:
    assert hubspot.updates_for(contact(shown), service(LawfulBasis.LEGITIMATE_INTERESTS)) == {}


@pytest.mark.parametrize("shown", [LI_LEAD, LI_OTHER])
def test_a_suppression_pushed_leaves_an_equivalent_basis_alone(hubspot: Mapping, shown: str) -> None:
    """The status is written, the basis (read the same) is not: the write carries only what differs."""
    states = service(LawfulBasis.LEGITIMATE_INTERESTS, suppressed=True)
    assert hubspot.updates_for(contact(shown), states) == {"subscription_1002": "UNSUBSCRIBED"}


@pytest.mark.parametrize(
    ("shown", "basis", "written"),
    [
        # Another lawful basis: replaced by the ledger's.
        ("Freely given consent from contact", LawfulBasis.LEGITIMATE_INTERESTS, LI_CUSTOMER),
        ("Performance of a contract", LawfulBasis.LEGITIMATE_INTERESTS, LI_CUSTOMER),
        (LI_LEAD, LawfulBasis.CONTRACT, "Performance of a contract"),
        (LI_OTHER, LawfulBasis.CONSENT, "Freely given consent from contact"),
        # A value that names no basis (null in the pull table), an empty field, a value the
        # table does not know: none of them says the ledger's basis, so it is written.
        ("Not applicable", LawfulBasis.LEGITIMATE_INTERESTS, LI_CUSTOMER),
        (None, LawfulBasis.LEGITIMATE_INTERESTS, LI_CUSTOMER),
        ("", LawfulBasis.LEGITIMATE_INTERESTS, LI_CUSTOMER),
        ("   ", LawfulBasis.LEGITIMATE_INTERESTS, LI_CUSTOMER),
        ("Legitimate interest", LawfulBasis.LEGITIMATE_INTERESTS, LI_CUSTOMER),
        ("legitimate interest – prospect/lead", LawfulBasis.LEGITIMATE_INTERESTS, LI_CUSTOMER),
    ],
)
def test_a_basis_that_reads_otherwise_is_written(
    hubspot: Mapping, shown: Any, basis: LawfulBasis, written: str
) -> None:
    updates = hubspot.updates_for(contact(shown), service(basis))
    assert updates == {"hs_legal_basis": written}
    assert hubspot.updates_for(contact(written), service(basis)) == {}  # and once written, no more


def test_a_field_the_record_lacks_is_written(hubspot: Mapping) -> None:
    record = {"hs_object_id": "127", "subscription_1002": "SUBSCRIBED"}
    assert hubspot.updates_for(record, service(LawfulBasis.LEGITIMATE_INTERESTS)) == {
        "hs_legal_basis": LI_CUSTOMER
    }


def test_a_default_basis_is_still_never_written(hubspot: Mapping) -> None:
    states = service(LawfulBasis.CONTRACT, stated=False)
    assert hubspot.updates_for(contact(LI_LEAD), states) == {}


# -- the same rule for statuses and flags, on any vendor's mapping --------------------------------

PICKLIST = """\
version: 1
vendor: acme
object: Contact
identity:
  record_id: Id
  modstamp: Modified
consents:
  - purpose: email_marketing
    channel: email
    status:
      field: Email_Status__c
      direction: both
      pull:
        Opted Out: withdrawn
        Unsubscribed: withdrawn
        Opted In: granted
        Double Opt-In: granted
        Unknown: null
      push: {suppressed: Opted Out, allowed: Opted In}
  - purpose: service
    channel: phone
    status:
      field: DoNotCall
      direction: both
      pull: {true: withdrawn, "Y": withdrawn, false: null, "N": null}
      push: {suppressed: true, allowed: false}
"""


def picklist_states(*, email: bool, phone: bool) -> dict[Any, EffectiveState]:
    def one(purpose: str, channel: str, suppressed: bool) -> EffectiveState:
        status = ConsentStatus.WITHDRAWN if suppressed else ConsentStatus.GRANTED
        return EffectiveState(
            purpose, channel, status, LawfulBasis.CONSENT, suppressed=suppressed, rule="latest_event_time"
        )

    return {
        ("email_marketing", "email"): one("email_marketing", "email", email),
        ("service", "phone"): one("service", "phone", phone),
    }


@pytest.mark.parametrize(
    ("record", "email", "phone", "written"),
    [
        # Read as the status the push would write: left alone.
        ({"Email_Status__c": "Unsubscribed", "DoNotCall": "Y"}, True, True, {}),
        ({"Email_Status__c": "Double Opt-In", "DoNotCall": True}, False, True, {}),
        ({"Email_Status__c": "Opted Out", "DoNotCall": "true"}, True, True, {}),
        # Read otherwise: written.
        ({"Email_Status__c": "Double Opt-In", "DoNotCall": "N"}, True, True, {
            "Email_Status__c": "Opted Out", "DoNotCall": True}),
        ({"Email_Status__c": "Unsubscribed", "DoNotCall": "Y"}, False, False, {
            "Email_Status__c": "Opted In", "DoNotCall": False}),
        # Says nothing (null in the table), empty, or unknown: written.
        ({"Email_Status__c": "Unknown", "DoNotCall": None}, True, True, {
            "Email_Status__c": "Opted Out", "DoNotCall": True}),
        ({"Email_Status__c": "", "DoNotCall": "maybe"}, False, True, {
            "Email_Status__c": "Opted In", "DoNotCall": True}),
        # "allowed" writes false, which reads as nothing: only false itself is left alone ("N",
        # which also reads as nothing, is not the same claim).
        ({"Email_Status__c": "Opted In", "DoNotCall": "N"}, False, False, {"DoNotCall": False}),
        ({"Email_Status__c": "Opted In", "DoNotCall": False}, False, False, {}),
    ],
)  # fmt: skip
def test_statuses_and_flags_that_read_the_same_are_left_alone(
    record: dict[str, Any], email: bool, phone: bool, written: dict[str, Any]
) -> None:
    mapping = parse_mapping(PICKLIST, FILE)
    states = picklist_states(email=email, phone=phone)
    assert mapping.updates_for(record, states) == written
    assert mapping.updates_for({**record, **written}, states) == {}  # replayed: nothing more


def test_a_push_only_field_has_no_table_to_read_and_writes_what_differs() -> None:
    pull = PICKLIST.index("      pull:\n")
    text = PICKLIST[:pull] + PICKLIST[PICKLIST.index("      push:", pull) :]
    mapping = parse_mapping(text.replace("direction: both", "direction: push", 1), FILE)
    states = picklist_states(email=True, phone=True)
    assert mapping.updates_for({"Email_Status__c": "Unsubscribed", "DoNotCall": True}, states) == {
        "Email_Status__c": "Opted Out"
    }


# -- the shipped mappings ---------------------------------------------------------------------------

SHIPPED = sorted(CONNECTORS.glob("*/mappings/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parts[-3]}/{p.stem}")
def test_every_shipped_mapping_writes_only_values_that_read_otherwise(path: Path) -> None:
    """Every pushed field of every shipped mapping, every value its pull tables name, every case
    of its push table: a record showing a value that reads (through the mapping's pull tables) as
    the value to write gets no write for the field; one that reads otherwise, or as nothing, does."""
    mapping = load_mapping(path)
    left_alone = 0
    for consent, pairs in mapping.pairs:
        if not pairs:
            continue  # consent rows: their purpose and channel are read from the record
        status, basis = consent.status, consent.basis
        if status.direction.pushes and status.pull and status.push:
            for value in status.pull:
                for case, pushed in status.push.items():
                    states = {pair: _state_for(pair, case) for pair in pairs}
                    same = _says_the_same(mapping, status.field, status.pull, value, pushed)
                    left_alone += same and crm_key(value) != crm_key(pushed)
                    written = status.field in mapping.updates_for({status.field: value}, states)
                    assert written is not same, (status.field, value, case)
        if basis is not None and basis.direction.pushes and basis.pull and basis.push:
            for value in basis.pull:
                for wanted, pushed in basis.push.items():
                    states = {
                        pair: EffectiveState(
                            *pair,
                            ConsentStatus.GRANTED,
                            wanted,
                            suppressed=False,
                            rule="test",
                            basis_stated=True,
                        )
                        for pair in pairs
                    }
                    same = _says_the_same(mapping, basis.field, basis.pull, value, pushed)
                    left_alone += same and crm_key(value) != crm_key(pushed)
                    written = basis.field in mapping.updates_for({basis.field: value}, states)
                    assert written is not same, (basis.field, value, wanted)
    if path == HUBSPOT:  # hs_legal_basis: prospect/lead and other, for legitimate interests
        assert left_alone == 2


def _says_the_same(mapping: Mapping, field: str, own: dict[Any, Any], value: Any, pushed: Any) -> bool:
    """The same CRM value, or: read through ``own`` as the same status or basis (not as nothing),
    and the same through every pull table of the mapping that reads ``field``."""
    if crm_key(value) == crm_key(pushed):
        return True

    def reads(table: dict[Any, Any], raw: Any) -> Any:
        return {crm_key(key): meaning for key, meaning in table.items()}.get(crm_key(raw))

    tables = [
        table
        for consent in mapping.spec.consents
        for names, table in (
            ([consent.status.field, *consent.status.also_read], consent.status.pull),
            ([consent.basis.field] if consent.basis else [], consent.basis.pull if consent.basis else None),
        )
        if table is not None and field in names
    ]
    return reads(own, value) is not None and all(reads(t, value) == reads(t, pushed) for t in [own, *tables])


def _state_for(pair: tuple[str, str], case: str) -> EffectiveState:
    """A ledger state whose push case is ``case`` (mapping._push_case)."""
    purpose, channel = pair
    status, suppressed, rule = {
        "allowed": (ConsentStatus.GRANTED, False, "latest_event_time"),
        "withdrawn": (ConsentStatus.WITHDRAWN, True, "sticky_withdrawal"),
        "suppressed": (ConsentStatus.EXPIRED, True, "validity_expired"),
        "no_consent": (ConsentStatus.APPLICABLE, True, "no_consent_on_record"),
    }[case]
    return EffectiveState(purpose, channel, status, LawfulBasis.CONSENT, suppressed=suppressed, rule=rule)


def test_the_shipped_hubspot_mapping_has_the_many_to_one_basis_this_guards(hubspot: Mapping) -> None:
    [_, service_consent] = hubspot.spec.consents
    assert service_consent.basis is not None and service_consent.basis.direction.pushes
    pull = service_consent.basis.pull or {}
    assert [v for v, b in pull.items() if b is LawfulBasis.LEGITIMATE_INTERESTS] == [
        LI_LEAD,
        LI_CUSTOMER,
        LI_OTHER,
    ]


def test_a_field_read_as_status_and_basis_is_left_alone_only_when_both_read_the_same() -> None:
    """SuperOffice's legal basis key is read both as the status and as the lawful basis. With an
    `allowed:` value added to the push table (docs/connectors/superoffice.md says how), here
    LEGITIMATE, a person on SOFTOPTIN (granted, legitimate interests) is left alone; one on
    CONSENT (granted too, but on consent) is not: its basis reads otherwise."""
    person = CONNECTORS / "consentsync_superoffice" / "mappings" / "person.yaml"
    text = person.read_text(encoding="utf-8")
    old = "push: {withdrawn: WITHDRAWN, suppressed: null}"
    assert old in text
    mapping = parse_mapping(text.replace(old, "push: {withdrawn: WITHDRAWN, allowed: LEGITIMATE}"), person)
    allowed = {
        ("email_marketing", "email"): EffectiveState(
            "email_marketing",
            "email",
            ConsentStatus.GRANTED,
            LawfulBasis.LEGITIMATE_INTERESTS,
            suppressed=False,
            rule="latest_event_time",
        )
    }

    def written(shown: Any) -> dict[str, Any]:
        updates = mapping.updates_for({"LegalBase_EMARKETING": shown, "LegalBase_STORE": "CONTRACT"}, allowed)
        return {k: v for k, v in updates.items() if k.endswith("EMARKETING")}

    assert written("LEGITIMATE") == {}
    assert written("SOFTOPTIN") == {}
    assert written("CONSENT") == {"LegalBase_EMARKETING": "LEGITIMATE"}
    assert written("CONTRACT") == {"LegalBase_EMARKETING": "LEGITIMATE"}
    assert written("WITHDRAWN") == {"LegalBase_EMARKETING": "LEGITIMATE"}
    assert written(None) == {"LegalBase_EMARKETING": "LEGITIMATE"}


# -- a mapping file that is not UTF-8 ---------------------------------------------------------------


def test_a_utf16_mapping_is_refused_like_a_config_file(tmp_path: Path) -> None:
    text = HUBSPOT.read_text(encoding="utf-8")
    mapping_file = tmp_path / "m8.yaml"
    mapping_file.write_text(text, encoding="utf-16")  # as Windows editors save "Unicode"
    with pytest.raises(MappingError) as raised:
        load_mapping(mapping_file)
    message = str(raised.value)
    assert message == f"{mapping_file}:1: not UTF-8 text (byte 0xff at offset 0): save the file as UTF-8"
    assert "codec" not in message and "\n" not in message
    # The config loader says it in the same words.
    config_file = tmp_path / "c10.yaml"
    config_file.write_bytes(mapping_file.read_bytes())
    with pytest.raises(ConfigError) as config_error:
        load_config(config_file)
    assert str(config_error.value) == message.replace(str(mapping_file), str(config_file))


def test_a_legacy_code_page_byte_names_its_line(tmp_path: Path) -> None:
    lines = HUBSPOT.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(6, "# Zoë's notes\n")
    mapping_file = tmp_path / "contacts.yaml"
    mapping_file.write_bytes("".join(lines).encode("utf-8").replace("ë".encode(), "ë".encode("latin-1")))
    offset = mapping_file.read_bytes().index(b"\xeb")
    with pytest.raises(MappingError) as raised:
        load_mapping(mapping_file)
    assert str(raised.value) == (
        f"{mapping_file}:7: not UTF-8 text (byte 0xeb at offset {offset}): save the file as UTF-8"
    )
