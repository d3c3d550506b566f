"""Who is who: subjects found by CRM record id first, then by normalised email.

Duplicates (several CRM records, in one or several CRMs, with the same email) are linked to one
subject and never deleted. An email whose owner was erased is recognised by its keyed hash and the
new subject starts suppressed.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import structlog
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    FromClause,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy import text as sql_text

from consentsync.audit import AuditRecord
from consentsync.domain import ASTRAL_FOLD, email_forms, fold_astral
from consentsync.ledger.bulk import (
    db_time,
    insert_returning_ids,
    insert_rows,
    one_of,
    select_in,
)
from consentsync.ledger.schema import (
    audit_entries,
    crm_links,
    crm_snapshots,
    subject_identifiers,
    subjects,
    suppressions,
)

log = structlog.get_logger("consentsync.ledger")

EMAIL = "email"
IDENTIFIER_COLUMNS = ("subject_id", "kind", "value")
# Where an audit entry binds identifiers to its person, and where an erasure unbinds them
# (``what``, by kind: the keyed hashes of the values, ``email_hmac``, never a value):
# ``audit verify`` holds every ``subject_identifiers`` row to them (audit_bindings.py).
BOUND = "identifier_hmacs"
UNBOUND = "identifier_hmacs_removed"
# The actions that bind: a person created with identifiers, an identifier a person took later
# (a CRM record re-addressed), and the one-time step binding what an older version stored
# (``Ledger.bind_identifiers``). ``subject.erased`` unbinds (``UNBOUND``).
BINDING_ACTIONS = ("subject.created", "subject.identifier_added", "subject.identifiers_bound")
UNBINDING_ACTIONS = ("subject.erased",)
# An address its person left (``subject_identifiers.left_at`` set: a record of theirs took another
# address of their own) and one they hold again (cleared: a record of theirs shows it again), by
# keyed hash under ``LEFT`` and ``HELD_AGAIN``: ``audit verify`` holds the column to them.
LEFT_ACTION = "subject.identifier_left"
HELD_AGAIN_ACTION = "subject.identifier_held_again"
LEFT_ACTIONS = (LEFT_ACTION, HELD_AGAIN_ACTION)
LEFT = "identifier_hmacs_left"
HELD_AGAIN = "identifier_hmacs_held_again"
# The ledger_settings row saying the one-time ``backfill_left`` ran (after migration 0022).
LEFT_BACKFILL_SETTING = "identifiers_left_backfilled"
# A binding: (kind, keyed hash of the value).
Binding = tuple[str, str]
SUBJECT_COLUMNS = ("uid", "created_at", "restricted", "suppression_id")
LINK_COLUMNS = ("subject_id", "connector", "object_type", "record_id", "linked_at", "record_created_at")


@dataclass(frozen=True, slots=True)
class CrmLink:
    connector: str
    object_type: str
    record_id: str

    def rows_in(self, table: Table) -> ColumnElement[bool]:
        """The condition that picks this record's rows in a table keyed by connector, object and
        record id (links, quarantine, outbox)."""
        columns = table.c
        return and_(
            columns.connector == self.connector,
            columns.object_type == self.object_type,
            columns.record_id == self.record_id,
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """How an incoming record names its person: a CRM record, an email, or both (or, for
    consentsync's own events, the subject id itself)."""

    email: str | None = None
    link: CrmLink | None = None
    subject_id: int | None = None
    # A capture that says no (a withdrawal, a refusal, a GPC opt-out): not a sign-up. Its address,
    # when on the suppression list (erased, in any of its forms) and held by nobody, is read as a
    # CRM's is (``from_crm``): matched to the erased person by its keyed hash, never written to
    # the ledger again. Only a grant brings an erased person back, as a new person with their
    # address; a no for an erased address is said by someone the suppression already keeps out.
    says_no: bool = False
    # The character the CRM that showed ``email`` stores in place of each character beyond the
    # BMP (``Connector.folds_astral_to``): an address holding it may be a person's real address
    # folded, and is that person's where exactly one person holds such an address (``_unfold``).
    folds_astral_to: str | None = None
    # The person of a record this one points to (its Salesforce Individual), where the ledger
    # knows it: this record's person, unless the record carries an address another person holds
    # (and did not leave). A record showing an address is that address's holder's, whatever was
    # read first (docs/policy.md, "A person known only through records without an address").
    pointed: int | None = None

    def __post_init__(self) -> None:
        if self.email is None and self.link is None and self.subject_id is None:
            raise ValueError("an identity needs an email, a CRM record or a subject id")


def holds_for(email: str, value: str, folds: str | None) -> bool:
    """Whether an address held as ``value`` (one of ``email_forms(email)``), with the fold
    character ``folds`` of the CRM whose record brought it (``subject_identifiers``'s
    ``folds_astral_to``; None: it is what it says), is ``email``'s: any of its own forms is; its
    folded form (``fold_astral``) only where a CRM keeping the BMP only showed it so. A "?" from
    anywhere else is a "?": ``a?b@example.test`` is a mailbox of its own, another person's than
    ``a🙂b@example.test`` (docs/policy.md, "One address, one form")."""
    return folds == ASTRAL_FOLD or value == email or value != fold_astral(email)


def holding(email: str) -> ColumnElement[bool]:
    """The ``subject_identifiers`` rows holding ``email`` (``holds_for``) as a condition: under
    any of its forms, its folded form only where a folding CRM's record brought it."""
    held = subject_identifiers.c
    forms = email_forms(email)
    folded = fold_astral(email)
    if folded == email:  # nearly every address: nothing beyond the BMP
        return and_(held.kind == EMAIL, held.value.in_(forms))
    own = [form for form in forms if form != folded]
    return and_(
        held.kind == EMAIL,
        or_(held.value.in_(own), and_(held.value == folded, held.folds_astral_to == ASTRAL_FOLD)),
    )


def email_hmac(key: bytes, email: str) -> str:
    return hmac.new(key, email.encode("utf-8"), hashlib.sha256).hexdigest()


def bindings(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """(kind, keyed hash) pairs as an entry's ``BOUND`` or ``UNBOUND`` says them: by kind, each
    kind's hashes sorted (the entry says the same whatever order the rows were read in)."""
    by_kind: dict[str, set[str]] = {}
    for kind, digest in pairs:
        by_kind.setdefault(kind, set()).add(digest)
    return {kind: sorted(digests) for kind, digests in sorted(by_kind.items())}


def bound_by(entries: Iterable[tuple[int, str]]) -> tuple[dict[Binding, int], str | None]:
    """What one person's binding entries (seq, payload text; ``BINDING_ACTIONS`` and
    ``UNBINDING_ACTIONS``), in chain order, leave bound to them, each binding with the entry that
    made it; and the uid the entries name. An entry that does not read (edited outside
    consentsync: ``audit.verify`` names it) binds nothing."""
    bound: dict[Binding, int] = {}
    uid: str | None = None
    for seq, text in entries:
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(payload, dict):
            continue
        if isinstance(payload.get("subject"), str):
            uid = payload["subject"]
        what = payload.get("what")
        if not isinstance(what, dict):
            continue
        if payload.get("action") in UNBINDING_ACTIONS:
            for binding in said_bindings(what.get(UNBOUND)):
                bound.pop(binding, None)
        else:
            for binding in said_bindings(what.get(BOUND)):
                bound[binding] = seq
    return bound, uid


def left_by(entries: Iterable[tuple[int, str]]) -> set[Binding]:
    """Of one person's entries (seq, payload text; ``BINDING_ACTIONS``, ``UNBINDING_ACTIONS`` and
    ``LEFT_ACTIONS``) in chain order, the bindings they leave marked as left: an identifier left
    and neither held again nor unbound (erased) since. A binding entry changes nothing: a new
    identifier was never left, and the one-time step binding an older version's rows
    (``subject.identifiers_bound``) may come after a left entry."""
    left: set[Binding] = set()
    for _seq, text in entries:
        said = entry_said(text)
        if said is None:
            continue
        payload, what = said
        action = payload.get("action")
        if action == LEFT_ACTION:
            left.update(said_bindings(what.get(LEFT)))
        elif action == HELD_AGAIN_ACTION:
            left.difference_update(said_bindings(what.get(HELD_AGAIN)))
        elif action in UNBINDING_ACTIONS:
            left.difference_update(said_bindings(what.get(UNBOUND)))
    return left


def entry_said(text: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """An audit entry's payload and its ``what``; None where the text is no JSON object with a
    ``what`` object (an entry the chain's own check names as broken)."""
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    what = payload.get("what") if isinstance(payload, dict) else None
    return (payload, what) if isinstance(what, dict) else None


def said_bindings(said: Any) -> Iterator[Binding]:
    """The (kind, keyed hash) pairs an entry's ``BOUND`` or ``UNBOUND`` says (none where it says
    none: the entries of versions before bindings)."""
    if not isinstance(said, dict):
        return
    for kind, digests in said.items():
        if isinstance(digests, list):
            yield from ((kind, digest) for digest in digests if isinstance(digest, str))


def keyed_hasher(key: bytes) -> Callable[[str], str]:
    """``email_hmac`` under one key, for many texts: the keyed state is made once and copied
    for each text (a sync hashes a few addresses per record; making it anew costs the key's
    two padded blocks and OpenSSL's lookup of SHA-256 every time: about 40% of the call)."""
    keyed = hmac.new(key, digestmod=hashlib.sha256)

    def digest(text: str) -> str:
        one = keyed.copy()
        one.update(text.encode("utf-8"))
        return one.hexdigest()

    return digest


def derived_key(key: bytes, purpose: str) -> bytes:
    """A secret of its own for ``purpose`` (a link's signature, a sealed address), from the
    erasure key by HKDF-SHA256. Never ``keyed_hasher(key)(purpose)``: that HMAC is the one that
    hashes text anyone can send (a failed login's name is audited as it), so a purpose's label
    typed as a user name wrote the secret into the audit log. HKDF's key is HMAC(salt, key), not
    the erasure key itself, so no keyed hash the ledger keeps is a derived key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"consentsync derived keys", info=purpose.encode("utf-8")
    ).derive(key)


@dataclass(frozen=True, slots=True)
class Reread:
    """A CRM record known by its id as person ``subject_id``'s (linked before this read), read
    showing another address than at its last read, or back from deletion: the keyed hashes of
    the address it was last read showing (``crm_snapshots.identity``; None: never read) and of
    the one it shows now, as the sync hashes them (sync/engine.py, ``_identity_digests``)."""

    subject_id: int
    link: CrmLink
    before: str | None
    now: str


class SubjectResolver:
    """Resolves a batch of identities to subject ids in one round of queries, creating subjects
    (and their identifiers and links) that are new. Runs inside the caller's transaction.

    Every identifier it stores is bound to its person in the chain by its keyed hash (``BOUND``):
    in the person's ``subject.created``, or a ``subject.identifier_added`` of its own for a person
    who takes it later, so that an address moved to another person outside consentsync is found
    by ``audit verify``."""

    # False writes the entries as versions before session 58 did (no bindings): tests make a
    # ledger as such a version left it with it, for the one-time step that binds (Ledger).
    binds = True

    def __init__(
        self,
        conn: Connection,
        erasure_key: bytes,
        now: datetime,
        run_id: str | None,
        *,
        from_crm: bool = False,
        elsewhere: list[tuple[int, int]] | None = None,
        record_created: Mapping[CrmLink, datetime] | None = None,
    ):
        # from_crm: the identities come from CRM records, which still carry what the ledger erased.
        # Such a record is matched to its erased person by the address's keyed hash, and the
        # address is never written to the ledger again. A person who comes back through a capture
        # (a new sign-up) is a new subject with their address, as they gave it anew.
        self.from_crm = from_crm
        # Filled, when given, with (the person an address names, the person its record was
        # resolved to) wherever the two differ: a CRM record now carrying another's address.
        self.elsewhere = elsewhere
        # When the CRM created each record read (where it says), kept on the link made for it:
        # an erasure's delete or anonymise reaches only the records held when it was made.
        self.record_created = record_created or {}
        self.conn = conn
        self.hashed = keyed_hasher(erasure_key)
        self.now = now
        self.run_id = run_id
        self.audit: list[AuditRecord] = []
        # The people created (``audit`` holds their ``subject.created`` and, rarely, entries of
        # identifiers that people already known took).
        self.created = 0
        # Whether the ledger's text sorts by code point (``_sorts_by_code_point``), once asked.
        self._by_code_point: bool | None = None
        # Each address looked up that its holder left (``left_at`` set): the holder and the form
        # it is held under. Read with the holder, in the same statement (``_find_emails``): the
        # sync weighs a record showing one (``SyncEngine._through_left``) at no cost for the others.
        self.left: dict[str, tuple[int, str]] = {}

    def resolve(self, identities: Sequence[Identity]) -> list[int]:
        by_link = self._find_links({i.link for i in identities if i.link})
        marked: dict[str, str] = {}
        # A mark is never cleared by another source naming the folded text (a form typed
        # "dora?@"): anyone could cut the person a folding CRM showed from their real address,
        # their no and their erasure with it, by one submission (session 61 review of d0ace31).
        by_email = self._find_emails({i.email for i in identities if i.email}, marked)
        # A folded address (a CRM keeping the BMP only) is the person's who holds the real one,
        # before anyone holding the folded text itself. Only records not linked yet that show
        # the fold character pay for it.
        unfolded = self._unfold(identities, by_link)
        # Two runs that meet the same new person do not both create them: every ledger writer
        # holds the writer lock from BEGIN (engine.py), so these reads see what the other wrote.
        # An erased person's address is known only by its keyed hash: a record carrying it is
        # that (erased) person, and the address is never written to the ledger again.
        # Every address read, whoever the record already belongs to: an erased address on a
        # record of another person must neither be written back nor go unnoticed (below).
        # A capture's address likewise where every capture naming it in this batch says no: a
        # grant beside it is the person coming back, a new person with the address.
        hashed = self._kept_hashed(identities)
        erased = self._erased_by_email({e for e in hashed if e not in by_email}) if hashed else {}
        by_email.update(erased)
        unknown: dict[object, Identity] = {}
        for position, identity in enumerate(identities):
            if identity.subject_id is not None:
                continue
            known = (
                (by_link.get(identity.link) if identity.link else None)
                or unfolded.get(position)
                or (by_email.get(identity.email) if identity.email else None)
                or identity.pointed
            )
            if known is None:
                unknown.setdefault(identity.email or identity.link, identity)
        created_for_link: dict[CrmLink, int] = {}
        created = self._create(list(unknown.values()), hashed)
        for identity, subject_id in zip(unknown.values(), created, strict=True):
            if identity.email:
                by_email[identity.email] = subject_id
            elif identity.link:
                created_for_link[identity.link] = subject_id  # its link row is written below

        resolved: list[int] = []
        new_links: list[tuple[Any, ...]] = []
        new_emails: list[tuple[Any, ...]] = []
        added_by: list[CrmLink | None] = []  # the record that brought each of new_emails
        linked_at = db_time(self.conn, self.now)
        record_created = self.record_created
        erased_ids = self._erased_ids(
            {by_link[i.link] for i in identities if i.link and i.link in by_link and i.email}
            | {i.subject_id for i in identities if i.subject_id is not None and i.email}
            | {i.pointed for i in identities if i.pointed is not None and i.email}
            | set(erased.values())
        )
        for position, identity in enumerate(identities):
            subject_id = identity.subject_id
            if subject_id is None and identity.link:
                subject_id = by_link.get(identity.link)
            # Its person holds the real address (``_unfold``): the folded text, which another
            # person's address may fold to as well, is not stored for them.
            real = unfolded.get(position)
            if subject_id is None:
                subject_id = real
            if subject_id is None and identity.pointed is not None:
                subject_id = self._pointed_or_holder(identity, by_email)
            if subject_id is None and identity.email:
                subject_id = by_email.get(identity.email)
            if subject_id is None and identity.link:
                subject_id = created_for_link.get(identity.link)
            assert subject_id is not None  # every unknown identity was created above
            owner = real if real is not None else by_email.get(identity.email) if identity.email else None
            if owner is not None and owner != subject_id and self.elsewhere is not None:
                # The record is another person's (by its id) but carries this person's address:
                # the CRM will write to that address, so what binds its owner must reach it.
                self.elsewhere.append((owner, subject_id))
            if identity.email and real is None and identity.email not in by_email:
                by_email[identity.email] = subject_id
                if subject_id not in erased_ids:
                    # The one form, whatever form it was looked up under (a LookupAddress).
                    new_emails.append((subject_id, EMAIL, str(identity.email)))
                    added_by.append(identity.link)
            if identity.link and identity.link not in by_link:
                link = identity.link
                created_at = record_created.get(link)
                new_links.append(
                    (
                        subject_id,
                        link.connector,
                        link.object_type,
                        link.record_id,
                        linked_at,
                        None if created_at is None else db_time(self.conn, created_at),
                    )
                )
                by_link[identity.link] = subject_id
            resolved.append(subject_id)
        insert_rows(self.conn, subject_identifiers, IDENTIFIER_COLUMNS, new_emails)
        # The addresses stored here and for the people made above (an erased one is not: no row).
        self._mark_folded(
            [row[2] for row in new_emails] + [str(i.email) for i in unknown.values() if i.email], identities
        )
        insert_rows(self.conn, crm_links, LINK_COLUMNS, new_links)
        self._bind_added(new_emails, added_by)
        return resolved

    def _pointed_or_holder(self, identity: Identity, by_email: dict[str, int]) -> int:
        """The person of a record new to the ledger that points to a record of person
        ``identity.pointed`` (an Individual): the holder of the address it carries, where someone
        holds it (an erased person by its keyed hash, as a record showing it is matched without a
        pointer) and has not left it (whoever writes from a left mailbox may be someone else:
        docs/policy.md, "An address a person no longer holds"); else the person pointed to, who
        takes a new address as before. So a Contact showing kim.home@ is kim.home's person's,
        whether its Individual was read first or not; the two people are tied, never pooled (the
        sync: ``absorb``, sync/shared.py). No lookup: the batch's addresses were read already."""
        pointed = identity.pointed
        assert pointed is not None
        email = identity.email
        if email is None or email in self.left:
            return pointed
        return by_email.get(email, pointed)

    def _mark_folded(self, stored: Sequence[str], identities: Sequence[Identity]) -> None:
        """Marks each address just ``stored`` that a folding CRM's record showed holding its fold
        character (``Identity.folds_astral_to``) with that character: it may be a real address
        folded, and stands for it (``holds_for``). One attribute check per identity; a
        statement only where such an address was stored (a Vtiger on ``utf8`` showing "?")."""
        if not stored:
            return
        folded: dict[str, str | None] = {}
        for identity in identities:
            to, email = identity.folds_astral_to, identity.email
            if to and email and to in email:
                folded.setdefault(str(email), to)
        if not folded:
            return
        for identity in identities:  # named as it is by another source in the batch too: a "?"
            if identity.email in folded and identity.folds_astral_to != folded[identity.email]:
                folded[str(identity.email)] = None
        held = subject_identifiers.c
        by_char: dict[str, list[str]] = {}
        for email in sorted(set(stored) & set(folded)):
            char = folded[email]
            if char is not None:
                by_char.setdefault(char, []).append(email)
        for char, emails in sorted(by_char.items()):
            self.conn.execute(
                update(subject_identifiers)
                .where(held.kind == EMAIL, held.value.in_(emails))
                .values(folds_astral_to=char)
            )

    def create_unaddressed(self, email: str) -> int:
        """A person for a sign-up with ``email``, an erased address nobody holds
        (``is_erased_only``), whose address waits for the person's confirmation (capture.py,
        ``Hub._hold_back``): created standing on the address's suppression entry and holding its
        keyed hash only, as a CRM record showing it makes one (its ``subject.created`` binds
        nothing). ``add_email`` stores the address once the person confirms."""
        (subject_id,) = self._create([Identity(email=email)], {email})
        return subject_id

    def add_email(self, subject_id: int, email: str) -> None:
        """Stores ``email`` (nobody holds it) for person ``subject_id``, bound to them in the chain
        by a ``subject.identifier_added`` (``audit`` holds it for the caller to append)."""
        rows: list[tuple[Any, ...]] = [(subject_id, EMAIL, email)]
        insert_rows(self.conn, subject_identifiers, IDENTIFIER_COLUMNS, rows)
        self._bind_added(rows, [None])

    def _bind_added(self, rows: list[tuple[Any, ...]], links: list[CrmLink | None]) -> None:
        """A ``subject.identifier_added`` for each identifier stored for a person who did not
        have it (``IDENTIFIER_COLUMNS`` rows): its keyed hash, and the CRM record that showed
        it. Rare (a CRM record re-addressed): the people's uids are read in one query (those
        created in this batch too: nothing is kept of them for it on the sync's path)."""
        if not rows or not self.binds:
            return
        uids = dict(select_in(self.conn, subjects, ("id", "uid"), "id", sorted({row[0] for row in rows})))
        for (subject_id, kind, value), link in zip(rows, links, strict=True):
            self.audit.append(
                AuditRecord(
                    action="subject.identifier_added",
                    what={BOUND: bindings([(kind, self.hashed(value))]), "crm_record": _link_json(link)},
                    run_id=self.run_id,
                    subject_uid=uids[subject_id],
                    subject_id=subject_id,
                )
            )

    def _kept_hashed(self, identities: Sequence[Identity]) -> set[str]:
        """The addresses that, if erased, stay a keyed hash: every address a CRM record carries
        (``from_crm``), and a capture's address where each capture naming it says no
        (``Identity.says_no``)."""
        if self.from_crm:
            return {i.email for i in identities if i.email}
        saying_no = {i.email for i in identities if i.email and i.says_no}
        if not saying_no:
            return set()
        return saying_no - {i.email for i in identities if i.email and not i.says_no}

    def is_erased_only(self, email: str) -> bool:
        """Whether ``email`` is on the suppression list (by the keyed hash of any of its forms,
        ``email_forms``) and no person holds it: an erased address nobody came back with. Whatever
        is said for it (a no, an objection) is said by someone the erasure already keeps out;
        nothing of it is to be written (a person holding it, a mail to it)."""
        return self.erased_since(email) is not None

    def erased_since(self, email: str) -> datetime | None:
        """For an address ``is_erased_only`` holds for, when the address was last erased
        (``last_erased_at`` of the suppression entry a person coming back with it would stand on,
        ``_create``: its first form on the list), the time a new consent must be newer than to
        lift it; else None."""
        if self._find_emails({email}):
            return None
        digests = [self.hashed(form) for form in email_forms(email)]
        query = select(suppressions.c.email_hmac, last_erased_at(suppressions)).where(
            suppressions.c.email_hmac.in_(digests)
        )
        made = {row[0]: row[1] for row in self.conn.execute(query)}
        return next((made[digest] for digest in digests if digest in made), None)

    def erased_since_each(self, emails: set[str]) -> dict[str, datetime]:
        """``erased_since`` for many addresses (a bulk import's batch): each of ``emails`` that
        is an erased address nobody came back with, and when it was last erased. One chunked
        read of the suppression list finds the few on it; only those are read one by one."""
        if not emails:
            return {}
        hashes: dict[str, str] = {}
        for email in sorted(emails):
            for form in email_forms(email):
                hashes.setdefault(self.hashed(form), email)
        rows = select_in(self.conn, suppressions, ("email_hmac",), "email_hmac", sorted(hashes))
        listed = {hashes[row[0]] for row in rows}
        found: dict[str, datetime] = {}
        for email in sorted(listed):
            since = self.erased_since(email)
            if since is not None:
                found[email] = since
        return found

    def superseded(self, emails: set[str]) -> set[str]:
        """Of ``emails``, those their holder left (``subject_identifiers.left_at``, kept by the
        sync: ``note_rereads``): a CRM record known by its id as theirs took another address of
        their own, and none shows it again since. The person keeps it (their nos under it, Art.
        15, ``subject.identifier_added``: an address never moves to another person), but whoever
        writes from that mailbox now may be someone else (recycled, a former employer's alias): a
        grant or an erasure captured for it is no word of the person's (docs/policy.md, "An
        address a person no longer holds"). The fact is kept, not recomputed from the records: a
        new lead at the old address, a blanked or deleted record take no evidence away. One read,
        of the addresses themselves (as ``_find_emails`` finds their holder)."""
        wanted = {form: email for email in emails for form in email_forms(email)}
        if not wanted:
            return set()
        rows = {
            value: (folds, left_at)
            for value, folds, left_at in select_in(
                self.conn,
                subject_identifiers,
                ("value", "folds_astral_to", "left_at"),
                "value",
                sorted(wanted),
                equal=[("kind", EMAIL)],
            )
        }
        found: set[str] = set()
        for email in emails:
            for form in email_forms(email):
                if form in rows:
                    folds, left_at = rows[form]
                    if form != email and not holds_for(email, form, folds):
                        continue  # another person's "?" (``_find_emails``)
                    if left_at is not None:
                        found.add(email)
                    break
        return found

    def holder(self, email: str) -> int | None:
        """The person holding ``email`` (as ``resolve`` finds them by it), or None."""
        return self._find_emails({email}).get(email)

    def note_rereads(self, rereads: Sequence[Reread]) -> None:
        """Keeps which addresses the people of ``rereads`` left (``subject_identifiers.left_at``):
        each a CRM record known by its id as its person's, read showing another address than at
        its last read. Inside the caller's transaction, after the records' snapshots are written;
        an entry for each change (``LEFT_ACTION``, ``HELD_AGAIN_ACTION``) in ``audit``.

        The address it showed before is left where the one it shows now is, after the read, one
        of the person's own (they took a new address) and no live record of theirs still shows
        it. The one it shows now is held again if it was left. Another person's address (the
        record is theirs by its id: ``elsewhere``), a malformed one (quarantined, never stored), a
        blank, a deletion and a record new to the ledger (matched by its address: anyone can
        make one, a web-to-lead form) say nothing of what the person holds.

        So a person who left an address holds another, not left: the one the record shows now,
        which this very read holds again; it is left in turn only when a record of theirs shows
        a third of their own, and never while a live record shows it. Two reads for the page's
        people (their addresses; the records still showing the ones left), the second only where
        one is left."""
        if not rereads:
            return
        people = sorted({r.subject_id for r in rereads})
        # (person, keyed hash of any form of an address they hold) -> (row id, address, left)
        held: dict[tuple[int, str], tuple[int, str, bool]] = {}
        # By person alone, the kind weighed here: with ``kind = ?`` beside the IN list, SQLite
        # without statistics searched the unique (kind, value) index by kind, every address of
        # the ledger per page (a quarter of a 200,000-contact sync's pages).
        for row_id, subject_id, kind, value, left_at in select_in(
            self.conn,
            subject_identifiers,
            ("id", "subject_id", "kind", "value", "left_at"),
            "subject_id",
            people,
        ):
            if kind != EMAIL:
                continue
            for form in email_forms(value):
                held.setdefault((subject_id, self.hashed(form)), (row_id, value, left_at is not None))
        showing: dict[int, list[tuple[int, str, Reread]]] = {}
        leaving: dict[int, tuple[int, str, Reread]] = {}
        for reread in rereads:
            shown = held.get((reread.subject_id, reread.now))
            if shown is None:
                continue  # not an address of theirs: says nothing of what they hold
            if shown[2]:
                showing.setdefault(shown[0], []).append((reread.subject_id, shown[1], reread))
            last = held.get((reread.subject_id, reread.before)) if reread.before is not None else None
            if last is not None and last[0] != shown[0] and not last[2]:
                leaving.setdefault(last[0], (reread.subject_id, last[1], reread))
        again = self._held_again(showing)
        for row_id in again:
            leaving.pop(row_id, None)
        if leaving:
            digests = {
                row_id: {self.hashed(form) for form in email_forms(value)}
                for row_id, (_subject, value, _r) in leaving.items()
            }
            # A record still showing the address keeps it the person's only where it was theirs
            # no later than the record that moved: one linked since, by that address alone (a
            # web-to-lead form the old mailbox's new owner filled in), says nothing of them.
            moved_linked = self._linked_at([v[2].link for v in leaving.values()])
            still: dict[tuple[int, str], datetime] = {}
            for subject_id, identity, linked_at in self.conn.execute(
                select(crm_links.c.subject_id, crm_snapshots.c.identity, crm_links.c.linked_at)
                .join(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
                .where(
                    one_of(self.conn, crm_snapshots.c.identity, sorted(set().union(*digests.values()))),
                    one_of(self.conn, crm_links.c.subject_id, sorted({v[0] for v in leaving.values()})),
                    crm_links.c.gone_at.is_(None),
                )
            ):
                key = (subject_id, identity)
                still[key] = min(linked_at, still.get(key, linked_at))
            leaving = {
                row_id: v
                for row_id, v in leaving.items()
                if not any(
                    (v[0], digest) in still
                    and (v[2].link not in moved_linked or still[(v[0], digest)] <= moved_linked[v[2].link])
                    for digest in digests[row_id]
                )
            }
        if not leaving and not again:
            return
        held_rows = subject_identifiers.c
        if leaving:
            self.conn.execute(
                update(subject_identifiers)
                .where(one_of(self.conn, held_rows.id, sorted(leaving)), held_rows.left_at.is_(None))
                .values(left_at=self.now)
            )
        if again:
            self.conn.execute(
                update(subject_identifiers)
                .where(one_of(self.conn, held_rows.id, sorted(again)))
                .values(left_at=None)
            )
        changed = [(LEFT_ACTION, LEFT, v) for _, v in sorted(leaving.items())]
        changed += [(HELD_AGAIN_ACTION, HELD_AGAIN, v) for _, v in sorted(again.items())]
        uids = dict(
            select_in(self.conn, subjects, ("id", "uid"), "id", sorted({v[0] for _a, _k, v in changed}))
        )
        for action, key, (subject_id, value, reread) in changed:
            self.audit.append(
                AuditRecord(
                    action=action,
                    what={
                        key: bindings([(EMAIL, self.hashed(value))]),
                        "crm_record": _link_json(reread.link),
                    },
                    run_id=self.run_id,
                    subject_uid=uids[subject_id],
                    subject_id=subject_id,
                )
            )
        log.info("identity.addresses_left", left=len(leaving), held_again=len(again))

    def _held_again(
        self, showing: dict[int, list[tuple[int, str, Reread]]]
    ) -> dict[int, tuple[int, str, Reread]]:
        """Of the left addresses (by row id) that re-read records show, each with the rereads
        showing it, those a record of the person's from before they left it shows: linked to
        them no later than the record whose move left it (``moved_linked``). A record linked
        since, by that address alone (the old mailbox's new owner's contact, made before or after
        the move, edited away from it and back or restored), is no record of theirs
        showing it again (docs/policy.md, "An address a person no longer holds"). Rare: one
        read (the people's links of those records, beside the addresses), only where a re-read
        record shows a left address."""
        if not showing:
            return {}
        held_rows, links = subject_identifiers.c, crm_links.c
        rereads = [reread for rows in showing.values() for _s, _v, reread in rows]
        times: dict[tuple[int, CrmLink], tuple[datetime, datetime]] = {}
        for row_id, left_at, connector, object_type, record_id, linked_at in self.conn.execute(
            select(
                held_rows.id,
                held_rows.left_at,
                links.connector,
                links.object_type,
                links.record_id,
                links.linked_at,
            )
            .join(crm_links, links.subject_id == held_rows.subject_id)
            .where(
                one_of(self.conn, held_rows.id, sorted(showing)),
                one_of(self.conn, links.record_id, sorted({r.link.record_id for r in rereads})),
            )
        ):
            times[(row_id, CrmLink(connector, object_type, record_id))] = (linked_at, left_at)
        bounds = moved_linked(
            self.conn, {subject_id for rows in showing.values() for subject_id, _v, _r in rows}
        )
        again: dict[int, tuple[int, str, Reread]] = {}
        for row_id, rows in showing.items():
            for subject_id, value, reread in rows:
                linked_at, left_at = times.get((row_id, reread.link), (None, None))
                if left_at is not None:
                    left_at = bounds.get(subject_id, {}).get(self.hashed(value), left_at)
                if linked_at is not None and left_at is not None and linked_at <= left_at:
                    again[row_id] = (subject_id, value, reread)
                    break
        return again

    def _linked_at(self, links: Sequence[CrmLink]) -> dict[CrmLink, datetime]:
        """When each of ``links`` was linked to its person (a few records of a page: as typed
        values, comparable with the snapshots' join)."""
        found: dict[CrmLink, datetime] = {}
        for link in set(links):
            linked_at = self.conn.execute(
                select(crm_links.c.linked_at).where(
                    crm_links.c.connector == link.connector,
                    crm_links.c.object_type == link.object_type,
                    crm_links.c.record_id == link.record_id,
                )
            ).scalar()
            if linked_at is not None:
                found[link] = linked_at
        return found

    def _find_links(self, links: set[CrmLink]) -> dict[CrmLink, int]:
        # One query per (connector, object type): the unique index leads with both.
        by_type: dict[tuple[str, str], list[str]] = {}
        for link in links:
            by_type.setdefault((link.connector, link.object_type), []).append(link.record_id)
        found: dict[CrmLink, int] = {}
        # Links made before the CRM said when it made their record (a record first linked
        # through a pointer to it, or before migration 0023), read now with that time: it is
        # kept, as on a link made now (an erasure's delete or anonymise reaches the records
        # the CRM held when it was made; by the link's own time, one first linked after it
        # would be spared though the CRM held it).
        unstamped: list[dict[str, Any]] = []
        for (connector, object_type), record_ids in sorted(by_type.items()):
            rows = select_in(
                self.conn,
                crm_links,
                ("record_id", "subject_id", "record_created_at"),
                "record_id",
                sorted(record_ids),
                equal=[("connector", connector), ("object_type", object_type)],
            )
            for record_id, subject_id, created_at in rows:
                link = CrmLink(connector, object_type, record_id)
                found[link] = subject_id
                if created_at is None and (stamp := self.record_created.get(link)) is not None:
                    unstamped.append({"k": connector, "t": object_type, "r": record_id, "at": stamp})
        if unstamped:
            self.conn.execute(
                update(crm_links)
                .where(
                    crm_links.c.connector == bindparam("k"),
                    crm_links.c.object_type == bindparam("t"),
                    crm_links.c.record_id == bindparam("r"),
                    crm_links.c.record_created_at.is_(None),
                )
                .values(record_created_at=bindparam("at")),
                unstamped,
            )
        return found

    def _erased_by_email(self, emails: set[str]) -> dict[str, int]:
        """The subject behind each address whose keyed hash is on the suppression list (erased,
        or created suppressed because its address had been erased before)."""
        if not emails:
            return {}
        # Each form an address may have been erased under (email_forms: an older version kept a
        # punycode domain as it came), the address's own form first.
        hashes: dict[str, str] = {}
        for email in sorted(emails):
            for form in email_forms(email):
                hashes.setdefault(self.hashed(form), email)
        found: dict[str, int] = {}
        rows = select_in(
            self.conn,
            suppressions,
            ("subjects.id", "email_hmac"),
            "email_hmac",
            sorted(hashes),
            join=((subjects, "suppression_id", "id"),),
        )
        for subject_id, hashed in sorted(row for row in rows if row[0] is not None):
            found.setdefault(hashes[hashed], subject_id)  # the person first created for it
        return found

    def _unfold(self, identities: Sequence[Identity], by_link: dict[CrmLink, int]) -> dict[int, int]:
        """By position in ``identities``, for each record not linked yet whose address its CRM
        may have folded (it holds the character the CRM stores in place of an emoji), the one
        person holding an address that folds to it and is not it (the real address). Nobody:
        the address is taken as it is. Several people: the CRM cannot tell them apart and two
        people are never pooled on a guess; it is taken as it is too, and a warning names the
        record (docs/policy.md, "One address, one form"). Costs one pass of
        attribute checks where no record shows the character."""
        wanted: dict[tuple[str, str], list[int]] = {}
        for position, identity in enumerate(identities):
            to, email, link = identity.folds_astral_to, identity.email, identity.link
            if to and email and to in email and identity.subject_id is None and link not in by_link:
                wanted.setdefault((to, str(email)), []).append(position)
        found: dict[int, int] = {}
        for (to, folded), positions in sorted(wanted.items()):
            people = self._folding_to(to, folded)
            if len(people) == 1:
                found.update(dict.fromkeys(positions, people.pop()))
            elif people:
                for link in (identities[position].link for position in positions):
                    log.warning(
                        "identity.folded_address_ambiguous",
                        connector=link.connector if link else None,
                        object=link.object_type if link else None,
                        record=link.record_id if link else None,
                        people=len(people),
                    )
        return found

    def _folding_to(self, to: str, folded: str) -> set[int]:
        """The people holding an address other than ``folded`` that ``fold_astral(.., to)`` makes
        ``folded``: one statement with bound values, ``to`` as LIKE's one-character wildcard,
        searched by the (kind, value) index from the text before the first ``to`` where the
        ledger's text sorts by code point; each row checked exactly here."""
        value = subject_identifiers.c.value
        pattern = "".join("_" if char == to else "\\" + char if char in "\\%_" else char for char in folded)
        where = [subject_identifiers.c.kind == EMAIL, value.like(pattern, escape="\\")]
        prefix = folded[: folded.index(to)]
        after = _past(prefix)
        if after is not None:
            if self._by_code_point is None:
                self._by_code_point = _sorts_by_code_point(self.conn)
            if self._by_code_point:
                where += [value >= prefix, value < after]
        rows = self.conn.execute(select(value, subject_identifiers.c.subject_id).where(*where))
        return {
            int(subject_id) for held, subject_id in rows if held != folded and fold_astral(held, to) == folded
        }

    def _erased_ids(self, subject_ids: set[int]) -> set[int]:
        if not subject_ids:
            return set()
        rows = select_in(self.conn, subjects, ("id", "suppression_id"), "id", sorted(subject_ids))
        return {subject_id for subject_id, suppression_id in rows if suppression_id is not None}

    def _find_emails(self, emails: set[str], marked: dict[str, str] | None = None) -> dict[str, int]:
        """The person held under each address: under its one form, else under the form an
        older version kept (email_forms; such addresses are rare, and only they cost more), and
        last under its folded form where a folding CRM's record brought that (``holds_for``).
        ``marked``, when given, is filled with each address held as it is and marked as a
        folding CRM's (its fold character): the caller's source may say it is what it says."""
        wanted = {form: email for email in emails for form in email_forms(email)}
        rows = {
            value: (subject_id, folds, left_at)
            for value, subject_id, folds, left_at in select_in(
                self.conn,
                subject_identifiers,
                ("value", "subject_id", "folds_astral_to", "left_at"),
                "value",
                sorted(wanted),
                equal=[("kind", EMAIL)],
            )
        }
        found: dict[str, int] = {}
        for email in emails:
            for form in email_forms(email):
                if form in rows:
                    subject_id, folds, left_at = rows[form]
                    # Nearly always held as it is (nothing more asked); else under an older
                    # form, or its folded one where a folding CRM's record brought that.
                    if form != email and not holds_for(email, form, folds):
                        continue  # another person's "?" (it is the last form)
                    found[email] = subject_id
                    if left_at is not None:  # NULL or not only: the value is read where needed
                        self.left[email] = (subject_id, form)
                    if folds is not None and form == email and marked is not None:
                        marked[email] = folds
                    break
        return found

    def _create(self, identities: Sequence[Identity], hashed: set[str] | None = None) -> list[int]:
        """Creates a person for each identity. An address in ``hashed`` (``_kept_hashed``) that is
        on the suppression list is not written: its person holds the keyed hash only."""
        if not identities:
            return []
        forms = {i.email: [self.hashed(f) for f in email_forms(i.email)] for i in identities if i.email}
        entries = dict(
            select_in(
                self.conn,
                suppressions,
                ("email_hmac", "id"),
                "email_hmac",
                sorted({h for hashes in forms.values() for h in hashes}),
            )
        )
        # An address erased under either of its forms (email_forms) is suppressed.
        suppressed_for = {
            email: next((entries[h] for h in hashes if h in entries), None) for email, hashes in forms.items()
        }
        rows = [
            {
                "uid": str(uuid.uuid4()),
                "created_at": self.now,
                "restricted": False,
                "suppression_id": suppressed_for[i.email] if i.email else None,
            }
            for i in identities
        ]
        created_at = db_time(self.conn, self.now)
        values = [(row["uid"], created_at, False, row["suppression_id"]) for row in rows]
        ids = insert_returning_ids(self.conn, subjects, SUBJECT_COLUMNS, values, unique="uid")
        emails: list[tuple[Any, ...]] = []
        stored: list[bool] = []  # whether each person's address is stored (and so bound)
        for identity, subject_id, row in zip(identities, ids, rows, strict=True):
            # From a CRM (or a capture that says no), an erased address stays a hash.
            stored.append(
                bool(identity.email)
                and not (
                    row["suppression_id"] is not None and (self.from_crm or identity.email in (hashed or ()))
                )
            )
            if stored[-1]:
                emails.append((subject_id, EMAIL, str(identity.email)))
        insert_rows(self.conn, subject_identifiers, IDENTIFIER_COLUMNS, emails)
        self.created += len(ids)
        for identity, subject_id, row, bound in zip(identities, ids, rows, stored, strict=True):
            erased_before = row["suppression_id"] is not None
            what: dict[str, Any] = {
                "identifiers": [EMAIL] if identity.email else [],
                "crm_record": _link_json(identity.link),
            }
            if self.binds:
                # The keyed hash of the stored value is its first form's (``email_forms``: the
                # address itself first), made above: the sync's path hashes nothing more.
                what[BOUND] = {EMAIL: [forms[identity.email][0]]} if bound and identity.email else {}
            self.audit.append(
                AuditRecord(
                    action="subject.created",
                    what=what,
                    new={"suppressed_by_earlier_erasure": erased_before},
                    rule="erasure_suppression" if erased_before else None,
                    run_id=self.run_id,
                    subject_uid=row["uid"],
                    subject_id=subject_id,
                )
            )
        return ids


def backfill_left(engine: Engine, key: bytes, now: datetime, actor: str = "consentsync:upgrade") -> int:
    """Once per ledger (the ``ledger_settings`` row ``LEFT_BACKFILL_SETTING`` says it ran): marks
    the addresses their people left before ``left_at`` was kept (migration 0022, which cannot: the
    snapshots hash addresses under the erasure key). Best effort, from what the records show now:
    an address is left where none of its person's live records was last read showing it and one
    shows another address of their own (the rule before 0022, less another person's address, a
    malformed one and a blank, which left people holding none). Only people holding two
    addresses or more are read. One transaction, the chain's head locked first (two processes
    opening at once mark each address once), a ``LEFT_ACTION`` entry per address marked, the
    setting row written in it. Returns how many were marked.

    First, the flags the chain says (``left_by`` over each person's ``LEFT_ACTIONS`` entries) are
    set again, with no new entry (the chain says them already): a downgrade past 0022 drops the
    column, not the append-only log, and the rule from the records alone misses an address whose
    person's records were blanked or deleted since (``audit verify`` then names it). Counted."""
    from consentsync import audit
    from consentsync.ledger.engine import reading
    from consentsync.ledger.schema import audit_entries, audit_head, ledger_settings

    done = ledger_settings.c.name == LEFT_BACKFILL_SETTING
    with reading(engine) as conn:
        if conn.execute(select(ledger_settings.c.value).where(done)).scalar() is not None:
            return 0
    hashed = keyed_hasher(key)
    records: list[AuditRecord] = []
    with engine.begin() as conn:
        conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1).with_for_update())
        if conn.execute(select(ledger_settings.c.value).where(done)).scalar() is not None:
            return 0
        held = subject_identifiers.c
        restored: list[int] = []  # row ids the chain says are left
        said = audit_entries.c
        saying = sorted(
            conn.execute(
                select(said.subject_id)
                .where(said.action.in_(LEFT_ACTIONS), said.subject_id.is_not(None))
                .distinct()
            ).scalars()
        )  # every LEFT_ACTIONS entry carries its person's id: none was written before 0013
        for chunk in (saying[at : at + 500] for at in range(0, len(saying), 500)):
            entries: dict[int, list[tuple[int, str]]] = {}
            for subject_id, seq, payload in conn.execute(
                select(said.subject_id, said.seq, said.payload)
                .where(
                    said.action.in_((*BINDING_ACTIONS, *UNBINDING_ACTIONS, *LEFT_ACTIONS)),
                    one_of(conn, said.subject_id, chunk),
                )
                .order_by(said.seq)
            ):
                entries.setdefault(subject_id, []).append((seq, payload))
            left = {subject_id: left_by(theirs) for subject_id, theirs in entries.items()}
            for row_id, subject_id, kind, value in conn.execute(
                select(held.id, held.subject_id, held.kind, held.value).where(
                    held.left_at.is_(None), one_of(conn, held.subject_id, chunk)
                )
            ):
                if (kind, hashed(value)) in left.get(subject_id, ()):
                    restored.append(row_id)
        if restored:
            conn.execute(
                update(subject_identifiers).where(one_of(conn, held.id, restored)).values(left_at=now)
            )
        people = sorted(
            conn.execute(
                select(held.subject_id)
                .where(held.kind == EMAIL)
                .group_by(held.subject_id)
                .having(func.count() > 1)
            ).scalars()
        )
        leaving: list[tuple[int, int, str]] = []  # row id, person, address
        for chunk in (people[at : at + 500] for at in range(0, len(people), 500)):
            addresses: dict[int, list[tuple[int, str, set[str]]]] = {}
            for row_id, subject_id, value in conn.execute(
                select(held.id, held.subject_id, held.value).where(
                    held.kind == EMAIL, held.left_at.is_(None), one_of(conn, held.subject_id, chunk)
                )
            ):
                forms = {hashed(form) for form in email_forms(value)}
                addresses.setdefault(subject_id, []).append((row_id, value, forms))
            shown: dict[int, set[str]] = {}
            for subject_id, identity in conn.execute(
                select(crm_links.c.subject_id, crm_snapshots.c.identity)
                .join(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
                .where(
                    one_of(conn, crm_links.c.subject_id, chunk),
                    crm_links.c.gone_at.is_(None),
                    crm_snapshots.c.identity.is_not(None),
                )
            ):
                shown.setdefault(subject_id, set()).add(identity)
            for subject_id, theirs in addresses.items():
                seen = shown.get(subject_id, set())
                if any(forms & seen for _id, _value, forms in theirs):  # one of their own is shown
                    leaving += [
                        (row_id, subject_id, value) for row_id, value, forms in theirs if not forms & seen
                    ]
        if leaving:
            conn.execute(
                update(subject_identifiers)
                .where(one_of(conn, held.id, [row[0] for row in leaving]))
                .values(left_at=now)
            )
            uids = dict(select_in(conn, subjects, ("id", "uid"), "id", sorted({row[1] for row in leaving})))
            records = [
                AuditRecord(
                    action=LEFT_ACTION,
                    what={LEFT: bindings([(EMAIL, hashed(value))]), "backfilled": "0022"},
                    actor=actor,
                    subject_uid=uids[subject_id],
                    subject_id=subject_id,
                )
                for _row_id, subject_id, value in leaving
            ]
            audit.append(conn, records, now)
        conn.execute(insert(ledger_settings).values(name=LEFT_BACKFILL_SETTING, value="done", set_at=now))
    if leaving or restored:  # said once per ledger, and only where addresses were left
        log.info("identity.left_backfilled", addresses=len(leaving), restored=len(restored))
    return len(leaving) + len(restored)


def moved_linked(conn: Connection, people: Iterable[int]) -> dict[int, dict[str, datetime]]:
    """For each of ``people``, each address they left and neither held again nor had unbound
    since (its keyed hash, as the chain and the snapshots keep it), the latest a record may have
    been linked to them to be theirs from before they left it: when the record whose move left
    it was linked (``note_rereads``: one linked after that record, by the address alone, keeps
    nothing for them, whenever it was read), or, where the chain names no such record
    (``backfill_left``), when they left it. From the chain's ``subject.identifier_left`` entries
    (one read by the subject index, one for those records' links), only for the few people a
    page's records show a left address of (or an erasure's action would reach)."""
    wanted = sorted(set(people))
    if not wanted:
        return {}
    said: dict[int, dict[str, tuple[datetime, CrmLink | None]]] = {}
    entries = audit_entries.c
    for subject_id, action, at, payload in conn.execute(
        select(entries.subject_id, entries.action, entries.at, entries.payload)
        .where(
            one_of(conn, entries.subject_id, wanted),
            entries.action.in_((LEFT_ACTION, HELD_AGAIN_ACTION)),
        )
        .order_by(entries.seq)
    ):
        read = entry_said(payload)
        if read is None:
            continue
        what = read[1]
        theirs = said.setdefault(subject_id, {})
        if action == LEFT_ACTION:
            record = what.get("crm_record")
            link = (
                CrmLink(str(record["connector"]), str(record["object"]), str(record["id"]))
                if isinstance(record, dict) and {"connector", "object", "id"} <= record.keys()
                else None
            )
            for kind, digest in said_bindings(what.get(LEFT)):
                if kind == EMAIL:
                    theirs[digest] = (at, link)
        else:
            for kind, digest in said_bindings(what.get(HELD_AGAIN)):
                if kind == EMAIL:
                    theirs.pop(digest, None)
    moved = {link for theirs in said.values() for _at, link in theirs.values() if link is not None}
    linked: dict[CrmLink, datetime] = {}
    by_type: dict[tuple[str, str], set[str]] = {}
    for link in moved:  # the unique index leads with connector and object type
        by_type.setdefault((link.connector, link.object_type), set()).add(link.record_id)
    links = crm_links.c
    for (connector, object_type), record_ids in sorted(by_type.items()):
        for record_id, linked_at in conn.execute(
            select(links.record_id, links.linked_at).where(
                links.connector == connector,
                links.object_type == object_type,
                one_of(conn, links.record_id, sorted(record_ids)),
            )
        ):
            linked[CrmLink(connector, object_type, record_id)] = linked_at
    return {
        subject_id: {
            digest: min(at, linked[link]) if link in linked else at for digest, (at, link) in theirs.items()
        }
        for subject_id, theirs in said.items()
    }


def linked_and_left(
    conn: Connection,
    connector: str,
    object_type: str,
    showing: dict[str, tuple[int, str]],
    hashed: Callable[[str], str],
) -> dict[str, tuple[datetime, datetime]]:
    """For records of one connector and object (by record id) each showing an address its
    person left (``showing``: the person and the form the address is held under,
    ``SubjectResolver.left``), when the record was linked to that person and the latest it may
    have been linked to be theirs from before they left the address (``moved_linked``: when the
    record whose move left it was linked), as typed values. Two statements, only for a page
    holding such a record."""
    if not showing:
        return {}
    links, held = crm_links.c, subject_identifiers.c
    rows = conn.execute(
        select(links.record_id, links.subject_id, links.linked_at, held.value, held.left_at)
        .join(subject_identifiers, held.subject_id == links.subject_id)
        .where(
            links.connector == connector,
            links.object_type == object_type,
            one_of(conn, links.record_id, sorted(showing)),
            held.kind == EMAIL,
            one_of(conn, held.value, sorted({form for _s, form in showing.values()})),
            held.left_at.is_not(None),
        )
    )
    found: dict[str, tuple[datetime, datetime]] = {}
    for record_id, subject_id, linked_at, value, left_at in rows:
        if showing.get(record_id) == (subject_id, value):
            found[record_id] = (linked_at, left_at)
    if found:
        bounds = moved_linked(conn, {showing[record_id][0] for record_id in found})
        for record_id, (linked_at, left_at) in found.items():
            subject_id, form = showing[record_id]
            found[record_id] = (linked_at, bounds.get(subject_id, {}).get(hashed(form), left_at))
    return found


def _past(prefix: str) -> str | None:
    """The least text after every text that starts with ``prefix``, in code point order (None:
    no bound, ``prefix`` is empty or all U+10FFFF)."""
    while prefix:
        following = ord(prefix[-1]) + 1
        if following <= 0x10FFFF:
            # No surrogate: it could not be sent as UTF-8, and none sorts between.
            return prefix[:-1] + chr(0xE000 if 0xD800 <= following <= 0xDFFF else following)
        prefix = prefix[:-1]
    return None


# PostgreSQL locales whose text order is code point order (libc's C and POSIX, C.UTF-8; the
# builtin provider's): under any other (en_US.UTF-8, an ICU locale) a prefix's range need not
# hold every text that starts with it.
_CODE_POINT_LOCALES = frozenset({"c", "posix", "c.utf-8", "c.utf8", "ucs_basic"})


def _sorts_by_code_point(conn: Connection) -> bool:
    """Whether the ledger compares text by code point, so that a range on a prefix holds every
    value starting with it: SQLite's binary collation does; PostgreSQL does under a C locale
    only. Asked of PostgreSQL's catalogue (as a row's JSON: the provider column is new in 15)."""
    if conn.dialect.name == "sqlite":
        return True
    if conn.dialect.name != "postgresql":
        return False
    row = conn.execute(
        sql_text("SELECT to_jsonb(d) FROM pg_database d WHERE d.datname = current_database()")
    ).scalar()
    if not isinstance(row, dict):
        return False
    provider = row.get("datlocprovider", "c")
    locale = row.get("datlocale") if provider == "b" else row.get("datcollate")
    return provider in ("c", "b") and str(locale).lower() in _CODE_POINT_LOCALES


def last_erased_at(entry: FromClause) -> ColumnElement[datetime]:
    """When the address of a suppression entry (``suppressions`` or an alias of it) was last
    erased: the time a new consent must be newer than to lift its suppression. ``erase`` keeps an
    address's entry when the address is erased again (nobody held it; a person came back with
    it; an erased person's other address already on the list), so the entry's ``created_at`` is
    its first erasure; each erasure moves its ``last_erased_at`` (migration 0018). Its own time
    where that is missing: no row consentsync writes lacks it."""
    return func.coalesce(entry.c.last_erased_at, entry.c.created_at)


def _link_json(link: CrmLink | None) -> dict[str, str] | None:
    if link is None:
        return None
    return {"connector": link.connector, "object": link.object_type, "id": link.record_id}
