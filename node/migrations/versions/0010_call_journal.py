"""call journal: a write's audit intent commits with the write; idempotency keys for retried writes

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_intents",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("call_key", sa.String(26), nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("fields", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_intents_call_key", "audit_intents", ["call_key"])
    op.create_index("ix_audit_intents_at", "audit_intents", ["at"])
    op.create_table(
        "idempotency_keys",
        sa.Column("actor", sa.String(80), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("content_type", sa.String(100), nullable=True),
        sa.Column("body", sa.Text, nullable=True),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("audit_intents")
