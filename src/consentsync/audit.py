"""The append-only, hash-chained audit log.

Each entry stores ``hash = SHA-256(prev_hash || canonical_json(payload))``. The payload names
subjects by their pseudonymous uid and carries only a SHA-256 of any free text, which lives in
``audit_details`` where erasure can remove it without breaking the chain. Writers take the lock
on the chain head row (``audit_head``), so on PostgreSQL concurrent writers are serialised and
the sequence has no gaps; on SQLite the ledger's BEGIN IMMEDIATE does the same.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TypedDict, Unpack

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    String,
    and_,
    func,
    or_,
    select,
    type_coerce,
    update,
)

from consentsync.domain import canonical_json, iso, sha256_hex
from consentsync.ledger.bulk import db_time, insert_rows
from consentsync.ledger.schema import (
    audit_details,
    audit_entries,
    audit_head,
    consent_events,
    subjects,
    sync_runs,
)

GENESIS_HASH = "0" * 64
ENTRY_COLUMNS = ("seq", "at", "action", "subject_uid", "run_id", "payload", "prev_hash", "hash", "subject_id")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One change to write down: what, old -> new, why, from where, by whom, in which run."""

    action: str
    what: dict[str, Any]
    old: Any = None
    new: Any = None
    rule: str | None = None
    source: str | None = None
    actor: str | None = None
    run_id: str | None = None
    subject_uid: str | None = None
    subject_id: int | None = None
    details: dict[str, Any] | None = field(default=None)


def chain_hash(prev_hash: str, payload_json: str) -> str:
    return hashlib.sha256((prev_hash + payload_json).encode("utf-8")).hexdigest()


def details_digest(details: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(details).encode("utf-8")).hexdigest()


def append(conn: Connection, records: Sequence[AuditRecord], at: datetime) -> list[int]:
    """Appends ``records`` in order inside the caller's transaction; returns their seqs."""
    return append_payloads(conn, [(payload_of(r), r.details, r.subject_id) for r in records], at)


def payload_of(record: AuditRecord) -> dict[str, Any]:
    """What the chain says about ``record``, but for its seq and time (``append_payloads``)."""
    r = record
    return payload(r.action, r.subject_uid, r.run_id, r.what, r.old, r.new, r.rule, r.source, r.actor)


def payload(
    action: str,
    subject_uid: str | None,
    run_id: str | None,
    what: dict[str, Any],
    old: Any,
    new: Any,
    rule: str | None,
    source: str | None,
    actor: str | None,
) -> dict[str, Any]:
    """An entry's payload but for its seq and time, from the fields of an ``AuditRecord``."""
    return {"action": action, "subject": subject_uid, "run": run_id, "what": what, "old": old, "new": new,
            "rule": rule, "source": source, "actor": actor}  # fmt: skip


Entry = tuple[dict[str, Any], dict[str, Any] | None, int | None]  # payload, details, subject id


def append_payloads(conn: Connection, entries: Sequence[Entry], at: datetime) -> list[int]:
    """``append`` for payloads already made (``payload_of``'s keys; datetimes may stay
    datetimes, canonical JSON writes them as ``iso`` does): the recording path writes one per
    event and makes them without an ``AuditRecord`` in between. The chain head is read and
    locked once for all of them, and written once."""
    if not entries:
        return []
    head = conn.execute(
        select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
    ).one()
    seq, prev = head.seq, head.hash
    first = seq + 1
    stamp, stored_at = iso(at), db_time(conn, at)
    entry_rows: list[tuple[Any, ...]] = []
    detail_rows: list[tuple[Any, ...]] = []
    ids = _subject_ids(conn, entries)
    for payload, details, subject_id in entries:
        if subject_id is None and payload["subject"] is not None:
            subject_id = ids.get(payload["subject"])
        seq += 1
        payload["seq"] = seq
        payload["at"] = stamp
        if details:
            payload["details_sha256"] = details_digest(details)
            detail_rows.append((seq, subject_id, canonical_json(details)))
        text = canonical_json(payload)
        digest = sha256_hex((prev + text).encode("utf-8"))  # chain_hash, inlined
        entry_rows.append(
            (seq, stored_at, payload["action"], payload["subject"], payload["run"], text, prev, digest,
             subject_id)
        )  # fmt: skip
        prev = digest
    insert_rows(conn, audit_entries, ENTRY_COLUMNS, entry_rows)
    insert_rows(conn, audit_details, ("seq", "subject_id", "content"), detail_rows)
    conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev))
    return list(range(first, seq + 1))


