"""A CRM's values are never overwritten on thinner evidence than they carry: "no consent on
record" leaves a CRM status alone unless the mapping names a (reversible) value for it, a default
basis never replaces one the CRM holds, and a write the CRM can never undo (HubSpot's unsubscribe)
is sent only for an evidenced withdrawal, objection or erasure."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from consentsync_hubspot.sandbox.harness import HubSpotHarness

from consentsync.domain import ConsentStatus, EffectiveState, Evidence, LawfulBasis
from consentsync.ledger.identity import Identity
from consentsync.mapping import parse_mapping
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from tests.conftest import SQLITE_ONLY, running_harness
from tests.integration.helpers import consent_value, mapping_text


def _captured(email: str, status: ConsentStatus, **proof: str) -> tuple[Identity, Evidence]:
    """The person's email-marketing choice, captured now on the web site."""
    now = datetime.now(UTC)
    return Identity(email=email), consent_value(status, now, now, **proof)


def test_an_unsubscribe_is_sent_for_a_withdrawal_never_for_a_restriction_or_no_consent(
    hubspot: HubSpotHarness, tmp_path: Path
) -> None:
    nobody = hubspot.create_person("no.consent@example.test")
    restricted = hubspot.create_person("restricted@example.test")
    withdrew = hubspot.create_person("withdrew@example.test")
    config = write_sync_config(hubspot, tmp_path)
    engine = open_sync_engine(config)
    engine.ledger.record(*_captured("withdrew@example.test", ConsentStatus.WITHDRAWN))
    engine.ledger.record(*_captured("restricted@example.test", ConsentStatus.WITHDRAWN))
    # An Art. 18 restriction is lifted one day: a newer evidenced opt-in first, then restricted.
    engine.ledger.record(*_captured("restricted@example.test", ConsentStatus.GRANTED, notice_version="v1"))
    engine.ledger.restrict("restricted@example.test", restricted=True, reason="accuracy contested")
    time.sleep(1.1)
    report = open_sync_engine(config).run(full=True)
    assert report.status == "succeeded", report.error
    assert hubspot.read_opted_out(withdrew), "an evidenced withdrawal was not passed on"
    assert not hubspot.read_opted_out(restricted), "a restriction (lifted one day) became an unsubscribe"
    assert not hubspot.read_opted_out(nobody), "a contact without consent on record was unsubscribed"
    assert report.counts.irreversible_held >= 1


CONSENTS = """\
  - purpose: email_marketing
    channel: email
    status:
      field: OptOut
      direction: both
      pull: {true: withdrawn, false: null}
      push: {suppressed: true, allowed: false, no_consent: NONE_ON_RECORD}
  - purpose: service
    channel: email
    status:
      field: ServiceOptOut
      direction: both
      pull: {true: withdrawn, false: null}
      push: {suppressed: true}
    basis:
      field: Basis
      direction: both
      pull: {Consent: consent, Contract: contract}
      push: {consent: Consent, contract: Contract}
"""
MAPPING = mapping_text("acme", "Contact", ("Id", "Modified", "Email"), CONSENTS)


Outcome = tuple[ConsentStatus, str, bool]  # a purpose's status, the rule deciding it, suppressed


def _states(
    marketing: Outcome, service: Outcome, *, stated: bool = True
) -> dict[tuple[str, str], EffectiveState]:
    """What the mapping is handed: email marketing (on consent) and service (on contract), by email;
    ``stated``: whether evidence gave the bases (never where no evidence decided)."""
    return {
        (purpose, "email"): EffectiveState(
            purpose,
            "email",
            status,
            basis,
            suppressed=suppressed,
            rule=rule,
            basis_stated=stated and rule not in ("no_consent_on_record", "purpose_default_basis"),
        )
        for purpose, basis, (status, rule, suppressed) in (
            ("email_marketing", LawfulBasis.CONSENT, marketing),
            ("service", LawfulBasis.CONTRACT, service),
        )
    }


