"""A second erasure dates the address's suppression, in the two cases that kept the first
erasure's date, on SQLite and PostgreSQL: the suppression entry stores the latest erasure
(``suppressions.last_erased_at``, migration 0018), read by the decision, the person's states and
the capture API's refusal (``SubjectResolver.erased_since``), and held to the chain by `audit
verify`.

(a) An address nobody holds, erased (T1) and erased again (T2): a trusted grant dated between the
    two lifted the suppression (the capture API let it through, 201, granted).
(b) An erased person's other address whose suppression entry already existed (erased before
    while nobody held it, T1; a CRM record of the person took it later): erasing the person (T2)
    kept the entry dated T1, and wrote no chain entry about it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select, update

from consentsync import exit_codes
from consentsync.domain import iso
from consentsync.ledger.identity import SubjectResolver
from consentsync.ledger.schema import audit_entries, suppressions
from consentsync.ledger.service import ErasedAddressRefused, Ledger
from tests.conftest import Cli, Clock
from tests.integration.test_policy_s49_sync import Org, _engine, _grant
from tests.integration.test_policy_s50_address import _readdress

AGREE = "objections, suppressions, restrictions and erasures agree with audit entries"
DISAGREE = "objections, suppressions, restrictions or erasures DISAGREE with audit entries: "
ADDRESS = "x@example.com"


def _erased_since(ledger: Ledger, email: str) -> datetime | None:
    """What the capture API weighs a grant for an erased address against (``Hub._refuse_erased``)."""
    with ledger.engine.connect() as conn:
        return SubjectResolver(conn, ledger.erasure_key(), ledger.clock(), None).erased_since(email)


def _decided(ledger: Ledger, email: str) -> tuple[bool, str]:
    _uid, state = ledger.decision_for(email, "email_marketing", "email")
    return state.suppressed, state.detail


def _entry_times(ledger: Ledger) -> dict[int, tuple[datetime, datetime]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(suppressions.c.id, suppressions.c.created_at, suppressions.c.last_erased_at)
        )
        return {row.id: (row.created_at, row.last_erased_at) for row in rows}


def _verify_line(cli: Cli) -> tuple[int, str]:
    result = cli("audit", "verify")
    lines = [line for line in result.stdout.splitlines() if line.startswith((AGREE, DISAGREE))]
    assert "@" not in result.output
    return result.exit_code, lines[0]


def test_an_address_nobody_holds_erased_twice_is_suppressed_since_the_second(
    cli: Cli, ledger: Ledger, clock: Clock
) -> None:
    first = clock.now
    assert not ledger.erase(ADDRESS, reason="suppression list import")["already_suppressed"]
    clock.advance(days=2)
    second = clock.now
    assert ledger.erase(ADDRESS, reason="asked again")["already_suppressed"]
    clock.advance(days=1)
    assert _erased_since(ledger, ADDRESS) == second
    suppressed, detail = _decided(ledger, ADDRESS)
    assert suppressed and iso(second) in detail, detail
    # A trusted grant dated between the two erasures (delivered late) does not lift it (it is
    # refused: the address is not stored again); one dated after the second does.
    with pytest.raises(ErasedAddressRefused):
        _grant(ledger, ADDRESS, first + timedelta(days=1))
    assert _decided(ledger, ADDRESS)[0] is True
    _grant(ledger, ADDRESS, second + timedelta(minutes=1))
    assert _decided(ledger, ADDRESS)[0] is False
    # The entry keeps its first erasure as its making; the chain says both, and verify agrees.
    ((created, last),) = _entry_times(ledger).values()
    assert (created, last) == (first, second)
    code, line = _verify_line(cli)
    assert (code, line.startswith(AGREE)) == (0, True), line


def _two_addresses_second_erased_before(
    ledger: Ledger, config_path: Path, clock: Clock
) -> tuple[Org, datetime, datetime]:
    """x@ is erased while nobody holds it (T1, a suppression list import); later P's CRM record
    takes it (P holds p@ and x@, x@ on the list since T1). Erasing p@ (T2) erases P, and x@ is
    their other address, its entry kept."""
    first = clock.now
    ledger.erase(ADDRESS, reason="suppression list import")
    clock.advance(days=1)
    org = Org(clock)
    org.put("r1", "p@example.com")
    _grant(ledger, "p@example.com", clock.now - timedelta(days=30))
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(minutes=5)
    _readdress(org, clock, "r1", ADDRESS)
    clock.advance(minutes=1)  # read after the change's time
    assert _engine(ledger, config_path, org).run().status == "succeeded"
    clock.advance(days=1)
    second = clock.now
    erased = ledger.erase("p@example.com", reason="Art. 17 request")
    assert erased["subject_known"]
    clock.advance(days=1)
    return org, first, second


def test_an_erased_persons_other_address_on_the_list_before_is_suppressed_since_this_erasure(
    cli: Cli, ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    _org, first, second = _two_addresses_second_erased_before(ledger, config_path, clock)
    assert _erased_since(ledger, ADDRESS) == second
    suppressed, detail = _decided(ledger, ADDRESS)
    assert suppressed and iso(second) in detail, detail
    with pytest.raises(ErasedAddressRefused):  # dated before this erasure: cannot lift it
        _grant(ledger, ADDRESS, second - timedelta(hours=1))
    assert _decided(ledger, ADDRESS)[0] is True
    times = _entry_times(ledger)
    assert times[min(times)] == (first, second)
    # The chain says this erasure reached the kept entry (`audit verify` holds the row to it).
    with ledger.engine.connect() as conn:
        payloads = conn.execute(
            select(audit_entries.c.payload).where(audit_entries.c.action == "suppression.added")
        ).scalars()
        (entry,) = [orjson.loads(p) for p in payloads]
    assert (entry["what"]["suppression"], entry["old"], entry["at"]) == (
        min(times),
        {"suppressed": True},
        iso(second),
    )
    code, line = _verify_line(cli)
    assert (code, line.startswith(AGREE)) == (0, True), line


def test_verify_names_a_last_erasure_moved_back_by_hand(cli: Cli, ledger: Ledger, clock: Clock) -> None:
    """The latest erasure is what a consent must be newer than: moved back to the first by a row
    edit, a grant between the two would lift the suppression. `audit verify` names it (exit 5)."""
    first = clock.now
    suppression_id = ledger.erase(ADDRESS, reason="suppression list import")["suppression_id"]
    clock.advance(days=2)
    ledger.erase(ADDRESS, reason="asked again")
    with ledger.engine.begin() as conn:
        conn.execute(update(suppressions).values(last_erased_at=first))
    code, line = _verify_line(cli)
    assert code == exit_codes.AUDIT_BROKEN
    assert re.fullmatch(
        re.escape(f"{DISAGREE}suppressions row {suppression_id}: last_erased_at is {iso(first)} where ")
        + f"audit entry \\d+ says {re.escape(iso(clock.now))}: edited outside consentsync",
        line,
    ), line
