"""The append-only audit log: one row a call, each holding the hash of the row before it."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.db import metadata

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.BigInteger, nullable=False, index=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("message_id", sa.String(26), nullable=True, index=True),
    sa.Column("actor", sa.String(80), nullable=False, index=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("path", sa.String(400), nullable=False),
    sa.Column("resource", sa.String(40), nullable=True, index=True),
    sa.Column("keys_digest", sa.String(64), nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("details", sa.Text, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# The fields a record's hash covers, in a fixed order (prev_hash is chained in separately).
HASHED_FIELDS = (
    "seq", "at", "request_id", "message_id", "actor", "role", "action", "method", "path",
    "resource", "keys_digest", "outcome", "status", "latency_ms", "details",
)


# The journal's statements, built once (building costs more than running them).
_HASH_AT = sa.select(audit_log.c.hash).where(audit_log.c.seq == sa.bindparam("seq"))
_INSERT = sa.insert(audit_log)


def hash_at(conn: sa.Connection, seq: int) -> str | None:
    return conn.execute(_HASH_AT, {"seq": seq}).scalar()


def insert_many(conn: sa.Connection, rows: list[dict]) -> None:
    conn.execute(_INSERT, rows)


async def query(
    conn: AsyncConnection,
    *,
    actor: str | None,
    resource: str | None,
    since: int | None,
    until: int | None,
    message_id: str | None,
    after_seq: int | None,
    limit: int,
) -> list[sa.Row]:
    q = sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
    if actor:
        q = q.where(audit_log.c.actor == actor)
    if resource:
        q = q.where(audit_log.c.resource == resource)
    if since is not None:
        q = q.where(audit_log.c.at >= since)
    if until is not None:
        q = q.where(audit_log.c.at < until)
    if message_id:
        q = q.where(audit_log.c.message_id == message_id)
    if after_seq is not None:
        q = q.where(audit_log.c.seq < after_seq)
    return list((await conn.execute(q)).all())


async def scan(conn: AsyncConnection, from_seq: int, batch: int) -> list[sa.Row]:
    q = sa.select(audit_log).where(audit_log.c.seq >= from_seq).order_by(audit_log.c.seq).limit(batch)
    return list((await conn.execute(q)).all())
