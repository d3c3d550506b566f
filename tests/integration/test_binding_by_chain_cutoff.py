"""`audit verify` on a ledger upgraded from a version that bound a value stating no basis to the
default its process started with (5a87bed; session 62 review of f1dcd4c): a daemon of that
version, running across a change of the purpose's default, bound what it recorded after the
change to the default replaced, and verify, holding every binding to the default in force when
its value was recorded, named those values as edits (exit 5).

The first open by this version appends a ``ledger.binding_by_chain`` entry (a new ledger: at its
start). Verify holds a value whose event was recorded before that entry to any default in force
by then, one after it to the default in force then. The entry is in the hash chain: edited, or
its settings row gone, nothing passes that did not. On SQLite and PostgreSQL, edited as whoever
can write the ledger edits it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from consentsync import audit, exit_codes
from consentsync.config import load_config
from consentsync.domain import LawfulBasis, iso
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import audit_entries, ledger_settings
from consentsync.ledger.service import BINDING_BY_CHAIN, BINDING_BY_CHAIN_SETTING, Ledger
from tests.conftest import Clock, migrated_ledger
from tests.integration.test_audit_chain import _disable_guards
from tests.integration.test_audit_verify_s61 import (
    STATES_DISAGREE,
    _as_an_attacker,
    _profiling_grant,
    _seq,
    _state,
    _switch_default_basis,
    _verify,
)

ADA, BEN, CY = (f"{name}@example.test" for name in ("ada", "ben", "cy"))


@pytest.fixture
def clock() -> Clock:
    """The real time, a minute on: the purposes' ``purpose.configured`` entries, which opening
    the ledger writes on the real clock, come before what the tests record."""
    return Clock(datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1))


@contextmanager
def _previous_version(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """consentsync as it was before f1dcd4c: no ``ledger.binding_by_chain`` entry on opening,
    and a value stating no basis bound to the default its process was configured with."""
    with monkeypatch.context() as patched:
        patched.setattr(Ledger, "mark_binding_by_chain", lambda self, actor="consentsync": 0, raising=False)
        patched.setattr(
            Ledger, "_default_basis_at", lambda self, conn, key, moment: self.purposes[key].default_basis
        )
        yield


def _bound(ledger: Ledger, email: str) -> str:
    return str(orjson.loads(_state(ledger, email).summary)["latest"]["bound"])


def _upgraded_ledger(config_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    """A ledger the previous version recorded: Ada's grant under profiling on legitimate
    interests; profiling switched to consent by another process; Ben's grant recorded ten
    minutes later by a daemon started before the switch (bound to legitimate interests). Then
    opened by this version."""
    with _previous_version(monkeypatch), migrated_ledger(config_path, clock) as old:
        old.record(Identity(email=ADA), _profiling_grant(clock))
        daemon = dataclasses.replace(old, purposes=load_config(config_path).purposes)
        clock.advance(hours=1)
        _switch_default_basis(old, config_path, "profiling", "consent")
        clock.advance(minutes=10)  # past the clock skew
        daemon.record(Identity(email=BEN), _profiling_grant(clock))
        with old.engine.connect() as conn:
            assert not [e for e in audit.entries(conn, action=BINDING_BY_CHAIN)]
    with migrated_ledger(config_path, clock) as ledger:
        yield ledger


@pytest.fixture
def upgraded(config_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    yield from _upgraded_ledger(config_path, clock, monkeypatch)


def _cutoff(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        (seq,) = [e["seq"] for e in audit.entries(conn, action=BINDING_BY_CHAIN)]
    return int(seq)


def test_a_ledger_the_previous_version_bound_so_verifies_clean(upgraded: Ledger, config_path: Path) -> None:
    assert (_bound(upgraded, ADA), _bound(upgraded, BEN)) == ("legitimate_interests", "legitimate_interests")
    lines = _verify(config_path, 0)
    assert any(line.startswith("current states agree with the consent events: 2 states") for line in lines)
    assert _cutoff(upgraded) > _seq(upgraded, "consent.recorded")  # appended on this version's first open


def test_the_same_binding_after_this_version_opened_the_ledger_is_named(
    upgraded: Ledger, config_path: Path, clock: Clock
) -> None:
    """After the upgrade, Cy's grant is recorded (bound to consent, the default in force) and her
    binding edited to legitimate interests, the default replaced an hour before: named, exit 5;
    Ben's, the same binding recorded before the upgrade, is not."""
    switched = _seq(upgraded, "purpose.configured", purpose="profiling")
    clock.advance(minutes=10)
    upgraded.record(Identity(email=CY), _profiling_grant(clock))
    assert _bound(upgraded, CY) == "consent"
    cy = _state(upgraded, CY)
    summary = orjson.loads(cy.summary)
    summary["latest"]["bound"] = "legitimate_interests"
    _as_an_attacker(
        upgraded,
        "UPDATE consent_states SET summary = :summary, basis = 'legitimate_interests' "
        "WHERE subject_id = :subject AND purpose = 'profiling'",
        summary=orjson.dumps(summary).decode(),
        subject=cy.subject_id,
    )
    lines = [x for x in _verify(config_path, exit_codes.AUDIT_BROKEN) if x.startswith(STATES_DISAGREE)]
    assert lines == [
        f"{STATES_DISAGREE}subject {cy.uid} (id {cy.subject_id}), purpose profiling, channel email: "
        f"summary latest is bound to legitimate_interests where audit entry {switched} says the "
        f"purpose's default basis was consent when it was recorded ({iso(clock.now)}): "
        "edited outside consentsync"
    ]


