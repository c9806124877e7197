"""seen_messages.applied: whether what an asynchronous message carries is stored (its claim alone is not)

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("seen_messages") as batch:
        batch.add_column(sa.Column("applied", sa.Boolean, nullable=False, server_default=sa.false()))
    # Messages received before this revision were acted on as soon as their claim committed: taken as
    # applied, so that a late retry of one is still a duplicate.
    op.execute(sa.text("UPDATE seen_messages SET applied = :yes").bindparams(yes=True))


def downgrade() -> None:
    with op.batch_alter_table("seen_messages") as batch:
        batch.drop_column("applied")
