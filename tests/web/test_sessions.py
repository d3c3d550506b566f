"""Issue 16's security points for sessions and logins, on SQLite and PostgreSQL: sessions end on
the server (logout, disabling, an admin, a new password), the client address for throttling,
throttling that cannot lock an account out for everyone, the last admin, the password policy."""

from __future__ import annotations

import ipaddress
import json
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from consentsync import accounts, exit_codes
from consentsync.accounts import FREE_FAILURES, common_passwords
from consentsync.ledger.schema import console_users
from tests.conftest import CHEAP_HASHER, SQLITE_ONLY, Cli
from tests.web.conftest import PASSWORDS, World, api_login, log_in, page_csrf

PROXY = ("10.1.2.3", 40000)


def copy_of(app: Any, client: TestClient) -> TestClient:
    """Another browser holding a copy of ``client``'s cookies."""
    thief = TestClient(app)
    for name, value in client.cookies.items():
        thief.cookies.set(name, value)
    return thief


def fail(client: TestClient, name: str, times: int, **headers: str) -> list[int]:
    return [
        client.post(
            "/api/session", json={"name": name, "password": "wrong-password"}, headers=headers
        ).status_code
        for _ in range(times)
    ]


@pytest.mark.production_hashing
@SQLITE_ONLY
def test_passwords_are_stored_as_argon2id_at_the_products_cost(app: Any, world: World) -> None:
    """The stored hash is argon2id at 64 MiB, 3 passes, 4 lanes (RFC 9106's second option); a
    hash made at a lower cost is upgraded at the next successful login."""
    production = "$argon2id$v=19$m=65536,t=3,p=4$"
    rex = console_users.c.name == "rex"

    def stored() -> str:
        with world.ledger.engine.connect() as conn:
            return str(conn.execute(select(console_users.c.password_hash).where(rex)).scalar_one())

    assert stored().startswith(production), stored()
    with world.ledger.engine.begin() as conn:
        conn.execute(
            update(console_users).where(rex).values(password_hash=CHEAP_HASHER.hash(PASSWORDS["rex"]))
        )
    assert not stored().startswith(production)
    log_in(TestClient(app), "rex")
    assert stored().startswith(production), stored()
    assert accounts.HASHER.verify(stored(), PASSWORDS["rex"])


