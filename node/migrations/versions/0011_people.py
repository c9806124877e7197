"""people: portal accounts of a department, their sessions, and the person named in audit records

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("username", sa.String(32), primary_key=True),
        sa.Column("dept_code", sa.String(32), sa.ForeignKey("departments.code"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("display_name", sa.String(50), nullable=True),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("must_change", sa.Boolean, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("locked_until", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("last_login_at", sa.BigInteger, nullable=True),
        sa.Column("disabled_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_users_dept_code", "users", ["dept_code"])
    op.create_table(
        "portal_sessions",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("username", sa.String(32), sa.ForeignKey("users.username"), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("seen_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_portal_sessions_username", "portal_sessions", ["username"])
    op.create_index("ix_portal_sessions_seen_at", "portal_sessions", ["seen_at"])
    # Records made before people existed keep user NULL, and their hashes (which cover user only when set).
    op.add_column("audit_log", sa.Column("user", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("audit_log", "user")
    op.drop_table("portal_sessions")
    op.drop_table("users")