def test_a_daemon_of_the_previous_version_still_running_after_the_upgrade_is_named(
    upgraded: Ledger, config_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process of the previous version not restarted after the upgrade binds to the default it
    started with: what it records after this version's first open is named (restart them all)."""
    clock.advance(minutes=10)
    with _previous_version(monkeypatch):
        daemon = dataclasses.replace(upgraded, purposes=load_config(config_path).purposes)
        daemon.purposes["profiling"] = dataclasses.replace(
            daemon.purposes["profiling"], default_basis=LawfulBasis.LEGITIMATE_INTERESTS
        )
        daemon.record(Identity(email=CY), _profiling_grant(clock))
    lines = [x for x in _verify(config_path, exit_codes.AUDIT_BROKEN) if x.startswith(STATES_DISAGREE)]
    cy = _state(upgraded, CY)
    assert len(lines) == 1 and f"subject {cy.uid} (id {cy.subject_id})" in lines[0]


def test_a_new_ledger_binds_by_the_chain_from_its_start(ledger: Ledger) -> None:
    with ledger.engine.connect() as conn:
        first = conn.execute(select(audit_entries.c.action).order_by(audit_entries.c.seq)).scalars().first()
    assert first == BINDING_BY_CHAIN


def test_the_entry_is_written_once_its_settings_row_gone_or_not(upgraded: Ledger, config_path: Path) -> None:
    cutoff = _cutoff(upgraded)
    _as_an_attacker(upgraded, f"DELETE FROM ledger_settings WHERE name = '{BINDING_BY_CHAIN_SETTING}'")
    assert upgraded.mark_binding_by_chain() == cutoff  # found in the chain, not appended again
    assert _cutoff(upgraded) == cutoff
    with upgraded.engine.connect() as conn:
        said = conn.execute(
            select(ledger_settings.c.value).where(ledger_settings.c.name == BINDING_BY_CHAIN_SETTING)
        ).scalar_one()
    assert said == str(cutoff)
    _verify(config_path, 0)


def test_the_entry_edited_so_that_every_value_reads_as_before_it_breaks_the_chain(
    upgraded: Ledger, config_path: Path
) -> None:
    """Whoever would have a binding edited after the upgrade pass must move the entry past it:
    renaming it (verify would find none and hold every value to the lenient rule) breaks the
    chain, and verify fails (exit 5) naming the entry."""
    cutoff = _cutoff(upgraded)
    _disable_guards(upgraded.engine)
    _as_an_attacker(
        upgraded,
        "UPDATE audit_entries SET action = 'purpose.noted', "
        f"payload = replace(payload, '{BINDING_BY_CHAIN}', 'purpose.noted') WHERE seq = :seq",
        seq=cutoff,
    )
    lines = _verify(config_path, exit_codes.AUDIT_BROKEN)
    assert any("BROKEN" in line and str(cutoff) in line for line in lines), lines
