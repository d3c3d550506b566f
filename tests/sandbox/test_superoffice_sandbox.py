"""The SuperOffice sandbox against SuperOffice's documentation: the Person agent's consent calls,
the ConsentPurpose archive (restrictions, ordering, paging), bearer and application-token
authentication, error bodies."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from consentsync_superoffice.sandbox.archive import parse_so_datetime
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
from consentsync_superoffice.sandbox.tenant import SuperOfficeTenant


@pytest.fixture
def so() -> Iterator[SuperOfficeSandbox]:
    with SuperOfficeSandbox(max_page_size=100) as server:
        server.tenant.seed(150, seed=2)
        yield server


def _client(so: SuperOfficeSandbox) -> tuple[requests.Session, dict[str, str], str]:
    return so.requests_session(), {"Authorization": f"Bearer {so.issue_token()}"}, so.tenant_url + "/api/v1"


def _agent(so: SuperOfficeSandbox, name: str, body: Any) -> requests.Response:
    session, headers, api = _client(so)
    return session.post(f"{api}/Agents/Person/{name}", headers=headers, json=body)


def test_a_new_person_gets_sales_and_service_on_legitimate_interest(so: SuperOfficeSandbox) -> None:
    person = so.tenant.create_person("Ada", "Lovelace", "ada@example.com")
    infos = _agent(so, "GetConsentInfos", {"PersonId": person.id}).json()
    assert [(i["ConsentPurposeName"], i["LegalBaseName"]) for i in infos] == [
        ("Sales and service", "Legitimate interest")
    ]
    info = infos[0]
    assert {"ConsentPersonId", "Registered", "Updated", "ConsentSourceKey", "LegalBaseKey", "Comment"} <= set(
        info
    )
    assert parse_so_datetime(info["Updated"]) == person.updated


def test_set_consent_then_withdrawal_then_has_consent(so: SuperOfficeSandbox) -> None:
    person = so.tenant.create_person("Bo", "Ek", "bo@example.com")
    body = {
        "PersonId": person.id,
        "Purpose": "EMARKETING",
        "Source": "FORM",
        "LegalBase": "CONSENT",
        "Comment": "web",
    }
    assert _agent(so, "SetConsent", body).status_code == 204
    assert _agent(so, "HasConsent", {"PersonId": person.id, "Purpose": "EMARKETING"}).json() is True
    assert _agent(so, "RemoveConsent", {"PersonId": person.id, "Purpose": "EMARKETING"}).status_code == 204
    # HasConsent: "Withdraw consents return FALSE"; GetConsentInfos still lists the withdrawn one.
    assert _agent(so, "HasConsent", {"PersonId": person.id, "Purpose": "EMARKETING"}).json() is False
    keys = {
        i["ConsentPurposeKey"]: i["LegalBaseKey"]
        for i in _agent(so, "GetConsentInfos", {"PersonId": person.id}).json()
    }
    assert keys["EMARKETING"] == "WITHDRAWN"


def test_remove_consent_can_delete_the_row_instead() -> None:
    with SuperOfficeSandbox(SuperOfficeTenant(remove_mode="delete")) as so:
        person = so.tenant.create_person("Cy", "Do", "cy@example.com")
        so.tenant.set_consent(person.id, "EMARKETING", "FORM", "CONSENT")
        assert (
            _agent(so, "RemoveConsent", {"PersonId": person.id, "Purpose": "EMARKETING"}).status_code == 204
        )
        assert so.tenant.consent(person.id, "EMARKETING") is None


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        (
            {"PersonId": 999999, "Purpose": "EMARKETING", "Source": "FORM", "LegalBase": "CONSENT"},
            404,
            "EntityNotFoundException",
        ),
        (
            {"PersonId": 1, "Purpose": "NOSUCH", "Source": "FORM", "LegalBase": "CONSENT"},
            400,
            "ArgumentException",
        ),
        (
            {"PersonId": 1, "Purpose": "EMARKETING", "Source": "FORM", "LegalBase": "NOSUCH"},
            400,
            "ArgumentException",
        ),
        (
            {"PersonId": "1", "Purpose": "EMARKETING", "Source": "FORM", "LegalBase": "CONSENT"},
            400,
            "ArgumentException",
        ),
    ],
)
def test_refused_writes_answer_superoffice_error_bodies(
    so: SuperOfficeSandbox, body: dict[str, Any], status: int, error_type: str
) -> None:
    response = _agent(so, "SetConsent", body)
    assert response.status_code == status
    assert response.json()["ErrorType"] == error_type and response.json()["Error"]


def test_without_a_valid_bearer_token_the_answer_is_401(so: SuperOfficeSandbox) -> None:
    session, _headers, api = _client(so)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dGplMDpUamUw"}):
        response = session.post(f"{api}/Agents/Person/HasConsent", headers=headers, json={"PersonId": 1})
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["ErrorType"] == "NotAuthenticated"


def test_online_requires_the_application_token() -> None:
    with SuperOfficeSandbox(app_token="app-secret") as so:
        session, headers, api = _client(so)
        url = f"{api}/archive/ConsentPurpose"
        assert session.get(url, headers=headers).status_code == 401
        assert session.get(url, headers={**headers, "SO-AppToken": "app-secret"}).status_code == 200


def test_refresh_token_grant(so: SuperOfficeSandbox) -> None:
    session = so.requests_session()
    c = so.credentials
    form = {"grant_type": "refresh_token", "client_id": c.client_id, "client_secret": c.client_secret}
    good = session.post(so.token_url, data={**form, "refresh_token": c.refresh_token})
    assert good.status_code == 200 and good.json()["token_type"] == "Bearer"
    token = good.json()["access_token"]
    answer = session.get(
        f"{so.tenant_url}/api/v1/archive/ConsentPurpose", headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200
    bad = session.post(so.token_url, data={**form, "refresh_token": "stolen"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"


def _archive(so: SuperOfficeSandbox, **params: str) -> requests.Response:
    session, headers, api = _client(so)
    return session.get(f"{api}/archive/ConsentPurpose", headers=headers, params=params)


def test_archive_lists_purposes_without_person_columns(so: SuperOfficeSandbox) -> None:
    rows = _archive(so, **{"$select": "key,name"}).json()["value"]
    assert [(r["key"], r["name"]) for r in rows] == [
        ("STORE", "Sales and service"),
        ("EMARKETING", "E-marketing"),
    ]


def test_archive_restriction_order_and_paging(so: SuperOfficeSandbox) -> None:
    tenant = so.tenant
    cutoff = sorted(r.person_id for r in tenant.consent_rows())[len(tenant.consent_rows()) // 2]
    select = "consentPerson/personId,consentPerson/updatedDate,consentPerson/consentPurpose/key"
    params = {
        "$select": select,
        "$filter": f"consentPerson/personId ge {cutoff} and consentPerson/consentPurpose/key eq 'EMARKETING'",
        "$orderby": "consentPerson/updatedDate asc,consentPerson/personId asc",
        "$top": "30",
    }
    expected = sorted(
        (r.updated, r.person_id)
        for r in tenant.consent_rows()
        if r.person_id >= cutoff and r.purpose.key == "EMARKETING"
    )
    got: list[tuple[dt.datetime, int]] = []
    answer = _archive(so, **params).json()
    session, headers, _api = _client(so)
    while True:
        got += [
            (parse_so_datetime(r["consentPerson/updatedDate"]), r["consentPerson/personId"])
            for r in answer["value"]
        ]
        link = answer.get("odata.nextLink")
        if not link:
            break
        answer = session.get(link, headers=headers).json()
    assert got == expected and len(expected) > 30


def _updated_people(so: SuperOfficeSandbox, restriction: str) -> list[int]:
    answer = _archive(
        so,
        **{
            "$select": "consentPerson/personId",
            "$filter": f"consentPerson/updatedDate {restriction}"
            " and consentPerson/consentPurpose/key eq 'STORE'",
            "$orderby": "consentPerson/personId",
        },
    )
    assert answer.status_code == 200, answer.text
    return [r["consentPerson/personId"] for r in answer.json()["value"]]


@pytest.mark.parametrize("inclusive", [False, True])
def test_updated_date_is_a_date_column_only_its_date_part_is_used(inclusive: bool) -> None:
    # ConsentPurpose provider: consentPerson/updatedDate is of restriction type "date", for which
    # "only the date part is used" (Archive Provider Restriction Types), with the date operators
    # GET Archive/{provider} lists (before, date, after, dateBetween, ...).
    tenant = SuperOfficeTenant(date_bounds_inclusive=inclusive)
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday_noon = tenant.create_person("A", "y", None, at=today - dt.timedelta(hours=12)).id
    early = tenant.create_person("B", "t", None, at=today + dt.timedelta(seconds=1)).id
    now = tenant.create_person("C", "n", None).id
    with SuperOfficeSandbox(tenant) as so:
        late_today = f"'{dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1):%Y-%m-%dT%H:%M:%S}'"
        assert _updated_people(so, f"date {late_today}") == [early, now]  # the time is dropped
        assert _updated_people(so, f"date '{today:%Y.%m.%d}'") == [early, now]
        assert _updated_people(so, "today") == [early, now]
        assert _updated_people(so, "beforeToday") == [yesterday_noon]
        after_yesterday = _updated_people(so, f"after '{today - dt.timedelta(days=1):%Y.%m.%d}'")
        before_today = _updated_people(so, f"before '{today:%Y.%m.%d}'")
        if inclusive:
            assert after_yesterday == [yesterday_noon, early, now]
            assert before_today == [yesterday_noon, early, now]
        else:
            assert after_yesterday == [early, now]
            assert before_today == [yesterday_noon]
        span = f"dateBetween ('{today - dt.timedelta(days=1):%Y.%m.%d}', '{today:%Y.%m.%d}')"
        assert _updated_people(so, span) == [yesterday_noon, early, now]
        for operator in ("ge", "lt", "gt", "eq", ">=", "<"):
            refused = _archive(so, **{"$filter": f"consentPerson/updatedDate {operator} {late_today}"})
            assert refused.status_code == 400, operator
            assert "does not apply to date column" in refused.json()["Error"]


@pytest.mark.parametrize("comment", ["x" * 256, "\U0001f600" * 128])
def test_set_consent_refuses_a_comment_longer_than_the_consent_comment_column(
    so: SuperOfficeSandbox, comment: str
) -> None:
    # ConsentPerson.comment is String(255) (database reference): UTF-16 code units, an emoji 2.
    person = so.tenant.create_person("Cy", "Ek", "cy@example.com")
    body = {"PersonId": person.id, "Purpose": "EMARKETING", "Source": "FORM", "LegalBase": "CONSENT"}
    refused = _agent(so, "SetConsent", {**body, "Comment": comment})
    assert refused.status_code == 400 and refused.json()["ErrorType"] == "ArgumentException"
    assert so.tenant.consent(person.id, "EMARKETING") is None
    assert _agent(so, "SetConsent", {**body, "Comment": comment[: len(comment) // 2 - 1]}).status_code == 204


def test_archive_strings_take_backslash_escapes_and_bad_restrictions_are_400(so: SuperOfficeSandbox) -> None:
    person = so.tenant.create_person("Quote", "Test", "o'brien\\x@example.com")
    select = "consentPerson/personId"
    value = "o\\'brien\\\\x@example.com"
    rows = _archive(
        so, **{"$select": select, "$filter": f"consentPerson/person/email/emailAddress eq '{value}'"}
    ).json()
    assert [r["consentPerson/personId"] for r in rows["value"]] == [person.id]
    for bad in (
        "nosuch eq 1",
        "consentPerson/personId eq 'x'",
        "consentPerson/personId eq",
        "(consentPerson/personId eq 1",
    ):
        response = _archive(so, **{"$select": select, "$filter": bad})
        assert response.status_code == 400, bad
        assert response.json()["ErrorType"] == "ArgumentException"


def test_faults_and_counting(so: SuperOfficeSandbox) -> None:
    so.reset_counters()
    so.faults.update(error_rate=1.0, error_calls=1)
    assert _archive(so).status_code == 503
    assert _archive(so).status_code == 200
    so.faults.update(throttle_after=0, throttle_calls=1, throttle_retry_after=2)
    throttled = _archive(so)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "2"
    so.faults.fail_records("1")
    busy = _agent(
        so, "SetConsent", {"PersonId": 1, "Purpose": "STORE", "Source": "FORM", "LegalBase": "CONSENT"}
    )
    assert busy.status_code == 409 and busy.json()["ErrorType"] == "ConcurrencyException"
    assert so.calls["archive"] == 3 and so.write_calls == 1


# -- late commits, DELETE and PATCH Person -------------------------------------------------------


def _archive_people(so: SuperOfficeSandbox, person_id: int) -> set[int]:
    """The persons the ConsentPurpose archive shows among ``person_id``'s consent rows."""
    session, headers, api = _client(so)
    answer = session.get(
        f"{api}/archive/ConsentPurpose",
        headers=headers,
        params={
            "$select": "consentPerson/personId,consentPerson/updatedDate",
            "$filter": f"consentPerson/personId eq {person_id}",
        },
    ).json()
    return {int(row["consentPerson/personId"]) for row in answer["value"]}


