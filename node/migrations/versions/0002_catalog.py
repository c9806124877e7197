"""catalog: entries of every origin as signed, refusals of received entries

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_entries",
        sa.Column("code", sa.String(40), primary_key=True),
        sa.Column("node", sa.String(6), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("provider_dept", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("share_type", sa.String(16), nullable=False),
        sa.Column("search_text", sa.Text, nullable=False),
        sa.Column("entry", sa.Text, nullable=False),
        sa.Column("change_id", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("change_id", name="uq_catalog_entries_change_id"),
    )
    op.create_index("ix_catalog_entries_node", "catalog_entries", ["node"])
    op.create_index("ix_catalog_entries_provider_dept", "catalog_entries", ["provider_dept"])
    op.create_table(
        "catalog_refusals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("code", sa.String(64), nullable=True),
        sa.Column("node", sa.String(16), nullable=True),
        sa.Column("received_from", sa.String(6), nullable=True),
        sa.Column("reason", sa.String(400), nullable=False),
    )
    op.bulk_insert(
        sa.table("counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger)),
        [{"name": "resource_serial", "value": 0}],
    )


def downgrade() -> None:
    op.drop_table("catalog_refusals")
    op.drop_table("catalog_entries")
    op.execute("DELETE FROM counters WHERE name = 'resource_serial'")
