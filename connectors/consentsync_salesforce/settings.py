"""The Salesforce connector's settings (the ``settings:`` block of a connector in the config).

Secrets are written ``${ENV_VAR}`` in the config and expanded from the environment at load time,
never stored in the clear.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from consentsync.sdk import ConnectorSettings, DailyBudget, ExistingFile, SettingProblem, WebUrl

#: A REST API version as it goes into /services/data/v{api_version}/: "59.0".
_API_VERSION = re.compile(r"^([1-9][0-9]{1,2})\.0$")
#: sObject Collections (every write and delete) came with API version 42.0.
OLDEST_API_VERSION = 42
#: The JWT bearer ``aud`` of production (and Developer Edition) orgs, and of sandboxes.
LOGIN_AUDIENCE = "https://login.salesforce.com"
TEST_AUDIENCE = "https://test.salesforce.com"
#: Salesforce's own login servers, shared by every org. "The client credentials flow doesn't
#: support calls to login.salesforce.com or test.salesforce.com": it takes the org's My Domain
#: login URL (Salesforce Help, *Migrate from OAuth Username-Password to Client Credentials Flow*);
#: the token endpoint there answers invalid_grant, "request not supported on this domain".
GENERIC_LOGIN_HOSTS = frozenset({"login.salesforce.com", "test.salesforce.com"})


class SalesforceSettings(ConnectorSettings):
    # The token endpoint's server: https://login.salesforce.com (production),
    # https://test.salesforce.com (a sandbox) or the org's My Domain; auth client_credentials
    # takes the My Domain only (``_credentials_for_the_flow``).
    login_url: WebUrl = "https://login.salesforce.com"
    auth: Literal["client_credentials", "password", "jwt", "token"] = "client_credentials"
    client_id: str | None = None
    client_secret: str | None = None
    username: str | None = None
    password: str | None = None
    security_token: str | None = None
    private_key_file: ExistingFile | None = None
    # The JWT bearer assertion's ``aud``: the authorization server Salesforce accepts there,
    # https://login.salesforce.com, https://test.salesforce.com or an Experience Cloud site's
    # URL, never a My Domain or instance URL. None: test.salesforce.com where login_url is
    # test.salesforce.com or a sandbox's My Domain (*.sandbox.my.salesforce.com), else
    # login.salesforce.com (``audience``).
    jwt_audience: WebUrl | None = None
    access_token: str | None = None
    instance_url: WebUrl | None = None
    api_version: str = "59.0"
    query_batch_size: int = Field(default=2000, ge=200, le=2000)
    bulk_threshold: int = Field(default=10_000, ge=1)
    bulk_timeout: float = Field(default=600.0, gt=0)
    # A Bulk API 2.0 job is polled after bulk_poll_first seconds, then at twice the last wait, up
    # to bulk_poll_interval.
    bulk_poll_first: float = Field(default=0.1, gt=0)
    bulk_poll_interval: float = Field(default=2.0, gt=0)
    lock_retries: int = Field(default=2, ge=0, le=10)
    # Read the records of each write back around it (a query before it and one after it, per
    # call of up to 200 records): what the org's record-triggered automation (a flow, an Apex
    # trigger) set in consentsync's own save is then known as consentsync's, never read on the
    # next sync as the person's choice. Off by default: it triples the calls of every write.
    read_back_writes: bool = False
    # Where the connector keeps the Bulk API 2.0 jobs it closed and has not yet seen end (a few
    # ids): none given, CONSENTSYNC_STATE_DIR, else the user's XDG state directory.
    state_dir: str | None = None
    # budget.daily_reserve_percent: share of the org's rolling 24-hour allocation left for other
    # integrations.
    budget: DailyBudget = DailyBudget()

    @field_validator("api_version", mode="before")
    @classmethod
    def _api_version(cls, value: Any) -> str:
        # simple-salesforce puts the value into every URL (/services/data/v{version}/): "v59.0",
        # "59" or "abc" passed and every call then answered 404, said as an object that does not
        # exist. YAML reads 59.0 unquoted as a number: that is the same version.
        text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        match = _API_VERSION.match(text) if isinstance(text, str) else None
        if match is None or int(match.group(1)) < OLDEST_API_VERSION:
            raise ValueError(
                f'expected a Salesforce API version such as "59.0" (a number and ".0", no "v"; '
                f"{OLDEST_API_VERSION}.0 or later)"
            )
        return text

    def audience(self) -> str:
        """The JWT bearer assertion's ``aud``: ``jwt_audience``, else the login server of the
        org kind ``login_url`` names (Salesforce refuses a My Domain URL there)."""
        if self.jwt_audience:
            return self.jwt_audience.rstrip("/")
        host = (urlsplit(self.login_url).hostname or "").lower().rstrip(".")
        if host == "test.salesforce.com" or host.endswith(".sandbox.my.salesforce.com"):
            return TEST_AUDIENCE
        return LOGIN_AUDIENCE

    @model_validator(mode="after")
    def _credentials_for_the_flow(self) -> SalesforceSettings:
        self.require(
            self.auth,
            {
                "client_credentials": ("client_id", "client_secret"),
                "password": ("client_id", "client_secret", "username", "password"),
                "jwt": ("client_id", "username", "private_key_file"),
                "token": ("access_token", "instance_url"),
            },
        )
        host = (urlsplit(self.login_url).hostname or "").lower().rstrip(".")
        if self.auth == "client_credentials" and host in GENERIC_LOGIN_HOSTS:
            # Said before any call: Salesforce's answer ("request not supported on this
            # domain") names neither the setting nor what it takes.
            raise SettingProblem(
                f"auth client_credentials needs the org's My Domain login URL, not {host} (Salesforce "
                "refuses the flow there): accepted are https://<MyDomain>.my.salesforce.com, or "
                "https://<MyDomain>--<sandbox>.sandbox.my.salesforce.com for a sandbox",
                at=("login_url",),
            )
        if self.read_back_writes and self.auth == "token":
            # A ready token's login names no user: whose save was last is then never known.
            raise ValueError(
                "read_back_writes needs a login that names the integration user "
                "(auth client_credentials, password or jwt), not auth token"
            )
        return self
