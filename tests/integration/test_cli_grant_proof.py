"""``consentsync ledger record`` holds a grant to the proof the capture API asks (regulatory
tester, finding A; Art. 7(1)), on SQLite and PostgreSQL.

Before: ``ledger record --status granted --source web_form`` with no ``--at``, no
``--notice-version``, no ``--evidence-ref`` and no double opt-in recorded the grant (exit 0,
``evidenced: False``, rule ``unknown_event_time_most_restrictive``) and made the person
contactable, for a purpose whose registered notices the capture API would have made it name (422
``a grant must name the notice version shown``). Now the CLI follows the API's rule
(``hub.notices.check_grant_notice``, which both call): a grant names a registered notice version
of its purpose; a purpose without any registered notice takes a version as given, or an evidence
reference or a double opt-in time instead; and it is dated (``--at``: the API dates a capture at
its receipt, ops enter one later). A grant without its proof is refused in one line naming the
missing option and what is accepted (exit 2), and nothing is recorded. A no is never refused for
want of proof: it can only protect the person."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from consentsync import exit_codes
from tests.conftest import Cli, one_line_error, record_args

EMAIL = "proof@example.test"
AT = ("--at", "2026-11-02T10:00:00Z")


def _register(cli: Cli, tmp_path: Path, purpose: str, version: str) -> None:
    text = tmp_path / f"notice-{purpose}-{version}.txt"
    text.write_text("We send offers by email about twice a month.\n", encoding="utf-8")
    cli.ok(
        "notice", "add", purpose, str(text), "--version", version, "--in-effect-from", "2026-11-01T00:00:00Z"
    )


def _counts(cli: Cli) -> tuple[int, int]:
    """Consent events and audit entries: a refused record writes neither."""
    from consentsync.app import open_ledger
    from consentsync.config import load_config
    from consentsync.ledger.schema import audit_head, consent_events

    ledger = open_ledger(load_config(cli.config_path))
    try:
        with ledger.engine.connect() as conn:
            return (
                conn.execute(select(func.count()).select_from(consent_events)).scalar_one(),
                conn.execute(select(audit_head.c.seq)).scalar_one(),
            )
    finally:
        ledger.engine.dispose()


def _refused(cli: Cli, purpose: str, *extra: str, needles: tuple[str, ...]) -> str:
    before = _counts(cli)
    result = cli(*record_args(EMAIL, purpose, "granted", *extra))
    line = one_line_error(result, exit_codes.CONFIG, *needles)
    assert result.stdout == "" and EMAIL not in line
    assert _counts(cli) == before  # no event, no audit entry
    return line


def _granted(cli: Cli, purpose: str, *extra: str) -> dict[str, Any]:
    after = cli.json(*record_args(EMAIL, purpose, "granted", *extra))["after"]
    assert (after["status"], after["suppressed"], after["evidenced"]) == ("granted", False, True)
    return dict(after)


def test_the_testers_repro_a_grant_with_no_proof_is_refused_and_nobody_becomes_contactable(
    cli: Cli, tmp_path: Path
) -> None:
    _register(cli, tmp_path, "email_marketing", "v1")
    line = _refused(
        cli,
        "email_marketing",
        needles=(
            "--notice-version: a grant must name the notice version shown",  # the API's words
            "registered for 'email_marketing': 'v1'",  # what is accepted
        ),
    )
    assert "Traceback" not in line
    assert cli("subject", "show", EMAIL).exit_code != 0  # nobody recorded, nobody to contact


def test_a_grant_for_a_purpose_with_notices_names_one_of_them_and_its_time(cli: Cli, tmp_path: Path) -> None:
    _register(cli, tmp_path, "email_marketing", "v1")
    # Another proof does not stand in for the notice the API asks for.
    _refused(cli, "email_marketing", *AT, "--evidence-ref", "call:42", needles=("--notice-version: ",))
    _refused(
        cli, "email_marketing", *AT, "--notice-version", "v2", needles=("'v2' is not a registered notice",)
    )
    # The notice named, the time not: an undated grant proves nothing.
    _refused(cli, "email_marketing", "--notice-version", "v1", needles=("--at: ", "ISO 8601"))
    _refused(
        cli,
        "email_marketing",
        "--notice-version",
        "v1",
        "--double-opt-in-at",
        "2026-11-02T10:00:00Z",
        needles=("--at: ",),
    )
    after = _granted(cli, "email_marketing", *AT, "--notice-version", "v1")
    assert after["rule"] == "latest_event_time"


def test_a_purpose_without_notices_takes_a_version_or_another_proof_and_a_time(cli: Cli) -> None:
    line = _refused(cli, "profiling", needles=("a grant needs its proof",))
    for option in ("--notice-version", "--evidence-ref", "--double-opt-in-at", "no notice registered"):
        assert option in line
    _refused(cli, "profiling", "--evidence-ref", "call:42", needles=("--at: ",))
    _refused(cli, "profiling", *AT, needles=("a grant needs its proof",))
    _granted(cli, "profiling", *AT, "--evidence-ref", "call:42")
    _granted(cli, "profiling", "--at", "2026-11-03T10:00:00Z", "--notice-version", "kept-elsewhere-3")
    _granted(cli, "profiling", "--at", "2026-11-04T10:00:00Z", "--double-opt-in-at", "2026-11-04T10:05:00Z")


def test_a_no_needs_no_proof(cli: Cli, tmp_path: Path) -> None:
    _register(cli, tmp_path, "email_marketing", "v1")
    for status in ("withdrawn", "refused"):
        after = cli.json(*record_args(EMAIL, "email_marketing", status))["after"]
        assert after["status"] == status and after["suppressed"] is True
