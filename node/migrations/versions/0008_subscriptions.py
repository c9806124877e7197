"""subscriptions: replicas (数据回流) and webhooks fed by record change feeds

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("resource", sa.String(40), nullable=False),
        sa.Column("provider_node", sa.String(6), nullable=False),
        sa.Column("dept", sa.String(32), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("url", sa.String(2000), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_subscriptions_resource", "subscriptions", ["resource"])
    op.create_index("ix_subscriptions_dept", "subscriptions", ["dept"])


def downgrade() -> None:
    op.drop_index("ix_subscriptions_dept", table_name="subscriptions")
    op.drop_index("ix_subscriptions_resource", table_name="subscriptions")
    op.drop_table("subscriptions")
    op.execute("DELETE FROM records WHERE resource_code LIKE 'replica/%'")
