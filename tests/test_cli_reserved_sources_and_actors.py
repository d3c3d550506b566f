"""Who recorded what, and where it came from, as the CLI and the capture API take them.

Black-box findings (bb63):

- F4: an API key (``apikey add --source``) and a hand-made record (``ledger record --source``,
  ``objection raise --source``) could claim a source consentsync records its own evidence under
  (``double_opt_in``, ``preference_center``, ``consentsync:...``): a plain form post was stored as
  a confirmed double opt-in, trusted by default, and lifted an erasure (Art. 7(1): how consent
  was collected). Such a source is refused in one line naming the option (exit 2, nothing
  changed); a key an older version let in has what it would record refused (403).
- F2: a blank or whitespace ``--actor`` was recorded as the actor (Art. 5(2)); it is refused.
- F3: ``ledger record`` and ``objection raise`` recorded no actor by default, where ``erase`` and
  ``restrict`` record the login name; all four record the login name now.
- F6: ``consentsync link`` said an address its person left was not in the ledger, while every
  other command finds the person by it; it gives the person's link, bound to the address they
  hold now, and says so (docs/hub.md, "Links and an address the person left").
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from consentsync.hub import keys, outreach, preferences
from consentsync.hub.capture import DOUBLE_OPT_IN_SOURCE, SIGN_UP_CLOSED_SOURCE
from consentsync.hub.preferences import PreferenceCentre
from consentsync.ledger.service import BLANK_PROOF_SOURCE, EXPIRY_SOURCE, RESTRICTION_CARRIED_SOURCE
from consentsync.sync.engine import ERASURE_CARRIED_SOURCE
from tests.conftest import Cli, one_line_error, proof, record_args
from tests.hub.conftest import HubWorld, Inbox, inbox, world  # noqa: F401 (the hub's fixtures)
from tests.hub.crm_world import CrmHub, crm_hub

OPERATOR = "jo.ops"
ADA = "ada@example.test"


@pytest.fixture(autouse=True)
def _login_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A login name of the test's own: the default actor is asserted, not whoever runs the suite."""
    monkeypatch.setattr(getpass, "getuser", lambda: OPERATOR)


def _audit(cli: Cli) -> list[dict[str, Any]]:
    return list(cli.json("audit", "log"))


# -- F4: the sources consentsync keeps for itself ----------------------------------------------


@pytest.mark.parametrize(
    "constant",
    [
        DOUBLE_OPT_IN_SOURCE,
        preferences.SOURCE,
        outreach.REQUEST_SOURCE,
        SIGN_UP_CLOSED_SOURCE,
        EXPIRY_SOURCE,
        BLANK_PROOF_SOURCE,
        RESTRICTION_CARRIED_SOURCE,
        ERASURE_CARRIED_SOURCE,
    ],
)
def test_every_source_consentsync_records_its_own_evidence_under_is_reserved(constant: str) -> None:
    """keys.RESERVED_SOURCES is a list of text (those modules import keys): each constant is in it."""
    assert keys.is_reserved_source(constant)
    assert not keys.is_reserved_source("web_form") and not keys.is_reserved_source("ops")


RESERVED = ["double_opt_in", "preference_center", "consentsync:sign_up_closed", "Double_Opt_In", "erasure"]
# Read as the same by a person (session 63 review): widths, separators, spaces around the colon.
LOOK_ALIKES = [
    "Double-Opt-In",
    "\uff44ouble_opt_in",  # a fullwidth d
    "preference\u2010center",  # a Unicode hyphen
    "preference center",
    "consentsync :expiry",
    "consentsync\uff1aexpiry",  # a fullwidth colon
    "double\u02d7opt\u02d7in",  # a modifier minus
    "double\u2043opt\u2043in",  # a hyphen bullet
    "double\u00b7opt\u00b7in",  # a middle dot
]


@pytest.mark.parametrize("source", ["erasure-form", "restriction_page", "preference-centre-v2", "web.form"])
def test_a_source_merely_beginning_like_a_reserved_one_is_accepted(cli: Cli, source: str) -> None:
    cli.ok("apikey", "add", "shopform", "--source", source, "--purposes", "*", "--actions", "*")
    assert [key["source"] for key in cli.json("apikey", "list")] == [source]


@pytest.mark.parametrize("source", LOOK_ALIKES)
def test_a_look_alike_of_a_reserved_source_is_refused_too(cli: Cli, source: str) -> None:
    result = cli("apikey", "add", "shopform", "--source", source, "--purposes", "*", "--actions", "*")
    one_line_error(result, 2, "is reserved", "accepted is")
    assert cli.json("apikey", "list") == []


