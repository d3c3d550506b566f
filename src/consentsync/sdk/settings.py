"""The settings every connector has, once: the pydantic base of a connector's ``settings:`` block.

A connector's own model subclasses :class:`ConnectorSettings` and adds its CRM's keys (URLs,
credentials, page sizes); the keys here (trust, proxy, timeout, retries, budget) then read and
validate the same in every connector, and a typo is reported with the config file's line and
the accepted keys like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr

from consentsync.sdk.clock import CrmClock
from consentsync.sdk.connector import ApiUsage
from consentsync.sdk.errors import Action, BudgetExhausted, ErrorRule, Fault, RunBudgetSpent
from consentsync.sdk.retry import RetryPolicy
from consentsync.yamlfile import Problem as SettingProblem  # a validator's error at a field below it

__all__ = ["ConnectorSettings", "DailyBudget", "ExistingFile", "RunBudget", "SettingProblem", "WebUrl"]


def _existing_file(value: str) -> str:
    # A connector reads such a file only when it first needs it (requests at the first call, a
    # login at the first token): a path that is not there ended the run in a traceback.
    if not Path(value).exists():
        raise ValueError(f"{value}: no such file")
    return value


# A setting naming a file that must be there when the config is read (a CA bundle, a key).
ExistingFile = Annotated[str, AfterValidator(_existing_file)]


# What a setting naming a CRM's address accepts, said by every refusal of one.
WEB_URL_ACCEPTED = (
    "expected an http:// or https:// URL with a host, such as https://crm.example.com; "
    "http:// only to a loopback host (localhost, 127.0.0.1, [::1]): to any other, "
    "credentials would cross the network in clear"
)
WEB_URL_NO_QUERY = (
    "expected the service's address without a query or fragment (nothing from '?' or '#' on): "
    "the connector adds its paths to it, and a secret in a query would be sent and shown with "
    "every call; put credentials in their own settings"
)


def loopback_host(host: str | None) -> bool:
    """Whether ``host`` (a URL's hostname) is this machine: ``localhost``, 127.0.0.0/8 or ::1.
    Only there may a connector speak plain HTTP (a sandbox, a test server): nothing it sends
    crosses a network."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:  # a name, not an address
        return False


def _web_url(value: str) -> str:
    # A URL without a scheme or host ("login.salesforce.com", "https//...") was taken as given
    # and failed only at the first call, retried as a network error. Plain http:// to another
    # host was taken too: a login or token endpoint (Salesforce's login_url, SuperOffice's
    # token_url) would be sent the client secret, password or signed JWT in clear, and every
    # API call its bearer token and people's consents. The message never quotes the value: a
    # URL may carry a user and password.
    try:
        parts = urlsplit(value.strip())
        scheme = parts.scheme.lower()
        usable = (
            (scheme == "https" or (scheme == "http" and loopback_host(parts.hostname)))
            and bool(parts.hostname)
            and parts.port != 0
        )
    except ValueError:  # a port that is not a number, an unclosed "[" of an IPv6 address
        usable = False
    if not usable:
        raise ValueError(WEB_URL_ACCEPTED)
    # A query or fragment ("https://crm.example.com/?token=..."): the connector's paths went after
    # it ("?token=.../services/oauth2/token"), so every call missed its endpoint.
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(WEB_URL_NO_QUERY)
    return value.strip()


# A setting holding the address of an HTTP(S) service (a CRM's API, its login or token endpoint):
# https://, or http:// to a loopback host only (sandboxes, tests).
WebUrl = Annotated[str, AfterValidator(_web_url)]


class RunBudget(BaseModel):
    """``budget:``: how many API calls one run may make (none: no cap of consentsync's own)."""

    model_config = ConfigDict(extra="forbid")

    per_run: int | None = Field(default=None, ge=1)

    def check(self, name: str, usage: ApiUsage, *, calls: str = "API") -> None:
        """Raises ``BudgetExhausted`` (the run stops cleanly, the next one resumes from its
        cursor) once connector ``name`` has made ``per_run`` calls in this run. ``calls`` names
        the calls in the message ("HubSpot API")."""
        if self.per_run is not None and usage.calls >= self.per_run:
            raise RunBudgetSpent(
                f"{name}: the run's API budget of {self.per_run} calls is spent",
                ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "run budget spent"),
            )


class DailyBudget(RunBudget):
    """``budget:`` of a CRM that says how much of its daily allocation is used: the run stops
    cleanly before it takes the share kept for the other integrations sharing the allocation."""

    daily_reserve_percent: float = Field(default=10.0, ge=0, le=100)

    def check(self, name: str, usage: ApiUsage, *, calls: str = "API") -> None:
        """As ``RunBudget.check``, and also once the CRM's own count (``usage.used`` of
        ``usage.limit``, read from its answers) reaches the reserve."""
        super().check(name, usage, calls=calls)
        if usage.used is not None and usage.limit:
            floor = usage.limit * (1 - self.daily_reserve_percent / 100)
            if usage.used >= floor:
                raise BudgetExhausted(
                    f"{name}: {usage.used}/{usage.limit} daily {calls} calls used; "
                    f"{self.daily_reserve_percent}% is kept in reserve",
                    ErrorRule(Action.RATE_LIMITED, Fault.LIMIT, "daily budget near its end"),
                )


class ConnectorSettings(BaseModel):
    """The keys every connector accepts. Unknown keys are refused (``extra="forbid"``): a
    misspelt key is reported, never silently ignored."""

    model_config = ConfigDict(extra="forbid")

    # A CA file (PEM) to trust instead of the system's: a CRM behind a private CA.
    ca_bundle: ExistingFile | None = None
    # An HTTP(S) proxy for every call to the CRM (environment variables are not read).
    proxy: str | None = None
    timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=20)
    # Longest Retry-After (seconds) waited out; a longer wait stops the run cleanly and the next
    # run resumes from the last cursor.
    max_rate_limit_wait: float = Field(default=60.0, ge=0)
    budget: RunBudget = RunBudget()
    # What the answers of the sessions made from these settings (``http_session``) said of the
    # CRM's clock: not a setting, the engine's view of the CRM's time (``Connector.crm_clock``).
    _crm_clock: CrmClock = PrivateAttr(default_factory=CrmClock)

    @property
    def crm_clock(self) -> CrmClock:
        """The CRM's clock as the ``Date`` headers of this connector's answers tell it."""
        return self._crm_clock

    def retry_policy(self) -> RetryPolicy:
        """The retry policy these settings ask for, for :func:`consentsync.sdk.call`."""
        return RetryPolicy(max_attempts=self.max_attempts, max_rate_limit_wait=self.max_rate_limit_wait)

    def require(self, flow: str, needed: Mapping[str, Sequence[str]]) -> None:
        """Raises ``auth <flow> needs <keys>`` where the keys ``needed[flow]`` names are empty:
        for a model validator of a connector with several ways to authenticate."""
        missing = [name for name in needed[flow] if not getattr(self, name)]
        if missing:
            raise ValueError(f"auth {flow} needs {', '.join(missing)}")
