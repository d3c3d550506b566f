"""Errors sorted by what to do next, and the table that sorts them.

Each connector declares an ``ErrorTable``: (HTTP status, vendor error code) -> action. The
engine acts on the action, never on vendor details: retry with backoff, refresh the token and
retry, wait for the rate limit (or stop the run cleanly when the budget is spent), skip the
record (quarantine it with the reason) or fail the run.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    RETRY = "retry"
    REFRESH_TOKEN = "refresh_token"
    RATE_LIMITED = "rate_limited"
    SKIP = "skip"
    FAIL = "fail"


class Fault(StrEnum):
    """Whose problem it is, for the operator reading the run report."""

    TRANSIENT = "transient"  # the CRM or the network: it will likely pass
    CONFIG = "config"  # credentials, permissions, mapping: a person must act
    DATA = "data"  # one record's content
    LIMIT = "limit"  # API allocation


@dataclass(frozen=True, slots=True)
class ErrorRule:
    action: Action
    fault: Fault
    reason: str
    status: int | None = None
    code: str | None = None
    # The CRM refused the credentials themselves (a wrong secret, a revoked token, a refused
    # grant): the admin must change them (exit 77), not the mapping or the network.
    credentials: bool = False


class ErrorTable:
    """Most specific rule first: status and code, then code alone, then status alone, then the
    class of the status (5xx retry, 429 rate-limited, 401 refresh, other 4xx fail)."""

    def __init__(self, rules: Iterable[ErrorRule]) -> None:
        self.rules = list(rules)
        self._by_pair = {(r.status, r.code): r for r in self.rules if r.status and r.code}
        self._by_code = {r.code: r for r in self.rules if r.code and r.status is None}
        self._by_status = {r.status: r for r in self.rules if r.status and r.code is None}

    def classify(self, status: int | None, code: str | None) -> ErrorRule:
        for rule in (
            self._by_pair.get((status, code)),
            self._by_code.get(code),
            self._by_status.get(status),
        ):
            if rule is not None:
                return rule
        if status is None:
            return ErrorRule(Action.RETRY, Fault.TRANSIENT, "connection failed", None, code)
        if status == 429:
            return ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "too many requests", status, code)
        if status == 401:
            return ErrorRule(Action.REFRESH_TOKEN, Fault.TRANSIENT, "session expired", status, code)
        if status >= 500 or status == 408:
            return ErrorRule(Action.RETRY, Fault.TRANSIENT, "server error", status, code)
        return ErrorRule(Action.FAIL, Fault.CONFIG, "request refused", status, code)


class ConnectorError(Exception):
    """Raised by connectors; carries the rule that classified it. Messages are scrubbed."""

    def __init__(
        self,
        message: str,
        rule: ErrorRule,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(scrub(message))
        self.rule = rule
        self.retry_after = retry_after

    @property
    def action(self) -> Action:
        return self.rule.action


class BudgetExhausted(ConnectorError):
    """The run's or the day's API budget is (nearly) spent: stop cleanly, resume next run."""


class RunBudgetSpent(BudgetExhausted):
    """The run's own cap (``budget.per_run``) is spent: an admin's setting, which the engine
    reports as the admin's to fix where a run spent it all without headway (it would again)."""


_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=!-]{8,}"),
    re.compile(
        r"(?i)((?:access_token|client_secret|password|refresh_token|session_?id|sessionName)"
        r"[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]+"
    ),
    re.compile(r"00D[A-Za-z0-9]{12,15}![A-Za-z0-9._]{20,}"),  # Salesforce session ids
]


#: Settings keys whose values are secrets (``token_url``, ``app_token_header`` and ``*_file``
#: name where a secret is, not the secret).
_SECRET_KEY = re.compile(r"(?i)(secret|token|password|passwd|access_key|api_key|apikey|credential)")
_NOT_SECRET_KEY = re.compile(r"(?i)(_url|_uri|_header|_file|_scheme|_path)$")
#: A secret shorter than this is not remembered (it would match ordinary text); a piece of a
#: secret this long at the cut of a truncated text (a dump, a CRM's echo cut at its limit) is
#: redacted.
SECRET_FRAGMENT = 8
#: Any other piece of a secret is redacted when it is this long and at least half the secret.
#: Shorter pieces are left: a secret made of words ("consentsync-sandbox-consumer-secret") shares
#: them with ordinary text (the program's name, a connector's folder), and redacting every
#: 8-character piece turned "consentsync discover salesforce-sandbox" into "[redacted] discover
#: salesforce[redacted]" while keeping nothing secret (a piece shorter than half a secret leaves
#: most of it unknown).
SECRET_PART = 12
#: What a cut text may end (or start) with after (before) a truncated secret.
_ELLIPSES = ("...", "\u2026")

