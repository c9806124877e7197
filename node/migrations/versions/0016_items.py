"""items: service items of every origin (signed, replicated as the feed `items`), refusals, 一证通办 totals

Revision ID: 0016
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

OUTCOMES = ("obtained", "verified", "mismatch", "not_found", "no_grant", "unreachable", "not_shareable")


def upgrade() -> None:
    op.create_table(
        "service_items",
        sa.Column("code", sa.String(40), primary_key=True),
        sa.Column("node", sa.String(6), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("basic_code", sa.String(20), nullable=False),
        sa.Column("dept", sa.String(32), nullable=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("scope", sa.String(10), nullable=False),
        sa.Column("search_text", sa.Text, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
        sa.Column("change_id", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("change_id", name="uq_service_items_change_id"),
    )
    op.create_index("ix_service_items_node", "service_items", ["node"])
    op.create_index("ix_service_items_basic_code", "service_items", ["basic_code"])
    op.create_table(
        "item_refusals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("code", sa.String(64), nullable=True),
        sa.Column("node", sa.String(16), nullable=True),
        sa.Column("received_from", sa.String(6), nullable=True),
        sa.Column("reason", sa.String(400), nullable=False),
    )
    op.create_table(
        "item_stats",
        sa.Column("item", sa.String(40), primary_key=True),
        sa.Column("material", sa.String(16), primary_key=True),
        sa.Column("dept", sa.String(32), nullable=False),
        sa.Column("calls", sa.BigInteger, nullable=False),
        *[sa.Column(o, sa.BigInteger, nullable=False) for o in OUTCOMES],
    )
    op.create_index("ix_item_stats_dept", "item_stats", ["dept"])


def downgrade() -> None:
    op.drop_index("ix_item_stats_dept", table_name="item_stats")
    op.drop_table("item_stats")
    op.drop_table("item_refusals")
    op.drop_index("ix_service_items_basic_code", table_name="service_items")
    op.drop_index("ix_service_items_node", table_name="service_items")
    op.drop_table("service_items")
    op.execute("DELETE FROM counters WHERE name LIKE 'item%'")
