"""`consentsync sandbox VENDOR` prints the `connectors:` block to paste into consentsync.yaml and the
`export` lines of its secrets: pasted as printed, `consentsync sync` works against the sandbox."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests
import yaml

from consentsync.config import write_starter

CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")


def _printed(process: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """What the sandbox printed up to its export lines (or its exit)."""
    assert process.stdout is not None
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if any(line.startswith("export ") for line in out):
            time.sleep(0.1)  # the block is printed in one write: the rest is here too
            break
        time.sleep(0.05)
    return "".join(out)


def _block_and_exports(text: str) -> tuple[dict, dict[str, str]]:
    lines = text.splitlines()
    start = lines.index("connectors:")
    end = lines.index("", start)
    block = yaml.safe_load("\n".join(lines[start:end]))
    exports = {}
    for line in lines:
        if line.startswith("export "):
            name, _, value = shlex.split(line[len("export ") :])[0].partition("=")
            exports[name] = value
    return block, exports


def sync_as_pasted(block: dict, exports: dict[str, str], folder: Path, env: dict[str, str]) -> dict:
    """`consentsync init` then `sync --json` of the block's connector, with the block pasted into a
    starter config in ``folder`` and the exports in the environment: the sync's report."""
    config = folder / "consentsync.yaml"
    write_starter(config, f"sqlite:///{folder / 'ledger.db'}")
    data = yaml.safe_load(config.read_text())
    data["connectors"] = block["connectors"]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**env, "CONSENTSYNC_CONFIG": str(config)}
    assert subprocess.run([CONSENTSYNC, "init"], env=env, capture_output=True).returncode == 0
    run = subprocess.run(
        [CONSENTSYNC, "sync", block["connectors"][0]["name"], "--json"],
        env={**env, **exports},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("vendor", ["salesforce", "hubspot"])
def test_the_printed_block_and_exports_sync_with_the_sandbox(vendor: str, tmp_path: Path) -> None:
    sandbox = subprocess.Popen(
        [CONSENTSYNC, "sandbox", vendor, "--port", "0", "--seed", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        text = _printed(sandbox)
        assert "REQUESTS_CA_BUNDLE" not in text  # the connectors ignore it: no hint about it
        block, exports = _block_and_exports(text)
        (connector,) = block["connectors"]
        settings = connector["settings"]
        assert Path(settings["ca_bundle"]).is_file()  # the CA file the sandbox wrote
        # Every secret is a ${VAR} reference whose value is in the printed exports, never inline.
        refs = {v[2:-1] for v in settings.values() if isinstance(v, str) and v.startswith("${")}
        assert refs and refs == set(exports)
        assert not any(value in yaml.safe_dump(block) for value in exports.values())

        report = sync_as_pasted(block, exports, tmp_path, dict(os.environ))
        assert report["status"] == "succeeded"
        assert report["counts"]["read"] >= 30
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)


def _vtiger_session(settings: dict, access_key: str) -> tuple[requests.Session, str, str]:
    """A session on the sandbox's webservice as the printed user: (session, its URL, sessionName)."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override the sandbox's CA
    session.verify = settings["ca_bundle"]
    url = settings["url"].rstrip("/") + "/webservice.php"
    user = settings["username"]
    challenge = session.get(url, params={"operation": "getchallenge", "username": user}).json()
    key = hashlib.md5((challenge["result"]["token"] + access_key).encode()).hexdigest()
    login = session.post(url, data={"operation": "login", "username": user, "accessKey": key}).json()
    assert login["success"], login
    return session, url, login["result"]["sessionName"]


def test_the_printed_vtiger_block_reads_an_opt_out_ticked_after_the_first_sync(tmp_path: Path) -> None:
    """The block says the install's zone (server_timezone) and the sandbox serves modifiedtime in
    that zone, as a real install with a non-UTC $default_timezone does: an opt-out ticked after
    the first sync is read by the next one. (The block said America/Los_Angeles while the sandbox
    served UTC: every change after the first sync lay "in the future", 0 records read.)"""
    sandbox = subprocess.Popen(
        [CONSENTSYNC, "sandbox", "vtiger", "--port", "0", "--seed", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        block, exports = _block_and_exports(_printed(sandbox))
        settings = block["connectors"][0]["settings"]
        zone = ZoneInfo(settings["server_timezone"])
        assert zone.utcoffset(dt.datetime.now()) != dt.timedelta(0)  # the zone handling is exercised
        first = sync_as_pasted(block, exports, tmp_path, dict(os.environ))
        assert first["status"] == "succeeded" and first["counts"]["read"] >= 30

        # A CRM user ticks "Email Opt Out" on a contact the first sync read unticked.
        (access_key,) = exports.values()
        session, url, name = _vtiger_session(settings, access_key)
        with session:
            query = "SELECT id, email, emailoptout FROM Contacts LIMIT 0,100;"
            rows = session.get(url, params={"operation": "query", "sessionName": name, "query": query}).json()
            contact = next(r for r in rows["result"] if r["email"] and r["emailoptout"] == "0")
            element = json.dumps({"id": contact["id"], "emailoptout": "1"})
            ticked = session.post(url, data={"operation": "revise", "sessionName": name, "element": element})
            stamp = ticked.json()["result"]["modifiedtime"]

        time.sleep(3)  # a run reads up to signpost_lag_seconds (2) before it starts
        env = {**os.environ, "CONSENTSYNC_CONFIG": str(tmp_path / "consentsync.yaml"), **exports}
        second = subprocess.run(
            [CONSENTSYNC, "sync", block["connectors"][0]["name"], "--json"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout)["counts"]["read"] >= 1
        shown = subprocess.run(
            [CONSENTSYNC, "subject", "show", contact["email"], "--json"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        states = {(p["purpose"], p["channel"]): p["status"] for p in json.loads(shown.stdout)["purposes"]}
        assert states[("email_marketing", "email")] == "withdrawn", states
        # The stamp the sandbox served is wall-clock time in the printed zone, as the connector reads it.
        served = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
        assert abs(served - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=2), (stamp, zone)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
