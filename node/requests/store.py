"""Data requests (held at the node asked, copied at the requester's): one row a request, its document as JSON
(`doc`) and the columns it is searched and scheduled by. Its queries are every workflow's (node.workflow.store)."""

from __future__ import annotations

import sqlalchemy as sa

from node.db import metadata

data_requests = sa.Table(
    "data_requests",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("requester_node", sa.String(6), nullable=False),
    sa.Column("requester_dept", sa.String(32), nullable=False, index=True),
    sa.Column("provider_node", sa.String(6), nullable=False),
    sa.Column("provider_dept", sa.String(32), nullable=True, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("overdue", sa.Boolean, nullable=False),
    sa.Column("submitted_at", sa.BigInteger, nullable=False, index=True),
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
