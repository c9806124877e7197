"""Catalog entries of every origin, as signed, with a local change cursor for the federation feed."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.db import metadata

catalog_entries = sa.Table(
    "catalog_entries",
    metadata,
    sa.Column("code", sa.String(40), primary_key=True),
    sa.Column("node", sa.String(6), nullable=False, index=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("provider_dept", sa.String(32), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("category", sa.String(16), nullable=False),
    sa.Column("share_type", sa.String(16), nullable=False),
    sa.Column("search_text", sa.Text, nullable=False),
    sa.Column("entry", sa.Text, nullable=False),
    sa.Column("change_id", sa.BigInteger, nullable=False, unique=True),
)

# Entries received from other nodes and refused (bad signature, wrong code prefix, stale seq …).
catalog_refusals = sa.Table(
    "catalog_refusals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("code", sa.String(64), nullable=True),
    sa.Column("node", sa.String(16), nullable=True),
    sa.Column("received_from", sa.String(6), nullable=True),
    sa.Column("reason", sa.String(400), nullable=False),
)


async def get(conn: AsyncConnection, code: str, *, for_update: bool = False) -> sa.Row | None:
    """One entry; `for_update` locks its row until the transaction ends (PostgreSQL; SQLite's write
    transaction already excludes other writers), so concurrent changes apply one after the other."""
    q = sa.select(catalog_entries).where(catalog_entries.c.code == code)
    if for_update:
        q = q.with_for_update()
    return (await conn.execute(q)).first()


async def insert(conn: AsyncConnection, row: dict[str, Any]) -> None:
    """A new entry; raises IntegrityError if the code is already held (never overwrites)."""
    await conn.execute(sa.insert(catalog_entries).values(**row))


async def held_seq(conn: AsyncConnection, code: str) -> int | None:
    res = await conn.execute(sa.select(catalog_entries.c.seq).where(catalog_entries.c.code == code))
    return res.scalar()


async def upsert(conn: AsyncConnection, row: dict[str, Any]) -> None:
    exists = await held_seq(conn, row["code"])
    if exists is None:
        await conn.execute(sa.insert(catalog_entries).values(**row))
    else:
        await conn.execute(sa.update(catalog_entries).where(catalog_entries.c.code == row["code"]).values(**row))


async def held_seqs(conn: AsyncConnection, codes: list[str]) -> dict[str, int]:
    """The seq held for each of `codes` that is held at all."""
    out: dict[str, int] = {}
    for i in range(0, len(codes), 500):  # well within SQLite's limit on bound parameters
        q = sa.select(catalog_entries.c.code, catalog_entries.c.seq).where(catalog_entries.c.code.in_(codes[i:i + 500]))
        out.update({r.code: r.seq for r in (await conn.execute(q)).all()})
    return out


async def store_many(conn: AsyncConnection, new_rows: list[dict[str, Any]], held_rows: list[dict[str, Any]]) -> None:
    """Insert entries not held yet and replace held ones: one statement for each group (executemany)."""
    if new_rows:
        await conn.execute(sa.insert(catalog_entries), new_rows)
    if held_rows:
        stmt = sa.update(catalog_entries).where(catalog_entries.c.code == sa.bindparam("_code"))
        params = [{**{k: v for k, v in r.items() if k != "code"}, "_code": r["code"]} for r in held_rows]
        await conn.execute(stmt, params)


# The levels of SPEC §1, told by the node id's trailing zeros as node.ids.level_of tells them, in SQL.
def _level(level: str) -> Any:
    node = catalog_entries.c.node
    if level == "national":
        return node == "000000"
    if level == "province":
        return sa.and_(node.like("__0000"), node != "000000")
    if level == "city":
        return sa.and_(node.like("____00"), node.not_like("__0000"))
    return node.not_like("____00")


def _text(text: str | None) -> list[Any]:
    conds = []
    for word in (text or "").lower().split():
        esc = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conds.append(catalog_entries.c.search_text.like(f"%{esc}%", escape="\\"))
    return conds


def _where(*, text: str | None, include_deleted: bool, node: str | None = None, level: str | None = None,
           category: str | None = None, share_type: str | None = None, provider: str | None = None) -> Any:
    c = catalog_entries.c
    conds = _text(text)
    if not include_deleted:
        conds.append(c.deleted.is_(False))
    if node:
        conds.append(c.node == node)
    if level:
        conds.append(_level(level))
    if category:
        conds.append(c.category == category)
    if share_type:
        conds.append(c.share_type == share_type)
    if provider:
        conds.append(c.provider_dept == provider)
    return sa.and_(sa.true(), *conds)


async def search(
    conn: AsyncConnection, *, text: str | None, node: str | None, category: str | None, share_type: str | None,
    provider: str | None, include_deleted: bool, offset: int, limit: int, level: str | None = None,
    with_total: bool = True,
) -> tuple[int | None, list[str]]:
    """A page of entries in (node, code) order, and how many match in all (None when not `with_total`)."""
    where = _where(text=text, include_deleted=include_deleted, node=node, level=level, category=category,
                   share_type=share_type, provider=provider)
    total = None
    if with_total:
        total = int((await conn.execute(sa.select(sa.func.count()).select_from(catalog_entries).where(where))).scalar_one())
    q = (
        sa.select(catalog_entries.c.entry)
        .where(where)
        .order_by(catalog_entries.c.node, catalog_entries.c.code)
        .offset(offset)
        .limit(limit)
    )
    return total, [r[0] for r in (await conn.execute(q)).all()]


async def facet_rows(conn: AsyncConnection, since: int) -> list[sa.Row]:
    """The short columns of every entry changed after cursor `since` (node.catalog.facets)."""
    c = catalog_entries.c
    q = sa.select(c.code, c.node, c.category, c.share_type, c.provider_dept, c.deleted, c.search_text,
                  c.change_id).where(c.change_id > since)
    return list((await conn.execute(q)).all())


async def entries(conn: AsyncConnection, codes: list[str]) -> list[sa.Row]:
    """The stored entries of `codes` that are held (code, entry)."""
    out: list[sa.Row] = []
    for i in range(0, len(codes), 500):  # well within SQLite's limit on bound parameters
        q = sa.select(catalog_entries.c.code, catalog_entries.c.entry).where(catalog_entries.c.code.in_(codes[i:i + 500]))
        out += (await conn.execute(q)).all()
    return out


async def changes(conn: AsyncConnection, since: int, limit: int, nodes_in: set[str] | None = None,
                  nodes_out: set[str] | None = None) -> list[sa.Row]:
    """Entries changed after cursor `since`, in commit order; optionally only origins in / not in a set."""
    q = (
        sa.select(catalog_entries.c.entry, catalog_entries.c.change_id, catalog_entries.c.node)
        .where(catalog_entries.c.change_id > since)
        .order_by(catalog_entries.c.change_id)
        .limit(limit)
    )
    if nodes_in is not None:
        q = q.where(catalog_entries.c.node.in_(sorted(nodes_in)))
    if nodes_out:
        q = q.where(catalog_entries.c.node.not_in(sorted(nodes_out)))
    return list((await conn.execute(q)).all())


async def log_refusal(conn: AsyncConnection, **row: Any) -> None:
    await conn.execute(sa.insert(catalog_refusals).values(**row))


async def refusals(conn: AsyncConnection, limit: int = 100) -> list[sa.Row]:
    q = sa.select(catalog_refusals).order_by(catalog_refusals.c.id.desc()).limit(limit)
    return list((await conn.execute(q)).all())
