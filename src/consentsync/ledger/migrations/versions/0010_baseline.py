"""baseline: the ledger's schema as of 0.1.0

This revision replaces development revisions 0001-0010 (audit chain, sync state, console users,
sync trust, the soft opt-in policy, console plans, sync speed, the forward-only audit head,
console sessions, the hub), squashed before 0.1.0, the first release. No released consentsync
ever wrote one of them, so no ledger in use has to be carried through them; a new ledger gets
today's schema in one step, and the history of how it was reached stays in git. It keeps the
id of the old head, 0010, so a ledger that the development chain brought to 0010 is already at
this revision and needs nothing. A ledger at 0001-0009 cannot be upgraded by this code: app.py
says so and names the last commit that can (799c0bf).

What it creates is frozen here, as it was at 0010: tables, constraint and index names (spelled
out by ``create_table`` below, not taken from ``schema.py``'s naming convention), the audit
chain's head row and the triggers that keep the audit tables append-only. Later changes to
``schema.py`` belong in a new revision, never here.

Revision ID: 0010
Revises:
Create Date: 2026-12-03 19:00:00
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = None
branch_labels = None
depends_on = None

INTEGER = sa.Integer()
TEXT = sa.Text()
BOOLEAN = sa.Boolean()
TIMESTAMP = sa.DateTime(timezone=True)

GENESIS = "0" * 64  # the audit chain's head before its first entry
APPEND_ONLY_TABLES = ("audit_entries", "consent_events")
# What the audit head's guard says when a change would move it back, elsewhere or away.
REFUSED = "consentsync: audit_head only moves forward, to an entry of the chain"

# Creation order (a table after those it references): downgrade drops them in reverse.
TABLES = (
    "audit_entries",
    "audit_head",
    "purposes",
    "suppressions",
    "subjects",
    "audit_details",
    "consent_events",
    "consent_states",
    "crm_links",
    "objections",
    "subject_identifiers",
    "state_changes",
    "quarantine",
    "sync_cursors",
    "sync_runs",
    "outbox",
    "crm_snapshots",
    "connector_leases",
    "sync_examine",
    "console_users",
    "console_login_failures",
    "plans",
    "console_sessions",
    "api_keys",
    "capture_requests",
    "notices",
    "confirmations",
)


def required(name: str, type_: sa.types.TypeEngine[Any], **options: Any) -> sa.Column[Any]:
    return sa.Column(name, type_, nullable=False, **options)


def optional(name: str, type_: sa.types.TypeEngine[Any]) -> sa.Column[Any]:
    return sa.Column(name, type_, nullable=True)


def create_table(
    table: str,
    *columns: sa.Column[Any],
    primary_key: Sequence[str] = ("id",),
    references: Mapping[str, str] | None = None,
    unique: Sequence[str | tuple[str, ...]] = (),
    indexes: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """``table`` with its constraints and indexes, named as the ledger's naming convention named
    them at 0010 (pk_, fk_, uq_ and ix_ with the table's name): ``references`` maps a column to the
    ``table.column`` it refers to, ``indexes`` a name's end (after ``ix_<table>_``) to its columns."""
    foreign_keys = [
        sa.ForeignKeyConstraint([column], [target], name=op.f(f"fk_{table}_{column}_{target.split('.')[0]}"))
        for column, target in (references or {}).items()
    ]
    unique_columns = [(one,) if isinstance(one, str) else one for one in unique]
    op.create_table(
        table,
        *columns,
        *foreign_keys,
        sa.PrimaryKeyConstraint(*primary_key, name=op.f(f"pk_{table}")),
        *(
            sa.UniqueConstraint(*names, name=op.f(f"uq_{table}_{'_'.join(names)}"))
            for names in unique_columns
        ),
    )
    for name_end, indexed in (indexes or {}).items():
        op.create_index(op.f(f"ix_{table}_{name_end}"), table, list(indexed))


def upgrade() -> None:
    create_ledger_tables()
    create_sync_tables()
    create_console_tables()
    create_hub_tables()
    op.execute(f"INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS}')")
    protect_audit_tables()


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)  # its indexes and triggers go with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION consentsync_head_forward_only()")
        op.execute("DROP FUNCTION consentsync_refuse_change()")


