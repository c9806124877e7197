"""The queries every workflow's table answers (applications, feedback, data requests).

A workflow's table holds one row a document: the document as JSON (`doc`), the columns it is searched and
scheduled by (`<requester>_node`, `<requester>_dept`, `provider_node`, `provider_dept`, `status`, `overdue`,
`submitted_at`, the due date and completion time of each step), and the mirror's `version`,
`notify_pending` and `updated_at` (node.mirror). The tables differ in those names only, so the queries take
the table and the names from the workflow's definition (node.workflow.flow.Kind).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

# This module declares no table: each kind's own store does (node.applications.store, node.quality.store,
# node.requests.store).


async def get(conn: AsyncConnection, t: sa.Table, doc_id: str, *, for_update: bool = False) -> sa.Row | None:
    q = sa.select(t).where(t.c.id == doc_id)
    if for_update:
        q = q.with_for_update()
    return (await conn.execute(q)).first()


async def insert(conn: AsyncConnection, t: sa.Table, row: dict[str, Any]) -> None:
    await conn.execute(sa.insert(t).values(**row))


async def update(conn: AsyncConnection, t: sa.Table, doc_id: str, row: dict[str, Any],
                 expected_version: int | None = None) -> bool:
    """Replace a document's row; with `expected_version`, only if the row still holds that version (a
    transition made by another worker in between makes this one lose instead of overwrite). Returns
    whether the row was replaced."""
    q = sa.update(t).where(t.c.id == doc_id)
    if expected_version is not None:
        q = q.where(t.c.version == expected_version)
    return (await conn.execute(q.values(**row))).rowcount == 1


def visible(t: sa.Table, requester: str, node: str, dept: str | None, role: str | None) -> Any:
    """Which rows a caller sees: a department its own (as requester or provider), the node's staff all."""
    as_requester = t.c[f"{requester}_node"] == node
    as_provider = t.c.provider_node == node
    if dept is not None:
        as_requester = sa.and_(as_requester, t.c[f"{requester}_dept"] == dept)
        as_provider = sa.and_(as_provider, t.c.provider_dept == dept)
    if role == requester:
        return as_requester
    if role == "provider":
        return as_provider
    return sa.or_(as_requester, as_provider)


async def page(conn: AsyncConnection, t: sa.Table, where: Any, offset: int, limit: int) -> tuple[int, list[str]]:
    total = (await conn.execute(sa.select(sa.func.count()).select_from(t).where(where))).scalar_one()
    q = (sa.select(t.c.doc).where(where).order_by(t.c.submitted_at.desc(), t.c.id.desc()).offset(offset)
         .limit(limit))
    return int(total), [r[0] for r in (await conn.execute(q)).all()]


async def overdue_candidates(conn: AsyncConnection, t: sa.Table, node: str, today: str,
                             steps: list[tuple[tuple[str, ...], str]]) -> list[str]:
    """Documents held here as provider whose open step (statuses, due column) is past its due date and not
    yet flagged."""
    late = [sa.and_(t.c.status.in_(statuses), t.c[due] < today) for statuses, due in steps]
    q = (sa.select(t.c.id).where(t.c.provider_node == node, t.c.overdue.is_(False), sa.or_(*late))
         .order_by(t.c.submitted_at))
    return [r[0] for r in (await conn.execute(q)).all()]


async def stats_rows(conn: AsyncConnection, t: sa.Table, node: str, since: int, until: int,
                     columns: list[str]) -> list[sa.Row]:
    cols = ["provider_dept", "status", "overdue", "submitted_at", *columns]
    q = sa.select(*(t.c[c] for c in dict.fromkeys(cols))).where(
        t.c.provider_node == node, t.c.submitted_at >= since, t.c.submitted_at < until)
    return list((await conn.execute(q)).all())
