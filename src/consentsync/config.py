"""consentsync.yaml: loaded, secrets expanded from the environment, validated.

Every error names the file, the line and the field, and what would have been accepted.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from consentsync.domain import (
    DEFAULT_CHANNELS,
    DEFAULT_CLOCK_SKEW_SECONDS,
    ELECTRONIC_MAIL_CHANNELS,
    InvalidInput,
    LawfulBasis,
    ObjectionHandling,
    Purpose,
)
from consentsync.identifiers import shaped
from consentsync.reconcile import Policy
from consentsync.sync.failpoints import failpoint
from consentsync.sync.settings import ConnectorSettings
from consentsync.yamlfile import Lines, LocatedError, Yaml12Loader, describe, not_utf8, read_document, where

CONFIG_ENV = "CONSENTSYNC_CONFIG"
ERASURE_KEY_ENV = "CONSENTSYNC_ERASURE_KEY"
DEFAULT_CONFIG_NAME = "consentsync.yaml"

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


# Upper bounds of durations in the config: a value past them (a typo's extra digits) would pass
# validation and overflow a date or a timer at the first command that used it.
CENTURY_DAYS = 36_500
YEAR_SECONDS = 366 * 86_400


class ConfigError(ValueError):
    """A config problem, already phrased for the person who wrote the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _true_or_false(value: Any) -> Any:
    """YAML's true and false, or the same words from an environment variable (``${VAR}`` expands
    to text); not pydantic's lax yes, on, 1 or t: a mapping file reads those as text, so one word
    would mean two things in two files."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{value!r} is not a boolean: accepted are true or false")


# A flag of the configuration: true or false, nothing that pydantic would take for one.
Flag = Annotated[bool, BeforeValidator(_true_or_false)]


class LedgerSettings(_Strict):
    url: str = "sqlite:///consentsync.db"


class SecretSettings(_Strict):
    erasure_hmac_key: str | None = None
    erasure_hmac_key_file: str | None = None


class CheckpointSettings(_Strict):
    """Signed checkpoints of the audit chain's head (docs/tamper-evidence.md): off unless a
    directory and a key (this file, or the CONSENTSYNC_CHECKPOINT_KEY variable) are set."""

    directory: str | None = None
    key_file: str | None = None
    interval_seconds: int = Field(default=3600, ge=1, le=YEAR_SECONDS)


class AuditSettings(_Strict):
    checkpoints: CheckpointSettings = CheckpointSettings()


class WebSettings(_Strict):
    """The ops console. ``allowed_hosts``: the host names (``*.example.org`` for any subdomain,
    ``*`` for any) a request's Host header may name; by default the bind address and localhost,
    so a DNS-rebinding page cannot reach the console under a name of its own."""

    allowed_hosts: list[str] | None = None
    # The reverse proxies (addresses or CIDR blocks) whose X-Forwarded-For the console believes:
    # the client of a request from one of them is the right-most address in that header that is
    # not a trusted proxy. Empty (the default): the client is the socket's peer, whatever the
    # header says.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR block (e.g. 10.0.0.0/8)") from None
        return value

    def trusted_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item, strict=False) for item in self.trusted_proxies]


class PolicySettings(_Strict):
    trusted_sources: list[str] = Field(
        default_factory=lambda: ["web_form", "preference_center", "double_opt_in", "ops"]
    )
    requested_stale_after_days: int = Field(default=30, ge=1, le=CENTURY_DAYS)
    objection_handling: ObjectionHandling = ObjectionHandling.AUTO_UPHOLD
    # A suppression not yet pushed to a CRM after this long raises an alert (CAN-SPAM allows 10
    # business days; alert well before).
    late_suppression_hours: int = Field(default=48, ge=1, le=CENTURY_DAYS * 24)
    # Event times later than now plus this many seconds are refused at input (quarantined when a
    # CRM sends them): clocks disagree a little, but no one acts in the future.
    max_clock_skew_seconds: int = Field(default=DEFAULT_CLOCK_SKEW_SECONDS, ge=0, le=86400)
    # The channels that are "electronic mail" under PECR reg. 2 / ePrivacy Art. 2(h): marketing
    # on them needs consent or a soft opt-in wherever a purpose follows the ePrivacy rules.
    electronic_mail_channels: list[str] = Field(default_factory=lambda: list(ELECTRONIC_MAIL_CHANNELS))


class PurposeSettings(_Strict):
    key: Annotated[str, shaped(_KEY, "lower-case letters, digits and _, starting with a letter")]
    name: str
    direct_marketing: Flag = False
    # Profiling (segmentation, scoring) done for direct marketing: processing for direct
    # marketing too (Art. 21(2): "which includes profiling to the extent that it is related to
    # such direct marketing"), so an objection to direct marketing ends it (Art. 21(3)) and an
    # objection to it is absolute; it sends nothing, so the ePrivacy rules stay off unless
    # ``eprivacy`` says otherwise (docs/policy.md, "Objections").
    profiling_for_direct_marketing: Flag = False
    default_basis: LawfulBasis
    validity_days: int | None = Field(default=None, ge=1, le=CENTURY_DAYS)
    objection_handling: ObjectionHandling | None = None
    channels: list[str] | None = None
    # PECR reg. 22 / ePrivacy Art. 13 / UWG 7: marketing by electronic mail needs consent or a
    # soft opt-in. Default: the purpose's direct_marketing (docs/policy.md, "Soft opt-in").
    eprivacy: Flag | None = None
    # What the purpose means, in the words the preference centre shows the person.
    description: str | None = None
    # A grant captured through the hub waits as "requested" until the person follows the link
    # mailed to them (double opt-in); the confirmation time is kept as evidence.
    double_opt_in: Flag = False
    # Mail a renewal request this many days before a granted consent expires (validity_days).
    renewal_days_before: int | None = Field(default=None, ge=1, le=CENTURY_DAYS)


class BrandingSettings(_Strict):
    """How the preference centre and the mails look: the company's, not consentsync's."""

    name: str = "Preference centre"
    logo_url: str | None = None
    primary_colour: str = Field(default="#1f4e79", pattern=r"^#[0-9a-fA-F]{6}$")
    privacy_policy_url: str | None = None
    contact_email: str | None = None


class SmtpSettings(_Strict):
    """Where the hub's mails go out (double opt-in, requests, receipts). The password comes from
    the environment variable named here, never from the file."""

    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    sender: str = "privacy@example.org"
    starttls: Flag = False
    username: str | None = None
    password_env: str | None = None


class HubSettings(_Strict):
    """The capture API and the preference centre (docs/hub.md)."""

    # The address people reach the preference centre at: the links in mails start with it.
    public_url: str = "http://127.0.0.1:8080"

    @field_validator("public_url")
    @classmethod
    def _public_address(cls, value: str) -> str:
        # Its links carry a person's preference token: over plain HTTP anyone on the way could
        # read it and change their choices. Plain HTTP only on this machine (a demo, a test).
        from urllib.parse import urlsplit

        from consentsync.sdk.settings import loopback_host

        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{value!r} is not an address: accepted is https://HOST[/PATH]")
        if parts.scheme == "http" and not loopback_host(parts.hostname):
            raise ValueError(
                f"{value!r} is plain HTTP to another machine: its links carry people's tokens; "
                "accepted is https://HOST[/PATH] (http only on 127.0.0.1, ::1 or localhost)"
            )
        return value

    # Purposes a Global Privacy Control signal (Sec-GPC: 1) opts out of: under the CCPA, the
    # sale or sharing of personal information. Left out: every purpose profiling people for
    # marketing (``Settings._gpc_default``); [] opts out of nothing (the hub warns: docs/hub.md).
    gpc_purposes: list[str] = Field(default_factory=list)
    # How long a preference link and a confirmation link stay valid.
    link_days: int = Field(default=30, ge=1, le=365)
    confirmation_days: int = Field(default=7, ge=1, le=90)
    # Requests per minute one API key may make (an API key may set its own).
    rate_per_minute: int = Field(default=600, ge=1, le=1_000_000)
    languages: list[str] = Field(default_factory=lambda: ["en", "de"])

    @field_validator("languages")
    @classmethod
    def _catalogued(cls, value: list[str]) -> list[str]:
        # The pages, mails and receipts say which language they are in: one without its catalogue
        # would be English text claiming to be another language (a receipt is proof of consent).
        from consentsync.hub.i18n import shipped

        known = shipped()
        if not value:
            raise ValueError(f"no language: accepted are one or more of {', '.join(known)}")
        for language in value:
            if language not in known:
                raise ValueError(f"{language!r} has no catalogue: accepted are {', '.join(known)}")
            if value.count(language) > 1:
                raise ValueError(f"{language!r} is listed twice")
        return value

    # Mail the person a consent receipt (ISO/IEC TS 27560, JSON) for every grant, withdrawal or
    # refusal made through the capture API or the preference centre.
    mail_receipts: Flag = True
    # Consent requests and renewal mails: at most this many a minute, and the daemon's upkeep
    # (lapsing, renewals) every this many minutes (0: only by command).
    mails_per_minute: int = Field(default=60, ge=1, le=1_000_000)
    upkeep_minutes: int = Field(default=60, ge=0, le=YEAR_SECONDS // 60)
    # Consent purposes the daemon's upkeep sends consent requests for, to everyone they apply to
    # with nothing on record (empty: only `consentsync hub requests PURPOSE` sends them).
    request_purposes: list[str] = Field(default_factory=list)
    branding: BrandingSettings = BrandingSettings()
    smtp: SmtpSettings = SmtpSettings()


class Settings(_Strict):
    version: Literal[1] = 1
    ledger: LedgerSettings = LedgerSettings()
    secrets: SecretSettings = SecretSettings()
    policy: PolicySettings = PolicySettings()
    audit: AuditSettings = AuditSettings()
    web: WebSettings = WebSettings()
    hub: HubSettings = HubSettings()
    channels: list[str] = Field(default_factory=lambda: list(DEFAULT_CHANNELS))
    purposes: list[PurposeSettings] = Field(min_length=1)
    connectors: list[ConnectorSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _gpc_default(self) -> Settings:
        """``hub.gpc_purposes`` left out: every purpose flagged ``profiling_for_direct_marketing``.
        A GPC signal is a request to opt out of the sale or sharing of personal information (CCPA
        regulations § 7025); "sharing" is disclosure for cross-context behavioural advertising
        (Cal. Civ. Code § 1798.140(ah)), advertising chosen by a profile of the person, and of a
        purpose's flags only that one says the purpose profiles people for marketing. Marketing
        alone (``direct_marketing``: a newsletter the person signed up for) is neither a sale nor
        sharing, and opting a sign-up out of what it asks for would undo the person's own choice
        (§ 7025(c)(3)). No flag says a purpose sells: such a purpose is listed by hand."""
        if "gpc_purposes" in self.hub.model_fields_set:
            return self
        profiling = [p.key for p in self.purposes if p.profiling_for_direct_marketing]
        # The settings are frozen: the default is filled in once, as they are made.
        object.__setattr__(self, "hub", self.hub.model_copy(update={"gpc_purposes": profiling}))
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        seen: set[str] = set()
        for index, purpose in enumerate(self.purposes):
            if purpose.key in seen:
                raise _located(("purposes", index, "key"), f"duplicate purpose key {purpose.key!r}")
            seen.add(purpose.key)
            for channel in purpose.channels or []:
                if channel not in self.channels:
                    raise _located(
                        ("purposes", index, "channels"),
                        f"unknown channel {channel!r}: accepted are {', '.join(self.channels)}",
                    )
        for field_name in ("gpc_purposes", "request_purposes"):
            for index, key in enumerate(getattr(self.hub, field_name)):
                if key not in seen:
                    raise _located(
                        ("hub", field_name, index),
                        f"unknown purpose {key!r}: configured are {', '.join(sorted(seen))}",
                    )
        names = [c.name for c in self.connectors]
        for index, name in enumerate(names):
            if names.index(name) != index:
                raise _located(("connectors", index, "name"), f"duplicate connector name {name!r}")
            if name.strip().casefold() == "consentsync":
                # Its records' events would be sourced "consentsync:<object>", as consentsync's own
                # records are (the expiry sweep, an upgrade: hub/keys.RESERVED_SOURCE_PREFIX).
                raise _located(
                    ("connectors", index, "name"),
                    f"connector name {name!r} is reserved for consentsync's own records: accepted is "
                    "any other name (crm-prod, crm-eu, ...)",
                )
        for channel in self.channels:
            if not _KEY.match(channel):
                raise _located(("channels",), f"channel {channel!r} must be a lower-case word")
        return self


def _located(loc: tuple[str | int, ...], message: str) -> LocatedError:
    return LocatedError(loc, message)


@dataclass(frozen=True)
class Config:
    """The loaded configuration, with paths resolved and purposes turned into domain objects."""

    path: Path
    settings: Settings
    # The line of every value in the file, for errors found after loading (yamlfile.Lines).
    lines: Lines = field(default_factory=dict, compare=False, repr=False)

    def where(self, *loc: str | int) -> str:
        """``path:N: field: `` for the value at ``loc`` (a message about it follows)."""
        return where(self.path, self.lines, loc)

    @property
    def ledger_url(self) -> str:
        return resolve_sqlite_url(self.settings.ledger.url, self.path.parent)

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.settings.channels)

    @property
    def purposes(self) -> dict[str, Purpose]:
        default = self.settings.policy.objection_handling
        return {
            p.key: Purpose(
                key=p.key,
                name=p.name,
                # Profiling for direct marketing is processing for direct marketing (Art.
                # 21(2)): the ledger, the reconciler and the CRMs' writers treat it as such
                # (``reconcile.serves_direct_marketing``). Left out, its eprivacy is off: it
                # sends no electronic mail (with direct_marketing it follows that, as ever).
                direct_marketing=p.direct_marketing or p.profiling_for_direct_marketing,
                default_basis=p.default_basis,
                validity_days=p.validity_days,
                objection_handling=p.objection_handling or default,
                channels=tuple(p.channels or self.settings.channels),
                eprivacy=(
                    False
                    if p.eprivacy is None and p.profiling_for_direct_marketing and not p.direct_marketing
                    else p.eprivacy
                ),
                electronic_mail_channels=tuple(self.settings.policy.electronic_mail_channels),
            )
            for p in self.settings.purposes
        }

    @property
    def policy(self) -> Policy:
        return Policy(
            trusted_sources=frozenset(self.settings.policy.trusted_sources),
            clock_skew=timedelta(seconds=self.settings.policy.max_clock_skew_seconds),
        )

    def connector(self, name: str) -> ConnectorSettings:
        for candidate in self.settings.connectors:
            if candidate.name == name:
                return candidate
        known = ", ".join(c.name for c in self.settings.connectors) or "none"
        raise ConfigError(f"{self.path}: no connector named {name!r}: configured are {known}")

    def check_vendor(self, name: str) -> None:
        """Connector ``name``'s vendor is an installed connector plugin; else a ``ConfigError``
        naming the file, the line and ``connectors[N].vendor`` with the installed ones (a typo
        in ``vendor:`` said where it is, not only "no connector 'x' is installed")."""
        from consentsync.sdk import registry

        settings = self.connector(name)
        try:
            registry.load(settings.vendor)
        except InvalidInput as error:
            at = ("connectors", self.settings.connectors.index(settings), "vendor")
            raise ConfigError(f"{self.where(*at)}{error}") from None

    def connector_settings(self, name: str) -> dict[str, Any]:
        """The vendor settings of connector ``name`` with ${ENV_VAR} references expanded."""
        settings = self.connector(name)
        index = self.settings.connectors.index(settings)
        try:
            expanded = _expand_env(dict(settings.settings), ("connectors", index, "settings"), secrets=True)
        except LocatedError as error:
            raise ConfigError(where(self.path, self.lines, error.loc) + str(error)) from None
        return dict(expanded)

    def resolve_path(self, relative: str) -> Path:
        """Paths in the config (mapping files, key files) are relative to the config file."""
        path = Path(relative)
        return path if path.is_absolute() else self.path.parent / path

    def erasure_key(self) -> bytes:
        """The HMAC key for erasure suppressions: environment first, then the config."""
        return self.erasure_key_and_source()[0]

    def erasure_key_and_source(self) -> tuple[bytes, str]:
        """The erasure key and where it came from, in words an operator can act on (the
        environment variable, the config's line, or the key file and the config naming it)."""
        from_env = os.environ.get(ERASURE_KEY_ENV)
        if from_env:
            where = f"environment variable {ERASURE_KEY_ENV}"
            if self.settings.secrets.erasure_hmac_key or self.settings.secrets.erasure_hmac_key_file:
                # The reason a container and an admin shell on one config can hold two keys.
                where += f" (which wins over the key in {self.path}: secrets)"
            return _checked_key(from_env, f"environment variable {ERASURE_KEY_ENV}"), where
        if self.settings.secrets.erasure_hmac_key:
            where = f"{self.path}: secrets.erasure_hmac_key"
            return _checked_key(self.settings.secrets.erasure_hmac_key, where), where
        key_file = self.settings.secrets.erasure_hmac_key_file
        if key_file:
            path = Path(key_file)
            if not path.is_absolute():
                path = self.path.parent / path
            try:
                key = path.read_text().strip()
            except OSError as error:
                raise ConfigError(
                    f"{self.path}: secrets.erasure_hmac_key_file: cannot read {path}: {error.strerror}"
                ) from None
            where = f"key file {path} ({self.path}: secrets.erasure_hmac_key_file)"
            return _checked_key(key, str(path)), where
        raise ConfigError(
            f"{self.path}: no erasure key: set {ERASURE_KEY_ENV} or secrets.erasure_hmac_key_file"
        )


MIN_KEY_LENGTH = 16


def _checked_key(key: str, where: str) -> bytes:
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(f"{where}: the erasure key must be at least {MIN_KEY_LENGTH} characters")
    return key.encode()


def resolve_sqlite_url(url: str, base: Path) -> str:
    """A relative SQLite path is relative to the config file, not to wherever the daemon runs."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////"):
        rest = url[len(prefix) :]
        if rest and rest != ":memory:" and not rest.startswith("file:") and not Path(rest).is_absolute():
            return prefix + str((base / rest).resolve())
    return url


def default_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME)


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (run 'consentsync init' to write a starter one, "
            f"or pass --config / set {CONFIG_ENV})"
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigError(not_utf8(path, error)) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> Config:
    # YAML 1.2's scalars, as the mapping files are read: only true and false are booleans (YAML
    # 1.1 made yes, on and no into booleans, so a channel or language named "no" became false).
    raw, lines = read_document(text, path, error=ConfigError, loader=Yaml12Loader, unique_keys=True)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: expected a mapping of settings at the top level")
    try:
        expanded = _expand_env(raw, ())
    except LocatedError as error:
        raise ConfigError(where(path, lines, error.loc) + str(error)) from None
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as error:
        # A refused value is echoed to help fix it, unless its key may hold a secret: a numeric
        # erasure key (YAML reads it as a number), a ledger URL given as a mapping with a password.
        show = not any(_may_hold_secret(e["loc"]) for e in error.errors())
        raise ConfigError(describe(error, path, lines, Settings, show_input=show)) from None
    _check_ledger_url(settings.ledger.url, path, lines)
    _check_erasure_objects(settings, path, lines)
    _check_object_erasure_actions(settings, path, lines)
    return Config(path=path, settings=settings, lines=lines)


def _mapped_objects(mappings: list[str], base: Path) -> list[str] | None:
    """The CRM objects a connector's mapping files map (each file's ``object``), or None when a
    file cannot be read as one here: the connector's own loading then says what is wrong with it."""
    objects = []
    for name in mappings:
        file = Path(name) if Path(name).is_absolute() else base / name
        try:
            data, _lines = read_document(file.read_text(encoding="utf-8"), file, error=ValueError)
        except (OSError, UnicodeError, ValueError):
            return None
        found = data.get("object") if isinstance(data, dict) else None
        if not isinstance(found, str):
            return None
        objects.append(found)
    return objects