def _subject_ids(conn: Connection, entries: Sequence[Entry]) -> dict[str, int]:
    """The ids of the people that entries name by uid alone (a read of a person's record, an
    outbox row put back): every entry about a known person is then found by id."""
    uids = {payload["subject"] for payload, _, subject_id in entries if subject_id is None} - {None}
    if not uids:
        return {}
    found = conn.execute(select(subjects.c.uid, subjects.c.id).where(subjects.c.uid.in_(sorted(uids))))
    return {uid: subject_id for uid, subject_id in found}


def about(conn: Connection, subject_uids: Sequence[str]) -> ColumnElement[bool]:
    """The entries about these people: by their ids, and by uid the entries that carry no id
    (written before migration 0013, or naming no known person). The ids are looked up first:
    as a subquery inside the OR, PostgreSQL would test every entry against it."""
    uids = sorted(set(subject_uids))
    ids = conn.execute(select(subjects.c.id).where(subjects.c.uid.in_(uids))).scalars().all() if uids else []
    return or_(
        audit_entries.c.subject_id.in_(sorted(ids)),
        and_(audit_entries.c.subject_id.is_(None), audit_entries.c.subject_uid.in_(uids)),
    )


def entry_instant(value: Any) -> datetime | None:
    """An entry's time (``at``, an ISO 8601 text in its payload) as an instant; None where it
    is none (a payload edited by hand)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def erase_details(conn: Connection, subject_id: int) -> int:
    """Removes the free text written about one subject; the chain keeps its digests."""
    result = conn.execute(
        update(audit_details)
        .where(audit_details.c.subject_id == subject_id, audit_details.c.content.is_not(None))
        .values(content=None)
    )
    return result.rowcount or 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """What a check of the ledger found: ``ok``, or the first ``problem`` it met."""

    ok: bool
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult(CheckResult):
    entries_checked: int
    head_seq: int
    broken_seq: int | None = None


def in_pages(conn: Connection, query: Select[Any], key: Any, batch: int) -> Iterator[Any]:
    """The rows of ``query`` in ``key`` order, ``batch`` at a time (keyset paging: the first
    column of the query must be ``key``)."""
    last = 0
    while True:
        rows = conn.execute(query.where(key > last).order_by(key).limit(batch)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


def verify(conn: Connection, batch: int = 5000) -> VerifyResult:
    """Recomputes the chain from the genesis; names the first entry that does not verify."""
    head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).one()
    # The person the details are about (``erase_details`` blanks them by this column).
    details_subject = subjects.alias("details_subject")
    expected_prev, expected_seq, checked = GENESIS_HASH, 1, 0
    last_seq = 0
    query = select(
        audit_entries.c.seq,
        audit_entries.c.payload,
        audit_entries.c.prev_hash,
        audit_entries.c.hash,
        audit_details.c.content,
        audit_entries.c.subject_id,
        subjects.c.uid.label("linked_uid"),
        audit_entries.c.action,
        audit_entries.c.subject_uid,
        audit_entries.c.run_id,
        details_subject.c.erased_at.label("details_erased_at"),
    ).select_from(
        audit_entries.outerjoin(audit_details, audit_details.c.seq == audit_entries.c.seq)
        .outerjoin(subjects, subjects.c.id == audit_entries.c.subject_id)
        .outerjoin(details_subject, details_subject.c.id == audit_details.c.subject_id)
    )
    for row in in_pages(conn, query, audit_entries.c.seq, batch):
        problem = _check_entry(row, expected_seq, expected_prev)
        if problem:
            # A gap is named by the entry that is missing, anything else by the entry itself.
            broken = expected_seq if row.seq != expected_seq else row.seq
            return VerifyResult(
                ok=False, entries_checked=checked, head_seq=head.seq, broken_seq=broken, problem=problem
            )
        checked += 1
        expected_prev, expected_seq, last_seq = row.hash, row.seq + 1, row.seq
    if last_seq != head.seq or expected_prev != head.hash:
        return VerifyResult(
            ok=False,
            entries_checked=checked,
            head_seq=head.seq,
            broken_seq=last_seq + 1 if last_seq < head.seq else last_seq,
            problem=f"the chain ends at entry {last_seq} but its head says {head.seq}: entries were "
            "removed from the end (or the head was altered)",
        )
    return VerifyResult(ok=True, entries_checked=checked, head_seq=head.seq)


def _check_entry(row: Any, expected_seq: int, expected_prev: str) -> str | None:
    if row.seq != expected_seq:
        return f"entry {expected_seq} is missing (next present entry is {row.seq})"
    if row.prev_hash != expected_prev:
        return "prev_hash does not match the hash of the entry before it"
    if chain_hash(row.prev_hash, row.payload) != row.hash:
        return "hash does not match the entry's content: the entry was edited"
    try:
        payload = json.loads(row.payload)
    except ValueError:
        return "payload is not valid JSON"
    if payload.get("seq") != row.seq:
        return f"payload names seq {payload.get('seq')}: the entry was moved"
    # The columns entries are found by are outside the hash: an action relabelled, or a person
    # put on an entry naming none, would hide it from the checks that read entries by them (an
    # API key's revocation, a notice's registration: audit_registry.registry) and from the trail.
    for column, name in (("action", "action"), ("subject_uid", "subject"), ("run_id", "run")):
        if getattr(row, column) != payload.get(name):
            return f"its {column} column differs from what the entry says: the entry was relabelled"
    if row.subject_id is not None and row.linked_uid != payload.get("subject"):
        # The column a person's trail is read by is outside the chain: pointed at someone
        # else, it would hide the entry from its person's trail.
        return "subject_id names another person than the entry: the entry was re-pointed"
    digest = payload.get("details_sha256")
    if row.content is None and digest is not None and row.details_erased_at is None:
        # Details are only ever blanked by an erasure (``erase_details``, in the transaction
        # that marks the person erased), and only for that person's entries. Blanked for a
        # person who is not erased, or for none (an account's change, an erasure's own reason),
        # they were removed outside consentsync: the application's role may update the column,
        # and an objection's reason or a restriction's grounds would vanish unflagged.
        return (
            "details are gone but the person they are about was not erased: the details were "
            "removed outside an erasure"
        )
    if row.content is not None:
        details = read_details(row.content)
        # Text that is no JSON object was written outside consentsync (the application's role
        # may update the details): an edit like any other, not a crash of the check naming none.
        if details is None or digest != details_digest(details):
            return "details do not match the digest in the chain: the details were edited"
    return None


def read_details(content: str | None) -> dict[str, Any] | None:
    """An entry's details as written (a JSON object), or None: erased, or not readable as
    written (edited outside consentsync: ``verify`` names the entry). Readers of the trail show
    the entry without them rather than failing the whole page."""
    if content is None:
        return None
    try:
        details = json.loads(content)
    except ValueError:
        return None
    return details if isinstance(details, dict) else None


def _like_json(key: str, value: str) -> str:
    """A LIKE pattern for ``"key":"value"`` in canonical JSON, with LIKE's wildcards escaped."""
    text = canonical_json({key: value})[1:-1]
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class AuditFilters(TypedDict, total=False):
    """Which entries a reader asks for (each left out or None: any)."""

    subject_uids: Sequence[str] | None
    since: datetime | None
    until: datetime | None
    action: str | None
    rule: str | None
    connector: str | None
    # Entries written by one run (by its full id, through the run index).
    run_id: str | None
    # Entries up to this seq: a reader paging newest first pages on where its first page stood
    # (entries written since, each read's own ``audit.viewed`` among them, would move the pages).
    through: int | None
    # False: the log's own reads (``audit.viewed``) left out, unless ``action`` names them: each
    # listing writes one, so a reader polling for new entries always found some, and the first
    # page of the trail filled with them (``audit log``, the console, the API: their default).
    # None (the ledger's own readers) or True: kept.
    include_views: bool | None


