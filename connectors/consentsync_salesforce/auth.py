"""OAuth 2.0 against a configurable login URL: client credentials, username-password, JWT bearer,
or a ready access token. simple-salesforce's own login builds ``https://{domain}.salesforce.com``,
so the connector asks for the token itself and hands it over."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import requests

from consentsync import sdk
from consentsync.sdk.settings import loopback_host
from consentsync_salesforce.settings import SalesforceSettings


@dataclass(frozen=True, slots=True)
class TokenGrant:
    access_token: str
    instance_url: str
    # The integration user's id, the last part of the identity URL the token answer's ``id``
    # holds (``https://login.salesforce.com/id/<org>/<user>``); None for a ready access token.
    user_id: str | None = None
    # The org's id, the part before it; None for a ready access token.
    org_id: str | None = None


def request_token(session: requests.Session, config: SalesforceSettings) -> TokenGrant:
    """The token the configured flow grants (the session's timeout applies)."""
    if config.auth == "token":
        assert config.access_token and config.instance_url
        return TokenGrant(config.access_token, config.instance_url)
    form: dict[str, str] = {"client_id": config.client_id or ""}
    if config.auth == "client_credentials":
        form |= {"grant_type": "client_credentials", "client_secret": config.client_secret or ""}
    elif config.auth == "password":
        form |= {
            "grant_type": "password",
            "client_secret": config.client_secret or "",
            "username": config.username or "",
            "password": (config.password or "") + (config.security_token or ""),
        }
    else:
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": _assertion(config),
        }
    url = config.login_url.rstrip("/") + "/services/oauth2/token"
    body = sdk.request_token(session, url, form, login=f"login with {config.auth}")
    identity = str(body.get("id") or "").rstrip("/")
    instance = _instance_url(body.get("instance_url"), config, url)
    parts = identity.rsplit("/", 2)
    org_id = parts[-2] if len(parts) == 3 and parts[-2] else None
    return TokenGrant(body["access_token"], instance, parts[-1] or None, org_id)


def _instance_url(value: object, config: SalesforceSettings, token_url: str) -> str:
    """The token answer's ``instance_url``, where every later call goes with the bearer token:
    https, or plain http to this machine only (a sandbox), as the configured URLs are held to
    (``sdk.settings``). An answer of ``http://`` to another host (a proxy or a login server
    that rewrites it, a hostile endpoint) would have the token and people's consents sent in
    clear; one without it failed on a KeyError. The value is never quoted: it may carry a user
    and password."""
    shown = sdk.mask_userinfo(token_url)
    try:
        parts = urlsplit(value.strip()) if isinstance(value, str) else None
        host = parts.hostname if parts is not None else None
    except ValueError:  # a malformed host ("http://[::1"): no URL at all
        parts, host = None, None
    scheme = parts.scheme.lower() if parts is not None else ""
    if host and (scheme == "https" or (scheme == "http" and loopback_host(host))):
        return str(value).strip()
    said = (
        f"an instance_url in {scheme or 'no scheme'} (the access token would go in clear)"
        if host
        else "no usable instance_url"
    )
    raise sdk.ConnectorError(
        f"the login with {config.auth} at {shown} answered {said}: refused; accepted: an https "
        "URL, or http to this machine only",
        sdk.ErrorRule(sdk.Action.FAIL, sdk.Fault.CONFIG, "instance URL refused"),
    )


def _assertion(config: SalesforceSettings) -> str:
    assert config.private_key_file
    claims = {
        "iss": config.client_id,
        "sub": config.username,
        # Salesforce takes only its authorization servers' URLs here, not the My Domain or
        # instance URL a login_url may name ("audience is invalid").
        "aud": config.audience(),
        "exp": int(time.time()) + 180,
    }
    try:
        return jwt.encode(claims, Path(config.private_key_file).read_text(), algorithm="RS256")
    except (OSError, UnicodeDecodeError, jwt.PyJWTError) as error:
        # The admin's to fix (the file named by private_key_file), not a crash of the run.
        reason = error.strerror if isinstance(error, OSError) else "not an RSA private key in PEM"
        raise sdk.ConnectorError(
            f"settings.private_key_file {config.private_key_file}: {reason}",
            sdk.ErrorRule(sdk.Action.FAIL, sdk.Fault.CONFIG, "JWT key unusable"),
        ) from None
