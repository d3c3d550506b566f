"""Lifting a restriction (Art. 18) puts back what the restriction wrote: a Do Not Call or email
opt-out consentsync itself ticked only because the person was restricted is cleared once no
state the field covers is suppressed any more, to the value the field held before; one whose
purpose is still suppressed, if only for want of a consent, stays (writing "allowed" would tell
the CRM the opposite of the ledger); an opt-out a CRM user or the person set is never cleared on
no evidence (docs/policy.md, "Lifting a restriction puts back what it wrote").

The decision, on the shipped Salesforce Contact mapping: ``Mapping.updates_for(..., ours=...)``,
where ``ours`` names the fields whose value the engine wrote itself and nobody changed since,
with the value each held before that write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consentsync.config import Config, parse_config, starter_config_text
from consentsync.domain import ConsentStatus, EffectiveState, LawfulBasis
from consentsync.mapping import Mapping, load_mapping, parse_mapping

CONTACT_YAML = Path(__file__).resolve().parents[2] / "connectors/consentsync_salesforce/mappings/contact.yaml"
Pair = tuple[str, str]


@pytest.fixture(scope="module")
def contact() -> Mapping:
    starter: Config = parse_config(starter_config_text(), Path("/srv/consentsync/consentsync.yaml"))
    return load_mapping(CONTACT_YAML, purposes=starter.purposes, channels=starter.channels)


def _state(
    purpose: str, channel: str, status: ConsentStatus, basis: LawfulBasis, rule: str, *, suppressed: bool
) -> EffectiveState:
    return EffectiveState(purpose, channel, status, basis, suppressed=suppressed, rule=rule)


def _person(phone_rule: str, *, phone_suppressed: bool, email_rule: str = "no_consent_on_record") -> dict:
    """A contact's person: service by phone on its contract basis (decided by ``phone_rule``),
    email marketing on consent with none on record (``email_rule``)."""
    phone_status = (
        ConsentStatus.WITHDRAWN if phone_rule == "sticky_withdrawal" else ConsentStatus.NOT_APPLICABLE
    )
    return {
        ("service", "phone"): _state(
            "service", "phone", phone_status, LawfulBasis.CONTRACT, phone_rule, suppressed=phone_suppressed
        ),
        ("email_marketing", "email"): _state(
            "email_marketing",
            "email",
            ConsentStatus.APPLICABLE,
            LawfulBasis.CONSENT,
            email_rule,
            suppressed=True,
        ),
    }


LIFTED = _person("purpose_default_basis", phone_suppressed=False)
# What the restriction wrote, as the record now shows it.
TICKED = {"Id": "003A", "DoNotCall": True, "HasOptedOutOfEmail": True}
# What both fields held before that write.
BEFORE = {"DoNotCall": False, "HasOptedOutOfEmail": False}


def test_a_lifted_restriction_puts_back_what_it_wrote(contact: Mapping) -> None:
    """The black-box defect: after the lift the ledger says service/phone is not suppressed (the
    contract's default basis): the Do Not Call was consentsync's own, so it goes back to what the
    contact showed before."""
    assert contact.updates_for(TICKED, LIFTED, ours=BEFORE)["DoNotCall"] is False


@pytest.mark.parametrize("rule", ["no_consent_on_record", "eprivacy_consent_required"])
def test_an_opt_out_of_ours_suppressed_for_want_of_consent_is_kept(contact: Mapping, rule: str) -> None:
    """Failing safe (the lead's rule): email marketing with no consent on record is suppressed;
    its Email Opt Out, though consentsync ticked it for the restriction, stays ticked: clearing
    it would tell the CRM the person may be mailed, the opposite of what the ledger says."""
    states = _person("purpose_default_basis", phone_suppressed=False, email_rule=rule)
    assert contact.updates_for(TICKED, states, ours=BEFORE) == {"DoNotCall": False}
    assert contact.updates_for(TICKED, states, ours={"HasOptedOutOfEmail": False}) == {}


def test_an_opt_out_not_ours_is_kept(contact: Mapping) -> None:
    """The same record and states, but the ticks are not consentsync's (a CRM user's, the
    person's, or ones it cannot tell): defaults are not evidence, nothing is cleared."""
    assert contact.updates_for(TICKED, LIFTED) == {}
    assert contact.updates_for(TICKED, LIFTED, ours={}) == {}
    # Only the field that is ours is put back.
    assert contact.updates_for(TICKED, LIFTED, ours={"DoNotCall": False}) == {"DoNotCall": False}


@pytest.mark.parametrize(
    ("rule", "suppressed"),
    [
        ("restriction_art18", True),  # still restricted
        ("sticky_withdrawal", True),  # the person's own no, read from a CRM since
        ("objection_upheld", True),  # an upheld objection is never lifted
        ("objection_pending_review", True),  # not decided yet
        ("erasure_suppression", True),
        ("no_consent_on_record", True),  # suppressed for want of a consent: kept too
    ],
)
def test_an_opt_out_the_ledger_still_implies_is_kept(contact: Mapping, rule: str, suppressed: bool) -> None:
    states = _person(rule, phone_suppressed=suppressed, email_rule=rule)
    assert contact.updates_for(TICKED, states, ours=BEFORE) == {}


def test_a_rejected_objection_puts_back_what_its_review_wrote(contact: Mapping) -> None:
    """An objection under review suppresses like a restriction; rejected, the state is the
    purpose's default again and the tick written while it was pending goes."""
    pending = _person("objection_pending_review", phone_suppressed=True)
    assert contact.updates_for({**TICKED, "DoNotCall": False}, pending) == {"DoNotCall": True}
    assert contact.updates_for(TICKED, LIFTED, ours=BEFORE)["DoNotCall"] is False


@pytest.mark.parametrize("earlier", [None, "", True, "true", "maybe"])
def test_an_earlier_value_unknown_or_itself_a_no_keeps_the_opt_out(contact: Mapping, earlier: Any) -> None:
    """Failing safe: an earlier value not known (a record written before it was ever read), empty,
    itself an opt-out, or one the pull table does not know keeps the tick."""
    assert contact.updates_for(TICKED, LIFTED, ours={"DoNotCall": earlier}) == {}


def test_a_value_changed_since_our_write_is_left_alone(contact: Mapping) -> None:
    """The field no longer shows an opt-out (someone cleared it): nothing to put back."""
    record = {**TICKED, "DoNotCall": False}
    assert contact.updates_for(record, LIFTED, ours={"DoNotCall": False}) == {}


def test_evidence_still_decides_first(contact: Mapping) -> None:
    """A state allowed on evidence is written as it always was, ``ours`` or not."""
    granted = {
        **LIFTED,
        ("service", "phone"): _state(
            "service",
            "phone",
            ConsentStatus.GRANTED,
            LawfulBasis.CONTRACT,
            "latest_event_time",
            suppressed=False,
        ),
    }
    assert contact.updates_for(TICKED, granted, ours={"DoNotCall": True}) == {"DoNotCall": False}


NEVER_CLEARED = """\
version: 1
vendor: salesforce
object: Contact
identity: {record_id: Id, modstamp: SystemModstamp, email: Email}
consents:
  - purpose: service
    channel: phone
    status:
      field: DoNotCall
      direction: both
      pull: {true: withdrawn, false: null}
      push: {suppressed: true}
"""


def test_a_mapping_that_never_clears_the_field_keeps_even_our_opt_out() -> None:
    mapping = parse_mapping(NEVER_CLEARED, Path("contact.yaml"))
    assert mapping.updates_for(TICKED, LIFTED, ours=BEFORE) == {}


SEVERAL_CHANNELS = """\
version: 1
vendor: salesforce
object: Contact
identity: {record_id: Id, modstamp: SystemModstamp, email: Email}
consents:
  - purpose: service
    channel: [phone, email]
    status:
      field: DoNotContact__c
      direction: push
      push: {suppressed: true, allowed: false}
"""


def test_a_field_covering_several_channels_is_put_back_only_when_none_is_suppressed_on_evidence() -> None:
    mapping = parse_mapping(SEVERAL_CHANNELS, Path("contact.yaml"))
    record = {"Id": "003A", "DoNotContact__c": True}
    ours = {"DoNotContact__c": False}

    def states(email_rule: str, *, email_suppressed: bool) -> dict[Pair, EffectiveState]:
        return {
            ("service", "phone"): LIFTED[("service", "phone")],
            ("service", "email"): _state(
                "service",
                "email",
                ConsentStatus.NOT_APPLICABLE,
                LawfulBasis.CONTRACT,
                email_rule,
                suppressed=email_suppressed,
            ),
        }

    both_default = states("purpose_default_basis", email_suppressed=False)
    assert mapping.updates_for(record, both_default, ours=ours) == {"DoNotContact__c": False}
    one_withdrawn = states("sticky_withdrawal", email_suppressed=True)
    assert mapping.updates_for(record, one_withdrawn, ours=ours) == {}
    one_without_consent = states("no_consent_on_record", email_suppressed=True)
    assert mapping.updates_for(record, one_without_consent, ours=ours) == {}


class _Noting(dict[str, Any]):
    """An ``ours`` that notes what it is asked (as the engine's ``_AskedFor`` does)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.asked: list[str] = []

    def __contains__(self, name: object) -> bool:
        self.asked.append(str(name))
        return super().__contains__(name)


@pytest.mark.parametrize(
    ("record", "states", "asked"),
    [
        (TICKED, LIFTED, ["DoNotCall"]),  # the only field a known earlier value would put back
        ({**TICKED, "DoNotCall": False}, LIFTED, []),  # no opt-out shown: nothing to look up
        ({"Id": "003A"}, LIFTED, []),  # a record never read
        (TICKED, _person("restriction_art18", phone_suppressed=True, email_rule="restriction_art18"), []),
        (TICKED, _person("sticky_withdrawal", phone_suppressed=True), []),
    ],
)
def test_ours_is_asked_only_for_a_field_it_would_put_back(
    contact: Mapping, record: dict[str, Any], states: dict[Pair, EffectiveState], asked: list[str]
) -> None:
    """The engine looks its own writes up only for the fields the mapping asks ``ours`` about
    (the cost of a sync): asked last, once everything but the earlier value allows a put-back,
    and never for a record it leaves alone anyway."""
    ours = _Noting()
    assert contact.updates_for(record, states, ours=ours) == {}
    assert ours.asked == asked