# A read of the audit log itself: its entries are the trails of every person they name, so
# reading them is an access to personal data, written down (Art. 30) as a person's read is.
LOG_VIEWED = "audit.viewed"


# What a read of the log may keep of a filter's text as it was typed: a name (a connector's, a
# rule's, an action, a uid or its prefix), never free text; other text is kept as WITHHELD.
_NAME_LIKE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
WITHHELD = "<not a name: withheld>"


def log_viewed(
    engine: Engine,
    at: datetime,
    filters: AuditFilters,
    shown: int,
    *,
    actor: str,
    source: str,
    **paging: int | None,
) -> None:
    """Writes down a read of the audit log (``consentsync audit log``, the console's trail): who
    (``actor``, from ``source``), with which filters (people by uid, times as ISO 8601: never an
    address, whose look-up the caller writes down as ``subject.viewed``), which page where it is
    paged, and how many entries were ``shown``. About no one person; called once the entries are
    read, so it is not among them."""
    said: dict[str, Any] = {}
    for name, value in filters.items():
        if value is None or (name == "include_views" and not value):  # said only when asked for
            continue
        if name == "subject_uids":
            said["subjects"] = [uid if _NAME_LIKE.fullmatch(str(uid)) else WITHHELD for uid in value]
        elif isinstance(value, str) and not _NAME_LIKE.fullmatch(value):
            # Typed by a reader: a connector, rule or action filter that is no such name may be
            # anything (an address, a name), and the chain keeps what it is given for ever.
            said[name] = WITHHELD
        else:
            said[name] = iso(value) if isinstance(value, datetime) else value
    what = {"filters": said, **{name: value for name, value in paging.items() if value is not None}}
    record = AuditRecord("audit.viewed", {**what, "shown": shown}, source=source, actor=actor)  # LOG_VIEWED
    with engine.begin() as conn:
        append(conn, [record], at)


