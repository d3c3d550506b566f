"""`consentsync sandbox hubspot` runs the sandbox as its own process until stopped."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import stop


def test_the_command_serves_a_seeded_portal(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from consentsync.cli import main; main()",
            "sandbox",
            "hubspot",
            "--port",
            "0",
            "--seed",
            "25",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        while time.monotonic() < deadline and not any("seeded" in line for line in lines):
            lines.append(process.stdout.readline())
        text = "".join(lines)
        url = re.search(r"API URL\s+(\S+)", text)
        ca = re.search(r"CA certificate\s+(\S+)", text)
        token = re.search(r"access token\s+(\S+)", text)
        assert url and ca and token, text
        answer = requests.get(
            f"{url.group(1)}/crm/v3/objects/contacts",
            params={"limit": 100},
            headers={"Authorization": f"Bearer {token.group(1)}"},
            verify=ca.group(1),
            timeout=10,
        )
        assert answer.status_code == 200 and len(answer.json()["results"]) == 25
    finally:
        stop(process, signal.SIGINT, timeout=10)
