"""Signed feeds kept in tables (licences, service items, lists): each kind of document in a table of its own
with the document's key, its origin `node`, its `seq`, its signed text and the local `change_id` that
orders the feed. What replicating such a feed needs of its tables is the same for every one of them: the
`seq` and origin held for some keys, storing documents new and newer, and the changes after a cursor."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.db import next_counter
from node.federation.replication import SignedFeed
from node.ids import now_ms

log = logging.getLogger("govnode.federation")

# Keys a statement: well inside SQLite's limit on bound parameters (999 before 3.32) and PostgreSQL's.
CHUNK = 900


@dataclass(frozen=True)
class FeedRow:
    doc: str
    change_id: int


@dataclass(frozen=True)
class Stored:
    """Where a feed keeps one kind of its documents."""

    key: sa.Column  # the document's key column, in its table
    text: sa.Column  # the document as its origin signed it (canonical JSON text)
    row_of: Callable[[dict[str, Any], int], dict[str, Any]]  # (document, change id) -> the table's row
    noun: str  # what a refusal calls one: "a licence", "an item", …
    kind: str | None = None  # the documents' `type`, when one feed carries several kinds

    @property
    def table(self) -> sa.Table:
        return self.key.table  # type: ignore[return-value]


async def held_seqs(conn: AsyncConnection, key: sa.Column, keys: list[str]) -> dict[str, tuple[int, str]]:
    """(seq, origin node) held for each of `keys` that is held at all."""
    table = key.table
    out: dict[str, tuple[int, str]] = {}
    for i in range(0, len(keys), CHUNK):
        q = sa.select(key, table.c.seq, table.c.node).where(key.in_(keys[i:i + CHUNK]))
        out.update({r[0]: (r[1], r[2]) for r in (await conn.execute(q)).all()})
    return out


async def store_rows(conn: AsyncConnection, key: sa.Column, new_rows: list[dict[str, Any]],
                     held_rows: list[dict[str, Any]]) -> None:
    """Insert the rows not held yet and replace the held ones: one statement for each group."""
    table = key.table
    if new_rows:
        await conn.execute(sa.insert(table), new_rows)
    if held_rows:
        stmt = sa.update(table).where(key == sa.bindparam("_key"))
        await conn.execute(stmt, [{**{k: v for k, v in r.items() if k != key.name}, "_key": r[key.name]}
                                  for r in held_rows])


class TableFeed(SignedFeed):
    """A signed feed whose documents live in tables described by `stored` (one entry a kind)."""

    stored: tuple[Stored, ...] = ()

    def document(self, row: Any) -> dict[str, Any]:
        return json.loads(row.doc)

    async def changes(self, conn: Any, since: int, limit: int, nodes_in: set[str] | None,
                      nodes_out: set[str] | None) -> list[Any]:
        rows: list[FeedRow] = []
        for s in self.stored:
            change_id = s.table.c.change_id
            q = sa.select(s.text, change_id).where(change_id > since).order_by(change_id).limit(limit)
            if nodes_in is not None:
                q = q.where(s.table.c.node.in_(sorted(nodes_in)))
            if nodes_out:
                q = q.where(s.table.c.node.not_in(sorted(nodes_out)))
            rows += [FeedRow(r[0], r[1]) for r in (await conn.execute(q)).all()]
        if len(self.stored) > 1:  # one counter numbers every kind: their changes interleave
            rows.sort(key=lambda r: r.change_id)
        return rows[:limit]

    async def apply_many(self, objs: list[dict[str, Any]], conn: Any) -> int:
        applied = 0
        for s in self.stored:  # a document without a `type` counts as of the first kind (a list, in the lists feed)
            docs = objs if s.kind is None else [o for o in objs if o.get("type", self.stored[0].kind) == s.kind]
            if docs:
                applied += await self._apply_kind(s, docs, conn)
        return applied

    async def _apply_kind(self, s: Stored, docs: list[dict[str, Any]], conn: Any) -> int:
        """Keep, of each key, the newest document that is newer than the one held and from the origin of the
        one held (a document of another origin under a held key is refused); store them under fresh change
        ids, in the order received."""
        keys = [self.key(d) for d in docs]
        held = await held_seqs(conn, s.key, sorted(set(keys)))
        newer: dict[str, dict[str, Any]] = {}
        for doc, k in zip(docs, keys):
            if k in held and held[k][1] != doc["node"]:
                reason = f"{k} is held as {s.noun} of node {held[k][1]}, not of {doc['node']}"
                log.warning("refused in feed %s: %s", self.name, reason)
                await self.log_refusal(conn, {"at": now_ms(), "key": k, "node": doc["node"], "received_from": None,
                                              "reason": reason})
                continue
            floor = newer[k]["seq"] if k in newer else held.get(k, (None, None))[0]
            if floor is None or doc["seq"] > floor:
                newer.pop(k, None)  # a later change of the same document takes the later place
                newer[k] = doc
        if not newer:
            return 0
        applied = list(newer.values())
        last = await next_counter(conn, self.counter, len(applied))
        rows = [s.row_of(d, last - len(applied) + 1 + i) for i, d in enumerate(applied)]
        await store_rows(conn, s.key, [r for r in rows if r[s.key.name] not in held],
                         [r for r in rows if r[s.key.name] in held])
        return len(applied)