def _where(conn: Connection, **filters: Unpack[AuditFilters]) -> list[Any]:
    subject_uids, since, until = filters.get("subject_uids"), filters.get("since"), filters.get("until")
    action, rule, connector = filters.get("action"), filters.get("rule"), filters.get("connector")
    where: list[Any] = []
    if subject_uids is not None:
        where.append(about(conn, subject_uids))
    if since is not None:
        where.append(audit_entries.c.at >= since)
    if until is not None:
        where.append(audit_entries.c.at < until)
    if action is not None:
        where.append(audit_entries.c.action == action)
    elif filters.get("include_views") is False:
        where.append(audit_entries.c.action != LOG_VIEWED)
    if filters.get("through") is not None:
        where.append(audit_entries.c.seq <= filters["through"])
    if filters.get("run_id") is not None:
        where.append(audit_entries.c.run_id == filters["run_id"])
    if rule is not None:
        # The payload is canonical JSON: the rule appears exactly as "rule":"<value>".
        where.append(audit_entries.c.payload.like(_like_json("rule", rule), escape="\\"))
    if connector is not None:
        # Entries about a connector: written in one of its runs, naming it, or sourced from it.
        where.append(
            or_(
                audit_entries.c.run_id.in_(select(sync_runs.c.id).where(sync_runs.c.connector == connector)),
                audit_entries.c.payload.like(_like_json("connector", connector), escape="\\"),
                audit_entries.c.payload.like(_like_json("source", connector), escape="\\"),
            )
        )
    return where


def entries(
    conn: Connection,
    *,
    limit: int | None = None,
    offset: int = 0,
    newest_first: bool = False,
    **filters: Unpack[AuditFilters],
) -> Iterator[dict[str, Any]]:
    query = (
        select(
            audit_entries.c.seq,
            audit_entries.c.payload,
            audit_entries.c.hash,
            audit_details.c.content,
        )
        .outerjoin(audit_details, audit_details.c.seq == audit_entries.c.seq)
        .where(*_where(conn, **filters))
        .order_by(audit_entries.c.seq.desc() if newest_first else audit_entries.c.seq)
    )
    if limit is not None:
        query = query.limit(limit)
    if offset:
        query = query.offset(offset)
    for row in conn.execute(query):
        entry = json.loads(row.payload)
        entry["hash"] = row.hash
        entry["details"] = read_details(row.content)
        if row.content is not None and entry["details"] is None:
            entry["details_unreadable"] = True  # edited outside consentsync: verify names it
        yield entry


