"""`audit verify` holds the notices and the API keys to the audit chain (docs/tamper-evidence.md,
"Notices and API keys"), on SQLite and PostgreSQL.

The defect (black-box regulatory report, section 6): a notice's text (and its stored SHA-256)
edited in the ledger, or an untrusted key's source switched from list_import to web_form, left
`audit verify` at exit 0, although the chain's ``notice.added`` and ``apikey.created`` entries
said otherwise: the export then carried the forged hash, and grants through the key could lift
withdrawals and erasures. Now each row is compared with the entries that made and changed it, a
finding naming the table, the row and the field, exit 5; the consent events recorded through a
key are held to the source the chain gives it (a key made trusted, used and put back); the
columns entries are found by (action, person, run) are held to the entry; and a key an older
version created is bound once (``audit_registry.bind_api_keys``: its rate and the digest of its hash).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from consentsync import audit, audit_registry, exit_codes
from consentsync.audit import AuditRecord
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.hub import api, keys
from consentsync.hub import notices as registry
from consentsync.ledger.engine import reading
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import api_keys, audit_entries, notices
from consentsync.ledger.service import Ledger
from tests.conftest import Cli, Clock
from tests.hub.conftest import HubWorld, inbox, world  # noqa: F401 (the hub's fixtures)
from tests.integration.test_tamper_evidence import _app_url, _as_owner_unprotected

AGREE = "notices and API keys agree with audit entries: "
DISAGREE = "notices and API keys DISAGREE with audit entries: "
TEXT = "Email marketing notice v1: offers twice a month.\n"
FORGED = "Email marketing notice v1: offers twice a month, and we share your address with partners.\n"
Edit = Callable[[Any], None]
LONG_AGO = datetime(2025, 1, 1, tzinfo=UTC)


def _sql(statement: str, **values: Any) -> Edit:
    def edit(conn: Any) -> None:
        conn.execute(text(statement), values)

    return edit


def _edited(ledger: Ledger, *edits: Edit) -> None:
    """Raw edits of the rows, as whoever can write the ledger makes them."""
    with ledger.engine.begin() as conn:
        for edit in edits:
            edit(conn)


def _verify(cli: Cli, code: int = 0) -> list[str]:
    """``audit verify``'s lines on the notices and keys, after checking its exit code."""
    result = cli("audit", "verify")
    assert result.exit_code == code, result.output + result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith((AGREE, DISAGREE))]


def _seq(ledger: Ledger, action: str, name: str | None = None) -> int:
    with ledger.engine.connect() as conn:
        found = [
            e["seq"] for e in audit.entries(conn, action=action) if name in (None, e["what"].get("apikey"))
        ]
    return found[-1]


def _head(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.max(audit_entries.c.seq))).scalar_one())


@pytest.fixture
def registered(cli: Cli, ledger: Ledger, clock: Clock) -> Iterator[dict[str, str]]:
    """A notice, and three keys: website (web_form, trusted), shop (list_import, one purpose,
    consents only, 60 a minute) and old (revoked); their secrets by name."""
    registry.add(ledger, "email_marketing", "v1", TEXT, actor="ops")
    secrets = {}
    _key, secrets["website"] = keys.create(
        ledger, "website", source="web_form", purposes=["*"], actions=["*"]
    )
    _key, secrets["shop"] = keys.create(
        ledger,
        "shop",
        source="list_import",
        purposes=["email_marketing"],
        actions=["consents"],
        rate_per_minute=60,
    )
    _key, secrets["old"] = keys.create(ledger, "old", source="web_form", purposes=["*"], actions=["*"])
    clock.advance(minutes=1)
    keys.revoke(ledger, "old")
    yield secrets


