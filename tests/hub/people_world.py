"""What the preference centre's page tests share: the people's pages mounted at ``/p`` as the
links in mails expect, a person with a grant, and their preference link."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from consentsync.domain import ConsentStatus, LawfulBasis, SoftOptIn
from consentsync.hub.capture import Hub
from consentsync.hub.people import create_app
from consentsync.ledger.identity import Identity
from tests.hub.conftest import HubWorld
from tests.integration.helpers import consent_value

EMAIL = "ada@example.test"
GRANT = {"email": EMAIL, "purpose": "newsletter", "status": "granted", "notice_version": "2026-05"}


def mounted(hub: Hub) -> FastAPI:
    """The pages under /p, as the console serves them."""
    outer = FastAPI()
    outer.mount("/p", create_app(hub))
    return outer


Host = TypeVar("Host")


def served_pages(world: HubWorld, host: Callable[[FastAPI], AbstractContextManager[Host]]) -> Iterator[Host]:
    """For a fixture to ``yield from``: the world's pages, :func:`mounted`, in ``host`` (a test
    client, or a real web server for a browser) until the test ends."""
    with host(mounted(world.hub)) as serving:
        yield serving


def seed(world: HubWorld) -> str:
    """Ada, with a newsletter grant and a pending double opt-in for email marketing; her uid."""
    assert world.post("/consents", GRANT).status_code == 201
    marketing = {**GRANT, "purpose": "email_marketing"}
    assert world.post("/consents", marketing).status_code == 201
    (uid,) = world.ledger.subject_uids_for_email(EMAIL)
    return uid


def soft_opt_in(world: HubWorld, email: str = EMAIL) -> str:
    """Email marketing by email sent to ``email`` under the ePrivacy soft opt-in (no consent), as
    ops record it (``ledger record --status not_applicable --soft-opt-in-...``); their uid."""
    now = world.clock()
    value = consent_value(
        ConsentStatus.NOT_APPLICABLE,
        now,
        now,
        basis=LawfulBasis.LEGITIMATE_INTERESTS,
        source="ops",
        soft_opt_in=SoftOptIn("order 7", "same product line", "checkout form v4", "footer v2"),
    )
    outcome = world.ledger.record(Identity(email=email), value)
    assert outcome.after is not None and outcome.after.rule == "eprivacy_soft_opt_in"
    assert not outcome.after.suppressed
    return outcome.subject_uid


def token_of(world: HubWorld, uid: str) -> str:
    return world.hub.preference_link(uid).rsplit("/", 1)[1]


def mailed(world: HubWorld, path: str) -> str:
    """The path of the newest link to ``path`` the SMTP server received (other mails, such
    as receipts, may have come after it)."""
    for index in range(len(world.inbox.messages) - 1, -1, -1):
        if path in world.inbox.text(index):
            return urlsplit(world.inbox.link(path, index)).path
    raise AssertionError(f"no mail with a {path} link among {len(world.inbox.messages)}")


def mails_with(world: HubWorld, path: str) -> int:
    return sum(path in world.inbox.text(index) for index in range(len(world.inbox.messages)))


def page_texts() -> set[str]:
    """Every text the people's pages and mails put through the translator: the ``_("...")``
    calls of the hub's modules and templates, the messages of refused links (shown translated)
    and the configured purposes' names of the starter config."""
    import ast
    import re
    from importlib import resources

    import yaml

    hub = resources.files("consentsync.hub")
    found: set[str] = set()
    for name in ("capture.py", "preferences.py", "links.py", "people.py", "i18n.py"):
        tree = ast.parse((hub / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            called = node.func.id if isinstance(node.func, ast.Name) else None
            texts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if called in ("_", "LinkRefused") and texts:
                found.add(texts[0])
            elif called == "problem" and texts:  # problem(request, status, message)
                found.add(texts[-1])
    for template in (hub / "templates").iterdir():
        text = template.read_text(encoding="utf-8")
        found |= set(re.findall(r'_\("((?:[^"\\]|\\.)*)"', text))
        found |= set(re.findall(r"_\('((?:[^'\\]|\\.)*)'", text))
    starter = yaml.safe_load((resources.files("consentsync") / "starter_config.yaml").read_text("utf-8"))
    found |= {purpose["name"] for purpose in starter["purposes"]}
    return found


@pytest.fixture(name="ledger_url")
def sqlite_ledger_url(tmp_path: Path) -> str:
    """SQLite only, for a module that imports it: the pages' and the API's own behaviour does not
    depend on the database (CI's 15 minutes do)."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(name="people")
def people_pages(world: HubWorld) -> Iterator[TestClient]:
    """The people's pages, served in the test's process."""
    yield from served_pages(world, TestClient)
