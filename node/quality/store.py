"""Feedback (held at the provider's node, copied at the reporter's) and multi-source checks.

Each feedback is one row: its document as JSON (`doc`) and the columns it is searched and scheduled by;
`notify_pending` marks a change the other node has not been sent yet (cleared once it is in the durable outbox)."""

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


# Feedback -----------------------------------------------------------------------------------------------

async def get_feedback(conn: AsyncConnection, fb_id: str, *, for_update: bool = False) -> sa.Row | None:
    q = sa.select(feedback).where(feedback.c.id == fb_id)
    if for_update:
        q = q.with_for_update()
    return (await conn.execute(q)).first()


async def insert_feedback(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(sa.insert(feedback).values(**row))


async def update_feedback(conn: AsyncConnection, fb_id: str, row: dict[str, Any]) -> None:
    await conn.execute(sa.update(feedback).where(feedback.c.id == fb_id).values(**row))


async def list_feedback(conn: AsyncConnection, *, node: str, dept: str | None, role: str | None, status: str | None,
                        overdue: bool | None, resource: str | None, offset: int, limit: int) -> tuple[int, list[str]]:
    as_reporter = feedback.c.reporter_node == node
    as_provider = feedback.c.provider_node == node
    if dept is not None:
        as_reporter = sa.and_(as_reporter, feedback.c.reporter_dept == dept)
        as_provider = sa.and_(as_provider, feedback.c.provider_dept == dept)
    conds = [as_reporter if role == "reporter" else as_provider if role == "provider" else sa.or_(as_reporter,
                                                                                                  as_provider)]
    if status:
        conds.append(feedback.c.status == status)
    if overdue is not None:
        conds.append(feedback.c.overdue.is_(overdue))
    if resource:
        conds.append(feedback.c.resource == resource)
    where = sa.and_(*conds)
    total = (await conn.execute(sa.select(sa.func.count()).select_from(feedback).where(where))).scalar_one()
    q = (sa.select(feedback.c.doc).where(where).order_by(feedback.c.submitted_at.desc(), feedback.c.id.desc())
         .offset(offset).limit(limit))
    return int(total), [r[0] for r in (await conn.execute(q)).all()]


async def overdue_candidates(conn: AsyncConnection, node: str, today: str) -> list[str]:
    q = sa.select(feedback.c.id).where(
        feedback.c.provider_node == node, feedback.c.overdue.is_(False),
        feedback.c.status.in_(("open", "confirmed")), feedback.c.due < today,
    ).order_by(feedback.c.submitted_at)
    return [r[0] for r in (await conn.execute(q)).all()]


async def stats_rows(conn: AsyncConnection, node: str, since: int, until: int) -> list[sa.Row]:
    q = sa.select(feedback.c.provider_dept, feedback.c.status, feedback.c.overdue, feedback.c.due,
                  feedback.c.submitted_at, feedback.c.resolved_at).where(
        feedback.c.provider_node == node, feedback.c.submitted_at >= since, feedback.c.submitted_at < until)
    return list((await conn.execute(q)).all())


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