@pytest.mark.parametrize("source", RESERVED)
def test_apikey_add_refuses_a_reserved_source_and_adds_nothing(cli: Cli, source: str) -> None:
    before = _audit(cli)
    result = cli("apikey", "add", "shopform", "--source", source, "--purposes", "*", "--actions", "*")
    one_line_error(result, 2, f"--source {source!r} is reserved", "accepted is")
    assert cli.json("apikey", "list") == []
    assert _audit(cli) == before


@pytest.mark.parametrize("source", ["double_opt_in", "preference_center", "consent_request", "consentsync:x"])
def test_ledger_record_refuses_a_reserved_source_and_records_nothing(cli: Cli, source: str) -> None:
    """The tester's: a grant recorded by hand as a double opt-in, without its confirmation time."""
    result = cli(*record_args(ADA, "email_marketing", "granted", *proof(), source=source))
    one_line_error(result, 2, f"--source {source!r} is reserved")
    one_line_error(cli("subject", "show", ADA), 2, "no subject")


def test_objection_raise_refuses_a_reserved_source_and_records_nothing(cli: Cli) -> None:
    result = cli(
        "objection", "raise", "--email", ADA, "--purpose", "profiling", "--source", "preference_center"
    )
    one_line_error(result, 2, "--source 'preference_center' is reserved")
    assert cli.json("objection", "list") == []


