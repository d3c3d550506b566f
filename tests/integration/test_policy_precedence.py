"""Issue 12's precedence rules through the ledger and the CLI, on SQLite and PostgreSQL:

1. no switching of lawful basis after a withdrawal or refusal (``no_basis_switch_after_withdrawal``);
2. an Art. 21(2) objection to direct marketing is lifted by the person's new consent only;
4. expiry counts from the latest affirmative action whenever ``ledger expire`` ran;
7. the PECR / ePrivacy soft opt-in, a record with its three conditions
   (``eprivacy_consent_required`` / ``eprivacy_soft_opt_in``).

The hypothesis properties record the same evidence for two people in two orders of arrival,
with expiry sweeps and a direct-marketing objection at arbitrary points, and check that both end
in the same state, the one the pure reconciler gives for the set of evidence.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consentsync.domain import (
    ConsentStatus,
    Evidence,
    LawfulBasis,
    ObjectionFact,
    ObjectionStatus,
    Origin,
    SoftOptIn,
    SubjectFlags,
)
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from consentsync.reconcile import Rule, effective_state, summarise
from tests.conftest import Clock, migrated_ledger
from tests.integration.helpers import consent_value
from tests.integration.test_cli import iso_ago, record

OFFERS_PURPOSE = """
  # Offers to customers on legitimate interests (PECR: a soft opt-in by email and SMS).
  - key: offers
    name: Offers to customers
    direct_marketing: true
    default_basis: legitimate_interests
    channels: [email, sms, post]
