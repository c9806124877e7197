"""lists: joint reward and punishment lists and entries of every origin (the `lists` feed), hits reported to
this node's lists (双反馈), lists kept in step with a resource, refusals of received list objects

Revision ID: 0018
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lists",
        sa.Column("code", sa.String(16), primary_key=True),
        sa.Column("node", sa.String(6), nullable=False),
        sa.Column("dept", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
        sa.Column("change_id", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("change_id", name="uq_lists_change_id"),
    )
    op.create_index("ix_lists_node", "lists", ["node"])
    op.create_index("ix_lists_dept", "lists", ["dept"])
    op.create_table(
        "list_entries",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("list", sa.String(16), nullable=False),
        sa.Column("node", sa.String(6), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("valid_from", sa.String(10), nullable=False),
        sa.Column("valid_until", sa.String(10), nullable=True),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
        sa.Column("change_id", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("change_id", name="uq_list_entries_change_id"),
    )
    op.create_index("ix_list_entries_list", "list_entries", ["list"])
    op.create_index("ix_list_entries_digest", "list_entries", ["digest"])
    op.create_table(
        "list_hits",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entry", sa.String(26), nullable=False),
        sa.Column("list", sa.String(16), nullable=False),
        sa.Column("checked_node", sa.String(6), nullable=False),
        sa.Column("checked_dept", sa.String(32), nullable=False),
        sa.Column("checked_user", sa.String(64), nullable=True),
        sa.Column("purpose", sa.String(200), nullable=False),
        sa.Column("checked_at", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_list_hits_entry", "list_hits", ["entry"])
    op.create_index("ix_list_hits_list", "list_hits", ["list"])
    op.create_table(
        "list_sources",
        sa.Column("list", sa.String(16), primary_key=True),
        sa.Column("resource", sa.String(40), nullable=False),
        sa.Column("binding", sa.Text, nullable=False),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("synced_at", sa.BigInteger, nullable=True),
        sa.Column("entries", sa.Integer, nullable=False),
        sa.Column("error", sa.String(400), nullable=True),
    )
    op.create_index("ix_list_sources_resource", "list_sources", ["resource"])
    op.create_table(
        "list_refusals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("key", sa.String(120), nullable=True),
        sa.Column("node", sa.String(16), nullable=True),
        sa.Column("received_from", sa.String(6), nullable=True),
        sa.Column("reason", sa.String(400), nullable=False),
    )


def downgrade() -> None:
    for table in ("list_refusals", "list_sources", "list_hits", "list_entries", "lists"):
        op.drop_table(table)