def test_untampered_notices_and_keys_verify(cli: Cli, ledger: Ledger, registered: dict[str, str]) -> None:
    (line,) = _verify(cli)
    counted = "1 notices, 3 API keys, 0 consent events recorded through them, 0 confirmation links"
    assert line == f"{AGREE}{counted}"
    (created,) = [e for e in _entries(ledger, "apikey.created") if e["what"]["apikey"] == "shop"]
    with ledger.engine.connect() as conn:
        stored = conn.execute(select(api_keys.c.key_hash).where(api_keys.c.name == "shop")).scalar_one()
    # The chain binds the rate and a digest of the stored hash: never the secret nor the hash.
    assert created["new"]["rate_per_minute"] == 60
    assert created["new"][keys.KEY_HASH_DIGEST] == hashlib.sha256(stored.encode()).hexdigest()
    assert stored not in str(created) and registered["shop"] not in str(created)


def _entries(ledger: Ledger, action: str) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        return list(audit.entries(conn, action=action))


# -- notices ------------------------------------------------------------------------------------

FORGED_SHA = hashlib.sha256(FORGED.encode()).hexdigest()
TEXT_SHA = hashlib.sha256(TEXT.encode()).hexdigest()
NOTICE = "notices row 1 (notice email_marketing v1 (en)): "
NOTICE_EDITS: dict[str, tuple[list[Edit], list[str]]] = {
    # (1) of the report: the text alone
    "text": (
        [_sql("UPDATE notices SET text = :t WHERE version = 'v1'", t=FORGED)],
        [NOTICE + "text is not the one audit entry {n} registered (its SHA-256 is " + FORGED_SHA[:16]],
    ),
    # (2): the text and its hash, as the export reads it
    "text and sha256": (
        [_sql("UPDATE notices SET text = :t, sha256 = :s WHERE version = 'v1'", t=FORGED, s=FORGED_SHA)],
        [NOTICE + f"sha256 is {FORGED_SHA[:16]}… where audit entry {{n}} says", "text is not the one"],
    ),
    "sha256": (
        [_sql("UPDATE notices SET sha256 = :s WHERE version = 'v1'", s=FORGED_SHA)],
        [NOTICE + f"sha256 is {FORGED_SHA[:16]}… where audit entry {{n}} says"],
    ),
    "version": (
        [_sql("UPDATE notices SET version = 'v0' WHERE version = 'v1'")],
        [
            "notices row 1 (notice email_marketing v0 (en)): no notice.added audit entry registers it",
            "notices: audit entry {n} registers notice email_marketing v1 (en), which has no row",
        ],
    ),
    "purpose": (
        [_sql("UPDATE notices SET purpose = 'profiling' WHERE version = 'v1'")],
        ["notices row 1 (notice profiling v1 (en)): no notice.added audit entry registers it"],
    ),
    "language": (
        [_sql("UPDATE notices SET language = 'de' WHERE version = 'v1'")],
        ["notices row 1 (notice email_marketing v1 (de)): no notice.added audit entry registers it"],
    ),
    "created_at": (
        [lambda conn: conn.execute(update(notices).values(created_at=LONG_AGO))],
        [NOTICE + "created_at is 2025-01-01T00:00:00Z where audit entry {n} says 2026-06-01T12:00:00Z"],
    ),
    "deleted": (
        [_sql("DELETE FROM notices")],
        ["notices: audit entry {n} registers notice email_marketing v1 (en), which has no row: deleted"],
    ),
}


@pytest.mark.parametrize("field", list(NOTICE_EDITS))
def test_a_notice_edited_in_the_database_fails_verify_naming_the_field(
    cli: Cli, ledger: Ledger, registered: dict[str, str], field: str
) -> None:
    edits, needles = NOTICE_EDITS[field]
    entry = _seq(ledger, "notice.added")
    _edited(ledger, *edits)
    lines = _verify(cli, exit_codes.AUDIT_BROKEN)
    shown = "\n".join(lines)
    for needle in needles:
        assert any(line.startswith(DISAGREE) and needle.format(n=entry) in line for line in lines), shown
    assert "partners" not in shown  # never the text