def create_ledger_tables() -> None:
    """People, their identifiers, consent evidence and state, objections, suppressions, CRM
    links and the audit chain."""
    create_table(
        "audit_entries",
        required("seq", INTEGER, autoincrement=False),
        required("at", TIMESTAMP),
        required("action", sa.String(64)),
        optional("subject_uid", sa.String(36)),
        optional("run_id", sa.String(36)),
        required("payload", TEXT),
        required("prev_hash", sa.String(64)),
        required("hash", sa.String(64)),
        primary_key=["seq"],
        indexes={"run_id": ["run_id"], "subject_uid": ["subject_uid"]},
    )
    create_table(
        "audit_head",
        required("id", INTEGER, autoincrement=False),
        required("seq", INTEGER),
        required("hash", sa.String(64)),
    )
    create_table(
        "purposes",
        required("key", sa.String(63)),
        required("name", sa.String(200)),
        required("direct_marketing", BOOLEAN),
        required("default_basis", sa.String(32)),
        optional("validity_days", INTEGER),
        required("objection_handling", sa.String(16)),
        required("updated_at", TIMESTAMP),
        optional("eprivacy", BOOLEAN),
        primary_key=["key"],
    )
    create_table(
        "suppressions",
        required("id", INTEGER),
        required("email_hmac", sa.String(64)),
        required("reason", sa.String(500)),
        required("created_at", TIMESTAMP),
        unique=["email_hmac"],
    )
    create_table(
        "subjects",
        required("id", INTEGER),
        required("uid", sa.String(36)),
        required("created_at", TIMESTAMP),
        optional("erased_at", TIMESTAMP),
        optional("suppression_id", INTEGER),
        required("restricted", BOOLEAN),
        references={"suppression_id": "suppressions.id"},
        unique=["uid"],
    )
    create_table(
        "audit_details",
        required("seq", INTEGER),
        optional("subject_id", INTEGER),
        optional("content", TEXT),
        primary_key=["seq"],
        references={"seq": "audit_entries.seq", "subject_id": "subjects.id"},
        indexes={"subject_id": ["subject_id"]},
    )
    create_table(
        "consent_events",
        required("id", INTEGER),
        required("subject_id", INTEGER),
        required("purpose", sa.String(63)),
        required("channel", sa.String(32)),
        required("status", sa.String(16)),
        optional("basis", sa.String(32)),
        optional("event_time", TIMESTAMP),
        required("recorded_at", TIMESTAMP),
        required("source", sa.String(200)),
        required("origin", sa.String(16)),
        optional("actor", sa.String(200)),
        optional("notice_version", sa.String(100)),
        optional("double_opt_in_at", TIMESTAMP),
        optional("evidence_ref", sa.String(500)),
        required("fingerprint", sa.String(64)),
        optional("run_id", sa.String(36)),
        optional("soft_opt_in_sale_ref", sa.String(200)),
        optional("soft_opt_in_similar_products", sa.String(200)),
        optional("soft_opt_in_refusal_at_collection", sa.String(200)),
        optional("soft_opt_in_refusal_in_messages", sa.String(200)),
        references={"purpose": "purposes.key", "subject_id": "subjects.id"},
        unique=[("fingerprint", "subject_id")],
    )
    create_table(
        "consent_states",
        required("subject_id", INTEGER),
        required("purpose", sa.String(63)),
        required("channel", sa.String(32)),
        required("summary", TEXT),
        required("status", sa.String(16)),
        required("basis", sa.String(32)),
        required("suppressed", BOOLEAN),
        required("rule", sa.String(64)),
        optional("since", TIMESTAMP),
        optional("expires_at", TIMESTAMP),
        required("updated_at", TIMESTAMP),
        primary_key=["subject_id", "purpose", "channel"],
        references={"purpose": "purposes.key", "subject_id": "subjects.id"},
        indexes={"expires_at": ["expires_at"], "status_since": ["status", "since"]},
    )
    create_table(
        "crm_links",
        required("id", INTEGER),
        required("subject_id", INTEGER),
        required("connector", sa.String(64)),
        required("object_type", sa.String(64)),
        required("record_id", sa.String(64)),
        required("linked_at", TIMESTAMP),
        optional("gone_at", TIMESTAMP),
        optional("merged_into", sa.String(64)),
        references={"subject_id": "subjects.id"},
        unique=[("connector", "object_type", "record_id")],
        indexes={"subject_id": ["subject_id"]},
    )
    create_table(
        "objections",
        required("id", INTEGER),
        required("subject_id", INTEGER),
        required("purpose", sa.String(63)),
        required("direct_marketing", BOOLEAN),
        required("status", sa.String(16)),
        required("raised_at", TIMESTAMP),
        required("recorded_at", TIMESTAMP),
        required("source", sa.String(200)),
        optional("decided_by", sa.String(200)),
        optional("decided_at", TIMESTAMP),
        references={"purpose": "purposes.key", "subject_id": "subjects.id"},
        indexes={"status_raised_at": ["status", "raised_at"], "subject_id": ["subject_id"]},
    )
    create_table(
        "subject_identifiers",
        required("id", INTEGER),
        required("subject_id", INTEGER),
        required("kind", sa.String(16)),
        required("value", sa.String(320)),
        references={"subject_id": "subjects.id"},
        unique=[("kind", "value")],
        indexes={"subject_id": ["subject_id"]},
    )


