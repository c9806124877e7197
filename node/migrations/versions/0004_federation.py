"""federation: trust state, registry feed, invites, replay protection, feed cursors, outbox

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "federation_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "registry",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("node", sa.String(6), nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
        sa.Column("change_id", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("change_id", name="uq_registry_change_id"),
    )
    op.create_table(
        "invites",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("node", sa.String(6), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("used_at", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "seen_nonces",
        sa.Column("origin", sa.String(6), primary_key=True),
        sa.Column("nonce", sa.String(128), primary_key=True),
        sa.Column("ts", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_seen_nonces_ts", "seen_nonces", ["ts"])
    op.create_table(
        "seen_messages",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_seen_messages_at", "seen_messages", ["at"])
    op.create_table(
        "feed_cursors",
        sa.Column("peer", sa.String(6), primary_key=True),
        sa.Column("feed", sa.String(32), primary_key=True),
        sa.Column("cursor", sa.String(64), nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("peer", sa.String(6), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("dedup", sa.String(80), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
        sa.Column("last_error", sa.String(400), nullable=True),
        sa.UniqueConstraint("dedup", name="uq_outbox_dedup"),
    )
    op.create_index("ix_outbox_peer", "outbox", ["peer"])
    op.bulk_insert(
        sa.table("counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger)),
        [{"name": "registry_change", "value": 0}],
    )


def downgrade() -> None:
    for table in ("outbox", "feed_cursors", "seen_messages", "seen_nonces", "invites", "registry", "federation_state"):
        op.drop_table(table)
    op.execute("DELETE FROM counters WHERE name = 'registry_change'")