def test_a_notice_inserted_or_registered_anew_under_its_version_is_named(
    cli: Cli, ledger: Ledger, registered: dict[str, str]
) -> None:
    _edited(ledger, lambda conn: conn.execute(
        insert(notices).values(purpose="email_marketing", version="v2", language="en", sha256=FORGED_SHA,
                               text=FORGED, created_at=ledger.clock())
    ))  # fmt: skip
    (line,) = _verify(cli, exit_codes.AUDIT_BROKEN)
    assert line == (
        f"{DISAGREE}notices row 2 (notice email_marketing v2 (en)): no notice.added audit entry registers "
        "it: inserted, or its purpose, version or language edited, outside consentsync"
    )
    # v1 deleted by hand, then registered anew with another text (the one way in is refused).
    _edited(ledger, _sql("DELETE FROM notices"))
    first = _seq(ledger, "notice.added")
    registry.add(ledger, "email_marketing", "v1", FORGED)
    (line,) = _verify(cli, exit_codes.AUDIT_BROKEN)
    assert line == (
        f"{DISAGREE}notices: audit entry {first} registered notice email_marketing v1 (en) with another "
        f"text before audit entry {_head(ledger)} registered it: its row was deleted outside consentsync"
    )


def _older_notice(ledger: Ledger) -> None:
    """Version v0 as a version before migration 0020 registered it: no in-effect date, in the
    row or in its entry."""
    now = ledger.clock()
    what = {"purpose": "email_marketing", "version": "v0", "language": "en"}
    with ledger.engine.begin() as conn:
        conn.execute(insert(notices).values(**what, sha256=TEXT_SHA, text=TEXT, created_at=now))
        audit.append(conn, [AuditRecord("notice.added", what, new={"sha256": TEXT_SHA}, source="cli")], now)


def test_since_when_a_notice_is_in_effect_is_held_to_its_entries(
    cli: Cli, ledger: Ledger, registered: dict[str, str]
) -> None:
    """The date a version was in effect from (migration 0020, written by another change at the
    same time) decides which grants naming it can be true: held to the entries that say it, and
    NULL where none does (a version registered before there were such dates)."""
    if "in_effect_from" not in notices.c:
        pytest.skip("no notices.in_effect_from in this schema")
    v1 = _seq(ledger, "notice.added")
    _edited(ledger, lambda conn: conn.execute(update(notices).values(in_effect_from=LONG_AGO)))
    (line,) = _verify(cli, exit_codes.AUDIT_BROKEN)
    assert (
        f"{NOTICE}in_effect_from is 2025-01-01T00:00:00Z where audit entry {v1} says 2026-06-01T12:00:00Z"
        in line
    )
    _edited(ledger, lambda conn: conn.execute(update(notices).values(in_effect_from=notices.c.created_at)))
    _older_notice(ledger)
    (line,) = _verify(cli)
    assert line.startswith(f"{AGREE}2 notices")
    older = update(notices).where(notices.c.version == "v0")
    _edited(ledger, lambda conn: conn.execute(older.values(in_effect_from=LONG_AGO)))
    (line,) = _verify(cli, exit_codes.AUDIT_BROKEN)
    assert (
        "notices row 2 (notice email_marketing v0 (en)): in_effect_from is 2025-01-01T00:00:00Z where no "
        in line
    )
    # Dated the one way there is (the same text added again with its date): held to that entry.
    _edited(ledger, lambda conn: conn.execute(older.values(in_effect_from=None)))
    if "in_effect_from" not in inspect.signature(registry.add).parameters:
        return
    registry.add(ledger, "email_marketing", "v0", TEXT, in_effect_from=LONG_AGO)
    dated = _head(ledger)
    _verify(cli)
    _edited(ledger, lambda conn: conn.execute(older.values(in_effect_from=LONG_AGO - timedelta(days=365))))
    (line,) = _verify(cli, exit_codes.AUDIT_BROKEN)
    assert (
        f"in_effect_from is 2024-01-02T00:00:00Z where audit entry {dated} says 2025-01-01T00:00:00Z" in line
    )


# -- API keys ------------------------------------------------------------------------------------


def _swap_hashes(conn: Any) -> None:
    rows = dict(conn.execute(select(api_keys.c.name, api_keys.c.key_hash)).all())
    for name, other in (("website", "shop"), ("shop", "website")):
        conn.execute(update(api_keys).where(api_keys.c.name == name).values(key_hash="x" + rows[other][1:]))
    for name, other in (("website", "shop"), ("shop", "website")):
        conn.execute(update(api_keys).where(api_keys.c.name == name).values(key_hash=rows[other]))


