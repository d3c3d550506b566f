"""The data subject's walk, session 51b: the page's language follows what the browser accepts.

RFC 9110 §12.4.2: a weight of 0 means "not acceptable", and a weight is "0" to "1" with at most
three decimals. ``negotiate`` chose a language the browser marked q=0 when it was the only one
offered among those named, and read q=nan as a weight (sorted unpredictably: nan compares false
with everything, so a "nan" range kept its place ahead of the weighted ones).
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from consentsync.hub.i18n import negotiate
from tests.hub.conftest import HubWorld
from tests.hub.people_world import people_pages, seed, sqlite_ledger_url, token_of

# The module's fixtures: `ledger_url` (SQLite only here) and `people` (the pages, in-process).
FIXTURES = (sqlite_ledger_url, people_pages)

OFFERED = ["en", "de"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # q=0: never chosen while another language is offered.
        ("fr, en;q=0", "de"),
        ("en;q=0", "de"),
        ("EN;Q=0, fr", "de"),
        ("de;q=0, en;q=0.001", "en"),
        ("en;q=0.000", "de"),
        ("*, en;q=0", "de"),
        ("de-AT;q=0, de;q=0.5, en;q=0.1", "de"),  # "de" itself is acceptable
        ("de;q=0, de-ch", "en"),  # "de" itself is not; "de-CH" is not what is offered
        # A weight that is not one is no weight: its range is ignored.
        ("de;q=nan, en;q=0.5", "en"),
        ("de;q=NaN, en;q=0.5", "en"),
        ("de;q=inf, en;q=0.5", "en"),
        ("de;q=1.5, en;q=0.5", "en"),
        ("de;q=-1, en;q=0.5", "en"),
        ("de;q=1e0, en;q=0.5", "en"),
        ("de;q=, en;q=0.5", "en"),
        # As before: the highest weight, then the browser's order; regional ranges fall back.
        ("de-CH, en;q=0.9", "de"),
        ("en;q=0.8, de;q=0.9", "de"),
        ("de, en", "de"),
        ("fr", "en"),
        ("", "en"),
        ("*;q=0", "en"),  # nothing acceptable: the first offered, since something must be said
    ],
)
def test_negotiate_follows_rfc_9110_weights(header: str, expected: str) -> None:
    assert negotiate(header, OFFERED) == expected


def test_an_explicit_choice_still_wins() -> None:
    assert negotiate("de;q=0", OFFERED, "de") == "de"


def test_the_preference_page_is_not_in_a_language_the_browser_refused(
    world: HubWorld, people: TestClient
) -> None:
    token = token_of(world, seed(world))
    page = people.get(f"/p/preferences/{token}", headers={"Accept-Language": "fr, en;q=0"})
    assert page.status_code == 200
    assert re.search(r'<html lang="de">', page.text), page.text[:200]
    nan = people.get(f"/p/preferences/{token}", headers={"Accept-Language": "de;q=nan, en;q=0.5"})
    assert re.search(r'<html lang="en">', nan.text), nan.text[:200]