def test_a_late_commit_shows_nowhere_until_it_commits_then_with_its_first_stamp(
    so: SuperOfficeSandbox,
) -> None:
    began = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=40)
    so.tenant.clock = lambda: began
    late = so.tenant.begin_late_person(
        "Late", "Saver", "late@example.com", [("EMARKETING", "FORM", "CONSENT", "")]
    )
    so.tenant.clock = lambda: dt.datetime.now(dt.UTC)
    session, headers, api = _client(so)
    assert late.id not in _archive_people(so, late.id)
    assert _agent(so, "GetConsentInfos", {"PersonId": late.id}).json() == []
    assert session.get(f"{api}/Person/{late.id}", headers=headers).status_code == 404
    so.tenant.commit_late(late.id)
    assert late.id in _archive_people(so, late.id)
    infos = _agent(so, "GetConsentInfos", {"PersonId": late.id}).json()
    assert {i["ConsentPurposeKey"] for i in infos} == {"STORE", "EMARKETING"}
    assert all(parse_so_datetime(i["Updated"]) == began for i in infos)


def test_delete_person_answers_204_then_the_person_is_gone_from_every_read(so: SuperOfficeSandbox) -> None:
    session, headers, api = _client(so)
    person = so.tenant.create_person("Gone", "Soon", "gone@example.com")
    assert session.delete(f"{api}/Person/{person.id}", headers=headers).status_code == 204
    assert session.get(f"{api}/Person/{person.id}", headers=headers).status_code == 404
    assert person.id not in _archive_people(so, person.id)
    assert _agent(so, "GetConsentInfos", {"PersonId": person.id}).json() == []
    again = session.delete(f"{api}/Person/{person.id}", headers=headers)
    assert again.status_code == 404 and again.json()["ErrorType"] == "EntityNotFoundException"
    assert session.delete(f"{api}/Person/abc", headers=headers).status_code == 400


