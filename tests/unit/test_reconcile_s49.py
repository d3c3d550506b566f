"""Expiry is not renewed by a stale value seen again (docs/policy.md, "Expiry" and "Unknown event
times"): a grant without an event time happened, read most restrictively, as early as possible,
so its validity runs from the first time consentsync saw such a grant, never from a later sighting
of the same stale "opted in" (a duplicate record read for the first time, a connector added,
another CRM), which would otherwise re-establish a consent that expired."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta

import pytest

from consentsync.domain import ConsentStatus, SubjectFlags, canonical_json
from consentsync.reconcile import Rule, Summary, effective_state, summarise
from tests.unit.test_reconcile_rules import EMAIL, POLICY, capture, crm, outcome, state, t

S = ConsentStatus


def _undated_grant(observed_days: float, source: str = "hubspot"):  # type: ignore[no-untyped-def]
    return crm(S.GRANTED, None, observed=t(observed_days), source=source)


@pytest.mark.parametrize("source", ["hubspot", "salesforce:Lead", "another-crm"])
def test_a_stale_undated_grant_seen_again_after_expiry_does_not_renew_it(source: str) -> None:
    first, again = _undated_grant(0), _undated_grant(800, source)
    for order in itertools.permutations([first, again]):
        result = state(order, now=t(801))
        assert outcome(result) == (S.EXPIRED, True, Rule.EXPIRED)
        assert result.expires_at == t(730)  # from the first sighting


def test_an_undated_grant_alone_still_runs_from_when_it_was_first_seen() -> None:
    grant = _undated_grant(10)
    assert state([grant], now=t(739)).status is S.GRANTED
    assert state([grant], now=t(739)).expires_at == t(740)
    assert outcome(state([grant], now=t(741))) == (S.EXPIRED, True, Rule.EXPIRED)


def test_a_dated_renewal_still_renews() -> None:
    stale = [_undated_grant(0), _undated_grant(800)]
    renewed = state([*stale, capture(S.GRANTED, t(800))], now=t(801))
    assert (renewed.status, renewed.suppressed, renewed.expires_at) == (S.GRANTED, False, t(1530))


def test_a_future_dated_grant_counts_from_its_first_sighting_too() -> None:
    # A future-dated grant is read as undated: it cannot renew what an earlier sighting started.
    future = crm(S.GRANTED, t(5000), observed=t(800), source="vtiger")
    result = state([_undated_grant(0), future], now=t(801))
    assert outcome(result) == (S.EXPIRED, True, Rule.EXPIRED)


def test_the_first_sighting_is_kept_in_the_summary_and_a_v4_summary_is_folded_again() -> None:
    summary = summarise([_undated_grant(800), _undated_grant(3), capture(S.REQUESTED, t(1))], POLICY)
    assert summary.undated_grant_seen == t(3)
    wire = canonical_json(summary.to_json())
    assert Summary.from_json(json.loads(wire)) == summary
    older = {**json.loads(wire), "v": 4}
    del older["undated_grant_seen"]
    assert not Summary.is_current(older)  # the ledger folds it again from the events
    kwargs = {"flags": SubjectFlags(), "objections": (), "now": t(801)}
    assert effective_state(summary, EMAIL, "email", **kwargs) == state(
        [_undated_grant(800), _undated_grant(3), capture(S.REQUESTED, t(1))], now=t(801)
    )


def test_a_dated_crm_grant_after_the_lapse_is_the_latest_affirmative_action() -> None:
    """Not a hole: a CRM's dated grant establishes a consent before any expiry too (the latest
    event time wins); expiry asks for a renewal, which a dated value of any source gives. Only a
    withdrawal, a refusal, an objection or an erasure needs a new consent to be lifted."""
    result = state([capture(S.GRANTED, t(0)), crm(S.GRANTED, t(800), source="vtiger")], now=t(801))
    assert (result.status, result.suppressed, result.expires_at) == (S.GRANTED, False, t(1530))
    # ... but never after a withdrawal.
    withdrawn = [capture(S.GRANTED, t(0)), capture(S.WITHDRAWN, t(10)), crm(S.GRANTED, t(800))]
    assert outcome(state(withdrawn, now=t(801))) == (S.WITHDRAWN, True, Rule.STICKY_WITHDRAWAL)


def test_a_soon_expiring_window_does_not_move_by_a_later_sighting() -> None:
    early = _undated_grant(0)
    for later in (1, 100, 729):
        assert state([early, _undated_grant(later)], now=t(731)).status is S.EXPIRED
    assert state([early, _undated_grant(729)], now=t(729)).expires_at == t(730)
    assert state([early], now=t(1)).expires_at == t(0) + timedelta(days=730)
