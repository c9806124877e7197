"""figures: running totals of calls per day, resource, department and op; the signed daily reports of a
node's subtree; how far the audit chain was checked

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "figures_daily",
        sa.Column("node", sa.String(6), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("resource", sa.String(40), nullable=False),
        sa.Column("dept", sa.String(80), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("calls", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("latency_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("node", "day", "kind", "resource", "dept", "op", name="pk_figures_daily"),
    )
    op.create_table(
        "figure_reports",
        sa.Column("node", sa.String(6), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("change_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("node", "day", name="pk_figure_reports"),
        sa.UniqueConstraint("change_id", name="uq_figure_reports_change_id"),
    )
    op.create_table(
        "audit_checks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("broken_seq", sa.BigInteger, nullable=True),
        sa.Column("reason", sa.String(400), nullable=True),
        sa.Column("checked_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_checks")
    op.drop_table("figure_reports")
    op.drop_table("figures_daily")
