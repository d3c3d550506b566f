"""No secret and no raw email address ever appears in a log line: a full demo and a faulty run
are captured whole and searched for every address and secret they handled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from consentsync_salesforce.sandbox import SalesforceSandbox


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    consentsync = str(Path(sys.executable).parent / "consentsync")
    result = subprocess.run(
        [consentsync, "--log-level", "DEBUG", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Done, failed, CRM unreachable, stopped, credentials refused (consentsync.exit_codes).
    assert result.returncode in (0, 1, 69, 75, 77), result.stderr
    return result.stderr  # log lines go to stderr; stdout is the report meant for people


def test_logs_of_a_demo_and_a_faulty_run_hold_no_address_and_no_secret(tmp_path: Path) -> None:
    env = {**os.environ, "CONSENTSYNC_ERASURE_KEY": "erasure-key-not-for-logs-0123456789"}
    env.pop("CONSENTSYNC_CONFIG", None)
    logs = _run(["demo", "--records", "80", "--dir", str(tmp_path / "demo")], tmp_path, env)
    assert "sync.finished" in logs
    # A faulty run against a second sandbox: 5xx, resets, an expired session, locked rows.
    with SalesforceSandbox() as org:
        org.org.seed(80, seed=4)
        emails = {
            str(r["Email"]).lower()
            for kind in ("Contact", "Lead")
            for r in org.org.records(kind)
            if r.get("Email")
        }
        config = tmp_path / "demo" / "consentsync.yaml"
        text = config.read_text()
        demo_url = text.split("login_url: ", 1)[1].split("\n", 1)[0]
        ca = tmp_path / "faulty-ca.pem"
        ca.write_bytes(org.ca_cert_path.read_bytes())
        text = text.replace(demo_url, org.login_url).replace(
            str(tmp_path / "demo" / "sandbox-ca.pem"), str(ca)
        )
        config.write_text(text)
        org.faults.update(error_rate=0.2, reset_rate=0.05, session_expiry_after=5, seed=9)
        org.faults.lock_records(*[r["Id"] for r in org.org.records("Contact")][:10])
        env["CONSENTSYNC_DEMO_SF_SECRET"] = org.credentials.client_secret
        logs += _run(["--config", str(config), "sync", "salesforce-demo", "--full"], tmp_path, env)
        env["CONSENTSYNC_DEMO_SF_SECRET"] = "wrong-secret-must-not-be-logged"
        logs += _run(["--config", str(config), "sync", "salesforce-demo"], tmp_path, env)
        secrets = [
            org.credentials.client_secret,
            org.credentials.password,
            "wrong-secret-must-not-be-logged",
            "erasure-key-not-for-logs-0123456789",
        ]
    assert "crm.retry" in logs  # the faults were really met and logged
    lowered = logs.lower()
    leaked = sorted(e for e in emails if e in lowered)
    assert leaked == [], f"addresses in the logs: {leaked[:5]}"
    assert "@" not in logs.replace("integration@consentsync.sandbox", "")
    for secret in secrets:
        assert secret not in logs
    assert "Bearer " not in logs and "access_token" not in logs
