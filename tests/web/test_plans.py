"""Push plans in the console (issue 13), on SQLite and PostgreSQL, with the Salesforce sandbox
connected in observe mode: a plan made in the console has the CLI's counts and digest; an admin's
approval pushes exactly it, once, audited with their name; reviewers and viewers cannot approve,
CSRF is enforced; a rejection needs a reason and is audited; a plan the CRM changed underneath is
refused and nothing is pushed; the overview alerts on held pushes and links to the plans."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from fastapi.testclient import TestClient
from markupsafe import escape

from consentsync import audit
from consentsync.accounts import Accounts
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.ledger.service import Ledger
from consentsync.web.server import build
from tests.conftest import Cli
from tests.integration.test_adoption import _changed_fields, _state
from tests.web.conftest import PASSWORDS, ROLES, api_login, log_in, page_csrf


@dataclass
class Observed:
    config_path: Path
    ledger: Ledger
    sandbox: SalesforceSandbox
    run_id: str


def configure(config_path: Path, **settings: Any) -> None:
    data = yaml.safe_load(config_path.read_text())
    data["connectors"][0].update(settings)
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def observed(cli: Cli, sf: SalesforceSandbox, config_path: Path) -> Iterator[Observed]:
    """The org connected in observe mode (the push guard off): the first run reads and reconciles,
    and holds every push."""
    configure(config_path, mode="observe")
    report = cli.json("sync", "sf", "--full")
    assert report["status"] == "succeeded", report["error"]
    assert report["counts"]["pushes_held"] > 0 and report["counts"]["pushed"] == 0
    ledger = open_ledger(load_config(config_path))
    accounts = Accounts(ledger.engine)
    for name, role in ROLES.items():
        accounts.add(name, role, PASSWORDS[name], actor="test")
    yield Observed(config_path, ledger, sf, report["run_id"])
    ledger.engine.dispose()


@pytest.fixture
def console(observed: Observed) -> Any:
    return build(load_config(observed.config_path), observed.ledger)


def entries(observed: Observed, action: str) -> list[dict[str, Any]]:
    with observed.ledger.engine.connect() as conn:
        return list(audit.entries(conn, action=action))


def make_plan(client: TestClient, csrf: str) -> dict[str, Any]:
    made = client.post("/api/connectors/sf/plans", headers={"X-CSRF-Token": csrf})
    assert made.status_code == 201, made.text
    return dict(made.json())


def admin_with_plan(console: Any) -> tuple[TestClient, str, dict[str, Any]]:
    """An admin (ada) logged in to the API, her CSRF token, and a plan she made for ``sf``."""
    client = TestClient(console)
    csrf = api_login(client, "ada")
    return client, csrf, make_plan(client, csrf)


def test_an_admin_makes_a_plan_with_the_cli_s_figures_and_approving_it_pushes_exactly_it(
    console: Any, observed: Observed, cli: Cli
) -> None:
    expected = cli.json("plan", "sf")
    assert expected["records"] > 0
    client = log_in(TestClient(console), "ada")
    page = client.get("/connectors/sf/plans")
    assert page.status_code == 200 and "observe" in page.text and "No plan made yet" in page.text
    made = client.post(
        "/connectors/sf/plans", data={"csrf_token": page_csrf(page.text)}, follow_redirects=False
    )
    assert made.status_code == 303, made.text
    plan_url = made.headers["location"]
    plan_id = int(plan_url.rsplit("/", 1)[1])
    shown = client.get(plan_url)
    assert shown.status_code == 200
    # The same counts per object, field and new value as `consentsync plan sf --json`.
    rows = re.findall(
        r"<tr><td data-label=\"Object\">([^<]*)</td><td data-label=\"Field\">([^<]*)</td>"
        r"<td data-label=\"New value\"><code>([^<]*)</code></td><td data-label=\"Records\">(\d+)</td></tr>",
        shown.text,
    )
    assert rows == [
        (c["object"], c["field"], str(escape(c["new"])), str(c["records"])) for c in expected["changes"]
    ]
    assert expected["digest"] in shown.text and "ada" in shown.text
    # The records, paginated, each with the CLI's masked address and nothing unmasked.
    assert f"({expected['records']} in all)" in shown.text
    first_page = expected["items"][:25]
    assert all(item["record_id"] in shown.text and item["who"] in shown.text for item in first_page)
    emails = {str(r["Email"]).lower() for r in observed.sandbox.org.records("Contact") if r.get("Email")}
    assert not any(email in shown.text.lower() for email in emails)
    if expected["records"] > 25:
        second = client.get(f"{plan_url}?page=2").text
        assert expected["items"][25]["record_id"] in second
    # The API has the same plan.
    api = client.get(f"/api/plans/{plan_id}", params={"per_page": 200}).json()
    assert api["digest"] == expected["digest"] and api["changes"] == expected["changes"]
    assert api["status"] == "pending" and api["made_by"] == "ada"
    assert [i["record_id"] for i in api["items"]["items"]] == [i["record_id"] for i in expected["items"]]
    assert [i["who"] for i in api["items"]["items"]] == [i["who"] for i in expected["items"]]
    made_entries = entries(observed, "plan.made")
    assert [(e["actor"], e["what"]["digest"]) for e in made_entries] == [("ada", expected["digest"])]

    # Approve: a confirmation step, then exactly the plan is pushed.
    before = json.loads(_state(observed.sandbox))
    confirm = client.get(f"/plans/{plan_id}/approve")
    assert confirm.status_code == 200 and f"{expected['records']} record(s)" in confirm.text
    assert json.loads(_state(observed.sandbox)) == before, "the confirmation page pushed"
    approved = client.post(
        f"/plans/{plan_id}/approve",
        data={"csrf_token": page_csrf(confirm.text), "digest": expected["digest"]},
        follow_redirects=False,
    )
    assert approved.status_code == 303, approved.text
    result = client.get(approved.headers["location"])
    assert "Plan applied" in result.text and f"{expected['records']} record(s) pushed" in result.text
    changed = _changed_fields(before, json.loads(_state(observed.sandbox)))
    assert changed == {(i["object_type"], i["record_id"]): i["new"] for i in expected["items"]}
    applied = entries(observed, "plan.applied")
    assert [(e["actor"], e["what"]["digest"]) for e in applied] == [("ada", expected["digest"])]
    view = client.get(f"/api/plans/{plan_id}").json()
    assert (
        view["status"] == "applied" and view["pushed"] == expected["records"] and view["decided_by"] == "ada"
    )
    assert view["items"]["total"] == 0, "a decided plan keeps no records"
    # At most once: a second approval is refused, and nothing more is pushed.
    after = _state(observed.sandbox)
    again = client.post(
        f"/api/plans/{plan_id}/approve",
        json={"digest": expected["digest"]},
        headers={"X-CSRF-Token": client.get("/api/session").json()["csrf_token"]},
    )
    assert again.status_code == 409 and "applied" in again.json()["detail"]
    assert _state(observed.sandbox) == after
    assert len(entries(observed, "plan.applied")) == 1


def test_only_an_admin_approves_or_rejects_and_every_post_needs_the_csrf_token(
    console: Any, observed: Observed
) -> None:
    admin, admin_csrf, plan = admin_with_plan(console)
    before = _state(observed.sandbox)
    for name in ("rex", "vic"):
        client = TestClient(console)
        csrf = api_login(client, name)
        assert client.get(f"/api/plans/{plan['id']}").status_code == 200
        assert client.get("/api/connectors/sf/plans").json()["total"] == 1
        headers = {"X-CSRF-Token": csrf}
        approve = client.post(
            f"/api/plans/{plan['id']}/approve", json={"digest": plan["digest"]}, headers=headers
        )
        assert approve.status_code == 403, (name, approve.text)
        reject = client.post(f"/api/plans/{plan['id']}/reject", json={"reason": "no"}, headers=headers)
        assert reject.status_code == 403
        pages = log_in(TestClient(console), name)
        shown = pages.get(f"/plans/{plan['id']}")
        assert "needs the admin role" in shown.text and "Approve" not in shown.text
        assert pages.get(f"/plans/{plan['id']}/approve").status_code == 403
        form = pages.post(
            f"/plans/{plan['id']}/approve",
            data={"csrf_token": page_csrf(shown.text), "digest": plan["digest"]},
            follow_redirects=False,
        )
        assert form.status_code == 403
    # A viewer cannot make a plan either; a reviewer can (it pushes nothing).
    viewer = TestClient(console)
    assert (
        viewer.post(
            "/api/connectors/sf/plans", headers={"X-CSRF-Token": api_login(viewer, "vic")}
        ).status_code
        == 403
    )
    # Without the CSRF token, not even an admin.
    assert admin.post(f"/api/plans/{plan['id']}/approve", json={"digest": plan["digest"]}).status_code == 403
    assert admin.post(f"/api/plans/{plan['id']}/reject", json={"reason": "no"}).status_code == 403
    assert admin.post("/api/connectors/sf/plans").status_code == 403
    pages = log_in(TestClient(console), "ada")
    for path, data in (
        (f"/plans/{plan['id']}/approve", {"digest": plan["digest"]}),
        (f"/plans/{plan['id']}/reject", {"reason": "no"}),
        ("/connectors/sf/plans", {}),
    ):
        assert (
            pages.post(path, data={**data, "csrf_token": "forged"}, follow_redirects=False).status_code == 403
        )
        assert pages.post(path, data=data, follow_redirects=False).status_code == 403
    # A wrong digest is no confirmation.
    wrong = admin.post(
        f"/api/plans/{plan['id']}/approve", json={"digest": "0" * 64}, headers={"X-CSRF-Token": admin_csrf}
    )
    assert wrong.status_code == 400
    assert admin.get(f"/api/plans/{plan['id']}").json()["status"] == "pending"
    assert _state(observed.sandbox) == before
    assert entries(observed, "plan.applied") == []
    # A reviewer's plan supersedes the pending one.
    reviewer = TestClient(console)
    newer = make_plan(reviewer, api_login(reviewer, "rex"))
    assert newer["made_by"] == "rex" and newer["digest"] == plan["digest"]
    assert admin.get(f"/api/plans/{plan['id']}").json()["status"] == "superseded"


def test_rejecting_a_plan_needs_a_reason_and_is_audited(console: Any, observed: Observed) -> None:
    client, csrf, plan = admin_with_plan(console)
    headers = {"X-CSRF-Token": csrf}
    assert (
        client.post(f"/api/plans/{plan['id']}/reject", json={"reason": ""}, headers=headers).status_code
        == 422
    )
    assert client.post(f"/api/plans/{plan['id']}/reject", json={}, headers=headers).status_code == 422
    pages = log_in(TestClient(console), "ada")
    shown = pages.get(f"/plans/{plan['id']}")
    empty = pages.post(
        f"/plans/{plan['id']}/reject", data={"csrf_token": page_csrf(shown.text), "reason": "  "}
    )
    assert empty.status_code == 400 and "A reason is required" in empty.text
    assert entries(observed, "plan.rejected") == []
    reason = "Too many opt-ins cleared at once: review with marketing first (ticket 42)"
    rejected = pages.post(
        f"/plans/{plan['id']}/reject",
        data={"csrf_token": page_csrf(shown.text), "reason": reason},
        follow_redirects=False,
    )
    assert rejected.status_code == 303
    page = pages.get(rejected.headers["location"]).text
    assert "Plan rejected" in page and str(escape(reason)) in page
    (entry,) = entries(observed, "plan.rejected")
    assert entry["actor"] == "ada" and entry["what"]["digest"] == plan["digest"]
    assert reason in json.dumps(entry)
    assert client.get("/audit", params={"action": "plan.rejected"}).status_code == 200
    # Decided: it can be neither approved nor rejected again.
    before = _state(observed.sandbox)
    approve = client.post(
        f"/api/plans/{plan['id']}/approve", json={"digest": plan["digest"]}, headers=headers
    )
    assert approve.status_code == 409
    again = client.post(f"/api/plans/{plan['id']}/reject", json={"reason": "again"}, headers=headers)
    assert again.status_code == 409
    assert _state(observed.sandbox) == before
    # A reason outlives erasure: no address in it.
    other = make_plan(client, csrf)
    leaky = client.post(
        f"/api/plans/{other['id']}/reject", json={"reason": "asked by jo@example.com"}, headers=headers
    )
    assert leaky.status_code == 400


def test_a_plan_the_crm_changed_underneath_is_refused_and_nothing_is_pushed(
    console: Any, observed: Observed
) -> None:
    client, csrf, plan = admin_with_plan(console)
    everything = client.get(f"/api/plans/{plan['id']}", params={"per_page": 200}).json()["items"]["items"]
    target = next(item for item in everything if item["object_type"] == "Contact")
    field, value = next(iter(target["new"].items()))
    observed.sandbox.org.update(target["record_id"], **{field: value})  # a CRM user did it meanwhile
    before = _state(observed.sandbox)
    refused = client.post(
        f"/api/plans/{plan['id']}/approve", json={"digest": plan["digest"]}, headers={"X-CSRF-Token": csrf}
    )
    assert refused.status_code == 200, refused.text
    result = refused.json()
    assert result["status"] == "refused" and result["outcome"].startswith("plan: ")
    assert result["pushed"] == 0
    assert _state(observed.sandbox) == before
    assert entries(observed, "plan.applied") == []
    (entry,) = entries(observed, "plan.refused")
    assert entry["actor"] == "ada" and entry["what"]["digest"] == plan["digest"]
    page = log_in(TestClient(console), "ada").get(f"/plans/{plan['id']}").text
    assert "refused" in page and "changed since the plan was made" in page and "Make a new plan" in page
    # Refused counts as decided: not approvable again.
    again = client.post(
        f"/api/plans/{plan['id']}/approve", json={"digest": plan["digest"]}, headers={"X-CSRF-Token": csrf}
    )
    assert again.status_code == 409


def test_the_overview_alerts_on_held_pushes_and_links_to_the_plans(
    console: Any, observed: Observed, cli: Cli
) -> None:
    client = log_in(TestClient(console), "vic")
    overview = client.get("/").text
    assert "pushes held" in overview and 'href="/connectors/sf/plans"' in overview
    alerts = client.get("/api/overview").json()["alerts"]
    # No daemon runs in this test: the overview says so too, before the held pushes.
    assert [a["kind"] for a in alerts] == ["no_daemon", "pushes_held"]
    assert alerts[1]["link"] == "/connectors/sf/plans"
    run = client.get(f"/runs/{observed.run_id}").text
    assert 'href="/connectors/sf/plans"' in run and "Would push (held)" in run
    # The push guard holds a two-way run: the alert says so.
    configure(observed.config_path, mode="two_way", push_guard={"max_records": 1, "max_share": None})
    held = cli("sync", "sf", "--json")
    assert held.exit_code == 3, held.output
    held_run = json.loads(held.stdout)
    assert held_run["status"] == "held"
    overview = client.get("/").text
    assert "push guard" in overview and 'href="/connectors/sf/plans"' in overview
    assert 'href="/connectors/sf/plans"' in client.get(f"/runs/{held_run['run_id']}").text
    assert client.get("/runs", params={"result": "held"}).status_code == 200
    # Unknown connectors are not found.
    assert client.get("/connectors/nope/plans").status_code == 404
    assert client.get("/api/connectors/nope/plans").status_code == 404
    assert client.get("/api/plans/99").status_code == 404