def test_no_consent_on_record_writes_only_the_mappings_no_consent_value_and_defaults_no_basis() -> None:
    mapping = parse_mapping(MAPPING, Path("contact.yaml"))
    by_default = _states(
        marketing=(ConsentStatus.APPLICABLE, "no_consent_on_record", True),
        service=(ConsentStatus.NOT_APPLICABLE, "purpose_default_basis", False),
    )
    crm = {"OptOut": False, "ServiceOptOut": False, "Basis": "Consent"}
    assert mapping.updates_for(crm, by_default) == {"OptOut": "NONE_ON_RECORD"}
    evidenced = _states(
        marketing=(ConsentStatus.WITHDRAWN, "sticky_withdrawal", True),
        service=(ConsentStatus.GRANTED, "latest_event_time", False),
    )
    assert mapping.updates_for(crm, evidenced) == {"OptOut": True, "Basis": "Contract"}
    # Evidence of the service status that named no basis: the contract is the purpose's default.
    unstated = _states(
        marketing=(ConsentStatus.WITHDRAWN, "sticky_withdrawal", True),
        service=(ConsentStatus.GRANTED, "latest_event_time", False),
        stated=False,
    )
    assert mapping.updates_for(crm, unstated) == {"OptOut": True}


def test_a_consent_removed_for_expiry_reads_back_withdrawn_and_is_no_withdrawal(tmp_path: Path) -> None:
    """SuperOffice marks a consent removed by RemoveConsent Withdrawn, stamped when it applied
    the write: read back, that is the project's own write, never the person's withdrawal (which
    only a new trusted opt-in could reverse), and it is not removed again."""
    from consentsync_superoffice.sandbox.harness import SuperOfficeHarness

    from consentsync.sdk.testing import _set_connector

    harness = SuperOfficeHarness()
    harness.start()
    try:
        emails = harness.seed_existing_org()  # consents registered since 2019: some expired
        config = write_sync_config(harness, tmp_path)
        time.sleep(1.1)
        assert open_sync_engine(config).run(full=True).status == "succeeded"
        ledger = open_sync_engine(config).ledger
        expired = [
            email
            for email in emails
            if any(
                (p["purpose"], p["status"]) == ("email_marketing", "expired")
                for p in ledger.subject_view(email)["purposes"]
            )
        ]
        assert expired, "the seeded org has a consent older than the purpose's validity"
        time.sleep(1.1)
        again = open_sync_engine(config).run()  # reads the removals back as Withdrawn
        assert again.status == "succeeded", again.error
        assert (again.counts.evidence_recorded, again.counts.pushes_enqueued) == (0, 0)
        states = {
            email: next(
                p for p in ledger.subject_view(email)["purposes"] if p["purpose"] == "email_marketing"
            )
            for email in expired
        }
        assert {state["rule"] for state in states.values()} == {"validity_expired"}, states
        _set_connector(config, mode="two_way")
        assert open_sync_engine(config).run().counts.pushed == 0
    finally:
        harness.stop()


@pytest.mark.parametrize("status", [ConsentStatus.REQUESTED, ConsentStatus.APPLICABLE])
@pytest.mark.parametrize(
    "rule", ["latest_event_time", "unknown_event_time_most_restrictive", "most_restrictive_on_tie"]
)
def test_a_status_nobody_answered_is_no_consent_on_record_not_an_opt_out(
    status: ConsentStatus, rule: str
) -> None:
    """A request mailed or a double opt-in sign-up not confirmed ("requested"), or a consent
    closed with nothing on record ("applicable"), winning on time: suppressed for want of a
    consent, so only the mapping's ``no_consent`` value is written, never its opt-out (a person
    who ignores a request mail, or whose address a stranger typed into a form, never said no)."""
    mapping = parse_mapping(MAPPING, Path("contact.yaml"))
    crm = {"OptOut": False, "ServiceOptOut": False, "Basis": "Contract"}
    # With nothing but such statuses on record the reconciler states no basis for it
    # (reconcile._state_of): a request names the basis it asks for, which nobody gave.
    unanswered = _states(
        marketing=(status, rule, True),
        service=(ConsentStatus.GRANTED, "latest_event_time", False),
        stated=False,
    )
    assert mapping.updates_for(crm, unanswered) == {"OptOut": "NONE_ON_RECORD"}
    without_value = parse_mapping(MAPPING.replace(", no_consent: NONE_ON_RECORD", ""), Path("contact.yaml"))
    assert without_value.updates_for(crm, unanswered) == {}


