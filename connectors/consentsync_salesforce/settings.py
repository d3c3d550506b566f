"""The Salesforce connector's settings (the ``settings:`` block of a connector in the config).

Secrets are written ``${ENV_VAR}`` in the config and expanded from the environment at load time,
never stored in the clear.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from consentsync.sdk import ConnectorSettings, DailyBudget, ExistingFile


class SalesforceSettings(ConnectorSettings):
    login_url: str = "https://login.salesforce.com"
    auth: Literal["client_credentials", "password", "jwt", "token"] = "client_credentials"
    client_id: str | None = None
    client_secret: str | None = None
    username: str | None = None
    password: str | None = None
    security_token: str | None = None
    private_key_file: ExistingFile | None = None
    access_token: str | None = None
    instance_url: str | None = None
    api_version: str = "59.0"
    query_batch_size: int = Field(default=2000, ge=200, le=2000)
    bulk_threshold: int = Field(default=10_000, ge=1)
    bulk_timeout: float = Field(default=600.0, gt=0)
    # A Bulk API 2.0 job is polled after bulk_poll_first seconds, then at twice the last wait, up
    # to bulk_poll_interval.
    bulk_poll_first: float = Field(default=0.1, gt=0)
    bulk_poll_interval: float = Field(default=2.0, gt=0)
    lock_retries: int = Field(default=2, ge=0, le=10)
    # budget.daily_reserve_percent: share of the org's rolling 24-hour allocation left for other
    # integrations.
    budget: DailyBudget = DailyBudget()

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
        return self
