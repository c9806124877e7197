"""Alembic environment: migrations run on the connection the node hands over (see node.db.upgrade)."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the node always provides one
    raise RuntimeError("govnode migrations run through `node.db.upgrade`, which provides the connection")

context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
