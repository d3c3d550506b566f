"""``audit verify``'s check that each identifier is held by the person the chain binds it to
(docs/tamper-evidence.md, "Addresses and their people").

``subject_identifiers`` says whose an address is: a sync finds the person of a CRM record by it,
a capture's withdrawal reaches the person holding it, an erasure erases whoever holds it. The row
stays writable (the application's role inserts it), so an address moved to another person (say,
from bob, who withdrew, to alice, who granted) made bob's no go to alice's record, with the chain,
the events and the states all whole. Every identifier the ledger stores is bound in the chain, by
its keyed hash (``email_hmac`` under the erasure key: never the address), to its person:

- ``subject.created`` (the identifiers it was created with), ``subject.identifier_added`` (one a
  person took later: a CRM record re-addressed) and ``subject.identifiers_bound`` (the one-time
  step binding what an older version stored, ``Ledger.bind_identifiers``) bind;
- ``subject.erased`` unbinds the identifiers the erasure deleted.

Each person's rows are compared with what their entries, in chain order, leave bound: a row the
chain does not bind to them was inserted, moved or edited; a binding whose row is gone was
deleted or moved away. Both name the person by uid and id, the entries by seq, the identifier by
its kind and keyed hash only.

One pass over each side in person order (``subject_identifiers`` by its index on the person, the
binding entries by the index on ``audit_entries.subject_id``), a page of rows at a time: one
person's rows and bindings are held while they are compared, nothing else.

And its check that each notice and API key is what the entries that made and changed it say
(``registry``; docs/tamper-evidence.md, "Notices and API keys"), below.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, select

from consentsync.audit import CheckResult
from consentsync.audit_states import merged_by_person
from consentsync.ledger.identity import (
    BINDING_ACTIONS,
    BOUND,
    LEFT_ACTIONS,
    UNBINDING_ACTIONS,
    UNBOUND,
    Binding,
    bound_by,
    entry_said,
    left_by,
    said_bindings,
)
from consentsync.ledger.schema import (
    audit_entries,
    subject_identifiers,
    subjects,
)

ACTIONS = (*BINDING_ACTIONS, *UNBINDING_ACTIONS, *LEFT_ACTIONS)
# How many people's problems a result lists, one line each (all are counted).
SHOWN_PROBLEMS = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class BindingsResult(CheckResult):
    people: int = 0  # people holding identifiers, or bound to some in the chain
    identifiers: int = 0  # subject_identifiers rows compared
    disagreeing: int = 0  # people whose identifiers differ from their bindings
    problems: list[str] = field(default_factory=list)  # the first SHOWN_PROBLEMS, one line each


def bindings(conn: Connection, hashed: Callable[[str], str], batch: int = 5000) -> BindingsResult:
    """Every person's identifiers against their bindings in the chain (``hashed``: the erasure
    key's HMAC, ``Ledger.keyed_hasher``); the first people that differ are named, one line each
    (by uid and id), with how many differ in all."""
    rows = conn.execute(
        select(subject_identifiers.c.subject_id, subjects.c.uid, subject_identifiers.c.kind,
               subject_identifiers.c.value, subject_identifiers.c.left_at)
        .join(subjects, subjects.c.id == subject_identifiers.c.subject_id)
        .order_by(subject_identifiers.c.subject_id, subject_identifiers.c.id)
        .execution_options(yield_per=batch)
    )  # fmt: skip
    people = identifiers = disagreeing = 0
    problems: list[str] = []
    first_moved: tuple[int, Binding] | None = None  # a row bound to nobody: whose is it?
    for subject_id, theirs, entries in merged_by_person(rows, _entries(conn, batch), itemgetter(0)):
        said = [(entry[1], entry[2]) for entry in entries]
        people += 1
        identifiers += len(theirs)
        hashes = [(kind, hashed(value), left_at is not None) for _id, _uid, kind, value, left_at in theirs]
        held = {(kind, digest) for kind, digest, _left in hashes}
        bound, named = bound_by(said)
        extra = sorted(held - bound.keys())
        gone = sorted(bound.keys() - held)
        # Which of them the person left (``left_at``), as the chain says (``LEFT_ACTIONS``): a
        # flag cleared outside consentsync let an old mailbox's links and grants work again.
        left = {(kind, digest) for kind, digest, was_left in hashes if was_left}
        said_left = left_by(said) & held
        unsaid = sorted((left - said_left) | (said_left - left))
        if not extra and not gone and not unsaid:
            continue
        disagreeing += 1
        if len(problems) >= SHOWN_PROBLEMS:
            continue
        uid = theirs[0][1] if theirs else named or _uid(conn, subject_id)
        parts = []
        if extra:
            if first_moved is None:
                first_moved = (len(problems), extra[0])
            parts.append(f"holds {_named(extra)} the chain does not bind to them")
        if gone:
            parts.append(f"lost {_named(gone)} the chain binds to them (audit entry {bound[gone[0]]})")
        if unsaid:
            parts.append(f"marks {_named(unsaid)} left or held otherwise than the chain says")
        problems.append(f"subject {uid} (id {subject_id}): {'; '.join(parts)}: edited outside consentsync")
    if not problems:
        return BindingsResult(ok=True, people=people, identifiers=identifiers)
    if first_moved is not None:
        # Whose the first unbound identifier is, by the chain: one search for its keyed hash
        # (a scan of the entries, made only when the check failed).
        at, binding = first_moved
        owner = _bound_elsewhere(conn, binding)
        if owner is not None:
            problems[at] = problems[at].replace(
                " the chain does not bind to them",
                f" the chain binds to subject {owner[0]} (audit entry {owner[1]}), not to them",
                1,
            )
    more = f" ({disagreeing - 1} more people's identifiers disagree)" if disagreeing > 1 else ""
    return BindingsResult(
        ok=False,
        problem=problems[0] + more,
        people=people,
        identifiers=identifiers,
        disagreeing=disagreeing,
        problems=problems,
    )


def _entries(conn: Connection, batch: int) -> Iterator[Any]:
    """The entries that bind or unbind, as (person's id, seq, payload), by person then seq. Every
    entry since migration 0013 carries the person's id (``audit.verify`` checks it names the
    payload's person; by its index, in order); one without (written before 0013, or before a
    downgrade past it dropped the column) is found by the uid it names, as a trail is
    (``audit.about``): by the index of such entries, a sort of those alone."""
    action = audit_entries.c.action.in_(ACTIONS)
    linked = (
        select(audit_entries.c.subject_id, audit_entries.c.seq, audit_entries.c.payload)
        .where(audit_entries.c.subject_id.is_not(None), action)
        .order_by(audit_entries.c.subject_id, audit_entries.c.seq)
    )
    named = subjects.alias("named")
    unlinked = (
        select(named.c.id, audit_entries.c.seq, audit_entries.c.payload)
        .join(named, named.c.uid == audit_entries.c.subject_uid)
        .where(audit_entries.c.subject_id.is_(None), action)
        .order_by(named.c.id, audit_entries.c.seq)
    )
    streams = [conn.execute(query.execution_options(yield_per=batch)) for query in (linked, unlinked)]
    return heapq.merge(*streams, key=itemgetter(0, 1))


def _named(found: list[Binding]) -> str:
    """Identifiers by kind and keyed hash (its first 16 digits: enough to find the entries that
    name it), never a value."""
    kind, digest = found[0]
    more = f" and {len(found) - 1} more" if len(found) > 1 else ""
    return f"an identifier ({kind}, keyed hash {digest[:16]}){more}"


def _uid(conn: Connection, subject_id: int) -> str:
    found = conn.execute(select(subjects.c.uid).where(subjects.c.id == subject_id)).scalar()
    return str(found) if found is not None else "(unknown)"


def _bound_elsewhere(conn: Connection, binding: Binding) -> tuple[str, int] | None:
    """The person the chain's latest word on ``binding`` binds it to, and that entry; None where
    it unbinds it, or no entry names it."""
    query = (
        select(audit_entries.c.seq, audit_entries.c.payload)
        .where(
            audit_entries.c.action.in_(ACTIONS),
            audit_entries.c.payload.like(f"%{binding[1]}%"),  # a hex digest: no LIKE wildcard in it
        )
        .order_by(audit_entries.c.seq.desc())
    )
    for seq, text in conn.execute(query):
        said = entry_said(text)
        if said is None:
            continue
        payload, what = said
        if payload.get("action") in UNBINDING_ACTIONS:
            if binding in set(said_bindings(what.get(UNBOUND))):
                return None
        elif binding in set(said_bindings(what.get(BOUND))) and isinstance(payload.get("subject"), str):
            return payload["subject"], seq
    return None
