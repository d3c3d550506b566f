"""Console accounts as a security reviewer tries them (session 50, third pass).

- An account set its own new password without giving its current one (ASVS 4.0 V2.1.6): a
  session taken over (a console left open, a copied cookie) could change it and lock its owner
  out. Now the current password is asked for, checked like a login and counted by its throttle;
  an admin resetting another account's password is not asked for that account's.
- Logging in again in a browser left that browser's previous session live on the server: a copy
  of the old cookie kept working for up to 12 hours. A login now ends the session it replaces.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from consentsync.accounts import CURRENT_PASSWORD_RULE, FREE_FAILURES
from consentsync.ledger.schema import audit_entries
from tests.conftest import SQLITE_ONLY
from tests.web.conftest import PASSWORDS, World, api_login, log_in, page_csrf

pytestmark = SQLITE_ONLY  # the ledger's database does not change what is tested (CI's time does)

NEW = "ada-brand-new-password-9"


def copy_of(app: Any, client: TestClient) -> TestClient:
    """Another browser holding a copy of ``client``'s cookies."""
    other = TestClient(app)
    for name, value in client.cookies.items():
        other.cookies.set(name, value)
    return other


def can_log_in(app: Any, name: str, password: str) -> bool:
    return TestClient(app).post("/api/session", json={"name": name, "password": password}).status_code == 200


def login_form_csrf(html: str) -> str:
    """The login form's token (a page for someone signed in also has the log-out form's)."""
    return page_csrf(html.split('action="/login"', 1)[1])


def audited(world: World, action: str) -> list[dict[str, Any]]:
    with world.ledger.engine.connect() as conn:
        rows = conn.execute(select(audit_entries.c.payload).where(audit_entries.c.action == action)).all()
    return [json.loads(row.payload) for row in rows]


def test_an_account_setting_its_own_password_through_the_api_must_give_its_current_one(
    app: Any, world: World
) -> None:
    hijacked = TestClient(app)
    token = api_login(hijacked, "ada")
    headers = {"X-CSRF-Token": token}

    missing = hijacked.post("/api/users/ada", json={"password": NEW}, headers=headers)
    assert missing.status_code == 400 and "current_password" in missing.json()["detail"], missing.text
    wrong = hijacked.post(
        "/api/users/ada", json={"password": NEW, "current_password": "not-adas-password"}, headers=headers
    )
    assert wrong.status_code == 400 and "wrong" in wrong.json()["detail"], wrong.text
    # Nothing changed: the owner still logs in with the old password, nothing was audited as changed.
    assert can_log_in(app, "ada", PASSWORDS["ada"]) and not can_log_in(app, "ada", NEW)
    assert audited(world, "user.password_changed") == []
    failed = [e for e in audited(world, "login.failed") if e.get("rule") == CURRENT_PASSWORD_RULE]
    assert len(failed) == 1 and "not-adas-password" not in json.dumps(failed)

    right = hijacked.post(
        "/api/users/ada", json={"password": NEW, "current_password": PASSWORDS["ada"]}, headers=headers
    )
    assert right.status_code == 200, right.text
    assert can_log_in(app, "ada", NEW) and not can_log_in(app, "ada", PASSWORDS["ada"])
    assert hijacked.get("/api/overview").status_code == 200  # the session making the change stays


def test_guessing_the_current_password_is_throttled_like_a_login(app: Any) -> None:
    hijacked = TestClient(app)
    headers = {"X-CSRF-Token": api_login(hijacked, "ada")}
    codes = [
        hijacked.post(
            "/api/users/ada", json={"password": NEW, "current_password": f"guess-number-{i}"}, headers=headers
        ).status_code
        for i in range(FREE_FAILURES + 1)
    ]
    assert codes == [400] * FREE_FAILURES + [429], codes
    # Throttled before the password is even checked: the right one waits too.
    late = hijacked.post(
        "/api/users/ada", json={"password": NEW, "current_password": PASSWORDS["ada"]}, headers=headers
    )
    assert late.status_code == 429 and int(late.headers["retry-after"]) > 0
    # The owner, elsewhere, is not locked out, and the password did not change.
    owner = TestClient(app, client=("10.9.9.9", 50000))
    assert owner.post("/api/session", json={"name": "ada", "password": PASSWORDS["ada"]}).status_code == 200


def test_an_admin_resets_another_accounts_password_without_knowing_it(app: Any) -> None:
    admin = TestClient(app)
    token = api_login(admin, "ada")
    reset = admin.post(
        "/api/users/vic", json={"password": "vic-reset-password-77"}, headers={"X-CSRF-Token": token}
    )
    assert reset.status_code == 200, reset.text
    assert can_log_in(app, "vic", "vic-reset-password-77")