def test_logging_out_ends_the_session_on_the_server(app: Any) -> None:
    browser = log_in(TestClient(app), "rex")
    csrf = page_csrf(browser.get("/").text)
    copied = copy_of(app, browser)
    assert copied.get("/runs", follow_redirects=False).status_code == 200
    assert browser.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    response = copied.get("/runs", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    assert copied.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303

    api = TestClient(app)
    token = api_login(api, "rex")
    stolen = copy_of(app, api)
    assert api.delete("/api/session", headers={"X-CSRF-Token": token}).status_code == 204
    assert stolen.get("/api/overview").status_code == 401
    assert stolen.post("/api/audit/search", json={}, headers={"X-CSRF-Token": token}).status_code == 401


def test_disabling_ends_sessions_for_good_and_an_admin_lists_and_ends_them(app: Any, cli: Cli) -> None:
    vic = TestClient(app)
    api_login(vic, "vic")
    cli.ok("user", "disable", "vic")
    cli.ok("user", "disable", "vic", "--enable")
    assert vic.get("/api/overview").status_code == 401  # enabling again does not revive it

    first, second = TestClient(app), TestClient(app)
    api_login(first, "vic")
    api_login(second, "vic")
    listed = cli.json("user", "sessions", "vic", "--json")
    assert len(listed) == 2 and all(row["ended_at"] is None for row in listed)
    assert "2 session(s) of vic ended" in cli.ok("user", "end-sessions", "vic").output
    assert cli.json("user", "sessions", "vic", "--json") == []
    assert first.get("/api/overview").status_code == 401 and second.get("/api/overview").status_code == 401

    # ... and from the accounts page.
    api_login(first, "vic")
    admin = log_in(TestClient(app), "ada")
    page = admin.get("/users").text
    assert "/users/vic/end-sessions" in page
    ended = admin.post(
        "/users/vic/end-sessions", data={"csrf_token": page_csrf(page)}, follow_redirects=False
    )
    assert ended.status_code == 303
    assert first.get("/api/overview").status_code == 401
    assert admin.get("/api/users").status_code == 200  # the admin's own session goes on


def test_a_new_password_ends_the_other_sessions_but_not_the_one_changing_it(app: Any) -> None:
    mine, other = TestClient(app), TestClient(app)
    token = api_login(mine, "ada")
    api_login(other, "ada")
    changed = mine.post(
        "/api/users/ada",
        json={"password": "ada-new-password-42", "current_password": PASSWORDS["ada"]},
        headers={"X-CSRF-Token": token},
    )
    assert changed.status_code == 200, changed.text
    assert mine.get("/api/overview").status_code == 200
    assert other.get("/api/overview").status_code == 401


@SQLITE_ONLY
def test_x_forwarded_for_is_ignored_from_an_untrusted_peer_and_honoured_from_a_trusted_one(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Who is counted is what this checks, not how long the wait lasts: a loaded machine took more
    # than the 2 s wait over the free failures' hashes, and the fourth try was let through.
    monkeypatch.setattr(accounts, "BACKOFF_BASE", timedelta(minutes=10))
    client = TestClient(app, client=PROXY)
    # Untrusted peer (no proxy configured): each attempt claims another client; all count as one.
    codes = [
        client.post(
            "/api/session",
            json={"name": "vic", "password": "wrong-password"},
            headers={"X-Forwarded-For": f"192.0.2.{n}"},
        ).status_code
        for n in range(FREE_FAILURES + 1)
    ]
    assert codes == [401] * FREE_FAILURES + [429]
    app.state.trusted_proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    # Now the proxy is trusted: the right-most untrusted address is the client, a fresh one.
    fresh = {"X-Forwarded-For": "203.0.113.9, 10.9.9.9"}
    assert fail(client, "vic", 1, **fresh) == [401]
    spoofed = {"X-Forwarded-For": "192.0.2.77, 198.51.100.1"}  # the left-most is the client's say
    assert fail(client, "vic", FREE_FAILURES + 1, **spoofed) == [401] * FREE_FAILURES + [429]
    assert fail(client, "vic", 1, **{"X-Forwarded-For": "192.0.2.78, 198.51.100.1"}) == [429]


def test_failed_logins_from_one_client_do_not_lock_the_account_for_another(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts, "MAX_FAILURES_PER_CLIENT", 6)  # each failure costs an argon2 hash
    attacker = TestClient(app, client=("192.0.2.1", 1))
    assert fail(attacker, "vic", FREE_FAILURES + 2)[-1] == 429
    owner = TestClient(app, client=("192.0.2.2", 1))
    api_login(owner, "vic")
    # ... and one client's failures across accounts have a budget of their own.
    spray = TestClient(app, client=("192.0.2.3", 1))
    for n in range(6):
        fail(spray, f"nobody{n}", 1)
    assert fail(spray, "rex", 1) == [429]
    assert api_login(TestClient(app, client=("192.0.2.4", 1)), "rex")


def test_unlock_and_a_new_password_clear_the_lock(app: Any, cli: Cli, world: World) -> None:
    client = TestClient(app, client=("192.0.2.5", 1))
    assert fail(client, "vic", FREE_FAILURES + 1)[-1] == 429
    admin = log_in(TestClient(app), "ada")
    page = admin.get("/users").text
    assert "locked" in page and "/users/vic/unlock" in page
    assert cli.ok("user", "unlock", "vic").output.strip() == "vic unlocked"
    api_login(client, "vic")
    assert "/users/vic/unlock" not in admin.get("/users").text

    assert fail(client, "vic", FREE_FAILURES + 1)[-1] == 429
    page = admin.get("/users").text
    unlocked = admin.post("/users/vic/unlock", data={"csrf_token": page_csrf(page)}, follow_redirects=False)
    assert unlocked.status_code == 303
    api_login(client, "vic")

    assert fail(client, "vic", FREE_FAILURES + 1)[-1] == 429
    cli("user", "passwd", "vic", "--password-stdin", input="vic-changed-password-9\n")
    response = client.post("/api/session", json={"name": "vic", "password": "vic-changed-password-9"})
    assert response.status_code == 200, response.text
    with world.ledger.engine.connect() as conn:
        from consentsync import audit

        actions = [e["action"] for e in audit.entries(conn, action="user.unlocked")]
    assert actions == ["user.unlocked", "user.unlocked"]


def test_the_last_admin_cannot_disable_or_demote_themselves(app: Any, cli: Cli) -> None:
    for args in (("user", "disable", "ada"), ("user", "role", "ada", "viewer")):
        result = cli(*args)
        assert result.exit_code != 0
        assert result.stderr.strip().splitlines() == [
            "consentsync: error: ada is the last enabled admin and cannot be "
            + ("disabled" if "disable" in args else "demoted")
            + ": make another admin first"
        ]
    admin = log_in(TestClient(app), "ada")
    page = admin.get("/users").text
    refused = admin.post("/users/ada", data={"csrf_token": page_csrf(page), "role": "viewer"})
    assert refused.status_code == 400 and "last enabled admin" in refused.text
    assert json.loads(cli.ok("user", "list", "--json").stdout)[0]["role"] == "admin"
    cli.ok("user", "role", "rex", "admin")
    cli.ok("user", "disable", "ada")  # another admin exists now


@SQLITE_ONLY
def test_passwords_follow_the_policy(app: Any, cli: Cli) -> None:
    assert len(common_passwords()) == 10_000
    assert "1qaz2wsx3edc" in common_passwords()
    short = cli("user", "add", "bob", "--role", "viewer", "--password-stdin", input="short-pw\n")
    common = cli("user", "add", "bob", "--role", "viewer", "--password-stdin", input="1QAZ2WSX3EDC\n")
    assert short.exit_code == common.exit_code == exit_codes.CONFIG
    assert "at least 12 characters" in short.stderr
    assert common.stderr.strip() == (
        "consentsync: error: the password is one of the most common passwords: choose another"
    )
    token = api_login(client := TestClient(app), "ada")
    refused = client.post(
        "/api/users/vic", json={"password": "q1w2e3r4t5y6"}, headers={"X-CSRF-Token": token}
    )
    assert refused.status_code == 400 and "most common" in refused.text
    assert PASSWORDS["vic"] not in common_passwords()
