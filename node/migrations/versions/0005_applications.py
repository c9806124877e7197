"""applications: applications for grants (held at the provider's node, copied at the applicant's) and grants

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "applications",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("resource", sa.String(40), nullable=False),
        sa.Column("applicant_node", sa.String(6), nullable=False),
        sa.Column("applicant_dept", sa.String(32), nullable=False),
        sa.Column("provider_node", sa.String(6), nullable=False),
        sa.Column("provider_dept", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("overdue", sa.Boolean, nullable=False),
        sa.Column("submitted_at", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=True),
        sa.Column("review_due", sa.String(10), nullable=False),
        sa.Column("reviewed_at", sa.BigInteger, nullable=True),
        sa.Column("decision_due", sa.String(10), nullable=True),
        sa.Column("decided_at", sa.BigInteger, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("notify_pending", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
    )
    for column in ("resource", "applicant_dept", "provider_dept", "status", "submitted_at"):
        op.create_index(f"ix_applications_{column}", "applications", [column])
    op.create_table(
        "grants",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("application_id", sa.String(26), nullable=False),
        sa.Column("resource", sa.String(40), nullable=False),
        sa.Column("consumer_node", sa.String(6), nullable=False),
        sa.Column("consumer_dept", sa.String(32), nullable=False),
        sa.Column("issuer", sa.String(6), nullable=False),
        sa.Column("provider_dept", sa.String(32), nullable=False),
        sa.Column("valid_from", sa.BigInteger, nullable=False),
        sa.Column("valid_until", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger, nullable=True),
        sa.Column("revoke_reason", sa.Text, nullable=True),
        sa.Column("doc", sa.Text, nullable=False),
    )
    for column in ("application_id", "resource", "consumer_dept"):
        op.create_index(f"ix_grants_{column}", "grants", [column])


def downgrade() -> None:
    for column in ("application_id", "resource", "consumer_dept"):
        op.drop_index(f"ix_grants_{column}", table_name="grants")
    op.drop_table("grants")
    for column in ("resource", "applicant_dept", "provider_dept", "status", "submitted_at"):
        op.drop_index(f"ix_applications_{column}", table_name="applications")
    op.drop_table("applications")