SHOP = "api_keys row 2 (key shop): "
KEY_EDITS: dict[str, tuple[list[Edit], str, list[str]]] = {
    # (3) of the report: an untrusted key made trusted
    "source": (
        [_sql("UPDATE api_keys SET source = 'web_form' WHERE name = 'shop'")],
        "shop",
        [SHOP + "source is web_form where audit entry {n} says list_import: edited outside consentsync"],
    ),
    "purposes": (
        [_sql("""UPDATE api_keys SET purposes = '["*"]' WHERE name = 'shop'""")],
        "shop",
        [SHOP + "purposes is * where audit entry {n} says email_marketing"],
    ),
    "actions": (
        [_sql("""UPDATE api_keys SET actions = '["consents","erasure"]' WHERE name = 'shop'""")],
        "shop",
        [SHOP + "actions is consents,erasure where audit entry {n} says consents"],
    ),
    "rate_per_minute": (
        [_sql("UPDATE api_keys SET rate_per_minute = NULL WHERE name = 'shop'")],
        "shop",
        [SHOP + "rate_per_minute is none where audit entry {n} says 60"],
    ),
    "key_prefix": (
        [_sql("UPDATE api_keys SET key_prefix = 'csk_AAAAAAAA' WHERE name = 'shop'")],
        "shop",
        [SHOP + "key_prefix differs from audit entry {n}"],
    ),
    # shop's secret now opens website, a trusted source: the hash is bound (by a digest of it)
    "key_hash": (
        [_swap_hashes],
        "shop",
        [SHOP + "key_hash differs from audit entry {n}", "api_keys row 1 (key website): key_hash differs"],
    ),
    "created_at": (
        [lambda conn: conn.execute(update(api_keys).values(created_at=LONG_AGO))],
        "shop",
        [SHOP + "created_at is 2025-01-01T00:00:00Z where audit entry {n} says 2026-06-01T12:00:00Z"],
    ),
    "revoked_at cleared": (
        [_sql("UPDATE api_keys SET revoked_at = NULL WHERE name = 'old'")],
        "old",
        ["api_keys row 3 (key old): revoked_at is none where audit entry {n} revoked it: it opens again"],
    ),
    "revoked_at set": (
        [
            lambda conn: conn.execute(
                update(api_keys).where(api_keys.c.name == "shop").values(revoked_at=LONG_AGO)
            )
        ],
        "shop",
        [SHOP + "revoked_at is 2025-01-01T00:00:00Z where no audit entry revokes it"],
    ),
    "name": (
        [_sql("UPDATE api_keys SET name = 'shop2' WHERE name = 'shop'")],
        "shop",
        [
            "api_keys row 2 (key shop2): no apikey.created audit entry creates it",
            "api_keys: audit entry {n} created key shop, which has no row: deleted, or renamed",
        ],
    ),
    "deleted": (
        [_sql("DELETE FROM api_keys WHERE name = 'shop'")],
        "shop",
        ["api_keys: audit entry {n} created key shop, which has no row: deleted"],
    ),
    "inserted": (
        [
            _sql(
                "INSERT INTO api_keys (name, source, purposes, actions, key_prefix, key_hash, created_at)"
                """ VALUES ('ghost', 'web_form', '["*"]', '["*"]', 'csk_ghost', :h, :at)""",
                h="0" * 64,
                at="2026-06-01 12:00:00",
            )
        ],
        "shop",
        ["api_keys row 4 (key ghost): no apikey.created audit entry creates it: inserted"],
    ),
}