def _check_erasure_objects(settings: Settings, path: Path, lines: Lines) -> None:
    """Every object named under a connector's ``erasure:`` is one of the object types it reads:
    those its mapping files map (each connector plugin reads the objects its mappings name). A
    typo would otherwise be found only when a run starts, by every run of the daemon."""
    for index, connector in enumerate(settings.connectors):
        if not connector.erasure:
            continue
        objects = _mapped_objects(connector.mappings, path.parent)
        if objects is None:
            continue
        for object_type in connector.erasure:
            if object_type in objects:
                continue
            near = [o for o in objects if o.lower() == object_type.lower()]
            hint = f" (object types are case-sensitive: {near[0]})" if near else ""
            raise ConfigError(
                where(path, lines, ("connectors", index, "erasure", object_type))
                + f"unknown object type {object_type!r} for connector {connector.name!r}{hint}: "
                f"accepted are the {connector.vendor} object types its mappings map: "
                f"{', '.join(sorted(set(objects)))}"
            )


def _check_object_erasure_actions(settings: Settings, path: Path, lines: Lines) -> None:
    """Every erasure action under a connector's ``erasure:`` is one its plugin carries out for
    that object: a plugin names the objects that take fewer than all of them in its class's
    ``erasure_actions_by_object`` (object type -> the accepted actions). Suppress, the default,
    is every object's: the plugin is loaded only for another action."""
    for index, connector in enumerate(settings.connectors):
        asked = {o: a for o, a in connector.erasure.items() if a != "suppress"}
        if not asked:
            continue
        accepted = _erasure_actions_by_object(connector.vendor)
        for object_type, action in asked.items():
            allowed = accepted.get(object_type)
            if allowed is None or action in allowed:
                continue
            raise ConfigError(
                where(path, lines, ("connectors", index, "erasure", object_type))
                + f"the {connector.vendor} connector cannot {action} {object_type} records "
                f"(connector {connector.name!r}): accepted is {', '.join(allowed)}"
            )


