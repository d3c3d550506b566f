"""The SuperOffice connector's settings (the ``settings:`` block of a connector in the config).

Secrets are written ``${ENV_VAR}`` in the config and expanded from the environment at load time.
Values SuperOffice's documentation does not pin down are settings with the sandbox's choice as the
default; docs/connectors/superoffice.md says which.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

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


#: SuperOffice Online's hosts: an environment's authentication host (``online``, ``sod``,
#: ``qaonline``, ``stage``) or one of its numbered clusters (``online3``, ``sod2``), which serve the
#: tenants' APIs ("Check tenant status": "Subdomains without a number identifier ... are reserved
#: for authentication").
ONLINE_HOST = re.compile(r"^(online|sod|qaonline|stage)\d*\.superoffice\.com$", re.IGNORECASE)
#: A tenant's context identifier (``Cust12345``), the first segment of its Online address.
CONTEXT_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def online_state_url(base_url: str) -> str | None:
    """The state API of a SuperOffice Online tenant named by ``base_url``
    (``https://online.superoffice.com/Cust12345``, or a cluster's address of it,
    ``https://online3.superoffice.com/Cust12345``): ``https://<environment>.superoffice.com/api/
    state/<context identifier>``, where SuperOffice says the tenant's current endpoint is found.
    None for any other address (an onsite installation): it is used as it is."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    match = ONLINE_HOST.match(host)
    if match is None:
        return None
    segments = [segment for segment in parts.path.split("/") if segment]
    if not segments or not CONTEXT_ID.match(segments[0]) or segments[0].lower() == "api":
        raise ValueError(
            "a SuperOffice Online base_url names the tenant: https://online.superoffice.com/Cust12345 "
            "(its context identifier after the host; the API's address is found from it)"
        )
    return f"https://{match.group(1).lower()}.superoffice.com/api/state/{segments[0]}"


class SuperOfficeSettings(ConnectorSettings):
    # SuperOffice Online: the tenant, https://online.superoffice.com/Cust12345 (sod. for
    # development, qaonline. for stage). Online serves a tenant's API only on the cluster it runs
    # on now (https://online3.superoffice.com/Cust12345, which "will change routinely to balance
    # the load"; any other answers 421), so the connector asks the tenant's state API for it
    # (``state_url``) and asks again on a 421. Onsite: the installation's web API root, used as
    # it is. /api/v1 follows the root.
    base_url: WebUrl
    # Where the tenant's current endpoint and state are read (GET, no credentials): derived from
    # an Online base_url (https://online.superoffice.com/api/state/Cust12345). Set it only for a
    # sandbox or a proxy; none for an onsite installation (base_url is then the API's root).
    state_url: WebUrl | None = None
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
    # When the person was registered (UTC, "Registered date: The date/time the data was registered
    # in UTC"): read with each row, handed over as the record's creation time (an erasure reaches
    # a person first read after it only where SuperOffice registered the person before it).
    # None: not read (records then say nothing of their creation).
    column_person_registered: str | None = "consentPerson/person/personRegisteredDate"
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
    # How long the tenant keeps a deleted person in its recycle bin, restorable (SuperOffice's
    # default: 14 days). A person consentsync deleted (the ``delete`` erasure action) or found
    # gone is looked up again at each read for that long: one restored is read again (its link
    # is live, an erasure's delete is sent again). 0: never looked up.
    recycle_bin_days: int = Field(default=14, ge=0, le=3650)
    # Where the connector notes those persons (their ids and when they went): none given,
    # CONSENTSYNC_STATE_DIR, else the user's XDG state directory. It must outlive the process.
    state_dir: str | None = None

    @model_validator(mode="after")
    def _online_state(self) -> SuperOfficeSettings:
        if self.state_url is None:
            self.state_url = online_state_url(self.base_url)
        return self

    @property
    def online(self) -> bool:
        """Whether the tenant's endpoint is discovered (SuperOffice Online, or a sandbox of it)."""
        return self.state_url is not None

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