def count(conn: Connection, **filters: Unpack[AuditFilters]) -> int:
    where = _where(conn, **filters)
    return int(conn.execute(select(func.count()).select_from(audit_entries).where(*where)).scalar_one())


# -- consent events and their audit entries -------------------------------------------------------

# What a consent event and its ``consent.recorded`` entry both say (the recording path writes the
# two in one transaction, ledger/service.py ``record_in``): who, which statement (the evidence's
# fingerprint), and its purpose, channel, status, basis, origin, source, actor and run ...
EVENT_FIELDS = ("purpose", "channel", "status", "basis", "origin", "source", "actor", "run_id")
# ... and when it was said (``event_time`` decides precedence: who said what last), under which
# notice, confirmation and reference, and the soft opt-in's evidence (``_recorded_payload``).
# Entries written before a field was put in the chain do not carry it: for those the event's own
# value stands in, so each entry is compared on exactly what it says.
TIME_FIELDS = ("event_time", "double_opt_in_at")
EVIDENCE_FIELDS = ("event_time", "notice_version", "double_opt_in_at", "evidence_ref")
SOFT_OPT_IN_FIELDS = ("sale_ref", "similar_products", "refusal_at_collection", "refusal_in_messages")
# The language of the notice text shown (migration 0021) last: an entry carries it only where
# the event has one, so an entry without it says none, whenever it was written (no event had one
# before), and a language set on an event afterwards is found.
LANGUAGE_FIELD = "notice_language"
# How far the CRM's clock that stamped the event may run behind ours (migration 0026), after it and
# the same way: an entry carries it only where the event has one. It decides how late a no counts
# (reconcile.Ranked.of), so an edited lag is found as an edited time is.
CLOCK_LAG_FIELD = "clock_lag_ms"
# The names of a key's places, for saying which of them an event and its entry disagree on.
KEY_FIELDS = (
    "subject", "event_fingerprint", *EVENT_FIELDS, *EVIDENCE_FIELDS, "soft_opt_in", LANGUAGE_FIELD,
    CLOCK_LAG_FIELD,
)  # fmt: skip
_OPTIONAL = (*EVIDENCE_FIELDS, "soft_opt_in")
# Stands in for the value of a field an entry does not carry when no event is what it names: it
# matches nothing an event says, so such an entry is reported and never passes for its event.
_NO_EVENT = "(no such event)"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgreementResult(CheckResult):
    events: int
    entries: int


def _said_time(value: Any) -> Any:
    """A time as an entry wrote it, in the one spelling ``iso`` gives the event's column: an
    entry written by ``canonical_json`` or by ``iso`` (older versions), with Z, +00:00 or another
    offset, says the same instant; anything that is no time is compared as it stands."""
    if not isinstance(value, str):
        return value
    if len(value) in (20, 27) and value[-1] == "Z" and value[10] == "T" and value[19:26] != ".000000":
        return value  # already iso()'s spelling (whole seconds or microseconds), the common case
    try:
        return iso(datetime.fromisoformat(value))
    except ValueError:
        return value


def _soft_opt_in_key(values: Sequence[Any]) -> tuple[Any, ...] | None:
    return None if all(v is None for v in values) else tuple(values)


def _events_query() -> Select[Any]:
    return select(
        consent_events.c.id,
        subjects.c.uid,
        consent_events.c.fingerprint,
        *(consent_events.c[name] for name in EVENT_FIELDS),
        # The times as the database hands them (SQLite: its text; PostgreSQL: the driver's
        # datetime): parsing 100,000s of them into aware datetimes first doubled the check's time.
        type_coerce(consent_events.c.event_time, String),
        consent_events.c.notice_version,
        type_coerce(consent_events.c.double_opt_in_at, String),
        consent_events.c.evidence_ref,
        *(consent_events.c[f"soft_opt_in_{name}"] for name in SOFT_OPT_IN_FIELDS),
        consent_events.c.notice_language,
        consent_events.c.clock_lag_ms,
    ).join(subjects, subjects.c.id == consent_events.c.subject_id)