def _erasure_actions_by_object(vendor: str) -> dict[str, tuple[str, ...]]:
    """A connector plugin's ``erasure_actions_by_object``; empty when it declares none, or is
    not installed (``Config.check_vendor`` says so, naming the installed ones)."""
    from consentsync.sdk import registry

    try:
        declared = getattr(registry.load(vendor), "erasure_actions_by_object", None)
    except (InvalidInput, ImportError):
        return {}
    if not isinstance(declared, Mapping):
        return {}
    return {str(o): tuple(a) for o, a in declared.items()}


SECRET_WORDS = ("secret", "password", "token")


def _may_hold_secret(loc: tuple[int | str, ...]) -> bool:
    """Keys whose values are never repeated in an error: the ledger URL (its password), any whose
    name says secret, password or token, and any ending in _key (erasure_hmac_key; not a
    purpose's `key`, nor a `key_file`, which are no secrets)."""
    names = [part.lower() for part in loc if isinstance(part, str)]
    return names[:2] == ["ledger", "url"] or any(
        name.endswith("_key") or any(word in name for word in SECRET_WORDS) for name in names
    )


LEDGER_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")


def _check_ledger_url(url: str, path: Path, lines: Lines) -> None:
    """The ledger URL's scheme is one consentsync serves (the URL itself is not echoed: it may
    hold a password)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme.lower() not in LEDGER_SCHEMES:
        shown = repr(scheme) if scheme else "none"
        raise ConfigError(
            where(path, lines, ("ledger", "url"))
            + f"unknown URL scheme {shown}: accepted are sqlite:///PATH and "
            "postgresql://USER@HOST:PORT/DATABASE"
        )
    if scheme != scheme.lower():
        # SQLAlchemy finds no dialect for it, and its error would echo the URL.
        raise ConfigError(
            where(path, lines, ("ledger", "url"))
            + f"the URL scheme is written in lower case: {scheme.lower()}://"
        )
    _check_url_parts(url, where(path, lines, ("ledger", "url")))
    if scheme.lower() == "sqlite" and url.split("://", 1)[1].lstrip("/") in ("", ":memory:"):
        # Each command would get an empty ledger of its own, gone when it ends.
        raise ConfigError(
            where(path, lines, ("ledger", "url"))
            + "a SQLite ledger in memory is lost when the command ends: give a file, sqlite:///PATH"
        )


def _check_url_parts(url: str, at: str) -> None:
    """A URL SQLAlchemy cannot split, or splits where its writer did not mean, is refused here
    without echoing any part of it. A password's unencoded '@' makes the rest of the password
    the host name, which a connection error then shows (and, retried, logs on every run); a
    port that is not a number was a traceback."""
    try:
        parsed = make_url(url)
        port = parsed.port
    except (ArgumentError, ValueError):
        raise ConfigError(
            at + "not a URL consentsync can read: accepted is "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE with PORT a number (one host: others "
            "go in ?host=HOST:PORT&host=...), or sqlite:///PATH"
        ) from None
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(at + f"port {port} is out of range: accepted are 1 to 65535")
    if parsed.host and "@" in parsed.host:
        raise ConfigError(
            at + "the user or password holds an '@' that is not percent-encoded, so part of it "
            "would be read as the host: write '@' in a password as %40 (and ':' as %3A, '/' as %2F)"
        )


def _expand_env(value: Any, loc: tuple[str | int, ...], *, secrets: bool = False) -> Any:
    if not secrets and len(loc) == 3 and loc[0] == "connectors" and loc[2] == "settings":
        # A connector's secrets are read when that connector is opened (Config.connector_settings):
        # reading the audit log must not need every CRM's credentials in the environment.
        return value
    if isinstance(value, dict):
        return {k: _expand_env(v, (*loc, k), secrets=secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*loc, i), secrets=secrets) for i, v in enumerate(value)]
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise LocatedError(loc, f"environment variable {name} is not set")
            return os.environ[name]

        return _ENV_REF.sub(substitute, value)
    return value


def starter_config_text() -> str:
    return resources.files("consentsync").joinpath("starter_config.yaml").read_text(encoding="utf-8")


def starter_with_ledger(ledger_url: str | None) -> str:
    """The starter config's text, with ``ledger_url`` (if given) as its ledger's URL: as written
    where YAML reads it back as that string, else quoted (a colon at its end, a line break, a
    ``#``), so that it is one string whatever it holds."""
    import yaml

    text = starter_config_text()
    if ledger_url:
        try:
            plain = yaml.safe_load(f"url: {ledger_url}") == {"url": ledger_url}
        except yaml.YAMLError:
            plain = False
        shown = ledger_url if plain else json.dumps(ledger_url)
        text = text.replace("url: sqlite:///consentsync.db", f"url: {shown}", 1)
    return text


def write_starter(
    path: Path, ledger_url: str | None = None, *, replace: bool = True, created: list[Path] | None = None
) -> Path:
    """Writes a fresh erasure key (mode 0600) and then the commented starter config beside it.

    The key comes first, so that a process killed between the two leaves a key without a config
    (the next `init` writes the config and keeps that key), never a config naming a key that is
    not there (which that `init` would keep, key missing). ``replace=False``: the config is
    created only if there is none (FileExistsError otherwise), so that of two `init`s started at
    once one writes it and the other keeps it; ``replace=True`` swaps in a whole new one (a
    synced file renamed over it), never truncating the old one. The key is never replaced: one
    written meanwhile by another `init` is the one kept. ``created`` gets the files this call
    wrote (what an `init` that then fails may remove: never the other `init`'s key)."""
    text = starter_with_ledger(ledger_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    key_path = path.parent / "consentsync.key"
    if write_key(key_path) and created is not None:
        created.append(key_path)
    failpoint("init.key.written")
    if replace:
        replace_whole(path, text.encode("utf-8"), 0o644)
    else:
        _create_whole(path, text, 0o644)
    if created is not None:
        created.append(path)
    return key_path


def write_key(key_path: Path) -> bool:
    """Creates ``key_path`` holding a fresh erasure key (mode 0600), whole; False, and the file
    left as it is, when there is one: another key would unrecognise every erasure made with it."""
    try:
        _create_whole(key_path, secrets.token_urlsafe(32) + "\n", 0o600)
    except FileExistsError:
        return False
    return True


def replace_whole(path: Path, data: bytes, mode: int) -> None:
    """``path`` holds ``data``: written and synced under a hidden name beside it, then renamed
    over it (os.replace is atomic), so that a process killed at any moment leaves the old file or
    the new one whole, never one truncated or half written. Only a kill before the rename can
    leave the hidden file behind. An existing file's permissions are kept (a config holding
    secrets may have been made private)."""
    with contextlib.suppress(FileNotFoundError):
        mode = path.stat().st_mode & 0o777
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            _write_synced(fd, data)
        finally:
            os.close(fd)
        failpoint("init.config.aside")
        os.replace(aside, path)
    except BaseException:
        aside.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


def _create_whole(path: Path, text: str, mode: int) -> None:
    """Creates ``path`` holding ``text``, or raises FileExistsError and leaves it as it is. The
    file appears whole where the filesystem allows (written and synced under no name or aside,
    then linked in): a second `init` never reads it half written. A filesystem without hard links
    (SMB, vboxsf, some FUSE) gets it created exclusively in place, as before linking was used."""
    data = text.encode("utf-8")
    for linked_in in (_link_in_unnamed, _link_in_aside):
        try:
            linked_in(path, data, mode)
            return
        except FileExistsError:
            raise
        except OSError:
            continue  # no such file kind or no hard links here: the next way
    _create_in_place(path, data, mode)


def _write_synced(fd: int, data: bytes) -> None:
    """Writes all of ``data`` to ``fd`` and syncs it: what is linked in after a crash is whole."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _link_in_unnamed(path: Path, data: bytes, mode: int) -> None:
    """Linux: the file is written with no name at all (O_TMPFILE) and gets ``path`` as its only
    name, so a process killed at any moment leaves no second copy of the key behind."""
    if not hasattr(os, "O_TMPFILE"):
        raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE")
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, mode)
        try:
            _write_synced(fd, data)
            # linkat(AT_SYMLINK_FOLLOW) through /proc gives the open file its name (a dir_fd
            # makes Python use linkat; plain link() would link the /proc entry itself: EXDEV).
            os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=folder, follow_symlinks=True)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.fsync(folder)  # the new name itself survives a crash
    finally:
        os.close(folder)


def _link_in_aside(path: Path, data: bytes, mode: int) -> None:
    """Elsewhere: written under a hidden name beside ``path``, linked in, the hidden name removed
    whatever happens (only a kill between link and unlink can leave it)."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            _write_synced(fd, data)
        finally:
            os.close(fd)
        os.link(aside, path)  # fails when the file exists, whoever made it
    finally:
        aside.unlink(missing_ok=True)


def _create_in_place(path: Path, data: bytes, mode: int) -> None:
    """Without hard links: created exclusively (FileExistsError if another made it first),
    written and synced; removed again if it could not be written whole (it is ours)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        _write_synced(fd, data)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
