"""``audit verify``'s check of the notices and the API keys against the chain (the registry): a
notice version names one text forever, and an API key's source decides whether its grants
reverse a withdrawal or an erasure; both rows stay writable, so each is held to the entries that
made or changed it. Apart from ``audit_bindings`` (the identifiers' bindings): it names no person,
and the one-time binding of an older version's keys (``bind_api_keys``, run where the ledger
is opened: app.py) lives here, so that the ledger imports neither this nor the hub's keys.

Beside them, the confirmation links' rows against the entries binding their terms
(hub/confirmation_terms.py): found by row id, named by row id and kind, never by person."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import Connection, and_, case, func, select

from consentsync import audit
from consentsync.audit import AuditRecord, CheckResult
from consentsync.audit import entry_instant as _instant
from consentsync.domain import API_KEY_ACTOR_PREFIX, ConsentStatus, iso
from consentsync.hub.confirmation_terms import (
    BOUND_TERMS,
    CONFIRMATION_ACTIONS,
    CONFIRMATION_OPENED_ACTION,
    DELETED_WHEN_UNSENT,
    TOKEN_HASH_DIGEST,
    confirmations_marker,
    differences,
    older_version_row,
    said_by,
)
from consentsync.hub.keys import ANY, KEY_HASH_DIGEST, LATER_BOUND, chain_binding
from consentsync.ledger.engine import reading
from consentsync.ledger.schema import (
    api_keys,
    audit_entries,
    audit_head,
    confirmations,
    consent_events,
    notices,
    subjects,
)
from consentsync.ledger.service import BLANK_PROOF_SOURCE, Ledger

SHOWN_PROBLEMS = 20
log = structlog.get_logger("consentsync.ledger")


# -- notices and API keys -------------------------------------------------------------------------
#
# A notice version names one text forever (what the person was told: Art. 7(1)), and exports and
# receipts carry its SHA-256 from the row; an API key's source decides whether its grants reverse
# a withdrawal or an erasure. Both rows stay writable (the application's role writes them), so a
# plain edit could change what people were told, or make an untrusted source trusted, with the
# chain whole. Each row is held to the entries that made or changed it: ``notice.added`` (purpose,
# version, language, ``new.sha256``), ``apikey.created`` (``keys.chain_binding``), ``apikey.bound``
# (what an older version's entry did not carry, ``bind_api_keys``), ``apikey.revoked``.
# None of them names a person: they are read by the index of entries without one.

NOTICE_ACTION = "notice.added"
# A later word on a registered notice (hub/notices.py: since when a version registered before
# there were such dates was in effect, set once): its ``new`` fields hold as the registration's.
NOTICE_CHANGES = ("notice.dated",)
# What a column of the notices holds where no entry says otherwise: a version registered before
# the column (migration 0019) is in effect from its registration, NULL, until an entry dates it.
# A column not listed here and no entry names is not compared (one a newer version adds).
_NOTICE_UNSAID: dict[str, Any] = {"in_effect_from": None}
KEY_ACTIONS = ("apikey.created", "apikey.bound", "apikey.revoked")
CAPTURE_ACTOR = API_KEY_ACTOR_PREFIX  # the actor of what the hub records through a key (hub/capture.py)
# A capture authenticated just before its key was revoked is recorded just after: how much later
# such an event may be recorded before it says the key worked after its revocation.
IN_FLIGHT = timedelta(minutes=5)
# A key's bound attributes by the column that holds each (``keys.chain_binding``'s names).
_KEY_COLUMNS = {
    "source": "source",
    "purposes": "purposes",
    "actions": "actions",
    "prefix": "key_prefix",
    "rate_per_minute": "rate_per_minute",
    KEY_HASH_DIGEST: "key_hash",
}
# Shown in a finding as they are: labels and numbers. The prefix and the hash only differ.
_SHOWN_KEY_FIELDS = ("source", "purposes", "actions", "rate_per_minute")
NoticeKey = tuple[Any, Any, Any]  # (purpose, version, language)


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryResult(CheckResult):
    notices: int = 0  # notices rows compared
    api_keys: int = 0  # api_keys rows compared
    key_events: int = 0  # consent events recorded through an API key, checked against its source
    key_entries: int = 0  # objections raised and erasures made through an API key (their entries)
    unbound_keys: int = 0  # keys an older version made, whose hash and rate are not bound yet
    confirmations: int = 0  # confirmations rows compared
    older_confirmations: int = 0  # of those, rows an older version opened (no binding to hold to)
    findings: int = 0  # all of them
    problems: list[str] = field(default_factory=list)  # the first SHOWN_PROBLEMS, one line each


@dataclass(slots=True)
class Scope:
    """What a key was given when the entry ``seq`` created it (at ``at``): the purposes and the
    actions it may record, as that entry (or an ``apikey.bound`` entry, where it did not say
    them) says them; None where no entry does."""

    seq: int
    at: datetime | None
    purposes: Any = None
    actions: Any = None

    def may(self, action: str) -> bool:
        return isinstance(self.actions, list) and (ANY in self.actions or action in self.actions)

    def covers(self, purpose: Any) -> bool:
        return isinstance(self.purposes, list) and (ANY in self.purposes or purpose in self.purposes)


@dataclass(slots=True)
class KeyChain:
    """What the chain says of the key of one name, in chain order: the entry creating it, what
    is bound of it (field -> (value, seq)), its revocation (seq, time), any earlier entry
    creating or revoking a key of that name (a row deleted, or un-revoked, by hand), and what
    each key of the name was given (``scopes``, one per creation, in chain order)."""

    created: tuple[int, datetime | None] | None = None
    bound: dict[str, tuple[Any, int]] = field(default_factory=dict)
    revoked: tuple[int, datetime | None] | None = None
    created_before: list[int] = field(default_factory=list)
    revoked_before: list[int] = field(default_factory=list)
    scopes: list[Scope] = field(default_factory=list)

    def said(self, seq: int, action: str, at: datetime | None, new: dict[str, Any]) -> None:
        if action == "apikey.created":
            if self.created is not None:
                self.created_before.append(self.created[0])
            # A key created anew under the name is another key: nothing of the one before holds.
            self.created, self.revoked = (seq, at), None
            self.bound = {name: (value, seq) for name, value in new.items() if name in _KEY_COLUMNS}
            self.scopes.append(Scope(seq, at, new.get("purposes"), new.get("actions")))
        elif action == "apikey.bound":
            for name, value in new.items():
                if name in _KEY_COLUMNS:
                    self.bound.setdefault(name, (value, seq))  # the creation's word stands
            if self.scopes:
                scope = self.scopes[-1]
                scope.purposes = new.get("purposes") if scope.purposes is None else scope.purposes
                scope.actions = new.get("actions") if scope.actions is None else scope.actions
        elif action == "apikey.revoked":
            if self.revoked is not None:
                self.revoked_before.append(self.revoked[0])
            self.revoked = (seq, at)

    def scope_at(self, moment: datetime | None) -> Scope | None:
        """What the key of this name had been given at ``moment``: the last creation at or before
        it (the first, for a moment before any, or none known)."""
        found = self.scopes[0] if self.scopes else None
        for scope in self.scopes[1:]:
            if moment is not None and scope.at is not None and scope.at <= moment:
                found = scope
        return found


def registry(conn: Connection, batch: int = 500) -> RegistryResult:
    """Every notice against its ``notice.added`` entry, every API key against the entries that
    made and changed it, and what was recorded through each key (consent events, objections,
    erasures) against the source, purposes and actions the chain gave it then, and every
    confirmation row against the entries binding its terms; one line per
    finding (the first ``SHOWN_PROBLEMS``), naming the table, the row and the field (never a
    key's secret, prefix or hash)."""
    problems: list[str] = []
    notices_seen = _check_notices(conn, problems, batch)
    chains = key_chains(conn)
    keys_seen, unbound = _check_keys(conn, chains, problems)
    events = _check_key_events(conn, chains, problems)
    key_entries = _check_key_entries(conn, chains, problems)
    confirmed = _check_confirmations(conn, problems, batch)
    counts = {
        "notices": notices_seen,
        "api_keys": keys_seen,
        "key_events": events,
        "key_entries": key_entries,
        "unbound_keys": unbound,
        "confirmations": confirmed.rows,
        "older_confirmations": confirmed.older,
    }
    findings = len(problems) + confirmed.unshown
    if not findings:
        return RegistryResult(ok=True, **counts)
    more = f" ({findings - 1} more findings)" if findings > 1 else ""
    return RegistryResult(
        ok=False,
        problem=problems[0] + more,
        findings=findings,
        problems=problems[:SHOWN_PROBLEMS],
        **counts,
    )


def _registry_entries(conn: Connection, actions: tuple[str, ...]) -> Iterator[tuple[int, str, Any]]:
    """(seq, action, payload) of the entries of ``actions``, in chain order, by the index of
    the entries naming no person (``audit.verify`` holds these columns to the payload)."""
    query = (
        select(audit_entries.c.seq, audit_entries.c.action, audit_entries.c.payload)
        .where(
            audit_entries.c.subject_id.is_(None),
            audit_entries.c.subject_uid.is_(None),
            audit_entries.c.action.in_(actions),
        )
        .order_by(audit_entries.c.seq)
    )
    for seq, action, text in conn.execute(query):
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue  # the chain check names it
        if isinstance(payload, dict):
            yield seq, action, payload


def _part(payload: dict[str, Any], name: str) -> dict[str, Any]:
    value = payload.get(name)
    return value if isinstance(value, dict) else {}


def _named_notice(key: NoticeKey) -> str:
    return f"notice {key[0]} {key[1]} ({key[2]})"


@dataclass(slots=True)
class NoticeChain:
    """What the chain says of one notice (purpose, version, language): the entry registering
    it, and each field of the entries' ``new`` with the entry that said it last. The same text
    registered again (to date it, say) is a later word on the same row; another text registered
    under the version means the first one's row was deleted."""

    seq: int
    at: datetime | None
    said: dict[str, tuple[Any, int]]


def _check_notices(conn: Connection, problems: list[str], batch: int) -> int:
    registered: dict[NoticeKey, NoticeChain] = {}
    for seq, action, payload in _registry_entries(conn, (NOTICE_ACTION, *NOTICE_CHANGES)):
        what, new = _part(payload, "what"), _part(payload, "new")
        key = (what.get("purpose"), what.get("version"), what.get("language"))
        said = {name: (value, seq) for name, value in new.items()}
        known = registered.get(key)
        if action != NOTICE_ACTION:
            if known is not None:  # of a notice never registered: its row, if any, is named
                known.said.update({name: value for name, value in said.items() if name != "sha256"})
            continue
        if known is None or known.said.get("sha256", (None, 0))[0] != new.get("sha256"):
            if known is not None:  # a version names one text forever
                problems.append(
                    f"notices: audit entry {known.seq} registered {_named_notice(key)} with another text "
                    f"before audit entry {seq} registered it: its row was deleted outside consentsync"
                )
            registered[key] = NoticeChain(seq, _instant(payload.get("at")), said)
        else:
            known.said.update(said)
    seen = 0
    rows = conn.execute(select(notices).order_by(notices.c.id).execution_options(yield_per=batch))
    for row in rows:
        seen += 1
        key = (row.purpose, row.version, row.language)
        where = f"notices row {row.id} ({_named_notice(key)})"
        chain = registered.pop(key, None)
        if chain is None:
            problems.append(
                f"{where}: no {NOTICE_ACTION} audit entry registers it: inserted, or its purpose, "
                "version or language edited, outside consentsync"
            )
            continue
        parts = _notice_differences(row, chain)
        if parts:
            problems.append(f"{where}: {'; '.join(parts)}: edited outside consentsync")
    for key, chain in sorted(registered.items(), key=lambda item: item[1].seq):
        problems.append(
            f"notices: audit entry {chain.seq} registers {_named_notice(key)}, which has no row: "
            "deleted, or its purpose, version or language edited, outside consentsync"
        )
    return seen


def _notice_differences(row: Any, chain: NoticeChain) -> list[str]:
    said, seq = chain.said.get("sha256", (None, chain.seq))
    parts = []
    if row.sha256 != said:
        parts.append(f"sha256 is {_digits(row.sha256)} where audit entry {seq} says {_digits(said)}")
    text = row.text if isinstance(row.text, str) else ""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != said:
        parts.append(f"text is not the one audit entry {seq} registered (its SHA-256 is {_digits(digest)})")
    if chain.at is not None and row.created_at != chain.at:
        parts.append(
            f"created_at is {iso(row.created_at)} where audit entry {chain.seq} says {iso(chain.at)}"
        )
    # Every other field the entries say is compared with the column of its name (since when the
    # text is in effect); a column they do not name holds its value for that (``_NOTICE_UNSAID``),
    # or is not compared.
    columns = row._mapping
    for name in sorted((set(chain.said) | set(_NOTICE_UNSAID)) - {"sha256"}):
        if name not in columns:
            continue
        if name in chain.said:
            value, at_seq = chain.said[name]
            if not _same(columns[name], value):
                have, says = _shown_value(columns[name]), _shown_value(value)
                parts.append(f"{name} is {have} where audit entry {at_seq} says {says}")
        elif not _same(columns[name], _NOTICE_UNSAID[name]):
            parts.append(f"{name} is {_shown_value(columns[name])} where no audit entry says one")
    return parts


def _same(column: Any, said: Any) -> bool:
    """A column's value against what an entry says of it (times as instants, dates as text)."""
    if isinstance(column, datetime):
        return column == _instant(said)
    if isinstance(column, date):
        return column.isoformat() == said
    return bool(column == said)


def _shown_value(value: Any) -> str:
    """Times, dates, numbers and flags as they are; anything else only said to differ."""
    if value is None:
        return "none"
    if isinstance(value, datetime):
        return iso(value) or "none"
    if isinstance(value, date | bool | int) or (isinstance(value, str) and _instant(value) is not None):
        return str(value)
    return "another value"


def _digits(digest: Any) -> str:
    return f"{digest[:16]}…" if isinstance(digest, str) and digest else "none"


def key_chains(conn: Connection) -> dict[str, KeyChain]:
    """What the chain says of each API key, by its name (the name is the key's identity in the
    entries, ``what.apikey``; consentsync never renames nor deletes a key)."""
    chains: dict[str, KeyChain] = {}
    for seq, action, payload in _registry_entries(conn, KEY_ACTIONS):
        name = _part(payload, "what").get("apikey")
        if isinstance(name, str):
            at = _instant(payload.get("at"))
            chains.setdefault(name, KeyChain()).said(seq, action, at, _part(payload, "new"))
    return chains


def key_row_binding(row: Any) -> dict[str, Any]:
    """What the chain should bind of a key, from its ``api_keys`` row."""
    return chain_binding(
        source=row.source,
        purposes=_listed(row.purposes),
        actions=_listed(row.actions),
        prefix=row.key_prefix,
        rate_per_minute=row.rate_per_minute,
        key_hash=row.key_hash if isinstance(row.key_hash, str) else "",
    )


def _listed(text: Any) -> Any:
    """A key's purposes or actions (a JSON list) in one order; what is no list stays as read,
    and so differs from any entry."""
    try:
        value = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        return text
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return sorted(value)
    return value


def _check_keys(conn: Connection, chains: dict[str, KeyChain], problems: list[str]) -> tuple[int, int]:
    seen = unbound = 0
    named: set[str] = set()
    for row in conn.execute(select(api_keys).order_by(api_keys.c.id)):
        seen += 1
        named.add(row.name)
        where = f"api_keys row {row.id} (key {row.name})"
        chain = chains.get(row.name)
        if chain is None or chain.created is None:
            problems.append(
                f"{where}: no apikey.created audit entry creates it: inserted, or renamed, "
                "outside consentsync"
            )
            continue
        unbound += KEY_HASH_DIGEST not in chain.bound
        parts = _key_differences(row, chain)
        if parts:
            problems.append(f"{where}: {'; '.join(parts)}: edited outside consentsync")
    for name, chain in sorted(chains.items()):
        first_seq = chain.created_before[0] if chain.created_before else None
        if first_seq is not None:
            problems.append(
                f"api_keys: audit entry {first_seq} created a key named {name} before audit entry "
                f"{chain.created[0] if chain.created else '?'} did: its row was deleted outside consentsync"
            )
        if chain.created is not None and name not in named:
            problems.append(
                f"api_keys: audit entry {chain.created[0]} created key {name}, which has no row: "
                "deleted, or renamed, outside consentsync"
            )
    return seen, unbound


def _key_differences(row: Any, chain: KeyChain) -> list[str]:
    parts = []
    for name, have in key_row_binding(row).items():
        if name not in chain.bound:
            continue  # an older version's key, not bound yet (``bind_api_keys``)
        said, seq = chain.bound[name]
        if name in ("purposes", "actions") and isinstance(said, list):
            said = sorted(said) if all(isinstance(item, str) for item in said) else said
        if have == said:
            continue
        column = _KEY_COLUMNS[name]
        if name in _SHOWN_KEY_FIELDS:
            parts.append(f"{column} is {_key_value(have)} where audit entry {seq} says {_key_value(said)}")
        else:
            parts.append(f"{column} differs from audit entry {seq}")
    created_seq, created_at = chain.created or (0, None)
    if created_at is not None and row.created_at != created_at:
        parts.append(
            f"created_at is {iso(row.created_at)} where audit entry {created_seq} says {iso(created_at)}"
        )
    if chain.revoked is None:
        if row.revoked_at is not None:
            parts.append(f"revoked_at is {iso(row.revoked_at)} where no audit entry revokes it")
    elif row.revoked_at is None:
        parts.append(f"revoked_at is none where audit entry {chain.revoked[0]} revoked it: it opens again")
    elif chain.revoked[1] is not None and row.revoked_at != chain.revoked[1]:
        seq, at = chain.revoked
        parts.append(f"revoked_at is {iso(row.revoked_at)} where audit entry {seq} says {iso(at)}")
    if chain.revoked_before:
        parts.append(
            f"audit entry {chain.revoked_before[0]} revoked it before audit entry "
            f"{chain.revoked[0] if chain.revoked else '?'} did: it was opened again between"
        )
    return parts


def _key_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def _check_key_events(conn: Connection, chains: dict[str, KeyChain], problems: list[str]) -> int:
    """The consent events recorded through each key (actor ``apikey:<name>``, hub/capture.py)
    against what the chain gives the key: its source and its revocation, and, as its entries
    said them when each event was recorded, the action ``consents`` and the event's purpose (a
    GPC opt-out is recorded whatever the key's purposes). A key edited to a trusted source, or
    to more purposes or actions, used, and put back leaves its row as the chain says, and these
    events as the trace. One aggregate query over ``consent_events``."""
    from consentsync.hub.capture import GPC_EVIDENCE  # the hub's, read here only (``_is_gpc``)

    events = consent_events.c
    gpc = case(
        (and_(events.status == ConsentStatus.WITHDRAWN.value, events.evidence_ref == GPC_EVIDENCE), 1),
        else_=0,
    ).label("gpc")
    query = (
        select(
            events.actor,
            events.source,
            events.purpose,
            gpc,
            func.count(),
            func.min(events.id),
            func.min(events.recorded_at),
            func.max(events.recorded_at),
        )
        .where(events.actor.like(f"{CAPTURE_ACTOR}%"))
        .group_by(events.actor, events.source, events.purpose, gpc)
    )
    by_source: dict[tuple[str, str], _Seen] = {}
    by_purpose: dict[tuple[str, str, bool], _Seen] = {}
    for actor, source, purpose, opt_out, count, first_id, first_at, last_at in conn.execute(query):
        by_source.setdefault((actor, source), _Seen()).add(count, first_id, first_at, last_at)
        by_purpose.setdefault((actor, purpose, bool(opt_out)), _Seen()).add(
            count, first_id, first_at, last_at
        )
    seen = 0
    for (actor, source), group in sorted(by_source.items()):
        count, first_id, last_at = group.count, group.first_id, group.last_at
        seen += count
        name = actor[len(CAPTURE_ACTOR) :]
        chain = chains.get(name)
        said = chain.bound.get("source") if chain is not None else None
        if chain is None or chain.created is None or said is None:
            problems.append(
                f"consent_events: {count} events (the first: event {first_id}) are recorded as through "
                f"API key {name}, which no audit entry created: recorded by hand in its name, or "
                "through a key inserted outside consentsync"
            )
            continue
        if source != said[0]:
            problems.append(
                f"consent_events: {count} events (the first: event {first_id}) recorded through API "
                f"key {name} carry source {source} where audit entry {said[1]} gives the key source "
                f"{said[0]}: recorded while its row said otherwise (edited outside consentsync)"
            )
        revoked = chain.revoked[1] if chain.revoked is not None else None
        if revoked is not None and last_at is not None and last_at > revoked + IN_FLIGHT:
            problems.append(
                f"consent_events: events recorded through API key {name} up to {iso(last_at)}, after "
                f"audit entry {chain.revoked[0] if chain.revoked else '?'} revoked it at {iso(revoked)}: "
                "it was opened again outside consentsync"
            )
    _check_event_scopes(conn, chains, by_purpose, problems)
    return seen


@dataclass(slots=True)
class _Seen:
    """A group of events or entries: how many, the first (lowest id), their first and last times."""

    count: int = 0
    first_id: int | None = None
    first_at: datetime | None = None
    last_at: datetime | None = None

    def add(
        self, count: int, first_id: int | None, first_at: datetime | None, last_at: datetime | None
    ) -> None:
        self.count += count
        if first_id is not None and (self.first_id is None or first_id < self.first_id):
            self.first_id = first_id
        if first_at is not None and (self.first_at is None or first_at < self.first_at):
            self.first_at = first_at
        if last_at is not None and (self.last_at is None or last_at > self.last_at):
            self.last_at = last_at


# What keys recorded outside the scope their creation gave them: by the key's name, the action
# or purpose it lacked (``_ACTION`` or ``_PURPOSE``, and its name) and the entry giving the scope.
_Outside = dict[tuple[str, str, str, int], tuple[Scope, _Seen]]
_ACTION, _PURPOSE = "action", "purpose"
_OUTSIDE = "recorded while its row said otherwise (edited outside consentsync)"


def _outside(outside: _Outside, name: str, lacked: tuple[str, str], scope: Scope, group: _Seen) -> None:
    found = outside.setdefault((name, *lacked, scope.seq), (scope, _Seen()))
    found[1].add(group.count, group.first_id, group.first_at, group.last_at)


def _outside_lines(outside: _Outside, what: str, first: str, problems: list[str]) -> None:
    """One line per key, action or purpose and scope, the earliest first: ``what`` names the
    events or entries (``consent_events: 2 events``), ``first`` the first of them (``event``)."""
    for (name, kind, lacked, seq), (scope, group) in sorted(
        outside.items(), key=lambda item: (item[1][1].first_id or 0, item[0])
    ):
        lead = f"{what.format(group.count)} (the first: {first} {group.first_id}) recorded through API key "
        lead += name
        if kind == _ACTION:
            said = f", which audit entry {seq} did not give the action {lacked} (its actions: "
            problems.append(f"{lead}{said}{_key_value(scope.actions)}): {_OUTSIDE}")
        else:
            said = f" are of purpose {lacked}, which audit entry {seq} did not give the key (its purposes: "
            problems.append(f"{lead}{said}{_key_value(scope.purposes)}): {_OUTSIDE}")


def _check_event_scopes(
    conn: Connection,
    chains: dict[str, KeyChain],
    groups: dict[tuple[str, str, bool], _Seen],
    problems: list[str],
) -> None:
    """Each group of events through a key (by purpose, GPC opt-outs apart) against what the
    key's creation gave it when they were recorded. A group recorded under two keys of the name
    (one created anew: its row was deleted, named above) is read event by event."""
    outside: _Outside = {}
    for (actor, purpose, opt_out), group in sorted(groups.items()):
        name = actor[len(CAPTURE_ACTOR) :]
        chain = chains.get(name)
        if chain is None or chain.created is None:
            continue  # named above: no entry created the key
        scope = chain.scope_at(group.first_at)
        if scope is chain.scope_at(group.last_at):
            _event_scope(outside, name, purpose, opt_out, scope, group)
            continue
        events = consent_events.c
        rows = conn.execute(
            select(events.id, events.recorded_at, events.status, events.evidence_ref)
            .where(events.actor == actor, events.purpose == purpose)
            .order_by(events.id)
        )
        for event_id, recorded_at, status, evidence_ref in rows:
            if _is_gpc(status, evidence_ref) == opt_out:
                one = _Seen()
                one.add(1, event_id, recorded_at, recorded_at)
                _event_scope(outside, name, purpose, opt_out, chain.scope_at(recorded_at), one)
    _outside_lines(outside, "consent_events: {} events", "event", problems)


def _is_gpc(status: Any, evidence_ref: Any) -> bool:
    """A GPC opt-out (``Hub._gpc_evidence``): recorded for the purposes the hub names, whatever
    the key's."""
    from consentsync.hub.capture import GPC_EVIDENCE  # the hub's, read here only

    return status == ConsentStatus.WITHDRAWN.value and evidence_ref == GPC_EVIDENCE


def _event_scope(
    outside: _Outside, name: str, purpose: str, opt_out: bool, scope: Scope | None, group: _Seen
) -> None:
    """Notes ``group`` where ``scope`` did not allow it: the action consents, and the purpose
    (not asked of a GPC opt-out)."""
    if scope is None:
        return
    if not scope.may("consents"):
        _outside(outside, name, (_ACTION, "consents"), scope, group)
    if not opt_out and not scope.covers(purpose):
        _outside(outside, name, (_PURPOSE, purpose), scope, group)


# What a key may do that leaves an entry of its own in the chain, beside consents: the entries, by
# the action each needs (hub/capture.py: ``Hub.objection``, ``Hub.erasure``).
KEY_ENTRY_ACTIONS = {"objection.raised": "objections", "subject.erased": "erasure"}


def _check_key_entries(conn: Connection, chains: dict[str, KeyChain], problems: list[str]) -> int:
    """The objections raised and the erasures made through each key (their entries' actor
    ``apikey:<name>``) against what the chain gave the key when each was recorded: the action
    (``objections``, ``erasure``), an objection's purpose, and its revocation. One query over
    the entries of those actions naming a key as their actor."""
    entries = audit_entries.c
    query = (
        select(entries.seq, entries.action, entries.payload)
        .where(
            entries.action.in_(tuple(KEY_ENTRY_ACTIONS)),
            entries.payload.like(f'%"actor":"{CAPTURE_ACTOR}%'),
        )
        .order_by(entries.seq)
    )
    unknown: dict[tuple[str, str], _Seen] = {}
    outside: _Outside = {}
    late: dict[str, _Seen] = {}
    seen = 0
    for seq, action, text in conn.execute(query):
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue  # the chain check names it
        actor = payload.get("actor") if isinstance(payload, dict) else None
        if not (isinstance(actor, str) and actor.startswith(CAPTURE_ACTOR)):
            continue
        seen += 1
        name, at = actor[len(CAPTURE_ACTOR) :], _instant(payload.get("at"))
        one = _Seen()
        one.add(1, seq, at, at)
        chain = chains.get(name)
        if chain is None or chain.created is None:
            unknown.setdefault((name, action), _Seen()).add(1, seq, at, at)
            continue
        scope = chain.scope_at(at)
        if scope is not None and not scope.may(KEY_ENTRY_ACTIONS[action]):
            _outside(outside, name, (_ACTION, KEY_ENTRY_ACTIONS[action]), scope, one)
        purpose = _part(payload, "what").get("purpose")
        if scope is not None and action == "objection.raised" and not scope.covers(purpose):
            _outside(outside, name, (_PURPOSE, str(purpose)), scope, one)
        revoked = chain.revoked[1] if chain.revoked is not None else None
        if revoked is not None and at is not None and at > revoked + IN_FLIGHT:
            late.setdefault(name, _Seen()).add(1, seq, at, at)
    for (name, action), group in sorted(unknown.items()):
        problems.append(
            f"audit entries: {group.count} {action} entries (the first: audit entry {group.first_id}) are "
            f"recorded as through API key {name}, which no audit entry created: recorded by hand in its "
            "name, or through a key inserted outside consentsync"
        )
    _outside_lines(outside, "audit entries: {} objections or erasures", "audit entry", problems)
    for name, group in sorted(late.items()):
        revoked_seq, revoked_at = chains[name].revoked or (0, None)
        problems.append(
            f"audit entries: {group.count} objections or erasures (the first: audit entry {group.first_id}) "
            f"recorded through API key {name} up to {iso(group.last_at)}, after audit entry {revoked_seq} "
            f"revoked it at {iso(revoked_at)}: it was opened again outside consentsync"
        )
    return seen


# -- confirmation links -----------------------------------------------------------------------------
#
# A confirmation row says what following its link records (hub/confirmation_terms.py): each is
# held to its ``confirmation.opened`` entry (and a ``confirmation.disowned`` one, its kind). The
# entries name the person, so they are read as the decision tables' are (``audit_decisions``):
# ordered by the row id they name, beside the rows in id order, a page at a time.

# The terms a finding may show as they are (labels and times; the token's hash is not shown).
_SHOWN_CONFIRMATION_TERMS = frozenset(BOUND_TERMS)


@dataclass(slots=True)
class _Confirmations:
    rows: int = 0
    older: int = 0  # rows an older version opened, accepted without a binding
    unshown: int = 0  # findings beyond those listed


def _check_confirmations(conn: Connection, problems: list[str], batch: int) -> _Confirmations:
    """Every confirmation row against the entries that opened (and disowned) it. A row no entry
    opens passes only as an older version's (``older_version_row``); an entry whose row is gone
    names a link deleted, as consentsync deletes one whose mail did not go: no finding. Findings
    beyond ``SHOWN_PROBLEMS`` in all are counted, not listed."""
    from consentsync.audit_decisions import _entries_by, _merged, _what_id  # the same reading

    marker = confirmations_marker(conn)
    rows = conn.execute(
        select(confirmations, subjects.c.uid)
        .select_from(confirmations.outerjoin(subjects, subjects.c.id == confirmations.c.subject_id))
        .order_by(confirmations.c.id)
        .execution_options(yield_per=batch)
    )
    groups = _entries_by(
        conn, _what_id(conn, "confirmation"), audit_entries.c.action.in_(CONFIRMATION_ACTIONS), batch
    )
    seen = _Confirmations()
    for row_id, row, entries in _merged(iter(rows), groups):
        if row is None:
            # Gone: consentsync deletes only a consent request's or renewal's link whose mail did
            # not go; any other (an erasure's, a restriction's, a double opt-in's) was deleted
            # outside it, and the person's link opens nothing.
            said, _person = said_by(entries or [])
            kind = said.get("kind", (None, None))[0] if said is not None else None
            if said is None or kind in DELETED_WHEN_UNSENT:
                continue
            found = f"confirmations row {row_id} ({kind}): deleted outside consentsync"
            if len(problems) < SHOWN_PROBLEMS:
                problems.append(found)
            else:
                seen.unshown += 1
            continue
        seen.rows += 1
        said, person = said_by(entries or [])
        where = f"confirmations row {row_id} ({row.kind})"
        if said is None:
            if older_version_row(marker, row):
                seen.older += 1
                continue
            found = (
                f"{where}: no {CONFIRMATION_OPENED_ACTION} audit entry opens it: inserted, or its id edited, "
                "outside consentsync"
            )
        else:
            parts = [_confirmation_part(*difference) for difference in differences(row._mapping, said)]
            if person is not None and row.uid != person:
                parts.insert(0, f"subject_id {row.subject_id} is not the person its opening entry names")
            if not parts:
                continue
            found = f"{where}: {'; '.join(parts)}: edited outside consentsync"
        if len(problems) < SHOWN_PROBLEMS:
            problems.append(found)
        else:
            seen.unshown += 1
    return seen


def _confirmation_part(name: str, have: Any, said: Any, seq: int | None) -> str:
    """One term that differs: labels and times shown, the token's hash only said to differ."""
    where = f"audit entry {seq}" if seq is not None else "no audit entry"
    if name in _SHOWN_CONFIRMATION_TERMS:
        return f"{name} is {_key_value(have)} where {where} says {_key_value(said)}"
    column = "token_hash" if name == TOKEN_HASH_DIGEST else name
    return f"{column} differs from {where}"


# -- the one-time binding of an older version's keys ---------------------------------------------


def bind_api_keys(ledger: Ledger, actor: str = "consentsync") -> int:
    """Binds in the chain, once, what an older version's ``apikey.created`` entry did not
    carry of a key (its rate and the digest of its stored hash, ``keys.LATER_BOUND``): one
    ``apikey.bound`` entry per such key, source ``consentsync:upgrade``. Its source,
    purposes, actions and prefix were in the entry from the start; ``audit verify`` holds
    every key's row to its entries (audit_registry.py). What the rows say at this moment is
    taken as it is (docs/tamper-evidence.md). A key no ``apikey.created`` entry made (a row
    inserted by hand) is not bound: verify names it. Nothing is written when nothing is
    left to bind; two processes at once bind a key once (the chain's head is locked before
    the entries are read). Returns the number of keys bound."""

    def unbound(conn: Connection) -> list[AuditRecord]:
        chains = key_chains(conn)
        records = []
        for row in conn.execute(select(api_keys).order_by(api_keys.c.id)):
            chain = chains.get(row.name)
            if chain is None or chain.created is None:
                continue
            binding = key_row_binding(row)
            missing = {name: binding[name] for name in LATER_BOUND if name not in chain.bound}
            if missing:
                what = {"apikey": row.name}
                records.append(
                    AuditRecord("apikey.bound", what, new=missing, source=BLANK_PROOF_SOURCE, actor=actor)
                )
        return records

    with reading(ledger.engine) as conn:
        if not unbound(conn):
            return 0
    with ledger.engine.begin() as conn:
        conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1).with_for_update())
        records = unbound(conn)
        audit.append(conn, records, ledger.clock())
    if records:  # said once per ledger, and only where an older version left keys
        log.info("api_keys.bound", keys=len(records))
    return len(records)
