"""A ledger an older version wrote with blank proof labels is folded again once (review of 18dd9df,
``Ledger.refold_blank_proof``), on SQLite and PostgreSQL.

Since session 57 a blank notice version or evidence reference is no proof (``Evidence.has_proof``),
but ``reconcile.SUMMARY_VERSION`` did not move: a summary an older version folded, where a grant
recorded with ``--notice-version ""`` reversed a withdrawal, stayed current. The person stayed
contactable after the upgrade, and `audit verify`, folding the events with today's rule, called
the honest row edited outside consentsync (exit 5). The ledger now folds exactly the keys with a
blank-label event again at its next open, audits and announces each state that changes, and
stores a marker so that it does so once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import SADeprecationWarning

import consentsync.ledger.service as service
from consentsync import audit_states
from consentsync.domain import ConsentStatus, Evidence
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import audit_entries, consent_states, ledger_settings, state_changes
from consentsync.ledger.service import BLANK_PROOF_SETTING, BLANK_PROOF_SOURCE, Ledger
from tests.conftest import TEST_ERASURE_KEY, Cli, Clock, own_environment
from tests.integration.helpers import consent_value

ADA = "ada@example.org"  # re-granted with a blank notice version
BEN = "ben@example.org"  # re-granted with a blank evidence reference (spaces of other scripts)
CARL = "carl@example.org"  # an honest grant and withdrawal: nothing to fold again


def _old_has_proof(self: Evidence) -> bool:
    """The property as 18dd9df^ had it: any label given, blank or not, was proof."""
    return self.event_time is not None and (
        self.notice_version is not None or self.double_opt_in_at is not None or self.evidence_ref is not None
    )


def _as_an_older_version(mp: pytest.MonkeyPatch) -> None:
    """Records as a version before session 57 did: blank labels accepted and taken as proof."""
    mp.setattr(Evidence, "has_proof", property(_old_has_proof))
    real = service.check_label
    mp.setattr(service, "check_label", lambda v, w, n, **k: real(v, w, n, required=k.get("required", False)))


def _withdrawn_then_blank_grant(ledger: Ledger, clock: Clock, email: str, **label: str) -> None:
    ledger.record(
        Identity(email=email),
        consent_value(ConsentStatus.WITHDRAWN, clock.now - timedelta(days=2), clock.now),
    )
    clock.advance(minutes=1)
    outcome = ledger.record(
        Identity(email=email),
        consent_value(ConsentStatus.GRANTED, clock.now - timedelta(days=1), clock.now, **label),
    )
    assert outcome.after is not None and not outcome.after.suppressed  # reversed, back then
    clock.advance(minutes=1)


def _forget_the_marker(ledger: Ledger) -> None:
    """A ledger an older version wrote has no marker (init of this version stored one)."""
    with ledger.engine.begin() as conn:
        conn.execute(delete(ledger_settings).where(ledger_settings.c.name == BLANK_PROOF_SETTING))


def _honest(ledger: Ledger, clock: Clock, email: str) -> None:
    value = consent_value(
        ConsentStatus.GRANTED, clock.now - timedelta(days=3), clock.now, notice_version="v1"
    )
    ledger.record(Identity(email=email), value)
    clock.advance(minutes=1)
    ledger.record(
        Identity(email=email),
        consent_value(ConsentStatus.WITHDRAWN, clock.now - timedelta(days=1), clock.now),
    )
    clock.advance(minutes=1)


# Tests ask for ``cli`` before ``older_ledger``: its ``init`` opens the ledger, which runs the step.
@pytest.fixture
def older_ledger(ledger: Ledger, clock: Clock) -> Ledger:
    """Ada and Ben withdrew, then were "re-granted" with a blank label, as an older version
    recorded them (and reversed their withdrawals); Carl's story is honest. No marker."""
    with pytest.MonkeyPatch.context() as mp:
        _as_an_older_version(mp)
        _withdrawn_then_blank_grant(ledger, clock, ADA, notice_version="")
        _withdrawn_then_blank_grant(ledger, clock, BEN, evidence_ref=" \u3000\u2003")
        _honest(ledger, clock, CARL)
    _forget_the_marker(ledger)
    return ledger


def _rules(ledger: Ledger, email: str) -> list[tuple[str, bool]]:
    view = ledger.subject_view(email)
    return [
        (state["rule"], state["suppressed"])
        for state in view["purposes"]
        if (state["purpose"], state["channel"]) == ("email_marketing", "email")
    ]


def _counts(ledger: Ledger) -> dict[str, Any]:
    with ledger.engine.connect() as conn:
        return {
            "audit": conn.execute(select(func.count()).select_from(audit_entries)).scalar_one(),
            "feed": conn.execute(select(func.count()).select_from(state_changes)).scalar_one(),
            "states": sorted(
                tuple(row)
                for row in conn.execute(select(consent_states).order_by(consent_states.c.subject_id))
            ),
            "marker": conn.execute(
                select(ledger_settings.c.value).where(ledger_settings.c.name == BLANK_PROOF_SETTING)
            ).scalar(),
        }


def _upgrade_entries(ledger: Ledger) -> list[Any]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(audit_entries).order_by(audit_entries.c.seq)).all()
    return [row for row in rows if orjson.loads(row.payload).get("source") == BLANK_PROOF_SOURCE]


