"""CRM mapping files: the shipped examples load, every error names the file, the line and the field,
records translate into evidence and identities, and pushes only write what differs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from consentsync.config import Config, parse_config, starter_config_text
from consentsync.domain import ConsentStatus, EffectiveState, Evidence, InvalidInput, LawfulBasis, Origin
from consentsync.mapping import (
    Mapping,
    MappingError,
    MappingValueError,
    load_mapping,
    load_mappings,
    parse_mapping,
    schema_text,
)
from consentsync.reconcile import Policy, consent_state, summarise

ROOT = Path(__file__).resolve().parents[2]
CONNECTORS = ROOT / "connectors"
SCHEMA = ROOT / "src" / "consentsync" / "mappings" / "schema.json"
EXAMPLES = sorted((CONNECTORS / "consentsync_salesforce" / "mappings").glob("*.yaml"))
FILE = Path("mappings/salesforce/contact.yaml")
OBSERVED = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
CONNECTOR = "salesforce-main"


@pytest.fixture(scope="module")
def starter() -> Config:
    return parse_config(starter_config_text(), Path("/srv/consentsync/consentsync.yaml"))


def example(name: str, starter: Config) -> Mapping:
    return load_mapping(
        CONNECTORS / "consentsync_salesforce" / "mappings" / f"{name}.yaml",
        purposes=starter.purposes,
        channels=starter.channels,
    )


# A small valid file; the error tests below break it one line at a time. Line numbers matter.
MINIMAL = """\
version: 1
vendor: salesforce
object: Contact
identity:
  record_id: Id
  modstamp: SystemModstamp
  email: Email
consents:
  - purpose: email_marketing
    channel: email
    status:
      field: HasOptedOutOfEmail
      direction: both
      pull: {true: withdrawn, false: null}
      push: {suppressed: true, allowed: false}
  - purpose: service
    channel: phone
    status:
      field: DoNotCall
      direction: pull
      pull:
        true: withdrawn
        false: null
