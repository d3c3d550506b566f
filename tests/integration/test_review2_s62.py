"""``ledger record --notice-language`` names a registered text of the notice version, as the
capture API's ``language`` does (session 62 review 2, findings 3 and 4; docs/admin-commands.md).

Before: with v1 registered in English only, ``ledger record ... granted --at ... --notice-version
v1 --notice-language fr`` exited 0 and the person's export named no text for the grant (the API
refuses it: 422). A grant is now refused unless the version had a text in that language in effect
at ``--at`` (``hub.notices.check_language``, the API's rule; exit 2, nothing recorded); a no is
never refused for it, and keeps the language only where such a text was in effect. A malformed
tag, or one without ``--notice-version``, is refused naming the option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consentsync import exit_codes
from tests.conftest import Cli, one_line_error, record_args
from tests.integration.test_cli_grant_proof import AT, EMAIL, _counts, _register

V1 = ("--notice-version", "v1")


def _history(cli: Cli, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "export.json"
    cli.ok("subject", "export", EMAIL, "--format", "json", "--output", str(out), "--force")
    return list(json.loads(out.read_text(encoding="utf-8"))["history"])


def _refused(cli: Cli, status: str, *extra: str, needles: tuple[str, ...]) -> str:
    before = _counts(cli)
    line = one_line_error(
        cli(*record_args(EMAIL, "email_marketing", status, *extra)), exit_codes.CONFIG, *needles
    )
    assert _counts(cli) == before  # no event, no audit entry
    return line


def test_a_grant_in_a_language_the_version_had_no_text_in_then_is_refused(cli: Cli, tmp_path: Path) -> None:
    _register(cli, tmp_path, "email_marketing", "v1")  # English, in effect from 2026-11-01
    line = _refused(
        cli,
        "granted",
        *AT,
        *V1,
        "--notice-language",
        "fr",
        needles=(
            "--notice-language: notice 'v1' of purpose 'email_marketing' has no text in 'fr'",
            "it has en",
        ),
    )
    assert EMAIL not in line
    # A French text shown only from after --at is not what the person saw then.
    french = tmp_path / "fr.txt"
    french.write_text("Nous envoyons des offres par courriel.\n", encoding="utf-8")
    cli.ok(
        "notice", "add", "email_marketing", str(french), "--version", "v1", "--language", "fr",
        "--in-effect-from", "2026-11-03T00:00:00Z",
    )  # fmt: skip
    _refused(cli, "granted", *AT, *V1, "--notice-language", "fr", needles=("has no text in 'fr'",))
    cli.ok(*record_args(EMAIL, "email_marketing", "granted", *AT, *V1, "--notice-language", "en"))
    later = ("--at", "2026-11-04T10:00:00Z")
    cli.ok(*record_args(EMAIL, "email_marketing", "granted", *later, *V1, "--notice-language", "fr"))
    shown = [(item["notice_language"], item["notice_sha256"] is not None) for item in _history(cli, tmp_path)]
    assert sorted(shown) == [("en", True), ("fr", True)]


def _languages(cli: Cli) -> list[tuple[str, str | None]]:
    """Each event's status and the language recorded as shown (the export names the version's
    first text for an event that recorded none, so the column is read)."""
    from sqlalchemy import select

    from consentsync.app import open_ledger
    from consentsync.config import load_config
    from consentsync.ledger.schema import consent_events

    ledger = open_ledger(load_config(cli.config_path))
    try:
        with ledger.engine.connect() as conn:
            query = select(consent_events.c.status, consent_events.c.notice_language)
            return sorted((status, language) for status, language in conn.execute(query))
    finally:
        ledger.engine.dispose()


def test_a_no_keeps_the_language_only_where_the_version_had_a_text_in_it(cli: Cli, tmp_path: Path) -> None:
    _register(cli, tmp_path, "email_marketing", "v1")
    cli.ok(*record_args(EMAIL, "email_marketing", "withdrawn", *AT, *V1, "--notice-language", "fr"))
    later = ("--at", "2026-11-02T11:00:00Z")
    cli.ok(*record_args(EMAIL, "email_marketing", "refused", *later, *V1, "--notice-language", "en"))
    assert _languages(cli) == [("refused", "en"), ("withdrawn", None)]


def test_a_malformed_or_versionless_language_is_refused_naming_the_option(cli: Cli, tmp_path: Path) -> None:
    _register(cli, tmp_path, "email_marketing", "v1")
    for status in ("granted", "withdrawn"):
        _refused(
            cli,
            status,
            *AT,
            *V1,
            "--notice-language",
            "FR",
            needles=("error: --notice-language: 'FR'", "pt-BR"),
        )
        _refused(
            cli, status, *AT, "--evidence-ref", "x", "--notice-language", "en",
            needles=("error: --notice-language: given without --notice-version",),
        )  # fmt: skip
