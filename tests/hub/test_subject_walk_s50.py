"""A data subject's walk through the capture API and its mails, and an attacker's (session 50):
what failed on the walk, each fixed in the hub.

- A sign-up form filled in again and again with someone's address mailed them a confirmation
  each time (a mailbox flooded with mails the person never asked for).
- A sign-up sent again for a person whose consent was granted and confirmed recorded
  "requested" over it: their consent was suspended (nobody may contact them) on the word of a
  form anyone can fill in with their address, until they confirmed once more.
- An SMTP server's answer quoting an address that is not ASCII was logged with the address in
  it (``hub.mail_failed``): smtplib's text of the answer escapes it past every check.
- A captured address such as "someone@example.org,ceo" (one "@", no space: the ledger takes
  it) was mailed as two recipients: the mail header reads a list, and smtplib sent the
  confirmation and its links to "ceo" too, a local name the SMTP server completes.
- A Global Privacy Control signal sent by the person's browser while their own preference page
  was open was ignored: the page is where the person is known, and the CCPA regulations
  (§ 7025(c)(1)) ask for the opt-out "for the consumer" when known.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from consentsync.config import SmtpSettings
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.hub.mail import Mail, Mailer, MailFailed
from consentsync.ledger.identity import Identity
from tests.hub.conftest import Controller, HubWorld
from tests.hub.people_world import EMAIL, GRANT, people_pages, seed, sqlite_ledger_url, token_of

# The module's fixtures: `ledger_url` (SQLite only here) and `people` (the pages, in-process).
FIXTURES = (sqlite_ledger_url, people_pages)

VICTIM = "victim@example.test"
SIGNUP = {"email": VICTIM, "purpose": "email_marketing", "status": "granted", "notice_version": "2026-05"}


def confirmations_to(world: HubWorld, address: str) -> int:
    return sum(
        "/p/confirm/" in world.inbox.text(index) and str(message["To"]) == address
        for index, message in enumerate(world.inbox.messages)
    )


def status_of(world: HubWorld, address: str = VICTIM) -> str:
    return world.ledger.decision_for(address, "email_marketing", "email")[1].status.value


# -- a sign-up form used to flood a mailbox -----------------------------------------------------


def test_a_sign_up_sent_again_and_again_mails_the_address_once_while_its_link_is_open(
    world: HubWorld, people: TestClient
) -> None:
    answers = []
    for _ in range(5):  # a bot submitting the form with someone else's address
        answers.append(world.post("/consents", SIGNUP).json()["results"][0])
        world.clock.advance(seconds=30)
    assert confirmations_to(world, VICTIM) == 1
    assert [a["confirmation"] for a in answers] == ["queued"] + ["recently"] * 4
    assert all(a["recorded"] == "requested" for a in answers) and status_of(world) == "requested"
    # The one link mailed still confirms.
    link = urlsplit(world.inbox.link("/p/confirm/")).path
    world.clock.advance(minutes=1)
    assert people.post(link).status_code in (200, 303) and status_of(world) == "granted"


def test_a_sign_up_mails_a_new_link_once_the_last_is_old_or_void_or_never_went(
    world: HubWorld, people: TestClient
) -> None:
    world.post("/consents", SIGNUP)
    world.clock.advance(minutes=11)  # the interval has passed: a person who lost the mail asks again
    assert world.post("/consents", SIGNUP).json()["results"][0]["confirmation"] == "queued"
    assert confirmations_to(world, VICTIM) == 2
    # "No, I did not ask for this" voids the link: a later sign-up is a new request.
    link = urlsplit(world.inbox.link("/p/confirm/")).path
    assert people.post(link + "/decline").status_code in (200, 303) and status_of(world) == "refused"
    world.clock.advance(seconds=5)
    assert world.post("/consents", SIGNUP).json()["results"][0]["confirmation"] == "queued"
    assert confirmations_to(world, VICTIM) == 3


def test_a_bot_waiting_out_the_short_hold_all_day_gets_a_few_mails_through_not_one_each_time(
    world: HubWorld,
) -> None:
    """The 10-minute hold alone let a bot submitting every 11 minutes mail ~130 links a day:
    a few links a day per purpose and channel, whatever became of them; the next day, one more."""
    answers = []
    for _ in range(24 * 60 // 11):
        answers.append(world.post("/consents", SIGNUP).json()["results"][0]["confirmation"])
        world.clock.advance(minutes=11)
    assert 1 < confirmations_to(world, VICTIM) <= 3
    assert answers.count("queued") == confirmations_to(world, VICTIM)
    assert set(answers) == {"queued", "recently"} and status_of(world) == "requested"
    # Another address is counted on its own; a day after the first links, a new one goes again.
    other = {**SIGNUP, "email": "other@example.test"}
    assert world.post("/consents", other).json()["results"][0]["confirmation"] == "queued"
    world.clock.advance(hours=1)
    assert world.post("/consents", SIGNUP).json()["results"][0]["confirmation"] == "queued"


@pytest.fixture
def dead_smtp_port() -> int:
    """A port nothing listens on: every mail fails to connect."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_sign_up_whose_mail_did_not_go_mails_again_when_sent_again(
    world: HubWorld, dead_smtp_port: int
) -> None:
    working = world.hub.mailer
    world.hub.mailer = Mailer(SmtpSettings(host="127.0.0.1", port=dead_smtp_port, sender="p@example.test"))
    assert world.post("/consents", SIGNUP).json()["results"][0]["confirmation"] == "queued"
    assert confirmations_to(world, VICTIM) == 0
    world.hub.mailer = working
    world.clock.advance(seconds=30)
    # The unsent link is nobody's: it is no reason to hold the next one back.
    assert world.post("/consents", SIGNUP).json()["results"][0]["confirmation"] == "queued"
    assert confirmations_to(world, VICTIM) == 1


