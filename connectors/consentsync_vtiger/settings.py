"""The Vtiger connector's settings (the ``settings:`` block of a connector in the config).

The access key is written ``${ENV_VAR}`` in the config and expanded from the environment at load
time, never stored in the clear. Values Vtiger does not document are settings, so an install
that differs needs no code change (see docs/connectors/vtiger.md).
"""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, ConfigDict, Field, field_validator

from consentsync.sdk import ConnectorSettings, DailyBudget, WebUrl


class VtigerSettings(ConnectorSettings):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # https:// (http:// only to a loopback host: a sandbox): the login's access key digest and
    # then the session id of every call would otherwise cross the network in clear.
    url: WebUrl = Field(description="The install's address, e.g. https://crm.example.com/vtigercrm")
    webservice_path: str = "webservice.php"
    username: str
    access_key: str = Field(min_length=1, description="From the user's My Preferences page")
    # Rows a query answers at most: 100 on 8.2.0 whatever LIMIT says.
    page_size: int = Field(default=100, ge=1, le=100)
    # Rows re-read at each step through a second holding more than page_size changes, so a
    # record that leaves that second during the read does not shift another one out of sight.
    crowded_second_overlap: int = Field(default=10, ge=0, le=50)
    # The install's $default_timezone (config.inc.php, chosen in the install wizard), an IANA
    # name: Vtiger 8.2.0 stores and serves modifiedtime as wall-clock time in it, whatever the API
    # user's own zone or the server's OS zone. `timezone` is the name this setting had before.
    server_timezone: str = Field(default="UTC", validation_alias=AliasChoices("server_timezone", "timezone"))
    # List records deleted in Vtiger from operation=sync's `deleted` ids (the stock 8.2.0 fails
    # sync with HTTP 500 on PHP 8: turn it on only where sync answers; it lists only records owned
    # by the user, or by its groups with userandgroup).
    read_deletions: bool = False
    sync_type: Literal["user", "userandgroup", "application"] = "userandgroup"
    # Leads a deletion listing retrieves at most (one call each) to tell a converted lead from a
    # deleted one: the listing stops before the sync batch that would pass it, and the next run
    # goes on from there; no lead is handed over unchecked. A first listing (from the beginning)
    # catches up over several runs (docs/connectors/vtiger.md, "Converted leads").
    conversion_checks_per_run: int = Field(default=1000, ge=0)
    # The character set of the install's tables: the stock install's MySQL `utf8` (3 bytes)
    # stores characters beyond the Basic Multilingual Plane (emoji) as "?"; `utf8mb4` keeps them.
    database_charset: Literal["utf8", "utf8mb4"] = "utf8"
    # budget.per_run: calls a run may make; budget.daily_reserve_percent: the share of Vtiger
    # Cloud's daily allowance (its X-RateLimit-* headers) left to the other integrations. The
    # open-source edition has no API limit and sends no such header: the reserve never applies.
    budget: DailyBudget = DailyBudget()

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        # Checked as every connector's address is (sdk.WebUrl: https://, http:// only to a
        # loopback host); the webservice path is joined to it after one "/".
        return value.rstrip("/")

    @field_validator("server_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not a time zone: expected an IANA name such as UTC or "
                "Europe/Berlin (the install's $default_timezone in config.inc.php)"
            ) from None
        return value
