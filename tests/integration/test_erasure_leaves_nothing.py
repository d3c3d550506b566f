"""Rule 5 of issue 12: erasure leaves no personal data of the subject anywhere in the ledger, and
``audit verify`` still passes after it (SQLite and PostgreSQL).

The design (docs/policy.md, "Erasure"): free text about the person lives where erasure reaches it
(the reasons of decisions and restrictions in the audit details; the error texts of their CRM
records, quarantine reasons and CRM answers, redacted), and the person's identifiers are refused
where erasure cannot reach: the labels kept in the append-only tables and the hash chain (source,
actor, notice version, evidence reference, objection source, who decided) and the erasure's own
reason, kept with the suppression entry.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select

from consentsync.domain import ConsentStatus, Evidence, InvalidInput, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import crm_links, outbox, quarantine, subjects
from consentsync.ledger.service import Ledger
from tests.conftest import Cli, Clock, proof
from tests.integration.test_cli import assert_bad_input, audit_entries, dump_database, iso_ago, record, show

EMAIL = "jane.roe@example.org"
NAME = "Jane Roe"


def _link_with_error_texts(ledger: Ledger, email: str, text: str) -> None:
    """A CRM record of the person, quarantined once and refused once by the CRM, whose error texts
    quote what the CRM holds (as HubSpot's and Salesforce's answers do)."""
    now = datetime.now(UTC)
    uid = ledger.subject_view(email)["subject"]
    with ledger.engine.begin() as conn:
        subject_id = conn.execute(select(subjects.c.id).where(subjects.c.uid == uid)).scalar_one()
        conn.execute(
            insert(crm_links).values(
                subject_id=subject_id, connector="hs", object_type="contact", record_id="901", linked_at=now
            )
        )
        conn.execute(
            insert(quarantine).values(
                run_id="r-1", connector="hs", object_type="contact", record_id="901", stage="push",
                reason=f"CONTACT_EXISTS: {text}", created_at=now,
            )
        )  # fmt: skip
        conn.execute(
            insert(outbox).values(
                connector="hs", object_type="contact", record_id="901", subject_id=subject_id,
                fields="{}", suppression=True, created_at=now, status="dead", attempts=5,
                last_error=f"409: {text}",
            )
        )  # fmt: skip


def test_erasure_leaves_no_trace_of_the_person_and_the_chain_verifies(cli: Cli, config_path: Path) -> None:
    from consentsync.app import open_ledger
    from consentsync.config import load_config

    logs = ""

    def run(*args: str) -> Any:
        nonlocal logs
        result = cli("--log-level", "DEBUG", *args)
        assert result.exit_code == 0, result.output
        logs += result.stderr
        return result

    run(
        "ledger", "record", "--email", EMAIL, "--purpose", "email_marketing", "--status", "granted",
        "--source", "web_form", "--at", iso_ago(days=3), "--actor", "ops-bob",
        "--notice-version", "privacy-v3", "--evidence-ref", "form-77", "--double-opt-in-at", iso_ago(days=2),
    )  # fmt: skip
    run("ledger", "record", "--email", EMAIL, "--purpose", "service", "--status", "granted",
        "--channel", "post", "--source", "phone", "--actor", "ops-eve", *proof())  # fmt: skip
    run(
        "objection",
        "raise",
        "--email",
        EMAIL,
        "--purpose",
        "profiling",
        "--source",
        "phone",
        "--actor",
        "ops-eve",
    )
    objection_id = str(cli.json("objection", "list")[0]["id"])
    run("objection", "decide", objection_id, "--uphold", "--by", "dpo",
        "--reason", f"{NAME} called from her address {EMAIL} and confirmed")  # fmt: skip
    run("restrict", "--email", EMAIL, "--reason", f"{NAME} disputes the accuracy ({EMAIL})", "--actor", "dpo")
    run("restrict", "--email", EMAIL, "--lift", "--reason", f"accuracy of {NAME}'s record verified")
    ledger = open_ledger(load_config(config_path))
    try:
        _link_with_error_texts(ledger, EMAIL, f"a contact {NAME} <{EMAIL}> exists already")
    finally:
        ledger.engine.dispose()
    uid = show(cli, EMAIL)["subject"]
    before = dump_database(config_path)
    assert EMAIL in before and NAME.lower() in before  # the check below can see both

    result = run("erase", "--email", EMAIL, "--reason", "Art. 17(1)(a), ticket 991", "--yes", "--json")
    assert json.loads(result.stdout)["subject"] == uid
    assert "subject.erased" in logs and "objection.decided" in logs  # the logs were captured

    after = dump_database(config_path)
    for trace in (EMAIL, NAME.lower(), "jane.roe", "jane roe"):
        assert trace not in after, f"{trace!r} survived the erasure"
    # The pseudonymous history stays: the evidence of the consent, its proof, the objection.
    assert "form-77" in after and "privacy-v3" in after and uid in after
    assert cli.json("audit", "verify")["ok"] is True
    entries = cli.json("audit", "log", "--email", EMAIL)
    assert {e["subject"] for e in entries} == {uid} and entries[-1]["action"] in {
        "subject.erased",
        "state.changed",
    }
    assert EMAIL not in logs.lower() and "jane" not in logs.lower()


_RECORD = ("ledger", "record", "--purpose", "service", "--status", "granted", "--source", "web_form")
_RECORD_NO_SOURCE = ("ledger", "record", "--purpose", "service", "--status", "granted")
_OBJECT = ("objection", "raise", "--purpose", "profiling")
WHERE_IT_DOES_NOT_BELONG = [
    pytest.param(_RECORD, "--actor", id="record-actor"),
    pytest.param(_RECORD_NO_SOURCE, "--source", id="record-source"),
    pytest.param(_RECORD, "--evidence-ref", id="record-evidence-ref"),
    pytest.param(_RECORD, "--notice-version", id="record-notice"),
    pytest.param(_OBJECT, "--source", id="objection-source"),
    pytest.param(_OBJECT, "--actor", id="objection-actor"),
    pytest.param(("restrict", "--reason", "disputed"), "--actor", id="restrict-actor"),
    pytest.param(("erase", "--yes"), "--reason", id="erase-reason"),
    pytest.param(("erase", "--yes", "--reason", "art17"), "--actor", id="erase-actor"),
]


@pytest.mark.parametrize(("command", "option"), WHERE_IT_DOES_NOT_BELONG)
def test_the_address_is_refused_where_erasure_cannot_reach(
    cli: Cli, command: tuple[str, ...], option: str
) -> None:
    record(cli, EMAIL, "email_marketing", "granted", *proof(days=1), "--actor", "ops-bob")
    before = audit_entries(cli)
    verb, *rest = command
    args = [verb, *rest[:1]] if verb in ("ledger", "objection") else [verb]
    tail = rest[1:] if verb in ("ledger", "objection") else rest
    result = cli(*args, "--email", EMAIL, *tail, option, f"self-service by {EMAIL.upper()}")
    message = assert_bad_input(result, option, "email address")
    assert EMAIL not in message.lower()
    assert audit_entries(cli) == before
    cli.ok("erase", "--email", EMAIL, "--reason", "art17", "--yes")
    assert EMAIL not in dump_database(cli.config_path)
    assert cli.json("audit", "verify")["ok"] is True


# -- a property: wherever the person's address is offered, after the erasure it is nowhere --------

_counter = itertools.count()
PLACES = (
    "actor",
    "source",
    "notice_version",
    "evidence_ref",
    "objection_source",
    "objection_actor",
    "decision",
    "restriction",
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    places=st.sets(st.sampled_from(PLACES)),
    spelling=st.sampled_from(["{e}", "{E}", "mail <{e}>", "by {e}.", "{e},{e}"]),
    statuses=st.lists(
        st.sampled_from([ConsentStatus.GRANTED, ConsentStatus.WITHDRAWN, ConsentStatus.REQUESTED]),
        min_size=1,
        max_size=3,
    ),
)
def test_wherever_the_address_is_offered_erasure_leaves_it_nowhere(
    ledger: Ledger,
    clock: Clock,
    config_path: Path,
    places: set[str],
    spelling: str,
    statuses: list[ConsentStatus],
) -> None:
    email = f"person{next(_counter)}@example.net"
    offered = spelling.format(e=email, E=email.upper())

    def text(place: str, default: str | None) -> str | None:
        return offered if place in places else default

    for index, status in enumerate(statuses):
        evidence = Evidence(
            purpose="email_marketing",
            channel="email",
            status=status,
            basis=None,
            event_time=clock.now - timedelta(days=10 - index),
            observed_at=clock.now,
            source=text("source", "web_form") or "web_form",
            origin=Origin.CAPTURE,
            actor=text("actor", "ops"),
            notice_version=text("notice_version", "v1"),
            evidence_ref=text("evidence_ref", f"form-{index}"),
        )
        try:
            ledger.record(Identity(email=email), evidence)
        except InvalidInput as error:
            assert email not in str(error).lower()
    ledger.record(
        Identity(email=email),
        Evidence("service", "post", ConsentStatus.GRANTED, None, clock.now - timedelta(days=1),
                 clock.now, "web_form", Origin.CAPTURE),
    )  # fmt: skip
    try:
        raised = ledger.raise_objection(
            email,
            "profiling",
            source=text("objection_source", "ops") or "ops",
            actor=text("objection_actor", None),
        )
    except InvalidInput:
        raised = ledger.raise_objection(email, "profiling")
    if raised["status"] == "pending":
        ledger.decide_objection(raised["id"], uphold=True, by="dpo", reason=text("decision", "ok") or "ok")
    ledger.restrict(email, restricted=True, reason=text("restriction", "disputed") or "disputed")
    ledger.erase(email, reason="art17")
    assert email not in dump_database(config_path)
    from consentsync import audit

    with ledger.engine.connect() as conn:
        assert audit.verify(conn).ok
