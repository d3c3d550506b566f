"""The hub's commands as an admin uses them: API keys (the secret shown once, never listed),
notices (a version names one text forever), a person's preference link, lapsing."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.hub.api import KEY_CACHE_SECONDS, create_app
from consentsync.hub.capture import Hub
from consentsync.hub.preferences import PreferenceCentre
from tests.conftest import SQLITE_ONLY, Cli


@SQLITE_ONLY
def test_api_keys_from_the_command_line(cli: Cli, tmp_path: Path) -> None:
    made = cli.json(
        "apikey", "add", "website", "--source", "web_form", "--purposes", "email_marketing,profiling"
    )
    secret = made["secret"]
    assert secret.startswith("csk_") and made["actions"] == ["consents", "decisions"]
    listed = cli.ok("apikey", "list").stdout
    assert "website" in listed and made["prefix"] in listed and secret not in listed
    assert secret not in cli.ok("apikey", "list", "--json").stdout
    bad = cli("apikey", "add", "other", "--source", "web_form", "--actions", "launch")
    assert bad.exit_code == 2 and "unknown 'launch'" in bad.stderr and "Traceback" not in bad.stderr
    again = cli("apikey", "add", "website", "--source", "web_form")
    assert again.exit_code == 2 and "exists already" in again.stderr
    # A repeated option adds to the list (click alone would keep the last one, silently).
    repeated = cli.json(
        "apikey", "add", "mailer", "--source", "esp",
        "--actions", "decisions", "--actions", "objections,erasure",
        "--purposes", "email_marketing", "--purposes", "profiling",
    )  # fmt: skip
    assert sorted(repeated["actions"]) == ["decisions", "erasure", "objections"]
    assert sorted(repeated["purposes"]) == ["email_marketing", "profiling"]

    config = load_config(cli.config_path)
    ledger = open_ledger(config)
    client = TestClient(create_app(Hub(config, ledger)))
    ask = {"email": "ada@example.test", "purpose": "profiling"}
    assert (
        client.post("/decisions", json=ask, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    )
    cli.ok("apikey", "revoke", "website")
    time.sleep(KEY_CACHE_SECONDS)  # the API trusts a key it looked up for that long
    assert (
        client.post("/decisions", json=ask, headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    )
    assert cli("apikey", "revoke", "website").exit_code == 2
    ledger.engine.dispose()


@SQLITE_ONLY
def test_notices_and_links(cli: Cli, tmp_path: Path) -> None:
    text = tmp_path / "notice.txt"
    text.write_text("Wir schicken Ihnen Angebote per E-Mail. Abmelden jederzeit: 🙂\n", encoding="utf-8")
    added = cli.json("notice", "add", "email_marketing", str(text), "--version", "v1", "--language", "de")
    assert len(added["sha256"]) == 64
    assert (
        cli.json("notice", "add", "email_marketing", str(text), "--version", "v1", "--language", "de")
        == added
    )
    text.write_text("Another text\n", encoding="utf-8")
    changed = cli("notice", "add", "email_marketing", str(text), "--version", "v1", "--language", "de")
    assert changed.exit_code == 2 and "a version names one text forever" in changed.stderr
    assert cli.ok("notice", "show", "email_marketing", "v1").stdout.startswith("Wir schicken")
    missing = cli("notice", "add", "email_marketing", str(tmp_path / "nope.txt"), "--version", "v2")
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    assert "email_marketing" in cli.ok("notice", "list").stdout

    unknown = cli("link", "ada@example.test")
    assert unknown.exit_code == 2 and "no subject" in unknown.stderr
    cli.ok("objection", "raise", "--email", "ada@example.test", "--purpose", "profiling")
    url = cli.ok("link", "Ada@Example.test").stdout.strip()
    assert url.startswith("http://127.0.0.1:8080/p/preferences/")
    config = load_config(cli.config_path)
    ledger = open_ledger(config)
    person = PreferenceCentre(Hub(config, ledger)).person(url.rsplit("/", 1)[1])
    assert person.email == "ada@example.test"
    assert cli.ok("hub", "lapse").stdout.startswith("0 unconfirmed")
    ledger.engine.dispose()


@SQLITE_ONLY
def test_requests_that_could_not_be_mailed_exit_69_and_record_nothing(cli: Cli, tmp_path: Path) -> None:
    """No mail server configured: every mail fails. The command says so in one line and exits
    69 (a scheduler retries), and the people stay among those to ask."""
    # A consent purpose that is not marketing: a request for a marketing one is mailed only to
    # people we may e-mail marketing already (tests/hub/test_s60_requests_gpc_proof.py).
    surveys = "  - key: surveys\n    name: Surveys\n    default_basis: consent\n    channels: [email]\n\n"
    config = cli.config_path.read_text(encoding="utf-8")
    cli.config_path.write_text(
        config.replace("  - key: service\n", surveys + "  - key: service\n"), encoding="utf-8"
    )
    text = tmp_path / "notice.txt"
    text.write_text("A short survey by email, twice a year.\n", encoding="utf-8")
    cli.ok("notice", "add", "surveys", str(text), "--version", "v1")
    cli.ok("objection", "raise", "--email", "ada@example.test", "--purpose", "profiling")
    assert "1 person(s) would be asked" in cli.ok("hub", "requests", "surveys", "--dry-run").stdout
    failed = cli("hub", "requests", "surveys")
    assert failed.exit_code == 69, failed.output
    assert "0 consent request(s) sent for surveys, 1 failed" in failed.stdout
    *logged, line = failed.stderr.strip().splitlines()  # the hub.mail_failed warning, then why
    assert line.startswith("consentsync: error: 1 consent request(s) could not be mailed")
    assert all("hub.mail_failed" in entry and "ada@" not in entry for entry in logged)
    assert "1 person(s) would be asked" in cli.ok("hub", "requests", "surveys", "--dry-run").stdout
