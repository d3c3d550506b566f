"""Rendering a page of the console: the template with who is logged in and their CSRF token, and
the pager links that keep a list's filters. Used by the pages and by the application's error
handler; imports neither of them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse

from consentsync.accounts import Role
from consentsync.web.console import Page
from consentsync.web.deps import session_of, sessions_of
from consentsync.web.security import CSRF_FIELD


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
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request,
        template,
        {
            "user": session.account if session else None,
            "csrf_field": CSRF_FIELD,
            "csrf": csrf,
            "Role": Role,
            **context,
        },
        status_code=status,
        headers=headers,
    )
    return response


def pager_links(request: Request, page: Page) -> dict[str, Any]:
    """Links to the previous and next page with the same filters."""

    def link(number: int) -> str:
        query = dict(request.query_params)
        query["page"] = str(number)
        return f"{request.url.path}?{urlencode(query)}"

    return {
        "page": page.page,
        "pages": page.pages,
        "total": page.total,
        "prev": link(page.page - 1) if page.page > 1 else None,
        "next": link(page.page + 1) if page.page < page.pages else None,
    }
