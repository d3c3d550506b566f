"""A body that names a key twice is bad input (session 59b).

``POST /v1/consents`` with two "email"s and two "status"es answered 201 and recorded the last of
each: a withdrawal for the second address, nothing for the first. A gateway, WAF or audit proxy
that reads the first value saw a grant for another person. docs/hub.md: bad input is refused
with 422 and a one-line error naming the field, nothing recorded; the config and mapping loaders
refuse duplicate keys the same way. Every JSON body of the capture API is checked, at any depth.
"""

from __future__ import annotations

import pytest

from consentsync.hub.api import duplicate_key
from tests.hub.conftest import HubWorld
from tests.hub.people_world import sqlite_ledger_url

# The module's fixture: `ledger_url` (SQLite only here).
FIXTURES = (sqlite_ledger_url,)

FIRST, SECOND = "first@example.test", "second@example.test"
GRANT = '"purpose": "newsletter", "status": "granted", "notice_version": "2026-05"'


def raw(world: HubWorld, path: str, body: str, content_type: str = "application/json") -> tuple[int, dict]:
    answer = world.client.post(
        path, content=body.encode(), headers={**world.auth(), "Content-Type": content_type}
    )
    return answer.status_code, answer.json()


def known(world: HubWorld, *emails: str) -> list[str]:
    return [uid for email in emails for uid in world.ledger.subject_uids_for_email(email)]


def test_a_consent_naming_the_email_and_status_twice_is_refused_and_nothing_recorded(world: HubWorld) -> None:
    body = f'{{"email": "{FIRST}", {GRANT}, "email": "{SECOND}", "status": "withdrawn"}}'
    status, answer = raw(world, "/consents", body)
    assert (status, answer) == (422, {"error": "email: duplicate key 'email' in the top level"})
    assert known(world, FIRST, SECOND) == [] and world.inbox.messages == []
    # The same consent named once is recorded as ever.
    status, answer = raw(world, "/consents", f'{{"email": "{FIRST}", {GRANT}}}')
    assert status == 201 and answer["results"][0]["recorded"] == "granted"


def test_a_key_named_twice_deep_in_a_batch_is_named_with_its_place(world: HubWorld) -> None:
    body = (
        f'{{"consents": [{{"email": "{FIRST}", {GRANT}}}, '
        f'{{"email": "{SECOND}", {GRANT}, "status": "withdrawn"}}], "gpc": false}}'
    )
    status, answer = raw(world, "/consents", body, "application/json; charset=utf-8")
    assert (status, answer) == (422, {"error": "consents[1].status: duplicate key 'status' in consents[1]"})
    assert known(world, FIRST, SECOND) == []
    # "consents" itself twice: which batch was meant?
    one = f'[{{"email": "{FIRST}", {GRANT}}}]'
    status, answer = raw(world, "/consents", f'{{"consents": {one}, "consents": {one}}}')
    assert (status, answer["error"]) == (422, "consents: duplicate key 'consents' in the top level")
    assert known(world, FIRST) == []


@pytest.mark.parametrize(
    ("path", "body", "key"),
    [
        ("/objections", f'{{"email": "{FIRST}", "purpose": "profiling", "email": "{SECOND}"}}', "email"),
        ("/erasure-requests", f'{{"email": "{FIRST}", "reason": "asked", "email": "{SECOND}"}}', "email"),
        ("/decisions", f'{{"email": "{FIRST}", "purpose": "newsletter", "purpose": "profiling"}}', "purpose"),
    ],
)
def test_every_json_body_of_the_api_is_checked(world: HubWorld, path: str, body: str, key: str) -> None:
    world.post(
        "/consents",
        {"email": FIRST, "purpose": "newsletter", "status": "granted", "notice_version": "2026-05"},
    )
    world.post(
        "/consents",
        {"email": SECOND, "purpose": "newsletter", "status": "granted", "notice_version": "2026-05"},
    )
    before = [world.ledger.subject_view(email) for email in (FIRST, SECOND)]
    status, answer = raw(world, path, body, "application/vnd.api+json")
    assert (status, answer) == (422, {"error": f"{key}: duplicate key '{key}' in the top level"})
    assert [world.ledger.subject_view(email) for email in (FIRST, SECOND)] == before


def test_the_error_is_one_line_whatever_the_key() -> None:
    long = "k" * 100
    assert duplicate_key(f'{{"a": {{"{long}": 1, "{long}": 2}}}}'.encode()) == (
        f"a.{'k' * 64}...: duplicate key '{'k' * 64}...' in a"
    )
    assert duplicate_key(b'{"x\\ny": 1, "x\\ny": 2}') == "x\\ny: duplicate key 'x\\ny' in the top level"
    # No key twice, or no JSON at all (FastAPI refuses that as before): nothing to say.
    assert duplicate_key(b'{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}]}') is None
    assert duplicate_key(b'{"a": 1,') is None and duplicate_key(b"[" * 100_000) is None
