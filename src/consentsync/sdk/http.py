"""Calling a CRM over HTTP, the way every connector must: on a ``requests`` session that trusts
the configured CA bundle (and nothing from the environment), never waits without a timeout,
counts every answer against the run's API budget, sorts every refusal through the connector's
``ErrorTable`` and retries it under the sdk's tenacity policy. Error texts go through
``ConnectorError``, which scrubs tokens and every registered secret from them, and a request
that got no answer is said without its URL (which can carry a session or a query).

What stays the connector's: its URLs and wire format, how it reads an error code out of an
answer (its ``classify``), and its error table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import requests
import requests.adapters

from consentsync.sdk.clock import CrmClock
from consentsync.sdk.errors import ConnectorError, ErrorTable, network_error
from consentsync.sdk.retry import RetryPolicy, call
from consentsync.sdk.settings import ConnectorSettings

#: ``classify(describe, response)``: the error a refused answer raises.
Classify = Callable[[str, requests.Response], ConnectorError]


class TimeoutAdapter(requests.adapters.HTTPAdapter):
    """An adapter that gives every request a timeout: a library that passes none (simple-
    salesforce) would otherwise let a CRM that stops answering hold the run, and its connector
    lock, for ever."""

    def __init__(self, timeout: float, pool_size: int = requests.adapters.DEFAULT_POOLSIZE) -> None:
        super().__init__(pool_connections=pool_size, pool_maxsize=pool_size)
        self.timeout = timeout

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, *args, **kwargs)


def http_session(
    settings: ConnectorSettings,
    *,
    on_response: Callable[[requests.Response], None] | None = None,
    pool_size: int = requests.adapters.DEFAULT_POOLSIZE,
) -> requests.Session:
    """A ``requests`` session for one CRM, set up from the connector's settings: ``ca_bundle``
    (or the system's trust), ``proxy`` for http and https, ``timeout`` on every request that
    names none, ``pool_size`` connections kept per host, and ``on_response`` called with every
    answer received (to count calls, read the CRM's own usage headers). Every answer's ``Date``
    goes to ``settings.crm_clock`` (the CRM's clock, which bounds the engine's reads)."""
    session = requests.Session()
    # REQUESTS_CA_BUNDLE (or a proxy variable) would override what is configured: the
    # configured trust wins instead.
    session.trust_env = False
    session.verify = settings.ca_bundle or True
    if settings.proxy:
        session.proxies = {"https": settings.proxy, "http": settings.proxy}
    adapter = TimeoutAdapter(settings.timeout, pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # Every answer's Date header tells the CRM's clock, which bounds the engine's reads
    # (consentsync.sdk.clock): a connector gets it by making its session here.
    clock = getattr(settings, "crm_clock", None)
    if isinstance(clock, CrmClock):
        session.hooks["response"].append(lambda response, *_args, **_kwargs: clock.observe(response))
    if on_response is not None:
        session.hooks["response"].append(lambda response, *_args, **_kwargs: on_response(response))
    return session


def endpoint_kind(url: str, markers: Iterable[tuple[str, str]], default: str = "other") -> str:
    """The kind of call ``url`` is, for ``ApiUsage.count``: the kind of the first (marker, kind)
    whose marker is in the URL (put the more specific markers first)."""
    return next((kind for marker, kind in markers if marker in url), default)


def json_or_none(response: requests.Response) -> Any:
    """The decoded JSON body, or None when the body is not JSON (a proxy's page, PHP notices).
    orjson reads UTF-8 JSON several times faster than ``response.json()``; a body in another
    encoding goes to requests' decoder, which detects it."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        pass
    try:
        return response.json()
    except ValueError:
        return None


def retry_after(response: requests.Response) -> float | None:
    """``Retry-After`` in seconds, or None when absent or unreadable. RFC 9110 (10.2.3) allows
    a number of seconds or an HTTP date; a date is counted from the answer's own ``Date`` (the
    server's clock: this machine's may be off by more than the wait), else from now; a date
    already past asks for no wait of its own (None: the usual backoff)."""
    return retry_after_value(response.headers.get("Retry-After"), response.headers.get("Date"))


def retry_after_value(value: str | None, date: str | None = None) -> float | None:
    """A ``Retry-After`` value (seconds or an HTTP date) in seconds; ``date`` is the answer's
    ``Date`` header, if any."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        # A negative, infinite or NaN count is no instruction that can be followed.
        return seconds if 0 <= seconds < float("inf") else None
    until = _http_date(text)
    if until is None:
        return None
    now = _http_date(date) if date else None
    seconds = (until - (now or datetime.now(UTC))).total_seconds()
    return seconds if seconds > 0 else None


def _http_date(text: str) -> datetime | None:
    try:
        stamp = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    # RFC 9110 dates are GMT; a date without a zone is read as such.
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def response_error(
    describe: str, response: requests.Response, errors: ErrorTable, code: str | None, message: str
) -> ConnectorError:
    """A refused answer as the error the table says: ``describe: status code message``, with the
    answer's ``Retry-After``. ``code`` and ``message`` are what the connector read from its
    CRM's error body."""
    rule = errors.classify(response.status_code, code)
    text = f"{describe}: {response.status_code} {code or ''} {message}".strip()
    return ConnectorError(text, rule, retry_after=retry_after(response))


@dataclass(slots=True, kw_only=True)
class HttpClient:
    """One CRM's API on a session: :meth:`send` makes a call under the retry policy, checks the
    budget before each attempt, adds the headers of the moment (a token that may have been
    renewed), and raises what ``classify`` makes of a refused answer."""

    session: requests.Session
    policy: RetryPolicy
    classify: Classify
    # Called before every attempt: stops the run when its budget is spent (RunBudget.check).
    guard: Callable[[], None] | None = None
    # The headers every call sends, asked for at each attempt (a renewed token).
    headers: Callable[[], Mapping[str, str]] | None = None
    # Called after an answer the table says is a REFRESH_TOKEN: forget the token.
    refresh_session: Callable[[], None] | None = None
    # The CRM's API root: a path that :meth:`send` is given (``/api/v1/contacts``) is below it.
    base_url: str | None = None

    @classmethod
    def configured(
        cls,
        settings: ConnectorSettings,
        classify: Classify,
        *,
        on_response: Callable[[requests.Response], None] | None = None,
        **hooks: Any,
    ) -> HttpClient:
        """A client on ``http_session(settings, on_response=...)`` under ``settings``'s retry
        policy; ``hooks``: ``guard``, ``headers``, ``refresh_session``, ``base_url``."""
        session = http_session(settings, on_response=on_response)
        return cls(session=session, policy=settings.retry_policy(), classify=classify, **hooks)

    @classmethod
    def for_connector(
        cls,
        connector: Any,
        classify: Classify,
        *,
        on_response: Callable[[requests.Response], None] | None = None,
        **hooks: Any,
    ) -> HttpClient:
        """:meth:`configured` on ``connector.config`` (its validated settings), every attempt
        first checking the connector's run budget (``connector.config.budget``, against its
        ``usage``) unless ``hooks`` give another ``guard``."""
        config = connector.config
        hooks.setdefault("guard", lambda: config.budget.check(connector.name, connector.usage))
        return cls.configured(config, classify, on_response=on_response, **hooks)

    def send(
        self,
        method: str,
        url: str,
        *,
        describe: str,
        headers: Mapping[str, str] | None = None,
        accept: Callable[[requests.Response], bool] | None = None,
        before: Callable[[], None] | None = None,
        authenticated: bool = True,
        retry: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """The answer to one call: a 2xx, or one ``accept`` takes (a caller's own handling of a
        refusal); anything else raises, after the retries the error table allows. ``before`` is
        called before each attempt, just before the request is sent (to pace or count one kind of
        call). ``authenticated=False`` leaves out the client's ``headers`` (a login call);
        ``retry=False`` makes one attempt, for a call made inside another call's attempt (a login
        before the call that needs its token), whose own retries cover it. ``url`` may be a path
        below :attr:`base_url`."""
        if self.base_url is not None and url.startswith("/"):
            url = self.base_url.rstrip("/") + url

        def attempt() -> requests.Response:
            if self.guard is not None:
                self.guard()
            own = self.headers() if self.headers is not None and authenticated else {}
            sent = {**own, **(headers or {})}
            if before is not None:
                before()
            try:
                response = self.session.request(method, url, headers=sent, **kwargs)
            except requests.RequestException as error:
                raise network_error(describe, error) from None
            if response.status_code < 300 or (accept is not None and accept(response)):
                return response
            raise self.classify(describe, response)

        if not retry:
            return attempt()
        return call(attempt, policy=self.policy, refresh_session=self.refresh_session, describe=describe)

    def close(self) -> None:
        self.session.close()
