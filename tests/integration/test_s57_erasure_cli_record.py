"""`consentsync ledger record` applies the capture API's rule to an erased address (on SQLite and
PostgreSQL): a grant from a source that is not trusted, for an address erased that nobody came
back with, is refused in one line naming the option, exit 2, nothing recorded (the capture API
answers 409). Before, it stored the erased address again on a new person (suppressed all the
same) and said "recorded".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from consentsync import exit_codes
from consentsync.ledger.schema import audit_head, consent_events, subject_identifiers, subjects
from tests.conftest import Cli, proof, record_args

ADDRESS = "gone@example.org"


def _counts(cli: Cli) -> tuple[int, int, int, int]:
    from consentsync.app import open_ledger
    from consentsync.config import load_config

    ledger = open_ledger(load_config(cli.config_path))
    try:
        with ledger.engine.connect() as conn:
            return (
                conn.execute(select(func.count()).select_from(subjects)).scalar_one(),
                conn.execute(select(func.count()).select_from(subject_identifiers)).scalar_one(),
                conn.execute(select(func.count()).select_from(consent_events)).scalar_one(),
                conn.execute(select(audit_head.c.seq)).scalar_one(),
            )
    finally:
        ledger.engine.dispose()


def test_an_untrusted_grant_for_an_erased_address_is_refused_and_changes_nothing(cli: Cli) -> None:
    cli.ok(*record_args(ADDRESS, "email_marketing", "granted", *proof(), source="web_form"))
    cli.ok("erase", "--email", ADDRESS, "--reason", "ticket 7", "--yes")
    before = _counts(cli)
    # With its proof: the source is what keeps it from lifting the erasure.
    result = cli(*record_args(ADDRESS, "email_marketing", "granted", *proof(), source="crm_import"))
    assert result.exit_code == exit_codes.CONFIG, result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("consentsync: error: --email: the address was erased; a grant from source "), line
    assert "'crm_import'" in line and "nothing was recorded" in line
    assert ADDRESS not in line and "Traceback" not in result.output
    assert _counts(cli) == before  # no person, no address, no event, no audit entry


def test_a_no_and_a_trusted_grant_for_an_erased_address_are_still_recorded(cli: Cli) -> None:
    """What the rule leaves as it was: a no is kept as the address's keyed hash (it never stores
    the address), and a trusted source's grant is the person coming back (lifting the
    suppression only when dated after the erasure; one that could not lift it is refused:
    test_s57_erased_trusted_record)."""
    cli.ok("erase", "--email", ADDRESS, "--reason", "ticket 8", "--yes")
    cli.ok(*record_args(ADDRESS, "email_marketing", "withdrawn", source="crm_import"))
    assert _counts(cli)[1] == 0  # the no held the address as its keyed hash only
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    comes_back = ("--at", later, "--notice-version", "v1")
    cli.ok(*record_args(ADDRESS, "email_marketing", "granted", *comes_back, source="web_form"))
    assert _counts(cli)[1] == 1
