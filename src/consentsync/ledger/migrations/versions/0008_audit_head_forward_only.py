"""audit head moves forward only: the chain head can be moved to a later entry of the chain
(the append path), never back, never to a hash no entry has, never deleted

With the application running as a role that does not own the tables (``consentsync db
grant``), this trigger is what keeps that role from cutting the tail of the chain: it may
update ``audit_head`` only the way an append does. The owner can still drop the trigger; the
signed checkpoints (docs/tamper-evidence.md) catch what the owner does.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 09:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

REFUSED = "consentsync: audit_head only moves forward, to an entry of the chain"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
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
        op.execute(
            "CREATE TRIGGER audit_head_forward_only BEFORE UPDATE OR DELETE ON audit_head "
            "FOR EACH ROW EXECUTE FUNCTION consentsync_head_forward_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head "
            "FOR EACH STATEMENT EXECUTE FUNCTION consentsync_refuse_change()"
        )
    elif dialect == "sqlite":
        op.execute(
            "CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head "
            "WHEN NEW.id <> OLD.id OR NEW.seq < OLD.seq OR NOT ((NEW.seq = OLD.seq AND NEW.hash = OLD.hash) "
            "OR EXISTS (SELECT 1 FROM audit_entries e WHERE e.seq = NEW.seq AND e.hash = NEW.hash)) "
            f"BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head "
            f"BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_head_no_truncate ON audit_head")
        op.execute("DROP TRIGGER IF EXISTS audit_head_forward_only ON audit_head")
        op.execute("DROP FUNCTION IF EXISTS consentsync_head_forward_only()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_head_forward_only")
        op.execute("DROP TRIGGER IF EXISTS audit_head_no_delete")