# -- a sign-up over a consent given ----------------------------------------------------------


def test_a_sign_up_sent_again_after_confirming_does_not_suspend_the_consent(
    world: HubWorld, people: TestClient
) -> None:
    world.post("/consents", SIGNUP)
    world.clock.advance(minutes=2)
    people.post(urlsplit(world.inbox.link("/p/confirm/")).path)
    assert status_of(world) == "granted"
    before = world.ledger.decision_for(VICTIM, "email_marketing", "email")[1]
    world.clock.advance(minutes=30)
    # Anyone may fill in the form with the address: the person's consent stands.
    again = world.post("/consents", SIGNUP).json()["results"][0]
    assert again["recorded"] is None and again["duplicate"] is True
    assert again["state"]["status"] == "granted" and again["state"]["suppressed"] is False
    decision = world.ledger.decision_for(VICTIM, "email_marketing", "email")[1]
    assert decision.status.value == "granted" and not decision.suppressed and decision.since == before.since
    # A link still goes (the person may have asked again); confirming it grants afresh.
    assert again["confirmation"] == "queued" and confirmations_to(world, VICTIM) == 2
    world.clock.advance(minutes=1)
    assert people.post(urlsplit(world.inbox.link("/p/confirm/")).path).status_code in (200, 303)
    renewed = world.ledger.decision_for(VICTIM, "email_marketing", "email")[1]
    assert renewed.status.value == "granted" and renewed.since is not None and renewed.since > before.since


def test_a_sign_up_after_a_withdrawal_still_waits_for_confirmation(
    world: HubWorld, people: TestClient
) -> None:
    """The guard above is for a consent that stands: after a no, a sign-up is a new request."""
    world.post("/consents", SIGNUP)
    world.clock.advance(minutes=2)
    people.post(urlsplit(world.inbox.link("/p/confirm/")).path)
    world.clock.advance(minutes=1)
    world.post("/consents", {**SIGNUP, "status": "withdrawn"})
    world.clock.advance(minutes=1)
    again = world.post("/consents", SIGNUP).json()["results"][0]
    assert again["recorded"] == "requested" and again["confirmation"] == "queued"
    assert status_of(world) != "granted"


# -- an SMTP answer quoting an address that is not ASCII ---------------------------------------


class RefusingAtData:
    """An SMTP server (SMTPUTF8) that takes the recipient, then refuses the message quoting the
    address, as spam filters do ("554 5.7.1 Message to <...> rejected")."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return f"554 5.7.1 Message to <{envelope.rcpt_tos[0]}> rejected as spam"


@pytest.fixture
def refusing_at_data_port() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(RefusingAtData(), hostname="127.0.0.1", port=port, enable_SMTPUTF8=True)
    controller.start()
    yield port
    controller.stop()


@pytest.mark.usefixtures("info_logs")
@pytest.mark.parametrize("address", ["jörg@bücher.example", "zoë@example.test", "ada@example.test"])
def test_a_refused_message_is_logged_without_the_address_whatever_its_letters(
    world: HubWorld, refusing_at_data_port: int, address: str
) -> None:
    world.hub.mailer = Mailer(
        SmtpSettings(host="127.0.0.1", port=refusing_at_data_port, sender="privacy@example.test")
    )
    with capture_logs() as logs:
        answer = world.post("/consents", {**SIGNUP, "email": address})
    assert answer.status_code == 201
    failed = [entry for entry in logs if entry.get("event") == "hub.mail_failed"]
    assert len(failed) == 1 and "554" in failed[0]["error"] and "rejected as spam" in failed[0]["error"]
    local, _, domain = address.partition("@")
    logged = repr(logs) + " ".join(str(value) for entry in logs for value in entry.values())
    escaped = address.encode().decode("ascii", "backslashreplace")
    for part in (address, local, domain, escaped, escaped.partition("@")[0]):
        assert part not in logged, f"{part!r} was logged"
    # Not a piece of it either: "zo\xc3\" before the part the search for addresses found.
    assert "\\x" not in failed[0]["error"], failed[0]["error"]


# -- an address that a mail header reads as several ------------------------------------------


class Envelopes:
    """An SMTP server (SMTPUTF8) that keeps each message's envelope recipients."""

    def __init__(self) -> None:
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


