"""Session 64: every preference-centre page linked /static/people.css, the console's own static
folder, which answers 404 (the file is at /p/static/people.css): `url_for("static")` in the
people app found the console's mount of the same name first. The pages the data subjects see
were unstyled, their screen-reader-only text laid out on screen. Each stylesheet a page links
must answer 200 with text/css, served in the console (as `consentsync web` does) and alone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from consentsync.hub import people
from consentsync.web.server import build
from tests.conftest import SQLITE_ONLY
from tests.hub.conftest import HubWorld
from tests.hub.people_world import mailed, seed, token_of

pytestmark = SQLITE_ONLY  # pages and routing, no query of note


@pytest.fixture
def in_console(world: HubWorld) -> Iterator[TestClient]:
    with TestClient(build(world.hub.config, world.ledger), base_url="http://localhost") as client:
        yield client


@pytest.fixture
def alone(world: HubWorld) -> Iterator[TestClient]:
    with TestClient(people.create_app(world.hub)) as client:
        yield client


def stylesheets(html: str) -> list[str]:
    return re.findall(r'<link[^>]*rel="stylesheet"[^>]*href="([^"]+)"', html) + re.findall(
        r'<link[^>]*href="([^"]+)"[^>]*rel="stylesheet"', html
    )


def pages(world: HubWorld, prefix: str) -> list[tuple[str, int]]:
    """Paths of the people's pages (a preference page, a double opt-in confirmation, a refused
    link, and the pages a form ends on) and their status."""
    uid = seed(world)
    token = token_of(world, uid)
    confirm = mailed(world, "/p/confirm/").removeprefix("/p")
    return [
        (f"{prefix}/preferences/{token}", 200),
        (f"{prefix}{confirm}", 200),
        (f"{prefix}/preferences/not-a-token", 403),
        (f"{prefix}/declined", 404),  # no query: the error page, styled alike
        (f"{prefix}/erased", 200),
    ]


def check(client: TestClient, paths: list[tuple[str, int]]) -> None:
    for path, status in paths:
        page = client.get(path)
        assert page.status_code == status, (path, page.text[:300])
        linked = stylesheets(page.text)
        assert any(href.endswith("people.css") for href in linked), (path, linked)
        for href in linked:
            sheet = client.get(urlsplit(href).path)
            assert sheet.status_code == 200, (path, href)
            assert sheet.headers["content-type"].startswith("text/css"), (path, href)
            if href.endswith("people.css"):
                assert ".visually-hidden" in sheet.text  # the preference centre's own, not another


def test_each_page_links_a_stylesheet_that_is_served_in_the_console(
    world: HubWorld, in_console: TestClient
) -> None:
    check(in_console, pages(world, "/p"))


def test_each_page_links_a_stylesheet_that_is_served_by_the_pages_alone(
    world: HubWorld, alone: TestClient
) -> None:
    check(alone, pages(world, ""))
