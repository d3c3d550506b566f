"""A pending confirmation's terms are bound in the audit chain (docs/tamper-evidence.md,
"Confirmation links"), on SQLite and PostgreSQL.

The defect (black-box report F5): a ``confirmations`` row edited by hand (another purpose,
another notice version, a later expiry) left ``audit verify`` at exit 0, and the person's own
click on the mailed newsletter link then recorded ``email_marketing granted, source
double_opt_in`` under a notice they were never shown, verify passing afterwards too. Now every
row is opened with a ``confirmation.opened`` entry binding its terms; verify names a row that
differs (exit 5, by its id, never the address) and its link opens nothing. Rows an older version
opened (no binding) keep working until they expire as they would have.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update

from consentsync.app import check_erasure_key, ledger_engine, pinned
from consentsync.config import load_config
from consentsync.domain import ConsentStatus
from consentsync.hub import notices
from consentsync.hub.capture import token_digest
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import confirmations, subjects
from consentsync.ledger.service import Ledger
from tests.conftest import Cli, Clock, sqlite_at_head
from tests.hub.conftest import NOTICE_IN_EFFECT, HubWorld
from tests.hub.people_world import EMAIL, GRANT, mailed, people_pages, token_of
from tests.integration.helpers import consent_value

FIXTURES = (people_pages,)  # `people`: the pages, in-process
SIGN_UP = {**GRANT, "purpose": "email_marketing"}
BOB = "bob@example.test"
FINDING = "notices and API keys DISAGREE with audit entries: confirmations row"


def verify(world: HubWorld, code: int) -> list[str]:
    """``audit verify``'s findings on confirmation rows, after checking its exit code; it never
    names an address."""
    result = Cli(world.hub.config.path, CliRunner())("audit", "verify")
    assert result.exit_code == code, result.output + result.stderr
    assert EMAIL not in result.output and BOB not in result.output
    return [line for line in result.stdout.splitlines() if line.startswith(FINDING)]


def verified_counts(world: HubWorld) -> dict[str, Any]:
    result = Cli(world.hub.config.path, CliRunner())("audit", "verify", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    return dict(json.loads(result.stdout)["notices_and_keys"])


def newest_row(world: HubWorld) -> int:
    with world.ledger.engine.connect() as conn:
        return int(
            conn.execute(select(confirmations.c.id).order_by(confirmations.c.id.desc())).scalars().first()
        )


def edit(world: HubWorld, row_id: int, **values: Any) -> None:
    """A plain edit of the row, as whoever can write the ledger makes one."""
    with world.ledger.engine.begin() as conn:
        conn.execute(update(confirmations).where(confirmations.c.id == row_id).values(**values))


def granted(world: HubWorld, email: str = EMAIL) -> list[dict[str, Any]]:
    return [event for event in world.ledger.subject_view(email)["history"] if event["status"] == "granted"]


def statuses(world: HubWorld) -> list[str]:
    return [str(event["status"]) for event in world.ledger.subject_view(EMAIL)["history"]]


def signed_up(world: HubWorld) -> str:
    """Ada signs up for email marketing (double opt-in): the path of the mailed link."""
    assert world.post("/consents", SIGN_UP).status_code == 201
    return mailed(world, "/p/confirm/")


def test_an_untampered_sign_up_verifies_and_confirms(world: HubWorld, people: TestClient) -> None:
    link = signed_up(world)
    assert verify(world, 0) == []
    assert verified_counts(world)["confirmations"] == 1
    world.clock.advance(minutes=1)
    assert people.post(link, data={"lang": "en"}).status_code == 200
    (grant,) = granted(world)
    assert (grant["purpose"], grant["source"], grant["notice_version"]) == (
        "email_marketing",
        "double_opt_in",
        "2026-05",
    )
    assert verify(world, 0) == []


@pytest.mark.parametrize("term", ["purpose", "notice_version", "expires_at"])
def test_an_edited_pending_sign_up_is_named_and_its_link_refused(
    world: HubWorld, people: TestClient, term: str
) -> None:
    """Each term alone: the newsletter instead, a notice version saying more (registered, so the
    grant would be recorded under it), or a link expired and made to work again."""
    link = signed_up(world)
    row_id = newest_row(world)
    if term == "purpose":
        edit(world, row_id, purpose="newsletter")
    elif term == "notice_version":
        wider = "Offers by email, and your address shared with our partners."
        notices.add(world.ledger, "email_marketing", "2026-06", wider, in_effect_from=NOTICE_IN_EFFECT)
        edit(world, row_id, notice_version="2026-06")
    else:
        world.clock.advance(days=world.hub.settings.confirmation_days + 1)
        edit(world, row_id, expires_at=world.clock() + timedelta(days=365))
    (finding,) = verify(world, 5)
    assert f"confirmations row {row_id} (double_opt_in): {term} is " in finding
    assert "edited outside consentsync" in finding
    world.clock.advance(minutes=1)
    assert people.get(link).status_code == 403
    assert people.post(link, data={"lang": "en"}).status_code == 403
    assert people.post(f"{link}/decline", data={"lang": "en"}).status_code == 403
    assert granted(world) == []
    assert verify(world, 5)  # still named: nothing recorded made it pass


def test_a_disowned_sign_up_verifies_and_its_kind_is_bound(world: HubWorld, people: TestClient) -> None:
    """Disowning changes a bound term (the kind): the chain says so. Put back by hand, the link
    would confirm a sign-up the person said was not theirs."""
    first = signed_up(world)
    world.clock.advance(minutes=1)
    assert people.post(first, data={"lang": "en"}).status_code == 200
    world.clock.advance(days=2)
    again = signed_up(world)  # someone else types Ada's address in: nothing waits, "No" disowns
    world.clock.advance(minutes=1)
    assert people.post(f"{again}/decline", data={"lang": "en"}, follow_redirects=False).status_code == 303
    assert len(granted(world)) == 1 and "refused" not in statuses(world)
    assert verify(world, 0) == []
    row_id = newest_row(world)
    edit(world, row_id, kind="double_opt_in")
    (finding,) = verify(world, 5)
    assert f"confirmations row {row_id} (double_opt_in): kind is double_opt_in where audit entry" in finding
    assert "says disowned" in finding
    assert people.post(again, data={"lang": "en"}).status_code == 403


def test_an_erasure_link_moved_to_another_person_erases_no_one(world: HubWorld, people: TestClient) -> None:
    assert world.post("/consents", GRANT).status_code == 201
    assert world.post("/consents", {**GRANT, "email": BOB}).status_code == 201
    (ada,) = world.ledger.subject_uids_for_email(EMAIL)
    (bob,) = world.ledger.subject_uids_for_email(BOB)
    token = token_of(world, ada)
    asked = people.post(f"/p/preferences/{token}/erase", data={}, follow_redirects=False)
    assert asked.status_code == 303
    link = mailed(world, "/p/erase/")
    row_id = newest_row(world)
    with world.ledger.engine.connect() as conn:
        bob_id = conn.execute(select(subjects.c.id).where(subjects.c.uid == bob)).scalar_one()
    edit(world, row_id, subject_id=bob_id)
    (finding,) = verify(world, 5)
    assert f"confirmations row {row_id} (erasure): subject_id {bob_id} is not the person" in finding
    assert people.post(link, data={"lang": "en"}).status_code == 403
    assert world.ledger.email_of(bob) == BOB and world.ledger.email_of(ada) == EMAIL


def test_an_erasure_link_deleted_is_named(world: HubWorld, people: TestClient) -> None:
    """consentsync deletes only a consent request's or renewal's row whose mail did not go; an
    erasure's row deleted (the person's link then opens nothing) is a finding (session 63 review)."""
    assert world.post("/consents", GRANT).status_code == 201
    (ada,) = world.ledger.subject_uids_for_email(EMAIL)
    token = token_of(world, ada)
    assert people.post(f"/p/preferences/{token}/erase", data={}, follow_redirects=False).status_code == 303
    link = mailed(world, "/p/erase/")
    row_id = newest_row(world)
    with world.ledger.engine.begin() as conn:
        conn.execute(confirmations.delete().where(confirmations.c.id == row_id))
    (finding,) = verify(world, 5)
    assert f"confirmations row {row_id} (erasure): deleted outside consentsync" in finding
    assert people.post(link, data={"lang": "en"}).status_code in (403, 410)


def test_a_restriction_link_expired_and_extended_restricts_nothing(
    world: HubWorld, people: TestClient
) -> None:
    assert world.post("/consents", GRANT).status_code == 201
    (ada,) = world.ledger.subject_uids_for_email(EMAIL)
    token = token_of(world, ada)
    asked = people.post(
        f"/p/preferences/{token}/restrict", data={"ground": "accuracy"}, follow_redirects=False
    )
    assert asked.status_code == 303
    link = mailed(world, "/p/restrict/")
    assert verify(world, 0) == []
    world.clock.advance(days=world.hub.settings.confirmation_days + 1)
    edit(world, newest_row(world), expires_at=world.clock() + timedelta(days=30))
    assert verify(world, 5)
    assert people.post(link, data={"lang": "en"}).status_code == 403
    assert world.ledger.subject_view(EMAIL)["restricted"] is False


# -- rows an older version opened ----------------------------------------------------------------


@pytest.fixture
def older_link(config_path: Path, clock: Clock) -> Iterator[str]:
    """A double opt-in link an older version opened: Ada's sign-up recorded and its row inserted
    before this version first opens the ledger (so no entry binds it); its token. Requested
    before ``world`` opens the ledger (a test lists it first)."""
    config = load_config(config_path)
    sqlite_at_head(config.ledger_url)
    engine = ledger_engine(config)
    ledger = Ledger(engine, config.purposes, config.policy, pinned(check_erasure_key(engine, config)))
    ledger.clock = clock
    ledger.sync_purposes()
    now = clock()
    outcome = ledger.record(Identity(email=EMAIL), consent_value(ConsentStatus.REQUESTED, now, now))
    raw = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(
            insert(confirmations).values(
                token_hash=token_digest(raw), kind="double_opt_in", subject_id=outcome.subject_id,
                purpose="email_marketing", channel="email", notice_version="2026-05", source="web_form",
                requested_at=now, expires_at=now + timedelta(days=7),
            )
        )  # fmt: skip
    engine.dispose()
    yield f"/p/confirm/{raw}"


def test_an_older_versions_link_still_confirms_and_verifies(
    older_link: str, world: HubWorld, people: TestClient
) -> None:
    assert verified_counts(world)["older_confirmations"] == 1
    world.clock.advance(minutes=1)
    assert people.post(older_link, data={"lang": "en"}).status_code == 200
    (grant,) = granted(world)
    assert (grant["purpose"], grant["source"]) == ("email_marketing", "double_opt_in")
    assert verify(world, 0) == []


def test_an_older_versions_link_works_no_longer_than_it_would_have(
    older_link: str, world: HubWorld, people: TestClient
) -> None:
    world.clock.advance(days=8)
    edit(world, 1, expires_at=world.clock() + timedelta(days=30))
    (finding,) = verify(world, 5)
    assert "confirmations row 1 (double_opt_in): no confirmation.opened audit entry opens it" in finding
    assert people.post(older_link, data={"lang": "en"}).status_code == 403
    assert granted(world) == []


def test_a_row_inserted_by_hand_after_the_upgrade_is_named_and_refused(
    older_link: str, world: HubWorld, people: TestClient
) -> None:
    """Below the marker's id only an older version's rows pass unbound: one inserted now, with
    a token its inserter holds, opens nothing."""
    raw = secrets.token_urlsafe(32)
    now = world.clock()
    with world.ledger.engine.begin() as conn:
        conn.execute(
            insert(confirmations).values(
                token_hash=token_digest(raw), kind="double_opt_in", subject_id=1, purpose="newsletter",
                channel="email", notice_version="2026-05", source="web_form", requested_at=now,
                expires_at=now + timedelta(days=7),
            )
        )  # fmt: skip
    (finding,) = verify(world, 5)
    assert "confirmations row 2 (double_opt_in): no confirmation.opened audit entry opens it" in finding
    assert people.post(f"/p/confirm/{raw}", data={"lang": "en"}).status_code == 403
    assert granted(world) == []
