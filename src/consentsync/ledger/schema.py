"""The ledger's tables (SQLAlchemy Core). Alembic migrations create them; this is their map.

Personal data (email addresses, free-text reasons) lives only in tables that erasure may change:
``subject_identifiers`` and ``audit_details``. The append-only tables (``consent_events``,
``audit_entries``) carry pseudonymous subject ids and content hashes only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.engine import Dialect

from consentsync.domain import ConsentStatus

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which keeps no offset) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger: times must carry an offset")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Timestamp = UTCDateTime()

subjects = Table(
    "subjects",
    metadata,
    Column("id", Integer, primary_key=True),
    # Pseudonymous public id: what the audit log and exports name instead of a person.
    Column("uid", String(36), nullable=False, unique=True),
    Column("created_at", Timestamp, nullable=False),
    Column("erased_at", Timestamp),
    Column("suppression_id", Integer, ForeignKey("suppressions.id")),
    Column("restricted", Boolean, nullable=False, default=False),
    # Set only for the people erased or created suppressed: the lookup of a new address among
    # the erased ones joins through it (migration 0012; without it the join read every subject).
    Index(
        "ix_subjects_suppression_id",
        "suppression_id",
        sqlite_where=text("suppression_id IS NOT NULL"),
        postgresql_where=text("suppression_id IS NOT NULL"),
    ),
)

subject_identifiers = Table(
    "subject_identifiers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subject_id", Integer, ForeignKey("subjects.id"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("value", String(320), nullable=False),
    # The character a CRM that keeps the Basic Multilingual Plane only stores in place of each
    # character beyond it (``Connector.folds_astral_to``), where the address came from such a
    # CRM's record and holds it (migration 0020): only then may it stand for a real address that
    # folds to it (``identity.holds_for``). NULL: the address is what it says ("?" is a "?").
    Column("folds_astral_to", String(8), nullable=True),
    # When the person left this address (migration 0022): a CRM record known by its id as theirs
    # that showed it was read showing another address of their own, and no live record of theirs
    # shows it. Whoever writes from it now may be someone else (docs/policy.md, "An address a
    # person no longer holds"). Cleared only when a record known by its id as theirs shows it
    # again; bound in the chain (``subject.identifier_left``, ``subject.identifier_held_again``).
    Column("left_at", Timestamp, nullable=True),
    UniqueConstraint("kind", "value"),
)

crm_links = Table(
    "crm_links",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subject_id", Integer, ForeignKey("subjects.id"), nullable=False, index=True),
    Column("connector", String(64), nullable=False),
    Column("object_type", String(64), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("linked_at", Timestamp, nullable=False),
    # Set when the CRM deleted the record (or merged it into ``merged_into``): the link is kept
    # (the person and their history stay) but nothing is pushed to it any more.
    Column("gone_at", Timestamp),
    Column("merged_into", String(64)),
    # The object of ``merged_into`` where it is not this record's (a lead converted into a
    # contact); NULL: the same object.
    Column("merged_into_object", String(64)),
    # True while the record is known gone from a write's answer only ("no such record"): a
    # deletion listing naming it later still takes its last no and its survivor. NULL: gone by a
    # listing or by our own delete.
    Column("gone_by_write", Boolean),
    # When the CRM created the record, where it said (``CrmRecord.created_at``) when the ledger
    # first linked it: an erasure's delete or anonymise reaches only the records held when it was
    # made (NULL: ``linked_at`` tells).
    Column("record_created_at", Timestamp),
    UniqueConstraint("connector", "object_type", "record_id"),
    # Partial: the links of records merged into others, looked up by their survivor's id along
    # chains of merges (an erasure sparing a survivor holding a person not erased, and finding
    # who holds the survivors of the erased people's records; migration 0025).
    Index(
        "ix_crm_links_merged_into",
        "connector",
        "merged_into",
        sqlite_where=text("merged_into IS NOT NULL"),
        postgresql_where=text("merged_into IS NOT NULL"),
    ),
)

purposes = Table(
    "purposes",
    metadata,
    Column("key", String(63), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("direct_marketing", Boolean, nullable=False),
    Column("default_basis", String(32), nullable=False),
    Column("validity_days", Integer),
    Column("objection_handling", String(16), nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("eprivacy", Boolean),  # follows PECR reg. 22 / ePrivacy Art. 13
)

consent_events = Table(
    "consent_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subject_id", Integer, ForeignKey("subjects.id"), nullable=False),
    Column("purpose", String(63), ForeignKey("purposes.key"), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("basis", String(32)),
    Column("event_time", Timestamp),
    Column("recorded_at", Timestamp, nullable=False),
    Column("source", String(200), nullable=False),
    Column("origin", String(16), nullable=False),
    Column("actor", String(200)),
    Column("notice_version", String(100)),
    Column("double_opt_in_at", Timestamp),
    Column("evidence_ref", String(500)),
    Column("fingerprint", String(64), nullable=False),
    Column("run_id", String(36)),
    # The PECR / ePrivacy soft opt-in's three conditions, each with its evidence.
    Column("soft_opt_in_sale_ref", String(200)),
    Column("soft_opt_in_similar_products", String(200)),
    Column("soft_opt_in_refusal_at_collection", String(200)),
    Column("soft_opt_in_refusal_in_messages", String(200)),
    # The language of the notice_version text the person was shown (migration 0021): the text
    # every proof of the event names. NULL where the capture did not say (before 0021, a CRM's
    # value): the version's first text in effect then is named.
    Column("notice_language", String(16)),
    # How far the clock that stamped event_time (a CRM's) may have run behind ours when the value
    # was read, in milliseconds (migration 0026): a no counts up to that much later than stamped
    # (reconcile.Ranked.of). NULL: not known to run behind (every event before 0026).
    Column("clock_lag_ms", Integer),
    # Replaying the same evidence must not add a row: the fingerprint is the statement's identity.
    # Keyed by subject first, so that new events land together (a fingerprint is a hash).
    UniqueConstraint("subject_id", "fingerprint"),
)

# The writes sent and not acknowledged: the condition of the partial index that finds them.
OUTBOX_UNANSWERED = "status <> 'done' AND sent_at IS NOT NULL"
_UNANSWERED = text(OUTBOX_UNANSWERED)
_REQUESTED = text(f"status = '{ConsentStatus.REQUESTED.value}'")

consent_states = Table(
    "consent_states",
    metadata,
    Column("subject_id", Integer, ForeignKey("subjects.id"), primary_key=True),
    Column("purpose", String(63), ForeignKey("purposes.key"), primary_key=True),
    Column("channel", String(32), primary_key=True),
    Column("summary", Text, nullable=False),
    # What the evidence says (status, basis, since, expires_at) and the effective suppression and
    # rule as of updated_at, for queries; readers recompute the effective state against the clock.
    Column("status", String(16), nullable=False),
    Column("basis", String(32), nullable=False),
    Column("suppressed", Boolean, nullable=False),
    Column("rule", String(64), nullable=False),
    Column("since", Timestamp),
    Column("expires_at", Timestamp),
    Column("updated_at", Timestamp, nullable=False),
    # Partial: each holds only the rows its queries ask for (requested consents by age, consents
    # with an expiry), so that most state writes move no entry of either; their keys are event
    # times, written in no order (migration 0012).
    Index(
        "ix_consent_states_requested_since",
        "since",
        sqlite_where=_REQUESTED,
        postgresql_where=_REQUESTED,
    ),
    Index(
        "ix_consent_states_expires_at",
        "expires_at",
        sqlite_where=text("expires_at IS NOT NULL"),
        postgresql_where=text("expires_at IS NOT NULL"),
    ),
)

# The condition of ``ix_consent_states_requested_since`` as a query must write it: a planner
# uses a partial index only where the query's own terms imply the index's, and a generic plan of
# a prepared statement (PostgreSQL's, after psycopg prepares a repeated query) does not know
# what a bound parameter holds.
STATE_IS_REQUESTED = consent_states.c.status == literal_column(f"'{ConsentStatus.REQUESTED.value}'")

objections = Table(
    "objections",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subject_id", Integer, ForeignKey("subjects.id"), nullable=False, index=True),
    Column("purpose", String(63), ForeignKey("purposes.key"), nullable=False),
    Column("direct_marketing", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("raised_at", Timestamp, nullable=False),
    Column("recorded_at", Timestamp, nullable=False),
    Column("source", String(200), nullable=False),
    Column("decided_by", String(200)),
    Column("decided_at", Timestamp),
    Index("ix_objections_status_raised_at", "status", "raised_at"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("id", Integer, primary_key=True),
    # HMAC-SHA256 of the normalised email under the configured key: never the address itself.
    Column("email_hmac", String(64), nullable=False, unique=True),
    Column("reason", String(500), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    # When the address was last erased (migration 0018): an erasure of an address already on the
    # list keeps its entry (and its created_at, the first erasure) and moves this on; a consent
    # lifts the suppression only if newer (``identity.last_erased_at``). Set on every row (the
    # migration backfilled the older ones); nullable only because SQLite adds no NOT NULL
    # column to a table with rows (and rebuilding this one would drop what references it).
    Column("last_erased_at", Timestamp),
)

audit_entries = Table(
    "audit_entries",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", Timestamp, nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject_uid", String(36)),
    Column("run_id", String(36), index=True),
    Column("payload", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # The person's row, which a person's trail is read by (migration 0013): ids grow as people
    # are created, so a sync's entries land at the end of the index, not at a random uid's place.
    # Outside the chain; ``audit.verify`` checks it names the person the payload names.
    Column("subject_id", Integer),
    Index("ix_audit_entries_subject_id", "subject_id"),
    # Entries written before 0013, and any naming no known person, are found by uid.
    Index(
        "ix_audit_entries_subject_uid_unlinked",
        "subject_uid",
        sqlite_where=text("subject_id IS NULL"),
        postgresql_where=text("subject_id IS NULL"),
    ),
)

audit_details = Table(
    "audit_details",
    metadata,
    Column("seq", Integer, ForeignKey("audit_entries.seq"), primary_key=True),
    Column("subject_id", Integer, ForeignKey("subjects.id"), index=True),
    # Free text that may hold personal data; the chain holds only its SHA-256.
    Column("content", Text),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

# -- synchronisation -----------------------------------------------------------------------------

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("connector", String(64), nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp),
    # running, succeeded, stopped (budget or rate limit: resumes next run), failed, dry_run
    Column("status", String(16), nullable=False),
    Column("full_load", Boolean, nullable=False),
    Column("counts", Text, nullable=False),
    Column("error", Text),
    Index("ix_sync_runs_connector_started_at", "connector", "started_at"),
)

sync_cursors = Table(
    "sync_cursors",
    metadata,
    Column("connector", String(64), primary_key=True),
    Column("object_type", String(64), primary_key=True),
    Column("cursor", Text, nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", String(36), nullable=False, index=True),
    Column("connector", String(64), nullable=False),
    Column("object_type", String(64), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("stage", String(16), nullable=False),  # pull (mapping, identity) or push (CRM refused)
    Column("reason", Text, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("resolved_at", Timestamp),
    # Set by ops (console or CLI): the next run re-reads the record by id and resolves the row.
    Column("retry_requested_at", Timestamp),
    Column("retry_requested_by", String(200)),
    Index("ix_quarantine_open", "connector", "resolved_at"),
)

# How the fields text of a shared record's snapshot starts (ledger/shared_marker.py: canonical
# JSON of its marker key, which writes the key's NUL as an escape, so the text is ASCII and
# PostgreSQL can hold it), and the condition of the partial index holding those snapshots only
# (migration 0024). A literal, in the index and in the query alike: SQLite and PostgreSQL use a
# partial index only where the query's own terms match the index's, and a generic plan of a
# prepared statement does not know what a bound parameter holds. ``substr``, not LIKE: both
# databases write it alike, and LIKE's escapes differ (a backslash is PostgreSQL's default one).
SHARED_SNAPSHOT_PREFIX = '{"\\u0000shared_with":'
# By database: on PostgreSQL an escape string (E'...', its backslash doubled), read alike whatever
# the server's standard_conforming_strings says (off, a plain literal's backslash starts an
# escape and "\u0000" is refused: every erasure and the migration failed; session 66 review).
SNAPSHOT_IS_SHARED = {
    "sqlite": f"substr(fields, 1, {len(SHARED_SNAPSHOT_PREFIX)}) = '{SHARED_SNAPSHOT_PREFIX}'",
    "postgresql": f"substr(fields, 1, {len(SHARED_SNAPSHOT_PREFIX)}) = "
    f"E'{SHARED_SNAPSHOT_PREFIX.replace(chr(92), chr(92) * 2)}'",
}

# What consentsync last saw in (or wrote to) each linked CRM record: the consent values it took
# as evidence and the values of the fields it pushes. Undated values are evidence only when they
# change, and pushes are made only where the CRM differs from the ledger.
crm_snapshots = Table(
    "crm_snapshots",
    metadata,
    Column("link_id", Integer, ForeignKey("crm_links.id"), primary_key=True),
    Column("evidence", Text, nullable=False),
    Column("fields", Text, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # A keyed hash (the erasure key's HMAC) of the record's identity as last read: its address.
    # With ``fields`` it tells a record read again unchanged (the look-back window, our own
    # writes read back) without resolving who it is again. Never the address itself.
    Column("identity", String(64)),
    # The records last read showing an address (by its keyed hash): an erasure's or a
    # restriction's holders, the access export's "records of others", whether a person still
    # shows an address they took another for (migration 0022; without it each read scanned).
    Index("ix_crm_snapshots_identity", "identity"),
    # Partial: the snapshots of records other people's records point to (a handful), which an
    # erasure reads to have their people examined (``shared_marker.sharing_with``; migration
    # 0024: before it each erasure read every snapshot's text).
    Index(
        "ix_crm_snapshots_shared",
        "link_id",
        sqlite_where=text(SNAPSHOT_IS_SHARED["sqlite"]),
        postgresql_where=text(SNAPSHOT_IS_SHARED["postgresql"]),
    ),
)

# People a sync run must look at again (what to push to their records of this connector): each
# page marks them in its own transaction, and they are examined once, after the pages, however
# many pages named them. A run that stops leaves its marks for the next run.
sync_examine = Table(
    "sync_examine",
    metadata,
    Column("connector", String(64), primary_key=True),
    Column("subject_id", Integer, ForeignKey("subjects.id"), primary_key=True),
)

# The ledger's change feed: a row per subject whose effective state changed, written in the same
# transaction as the change. Each connector follows it (its position is a sync cursor) to push
# what changed elsewhere, an objection decided by ops, an erasure, another CRM's withdrawal.
state_changes = Table(
    "state_changes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subject_id", Integer, ForeignKey("subjects.id"), nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

# Transactional outbox: written in the same transaction as the ledger change that implies it,
# marked done only when the CRM acknowledged the write.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("connector", String(64), nullable=False),
    Column("object_type", String(64), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("subject_id", Integer, ForeignKey("subjects.id"), nullable=False),
    Column("fields", Text, nullable=False),
    Column("suppression", Boolean, nullable=False),
    Column("rule", String(64)),
    Column("run_id", String(36)),
    Column("created_at", Timestamp, nullable=False),
    Column("status", String(16), nullable=False),  # pending, done, dead, superseded
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("done_at", Timestamp),
    # update (set ``fields``) or delete (an erasure passed on with the ``delete`` action)
    Column("action", String(16), nullable=False, server_default="update"),
    # Committed just before the row is handed to the CRM: a row sent and not acknowledged (the
    # answer lost to a crash) is recognised when its values are read back, never taken as the
    # person's own choice.
    Column("sent_at", Timestamp),
    Index("ix_outbox_pending", "connector", "status", "id"),
    Index("ix_outbox_record", "connector", "object_type", "record_id"),
    # Partial: the writes sent and not acknowledged (or given up, or superseded, after being
    # sent), which a page read back must recognise as ours. Nearly every row ends done, so a
    # page of records finds its few candidates here instead of reading every record's rows
    # (migration 0015).
    Index(
        "ix_outbox_unanswered",
        "connector",
        "object_type",
        "record_id",
        sqlite_where=_UNANSWERED,
        postgresql_where=_UNANSWERED,
    ),
)

# Who owns a connector's runs: a lease with a fencing token that grows with every new owner.
# Every page commit and every push checks the token in its own transaction, so a run that lost
# ownership (its database session dropped, its lease expired and taken over) can neither commit
# nor push again.
connector_leases = Table(
    "connector_leases",
    metadata,
    Column("connector", String(64), primary_key=True),
    Column("token", Integer, nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("holder", String(200), nullable=False),  # host:pid, for ops and for crashed-run recovery
    Column("acquired_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
)

# -- the ops console ------------------------------------------------------------------------------

console_users = Table(
    "console_users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # viewer, reviewer, admin
    Column("password_hash", String(255), nullable=False),  # argon2id, with its parameters
    Column("created_at", Timestamp, nullable=False),
    Column("password_changed_at", Timestamp, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
)

# Failed logins, for throttling: digests of the name tried and the client, never either in clear.
console_login_failures = Table(
    "console_login_failures",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name_digest", String(64), nullable=False),
    Column("client_digest", String(64), nullable=False),
    Column("at", Timestamp, nullable=False),
    Index("ix_console_login_failures_name_digest_at", "name_digest", "at"),
    Index("ix_console_login_failures_client_digest_at", "client_digest", "at"),
    Index("ix_console_login_failures_pair_at", "name_digest", "client_digest", "at"),
)

# Console sessions: the cookie holds a random id, this table its SHA-256 only.
# Logging out, disabling the account, a new password (the other sessions) and an admin end one
# by setting ended_at; an ended session never comes back.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("user_id", Integer, ForeignKey("console_users.id"), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("last_seen_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("ended_at", Timestamp),
    Column("user_agent_hash", String(64)),
    Index("ix_console_sessions_user_id", "user_id"),
)

# Push plans made in the console (issue 13): what a run would push to a CRM, kept for an admin to
# approve (applied exactly, at most once) or reject. A table rather than the audit log: a plan's
# status changes (pending -> applied, refused, failed, rejected, superseded) and its approval must
# be taken once only (a conditional update), and its items hold CRM field values, the old values
# of an anonymising erasure included, which must not enter the append-only chain. The items are
# kept only while the plan awaits a decision (NULL after); who each record belongs to is looked
# up when shown, never stored. The audit log has plan.made, plan.applied and plan.rejected.
plans = Table(
    "plans",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("connector", String(64), nullable=False),
    Column("digest", String(64), nullable=False),
    # pending, applying, applied, refused (outdated), failed, rejected, superseded
    Column("status", String(16), nullable=False),
    Column("records", Integer, nullable=False),
    Column("changes", Text, nullable=False),  # counts per object, field and new value (JSON)
    Column("items", Text),  # the plan's records (JSON), while pending
    Column("made_by", String(64), nullable=False),
    Column("made_at", Timestamp, nullable=False),
    Column("made_run_id", String(36)),  # the dry run that computed it
    Column("decided_by", String(64)),
    Column("decided_at", Timestamp),
    Column("outcome", Text),  # the rejection's reason, the refusal's or the run's error
    Column("run_id", String(36)),  # the run that applied it
    Column("pushed", Integer),
    Index("ix_plans_connector_id", "connector", "id"),
)

# The hub (issue 18): consent captured where the person acts, not only read from CRMs.
#
# An API key per capture source (a web form, a shop, a sending tool). Only its SHA-256 is kept:
# the key is 32 random bytes, so a plain hash cannot be reversed, and a copy of the table opens
# nothing. ``purposes`` and ``actions`` (JSON lists, ``*`` for any) scope what it may do.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("source", String(200), nullable=False),
    Column("purposes", Text, nullable=False),
    Column("actions", Text, nullable=False),
    Column("key_prefix", String(16), nullable=False),  # shown in lists, to tell keys apart
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("rate_per_minute", Integer),  # None: hub.rate_per_minute
    Column("created_at", Timestamp, nullable=False),
    Column("created_by", String(64)),
    Column("revoked_at", Timestamp),
    Column("last_used_at", Timestamp),
)

# A capture retried with the same Idempotency-Key records once: the first answer is kept and
# given again; the same key with another request is refused. Written in the transaction that
# records the capture, so the two cannot disagree.
capture_requests = Table(
    "capture_requests",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key_id", Integer, ForeignKey("api_keys.id"), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("request_sha256", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    UniqueConstraint("key_id", "idempotency_key"),
)

# The texts people are shown when asked for consent, per purpose, versioned and content-hashed:
# a capture names the version shown, and the text it names can be produced years later.
notices = Table(
    "notices",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("purpose", String(64), nullable=False),
    Column("version", String(100), nullable=False),
    Column("language", String(16), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("created_by", String(64)),
    # Since when the text was shown (migration 0019): a grant naming the version is refused if
    # dated before it (Art. 7(1)). Earlier than created_at for a text registered after it was
    # shown (history imported); NULL (registered before 0019): from created_at.
    Column("in_effect_from", Timestamp),
    UniqueConstraint("purpose", "version", "language"),
)

# Things a person confirms by following a link mailed to them: a double opt-in, an erasure
# asked for on the preference page. The link carries a random token; only its SHA-256 is kept.
confirmations = Table(
    "confirmations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # double_opt_in, erasure
    Column("subject_id", Integer, ForeignKey("subjects.id"), nullable=False),
    Column("purpose", String(64)),
    Column("channel", String(32)),
    Column("notice_version", String(100)),
    # The language of the notice text a sign-up was shown, or a request's or renewal's page shows
    # (migration 0021), kept until the link is confirmed; NULL where none was named.
    Column("notice_language", String(16)),
    Column("source", String(200), nullable=False),
    Column("requested_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("confirmed_at", Timestamp),
    Column("lapsed_at", Timestamp),
    Index("ix_confirmations_subject_id", "subject_id"),
    Index("ix_confirmations_open", "confirmed_at", "lapsed_at", "expires_at"),
)

# -- the ledger's own settings --------------------------------------------------------------------

# Facts about the ledger as a whole, one row each (migration 0014). ``erasure_key_check``: a
# check value of the erasure key its suppressions, pseudonyms and links are keyed with (an HMAC
# of a fixed text under the key, truncated: never the key), so that a process opening it with
# another key (an environment variable winning over the key file, a rotated or mistyped key) is
# refused instead of no longer recognising the erased people it then imports again.
ledger_settings = Table(
    "ledger_settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
    Column("set_at", Timestamp, nullable=False),
)