#: Known secrets (each as written and as a CRM may echo it: URL-, form- and JSON-encoded), and
#: the secrets each 8-character piece occurs in (a quick test of whether a text can hold one).
_known_secrets: set[str] = set()
_known_fragments: dict[str, set[str]] = {}
_known_lock = threading.Lock()


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key)) and not _NOT_SECRET_KEY.search(key)


def _spellings(value: str) -> set[str]:
    """``value`` and the ways a CRM or a library may quote it back: percent-encoded (a URL, a
    form body), JSON-escaped, Python's repr. A secret holding ``"`` or ``&`` is otherwise cut
    into pieces by the escapes, each too short to be redacted as a part."""
    from urllib.parse import quote, quote_plus

    spelled = {value, quote(value, safe=""), quote_plus(value), quote(value)}
    spelled.add(json.dumps(value)[1:-1])
    spelled.add(json.dumps(value, ensure_ascii=False)[1:-1])
    spelled.add(repr(value)[1:-1])
    return {s for s in spelled if len(s) >= SECRET_FRAGMENT}


def register_secret(value: Any) -> None:
    """Remembers a secret of this process (a client secret, a token read from a file): ``scrub``
    redacts it from any text (a CRM that echoes the request, a truncated dump, a log line),
    whole, encoded, cut at either end of a truncated text, or as a piece of ``SECRET_PART``
    characters or more that is at least half of it."""
    if not isinstance(value, str):
        return
    value = value.strip()
    if len(value) < SECRET_FRAGMENT:
        return
    with _known_lock:
        for spelled in _spellings(value) - _known_secrets:
            _known_secrets.add(spelled)
            n = SECRET_FRAGMENT
            for i in range(len(spelled) - n + 1):
                _known_fragments.setdefault(spelled[i : i + n], set()).add(spelled)


def register_secrets(settings: Mapping[str, Any]) -> None:
    """Registers the values of a connector's settings whose keys name a secret."""
    for key, value in settings.items():
        if isinstance(value, Mapping):
            register_secrets(value)
        elif isinstance(key, str) and is_secret_key(key):
            register_secret(value)


