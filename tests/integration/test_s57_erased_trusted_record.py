"""`consentsync ledger record` / ``Ledger.record`` / ``Ledger.record_many`` refuse a grant for an
erased address that cannot lift the erasure, by the capture API's one rule (``lifts_erasure``,
``unliftable_erased_grant``; the API answers 409), on SQLite and PostgreSQL.

Found by the review of 18dd9df: only an untrusted source's grant was refused. A trusted source's
grant dated before the erasure (evidence delivered late), undated, or without its proof was
recorded, storing the erased address again in plaintext on a new person who stayed suppressed
all the same (Art. 17, Art. 5(1)(c)), while the capture API refused the same grant.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from consentsync import exit_codes
from consentsync.domain import ConsentStatus, Evidence
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import consent_events, subject_identifiers
from consentsync.ledger.service import ErasedAddressRefused, Ledger, RecordRequest
from tests.conftest import Cli, Clock, record_args
from tests.integration.helpers import consent_value
from tests.integration.test_s57_erasure_cli_record import _counts

ADDRESS = "gone@example.org"


def _holders(ledger: Ledger, address: str = ADDRESS) -> int:
    with ledger.engine.connect() as conn:
        held = select(func.count()).select_from(subject_identifiers)
        return conn.execute(held.where(subject_identifiers.c.value == address)).scalar_one()


def _events(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(consent_events)).scalar_one()


def _grant(clock: Clock, at: datetime | None, *, proof: str | None = "v1") -> Evidence:
    """The web form's grant (a trusted source) dated ``at``, its notice version ``proof``."""
    return consent_value(ConsentStatus.GRANTED, at, clock.now, source="web_form", notice_version=proof)


@pytest.mark.parametrize(
    ("age", "proof"),
    [(timedelta(days=30), "v1"), (None, "v1"), (timedelta(seconds=-30), None)],
    ids=["dated-before", "undated", "after-but-unevidenced"],
)
def test_a_trusted_grant_that_cannot_lift_the_erasure_is_refused(
    ledger: Ledger, clock: Clock, age: timedelta | None, proof: str | None
) -> None:
    ledger.erase(ADDRESS, reason="asked")
    clock.advance(minutes=1)
    events = _events(ledger)
    at = clock.now - age if age is not None else None
    with pytest.raises(ErasedAddressRefused) as refused:
        ledger.record(Identity(email=ADDRESS), _grant(clock, at, proof=proof))
    assert str(refused.value).startswith("--email: the address was erased")
    assert ADDRESS not in str(refused.value)
    assert _holders(ledger) == 0 and _events(ledger) == events


def test_a_trusted_evidenced_grant_dated_after_the_erasure_brings_the_person_back(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.erase(ADDRESS, reason="asked")
    clock.advance(minutes=1)
    outcome = ledger.record(Identity(email=ADDRESS), _grant(clock, clock.now - timedelta(seconds=10)))
    assert _holders(ledger) == 1
    assert outcome.after is not None and not outcome.after.suppressed


def test_record_many_refuses_a_batch_with_a_grant_that_cannot_lift_the_erasure(
    ledger: Ledger, clock: Clock
) -> None:
    """A script's bulk of captures: the batch holding the grant records nothing, and the error
    names its place in the stream; a grant beside it for the same address that lifts the
    erasure lets the address's grants through (the capture API's rule for a batch)."""
    ledger.erase(ADDRESS, reason="asked")
    clock.advance(minutes=1)
    fresh = clock.now - timedelta(seconds=10)
    stream = [
        RecordRequest(Identity(email="first@example.org"), _grant(clock, fresh)),
        RecordRequest(Identity(email="second@example.org"), _grant(clock, fresh)),
        RecordRequest(Identity(email="third@example.org"), _grant(clock, fresh)),
        RecordRequest(Identity(email=ADDRESS), _grant(clock, clock.now - timedelta(days=30))),
    ]
    with pytest.raises(ErasedAddressRefused) as refused:
        ledger.record_many(stream, batch_size=2)
    assert str(refused.value).startswith("requests[3].email: the address was erased")
    assert _holders(ledger, "first@example.org") == 1  # the batch before it stays recorded
    assert _holders(ledger, "third@example.org") == 0 and _holders(ledger) == 0

    lifting = RecordRequest(Identity(email=ADDRESS), _grant(clock, fresh))
    stats = ledger.record_many([stream[3], lifting])
    assert stats.received == 2 and _holders(ledger) == 1


def test_ledger_record_refuses_a_trusted_grant_dated_before_the_erasure(cli: Cli) -> None:
    cli.ok("erase", "--email", ADDRESS, "--reason", "ticket 9", "--yes")
    before = _counts(cli)
    dated = ("--at", "2020-01-01T00:00:00Z")
    result = cli(*record_args(ADDRESS, "email_marketing", "granted", *dated, "--notice-version", "v1"))
    assert result.exit_code == exit_codes.CONFIG, result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("consentsync: error: --email: the address was erased; a grant from "), line
    assert "'web_form'" in line and "nothing was recorded" in line
    assert ADDRESS not in line and "Traceback" not in result.output
    assert _counts(cli) == before  # no person, no address, no event, no audit entry
    # Undated, it is refused before the erasure is looked at: a grant by hand names its time.
    undated = cli(*record_args(ADDRESS, "email_marketing", "granted", "--notice-version", "v1"))
    assert undated.exit_code == exit_codes.CONFIG and undated.stderr.startswith("consentsync: error: --at: ")
    assert ADDRESS not in undated.stderr and _counts(cli) == before
    # Dated after the erasure, with its proof, it is the person coming back.
    now = datetime.now(UTC).isoformat()
    cli.ok(*record_args(ADDRESS, "email_marketing", "granted", "--at", now, "--notice-version", "v1"))
    assert _counts(cli)[1] == before[1] + 1
