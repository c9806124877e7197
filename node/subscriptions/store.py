"""Subscriptions held at the subscriber's node, and the reads of the record change feed they are served from.

A replica's records live in node.data's `records` table under the resource code `replica/<subscription id>`
(never a catalog code), so the sharing service reads them with the same statements as any resource's records;
the subscription's cursor moves in the same transaction as the records it applied."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.data.store import records
from node.db import metadata

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("resource", sa.String(40), nullable=False, index=True),
    sa.Column("provider_node", sa.String(6), nullable=False),
    sa.Column("dept", sa.String(32), nullable=False, index=True),
    sa.Column("mode", sa.String(8), nullable=False),
    sa.Column("url", sa.String(2000), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("cursor", sa.BigInteger, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

REPLICA_PREFIX = "replica/"


def replica_code(subscription_id: str) -> str:
    return REPLICA_PREFIX + subscription_id


def _dumps(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


async def insert(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(sa.insert(subscriptions).values(**{**row, "state": _dumps(row["state"])}))


async def active(conn: AsyncConnection) -> list[sa.Row]:
    q = sa.select(subscriptions).where(subscriptions.c.status == "active").order_by(subscriptions.c.created_at)
    return list((await conn.execute(q)).all())


async def get(conn: AsyncConnection, sub_id: str) -> sa.Row | None:
    return (await conn.execute(sa.select(subscriptions).where(subscriptions.c.id == sub_id))).first()


async def listing(conn: AsyncConnection, dept: str | None) -> list[sa.Row]:
    q = sa.select(subscriptions).order_by(subscriptions.c.created_at.desc())
    if dept is not None:
        q = q.where(subscriptions.c.dept == dept)
    return list((await conn.execute(q.limit(1000))).all())


async def save(conn: AsyncConnection, sub_id: str, *, cursor: int, state: dict[str, Any], at: int,
               status: str | None = None) -> None:
    values: dict[str, Any] = {"cursor": cursor, "state": _dumps(state), "updated_at": at}
    if status is not None:
        values["status"] = status
    await conn.execute(sa.update(subscriptions).where(subscriptions.c.id == sub_id).values(**values))


# Records: the provider's feed and the replica's copy ---------------------------------------------------------

async def feed(conn: AsyncConnection, code: str, since: int, limit: int) -> list[sa.Row]:
    q = (sa.select(records.c.key, records.c.data, records.c.deleted, records.c.change_id, records.c.updated_at)
         .where(records.c.resource_code == code, records.c.change_id > since)
         .order_by(records.c.change_id).limit(limit))
    return list((await conn.execute(q)).all())


async def drop_records(conn: AsyncConnection, code: str) -> None:
    await conn.execute(sa.delete(records).where(records.c.resource_code == code))


async def count_live(conn: AsyncConnection, code: str) -> int:
    q = sa.select(sa.func.count()).select_from(records).where(records.c.resource_code == code,
                                                              records.c.deleted.is_(False))
    return int((await conn.execute(q)).scalar_one())
