"""The console's HTML pages: server-rendered, one form per action, each with its CSRF token.

Email addresses never go into a URL (they would end up in browser histories and proxy logs): the
searches that take one are POST forms that answer with a redirect to pseudonymous subject ids.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from consentsync.accounts import Account, Role
from consentsync.domain import InvalidInput, iso
from consentsync.web.console import EXPORT_TYPES, PER_PAGE, RUN_STATUSES, Page, parse_day
from consentsync.web.deps import console_of, require, session_of, sessions_of, viewer_zone
from consentsync.web.drafts import DRAFT_COOKIE
from consentsync.web.rendering import pager_links, render
from consentsync.web.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_HOURS,
    client_of,
    remember_device,
    request_device,
    set_cookie,
)

router = APIRouter(include_in_schema=False)
Viewer = Annotated[Account, Depends(require(Role.VIEWER, api=False))]
Reviewer = Annotated[Account, Depends(require(Role.REVIEWER, api=False))]
Admin = Annotated[Account, Depends(require(Role.ADMIN, api=False))]
PageNumber = Annotated[int, Query(ge=1, le=1_000_000)]
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]  # the ledger's integer keys
Text = Annotated[str, Query(max_length=200)]
LOGIN_FORM_SECONDS = 3600  # how long a login form's token holds
NO_SUBJECT = "none"  # the audit filter an address that names no subject becomes


# -- login -----------------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    return target if target and target.startswith("/") and not target.startswith("//") else "/"


EXPIRED = {
    "1": "Your session ended before the form was sent, so nothing was done. Log in again: you "
    "return to the form with what you typed filled in (never a password). Check it and send it again.",
    "lost": "Your session ended before the form was sent, so nothing was done, and what you typed "
    "could not be kept. Log in again and fill the form in again.",
}


def _login_page(
    request: Request,
    next: str,
    *,
    name: str = "",
    error: str | None = None,
    notice: str | None = None,
    status: int = 200,
) -> Response:
    """The login form with a fresh one-hour token (its nonce in a cookie), the name kept."""
    nonce = secrets.token_urlsafe(16)
    response = render(
        request,
        "login.html",
        {
            "next": _safe_next(next),
            "login_csrf": sessions_of(request).csrf_for("login|" + nonce),
            "name": name,
            "error": error,
            "notice": notice,
        },
        status=status,
    )
    set_cookie(response, request, LOGIN_COOKIE, nonce, LOGIN_FORM_SECONDS)
    return response


@router.get("/login")
def login_form(request: Request, next: Text = "/", expired: Text = "") -> Response:
    if session_of(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    # After a form outlived its session: the name of the account whose form it was.
    owner = request.app.state.drafts.owner(request.cookies.get(DRAFT_COOKIE)) if expired == "1" else None
    return _login_page(request, next, name=owner or "", notice=EXPIRED.get(expired))


@router.post("/login")
def login(
    request: Request,
    name: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=200)] = "/",
) -> Response:
    sessions = sessions_of(request)
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or not sessions.csrf_ok("login|" + nonce, csrf_token):
        # The page was left open past its token's hour (or its cookie went): not a silent reload
        # that empties the form; the name stays, the password is asked for again.
        return _login_page(
            request,
            next,
            name=name,
            error="This login form had expired (it was open for over an hour): your name is kept, "
            "enter your password again.",
            status=400,
        )
    account = console_of(request).accounts.authenticate(
        name, password, client=client_of(request), device=request_device(request, name)
    )
    if account is None:
        response = render(
            request,
            "login.html",
            {
                "next": _safe_next(next),
                "login_csrf": csrf_token,
                "name": name,
                "error": "Wrong name or password.",
                "notice": None,
            },
            status=401,
        )
        return response
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_cookie(
        response,
        request,
        SESSION_COOKIE,
        sessions.issue(
            account,
            request.headers.get("user-agent", ""),
            replacing=request.cookies.get(SESSION_COOKIE),
        ),
        SESSION_HOURS * 3600,
    )
    remember_device(response, request, account)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: Request, _account: Viewer) -> Response:
    _end_own_session(request)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- overview and runs -------------------------------------------------------------------------


@router.get("/")
def overview(request: Request, _account: Viewer) -> Response:
    return render(request, "overview.html", {"title": "Overview", **console_of(request).overview()})


@router.get("/runs")
def runs(
    request: Request,
    _account: Viewer,
    connector: Text = "",
    result: Text = "",
    since: Text = "",
    until: Text = "",
    quarantine: Text = "",
    page: PageNumber = 1,
) -> Response:
    console = console_of(request)
    found = console.runs_filtered(
        connector=connector,
        result=result,
        since=since,
        until=until,
        quarantine=quarantine,
        zone=viewer_zone(request).zone,
        page=page,
    )
    return render(
        request,
        "runs.html",
        {
            "title": "Runs",
            "runs": found.items,
            "held": found.summary["quarantined_open"],
            "pager": pager_links(request, found, newest_first=True),
            "filters": {
                "connector": connector,
                "result": result,
                "since": since,
                "until": until,
                "quarantine": quarantine,
            },
            "connectors": [c.name for c in console.config.settings.connectors],
            "statuses": RUN_STATUSES,
        },
    )


@router.get("/runs/{run_id}")
def run(
    request: Request,
    run_id: Annotated[str, Path(max_length=64)],
    _account: Viewer,
    reason: Annotated[str, Query(max_length=4000)] = "",
    state: Text = "",
    page: PageNumber = 1,
) -> Response:
    console = console_of(request)
    found = console.run(run_id)
    held = console.quarantined(found["id"], reason=reason, state=state, page=page)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return render(
        request,
        "run.html",
        {
            "title": f"Run {found['id'][:8]}",
            "run": found,
            "held": held.items,
            "reasons": held.summary["reasons"],
            "pager": pager_links(request, held, anchor="quarantined"),
            "filters": {"reason": reason, "state": state},
            "here": here,
            "retried": request.query_params.get("retried"),
            "refused": request.query_params.getlist("refused"),
        },
    )


def _back_to_run(run_id: str, back: str, retried: int, refused: list[str], anchor: str) -> str:
    """Where a retry returns: the run page as the user had it (its filters and page, from the
    form's ``back``), saying how many were queued, scrolled to where they clicked."""
    target = urlsplit(back if back.startswith(f"/runs/{run_id}") and "//" not in back else f"/runs/{run_id}")
    query = [(k, v) for k, v in parse_qsl(target.query) if k not in ("retried", "refused")]
    query += [("retried", str(retried))] + [("refused", text[:300]) for text in refused[:5]]
    return f"{target.path}?{urlencode(query)}#{anchor}"


@router.post("/quarantine/{quarantine_id}/retry")
def retry(
    request: Request,
    quarantine_id: RowId,
    account: Reviewer,
    back: Annotated[str, Form(max_length=8000)] = "",
) -> Response:
    row = console_of(request).retry_quarantined(quarantine_id, account)
    target = _back_to_run(row["run_id"], back, 1, [], f"q{quarantine_id}")
    return RedirectResponse(target, status_code=303)


@router.post("/runs/{run_id}/retry")
def retry_many(
    request: Request,
    run_id: Annotated[str, Path(max_length=64)],
    account: Reviewer,
    scope: Annotated[str, Form(max_length=10)] = "selected",
    ids: Annotated[list[int] | None, Form()] = None,
    reason: Annotated[str, Form(max_length=4000)] = "",
    back: Annotated[str, Form(max_length=8000)] = "",
) -> Response:
    """Retry the ticked records (``scope`` selected), those of one reason, or all open ones. A
    request that cannot be done (nothing ticked, nothing open) returns to the page saying why."""
    console = console_of(request)
    full = console.run(run_id)["id"]
    try:
        if scope not in ("selected", "reason", "all"):
            raise InvalidInput(f"scope {scope!r}: accepted are selected, reason, all")
        if scope == "selected" and not ids:
            raise InvalidInput("no record ticked: tick the records to retry, or retry all of them")
        if scope == "reason" and not reason:
            raise InvalidInput("choose the reason whose records to retry")
        done = console.retry_many(
            full,
            account,
            ids=ids if scope == "selected" else None,
            reason=reason if scope == "reason" else None,
        )
    except InvalidInput as error:
        done = {"retried": [], "refused": [str(error)]}
    target = _back_to_run(full, back, len(done["retried"]), done["refused"], "quarantined")
    return RedirectResponse(target, status_code=303)


# -- audit -------------------------------------------------------------------------------------


@router.get("/audit")
def audit_page(
    request: Request,
    account: Viewer,
    subject: Annotated[list[str] | None, Query()] = None,
    connector: Text = "",
    rule: Text = "",
    action: Text = "",
    since: Text = "",
    until: Text = "",
    page: PageNumber = 1,
    by_email: Text = "",
    through: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> Response:
    return _audit(
        request, account, subject, connector, rule, action, since, until, page, by_email == "1", None, through
    )


def _audit(
    request: Request,
    account: Account,
    subjects: list[str] | None,
    connector: str,
    rule: str,
    action: str,
    since: str,
    until: str,
    page: int,
    by_email: bool,
    verified: dict[str, Any] | None,
    through: int | None = None,
) -> Response:
    console = console_of(request)
    zone = viewer_zone(request).zone
    no_match = by_email and subjects == [NO_SUBJECT]
    found = console.audit(
        subjects=subjects,
        connector=connector,
        rule=rule,
        action=action,
        since=parse_day(since, "since", zone=zone),
        until=parse_day(until, "until", end=True, zone=zone),
        page=page,
        reader=(account, "console"),  # the trail read: written down (Console.audit)
        through=through,
    )
    filters = {"connector": connector, "rule": rule, "action": action}
    return render(
        request,
        "audit.html",
        {
            "title": "Audit trail",
            "entries": found.items,
            # The neighbours read where this page stood (the entries since would move them).
            "pager": pager_links(
                request, found, newest_first=True, keep={"through": str(found.summary["through"])}
            ),
            "filters": {
                "connector": connector,
                "rule": rule,
                "action": action,
                "since": since,
                "until": until,
            },
            "choices": console.audit_choices(extra=filters),
            "subjects": subjects,
            "by_email": by_email,
            "no_match": no_match,
            "verified": verified,
        },
    )


@router.post("/audit")
def audit_search(
    request: Request,
    account: Viewer,
    email: Annotated[str, Form(max_length=320)] = "",
    connector: Annotated[str, Form(max_length=200)] = "",
    rule: Annotated[str, Form(max_length=200)] = "",
    action: Annotated[str, Form(max_length=200)] = "",
    since: Annotated[str, Form(max_length=200)] = "",
    until: Annotated[str, Form(max_length=200)] = "",
    tz: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """The search form: an address is turned into subject ids here, so it never enters a URL."""
    query: list[tuple[str, str]] = [
        (k, v)
        for k, v in (
            ("connector", connector),
            ("rule", rule),
            ("action", action),
            ("since", since),
            ("until", until),
            ("tz", tz),
        )
        if v
    ]
    if email.strip():
        uids = console_of(request).subject_uids_for_email(email, reader=(account, "console"))
        # No subject: a filter that matches nothing, rather than no filter at all (the page says so).
        query += [("subject", uid) for uid in uids] or [("subject", NO_SUBJECT)]
        query.append(("by_email", "1"))
    return RedirectResponse("/audit?" + urlencode(query), status_code=303)


@router.post("/audit/verify")
def audit_verify(request: Request, account: Viewer) -> Response:
    result = console_of(request).verify_audit()
    return _audit(request, account, None, "", "", "", "", "", 1, False, result)


# -- subjects ----------------------------------------------------------------------------------


@router.get("/subjects")
def subject_search(request: Request, _account: Viewer) -> Response:
    return render(request, "subject_search.html", {"title": "Subject"})


@router.post("/subjects")
def subject_lookup(
    request: Request, _account: Viewer, email: Annotated[str, Form(max_length=320)]
) -> Response:
    # The page it leads to audits the read.
    view = console_of(request).subject_by_email(email, reader=None)
    return RedirectResponse(f"/subjects/{view['subject']}", status_code=303)


@router.get("/subjects/{uid}")
def subject(request: Request, uid: str, account: Viewer, page: PageNumber = 1) -> Response:
    """One person: effective state with the evidence behind each purpose, the history newest
    first a page at a time, objections and CRM records."""
    console = console_of(request)
    view = console.subject(uid, reader=(account, "console"))
    evidence = console.evidence_by_purpose(view)
    history = list(reversed(view["history"]))
    start = (page - 1) * PER_PAGE
    shown = Page(history[start : start + PER_PAGE], page, PER_PAGE, len(history))
    return render(
        request,
        "subject.html",
        {
            "title": "Subject",
            "view": view,
            "evidence": {f"{purpose}|{channel}": event for (purpose, channel), event in evidence.items()},
            "history": shown.items,
            "pager": pager_links(request, shown, anchor="history", newest_first=True),
            "formats": list(EXPORT_TYPES),
        },
    )


@router.get("/subjects/{uid}/export.{fmt}")
def subject_export(request: Request, uid: str, fmt: str, account: Viewer) -> Response:
    content, media_type, name = console_of(request).export(uid, fmt, reader=(account, "console"))
    return Response(
        content, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


# -- people to chase ---------------------------------------------------------------------------


@router.get("/requested")
def requested(
    request: Request,
    _account: Viewer,
    older_than: Annotated[int | None, Query(ge=0, le=36500)] = None,
    page: PageNumber = 1,
) -> Response:
    found = console_of(request).requested(older_than_days=older_than, page=page)
    days = console_of(request).config.settings.policy.requested_stale_after_days
    return render(
        request,
        "requested.html",
        {
            "title": "Unanswered requests",
            "rows": found.items,
            "pager": pager_links(request, found),
            "days": days if older_than is None else older_than,
        },
    )


# -- objections --------------------------------------------------------------------------------


@router.get("/objections")
def objections(
    request: Request, _account: Viewer, status: Text = "pending", page: PageNumber = 1
) -> Response:
    if status not in ("pending", "all"):
        raise InvalidInput(f"status {status!r}: accepted are pending, all")
    # Each person is named by a masked address (the console masks the list for the API alike):
    # enough to tell them apart, not a list of everyone's address for every viewer (Art. 5(1)(c)).
    found = console_of(request).objections(pending_only=status == "pending", page=page)
    return render(
        request,
        "objections.html",
        {
            "title": "Objections",
            "objections": found.items,
            "pager": pager_links(request, found),
            "status": status,
        },
    )


@router.get("/objections/{objection_id}")
def objection(request: Request, objection_id: RowId, account: Viewer) -> Response:
    found = console_of(request).objection(objection_id, reader=(account, "console"))
    return render(request, "objection.html", {"title": f"Objection {objection_id}", **found, "error": None})


@router.post("/objections/{objection_id}/decide")
def decide(
    request: Request,
    objection_id: RowId,
    account: Reviewer,
    decision: Annotated[str, Form(max_length=10)] = "",
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    console = console_of(request)
    if decision not in ("uphold", "reject") or not reason.strip():
        found = console.objection(objection_id, reader=(account, "console"))
        message = (
            "Choose uphold or reject." if decision not in ("uphold", "reject") else "A reason is required."
        )
        return render(
            request,
            "objection.html",
            {"title": f"Objection {objection_id}", **found, "error": message},
            status=400,
        )
    console.decide(objection_id, uphold=decision == "uphold", reason=reason, account=account)
    return RedirectResponse(f"/objections/{objection_id}?decided=1", status_code=303)


# -- configuration and accounts ------------------------------------------------------------------


@router.get("/config")
def configuration(request: Request, _account: Viewer) -> Response:
    return render(
        request, "config.html", {"title": "Configuration", "config": console_of(request).configuration()}
    )


def _end_own_session(request: Request) -> None:
    session = session_of(request)
    if session is not None:
        sessions_of(request).end(session.token)


@router.get("/account")
def own_account(request: Request, account: Viewer) -> Response:
    """Every account's own page: its role, and changing its password (ASVS 4.0 V2.1.5: a viewer
    or reviewer changed it only by asking an admin, who then knew it)."""
    manager = console_of(request).accounts
    return render(
        request,
        "account.html",
        {
            "title": "Your account",
            "account": account,
            "live": len(manager.sessions(account.name)),
            "changed": request.query_params.get("changed") == "1",
        },
    )


@router.post("/account/password")
def change_own_password(
    request: Request,
    account: Viewer,
    current_password: Annotated[str, Form(max_length=1024)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    if not password:
        raise InvalidInput("password: give the new password (12 characters or more)")
    session = session_of(request)
    console_of(request).accounts.update(
        account.name,
        actor=account.name,
        password=password,
        current_password=current_password or None,
        keep_session=session.token if session else None,
        client=client_of(request),
        device=request_device(request, account.name),
    )
    return RedirectResponse("/account?changed=1", status_code=303)


@router.get("/users")
def users(request: Request, _account: Admin) -> Response:
    manager = console_of(request).accounts
    accounts = manager.list()
    return render(
        request,
        "users.html",
        {
            "title": "Accounts",
            "accounts": accounts,
            "roles": [r.label for r in Role],
            "locked": {a.name for a in accounts if manager.locked(a.name)},
            "live": {a.name: len(manager.sessions(a.name)) for a in accounts},
            "last_login": {name: iso(at) for name, at in manager.last_logins().items()},
        },
    )


@router.post("/users/{name}/unlock")
def unlock_user(request: Request, name: Annotated[str, Path(max_length=64)], account: Admin) -> Response:
    console_of(request).accounts.unlock(name, actor=account.name)
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{name}/end-sessions")
def end_user_sessions(
    request: Request, name: Annotated[str, Path(max_length=64)], account: Admin
) -> Response:
    console_of(request).accounts.end_sessions(name, actor=account.name)
    return RedirectResponse("/users", status_code=303)


@router.post("/users")
def add_user(
    request: Request,
    account: Admin,
    name: Annotated[str, Form(max_length=64)],
    role: Annotated[str, Form(max_length=16)],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    console_of(request).accounts.add(name, role, password, actor=account.name)
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{name}")
def change_user(
    request: Request,
    name: str,
    account: Admin,
    role: Annotated[str, Form(max_length=16)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    disabled: Annotated[str, Form(max_length=5)] = "",
    current_password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    session = session_of(request)
    console_of(request).accounts.update(
        name,
        actor=account.name,
        role=role or None,
        password=password or None,
        disabled={"yes": True, "no": False}.get(disabled),
        keep_session=session.token if session else None,
        current_password=current_password or None,
        client=client_of(request),
        device=request_device(request, name),
    )
    return RedirectResponse("/users?" + urlencode({"reset": name}) if password else "/users", status_code=303)


# -- push plans --------------------------------------------------------------------------------

ConnectorName = Annotated[str, Path(max_length=64)]


@router.get("/connectors/{name}/outbox")
def outbox(
    request: Request,
    name: ConnectorName,
    _account: Viewer,
    status: Annotated[str, Query(pattern="^(pending|dead)$")] = "pending",
    page: PageNumber = 1,
) -> Response:
    listed = console_of(request).outbox(name, status, page=page, per_page=PER_PAGE)
    title = f"{'Pending pushes' if status == 'pending' else 'Dead letters'} of {name}"
    return render(
        request,
        "outbox.html",
        {"title": title, "connector": name, "status": status, "rows": listed.items, "total": listed.total,
         "pager": pager_links(request, listed)},
    )  # fmt: skip


@router.get("/connectors/{name}/plans")
def plans(request: Request, name: ConnectorName, _account: Viewer, page: PageNumber = 1) -> Response:
    desk = console_of(request).plans
    connector = desk.connector(name)
    items, total = desk.history(name, page=page, per_page=PER_PAGE)
    return render(
        request,
        "plans.html",
        {
            "title": f"Plans of {name}",
            "connector": connector,
            "plans": items,
            "pager": pager_links(request, Page(items, page, PER_PAGE, total), newest_first=True),
        },
    )


@router.post("/connectors/{name}/plans")
def make_plan(request: Request, name: ConnectorName, account: Reviewer) -> Response:
    plan_id = console_of(request).plans.make(name, account)
    return RedirectResponse(f"/plans/{plan_id}", status_code=303)


def _plan_page(
    request: Request, plan_id: int, page: int = 1, *, error: str | None = None, status: int = 200
) -> Response:
    plan = console_of(request).plans.view(plan_id, page=page, per_page=PER_PAGE)
    items = plan["items"]
    pager = pager_links(request, Page(items["items"], page, PER_PAGE, items["total"]))
    return render(
        request,
        "plan.html",
        {"title": f"Plan {plan_id}", "plan": plan, "pager": pager, "error": error},
        status=status,
    )


@router.get("/plans/{plan_id}")
def plan(request: Request, plan_id: RowId, _account: Viewer, page: PageNumber = 1) -> Response:
    return _plan_page(request, plan_id, page)


@router.get("/plans/{plan_id}/approve")
def approve_plan_form(request: Request, plan_id: RowId, _account: Admin) -> Response:
    """The confirmation step: what will be pushed, and the digest being approved."""
    plan = console_of(request).plans.view(plan_id, page=1, per_page=PER_PAGE)
    return render(request, "plan_approve.html", {"title": f"Plan {plan_id}", "plan": plan})


@router.post("/plans/{plan_id}/approve")
def approve_plan(
    request: Request,
    plan_id: RowId,
    account: Admin,
    digest: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    console_of(request).plans.approve(plan_id, digest, account)
    return RedirectResponse(f"/plans/{plan_id}?decided=1", status_code=303)


@router.post("/plans/{plan_id}/reject")
def reject_plan(
    request: Request,
    plan_id: RowId,
    account: Admin,
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    if not reason.strip():
        return _plan_page(request, plan_id, error="A reason is required to reject a plan.", status=400)
    console_of(request).plans.reject(plan_id, reason, account)
    return RedirectResponse(f"/plans/{plan_id}?decided=1", status_code=303)
