"""Lead conversion in the Salesforce sandbox, as Salesforce documents it: the lead stays (every
query shows it, ``IsConverted`` true, the contact and account it went into named, its stamps
moved), read-only from then on (CANNOT_UPDATE_CONVERTED_LEAD, "cannot reference converted lead",
for the sObject row and per record in sObject Collections and Bulk API 2.0); the standard fields
go to a new contact, Email Opt Out and Do Not Call among them, but not to an existing contact
converted into (*Lead Conversion Field Mapping*: "This field isn't updated for leads converted
to existing contacts")."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from consentsync_salesforce.sandbox import RecordError, SalesforceSandbox

CONVERTED = "CANNOT_UPDATE_CONVERTED_LEAD"


@pytest.fixture
def sandbox() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as server:
        yield server


class _Api:
    def __init__(self, sandbox: SalesforceSandbox) -> None:
        self.sandbox = sandbox
        self.session = sandbox.requests_session()
        self.session.headers["Authorization"] = f"Bearer {sandbox.issue_token()}"

    def call(self, method: str, path: str, **how: Any) -> requests.Response:
        return self.session.request(method, f"{self.sandbox.data_url()}/{path}", timeout=10, **how)


def _lead(sandbox: SalesforceSandbox, email: str, **more: Any) -> str:
    return sandbox.org.create("Lead", LastName="Lind", FirstName="Grete", Company="Acme", Email=email, **more)


def test_a_converted_lead_stays_queryable_with_its_contact_and_its_stamps_moved(
    sandbox: SalesforceSandbox,
) -> None:
    org = sandbox.org
    lead = _lead(sandbox, "grete@example.test", HasOptedOutOfEmail=True, DoNotCall=True, Country="Germany")
    before = org.get(lead)
    assert before is not None and before["IsConverted"] is False and before["ConvertedContactId"] is None
    time.sleep(1.1)  # stamps are whole seconds
    result = org.convert_lead(lead)
    after = org.get(lead)
    assert after is not None
    assert after["IsConverted"] is True and after["IsDeleted"] is False
    assert after["ConvertedContactId"] == result["contactId"]
    assert after["ConvertedAccountId"] == result["accountId"] and result["accountId"].startswith("001")
    assert after["Status"] == "Closed - Converted"
    assert after["ConvertedDate"] == after["SystemModstamp"].date()
    assert after["SystemModstamp"] > before["SystemModstamp"]
    assert after["LastModifiedDate"] == after["SystemModstamp"]
    contact = org.get(result["contactId"])
    assert contact is not None
    assert (contact["Email"], contact["LastName"], contact["MailingCountry"]) == (
        "grete@example.test",
        "Lind",
        "Germany",
    )
    assert contact["HasOptedOutOfEmail"] is True and contact["DoNotCall"] is True
    assert contact["SystemModstamp"] == after["SystemModstamp"]  # one transaction

    # Over the wire: a plain query (not only queryAll) answers it, converted.
    api = _Api(sandbox)
    soql = f"SELECT Id, IsConverted, ConvertedContactId, ConvertedDate FROM Lead WHERE Id = '{lead}'"
    (row,) = api.call("GET", "query", params={"q": soql}).json()["records"]
    assert row["IsConverted"] is True and row["ConvertedContactId"] == result["contactId"]
    assert row["ConvertedDate"] == after["ConvertedDate"].isoformat()
    described = {f["name"]: f for f in api.call("GET", "sobjects/Lead/describe").json()["fields"]}
    for name in ("IsConverted", "ConvertedContactId", "ConvertedAccountId", "ConvertedDate"):
        assert described[name]["updateable"] is False, name
    assert described["ConvertedContactId"]["referenceTo"] == ["Contact"]


def test_a_lead_converted_into_an_existing_contact_leaves_its_opt_outs_as_they_were(
    sandbox: SalesforceSandbox,
) -> None:
    org = sandbox.org
    existing = org.create("Contact", LastName="Lind", Email="grete@example.test", Phone=None)
    lead = _lead(sandbox, "grete@example.test", HasOptedOutOfEmail=True, DoNotCall=True, Phone="+49 30 1")
    result = org.convert_lead(lead, contact_id=existing)
    assert result["contactId"] == existing
    contact = org.get(existing)
    assert contact is not None
    assert contact["HasOptedOutOfEmail"] is False and contact["DoNotCall"] is False
    assert contact["Phone"] == "+49 30 1"  # an empty field is filled
    assert org.count("Contact") == 1


def test_every_write_to_a_converted_lead_is_refused_with_cannot_update_converted_lead(
    sandbox: SalesforceSandbox,
) -> None:
    org = sandbox.org
    lead = _lead(sandbox, "grete@example.test")
    live = _lead(sandbox, "other@example.test")
    org.convert_lead(lead)
    stamp = org.get(lead)["SystemModstamp"]  # type: ignore[index]
    api = _Api(sandbox)

    # The sObject row: 400 with the error body.
    patched = api.call("PATCH", f"sobjects/Lead/{lead}", json={"HasOptedOutOfEmail": True})
    assert patched.status_code == 400, patched.text
    assert patched.json()[0]["errorCode"] == CONVERTED
    assert patched.json()[0]["message"] == "cannot reference converted lead"
    deleted = api.call("DELETE", f"sobjects/Lead/{lead}")
    assert deleted.status_code == 400 and deleted.json()[0]["errorCode"] == CONVERTED

    # sObject Collections: a per-record error; the other record of the call is saved.
    body = {
        "allOrNone": False,
        "records": [
            {"attributes": {"type": "Lead"}, "id": lead, "HasOptedOutOfEmail": True},
            {"attributes": {"type": "Lead"}, "id": live, "HasOptedOutOfEmail": True},
        ],
    }
    saved = api.call("PATCH", "composite/sobjects", json=body).json()
    assert saved[0]["success"] is False and saved[0]["errors"][0]["statusCode"] == CONVERTED
    assert saved[1]["success"] is True
    removed = api.call("DELETE", "composite/sobjects", params={"ids": lead, "allOrNone": "false"}).json()
    assert removed[0]["success"] is False and removed[0]["errors"][0]["statusCode"] == CONVERTED

    # Bulk API 2.0: the record's failedResults row.
    job = api.call(
        "POST", "jobs/ingest", json={"object": "Lead", "operation": "update", "lineEnding": "LF"}
    ).json()
    upload = f"Id,HasOptedOutOfEmail\n{lead},true\n".encode()
    assert (
        api.call(
            "PUT", f"jobs/ingest/{job['id']}/batches", data=upload, headers={"Content-Type": "text/csv"}
        ).status_code
        == 201
    )
    api.call("PATCH", f"jobs/ingest/{job['id']}", json={"state": "UploadComplete"})
    failed = api.call("GET", f"jobs/ingest/{job['id']}/failedResults/").text
    assert f'"{lead}","{CONVERTED}:cannot reference converted lead:--"' in failed, failed

    # As a user too; and a second conversion.
    with pytest.raises(RecordError) as refused:
        org.update(lead, DoNotCall=True)
    assert refused.value.status_code == CONVERTED
    with pytest.raises(RecordError):
        org.convert_lead(lead)
    after = org.get(lead)
    assert after is not None and after["HasOptedOutOfEmail"] is False and after["IsDeleted"] is False
    assert after["SystemModstamp"] == stamp, "a refused write moved the converted lead's stamps"
    assert org.get(live)["HasOptedOutOfEmail"] is True  # type: ignore[index]
    assert isinstance(after["ConvertedDate"], dt.date)
