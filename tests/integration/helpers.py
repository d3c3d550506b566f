"""What the integration tests share besides fixtures: a consent value to record, a connector of
the shipped mappings written into the test's config (against a sandbox: :func:`shipped_engine`),
a sandboxed Salesforce org for the crash config, and the daemon's metrics read over HTTP while it
runs."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync import yamlfile
from consentsync.app import open_connector, open_ledger
from consentsync.config import load_config
from consentsync.demo import find_mappings
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.service import Ledger, utcnow
from consentsync.sandbox.server import HttpsSandbox
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.integration.crash_config import write_config
from tests.sandbox.serving import serve_seeded

ROOT = Path(__file__).resolve().parents[2]


def consent_value(
    status: ConsentStatus,
    at: datetime | None,
    observed_at: datetime,
    *,
    purpose: str = "email_marketing",
    channel: str = "email",
    basis: LawfulBasis | None = LawfulBasis.CONSENT,
    source: str = "web_form",
    origin: Origin = Origin.CAPTURE,
    **more: Any,
) -> Evidence:
    """A value to record, by default for email marketing by email on consent, given on the web
    form, as most tests record one; ``more`` sets the rest (notice_version, actor, ...)."""
    return Evidence(purpose, channel, status, basis, at, observed_at, source, origin, **more)


def mapping_text(vendor: str, object_type: str, identity: tuple[str, str, str], consents: str) -> str:
    """A mapping file's text for a test's own connector: the header every mapping carries (version
    1, ``vendor``, ``object_type``, the ``identity`` fields: record id, modstamp and email), then
    ``consents``, its list in YAML."""
    record_id, modstamp, email = identity
    return "\n".join(
        [
            "version: 1",
            f"vendor: {vendor}",
            f"object: {object_type}",
            f"identity: {{record_id: {record_id}, modstamp: {modstamp}, email: {email}}}",
            "consents:",
            consents,
        ]
    )


def shipped_mappings(vendor: str, *names: str) -> list[str]:
    """The paths of mapping files ``vendor``'s connector ships (connectors/consentsync_<vendor>)."""
    return [str(ROOT / f"connectors/consentsync_{vendor}/mappings" / name) for name in names]


def sandbox_engine(
    ledger: Ledger, config_path: Path, connector: dict[str, Any], options: SyncOptions
) -> SyncEngine:
    """A sync engine on ``ledger`` for ``connector`` (a config entry: name, vendor, mappings,
    settings), written into the test's config as its only connector. The ledger's clock becomes
    the real one: a sandbox stamps its records with the real time, and the run's signpost follows."""
    data = yamlfile.loads(config_path.read_text())
    data["connectors"] = [connector]
    config_path.write_text(yamlfile.dumps(data))
    opened, mappings = open_connector(load_config(config_path), connector["name"])
    ledger.clock = utcnow
    return SyncEngine(ledger, opened, mappings, options)


def shipped_engine(
    ledger: Ledger,
    config_path: Path,
    sandbox: HttpsSandbox,
    name: str,
    vendor: str,
    mappings: Sequence[str],
    settings: Mapping[str, Any],
    options: SyncOptions,
) -> SyncEngine:
    """A :func:`sandbox_engine` for connector ``name`` of ``vendor`` with its shipped ``mappings``
    (file names), against the running ``sandbox``: its connection settings, then ``settings``."""
    connector = {
        "name": name,
        "vendor": vendor,
        "mappings": shipped_mappings(vendor, *mappings),
        "settings": {**sandbox.connection_settings(), **settings},
    }
    return sandbox_engine(ledger, config_path, connector, options)


def seeded_org(people: int, seed: int) -> Iterator[SalesforceSandbox]:
    """For a fixture to ``yield from``: a Salesforce sandbox seeded with ``people`` people."""
    yield from serve_seeded(SalesforceSandbox(), lambda sandbox: sandbox.org.seed(people, seed=seed))


