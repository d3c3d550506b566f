"""The Dataverse sandbox against the documented wire format, over HTTPS with requests: the token
endpoint's AADSTS errors, OData $filter (escaping, malformed filters), paging, change tracking
with deleted rows and refused tokens, $batch with continue-on-error and change sets, service
protection's 429 with Retry-After, expired tokens, OData-Version."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from consentsync_dynamics.sandbox.odata import ODataError, parse_filter
from consentsync_dynamics.sandbox.server import DynamicsSandbox


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    with DynamicsSandbox() as server:
        server.environment.seed(60, seed=2)
        yield server


def _session(dv: DynamicsSandbox) -> requests.Session:
    session = dv.requests_session()
    token = session.post(dv.token_url, data=dv.client_credentials_form()).json()["access_token"]
    session.headers.update({"Authorization": f"Bearer {token}", "OData-Version": "4.0"})
    return session


def _batch(parts: list[tuple[str, str, str]], boundary: str = "batch_t") -> bytes:
    lines = []
    for method, url, body in parts:
        lines += [
            f"--{boundary}",
            "Content-Type: application/http",
            "Content-Transfer-Encoding: binary",
            "",
            f"{method} {url} HTTP/1.1",
            "Content-Type: application/json",
            "If-Match: *",
            "",
            body,
        ]
    return ("\r\n".join([*lines, f"--{boundary}--", ""])).encode()


@pytest.mark.parametrize(
    ("change", "status", "error", "code"),
    [
        ({"client_secret": "nope"}, 401, "invalid_client", 7000215),
        ({"client_id": "11111111-2222-3333-4444-555555555555"}, 400, "unauthorized_client", 700016),
        ({"scope": "https://elsewhere.crm.dynamics.com/.default"}, 400, "invalid_resource", 500011),
        ({"scope": "https://127.0.0.1"}, 400, "invalid_scope", 1002012),
        ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
    ],
)
def test_token_endpoint_answers_aadsts_errors(
    dv: DynamicsSandbox, change: dict[str, str], status: int, error: str, code: int
) -> None:
    answer = dv.requests_session().post(dv.token_url, data={**dv.client_credentials_form(), **change})
    assert answer.status_code == status
    body = answer.json()
    assert body["error"] == error and body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}:")
    assert {"trace_id", "correlation_id", "timestamp"} <= set(body)


def test_unknown_tenant_and_good_token(dv: DynamicsSandbox) -> None:
    session = dv.requests_session()
    wrong = session.post(
        dv.token_url.replace(dv.credentials.tenant_id, "contoso"), data=dv.client_credentials_form()
    )
    assert wrong.status_code == 400 and wrong.json()["error_codes"] == [90002]
    good = session.post(dv.token_url, data=dv.client_credentials_form()).json()
    assert good["token_type"] == "Bearer" and good["expires_in"] > 3000


def test_expired_token_gets_401_with_www_authenticate(dv: DynamicsSandbox) -> None:
    session = _session(dv)
    assert session.get(dv.api_url() + "/WhoAmI").status_code == 200
    dv.expire_sessions()
    answer = session.get(dv.api_url() + "/WhoAmI")
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert answer.headers["OData-Version"] == "4.0"


def test_filter_with_doubled_quotes_and_malformed_filters(dv: DynamicsSandbox) -> None:
    session = _session(dv)
    target = dv.environment.records("contact")[0]["contactid"]
    dv.environment.update("contact", target, {"lastname": "O'Brien-Test", "description": "a 'quoted' text"})
    found = session.get(
        dv.api_url() + "/contacts",
        params={
            "$select": "lastname",
            "$filter": "lastname eq 'o''brien-TEST'",  # a quote is doubled inside a literal
        },
    )
    assert found.status_code == 200
    assert [r["contactid"] for r in found.json()["value"]] == [target]
    for bad, fragment in [
        ("lastname eq 'O'Brien'", "unterminated string"),
        ("lastname eq 'O''Brien' Brien", "Syntax error"),
        ("lastname eq 'unterminated", "unterminated string"),
        ("nosuchcolumn eq 1", "Could not find a property named 'nosuchcolumn'"),
        ("donotemail eq 'yes'", "incompatible types"),
        ("(lastname eq 'x'", "')' expected"),
        ("lastname eq", "Expression expected"),
    ]:
        answer = session.get(dv.api_url() + "/contacts", params={"$filter": bad})
        assert answer.status_code == 400, bad
        error = answer.json()["error"]
        assert error["code"] == "0x80060888" and fragment in error["message"], (bad, error)


def test_filter_semantics() -> None:
    types = {"a": "Edm.String", "n": "Edm.Int32", "b": "Edm.Boolean", "t": "Edm.DateTimeOffset"}
    row: dict[str, Any] = {"a": "Zoë", "n": 3, "b": True, "t": None}
    assert parse_filter("a eq 'ZOË' and n gt 2", types, "x")(row)
    assert parse_filter("not (b eq false) or n eq 0", types, "x")(row)
    assert parse_filter("t eq null and startswith(a, 'zo')", types, "x")(row)
    assert not parse_filter("t gt 2026-01-01T00:00:00Z", types, "x")(row)
    assert not parse_filter("a ne 'Zoë'", types, "x")(row)
    with pytest.raises(ODataError):
        parse_filter("a eq 'x' extra", types, "x")


def test_paging_caps_maxpagesize_and_follows_next_links(dv: DynamicsSandbox) -> None:
    session = _session(dv)
    seen: list[str] = []
    url, params = dv.api_url() + "/contacts", {"$select": "modifiedon", "$orderby": "modifiedon desc"}
    pages = 0
    while url:
        answer = session.get(url, params=params, headers={"Prefer": "odata.maxpagesize=25"})
        assert answer.headers["Preference-Applied"] == "odata.maxpagesize=25"
        body = answer.json()
        assert len(body["value"]) <= 25
        seen += [r["contactid"] for r in body["value"]]
        url, params, pages = body.get("@odata.nextLink"), None, pages + 1
    assert pages == 3 and len(seen) == len(set(seen)) == dv.environment.count("contact")
    capped = session.get(dv.api_url() + "/contacts", headers={"Prefer": "odata.maxpagesize=999999"})
    assert capped.headers["Preference-Applied"] == "odata.maxpagesize=5000"


def test_change_tracking_deltas_deleted_rows_and_refused_tokens(dv: DynamicsSandbox) -> None:
    session = _session(dv)
    prefer = {"Prefer": "odata.track-changes, odata.maxpagesize=40"}
    url, params, rows = dv.api_url() + "/contacts", {"$select": "donotemail,modifiedon"}, 0
    while True:
        body = session.get(url, params=params, headers=prefer).json()
        assert body["@odata.context"].endswith("/$delta")
        rows += len(body["value"])
        if "@odata.nextLink" in body:
            url, params = body["@odata.nextLink"], None
            continue
        delta = body["@odata.deltaLink"]
        break
    assert rows == 60 and "%24deltatoken=" in delta and "%24select=donotemail%2Cmodifiedon" in delta
    ids = [r["contactid"] for r in dv.environment.records("contact")]
    dv.environment.update("contact", ids[0], {"donotemail": True})
    dv.environment.delete("contact", ids[1])
    changes = session.get(delta, headers=prefer).json()
    assert [r.get("contactid") for r in changes["value"] if "contactid" in r] == [ids[0]]
    deleted = [r for r in changes["value"] if "$deletedEntity" in r.get("@odata.context", "")]
    assert deleted == [{"@odata.context": deleted[0]["@odata.context"], "id": ids[1], "reason": "deleted"}]
    assert set(changes["value"][0]) >= {"donotemail", "modifiedon", "contactid", "@odata.etag"}
    later = session.get(changes["@odata.deltaLink"], headers=prefer).json()
    assert later["value"] == []
    with_filter = session.get(
        dv.api_url() + "/contacts", params={"$filter": "donotemail eq true"}, headers=prefer
    )
    assert with_filter.status_code == 400 and "change tracking" in with_filter.json()["error"]["message"]
    dv.expire_delta_tokens()
    refused = session.get(later["@odata.deltaLink"], headers=prefer)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "0x80044352"
    forged = session.get(dv.api_url() + "/contacts", params={"$deltatoken": "garbage"}, headers=prefer)
    assert forged.status_code == 400 and forged.json()["error"]["code"] == "0x80060888"


def test_batch_continue_on_error_and_stop_at_first_failure(dv: DynamicsSandbox) -> None:
    session = _session(dv)
    ids = [r["contactid"] for r in dv.environment.records("contact")[:3]]
    api = dv.api_url()
    parts = [
        ("PATCH", f"{api}/contacts({ids[0]})", '{"donotphone": true}'),
        ("PATCH", f"{api}/contacts(00000000-0000-0000-0000-000000000000)", '{"donotphone": true}'),
        ("PATCH", f"/api/data/v9.2/contacts({ids[1]})", '{"donotphone": 7}'),
        ("PATCH", f"contacts({ids[2]})", '{"donotphone": true}'),
    ]
    headers = {"Content-Type": "multipart/mixed; boundary=batch_t", "Prefer": "odata.continue-on-error"}
    answer = session.post(f"{api}/$batch", data=_batch(parts), headers=headers)
    assert answer.status_code == 200 and answer.headers["Preference-Applied"] == "odata.continue-on-error"
    statuses = [int(line.split()[1]) for line in answer.text.splitlines() if line.startswith("HTTP/1.1 ")]
    assert statuses == [204, 404, 400, 204]
    assert dv.environment.get("contact", ids[2])["donotphone"] is True
    stopping = session.post(
        f"{api}/$batch", data=_batch(parts), headers={"Content-Type": "multipart/mixed; boundary=batch_t"}
    )
    assert [int(line.split()[1]) for line in stopping.text.splitlines() if line.startswith("HTTP/1.1 ")] == [
        204,
        404,
    ]
    too_many = [("PATCH", f"{api}/contacts({ids[0]})", '{"donotfax": true}')] * 1001
    refused = session.post(f"{api}/$batch", data=_batch(too_many), headers=headers)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "0x8006088a"
    assert dv.batch_requests >= 8


def test_change_set_is_all_or_nothing(dv: DynamicsSandbox) -> None:
    session = _session(dv)
    target = dv.environment.records("contact")[0]
    api = dv.api_url()
    part = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    inner = (
        f"--changeset_c\r\n{part}Content-ID: 1\r\n\r\n"
        f"PATCH {api}/contacts({target['contactid']}) HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"
        '{"description": "changed in a change set"}\r\n'
        f"--changeset_c\r\n{part}Content-ID: 2\r\n\r\n"
        f"PATCH {api}/contacts({target['contactid']}) HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"
        '{"donotemail": "not a boolean"}\r\n'
        "--changeset_c--\r\n"
    )
    body = f"--batch_t\r\nContent-Type: multipart/mixed; boundary=changeset_c\r\n\r\n{inner}--batch_t--\r\n"
    answer = session.post(
        f"{api}/$batch", data=body.encode(), headers={"Content-Type": "multipart/mixed; boundary=batch_t"}
    )
    # Without Prefer: odata.continue-on-error the batch answers with the failed request's status.
    assert answer.status_code == 400 and "HTTP/1.1 400" in answer.text and "HTTP/1.1 204" not in answer.text
    assert dv.environment.get("contact", target["contactid"])["description"] == target["description"]


def test_service_protection_answers_429_with_retry_after_over_a_sliding_window(dv: DynamicsSandbox) -> None:
    session = _session(dv)
    dv.set_rate_limit(3, window=30)
    answers = [session.get(dv.api_url() + "/WhoAmI") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    throttled = answers[-1]
    assert 1 <= int(throttled.headers["Retry-After"]) <= 30
    assert throttled.json()["error"]["code"] == "0x80072322"
    dv.set_rate_limit(None)
    assert session.get(dv.api_url() + "/WhoAmI").status_code == 200


def test_fault_switches_and_call_counting(dv: DynamicsSandbox) -> None:
    session = _session(dv)
    dv.reset_counters()
    dv.faults.update(error_rate=1.0, error_calls=1)
    failed = session.get(dv.api_url() + "/WhoAmI")
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "0x80040216"
    dv.faults.update(request_limit_after=0)
    limited = session.get(dv.api_url() + "/WhoAmI")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "300"
    dv.faults.reset()
    target = dv.environment.records("contact")[0]["contactid"]
    dv.faults.fail_records(target.upper(), attempts=1)  # any spelling of the GUID
    locked = session.patch(
        f"{dv.api_url()}/contacts({target})", json={"donotemail": True}, headers={"If-Match": "*"}
    )
    assert locked.status_code == 500 and locked.json()["error"]["code"] == "0x80044150"
    assert session.patch(f"{dv.api_url()}/contacts({target})", json={"donotemail": True}).status_code == 204
    assert dv.calls["whoami"] == 2 and dv.calls["update"] == 2
    assert sum(dv.faults_injected.values()) == 3


def test_patch_without_if_match_is_an_upsert_and_odata_version_is_checked(dv: DynamicsSandbox) -> None:
    session = _session(dv)
    new_id = "12345678-1234-4234-8234-123456789abc"
    missing = session.patch(
        f"{dv.api_url()}/contacts({new_id})", json={"lastname": "X"}, headers={"If-Match": "*"}
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "0x80040217"
    created = session.patch(f"{dv.api_url()}/contacts({new_id})", json={"lastname": "X"})
    assert created.status_code == 204 and created.headers["OData-EntityId"].endswith(f"contacts({new_id})")
    assert dv.environment.get("contact", new_id) is not None
    old = session.get(dv.api_url() + "/WhoAmI", headers={"OData-Version": "3.0"})
    assert old.status_code == 400
    unknown = session.patch(f"{dv.api_url()}/contacts({new_id})", json={"nosuch": 1})
    assert unknown.status_code == 400 and "nosuch" in unknown.json()["error"]["message"]


def test_the_sandbox_command_serves_until_interrupted() -> None:
    import signal
    import subprocess
    import sys
    from pathlib import Path

    command = Path(sys.executable).parent / "consentsync"
    process = subprocess.Popen(
        [str(command), "sandbox", "dynamics", "--port", "0", "--seed", "12"],
        stdout=subprocess.PIPE,
        text=True,
        # A suite started in the background (`cmd &` in a shell without job control) ignores
        # SIGINT, and a child inherits that: Ctrl-C is restored, as a terminal would give it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout is not None
        printed = dict(
            line.strip().split(None, 1) if " " in line.strip() else (line.strip(), "")
            for line in (process.stdout.readline() for _ in range(10))
        )
        session = requests.Session()
        session.trust_env = False
        session.verify = printed["CA"].split()[1]
        form = {
            "grant_type": "client_credentials",
            "client_id": printed["client_id"],
            "client_secret": printed["client_secret"],
            "scope": printed["scope"],
        }
        token = session.post(printed["token"].split()[1], data=form, timeout=10).json()["access_token"]
        api = printed["environment"].split()[1] + "/api/data/v9.2"
        contacts = session.get(f"{api}/contacts", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert len(contacts.json()["value"]) == 12
        session.close()  # no kept-alive connection for the server's shutdown to wait on
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0


def _delta_link(session: requests.Session, dv: DynamicsSandbox, select: str) -> str:
    prefer = {"Prefer": "odata.track-changes"}
    body = session.get(dv.api_url() + "/contacts", params={"$select": select}, headers=prefer).json()
    while "@odata.nextLink" in body:
        body = session.get(body["@odata.nextLink"], headers=prefer).json()
    return str(body["@odata.deltaLink"])


def test_a_late_commit_is_seen_by_no_read_then_comes_in_the_next_delta_with_its_stamp(
    dv: DynamicsSandbox,
) -> None:
    session = _session(dv)
    late = dv.environment.begin_late("contact", {"lastname": "Late", "emailaddress1": "late@example.test"})
    stamp = dv.environment.tables["contact"].rows[late]["modifiedon"]
    link = _delta_link(session, dv, "lastname,modifiedon")
    everyone = session.get(dv.api_url() + "/contacts", params={"$select": "lastname"}).json()["value"]
    assert late not in {r["contactid"] for r in everyone}
    assert session.get(f"{dv.api_url()}/contacts({late})").status_code == 404
    dv.environment.update("contact", everyone[0]["contactid"], {"lastname": "Edited"})  # a later change
    dv.environment.commit_late("contact", late)
    changes = session.get(link, headers={"Prefer": "odata.track-changes"}).json()["value"]
    assert [r["contactid"] for r in changes] == [everyone[0]["contactid"], late]  # commit order
    assert changes[1]["modifiedon"] == stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_merge_action_deactivates_the_subordinate_and_names_its_master(dv: DynamicsSandbox) -> None:
    session = _session(dv)
    master, subordinate = (r["contactid"] for r in dv.environment.records("contact")[:2])
    link = _delta_link(session, dv, "merged,_masterid_value,statecode")
    body = {
        "Target": {"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": master},
        "Subordinate": {"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": subordinate},
        "UpdateContent": {"@odata.type": "Microsoft.Dynamics.CRM.contact", "telephone1": "+44 20 7946 0000"},
        "PerformParentingChecks": False,
    }
    assert session.post(dv.api_url() + "/Merge", json=body).status_code == 204
    row = session.get(f"{dv.api_url()}/contacts({subordinate})").json()
    assert (row["merged"], row["_masterid_value"], row["statecode"]) == (True, master, 1)
    assert session.get(f"{dv.api_url()}/contacts({master})").json()["telephone1"] == "+44 20 7946 0000"
    changes = {
        r["contactid"]: r
        for r in session.get(link, headers={"Prefer": "odata.track-changes"}).json()["value"]
    }
    assert changes[subordinate]["merged"] is True and changes[master]["merged"] is False
    again = session.post(dv.api_url() + "/Merge", json=body)
    assert again.status_code == 400  # a subordinate is merged once


def test_delete_inside_a_batch_answers_204_and_shows_as_a_deleted_entity(dv: DynamicsSandbox) -> None:
    session = _session(dv)
    ids = [r["contactid"] for r in dv.environment.records("contact")[:2]]
    link = _delta_link(session, dv, "lastname")
    parts = [
        ("DELETE", f"{dv.api_url()}/contacts({ids[0]})", ""),
        ("DELETE", f"{dv.api_url()}/contacts({ids[0]})", ""),
    ]
    answer = session.post(
        dv.api_url() + "/$batch",
        data=_batch(parts),
        headers={"Content-Type": "multipart/mixed; boundary=batch_t", "Prefer": "odata.continue-on-error"},
    )
    assert [int(code) for code in re.findall(r"HTTP/1\.1 (\d{3})", answer.text)] == [204, 404]
    assert dv.environment.get("contact", ids[0]) is None and dv.environment.get("contact", ids[1]) is not None
    changes = session.get(link, headers={"Prefer": "odata.track-changes"}).json()["value"]
    assert [(r.get("id"), r.get("reason")) for r in changes] == [(ids[0], "deleted")]


def test_the_anonymise_write_of_the_contact_mapping_is_accepted(dv: DynamicsSandbox) -> None:
    from consentsync.mapping import load_mapping

    session = _session(dv)
    (contact,) = (r["contactid"] for r in dv.environment.records("contact")[:1])
    mapping = Path(__file__).resolve().parents[2] / "connectors/consentsync_dynamics/mappings/contact.yaml"
    fields = load_mapping(mapping).spec.personal_fields
    assert {"lastname", "emailaddress1"} <= set(fields)
    answer = session.patch(f"{dv.api_url()}/contacts({contact})", json=fields, headers={"If-Match": "*"})
    assert answer.status_code == 204, answer.text
    row = dv.environment.get("contact", contact)
    assert row is not None and row["lastname"] == "Erased" and row["emailaddress1"] is None
    assert row["fullname"] == "Erased"


def test_a_consent_row_is_created_as_the_web_api_creates_one(dv: DynamicsSandbox) -> None:
    """POST to the entity set (204 and OData-EntityId; with return=representation 201 and the
    row), the purpose lookup bound through its navigation property as declared (msdynmkt_purposeId,
    case-sensitive) to a purpose that exists, the option sets of the table reference, and the
    application user as the row's creator (WhoAmI's UserId)."""
    session = _session(dv)
    consents = f"{dv.api_url()}/msdynmkt_contactpointconsent4s"
    purpose = "6f0b1c7e-0d6a-4c1e-9a51-000000000002"
    row = {
        "msdynmkt_contactpointvalue": "new@example.test",
        "msdynmkt_contactpointtype": 534120000,
        "msdynmkt_value": 534120002,
        "msdynmkt_contactpointconsenttype": 534120000,
        "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({purpose})",
        "msdynmkt_source": 534120000,
        "msdynmkt_logicalreason": 534119999,
        "msdynmkt_reason": "made by a test",
    }
    created = session.post(consents, json=row)
    assert created.status_code == 204, created.text
    new_id = re.search(r"\(([0-9a-f-]{36})\)$", created.headers["OData-EntityId"]).group(1)  # type: ignore[union-attr]
    stored = dv.environment.get("msdynmkt_contactpointconsent4", new_id)
    assert stored is not None and stored["_msdynmkt_purposeid_value"] == purpose
    whoami = session.get(dv.api_url() + "/WhoAmI").json()["UserId"]
    assert stored["_createdby_value"] == stored["_modifiedby_value"] == whoami
    shown = session.post(
        consents + "?$select=msdynmkt_value,_msdynmkt_purposeid_value",
        json={**row, "msdynmkt_contactpointvalue": "shown@example.test"},
        headers={"Prefer": "return=representation"},
    )
    assert shown.status_code == 201 and "OData-EntityId" not in shown.headers
    body = shown.json()
    assert body["msdynmkt_value"] == 534120002 and body["_msdynmkt_purposeid_value"] == purpose
    assert body["msdynmkt_contactpointconsent4id"] and "msdynmkt_contactpointvalue" not in body
    refusals = [
        ({"msdynmkt_purposeid@odata.bind": f"/msdynmkt_purposes({purpose})"}, 400, "0x80060888"),
        (
            {"msdynmkt_purposeId@odata.bind": "/msdynmkt_purposes(99999999-0d6a-4c1e-9a51-000000000002)"},
            404,
            "0x80040217",
        ),
        ({"msdynmkt_purposeId@odata.bind": f"/contacts({purpose})"}, 400, "0x80060888"),
        ({"msdynmkt_source": "Web form"}, 400, "0x80048d19"),
        ({"msdynmkt_source": 7}, 400, "0x8004431a"),
    ]
    for change, status, code in refusals:
        body = {k: v for k, v in row.items() if not k.endswith("@odata.bind")} | change
        answer = session.post(consents, json=body)
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), change
    # Made by someone using the app, the row names them, not the application user.
    mine = dv.environment.create("msdynmkt_contactpointconsent4", {"msdynmkt_value": 534120001})
    assert dv.environment.get("msdynmkt_contactpointconsent4", mine)["_createdby_value"] != whoami  # type: ignore[index]


def test_create_only_upserts_and_alternate_keys_answer_412(dv: DynamicsSandbox) -> None:
    """PATCH with If-None-Match: * creates a row that does not exist and refuses one that does
    (412, "Perform conditional operations using the Web API"); an alternate key refuses a row
    whose values another row holds (412 0x80060892, text compared without regard to case)."""
    session = _session(dv)
    consents = f"{dv.api_url()}/msdynmkt_contactpointconsent4s"
    new_id = "0c0c0c0c-1111-4222-8333-444444444444"
    body = {"msdynmkt_contactpointvalue": "key@example.test", "msdynmkt_value": 534120002}
    first = session.patch(f"{consents}({new_id})", json=body, headers={"If-None-Match": "*"})
    assert first.status_code == 204 and dv.environment.get("msdynmkt_contactpointconsent4", new_id)
    again = session.patch(
        f"{consents}({new_id})", json={"msdynmkt_value": 534120001}, headers={"If-None-Match": "*"}
    )
    assert again.status_code == 412
    assert dv.environment.get("msdynmkt_contactpointconsent4", new_id)["msdynmkt_value"] == 534120002  # type: ignore[index]
    dv.environment.add_alternate_key(
        "msdynmkt_contactpointconsent4", "contactpoint", ["msdynmkt_contactpointvalue"]
    )
    twin = session.post(consents, json={**body, "msdynmkt_contactpointvalue": "KEY@example.test"})
    assert (twin.status_code, twin.json()["error"]["code"]) == (412, "0x80060892")
    assert (
        session.post(consents, json={**body, "msdynmkt_contactpointvalue": "else@example.test"}).status_code
        == 204
    )


def test_a_batch_without_continue_on_error_answers_with_the_first_failed_request_s_status(
    dv: DynamicsSandbox,
) -> None:
    """ "Execute batch operations using the Web API", Handling errors: without the preference the
    batch fails on the first failed request and its error is the batch's; with it, 200."""
    session = _session(dv)
    api = dv.api_url()
    ids = [r["contactid"] for r in dv.environment.records("contact")[:2]]
    parts = [
        ("PATCH", f"{api}/contacts({ids[0]})", '{"donotphone": true}'),
        ("PATCH", f"{api}/contacts({ids[1]})", '{"donotphone": 7}'),
        ("PATCH", f"{api}/contacts({ids[0]})", '{"donotfax": true}'),
    ]
    kind = {"Content-Type": "multipart/mixed; boundary=batch_t"}
    stopped = session.post(f"{api}/$batch", data=_batch(parts), headers=kind)
    assert stopped.status_code == 400 and "Preference-Applied" not in stopped.headers
    assert [int(line.split()[1]) for line in stopped.text.splitlines() if line.startswith("HTTP/1.1 ")] == [
        204,
        400,
    ]
    went_on = session.post(
        f"{api}/$batch", data=_batch(parts), headers={**kind, "Prefer": "odata.continue-on-error"}
    )
    assert went_on.status_code == 200 and went_on.headers["Preference-Applied"] == "odata.continue-on-error"