def create_sync_tables() -> None:
    """Sync runs, their cursors and leases, the change feed, quarantine, the outbox, what was last
    seen in each CRM record and the people a run must look at again."""
    create_table(
        "state_changes",
        required("id", INTEGER),
        required("subject_id", INTEGER),
        required("created_at", TIMESTAMP),
        references={"subject_id": "subjects.id"},
    )
    create_table(
        "quarantine",
        required("id", INTEGER),
        required("run_id", sa.String(36)),
        required("connector", sa.String(64)),
        required("object_type", sa.String(64)),
        required("record_id", sa.String(64)),
        required("stage", sa.String(16)),
        required("reason", TEXT),
        required("created_at", TIMESTAMP),
        optional("resolved_at", TIMESTAMP),
        optional("retry_requested_at", TIMESTAMP),
        optional("retry_requested_by", sa.String(200)),
        indexes={"open": ["connector", "resolved_at"], "run_id": ["run_id"]},
    )
    create_table(
        "sync_cursors",
        required("connector", sa.String(64)),
        required("object_type", sa.String(64)),
        required("cursor", TEXT),
        required("run_id", sa.String(36)),
        required("updated_at", TIMESTAMP),
        primary_key=["connector", "object_type"],
    )
    create_table(
        "sync_runs",
        required("id", sa.String(36)),
        required("connector", sa.String(64)),
        required("started_at", TIMESTAMP),
        optional("finished_at", TIMESTAMP),
        required("status", sa.String(16)),
        required("full_load", BOOLEAN),
        required("counts", TEXT),
        optional("error", TEXT),
        indexes={"connector_started_at": ["connector", "started_at"]},
    )
    create_table(
        "outbox",
        required("id", INTEGER),
        required("connector", sa.String(64)),
        required("object_type", sa.String(64)),
        required("record_id", sa.String(64)),
        required("subject_id", INTEGER),
        required("fields", TEXT),
        required("suppression", BOOLEAN),
        optional("rule", sa.String(64)),
        optional("run_id", sa.String(36)),
        required("created_at", TIMESTAMP),
        required("status", sa.String(16)),
        required("attempts", INTEGER),
        optional("last_error", TEXT),
        optional("done_at", TIMESTAMP),
        required("action", sa.String(16), server_default="update"),
        optional("sent_at", TIMESTAMP),
        references={"subject_id": "subjects.id"},
        indexes={
            "pending": ["connector", "status", "id"],
            "record": ["connector", "object_type", "record_id"],
        },
    )
    create_table(
        "crm_snapshots",
        required("link_id", INTEGER),
        required("evidence", TEXT),
        required("fields", TEXT),
        required("updated_at", TIMESTAMP),
        optional("identity", sa.String(64)),
        primary_key=["link_id"],
        references={"link_id": "crm_links.id"},
    )

    create_table(
        "connector_leases",
        required("connector", sa.String(64)),
        required("token", INTEGER),
        required("run_id", sa.String(36)),
        required("holder", sa.String(200)),
        required("acquired_at", TIMESTAMP),
        required("expires_at", TIMESTAMP),
        primary_key=["connector"],
    )
    create_table(
        "sync_examine",
        required("connector", sa.String(64)),
        required("subject_id", INTEGER),
        primary_key=["connector", "subject_id"],
        references={"subject_id": "subjects.id"},
    )


