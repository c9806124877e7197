"""audit chain: a segment of the chain a process (PostgreSQL), so that workers do not take turns on one row

Revision ID: 0015
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Records chained before this revision (and every record on SQLite) have no segment: they form the one
    # chain they always did, numbered densely by the `audit` counter.
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("segment", sa.String(40), nullable=True))
        batch.add_column(sa.Column("segment_seq", sa.BigInteger, nullable=True))
        batch.create_index("ix_audit_log_segment", ["segment", "segment_seq"], unique=True)
    if op.get_bind().dialect.name == "postgresql":
        # A segment's records take their place in the node's order from a sequence, which holds no lock
        # until the commit; it starts after the records already stored.
        op.execute("CREATE SEQUENCE audit_seq")
        op.execute("SELECT setval('audit_seq', COALESCE((SELECT max(seq) FROM audit_log), 0) + 1, false)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE IF EXISTS audit_seq")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_index("ix_audit_log_segment")
        batch.drop_column("segment_seq")
        batch.drop_column("segment")
