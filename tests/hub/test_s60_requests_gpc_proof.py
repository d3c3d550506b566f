"""Black-box regulatory report (session 60), sections 4, 5 and 7.

4. ``hub requests PURPOSE`` mailed "May we send you <purpose>?" to people the ledger itself said
   may not be e-mailed marketing (a customer known through a contract only: ``contact: false``).
   A mail asking for marketing consent is itself direct marketing (PECR reg. 22; the ICO fined
   Honda and Flybe in 2017 for such mails). Now it goes only to people we may e-mail marketing
   on another ground (a consent in force, a soft opt-in); the rest are counted by reason.
5. With the starter config a Global Privacy Control signal was dropped silently (no GPC purpose).
   Now the starter config names one, the default is every purpose profiling for marketing, and a
   hub where GPC applies to nothing warns at startup and says so in each capture's answer.
7. Proof of consent that cannot be true was accepted (Art. 7(1)): a grant dated before the notice
   it names was in effect (through the CLI and the capture API; reversing a withdrawal too), and
   a double opt-in confirmation dated before its sign-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from consentsync import exit_codes
from consentsync.app import open_ledger
from consentsync.config import load_config, parse_config, starter_config_text
from consentsync.domain import ConsentStatus, InvalidInput, LawfulBasis, SoftOptIn
from consentsync.hub import keys, notices, people
from consentsync.hub.api import create_app
from consentsync.hub.capture import Hub
from consentsync.hub.outreach import Outreacher
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import audit_entries, consent_events
from consentsync.ledger.schema import notices as notices_table
from consentsync.ledger.service import Ledger, RecordRequest
from tests.conftest import SQLITE_ONLY, Cli, Clock, one_line_error, record_args
from tests.hub.conftest import NEWSLETTER_NOTICE, NOTICE_IN_EFFECT, HubWorld, Inbox, hub_config
from tests.integration.helpers import consent_value

CUSTOMER = "customer@example.test"  # known through a contract only
SUBSCRIBER = "subscriber@example.test"  # a consent to e-mail marketing in force
SOFT = "soft@example.test"  # a soft opt-in
GONE = "gone@example.test"  # withdrew their e-mail marketing consent

# A second marketing purpose by e-mail (its requests are marketing), and one the configuration
# takes out of the ePrivacy rules (B2B marketing to corporate subscribers).
OFFERS = {"key": "offers", "name": "Offers", "direct_marketing": True, "default_basis": "consent",
          "channels": ["email"]}  # fmt: skip
B2B = {**OFFERS, "key": "trade_offers", "name": "Trade offers", "eprivacy": False}


def _world(
    config_path: Path, clock: Clock, inbox: tuple[Inbox, int], edit: Callable[[dict[str, Any]], None]
) -> Iterator[HubWorld]:
    handler, port = inbox
    hub_config(config_path, port)
    data = yaml.safe_load(config_path.read_text())
    edit(data)
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(config_path)
    ledger = open_ledger(config, migrate=True)
    ledger.clock = clock
    ledger.sync_purposes()
    for purpose in config.purposes:
        notices.add(ledger, purpose, "2026-05", NEWSLETTER_NOTICE, in_effect_from=NOTICE_IN_EFFECT)
    _key, secret = keys.create(ledger, "website", source="web_form", purposes=["*"], actions=["*"])
    hub = Hub(config, ledger)
    with TestClient(create_app(hub)) as client:
        yield HubWorld(hub, ledger, client, handler, clock, secret)
    ledger.engine.dispose()


@pytest.fixture
def world(config_path: Path, clock: Clock, inbox: tuple[Inbox, int]) -> Iterator[HubWorld]:
    yield from _world(config_path, clock, inbox, lambda data: data["purposes"].extend([OFFERS, B2B]))


@pytest.fixture
def no_gpc(config_path: Path, clock: Clock, inbox: tuple[Inbox, int]) -> Iterator[HubWorld]:
    """A hub whose configuration says GPC applies to no purpose."""
    yield from _world(config_path, clock, inbox, lambda data: data["hub"].update(gpc_purposes=[]))


def _record(world: HubWorld, email: str, status: ConsentStatus, **more: Any) -> None:
    now = world.ledger.clock()
    world.ledger.record(Identity(email=email), consent_value(status, now, now, **more))


def _people(world: HubWorld) -> None:
    customer = {"purpose": "service", "basis": LawfulBasis.CONTRACT, "source": "ops"}
    for email in (CUSTOMER, SUBSCRIBER, SOFT, GONE):
        _record(world, email, ConsentStatus.NOT_APPLICABLE, **customer)
    proof = {"notice_version": "2026-05", "evidence_ref": "form:1"}
    _record(world, SUBSCRIBER, ConsentStatus.GRANTED, **proof)
    _record(world, GONE, ConsentStatus.GRANTED, **proof)
    world.clock.advance(minutes=1)
    _record(world, GONE, ConsentStatus.WITHDRAWN)
    soft = SoftOptIn("order:7", "our garden tools", "checkout form v2", "footer unsubscribe link")
    _record(
        world, SOFT, ConsentStatus.NOT_APPLICABLE, basis=LawfulBasis.LEGITIMATE_INTERESTS, soft_opt_in=soft
    )
    world.inbox.messages.clear()


# -- 4. consent requests are marketing: only to people we may e-mail marketing -----------------


@SQLITE_ONLY
@pytest.mark.usefixtures("info_logs")
def test_a_marketing_consent_request_goes_only_to_people_we_may_email_marketing(world: HubWorld) -> None:
    _people(world)
    outreach = Outreacher(world.hub, sleep=lambda _seconds: None)
    dry = outreach.request_consent("offers", dry_run=True)
    assert (dry.candidates, dry.no_ground) == (2, 2)  # the customer and the one who withdrew
    with structlog.testing.capture_logs() as logged:
        done = outreach.request_consent("offers")
    assert (done.sent, done.failed, done.no_ground) == (2, 0, 2)
    assert sorted(message["To"] for message in world.inbox.messages) == [SOFT, SUBSCRIBER]
    left_out = [entry for entry in logged if entry["event"] == "hub.requests_left_out"]
    assert [(e["reason"], e["count"]) for e in left_out] == [("no_email_marketing_ground", 2)]
    assert all("@" not in repr(entry) for entry in logged)


@SQLITE_ONLY
@pytest.mark.parametrize("purpose", ["newsletter", "trade_offers"])
def test_a_request_for_a_purpose_outside_the_eprivacy_rules_goes_as_before(
    world: HubWorld, purpose: str
) -> None:
    """Not direct marketing (a newsletter not flagged as such here), or marketing the
    configuration takes out of the ePrivacy rules (B2B): everyone with nothing on record."""
    _people(world)
    done = Outreacher(world.hub, sleep=lambda _seconds: None).request_consent(purpose)
    assert (done.sent, done.no_ground) == (4, 0)


@SQLITE_ONLY
def test_a_person_whose_ground_ended_while_the_run_went_on_is_not_mailed(world: HubWorld) -> None:
    _people(world)

    def pace(_seconds: float) -> None:  # after the first mail, the soft opt-in is refused
        world.clock.advance(minutes=1)
        _record(world, SOFT, ConsentStatus.WITHDRAWN)

    done = Outreacher(world.hub, sleep=pace).request_consent("offers")
    assert [message["To"] for message in world.inbox.messages] == [SUBSCRIBER]
    assert (done.candidates, done.sent, done.no_ground) == (2, 1, 3)


@SQLITE_ONLY
def test_hub_requests_counts_who_it_left_out_and_why(cli: Cli, tmp_path: Path) -> None:
    """The report's repro: a customer known through a contract only is not asked for e-mail
    marketing consent; the dry run and the run say how many were left out and why, naming no one."""
    text = tmp_path / "notice.txt"
    text.write_text("Offers by email, twice a month.\n", encoding="utf-8")
    cli.ok("notice", "add", "email_marketing", str(text), "--version", "v1")
    cli.ok(*record_args(CUSTOMER, "service", "not_applicable", "--basis", "contract", source="ops"))
    dry = cli.ok("hub", "requests", "email_marketing", "--dry-run")
    assert dry.stdout.startswith("0 person(s) would be asked for email_marketing, 1 left out: nothing on")
    run = cli.ok("hub", "requests", "email_marketing")  # no mail server: a mail tried would fail
    assert run.stdout.startswith("0 consent request(s) sent for email_marketing, 0 failed, 1 left out")
    assert "PECR reg. 22" in run.stdout
    assert CUSTOMER not in run.stdout + run.stderr + dry.stdout + dry.stderr


# -- 5. a GPC signal is never dropped silently -------------------------------------------------


def test_the_starter_config_and_the_default_name_the_purposes_gpc_opts_out_of() -> None:
    path = Path("/srv/consentsync/consentsync.yaml")
    starter = starter_config_text()
    assert parse_config(starter, path).settings.hub.gpc_purposes == ["profiling"]
    left_out = starter.replace("  gpc_purposes: [profiling]\n", "")
    assert left_out != starter
    # Left out: every purpose profiling for marketing (none in the starter's purposes) ...
    assert parse_config(left_out, path).settings.hub.gpc_purposes == []
    flagged = left_out.replace(
        "  - key: profiling\n", "  - key: profiling\n    profiling_for_direct_marketing: true\n"
    )
    assert parse_config(flagged, path).settings.hub.gpc_purposes == ["profiling"]
    # ... and a list given, even an empty one, is taken as given.
    empty = flagged.replace("hub:\n", "hub:\n  gpc_purposes: []\n")
    assert parse_config(empty, path).settings.hub.gpc_purposes == []


@SQLITE_ONLY
def test_a_gpc_signal_where_it_applies_to_nothing_is_said_in_the_answer_and_the_log(
    no_gpc: HubWorld,
) -> None:
    body = {"email": "gpc@example.test", "purpose": "newsletter", "status": "withdrawn"}
    with structlog.testing.capture_logs() as logged:
        answer = no_gpc.post("/consents", body, **{"Sec-GPC": "1"})
        batch = no_gpc.post("/consents", {"consents": [body], "gpc": True})
    for reply in (answer, batch):
        assert reply.status_code == 201, reply.text
        assert reply.json()["gpc"]["code"] == "gpc_purposes_empty"
        assert reply.json()["gpc"]["recorded"] is False
    warned = [e for e in logged if e["event"] == "hub.gpc_honoured_nowhere"]
    assert len(warned) == 2 and all(e["log_level"] == "warning" for e in warned)
    assert all("@" not in repr(entry) for entry in logged)
    # Without the signal, nothing is said of it.
    assert "gpc" not in no_gpc.post("/consents", body).json()


@SQLITE_ONLY
def test_a_gpc_signal_that_opts_out_carries_no_such_field(world: HubWorld) -> None:
    body = {"email": "gpc@example.test", "purpose": "newsletter", "status": "withdrawn"}
    answer = world.post("/consents", body, **{"Sec-GPC": "1"})
    assert answer.status_code == 201 and "gpc" not in answer.json()
    assert any(result.get("gpc") for result in answer.json()["results"])  # profiling, opted out


@SQLITE_ONLY
def test_a_hub_started_with_gpc_applying_to_nothing_warns_once(no_gpc: HubWorld) -> None:
    with structlog.testing.capture_logs() as logged:
        people.create_app(no_gpc.hub)
    assert [e["event"] for e in logged if e["log_level"] == "warning"] == ["hub.gpc_honoured_nowhere"]


@SQLITE_ONLY
def test_a_hub_started_with_gpc_purposes_does_not_warn(world: HubWorld) -> None:
    with structlog.testing.capture_logs() as logged:
        people.create_app(world.hub)
    assert not [e for e in logged if e["event"] == "hub.gpc_honoured_nowhere"]


# -- 7. proof that cannot be true ----------------------------------------------------------------


def _events(cli: Cli) -> int:
    from consentsync.ledger.engine import make_engine

    engine = make_engine(load_config(cli.config_path).ledger_url)
    with engine.connect() as conn:
        count = int(conn.execute(select(func.count()).select_from(consent_events)).scalar_one())
    engine.dispose()
    return count


def _at(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _notice(cli: Cli, tmp_path: Path, version: str, *extra: str) -> None:
    text = tmp_path / f"{version}.txt"
    text.write_text(f"Email marketing notice {version}\n", encoding="utf-8")
    cli.ok("notice", "add", "email_marketing", str(text), "--version", version, *extra)


def _grant(at: datetime, version: str, *extra: str) -> tuple[str, ...]:
    proof = ("--at", _at(at), "--notice-version", version, "--evidence-ref", "form:p1", *extra)
    return record_args("p1@example.test", "email_marketing", "granted", *proof)


def test_a_grant_dated_before_its_notice_was_in_effect_is_refused_on_the_command_line(
    cli: Cli, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    _notice(cli, tmp_path, "v1")  # in effect from now, its registration
    before = _events(cli)
    refused = cli(*_grant(datetime(2024, 3, 1, 10, tzinfo=UTC), "v1"))
    one_line_error(
        refused,
        exit_codes.CONFIG,
        "--at (event_time): 2024-03-01T10:00:00Z",
        "notice 'v1'",
        "in effect (from 20",
    )
    assert _events(cli) == before
    # A text shown long before it was registered says so, and grants of then are taken.
    _notice(cli, tmp_path, "v0", "--in-effect-from", "2024-01-01")
    assert cli.json(*_grant(datetime(2024, 3, 1, 10, tzinfo=UTC), "v0"))["duplicate"] is False
    listed = {n["version"]: n["in_effect_from"] for n in cli.json("notice", "list", "email_marketing")}
    assert listed["v0"].startswith("2024-01-01T00:00:00") and listed["v1"] >= now.isoformat()[:19]
    # Since when a text is shown is never a time to come.
    future = _at(now + timedelta(days=30))
    text = tmp_path / "v9.txt"
    text.write_text("Email marketing notice v9\n", encoding="utf-8")
    late = cli("notice", "add", "email_marketing", str(text), "--version", "v9", "--in-effect-from", future)
    one_line_error(late, exit_codes.CONFIG, "--in-effect-from", "is in the future")


def test_a_grant_naming_a_notice_not_yet_in_effect_does_not_reverse_a_withdrawal(
    cli: Cli, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    _notice(cli, tmp_path, "v1", "--in-effect-from", "2024-01-01")
    withdrawal = ("--at", _at(now - timedelta(days=6)))
    cli.ok(*record_args("p1@example.test", "email_marketing", "withdrawn", *withdrawal, source="esp_webhook"))
    _notice(cli, tmp_path, "v2")  # registered now
    before = _events(cli)
    refused = cli(*_grant(now - timedelta(days=4), "v2"))
    one_line_error(refused, exit_codes.CONFIG, "event_time", "notice 'v2'")
    assert _events(cli) == before
    state = cli.json("subject", "show", "p1@example.test")
    assert {s["status"] for s in state["purposes"] if s["purpose"] == "email_marketing"} == {"withdrawn"}
    # Dated after it took effect, the same grant is the person's new consent.
    assert cli.json(*_grant(datetime.now(UTC), "v2"))["after"]["rule"] == "trusted_opt_in_reverses"


def test_a_double_opt_in_confirmed_before_its_sign_up_is_refused(cli: Cli, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    _notice(cli, tmp_path, "v1", "--in-effect-from", "2024-01-01")
    before = _events(cli)
    early = ("--double-opt-in-at", _at(now - timedelta(days=400)))
    refused = cli(*_grant(now - timedelta(days=1), "v1", *early))
    one_line_error(refused, exit_codes.CONFIG, "double opt-in time", "is before the event time")
    assert _events(cli) == before
    # A confirmation stamped to the whole second of a sign-up later in that second may be true.
    signed_up = now - timedelta(days=1) + timedelta(microseconds=400_000)
    same_second = ("--double-opt-in-at", _at(now - timedelta(days=1)))
    assert cli.json(*_grant(signed_up, "v1", *same_second))["duplicate"] is False


@SQLITE_ONLY
def test_a_batch_refuses_a_confirmation_before_its_sign_up_after_items_like_it(
    ledger: Ledger, clock: Clock
) -> None:
    """A bulk write checks the labels once per combination: an impossible confirmation is
    checked all the same, after an item with the same labels passed."""
    now = clock()
    fine = consent_value(
        ConsentStatus.GRANTED, now - timedelta(days=2), now, double_opt_in_at=now, evidence_ref="x"
    )
    bad = consent_value(
        ConsentStatus.GRANTED,
        now - timedelta(days=1),
        now,
        double_opt_in_at=now - timedelta(days=3),
        evidence_ref="x",
    )
    batch = [RecordRequest(Identity(email=f"p{i}@example.test"), e) for i, e in enumerate((fine, bad))]
    with pytest.raises(InvalidInput, match="is before the event time"), ledger.engine.begin() as conn:
        ledger.record_in(conn, batch)
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(consent_events)).scalar_one() == 0


def test_the_capture_api_refuses_a_grant_dated_before_its_notice_was_in_effect(
    world: HubWorld,
) -> None:
    notices.add(world.ledger, "newsletter", "2026-06", "The June newsletter notice.")  # in effect now
    grant = {
        "email": "p1@example.test",
        "purpose": "newsletter",
        "status": "granted",
        "notice_version": "2026-06",
    }
    earlier = (world.clock() - timedelta(days=1)).isoformat()
    refused = world.post("/consents", {**grant, "event_time": earlier})
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error.startswith("consents[0].event_time: 2026-05-31T12:00:00Z is before notice '2026-06'")
    assert "in effect (from 2026-06-01T12:00:00Z)" in error and "\n" not in error
    with world.ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(consent_events)).scalar_one() == 0
    assert world.post("/consents", grant).status_code == 201  # dated now: it was shown


def test_an_older_notice_is_dated_once_by_adding_its_text_again(ledger: Ledger, clock: Clock) -> None:
    """A version registered before notices had in-effect dates (NULL) reads as in effect from
    its registration; adding the same text with a date sets it, once, audited; then it is fixed."""
    added = notices.add(ledger, "email_marketing", "v1", NEWSLETTER_NOTICE)
    with ledger.engine.begin() as conn:  # as migration 0020 leaves a notice registered before it
        conn.execute(update(notices_table).values(in_effect_from=None))
    assert notices.in_effect(ledger)[("email_marketing", "v1")] == added.created_at
    since = datetime(2024, 1, 1, tzinfo=UTC)
    dated = notices.add(ledger, "email_marketing", "v1", NEWSLETTER_NOTICE, in_effect_from=since)
    assert dated.shown_from == since and notices.in_effect(ledger)[("email_marketing", "v1")] == since
    with ledger.engine.connect() as conn:
        actions = list(conn.scalars(select(audit_entries.c.action).order_by(audit_entries.c.seq)))
    assert actions[-2:] == ["notice.added", "notice.dated"]
    with pytest.raises(InvalidInput, match="fixed when it was set"):
        notices.add(
            ledger, "email_marketing", "v1", NEWSLETTER_NOTICE, in_effect_from=since - timedelta(days=9)
        )
    # The same date again, or none, changes nothing.
    assert notices.add(ledger, "email_marketing", "v1", NEWSLETTER_NOTICE).shown_from == since
