"""The SuperOffice connector's settings (the ``settings:`` block of a connector in the config).

Secrets are written ``${ENV_VAR}`` in the config and expanded from the environment at load time.
Values SuperOffice's documentation does not pin down are settings with the sandbox's choice as the
default; docs/connectors/superoffice.md says which.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from consentsync.sdk import ConnectorSettings, WebUrl

# SuperOffice's own rule for the keys of list items (purposes, legal bases, sources).
LIST_KEY = re.compile(r"^[A-Za-z0-9]+$")
#: ConsentPerson.comment is String(255) (SuperOffice database reference, table ConsentPerson),
#: an nvarchar: its length counts UTF-16 code units (an emoji counts 2).
COMMENT_LENGTH = 255


def utf16_units(text: str) -> int:
    """The length of ``text`` as SQL Server's nvarchar counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


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
    # null where the tenant deletes the row. consentsync recognises its own removals by it: read
    # back, one is no withdrawal, and once its reason ends (a restriction lifted, an expired
    # consent renewed) the consent is set again with its earlier legal basis, unless the person
    # said no since it was queued (then it stands for their no: sync/engine.py ``_said_no_since``).
    removal_reads_back_as: str | None = "WITHDRAWN"
    archive_provider: str = "ConsentPurpose"
    column_person_id: str = "consentPerson/personId"
    column_updated: str = "consentPerson/updatedDate"
    column_email: str = "consentPerson/person/email/emailAddress"
    # The consent's own id (an int column that never changes): the key pages are walked by.
    column_consent_id: str = "consentPerson/consentPersonId"
    # How a day is written in a restriction on the updated column (strftime, UTC). That column
    # is of restriction type "date": SuperOffice uses only its date part. SuperOffice's own
    # examples write days dotted ('2014.3.4').
    restriction_date_format: str = "%Y.%m.%d"
    # A sweep begun again on the floor's day (today's, every run after a sweep ended) first asks
    # for that day's one page newest first and, where it holds every change since the floor,
    # does not walk the day's pages by consent id. Off by default: it relies on the archive
    # ordering ``column_updated desc`` by the full date and time, which SuperOffice documents
    # nowhere (the column restricts by date only; ordered by its date, ties by consent id, the
    # page would miss a consent changed again since the floor, for good). Turn it on only where
    # the tenant's answers are known to be in time order.
    latest_page_first: bool = False
    # The consent source and comment written with every SetConsent; the source must exist in the
    # tenant's Privacy - Source list (create one named for consentsync, e.g. key CONSENTSYNC).
    # The comment goes into ConsentPerson.comment: at most 255 UTF-16 code units.
    write_source: str = "SYSTEM"
    write_comment: str = "Set by consentsync"
    # Purpose keys describe() lists when the tenant cannot be asked (it is asked first).
    purposes: list[str] = Field(default_factory=lambda: ["STORE", "EMARKETING"])

    @field_validator("write_source")
    @classmethod
    def _source_key(cls, value: str) -> str:
        if not LIST_KEY.match(value):
            raise ValueError(f"{value!r} is not a SuperOffice list key: letters and digits only")
        return value

    @field_validator("write_comment")
    @classmethod
    def _fits_the_comment_column(cls, value: str) -> str:
        units = utf16_units(value)
        if units > COMMENT_LENGTH:
            raise ValueError(
                f"write_comment is {units} UTF-16 code units long; SuperOffice's consent comment "
                f"(ConsentPerson.comment) holds at most {COMMENT_LENGTH} (an emoji counts 2)"
            )
        return value

    @field_validator("restriction_date_format")
    @classmethod
    def _a_day(cls, value: str) -> str:
        if any(code in value for code in ("%H", "%I", "%M", "%S", "%f", "%p", "%X", "%c")):
            raise ValueError(
                "restriction_date_format writes a day (e.g. %Y.%m.%d): SuperOffice uses only the "
                "date part of consentPerson/updatedDate"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_time_format(cls, data: Any) -> Any:
        if isinstance(data, dict) and "restriction_time_format" in data:
            raise ValueError(
                "restriction_time_format is no longer read: consentPerson/updatedDate is compared "
                "by date only; remove it (restriction_date_format sets how a day is written)"
            )
        return data

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
