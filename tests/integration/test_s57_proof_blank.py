"""Every entry point refuses a blank proof value (docs/policy.md, "Evidence"), on SQLite and
PostgreSQL. Before session 57, ``consentsync ledger record --notice-version ''`` (or "   ", or
``--evidence-ref ''``) recorded a grant that counted as proof and reversed a withdrawal
("withdrawn -> granted, rule trusted_opt_in_reverses"); ``Ledger.validate`` (the capture API,
``record_many`` scripts and imports) let the same values in. Now: the CLI refuses a blank value
of a proof option in one line naming it (exit 2, nothing recorded); the ledger refuses one on
anything but a no or a CRM's value (a CRM's blank field reads as none); and the CLI refuses a
grant's notice version that the purpose's registered notices do not hold (a typo), as the capture
API does."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from consentsync import exit_codes
from consentsync.domain import ConsentStatus, Evidence, InvalidInput, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import audit_head, consent_events
from consentsync.ledger.service import Ledger, RecordRequest
from tests.conftest import Cli, Clock, one_line_error, record_args
from tests.hub import conftest as hub
from tests.hub.conftest import HubWorld

# The hub's fixtures (a configured capture API with registered notices), for the capture API test.
inbox, world = hub.inbox, hub.world

EMAIL = "nv@example.com"
WITHDRAWN = ("--at", "2026-11-01T10:00:00Z")
UNPROVEN = ("--at", "2026-11-02T10:00:00Z")
BLANK_GRANT = ("--at", "2026-11-03T10:00:00Z")


def _counts(cli: Cli) -> tuple[int, int]:
    from consentsync.app import open_ledger
    from consentsync.config import load_config

    ledger = open_ledger(load_config(cli.config_path))
    try:
        with ledger.engine.connect() as conn:
            return (
                conn.execute(select(func.count()).select_from(consent_events)).scalar_one(),
                conn.execute(select(audit_head.c.seq)).scalar_one(),
            )
    finally:
        ledger.engine.dispose()


def _status(cli: Cli) -> str:
    shown = cli.json("subject", "show", EMAIL)
    [state] = [s for s in shown["purposes"] if s["purpose"] == "email_marketing" and s["channel"] == "email"]
    return str(state["status"])


@pytest.mark.parametrize(
    ("option", "blank"),
    [
        ("--notice-version", ""),
        ("--notice-version", "   "),
        ("--evidence-ref", ""),
        ("--evidence-ref", "  "),
        ("--double-opt-in-at", ""),
    ],
    ids=["notice-empty", "notice-spaces", "ref-empty", "ref-spaces", "doi-empty"],
)
def test_the_testers_repro_a_blank_proof_option_is_refused_and_the_withdrawal_stands(
    cli: Cli, option: str, blank: str
) -> None:
    cli.ok(*record_args(EMAIL, "email_marketing", "withdrawn", *WITHDRAWN, source="ops"))
    # A grant without proof is no longer recorded at all (docs/admin-commands.md), so it cannot
    # stand beside the withdrawal either.
    before = _counts(cli)
    unproven = cli(*record_args(EMAIL, "email_marketing", "granted", *UNPROVEN))
    one_line_error(unproven, exit_codes.CONFIG, "a grant needs its proof")
    assert _counts(cli) == before
    result = cli(*record_args(EMAIL, "email_marketing", "granted", *BLANK_GRANT, option, blank))
    line = one_line_error(result, exit_codes.CONFIG, option, "blank")
    assert result.stdout == "" and EMAIL not in line
    assert _counts(cli) == before  # no event, no audit entry
    assert _status(cli) == "withdrawn"
    # The same grant with real proof is the person's new consent.
    proven = cli.json(
        *record_args(EMAIL, "email_marketing", "granted", *BLANK_GRANT, "--evidence-ref", "form-7")
    )
    assert (proven["after"]["status"], proven["after"]["rule"]) == ("granted", "trusted_opt_in_reverses")


def test_a_blank_at_is_refused_not_read_as_unknown(cli: Cli) -> None:
    result = cli(*record_args(EMAIL, "email_marketing", "withdrawn", "--at", ""))
    one_line_error(result, exit_codes.CONFIG, "--at is blank", "leave --at out")
    assert _counts(cli)[0] == 0


def _evidence(status: ConsentStatus, origin: Origin = Origin.CAPTURE, **proof: Any) -> Evidence:
    moment = datetime(2026, 5, 30, 9, 0, tzinfo=UTC)
    return Evidence(
        "email_marketing",
        "email",
        status,
        LawfulBasis.CONSENT if status is ConsentStatus.GRANTED else None,
        moment,
        moment,
        "acme-main" if origin is Origin.CRM else "web_form",
        origin,
        **proof,
    )


@pytest.mark.parametrize("field", ["notice_version", "evidence_ref"])
@pytest.mark.parametrize("blank", ["", "   "])
def test_the_ledger_refuses_a_blank_proof_value_from_a_capture(
    ledger: Ledger, clock: Clock, field: str, blank: str
) -> None:
    """``Ledger.validate``, which every capture goes through (the capture API, ``record`` and
    ``record_many`` for scripts and imports), names the field; ``record_many`` records nothing."""
    what = "notice version" if field == "notice_version" else "evidence reference"
    grant = _evidence(ConsentStatus.GRANTED, **{field: blank})
    with pytest.raises(InvalidInput, match=rf"^{what} .* is blank"):
        ledger.validate(grant)
    with pytest.raises(InvalidInput, match=rf"^{what} .* is blank"):
        ledger.record_many([RecordRequest(Identity(email=EMAIL), grant)])
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(consent_events)).scalar_one() == 0


@pytest.mark.parametrize("field", ["notice_version", "evidence_ref"])
def test_a_crm_value_or_a_no_is_never_turned_away_for_a_blank_label(ledger: Ledger, field: str) -> None:
    """A CRM's blank field is no value (quarantining the record would hold back its other
    values), and a withdrawal or refusal only protects the person (a CRM merge carries the nos
    older versions recorded with a blank label): accepted, and proving nothing."""
    for evidence in (
        _evidence(ConsentStatus.GRANTED, Origin.CRM, **{field: ""}),
        _evidence(ConsentStatus.WITHDRAWN, **{field: " "}),
        _evidence(ConsentStatus.REFUSED, **{field: ""}),
    ):
        ledger.validate(evidence)
        assert evidence.has_proof is False


def test_the_capture_api_refuses_a_blank_evidence_reference_on_a_grant(world: HubWorld) -> None:
    body = {
        "email": "api@example.test",
        "purpose": "newsletter",
        "status": "granted",
        "notice_version": "2026-05",
    }
    answer = world.post("/consents", {**body, "evidence_ref": "  "})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error.startswith("consents[0]: evidence reference ") and "blank" in error and "\n" not in error
    assert (
        world.post("/decisions", {"email": "api@example.test", "purpose": "newsletter"}).json()["known"]
        is False
    )
    # A withdrawal with one is recorded all the same: a no is never turned away for a label.
    withdrawal = {
        "email": "api@example.test",
        "purpose": "newsletter",
        "status": "withdrawn",
        "evidence_ref": "",
    }
    assert world.post("/consents", withdrawal).status_code in (200, 201)


# -- a grant's notice version is a registered one (where the purpose registers any) -------------


def _register(cli: Cli, tmp_path: Path, version: str, purpose: str = "email_marketing") -> None:
    text = tmp_path / f"notice-{version}.txt"
    text.write_text("We send offers by email about twice a month.\n", encoding="utf-8")
    # In effect from before the times the tests date their grants at (a grant dated before the
    # notice it names was shown is refused: tests/hub/test_s60_requests_gpc_proof.py).
    cli.ok("notice", "add", purpose, str(text), "--version", version, "--in-effect-from", "2020-01-01")


def test_a_grant_naming_an_unregistered_notice_version_is_refused(cli: Cli, tmp_path: Path) -> None:
    _register(cli, tmp_path, "2026-05")
    cli.ok(*record_args(EMAIL, "email_marketing", "withdrawn", *WITHDRAWN, source="ops"))
    before = _counts(cli)
    typo = cli(*record_args(EMAIL, "email_marketing", "granted", *BLANK_GRANT, "--notice-version", "2026-5"))
    one_line_error(
        typo,
        exit_codes.CONFIG,
        "--notice-version: '2026-5' is not a registered notice of purpose 'email_marketing'",
        "consentsync notice add email_marketing FILE --version '2026-5'",
    )
    assert _counts(cli) == before and _status(cli) == "withdrawn"
    # The registered version is the proof; a no naming any version is recorded as given.
    cli.ok(
        *record_args(
            EMAIL, "email_marketing", "refused", *UNPROVEN, "--notice-version", "old-1", source="ops"
        )
    )
    granted = cli.json(
        *record_args(EMAIL, "email_marketing", "granted", *BLANK_GRANT, "--notice-version", "2026-05")
    )
    assert (granted["after"]["status"], granted["after"]["rule"]) == ("granted", "trusted_opt_in_reverses")


def test_a_purpose_without_registered_notices_takes_the_version_as_given(cli: Cli, tmp_path: Path) -> None:
    """Deployments that keep their notice texts elsewhere (not in the hub) register none: there
    is nothing to check the version against. Another purpose's notices do not count."""
    _register(cli, tmp_path, "2026-05", purpose="profiling")
    granted = cli.json(
        *record_args(EMAIL, "email_marketing", "granted", *BLANK_GRANT, "--notice-version", "v3")
    )
    assert granted["after"]["status"] == "granted" and granted["after"]["evidenced"] is True