@pytest.mark.parametrize("field", list(KEY_EDITS))
def test_an_api_key_edited_in_the_database_fails_verify_naming_the_field(
    cli: Cli, ledger: Ledger, registered: dict[str, str], field: str
) -> None:
    edits, key, needles = KEY_EDITS[field]
    entry = _seq(ledger, "apikey.revoked" if key == "old" else "apikey.created", key)
    with ledger.engine.connect() as conn:
        hashes = list(conn.execute(select(api_keys.c.key_hash, api_keys.c.key_prefix)).all())
    _edited(ledger, *edits)
    lines = _verify(cli, exit_codes.AUDIT_BROKEN)
    shown = "\n".join(lines)
    for needle in needles:
        assert any(line.startswith(DISAGREE) and needle.format(n=entry) in line for line in lines), shown
    for secret in registered.values():
        assert secret[:12] not in shown  # neither secret nor prefix
    assert not any(value in shown for row in hashes for value in row)


def test_a_key_revoked_twice_was_opened_between(cli: Cli, ledger: Ledger, registered: dict[str, str]) -> None:
    first = _seq(ledger, "apikey.revoked", "old")
    _edited(ledger, _sql("UPDATE api_keys SET revoked_at = NULL WHERE name = 'old'"))
    keys.revoke(ledger, "old")  # the revocation put back the one way there is
    (line,) = _verify(cli, exit_codes.AUDIT_BROKEN)
    assert (
        f"api_keys row 3 (key old): audit entry {first} revoked it before audit entry {_head(ledger)} did: "
        "it was opened again between: edited outside consentsync"
    ) in line


# -- what was recorded through a key -------------------------------------------------------------

WITHDRAWAL = {"purpose": "newsletter", "status": "withdrawn", "email": "ann@example.test"}
GRANT = {
    "purpose": "newsletter",
    "status": "granted",
    "notice_version": "2026-05",
    "email": "ann@example.test",
}


def _status(at: HubWorld) -> str:
    answer = at.post("/decisions", {"email": "ann@example.test", "purpose": "newsletter", "channel": "email"})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["status"])