def test_a_url_inside_a_batch_may_be_64_kb_as_sent_and_no_longer(dv: DynamicsSandbox) -> None:
    session = _session(dv)
    api = dv.api_url()

    def get_of(length: int) -> str:
        url = f"{api}/contacts?$select=contactid&$filter=lastname%20eq%20%27"
        return url + "x" * (length - len(url) - 3) + "%27"

    kind = {"Content-Type": "multipart/mixed; boundary=batch_t", "Prefer": "odata.continue-on-error"}
    parts = [("GET", get_of(65_536), ""), ("GET", get_of(65_537), "")]
    answer = session.post(f"{api}/$batch", data=_batch(parts), headers=kind)
    assert [int(line.split()[1]) for line in answer.text.splitlines() if line.startswith("HTTP/1.1 ")] == [
        200,
        414,
    ]


def test_a_batch_is_one_request_for_the_requests_limit_and_each_of_its_requests_takes_execution_time(
    dv: DynamicsSandbox,
) -> None:
    """ "Service protection API limits": bundled in a batch, requests "avoid the number of
    requests limit"; the execution time limit counters that."""
    session = _session(dv)
    api = dv.api_url()
    ids = [r["contactid"] for r in dv.environment.records("contact")[:10]]
    parts = [("PATCH", f"{api}/contacts({i})", '{"donotfax": true}') for i in ids]
    kind = {"Content-Type": "multipart/mixed; boundary=batch_t", "Prefer": "odata.continue-on-error"}
    dv.set_rate_limit(3, window=30)
    answers = [session.post(f"{api}/$batch", data=_batch(parts), headers=kind) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]  # 30 requests in 3 batches
    assert answers[-1].json()["error"]["code"] == "0x80072322"
    dv.set_rate_limit(None)
    dv.set_execution_limit(15, window=30)
    assert session.post(f"{api}/$batch", data=_batch(parts), headers=kind).status_code == 200
    refused = session.post(f"{api}/$batch", data=_batch(parts), headers=kind)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "0x80072321"
    assert 1 <= int(refused.headers["Retry-After"]) <= 30
    dv.set_execution_limit(None)