def migrated_crash_config(
    directory: Path, org: SalesforceSandbox, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The crash tests' config (tests/integration/crash_config.py) for ``org`` with the shipped
    mappings, its ledger at ``ledger_url`` migrated; the client secret is in the environment."""
    monkeypatch.setenv("CRASHTEST_SF_SECRET", org.credentials.client_secret)
    path = write_config(directory, org, find_mappings(), ledger_url)
    open_ledger(load_config(path), migrate=True).engine.dispose()
    return path


def free_port() -> int:
    """A local TCP port nobody listens on (for the daemon's metrics server)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def local_session() -> requests.Session:
    """An HTTP session to the daemon on 127.0.0.1 that no proxy setting of the machine diverts."""
    session = requests.Session()
    session.trust_env = False
    return session


def scrape_until(
    session: requests.Session, port: int, done: Callable[[str], bool], *, pause: float = 0.3
) -> str:
    """Read the daemon's /metrics on ``port`` until ``done`` holds of the text or 30 seconds have
    passed; returns the last text read ("" while the server does not answer)."""
    deadline = time.monotonic() + 30
    metrics = ""
    while time.monotonic() < deadline:
        try:
            metrics = session.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except requests.ConnectionError:
            metrics = ""
        if done(metrics):
            break
        time.sleep(pause)
    return metrics


def holding_env(held: Path, failpoints: str) -> dict[str, str]:
    """The environment of a `consentsync` process that stops at ``failpoints`` (their ``hold``
    markers in ``held``, made here), without the caller's config from the environment."""
    held.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CONSENTSYNC_FAILPOINTS": failpoints, "CONSENTSYNC_FAILPOINT_DIR": str(held)}
    env.pop("CONSENTSYNC_CONFIG", None)
    return env


def wait_until_held(process: Any, marker: Path, point: str, within: float = 60) -> None:
    """Waits until ``process`` is held at its failpoint (``marker`` exists): ``point`` says where,
    for the failure message."""
    deadline = time.monotonic() + within
    while not marker.exists():
        assert process.poll() is None, f"the run ended before {point}"
        assert time.monotonic() < deadline, f"the run did not reach {point} within {within:g} s"
        time.sleep(0.05)


def outbox_row(ledger: Any, subject_id: int, **values: Any) -> int:
    """An outbox row of a pending Salesforce opt-out push (``values`` override); its id."""
    import uuid

    from sqlalchemy import insert

    from consentsync.ledger.schema import outbox

    row = {
        "connector": "salesforce",
        "object_type": "Contact",
        "record_id": f"003{uuid.uuid4().hex[:15]}",
        "subject_id": subject_id,
        "fields": '{"HasOptedOutOfEmail":true}',
        "suppression": True,
        "rule": "withdrawal",
        "created_at": ledger.clock(),
        "status": "pending",
        "attempts": 0,
        **values,
    }
    with ledger.engine.begin() as conn:
        return int(conn.execute(insert(outbox).values(row)).inserted_primary_key[0])


def add_absent_salesforce(config_path: Path, secret: str = "not-a-secret", **extra: Any) -> None:
    """Gives the config one Salesforce connector whose CRM is not there (a free local port):
    `run` and `web` refuse a config without a connector, and its runs fail while the process
    lives on. ``extra`` adds keys to the connector (a schedule, say)."""
    data = yamlfile.loads(config_path.read_text())
    root = Path(__file__).resolve().parents[2]
    data["connectors"] = [
        {
            "name": "sf",
            "vendor": "salesforce",
            "mappings": [str(root / "connectors/consentsync_salesforce/mappings/contact.yaml")],
            "settings": {
                "login_url": f"https://127.0.0.1:{free_port()}",
                "auth": "client_credentials",
                "client_id": "id",
                "client_secret": secret,
            },
            **extra,
        }
    ]
    config_path.write_text(yamlfile.dumps(data))