def create_console_tables() -> None:
    """The ops console's accounts, login throttling, sessions and push plans."""
    create_table(
        "console_users",
        required("id", INTEGER),
        required("name", sa.String(64)),
        required("role", sa.String(16)),
        required("password_hash", sa.String(255)),
        required("created_at", TIMESTAMP),
        required("password_changed_at", TIMESTAMP),
        required("disabled", BOOLEAN),
        unique=["name"],
    )
    create_table(
        "console_login_failures",
        required("id", INTEGER),
        # The account name tried and the client address, each as a SHA-256: throttling needs to
        # count them, not to know them.
        required("name_digest", sa.String(64)),
        required("client_digest", sa.String(64)),
        required("at", TIMESTAMP),
        indexes={
            "name_digest_at": ["name_digest", "at"],
            "client_digest_at": ["client_digest", "at"],
            "pair_at": ["name_digest", "client_digest", "at"],
        },
    )
    create_table(
        "plans",
        required("id", INTEGER),
        required("connector", sa.String(64)),
        required("digest", sa.String(64)),
        required("status", sa.String(16)),
        required("records", INTEGER),
        required("changes", TEXT),
        optional("items", TEXT),
        required("made_by", sa.String(64)),
        required("made_at", TIMESTAMP),
        optional("made_run_id", sa.String(36)),
        optional("decided_by", sa.String(64)),
        optional("decided_at", TIMESTAMP),
        optional("outcome", TEXT),
        optional("run_id", sa.String(36)),
        optional("pushed", INTEGER),
        indexes={"connector_id": ["connector", "id"]},
    )
    create_table(
        "console_sessions",
        required("id", INTEGER),
        required("token_hash", sa.String(64)),
        required("user_id", INTEGER),
        required("created_at", TIMESTAMP),
        required("last_seen_at", TIMESTAMP),
        required("expires_at", TIMESTAMP),
        optional("ended_at", TIMESTAMP),
        optional("user_agent_hash", sa.String(64)),
        references={"user_id": "console_users.id"},
        unique=["token_hash"],
        indexes={"user_id": ["user_id"]},
    )


def create_hub_tables() -> None:
    """The hub: API keys per capture source, idempotent captures, notices, confirmations by link."""
    create_table(
        "api_keys",
        required("id", INTEGER),
        required("name", sa.String(64)),
        required("source", sa.String(200)),
        required("purposes", TEXT),
        required("actions", TEXT),
        required("key_prefix", sa.String(16)),
        required("key_hash", sa.String(64)),
        optional("rate_per_minute", INTEGER),
        required("created_at", TIMESTAMP),
        optional("created_by", sa.String(64)),
        optional("revoked_at", TIMESTAMP),
        optional("last_used_at", TIMESTAMP),
        unique=["name", "key_hash"],
    )
    create_table(
        "capture_requests",
        required("id", INTEGER),
        required("key_id", INTEGER),
        required("idempotency_key", sa.String(255)),
        required("request_sha256", sa.String(64)),
        required("status_code", INTEGER),
        required("response", TEXT),
        required("created_at", TIMESTAMP),
        references={"key_id": "api_keys.id"},
        unique=[("key_id", "idempotency_key")],
    )
    create_table(
        "notices",
        required("id", INTEGER),
        required("purpose", sa.String(64)),
        required("version", sa.String(100)),
        required("language", sa.String(16)),
        required("sha256", sa.String(64)),
        required("text", TEXT),
        required("created_at", TIMESTAMP),
        optional("created_by", sa.String(64)),
        unique=[("purpose", "version", "language")],
    )
    create_table(
        "confirmations",
        required("id", INTEGER),
        required("token_hash", sa.String(64)),
        required("kind", sa.String(16)),
        required("subject_id", INTEGER),
        optional("purpose", sa.String(64)),
        optional("channel", sa.String(32)),
        optional("notice_version", sa.String(100)),
        required("source", sa.String(200)),
        required("requested_at", TIMESTAMP),
        required("expires_at", TIMESTAMP),
        optional("confirmed_at", TIMESTAMP),
        optional("lapsed_at", TIMESTAMP),
        references={"subject_id": "subjects.id"},
        unique=["token_hash"],
        indexes={"subject_id": ["subject_id"], "open": ["confirmed_at", "lapsed_at", "expires_at"]},
    )


