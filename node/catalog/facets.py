"""The catalog's facet columns, held in each process for counting (the portal's 数据目录).

Counting the facets in SQL took 30 ms of the search page's 70 ms with 10,000 entries (scripts/bench_portal.py;
the grouped query reads every row of the table, whose rows carry the whole signed entry, about 1 KB each).
Here each process keeps, for every entry it holds, the few short columns the counts need, and counts them
in Python (a few ms for 10,000 entries). What it keeps is only a copy: before each use it reads the rows whose
change_id is past the last one it applied (one probe of the change_id index, nothing found most times), so a
change committed by any process of the node is counted by the next search in every process. change_id is
taken under the counter's row lock and so becomes visible in order, as the catalog feed relies on too.
Memory: about 0.5 KB an entry (10,000 entries: ~5 MB a process)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection

from node.catalog import store
from node.ids import level_of


class FacetRow(NamedTuple):
    code: str
    node: str
    level: str
    category: str
    share_type: str
    provider: str
    deleted: bool
    text: str  # the entry's search text, lower case (node.catalog.service.search_text)


class FacetIndex:
    def __init__(self) -> None:
        self._rows: dict[str, FacetRow] = {}
        self._seen = 0  # the highest change_id applied
        self._lock = asyncio.Lock()

    async def _refresh(self, conn: AsyncConnection) -> None:
        async with self._lock:
            for r in await store.facet_rows(conn, self._seen):
                self._rows[r.code] = FacetRow(r.code, r.node, level_of(r.node), r.category, r.share_type,
                                              r.provider_dept, bool(r.deleted), r.search_text)
                self._seen = max(self._seen, r.change_id)

    async def count(self, conn: AsyncConnection, *, text: str | None, include_deleted: bool,
                    **chosen: str | None) -> tuple[list[tuple[str, str, str, int]], list[tuple[str, int, str]]]:
        """The entries matching `text` (every word, as the SQL search's LIKE matches them), counted two ways:
        - per (node, category, share type), among those of the chosen provider: every count of the level,
          node, category and share type facets under any choice of the others follows from these groups;
        - per provider department, among those matching the other choices, each with its smallest code
          (`sample`, to name it).
        Returns ([(node, category, share type, count)], [(provider, count, sample)])."""
        await self._refresh(conn)
        words = (text or "").lower().split()
        provider, node, level = chosen.get("provider"), chosen.get("node"), chosen.get("level")
        category, share_type = chosen.get("category"), chosen.get("share_type")
        groups: Counter[tuple[str, str, str]] = Counter()
        by_provider: Counter[str] = Counter()
        sample: dict[str, str] = {}
        for code, r_node, r_level, r_category, r_share, r_provider, deleted, r_text in self._rows.values():
            if (deleted and not include_deleted) or (words and not all(w in r_text for w in words)):
                continue
            if provider is None or r_provider == provider:
                groups[(r_node, r_category, r_share)] += 1
            if ((node is None or r_node == node) and (level is None or r_level == level)
                    and (category is None or r_category == category) and (share_type is None or r_share == share_type)):
                by_provider[r_provider] += 1
                if code < sample.get(r_provider, "\uffff"):
                    sample[r_provider] = code
        return ([(n, c, s, k) for (n, c, s), k in groups.items()],
                [(dept, k, sample[dept]) for dept, k in by_provider.items()])
