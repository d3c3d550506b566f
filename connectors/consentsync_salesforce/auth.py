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

from consentsync.sdk import Action, ConnectorError, ErrorRule, Fault, network_error
from consentsync_salesforce.settings import SalesforceSettings


@dataclass(frozen=True, slots=True)
class TokenGrant:
    access_token: str
    instance_url: str


def request_token(session: requests.Session, config: SalesforceSettings, *, timeout: float) -> TokenGrant:
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
    try:
        response = session.post(url, data=form, timeout=timeout)
    except requests.RequestException as error:
        raise network_error(f"token request to {config.login_url}", error, urlsplit(url).netloc) from None
    if response.status_code != 200:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            detail = f"{body.get('error')}: {body.get('error_description')}"
        elif isinstance(body, list) and body and isinstance(body[0], dict):
            detail = f"{body[0].get('errorCode')}: {body[0].get('message')}"
        else:
            detail = response.text[:200]
        action = Action.RETRY if response.status_code >= 500 else Action.FAIL
        fault = Fault.TRANSIENT if action is Action.RETRY else Fault.CONFIG
        raise ConnectorError(
            f"login with {config.auth} at {config.login_url} refused ({response.status_code}): {detail}",
            ErrorRule(
                action,
                fault,
                "credentials refused" if action is Action.FAIL else "login failed",
                response.status_code,
                credentials=action is Action.FAIL,
            ),
        )
    body = response.json()
    return TokenGrant(body["access_token"], body["instance_url"])


def _assertion(config: SalesforceSettings) -> str:
    assert config.private_key_file
    key = Path(config.private_key_file).read_text()
    claims = {
        "iss": config.client_id,
        "sub": config.username,
        "aud": config.login_url.rstrip("/"),
        "exp": int(time.time()) + 180,
    }
    return jwt.encode(claims, key, algorithm="RS256")