"""

STARTER_PURPOSES = {"email_marketing", "profiling", "service"}
STARTER_CHANNELS = ("email", "phone", "sms", "post")


def error_of(text: str, **known: Any) -> str:
    known.setdefault("purposes", STARTER_PURPOSES)
    known.setdefault("channels", STARTER_CHANNELS)
    with pytest.raises(MappingError) as raised:
        parse_mapping(text, FILE, **known)
    return str(raised.value)


def replaced(old: str, new: str, text: str = MINIMAL) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def state(
    purpose: str,
    channel: str,
    *,
    suppressed: bool,
    status: ConsentStatus | None = None,
    basis: LawfulBasis = LawfulBasis.CONSENT,
    basis_stated: bool = True,
) -> EffectiveState:
    chosen = status or (ConsentStatus.WITHDRAWN if suppressed else ConsentStatus.GRANTED)
    return EffectiveState(
        purpose, channel, chosen, basis, suppressed=suppressed, rule="test", basis_stated=basis_stated
    )


# --- the shipped examples -----------------------------------------------------------------------


class TestExamples:
    def test_all_four_are_shipped(self) -> None:
        assert [p.name for p in EXAMPLES] == [
            "contact.yaml",
            "contact_point_type_consent.yaml",
            "individual.yaml",
            "lead.yaml",
        ]

    @pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
    def test_loads_against_the_starter_config(self, path: Path, starter: Config) -> None:
        # With the Purpose objects: each (purpose, channel) pair is checked as the ledger will.
        mapping = load_mapping(path, purposes=starter.purposes, channels=starter.channels)
        assert mapping.vendor == "salesforce"
        assert mapping.path == path
        # With plain key sets, as the CLI passes them.
        load_mapping(path, purposes=set(starter.purposes), channels=set(starter.channels))

    @pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
    def test_teaches_with_comments(self, path: Path) -> None:
        text = path.read_text(encoding="utf-8")
        # Editors find the schema from the checkout; copied out, the line reads ../schema.json.
        first = text.splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema=")
        assert (path.parent / first.split("$schema=", 1)[1]).resolve() == SCHEMA
        comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
        assert len(comments) >= 8

    def test_load_mappings(self, starter: Config) -> None:
        # Every shipped file, of every vendor, loads against the starter configuration.
        loaded = [
            mapping
            for folder in sorted(CONNECTORS.glob("consentsync_*/mappings"))
            for mapping in load_mappings(folder, purposes=starter.purposes, channels=starter.channels)
        ]
        salesforce = [m.object for m in loaded if m.vendor == "salesforce"]
        assert salesforce == ["Contact", "ContactPointTypeConsent", "Individual", "Lead"]
        assert {m.vendor for m in loaded} >= {"salesforce", "hubspot"}

    def test_contact_fields(self, starter: Config) -> None:
        contact = example("contact", starter)
        assert contact.pull_fields() == [
            "Id",
            "SystemModstamp",
            "Email",
            "IndividualId",
            "HasOptedOutOfEmail",
            "Legal_Basis__c",
            "DoNotCall",
        ]
        assert contact.push_fields() == ["HasOptedOutOfEmail", "DoNotCall"]

    def test_individual_fields(self, starter: Config) -> None:
        individual = example("individual", starter)
        assert individual.pull_fields() == [
            "Id",
            "SystemModstamp",
            "HasOptedOutProfiling",
            "HasOptedOutProcessing",
            "HasOptedOutSolicit",
        ]
        # "Don't Process" is read, never written.
        assert individual.push_fields() == ["HasOptedOutProfiling", "HasOptedOutSolicit"]

    def test_consent_records_are_only_read(self, starter: Config) -> None:
        cptc = example("contact_point_type_consent", starter)
        assert cptc.push_fields() == []
        assert cptc.pull_fields() == [
            "Id",
            "SystemModstamp",
            "PartyId",
            "DataUsePurposeId",
            "ContactPointType",
            "PrivacyConsentStatus",
            "CaptureDate",
            "DoubleConsentCaptureDate",
            "CaptureSource",
        ]

    def test_fields_are_not_repeated(self) -> None:
        text = replaced(
            "      field: DoNotCall\n", "      field: DoNotCall\n      also_read: [HasOptedOutOfEmail]\n"
        )
        mapping = parse_mapping(text, FILE)
        assert mapping.pull_fields() == ["Id", "SystemModstamp", "Email", "HasOptedOutOfEmail", "DoNotCall"]


def test_schema_json_is_up_to_date() -> None:
    assert SCHEMA.read_text(encoding="utf-8") == schema_text(), (
        "src/consentsync/mappings/schema.json is stale: run "
        "`python -m consentsync.mapping src/consentsync/mappings/schema.json`"
    )


# --- errors name the file, the line and the field -----------------------------------------------


# Mappings broken one way each, and how the error message starts after the file's name: the
# line, the field and what is wrong with it.
BROKEN: dict[str, tuple[str, str]] = {
    "unknown_key_in_identity_link": (
        replaced(
            "  email: Email\n", "  email: Email\n  links:\n    - {object: Individual, id: IndividualId}\n"
        ),
        "9: unknown key 'id' in identity.links[0]: accepted are field, object",
    ),
    "bad_status_in_a_block_table_names_its_line": (
        replaced("        false: null\n", "        false: granted-ish\n"),
        "23: consents[1].status.pull: unknown status 'granted-ish'",
    ),
    "bad_basis_in_a_push_table": (
        MINIMAL
        + (
            "    basis:\n"
            "      field: Legal_Basis__c\n"
            "      direction: push\n"
            "      push:\n"
            "        consent: Consent\n"
            "        legit: Legitimate Interest\n"
        ),
        "29: consents[1].basis.push: unknown basis 'legit': accepted are ",
    ),
    "unknown_channel_in_a_list": (
        replaced("channel: phone", "channel: [phone, fax]"),
        "17: consents[1].channel[1]: unknown channel 'fax'",
    ),
    "unknown_purpose_in_a_values_table": (
        replaced(
            "  - purpose: service\n",
            "  - purpose:\n      field: DataUsePurposeId\n      values:\n"
            "        0ZW000000000001AAA: service\n        0ZW000000000002AAA: newsletter\n",
        ),
        "20: consents[1].purpose.values: unknown purpose 'newsletter'",
    ),
    "unknown_channel_in_a_values_table": (
        replaced(
            "    channel: phone\n", "    channel:\n      field: ContactPointType\n      values: {Fax: fax}\n"
        ),
        "19: consents[1].channel.values: unknown channel 'fax'",
    ),
    "direction_both_needs_a_push_table": (
        replaced("      push: {suppressed: true, allowed: false}\n", ""),
        "13: consents[0].status.direction: direction both needs a push table",
    ),
    "direction_push_needs_no_pull_table": (
        replaced("direction: both", "direction: push"),
        "14: consents[0].status.pull: direction push never reads this table",
    ),
    "direction_pull_needs_a_pull_table": (
        replaced("      pull:\n        true: withdrawn\n        false: null\n", ""),
        "20: consents[1].status.direction: direction pull needs a pull table",
    ),
    "a_pull_only_field_has_no_push_table": (
        replaced("      direction: pull\n", "      direction: pull\n      push: {suppressed: true}\n"),
        "21: consents[1].status.push: direction pull never writes this table",
    ),
    "bad_object_name": (
        replaced("object: Contact", "object: Contact WHERE Id != null"),
        "3: object: 'Contact WHERE Id != null' is not a CRM object's API name",
    ),
    "bad_link_field": (
        replaced(
            "  email: Email\n", "  email: Email\n  links:\n    - {object: Individual, field: Individual Id}\n"
        ),
        "9: identity.links[0].field: 'Individual Id' is not",
    ),
    "duplicate_pair": (
        replaced("purpose: service\n    channel: phone", "purpose: email_marketing\n    channel: email"),
        "16: consents[1].purpose: purpose 'email_marketing' on channel 'email' is already mapped by "
        "consents[0]",
    ),
    "duplicate_pair_through_a_channel_list": (
        replaced(
            "purpose: service\n    channel: phone", "purpose: email_marketing\n    channel: [sms, email]"
        ),
        "16: consents[1].purpose: purpose 'email_marketing' on channel 'email'",
    ),
    "channel_listed_twice": (
        replaced("channel: phone", "channel: [phone, sms, phone]"),
        "17: consents[1].channel[2]: channel 'phone' is listed twice",
    ),
    "one_field_written_by_two_consents": (
        replaced(
            "      field: DoNotCall\n      direction: pull\n",
            "      field: HasOptedOutOfEmail\n      direction: both\n      push: {suppressed: true}\n",
        ),
        "19: consents[1].status.field: field HasOptedOutOfEmail is already written by consents[0].status",
    ),
    "consent_from_fields_writes_no_opt_in": (
        replaced(
            "  - purpose: email_marketing\n",
            "  - purpose: {field: DataUsePurposeId, values: {X1: email_marketing}}\n",
        ),
        "15: consents[0].status.push: a consent whose purpose or channel is read from a field is "
        "written only to show a no",
    ),
    "related_fields_cannot_be_written": (
        replaced("field: HasOptedOutOfEmail", "field: Individual.HasOptedOutSolicit"),
        "12: consents[0].status.field: Individual.HasOptedOutSolicit is a field of a related record",
    ),
    "also_read_needs_pulling": (
        replaced(
            "      direction: both\n      pull: {true: withdrawn, false: null}\n",
            "      direction: push\n      also_read: [HasOptedOutProcessing]\n",
        ),
        "14: consents[0].status.also_read: also_read needs direction pull or both",
    ),
    "a_crm_value_listed_twice": (
        replaced("{true: withdrawn, false: null}", "{true: withdrawn, 'true': null}"),
        "14: consents[0].status.pull: CRM value true is listed twice",
    ),
    "unsupported_version": (replaced("version: 1", "version: 2"), "1: version: "),
    "no_consents": (MINIMAL.split("consents:")[0] + "consents: []\n", "8: consents: "),
}


class TestErrors:
    def test_minimal_is_valid(self) -> None:
        mapping = parse_mapping(MINIMAL, FILE, purposes=STARTER_PURPOSES, channels=STARTER_CHANNELS)
        assert mapping.object == "Contact"

    @pytest.mark.parametrize(("text", "starts"), BROKEN.values(), ids=BROKEN.keys())
    def test_error_names_the_line_and_the_field(self, text: str, starts: str) -> None:
        message = error_of(text)
        assert message.startswith(f"{FILE}:{starts}"), message

    def test_unknown_key(self) -> None:
        message = error_of(replaced("    channel: phone\n", "    channel: phone\n    colour: red\n"))
        assert message.startswith(f"{FILE}:18: unknown key 'colour' in consents[1]: accepted are ")
        for key in ("basis", "channel", "event_time", "purpose", "source", "status"):
            assert key in message.split("accepted are", 1)[1]

    def test_unknown_key_at_the_top_level(self) -> None:
        message = error_of(replaced("object: Contact\n", "object: Contact\nowner: ops\n"))
        assert message.startswith(f"{FILE}:4: unknown key 'owner' in the top level: ")
        assert "consents, identity, object, personal_fields, vendor, version" in message

    def test_bad_status(self) -> None:
        message = error_of(replaced("{true: withdrawn, false: null}", "{true: optout, false: null}"))
        assert message.startswith(
            f"{FILE}:14: consents[0].status.pull: unknown status 'optout': accepted are not_applicable, "
        )
        for status in ConsentStatus:
            assert status.value in message

    def test_bad_basis(self) -> None:
        text = MINIMAL + (
            "    basis:\n      field: Legal_Basis__c\n      pull: {Consent: consent, Contract: contractual}\n"
        )
        message = error_of(text)
        assert message.startswith(f"{FILE}:26: consents[1].basis.pull: unknown basis 'contractual': ")
        for basis in LawfulBasis:
            assert basis.value in message

    def test_unknown_purpose(self) -> None:
        message = error_of(replaced("purpose: service", "purpose: newsletter"))
        assert message == (
            f"{FILE}:16: consents[1].purpose: unknown purpose 'newsletter': "
            "accepted are email_marketing, profiling, service"
        )

    def test_unknown_channel(self) -> None:
        message = error_of(replaced("channel: phone", "channel: fax"))
        assert message.startswith(f"{FILE}:17: consents[1].channel: unknown channel 'fax': accepted are ")
        assert "email, phone, sms, post" in message

    def test_pair_the_config_does_not_allow(self, starter: Config) -> None:
        text = replaced("purpose: service", "purpose: email_marketing")
        message = error_of(text, purposes=starter.purposes, channels=starter.channels)
        assert message == (
            f"{FILE}:17: consents[1].channel: channel 'phone' is not configured for purpose "
            "'email_marketing': accepted are email"
        )

    def test_purposes_and_channels_are_only_checked_when_given(self) -> None:
        text = replaced("purpose: service", "purpose: newsletter")
        assert parse_mapping(replaced("channel: phone", "channel: fax", text), FILE).object == "Contact"

    def test_bad_direction(self) -> None:
        message = error_of(replaced("direction: both", "direction: sideways"))
        assert message.startswith(f"{FILE}:13: consents[0].status.direction: got 'sideways': ")
        assert "'pull', 'push' or 'both'" in message

    def test_unknown_key_in_a_status_push_table(self) -> None:
        message = error_of(
            replaced("{suppressed: true, allowed: false}", "{suppressed: true, granted: false}")
        )
        assert message == (
            f"{FILE}:15: consents[0].status.push: unknown key 'granted': "
            "accepted are suppressed, allowed, withdrawn, no_consent"
        )

    @pytest.mark.parametrize(
        "name",
        ["DoNotCall' OR Id != null", "Do Not Call", "DoNotCall;", "1Field", "Account..Name", ""],
        ids=["quote", "space", "semicolon", "digit-first", "empty-part", "empty"],
    )
    def test_field_names_must_be_api_names(self, name: str) -> None:
        quoted = "'" + name.replace("'", "''") + "'"
        message = error_of(replaced("field: DoNotCall", f"field: {quoted}"))
        assert message.startswith(
            f"{FILE}:19: consents[1].status.field: {name!r} is not a CRM field's API name"
        )
        assert "accepted are letters, digits and _" in message

    @pytest.mark.parametrize("name", ["Legal_Basis__c", "ns__Consent_Date__c", "Account.Owner.Email", "X1"])
    def test_api_names_pass(self, name: str) -> None:
        text = MINIMAL + f"    event_time: {{field: {name}}}\n"
        assert name in parse_mapping(text, FILE).pull_fields()

    def test_the_same_field_may_be_read_twice(self) -> None:
        text = replaced("      field: DoNotCall\n", "      field: HasOptedOutOfEmail\n")
        assert parse_mapping(text, FILE).push_fields() == ["HasOptedOutOfEmail"]

    def test_a_yaml_key_written_twice(self) -> None:
        message = error_of(replaced("        false: null\n", "        false: null\n        true: granted\n"))
        assert message == (
            f"{FILE}:24: duplicate key 'true' in consents[1].status.pull (first written at line 22)"
        )

    def test_missing_required_key(self) -> None:
        message = error_of(replaced("  modstamp: SystemModstamp\n", ""))
        assert message == f"{FILE}:4: missing required key 'identity.modstamp'"

    @pytest.mark.parametrize(
        ("text", "line"),
        [
            (MINIMAL.replace("  email: Email\n", "  email: [Email\n"), 8),
            (MINIMAL.replace("    channel: email\n", "   channel: email\n"), 10),
            (MINIMAL.replace("vendor: salesforce\n", "vendor: salesforce\n\tobject: Lead\n"), 3),
            (
                MINIMAL.replace(
                    "pull: {true: withdrawn, false: null}", "pull: {true: withdrawn, false: null"
                ),
                15,
            ),
        ],
        ids=["unclosed-list", "indentation", "tab", "unclosed-table"],
    )
    def test_invalid_yaml(self, text: str, line: int) -> None:
        message = error_of(text)
        assert message.startswith(f"{FILE}:{line}: invalid YAML: ")

    @pytest.mark.parametrize("text", ["", "# nothing\n", "- a\n", "text\n"])
    def test_top_level_must_be_a_mapping(self, text: str) -> None:
        assert error_of(text).startswith(f"{FILE}:1: expected a mapping file")

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(MappingError, match="mapping file not found"):
            load_mapping(tmp_path / "nope.yaml")

    def test_load_reports_the_real_path(self, tmp_path: Path) -> None:
        path = tmp_path / "broken.yaml"
        path.write_text(replaced("purpose: service", "purpose: newsletter"), encoding="utf-8")
        with pytest.raises(MappingError) as raised:
            load_mapping(path, purposes=STARTER_PURPOSES)
        assert str(raised.value).startswith(f"{path}:16: consents[1].purpose: unknown purpose")

    def test_two_files_for_one_object(self, tmp_path: Path) -> None:
        (tmp_path / "a.yaml").write_text(MINIMAL, encoding="utf-8")
        (tmp_path / "b.yml").write_text(MINIMAL, encoding="utf-8")
        with pytest.raises(MappingError, match=r"b\.yml: salesforce Contact is already mapped by .*a\.yaml"):
            load_mappings(tmp_path)

    def test_mapping_errors_are_invalid_input(self) -> None:
        assert issubclass(MappingError, InvalidInput)
        assert issubclass(MappingValueError, InvalidInput)


class TestYamlValues:
    def test_yes_and_no_stay_text(self) -> None:
        text = replaced(
            "        true: withdrawn\n        false: null\n",
            "        Yes: withdrawn\n        No: null\n        on: granted\n",
        )
        mapping = parse_mapping(text, FILE)
        record = {"Id": "003A", "SystemModstamp": "x", "HasOptedOutOfEmail": False, "DoNotCall": "Yes"}
        [evidence] = mapping.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED)
        assert evidence.status is ConsentStatus.WITHDRAWN
        # A real boolean is not the text "Yes": the record is stopped, not misread.
        with pytest.raises(MappingValueError, match="accepted are Yes, No, on"):
            mapping.evidence_from({**record, "DoNotCall": True}, connector=CONNECTOR, observed_at=OBSERVED)

    def test_text_true_matches_a_boolean_key(self) -> None:
        # HubSpot sends checkboxes as the text "true"; Vtiger as "0"/"1".
        mapping = parse_mapping(MINIMAL, FILE)
        record = {"Id": "1", "HasOptedOutOfEmail": "true", "DoNotCall": "false"}
        [evidence] = mapping.evidence_from(record, connector="hubspot", observed_at=OBSERVED)
        assert (evidence.purpose, evidence.status) == ("email_marketing", ConsentStatus.WITHDRAWN)

    def test_numbers_match_their_text(self) -> None:
        text = replaced(
            "        true: withdrawn\n        false: null\n", "        1: withdrawn\n        0: null\n"
        )
        mapping = parse_mapping(text, FILE)
        record = {"Id": "12x7", "HasOptedOutOfEmail": False, "DoNotCall": "1"}
        [evidence] = mapping.evidence_from(record, connector="vtiger", observed_at=OBSERVED)
        assert (evidence.purpose, evidence.channel) == ("service", "phone")


# --- records into evidence ----------------------------------------------------------------------

CONTACT = {
    "attributes": {"type": "Contact", "url": "/services/data/v59.0/sobjects/Contact/003000000000001AAA"},
    "Id": "003000000000001AAA",
    "SystemModstamp": "2026-11-23T03:21:24.000+0000",
    "Email": "  Ada.Lovelace@Example.COM ",
    "IndividualId": "0PK000000000001AAA",
    "HasOptedOutOfEmail": True,
    "Legal_Basis__c": "Legitimate Interest",
    "DoNotCall": False,
}

INDIVIDUAL = {
    "Id": "0PK000000000001AAA",
    "SystemModstamp": "2026-11-23T03:21:24.000+0000",
    "HasOptedOutProfiling": False,
    "HasOptedOutProcessing": False,
    "HasOptedOutSolicit": True,
}

CONSENT = {
    "Id": "0ZY000000000001AAA",
    "SystemModstamp": "2026-11-23T03:21:24.000+0000",
    "PartyId": "0PK000000000001AAA",
    "DataUsePurposeId": "0ZW8d00007CB5wrGAD",
    "ContactPointType": "Email",
    "PrivacyConsentStatus": "OptIn",
    "CaptureDate": "2026-11-20T09:14:02.000+0000",
    "DoubleConsentCaptureDate": "2026-11-20T09:31:45.000+0000",
    "CaptureSource": "Web Form",
}


class TestEvidence:
    def test_contact(self, starter: Config) -> None:
        contact = example("contact", starter)
        evidence = contact.evidence_from(CONTACT, connector=CONNECTOR, observed_at=OBSERVED)
        assert evidence == [
            Evidence(
                purpose="email_marketing",
                channel="email",
                status=ConsentStatus.WITHDRAWN,
                basis=LawfulBasis.LEGITIMATE_INTERESTS,
                event_time=None,
                observed_at=OBSERVED,
                source="salesforce-main:Contact",
                origin=Origin.CRM,
                evidence_ref="Contact/003000000000001AAA",
            )
        ]

    def test_contact_that_ticked_both(self, starter: Config) -> None:
        contact = example("contact", starter)
        record = {**CONTACT, "DoNotCall": True, "Legal_Basis__c": None}
        evidence = contact.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED)
        assert [(e.purpose, e.channel, e.status, e.basis) for e in evidence] == [
            ("email_marketing", "email", ConsentStatus.WITHDRAWN, None),
            ("service", "phone", ConsentStatus.WITHDRAWN, None),
        ]

    def test_unticked_boxes_say_nothing(self, starter: Config) -> None:
        contact = example("contact", starter)
        record = {**CONTACT, "HasOptedOutOfEmail": False, "DoNotCall": False}
        assert contact.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED) == []

    def test_a_bad_basis_beside_an_unticked_box_is_not_read(self, starter: Config) -> None:
        contact = example("contact", starter)
        record = {**CONTACT, "HasOptedOutOfEmail": False, "Legal_Basis__c": "Because"}
        assert contact.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED) == []

    def test_lead(self, starter: Config) -> None:
        lead = example("lead", starter)
        record = {
            "Id": "00Q000000000001AAA",
            "SystemModstamp": "2026-11-23T03:21:24.000+0000",
            "Email": "GRACE.HOPPER@EXAMPLE.ORG",
            "IndividualId": None,
            "HasOptedOutOfEmail": False,
            "Legal_Basis__c": "Consent",
            "DoNotCall": True,
        }
        [evidence] = lead.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED)
        assert (evidence.purpose, evidence.channel, evidence.status) == (
            "service",
            "phone",
            ConsentStatus.WITHDRAWN,
        )
        assert evidence.source == "salesforce-main:Lead"
        assert evidence.evidence_ref == "Lead/00Q000000000001AAA"
        assert lead.identity_from(record) == ("00Q000000000001AAA", "grace.hopper@example.org", [])

    def test_individual_solicit(self, starter: Config) -> None:
        individual = example("individual", starter)
        evidence = individual.evidence_from(INDIVIDUAL, connector=CONNECTOR, observed_at=OBSERVED)
        assert [(e.purpose, e.channel, e.status) for e in evidence] == [
            ("email_marketing", "email", ConsentStatus.WITHDRAWN)
        ]
        assert evidence[0].evidence_ref == "Individual/0PK000000000001AAA"

    def test_individual_profiling_on_every_channel(self, starter: Config) -> None:
        individual = example("individual", starter)
        record = {**INDIVIDUAL, "HasOptedOutProfiling": True, "HasOptedOutSolicit": False}
        evidence = individual.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED)
        assert [(e.purpose, e.channel) for e in evidence] == [
            ("profiling", "email"),
            ("profiling", "phone"),
            ("profiling", "sms"),
            ("profiling", "post"),
        ]
        assert {e.status for e in evidence} == {ConsentStatus.WITHDRAWN}

    def test_dont_process_stops_profiling_and_marketing(self, starter: Config) -> None:
        individual = example("individual", starter)
        record = {**INDIVIDUAL, "HasOptedOutSolicit": False, "HasOptedOutProcessing": True}
        evidence = individual.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED)
        assert {e.purpose for e in evidence} == {"profiling", "email_marketing"}
        assert len(evidence) == 5

    def test_consent_record(self, starter: Config) -> None:
        cptc = example("contact_point_type_consent", starter)
        [evidence] = cptc.evidence_from(CONSENT, connector=CONNECTOR, observed_at=OBSERVED)
        assert evidence.purpose == "email_marketing"
        assert evidence.channel == "email"
        assert evidence.status is ConsentStatus.GRANTED
        assert evidence.basis is None
        assert evidence.event_time == datetime(2026, 11, 20, 9, 14, 2, tzinfo=UTC)
        assert evidence.double_opt_in_at == datetime(2026, 11, 20, 9, 31, 45, tzinfo=UTC)
        assert evidence.observed_at == OBSERVED
        assert evidence.origin is Origin.CRM
        assert evidence.source == "salesforce-main:ContactPointTypeConsent"
        assert (
            evidence.evidence_ref == "ContactPointTypeConsent/0ZY000000000001AAA (capture source: Web Form)"
        )
        assert evidence.has_proof

    @pytest.mark.parametrize(
        ("value", "status"),
        [
            ("OptIn", ConsentStatus.GRANTED),
            ("OptOut", ConsentStatus.WITHDRAWN),
            ("Seen", ConsentStatus.REQUESTED),
            ("NotSeen", ConsentStatus.APPLICABLE),
        ],
    )
    def test_privacy_consent_statuses(self, starter: Config, value: str, status: ConsentStatus) -> None:
        cptc = example("contact_point_type_consent", starter)
        record = {**CONSENT, "PrivacyConsentStatus": value, "DataUsePurposeId": "0ZW8d00007CB5wsGAD"}
        [evidence] = cptc.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED)
        assert (evidence.purpose, evidence.status) == ("profiling", status)

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("2026-11-23T03:21:24.000+0000", datetime(2026, 11, 23, 3, 21, 24, tzinfo=UTC)),
            ("2026-11-23T04:21:24.000+0100", datetime(2026, 11, 23, 3, 21, 24, tzinfo=UTC)),
            ("2026-11-23T03:21:24Z", datetime(2026, 11, 23, 3, 21, 24, tzinfo=UTC)),
            # A date alone, for a grant: the day's first moment anywhere (UTC+14).
            ("2026-11-23", datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
            (None, None),
            ("", None),
        ],
    )
    def test_capture_dates(self, starter: Config, raw: str | None, expected: datetime | None) -> None:
        cptc = example("contact_point_type_consent", starter)
        [evidence] = cptc.evidence_from(
            {**CONSENT, "CaptureDate": raw}, connector=CONNECTOR, observed_at=OBSERVED
        )
        assert evidence.event_time == expected

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            # A date alone names the day: a no is read at its last moment anywhere (UTC-12),
            # once that has passed (OBSERVED is 2026-11-24 08:00Z).
            ("2026-11-22", datetime(2026, 11, 23, 11, 59, 59, 999999, tzinfo=UTC)),
            (" 2026-11-22 ", datetime(2026, 11, 23, 11, 59, 59, 999999, tzinfo=UTC)),
            # A time of day, even midnight, is a moment, and stays as stated.
            ("2026-11-23T00:00:00Z", datetime(2026, 11, 23, tzinfo=UTC)),
            ("2026-11-23T03:21:24.000+0000", datetime(2026, 11, 23, 3, 21, 24, tzinfo=UTC)),
        ],
    )
    def test_a_no_dated_to_the_day_is_read_at_its_end(
        self, starter: Config, raw: str, expected: datetime
    ) -> None:
        cptc = example("contact_point_type_consent", starter)
        record = {**CONSENT, "PrivacyConsentStatus": "OptOut", "CaptureDate": raw}
        [evidence] = cptc.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED)
        assert (evidence.status, evidence.event_time) == (ConsentStatus.WITHDRAWN, expected)

    def test_a_no_dated_today_has_no_time_yet_and_reads_the_same_all_day(self, starter: Config) -> None:
        """Not the day's end, still to come (the ledger refuses a future time), nor the time of
        each read (a re-read would be a new value): unknown, read as when first observed."""
        cptc = example("contact_point_type_consent", starter)
        record = {**CONSENT, "PrivacyConsentStatus": "OptOut", "CaptureDate": OBSERVED.date().isoformat()}
        reads = [
            cptc.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED + timedelta(hours=hours))[0]
            for hours in (0, 6)
        ]
        assert [evidence.event_time for evidence in reads] == [None, None]

    def test_a_consent_captured_later_that_day_does_not_reverse_a_no_dated_to_the_day(
        self, starter: Config
    ) -> None:
        """The CRM says the person opted out on 2026-11-23 (a Date field); a web form captured a
        consent at 15:00 that day. Which came first is unknown: the no stands."""
        cptc = example("contact_point_type_consent", starter)
        record = {**CONSENT, "PrivacyConsentStatus": "OptOut", "CaptureDate": "2026-11-23"}
        [no] = cptc.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED)
        captured = Evidence(
            no.purpose,
            no.channel,
            ConsentStatus.GRANTED,
            LawfulBasis.CONSENT,
            datetime(2026, 11, 23, 15, 0, 0, 250000, tzinfo=UTC),
            OBSERVED,
            "web_form",
            Origin.CAPTURE,
        )
        policy = Policy(trusted_sources=frozenset({"web_form"}))
        for order in ([no, captured], [captured, no]):
            state = consent_state(summarise(order, policy), starter.purposes[no.purpose], no.channel)
            assert state.status is ConsentStatus.WITHDRAWN

    @pytest.mark.parametrize(
        "change",
        [
            {"ContactPointType": "Social"},
            {"ContactPointType": "Web"},
            {"DataUsePurposeId": None},
            {"PrivacyConsentStatus": None},
        ],
        ids=["social", "web", "no-purpose", "no-status"],
    )
    def test_what_is_not_ours_says_nothing(self, starter: Config, change: dict[str, Any]) -> None:
        cptc = example("contact_point_type_consent", starter)
        assert cptc.evidence_from({**CONSENT, **change}, connector=CONNECTOR, observed_at=OBSERVED) == []

    def test_no_capture_source(self, starter: Config) -> None:
        cptc = example("contact_point_type_consent", starter)
        record = {**CONSENT, "CaptureSource": None}
        [evidence] = cptc.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED)
        assert evidence.evidence_ref == "ContactPointTypeConsent/0ZY000000000001AAA"

    def test_notice_version(self) -> None:
        text = MINIMAL + "    notice_version: {field: Notice_Version__c}\n"
        mapping = parse_mapping(text, FILE)
        record = {"Id": "003A", "HasOptedOutOfEmail": False, "DoNotCall": True, "Notice_Version__c": "v7 "}
        [evidence] = mapping.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED)
        assert evidence.notice_version == "v7"

    def test_push_only_consents_are_not_read(self) -> None:
        text = replaced(
            "      direction: both\n      pull: {true: withdrawn, false: null}\n", "      direction: push\n"
        )
        mapping = parse_mapping(text, FILE)
        record = {"Id": "003A", "HasOptedOutOfEmail": True, "DoNotCall": False}
        assert mapping.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED) == []
        assert "HasOptedOutOfEmail" in mapping.pull_fields()  # still read: pushes compare with it


class TestUntranslatable:
    def error_of(self, mapping: Mapping, record: dict[str, Any]) -> MappingValueError:
        with pytest.raises(MappingValueError) as raised:
            mapping.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED)
        return raised.value

    def test_unknown_picklist_value(self, starter: Config) -> None:
        contact = example("contact", starter)
        error = self.error_of(contact, {**CONTACT, "Legal_Basis__c": "Because We Can"})
        message = str(error)
        assert message.startswith(
            "Contact 003000000000001AAA: field Legal_Basis__c: cannot translate 'Because We Can'"
        )
        assert "consentsync_salesforce/mappings/contact.yaml" in message
        assert message.endswith(
            "accepted are Consent, Legitimate Interest, Contract, Legal Obligation, Vital Interests, "
            "Public Task"
        )
        assert (error.field, error.value, error.record_id, error.object_type) == (
            "Legal_Basis__c",
            "Because We Can",
            "003000000000001AAA",
            "Contact",
        )
        assert isinstance(error, InvalidInput)

    def test_unknown_checkbox_value(self, starter: Config) -> None:
        contact = example("contact", starter)
        message = str(self.error_of(contact, {**CONTACT, "DoNotCall": "maybe"}))
        assert "Contact 003000000000001AAA: field DoNotCall: cannot translate 'maybe'" in message
        assert message.endswith("accepted are true, false")

    def test_unknown_purpose_id(self, starter: Config) -> None:
        cptc = example("contact_point_type_consent", starter)
        message = str(self.error_of(cptc, {**CONSENT, "DataUsePurposeId": "0ZW8d00007CB5wzGAD"}))
        assert message.startswith(
            "ContactPointTypeConsent 0ZY000000000001AAA: field DataUsePurposeId: "
            "cannot translate '0ZW8d00007CB5wzGAD'"
        )
        assert "0ZW8d00007CB5wrGAD" in message

    def test_unknown_consent_status(self, starter: Config) -> None:
        cptc = example("contact_point_type_consent", starter)
        message = str(self.error_of(cptc, {**CONSENT, "PrivacyConsentStatus": "Pending"}))
        assert "field PrivacyConsentStatus: cannot translate 'Pending'" in message
        assert message.endswith("accepted are OptIn, OptOut, Seen, NotSeen")

    def test_malformed_capture_date(self, starter: Config) -> None:
        cptc = example("contact_point_type_consent", starter)
        message = str(self.error_of(cptc, {**CONSENT, "CaptureDate": "yesterday"}))
        assert (
            "ContactPointTypeConsent 0ZY000000000001AAA: field CaptureDate: cannot translate 'yesterday'"
            in message
        )
        assert "expected an ISO 8601 date or time" in message

    def test_record_without_id(self, starter: Config) -> None:
        contact = example("contact", starter)
        message = str(self.error_of(contact, {**CONTACT, "Id": None}))
        assert message.startswith("Contact: field Id: cannot translate None")


# --- identities ---------------------------------------------------------------------------------


class TestIdentity:
    def test_contact_with_its_individual(self, starter: Config) -> None:
        contact = example("contact", starter)
        assert contact.identity_from(CONTACT) == (
            "003000000000001AAA",
            "ada.lovelace@example.com",
            [("Individual", "0PK000000000001AAA")],
        )

    def test_no_email_and_no_link(self, starter: Config) -> None:
        contact = example("contact", starter)
        record = {**CONTACT, "Email": None, "IndividualId": None}
        assert contact.identity_from(record) == ("003000000000001AAA", None, [])
        assert contact.identity_from({**record, "Email": "  "}) == ("003000000000001AAA", None, [])

    def test_consent_record_links_its_party(self, starter: Config) -> None:
        cptc = example("contact_point_type_consent", starter)
        assert cptc.identity_from(CONSENT) == (
            "0ZY000000000001AAA",
            None,
            [("Individual", "0PK000000000001AAA")],
        )

    def test_individual(self, starter: Config) -> None:
        assert example("individual", starter).identity_from(INDIVIDUAL) == ("0PK000000000001AAA", None, [])

    @pytest.mark.parametrize("email", ["ada.lovelace", "ada@lovelace", "ada lovelace@example.com", 42])
    def test_malformed_email(self, starter: Config, email: Any) -> None:
        contact = example("contact", starter)
        with pytest.raises(MappingValueError) as raised:
            contact.identity_from({**CONTACT, "Email": email})
        message = str(raised.value)
        shown = f"<{len(email)} characters>" if isinstance(email, str) else email
        assert message.startswith(f"Contact 003000000000001AAA: field Email: cannot translate {shown!r}")
        assert message.endswith("expected an email address like local@domain.tld")
        if isinstance(email, str):
            assert email not in message  # the reason is kept and shown to ops: no address in it

    def test_related_fields_are_read_from_nested_records(self) -> None:
        text = MINIMAL + "    source: {field: Owner.Name}\n"
        mapping = parse_mapping(text, FILE)
        record = {
            "Id": "003A",
            "HasOptedOutOfEmail": False,
            "DoNotCall": True,
            "Owner": {"Name": "Call Centre"},
        }
        [evidence] = mapping.evidence_from(record, connector=CONNECTOR, observed_at=OBSERVED)
        assert evidence.evidence_ref == "Contact/003A (capture source: Call Centre)"
        no_owner = {**record, "Owner": None}
        [evidence] = mapping.evidence_from(no_owner, connector=CONNECTOR, observed_at=OBSERVED)
        assert evidence.evidence_ref == "Contact/003A"


# --- pushes -------------------------------------------------------------------------------------


class TestUpdates:
    def contact_states(
        self, *, email_suppressed: bool, phone_suppressed: bool
    ) -> dict[tuple[str, str], EffectiveState]:
        return {
            ("email_marketing", "email"): state("email_marketing", "email", suppressed=email_suppressed),
            ("service", "phone"): state(
                "service", "phone", suppressed=phone_suppressed, basis=LawfulBasis.CONTRACT
            ),
            ("service", "email"): state("service", "email", suppressed=False, basis=LawfulBasis.CONTRACT),
        }

    def test_writes_only_what_differs(self, starter: Config) -> None:
        contact = example("contact", starter)
        record = {**CONTACT, "HasOptedOutOfEmail": False, "DoNotCall": False}
        states = self.contact_states(email_suppressed=True, phone_suppressed=False)
        assert contact.updates_for(record, states) == {"HasOptedOutOfEmail": True}

    def test_nothing_when_the_crm_already_shows_it(self, starter: Config) -> None:
        contact = example("contact", starter)
        states = self.contact_states(email_suppressed=True, phone_suppressed=False)
        assert contact.updates_for(CONTACT, states) == {}

    def test_idempotent(self, starter: Config) -> None:
        contact = example("contact", starter)
        record = {"HasOptedOutOfEmail": True, "DoNotCall": False}
        states = self.contact_states(email_suppressed=False, phone_suppressed=True)
        updates = contact.updates_for(record, states)
        assert updates == {"HasOptedOutOfEmail": False, "DoNotCall": True}
        assert contact.updates_for({**record, **updates}, states) == {}

    def test_a_field_the_record_does_not_show_is_written(self, starter: Config) -> None:
        contact = example("contact", starter)
        states = self.contact_states(email_suppressed=True, phone_suppressed=False)
        assert contact.updates_for({}, states) == {"HasOptedOutOfEmail": True, "DoNotCall": False}

    def test_states_it_does_not_have_write_nothing(self, starter: Config) -> None:
        contact = example("contact", starter)
        assert contact.updates_for({"HasOptedOutOfEmail": False}, {}) == {}

    def test_text_booleans_count_as_the_same_value(self) -> None:
        mapping = parse_mapping(MINIMAL, FILE)
        states = self.contact_states(email_suppressed=True, phone_suppressed=False)
        assert mapping.updates_for({"HasOptedOutOfEmail": "true"}, states) == {}

    def test_most_restrictive_channel_wins(self, starter: Config) -> None:
        individual = example("individual", starter)
        states = {
            ("profiling", channel): state(
                "profiling", channel, suppressed=channel == "sms", basis=LawfulBasis.LEGITIMATE_INTERESTS
            )
            for channel in ("email", "phone", "sms", "post")
        }
        states[("email_marketing", "email")] = state("email_marketing", "email", suppressed=False)
        record = {"HasOptedOutProfiling": False, "HasOptedOutSolicit": False}
        assert individual.updates_for(record, states) == {"HasOptedOutProfiling": True}

    def test_a_push_table_without_allowed_never_clears(self) -> None:
        mapping = parse_mapping(replaced("{suppressed: true, allowed: false}", "{suppressed: true}"), FILE)
        states = self.contact_states(email_suppressed=False, phone_suppressed=False)
        assert mapping.updates_for({"HasOptedOutOfEmail": True}, states) == {}
        states = self.contact_states(email_suppressed=True, phone_suppressed=False)
        assert mapping.updates_for({"HasOptedOutOfEmail": False}, states) == {"HasOptedOutOfEmail": True}

    def test_pull_only_fields_are_never_written(self, starter: Config) -> None:
        cptc = example("contact_point_type_consent", starter)
        states = {("email_marketing", "email"): state("email_marketing", "email", suppressed=True)}
        assert cptc.updates_for(CONSENT, states) == {}

    def test_basis_by_the_ledger_basis(self) -> None:
        text = MINIMAL + (
            "    basis:\n"
            "      field: Legal_Basis__c\n"
            "      direction: both\n"
            "      pull: {Contract: contract, Consent: consent}\n"
            "      push: {contract: Contract, consent: Consent}\n"
        )
        mapping = parse_mapping(text, FILE)
        assert mapping.push_fields() == ["HasOptedOutOfEmail", "Legal_Basis__c"]
        states = self.contact_states(email_suppressed=True, phone_suppressed=False)
        record = {"HasOptedOutOfEmail": True, "Legal_Basis__c": None}
        assert mapping.updates_for(record, states) == {"Legal_Basis__c": "Contract"}
        assert mapping.updates_for({**record, "Legal_Basis__c": "Contract"}, states) == {}
        # A basis no evidence stated (the purpose's default filled in) is never written.
        states[("service", "email")] = state("service", "email", suppressed=True, basis_stated=False)
        states[("service", "phone")] = state(
            "service", "phone", suppressed=False, basis=LawfulBasis.CONTRACT, basis_stated=False
        )
        assert mapping.updates_for(record, states) == {}
        # A basis the push table does not name leaves the field alone.
        states[("service", "phone")] = state(
            "service", "phone", suppressed=False, basis=LawfulBasis.VITAL_INTERESTS
        )
        assert mapping.updates_for(record, states) == {}


class TestConsentRowUpdates:
    """A record that names its own purpose and channel (a consent row) is written to show the
    person's no for the purpose and channel it shows, and nothing else."""

    ROW: ClassVar[dict[str, Any]] = {
        "msdynmkt_contactpointconsent4id": "c1",
        "msdynmkt_purposeid": "6f0b1c7e-0d6a-4c1e-9a51-000000000001",  # email marketing
        "msdynmkt_contactpointtype": 534120000,  # email
        "msdynmkt_value": 534120001,  # Opted in
    }

    def rows(self, starter: Config) -> Mapping:
        return load_mapping(
            CONNECTORS / "consentsync_dynamics" / "mappings" / "contact_point_consent.yaml",
            purposes=starter.purposes,
            channels=starter.channels,
        )

    def test_the_persons_no_opts_out_the_row_of_its_purpose(self, starter: Config) -> None:
        rows = self.rows(starter)
        said_no = {("email_marketing", "email"): state("email_marketing", "email", suppressed=True)}
        assert rows.updates_for(self.ROW, said_no) == {"msdynmkt_value": 534120002}
        other = {**self.ROW, "msdynmkt_purposeid": "6f0b1c7e-0d6a-4c1e-9a51-000000000002"}
        assert rows.updates_for(other, said_no) == {}  # profiling's row: not this no

    @pytest.mark.parametrize(
        "ledger_state",
        [
            state("email_marketing", "email", suppressed=False),  # allowed: no opt-in written
            EffectiveState(  # suppressed, but no one's no (a restriction)
                "email_marketing",
                "email",
                ConsentStatus.GRANTED,
                LawfulBasis.CONSENT,
                suppressed=True,
                rule="restriction_art18",
            ),
        ],
        ids=["allowed", "restricted"],
    )
    def test_nothing_but_a_no_is_written(self, starter: Config, ledger_state: EffectiveState) -> None:
        rows = self.rows(starter)
        out = {**self.ROW, "msdynmkt_value": 534120002}
        assert rows.updates_for(out, {("email_marketing", "email"): ledger_state}) == {}

    def test_a_row_whose_purpose_is_not_in_the_table_is_left_alone(self, starter: Config) -> None:
        rows = self.rows(starter)
        said_no = {("email_marketing", "email"): state("email_marketing", "email", suppressed=True)}
        assert rows.updates_for({**self.ROW, "msdynmkt_purposeid": "unknown"}, said_no) == {}
