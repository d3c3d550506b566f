"""Lifting a restriction (Art. 18), or renewing a consent that expired, puts back what consentsync
wrote to SuperOffice, whose example mapping has no ``allowed`` (a sync never records a consent
there): end to end against the SuperOffice sandbox with the shipped Person mapping and the real
engine, on SQLite (the lookups' SQL runs on PostgreSQL in test_s57_restriction_lift_sync).

The black-box defect (F2 of session 58): restricted, a person's E-marketing consent was removed
(RemoveConsent, which SuperOffice stores as the legal basis Withdrawn); lifted, the ledger said
granted, but SuperOffice showed "Withdrawn" for good: a withdrawal nobody gave (Art. 5(1)(d)),
its mailings leaving the person out. The put-back rule skipped every field whose push table has no
``allowed``. Now the consent is set again with the legal basis it had before the removal; a
withdrawal the person gave (to SuperOffice, or anywhere consentsync wrote it from) stays.
docs/policy.md, "Lifting a restriction puts back what it wrote"; docs/connectors/superoffice.md.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from consentsync.config import parse_config, starter_config_text
from consentsync.domain import ConsentStatus, EffectiveState, Evidence, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.mapping import Mapping, OurWrite, load_mapping, parse_mapping
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from tests.conftest import SQLITE_ONLY, running_harness
from tests.unit.test_s57_restriction_lift_mapping import NEVER_CLEARED  # a no and a restriction write alike

CONSENTED = "consented@example.test"  # E-marketing on consent
SOFT = "soft@example.test"  # E-marketing on a soft opt-in
SAID_NO = "said.no@example.test"  # withdrew e-marketing elsewhere while restricted
USER_WITHDREW = "user.withdrew@example.test"  # Withdrawn in SuperOffice before the restriction
NEVER = "never@example.test"  # no e-marketing consent at all
PEOPLE = (CONSENTED, SOFT, SAID_NO, USER_WITHDREW, NEVER)


@pytest.fixture
def superoffice() -> Iterator[Any]:
    with running_harness("superoffice") as started:
        yield started


def _config(harness: Any, directory: Path, ledger_url: str, **settings: Any) -> Path:
    path = write_sync_config(harness, directory)
    data = yaml.safe_load(path.read_text())
    data["ledger"]["url"] = ledger_url
    data["connectors"][0]["settings"].update(settings)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _set_mode(config: Path, mode: str) -> None:
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["mode"] = mode
    config.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _run(config: Path, **how: Any) -> Any:
    time.sleep(1.1)  # the sandbox stamps changes with the real time, to the second
    engine = open_sync_engine(config)
    try:
        report = engine.run(**how)
    finally:
        engine.ledger.engine.dispose()
    assert report.status == ("dry_run" if how.get("dry_run") else "succeeded"), report.error
    return report


def _plan(config: Path) -> dict[str, dict[str, Any]]:
    """What `consentsync plan` would push, by record id: the new values."""
    plan = _run(config, dry_run=True).plan
    assert plan is not None
    return {item["record_id"]: item["new"] for item in plan.to_json()["items"]}


def _person(harness: Any, email: str, legal_base: str | None, *, at: dt.datetime | None = None) -> str:
    person = harness.tenant.create_person("P", email.split("@")[0], email, at=at)
    if legal_base is not None:
        harness.tenant.set_consent(person.id, "EMARKETING", "FORM", legal_base, "", at=at)
    return str(person.id)


def _basis(harness: Any, record_id: str) -> str | None:
    row = harness.tenant.consent(int(record_id), "EMARKETING")
    return row.legal_base.key if row is not None else None


def _ledger(config: Path, act: Any) -> None:
    engine = open_sync_engine(config)
    try:
        act(engine.ledger)
    finally:
        engine.ledger.engine.dispose()


def _restrict(config: Path, emails: tuple[str, ...], *, restricted: bool) -> None:
    reason = "accuracy contested" if restricted else "resolved"
    _ledger(config, lambda ledger: [ledger.restrict(e, restricted=restricted, reason=reason) for e in emails])


def _capture(config: Path, email: str, status: ConsentStatus) -> None:
    now = dt.datetime.now(dt.UTC)
    evidence = Evidence(
        purpose="email_marketing",
        channel="email",
        status=status,
        basis=LawfulBasis.CONSENT,
        event_time=now,
        observed_at=now,
        source="web_form",
        origin=Origin.CAPTURE,
        notice_version="v4",
        double_opt_in_at=now if status is ConsentStatus.GRANTED else None,
    )
    _ledger(config, lambda ledger: ledger.record(Identity(email=email), evidence))


def _marketing(config: Path, email: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []
    _ledger(
        config,
        lambda ledger: found.extend(
            p for p in ledger.subject_view(email)["purposes"] if p["purpose"] == "email_marketing"
        ),
    )
    (state,) = found
    return state


def _restricted_and_lifted(harness: Any, config: Path) -> dict[str, str]:
    ids = {
        CONSENTED: _person(harness, CONSENTED, "CONSENT"),
        SOFT: _person(harness, SOFT, "SOFTOPTIN"),
        SAID_NO: _person(harness, SAID_NO, "CONSENT"),
        USER_WITHDREW: _person(harness, USER_WITHDREW, "WITHDRAWN"),
        NEVER: _person(harness, NEVER, None),
    }
    _run(config, full=True)
    _restrict(config, PEOPLE, restricted=True)
    _run(config)
    assert {email: _basis(harness, ids[email]) for email in PEOPLE} == {
        CONSENTED: "WITHDRAWN",  # RemoveConsent, stored as Withdrawn (the sandbox's default)
        SOFT: "WITHDRAWN",
        SAID_NO: "WITHDRAWN",
        USER_WITHDREW: "WITHDRAWN",  # theirs: not written
        NEVER: None,  # never had one: left alone
    }, "the restriction did not reach SuperOffice"
    _run(config)  # the removals read back: consentsync's own writes, not withdrawals
    _capture(config, SAID_NO, ConsentStatus.WITHDRAWN)
    _restrict(config, PEOPLE, restricted=False)
    return ids


@SQLITE_ONLY  # the engine's lookups run on PostgreSQL in test_s57_restriction_lift_sync
def test_lifting_a_restriction_sets_each_removed_consent_again_with_its_legal_basis(
    superoffice: Any, tmp_path: Path, ledger_url: str
) -> None:
    config = _config(superoffice, tmp_path, ledger_url)
    ids = _restricted_and_lifted(superoffice, config)
    assert _marketing(config, CONSENTED)["status"] == "granted"
    assert _marketing(config, CONSENTED)["suppressed"] is False
    # The plan holds exactly the put-backs: the legal basis each consent had before the removal.
    # The person's own withdrawal (given meanwhile, or in SuperOffice before) stays; nobody gets
    # a consent SuperOffice never showed.
    assert _plan(config) == {
        ids[CONSENTED]: {"LegalBase_EMARKETING": "CONSENT"},
        ids[SOFT]: {"LegalBase_EMARKETING": "SOFTOPTIN"},
    }
    # The soft opt-in is suppressed for e-mail for want of a consent (ePrivacy), as before the
    # restriction, when consentsync left SuperOffice's value as it was: so it is left again.
    soft = _marketing(config, SOFT)
    assert (soft["status"], soft["rule"]) == ("granted", "eprivacy_consent_required")
    assert _run(config).counts.pushed == 2
    assert {email: _basis(superoffice, ids[email]) for email in PEOPLE} == {
        CONSENTED: "CONSENT",
        SOFT: "SOFTOPTIN",
        SAID_NO: "WITHDRAWN",
        USER_WITHDREW: "WITHDRAWN",
        NEVER: None,
    }
    # Read back: its own writes (no new consent in the ledger, its validity unchanged); settled.
    expires_at = _marketing(config, CONSENTED)["expires_at"]
    again = _run(config)
    assert (again.counts.pushed, again.counts.evidence_recorded) == (0, 0)
    assert _run(config, full=True).counts.pushed == 0
    assert _plan(config) == {}
    assert _marketing(config, CONSENTED)["expires_at"] == expires_at
    assert _marketing(config, SAID_NO)["status"] == "withdrawn"
    # A SuperOffice user withdrawing the put-back consent is the person's no: it stands.
    superoffice.tenant.set_consent(int(ids[CONSENTED]), "EMARKETING", "MANUAL", "WITHDRAWN", "")
    _run(config)
    _run(config, full=True)
    assert _basis(superoffice, ids[CONSENTED]) == "WITHDRAWN"
    assert _marketing(config, CONSENTED)["status"] == "withdrawn"


@SQLITE_ONLY  # the engine's lookups run on PostgreSQL in test_s57_restriction_lift_sync
def test_a_consent_renewed_after_it_expired_is_set_again(
    superoffice: Any, tmp_path: Path, ledger_url: str
) -> None:
    """The same write for an expiry: the consent removed when it ran out (a no nobody gave) is set
    again once the person renews it, here on a web form."""
    config = _config(superoffice, tmp_path, ledger_url)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=800)  # email_marketing: 730 days
    record_id = _person(superoffice, "renewed@example.test", "CONSENT", at=long_ago)
    _run(config, full=True)
    assert _basis(superoffice, record_id) == "WITHDRAWN"
    assert _marketing(config, "renewed@example.test")["status"] == "expired"
    _run(config)  # the removal read back
    assert _plan(config) == {}
    _capture(config, "renewed@example.test", ConsentStatus.GRANTED)
    assert _plan(config) == {record_id: {"LegalBase_EMARKETING": "CONSENT"}}
    _run(config)
    assert _basis(superoffice, record_id) == "CONSENT"
    assert _run(config).counts.pushed == 0


@SQLITE_ONLY  # the engine's lookups run on PostgreSQL in test_s57_restriction_lift_sync
def test_a_withdrawal_consentsync_wrote_is_not_undone_by_a_later_consent(
    superoffice: Any, tmp_path: Path, ledger_url: str
) -> None:
    """Only a removal is put back, never a withdrawal written for the person's own no: the mapping
    copies no consent into SuperOffice (no ``allowed``), and a new consent given elsewhere after
    the withdrawal is no reason for one."""
    config = _config(superoffice, tmp_path, ledger_url)
    record_id = _person(superoffice, "changed.mind@example.test", "CONSENT")
    _run(config, full=True)
    _capture(config, "changed.mind@example.test", ConsentStatus.WITHDRAWN)
    _run(config)
    assert _basis(superoffice, record_id) == "WITHDRAWN"  # SetConsent Withdrawn: their no
    _capture(config, "changed.mind@example.test", ConsentStatus.GRANTED)
    assert _marketing(config, "changed.mind@example.test")["status"] == "granted"
    assert _plan(config) == {}
    _run(config)
    _run(config, full=True)
    assert _basis(superoffice, record_id) == "WITHDRAWN"


@SQLITE_ONLY  # the engine's lookups run on PostgreSQL in test_s57_restriction_lift_sync
def test_a_tenant_that_deletes_a_removed_consent_gets_it_back(
    superoffice: Any, tmp_path: Path, ledger_url: str
) -> None:
    """Where RemoveConsent deletes the row (``removal_reads_back_as: null``), SuperOffice shows no
    e-marketing consent while the person is restricted, and the consent again once lifted."""
    superoffice.tenant.remove_mode = "delete"
    config = _config(superoffice, tmp_path, ledger_url, removal_reads_back_as=None)
    record_id = _person(superoffice, CONSENTED, "SOFTOPTIN")
    _run(config, full=True)
    _restrict(config, (CONSENTED,), restricted=True)
    _run(config)
    assert _basis(superoffice, record_id) is None
    _run(config)
    _restrict(config, (CONSENTED,), restricted=False)
    _run(config)
    assert _basis(superoffice, record_id) == "SOFTOPTIN"
    assert _run(config).counts.pushed == 0


@SQLITE_ONLY  # the engine's lookups run on PostgreSQL in test_s57_restriction_lift_sync
def test_suppress_only_never_puts_back_and_two_way_then_does(
    superoffice: Any, tmp_path: Path, ledger_url: str
) -> None:
    """suppress_only never clears a no, its own removal included; switching the connector to
    two_way (new push rules: everyone decided again) puts it back."""
    config = _config(superoffice, tmp_path, ledger_url)
    _set_mode(config, "suppress_only")
    record_id = _person(superoffice, CONSENTED, "CONSENT")
    _run(config, full=True)
    _restrict(config, (CONSENTED,), restricted=True)
    _run(config)
    assert _basis(superoffice, record_id) == "WITHDRAWN"
    _restrict(config, (CONSENTED,), restricted=False)
    _run(config)
    _run(config, full=True)
    assert _basis(superoffice, record_id) == "WITHDRAWN"
    _set_mode(config, "two_way")
    _run(config)
    assert _basis(superoffice, record_id) == "CONSENT"


@SQLITE_ONLY  # the engine's lookups run on PostgreSQL in test_s57_restriction_lift_sync
def test_a_restriction_lifted_under_an_older_release_is_put_back_by_its_first_sync(
    superoffice: Any, tmp_path: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """People lifted before this release (SuperOffice left showing Withdrawn): the first sync of
    this release decides everyone again (the push rules' version) and sets the consent again."""
    from consentsync.sync import push_rules
    from consentsync.sync.engine import SyncEngine

    config = _config(superoffice, tmp_path, ledger_url)
    ids = _restricted_and_lifted(superoffice, config)
    with monkeypatch.context() as older:
        older.setattr(SyncEngine, "_put_backs", lambda *_: {})
        older.setattr(push_rules, "PUSH_DECISIONS_VERSION", push_rules.PUSH_DECISIONS_VERSION - 1)
        _run(config)
        assert _basis(superoffice, ids[CONSENTED]) == "WITHDRAWN"
    _run(config)
    assert _basis(superoffice, ids[CONSENTED]) == "CONSENT"
    assert _basis(superoffice, ids[SAID_NO]) == "WITHDRAWN"


# -- the rule itself, on the shipped Person mapping ---------------------------------------------

PERSON_YAML = Path(__file__).resolve().parents[2] / "connectors/consentsync_superoffice/mappings/person.yaml"
SHOWN_WITHDRAWN = {"PersonId": "7", "LegalBase_EMARKETING": "WITHDRAWN"}


@pytest.fixture(scope="module")
def person() -> Mapping:
    starter = parse_config(starter_config_text(), Path("/srv/consentsync/consentsync.yaml"))
    return load_mapping(PERSON_YAML, purposes=starter.purposes, channels=starter.channels)


def _marketing_state(status: ConsentStatus, basis: LawfulBasis, rule: str, *, suppressed: bool) -> Any:
    return {
        ("email_marketing", "email"): EffectiveState(
            "email_marketing", "email", status, basis, suppressed=suppressed, rule=rule
        )
    }


GRANTED = _marketing_state(ConsentStatus.GRANTED, LawfulBasis.CONSENT, "latest_event_time", suppressed=False)


def test_only_a_removal_of_ours_is_put_back_never_a_withdrawal_or_a_write_not_known(person: Mapping) -> None:
    removal = {"LegalBase_EMARKETING": OurWrite("CONSENT", None)}
    assert person.updates_for(SHOWN_WITHDRAWN, GRANTED, ours=removal) == {"LegalBase_EMARKETING": "CONSENT"}
    # Our SetConsent Withdrawn for the person's no; a write whose value is not known.
    withdrawal = {"LegalBase_EMARKETING": OurWrite("CONSENT", "WITHDRAWN")}
    assert person.updates_for(SHOWN_WITHDRAWN, GRANTED, ours=withdrawal) == {}
    assert person.updates_for(SHOWN_WITHDRAWN, GRANTED, ours={"LegalBase_EMARKETING": "CONSENT"}) == {}
    # An earlier value that was itself a withdrawal, or nothing.
    assert (
        person.updates_for(SHOWN_WITHDRAWN, GRANTED, ours={"LegalBase_EMARKETING": OurWrite(None, None)})
        == {}
    )
    was_no = {"LegalBase_EMARKETING": OurWrite("WITHDRAWN", None)}
    assert person.updates_for(SHOWN_WITHDRAWN, GRANTED, ours=was_no) == {}


@pytest.mark.parametrize(
    ("state", "put_back"),
    [
        (
            _marketing_state(
                ConsentStatus.GRANTED,
                LawfulBasis.LEGITIMATE_INTERESTS,
                "eprivacy_consent_required",
                suppressed=True,
            ),
            True,
        ),
        (
            _marketing_state(
                ConsentStatus.WITHDRAWN, LawfulBasis.CONSENT, "sticky_withdrawal", suppressed=True
            ),
            False,
        ),
        (
            _marketing_state(
                ConsentStatus.GRANTED, LawfulBasis.CONSENT, "restriction_art18", suppressed=True
            ),
            False,
        ),
        (
            _marketing_state(ConsentStatus.EXPIRED, LawfulBasis.CONSENT, "validity_expired", suppressed=True),
            False,
        ),
        # No consent on record: the earlier soft opt-in (granted) says other than the ledger.
        (
            _marketing_state(
                ConsentStatus.APPLICABLE, LawfulBasis.CONSENT, "no_consent_on_record", suppressed=True
            ),
            False,
        ),
    ],
)
def test_a_suppression_keeps_the_removal_unless_only_for_want_of_a_consent_the_earlier_value_states(
    person: Mapping, state: Any, put_back: bool
) -> None:
    ours = {"LegalBase_EMARKETING": OurWrite("SOFTOPTIN", None)}
    # (A suppression still in force has the removal written as such: the engine leaves it out,
    # SuperOffice showing what it reads back as.)
    written = person.updates_for(SHOWN_WITHDRAWN, state, ours=ours).get("LegalBase_EMARKETING")
    assert (written == "SOFTOPTIN") is put_back


def test_without_allowed_a_value_written_for_a_no_and_a_restriction_alike_stays() -> None:
    mapping = parse_mapping(NEVER_CLEARED, Path("contact.yaml"))
    lifted = {
        ("service", "phone"): EffectiveState(
            "service", "phone", ConsentStatus.NOT_APPLICABLE, LawfulBasis.CONTRACT,
            suppressed=False, rule="purpose_default_basis",
        )
    }  # fmt: skip
    record = {"Id": "003A", "DoNotCall": True}
    ours = _Noting({"DoNotCall": OurWrite(False, True)})
    assert mapping.updates_for(record, lifted, ours=ours) == {}
    # Nothing such a table writes could be put back: its writes are not even looked up (the
    # cost of every sync, as HubSpot's UNSUBSCRIBED-only table).
    assert ours.asked == []


def test_the_person_mapping_asks_for_its_writes_only_where_a_removal_could_be_put_back(
    person: Mapping,
) -> None:
    ours = _Noting()
    person.updates_for(SHOWN_WITHDRAWN, GRANTED, ours=ours)
    person.updates_for({**SHOWN_WITHDRAWN, "LegalBase_EMARKETING": "CONSENT"}, GRANTED, ours=ours)
    withdrawn = _marketing_state(
        ConsentStatus.WITHDRAWN, LawfulBasis.CONSENT, "sticky_withdrawal", suppressed=True
    )
    person.updates_for(SHOWN_WITHDRAWN, withdrawn, ours=ours)
    assert ours.asked == ["LegalBase_EMARKETING"]


class _Noting(dict[str, Any]):
    """An ``ours`` that notes what it is asked (as the engine's ``_AskedFor`` does)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.asked: list[str] = []

    def __contains__(self, name: object) -> bool:
        self.asked.append(str(name))
        return super().__contains__(name)
