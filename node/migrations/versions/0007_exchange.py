"""exchange: table sources (前置机库表交换) bound to resources

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exchange_sources",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("resource", sa.String(40), nullable=False),
        sa.Column("dept", sa.String(32), nullable=False),
        sa.Column("url_sealed", sa.Text, nullable=False),
        sa.Column("url_shown", sa.String(2000), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_exchange_sources_resource", "exchange_sources", ["resource"])


def downgrade() -> None:
    op.drop_index("ix_exchange_sources_resource", table_name="exchange_sources")
    op.drop_table("exchange_sources")
