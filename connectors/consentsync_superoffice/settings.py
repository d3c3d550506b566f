"""The SuperOffice connector's settings (the ``settings:`` block of a connector in the config).

Secrets are written ``${ENV_VAR}`` in the config and expanded from the environment at load time.
Values SuperOffice's documentation does not pin down are settings with the sandbox's choice as the
default; docs/connectors/superoffice.md says which.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from consentsync.sdk import ConnectorSettings, WebUrl

# SuperOffice's own rule for the keys of list items (purposes, legal bases, sources).
LIST_KEY = re.compile(r"^[A-Za-z0-9]+$")


class SuperOfficeSettings(ConnectorSettings):
    # The tenant's root: https://online.superoffice.com/Cust12345 (Online; sod. for development)
    # or an onsite installation's web API root; /api/v1 follows it.
    base_url: WebUrl
    auth: Literal["token", "refresh_token"] = "refresh_token"
    # How the credential is sent: Bearer (an OpenID Connect access token) or SOTicket (a system
    # user ticket obtained outside consentsync, put in access_token with auth: token).
    auth_scheme: Literal["Bearer", "SOTicket"] = "Bearer"
    access_token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    refresh_token: str | None = None
    token_url: WebUrl = "https://online.superoffice.com/login/common/oauth/tokens"
    redirect_uri: str | None = None
    # Online asks a server-side app to send its application token (the client secret) in this
    # header; onsite installations ignore it. Leave app_token out where it is not needed.
    app_token: str | None = None
    app_token_header: str = "SO-AppToken"
    # Changed consents a page of the ConsentPurpose archive (its $top).
    page_size: int = Field(default=200, ge=1, le=1000)
    # The archive provider read for changed consents, and its columns (SuperOffice's names).
    # What a consent removed by RemoveConsent reads back as: the legal basis key the tenant marks
    # it with (the sandbox's and, unconfirmed, SuperOffice's "turn off consent": WITHDRAWN), or
    # null where the tenant deletes the row. consentsync recognises its own removals by it.
    removal_reads_back_as: str | None = "WITHDRAWN"
    archive_provider: str = "ConsentPurpose"
    column_person_id: str = "consentPerson/personId"
    column_updated: str = "consentPerson/updatedDate"
    column_email: str = "consentPerson/person/email/emailAddress"
    # How a time is written in a restriction (strftime, UTC). Unconfirmed: ISO to the second.
    restriction_time_format: str = "%Y-%m-%dT%H:%M:%S"
    # The consent source and comment written with every SetConsent; the source must exist in the
    # tenant's Privacy - Source list (create one named for consentsync, e.g. key CONSENTSYNC).
    write_source: str = "SYSTEM"
    write_comment: str = Field(default="Set by consentsync", max_length=500)
    # Purpose keys describe() lists when the tenant cannot be asked (it is asked first).
    purposes: list[str] = Field(default_factory=lambda: ["STORE", "EMARKETING"])

    @field_validator("write_source")
    @classmethod
    def _source_key(cls, value: str) -> str:
        if not LIST_KEY.match(value):
            raise ValueError(f"{value!r} is not a SuperOffice list key: letters and digits only")
        return value

    @field_validator("purposes")
    @classmethod
    def _purpose_keys(cls, value: list[str]) -> list[str]:
        bad = [key for key in value if not LIST_KEY.match(key)]
        if bad:
            raise ValueError(f"not SuperOffice purpose keys (letters and digits only): {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _credentials_for_the_flow(self) -> SuperOfficeSettings:
        self.require(
            self.auth,
            {"token": ("access_token",), "refresh_token": ("client_id", "client_secret", "refresh_token")},
        )
        return self
