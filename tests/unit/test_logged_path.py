"""The console's request log never holds a people page's token, even in a path no route matched
(a link a mail client mangled), and keeps the console's own ids."""

from __future__ import annotations

import uuid

import pytest

from consentsync.web.app import logged_path

# The shape of a preference link's token: a JWT (HS256), three base64url parts.
TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhYmMiLCJleHAiOjE3OTk5OTk5OTl9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
)


@pytest.mark.parametrize(
    "path",
    [
        f"/p/preferences/{TOKEN}",
        f"/p//preferences/{TOKEN}",
        f"/p/PREFERENCES/{TOKEN}",
        f"/P/preferences/{TOKEN}/choose",
        f"/p/confirm/{TOKEN[:43]}",
    ],
)
def test_a_token_never_reaches_the_log(path: str) -> None:
    shown = logged_path(path)
    assert "<token>" in shown and TOKEN[:37] not in shown, shown


def test_the_consoles_own_ids_stay() -> None:
    run_id = str(uuid.uuid4())
    assert logged_path(f"/runs/{run_id}") == f"/runs/{run_id}"
    assert logged_path(f"/subjects/{run_id}/export.json") == f"/subjects/{run_id}/export.json"


ADDRESS_PATHS = [
    "/subjects/jo.private@example.org",
    "/api/subjects/jo%40example.org/export.csv",
    "/subjects/a@b.c/x",
]


@pytest.mark.parametrize("path", ADDRESS_PATHS)
def test_an_address_in_a_path_never_reaches_the_log(path: str) -> None:
    """Typed into the console's URL (session 63 black-box): the request log holds no address."""
    shown = logged_path(path)
    assert "<address>" in shown and "@" not in shown and "%40" not in shown.lower(), shown
