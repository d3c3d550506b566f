"""Rule 6 of issue 12: reports chase no one who may not be chased (SQLite and PostgreSQL).

``ledger requested``, ``Ledger.stale_requests`` and the console's ``/api/requested`` list people
to contact about a consent they were asked for. None of them lists an erased person, a restricted
one (Art. 18), or one whose state for that purpose and channel a subject-wide rule decides (an
objection upheld or pending review, the suppression left by an earlier erasure); lifting the
restriction puts the person back. Email marketing is direct marketing: its requests are chased only
for people we may e-mail marketing on another ground (session 65), here a newsletter consent.
"""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consentsync.accounts import Accounts
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, Evidence
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from consentsync.sync.plan import mask_email
from consentsync.web.server import build
from tests.conftest import Cli, Clock
from tests.integration.helpers import consent_value
from tests.integration.test_cli import iso_ago, proven, record

OLD = iso_ago(days=60)
# A second purpose of e-mail marketing: a consent to it in force is the ground on which a person
# may be chased about email marketing (docs/policy.md rule 6).
NEWSLETTER = {"key": "newsletter", "name": "Newsletter", "direct_marketing": True, "default_basis": "consent",
              "channels": ["email"]}  # fmt: skip


@pytest.fixture
def config_path(config_path: Path) -> Path:
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    data["purposes"].append(NEWSLETTER)
    config_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return config_path


def _subscribed(cli: Cli, email: str) -> None:
    """``email`` consented to the newsletter: we may e-mail them marketing."""
    record(cli, email, "newsletter", "granted", *proven(days=90))


def _requested(cli: Cli, *extra: str) -> set[str]:
    return {row["email"] or row["subject"] for row in cli.json("ledger", "requested", *extra)}


def test_requested_leaves_out_erased_restricted_and_objecting_people(cli: Cli) -> None:
    people = {
        name: f"{name}@example.com"
        for name in ("plain", "erased", "restricted", "lifted", "dm_objector", "pending", "other_objection")
    }
    for email in people.values():
        _subscribed(cli, email)
        record(cli, email, "email_marketing", "requested", "--at", OLD)
    record(cli, people["pending"], "profiling", "requested", "--at", OLD)
    assert _requested(cli) == set(people.values())

    cli.ok("erase", "--email", people["erased"], "--reason", "art17", "--yes")
    cli.ok("restrict", "--email", people["restricted"], "--reason", "accuracy disputed")
    cli.ok("restrict", "--email", people["lifted"], "--reason", "accuracy disputed")
    cli.ok("restrict", "--email", people["lifted"], "--lift", "--reason", "verified")
    cli.ok("objection", "raise", "--email", people["dm_objector"], "--purpose", "email_marketing")
    cli.ok("objection", "raise", "--email", people["pending"], "--purpose", "profiling")  # manual review
    cli.ok("objection", "raise", "--email", people["other_objection"], "--purpose", "profiling")

    rows = cli.json("ledger", "requested")
    listed = {(row["email"], row["purpose"]) for row in rows}
    assert listed == {
        (people["plain"], "email_marketing"),
        (people["lifted"], "email_marketing"),
        (people["pending"], "email_marketing"),  # the pending objection binds profiling only
        (people["other_objection"], "email_marketing"),  # an objection to profiling: not to this
    }
    assert all(row["email"] for row in rows)  # no one without an address to contact
    human = cli.ok("ledger", "requested").stdout
    for name in ("erased", "restricted", "dm_objector"):
        assert people[name] not in human


def test_a_returning_erased_person_is_not_chased(cli: Cli) -> None:
    email = "back@example.com"
    record(cli, email, "email_marketing", "granted", "--at", iso_ago(days=90), "--evidence-ref", "form:a")
    cli.ok("erase", "--email", email, "--reason", "art17", "--yes")
    # The address comes back through a capture that is no consent: the erasure suppression holds.
    record(cli, email, "email_marketing", "requested", "--at", OLD, source="import")
    assert cli.json("ledger", "requested") == []