def test_the_accounts_page_asks_for_the_current_password_on_the_own_row_only(app: Any) -> None:
    admin = log_in(TestClient(app), "ada")
    page = admin.get("/users").text
    own = page.split('action="/users/ada" class="inline"')[2].split("</form>")[0]
    other = page.split('action="/users/vic" class="inline"')[2].split("</form>")[0]
    assert 'name="current_password"' in own and 'autocomplete="current-password"' in own
    assert 'name="current_password"' not in other

    csrf = page_csrf(page)
    refused = admin.post("/users/ada", data={"password": NEW, "csrf_token": csrf}, follow_redirects=False)
    assert refused.status_code == 400 and "current password" in refused.text
    assert can_log_in(app, "ada", PASSWORDS["ada"])
    done = admin.post(
        "/users/ada",
        data={"password": NEW, "current_password": PASSWORDS["ada"], "csrf_token": csrf},
        follow_redirects=True,
    )
    assert done.status_code == 200 and "Your password is changed" in done.text
    assert can_log_in(app, "ada", NEW)


def test_logging_in_again_in_a_browser_ends_its_previous_session(app: Any, world: World) -> None:
    # Two tabs on the login page: the first login sent spends the form's token, so the other
    # tab's form comes back "expired" with a fresh one, and is sent again, the first session live.
    browser = log_in(TestClient(app), "rex")
    copied = copy_of(app, browser)  # the old session's cookie, copied
    assert copied.get("/api/overview").status_code == 200
    second_tab = browser.post(
        "/login",
        data={"name": "rex", "password": PASSWORDS["rex"], "csrf_token": "spent", "next": "/"},
        follow_redirects=False,
    )
    assert second_tab.status_code == 400 and "had expired" in second_tab.text
    again = browser.post(
        "/login",
        data={"name": "rex", "password": PASSWORDS["rex"], "csrf_token": login_form_csrf(second_tab.text)},
        follow_redirects=False,
    )
    assert again.status_code == 303, again.text
    assert browser.get("/api/overview").status_code == 200
    assert copied.get("/api/overview").status_code == 401
    assert len(app.state.console.accounts.sessions("rex")) == 1

    # Through the API too, and when the browser logs in as another account.
    api = TestClient(app)
    api_login(api, "vic")
    old = copy_of(app, api)
    api_login(api, "rex")
    assert old.get("/api/overview").status_code == 401
    assert app.state.console.accounts.sessions("vic") == []

    # A failed login ends nothing.
    kept = TestClient(app)
    api_login(kept, "vic")
    assert kept.post("/api/session", json={"name": "vic", "password": "wrong-password"}).status_code == 401
    assert kept.get("/api/overview").status_code == 200


def test_a_viewer_changes_their_own_password_with_the_current_one(app: Any, viewer: TestClient) -> None:
    """A viewer or reviewer could not change their password at all (only an admin could, who
    then knew it: ASVS 4.0 V2.1.5). Their own page and the API now let them, current one first."""
    other = TestClient(app)
    api_login(other, "vic")
    page = viewer.get("/account")
    assert page.status_code == 200 and 'name="current_password"' in page.text
    csrf = page_csrf(page.text)
    new = "vic-own-new-password-3"
    refused = viewer.post(
        "/account/password",
        data={"password": new, "current_password": "not-vics-password", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert refused.status_code == 400 and can_log_in(app, "vic", PASSWORDS["vic"])
    done = viewer.post(
        "/account/password",
        data={"password": new, "current_password": PASSWORDS["vic"], "csrf_token": csrf},
        follow_redirects=True,
    )
    assert done.status_code == 200 and "Your password is changed" in done.text
    assert can_log_in(app, "vic", new) and not can_log_in(app, "vic", PASSWORDS["vic"])
    assert other.get("/api/overview").status_code == 401  # the other session ended
    assert viewer.get("/api/overview").status_code == 200  # this one stays

    # The API, for a reviewer; and nobody reaches another account's password this way.
    rex = TestClient(app)
    headers = {"X-CSRF-Token": api_login(rex, "rex")}
    assert rex.post("/api/users/vic", json={"password": new + "x"}, headers=headers).status_code == 403
    missing = rex.post("/api/session/password", json={"password": "rex-own-new-password-4"}, headers=headers)
    assert missing.status_code == 422
    changed = rex.post(
        "/api/session/password",
        json={"password": "rex-own-new-password-4", "current_password": PASSWORDS["rex"]},
        headers=headers,
    )
    assert changed.status_code == 200 and changed.json()["name"] == "rex"
    assert can_log_in(app, "rex", "rex-own-new-password-4")
