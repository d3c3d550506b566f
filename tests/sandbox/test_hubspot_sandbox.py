"""The HubSpot sandbox against HubSpot's documented wire format, with plain requests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from consentsync_hubspot.sandbox.server import HubSpotCredentials, HubSpotPortal, HubSpotSandbox, iso_ms


@pytest.fixture
def sandbox() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox(HubSpotPortal(), secondly_limit=1000, search_per_second=1000) as server:
        server.portal.seed(60, seed=4)
        yield server


@pytest.fixture
def api(sandbox: HubSpotSandbox) -> requests.Session:
    session = sandbox.requests_session()
    session.headers["Authorization"] = f"Bearer {sandbox.credentials.access_token}"
    return session


def search(api: requests.Session, sandbox: HubSpotSandbox, **body: Any) -> requests.Response:
    return api.post(f"{sandbox.api_url}/crm/v3/objects/contacts/search", json=body)


def test_missing_and_wrong_tokens_answer_401_bodies(sandbox: HubSpotSandbox) -> None:
    session = sandbox.requests_session()
    url = f"{sandbox.api_url}/crm/v3/objects/contacts"
    missing = session.get(url)
    assert missing.status_code == 401
    assert missing.json()["category"] == "INVALID_AUTHENTICATION"
    assert missing.json()["status"] == "error" and missing.json()["correlationId"]
    wrong = session.get(url, headers={"Authorization": "Bearer pat-na1-nope"})
    assert wrong.status_code == 401 and "invalid" in wrong.json()["message"]


def test_a_missing_scope_answers_403_naming_it(sandbox: HubSpotSandbox, api: requests.Session) -> None:
    sandbox.credentials = HubSpotCredentials(
        access_token=sandbox.credentials.access_token, scopes=frozenset({"crm.objects.contacts.read"})
    )
    answer = api.get(f"{sandbox.api_url}/communication-preferences/v3/definitions")
    assert answer.status_code == 403
    body = answer.json()
    assert body["category"] == "MISSING_SCOPES"
    assert body["errors"][0]["context"]["requiredGranularScopes"] == ["communication_preferences.read"]


def test_search_filters_sorts_and_pages(sandbox: HubSpotSandbox, api: requests.Session) -> None:
    middle = sandbox.portal.now() - dt.timedelta(days=3)
    body = {
        "filterGroups": [
            {
                "filters": [
                    {
                        "propertyName": "lastmodifieddate",
                        "operator": "GT",
                        "value": str(int(middle.timestamp() * 1000)),
                    }
                ]
            }
        ],
        "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
        "properties": ["email", "hs_legal_basis"],
        "limit": 7,
    }
    first = search(api, sandbox, **body).json()
    expected = sum(1 for cid in sandbox.portal.ids() if sandbox.portal.get(cid)["lastmodifieddate"] > middle)
    assert first["total"] == expected
    assert len(first["results"]) == min(7, expected)
    stamps = [r["properties"]["lastmodifieddate"] for r in first["results"]]
    assert stamps == sorted(stamps)
    assert set(first["results"][0]["properties"]) >= {
        "email",
        "hs_legal_basis",
        "hs_object_id",
        "lastmodifieddate",
    }
    seen = [r["id"] for r in first["results"]]
    after = first.get("paging", {}).get("next", {}).get("after")
    while after:
        page = search(api, sandbox, **body, after=after).json()
        seen += [r["id"] for r in page["results"]]
        after = page.get("paging", {}).get("next", {}).get("after")
    assert len(seen) == len(set(seen)) == expected
    # ISO dates are accepted as filter values too; OR between groups, AND within one.
    either = search(
        api,
        sandbox,
        filterGroups=[
            {"filters": [{"propertyName": "hs_object_id", "operator": "EQ", "value": "101"}]},
            {"filters": [{"propertyName": "hs_object_id", "operator": "IN", "values": ["102", "103"]}]},
        ],
    ).json()
    assert sorted(r["id"] for r in either["results"]) == ["101", "102", "103"]


def test_ties_on_the_sort_property_do_not_come_in_id_order(
    sandbox: HubSpotSandbox, api: requests.Session
) -> None:
    moment = sandbox.portal.now() - dt.timedelta(hours=2)
    made = [sandbox.portal.create({"email": f"tie{i}@example.test"}, at=moment) for i in range(20)]
    stamp = str(int(moment.timestamp() * 1000))
    page = search(
        api,
        sandbox,
        filterGroups=[{"filters": [{"propertyName": "lastmodifieddate", "operator": "EQ", "value": stamp}]}],
        sorts=[{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
        limit=50,
    ).json()
    ids = [r["id"] for r in page["results"]]
    assert sorted(ids, key=int) == sorted(made, key=int)
    assert ids != sorted(ids, key=int)


@pytest.mark.parametrize(
    "body",
    [
        {"sorts": [{"propertyName": "email"}, {"propertyName": "lastname"}]},
        {"limit": 201},
        {"filterGroups": [{"filters": [{"propertyName": "email", "operator": "HAS_PROPERTY"}] * 7}]},
        {
            "filterGroups": [
                {"filters": [{"propertyName": "no_such_property", "operator": "EQ", "value": "x"}]}
            ]
        },
        {"filterGroups": [{"filters": [{"propertyName": "email", "operator": "LIKE", "value": "x"}]}]},
        {"filterGroups": [{"filters": []}] * 6},
    ],
)
def test_search_refuses_what_hubspot_refuses(
    sandbox: HubSpotSandbox, api: requests.Session, body: dict[str, Any]
) -> None:
    answer = search(api, sandbox, **body)
    assert answer.status_code == 400
    assert answer.json()["category"] == "VALIDATION_ERROR"


def test_the_result_cap(sandbox: HubSpotSandbox, api: requests.Session) -> None:
    sandbox.search_result_cap = 25
    page = search(api, sandbox, limit=20, after="20").json()
    assert len(page["results"]) == 5 and page["total"] == 60
    assert search(api, sandbox, limit=20, after="25").status_code == 400


def test_batch_update_answers_207_for_some_failures(sandbox: HubSpotSandbox, api: requests.Session) -> None:
    ids = sandbox.portal.ids()[:3]
    sandbox.faults.fail_records(ids[1])
    inputs = [{"id": i, "properties": {"jobtitle": "Buyer"}} for i in ids] + [{"id": "999", "properties": {}}]
    answer = api.post(f"{sandbox.api_url}/crm/v3/objects/contacts/batch/update", json={"inputs": inputs})
    assert answer.status_code == 207
    body = answer.json()
    assert body["status"] == "COMPLETE" and body["numErrors"] == 2
    assert {r["id"] for r in body["results"]} == {ids[0], ids[2]}
    categories = {e["category"]: e["context"]["ids"] for e in body["errors"]}
    assert categories == {"OBJECT_NOT_FOUND": ["999"], "CONFLICT": [ids[1]]}
    every = api.post(
        f"{sandbox.api_url}/crm/v3/objects/contacts/batch/update",
        json={"inputs": [{"id": ids[0], "properties": {"jobtitle": "Chief"}}]},
    )
    assert every.status_code == 200 and "errors" not in every.json()


def test_batch_update_fails_whole_on_a_bad_value_or_too_many_inputs(
    sandbox: HubSpotSandbox, api: requests.Session
) -> None:
    ids = sandbox.portal.ids()
    url = f"{sandbox.api_url}/crm/v3/objects/contacts/batch/update"
    bad = api.post(
        url,
        json={
            "inputs": [
                {"id": ids[0], "properties": {"jobtitle": "ok"}},
                {"id": ids[1], "properties": {"hs_legal_basis": "Because"}},
            ]
        },
    )
    assert bad.status_code == 400 and "INVALID_OPTION" in bad.json()["message"]
    assert sandbox.portal.get(ids[0]).get("jobtitle") != "ok"
    read_only = api.post(url, json={"inputs": [{"id": ids[0], "properties": {"hs_email_optout": "true"}}]})
    assert read_only.status_code == 400 and "READ_ONLY_VALUE" in read_only.json()["message"]
    many = api.post(url, json={"inputs": [{"id": i, "properties": {}} for i in ids[:2]] * 51})
    assert many.status_code == 400


def test_multi_checkbox_values_join_with_semicolons(sandbox: HubSpotSandbox, api: requests.Session) -> None:
    contact = sandbox.portal.ids()[0]
    both = "Performance of a contract;Legitimate interest – existing customer"
    answer = api.post(
        f"{sandbox.api_url}/crm/v3/objects/contacts/batch/update",
        json={"inputs": [{"id": contact, "properties": {"hs_legal_basis": both}}]},
    )
    assert answer.status_code == 200
    assert answer.json()["results"][0]["properties"]["hs_legal_basis"] == both


def test_v3_will_not_resubscribe_an_unsubscribed_contact(
    sandbox: HubSpotSandbox, api: requests.Session
) -> None:
    email = sandbox.portal.get(sandbox.portal.ids()[0])["email"]
    url = f"{sandbox.api_url}/communication-preferences/v3"
    body = {
        "emailAddress": email,
        "subscriptionId": "1001",
        "legalBasis": "CONSENT_WITH_NOTICE",
        "legalBasisExplanation": "web form",
    }
    gone = api.post(f"{url}/unsubscribe", json=body)
    assert gone.status_code == 200 and gone.json()["status"] == "NOT_SUBSCRIBED"
    refused = api.post(f"{url}/subscribe", json=body)
    assert refused.status_code == 400
    assert refused.json()["status"] == "error" and "unsubscribed" in refused.json()["message"]
    assert sandbox.portal.status(email, "1001").status == "UNSUBSCRIBED"
    # A GDPR portal wants the legal basis and its explanation.
    other = sandbox.portal.get(sandbox.portal.ids()[1])["email"]
    bare = api.post(f"{url}/subscribe", json={"emailAddress": other, "subscriptionId": "1002"})
    assert bare.status_code == 400 and "legalBasis" in bare.json()["message"]
    wrong = api.post(f"{url}/subscribe", json={**body, "emailAddress": other, "legalBasis": "BECAUSE"})
    assert wrong.status_code == 400


def test_v4_reads_statuses_per_subscription(sandbox: HubSpotSandbox, api: requests.Session) -> None:
    email = sandbox.portal.get(sandbox.portal.ids()[2])["email"]
    sandbox.portal.set_status(
        email, "1002", "SUBSCRIBED", legal_basis="PERFORMANCE_OF_CONTRACT", explanation="order"
    )
    url = f"{sandbox.api_url}/communication-preferences/v4/statuses"
    assert api.post(f"{url}/batch/read", json={"inputs": [email]}).status_code == 400  # channel is required
    answer = api.post(f"{url}/batch/read", params={"channel": "EMAIL"}, json={"inputs": [email]}).json()
    (result,) = answer["results"]
    statuses = {s["subscriptionId"]: s for s in result["statuses"]}
    assert (
        statuses[1002]["status"] == "SUBSCRIBED" and statuses[1002]["legalBasis"] == "PERFORMANCE_OF_CONTRACT"
    )
    assert set(statuses) == {1001, 1002, 1003}
    single = api.get(f"{url}/{email}", params={"channel": "EMAIL"}).json()
    assert {s["subscriptionId"] for s in single["results"]} == {1001, 1002, 1003}


def test_an_opt_out_of_all_email_is_kept_apart_from_the_subscription_statuses(
    sandbox: HubSpotSandbox, api: requests.Session
) -> None:
    portal = sandbox.portal
    leaving, staying = (portal.get(cid)["email"] for cid in portal.ids()[4:6])
    portal.set_status(leaving, "1001", "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", explanation="form")
    before = portal.get(portal.find_by_email(leaving))["lastmodifieddate"]
    portal.unsubscribe_all(leaving, at=before + dt.timedelta(seconds=1))
    contact = portal.get(portal.find_by_email(leaving))
    assert contact["hs_email_optout"] == "true" and contact["lastmodifieddate"] > before
    url = f"{sandbox.api_url}/communication-preferences/v4/statuses/batch"
    statuses = api.post(f"{url}/read", params={"channel": "EMAIL"}, json={"inputs": [leaving]}).json()
    assert {s["subscriptionId"]: s["status"] for s in statuses["results"][0]["statuses"]}[
        1001
    ] == "SUBSCRIBED"
    wide = api.post(
        f"{url}/unsubscribe-all/read", params={"channel": "EMAIL"}, json={"inputs": [leaving, staying]}
    )
    assert wide.status_code == 200
    (result,) = wide.json()["results"]  # an address not opted out is not listed
    assert result["subscriberIdString"] == leaving
    assert result["wideStatuses"][0]["status"] == "UNSUBSCRIBED"
    assert result["wideStatuses"][0]["timestamp"] == iso_ms(contact["lastmodifieddate"])
    body = {
        "emailAddress": leaving,
        "subscriptionId": "1002",
        "legalBasis": "CONSENT_WITH_NOTICE",
        "legalBasisExplanation": "web form",
    }
    refused = api.post(f"{sandbox.api_url}/communication-preferences/v3/subscribe", json=body)
    assert refused.status_code == 400 and "unsubscribed from all email" in refused.json()["message"]
    # The contact's own opt-in on a form ends the opt-out of all email.
    portal.set_status(leaving, "1002", "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", source="Form")
    assert portal.opted_out_of_all(leaving) is None
    assert portal.get(portal.find_by_email(leaving))["hs_email_optout"] == "false"


def test_a_subscription_change_moves_lastmodifieddate(sandbox: HubSpotSandbox) -> None:
    contact = sandbox.portal.ids()[3]
    before = sandbox.portal.get(contact)["lastmodifieddate"]
    sandbox.portal.set_status(sandbox.portal.get(contact)["email"], "1001", "UNSUBSCRIBED")
    after = sandbox.portal.get(contact)
    assert after["lastmodifieddate"] > before and after["hs_email_optout_1001"] == "true"


def test_rate_limit_headers_and_429_bodies(sandbox: HubSpotSandbox, api: requests.Session) -> None:
    listed = api.get(f"{sandbox.api_url}/crm/v3/objects/contacts", params={"limit": 1})
    assert listed.headers["X-HubSpot-RateLimit-Daily"] == "250000"
    assert int(listed.headers["X-HubSpot-RateLimit-Daily-Remaining"]) < 250000
    assert "X-HubSpot-RateLimit-Secondly-Remaining" in listed.headers
    assert "X-HubSpot-RateLimit-Daily" not in search(api, sandbox).headers
    sandbox.faults.update(throttle_after=0, throttle_calls=1)
    throttled = api.get(f"{sandbox.api_url}/crm/v3/objects/contacts")
    assert throttled.status_code == 429
    assert throttled.json() | {"correlationId": "", "requestId": ""} == {
        "status": "error",
        "message": "You have reached your secondly limit.",
        "errorType": "RATE_LIMIT",
        "policyName": "SECONDLY",
        "correlationId": "",
        "requestId": "",
    }
    sandbox.set_daily_usage(250_000)
    daily = api.get(f"{sandbox.api_url}/crm/v3/objects/contacts")
    assert daily.status_code == 429 and daily.json()["policyName"] == "DAILY"


def test_the_secondly_window_is_enforced() -> None:
    with HubSpotSandbox(secondly_limit=3, search_per_second=2) as server:
        session = server.requests_session()
        session.headers["Authorization"] = f"Bearer {server.credentials.access_token}"
        codes = [session.get(f"{server.api_url}/crm/v3/objects/contacts").status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        assert server.rejections["SECONDLY"] >= 1


def test_faults_and_call_counting(sandbox: HubSpotSandbox, api: requests.Session) -> None:
    sandbox.reset_counters()
    sandbox.faults.update(error_rate=1.0, error_calls=1, error_kinds={"search"})
    assert search(api, sandbox).status_code == 503
    assert search(api, sandbox).status_code == 200
    api.get(f"{sandbox.api_url}/crm/v3/objects/contacts")
    assert sandbox.calls == {"search": 2, "list": 1}
    assert sandbox.faults_injected["http_503"] == 1
    with pytest.raises(ValueError):
        sandbox.faults.update(error_kinds={"query"})  # a Salesforce kind, not HubSpot's
    old = sandbox.credentials.access_token
    sandbox.faults.update(session_expiry_after=1)
    assert api.get(f"{sandbox.api_url}/crm/v3/objects/contacts").status_code == 200
    assert sandbox.credentials.access_token != old
    assert api.get(f"{sandbox.api_url}/crm/v3/objects/contacts").status_code == 401


def _all_ids(api: requests.Session, sandbox: HubSpotSandbox) -> set[str]:
    body = search(api, sandbox, limit=200, properties=["email"]).json()
    return {r["id"] for r in body["results"]}


def test_a_contact_the_index_lags_is_found_by_no_search_then_with_its_original_stamp(
    sandbox: HubSpotSandbox, api: requests.Session
) -> None:
    late = sandbox.portal.begin_late({"email": "late@example.test"})
    stamp = sandbox.portal.get(late)["lastmodifieddate"]
    assert late not in _all_ids(api, sandbox)
    # Read by id, the contact is there (only the search index lags the write).
    assert api.get(f"{sandbox.api_url}/crm/v3/objects/contacts/{late}").status_code == 200
    sandbox.portal.index(late)
    found = search(
        api,
        sandbox,
        filterGroups=[
            {"filters": [{"propertyName": "email", "operator": "EQ", "value": "late@example.test"}]}
        ],
    ).json()["results"]
    assert [r["id"] for r in found] == [late]
    assert found[0]["properties"]["lastmodifieddate"] == iso_ms(stamp)


def test_batch_archive_answers_204_and_the_archived_list_shows_archived_at(
    sandbox: HubSpotSandbox, api: requests.Session
) -> None:
    first, second = sandbox.portal.ids()[:2]
    url = f"{sandbox.api_url}/crm/v3/objects/contacts/batch/archive"
    answer = api.post(url, json={"inputs": [{"id": first}, {"id": second}, {"id": "999999"}]})
    assert answer.status_code == 204 and not answer.content
    assert not {first, second} & _all_ids(api, sandbox)
    assert api.get(f"{sandbox.api_url}/crm/v3/objects/contacts/{first}").status_code == 404
    listed = api.get(f"{sandbox.api_url}/crm/v3/objects/contacts", params={"archived": "true"}).json()
    assert [r["id"] for r in listed["results"]] == [first, second]
    assert all(r["archived"] is True and r["archivedAt"] for r in listed["results"])
    too_many = api.post(url, json={"inputs": [{"id": str(n)} for n in range(101)]})
    assert too_many.status_code == 400


def test_a_merged_contact_is_gone_and_named_by_the_primary(
    sandbox: HubSpotSandbox, api: requests.Session
) -> None:
    sandbox.portal.merges = "old"  # the primary keeps its id (merges before HubSpot's change)
    primary, merged, later = sandbox.portal.ids()[:3]
    url = f"{sandbox.api_url}/crm/v3/objects/contacts/merge"
    answer = api.post(url, json={"primaryObjectId": primary, "objectIdToMerge": merged})
    assert answer.status_code == 200
    assert answer.json()["properties"]["hs_merged_object_ids"] == merged
    # A read of the merged id answers the primary; it is in no list, not even the archived one.
    assert api.get(f"{sandbox.api_url}/crm/v3/objects/contacts/{merged}").json()["id"] == primary
    assert merged not in _all_ids(api, sandbox)
    archived = api.get(f"{sandbox.api_url}/crm/v3/objects/contacts", params={"archived": "true"}).json()
    assert archived["results"] == []
    # Merging the primary into another carries its merged ids along.
    api.post(url, json={"primaryObjectId": later, "objectIdToMerge": primary})
    assert sandbox.portal.get(later)["hs_merged_object_ids"] == f"{primary};{merged}"
    assert api.get(f"{sandbox.api_url}/crm/v3/objects/contacts/{merged}").json()["id"] == later
    assert api.post(url, json={"primaryObjectId": later, "objectIdToMerge": later}).status_code == 400


def test_the_anonymise_write_of_the_contacts_mapping_is_accepted(
    sandbox: HubSpotSandbox, api: requests.Session
) -> None:
    from pathlib import Path

    from consentsync.mapping import load_mapping

    mapping = Path(__file__).resolve().parents[2] / "connectors/consentsync_hubspot/mappings/contacts.yaml"
    fields = load_mapping(mapping).spec.personal_fields
    contact = sandbox.portal.ids()[0]
    properties = {name: "" if value is None else value for name, value in fields.items()}
    answer = api.post(
        f"{sandbox.api_url}/crm/v3/objects/contacts/batch/update",
        json={"inputs": [{"id": contact, "properties": properties}]},
    )
    assert answer.status_code == 200, answer.text
    record = sandbox.portal.get(contact)
    assert record["lastname"] == "Erased" and record["email"] is None and record["firstname"] is None
