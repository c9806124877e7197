"""Feedback (held at the provider's node, copied at the reporter's) and multi-source checks.

Each feedback is one row: its document as JSON (`doc`) and the columns it is searched and scheduled by;
`notify_pending` marks a change the other node has not been sent yet (cleared once it is in the durable outbox).
Its queries are every workflow's (node.workflow.store)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.data.store import records
from node.db import metadata

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("resource", sa.String(40), nullable=False, index=True),
    sa.Column("reporter_node", sa.String(6), nullable=False),
    sa.Column("reporter_dept", sa.String(32), nullable=False, index=True),
    sa.Column("provider_node", sa.String(6), nullable=False),
    sa.Column("provider_dept", sa.String(32), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("overdue", sa.Boolean, nullable=False),
    sa.Column("due", sa.String(10), nullable=False),
    sa.Column("submitted_at", sa.BigInteger, nullable=False),
    sa.Column("resolved_at", sa.BigInteger, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("notify_pending", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
)

quality_checks = sa.Table(
    "quality_checks",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_by", sa.String(80), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("report", sa.Text, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)


# Checks -------------------------------------------------------------------------------------------------

async def insert_check(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(sa.insert(quality_checks).values(**row))


async def get_check(conn: AsyncConnection, check_id: str) -> sa.Row | None:
    return (await conn.execute(sa.select(quality_checks).where(quality_checks.c.id == check_id))).first()


async def list_checks(conn: AsyncConnection) -> list[sa.Row]:
    q = sa.select(quality_checks).order_by(quality_checks.c.created_at.desc()).limit(500)
    return list((await conn.execute(q)).all())


async def save_check(conn: AsyncConnection, check_id: str, status: str, report: str | None, at: int) -> None:
    await conn.execute(sa.update(quality_checks).where(quality_checks.c.id == check_id)
                       .values(status=status, report=report, updated_at=at))


async def interrupt_running(conn: AsyncConnection, at: int) -> None:
    await conn.execute(sa.update(quality_checks).where(quality_checks.c.status == "running")
                       .values(status="interrupted", updated_at=at))


async def live_records(conn: AsyncConnection, code: str, after: str | None, limit: int) -> list[sa.Row]:
    q = sa.select(records.c.key, records.c.data).where(records.c.resource_code == code, records.c.deleted.is_(False))
    if after is not None:
        q = q.where(records.c.key > after)
    return list((await conn.execute(q.order_by(records.c.key).limit(limit))).all())
