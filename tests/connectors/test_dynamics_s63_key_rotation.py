"""bb63 crm2 F1: the Journeys consent rows the connector creates are known as its own by ids
derived under a key (journeys.row_id), by default the client secret. Entra client secrets expire
and are rotated; a rotation must not turn the connector's own Opted out rows, deactivated by a
marketer, into the person's no (which would override their newer opt-in: bb59b F1 again).

``own_rows_secret`` is a key of its own that outlives rotations; ``earlier_own_rows_secrets``
keeps the rows created under an earlier key (the client secret before its rotation) known."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from consentsync_dynamics import journeys
from consentsync_dynamics.sandbox.server import DynamicsSandbox
from consentsync_dynamics.settings import DynamicsSettings
from pydantic import ValidationError

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from consentsync.sdk.errors import scrub
from consentsync.sync.engine import SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import consent_value, shipped_engine
from tests.integration.test_dynamics_journeys_rows import MAPPINGS, _contact, _rows, _said, dv  # noqa: F401
from tests.integration.test_dynamics_s59c_readback import CONSENTS, MARKETER, _audited, _state

OWN_ROWS_SECRET = "own-rows~stable~key~0123456789abcdef"
ROTATED = "consentsync~sandbox~rotated~secret"


def _run(ledger: Ledger, config_path: Path, dv: DynamicsSandbox, settings: dict[str, Any], **kw: Any) -> Any:  # noqa: F811
    options = SyncOptions(batch_size=50, signpost_lag_seconds=0)
    engine = shipped_engine(
        ledger, config_path, dv, "dyn", "dynamics", MAPPINGS, {"page_size": 40, **settings}, options
    )
    report = engine.run(**kw)
    assert report.status == "succeeded", report.error
    return report


def _own_row_after_a_newer_opt_in(
    ledger: Ledger,
    config_path: Path,
    dv: DynamicsSandbox,  # noqa: F811
    email: str,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The person's no creates the connector's Opted out row (under ``settings``); they then opt
    in again (trusted, newer): the ledger says granted, the row still says Opted out."""
    _contact(dv, email)
    _run(ledger, config_path, dv, settings, full=True)
    _said(ledger, email, ConsentStatus.WITHDRAWN)
    _run(ledger, config_path, dv, settings)
    (row,) = _rows(dv, email)
    time.sleep(1.1)  # the opt-in is newer than the no, in whole seconds
    now = datetime.now(UTC)
    ledger.record(Identity(email=email), consent_value(ConsentStatus.GRANTED, now, now, notice_version="v1"))
    _run(ledger, config_path, dv, settings)
    assert _state(ledger, email) is ConsentStatus.GRANTED
    time.sleep(1.1)  # the edit below is stamped after the row's creation
    return row


def _rotate_and_deactivate(dv: DynamicsSandbox, row: dict[str, Any]) -> None:  # noqa: F811
    # The admin rotates the expiring app secret (Certificates & secrets): same app, new value;
    # then a marketer deactivates the connector's row without touching its value (audited).
    dv.credentials.client_secret = ROTATED
    dv.environment.update(
        CONSENTS, str(row["msdynmkt_contactpointconsent4id"]), {"statecode": 1, "statuscode": 2}, by=MARKETER
    )


@SQLITE_ONLY
def test_rows_made_under_own_rows_secret_outlive_a_client_secret_rotation(
    ledger: Ledger,
    config_path: Path,
    dv: DynamicsSandbox,  # noqa: F811
) -> None:
    _audited(dv)
    email = "pat@example.test"
    settings = {"own_rows_secret": OWN_ROWS_SECRET}
    row = _own_row_after_a_newer_opt_in(ledger, config_path, dv, email, settings)
    # Created under own_rows_secret, not the client secret.
    purpose = str(row["_msdynmkt_purposeid_value"])
    assert row["msdynmkt_contactpointconsent4id"] == journeys.row_id(OWN_ROWS_SECRET.encode(), purpose, email)
    _rotate_and_deactivate(dv, row)
    _run(ledger, config_path, dv, settings)
    assert _state(ledger, email) is ConsentStatus.GRANTED


