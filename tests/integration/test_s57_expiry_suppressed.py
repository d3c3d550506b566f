"""The expiry sweep finds each lapse once, also for a person whose state an earlier rule decides
(restricted, erased, objecting): their recorded lapse is stored expired, the suppression and
its rule unchanged. A ledger written before, whose recorded lapses of such people still read
granted, is settled by the next sweep, without recording anything again. SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta

import orjson
from sqlalchemy import event, func, select, update

from consentsync import audit_states
from consentsync.domain import ConsentStatus, canonical_json
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import consent_events, consent_states
from consentsync.ledger.service import Ledger, RecordRequest
from consentsync.reconcile import Rule
from tests.conftest import Clock
from tests.integration.helpers import consent_value

PEOPLE = ["plain", "restricted", "erased", "objector"]
SUPPRESSED_RULES = {Rule.RESTRICTION, Rule.ERASURE, Rule.OBJECTION_DIRECT_MARKETING}


def _still_due(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(
            select(func.count())
            .select_from(consent_states)
            .where(
                consent_states.c.status == ConsentStatus.GRANTED.value,
                consent_states.c.expires_at <= ledger.clock(),
            )
        ).scalar_one()


def _rows(ledger: Ledger) -> dict[str, tuple[str, bool, str]]:
    """The stored status, suppression and rule of email marketing by email, by rule."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(consent_states.c.status, consent_states.c.suppressed, consent_states.c.rule).where(
                consent_states.c.purpose == "email_marketing", consent_states.c.channel == "email"
            )
        )
        return {row.rule: (row.status, row.suppressed, row.rule) for row in rows}


def _events(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(consent_events)).scalar_one()


def _verified(ledger: Ledger) -> audit_states.StatesResult:
    with ledger.engine.connect() as conn:
        return audit_states.states(conn, ledger.purposes, ledger.policy)


def _lapsed_people(ledger: Ledger, clock: Clock) -> None:
    """Four people whose email marketing consent (validity 730 days) lapsed: one plain, one
    restricted, one erased, one objecting to direct marketing."""
    old = clock.now - timedelta(days=800)
    ledger.record_many(
        [
            RecordRequest(
                Identity(email=f"{who}@example.org"), consent_value(ConsentStatus.GRANTED, old, clock.now)
            )
            for who in PEOPLE
        ]
    )
    ledger.restrict("restricted@example.org", restricted=True, reason="accuracy contested")
    ledger.erase("erased@example.org", reason="asked")
    ledger.raise_objection("objector@example.org", "email_marketing", source="ops", direct_marketing=True)
    clock.advance(minutes=1)


def test_a_recorded_lapse_is_not_found_again_for_a_restricted_erased_or_objecting_person(
    ledger: Ledger, clock: Clock
) -> None:
    _lapsed_people(ledger, clock)
    before = _rows(ledger)
    assert ledger.expire_due().recorded == 4
    # Recorded once each: nothing is due any more, for anyone.
    assert _still_due(ledger) == 0
    again = ledger.expire_due()
    assert (again.received, again.recorded, again.duplicates) == (0, 0, 0)
    after = _rows(ledger)
    for rule in SUPPRESSED_RULES:
        # Stored expired; the suppression and the rule that decides it as they were.
        assert before[rule] == (ConsentStatus.GRANTED.value, True, rule)
        assert after[rule] == (ConsentStatus.EXPIRED.value, True, rule)
    assert after[Rule.EXPIRED] == (ConsentStatus.EXPIRED.value, True, Rule.EXPIRED)
    # audit verify takes the stored rows for the ledger's own.
    verified = _verified(ledger)
    assert verified.ok, verified.problem


def test_a_ledger_stuck_on_recorded_lapses_is_settled_by_the_next_sweep(ledger: Ledger, clock: Clock) -> None:
    """A ledger an earlier version swept: the suppressed people's recorded lapses still read
    granted. The next sweep stores them expired, records nothing, audits nothing; then finds
    none."""
    _lapsed_people(ledger, clock)
    assert ledger.expire_due().recorded == 4
    with ledger.engine.begin() as conn:  # what the earlier version left
        conn.execute(
            update(consent_states)
            .where(
                consent_states.c.purpose == "email_marketing",
                consent_states.c.channel == "email",
                consent_states.c.rule.in_(sorted(SUPPRESSED_RULES)),
            )
            .values(status=ConsentStatus.GRANTED.value)
        )
        # One of them with a summary of an older fold: the ledger folds its events again.
        erased = consent_states.c.rule == Rule.ERASURE
        mine = (consent_states.c.purpose == "email_marketing", consent_states.c.channel == "email", erased)
        data = orjson.loads(conn.execute(select(consent_states.c.summary).where(*mine)).scalar_one())
        old_fold = canonical_json({**data, "v": data["v"] - 1})
        conn.execute(update(consent_states).where(*mine).values(summary=old_fold))
    assert _still_due(ledger) == 3
    assert _verified(ledger).ok  # such rows are the ledger's own, not an edit
    stuck = _rows(ledger)
    events = _events(ledger)
    record_ins: list[int] = []
    original = ledger.record_in

    def counting(*args: object, **kwargs: object) -> object:
        record_ins.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    ledger.record_in = counting  # type: ignore[method-assign]
    clock.advance(minutes=1)
    settled = ledger.expire_due()
    assert (settled.received, settled.recorded, settled.duplicates) == (0, 0, 0)
    assert record_ins == []  # nothing recorded again, under the writer lock or elsewhere
    assert _events(ledger) == events
    assert _still_due(ledger) == 0
    after = _rows(ledger)
    for rule in SUPPRESSED_RULES:
        assert after[rule] == (ConsentStatus.EXPIRED.value, True, rule)
        assert stuck[rule][1:] == after[rule][1:]
    assert _verified(ledger).ok
    # And the sweep after that looks at nothing.
    statements: list[str] = []
    event.listen(ledger.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert ledger.expire_due().received == 0
    assert not any("UPDATE consent_states" in s for s in statements)
