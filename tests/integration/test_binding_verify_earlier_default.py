"""`audit verify` holds the basis a value that states none is bound to (``Ranked.bound``) to the
purpose's default in force when the value was recorded, not to any default the purpose had up to
then (session 62 review of 5a87bed): a binding edited to an earlier default, replaced before the
value was recorded, is named. On SQLite and PostgreSQL, edited as whoever can write the ledger
edits it.

The ledger binds a value from the chain as its own transaction sees it (a process started before
another one applied a new default binds to the new one), so that the strict rule names no
legitimate binding: values recorded across several default changes, one recorded at the very
instant of a change, and one recorded by a process that read the defaults before the change,
verify clean."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from consentsync import exit_codes
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, iso
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from tests.conftest import Clock
from tests.integration.helpers import consent_value
from tests.integration.test_audit_verify_s61 import (
    STATES_DISAGREE,
    _as_an_attacker,
    _profiling_grant,
    _seq,
    _state,
    _switch_default_basis,
    _verify,
)

ADA, BEN, CY, DAN, EVE = (f"{name}@example.test" for name in ("ada", "ben", "cy", "dan", "eve"))


@pytest.fixture
def clock() -> Clock:
    """The real time, a minute on: the purposes' ``purpose.configured`` entries, which the ledger
    fixtures write on the real clock when they open it, come before what the tests record."""
    return Clock(datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1))


def _bound(ledger: Ledger, email: str) -> str:
    return str(orjson.loads(_state(ledger, email).summary)["latest"]["bound"])


def test_a_binding_edited_to_an_earlier_default_of_the_purpose_fails_verify(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """Profiling defaulted to legitimate interests (Ada's grant recorded then), was switched to
    consent an hour later, and Ben's grant recorded ten minutes after that: bound to consent. Ben's
    binding and basis column edited to legitimate interests, the default replaced before his
    grant came: verify names his row, exit 5, by the entry that says consent was in force."""
    ledger.record(Identity(email=ADA), _profiling_grant(clock))
    clock.advance(hours=1)
    _switch_default_basis(ledger, config_path, "profiling", "consent")
    switched = _seq(ledger, "purpose.configured", purpose="profiling")
    # Past the clock skew (5 minutes): the hosts' clocks could not have put his grant before it.
    clock.advance(minutes=10)
    ledger.record(Identity(email=BEN), _profiling_grant(clock))
    assert (_bound(ledger, ADA), _bound(ledger, BEN)) == ("legitimate_interests", "consent")
    assert not any(line.startswith(STATES_DISAGREE) for line in _verify(config_path, 0))

    ben = _state(ledger, BEN)
    summary = orjson.loads(ben.summary)
    summary["latest"]["bound"] = "legitimate_interests"
    _as_an_attacker(
        ledger,
        "UPDATE consent_states SET summary = :summary, basis = 'legitimate_interests' "
        "WHERE subject_id = :subject AND purpose = 'profiling'",
        summary=orjson.dumps(summary).decode(),
        subject=ben.subject_id,
    )

    lines = [
        line for line in _verify(config_path, exit_codes.AUDIT_BROKEN) if line.startswith(STATES_DISAGREE)
    ]
    assert lines == [
        f"{STATES_DISAGREE}subject {ben.uid} (id {ben.subject_id}), purpose profiling, channel email: "
        f"summary latest is bound to legitimate_interests where audit entry {switched} says the "
        f"purpose's default basis was consent when it was recorded ({iso(clock.now)}): "
        "edited outside consentsync"
    ]


def test_values_bound_through_several_default_changes_verify_clean(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """Legitimate interests, consent, legitimate interests, consent: a value recorded under each
    (Ada, Ben, Cy), one at the very instant of a change, after it (Dan), and one recorded by a
    process that read the defaults before the last change and recorded after it (Eve: the
    process binds to the new default, as the chain says). Verify passes."""
    ledger.record(Identity(email=ADA), _profiling_grant(clock))
    # Another process, its defaults read now (a daemon started before the changes below).
    daemon = dataclasses.replace(ledger, purposes=load_config(config_path).purposes)
    daemon.record(Identity(email="someone@example.test"), _profiling_grant(clock))
    for basis, email in (("consent", BEN), ("legitimate_interests", CY)):
        clock.advance(hours=1)
        _switch_default_basis(ledger, config_path, "profiling", basis)
        clock.advance(minutes=1)
        ledger.record(Identity(email=email), _profiling_grant(clock))
    clock.advance(hours=1)
    _switch_default_basis(ledger, config_path, "profiling", "consent")
    ledger.record(Identity(email=DAN), _profiling_grant(clock))  # the same instant as the change
    clock.advance(minutes=10)  # past the clock skew
    daemon.record(Identity(email=EVE), _profiling_grant(clock))
    no = consent_value(
        ConsentStatus.WITHDRAWN, clock.now, clock.now, purpose="profiling", basis=None, source="crm_a"
    )
    ledger.record(Identity(email=ADA), no)  # her restriction, bound under consent
    lines = _verify(config_path, 0)
    assert any(line.startswith("current states agree with the consent events: 6 states") for line in lines)
    assert {email: _bound(ledger, email) for email in (ADA, BEN, CY, DAN, EVE)} == {
        ADA: "consent",  # her latest is the no now
        BEN: "consent",
        CY: "legitimate_interests",
        DAN: "consent",
        EVE: "consent",
    }
    assert orjson.loads(_state(ledger, ADA).summary)["restriction"]["bound"] == "consent"