@SQLITE_ONLY
@pytest.mark.parametrize(
    "after",
    [
        # No own_rows_secret: the old client secret is kept as an earlier key at the rotation.
        {"earlier_own_rows_secrets": ["consentsync~sandbox~client~secret"]},
        # own_rows_secret set at the rotation, the client secret the rows were made under kept.
        {
            "own_rows_secret": OWN_ROWS_SECRET,
            "earlier_own_rows_secrets": ["consentsync~sandbox~client~secret"],
        },
    ],
    ids=["old-secret-kept", "own-rows-secret-set-at-rotation"],
)
def test_rows_made_under_an_earlier_key_stay_the_connectors_own(
    ledger: Ledger,
    config_path: Path,
    dv: DynamicsSandbox,  # noqa: F811
    after: dict[str, Any],
) -> None:
    _audited(dv)
    email = "pat@example.test"
    assert dv.credentials.client_secret == "consentsync~sandbox~client~secret"
    row = _own_row_after_a_newer_opt_in(ledger, config_path, dv, email, {})
    _rotate_and_deactivate(dv, row)
    _run(ledger, config_path, dv, after)
    assert _state(ledger, email) is ConsentStatus.GRANTED


@SQLITE_ONLY
def test_new_rows_use_the_current_key_only(
    ledger: Ledger,
    config_path: Path,
    dv: DynamicsSandbox,  # noqa: F811
) -> None:
    # An earlier key recognises rows; it never makes one.
    email = "sam@example.test"
    settings = {"own_rows_secret": OWN_ROWS_SECRET, "earlier_own_rows_secrets": ["an-earlier-client-secret"]}
    _contact(dv, email)
    _run(ledger, config_path, dv, settings, full=True)
    _said(ledger, email, ConsentStatus.WITHDRAWN)
    _run(ledger, config_path, dv, settings)
    (row,) = _rows(dv, email)
    purpose = str(row["_msdynmkt_purposeid_value"])
    assert row["msdynmkt_contactpointconsent4id"] == journeys.row_id(OWN_ROWS_SECRET.encode(), purpose, email)


def _settings(**extra: Any) -> DynamicsSettings:
    return DynamicsSettings.model_validate(
        {
            "environment_url": "https://org.crm4.dynamics.com",
            "token_url": "https://login.microsoftonline.com/t/oauth2/v2.0/token",
            "client_id": "id",
            "client_secret": "client-secret-value",
            **extra,
        }
    )


def test_keys_default_to_the_client_secret_and_list_the_current_key_first() -> None:
    assert _settings().own_rows_keys == (b"client-secret-value",)
    settings = _settings(own_rows_secret=OWN_ROWS_SECRET, earlier_own_rows_secrets=["old", OWN_ROWS_SECRET])
    assert settings.own_rows_keys == (OWN_ROWS_SECRET.encode(), b"client-secret-value", b"old")
    with pytest.raises(ValidationError, match="own_rows_secret"):
        _settings(own_rows_secret="short")


def test_an_unset_own_rows_secret_is_warned_about_once_without_a_secret() -> None:
    from consentsync_dynamics.connector import DynamicsConnector

    base = {
        "environment_url": "https://org.crm4.dynamics.com",
        "token_url": "https://login.microsoftonline.com/t/oauth2/v2.0/token",
        "client_id": "id",
        "client_secret": "client-secret-value-0123",
        "earlier_own_rows_secrets": ["Q7x9Zr2LmN4pWv8K"],
    }
    connector = DynamicsConnector("dyn", base)
    with structlog.testing.capture_logs() as logs:
        connector._own_rows_keys()
        connector._own_rows_keys()
    warned = [e for e in logs if e["event"] == "dynamics.own_rows_secret_unset"]
    assert len(warned) == 1
    assert "client-secret-value" not in str(warned) and "Q7x9Zr2LmN4pWv8K" not in str(warned)
    connector = DynamicsConnector("dyn", {**base, "own_rows_secret": OWN_ROWS_SECRET})
    with structlog.testing.capture_logs() as logs:
        connector._own_rows_keys()
    assert not [e for e in logs if e["event"] == "dynamics.own_rows_secret_unset"]
    # Every one of the keys is redacted from errors and logs, the listed earlier ones too (the
    # sdk finds secrets by a setting's name, and a list's items are not strings under a name).
    echoed = scrub(f"refused: {OWN_ROWS_SECRET} Q7x9Zr2LmN4pWv8K")
    assert OWN_ROWS_SECRET not in echoed and "Q7x9Zr2LmN4pWv8K" not in echoed