def test_a_key_made_trusted_used_and_put_back_is_named_by_its_events(
    world: HubWorld,  # noqa: F811 (the hub's fixture, imported above)
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attack the row check alone misses: the row edited, a grant reversing a withdrawal
    recorded through it, the row put back. The events say which source the key spoke for."""
    monkeypatch.setattr(api, "KEY_CACHE_SECONDS", 0.0)  # the row read again at each request
    cli = Cli(config_path, CliRunner())
    assert world.post("/consents", WITHDRAWAL).status_code == 201
    world.clock.advance(minutes=1)
    _key, shady = keys.create(
        world.ledger, "shady", source="list_import", purposes=["*"], actions=["consents"]
    )
    assert world.post("/consents", GRANT, secret=shady).status_code == 201
    assert _status(world) != "granted"  # untrusted: the withdrawal stands
    _verify(cli)
    world.clock.advance(minutes=1)
    _edited(world.ledger, _sql("UPDATE api_keys SET source = 'web_form' WHERE name = 'shady'"))
    assert world.post("/consents", GRANT, secret=shady).status_code == 201
    assert _status(world) == "granted"  # what the report warned of: the no reversed
    _edited(world.ledger, _sql("UPDATE api_keys SET source = 'list_import' WHERE name = 'shady'"))
    created = _seq(world.ledger, "apikey.created", "shady")
    (line,) = _verify(cli, exit_codes.AUDIT_BROKEN)
    assert line.startswith(f"{DISAGREE}consent_events: 1 events (the first: event ")
    assert line.endswith(
        f"recorded through API key shady carry source web_form where audit entry {created} gives the key "
        "source list_import: recorded while its row said otherwise (edited outside consentsync)"
    )
    assert "ann@" not in line


def test_a_revoked_key_opened_used_and_closed_again_is_named_by_its_events(
    world: HubWorld,  # noqa: F811 (the hub's fixture, imported above)
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api, "KEY_CACHE_SECONDS", 0.0)
    cli = Cli(config_path, CliRunner())
    keys.revoke(world.ledger, "website")
    revoked = _seq(world.ledger, "apikey.revoked", "website")
    assert world.post("/consents", GRANT).status_code == 401
    world.clock.advance(minutes=10)
    with world.ledger.engine.connect() as conn:
        at = conn.execute(select(api_keys.c.revoked_at).where(api_keys.c.name == "website")).scalar_one()
    _edited(world.ledger, _sql("UPDATE api_keys SET revoked_at = NULL WHERE name = 'website'"))
    assert world.post("/consents", GRANT).status_code == 201
    _edited(world.ledger, lambda conn: conn.execute(update(api_keys).values(revoked_at=at)))
    (line,) = _verify(cli, exit_codes.AUDIT_BROKEN)
    assert f"API key website up to 2026-06-01T12:10:00Z, after audit entry {revoked} revoked it at" in line


def test_events_recorded_in_the_name_of_a_key_the_chain_never_made_are_named(
    cli: Cli, ledger: Ledger, registered: dict[str, str]
) -> None:
    # The command line refuses that actor (cli_base.acting): written as a script on the ledger's
    # own code would.
    now = ledger.clock()
    ledger.record(
        Identity(email="bob@example.test"),
        Evidence(purpose="email_marketing", channel="email", status=ConsentStatus.GRANTED,
                 basis=LawfulBasis.CONSENT, event_time=now - timedelta(minutes=1), observed_at=now,
                 source="web_form", origin=Origin.CAPTURE, actor="apikey:ghost", notice_version="v1",
                 evidence_ref="form:signup/test"),
    )  # fmt: skip
    (line,) = _verify(cli, exit_codes.AUDIT_BROKEN)
    assert line.startswith(f"{DISAGREE}consent_events: 1 events (the first: event 1) are recorded as through")
    assert "API key ghost, which no audit entry created" in line


# -- the columns entries are found by ------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"), [("action", "apikey.noted"), ("subject_uid", "00000000-0000-4000-8000-000000000000")]
)
def test_an_entry_relabelled_to_hide_a_revocation_breaks_the_chain(
    cli: Cli, ledger: Ledger, registered: dict[str, str], column: str, value: str
) -> None:
    revoked = _seq(ledger, "apikey.revoked", "old")
    _as_owner_unprotected(ledger.engine)
    _edited(
        ledger,
        _sql(f"UPDATE audit_entries SET {column} = :v WHERE seq = :seq", v=value, seq=revoked),
        _sql("UPDATE api_keys SET revoked_at = NULL WHERE name = 'old'"),
    )
    result = cli("audit", "verify")
    assert result.exit_code == exit_codes.AUDIT_BROKEN
    assert (
        f"audit chain BROKEN at entry {revoked}: its {column} column differs from what the entry says: "
        "the entry was relabelled"
    ) in result.stdout


# -- a ledger an older version wrote -------------------------------------------------------------


def _older_key(ledger: Ledger, name: str, source: str) -> str:
    """A key as an older version created it: its entry without the rate and the hash's digest."""
    stored = hashlib.sha256(f"csk_{name}-secret".encode()).hexdigest()
    now = ledger.clock()
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(api_keys).values(name=name, source=source, purposes='["*"]', actions='["consents"]',
                                    key_prefix=f"csk_{name}"[:12], key_hash=stored, rate_per_minute=30,
                                    created_at=now)
        )  # fmt: skip
        new = {"source": source, "purposes": ["*"], "actions": ["consents"], "prefix": f"csk_{name}"[:12]}
        audit.append(conn, [AuditRecord("apikey.created", {"apikey": name}, new=new, source="cli")], now)
    return stored


def _registry(ledger: Ledger) -> audit_registry.RegistryResult:
    """The check alone, on the ledger as it is (`audit verify` binds older keys first)."""
    with reading(ledger.engine) as conn:
        return audit_registry.registry(conn)


