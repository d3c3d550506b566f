"""The Vtiger sandbox against Vtiger's documented wire format: raw HTTPS calls with requests, as a
client that is not our connector would make them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from consentsync_vtiger.sandbox.server import (
    CONSENT_STATES,
    VtigerCrm,
    VtigerError,
    VtigerSandbox,
    addslashes,
    serve_forever,
    stripslashes,
)
from consentsync_vtiger.sandbox.vtql import VtqlError, parse, quote, unquote

from tests.sandbox.serving import served


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    with VtigerSandbox() as server:
        server.crm.seed(300, seed=2)
        yield server


class Client:
    def __init__(self, sandbox: VtigerSandbox) -> None:
        self.sandbox = sandbox
        self.http = sandbox.requests_session()
        self.session_name = ""

    def get(self, **params: Any) -> Any:
        response = self.http.get(self.sandbox.webservice_url, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, **params: Any) -> Any:
        response = self.http.post(self.sandbox.webservice_url, data=params)
        assert response.status_code == 200, response.text
        return response.json()

    def login(self) -> Client:
        token = self.get(operation="getchallenge", username="integration")["result"]["token"]
        key = hashlib.md5((token + self.sandbox.credentials.access_key).encode()).hexdigest()
        answer = self.post(operation="login", username="integration", accessKey=key)
        assert answer["success"], answer
        self.session_name = answer["result"]["sessionName"]
        return self

    def query(self, vtql: str) -> Any:
        return self.get(operation="query", sessionName=self.session_name, query=vtql)

    def revise(self, element: dict[str, Any]) -> Any:
        return self.post(operation="revise", sessionName=self.session_name, element=json.dumps(element))


def _error(answer: Any) -> str:
    assert answer["success"] is False, answer
    assert set(answer["error"]) == {"code", "message"}
    return str(answer["error"]["code"])


# -- VTQL ----------------------------------------------------------------------------------------


def test_vtql_needs_its_semicolon_and_has_no_parentheses() -> None:
    with pytest.raises(VtqlError) as missing:
        parse("SELECT id FROM Contacts")
    assert missing.value.code == "QUERY_SYNTAX_ERROR"
    with pytest.raises(VtqlError):
        parse("SELECT id FROM Contacts WHERE (email = 'a' OR email = 'b');")
    with pytest.raises(VtqlError):
        parse("SELECT id FROM Contacts WHERE email = '';")  # Vtiger's lexer takes no empty string
    assert parse("select id from Contacts;").module == "Contacts"


def test_vtql_caps_every_limit_at_100_and_keeps_the_offset() -> None:
    assert parse("SELECT * FROM Contacts;").limit == 100
    assert parse("SELECT * FROM Contacts LIMIT 5000;").limit == 100
    capped = parse("SELECT * FROM Contacts LIMIT 200, 500;")
    assert (capped.offset, capped.limit) == (200, 100)


def test_vtql_string_literals_double_quotes_and_read_mysql_escapes() -> None:
    for text in ("O'Brien", "back\\slash\\", "\\'; DROP TABLE x; --", "50% _off_"):
        assert unquote(quote(text)) == text
    assert unquote("'it''s'") == "it's"
    assert unquote("'a\\nb'") == "a\nb"


def test_vtql_and_binds_tighter_than_or(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    contacts = sandbox.crm.records("Contacts")
    first, second = contacts[0], contacts[1]
    rows = client.query(
        f"SELECT id FROM Contacts WHERE id = '{first['id']}' OR id = '{second['id']}' "
        f"AND email = 'nobody@example.test';"
    )["result"]
    assert [r["id"] for r in rows] == [first["id"]]


def test_vtql_null_matches_no_comparison_and_desc_applies_to_the_last_column(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    rows = client.query("SELECT id, secondaryemail FROM Contacts WHERE secondaryemail != 'x@y.z';")["result"]
    assert rows == []  # every secondaryemail is empty: NULL != 'x' is not true
    rows = client.query("SELECT id, modifiedtime FROM Contacts ORDER BY modifiedtime, id DESC LIMIT 100;")
    result = rows["result"]
    stamps = [r["modifiedtime"] for r in result]
    assert stamps == sorted(stamps)  # DESC reached only the id column
    same = [int(r["id"].split("x")[1]) for r in result if r["modifiedtime"] == stamps[0]]
    assert same == sorted(same, reverse=True)


# -- login and sessions ------------------------------------------------------------------------


def test_login_with_the_access_key_digest(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox)
    challenge = client.get(operation="getchallenge", username="integration")["result"]
    assert challenge["expireTime"] - challenge["serverTime"] == 300
    wrong = hashlib.md5((challenge["token"] + "not-the-key").encode()).hexdigest()
    assert _error(client.post(operation="login", username="integration", accessKey=wrong)) == (
        "INVALID_USER_CREDENTIALS"
    )
    right = sandbox.login_key(challenge["token"])
    answer = client.post(operation="login", username="integration", accessKey=right)["result"]
    assert answer["userId"] == "19x5"
    assert answer["sessionName"]


def test_an_unknown_username_and_a_replaced_challenge(sandbox: VtigerSandbox) -> None:
    """8.2.0: getchallenge for a username it does not know is ACCESS_DENIED; a second challenge
    replaces the first, whose digest is then refused as INVALID_USER_CREDENTIALS."""
    client = Client(sandbox)
    unknown = client.get(operation="getchallenge", username="nobody")
    assert _error(unknown) == "ACCESS_DENIED" and "does not exists" in unknown["error"]["message"]
    first = client.get(operation="getchallenge", username="integration")["result"]["token"]
    client.get(operation="getchallenge", username="integration")  # another application's
    stale = client.post(operation="login", username="integration", accessKey=sandbox.login_key(first))
    assert _error(stale) == "INVALID_USER_CREDENTIALS"


def test_the_challenge_expires(sandbox: VtigerSandbox) -> None:
    sandbox.challenge_ttl = 0.2
    client = Client(sandbox)
    token = client.get(operation="getchallenge", username="integration")["result"]["token"]
    time.sleep(0.3)
    answer = client.post(operation="login", username="integration", accessKey=sandbox.login_key(token))
    assert _error(answer) == "INVALID_AUTH_TOKEN"


def test_calls_without_or_with_a_dead_session(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox)
    assert _error(client.get(operation="listtypes")) == "AUTHENTICATION_REQUIRED"
    client.login()
    assert client.get(operation="listtypes", sessionName=client.session_name)["success"]
    sandbox.expire_sessions()
    assert _error(client.get(operation="listtypes", sessionName=client.session_name)) == "INVALID_SESSIONID"


def test_a_read_operation_sent_as_post_is_refused(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    assert _error(client.post(operation="query", sessionName=client.session_name, query="x")) == (
        "UNKNOWN_OPERATION"
    )


# -- reading -----------------------------------------------------------------------------------


def test_query_answers_at_most_100_rows_of_text(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    rows = client.query("SELECT id, email, emailoptout, donotcall, modifiedtime FROM Contacts LIMIT 0,500;")
    result = rows["result"]
    assert len(result) == 100
    assert all(r["id"].startswith("12x") for r in result)
    assert {r["emailoptout"] for r in result} <= {"0", "1"}
    assert all(dt.datetime.strptime(r["modifiedtime"], "%Y-%m-%d %H:%M:%S") for r in result)
    paged = client.query("SELECT id FROM Contacts ORDER BY id LIMIT 200,100;")["result"]
    assert len(paged) == 100
    assert client.query("SELECT count(*) FROM Contacts;")["result"] == [{"count": "300"}]


def test_query_of_an_unknown_field_is_denied(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    assert _error(client.query("SELECT nope FROM Contacts;")) == "ACCESS_DENIED"
    assert _error(client.query("SELECT id FROM Contacts")) == "QUERY_SYNTAX_ERROR"


def test_modules_ids_and_consent_fields(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    described = {
        name: client.get(operation="describe", sessionName=client.session_name, elementType=name)["result"]
        for name in ("Contacts", "Leads", "Accounts", "Consents")
    }
    assert {n: d["idPrefix"] for n, d in described.items()} == {
        "Contacts": "12",
        "Leads": "10",
        "Accounts": "11",
        "Consents": "52",
    }
    fields = {n: {f["name"] for f in d["fields"]} for n, d in described.items()}
    assert {"emailoptout", "donotcall", "email", "secondaryemail"} <= fields["Contacts"]
    assert "emailoptout" in fields["Leads"] and "donotcall" not in fields["Leads"]
    assert {"email1", "email2", "emailoptout"} <= fields["Accounts"] and "donotcall" not in fields["Accounts"]
    status = next(f for f in described["Consents"]["fields"] if f["name"] == "consent_status")
    assert [p["value"] for p in status["type"]["picklistValues"]] == list(CONSENT_STATES)


def test_reading_a_deleted_record_is_access_denied(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    record_id = sandbox.crm.records("Contacts")[0]["id"]
    assert client.get(operation="retrieve", sessionName=client.session_name, id=record_id)["success"]
    sandbox.crm.delete(record_id)
    answer = client.get(operation="retrieve", sessionName=client.session_name, id=record_id)
    assert _error(answer) == "ACCESS_DENIED"
    lead = sandbox.crm.records("Leads")[0]["id"]
    wrong_type = "12x" + lead.split("x")[1]
    assert _error(client.revise({"id": wrong_type, "emailoptout": "1"})) == "INVALID_ID_ATTRIBUTE"


# -- writing -----------------------------------------------------------------------------------


def test_revise_is_partial_and_bumps_modifiedtime(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    record = sandbox.crm.records("Contacts")[0]
    for sent, stored in ((True, "1"), (False, "0"), ("1", "1"), ("0", "0")):
        answer = client.revise({"id": record["id"], "emailoptout": sent})["result"]
        assert answer["emailoptout"] == stored
    after = sandbox.crm.get(record["id"])
    assert after is not None
    assert after["lastname"] == record["lastname"] and after["email"] == record["email"]
    assert after["modifiedtime"] > record["modifiedtime"]
    assert _error(client.revise({"id": record["id"], "lastname": ""})) == "MANDATORY_FIELDS_MISSING"


def test_update_needs_the_whole_record(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    record = sandbox.crm.records("Contacts")[0]
    partial = client.post(
        operation="update",
        sessionName=client.session_name,
        element=json.dumps({"id": record["id"], "emailoptout": "1"}),
    )
    assert _error(partial) == "MANDATORY_FIELDS_MISSING"
    whole = {**record, "emailoptout": "1"}
    answer = client.post(operation="update", sessionName=client.session_name, element=json.dumps(whole))
    assert answer["result"]["emailoptout"] == "1"


# -- sync ----------------------------------------------------------------------------------------


def _stamped(crm: VtigerCrm, moment: dt.datetime, count: int, owner: str) -> list[str]:
    return [crm.create("Contacts", lastname=f"S{i}", owner=owner, at=moment) for i in range(count)]


def test_sync_is_strict_uncapped_and_sees_only_the_users_own_records() -> None:
    with VtigerSandbox() as sandbox:
        crm = sandbox.crm
        base = dt.datetime(2026, 11, 1, 12, 0, 0, tzinfo=dt.UTC)
        early = _stamped(crm, base, 3, "19x5")
        crowded = _stamped(crm, base + dt.timedelta(seconds=1), 150, "19x5")
        grouped = _stamped(crm, base + dt.timedelta(seconds=1), 5, "20x2")
        later = _stamped(crm, base + dt.timedelta(seconds=2), 4, "19x5")
        client = Client(sandbox).login()
        since = int(base.timestamp())
        answer = client.get(
            operation="sync", sessionName=client.session_name, modifiedTime=since, elementType="Contacts"
        )["result"]
        ids = {r["id"] for r in answer["updated"]}
        assert not ids & set(early), "sync is strict: the second of modifiedTime is not included"
        assert ids == set(crowded), "every record of the last second, past 100; no group's record"
        assert not ids & set(grouped)
        assert answer["lastModifiedTime"] == since + 1 and answer["more"] is True
        crm.delete(later[0], at=base + dt.timedelta(seconds=3))
        rest = client.get(
            operation="sync", sessionName=client.session_name, modifiedTime=since + 1, elementType="Contacts"
        )["result"]
        assert {r["id"] for r in rest["updated"]} == set(later[1:])
        assert rest["deleted"] == [later[0]], "a deletion moves modifiedtime: sync lists its id"
        assert rest["more"] is False and rest["lastModifiedTime"] == since + 3


def test_sync_can_fail_as_the_stock_release_does_on_php8(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    sandbox.sync_fails = True
    response = client.http.get(
        sandbox.webservice_url,
        params={"operation": "sync", "sessionName": client.session_name, "modifiedTime": 0},
    )
    assert response.status_code == 500 and response.content == b""


# -- faults and counting -------------------------------------------------------------------------


def test_faults_answer_as_apache_and_vtiger_would(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    sandbox.faults.update(error_rate=1.0, error_calls=1)
    failed = client.http.get(
        sandbox.webservice_url, params={"operation": "listtypes", "sessionName": client.session_name}
    )
    assert failed.status_code == 503 and "html" in failed.headers["Content-Type"]
    sandbox.faults.reset()
    sandbox.faults.update(request_limit_after=0)
    limited = client.http.get(
        sandbox.webservice_url, params={"operation": "listtypes", "sessionName": client.session_name}
    )
    # As Vtiger documents its limits: the flood-control and daily headers, no Retry-After.
    assert limited.status_code == 429 and "Retry-After" not in limited.headers
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    sandbox.faults.reset()
    record = sandbox.crm.records("Contacts")[0]["id"]
    sandbox.faults.fail_records(record, attempts=1)
    assert _error(client.revise({"id": record, "emailoptout": "1"})) == "DATABASE_QUERY_ERROR"
    assert client.revise({"id": record, "emailoptout": "1"})["success"]
    assert sandbox.calls["revise"] == 2 and sandbox.calls["login"] == 1
    assert sandbox.faults_injected["http_503"] == 1 and sandbox.faults_injected["request_limit"] == 1


# -- seeding and the command line ---------------------------------------------------------------


def test_the_seed_crowds_seconds_mixes_owners_and_shares_addresses() -> None:
    crm = VtigerCrm()
    made = crm.seed(300, seed=9)
    contacts = crm.records("Contacts")
    stamps = Counter(r["modifiedtime"] for r in contacts)
    assert stamps.most_common(1)[0][1] >= 100, "an import puts more than a page in one second"
    owners = Counter(crm.owner_of(r["id"]) for r in contacts)
    assert owners["19x5"] > owners["20x2"] > 0, "some records belong to a group, not the user"
    lead_emails = {r["email"].lower() for r in crm.records("Leads")}
    assert lead_emails & {r["email"].lower() for r in contacts}
    assert any("'" in r["email"] for r in contacts)
    assert {r["consent_status"] for r in crm.records("Consents")} <= set(CONSENT_STATES)
    assert len(made["consents"]) == crm.count("Consents") > 0


def test_serve_forever_prints_how_to_connect(capsys: pytest.CaptureFixture[str]) -> None:
    with served(serve_forever, records=50) as sandbox:
        output = capsys.readouterr().out
        assert sandbox.webservice_url in output and sandbox.credentials.access_key in output
        assert Client(sandbox).login().query("SELECT count(*) FROM Contacts;")["result"] == [{"count": "50"}]


# -- the install's time zone, what MySQL's utf8 keeps, late commits, missing modules, delete ----


def test_modifiedtime_is_stored_and_served_in_the_installs_zone() -> None:
    crm = VtigerCrm(privacy_guard=False, timezone="Europe/Berlin")
    summer = dt.datetime(2026, 7, 1, 10, 0, 5, tzinfo=dt.UTC)
    record_id = crm.create("Contacts", lastname="Zone", email="zone@example.test", at=summer)
    assert crm.get(record_id)["modifiedtime"] == "2026-07-01 12:00:05"  # type: ignore[index]
    rows = crm.query("SELECT id FROM Contacts WHERE modifiedtime >= '2026-07-01 12:00:05';")
    assert [r["id"] for r in rows] == [record_id]
    assert crm.query("SELECT id FROM Contacts WHERE modifiedtime > '2026-07-01 10:00:05';") == [
        {"id": record_id}
    ]
    # sync takes and answers Unix times: the zone is the server's business.
    answer = crm.sync("Contacts", int(summer.timestamp()) - 1, user_id=crm.integration_user_id)
    assert answer["lastModifiedTime"] == int(summer.timestamp())


def test_sync_answers_its_batches_as_getupdates_php_does() -> None:
    """vtws_sync: the changes after the time asked from, up to the second of the 100th (ordered
    by modifiedtime), that second whole, deleted and converted leads under ``deleted``;
    ``lastModifiedTime`` is that second, read back with strtotime, and ``more`` says whether
    anything changed after it. Asked again later, the same time gives another batch. With no
    change, ``lastModifiedTime`` is the time asked from turned into wall-clock text and back
    (strtotime takes the first pass of a repeated autumn hour)."""
    crm = VtigerCrm(privacy_guard=False, timezone="Europe/Berlin")
    user = crm.integration_user_id
    start = dt.datetime(2026, 7, 1, 10, 0, 0, tzinfo=dt.UTC)
    mark = int(start.timestamp())
    live = [crm.create("Leads", lastname=f"L{i}", at=start + dt.timedelta(seconds=1 + i)) for i in range(60)]
    crowd = [crm.create("Leads", lastname=f"C{i}", at=start) for i in range(50)]
    for lead in crowd:
        crm.delete(lead, at=start + dt.timedelta(seconds=70))
    crm.create("Leads", lastname="After", at=start + dt.timedelta(seconds=80))
    answer = crm.sync("Leads", mark, user_id=user)
    # 60 live changes and the 40 first of the crowded second make 100: the whole second comes.
    assert (answer["lastModifiedTime"], answer["more"]) == (mark + 70, True)
    assert sorted(answer["deleted"]) == sorted(crowd) and len(answer["updated"]) == 60
    assert crm.sync("Leads", mark + 70, user_id=user)["more"] is False
    # The same time, later: live leads edited since leave the batch, which reaches on to a
    # conversion made since, and holds every change up to its last second.
    for lead in live[:11]:
        crm.revise(lead, firstname="Edited", at=start + dt.timedelta(seconds=90))
    crm.convert_lead(live[20], at=start + dt.timedelta(seconds=90))
    again = crm.sync("Leads", mark, user_id=user)
    assert (again["lastModifiedTime"], again["more"]) == (mark + 90, False)
    assert sorted(again["deleted"]) == sorted([*crowd, live[20]]) and len(again["updated"]) == 60
    assert crm.sync("Leads", mark + 90, user_id=user) == {
        "updated": [],
        "deleted": [],
        "lastModifiedTime": mark + 90,
        "more": False,
    }
    # 2026-10-25 02:30 Berlin comes twice (CEST, then CET): asked from the second pass, an empty
    # answer's lastModifiedTime is the first pass, an hour earlier.
    second_pass = int(dt.datetime(2026, 10, 25, 1, 30, tzinfo=dt.UTC).timestamp())
    empty = crm.sync("Leads", second_pass, user_id=user)
    assert (empty["deleted"], empty["lastModifiedTime"], empty["more"]) == ([], second_pass - 3600, False)


def test_checkbox_words_are_stored_as_zero_as_the_real_server_does(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    record_id = sandbox.crm.create("Contacts", lastname="Box", email="box@example.test")
    for sent, stored in [("true", "0"), ("1", "1"), ("yes", "0"), ("on", "1"), (True, "1"), ("false", "0")]:
        answer = client.revise({"id": record_id, "emailoptout": sent})
        assert answer["success"], answer
        assert answer["result"]["emailoptout"] == stored, sent
    assert sandbox.crm.get(sandbox.crm.create("Leads", lastname="L", emailoptout="yes"))["emailoptout"] == "0"  # type: ignore[index]


def test_characters_beyond_the_bmp_are_stored_as_question_marks(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    record_id = sandbox.crm.create("Contacts", lastname="Emoji \U0001f600", firstname="Zoë 中")
    assert sandbox.crm.get(record_id)["lastname"] == "Emoji ?"  # type: ignore[index]
    assert sandbox.crm.get(record_id)["firstname"] == "Zoë 中"  # type: ignore[index]
    answer = client.revise({"id": record_id, "firstname": "\U0001f389 party \U0001f44d\U0001f3fd"})
    assert answer["result"]["firstname"] == "? party ??"


def test_a_late_commit_is_invisible_until_it_commits_then_shows_its_first_stamp(
    sandbox: VtigerSandbox,
) -> None:
    client = Client(sandbox).login()
    began = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=30)
    sandbox.crm.clock = lambda: began
    late = sandbox.crm.begin_late("Contacts", lastname="Late", email="late@example.test")
    sandbox.crm.clock = lambda: dt.datetime.now(dt.UTC)
    query = f"SELECT id, modifiedtime FROM Contacts WHERE id = '{late}';"
    assert client.query(query)["result"] == []
    assert (
        _error(client.get(operation="retrieve", sessionName=client.session_name, id=late)) == "ACCESS_DENIED"
    )
    assert late not in [r["id"] for r in sandbox.crm.records("Contacts")]
    since = int(began.timestamp()) - 1
    assert late not in sandbox.crm.sync("Contacts", since, user_id=5)["updated"]
    sandbox.crm.commit_late(late)
    assert client.query(query)["result"] == [
        {"id": late, "modifiedtime": began.strftime("%Y-%m-%d %H:%M:%S")}
    ]
    assert late in [r["id"] for r in sandbox.crm.sync("Contacts", since, user_id=5)["updated"]]


def test_a_module_the_install_lacks_is_denied_by_name() -> None:
    with VtigerSandbox(VtigerCrm(privacy_guard=False, missing_modules=("Leads",))) as server:
        client = Client(server).login()
        answer = client.get(operation="describe", sessionName=client.session_name, elementType="Leads")
        assert _error(answer) == "ACCESS_DENIED"
        assert answer["error"]["message"] == "Permission to perform the operation is denied for name : Leads"
        types = client.get(operation="listtypes", sessionName=client.session_name)["result"]["types"]
        assert "Leads" not in types and "Contacts" in types


def test_delete_marks_the_record_deleted_and_sync_lists_it(sandbox: VtigerSandbox) -> None:
    client = Client(sandbox).login()
    start = int(time.time()) - 1
    record_id = sandbox.crm.create("Contacts", lastname="Doomed", email="doomed@example.test")
    answer = client.post(operation="delete", sessionName=client.session_name, id=record_id)
    assert answer == {"success": True, "result": {"status": "successful"}}
    again = client.post(operation="delete", sessionName=client.session_name, id=record_id)
    assert _error(again) == "ACCESS_DENIED"
    assert client.query(f"SELECT id FROM Contacts WHERE id = '{record_id}';")["result"] == []
    listed = client.get(
        operation="sync", sessionName=client.session_name, modifiedTime=start, elementType="Contacts"
    )["result"]
    assert listed["deleted"] == [record_id]
    assert _error(client.get(operation="delete", sessionName=client.session_name, id=record_id)) in (
        "UNKNOWN_OPERATION",
        "ACCESS_DENIED",
    )  # a write sent as GET


# -- what Vtiger's PHP source does beyond its manual ------------------------------------------------


def test_a_converted_lead_leaves_every_query_is_listed_deleted_and_still_retrieved(
    sandbox: VtigerSandbox,
) -> None:
    """vtws_convertlead: a contact from the stock conversion mapping (no emailoptout), the lead
    marked converted=1 and its modifiedtime moved; EntityMeta::getEntityDeletedQuery hides it
    from every Leads query and vtws_sync lists it as deleted; retrieve and revise check
    vtiger_crmentity.deleted only and still act on it."""
    client = Client(sandbox).login()
    start = int(time.time()) - 1
    lead = sandbox.crm.create(
        "Leads",
        firstname="Ana",
        lastname="Silva",
        email="ana.silva@example.test",
        phone="+351 21 000 0000",
        emailoptout="1",
        owner="19x5",
    )
    before = sandbox.crm.get(lead)
    assert before is not None
    contact = sandbox.crm.convert_lead(lead, at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    made = client.get(operation="retrieve", sessionName=client.session_name, id=contact)["result"]
    assert (made["firstname"], made["lastname"], made["email"], made["phone"]) == (
        "Ana",
        "Silva",
        "ana.silva@example.test",
        "+351 21 000 0000",
    )
    assert made["emailoptout"] == "" and made["isconvertedfromlead"] == "1"
    assert made["assigned_user_id"] == "19x5"
    assert client.query(f"SELECT id FROM Leads WHERE id = '{lead}';")["result"] == []
    assert lead not in {r["id"] for r in sandbox.crm.records("Leads")}
    listed = client.get(
        operation="sync", sessionName=client.session_name, modifiedTime=start, elementType="Leads"
    )["result"]
    assert listed["deleted"] == [lead] and lead not in {r["id"] for r in listed["updated"]}
    kept = client.get(operation="retrieve", sessionName=client.session_name, id=lead)["result"]
    assert kept["emailoptout"] == "1" and kept["modifiedtime"] > before["modifiedtime"]
    assert client.revise({"id": lead, "emailoptout": "0"})["success"]
    with pytest.raises(VtigerError, match="LEAD_ALREADY_CONVERTED"):
        sandbox.crm.convert_lead(lead)


def test_a_record_restored_from_the_recycle_bin_is_live_again(sandbox: VtigerSandbox) -> None:
    """CRMEntity::restore: deleted=0 and modifiedtime moved to the restore, so sync lists it as
    updated again and query answers it."""
    client = Client(sandbox).login()
    record_id = sandbox.crm.create("Contacts", lastname="Back", email="back@example.test", owner="19x5")
    deleted_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    sandbox.crm.delete(record_id, at=deleted_at)
    assert client.query(f"SELECT id FROM Contacts WHERE id = '{record_id}';")["result"] == []
    sandbox.crm.restore(record_id, at=deleted_at + dt.timedelta(seconds=2))
    assert client.query(f"SELECT id FROM Contacts WHERE id = '{record_id}';")["result"] == [{"id": record_id}]
    listed = client.get(
        operation="sync",
        sessionName=client.session_name,
        modifiedTime=int(deleted_at.timestamp()),
        elementType="Contacts",
    )["result"]
    assert [r["id"] for r in listed["updated"]] == [record_id] and listed["deleted"] == []
    with pytest.raises(KeyError):
        sandbox.crm.restore(record_id)  # not in the recycle bin


def test_an_inactive_users_login_is_authentication_required_once_its_key_matched(
    sandbox: VtigerSandbox,
) -> None:
    """vtws_login looks at the user's status after the token and the key: an inactive user gets
    its challenge, a wrong key is still INVALID_USER_CREDENTIALS, the right one
    AUTHENTICATION_REQUIRED "Given user is inactive"."""
    sandbox.crm.deactivate_user("integration")
    client = Client(sandbox)
    token = client.get(operation="getchallenge", username="integration")["result"]["token"]
    wrong = client.post(operation="login", username="integration", accessKey="0" * 32)
    assert _error(wrong) == "INVALID_USER_CREDENTIALS"
    answer = client.post(operation="login", username="integration", accessKey=sandbox.login_key(token))
    assert _error(answer) == "AUTHENTICATION_REQUIRED"
    assert answer["error"]["message"] == "Given user is inactive"


def test_parameters_pass_addslashes_then_stripslashes_unchanged() -> None:
    """PHP's stripslashes drops each backslash and keeps the character after it (\\\\ becomes \\,
    \\0 a NUL; a trailing backslash goes); vtws_getParameter's addslashes before it makes the
    pair the identity, so a JSON element with escapes arrives intact."""
    assert stripslashes('O\\"Brien \\\\ \\n \\0 end\\') == 'O"Brien \\ n \0 end'
    for text in ['{"firstname": "O\\"Brien \\\\ 中\\n"}', "it's \\' \0 \\0", "", "\\"]:
        assert stripslashes(addslashes(text)) == text


def test_a_parameter_sent_as_zero_arrives_empty_and_sync_then_lists_nothing() -> None:
    """vtws_getParameter takes "0" as not given (PHP reads it as false) and handleType makes it
    "": vtws_sync gets no time, date() none either, and `modifiedtime > NULL` matches nothing."""
    with VtigerSandbox() as sandbox:
        client = Client(sandbox).login()
        record_id = sandbox.crm.create("Contacts", lastname="Gone", email="gone@example.test", owner="19x5")
        sandbox.crm.delete(record_id)
        for since, listed in ((0, []), (1, [record_id])):
            answer = client.get(
                operation="sync", sessionName=client.session_name, modifiedTime=since, elementType="Contacts"
            )["result"]
            assert answer["deleted"] == listed
        empty = client.get(
            operation="sync", sessionName=client.session_name, modifiedTime=0, elementType="Contacts"
        )["result"]
        assert empty == {"updated": [], "deleted": [], "lastModifiedTime": 0, "more": False}
