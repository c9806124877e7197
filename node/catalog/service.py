"""Catalog rules (SPEC §7): only the origin writes an entry; every change bumps `version` and the node's
`seq`; withdrawal is a tombstone; received entries apply only when newer and correctly signed."""

from __future__ import annotations

import heapq
import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from federation.canonical import encode_canonical_json
from federation.signing import SigningKey, sign_json
from node.workdays import CST
from node.accounts.service import Account
from node.catalog import store
from node.catalog.facets import FacetIndex
from node.catalog.models import EntryContent, EntryCreate, EntryUpdate
from node.cluster import announce
from node.db import next_counter, note_write, write_tx
from node.errors import Conflict, Forbidden, InvalidInput, NotFound
from node.ids import level_of, now_ms, resource_node

log = logging.getLogger("govnode.catalog")

SEQ_COUNTER = "catalog_seq"        # this node's seq over its own entries (travels in the entry)
CHANGE_COUNTER = "catalog_change"  # local commit order of every entry held (the feed cursor)
SERIAL_COUNTER = "resource_serial"
# What the catalog can be narrowed by and counted per (CatalogService.facets).
FACETS = ("level", "node", "category", "share_type", "provider")
GROUPED_FACETS = FACETS[:4]


def today_cst() -> str:
    return datetime.now(CST).date().isoformat()


def search_text(entry: dict[str, Any]) -> str:
    parts = [entry["name"], entry.get("summary", ""), entry["provider"]["name"], entry["code"]]
    parts += [i["name"] for i in entry["items"]] + [i["field"] for i in entry["items"]]
    return " ".join(parts).lower()


def row_of(entry: dict[str, Any], change_id: int) -> dict[str, Any]:
    return {
        "code": entry["code"],
        "node": entry["node"],
        "seq": entry["seq"],
        "version": entry["version"],
        "deleted": entry["deleted"],
        "updated_at": entry["updated_at"],
        "provider_dept": entry["provider"]["dept"],
        "name": entry["name"],
        "category": entry["category"],
        "share_type": entry["share"]["type"],
        "search_text": search_text(entry),
        "entry": encode_canonical_json(entry).decode("utf-8"),
        "change_id": change_id,
    }


