"""The Salesforce sandbox, driven over HTTPS with plain ``requests`` (wire format as documented)
and with simple-salesforce (proof that a real client library can talk to it)."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests
from consentsync_salesforce.sandbox import (
    RecordError,
    SalesforceCredentials,
    SalesforceOrg,
    SalesforceSandbox,
    format_datetime,
)
from consentsync_salesforce.sandbox.ids import to18
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce, format_soql
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from consentsync.sandbox import Faults, system_ca_bundle_path

SEED = 11
BIG = 1500  # contacts in the shared org: its busiest second holds more than one 200-record page


class Api:
    """A thin requests client: token, authenticated calls, paging."""

    def __init__(self, sandbox: SalesforceSandbox) -> None:
        self.sf = sandbox
        self.session = sandbox.requests_session()
        self.token = self.login()

    def login(self) -> str:
        response = self.session.post(self.sf.token_url, data=self.sf.password_form())
        assert response.status_code == 200, response.text
        self.token = response.json()["access_token"]
        return self.token

    def url(self, path: str) -> str:
        if path.startswith("http"):
            return path
        if path.startswith("/"):
            return self.sf.base_url + path
        return f"{self.sf.data_url()}/{path}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return self.session.request(method, self.url(path), headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("GET", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("PATCH", path, **kwargs)

    def query(self, soql: str, *, batch: int | None = None, endpoint: str = "query") -> requests.Response:
        headers = {"Sforce-Query-Options": f"batchSize={batch}"} if batch else {}
        return self.get(endpoint, params={"q": soql}, headers=headers)

    def pages(self, soql: str, *, batch: int | None = None) -> list[dict[str, Any]]:
        response = self.query(soql, batch=batch)
        assert response.status_code == 200, response.text
        pages = [response.json()]
        while not pages[-1]["done"]:
            response = self.get(pages[-1]["nextRecordsUrl"])
            assert response.status_code == 200, response.text
            pages.append(response.json())
        return pages

    def records(self, soql: str, *, batch: int | None = None) -> list[dict[str, Any]]:
        return [r for page in self.pages(soql, batch=batch) for r in page["records"]]


def error(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    assert isinstance(body, list) and len(body) == 1, body
    return body[0]


@pytest.fixture(scope="module")
def big() -> Iterator[SalesforceSandbox]:
    org = SalesforceOrg()
    org.seed(BIG, seed=SEED)
    with SalesforceSandbox(org) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def big_api(big: SalesforceSandbox) -> Api:
    return Api(big)


@pytest.fixture
def sandbox() -> Iterator[SalesforceSandbox]:
    org = SalesforceOrg()
    org.seed(60, seed=3)
    with SalesforceSandbox(org) as sf:
        yield sf


@pytest.fixture
def api(sandbox: SalesforceSandbox) -> Api:
    return Api(sandbox)


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def contact_ids(sandbox: SalesforceSandbox, n: int) -> list[str]:
    return [r["Id"] for r in sandbox.org.records("Contact")[:n]]


# ------------------------------------------------------------------------------------------------ TLS


def test_https_verified_with_the_generated_ca(sandbox: SalesforceSandbox) -> None:
    response = requests.get(f"{sandbox.base_url}/services/data/", verify=str(sandbox.ca_cert_path))
    assert response.status_code == 200
    versions = [v["version"] for v in response.json()]
    assert "59.0" in versions
    assert response.json()[0] == {"label": "Winter '24", "url": "/services/data/v59.0", "version": "59.0"}
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{sandbox.base_url}/services/data/", verify=str(system_ca_bundle_path()))


def test_requests_ca_bundle_overrides_session_verify(
    sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{sandbox.base_url}/services/data/"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(system_ca_bundle_path()))
    naive = requests.Session()
    naive.verify = str(sandbox.ca_cert_path)  # ignored: the environment variable wins
    with pytest.raises(requests.exceptions.SSLError):
        naive.get(url)
    # Way out 1: a session that does not read the environment.
    assert sandbox.requests_session().get(url).status_code == 200
    # Way out 2: a bundle of the sandbox CA plus the system roots, named by the variable itself.
    bundle = sandbox.ca_bundle_path
    text = bundle.read_text()
    assert text.startswith(sandbox.ca_cert_path.read_text().strip())
    assert text.count("BEGIN CERTIFICATE") > 1
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    assert requests.Session().get(url).status_code == 200


# ----------------------------------------------------------------------------------------------- OAuth


def test_password_and_client_credentials_grants(sandbox: SalesforceSandbox) -> None:
    session = sandbox.requests_session()
    body = session.post(sandbox.token_url, data=sandbox.password_form()).json()
    assert set(body) >= {"access_token", "instance_url", "id", "token_type", "issued_at", "signature"}
    assert body["instance_url"] == sandbox.instance_url
    assert body["token_type"] == "Bearer"
    assert body["id"].endswith(f"/id/{sandbox.org.org_id}/{sandbox.org.user_id}")
    identity = session.get(body["id"], headers={"Authorization": f"Bearer {body['access_token']}"})
    assert identity.status_code == 200 and identity.json()["username"] == sandbox.credentials.username

    response = session.post(sandbox.token_url, data=sandbox.client_credentials_form())
    assert response.status_code == 200 and response.json()["access_token"] != body["access_token"]
    c = sandbox.credentials
    basic = session.post(
        sandbox.token_url, data={"grant_type": "client_credentials"}, auth=(c.client_id, c.client_secret)
    )
    assert basic.status_code == 200


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"password": "wrong"}, ("invalid_grant", "authentication failure")),
        ({"username": "nobody@example.com"}, ("invalid_grant", "authentication failure")),
        ({"client_secret": "wrong"}, ("invalid_client", "invalid client credentials")),
        ({"client_id": "unknown"}, ("invalid_client_id", "client identifier invalid")),
        ({"grant_type": "authorization_code"}, ("unsupported_grant_type", "grant type not supported")),
    ],
)
def test_bad_credentials(
    sandbox: SalesforceSandbox, change: dict[str, str], expected: tuple[str, str]
) -> None:
    response = sandbox.requests_session().post(sandbox.token_url, data={**sandbox.password_form(), **change})
    assert response.status_code == 400
    assert (response.json()["error"], response.json()["error_description"]) == expected
    assert "Sforce-Limit-Info" in response.headers


def test_jwt_bearer_grant(rsa_keys: tuple[bytes, bytes]) -> None:
    private, public = rsa_keys
    other_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    credentials = SalesforceCredentials(jwt_public_key_pem=public)
    with SalesforceSandbox(credentials=credentials) as sf:
        session = sf.requests_session()
        now = int(time.time())
        good = {
            "iss": credentials.client_id,
            "sub": credentials.username,
            "aud": "https://login.salesforce.com",
            "exp": now + 180,
        }

        def grant(claims: dict[str, Any], key: Any = private) -> requests.Response:
            assertion = jwt.encode(claims, key, algorithm="RS256")
            form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
            return session.post(sf.token_url, data=form)

        ok = grant(good)
        assert ok.status_code == 200, ok.text
        assert (
            sf.requests_session()
            .get(f"{sf.data_url()}/limits", headers={"Authorization": f"Bearer {ok.json()['access_token']}"})
            .ok
        )
        assert grant({**good, "aud": "https://test.salesforce.com"}).status_code == 200
        cases = [
            (grant(good, other_private), ("invalid_grant", "invalid assertion")),
            (grant({**good, "exp": now - 600}), ("invalid_grant", "expired authorization code")),
            (grant({**good, "aud": "https://elsewhere.example"}), ("invalid_grant", "audience is invalid")),
            (grant({**good, "aud": sf.login_url}), ("invalid_grant", "audience is invalid")),
            (grant({**good, "iss": "someone-else"}), ("invalid_client_id", "client identifier invalid")),
            (
                grant({**good, "sub": "other@example.com"}),
                ("invalid_grant", "user hasn't approved this consumer"),
            ),
        ]
        for response, expected in cases:
            assert response.status_code == 400
            assert (response.json()["error"], response.json()["error_description"]) == expected
        garbage = session.post(
            sf.token_url,
            data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "x.y"},
        )
        assert garbage.json()["error"] == "invalid_grant"


def test_api_calls_need_a_valid_bearer_token(api: Api, sandbox: SalesforceSandbox) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic abc"}):
        response = api.session.get(f"{sandbox.data_url()}/limits", headers=headers)
        assert response.status_code == 401
        assert response.json() == [
            {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
        ]
        assert response.headers["Sforce-Limit-Info"].startswith("api-usage=")
    assert api.get("limits").status_code == 200
    sandbox.expire_sessions()
    assert api.get("limits").status_code == 401
    api.login()
    assert api.get("limits").status_code == 200


def test_session_timeout(sandbox: SalesforceSandbox, api: Api) -> None:
    sandbox.session_timeout = 0.2
    assert api.get("limits").status_code == 200
    time.sleep(0.3)
    assert error(api.get("limits"))["errorCode"] == "INVALID_SESSION_ID"


# ---------------------------------------------------------------------------------- discovery, limits


def test_versions_resources_and_limits(api: Api, sandbox: SalesforceSandbox) -> None:
    resources = api.get("").json()
    assert resources["query"] == "/services/data/v59.0/query"
    assert api.get(f"{sandbox.base_url}/services/data/v62.0/limits").status_code == 200
    assert error(api.get(f"{sandbox.base_url}/services/data/v58.0/limits"))["errorCode"] == "NOT_FOUND"
    response = api.get("limits")
    used, limit = (int(x) for x in response.headers["Sforce-Limit-Info"].split("=")[1].split("/"))
    assert response.json()["DailyApiRequests"] == {"Max": limit, "Remaining": limit - used}
    assert error(api.get("no/such/thing"))["errorCode"] == "NOT_FOUND"
    assert api.call("PUT", "composite/sobjects").status_code == 405
    assert error(api.call("DELETE", "composite/sobjects"))["errorCode"] == "MISSING_ARGUMENT"  # no ids


def test_limit_header_counts_every_authenticated_call(sandbox: SalesforceSandbox, api: Api) -> None:
    sandbox.set_api_usage(0, limit=5)

    def usage(response: requests.Response) -> tuple[int, int]:
        used, limit = response.headers["Sforce-Limit-Info"].removeprefix("api-usage=").split("/")
        return int(used), int(limit)

    assert usage(api.get("limits")) == (1, 5)
    assert usage(api.query("SELECT Id FROM Contact LIMIT 1")) == (2, 5)
    assert usage(api.session.post(sandbox.token_url, data=sandbox.password_form())) == (
        2,
        5,
    )  # not an API call
    assert usage(api.session.get(f"{sandbox.data_url()}/limits")) == (2, 5)  # 401: not counted
    assert usage(api.get("sobjects/Contact/describe")) == (3, 5)
    error_response = api.query("SELECT Nope FROM Contact")
    assert error_response.status_code == 400 and usage(error_response) == (4, 5)
    for _ in range(3):  # usage runs past the limit, as in Salesforce's own example
        last = api.get("limits")
    assert last.status_code == 200 and usage(last) == (7, 5)
    assert sandbox.api_usage == (7, 5)


# ------------------------------------------------------------------------------------------- querying


def test_paging_with_batch_size_and_next_records_url(big: SalesforceSandbox, big_api: Api) -> None:
    total = big.org.count("Contact")
    pages = big_api.pages("SELECT Id, Email FROM Contact", batch=200)
    assert len(pages) == -(-total // 200)
    assert all(len(p["records"]) == 200 for p in pages[:-1])
    assert all(p["totalSize"] == total for p in pages)
    assert [p["done"] for p in pages] == [False] * (len(pages) - 1) + [True]
    assert "nextRecordsUrl" not in pages[-1]
    first_url = pages[0]["nextRecordsUrl"]
    assert first_url.startswith("/services/data/v59.0/query/01g") and first_url.endswith("-200")
    ids = [r["Id"] for p in pages for r in p["records"]]
    assert len(ids) == len(set(ids)) == total
    record = pages[0]["records"][0]
    assert list(record) == ["attributes", "Id", "Email"]
    assert record["attributes"] == {
        "type": "Contact",
        "url": f"/services/data/v59.0/sobjects/Contact/{record['Id']}",
    }
    # batchSize is clamped to 200..2000; the default is 2000
    assert len(big_api.query("SELECT Id FROM Contact", batch=50).json()["records"]) == 200
    assert len(big_api.query("SELECT Id FROM Contact", batch=5000).json()["records"]) == min(total, 2000)
    assert len(big_api.query("SELECT Id FROM Contact").json()["records"]) == min(total, 2000)


def test_query_locator_pages_through_a_snapshot(sandbox: SalesforceSandbox, api: Api) -> None:
    sandbox.org.seed(400, seed=5)
    first = api.query("SELECT Id, Title FROM Contact ORDER BY Id", batch=200).json()
    later_id = sorted(r["Id"] for r in sandbox.org.records("Contact"))[300]
    sandbox.org.update(later_id, Title="Changed after the first page")
    second = api.get(first["nextRecordsUrl"]).json()
    changed = next(r for r in second["records"] if r["Id"] == later_id)
    assert changed["Title"] != "Changed after the first page"
    fresh = api.query(format_soql("SELECT Title FROM Contact WHERE Id = {}", later_id)).json()
    assert fresh["records"][0]["Title"] == "Changed after the first page"
    # unknown or expired locators
    bad = api.get(first["nextRecordsUrl"].replace("01g", "01h"))
    assert error(bad) == {"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}
    sandbox.expire_query_locators()
    assert error(api.get(first["nextRecordsUrl"]))["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_keyset_cursor_on_system_modstamp_and_id(big: SalesforceSandbox, big_api: Api) -> None:
    live = big.org.records("Contact")
    busiest, crowd = Counter(r["SystemModstamp"] for r in live).most_common(1)[0]
    assert crowd > 200, "the seed must put more than a page of records on one second"
    expected = sorted((r["SystemModstamp"], r["Id"]) for r in live)

    # Paging one query with nextRecordsUrl keeps (SystemModstamp, Id) order across page boundaries.
    records = big_api.records("SELECT Id, SystemModstamp FROM Contact ORDER BY SystemModstamp, Id", batch=200)
    assert [r["Id"] for r in records] == [rid for _, rid in expected]
    assert records[0]["SystemModstamp"].endswith(".000+0000")

    # A keyset cursor over (SystemModstamp, Id) loses nothing, whatever the literal's spelling.
    def sync(template: str) -> list[str]:
        seen: list[str] = []
        stamp, last_id = "1970-01-01T00:00:00Z", "000000000000000AAA"
        while True:
            soql = template.format(stamp=stamp, last_id=last_id)
            rows = big_api.query(soql).json()["records"]
            if not rows:
                return seen
            seen += [r["Id"] for r in rows]
            stamp = dt.datetime.strptime(rows[-1]["SystemModstamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
            stamp, last_id = stamp.isoformat(), rows[-1]["Id"]

    keyset = (
        "SELECT Id, SystemModstamp FROM Contact WHERE SystemModstamp > {stamp} OR "
        "(SystemModstamp = {stamp} AND Id > '{last_id}') ORDER BY SystemModstamp, Id LIMIT 200"
    )
    assert sync(keyset) == [rid for _, rid in expected]

    # A cursor on the timestamp alone skips the rest of a crowded second.
    naive = (
        "SELECT Id, SystemModstamp FROM Contact WHERE SystemModstamp > {stamp} "
        "ORDER BY SystemModstamp LIMIT 200"
    )
    assert len(sync(naive)) < len(expected)

    # The three literal spellings (Z, +00:00, .000+0000) mean the same instant.
    stamp = busiest.strftime("%Y-%m-%dT%H:%M:%S")
    counts = {
        spelling: big_api.query(
            f"SELECT COUNT() FROM Contact WHERE SystemModstamp = {stamp}{spelling}"
        ).json()["totalSize"]
        for spelling in ("Z", "+00:00", ".000+0000")
    }
    assert set(counts.values()) == {crowd}
    ge = big_api.query(f"SELECT COUNT() FROM Contact WHERE SystemModstamp >= {stamp}Z").json()["totalSize"]
    assert ge == sum(1 for r in live if r["SystemModstamp"] >= busiest)
    # A '+' left unencoded in a hand-built URL arrives as a space: a malformed query.
    raw = big_api.session.get(
        f"{big.data_url()}/query?q=SELECT+Id+FROM+Contact+WHERE+SystemModstamp+>+{stamp}+00:00",
        headers={"Authorization": f"Bearer {big_api.token}"},
    )
    assert error(raw)["errorCode"] == "MALFORMED_QUERY"


def test_order_by_nulls_first_and_case_insensitive(big: SalesforceSandbox, big_api: Api) -> None:
    rows = big_api.records("SELECT Id, Legal_Basis__c FROM Contact ORDER BY Legal_Basis__c, Id")
    values = [r["Legal_Basis__c"] for r in rows]
    nulls = values.count(None)
    assert nulls > 0 and values[:nulls] == [None] * nulls
    assert values[nulls:] == sorted(values[nulls:], key=str.casefold)
    desc = [
        r["Legal_Basis__c"]
        for r in big_api.records("SELECT Legal_Basis__c FROM Contact ORDER BY Legal_Basis__c DESC")
    ]
    assert desc[:nulls] == [None] * nulls and desc[nulls:] == sorted(
        values[nulls:], key=str.casefold, reverse=True
    )
    last = [
        r["Legal_Basis__c"]
        for r in big_api.records("SELECT Legal_Basis__c FROM Contact ORDER BY Legal_Basis__c ASC NULLS LAST")
    ]
    assert last[-nulls:] == [None] * nulls
    emails = [r["Email"] for r in big_api.records("SELECT Email FROM Contact ORDER BY Email DESC LIMIT 300")]
    assert emails == sorted(emails, key=str.casefold, reverse=True)


def test_where_semantics(big: SalesforceSandbox, big_api: Api) -> None:
    def count(where: str) -> int:
        response = big_api.query(f"SELECT COUNT() FROM Contact WHERE {where}")
        assert response.status_code == 200, response.text
        return response.json()["totalSize"]

    total = big.org.count("Contact")
    sample = big.org.records("Contact")[7]
    # text = is case-insensitive (IN and LIKE too)
    upper = sample["Email"].upper()
    matches = big_api.records(format_soql("SELECT Id, Email FROM Contact WHERE Email = {}", upper))
    assert sample["Id"] in [r["Id"] for r in matches]
    assert count(format_soql("Email IN {}", [upper, "nobody@example.com"])) == len(matches)
    assert count(format_soql("Email LIKE {}", sample["Email"].split("@")[0].upper() + "@%")) >= 1
    # != also matches null
    consent = count("Legal_Basis__c = 'Consent'")
    nulls = count("Legal_Basis__c = null")
    assert nulls > 0
    assert count("Legal_Basis__c != 'Consent'") == total - consent
    assert count("Legal_Basis__c <> 'consent'") == total - consent
    assert count("Legal_Basis__c != null") == total - nulls
    assert count("Legal_Basis__c NOT IN ('Consent', 'Contract')") == total - consent - count(
        "Legal_Basis__c = 'Contract'"
    )
    # booleans, AND / OR with parentheses, NOT
    opted = count("HasOptedOutOfEmail = true")
    assert opted + count("HasOptedOutOfEmail = false") == total
    both = count("HasOptedOutOfEmail = true AND DoNotCall = true")
    either = count("HasOptedOutOfEmail = true OR DoNotCall = true")
    assert either == opted + count("DoNotCall = true") - both
    assert count("(HasOptedOutOfEmail = true OR DoNotCall = true) AND Legal_Basis__c = null") <= either
    assert count("NOT HasOptedOutOfEmail = true") == total - opted
    # ids: 15- and 18-character forms, range comparison
    assert count(f"Id = '{sample['Id'][:15]}'") == 1
    assert count(f"Id = '{sample['Id']}'") == 1
    assert count(f"Id > '{sample['Id']}'") == sum(
        1 for r in big.org.records("Contact") if r["Id"] > sample["Id"]
    )
    assert count(format_soql("IndividualId = {}", None)) == sum(
        1 for r in big.org.records("Contact") if r["IndividualId"] is None
    )
    # LIMIT / OFFSET
    assert len(big_api.query("SELECT Id FROM Contact ORDER BY Id LIMIT 5 OFFSET 10").json()["records"]) == 5


def test_escaped_string_literals(sandbox: SalesforceSandbox, api: Api) -> None:
    tricky = 'O\'Brien \\ "Quoted" 100%_sure'
    new_id = sandbox.org.create("Contact", LastName=tricky, Email="o'brien@example.com")
    soql = format_soql("SELECT Id, LastName FROM Contact WHERE LastName = {}", tricky)
    assert "\\'" in soql and "\\\\" in soql
    rows = api.query(soql).json()["records"]
    assert [(r["Id"], r["LastName"]) for r in rows] == [(new_id, tricky)]
    like = format_soql("SELECT Id FROM Contact WHERE LastName LIKE '{:like}%'", 'O\'Brien \\ "Quoted" 100%_')
    assert [r["Id"] for r in api.query(like).json()["records"]] == [new_id]
    escaped_wildcard = api.query("SELECT Id FROM Contact WHERE LastName LIKE '%100\\%\\_sure'").json()
    assert escaped_wildcard["totalSize"] == 1
    assert api.query("SELECT Id FROM Contact WHERE LastName LIKE '%100\\%\\_surf'").json()["totalSize"] == 0
    assert (
        api.query(format_soql("SELECT Id FROM Contact WHERE Email = {}", "O'BRIEN@example.com")).json()[
            "totalSize"
        ]
        == 1
    )
    bad = api.query("SELECT Id FROM Contact WHERE LastName = 'a\\qb'")
    assert error(bad)["errorCode"] == "MALFORMED_QUERY"


# The sandbox's answers to queries it refuses, by error code: (query, a part of the message).
QUERY_ERRORS: dict[str, list[tuple[str, str]]] = {
    "MALFORMED_QUERY": [
        (
            "SELECT Id FROM Contact WHERE HasOptedOutOfEmail = true AND DoNotCall = true OR Email = 'a@b.c'",
            "unexpected token: OR",
        ),
        (
            "SELECT Id FROM Contact WHERE Email = 'a@b.c' OR DoNotCall = true AND HasOptedOutOfEmail = true",
            "unexpected token: AND",
        ),
        ("SELECT Id FROM Contact WHERE SystemModstamp > 2026-11-23T03:21:24", "no viable"),
        ("SELECT Id FROM Contact WHERE", "unexpected token: '<EOF>'"),
        ("SELECT Id Contact", "unexpected token: 'Contact'"),
        ('SELECT Id FROM Contact WHERE Email = "a@b.c"', "no viable alternative"),
        ("SELECT Id FROM Contact WHERE Email = :email", "Bind variables"),
        ("SELECT Id, Id FROM Contact", "duplicate field selected: Id"),
    ],
    "INVALID_FIELD": [
        (
            "SELECT Id FROM Contact WHERE SystemModstamp > '2026-11-23T03:21:24Z'",
            "value of filter criterion for field 'SystemModstamp' must be of type dateTime and should not be "
            "enclosed in quotes",
        ),
        (
            "SELECT Id FROM Contact WHERE HasOptedOutOfEmail = 'true'",
            "must be of type boolean and should not be enclosed in quotes",
        ),
        ("SELECT Id FROM Contact WHERE Email = true", "should be enclosed in quotes"),
        ("SELECT Id, Emial FROM Contact", "No such column 'Emial' on entity 'Contact'"),
        ("SELECT Id FROM Contact WHERE Nope = 'x'", "No such column 'Nope'"),
        ("SELECT Id FROM Contact ORDER BY Nope", "No such column 'Nope'"),
    ],
    "INVALID_TYPE": [
        ("SELECT Id FROM Contacts", "sObject type 'Contacts' is not supported"),
    ],
    "INVALID_QUERY_FILTER_OPERATOR": [
        ("SELECT Id FROM Contact WHERE Id = 'abc'", "invalid ID field: abc"),
        ("SELECT Id FROM Contact WHERE DoNotCall > true", "invalid operator"),
    ],
}


@pytest.mark.parametrize(
    ("soql", "code", "text"),
    [(soql, code, text) for code, refused in QUERY_ERRORS.items() for soql, text in refused],
)
def test_query_errors(big_api: Api, soql: str, code: str, text: str) -> None:
    response = big_api.query(soql)
    assert response.status_code == 400
    body = error(response)
    assert body["errorCode"] == code
    assert text in body["message"]
    assert "ERROR at Row:1:Column:" in body["message"]


def test_missing_query_string_and_parenthesised_mix(big_api: Api) -> None:
    assert error(big_api.get("query"))["errorCode"] == "MALFORMED_QUERY"
    ok = big_api.query(
        "SELECT Id FROM Contact WHERE (HasOptedOutOfEmail = true AND DoNotCall = true) OR Email = 'x'"
    )
    assert ok.status_code == 200


def test_query_all_includes_deleted_records(sandbox: SalesforceSandbox, api: Api) -> None:
    victim = contact_ids(sandbox, 1)[0]
    deleted_at = sandbox.org.now()
    sandbox.org.clock = lambda: deleted_at
    sandbox.org.delete(victim)
    soql = format_soql("SELECT Id, IsDeleted FROM Contact WHERE Id = {}", victim)
    assert api.query(soql).json()["totalSize"] == 0
    assert api.query(soql, endpoint="queryAll").json()["records"][0]["IsDeleted"] is True
    assert error(api.get(f"sobjects/Contact/{victim}"))["errorCode"] == "ENTITY_IS_DELETED"
    window = {
        "start": (deleted_at - dt.timedelta(minutes=5)).isoformat(),
        "end": (deleted_at + dt.timedelta(minutes=5)).isoformat(),
    }
    # the replication window ends at the last whole minute: a deletion this minute is not covered yet
    assert api.get("sobjects/Contact/deleted/", params=window).json()["deletedRecords"] == []
    sandbox.org.clock = lambda: deleted_at + dt.timedelta(minutes=2)
    deleted = api.get("sobjects/Contact/deleted/", params=window).json()
    assert deleted["deletedRecords"] == [{"id": victim, "deletedDate": format_datetime(deleted_at)}]
    updated = api.get("sobjects/Contact/updated/", params=window).json()
    assert victim not in updated["ids"]
    too_old = {"start": (deleted_at - dt.timedelta(days=31)).isoformat(), "end": window["end"]}
    assert (
        error(api.get("sobjects/Contact/updated/", params=too_old))["errorCode"] == "INVALID_REPLICATION_DATE"
    )


def test_a_merge_leaves_the_merged_record_in_the_recycle_bin_naming_the_survivor(
    sandbox: SalesforceSandbox, api: Api
) -> None:
    survivor, merged, bystander = contact_ids(sandbox, 3)
    merged_at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=1)
    sandbox.org.clock = lambda: merged_at
    sandbox.org.merge(survivor, merged)
    soql = "SELECT Id, IsDeleted, MasterRecordId, SystemModstamp FROM Contact ORDER BY SystemModstamp, Id"
    live = {r["Id"]: r for r in api.records(soql)}
    assert merged not in live and live[survivor]["SystemModstamp"] == format_datetime(merged_at)
    every = {r["Id"]: r for r in api.query(soql, endpoint="queryAll").json()["records"]}
    assert every[merged]["IsDeleted"] is True and every[merged]["MasterRecordId"] == survivor
    assert every[merged]["SystemModstamp"] == format_datetime(merged_at)
    assert every[survivor]["IsDeleted"] is False and every[survivor]["MasterRecordId"] is None
    assert every[bystander]["SystemModstamp"] != format_datetime(merged_at)
    # queryAll reads the recycle bin; plain query does not, even asked for it in the filter
    filtered = format_soql("SELECT Id FROM Contact WHERE IsDeleted = true AND Id = {}", merged)
    assert api.query(filtered).json()["totalSize"] == 0
    assert api.query(filtered, endpoint="queryAll").json()["totalSize"] == 1
    assert error(api.query("SELECT Id FROM Contact ALL ROWS"))["errorCode"] == "MALFORMED_QUERY"  # Apex only
    with pytest.raises(RecordError, match="ENTITY_IS_DELETED"):
        sandbox.org.merge(survivor, merged)
    with pytest.raises(RecordError, match="INVALID_TYPE"):
        sandbox.org.merge(sandbox.org.records("Individual")[0]["Id"], bystander)


def test_a_record_committed_late_appears_with_its_original_stamp(
    sandbox: SalesforceSandbox, api: Api
) -> None:
    began_at = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=3)
    sandbox.org.clock = lambda: began_at
    late = sandbox.org.begin_create("Contact", LastName="Late", Email="late@example.test")
    sandbox.org.clock = lambda: began_at + dt.timedelta(minutes=2)
    after = sandbox.org.create("Contact", LastName="After", Email="after@example.test")
    assert late < after
    soql = format_soql("SELECT Id, SystemModstamp FROM Contact WHERE Id IN {}", [late, after])
    for endpoint in ("query", "queryAll"):
        assert [r["Id"] for r in api.query(soql, endpoint=endpoint).json()["records"]] == [after]
    assert error(api.get(f"sobjects/Contact/{late}"))["errorCode"] == "NOT_FOUND"
    assert late not in {r["Id"] for r in sandbox.org.records("Contact")}
    sandbox.org.commit(late)
    rows = {r["Id"]: r for r in api.query(soql).json()["records"]}
    assert rows[late]["SystemModstamp"] == format_datetime(began_at)
    assert api.get(f"sobjects/Contact/{late}").json()["Email"] == "late@example.test"


def test_composite_delete_answers_one_result_per_id_in_order(sandbox: SalesforceSandbox, api: Api) -> None:
    ids = contact_ids(sandbox, 4)
    lead = sandbox.org.records("Lead")[0]["Id"]
    sandbox.org.delete(ids[2])
    sandbox.faults.lock_records(ids[3], attempts=1)
    asked = [ids[0], "003000000000000AAA", ids[2], ids[3], "not-an-id", lead[:15]]
    response = api.call("DELETE", "composite/sobjects", params={"ids": ",".join(asked), "allOrNone": "false"})
    assert response.status_code == 200, response.text
    results = response.json()
    assert results[0] == {"id": ids[0], "success": True, "errors": []}
    assert [r["success"] for r in results] == [True, False, False, False, False, True]
    codes = [r["errors"][0]["statusCode"] for r in results if not r["success"]]
    assert codes == ["INVALID_CROSS_REFERENCE_KEY", "ENTITY_IS_DELETED", "UNABLE_TO_LOCK_ROW", "MALFORMED_ID"]
    assert all("id" not in r for r in results if not r["success"])
    assert results[5]["id"] == lead  # ids of any object; 15-character ids answered in 18
    deleted = {r["Id"] for r in sandbox.org.records("Contact", include_deleted=True) if r["IsDeleted"]}
    assert {ids[0], ids[2]} <= deleted and ids[3] not in deleted
    assert sandbox.org.get(lead)["IsDeleted"] is True
    assert sandbox.calls["composite"] == 1


def test_composite_delete_all_or_none_and_limits(sandbox: SalesforceSandbox, api: Api) -> None:
    ids = contact_ids(sandbox, 2)
    rolled = api.call(
        "DELETE", "composite/sobjects", params={"ids": f"{ids[0]},003000000000000AAA", "allOrNone": "true"}
    ).json()
    assert rolled[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert sandbox.org.get(ids[0])["IsDeleted"] is False
    too_many = ",".join([ids[0]] * 201)
    assert error(api.call("DELETE", "composite/sobjects", params={"ids": too_many}))["errorCode"] == (
        "EXCEEDED_ID_LIMIT"
    )
    assert sandbox.org.get(ids[0])["IsDeleted"] is False


def test_other_objects_are_queryable(big_api: Api, big: SalesforceSandbox) -> None:
    rows = big_api.records(
        "SELECT Id, PartyId, DataUsePurposeId, PrivacyConsentStatus, CaptureDate, CaptureSource, "
        "EffectiveFrom, DoubleConsentCaptureDate FROM ContactPointTypeConsent "
        "WHERE PrivacyConsentStatus IN ('OptIn', 'OptOut')"
    )
    assert len(rows) == big.org.count("ContactPointTypeConsent") > 0
    assert {r["Id"][:3] for r in rows} == {"0ZY"}
    assert {r["PartyId"][:3] for r in rows} == {"0PK"} and {r["DataUsePurposeId"][:3] for r in rows} == {
        "0ZW"
    }
    assert any(r["DoubleConsentCaptureDate"] for r in rows) and any(
        r["DoubleConsentCaptureDate"] is None for r in rows
    )
    purposes = big_api.records("SELECT Id, Name FROM DataUsePurpose")
    assert {p["Name"] for p in purposes} >= {"Email Marketing"}
    leads = big_api.records("SELECT Id, Email FROM Lead")
    contact_emails = {r["Email"].casefold() for r in big.org.records("Contact")}
    assert leads and all(lead["Email"].casefold() in contact_emails for lead in leads)
    individuals = big_api.query("SELECT COUNT() FROM Individual WHERE HasOptedOutProcessing = false").json()
    assert individuals["totalSize"] > 0


# ---------------------------------------------------------------------------------- describe, sObjects


def test_describe(api: Api) -> None:
    body = api.get("sobjects/Contact/describe").json()
    assert body["name"] == "Contact" and body["keyPrefix"] == "003"
    fields = {f["name"]: f for f in body["fields"]}
    for name in (
        "Id",
        "Email",
        "FirstName",
        "LastName",
        "HasOptedOutOfEmail",
        "DoNotCall",
        "HasOptedOutOfFax",
    ):
        assert name in fields
    assert fields["SystemModstamp"]["type"] == "datetime" and fields["SystemModstamp"]["updateable"] is False
    assert (
        fields["HasOptedOutOfEmail"]["type"] == "boolean"
        and fields["HasOptedOutOfEmail"]["nillable"] is False
    )
    assert fields["IndividualId"]["referenceTo"] == ["Individual"]
    legal = fields["Legal_Basis__c"]
    assert legal["type"] == "picklist" and legal["custom"] is True and legal["updateable"] is True
    assert [v["value"] for v in legal["picklistValues"]][:3] == ["Consent", "Legitimate Interest", "Contract"]
    consent = {f["name"]: f for f in api.get("sobjects/ContactPointTypeConsent/describe").json()["fields"]}
    assert [v["value"] for v in consent["PrivacyConsentStatus"]["picklistValues"]] == [
        "OptIn",
        "OptOut",
        "Seen",
        "NotSeen",
    ]
    assert error(api.get("sobjects/Nope/describe"))["errorCode"] == "NOT_FOUND"
    assert {o["name"] for o in api.get("sobjects").json()["sobjects"]} == {
        "Contact",
        "Lead",
        "Individual",
        "DataUsePurpose",
        "ContactPointTypeConsent",
    }


def test_single_record_get_and_patch(sandbox: SalesforceSandbox, api: Api) -> None:
    record_id = contact_ids(sandbox, 1)[0]
    before = sandbox.org.get(record_id)
    later = dt.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    sandbox.org.clock = lambda: later
    response = api.patch(
        f"sobjects/Contact/{record_id}", json={"HasOptedOutOfEmail": True, "Legal_Basis__c": "Contract"}
    )
    assert response.status_code == 204 and response.content == b""
    got = api.get(f"sobjects/Contact/{record_id}").json()
    assert got["HasOptedOutOfEmail"] is True and got["Legal_Basis__c"] == "Contract"
    assert got["SystemModstamp"] == got["LastModifiedDate"] == "2030-01-02T03:04:05.000+0000"
    assert got["CreatedDate"] == format_datetime(before["CreatedDate"])
    assert api.get(f"sobjects/Contact/{record_id[:15]}", params={"fields": "Id,Email"}).json() == {
        "attributes": {"type": "Contact", "url": f"/services/data/v59.0/sobjects/Contact/{record_id}"},
        "Id": record_id,
        "Email": before["Email"],
    }
    assert api.patch(f"sobjects/Contact/{record_id}", json={"Legal_Basis__c": None}).status_code == 204
    assert sandbox.org.get(record_id)["Legal_Basis__c"] is None

    missing = "003" + record_id[3:9] + "zzzzzz"
    assert error(api.patch(f"sobjects/Contact/{missing}", json={"DoNotCall": True})) == {
        "errorCode": "NOT_FOUND",
        "message": "The requested resource does not exist",
    }
    readonly = error(
        api.patch(f"sobjects/Contact/{record_id}", json={"SystemModstamp": "2020-01-01T00:00:00Z"})
    )
    assert readonly["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE" and readonly["fields"] == [
        "SystemModstamp"
    ]
    unknown = error(api.patch(f"sobjects/Contact/{record_id}", json={"Nope__c": 1}))
    assert unknown["errorCode"] == "INVALID_FIELD"
    picklist = error(api.patch(f"sobjects/Contact/{record_id}", json={"Legal_Basis__c": "Because"}))
    assert picklist["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    email = error(api.patch(f"sobjects/Contact/{record_id}", json={"Email": "not-an-email"}))
    assert email["errorCode"] == "INVALID_EMAIL_ADDRESS" and email["fields"] == ["Email"]
    wrong_type = error(api.patch(f"sobjects/Contact/{record_id}", json={"DoNotCall": "maybe"}))
    assert wrong_type["errorCode"] == "JSON_PARSER_ERROR"
    assert (
        error(api.patch(f"sobjects/Lead/{record_id}", json={"DoNotCall": True}))["errorCode"] == "NOT_FOUND"
    )


def test_create_and_mutate_as_a_user(sandbox: SalesforceSandbox, api: Api) -> None:
    created = api.call("POST", "sobjects/Contact", json={"LastName": "Nguyen", "Email": "nguyen@example.com"})
    assert created.status_code == 201 and created.json()["success"] is True
    new_id = created.json()["id"]
    assert new_id.startswith("003") and len(new_id) == 18 and to18(new_id[:15]) == new_id
    missing = error(api.call("POST", "sobjects/Contact", json={"FirstName": "No last name"}))
    assert missing["errorCode"] == "REQUIRED_FIELD_MISSING"
    lead_id = sandbox.org.create("Lead", LastName="Ng", Company="Acme", Email="NGUYEN@example.com")
    assert sandbox.org.get(lead_id)["Status"] == "Open - Not Contacted"
    assert {r["Id"] for r in sandbox.org.find("Lead", Email="nguyen@EXAMPLE.com")} == {lead_id}
    stamp = dt.datetime(2031, 5, 6, 7, 8, 9, 999999, tzinfo=dt.UTC)
    sandbox.org.clock = lambda: stamp
    sandbox.org.update(new_id, DoNotCall=True)
    assert sandbox.org.get(new_id)["SystemModstamp"] == stamp.replace(microsecond=0)
    rows = sandbox.org.query("SELECT Id FROM Contact WHERE SystemModstamp = 2031-05-06T07:08:09Z")
    assert rows == [{"Id": new_id}]


# ------------------------------------------------------------------------------- sObject Collections


def test_composite_per_record_results(sandbox: SalesforceSandbox, api: Api) -> None:
    ids = contact_ids(sandbox, 4)
    sandbox.faults.lock_records(ids[1])
    payload = {
        "allOrNone": False,
        "records": [
            {"attributes": {"type": "Contact"}, "id": ids[0], "HasOptedOutOfEmail": True},
            {"attributes": {"type": "Contact"}, "id": ids[1], "HasOptedOutOfEmail": True},
            {"attributes": {"type": "Contact"}, "id": ids[2], "Email": "broken"},
            {"attributes": {"type": "Contact"}, "id": ids[3][:15], "DoNotCall": True},
        ],
    }
    response = api.patch("composite/sobjects", json=payload)
    assert response.status_code == 200
    results = response.json()
    assert results[0] == {"id": ids[0], "success": True, "errors": []}
    assert results[1]["success"] is False and "id" not in results[1]
    assert results[1]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"
    assert results[1]["errors"][0]["fields"] == []
    assert results[2]["errors"][0]["statusCode"] == "INVALID_EMAIL_ADDRESS"
    assert results[3] == {"id": ids[3], "success": True, "errors": []}
    assert sandbox.org.get(ids[0])["HasOptedOutOfEmail"] is True
    assert sandbox.org.get(ids[3])["DoNotCall"] is True


def test_composite_all_or_none_rolls_back(sandbox: SalesforceSandbox, api: Api) -> None:
    ids = contact_ids(sandbox, 3)
    before = [sandbox.org.get(i) for i in ids]
    payload = {
        "allOrNone": True,
        "records": [
            {"attributes": {"type": "Contact"}, "id": ids[0], "Legal_Basis__c": "Contract"},
            {"attributes": {"type": "Contact"}, "id": ids[1], "Legal_Basis__c": "Nonsense"},
            {"attributes": {"type": "Contact"}, "id": ids[2], "DoNotCall": not before[2]["DoNotCall"]},
        ],
    }
    results = api.patch("composite/sobjects", json=payload).json()
    assert [r["success"] for r in results] == [False, False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert [sandbox.org.get(i) for i in ids] == before


def test_composite_limits_and_request_errors(sandbox: SalesforceSandbox, api: Api) -> None:
    record_id = contact_ids(sandbox, 1)[0]
    too_many = {"records": [{"attributes": {"type": "Contact"}, "id": record_id, "DoNotCall": True}] * 201}
    response = api.patch("composite/sobjects", json=too_many)
    assert response.status_code == 400
    assert error(response)["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert api.patch("composite/sobjects", json={"records": too_many["records"][:200]}).status_code == 200
    no_type = {"records": [{"id": record_id, "DoNotCall": True}]}
    assert error(api.patch("composite/sobjects", json=no_type))["errorCode"] == "INVALID_TYPE"
    bad_field = {"records": [{"attributes": {"type": "Contact"}, "id": record_id, "Nope": 1}]}
    assert error(api.patch("composite/sobjects", json=bad_field))["errorCode"] == "INVALID_FIELD"
    mixed = api.patch(
        "composite/sobjects",
        json={
            "records": [
                {"attributes": {"type": "Lead"}, "id": record_id, "DoNotCall": True},
                {"attributes": {"type": "Contact"}, "DoNotCall": True},
            ]
        },
    ).json()
    assert [r["errors"][0]["statusCode"] for r in mixed] == ["MALFORMED_ID", "MISSING_ARGUMENT"]
    individual = sandbox.org.create("Individual", LastName="Ng")
    missing_individual = "0PK" + individual[3:9] + "zzzzzz"
    links = api.patch(
        "composite/sobjects",
        json={
            "records": [
                {"attributes": {"type": "Contact"}, "id": record_id, "IndividualId": individual},
                {"attributes": {"type": "Contact"}, "id": record_id, "IndividualId": missing_individual},
                {"attributes": {"type": "Contact"}, "id": record_id, "IndividualId": record_id},
            ]
        },
    ).json()
    assert links[0]["success"] is True and sandbox.org.get(record_id)["IndividualId"] == individual
    assert [r["errors"][0]["statusCode"] for r in links[1:]] == [
        "INVALID_CROSS_REFERENCE_KEY",
        "MALFORMED_ID",
    ]
    assert links[1]["errors"][0]["fields"] == ["IndividualId"]


# ------------------------------------------------------------------------------------- Bulk API 2.0


def bulk_job(api: Api, **body: Any) -> dict[str, Any]:
    response = api.call("POST", "jobs/ingest", json={"object": "Contact", "contentType": "CSV", **body})
    assert response.status_code == 200, response.text
    return response.json()


def upload_and_close(api: Api, job_id: str, data: bytes) -> None:
    put = api.call("PUT", f"jobs/ingest/{job_id}/batches", data=data, headers={"Content-Type": "text/csv"})
    assert put.status_code == 201 and put.content == b""
    closed = api.patch(f"jobs/ingest/{job_id}", json={"state": "UploadComplete"})
    assert closed.status_code == 200 and closed.json()["state"] == "UploadComplete"


def wait_for(api: Api, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        info = api.get(f"jobs/ingest/{job_id}").json()
        if info["state"] in ("JobComplete", "Failed", "Aborted"):
            return info
        time.sleep(0.02)
    raise AssertionError("bulk job did not finish")


def test_bulk_ingest_round_trip(sandbox: SalesforceSandbox, api: Api) -> None:
    ids = contact_ids(sandbox, 4)
    sandbox.org.update(ids[0], Legal_Basis__c="Consent", Title="Keep me")
    sandbox.org.update(ids[1], Legal_Basis__c="Contract")
    sandbox.faults.lock_records(ids[3], attempts=1)
    job = bulk_job(api, operation="update", lineEnding="LF")
    assert job["state"] == "Open" and job["id"].startswith("750") and job["lineEnding"] == "LF"
    assert job["contentUrl"] == f"services/data/v59.0/jobs/ingest/{job['id']}/batches"
    csv_data = (
        "Id,HasOptedOutOfEmail,Legal_Basis__c,Title\n"
        f"{ids[0]},true,,\n"  # empty cells leave Legal_Basis__c and Title as they are
        f"{ids[1]},false,#N/A,#N/A\n"  # #N/A sets them to null
        f"{ids[2]},true,Nonsense,\n"
        f"{ids[3]},true,Consent,\n"
    )
    upload_and_close(api, job["id"], csv_data.encode())
    info = wait_for(api, job["id"])
    assert info["state"] == "JobComplete"
    assert info["numberRecordsProcessed"] == 4 and info["numberRecordsFailed"] == 2
    first, second = sandbox.org.get(ids[0]), sandbox.org.get(ids[1])
    assert first["HasOptedOutOfEmail"] is True
    assert first["Legal_Basis__c"] == "Consent" and first["Title"] == "Keep me"
    assert second["Legal_Basis__c"] is None and second["Title"] is None
    successful = api.get(f"jobs/ingest/{job['id']}/successfulResults/")
    assert successful.headers["Content-Type"].startswith("text/csv")
    lines = successful.text.splitlines()
    assert lines[0] == '"sf__Id","sf__Created","Id","HasOptedOutOfEmail","Legal_Basis__c","Title"'
    assert {line.split(",")[0].strip('"') for line in lines[1:]} == {ids[0], ids[1]}
    failed = api.get(f"jobs/ingest/{job['id']}/failedResults/").text.splitlines()
    assert failed[0].startswith('"sf__Id","sf__Error"')
    errors = {row.split(",")[0].strip('"'): row for row in failed[1:]}
    assert "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST:Legal Basis: bad value" in errors[ids[2]]
    assert "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access" in errors[ids[3]]
    # the lock was for one attempt only: a retry of the failed rows succeeds
    retry = bulk_job(api, operation="update")
    upload_and_close(api, retry["id"], f"Id,Legal_Basis__c\n{ids[3]},Consent\n".encode())
    assert wait_for(api, retry["id"])["numberRecordsFailed"] == 0
    assert sandbox.org.get(ids[3])["Legal_Basis__c"] == "Consent"
    listed = {j["id"] for j in api.get("jobs/ingest").json()["records"]}
    assert {job["id"], retry["id"]} <= listed
    assert api.call("DELETE", f"jobs/ingest/{retry['id']}").status_code == 204
    assert error(api.get(f"jobs/ingest/{retry['id']}"))["errorCode"] == "NOT_FOUND"


def test_bulk_line_ending_mismatch_fails_the_job(sandbox: SalesforceSandbox, api: Api) -> None:
    ids = contact_ids(sandbox, 2)
    for record_id in ids:
        sandbox.org.update(record_id, DoNotCall=False)
    data = f"Id,DoNotCall\r\n{ids[0]},true\r\n{ids[1]},true\r\n".encode()
    job = bulk_job(api, operation="update", lineEnding="LF")
    upload_and_close(api, job["id"], data)
    info = wait_for(api, job["id"])
    assert info["state"] == "Failed"
    assert info["errorMessage"] == (
        "ClientInputError : LineEnding is invalid on user data. Current LineEnding setting is LF"
    )
    assert not any(sandbox.org.get(i)["DoNotCall"] for i in ids)
    assert api.get(f"jobs/ingest/{job['id']}/unprocessedrecords/").text == data.decode()
    crlf = bulk_job(api, operation="update", lineEnding="CRLF")
    upload_and_close(api, crlf["id"], data)
    assert wait_for(api, crlf["id"])["state"] == "JobComplete"
    assert all(sandbox.org.get(i)["DoNotCall"] for i in ids)
    unknown = bulk_job(api, operation="update")
    upload_and_close(api, unknown["id"], f"Id,Nope\n{ids[0]},1\n".encode())
    assert wait_for(api, unknown["id"])["errorMessage"] == "InvalidBatch : Field name not found : Nope"


def test_bulk_processing_delay_and_state_errors(sandbox: SalesforceSandbox, api: Api) -> None:
    sandbox.bulk_delay = 0.2
    record_id = contact_ids(sandbox, 1)[0]
    job = bulk_job(api, operation="update")
    upload_and_close(api, job["id"], f"Id,DoNotCall\n{record_id},true\n".encode())
    assert api.get(f"jobs/ingest/{job['id']}").json()["state"] == "UploadComplete"
    assert wait_for(api, job["id"])["state"] == "JobComplete"
    again = api.call(
        "PUT", f"jobs/ingest/{job['id']}/batches", data=b"Id\n", headers={"Content-Type": "text/csv"}
    )
    assert error(again)["errorCode"] == "INVALIDJOBSTATE"
    assert error(api.patch(f"jobs/ingest/{job['id']}", json={"state": "UploadComplete"}))["errorCode"] == (
        "INVALIDJOBSTATE"
    )
    aborted = bulk_job(api, operation="update")
    assert api.patch(f"jobs/ingest/{aborted['id']}", json={"state": "Aborted"}).json()["state"] == "Aborted"
    assert error(api.call("POST", "jobs/ingest", json={"object": "Nope", "operation": "update"}))[
        "errorCode"
    ] == ("INVALIDENTITY")
    assert error(api.get("jobs/ingest/7508d0000000000AAA"))["errorCode"] == "NOT_FOUND"


# ------------------------------------------------------------------------------------------- faults


def test_fault_server_errors_are_seeded_and_filterable(sandbox: SalesforceSandbox, api: Api) -> None:
    sandbox.faults.update(error_rate=1.0)
    response = api.get("limits")
    assert response.status_code == 503
    assert error(response)["errorCode"] == "SERVER_UNAVAILABLE"
    assert "Sforce-Limit-Info" in response.headers
    sandbox.faults.update(error_kinds={"query"})
    assert api.get("limits").status_code == 200
    assert api.query("SELECT Id FROM Contact").status_code == 503

    def pattern(seed: int) -> list[int]:
        sandbox.faults.update(error_rate=0.5, error_kinds=None, seed=seed)
        return [api.get("limits").status_code for _ in range(24)]

    first = pattern(42)
    assert set(first) == {200, 503}
    assert pattern(42) == first
    sandbox.faults.reset()
    assert api.get("limits").status_code == 200
    assert sandbox.faults_injected["http_503"] >= 14


def test_fault_request_limit_exceeded(sandbox: SalesforceSandbox, api: Api) -> None:
    sandbox.faults.update(request_limit_after=2)
    assert api.get("limits").status_code == 200
    assert api.get("limits").status_code == 200
    refused = api.get("limits")
    assert refused.status_code == 403
    assert refused.json() == [
        {"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}
    ]
    sandbox.faults.update(request_limit_after=None, enforce_daily_limit=True)
    sandbox.set_api_usage(10, limit=10)
    assert api.get("limits").status_code == 403
    sandbox.set_api_usage(9)
    assert api.get("limits").status_code == 200  # usage reaches 10: the next call is refused
    assert api.get("limits").status_code == 403


def test_fault_session_expiry(sandbox: SalesforceSandbox, api: Api) -> None:
    sandbox.faults.update(session_expiry_after=2)
    old = api.token
    assert api.get("limits").status_code == 200
    assert api.get("limits").status_code == 200
    assert error(api.get("limits"))["errorCode"] == "INVALID_SESSION_ID"
    assert api.login() != old
    for _ in range(4):  # once only, unless repeat is set
        assert api.get("limits").status_code == 200
    sandbox.faults.update(session_expiry_after=1, session_expiry_repeat=True)
    assert api.get("limits").status_code == 200
    assert api.get("limits").status_code == 401
    api.login()
    assert api.get("limits").status_code == 200
    assert api.get("limits").status_code == 401


def test_fault_lock_single_patch_for_first_attempts(sandbox: SalesforceSandbox, api: Api) -> None:
    record_id = contact_ids(sandbox, 1)[0]
    sandbox.faults.update(lock_ids={record_id[:15]: 2})
    for _ in range(2):
        locked = api.patch(f"sobjects/Contact/{record_id}", json={"DoNotCall": True})
        assert locked.status_code == 400
        assert error(locked)["errorCode"] == "UNABLE_TO_LOCK_ROW"
    assert api.patch(f"sobjects/Contact/{record_id}", json={"DoNotCall": True}).status_code == 204


def test_fault_slow_responses(sandbox: SalesforceSandbox, api: Api) -> None:
    sandbox.faults.update(delay=0.3, delay_kinds={"limits"})
    started = time.monotonic()
    assert api.get("limits").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert api.query("SELECT Id FROM Contact LIMIT 1").status_code == 200
    assert time.monotonic() - started < 0.3
    sandbox.faults.update(delay_kinds=None, delay_paths={"/sobjects/"})
    started = time.monotonic()
    api.get("sobjects/Contact/describe")
    assert time.monotonic() - started >= 0.3
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.get("sobjects/Contact/describe", timeout=0.1)


def test_fault_connection_reset(sandbox: SalesforceSandbox, api: Api) -> None:
    sandbox.faults.update(reset_rate=1.0, reset_kinds={"query"})
    with pytest.raises(requests.exceptions.ConnectionError):
        api.query("SELECT Id FROM Contact")
    assert sandbox.faults_injected["reset"] == 1
    assert sandbox.calls["query"] == 0  # no answer, nothing served
    assert api.get("limits").status_code == 200
    sandbox.faults.update(reset_rate=0.0)
    assert api.query("SELECT Id FROM Contact").status_code == 200


def test_faults_at_construction_and_validation() -> None:
    with SalesforceSandbox(faults={"error_rate": 1.0, "error_status": 500}) as sf:
        response = sf.requests_session().get(f"{sf.base_url}/services/data/")
        assert response.status_code == 500
    shared = Faults(delay=0.0)
    assert SalesforceSandbox(faults=shared).faults is shared
    with pytest.raises(TypeError):
        shared.update(no_such_switch=1)
    with pytest.raises(ValueError):
        shared.update(error_kinds={"no_such_kind"})
    with pytest.raises(ValueError):
        shared.fail_records("not-an-id")


def test_call_counters(sandbox: SalesforceSandbox, api: Api) -> None:
    sandbox.reset_counters()
    record_id = contact_ids(sandbox, 1)[0]
    sandbox.org.seed(300, seed=9)
    api.login()
    first = api.query("SELECT Id FROM Contact", batch=200).json()
    api.get(first["nextRecordsUrl"])
    api.get("sobjects/Contact/describe")
    api.patch(f"sobjects/Contact/{record_id}", json={"DoNotCall": True})
    api.patch("composite/sobjects", json={"records": []})
    job = bulk_job(api, operation="update")
    upload_and_close(api, job["id"], f"Id,DoNotCall\n{record_id},false\n".encode())
    api.get(f"jobs/ingest/{job['id']}")
    api.get(f"jobs/ingest/{job['id']}/failedResults/")
    assert sandbox.calls == Counter(
        {
            "token": 1,
            "query": 1,
            "queryMore": 1,
            "describe": 1,
            "sobject_patch": 1,
            "composite": 1,
            "bulk_create": 1,
            "bulk_upload": 1,
            "bulk_state": 1,
            "bulk_status": 1,
            "bulk_results": 1,
        }
    )
    assert sandbox.total_calls == 11


# ------------------------------------------------------------------------------- simple-salesforce


def test_simple_salesforce_against_the_sandbox(
    big: SalesforceSandbox, big_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # REQUESTS_CA_BUNDLE names the combined bundle: a default session trusts the sandbox and the world.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(big.ca_bundle_path))
    session = requests.Session()
    token = session.post(big.token_url, data=big.client_credentials_form()).json()["access_token"]
    sf = Salesforce(instance_url=big.instance_url, session_id=token, session=session, version="59.0")

    total = big.org.count("Contact")
    big.reset_counters()
    rows = list(
        sf.query_all_iter(
            "SELECT Id, Email, SystemModstamp FROM Contact ORDER BY SystemModstamp, Id",
            headers={"Sforce-Query-Options": "batchSize=500"},
        )
    )
    assert len(rows) == total and len({r["Id"] for r in rows}) == total
    assert big.calls["query"] == 1 and big.calls["queryMore"] == -(-total // 500) - 1
    assert sf.api_usage["api-usage"].total == big.api_limit
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == total
    lead = big.org.records("Lead")[0]
    same_person = sf.query_all(format_soql("SELECT Id FROM Contact WHERE Email = {}", lead["Email"]))
    assert same_person["totalSize"] >= 1

    describe = sf.Contact.describe()
    assert "Legal_Basis__c" in {f["name"] for f in describe["fields"]}

    ids = [r["Id"] for r in rows[:3]]
    big.faults.lock_records(ids[2])
    try:
        results = sf.restful(
            "composite/sobjects",
            method="PATCH",
            json={
                "allOrNone": False,
                "records": [
                    {"attributes": {"type": "Contact"}, "id": i, "HasOptedOutOfFax": True} for i in ids
                ],
            },
        )
    finally:
        big.faults.unlock_records()
    assert [r["success"] for r in results] == [True, True, False]
    assert results[2]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"
    assert sf.Contact.update(ids[0], {"DoNotCall": True}) == 204
    assert sf.Contact.get(ids[0])["DoNotCall"] is True

    with pytest.raises(SalesforceMalformedRequest) as malformed:
        sf.query("SELECT Id FROM Contact WHERE DoNotCall = true AND HasOptedOutOfFax = true OR Email = 'x'")
    assert malformed.value.content[0]["errorCode"] == "MALFORMED_QUERY"
    with pytest.raises(SalesforceResourceNotFound):
        sf.Contact.get("0038d0000000000AAA")

    outcome = sf.bulk2.Contact.update(
        records=[
            {"Id": ids[1], "DoNotCall": "true", "Legal_Basis__c": "#N/A", "Email": ""},
            {"Id": ids[0], "DoNotCall": "", "Legal_Basis__c": "", "Email": "bad"},
        ],
        wait=0.05,
    )
    assert outcome[0]["numberRecordsProcessed"] == 2 and outcome[0]["numberRecordsFailed"] == 1
    assert "INVALID_EMAIL_ADDRESS" in sf.bulk2.Contact.get_failed_records(outcome[0]["job_id"])
    assert big.org.get(ids[1])["Legal_Basis__c"] is None and big.org.get(ids[1])["DoNotCall"] is True

    big.faults.update(request_limit_after=0)
    try:
        with pytest.raises(SalesforceRefusedRequest):
            sf.query("SELECT Id FROM Contact LIMIT 1")
    finally:
        big.faults.reset()
    big.faults.update(error_rate=1.0, error_kinds={"limits"})
    try:
        with pytest.raises(SalesforceGeneralError) as unavailable:
            sf.limits()
        assert unavailable.value.status == 503
    finally:
        big.faults.reset()
    big.expire_sessions()
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Contact LIMIT 1")
    big_api.login()  # the shared client logs in again after the sessions were expired


def test_concurrent_clients(sandbox: SalesforceSandbox) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ids = contact_ids(sandbox, 40)
    token = sandbox.issue_token()

    def work(chunk: list[str]) -> tuple[int, int]:
        session = sandbox.requests_session()
        headers = {"Authorization": f"Bearer {token}"}
        records = [{"attributes": {"type": "Contact"}, "id": i, "HasOptedOutOfFax": True} for i in chunk]
        saved = session.patch(
            f"{sandbox.data_url()}/composite/sobjects", json={"records": records}, headers=headers
        )
        read = session.get(
            f"{sandbox.data_url()}/query", params={"q": "SELECT Id FROM Contact"}, headers=headers
        )
        return saved.status_code, read.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(work, [ids[i : i + 5] for i in range(0, 40, 5)]))
    assert outcomes == [(200, 200)] * 8
    assert all(sandbox.org.get(i)["HasOptedOutOfFax"] for i in ids)
    assert sandbox.calls["composite"] == 8 and sandbox.calls["query"] == 8
