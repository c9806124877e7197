"""Table sources: one row a binding, its rules (`spec`) and its progress (`state`) as JSON documents; the
source URL sealed (node.exchange.sealing) next to a display form without the password.

A batch of records and the state that says it was loaded are written in one transaction, so a crash or a
failing source never leaves the two out of step."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.data.store import records, upsert_many
from node.db import metadata

exchange_sources = sa.Table(
    "exchange_sources",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("resource", sa.String(40), nullable=False, index=True),
    sa.Column("dept", sa.String(32), nullable=False),
    sa.Column("url_sealed", sa.Text, nullable=False),
    sa.Column("url_shown", sa.String(2000), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)


def _dumps(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# SQLite: a whole batch in one statement. The rows travel as one JSON array `[[key, data or null], …]` that SQLite
# unnests (json_each); the statement runs inside SQLite without Python (and without holding Python's GIL), so the
# node checks the next batch meanwhile. The stored text is what json.dumps makes (compact, UTF-8).
_SQLITE_BATCH = (
    "INSERT INTO records (resource_code, key, data, deleted, change_id, updated_at) "
    "SELECT ?, json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), json_extract(j.value, '$[1]') IS NULL, "
    "? + j.key, ? FROM json_each(?) AS j WHERE true "
    "ON CONFLICT (resource_code, key) DO UPDATE SET data = excluded.data, deleted = excluded.deleted, "
    "change_id = excluded.change_id, updated_at = excluded.updated_at"
)


async def insert(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(sa.insert(exchange_sources).values(
        **{**row, "spec": _dumps(row["spec"]), "state": _dumps(row["state"])}))


async def all_sources(conn: AsyncConnection) -> list[sa.Row]:
    return list((await conn.execute(sa.select(exchange_sources).order_by(exchange_sources.c.created_at))).all())


async def of_resource(conn: AsyncConnection, code: str) -> list[sa.Row]:
    q = sa.select(exchange_sources).where(exchange_sources.c.resource == code).order_by(exchange_sources.c.created_at)
    return list((await conn.execute(q)).all())


async def get(conn: AsyncConnection, source_id: str) -> sa.Row | None:
    return (await conn.execute(sa.select(exchange_sources).where(exchange_sources.c.id == source_id))).first()


async def save_state(conn: AsyncConnection, source_id: str, state: dict[str, Any], at: int) -> None:
    await conn.execute(sa.update(exchange_sources).where(exchange_sources.c.id == source_id)
                       .values(state=_dumps(state), updated_at=at))


async def delete(conn: AsyncConnection, source_id: str) -> int:
    return (await conn.execute(sa.delete(exchange_sources).where(exchange_sources.c.id == source_id))).rowcount or 0


async def write_records(conn: AsyncConnection, code: str, rows: list[tuple[str, dict[str, Any] | None]],
                        first_change: int, at: int) -> None:
    """Upsert (key, data or None for a tombstone) rows of `code` with consecutive change ids from `first_change`
    (keys must not repeat), as node.data's `upsert_many` does."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        await conn.exec_driver_sql(_SQLITE_BATCH, (code, first_change, at, _encode(rows)))
        return
    await upsert_many(conn, code, [(k, None if d is None else _encode(d)) for k, d in rows], first_change, at)


# The records a source writes (node.data's table, read here to load incrementally and reconcile) -------------

async def has_records(conn: AsyncConnection, code: str) -> bool:
    q = sa.select(records.c.key).where(records.c.resource_code == code).limit(1)
    return (await conn.execute(q)).first() is not None


async def current(conn: AsyncConnection, code: str, keys: list[str]) -> dict[str, Any]:
    """key → stored data (None for a tombstone) of those keys that have a row."""
    out: dict[str, Any] = {}
    for i in range(0, len(keys), 500):
        q = sa.select(records.c.key, records.c.data, records.c.deleted).where(
            records.c.resource_code == code, records.c.key.in_(keys[i:i + 500]))
        for r in (await conn.execute(q)).all():
            out[r.key] = None if r.deleted else r.data
    return out


async def live_keys(conn: AsyncConnection, code: str, after: str | None, limit: int) -> list[str]:
    q = sa.select(records.c.key).where(records.c.resource_code == code, records.c.deleted.is_(False))
    if after is not None:
        q = q.where(records.c.key > after)
    return [r[0] for r in (await conn.execute(q.order_by(records.c.key).limit(limit))).all()]