class CatalogService:
    def __init__(self, engine: AsyncEngine, node_id: str, key: SigningKey) -> None:
        self.engine = engine
        self.node_id = node_id
        self.key = key
        # Parsed entries by code, dropped whenever this service writes that code.
        self._cache: dict[str, dict[str, Any] | None] = {}
        self._facets = FacetIndex()
        # Called after every committed change (the federation notifies neighbours).
        self.listeners: list[Any] = []

    # Reading ------------------------------------------------------------------------------------

    async def get(self, code: str, *, include_deleted: bool = False) -> dict[str, Any]:
        entry = self._cache.get(code)
        if entry is None:
            async with self.engine.connect() as conn:
                row = await store.get(conn, code)
            if row is None:
                raise NotFound(f"no catalog entry {code}")
            entry = json.loads(row.entry)
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[code] = entry
        if entry["deleted"] and not include_deleted:
            raise NotFound(f"catalog entry {code} was withdrawn")
        return entry

    async def search(self, *, q: str | None, node: str | None, category: str | None, share_type: str | None,
                     provider: str | None, deleted: bool, page: int, page_size: int,
                     level: str | None = None, with_total: bool = True) -> tuple[int, list[dict]]:
        """A page of entries and how many match in all (-1 when not `with_total`: the caller knows it)."""
        async with self.engine.connect() as conn:
            total, docs = await store.search(
                conn, text=q, node=node, category=category, share_type=share_type, provider=provider,
                include_deleted=deleted, offset=(page - 1) * page_size, limit=page_size, level=level,
                with_total=with_total,
            )
        return (-1 if total is None else total), [json.loads(d) for d in docs]

    async def facets(self, *, q: str | None, deleted: bool = False, named: int = 60,
                     **chosen: str | None) -> dict[str, Any]:
        """Counts per facet of the entries matching `q` and the facets `chosen` (level, node, category,
        share_type, provider; None or absent: any). Each facet is counted under every choice but its own,
        so its other values show how many entries choosing them instead would find. Returns
        {"total": n, "counts": {facet: {value: n}}, "providers": {dept: {"node", "name"}}}, the providers named
        being the `named` with the most entries and the one chosen.

        Counted from this process's copy of the facet columns, brought up to date first (node.catalog.facets)."""
        chosen = {f: v for f, v in chosen.items() if v}
        unknown = set(chosen) - set(FACETS)
        if unknown:
            raise TypeError(f"unknown facets {sorted(unknown)}")
        others = {f: v for f, v in chosen.items() if f != "provider"}
        async with self.engine.connect() as conn:
            groups, by_provider = await self._facets.count(conn, text=q, include_deleted=deleted, **chosen)
        counts: dict[str, dict[str, int]] = {f: {} for f in FACETS}
        total = 0
        wanted = tuple(others.get(f) for f in GROUPED_FACETS)
        for node, category, share_type, n in groups:
            group = (level_of(node), node, category, share_type)
            missed = [i for i, v in enumerate(wanted) if v is not None and group[i] != v]
            if len(missed) > 1:
                continue
            if not missed:
                total += n
            for i in missed or range(len(GROUPED_FACETS)):  # the facet it misses, or every facet
                facet = counts[GROUPED_FACETS[i]]
                facet[group[i]] = facet.get(group[i], 0) + n
        counts["provider"] = {dept: n for dept, n, _ in by_provider}
        top = heapq.nsmallest(named, by_provider, key=lambda r: (-r[1], r[0]))
        samples = {dept: sample for dept, _, sample in top}
        samples.update({dept: sample for dept, _, sample in by_provider if dept == chosen.get("provider")})
        return {"total": total, "counts": counts, "providers": await self._providers(samples)}

    async def _providers(self, samples: dict[str, str]) -> dict[str, dict[str, str]]:
        """Each provider department's node and name, as one of its entries names them (the parsed entries
        kept by `get`, and one query for the rest)."""
        out: dict[str, dict[str, str]] = {}
        missing: dict[str, str] = {}
        for dept, code in samples.items():
            entry = self._cache.get(code)
            if entry is None:
                missing[code] = dept
            else:
                out[dept] = {"node": entry["node"], "name": entry["provider"]["name"]}
        if missing:
            async with self.engine.connect() as conn:
                rows = await store.entries(conn, sorted(missing))
            for row in rows:
                entry = json.loads(row.entry)
                if len(self._cache) > 50_000:
                    self._cache.clear()
                self._cache[row.code] = entry
                out[missing[row.code]] = {"node": entry["node"], "name": entry["provider"]["name"]}
        return out

    # Writing this node's own entries --------------------------------------------------------------

    async def create(self, acct: Account, body: EntryCreate) -> dict[str, Any]:
        try:
            return await self._create(acct, body)
        except IntegrityError:
            # Two registrations of one code raced past the existence check (PostgreSQL); the loser's
            # transaction was rolled back whole.
            raise Conflict(f"resource {body.code} already exists") from None

    async def _create(self, acct: Account, body: EntryCreate) -> dict[str, Any]:
        _check_filled(body.filled(), {"type": "catalog_entry", "kind": "resource",
                                      "provider": {"dept": acct.dept, "name": acct.name}})
        async with write_tx(self.engine) as conn:
            if body.code is not None:
                code = body.code
                if resource_node(code) != self.node_id:
                    raise InvalidInput(
                        f"the 顺序码 of {code} must start with this node's id {self.node_id}",
                        [{"field": "code", "error": "wrong node prefix"}],
                    )
                if await store.held_seq(conn, code) is not None:
                    raise Conflict(f"resource {code} already exists")
            else:
                # Skip serials already taken by a code registered in full (never overwrite an entry).
                while True:
                    serial = await next_counter(conn, SERIAL_COUNTER)
                    code = f"{body.classification}/{self.node_id}{serial:06d}"
                    if await store.held_seq(conn, code) is None:
                        break
            content = body.model_dump(exclude={"code", "classification", *body.filled()})
            entry = await self._write(conn, acct, code, content, version=1, deleted=False, new=True)
        await self._changed(code)
        return entry

    async def update(self, acct: Account, code: str, body: EntryUpdate) -> dict[str, Any]:
        async with write_tx(self.engine) as conn:
            current = await self._own_entry(conn, acct, code)
            _check_filled(body.filled(), {k: current[k] for k in body.filled()})
            content = body.model_dump(include=set(EntryContent.model_fields))
            if content["published_at"] is None:  # a change keeps the resource's publish date
                content["published_at"] = current["published_at"]
            entry = await self._write(conn, acct, code, content, version=current["version"] + 1,
                                      deleted=False, provider_name=current["provider"]["name"])
        await self._changed(code)
        return entry

    async def withdraw(self, acct: Account, code: str) -> dict[str, Any]:
        async with write_tx(self.engine) as conn:
            current = await self._own_entry(conn, acct, code)
            content = {k: current.get(k) for k in EntryContent.model_fields}
            entry = await self._write(conn, acct, code, content, version=current["version"] + 1, deleted=True,
                                      provider_name=current["provider"]["name"])
        await self._changed(code)
        return entry

    async def _own_entry(self, conn: AsyncConnection, acct: Account, code: str) -> dict[str, Any]:
        row = await store.get(conn, code, for_update=True)
        if row is None:
            raise NotFound(f"no catalog entry {code}")
        entry = json.loads(row.entry)
        if entry["node"] != self.node_id:
            raise Forbidden(f"{code} belongs to node {entry['node']}; only its origin changes it")
        if entry["provider"]["dept"] != acct.dept:
            raise Forbidden(f"{code} is provided by department {entry['provider']['dept']}, not by the caller")
        if entry["deleted"]:
            raise NotFound(f"catalog entry {code} was withdrawn")
        return entry

    async def _write(self, conn: AsyncConnection, acct: Account, code: str, content: dict[str, Any], *,
                     version: int, deleted: bool, provider_name: str | None = None,
                     new: bool = False) -> dict[str, Any]:
        note_write(resource=code)  # a new entry's code is known only here: its audit intent names it
        seq = await next_counter(conn, SEQ_COUNTER)
        change_id = await next_counter(conn, CHANGE_COUNTER)
        # Unset attributes (None, false) are left out, as in SPEC §7's example.
        items = [{k: v for k, v in i.items() if v is not None and v is not False} for i in content["items"]]
        entry = {
            "type": "catalog_entry",
            "kind": "resource",
            "code": code,
            "node": self.node_id,
            "seq": seq,
            "version": version,
            "deleted": deleted,
            "updated_at": now_ms(),
            "name": content["name"],
            "category": content["category"],
            "provider": {"dept": acct.dept, "name": provider_name or acct.name},
            "summary": content.get("summary", ""),
            "format": content["format"],
            "items": items,
            "share": content["share"],
            "open": content["open"],
            "update_cycle": content["update_cycle"],
            "published_at": content.get("published_at") or today_cst(),
            "related": content.get("related", []),
        }
        if content.get("controlled_ops"):  # left out when empty, like other unset attributes
            entry["controlled_ops"] = list(content["controlled_ops"])
        if content.get("scope") == "national":  # SPEC §18; province is the default and left out
            entry["scope"] = "national"
        signed = sign_json(entry, self.node_id, self.key)
        if new:  # a registration never replaces an entry that a concurrent registration just stored
            await store.insert(conn, row_of(signed, change_id))
        else:
            await store.upsert(conn, row_of(signed, change_id))
        await announce(conn, "catalog", code)  # the node's other workers drop their copy
        return signed

    # Entries received from other nodes (federation) -----------------------------------------------

    async def apply_received(self, entry: dict[str, Any], change_id_conn: AsyncConnection) -> bool:
        """Store a verified entry of another origin if it is newer than the one held; True if applied.

        The caller (the federation's catalog replication) has checked the signature and code prefix and
        passes its open write transaction.
        """
        held = await store.held_seq(change_id_conn, entry["code"])
        if held is not None and held >= entry["seq"]:
            return False
        change_id = await next_counter(change_id_conn, CHANGE_COUNTER)
        await store.upsert(change_id_conn, row_of(entry, change_id))
        await announce(change_id_conn, "catalog", entry["code"])
        self._cache.pop(entry["code"], None)
        return True

    async def apply_received_many(self, entries: list[dict[str, Any]], conn: AsyncConnection) -> list[dict[str, Any]]:
        """Like `apply_received` for a page of verified entries, in its order; returns those applied.

        A fixed handful of statements however long the page (held seqs, change ids, inserts, updates), so a
        page of a feed holds the write lock for a few round trips, not four per entry.
        """
        held = await store.held_seqs(conn, sorted({e["code"] for e in entries}))
        newer: dict[str, dict[str, Any]] = {}
        for entry in entries:
            code = entry["code"]
            floor = newer[code]["seq"] if code in newer else held.get(code)
            if floor is None or entry["seq"] > floor:
                newer.pop(code, None)  # a later change of the same code takes the later place
                newer[code] = entry
        if not newer:
            return []
        applied = list(newer.values())
        last = await next_counter(conn, CHANGE_COUNTER, len(applied))
        rows = [row_of(e, last - len(applied) + 1 + i) for i, e in enumerate(applied)]
        await store.store_many(conn, [r for r in rows if r["code"] not in held], [r for r in rows if r["code"] in held])
        # One announcement a page; a long page drops the other workers' whole copies (a NOTIFY holds < 8 kB).
        await announce(conn, "catalog", ",".join(newer) if len(newer) <= 100 else "")
        for code in newer:
            self._cache.pop(code, None)
        return applied

    def forget(self, codes: str = "") -> None:
        """Drop cached entries another worker changed ("a,b,c"), or all of them ("")."""
        if not codes:
            self._cache.clear()
        for code in filter(None, codes.split(",")):
            self._cache.pop(code, None)

    async def _changed(self, code: str) -> None:
        self._cache.pop(code, None)
        for listener in self.listeners:
            try:
                await listener(code)
            except Exception:  # noqa: BLE001 - a listener's failure never undoes a committed change
                log.exception("catalog change listener failed", extra={"code": code})


def _check_filled(given: dict[str, Any], expected: dict[str, Any]) -> None:
    """SPEC §10: a body may carry the fields the node fills in itself when they agree with what it would fill
    in; a disagreeing value is refused, naming its field."""
    details = []
    for name, value in given.items():
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if value != expected.get(name):
            details.append({"field": name, "error": f"is filled in by the node; leave it out or send "
                                                    f"{json.dumps(expected.get(name), ensure_ascii=False)[:200]}"})
    if details:
        raise InvalidInput("fields the node fills in itself disagree with what it would fill in", details)