@pytest.mark.parametrize("status", [ConsentStatus.REQUESTED, ConsentStatus.APPLICABLE])
@pytest.mark.parametrize(
    "rule", ["latest_event_time", "unknown_event_time_most_restrictive", "most_restrictive_on_tie"]
)
def test_a_status_nobody_answered_over_an_earlier_answer_writes_the_opt_out(
    status: ConsentStatus, rule: str
) -> None:
    """The same status over a consent granted and since expired (or any other answer: the
    reconciler states the basis then): the CRM may still show that consent's opt-in, which the
    ledger no longer holds, so the opt-out is written, as the expiry alone writes it (review of
    4baf158, F1)."""
    mapping = parse_mapping(MAPPING.replace(", no_consent: NONE_ON_RECORD", ""), Path("contact.yaml"))
    crm = {"OptOut": False, "ServiceOptOut": False, "Basis": "Contract"}
    over_an_answer = _states(
        marketing=(status, rule, True),
        service=(ConsentStatus.GRANTED, "latest_event_time", False),
    )
    assert mapping.updates_for(crm, over_an_answer) == {"OptOut": True}


@pytest.mark.parametrize(
    "rule", ["erasure_suppression", "restriction_art18", "objection_upheld", "objection_pending_review"]
)
def test_a_status_nobody_answered_under_a_suppression_on_evidence_still_writes_the_opt_out(rule: str) -> None:
    mapping = parse_mapping(MAPPING.replace(", no_consent: NONE_ON_RECORD", ""), Path("contact.yaml"))
    crm = {"OptOut": False, "ServiceOptOut": False, "Basis": "Contract"}
    states = _states(
        marketing=(ConsentStatus.REQUESTED, rule, True),
        service=(ConsentStatus.GRANTED, "latest_event_time", False),
    )
    assert mapping.updates_for(crm, states) == {"OptOut": True}


@SQLITE_ONLY  # the decision is the reconciler's and the mapping's, the same on either database
def test_an_unconfirmed_sign_up_after_an_expiry_ticks_the_opt_out_a_bare_one_does_not(
    tmp_path: Path, ledger_url: str
) -> None:
    """Against the Salesforce sandbox, no sync between the expiry and the sign-up: a double
    opt-in sign-up not confirmed, recorded after the person's consent expired, leaves them
    suppressed, and the Email Opt Out the grant left unticked is ticked, as the expiry alone
    ticks it (review of 4baf158, F1). The same sign-up for an address with nothing else on
    record (anyone can type one into the form) leaves the box alone (4baf158)."""
    with running_harness("salesforce") as harness:
        lapsed = harness.create_person("lapsed@example.net")
        stranger = harness.create_person("typed.in@example.net")
        path = write_sync_config(harness, tmp_path)
        data = yaml.safe_load(path.read_text())
        data["ledger"]["url"] = ledger_url
        (purpose,) = [p for p in data["purposes"] if p["key"] == "email_marketing"]
        purpose["validity_days"] = 1
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        engine = open_sync_engine(path)
        try:
            now = datetime.now(UTC)
            engine.ledger.record(
                Identity(email="lapsed@example.net"),
                Evidence.from_web_form(
                    ConsentStatus.GRANTED, now - timedelta(days=3), now, notice_version="v1"
                ),
            )
            for email in ("lapsed@example.net", "typed.in@example.net"):
                signed_up = datetime.now(UTC)
                sign_up = Evidence.from_web_form(
                    ConsentStatus.REQUESTED, signed_up, signed_up, notice_version="v2"
                )
                engine.ledger.record(Identity(email=email), sign_up)
            report = engine.run(full=True)
            assert report.status == "succeeded", report.error
            for email in ("lapsed@example.net", "typed.in@example.net"):
                (state,) = [
                    s
                    for s in engine.ledger.subject_view(email)["purposes"]
                    if s["purpose"] == "email_marketing"
                ]
                assert (state["status"], state["suppressed"], state["rule"]) == (
                    "requested",
                    True,
                    "latest_event_time",
                )
            assert harness.read_opted_out(lapsed), "the expired consent's opt-in stayed in the CRM"
            assert not harness.read_opted_out(stranger), "a sign-up nobody confirmed wrote an opt-out"
        finally:
            engine.ledger.engine.dispose()
