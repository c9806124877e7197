"""workflow: data requests (供需对接), the third kind of document on the one workflow mechanism

Revision ID: 0017
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_requests",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("requester_node", sa.String(6), nullable=False),
        sa.Column("requester_dept", sa.String(32), nullable=False),
        sa.Column("provider_node", sa.String(6), nullable=False),
        sa.Column("provider_dept", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("overdue", sa.Boolean, nullable=False),
        sa.Column("submitted_at", sa.BigInteger, nullable=False),
        sa.Column("assign_due", sa.String(10), nullable=False),
        sa.Column("assigned_at", sa.BigInteger, nullable=True),
        sa.Column("answer_due", sa.String(10), nullable=True),
        sa.Column("answered_at", sa.BigInteger, nullable=True),
        sa.Column("entry_code", sa.String(40), nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("notify_pending", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
    )
    for col in ("requester_dept", "provider_dept", "status", "submitted_at"):
        op.create_index(f"ix_data_requests_{col}", "data_requests", [col])


def downgrade() -> None:
    op.drop_table("data_requests")