def _common_length(text: str, index: int, secret: str, start: int) -> int:
    """How many characters ``text`` from ``index`` and ``secret`` from ``start`` share. Found by
    halving with slice comparisons (done in C): a long token quoted in a long text would take
    seconds character by character, at every position it covers."""
    low, high = 0, min(len(text) - index, len(secret) - start)
    while low < high:
        middle = (low + high + 1) // 2
        if text[index : index + middle] == secret[start : start + middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _leaks(text: str, index: int, secret: str) -> int:
    """The end of the piece of ``secret`` that ``text`` holds from ``index`` when that piece
    gives too much of it away, else ``index``."""
    n, size = SECRET_FRAGMENT, len(secret)
    best = index
    start = secret.find(text[index : index + n])
    while start != -1:
        length = _common_length(text, index, secret, start)
        end = index + length
        if (
            length == size
            or length >= max(SECRET_PART, (size + 1) // 2)
            # A text cut inside the secret: its start at the end, or its end at the start.
            or (start == 0 and (end == len(text) or text.startswith(_ELLIPSES, end)))
            or (start + length == size and (index == 0 or text.endswith(_ELLIPSES, 0, index)))
        ):
            best = max(best, end)
        start = secret.find(text[index : index + n], start + 1)
    return best


def _redact_known(text: str) -> str:
    n = SECRET_FRAGMENT
    if not _known_fragments or len(text) < n:
        return text
    spans: list[tuple[int, int]] = []
    for index in range(len(text) - n + 1):
        holders = _known_fragments.get(text[index : index + n])
        if not holders:
            continue
        end = max(_leaks(text, index, secret) for secret in holders)
        if end > index:
            if spans and index <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
            else:
                spans.append((index, end))
    if not spans:
        return text
    out: list[str] = []
    last = 0
    for start, end in spans:
        out.append(text[last:start] + "[redacted]")
        last = end
    out.append(text[last:])
    return "".join(out)


#: The userinfo of a URL (``https://user:password@host``): up to the last "@" before the path.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")


def mask_userinfo(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced by ``[redacted]`` (scheme,
    host, port, path and query kept, and the reader told that the URL had credentials): a URL
    configured as ``https://user:password@host`` is quoted by requests, urllib3 and the
    connectors' own messages as it was given."""
    return _URL_USERINFO.sub(r"\1[redacted]@", text)


#: A URL's query parameter (``?name=value``, ``&name=value``); its value up to the next one.
_QUERY_PARAM = re.compile(r"([?&;])([^=&#;\s?/]+)=([^&#;\s]*)")
#: Query parameters that carry a credential under a name ``is_secret_key`` does not know: an API
#: key, a signature, an OAuth code, a session id, a password.
_SECRET_PARAMS = frozenset({"key", "sig", "signature", "auth", "code", "session", "sid", "pwd", "pass"})
#: How the name of a query parameter carrying a credential ends, once lower-cased and rid of
#: its separators: a presigned URL's ``X-Amz-Signature``/``X-Goog-Signature``, an Azure SAS
#: ``sig``, ``X-Amz-Credential``, ``X-Amz-Security-Token``, a ``jwt``, an OAuth
#: ``client_assertion``, a CAS ``ticket``, an ``authkey``/``hapikey``/``access_key``/
#: ``subscription-key``. A name ending otherwise (limit, offset, state, after,
#: client_assertion_type, X-Amz-SignedHeaders, X-Amz-Expires) is no credential's.
_SECRET_PARAM_END = re.compile(
    r"(signature|sig|credentials?|token|jwt|assertion|ticket|key|secret|password|passwd|pwd|sessionid)$"
)
#: Names ending in "key" that name no secret (a sort order, a record's external id): readable.
_NOT_SECRET_PARAMS = frozenset(
    {"sortkey", "objectkey", "fieldkey", "externalkey", "primarykey", "foreignkey", "idempotencykey"}
)
_PARAM_SEPARATORS = re.compile(r"[^a-z0-9]")


def is_secret_param(name: str) -> bool:
    """Whether a URL query parameter called ``name`` carries a credential (in any case)."""
    lowered = name.lower()
    joined = _PARAM_SEPARATORS.sub("", lowered)
    if joined in _NOT_SECRET_PARAMS:
        return False
    return is_secret_key(name) or lowered in _SECRET_PARAMS or bool(_SECRET_PARAM_END.search(joined))


def mask_secret_params(text: str, shown: str = "[redacted]") -> str:
    """``text`` with the value of every URL query parameter that carries a credential
    (``?token=...``, ``&api_key=...``) replaced by ``shown``: a base URL configured with one in
    its query is quoted by requests and the connectors' messages as it was given."""

    def param(match: re.Match[str]) -> str:
        if match.group(3) and is_secret_param(match.group(2)):
            return f"{match.group(1)}{match.group(2)}={shown}"
        return match.group(0)

    return _QUERY_PARAM.sub(param, text) if "=" in text else text


def host_of(url: str) -> str:
    """The host (and port) of ``url``, without its userinfo: what a message may name."""
    from urllib.parse import urlsplit

    return urlsplit(url).netloc.rpartition("@")[2]


def scrub(text: str) -> str:
    """Removes tokens, passwords, session ids, the userinfo of URLs, the credentials in their
    queries and every known secret (``register_secret``) from text meant for logs and run
    reports."""
    text = mask_secret_params(mask_userinfo(text))
    # The patterns first: a known secret that shares a part with a key name ("sandbox-password"
    # and "password=") would otherwise redact the key and hide the value from its pattern.
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return _redact_known(text)


def network_error(describe: str, error: BaseException, host: str | None = None) -> ConnectorError:
    """A request that got no answer, said as what it is: TLS refused (the CRM's certificate did
    not verify: the admin's to fix, not retried), a timeout, or the host unreachable (retried,
    then exit 69). The exception's own text is left out: it can carry the URL and its query."""
    kinds = {cls.__name__ for cls in type(error).__mro__}
    if host is None:
        url = getattr(getattr(error, "request", None), "url", None)
        host = host_of(str(url)) if url else "the CRM"
    else:
        # A caller's netloc keeps a URL's "user:password@": only the host and port are said.
        host = host.rpartition("@")[2]
    if "SSLError" in kinds:
        return ConnectorError(
            f"{describe}: TLS refused: the certificate of {host} did not verify "
            "(set settings.ca_bundle to the CA file that signed it)",
            ErrorRule(Action.FAIL, Fault.CONFIG, "TLS refused"),
        )
    if kinds & {"Timeout", "ReadTimeout", "ConnectTimeout", "TimeoutException"}:
        return ConnectorError(
            f"{describe}: no answer from {host} in time ({type(error).__name__})",
            ErrorRule(Action.RETRY, Fault.TRANSIENT, "timed out"),
        )
    if kinds & {"ConnectionError", "ConnectError"}:
        return ConnectorError(
            f"{describe}: host unreachable: cannot connect to {host} ({type(error).__name__})",
            ErrorRule(Action.RETRY, Fault.TRANSIENT, "host unreachable"),
        )
    return ConnectorError(
        f"{describe}: {type(error).__name__} talking to {host}",
        ErrorRule(Action.RETRY, Fault.TRANSIENT, "connection failed"),
    )
