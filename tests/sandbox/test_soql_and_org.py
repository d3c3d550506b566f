"""The sandbox's building blocks without HTTP: ids, the SOQL parser and binder, the org store and
its seeding, and the demo entry point."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
import requests
from consentsync_salesforce.sandbox import RecordError, SalesforceOrg, serve_forever
from consentsync_salesforce.sandbox.ids import IdGenerator, checksum, is_valid_id, to18
from consentsync_salesforce.sandbox.org import format_datetime, parse_api_datetime
from consentsync_salesforce.sandbox.soql import SoqlError, bind, parse, parse_datetime_literal

from tests.sandbox.serving import served

NOW = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)


def test_ids() -> None:
    assert checksum("001A0000006Vm9r") == "IAC"
    assert to18("001A0000006Vm9r") == "001A0000006Vm9rIAC"
    assert to18("001A0000006Vm9riac") == "001A0000006Vm9rIAC"  # the suffix is case-insensitive
    assert to18("001A0000006Vm9rIAB") is None
    assert not is_valid_id("abc") and not is_valid_id("001A0000006Vm9r!")
    gen = IdGenerator()
    made = [gen.new("003") for _ in range(200)]
    assert made == sorted(made) and all(is_valid_id(i) and i.startswith("003") for i in made)
    assert gen.new("00Q").startswith("00Q")


@pytest.mark.parametrize(
    "literal",
    [
        "2026-11-23T03:21:24Z",
        "2026-11-23T03:21:24+00:00",
        "2026-11-23T03:21:24.000+0000",
        "2026-11-23T04:21:24+01:00",
    ],
)
def test_datetime_literals(literal: str) -> None:
    assert parse_datetime_literal(literal) == dt.datetime(2026, 11, 23, 3, 21, 24, tzinfo=dt.UTC)
    assert parse_api_datetime(literal) == dt.datetime(2026, 11, 23, 3, 21, 24, tzinfo=dt.UTC)


def test_format_datetime_is_whole_second_salesforce_layout() -> None:
    value = dt.datetime(2026, 11, 23, 4, 21, 24, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert format_datetime(value) == "2026-11-23T03:21:24.000+0000"


def test_parser_structure() -> None:
    query = parse(
        "select Id, email from CONTACT where (Email = 'a\\'b' or Email like 'x\\_%') "
        "and not DoNotCall = true order by SystemModstamp desc nulls last, Id limit 10 offset 5"
    )
    assert [f.name for f in query.fields] == ["Id", "email"]
    assert query.sobject == "CONTACT" and query.limit == 10 and query.offset == 5
    assert [(o.field.name, o.descending, o.nulls_first) for o in query.order_by] == [
        ("SystemModstamp", True, False),
        ("Id", False, True),
    ]
    org = SalesforceOrg()
    bound = bind(query, org.resolve)
    assert bound.fields == ["Id", "Email"] and bound.sobject.name == "Contact"


@pytest.mark.parametrize(
    ("soql", "code"),
    [
        ("SELECT Id FROM Contact WHERE A = 1 AND B = 2 OR C = 3", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE (A = 1 AND B = 2) OR (C = 3", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact LIMIT -1", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact OFFSET 2001", "NUMBER_OUTSIDE_VALID_RANGE"),
        ("SELECT Id, (SELECT Id FROM Contacts) FROM Account", "MALFORMED_QUERY"),
        ("SELECT MAX(CreatedDate) FROM Contact", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE CreatedDate = TODAY", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE Email = 'unterminated", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact WHERE CreatedDate > 2026-13-01T00:00:00Z", "MALFORMED_QUERY"),
    ],
)
def test_parser_errors(soql: str, code: str) -> None:
    with pytest.raises(SoqlError) as raised:
        parse(soql)
    assert raised.value.error_code == code


def test_org_query_semantics() -> None:
    org = SalesforceOrg(clock=lambda: NOW)
    a = org.create("Contact", LastName="Alpha", Email="Alpha@Example.com", Legal_Basis__c="Consent")
    b = org.create("Contact", LastName="beta", Email="beta@example.com")
    c = org.create("Contact", LastName="Gamma")
    assert org.query("SELECT Id FROM Contact WHERE Email = 'alpha@example.COM'") == [{"Id": a}]
    assert {r["Id"] for r in org.query("SELECT Id FROM Contact WHERE Legal_Basis__c != 'Consent'")} == {b, c}
    assert [r["Id"] for r in org.query("SELECT Id FROM Contact ORDER BY Email")] == [c, a, b]
    assert [r["Id"] for r in org.query("SELECT Id FROM Contact ORDER BY Email DESC")] == [c, b, a]
    assert [r["Id"] for r in org.query("SELECT Id FROM Contact ORDER BY Email DESC NULLS LAST")] == [b, a, c]
    assert [r["Id"] for r in org.query("SELECT Id FROM Contact ORDER BY LastName")] == [a, b, c]
    assert org.query("SELECT COUNT() FROM Contact WHERE Email LIKE '%EXAMPLE.com'") == [{"expr0": 2}]
    assert org.query("SELECT Id FROM Contact WHERE Email IN ('BETA@example.com', null)") == [
        {"Id": b},
        {"Id": c},
    ]


def test_org_validation_and_user_mutations() -> None:
    moments = iter([NOW, NOW + dt.timedelta(seconds=90, microseconds=500)])
    org = SalesforceOrg(clock=lambda: next(moments))
    record_id = org.create("Contact", LastName="Ng", Email="ng@example.com")
    assert org.get(record_id)["SystemModstamp"] == NOW
    org.update(record_id, HasOptedOutOfEmail=True, Title="CFO")
    record = org.get(record_id)
    assert record["SystemModstamp"] == record["LastModifiedDate"] == NOW + dt.timedelta(seconds=90)
    assert record["CreatedDate"] == NOW and record["Name"] == "Ng"
    with pytest.raises(RecordError) as raised:
        org.update(record_id, Legal_Basis__c="Whim")
    assert raised.value.status_code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    with pytest.raises(RecordError) as raised:
        org.update(record_id, LastName=None)
    assert raised.value.status_code == "REQUIRED_FIELD_MISSING"
    with pytest.raises(RecordError) as raised:
        org.update(record_id, IndividualId=record_id)
    assert raised.value.status_code == "MALFORMED_ID"
    with pytest.raises(RecordError) as raised:
        org.update(record_id, Email="x" * 75 + "@example.com")
    assert raised.value.status_code == "STRING_TOO_LONG"


def test_org_recycle_bin_merge_and_late_commit() -> None:
    clock = {"now": NOW}
    org = SalesforceOrg(clock=lambda: clock["now"])
    survivor = org.create("Lead", LastName="Keep", Company="Acme", Email="keep@example.com")
    merged = org.create("Lead", LastName="Dup", Company="Acme", Email="KEEP@example.com")
    late = org.begin_create("Lead", LastName="Late", Company="Acme")
    assert org.count("Lead") == 2 and org.get(late) is None
    assert org.updated_ids("Lead", NOW, NOW + dt.timedelta(minutes=1)) == [survivor, merged]
    clock["now"] = NOW + dt.timedelta(minutes=5)
    org.merge(survivor, merged)
    gone = org.get(merged)
    assert gone["IsDeleted"] is True and gone["MasterRecordId"] == survivor
    assert gone["SystemModstamp"] == org.get(survivor)["SystemModstamp"] == clock["now"]
    assert org.deleted_records("Lead", NOW, clock["now"] + dt.timedelta(seconds=1)) == [
        (merged, clock["now"])
    ]
    assert org.query("SELECT Id FROM Lead WHERE IsDeleted = true") == []
    assert org.query("SELECT Id FROM Lead WHERE IsDeleted = true", include_deleted=True) == [{"Id": merged}]
    org.commit(late)
    assert org.get(late)["SystemModstamp"] == NOW and org.count("Lead") == 2
    with pytest.raises(RecordError, match="INVALID_FIELD_FOR_INSERT_UPDATE"):
        org.update(survivor, MasterRecordId=merged)
    assert org.delete_many([survivor, survivor], all_or_none=False)[1].status_code == "ENTITY_IS_DELETED"


def test_seed_is_realistic_and_deterministic() -> None:
    first, second = SalesforceOrg(), SalesforceOrg()
    summary = first.seed(800, seed=21, now=NOW)
    second.seed(800, seed=21, now=NOW)
    strip = ("Id", "OwnerId", "CreatedById", "LastModifiedById", "IndividualId")
    assert [{k: v for k, v in r.items() if k not in strip} for r in first.records("Contact")] == [
        {k: v for k, v in r.items() if k not in strip} for r in second.records("Contact")
    ]
    contacts = first.records("Contact")
    assert len(contacts) == len(summary["contacts"]) > 800  # some people are in twice
    emails = Counter(r["Email"].casefold() for r in contacts)
    assert any(n > 1 for n in emails.values())
    lead_emails = {r["Email"].casefold() for r in first.records("Lead")}
    assert lead_emails and lead_emails <= set(emails)
    assert any(r["Email"] != r["Email"].lower() for r in first.records("Lead") + contacts)
    bases = Counter(r["Legal_Basis__c"] for r in contacts)
    assert {None, "Consent", "Legitimate Interest", "Contract"} <= set(bases)
    assert 0 < sum(r["HasOptedOutOfEmail"] for r in contacts) < len(contacts)
    assert 0 < sum(r["DoNotCall"] for r in contacts) < len(contacts)
    linked = [r for r in contacts if r["IndividualId"]]
    assert 0 < len(linked) < len(contacts)
    consents = first.records("ContactPointTypeConsent")
    assert {c["PrivacyConsentStatus"] for c in consents} == {"OptIn", "OptOut"}
    assert all(c["PartyId"].startswith("0PK") and c["DataUsePurposeId"].startswith("0ZW") for c in consents)
    assert all(c["CaptureDate"] <= c["SystemModstamp"] and c["CaptureSource"] for c in consents)
    stamps = Counter(r["SystemModstamp"] for r in contacts)
    assert stamps.most_common(1)[0][1] >= 50
    assert all(NOW - dt.timedelta(days=7) <= s < NOW and s.microsecond == 0 for s in stamps)
    assert all(r["CreatedDate"] <= r["SystemModstamp"] for r in contacts)


def test_no_seeded_consent_is_confirmed_after_its_record_last_changed() -> None:
    """A double opt-in is recorded on the record, so its time is never after the record's stamp
    (a seed just made would otherwise carry confirmations in the future, which a sync rightly
    quarantines). About one confirmation in 500 fell there, so the org is large enough to show it."""
    org = SalesforceOrg()
    org.seed(20_000, seed=7, now=NOW)
    confirmed = [c for c in org.records("ContactPointTypeConsent") if c["DoubleConsentCaptureDate"]]
    assert len(confirmed) > 1000
    late = [c["Id"] for c in confirmed if c["DoubleConsentCaptureDate"] > c["SystemModstamp"]]
    assert late == []
    assert all(c["CaptureDate"] <= c["DoubleConsentCaptureDate"] for c in confirmed)


def test_serve_forever_prints_how_to_connect(capsys: pytest.CaptureFixture[str]) -> None:
    with served(serve_forever, records=100) as sandbox:
        output = capsys.readouterr().out
        assert sandbox.instance_url in output and str(sandbox.ca_bundle_path) in output
        assert sandbox.credentials.client_secret in output
        token = requests.post(
            sandbox.token_url, data=sandbox.password_form(), verify=str(sandbox.ca_cert_path)
        )
        assert token.status_code == 200
        assert sandbox.org.count("Contact") >= 100
