"""The JSON API behind the pages: the same actions, the same roles (documented at /api/docs)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from consentsync.accounts import Account, Role
from consentsync.domain import InvalidInput
from consentsync.hub.api import NOT_NAMED, duplicate_key, names_a_key_twice
from consentsync.web.console import Page, parse_day
from consentsync.web.deps import console_of, require, session_of, sessions_of, viewer_zone
from consentsync.web.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_HOURS,
    client_of,
    remember_device,
    request_device,
    set_cookie,
)

# sync.runs.RUN_STATUSES, as a type the OpenAPI schema lists (test_api checks they agree).
RunStatus = Literal["running", "succeeded", "failed", "crashed", "stopped", "held", "skipped"]

router = APIRouter(prefix="/api", tags=["console"])


async def unique_keys(request: Request) -> None:
    """Refuses (422, ``{"detail": ...}``, nothing done) a JSON body with an object that names a
    key twice, at any depth, naming the first and where (the capture API's ``duplicate_key``):
    Python's parser takes the last of two, while a proxy or audit log may read the first and
    see another request than the one carried out. A route without a body is not read.

    Run by a route's dependencies once the caller is let in, never before: the test costs about
    what FastAPI's own parse does (bench/hub_json_bench.py), and naming the key a Python parse
    more, so whoever has no session must not make the server pay it. Any media type: a body
    FastAPI did not read as JSON fails its model with 422 anyway."""
    route = request.scope.get("route")
    if getattr(route, "body_field", None) is None:
        return
    body = await request.body()  # read already: FastAPI parsed it before any dependency
    if names_a_key_twice(body):  # C functions for hooks: no Python per object
        # Saying which and where runs Python per object: not on the event loop.
        error = await run_in_threadpool(duplicate_key, body)
        raise StarletteHTTPException(422, error or NOT_NAMED)


def admitted(role: Role) -> Callable[[Request], Awaitable[Account]]:
    """A dependency: the account let in (``require``: session, CSRF token, ``role``), once the
    request's JSON body names no key twice (``unique_keys``). Every route but the login takes
    one, so every body they read is checked, and only after the caller is known."""
    let_in = require(role, api=True)

    async def dependency(request: Request) -> Account:
        account = await let_in(request)
        await unique_keys(request)
        return account

    return dependency


Viewer = Annotated[Account, Depends(admitted(Role.VIEWER))]
Reviewer = Annotated[Account, Depends(admitted(Role.REVIEWER))]
Admin = Annotated[Account, Depends(admitted(Role.ADMIN))]
PageNumber = Annotated[int, Query(ge=1, le=1_000_000)]
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]  # the ledger's integer keys
PerPage = Annotated[int, Query(ge=1, le=200)]
TZ_HELP = "IANA time zone the dates are days in (e.g. Australia/Sydney); UTC when absent or unknown."
Text = Annotated[str | None, Query(max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Credentials(_Body):
    name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


class AuditSearch(_Body):
    email: str | None = Field(
        default=None,
        max_length=320,
        description="Hashed-key lookup; also finds erased people. Each person it names is audited "
        "as subject.viewed (via audit_trail): page on with `subject`, the ids answered in `subjects`.",
    )
    subject: str | None = Field(default=None, max_length=36)
    connector: str | None = Field(default=None, max_length=64)
    rule: str | None = Field(default=None, max_length=64)
    action: str | None = Field(default=None, max_length=64)
    since: str | None = Field(
        default=None, max_length=40, description="Date (YYYY-MM-DD, a day in tz) or ISO time."
    )
    until: str | None = Field(default=None, max_length=40, description="Inclusive date, or exclusive time.")
    tz: str | None = Field(default=None, max_length=64, description=TZ_HELP)
    page: int = Field(default=1, ge=1, le=1_000_000)
    per_page: int = Field(default=25, ge=1, le=200)
    through: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="Page on with the first page's `through` (the head it was read at): the entries "
        "written since, each search's own audit.viewed entry among them, then do not move the pages.",
    )
    include_views: bool = Field(
        default=False,
        description="Also the trail's own reads (audit.viewed: each search writes one), left out "
        "otherwise; `action: audit.viewed` lists them alone.",
    )


class EmailLookup(_Body):
    email: str = Field(min_length=1, max_length=320)


class Decision(_Body):
    decision: Literal["uphold", "reject"]
    reason: str = Field(min_length=1, max_length=2000)


class NewAccount(_Body):
    name: str = Field(min_length=1, max_length=64)
    role: Literal["viewer", "reviewer", "admin"]
    password: str = Field(min_length=1, max_length=1024)


class AccountChange(_Body):
    role: Literal["viewer", "reviewer", "admin"] | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=1, max_length=1024)
    current_password: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Required to set a new password for your own account (ASVS V2.1.6); checked "
        "and throttled like a login. An admin resetting another account's password does not give it.",
    )


async def login_body(request: Request, credentials: Credentials) -> Credentials:
    """The login's body, once it names no key twice (``unique_keys``): two names, and a proxy
    would log an attempt on another account than the one tried. Nobody is let in yet, so the
    check waits for the body to be a login's (FastAPI runs this only once ``Credentials``
    validated): whoever sends another body gets 422 for it at FastAPI's own cost, as before.
    Before the password is checked, so a refused body counts no failure and audits nothing."""
    await unique_keys(request)
    return credentials


@router.post("/session", summary="Log in: sets the session cookie, answers the CSRF token")
def login(credentials: Annotated[Credentials, Depends(login_body)], request: Request) -> JSONResponse:
    console = console_of(request)
    account = console.accounts.authenticate(
        credentials.name,
        credentials.password,
        client=client_of(request),
        device=request_device(request, credentials.name),
    )
    if account is None:
        return JSONResponse({"detail": "wrong name or password"}, status_code=401)
    sessions = sessions_of(request)
    token = sessions.issue(
        account,
        request.headers.get("user-agent", ""),
        replacing=request.cookies.get(SESSION_COOKIE),
    )
    response = JSONResponse({"user": account.as_dict(), "csrf_token": sessions.csrf_for(token)})
    set_cookie(response, request, SESSION_COOKIE, token, SESSION_HOURS * 3600)
    remember_device(response, request, account)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.get("/session", summary="Who is logged in, and the CSRF token of this session")
def whoami(request: Request, account: Viewer) -> dict[str, Any]:
    session = session_of(request)
    assert session is not None
    return {"user": account.as_dict(), "csrf_token": sessions_of(request).csrf_for(session.token)}


@router.delete("/session", summary="Log out (the session ends on the server)")
def logout(request: Request, _account: Viewer) -> Response:
    session = session_of(request)
    if session is not None:
        sessions_of(request).end(session.token)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


class PasswordChange(_Body):
    current_password: str = Field(min_length=1, max_length=1024)
    password: str = Field(min_length=1, max_length=1024, description="The new password.")


@router.post(
    "/session/password",
    summary="Change your own password (any role): the current one is required; your other sessions end",
)
def change_own_password(request: Request, change: PasswordChange, account: Viewer) -> dict[str, Any]:
    session = session_of(request)
    return (
        console_of(request)
        .accounts.update(
            account.name,
            actor=account.name,
            password=change.password,
            current_password=change.current_password,
            keep_session=session.token if session else None,
            client=client_of(request),
            device=request_device(request, account.name),
        )
        .as_dict()
    )


@router.get("/overview", summary="Every connector at a glance, and the alerts")
def overview(request: Request, _account: Viewer) -> dict[str, Any]:
    return console_of(request).overview()


@router.get("/runs", summary="Sync runs, newest first")
def runs(
    request: Request,
    _account: Viewer,
    connector: Text = None,
    result: Annotated[RunStatus | None, Query()] = None,
    since: Text = None,
    until: Text = None,
    quarantine: Annotated[
        Literal["open"] | None, Query(description="open: only runs still holding open quarantined records")
    ] = None,
    tz: Annotated[str | None, Query(max_length=64, description=TZ_HELP)] = None,
    page: PageNumber = 1,
    per_page: PerPage = 25,
) -> dict[str, Any]:
    found = console_of(request).runs_filtered(
        connector=connector,
        result=result,
        since=since,
        until=until,
        quarantine=quarantine,
        zone=viewer_zone(request, tz).zone,
        page=page,
        per_page=per_page,
    )
    return found.as_dict()


@router.get("/runs/{run_id}", summary="One run: counts, API calls, errors, quarantined records")
def run(request: Request, _account: Viewer, run_id: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
    return console_of(request).run(run_id)


@router.get("/runs/{run_id}/quarantined", summary="A run's quarantined records, a page at a time")
def quarantined(
    request: Request,
    _account: Viewer,
    run_id: Annotated[str, Path(max_length=64)],
    reason: Annotated[str | None, Query(max_length=4000)] = None,
    state: Literal["open", "resolved"] | None = None,
    page: PageNumber = 1,
    per_page: PerPage = 25,
) -> dict[str, Any]:
    console = console_of(request)
    full = console.run(run_id)["id"]
    return console.quarantined(full, reason=reason, state=state, page=page, per_page=per_page).as_dict()


class BulkRetry(_Body):
    scope: Literal["selected", "reason", "all"]
    ids: list[int] = Field(default_factory=list, max_length=1000)
    reason: str | None = Field(default=None, max_length=4000)


@router.post("/runs/{run_id}/retry", summary="Retry a run's open quarantined records in bulk (reviewer)")
def retry_many(
    request: Request, account: Reviewer, run_id: Annotated[str, Path(max_length=64)], bulk: BulkRetry
) -> dict[str, Any]:
    if bulk.scope == "selected" and not bulk.ids:
        raise InvalidInput("scope selected needs ids")
    if bulk.scope == "reason" and not bulk.reason:
        raise InvalidInput("scope reason needs a reason")
    return console_of(request).retry_many(
        run_id,
        account,
        ids=bulk.ids if bulk.scope == "selected" else None,
        reason=bulk.reason if bulk.scope == "reason" else None,
    )


@router.post("/quarantine/{quarantine_id}/retry", summary="Retry a quarantined record (reviewer)")
def retry(request: Request, account: Reviewer, quarantine_id: RowId) -> dict[str, Any]:
    return console_of(request).retry_quarantined(quarantine_id, account)


@router.post("/audit/search", summary="Search the audit trail, newest first")
def audit_search(request: Request, search: AuditSearch, account: Viewer) -> dict[str, Any]:
    console = console_of(request)
    uids: list[str] | None = None
    if search.email:
        # Audited as subject.viewed for each person the address names (page on by `subject`).
        uids = console.subject_uids_for_email(search.email, reader=(account, "api"))
    if search.subject:
        uids = [search.subject] if uids is None else [u for u in uids if u == search.subject]
    zone = viewer_zone(request, search.tz).zone
    found = console.audit(
        subjects=uids,
        connector=search.connector,
        rule=search.rule,
        action=search.action,
        since=parse_day(search.since, "since", zone=zone),
        until=parse_day(search.until, "until", end=True, zone=zone),
        page=search.page,
        per_page=search.per_page,
        reader=(account, "api"),  # the trail read: written down (Console.audit)
        through=search.through,
        include_views=search.include_views,
    )
    return {**found.as_dict(), "subjects": uids}


@router.post("/audit/verify", summary="Recompute the hash chain")
def audit_verify(request: Request, _account: Viewer) -> dict[str, Any]:
    return console_of(request).verify_audit()


@router.post("/subjects/lookup", summary="One person's record, found by email")
def subject_lookup(request: Request, lookup: EmailLookup, account: Viewer) -> dict[str, Any]:
    return console_of(request).subject_by_email(lookup.email, reader=(account, "api"))


@router.get("/subjects/{uid}", summary="One person's record: state, history, objections, CRM records")
def subject(request: Request, uid: Annotated[str, Path(max_length=36)], account: Viewer) -> dict[str, Any]:
    return console_of(request).subject(uid, reader=(account, "api"))


@router.get("/subjects/{uid}/export", summary="One person's record as a file")
def subject_export(
    request: Request,
    uid: Annotated[str, Path(max_length=36)],
    account: Viewer,
    format: Literal["json", "csv", "xlsx"] = "json",
) -> Response:
    content, media_type, name = console_of(request).export(uid, format, reader=(account, "api"))
    return Response(
        content, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get(
    "/requested",
    summary="Consents requested and unanswered: the people who may be chased; each by a masked address",
    description="`email` is masked (`jo***@ex***.com`): the list reads nobody's record. "
    "`GET /api/subjects/{uid}` has the address, and that read is audited.",
)
def requested(
    request: Request,
    _account: Viewer,
    older_than: Annotated[int | None, Query(ge=0, le=36500)] = None,
    page: PageNumber = 1,
    per_page: PerPage = 25,
) -> dict[str, Any]:
    return console_of(request).requested(older_than_days=older_than, page=page, per_page=per_page).as_dict()


@router.get(
    "/objections",
    summary="The review queue: pending first, oldest first; each person by a masked address",
    description="`email` is masked (`jo***@ex***.com`; null once erased): the list reads nobody's "
    "record. `GET /api/objections/{objection_id}` has the address, and that read is audited.",
)
def objection_list(
    request: Request,
    _account: Viewer,
    status: Literal["pending", "all"] = "pending",
    page: PageNumber = 1,
    per_page: PerPage = 25,
) -> dict[str, Any]:
    return (
        console_of(request)
        .objections(pending_only=status == "pending", page=page, per_page=per_page)
        .as_dict()
    )


@router.get(
    "/objections/{objection_id}",
    summary="One objection with its subject's context and address (audited as subject.viewed)",
)
def objection(request: Request, objection_id: RowId, account: Viewer) -> dict[str, Any]:
    return console_of(request).objection(objection_id, reader=(account, "api"))


@router.post("/objections/{objection_id}/decision", summary="Uphold or reject (reviewer); reason required")
def decide(request: Request, objection_id: RowId, decision: Decision, account: Reviewer) -> dict[str, Any]:
    return console_of(request).decide(
        objection_id, uphold=decision.decision == "uphold", reason=decision.reason, account=account
    )


@router.get("/config", summary="Connectors, schedules, mappings and purposes as loaded")
def configuration(request: Request, _account: Viewer) -> dict[str, Any]:
    return console_of(request).configuration()


@router.get("/users", summary="Accounts (admin)")
def users(request: Request, _account: Admin) -> list[dict[str, Any]]:
    return [account.as_dict() for account in console_of(request).accounts.list()]


@router.post("/users", summary="Add an account (admin)", status_code=201)
def add_user(request: Request, new: NewAccount, account: Admin) -> dict[str, Any]:
    return console_of(request).accounts.add(new.name, new.role, new.password, actor=account.name).as_dict()


@router.post(
    "/users/{name}",
    summary="Change an account's role, password or state (admin); only what differs is saved and audited",
)
def change_user(
    request: Request, name: Annotated[str, Path(max_length=64)], change: AccountChange, account: Admin
) -> dict[str, Any]:
    session = session_of(request)
    return (
        console_of(request)
        .accounts.update(
            name,
            actor=account.name,
            role=change.role,
            password=change.password,
            disabled=change.disabled,
            keep_session=session.token if session else None,
            current_password=change.current_password,
            client=client_of(request),
            device=request_device(request, name),
        )
        .as_dict()
    )


@router.get("/users/{name}/sessions", summary="An account's live sessions (admin)")
def user_sessions(
    request: Request, name: Annotated[str, Path(max_length=64)], _account: Admin
) -> list[dict[str, Any]]:
    return [s.as_dict() for s in console_of(request).accounts.sessions(name)]


@router.delete("/users/{name}/sessions", summary="End every session of an account (admin)")
def end_user_sessions(
    request: Request, name: Annotated[str, Path(max_length=64)], account: Admin
) -> dict[str, int]:
    return {"ended": console_of(request).accounts.end_sessions(name, actor=account.name)}


@router.post("/users/{name}/unlock", summary="Clear an account's failed logins (admin)")
def unlock_user(
    request: Request, name: Annotated[str, Path(max_length=64)], account: Admin
) -> dict[str, Any]:
    return console_of(request).accounts.unlock(name, actor=account.name).as_dict()


class PlanApproval(_Body):
    digest: str = Field(
        min_length=64,
        max_length=64,
        description="The digest of the plan as reviewed: confirms which plan is approved.",
    )


class PlanRejection(_Body):
    reason: str = Field(
        min_length=1, max_length=2000, description="Why (kept in the audit log; no addresses)."
    )


ConnectorName = Annotated[str, Path(max_length=64)]


@router.get("/connectors/{name}/plans", summary="A connector's push plans, newest first, and its mode")
def plans(
    request: Request, name: ConnectorName, _account: Viewer, page: PageNumber = 1, per_page: PerPage = 25
) -> dict[str, Any]:
    desk = console_of(request).plans
    connector = desk.connector(name)
    items, total = desk.history(name, page=page, per_page=per_page)
    return {**Page(items, page, per_page, total).as_dict(), "connector": connector}


@router.post(
    "/connectors/{name}/plans",
    summary="Make a plan (reviewer): a dry run of the connector, kept for an admin's decision",
    status_code=201,
)
def make_plan(request: Request, name: ConnectorName, account: Reviewer) -> dict[str, Any]:
    desk = console_of(request).plans
    return desk.view(desk.make(name, account), page=1, per_page=25)


@router.get("/plans/{plan_id}", summary="One plan: counts per object, field and new value, and its records")
def plan(
    request: Request, plan_id: RowId, _account: Viewer, page: PageNumber = 1, per_page: PerPage = 25
) -> dict[str, Any]:
    return console_of(request).plans.view(plan_id, page=page, per_page=per_page)


@router.post(
    "/plans/{plan_id}/approve",
    summary="Approve (admin): push exactly this plan, once; refused when outdated",
    responses={409: {"description": "The plan is not pending, or a run of the connector is in progress."}},
)
def approve_plan(request: Request, plan_id: RowId, approval: PlanApproval, account: Admin) -> dict[str, Any]:
    return console_of(request).plans.approve(plan_id, approval.digest, account)


@router.post(
    "/plans/{plan_id}/reject",
    summary="Reject (admin); reason required",
    responses={409: {"description": "The plan is not pending."}},
)
def reject_plan(request: Request, plan_id: RowId, rejection: PlanRejection, account: Admin) -> dict[str, Any]:
    return console_of(request).plans.reject(plan_id, rejection.reason, account)