def test_the_console_lists_the_same_people(cli: Cli, config_path: Path, ledger: Ledger) -> None:
    from consentsync.ledger.service import utcnow

    ledger.clock = utcnow
    for name in ("plain", "restricted", "erased"):
        _subscribed(cli, f"{name}@example.com")
        record(cli, f"{name}@example.com", "email_marketing", "requested", "--at", OLD)
    cli.ok("restrict", "--email", "restricted@example.com", "--reason", "disputed")
    cli.ok("erase", "--email", "erased@example.com", "--reason", "art17", "--yes")
    Accounts(ledger.engine).add("vic", "viewer", "vic-viewer-password-1", actor="test")
    client = TestClient(build(load_config(config_path), ledger), base_url="https://localhost")
    assert (
        client.post("/api/session", json={"name": "vic", "password": "vic-viewer-password-1"}).status_code
        == 200
    )
    found = client.get("/api/requested").json()
    # Named by a masked address, as in the objection queue: the list is a list of people for
    # every viewer and its read is not audited; the person's page (by uid) has the address.
    plain = ledger.subject_uids_for_email("plain@example.com")
    assert [(item["email"], item["subject"]) for item in found["items"]] == [
        (mask_email("plain@example.com"), *plain)
    ]
    assert "plain@example.com" not in json.dumps(found)
    assert found["total"] == 1
    assert client.get("/api/requested", params={"older_than": 365}).json()["total"] == 0
    for bad in ("-1", "100000", "10000000000000000000000", "x"):
        assert client.get("/api/requested", params={"older_than": bad}).status_code == 422
    # The console's page shows the same list.
    page = client.get("/requested")
    assert page.status_code == 200 and mask_email("plain@example.com") in page.text
    assert f'href="/subjects/{plain[0]}"' in page.text and "plain@example.com" not in page.text
    for other in ("restricted@example.com", "erased@example.com"):
        assert other not in page.text and mask_email(other) not in page.text
    assert client.get("/requested", params={"older_than": "100000"}).status_code == 422


# -- a property: the report is exactly the people no rule keeps from being contacted ---------------

_ids = itertools.count()
BLOCKERS = ("erase", "restrict", "restrict_and_lift", "dm_objection", "profiling_objection", "withdraw")
BLOCKING = {"erase", "restrict", "dm_objection", "withdraw"}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(people=st.lists(st.sets(st.sampled_from(BLOCKERS), max_size=3), min_size=1, max_size=4))
def test_the_report_is_exactly_the_people_who_may_be_chased(
    ledger: Ledger, clock: Clock, people: list[set[str]]
) -> None:
    expected: set[str] = set()
    emails: dict[str, set[str]] = {}
    for blockers in people:
        email = f"p{next(_ids)}@example.org"
        emails[email] = blockers
        subscribed = consent_value(
            ConsentStatus.GRANTED, clock.now - timedelta(days=90), clock.now, purpose="newsletter",
            evidence_ref="form:1",
        )  # fmt: skip
        ledger.record(Identity(email=email), subscribed)
        ledger.record(Identity(email=email), _evidence(clock, ConsentStatus.REQUESTED, days_ago=60))
        if "withdraw" in blockers:
            ledger.record(Identity(email=email), _evidence(clock, ConsentStatus.WITHDRAWN, days_ago=50))
        if "dm_objection" in blockers:
            ledger.raise_objection(email, "email_marketing")
        if "profiling_objection" in blockers:
            ledger.raise_objection(email, "profiling")
        if "restrict" in blockers or "restrict_and_lift" in blockers:
            ledger.restrict(email, restricted=True, reason="disputed")
        if "restrict_and_lift" in blockers and "restrict" not in blockers:
            ledger.restrict(email, restricted=False, reason="verified")
        if "erase" in blockers:
            ledger.erase(email, reason="art17")
        if not blockers & BLOCKING:
            expected.add(email)
    report = ledger.stale_requests(30)
    listed = {row["email"] for row in report if row["email"] in emails}
    assert listed == expected, {e: sorted(emails[e]) for e in listed ^ expected}
    assert all(row["email"] is not None for row in report)  # never an erased person


def _evidence(clock: Clock, status: ConsentStatus, *, days_ago: int) -> Evidence:
    return consent_value(status, clock.now - timedelta(days=days_ago), clock.now, basis=None)
