"""`audit verify` holds two more things to the audit chain (docs/tamper-evidence.md), on SQLite
and PostgreSQL, each edited as whoever can write the ledger edits it (sqlite3 on the ledger file,
SQL on PostgreSQL).

D4: the lawful basis a value that states none is bound to in its state's summary
(``Ranked.bound``: the purpose's default basis when it was recorded). Edited together with the
state's ``basis`` column, a grant recorded on legitimate interests read as a consent, and `audit
verify` passed: the fold of the events leaves the binding out, and the column agreed with the
summary. Now the binding is held to the default the chain's ``purpose.configured`` entries say
was in force when the value was recorded, and the columns to the summary as the ledger reads it.

D7: an API key's purposes and actions. Widened by a direct edit of its row, used, and put back,
they left no trace: verify held the events recorded through a key to its source and revocation
only. Now each consent event, objection and erasure recorded through a key is held to the
purposes and actions the chain gave the key then.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select, text

from consentsync import audit, exit_codes
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, LawfulBasis, Origin, iso
from consentsync.hub import api, keys
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import consent_events, consent_states, subject_identifiers, subjects
from consentsync.ledger.service import Ledger
from tests.conftest import Cli, Clock
from tests.hub.conftest import HubWorld, inbox, world  # noqa: F401 (the hub's fixtures)
from tests.integration.helpers import consent_value

STATES_DISAGREE = "current states DISAGREE with the consent events: "
KEYS_AGREE = "notices and API keys agree with audit entries: "
KEYS_DISAGREE = "notices and API keys DISAGREE with audit entries: "
EDITED = "recorded while its row said otherwise (edited outside consentsync)"
ADA = "ada@example.test"
BEN = "ben@example.test"


@pytest.fixture
def clock() -> Clock:
    """The real time, a minute on: the purposes' ``purpose.configured`` entries, which the ledger
    fixtures write on the real clock when they open it, come before what the tests record."""
    return Clock(datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1))


def _as_an_attacker(ledger: Ledger, statement: str, **values: Any) -> None:
    """One statement, as whoever can write the ledger runs it: sqlite3 on the ledger's file, or
    SQL on PostgreSQL."""
    url = ledger.engine.url
    if url.get_backend_name() == "sqlite":
        database = sqlite3.connect(str(url.database))
        with database:
            database.execute(statement, values)
        database.close()
    else:
        with ledger.engine.begin() as conn:
            conn.execute(text(statement), values)


def _verify(config_path: Path, code: int) -> list[str]:
    result = Cli(config_path, CliRunner())("audit", "verify")
    assert result.exit_code == code, result.output + result.stderr
    assert "Traceback" not in result.output
    return result.stdout.splitlines()


def _seq(ledger: Ledger, action: str, **what: str) -> int:
    """The last entry of ``action`` whose ``what`` says ``what``."""
    with ledger.engine.connect() as conn:
        found = [
            e["seq"]
            for e in audit.entries(conn, action=action)
            if all(e["what"].get(name) == value for name, value in what.items())
        ]
    return found[-1]


# -- D4: the basis a value is bound to --------------------------------------------------------------


def _switch_default_basis(ledger: Ledger, config_path: Path, purpose_key: str, basis: str) -> None:
    """The purpose's default basis changed in the config, and the ledger opened with it (its
    ``purpose.configured`` entry says when, on the test's clock)."""
    data = yaml.safe_load(config_path.read_text())
    (purpose,) = [p for p in data["purposes"] if p["key"] == purpose_key]
    purpose["default_basis"] = basis
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    ledger.purposes = load_config(config_path).purposes
    ledger.sync_purposes()


def _profiling_grant(clock: Clock) -> Any:
    """Profiling by email granted, as a CRM's status field says it: no basis stated."""
    return consent_value(
        ConsentStatus.GRANTED,
        clock.now - timedelta(hours=1),
        clock.now,
        purpose="profiling",
        basis=None,
        source="crm_a",
        origin=Origin.CRM,
        evidence_ref="Contact/003A",
    )


def _state(ledger: Ledger, email: str) -> Any:
    with ledger.engine.connect() as conn:
        return conn.execute(
            select(consent_states, subjects.c.uid)
            .join(subjects, subjects.c.id == consent_states.c.subject_id)
            .join(subject_identifiers, subject_identifiers.c.subject_id == subjects.c.id)
            .where(subject_identifiers.c.value == email, consent_states.c.purpose == "profiling")
        ).one()


