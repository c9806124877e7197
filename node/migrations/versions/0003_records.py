"""records: the data of resources held at this node, with tombstones and a change id for the feed

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("resource_code", sa.String(40), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("data", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("change_id", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("resource_code", "key", name="pk_records"),
    )
    op.create_index("ix_records_resource_code_change_id", "records", ["resource_code", "change_id"])


def downgrade() -> None:
    op.drop_index("ix_records_resource_code_change_id", table_name="records")
    op.drop_table("records")
