"""workers: heartbeats and the background lease of a node's workers; whose call an audit intent is;
the neighbours' health as every worker shows it

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("place", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("seen_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_workers_seen_at", "workers", ["seen_at"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(80), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "peer_status",
        sa.Column("peer", sa.String(6), primary_key=True),
        sa.Column("reachable", sa.Boolean, nullable=True),
        sa.Column("last_ok", sa.BigInteger, nullable=True),
        sa.Column("last_error", sa.String(400), nullable=True),
        sa.Column("last_failure", sa.BigInteger, nullable=True),
    )
    # Intents stored before this revision name no worker: they are taken as a stopped process's.
    with op.batch_alter_table("audit_intents") as batch:
        batch.add_column(sa.Column("worker", sa.String(80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_intents") as batch:
        batch.drop_column("worker")
    op.drop_table("peer_status")
    op.drop_table("leases")
    op.drop_table("workers")