"""
SOFT_OPT_IN_OPTIONS = (
    "--soft-opt-in-sale",
    "order 2026-0042",
    "--soft-opt-in-similar-products",
    "garden tools, the product line bought",
    "--soft-opt-in-refusal-at-collection",
    "checkout form v4 (opt-out box)",
    "--soft-opt-in-refusal-in-messages",
    "newsletter template v2 (unsubscribe link)",
)


@pytest.fixture
def policy_config(config_path: Path) -> Path:
    config_path.write_text(config_path.read_text() + OFFERS_PURPOSE)
    return config_path


@pytest.fixture
def policy_ledger(policy_config: Path, clock: Clock) -> Iterator[Ledger]:
    with migrated_ledger(policy_config, clock) as opened:
        yield opened


def _state(cli: Any, email: str, purpose: str, channel: str = "email") -> dict[str, Any]:
    view = cli.json("subject", "show", email)
    (found,) = [p for p in view["purposes"] if p["purpose"] == purpose and p["channel"] == channel]
    return found


# -- rule 1 through the CLI --------------------------------------------------------------------


@pytest.mark.parametrize("basis", ["legitimate_interests", "contract", "legal_obligation"])
def test_cli_no_basis_switch_after_a_withdrawal(cli: Any, basis: str) -> None:
    email = "ann@example.com"
    record(cli, email, "email_marketing", "granted", "--at", iso_ago(days=9), "--notice-version", "v3")
    record(cli, email, "email_marketing", "withdrawn", "--at", iso_ago(days=5))
    switched = record(
        cli,
        email,
        "email_marketing",
        "granted",
        "--at",
        iso_ago(days=1),
        "--basis",
        basis,
        "--evidence-ref",
        "contract-7",
        source="ops",
    )
    assert switched["after"]["suppressed"] is True
    assert switched["after"]["status"] == "withdrawn"
    assert switched["after"]["rule"] == Rule.NO_BASIS_SWITCH
    logged = cli.json("audit", "log", "--email", email, "--action", "consent.recorded")
    assert logged[-1]["rule"] == Rule.NO_BASIS_SWITCH
    # Only the person's new consent resumes.
    renewed = record(
        cli, email, "email_marketing", "granted", "--at", iso_ago(hours=1), "--notice-version", "v4"
    )
    assert (renewed["after"]["suppressed"], renewed["after"]["rule"]) == (False, Rule.TRUSTED_OPT_IN)


def test_cli_a_refused_profiling_consent_is_not_resumed_on_legitimate_interests(cli: Any) -> None:
    email = "bo@example.com"
    record(cli, email, "profiling", "refused", "--at", iso_ago(days=3), "--channel", "post")
    out = record(
        cli,
        email,
        "profiling",
        "not_applicable",
        "--basis",
        "legitimate_interests",
        "--at",
        iso_ago(days=1),
        "--channel",
        "post",
        source="ops",
    )
    assert (out["after"]["status"], out["after"]["suppressed"]) == ("refused", True)
    assert not _state(cli, email, "profiling", "email")["suppressed"]  # another channel


# -- rule 2 through the CLI --------------------------------------------------------------------


def test_cli_direct_marketing_objection_is_lifted_by_a_new_consent_only(cli: Any) -> None:
    email = "cy@example.com"
    record(cli, email, "email_marketing", "granted", "--at", iso_ago(days=9), "--notice-version", "v3")
    cli.ok("objection", "raise", "--email", email, "--purpose", "email_marketing", "--at", iso_ago(days=5))
    for basis in ("legitimate_interests", "contract"):
        out = record(
            cli,
            email,
            "email_marketing",
            "granted",
            "--at",
            iso_ago(days=2),
            "--basis",
            basis,
            "--evidence-ref",
            f"{basis}-1",
            source="ops",
        )
        assert (out["after"]["suppressed"], out["after"]["rule"]) == (True, Rule.OBJECTION_DIRECT_MARKETING)
    soft = record(
        cli, email, "email_marketing", "not_applicable", "--at", iso_ago(days=1), *SOFT_OPT_IN_OPTIONS
    )
    assert (soft["after"]["suppressed"], soft["after"]["rule"]) == (True, Rule.OBJECTION_DIRECT_MARKETING)
    consent = record(
        cli, email, "email_marketing", "granted", "--at", iso_ago(hours=1), "--notice-version", "v4"
    )
    assert consent["after"]["suppressed"] is False


# -- rule 7 through the CLI --------------------------------------------------------------------


def test_cli_legitimate_interests_email_marketing_without_a_soft_opt_in_is_suppressed(cli: Any) -> None:
    email = "di@example.com"
    noted = record(
        cli,
        email,
        "email_marketing",
        "not_applicable",
        "--basis",
        "legitimate_interests",
        "--at",
        iso_ago(days=1),
        "--evidence-ref",
        "soft opt-in: bought in 2025",
        source="checkout",
    )
    assert (noted["after"]["suppressed"], noted["after"]["rule"]) == (True, Rule.EPRIVACY_CONSENT_REQUIRED)
    soft = record(
        cli, email, "email_marketing", "not_applicable", "--at", iso_ago(hours=2), *SOFT_OPT_IN_OPTIONS
    )
    assert (soft["after"]["status"], soft["after"]["basis"]) == ("not_applicable", "legitimate_interests")
    assert (soft["after"]["suppressed"], soft["after"]["rule"]) == (False, Rule.EPRIVACY_SOFT_OPT_IN)
    history = cli.json("subject", "show", email)["history"]
    assert history[-1]["soft_opt_in"] == {
        "sale_ref": "order 2026-0042",
        "similar_products": "garden tools, the product line bought",
        "refusal_at_collection": "checkout form v4 (opt-out box)",
        "refusal_in_messages": "newsletter template v2 (unsubscribe link)",
    }
    assert history[0]["soft_opt_in"] is None
    exported = cli.config_path.parent / "di.csv"
    cli.ok("subject", "export", email, "--format", "csv", "-o", str(exported))
    import csv
    import json

    rows = [row for row in csv.DictReader(exported.open(encoding="utf-8")) if row.get("soft_opt_in")]
    assert [json.loads(row["soft_opt_in"])["sale_ref"] for row in rows] == ["order 2026-0042"]
    # The person refuses in a message: the soft opt-in ends.
    refused = record(cli, email, "email_marketing", "refused", "--at", iso_ago(hours=1), source="unsubscribe")
    assert refused["after"]["suppressed"] is True


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (SOFT_OPT_IN_OPTIONS[:6], "--soft-opt-in-refusal-in-messages"),
        (("--soft-opt-in-sale", "order 1"), "missing --soft-opt-in-similar-products"),
        ((*SOFT_OPT_IN_OPTIONS[:7], " "), "--soft-opt-in-refusal-in-messages"),
        ((*SOFT_OPT_IN_OPTIONS[:1], "x" * 201, *SOFT_OPT_IN_OPTIONS[2:]), "at most 200"),
        ((*SOFT_OPT_IN_OPTIONS[:1], "order\x07", *SOFT_OPT_IN_OPTIONS[2:]), "control character"),
        ((*SOFT_OPT_IN_OPTIONS[:1], "ann@example.com", *SOFT_OPT_IN_OPTIONS[2:]), "email address"),
    ],
    ids=["one-missing", "three-missing", "blank", "too-long", "control", "address"],
)
def test_cli_a_soft_opt_in_without_each_condition_evidenced_is_refused(
    cli: Any, extra: tuple[str, ...], needle: str
) -> None:
    result = cli(
        "ledger", "record", "--email", "ed@example.com", "--purpose", "email_marketing",
        "--status", "not_applicable", "--source", "checkout", "--at", iso_ago(days=1), *extra,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    message = (result.stderr or result.output).strip()
    assert needle in message and "\n" not in message and "Traceback" not in message
    assert cli("subject", "show", "ed@example.com").exit_code != 0  # nothing was recorded


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (("--status", "granted"), "not_applicable"),
        (("--status", "not_applicable", "--basis", "consent"), "legitimate_interests"),
        (("--status", "not_applicable", "--channel", "post", "--purpose", "profiling"), "electronic mail"),
        (("--status", "not_applicable", "--no-at"), "--at"),
    ],
    ids=["granted", "consent-basis", "post", "undated"],
)
def test_cli_a_soft_opt_in_is_a_record_of_its_own(cli: Any, extra: tuple[str, ...], needle: str) -> None:
    args = ["--purpose", "email_marketing", "--at", iso_ago(days=1), *SOFT_OPT_IN_OPTIONS, *extra]
    if "--no-at" in args:
        args.remove("--no-at")
        index = args.index("--at")
        del args[index : index + 2]
    if args.count("--purpose") == 2:
        index = args.index("--purpose")
        del args[index : index + 2]
    result = cli("ledger", "record", "--email", "fi@example.com", "--source", "checkout", *args)
    assert result.exit_code == 2, result.output
    message = (result.stderr or result.output).strip()
    assert needle in message and "\n" not in message


# -- rule 4 on the ledger: a late renewal after the sweep ----------------------------------------


def _grant(
    ledger: Ledger, at: datetime, *, purpose: str = "email_marketing", channel: str = "email"
) -> Evidence:
    return consent_value(
        ConsentStatus.GRANTED,
        at,
        ledger.clock(),
        purpose=purpose,
        channel=channel,
        basis=None,
        notice_version="v3",
    )


def _view_state(ledger: Ledger, email: str, purpose: str = "email_marketing", channel: str = "email") -> Any:
    (found,) = [
        p
        for p in ledger.subject_view(email)["purposes"]
        if p["purpose"] == purpose and p["channel"] == channel
    ]
    return found


def test_a_renewal_recorded_after_the_sweep_counts(ledger: Ledger, clock: Clock) -> None:
    start = clock.now - timedelta(days=731)
    for email, sweep_first in (("early@example.com", True), ("late@example.com", False)):
        ledger.record(Identity(email=email), _grant(ledger, start))
        if sweep_first:
            assert ledger.expire_due().recorded == 1
        # A renewal 700 days after the grant, recorded late (after the consent had lapsed).
        ledger.record(Identity(email=email), _grant(ledger, start + timedelta(days=700)))
        if not sweep_first:
            assert ledger.expire_due().recorded == 0  # nothing lapsed: the renewal counts
    for email in ("early@example.com", "late@example.com"):
        state = _view_state(ledger, email)
        assert (state["status"], state["suppressed"]) == ("granted", False)
        assert state["expires_at"] == (start + timedelta(days=1430)).isoformat().replace("+00:00", "Z")
    clock.advance(days=700)
    assert ledger.expire_due().recorded == 2
    assert ledger.expire_due().recorded == 0
    for email in ("early@example.com", "late@example.com"):
        assert (_view_state(ledger, email)["status"], _view_state(ledger, email)["rule"]) == (
            "expired",
            Rule.EXPIRED,
        )


def test_a_recorded_expiry_is_announced_to_the_connectors(ledger: Ledger, clock: Clock) -> None:
    from sqlalchemy import func, select

    from consentsync.ledger.schema import state_changes

    ledger.record(Identity(email="lapse@example.com"), _grant(ledger, clock.now - timedelta(days=729)))
    with ledger.engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(state_changes)).scalar_one()
    clock.advance(days=2)
    assert ledger.expire_due().recorded == 1
    with ledger.engine.connect() as conn:
        after = conn.execute(select(func.count()).select_from(state_changes)).scalar_one()
    assert after == before + 1


def test_summaries_of_the_earlier_fold_are_folded_again(ledger: Ledger, clock: Clock) -> None:
    """A ledger written before issue 12 holds summaries in which the sweep's expiry decided: they
    are folded again from the events, so a late renewal counts there too."""
    from sqlalchemy import update

    from consentsync.domain import canonical_json
    from consentsync.ledger.schema import consent_states

    email = "old-ledger@example.com"
    start = clock.now - timedelta(days=731)
    ledger.record(Identity(email=email), _grant(ledger, start))
    ledger.expire_due()
    ledger.record(Identity(email=email), _grant(ledger, start + timedelta(days=700)))
    with ledger.engine.begin() as conn:
        old = {"v": 1, "latest": None, "tied": False, "restriction": None, "trusted_opt_in_at": None}
        conn.execute(update(consent_states).values(summary=canonical_json(old)))
    state = _view_state(ledger, email)
    assert (state["status"], state["suppressed"]) == ("granted", False)
    ledger.record(Identity(email=email), _grant(ledger, start + timedelta(days=710)))
    assert _view_state(ledger, email)["expires_at"] == (start + timedelta(days=1440)).isoformat().replace(
        "+00:00", "Z"
    )


# -- ledger-level properties: every order of arrival, sweeps included ----------------------------

DAY = timedelta(days=1)
SOFT = SoftOptIn("order 7", "same product line", "checkout form v4", "footer v2")
KEYS = (("email_marketing", "email"), ("offers", "email"), ("offers", "post"), ("profiling", "post"))


@dataclass(frozen=True)
class Fact:
    """One piece of evidence, relative to the start of the example (days before the clock)."""

    purpose: str
    channel: str
    status: ConsentStatus
    basis: LawfulBasis | None
    days_ago: int
    source: str
    origin: Origin
    proof: bool
    soft: bool = False


facts = st.builds(
    Fact,
    purpose=st.sampled_from(KEYS).map(lambda k: k[0]),
    channel=st.just(""),
    status=st.sampled_from(
        [ConsentStatus.GRANTED, ConsentStatus.WITHDRAWN, ConsentStatus.REFUSED, ConsentStatus.NOT_APPLICABLE]
    ),
    basis=st.sampled_from(
        [None, LawfulBasis.CONSENT, LawfulBasis.LEGITIMATE_INTERESTS, LawfulBasis.CONTRACT]
    ),
    days_ago=st.sampled_from([1000, 760, 740, 400, 30, 5]),
    source=st.sampled_from(["web_form", "ops", "hubspot"]),
    origin=st.sampled_from([Origin.CAPTURE, Origin.CRM]),
    proof=st.booleans(),
    soft=st.booleans(),
)


@st.composite
def fact_for_key(draw: st.DrawFn) -> Fact:
    fact = draw(facts)
    purpose, channel = draw(st.sampled_from(KEYS))
    if fact.soft and channel == "email":  # a soft opt-in record
        return Fact(
            purpose,
            channel,
            ConsentStatus.NOT_APPLICABLE,
            LawfulBasis.LEGITIMATE_INTERESTS,
            fact.days_ago,
            "checkout",
            Origin.CAPTURE,
            True,
            True,
        )
    return Fact(
        purpose, channel, fact.status, fact.basis, fact.days_ago, fact.source, fact.origin, fact.proof
    )


def _evidence(fact: Fact, start: datetime, observed: datetime) -> Evidence:
    return Evidence(
        purpose=fact.purpose,
        channel=fact.channel,
        status=fact.status,
        basis=fact.basis,
        event_time=start - fact.days_ago * DAY,
        observed_at=observed,
        source=fact.source,
        origin=fact.origin,
        evidence_ref="ref-1" if fact.proof else None,
        soft_opt_in=SOFT if fact.soft else None,
    )


# A new consent on the purpose with a validity window, at any time: so that lapses, renewals
# recorded after the sweep and reversals are common, not found by chance.
consent_facts = st.builds(
    Fact,
    purpose=st.just("email_marketing"),
    channel=st.just("email"),
    status=st.just(ConsentStatus.GRANTED),
    basis=st.sampled_from([None, LawfulBasis.CONSENT]),
    days_ago=st.sampled_from([1000, 760, 740, 400, 30, 5]),
    source=st.just("web_form"),
    origin=st.just(Origin.CAPTURE),
    proof=st.just(True),
)
any_fact = st.one_of(fact_for_key(), consent_facts)
STEP_ADVANCE = [0, 0, 10, 300]  # days the clock moves before a step
_counter = itertools.count()
PROPERTY_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(
    items=st.lists(any_fact, min_size=1, max_size=7),
    objection_days_ago=st.one_of(st.none(), st.sampled_from([900, 300, 2])),
    data=st.data(),
)
def test_every_order_of_recording_and_sweeping_ends_in_the_same_state(
    policy_ledger: Ledger,
    clock: Clock,
    items: list[Fact],
    objection_days_ago: int | None,
    data: st.DataObject,
) -> None:
    """Two people, the same facts (relative to when each one's story starts), recorded in two
    orders with a direct-marketing objection and expiry sweeps at arbitrary points while the
    clock moves on: both end in the same state, the one the pure reconciler gives for the set of
    facts, and that state obeys rules 1, 2 and 7. The clock only ever moves forward."""
    ledger = policy_ledger
    n = next(_counter)
    people = (f"first-{n}@example.com", f"second-{n}@example.com")
    plans = []
    for _person in people:
        order = data.draw(st.permutations(items), label="recording order")
        steps: list[Any] = [*order, "sweep", "sweep"]
        if objection_days_ago is not None:
            steps.append("objection")
        steps = data.draw(st.permutations(steps), label="interleaving")
        plans.append([(step, data.draw(st.sampled_from(STEP_ADVANCE), label="advance")) for step in steps])
    span = max(sum(advance for _, advance in plan) for plan in plans)
    results = []
    for email, plan in zip(people, plans, strict=True):
        start = clock.advance(days=1)
        for step, advance in plan:
            clock.advance(days=advance)
            if step == "sweep":
                ledger.expire_due()
            elif step == "objection":
                assert objection_days_ago is not None
                ledger.raise_objection(
                    email,
                    "email_marketing",
                    direct_marketing=True,
                    raised_at=start - objection_days_ago * DAY,
                )
            else:
                ledger.record(Identity(email=email), _evidence(step, start, clock.now))
        clock.now = start + span * DAY
        ledger.expire_due()
        view = {(p["purpose"], p["channel"]): p for p in ledger.subject_view(email)["purposes"]}
        results.append(view)
        objections = (
            [ObjectionFact("email_marketing", True, ObjectionStatus.UPHELD, start - objection_days_ago * DAY)]
            if objection_days_ago is not None
            else []
        )
        for key in KEYS:
            got = view[key]
            # The state the pure reconciler gives for the set of facts (no sweeps, any order).
            purpose = ledger.purposes[key[0]]
            evidence = [_evidence(f, start, start) for f in items if (f.purpose, f.channel) == key]
            expected = effective_state(
                summarise(evidence, ledger.policy),
                purpose,
                key[1],
                flags=SubjectFlags(),
                objections=objections,
                now=clock.now,
            )
            assert (got["status"], got["basis"], got["suppressed"], got["rule"]) == (
                expected.status.value,
                expected.basis.value,
                expected.suppressed,
                expected.rule,
            ), key
            _check_issue_12_rules(items, key, got, purpose.eprivacy_applies(key[1]), objection_days_ago)
    first, second = results
    for key in KEYS:
        a, b = first[key], second[key]
        assert (a["status"], a["basis"], a["suppressed"], a["rule"]) == (
            b["status"],
            b["basis"],
            b["suppressed"],
            b["rule"],
        ), key


def _check_issue_12_rules(
    items: list[Fact],
    key: tuple[str, str],
    got: dict[str, Any],
    eprivacy: bool,
    objection_days_ago: int | None,
) -> None:
    mine = [f for f in items if (f.purpose, f.channel) == key]
    consents = [
        f
        for f in mine
        if f.status is ConsentStatus.GRANTED
        and f.basis in (None, LawfulBasis.CONSENT)
        and f.origin is Origin.CAPTURE
        and f.source in ("web_form", "ops")
        and f.proof
    ]
    stickies = [f.days_ago for f in mine if f.status in (ConsentStatus.WITHDRAWN, ConsentStatus.REFUSED)]
    if stickies and not any(c.days_ago < min(stickies) for c in consents):
        assert got["suppressed"], ("rule 1: a withdrawal or refusal only a new consent lifts", key)
        assert got["status"] in ("withdrawn", "refused") or got["rule"] == Rule.OBJECTION_DIRECT_MARKETING
    lifted = objection_days_ago is not None and any(c.days_ago < objection_days_ago for c in consents)
    if objection_days_ago is not None and key[0] in ("email_marketing", "offers") and not lifted:
        assert (got["suppressed"], got["rule"]) == (True, Rule.OBJECTION_DIRECT_MARKETING), (
            "rule 2",
            key,
        )
    if eprivacy and not got["suppressed"]:
        assert got["status"] == "granted" or got["rule"] == Rule.EPRIVACY_SOFT_OPT_IN, ("rule 7", key)
