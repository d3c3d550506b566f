"""A body that names a key twice is bad input (session 59b).

``POST /v1/consents`` with two "email"s and two "status"es answered 201 and recorded the last of
each: a withdrawal for the second address, nothing for the first. A gateway, WAF or audit proxy
that reads the first value saw a grant for another person. docs/hub.md: bad input is refused
with 422 and a one-line error naming the field, nothing recorded; the config and mapping loaders
refuse duplicate keys the same way. Every JSON body of the capture API is checked, at any depth.

The check as first written (c604c97) cost about 12 times FastAPI's own parse (a Python hook per
object, then a walk of the whole document), ran before the API key was checked and on the event
loop: an 8 MiB body from anyone blocked the worker for seconds. It now runs once the key and its
rate are checked, costs no Python per object where no key is named twice, and says which and
where only for a body that has one (bench/hub_json_bench.py has the figures).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from consentsync.hub import api, keys
from consentsync.hub.api import duplicate_key, names_a_key_twice
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


@pytest.mark.parametrize(
    ("body", "error"),
    [
        # The first in document order: an object naming a key twice before anything in it does.
        (b'{"a": {"k": 1, "k": 2}, "b": 1, "b": 2}', "b: duplicate key 'b' in the top level"),
        (b'{"a": {"k": 1, "k": 2}, "b": {"k": 1, "k": 2}}', "a.k: duplicate key 'k' in a"),
        # Through arrays of arrays, past others that hold none.
        (
            b'[[1, [{"a": 1}]], [[{"b": {"c": 1, "c": 2}}]], {"d": 1, "d": 2}]',
            "[1][0][0].b.c: duplicate key 'c' in [1][0][0].b",
        ),
        (
            b'{"a": [[], [{"q": [[]]}], [[{"k": 1, "k": 2}]]], "b": {"k": 1, "k": 2}}',
            "a[2][0][0].k: duplicate key 'k' in a[2][0][0]",
        ),
        (b'[{}, {"x": [{}]}, {"x": [{}, {"y": 1, "y": 2}]}]', "[2].x[1].y: duplicate key 'y' in [2].x[1]"),
    ],
)
def test_the_key_named_is_the_first_named_twice_in_document_order(body: bytes, error: str) -> None:
    assert names_a_key_twice(body) and duplicate_key(body) == error


def python_calls(work: Any, body: bytes) -> int:
    """How many calls of Python functions of the API's module or of json's ``work(body)``
    makes (C functions are not counted, nor what the garbage collector calls meanwhile)."""
    calls = 0
    ours = (api.__file__, str(Path(json.__file__).parent))

    def count(frame: FrameType, event: str, _arg: object) -> None:
        nonlocal calls
        calls += event == "call" and frame.f_code.co_filename.startswith(ours)

    sys.setprofile(count)
    try:
        work(body)
    finally:
        sys.setprofile(None)
    return calls


def test_a_body_naming_no_key_twice_costs_no_python_per_object() -> None:
    """What every request pays is two parses with C functions for hooks (a Python hook per
    object cost several times the parse); only a body naming a key twice is parsed in Python."""
    small, big = (b"[" + b",".join([b'{"a": {"b": [1, {}]}}'] * count) + b"]" for count in (10, 10_000))
    assert duplicate_key(small) is None and duplicate_key(big) is None
    assert python_calls(duplicate_key, big) == python_calls(duplicate_key, small)
    # With a key named twice, once, in the last object: the parse that says where is Python's.
    twice = big[:-1] + b',{"a": 1, "a": 2}]'
    assert duplicate_key(twice) == "[10000].a: duplicate key 'a' in [10000]"
    assert python_calls(duplicate_key, twice) > 20_000


def test_the_check_comes_after_the_api_key_and_its_rate(world: HubWorld) -> None:
    """Whoever has no key gets 401 for any JSON, as for a body the model refuses; a body that is
    no JSON at all is refused before (FastAPI's own parse). A body naming a key twice costs its
    key a request of its rate like any other."""
    twice = f'{{"email": "{FIRST}", "purpose": "newsletter", "purpose": "profiling"}}'.encode()
    for headers in ({}, {"Authorization": "Bearer nope"}):
        answer = world.client.post(
            "/decisions", content=twice, headers={**headers, "Content-Type": "application/json"}
        )
        assert answer.status_code == 401, answer.text
    broken = world.client.post(
        "/decisions", content=b'{"email": 1,', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 422 and "JSON decode error" in broken.json()["error"]

    _key, slow = keys.create(
        world.ledger, "slow", source="web_form", purposes=["*"], actions=["decisions"], rate_per_minute=2
    )
    headers = {**world.auth(slow), "Content-Type": "application/json"}
    assert [
        world.client.post("/decisions", content=twice, headers=headers).status_code for _ in range(2)
    ] == [
        422,
        422,
    ]
    limited = world.client.post("/decisions", content=twice, headers=headers)
    assert limited.status_code == 429, limited.text
    ask = {"email": FIRST, "purpose": "newsletter"}
    assert world.post("/decisions", ask, secret=slow).status_code == 429
