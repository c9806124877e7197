"""Service items of every origin, as signed, with a local change cursor for the federation feed `items`;
refusals of received items; and the running totals of 一证通办 behind 材料减免率."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.db import metadata, on_conflict_statement

service_items = sa.Table(
    "service_items",
    metadata,
    sa.Column("code", sa.String(40), primary_key=True),
    sa.Column("node", sa.String(6), nullable=False, index=True),
    sa.Column("kind", sa.String(12), nullable=False),
    sa.Column("basic_code", sa.String(20), nullable=False, index=True),
    sa.Column("dept", sa.String(32), nullable=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("scope", sa.String(10), nullable=False),
    sa.Column("search_text", sa.Text, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Column("change_id", sa.BigInteger, nullable=False, unique=True),
)

item_refusals = sa.Table(
    "item_refusals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("code", sa.String(64), nullable=True),
    sa.Column("node", sa.String(16), nullable=True),
    sa.Column("received_from", sa.String(6), nullable=True),
    sa.Column("reason", sa.String(400), nullable=False),
)

# Per item and material, the 一证通办 calls made at this node and how each material came out. Counted by
# upserts that add to the row (never read-modify-write), so several workers on PostgreSQL add up exactly.
OUTCOMES = ("obtained", "verified", "mismatch", "not_found", "no_grant", "unreachable", "not_shareable")
item_stats = sa.Table(
    "item_stats",
    metadata,
    sa.Column("item", sa.String(40), primary_key=True),
    sa.Column("material", sa.String(16), primary_key=True),
    sa.Column("dept", sa.String(32), nullable=False, index=True),
    sa.Column("calls", sa.BigInteger, nullable=False),
    *[sa.Column(o, sa.BigInteger, nullable=False) for o in OUTCOMES],
)


def row_of(doc: dict[str, Any], change_id: int, search_text: str, encoded: str) -> dict[str, Any]:
    return {
        "code": doc["code"], "node": doc["node"], "kind": doc["kind"], "basic_code": doc["basic_code"],
        "dept": (doc.get("dept") or {}).get("dept"), "seq": doc["seq"], "version": doc["version"],
        "deleted": doc["deleted"], "scope": doc["scope"], "search_text": search_text, "doc": encoded,
        "change_id": change_id,
    }


async def get(conn: AsyncConnection, code: str, *, for_update: bool = False) -> sa.Row | None:
    q = sa.select(service_items).where(service_items.c.code == code)
    if for_update:
        q = q.with_for_update()
    return (await conn.execute(q)).first()


async def search(conn: AsyncConnection, *, text: str | None, node: str | None, kind: str | None,
                 basic_code: str | None, dept: str | None, offset: int, limit: int) -> tuple[int, list[str]]:
    c = service_items.c
    conds: list[Any] = [c.deleted.is_(False)]
    for word in (text or "").lower().split():
        esc = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conds.append(c.search_text.like(f"%{esc}%", escape="\\"))
    if node:
        conds.append(c.node == node)
    if kind:
        conds.append(c.kind == kind)
    if basic_code:
        conds.append(c.basic_code == basic_code)
    if dept:
        conds.append(c.dept == dept)
    where = sa.and_(*conds)
    total = int((await conn.execute(sa.select(sa.func.count()).select_from(service_items).where(where))).scalar_one())
    q = sa.select(c.doc).where(where).order_by(c.basic_code, c.kind, c.code).offset(offset).limit(limit)
    return total, [r[0] for r in (await conn.execute(q)).all()]


async def docs(conn: AsyncConnection, codes: list[str]) -> list[str]:
    out: list[str] = []
    for i in range(0, len(codes), 500):
        q = sa.select(service_items.c.doc).where(service_items.c.code.in_(codes[i:i + 500]))
        out += [r[0] for r in (await conn.execute(q)).all()]
    return out


async def log_refusal(conn: AsyncConnection, **row: Any) -> None:
    await conn.execute(sa.insert(item_refusals).values(**row))


def _count_statement(ins: Any) -> Any:
    excluded = ins.excluded
    return ins.on_conflict_do_update(
        index_elements=[item_stats.c.item, item_stats.c.material],
        set_={"calls": item_stats.c.calls + excluded.calls,
              **{o: item_stats.c[o] + excluded[o] for o in OUTCOMES}})


def count(conn: sa.Connection, calls: list[list[dict[str, Any]]]) -> None:
    """Journal writer: add the outcomes of a batch of calls, each a list of {item, material, dept, outcome}.
    Summed per (item, material) first, so a batch of many calls is one upsert a row."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for call in calls:
        for r in call:
            row = rows.setdefault((r["item"], r["material"]), {"item": r["item"], "material": r["material"],
                                                               "dept": r["dept"], "calls": 0,
                                                               **dict.fromkeys(OUTCOMES, 0)})
            row["calls"] += 1
            row[r["outcome"]] += 1
    if rows:
        stmt = on_conflict_statement(conn.dialect.name, item_stats, "count", _count_statement)
        conn.execute(stmt, list(rows.values()))


async def stats(conn: AsyncConnection, *, dept: str | None, item: str | None) -> list[sa.Row]:
    q = sa.select(item_stats)
    if dept:
        q = q.where(item_stats.c.dept == dept)
    if item:
        q = q.where(item_stats.c.item == item)
    return list((await conn.execute(q.order_by(item_stats.c.item, item_stats.c.material))).all())
