"""quality: data-quality feedback (纠错) and multi-source checks (多元校核)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("resource", sa.String(40), nullable=False),
        sa.Column("reporter_node", sa.String(6), nullable=False),
        sa.Column("reporter_dept", sa.String(32), nullable=False),
        sa.Column("provider_node", sa.String(6), nullable=False),
        sa.Column("provider_dept", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("overdue", sa.Boolean, nullable=False),
        sa.Column("due", sa.String(10), nullable=False),
        sa.Column("submitted_at", sa.BigInteger, nullable=False),
        sa.Column("resolved_at", sa.BigInteger, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("notify_pending", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
    )
    op.create_index("ix_feedback_resource", "feedback", ["resource"])
    op.create_index("ix_feedback_reporter_dept", "feedback", ["reporter_dept"])
    op.create_index("ix_feedback_provider_dept", "feedback", ["provider_dept"])
    op.create_index("ix_feedback_status", "feedback", ["status"])
    op.create_table(
        "quality_checks",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("report", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quality_checks")
    op.drop_index("ix_feedback_status", table_name="feedback")
    op.drop_index("ix_feedback_provider_dept", table_name="feedback")
    op.drop_index("ix_feedback_reporter_dept", table_name="feedback")
    op.drop_index("ix_feedback_resource", table_name="feedback")
    op.drop_table("feedback")
