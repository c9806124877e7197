"""licences: electronic licences issued here, the replicated signed index, refusals, issuers' resources

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "licences",
        sa.Column("identifier", sa.String(100), primary_key=True),
        sa.Column("dept", sa.String(32), nullable=False),
        sa.Column("serial", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("holder_digest", sa.String(64), nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
        sa.Column("issued_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_licences_dept", "licences", ["dept"])
    op.create_index("ix_licences_holder_digest", "licences", ["holder_digest"])
    op.create_table(
        "licence_index",
        sa.Column("identifier", sa.String(100), primary_key=True),
        sa.Column("node", sa.String(6), nullable=False),
        sa.Column("dept", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("holder_digest", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("entry", sa.Text, nullable=False),
        sa.Column("change_id", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("change_id", name="uq_licence_index_change_id"),
    )
    op.create_index("ix_licence_index_node", "licence_index", ["node"])
    op.create_index("ix_licence_index_holder_digest", "licence_index", ["holder_digest"])
    op.create_table(
        "licence_refusals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("identifier", sa.String(120), nullable=True),
        sa.Column("node", sa.String(16), nullable=True),
        sa.Column("received_from", sa.String(6), nullable=True),
        sa.Column("reason", sa.String(400), nullable=False),
    )
    op.create_table(
        "licence_issuers",
        sa.Column("dept", sa.String(32), primary_key=True),
        sa.Column("resource", sa.String(40), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("licence_issuers")
    op.drop_table("licence_refusals")
    op.drop_index("ix_licence_index_holder_digest", table_name="licence_index")
    op.drop_index("ix_licence_index_node", table_name="licence_index")
    op.drop_table("licence_index")
    op.drop_index("ix_licences_holder_digest", table_name="licences")
    op.drop_index("ix_licences_dept", table_name="licences")
    op.drop_table("licences")
    op.execute("DELETE FROM counters WHERE name LIKE 'licence%'")