def test_the_upgrade_withdraws_the_blank_label_grants_and_tells_every_crm(
    cli: Cli, older_ledger: Ledger
) -> None:
    """The reviewer's repro: before the step the withdrawal was reversed (and verify's state check
    cried tamper); after it both people are withdrawn and suppressed, each change audited and on
    the change feed (every CRM is pushed the no), and `audit verify` passes, exit 0."""
    ledger = older_ledger
    assert _rules(ledger, ADA) == [("trusted_opt_in_reverses", False)]
    with ledger.engine.connect() as conn:
        assert not audit_states.states(conn, ledger.purposes, ledger.policy).ok  # the false alarm
    before = _counts(ledger)
    assert before["marker"] is None

    assert ledger.refold_blank_proof() == 2

    assert _rules(ledger, ADA) == [("sticky_withdrawal", True)]
    assert _rules(ledger, BEN) == [("sticky_withdrawal", True)]
    after = _counts(ledger)
    assert after["marker"] is not None
    entries = _upgrade_entries(ledger)
    uids = {ledger.subject_view(email)["subject"] for email in (ADA, BEN)}
    assert len(entries) == 2 and {row.subject_uid for row in entries} == uids
    for row in entries:
        payload = orjson.loads(row.payload)
        assert (row.action, payload["rule"]) == ("state.changed", "sticky_withdrawal")
        assert payload["old"]["suppressed"] is False and payload["new"]["suppressed"] is True
    assert after["feed"] - before["feed"] == 2  # ada and ben queued for every CRM
    with ledger.engine.connect() as conn:
        fed = set(
            conn.execute(select(state_changes.c.subject_id).order_by(state_changes.c.id.desc()).limit(2))
        )
        assert {subject_id for (subject_id,) in fed} == {row.subject_id for row in entries}
        assert audit_states.states(conn, ledger.purposes, ledger.policy).ok
    done = cli("audit", "verify")
    assert done.exit_code == 0, done.output


def test_the_step_runs_at_the_next_open_and_once(cli: Cli, older_ledger: Ledger) -> None:
    """Any command opening the ledger (here `audit verify` itself) runs the step first: it exits 0
    on the older ledger. A second open finds the marker and changes nothing; with the marker
    lost, the step finds every summary folded already and audits nothing twice."""
    done = cli("audit", "verify")
    assert done.exit_code == 0, done.output
    assert _rules(older_ledger, ADA) == [("sticky_withdrawal", True)]
    once = _counts(older_ledger)
    assert once["marker"] is not None and len(_upgrade_entries(older_ledger)) == 2

    assert cli("audit", "verify").exit_code == 0
    assert _counts(older_ledger) == once

    _forget_the_marker(older_ledger)
    assert older_ledger.refold_blank_proof() == 0
    assert _counts(older_ledger) == once


def test_a_ledger_without_blank_labels_is_untouched(cli: Cli, ledger: Ledger, clock: Clock) -> None:
    """No blank label anywhere (labels given, labels left out): no state rewritten, no audit entry,
    nothing on the change feed; only the marker is stored."""
    _honest(ledger, clock, CARL)
    ledger.record(
        Identity(email=ADA), consent_value(ConsentStatus.GRANTED, clock.now - timedelta(days=1), clock.now)
    )
    _forget_the_marker(ledger)
    before = _counts(ledger)

    assert ledger.refold_blank_proof() == 0

    after = _counts(ledger)
    assert after["marker"] is not None
    assert {**after, "marker": None} == before
    assert cli("audit", "verify").exit_code == 0


def test_whitespace_is_what_has_proof_calls_blank() -> None:
    """The SQL trims every character ``str.isspace`` takes (``Evidence.has_proof``'s test)."""
    spaces = {chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace()}
    assert set(service._WHITESPACE) == spaces


_KILLED_MIDWAY = """
import sys
from pathlib import Path
from consentsync.app import ledger_engine, pinned
from consentsync.config import load_config
from consentsync.ledger.service import Ledger

config = load_config(Path(sys.argv[1]))
key, _ = config.erasure_key_and_source()
ledger = Ledger(ledger_engine(config), config.purposes, config.policy, pinned(key))
ledger.refold_blank_proof(chunk_size=1)
"""


def test_a_step_killed_midway_is_finished_by_the_next_open(
    cli: Cli, older_ledger: Ledger, config_path: Path, tmp_path: Path
) -> None:
    """A real process killed (SIGKILL) after its first chunk committed: one person folded again,
    no marker. The next open finishes the other and stores the marker, auditing nobody twice."""
    environment = own_environment(tmp_path, TEST_ERASURE_KEY)
    environment["CONSENTSYNC_FAILPOINTS"] = "ledger.blank_proof.chunk=kill@1"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_MIDWAY), str(config_path)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    assert _counts(older_ledger)["marker"] is None
    assert len(_upgrade_entries(older_ledger)) == 1
    assert sorted(rule for email in (ADA, BEN) for rule, _ in _rules(older_ledger, email)) == [
        "sticky_withdrawal",
        "trusted_opt_in_reverses",
    ]

    assert cli("audit", "verify").exit_code == 0  # the next open
    assert _counts(older_ledger)["marker"] is not None
    assert len(_upgrade_entries(older_ledger)) == 2
    assert _rules(older_ledger, ADA) == _rules(older_ledger, BEN) == [("sticky_withdrawal", True)]


def test_the_step_uses_no_deprecated_sqlalchemy_call(older_ledger: Ledger) -> None:
    """The step runs inside every first open of a ledger: a call SQLAlchemy deprecates (it warned
    on ``Result.tuples()`` since 2.1) would one day fail every first open."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SADeprecationWarning)
        older_ledger.refold_blank_proof()
    assert _rules(older_ledger, ADA) == [("sticky_withdrawal", True)]
