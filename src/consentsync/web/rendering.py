"""Rendering a page of the console: the template with who is logged in and their CSRF token, and
the pager links that keep a list's filters. Used by the pages and by the application's error
handler; imports neither of them."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup, escape

from consentsync.accounts import Role
from consentsync.web.console import Page
from consentsync.web.deps import TZ_FIELD, session_of, sessions_of, viewer_zone
from consentsync.web.drafts import DRAFT_COOKIE
from consentsync.web.security import CSRF_FIELD

_UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def is_utc_time(value: Any) -> bool:
    """A template test: a value the ledger wrote as a UTC time (``iso``), to show in the viewer's zone."""
    return isinstance(value, str) and _UTC_TIME.fullmatch(value) is not None


_SOFT_BREAK = re.compile(r"([:_=./,])(?=\S)")


def soft_breaks(value: Any) -> Markup:
    """A template filter: the text, escaped, with a line-break opportunity (``<wbr>``) after each
    separator inside a token (``sf:<wbr>Contact``, ``manual_<wbr>review``), so that a narrow
    column wraps an identifier between its parts, never inside a word."""
    return Markup(_SOFT_BREAK.sub(r"\1<wbr>", str(escape(value))))


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    session = session_of(request)
    csrf = sessions_of(request).csrf_for(session.token) if session else None
    # What this account typed into a form here before its session ended (web/drafts.py): once.
    draft = (
        request.app.state.drafts.take(
            request.cookies.get(DRAFT_COOKIE), session.account.name, request.url.path
        )
        if session and request.cookies.get(DRAFT_COOKIE)
        else None
    )
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request,
        template,
        {
            "user": session.account if session else None,
            "csrf_field": CSRF_FIELD,
            "csrf": csrf,
            "Role": Role,
            "zone": viewer_zone(request),
            "tz_field": TZ_FIELD,
            "draft": {name: values[0] for name, values in (draft or {}).items()},
            "draft_restored": draft is not None,
            **context,
        },
        status_code=status,
        headers=headers,
    )
    if draft is not None:
        response.delete_cookie(DRAFT_COOKIE, path="/")
    return response


def pager_links(
    request: Request,
    page: Page,
    *,
    anchor: str = "",
    newest_first: bool = False,
    keep: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Links to the previous and next page with the same filters (and to ``anchor`` on it),
    labelled "newer" and "older" only on a list that is ``newest_first``: on one in the opposite
    order (the objection queue, a run's quarantined records, the outbox, oldest first) the next
    page holds the newer rows, and a link saying "older" sent ops the wrong way. ``keep``: query
    parameters the neighbours take in place of the page's own (the audit trail's ``through``)."""
    kept = keep or {}

    def link(number: int) -> str:
        query = [
            (k, v)
            for k, v in request.query_params.multi_items()
            if k not in ("page", "retried", "refused", *kept)
        ]
        query += list(kept.items())
        query.append(("page", str(number)))
        return f"{request.url.path}?{urlencode(query)}" + (f"#{anchor}" if anchor else "")

    return {
        "page": page.page,
        "pages": page.pages,
        "total": page.total,
        "prev": link(page.page - 1) if page.page > 1 else None,
        "next": link(page.page + 1) if page.page < page.pages else None,
        "prev_label": "newer" if newest_first else "previous",
        "next_label": "older" if newest_first else "next",
    }
