"""Asking an OAuth 2.0 token endpoint for an access token (client credentials, refresh token,
password or JWT bearer grants: the form is the connector's), with the refusal said as an admin
can act on it: a refused grant is the credentials' (exit 77, not retried), an endpoint that is
down or busy is retried, and the secrets sent never reach the message."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import requests

from consentsync.sdk.errors import (
    Action,
    ConnectorError,
    ErrorRule,
    Fault,
    host_of,
    mask_userinfo,
    network_error,
)
from consentsync.sdk.http import json_or_none

__all__ = ["SharedLogin", "oauth_error_detail", "request_token"]

T = TypeVar("T")


class SharedLogin(Generic[T]):
    """What a login answers (a token, a session) for all the threads of one connector, which
    write side by side (``write_concurrency``, ``push_concurrency``): one of them logs in while
    the others wait for its answer, because two logins at once can refuse each other (Vtiger
    keeps one login challenge per user, and a second ``getchallenge`` replaces the first), and
    one login is one call against the CRM's limits where four would be four.

    ``fresh`` says whether a login is still good to use (a token close to its expiry is not);
    :meth:`forget` is for a call the CRM refused for its session, so the next one logs in. It
    forgets only the login that thread was given: when a session expires under several threads,
    each is refused, and the first to log in again must not see its new login forgotten by the
    others (one login, not one a thread)."""

    def __init__(self, login: Callable[[], T], *, fresh: Callable[[T], bool] | None = None) -> None:
        self._login = login
        self._fresh = fresh
        self._value: T | None = None
        # Re-entrant: a login may make calls of its own through the connector's client.
        self._lock = threading.RLock()
        self._given = threading.local()  # the login each thread was last given

    def get(self) -> T:
        with self._lock:
            value = self._value
            if value is None or (self._fresh is not None and not self._fresh(value)):
                value = self._value = self._login()
            self._given.value = value
            return value

    @property
    def current(self) -> T | None:
        """The login made, if any, without making one."""
        return self._value

    def forget(self) -> None:
        with self._lock:
            given = getattr(self._given, "value", None)
            if given is None or given is self._value:
                self._value = None


def request_token(
    session: requests.Session,
    url: str,
    form: Mapping[str, str],
    *,
    login: str,
    who: str = "",
    timeout: float | None = None,
) -> dict[str, Any]:
    """POSTs ``form`` to the token endpoint ``url`` and answers the decoded body, which holds a
    non-empty ``access_token``. A refusal raises ``{who}{login} at {url} refused (status):
    error: description`` (``login`` names the grant, e.g. "login with password"; ``who`` the
    connector, e.g. "crm1: "). ``timeout``: the session's own (``http_session``) where None.
    ``url`` is said without its user and password, should it have them."""
    shown = mask_userinfo(url)
    try:
        response = session.post(url, data=dict(form), timeout=timeout)
    except requests.RequestException as error:
        raise network_error(f"token request to {shown}", error, host_of(url)) from None
    status = response.status_code
    if status != 200:
        # The endpoint down or busy passes; anything else is the credentials (or the app).
        transient = status >= 500 or status == 429
        raise ConnectorError(
            f"{who}{login} at {shown} refused ({status}): {oauth_error_detail(response)}",
            ErrorRule(
                Action.RETRY if transient else Action.FAIL,
                Fault.TRANSIENT if transient else Fault.CONFIG,
                "login failed" if transient else "credentials refused",
                status,
                credentials=not transient,
            ),
        )
    body = json_or_none(response)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("access_token"), str)
        or not body["access_token"]
    ):
        raise ConnectorError(
            f"{who}the {login} at {shown} answered no access_token",
            ErrorRule(Action.FAIL, Fault.CONFIG, "login refused"),
        )
    return body


def oauth_error_detail(response: requests.Response) -> str:
    """``error: description`` of an OAuth error body (RFC 6749 5.2; the first line of the
    description, which Entra ID follows with trace ids), ``errorCode: message`` of Salesforce-
    style list bodies, else the start of the text."""
    body = json_or_none(response)
    if isinstance(body, dict):
        described = str(body.get("error_description") or "").splitlines() or [""]
        return f"{body.get('error')}: {described[0][:300]}"
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return f"{body[0].get('errorCode')}: {body[0].get('message')}"
    return response.text[:200]
