"""console: indexes for the auditor's filters of the audit log (department, resource, person, operation,
outcome), each with the sequence number the pages are ordered by (the department's and the resource's
replace their one-column indexes)

Revision ID: 0014
Revises: 0012
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_audit_log_actor", "audit_log")
    op.drop_index("ix_audit_log_resource", "audit_log")
    op.create_index("ix_audit_log_actor_seq", "audit_log", ["actor", "seq"])
    op.create_index("ix_audit_log_resource_seq", "audit_log", ["resource", "seq"])
    op.create_index("ix_audit_log_user_seq", "audit_log", ["user", "seq"])
    op.create_index("ix_audit_log_action_seq", "audit_log", ["action", "seq"])
    op.create_index("ix_audit_log_outcome_seq", "audit_log", ["outcome", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_outcome_seq", "audit_log")
    op.drop_index("ix_audit_log_action_seq", "audit_log")
    op.drop_index("ix_audit_log_user_seq", "audit_log")
    op.drop_index("ix_audit_log_resource_seq", "audit_log")
    op.drop_index("ix_audit_log_actor_seq", "audit_log")
    op.create_index("ix_audit_log_resource", "audit_log", ["resource"])
    op.create_index("ix_audit_log_actor", "audit_log", ["actor"])