@pytest.fixture
def envelopes() -> Iterator[tuple[Envelopes, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = Envelopes()
    controller = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=True)
    controller.start()
    yield handler, port
    controller.stop()


LISTS = ["attacker@evil.example,ceo", "a,b@evil.example", "team:x@evil.example;", "x@evil.example>,<ceo"]


@pytest.mark.parametrize("address", LISTS)
def test_a_capture_of_an_address_a_mail_reads_as_several_is_refused(world: HubWorld, address: str) -> None:
    answer = world.post("/consents", {**SIGNUP, "email": address})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error.startswith("consents[0].email: ") and "one address" in error and "evil" not in error
    assert world.ledger.subject_uids_for_email(address) == [] and world.inbox.messages == []


@pytest.mark.parametrize("address", LISTS)
def test_a_mail_goes_to_its_one_address_or_not_at_all(envelopes: tuple[Envelopes, int], address: str) -> None:
    """Such an address may reach the ledger by another way (a CRM): the mailer sends it nothing."""
    handler, port = envelopes
    mailer = Mailer(SmtpSettings(host="127.0.0.1", port=port, sender="privacy@example.test"))
    with pytest.raises(MailFailed, match="not one address") as refused:
        mailer.send(Mail(address, "Please confirm", "text"))
    assert "evil" not in str(refused.value) and handler.recipients == []
    for fine in ("jörg@bücher.example", "o'brien+news@example.test"):
        mailer.send(Mail(fine, "Please confirm", "text"))
    assert handler.recipients == [["jörg@bücher.example"], ["o'brien+news@example.test"]]


def test_an_internationalised_domain_goes_out_in_punycode_where_the_local_part_allows(
    envelopes: tuple[Envelopes, int],
) -> None:
    """The ledger keeps the domain in Unicode; a server without SMTPUTF8 takes the A-labels,
    which reach the same mailbox. A local part that is not ASCII needs SMTPUTF8 either way."""
    handler, port = envelopes
    mailer = Mailer(SmtpSettings(host="127.0.0.1", port=port, sender="privacy@example.test"))
    mailer.send(Mail("ada@bücher.example", "Please confirm", "text"))
    mailer.send(Mail("jörg@bücher.example", "Please confirm", "text"))
    assert handler.recipients == [["ada@xn--bcher-kva.example"], ["jörg@bücher.example"]]


# -- a Global Privacy Control signal on the person's own page ------------------------------------


def gpc_events(world: HubWorld, purpose: str = "profiling") -> list[dict[str, Any]]:
    history = world.ledger.subject_view(EMAIL)["history"]
    return [e for e in history if e["purpose"] == purpose and e["evidence_ref"] == "Sec-GPC: 1"]


def test_the_preference_page_honours_the_browsers_gpc_signal_for_the_person(
    world: HubWorld, people: TestClient
) -> None:
    token = token_of(world, seed(world))
    assert people.get(f"/p/preferences/{token}").status_code == 200 and gpc_events(world) == []
    page = people.get(f"/p/preferences/{token}", headers={"Sec-GPC": "1"})
    assert page.status_code == 200 and "Global Privacy Control" in page.text
    channels = world.ledger.purposes["profiling"].channels
    assert len(gpc_events(world)) == len(channels)
    for channel in channels:
        decided = world.ledger.decision_for(EMAIL, "profiling", channel)[1]
        assert decided.status.value == "withdrawn" and decided.suppressed
    # Seen again with the signal: said once, recorded once; other purposes untouched.
    again = people.get(f"/p/preferences/{token}", headers={"Sec-GPC": "1", "Accept-Language": "de"})
    assert len(gpc_events(world)) == len(channels) and "Global-Privacy-Control" not in again.text
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "granted"


def test_the_gpc_message_speaks_german(world: HubWorld, people: TestClient) -> None:
    token = token_of(world, seed(world))
    page = people.get(f"/p/preferences/{token}", headers={"Sec-GPC": "1", "Accept-Language": "de"})
    assert "Ihr Browser hat ein Global-Privacy-Control-Signal gesendet" in page.text


def test_a_consent_given_on_the_page_with_the_signal_on_is_not_undone_by_it(
    world: HubWorld, people: TestClient
) -> None:
    """§ 7025(c)(3): the person may consent despite their signal; the next view keeps it."""
    world.hub.settings = world.hub.settings.model_copy(update={"gpc_purposes": ["newsletter"]})
    token = token_of(world, seed(world))
    gpc = {"Sec-GPC": "1"}
    people.get(f"/p/preferences/{token}", headers=gpc)
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "withdrawn"
    world.clock.advance(minutes=1)
    chosen = people.post(
        f"/p/preferences/{token}/choose",
        data={"purpose": "newsletter", "channel": "email", "action": "grant", "notice_version": "2026-05"},
        headers=gpc,
    )
    assert chosen.status_code == 200  # followed to the page, the signal still on
    world.clock.advance(minutes=1)
    people.get(f"/p/preferences/{token}", headers=gpc)
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "granted"
    assert len(gpc_events(world, "newsletter")) == 1


@pytest.mark.parametrize(
    "later",
    [
        # the same grant, as a form's server sends it again (another source's copy)
        {"status": ConsentStatus.GRANTED, "source": "web_form", "origin": Origin.CAPTURE},
        # the same grant, read back from a CRM
        {"status": ConsentStatus.GRANTED, "source": "crm:sales", "origin": Origin.CRM},
        # a renewal asked for: the consent given is to be confirmed, not undone
        {"status": ConsentStatus.REQUESTED, "source": "renewal", "origin": Origin.SYSTEM},
    ],
    ids=["form-copy", "crm-copy", "renewal"],
)
def test_a_consent_given_over_the_signal_stands_whatever_event_comes_after_it(
    world: HubWorld, people: TestClient, later: dict[str, Any]
) -> None:
    """§ 7025(c)(3): the page grant given with the signal on is looked for since the last no,
    not only as the latest event (any later event made the next view withdraw it)."""
    world.hub.settings = world.hub.settings.model_copy(update={"gpc_purposes": ["newsletter"]})
    token = token_of(world, seed(world))
    gpc = {"Sec-GPC": "1"}
    people.get(f"/p/preferences/{token}", headers=gpc)
    world.clock.advance(minutes=1)
    form = {"purpose": "newsletter", "channel": "email", "action": "grant", "notice_version": "2026-05"}
    assert people.post(f"/p/preferences/{token}/choose", data=form, headers=gpc).status_code == 200
    world.clock.advance(minutes=1)
    evidence = Evidence.witnessed(
        world.clock(), purpose="newsletter", channel="email", basis=LawfulBasis.CONSENT, **later
    )
    world.ledger.record(Identity(email=EMAIL), evidence)
    written = len(world.ledger.subject_view(EMAIL)["history"])
    world.clock.advance(minutes=1)
    people.get(f"/p/preferences/{token}", headers=gpc)
    assert len(gpc_events(world, "newsletter")) == 1
    assert len(world.ledger.subject_view(EMAIL)["history"]) == written
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == later["status"].value
    # After a later no, a grant from elsewhere is not the person's choice over the signal.
    world.post("/consents", {**GRANT, "status": "withdrawn"})
    world.clock.advance(minutes=1)
    world.post("/consents", GRANT)
    world.clock.advance(minutes=1)
    people.get(f"/p/preferences/{token}", headers=gpc)
    assert len(gpc_events(world, "newsletter")) == 2
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "withdrawn"


@pytest.mark.parametrize(
    "ahead",
    [
        {"Sec-Purpose": "prefetch"},
        {"Sec-Purpose": "prefetch;prerender"},
        {"Purpose": "prefetch"},
        {"X-Moz": "prefetch"},
    ],
    ids=["sec-purpose", "prerender", "purpose", "x-moz"],
)
def test_the_page_fetched_ahead_of_a_click_or_by_head_records_nothing(
    world: HubWorld, people: TestClient, ahead: dict[str, str]
) -> None:
    """A GET that records must record only when the person opens the page: a browser's
    prefetch (which may never be followed) and a HEAD record nothing, a view again nothing new."""
    token = token_of(world, seed(world))
    gpc = {"Sec-GPC": "1"}
    written = len(world.ledger.subject_view(EMAIL)["history"])
    fetched = people.get(f"/p/preferences/{token}", headers={**gpc, **ahead})
    assert people.head(f"/p/preferences/{token}", headers=gpc).status_code >= 400
    assert len(world.ledger.subject_view(EMAIL)["history"]) == written and gpc_events(world) == []
    # Refused, so that the browser throws it away and the click fetches the page afresh.
    assert fetched.status_code == 503 and fetched.headers["Cache-Control"] == "no-store"
    # The click itself records the opt-out, once however often the page is seen.
    for _ in range(3):
        assert people.get(f"/p/preferences/{token}", headers=gpc).status_code == 200
        world.clock.advance(seconds=1)
    channels = world.ledger.purposes["profiling"].channels
    assert len(gpc_events(world)) == len(channels)
    assert len(world.ledger.subject_view(EMAIL)["history"]) == written + len(channels)
