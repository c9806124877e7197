"""The node's workers as the database knows them: a heartbeat row each, and the lease that makes one of
them the one that does the background work (PostgreSQL; an SQLite node is one process)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.db import metadata

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),  # host:pid:random, new at every start
    sa.Column("place", sa.String(200), nullable=False),  # the host (and pid namespace) it runs in
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.BigInteger, nullable=False),
    sa.Column("seen_at", sa.BigInteger, nullable=False, index=True),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("holder", sa.String(80), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
)

# The database's clock in epoch milliseconds: every worker compares lease times on one clock, whatever
# its host's says.
_NOW = "(extract(epoch from clock_timestamp()) * 1000)::bigint"

_BEAT = sa.text(f"""
INSERT INTO workers (id, place, pid, started_at, seen_at) VALUES (:id, :place, :pid, {_NOW}, {_NOW})
ON CONFLICT (id) DO UPDATE SET seen_at = {_NOW}
""")

_HOLDER = sa.text("""
SELECT l.holder, l.expires_at, w.place, w.pid FROM leases l LEFT JOIN workers w ON w.id = l.holder
WHERE l.name = :name
""")

# Take or keep the lease: it is ours already, it ran out, or its holder is a process known to be gone.
_TAKE = sa.text(f"""
INSERT INTO leases (name, holder, expires_at) VALUES (:name, :me, {_NOW} + :ttl)
ON CONFLICT (name) DO UPDATE SET holder = :me, expires_at = {_NOW} + :ttl
WHERE leases.holder = :me OR leases.expires_at < {_NOW} OR leases.holder = :gone
RETURNING holder
""")

_LIVE = sa.text(f"SELECT id, place, pid FROM workers WHERE seen_at >= {_NOW} - :after")


async def beat(conn: AsyncConnection, worker: str, place: str, pid: int) -> None:
    await conn.execute(_BEAT, {"id": worker, "place": place, "pid": pid})


async def holder(conn: AsyncConnection, name: str) -> sa.Row | None:
    return (await conn.execute(_HOLDER, {"name": name})).first()


async def take(conn: AsyncConnection, name: str, worker: str, ttl_ms: int, gone: str) -> bool:
    return (await conn.execute(_TAKE, {"name": name, "me": worker, "ttl": ttl_ms, "gone": gone})).first() is not None


async def release(conn: AsyncConnection, name: str, worker: str) -> None:
    await conn.execute(sa.delete(leases).where(leases.c.name == name, leases.c.holder == worker))
    await conn.execute(sa.delete(workers).where(workers.c.id == worker))


async def forget_dead(conn: AsyncConnection, after_ms: int) -> None:
    """Drop the rows of workers not seen for a long while (their intents were recovered long ago)."""
    await conn.execute(sa.text(f"DELETE FROM workers WHERE seen_at < {_NOW} - :after"), {"after": after_ms})


async def seen(conn: AsyncConnection, after_ms: int) -> list[sa.Row]:
    """The workers that beat within `after_ms`: (id, place, pid)."""
    return list((await conn.execute(_LIVE, {"after": after_ms})).all())