def _bound_to_consent(summary: dict[str, Any]) -> None:
    summary["latest"]["bound"] = "consent"


def _unbound(summary: dict[str, Any]) -> None:
    del summary["latest"]["bound"]


@pytest.mark.parametrize("edit", [_bound_to_consent, _unbound], ids=["bound to consent", "binding removed"])
def test_a_binding_edited_with_the_basis_column_fails_verify(
    ledger: Ledger, config_path: Path, clock: Clock, edit: Any
) -> None:
    """Ada's grant was recorded without a basis under profiling on legitimate interests; profiling
    was switched to consent an hour later, and Ben's grant recorded then. Verify passes. Ada's
    state edited as the attacker would (the summary's binding made consent, or removed, and the
    basis column made consent: what every reader of the state then says): verify names her row,
    exit 5, by the entry that says the default in force when her grant was recorded."""
    ledger.record(Identity(email=ADA), _profiling_grant(clock))
    configured = _seq(ledger, "purpose.configured", purpose="profiling")
    clock.advance(hours=1)
    _switch_default_basis(ledger, config_path, "profiling", "consent")
    clock.advance(minutes=1)
    ledger.record(Identity(email=BEN), _profiling_grant(clock))
    assert not any(line.startswith(STATES_DISAGREE) for line in _verify(config_path, 0))
    ada = _state(ledger, ADA)
    assert (ada.basis, orjson.loads(ada.summary)["latest"]["bound"]) == (
        "legitimate_interests",
        "legitimate_interests",
    )

    summary = orjson.loads(ada.summary)
    edit(summary)
    _as_an_attacker(
        ledger,
        "UPDATE consent_states SET summary = :summary, basis = 'consent' "
        "WHERE subject_id = :subject AND purpose = 'profiling'",
        summary=orjson.dumps(summary).decode(),
        subject=ada.subject_id,
    )
    if edit is _bound_to_consent:  # the harm: a consent out of nothing
        assert ledger.decision_for(ADA, "profiling", "email")[1].basis is LawfulBasis.CONSENT

    lines = [
        line for line in _verify(config_path, exit_codes.AUDIT_BROKEN) if line.startswith(STATES_DISAGREE)
    ]
    where = f"{STATES_DISAGREE}subject {ada.uid} (id {ada.subject_id}), purpose profiling, channel email: "
    with ledger.engine.connect() as conn:
        recorded = conn.execute(
            select(consent_events.c.recorded_at).where(consent_events.c.subject_id == ada.subject_id)
        ).scalar_one()
    if edit is _bound_to_consent:
        said = (
            f"summary latest is bound to consent where audit entry {configured} says the purpose's "
            f"default basis was legitimate_interests when it was recorded ({iso(recorded)})"
        )
    else:  # read as the ledger reads it: bound to the default it was recorded under
        said = "basis is consent where the summary says legitimate_interests"
    assert lines == [f"{where}{said}: edited outside consentsync"]


