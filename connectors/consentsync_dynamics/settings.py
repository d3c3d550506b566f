"""The Dynamics connector's settings (the ``settings:`` block of a connector in the config).

Secrets are written ``${ENV_VAR}`` in the config and expanded from the environment at load time.
Values marked "unconfirmed" in crm-apis.md are settings here, with the documented value as default.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from consentsync.sdk import ConnectorSettings, WebUrl

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
FilterValue = Annotated[bool | int | str, Field()]


class DynamicsSettings(ConnectorSettings):
    """Dataverse's keys; the shared ones (``ca_bundle``, ``timeout``, ``budget`` ...) come from
    ``ConnectorSettings``. Service protection answers a Retry-After of up to 5 minutes: one longer
    than ``max_rate_limit_wait`` stops the run cleanly and the next run resumes."""

    # https://yourorg.crm4.dynamics.com: the environment's URL (Power Platform admin center).
    environment_url: WebUrl
    # https://login.microsoftonline.com/<tenant id>/oauth2/v2.0/token
    token_url: WebUrl
    client_id: str
    client_secret: str
    # The client-credentials scope; by default the environment URL followed by /.default.
    scope: str | None = None
    api_version: str = Field(default="9.2", pattern=r"^9\.[0-2]$")
    # Read with change tracking (delta links) where the table has it enabled; otherwise, or when
    # false, by modifiedon with a (modifiedon, id) keyset $filter.
    change_tracking: bool = True
    page_size: int = Field(default=5000, ge=1, le=5000)  # Prefer: odata.maxpagesize
    # Requests per $batch. Dataverse runs a batch's requests one after another ("Execute batch
    # operations using the Web API"), and answers it only when the last is done: a batch of 1,000
    # updates, each tens of milliseconds with plug-ins, outlasts the call's ``timeout``. "Service
    # protection API limits" (Avoid large batches): "start with a small batch size of 10". A
    # batch that times out anyway is sent again in halves (connector ``_batch``), never whole.
    batch_size: int = Field(default=10, ge=1, le=1000)
    # Rows read only when a column holds one of the listed values, per table. Consent records of
    # Text and Voice contact points carry a phone number, not an address, so by default only Email
    # ones (534120000) are read.
    record_filters: dict[str, dict[str, list[FilterValue]]] = Field(
        default_factory=lambda: {"msdynmkt_contactpointconsent4": {"msdynmkt_contactpointtype": [534120000]}}
    )
    # Requests of a $batch refused with a transient error are sent again this many times.
    write_retries: int = Field(default=2, ge=0, le=10)
    # The key the ids of the Journeys consent rows the connector creates are derived from
    # (journeys.row_id): the connector knows its own rows by it. Unset: client_secret, which
    # Entra makes expire, and a rotated client secret would leave every row created before it
    # unrecognised (read as the person's no). A secret of its own outlives rotations.
    own_rows_secret: str | None = Field(default=None, min_length=16)
    # Keys rows were created under before (the client secret before its rotation, or before
    # own_rows_secret was set): their rows are still recognised; new rows never use them.
    earlier_own_rows_secrets: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # The contact's columns Customer Insights - Journeys may send email to: the recipient fields of
    # its audience configuration for contacts (Settings > Customer engagement > Audience
    # configuration > Contact, email; several since the February 2024 release), as logical names.
    # Journeys checks consent per address, so a person's no creates the Opted out row for each
    # address the contact holds in any of them (consentsync_journeys_contact, journeys.py).
    journeys_email_fields: list[str] = Field(default_factory=lambda: ["emailaddress1"], min_length=1)

    @field_validator("environment_url", "token_url", mode="before")
    @classmethod
    def _https(cls, value: object) -> object:
        # Before sdk.WebUrl's check (which lets http:// to a loopback host through, for other
        # vendors' sandboxes): Dataverse and Entra ID answer on https:// only, so this says so.
        if isinstance(value, str) and not value.strip().startswith("https://"):
            # Never the value in the message: a URL may carry a user and password.
            raise ValueError("expected an https:// URL, such as https://yourorg.crm4.dynamics.com")
        return value.strip().rstrip("/") if isinstance(value, str) else value

    @field_validator("record_filters")
    @classmethod
    def _names(
        cls, value: dict[str, dict[str, list[FilterValue]]]
    ) -> dict[str, dict[str, list[FilterValue]]]:
        for table, columns in value.items():
            for name in (table, *columns):
                if not _NAME.match(name):
                    raise ValueError(f"record_filters: {name!r} is not a Dataverse logical name")
            for column, allowed in columns.items():
                if not allowed:
                    raise ValueError(f"record_filters: {table}.{column} lists no values")
        return value

    @field_validator("journeys_email_fields")
    @classmethod
    def _email_fields(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _NAME.fullmatch(name):  # fullmatch: no trailing newline into a $filter
                raise ValueError(f"journeys_email_fields: {name!r} is not a Dataverse logical name")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _default_scope(self) -> DynamicsSettings:
        if self.scope is None:
            self.scope = f"{self.environment_url}/.default"
        return self

    @property
    def api_url(self) -> str:
        return f"{self.environment_url}/api/data/v{self.api_version}"

    @property
    def own_rows_key(self) -> bytes:
        """The key the ids of the rows the connector creates now are derived from."""
        return (self.own_rows_secret or self.client_secret).encode()

    @property
    def own_rows_keys(self) -> tuple[bytes, ...]:
        """Every key a row the connector created may have its id derived from: the current one
        first, then the client secret (the key before ``own_rows_secret`` was set: an install
        that sets it without rotating the client secret needs no earlier key listed), then the
        earlier ones (each once)."""
        earlier = [key.encode() for key in self.earlier_own_rows_secrets]
        keys = [self.own_rows_key, self.client_secret.encode(), *earlier]
        return tuple(dict.fromkeys(keys))