def protect_audit_tables() -> None:
    """Rows of the append-only tables can be added, never changed or removed; the chain head can
    be moved to a later entry of the chain (the append path), never back, never to a hash no
    entry has, never deleted. With the application running as a role that does not own the tables
    (``consentsync db grant``), these triggers are what keep that role from rewriting the chain or
    cutting its tail; the owner can still drop them, and the signed checkpoints
    (docs/tamper-evidence.md) catch what the owner does. ``cli_audit.AUDIT_TRIGGERS`` names them."""
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(
            """
            CREATE FUNCTION consentsync_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'consentsync: % on % is refused: the table is append-only',
                    TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
            END $$
            """
        )
        op.execute(
            f"""
            CREATE FUNCTION consentsync_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' THEN
                    RAISE EXCEPTION '{REFUSED} (DELETE refused)' USING ERRCODE = 'insufficient_privilege';
                END IF;
                IF NEW.id <> OLD.id OR NEW.seq < OLD.seq
                   OR NOT ((NEW.seq = OLD.seq AND NEW.hash = OLD.hash)
                           OR EXISTS (SELECT 1 FROM audit_entries e
                                      WHERE e.seq = NEW.seq AND e.hash = NEW.hash)) THEN
                    RAISE EXCEPTION '{REFUSED} (seq % to %)', OLD.seq, NEW.seq
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
                RETURN NEW;
            END $$
            """
        )
        row_guards = [
            *((f"{table}_append_only", table, "consentsync_refuse_change") for table in APPEND_ONLY_TABLES),
            ("audit_head_forward_only", "audit_head", "consentsync_head_forward_only"),
        ]
        for trigger, table, function in row_guards:
            op.execute(
                f"CREATE TRIGGER {trigger} BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {function}()"
            )
        for table in (*APPEND_ONLY_TABLES, "audit_head"):
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION consentsync_refuse_change()"
            )
    elif dialect == "sqlite":
        for table in APPEND_ONLY_TABLES:
            for operation in ("UPDATE", "DELETE"):
                sqlite_refusal(
                    f"{table}_no_{operation.lower()}",
                    f"{operation} ON {table}",
                    f"consentsync: {operation} on {table} is refused: the table is append-only",
                )
        sqlite_refusal(
            "audit_head_forward_only",
            "UPDATE ON audit_head WHEN NEW.id <> OLD.id OR NEW.seq < OLD.seq "
            "OR NOT ((NEW.seq = OLD.seq AND NEW.hash = OLD.hash) OR EXISTS "
            "(SELECT 1 FROM audit_entries e WHERE e.seq = NEW.seq AND e.hash = NEW.hash))",
            REFUSED,
        )
        sqlite_refusal("audit_head_no_delete", "DELETE ON audit_head", REFUSED)


def sqlite_refusal(trigger: str, before: str, message: str) -> None:
    op.execute(f"CREATE TRIGGER {trigger} BEFORE {before} BEGIN SELECT RAISE(ABORT, '{message}'); END")
