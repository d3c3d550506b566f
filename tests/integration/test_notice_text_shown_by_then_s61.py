"""An event's notice text is the one shown by the event's time: a grant recorded under a version
before any text of it was registered is not tied, in `subject show` and the export, to a text
registered later (black-box finding bb61 F8: the export claimed the person saw a text nobody was
shown then, Art. 7(1)); one registered with an earlier `--in-effect-from` is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import Cli


def _grant(cli: Cli, email: str, at: datetime, version: str) -> None:
    cli.ok(
        "ledger", "record", "--email", email, "--purpose", "email_marketing", "--status", "granted",
        "--source", "web_form", "--at", at.isoformat(), "--notice-version", version,
        "--evidence-ref", "form:1",
    )  # fmt: skip


def _shown(cli: Cli, email: str) -> list[str | None]:
    return [item["notice_sha256"] for item in cli.json("subject", "show", email)["history"]]


def test_a_text_registered_after_the_grant_is_not_the_one_it_showed(cli: Cli, tmp_path: Path) -> None:
    text = tmp_path / "notice.txt"
    text.write_text("Newsletter, written today\n")
    _grant(cli, "early@example.org", datetime.now(UTC) - timedelta(days=30), "v9")
    added = cli.ok("notice", "add", "email_marketing", str(text), "--version", "v9")
    # Said where the text is registered, with the command that dates it.
    assert "warning: 1 values recorded under email_marketing v9" in added.stderr
    assert "--in-effect-from" in added.stderr
    _grant(cli, "late@example.org", datetime.now(UTC), "v9")
    assert _shown(cli, "early@example.org") == [None]
    (late,) = _shown(cli, "late@example.org")
    assert late is not None and len(late) == 64


def test_a_text_registered_as_shown_since_before_the_grant_is_its_text(cli: Cli, tmp_path: Path) -> None:
    text = tmp_path / "notice.txt"
    text.write_text("Newsletter, as shown since last year\n")
    _grant(cli, "early@example.org", datetime.now(UTC) - timedelta(days=30), "v8")
    since = (datetime.now(UTC) - timedelta(days=365)).isoformat()
    add = ("notice", "add", "email_marketing", str(text), "--version", "v8", "--in-effect-from", since)
    dated = cli.ok(*add)
    assert "warning" not in dated.stderr
    (shown,) = _shown(cli, "early@example.org")
    assert shown is not None


def test_an_undated_grant_is_tied_to_the_text_registered_before_it_was_recorded(
    cli: Cli, tmp_path: Path
) -> None:
    text = tmp_path / "notice.txt"
    text.write_text("Newsletter\n")
    cli.ok("notice", "add", "email_marketing", str(text), "--version", "v7")
    # Undated: a script's (``Ledger.record``) or an older version's; ``ledger record`` asks --at.
    from consentsync.app import open_ledger
    from consentsync.config import load_config
    from consentsync.domain import ConsentStatus, Evidence, Origin
    from consentsync.ledger.identity import Identity

    ledger = open_ledger(load_config(cli.config_path))
    try:
        ledger.record(
            Identity(email="undated@example.org"),
            Evidence(
                purpose="email_marketing",
                channel="email",
                status=ConsentStatus.GRANTED,
                basis=None,
                event_time=None,
                observed_at=ledger.clock(),
                source="web_form",
                origin=Origin.CAPTURE,
                notice_version="v7",
                evidence_ref="form:1",
            ),
        )
    finally:
        ledger.engine.dispose()
    (shown,) = _shown(cli, "undated@example.org")
    assert shown is not None