def test_an_older_version_s_key_is_bound_once_and_held_to_its_binding_after(
    cli: Cli, ledger: Ledger, registered: dict[str, str]
) -> None:
    stored = _older_key(ledger, "legacy", "list_import")
    before = _registry(ledger)
    assert before.ok and before.unbound_keys == 1
    # What its entry carried is held from the start: its source.
    _edited(ledger, _sql("UPDATE api_keys SET source = 'web_form' WHERE name = 'legacy'"))
    assert "api_keys row 4 (key legacy): source is web_form where audit entry" in str(
        _registry(ledger).problem
    )
    _edited(ledger, _sql("UPDATE api_keys SET source = 'list_import' WHERE name = 'legacy'"))

    head = _head(ledger)
    (line,) = _verify(cli)  # the first verify (the first open of this version) binds it
    assert line.startswith(f"{AGREE}1 notices, 4 API keys")
    (bound,) = _entries(ledger, "apikey.bound")
    assert bound["seq"] == head + 1 and bound["what"] == {"apikey": "legacy"}
    assert bound["new"] == {
        "rate_per_minute": 30,
        keys.KEY_HASH_DIGEST: hashlib.sha256(stored.encode()).hexdigest(),
    }
    assert bound["source"] == "consentsync:upgrade"
    assert _registry(ledger).unbound_keys == 0
    _verify(cli)
    assert _head(ledger) == head + 1  # once: nothing more to bind
    assert audit_registry.bind_api_keys(ledger) == 0

    _edited(ledger, _sql("UPDATE api_keys SET key_hash = :h, rate_per_minute = 1000 WHERE name = 'legacy'",
                         h="f" * 64))  # fmt: skip
    (line,) = _verify(cli, exit_codes.AUDIT_BROKEN)
    assert line == (
        f"{DISAGREE}api_keys row 4 (key legacy): rate_per_minute is 1000 where audit entry {head + 1} says "
        f"30; key_hash differs from audit entry {head + 1}: edited outside consentsync"
    )


def test_a_key_inserted_by_hand_is_not_bound_by_the_upgrade(
    cli: Cli, ledger: Ledger, registered: dict[str, str]
) -> None:
    _edited(ledger, *KEY_EDITS["inserted"][0])
    assert audit_registry.bind_api_keys(ledger) == 0
    assert _entries(ledger, "apikey.bound") == []
    (line,) = _verify(cli, exit_codes.AUDIT_BROKEN)
    assert "api_keys row 4 (key ghost): no apikey.created audit entry creates it" in line


# -- PostgreSQL: the application role cannot make these edits ------------------------------------


@pytest.mark.parametrize("ledger_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_the_application_role_cannot_edit_notices_or_keys_yet_registers_and_revokes_them(
    cli: Cli, ledger: Ledger, ledger_url: str, registered: dict[str, str], tmp_path: Path
) -> None:
    role = f"cs_app_{uuid.uuid4().hex[:10]}"
    owner = ledger.engine
    with owner.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} NOLOGIN"))
    app: Engine | None = None
    try:
        cli.ok("db", "grant", "--app-role", role)
        app = create_engine(_app_url(ledger_url, role).replace("postgresql://", "postgresql+psycopg://", 1))
        for statement in (
            "UPDATE notices SET text = 'x'",
            "UPDATE notices SET sha256 = 'x'",
            "DELETE FROM notices",
            "UPDATE api_keys SET source = 'web_form'",
            "UPDATE api_keys SET key_hash = 'x'",
            """UPDATE api_keys SET purposes = '["*"]'""",
            "DELETE FROM api_keys WHERE name = 'shop'",
        ):
            with pytest.raises(DBAPIError), app.begin() as conn:
                conn.execute(text(statement))
        # What consentsync does as the application role: registering, revoking, authenticating.
        data = yaml.safe_load(cli.config_path.read_text())
        data["ledger"]["url"] = _app_url(ledger_url, role)
        cli.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        (tmp_path / "v2.txt").write_text("Email marketing notice v2.\n", encoding="utf-8")
        cli.ok("notice", "add", "email_marketing", str(tmp_path / "v2.txt"), "--version", "v2")
        cli.ok("apikey", "add", "form2", "--source", "web_form", "--actions", "*")
        cli.ok("apikey", "revoke", "shop")
        assert AGREE in "\n".join(_verify(cli))
        findings = json.loads(cli.ok("doctor", "--json").stdout)
        assert {
            "level": "ok",
            "message": f"role {role} cannot alter, truncate or rewrite the audit tables",
        } in findings
    finally:
        if app is not None:
            app.dispose()
        with owner.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