def test_a_key_an_older_version_let_claim_double_opt_in_records_no_grant_but_every_no(
    world: HubWorld,  # noqa: F811 (the hub's fixture)
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tester's: a key of source double_opt_in (as an older version created it), a plain
    form post for an erased address: it lifted the erasure, recorded as a confirmed double
    opt-in. Its grants are refused now (403, nothing recorded); its nos (a withdrawal, an
    objection, an erasure request) are recorded as before, never lost to the upgrade (session 63
    review); its decisions are still answered, and `apikey list` names it on stderr."""
    with monkeypatch.context() as older:
        older.setattr(keys, "check_own_source", lambda source, what="--source": source)
        _key, fake = keys.create(
            world.ledger, "shopform", source="double_opt_in", purposes=["*"], actions=["*"]
        )
    world.ledger.erase("eve@example.test", reason="Art. 17", actor=OPERATOR)
    grant = {
        "email": "eve@example.test",
        "purpose": "newsletter",
        "status": "granted",
        "notice_version": "2026-05",
        "evidence_ref": "x",
    }
    refused = world.post("/consents", grant, secret=fake)
    assert refused.status_code == 403, refused.text
    assert "'shopform' names source 'double_opt_in'" in refused.json()["error"]
    assert world.ledger.decision_for("eve@example.test", "newsletter", "email")[1].suppressed
    # A batch with a grant in it records nothing of it, its no included: one answer for the batch.
    no = {"email": ADA, "purpose": "newsletter", "status": "withdrawn"}
    mixed = world.post("/consents", {"consents": [no, grant]}, secret=fake)
    assert mixed.status_code == 403
    assert "nothing of this request was recorded" in mixed.json()["error"]
    assert "send those again without the grants" in mixed.json()["error"]
    assert world.ledger.decision_for(ADA, "newsletter", "email")[0] is None
    # Its nos alone are recorded.
    assert world.post("/consents", no, secret=fake).status_code == 201
    assert world.ledger.decision_for(ADA, "newsletter", "email")[1].suppressed
    objected = world.post("/objections", {"email": ADA, "purpose": "profiling"}, secret=fake)
    assert objected.status_code in (200, 201), objected.text
    assert world.ledger.decision_for(ADA, "profiling", "email")[1].suppressed
    asked = world.post("/decisions", {"email": ADA, "purpose": "newsletter", "channel": "email"}, secret=fake)
    assert asked.status_code == 200, asked.text

    listed = Cli(config_path, CliRunner())("apikey", "list")
    assert listed.exit_code == 0
    assert "API key 'shopform': source 'double_opt_in' is one consentsync keeps" in listed.stderr
    assert "'website'" not in listed.stderr


# -- F2 and F3: who acted ------------------------------------------------------------------------

COMMANDS_WITH_ACTOR = {
    "ledger record": record_args(ADA, "email_marketing", "withdrawn", source="phone"),
    "objection raise": ("objection", "raise", "--email", ADA, "--purpose", "profiling"),
    "restrict": ("restrict", "--email", ADA, "--reason", "accuracy contested"),
    "erase": ("erase", "--email", ADA, "--reason", "Art. 17 request", "--yes"),
}


@pytest.mark.parametrize("blank", ["", "   "])
@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_ACTOR))
def test_a_blank_actor_is_refused_and_nothing_is_done(cli: Cli, command: str, blank: str) -> None:
    if command == "restrict":  # a restriction needs a person to restrict
        cli.ok(*record_args(ADA, "email_marketing", "withdrawn", source="phone"))
    before = _audit(cli)
    result = cli(*COMMANDS_WITH_ACTOR[command], "--actor", blank)
    one_line_error(result, 2, "--actor is blank", "leave --actor out for your login name")
    assert _audit(cli) == before


@pytest.mark.parametrize("actor", ["apikey:website", " APIKEY:website"])
@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_ACTOR))
def test_the_hubs_key_actor_is_refused_and_nothing_is_done(cli: Cli, command: str, actor: str) -> None:
    """``apikey:<name>`` is the hub's actor for what it records through a key (session 67): an
    operator's no under it, labelled as the GPC signal's, read as the browser's own, which the
    person's page let anyone holding the link grant over at once."""
    if command == "restrict":
        cli.ok(*record_args(ADA, "email_marketing", "withdrawn", source="phone"))
    before = _audit(cli)
    result = cli(*COMMANDS_WITH_ACTOR[command], "--actor", actor)
    one_line_error(result, 2, "is reserved for what the hub records through an API key")
    assert _audit(cli) == before


def test_state_reset_refuses_a_blank_actor_as_every_command(cli: Cli) -> None:
    result = cli("state", "reset", "nowhere", "Contact", "--actor", " ")
    one_line_error(result, 2, "--actor is blank")


def test_ledger_record_and_objection_raise_record_the_login_name_by_default(cli: Cli) -> None:
    cli.ok(*record_args(ADA, "email_marketing", "withdrawn", source="phone"))
    cli.ok("objection", "raise", "--email", ADA, "--purpose", "profiling")
    cli.ok(*record_args(ADA, "email_marketing", "withdrawn", "--actor", "front desk", source="phone"))
    actors = {
        (e["action"], e["actor"])
        for e in _audit(cli)
        if e["action"] in ("consent.recorded", "objection.raised")
    }
    assert actors == {
        ("consent.recorded", OPERATOR),
        ("objection.raised", OPERATOR),
        ("consent.recorded", "front desk"),
    }
    history = cli.json("subject", "show", ADA)["history"]
    assert [item["actor"] for item in history] == [OPERATOR, "front desk"]


@pytest.mark.parametrize("command", [("ledger", "record"), ("objection", "raise"), ("erase",), ("restrict",)])
def test_help_says_the_actor_defaults_to_the_login_name(cli: Cli, command: tuple[str, ...]) -> None:
    assert "default: your login name" in " ".join(cli.ok(*command, "--help").stdout.split())


# -- F6: a link asked for by an address its person left ------------------------------------------

OLD, NEW = "old.lou@example.com", "new.lou@example.com"


@pytest.fixture
def lou(
    cli: Cli,
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inbox: tuple[Inbox, int],  # noqa: F811 (the hub's fixture)
) -> Iterator[CrmHub]:
    """Lou's Salesforce contact, synced, then corrected to NEW and synced: Lou left OLD."""
    with crm_hub(cli, config_path, monkeypatch, inbox) as setup:
        contact = setup.sandbox.org.create("Contact", LastName="Lou", Email=OLD, HasOptedOutOfEmail=False)
        setup.cli.ok("sync", "sf")
        setup.sandbox.org.update(contact, {"Email": NEW})
        setup.cli.ok("sync", "sf")
        yield setup


def test_link_for_an_address_lou_left_is_lous_bound_to_the_one_they_hold_now(lou: CrmHub) -> None:
    uid = lou.uid(NEW)
    old = lou.cli("link", OLD)
    assert old.exit_code == 0, old.stderr
    url = old.stdout.strip()
    (note,) = old.stderr.splitlines()
    assert f"note: subject {uid} left this address" in note and "send it there" in note
    assert OLD not in note and NEW not in note  # an address is for `subject show` to print
    person = PreferenceCentre(lou.hub).person(url.rsplit("/", 1)[1])
    assert (person.uid, person.email) == (uid, NEW)
    assert lou.pages.get(url.split("prefs.example.test", 1)[1]).status_code == 200

    shown = json.loads(lou.cli.ok("link", OLD, "--json").stdout)
    assert (shown["subject"], shown["address_left"]) == (uid, True)
    held = lou.cli.ok("link", NEW)
    assert held.stderr == "" and held.stdout.startswith("https://prefs.example.test/p/preferences/")
    assert lou.cli.json("link", NEW)["address_left"] is False
    one_line_error(lou.cli("link", "nobody@example.com"), 2, "no subject")


def test_a_connector_named_consentsync_is_refused_naming_the_field(cli: Cli) -> None:
    """Its records' events would be sourced "consentsync:<object>", as consentsync's own records."""
    import yaml

    data = yaml.safe_load(cli.config_path.read_text())
    data["connectors"] = [
        {"name": "consentsync", "vendor": "salesforce", "mappings": ["mappings/contact.yaml"], "settings": {}}
    ]
    cli.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    one_line_error(cli("status"), 2, "connectors[0].name", "reserved for consentsync")