def test_values_recorded_across_default_changes_verify_clean(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """Values without a basis recorded under legitimate interests, then consent, then legitimate
    interests again (a withdrawal among them: the restriction is bound too), each bound to the
    default of its time: verify passes, and its states check names each binding as the chain's."""
    ledger.record(Identity(email=ADA), _profiling_grant(clock))
    for basis, email in (("consent", BEN), ("legitimate_interests", "cy@example.test")):
        clock.advance(hours=1)
        _switch_default_basis(ledger, config_path, "profiling", basis)
        clock.advance(minutes=1)
        ledger.record(Identity(email=email), _profiling_grant(clock))
        no = consent_value(
            ConsentStatus.WITHDRAWN, clock.now, clock.now, purpose="profiling", basis=None, source="crm_a"
        )
        ledger.record(Identity(email=ADA), no)
    bound = {
        email: orjson.loads(_state(ledger, email).summary)["latest"]["bound"]
        for email in (ADA, BEN, "cy@example.test")
    }
    assert bound == {ADA: "legitimate_interests", BEN: "consent", "cy@example.test": "legitimate_interests"}
    assert orjson.loads(_state(ledger, ADA).summary)["restriction"]["bound"] == "legitimate_interests"
    lines = _verify(config_path, 0)
    assert any(line.startswith("current states agree with the consent events: 3 states") for line in lines)


# -- D7: what an API key may record ------------------------------------------------------------------

NEWSLETTER_GRANT = {"purpose": "newsletter", "status": "granted", "notice_version": "2026-05", "email": ADA}
PROFILING_NO = {"purpose": "profiling", "status": "withdrawn", "email": ADA}


def _key_lines(config_path: Path, code: int) -> list[str]:
    return [line for line in _verify(config_path, code) if line.startswith((KEYS_AGREE, KEYS_DISAGREE))]


def _event(ledger: Ledger, actor: str, purpose: str) -> int:
    """The first event recorded through ``actor`` of ``purpose``."""
    with ledger.engine.connect() as conn:
        found = conn.execute(
            select(consent_events.c.id)
            .where(consent_events.c.actor == actor, consent_events.c.purpose == purpose)
            .order_by(consent_events.c.id)
        ).scalars()
        return int(next(iter(found)))


def test_a_key_given_more_purposes_used_and_put_back_is_named_by_its_events(
    world: HubWorld,  # noqa: F811 (the hub's fixture, imported above)
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """shop may record profiling only. Its row's purposes widened to the newsletter, a newsletter
    grant captured through it, the row put back: the row verifies as the chain says, and the
    grant is named by the entry that gave shop its purposes."""
    monkeypatch.setattr(api, "KEY_CACHE_SECONDS", 0.0)  # the row read again at each request
    _key, shop = keys.create(
        world.ledger, "shop", source="list_import", purposes=["profiling"], actions=["consents"]
    )
    created = _seq(world.ledger, "apikey.created", apikey="shop")
    assert world.post("/consents", PROFILING_NO, secret=shop).status_code == 201
    assert world.post("/consents", NEWSLETTER_GRANT, secret=shop).status_code == 403
    (line,) = _key_lines(config_path, 0)
    assert line.startswith(KEYS_AGREE)

    _as_an_attacker(
        world.ledger, """UPDATE api_keys SET purposes = '["profiling", "newsletter"]' WHERE name = 'shop'"""
    )
    assert world.post("/consents", NEWSLETTER_GRANT, secret=shop).status_code == 201
    _as_an_attacker(world.ledger, """UPDATE api_keys SET purposes = '["profiling"]' WHERE name = 'shop'""")

    event = _event(world.ledger, "apikey:shop", "newsletter")
    assert _key_lines(config_path, exit_codes.AUDIT_BROKEN) == [
        f"{KEYS_DISAGREE}consent_events: 1 events (the first: event {event}) recorded through API key shop "
        f"are of purpose newsletter, which audit entry {created} did not give the key (its purposes: "
        f"profiling): {EDITED}"
    ]


def test_a_key_given_more_actions_used_and_put_back_is_named_by_what_it_recorded(
    world: HubWorld,  # noqa: F811 (the hub's fixture, imported above)
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """reader may ask for decisions only. Its row's actions widened to consents, objections and
    erasure, a grant, an objection and an erasure made through it, the row put back: each is
    named by the entry that gave reader its actions, the objection and the erasure by their
    own audit entries."""
    monkeypatch.setattr(api, "KEY_CACHE_SECONDS", 0.0)
    assert world.post("/consents", PROFILING_NO).status_code == 201  # through the world's key
    _key, reader = keys.create(
        world.ledger, "reader", source="web_form", purposes=["*"], actions=["decisions"]
    )
    created = _seq(world.ledger, "apikey.created", apikey="reader")
    answer = world.post(
        "/decisions", {"email": ADA, "purpose": "profiling", "channel": "email"}, secret=reader
    )
    assert answer.status_code == 200
    assert world.post("/objections", {"email": ADA, "purpose": "profiling"}, secret=reader).status_code == 403
    (line,) = _key_lines(config_path, 0)
    assert line.startswith(KEYS_AGREE)

    _as_an_attacker(
        world.ledger,
        """UPDATE api_keys SET actions = '["decisions", "consents", "objections", "erasure"]' """
        "WHERE name = 'reader'",
    )
    assert world.post("/consents", NEWSLETTER_GRANT, secret=reader).status_code == 201
    assert world.post("/objections", {"email": ADA, "purpose": "profiling"}, secret=reader).status_code == 201
    erased = world.post("/erasure-requests", {"email": BEN, "reason": "asked by phone"}, secret=reader)
    assert erased.status_code == 200, erased.text
    _as_an_attacker(world.ledger, """UPDATE api_keys SET actions = '["decisions"]' WHERE name = 'reader'""")

    event = _event(world.ledger, "apikey:reader", "newsletter")
    objected = _seq(world.ledger, "objection.raised", purpose="profiling")
    erasure = _seq(world.ledger, "subject.erased")
    lead = "audit entries: 1 objections or erasures (the first: audit entry"
    assert _key_lines(config_path, exit_codes.AUDIT_BROKEN) == [
        f"{KEYS_DISAGREE}consent_events: 1 events (the first: event {event}) recorded through API key "
        f"reader, which audit entry {created} did not give the action consents (its actions: decisions): "
        f"{EDITED}",
        f"{KEYS_DISAGREE}{lead} {objected}) recorded through API key reader, which audit entry {created} "
        f"did not give the action objections (its actions: decisions): {EDITED}",
        f"{KEYS_DISAGREE}{lead} {erasure}) recorded through API key reader, which audit entry {created} "
        f"did not give the action erasure (its actions: decisions): {EDITED}",
    ]


def test_a_gpc_opt_out_through_a_key_of_other_purposes_verifies_clean(
    world: HubWorld,  # noqa: F811 (the hub's fixture, imported above)
    config_path: Path,
) -> None:
    """A GPC signal opts out of the purposes the hub names (profiling), whatever the key's
    purposes (here the newsletter only): the hub's own rule, not a key used beyond its scope."""
    _key, form = keys.create(
        world.ledger, "form", source="web_form", purposes=["newsletter"], actions=["consents"]
    )
    response = world.post("/consents", NEWSLETTER_GRANT, secret=form, **{"Sec-GPC": "1"})
    assert response.status_code == 201
    assert _event(world.ledger, "apikey:form", "profiling")  # the opt-out, through form
    (line,) = _key_lines(config_path, 0)
    assert line.startswith(KEYS_AGREE)


def test_a_revoked_key_opened_used_to_erase_and_closed_again_is_named_by_the_erasure(
    world: HubWorld,  # noqa: F811 (the hub's fixture, imported above)
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the events recorded through a revoked key are held to its revocation, so are the
    objections and erasures: its row's revocation undone, an erasure made, the row put back."""
    monkeypatch.setattr(api, "KEY_CACHE_SECONDS", 0.0)
    keys.revoke(world.ledger, "website")
    revoked = _seq(world.ledger, "apikey.revoked", apikey="website")
    world.clock.advance(minutes=10)
    with world.ledger.engine.connect() as conn:
        at = conn.execute(text("SELECT revoked_at FROM api_keys WHERE name = 'website'")).scalar_one()
    _as_an_attacker(world.ledger, "UPDATE api_keys SET revoked_at = NULL WHERE name = 'website'")
    erased = world.post("/erasure-requests", {"email": BEN, "reason": "asked by phone"})
    assert erased.status_code == 200, erased.text
    _as_an_attacker(world.ledger, "UPDATE api_keys SET revoked_at = :at WHERE name = 'website'", at=at)

    erasure = _seq(world.ledger, "subject.erased")
    revoked_at = iso(world.clock.now - timedelta(minutes=10))
    assert _key_lines(config_path, exit_codes.AUDIT_BROKEN) == [
        f"{KEYS_DISAGREE}audit entries: 1 objections or erasures (the first: audit entry {erasure}) recorded "
        f"through API key website up to {iso(world.clock.now)}, after audit entry {revoked} revoked it at "
        f"{revoked_at}: it was opened again outside consentsync"
    ]


def test_a_process_started_before_a_default_change_binds_to_the_chain_s_and_verifies_clean(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    # A daemon reads its configuration once: another process applies a new default_basis. The
    # daemon binds what it records to the default the chain says is in force (session 62; it
    # bound to the one it started with before), and verify names no edit.
    import dataclasses

    clock.advance(hours=1)
    data = yaml.safe_load(config_path.read_text())
    (profiling,) = [p for p in data["purposes"] if p["key"] == "profiling"]
    was = profiling["default_basis"]
    profiling["default_basis"] = "consent" if was != "consent" else "legitimate_interests"
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    dataclasses.replace(ledger, purposes=load_config(config_path).purposes).sync_purposes()
    clock.advance(minutes=30)
    ledger.record(Identity(email="dan@example.test"), _profiling_grant(clock))
    _verify(config_path, 0)