def _column_time(value: Any) -> str | None:
    """A time column in ``iso``'s spelling (what an entry says): SQLite keeps UTC as text
    (``2026-01-01 09:30:15.250000``, as SQLAlchemy writes it), PostgreSQL hands a datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return iso(value)
    text = str(value)
    if len(text) == 26 and text[10] == " " and text[19] == ".":
        fraction = text[20:]
        return f"{text[:10]}T{text[11:19]}Z" if fraction == "000000" else f"{text[:10]}T{text[11:]}Z"
    try:
        return iso(datetime.fromisoformat(text))
    except ValueError:
        return text  # no time: compared as it stands, it matches no entry


def _event_key(row: Any) -> tuple[Any, ...]:
    (_id, uid, fingerprint, purpose, channel, status, basis, origin, source, actor, run_id) = row[:11]
    (event_time, notice_version, double_opt_in_at, evidence_ref, *soft, notice_language, clock_lag) = row[11:]
    return (
        uid,
        fingerprint,
        purpose,
        channel,
        status,
        basis,
        origin,
        source,
        actor,
        run_id,
        _column_time(event_time),
        notice_version,
        _column_time(double_opt_in_at),
        evidence_ref,
        _soft_opt_in_key(soft),
        notice_language,
        clock_lag,
    )


def _event_keys(conn: Connection, batch: int) -> Iterator[tuple[int, tuple[Any, ...]]]:
    for row in in_pages(conn, _events_query(), consent_events.c.id, batch):
        yield row[0], _event_key(row)


def _entry_keys(conn: Connection, batch: int) -> Iterator[tuple[int, tuple[Any, ...]]]:
    query = select(audit_entries.c.seq, audit_entries.c.payload).where(
        audit_entries.c.action == "consent.recorded"
    )
    page: list[tuple[int, str]] = []
    for row in in_pages(conn, query, audit_entries.c.seq, batch):
        page.append((row[0], row[1]))
        if len(page) >= batch:
            yield from _entry_page_keys(conn, page)
            page = []
    yield from _entry_page_keys(conn, page)


def _entry_page_keys(conn: Connection, page: list[tuple[int, str]]) -> Iterator[tuple[int, tuple[Any, ...]]]:
    keys: list[tuple[int, tuple[Any, ...]]] = []
    # Entries written before the evidence fields were put in the chain, by their place in
    # ``keys``: what they do not carry is read from their events, one query for the page.
    older: list[tuple[int, dict[str, Any]]] = []
    for seq, text in page:
        payload = orjson.loads(text)
        what = payload.get("what") or {}
        get = what.get
        head = (
            payload.get("subject"),
            get("event_fingerprint"),
            get("purpose"),
            get("channel"),
            get("status"),
            get("basis"),
            get("origin"),
            payload.get("source"),
            payload.get("actor"),
            payload.get("run"),
        )
        if "notice_version" in what and "event_time" in what:
            # Written with the evidence fields (1db08f8 on): a soft opt-in absent is none.
            soft = get("soft_opt_in")
            keys.append(
                (
                    seq,
                    (
                        *head,
                        _said_time(get("event_time")),
                        get("notice_version"),
                        _said_time(get("double_opt_in_at")),
                        get("evidence_ref"),
                        _soft_opt_in_key([soft.get(n) for n in SOFT_OPT_IN_FIELDS])
                        if isinstance(soft, dict)
                        else None
                        if soft is None
                        else canonical_json(soft),  # no object: written outside consentsync
                        get(LANGUAGE_FIELD),
                        get(CLOCK_LAG_FIELD),
                    ),
                )
            )
        else:
            older.append((len(keys), what))
            keys.append((seq, head))
    if older:
        stand_in = _event_values(conn, {keys[at][1][:2] for at, _what in older})
        for at, what in older:
            seq, head = keys[at]
            values = stand_in.get(head[:2], {})
            said = [
                (_said_time(what[n]) if n in TIME_FIELDS else what[n])
                if n in what
                else values.get(n, _NO_EVENT)
                for n in _OPTIONAL
            ]
            keys[at] = (seq, (*head, *said, what.get(LANGUAGE_FIELD), what.get(CLOCK_LAG_FIELD)))
    return iter(keys)


def _event_values(conn: Connection, wanted: set[tuple[Any, Any]]) -> dict[tuple[Any, Any], dict[str, Any]]:
    """What the events named by (subject uid, fingerprint) say of the fields their older entries
    do not carry (one query a page, by the subjects' index: only older ledgers pay for it)."""
    uids = sorted({uid for uid, _fp in wanted if isinstance(uid, str)})
    fingerprints = sorted({fp for _uid, fp in wanted if isinstance(fp, str)})
    if not uids or not fingerprints:
        return {}
    query = _events_query().where(subjects.c.uid.in_(uids), consent_events.c.fingerprint.in_(fingerprints))
    found: dict[tuple[Any, Any], dict[str, Any]] = {}
    for row in conn.execute(query):
        key = _event_key(row)
        # The optional fields sit before the language and the clock lag (``_event_key``).
        found[(key[0], key[1])] = dict(zip(_OPTIONAL, key[-len(_OPTIONAL) - 2 : -2], strict=True))
    return found


def _key_digest(key: tuple[Any, ...]) -> int:
    return int.from_bytes(hashlib.sha256(canonical_json(list(key)).encode("utf-8")).digest(), "big")


def agreement(conn: Connection, batch: int = 5000) -> AgreementResult:
    """Every consent event has its ``consent.recorded`` audit entry and every such entry its
    event, saying the same (``EVENT_FIELDS``). One pass over each table, comparing an
    order-free digest of the two sides (a sum of SHA-256 values); only when they differ are the
    two read again to name the first event or entry without its counterpart."""
    modulus = 1 << 256
    events = entries = 0
    event_sum = entry_sum = 0
    for _id, key in _event_keys(conn, batch):
        events += 1
        event_sum = (event_sum + _key_digest(key)) % modulus
    for _seq, key in _entry_keys(conn, batch):
        entries += 1
        entry_sum = (entry_sum + _key_digest(key)) % modulus
    if events == entries and event_sum == entry_sum:
        return AgreementResult(ok=True, events=events, entries=entries)
    return AgreementResult(ok=False, events=events, entries=entries, problem=_disagreement(conn, batch))


def _disagreement(conn: Connection, batch: int) -> str:
    # Keyed by the canonical text of a key: a value written outside consentsync (a list where a
    # label belongs) is then a mismatch to report, not an unhashable key that crashes the check.
    unmatched: dict[str, list[tuple[int, tuple[Any, ...]]]] = {}
    for event_id, key in _event_keys(conn, batch):
        unmatched.setdefault(canonical_json(list(key)), []).append((event_id, key))
    orphans: list[tuple[int, tuple[Any, ...]]] = []
    for seq, key in _entry_keys(conn, batch):
        found = unmatched.get(canonical_json(list(key)))
        if found:
            found.pop(0)
        else:
            orphans.append((seq, key))
    lonely = sorted(pair for pairs in unmatched.values() for pair in pairs)
    parts = []
    if lonely:
        event_id, event_key = lonely[0]
        parts.append(
            f"consent event {event_id} has no audit entry saying the same"
            + _differing(event_key, orphans)
            + (f" ({len(lonely)} events in all)" if len(lonely) > 1 else "")
        )
    if orphans:
        parts.append(
            f"audit entry {orphans[0][0]} records a consent event the ledger does not hold as it says"
            + (f" ({len(orphans)} entries in all)" if len(orphans) > 1 else "")
        )
    return "; ".join(parts) + ": events were added, removed or edited outside the recording path"


def _differing(event_key: tuple[Any, ...], orphans: list[tuple[int, tuple[Any, ...]]]) -> str:
    """Which fields the entry recording the same statement (person and fingerprint) says
    otherwise: what an auditor looks at first (an edited event time reorders who said what last)."""
    for seq, entry_key in orphans:
        if entry_key[:2] == event_key[:2]:
            names = [n for n, a, b in zip(KEY_FIELDS, event_key, entry_key, strict=True) if a != b]
            return f" (audit entry {seq} records it with another {', '.join(names)})"
    return ""