def test_patch_person_takes_json_patch_and_merge_patch(so: SuperOfficeSandbox) -> None:
    session, headers, api = _client(so)
    person = so.tenant.create_person("Ada", "Lovelace", "ada@example.com")
    patch = [
        {"op": "replace", "path": "/Firstname", "value": None},
        {"op": "replace", "path": "lastname", "value": "Erased"},
        {"op": "replace", "path": "/Emails", "value": []},
        {"op": "add", "path": "/MobilePhones", "value": [{"Value": "+47 1"}]},
    ]
    answer = session.patch(f"{api}/Person/{person.id}", headers=headers, json=patch)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["Firstname"], body["Lastname"], body["Emails"]) == ("", "Erased", [])
    assert [m["Value"] for m in body["MobilePhones"]] == ["+47 1"]
    merge = session.patch(f"{api}/Person/{person.id}", headers=headers, json={"Title": "Dr"})
    assert merge.json()["Title"] == "Dr"
    unknown = session.patch(
        f"{api}/Person/{person.id}", headers=headers, json=[{"op": "replace", "path": "/Nope"}]
    )
    assert unknown.status_code == 400
    nameless = session.patch(f"{api}/Person/{person.id}", headers=headers, json={"Lastname": None})
    assert nameless.status_code == 400  # a person needs a first or last name
    assert session.patch(f"{api}/Person/999999", headers=headers, json={"Title": "x"}).status_code == 404


def test_archive_updated_dates_are_utc_and_tagged_only_when_asked(so: SuperOfficeSandbox) -> None:
    # SuperOffice "SOTimezone": created/updated dates are always UTC, untagged, unless the
    # request's SO-TimeZone header carries includeTZOffset (then tagged as UTC).
    session, headers, api = _client(so)
    params = {"$select": "consentPerson/personId,consentPerson/updatedDate", "$top": "5"}
    plain = session.get(f"{api}/archive/ConsentPurpose", headers=headers, params=params).json()["value"]
    tagged = session.get(
        f"{api}/archive/ConsentPurpose",
        headers={**headers, "SO-TimeZone": "UTC, includeTZOffset"},
        params=params,
    ).json()["value"]
    assert plain and all(not r["consentPerson/updatedDate"].endswith("Z") for r in plain)
    column = "consentPerson/updatedDate"
    assert [r[column] for r in tagged] == [r[column] + "Z" for r in plain]
    assert {parse_so_datetime(r["consentPerson/updatedDate"]) for r in tagged} == {
        parse_so_datetime(r["consentPerson/updatedDate"]) for r in plain
    }
