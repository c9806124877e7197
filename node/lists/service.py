"""Joint reward and punishment lists (联合奖惩, SPEC §17): "一处违法、处处受限".

- Publishing: a department creates a list at its node and adds, changes and removes entries (by API, CSV/XLSX,
  or kept in step with one of its own resources). The node signs each list and entry; they replicate to every
  node of the federation through the signed feed `lists` (the catalog's mechanism), with scope `national`
  (SPEC §18), so a province passes them on to the national root and the root to every province.
- Subjects: an entry carries the HMAC digest of the subject code with the federation's holder key (the
  licences' digest, SPEC §13), never the code; the name only on public lists.
- Checking: `check` answers from this node's own copy, by the digest index, without a network call. Each hit
  is reported to the issuing node (`list.hit`, one message per issuer per check, queued durably in the outbox
  before the answer), which keeps where and when its entries were applied (双反馈).
- Removal (信用修复): a tombstone with its reason; it stops matching wherever it has replicated.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from federation.canonical import encode_canonical_json
from federation.signing import sign_json
from node.accounts.service import Account
from node.catalog.service import CatalogService
from node.cluster import node_lock
from node.db import next_counter, write_tx
from node.errors import ApiError, Forbidden, InvalidInput, NotFound
from node.federation.feed_tables import Stored, TableFeed, held_seqs, store_rows
from node.federation.service import FederationService
from node.ids import new_id, now_ms
from node.licences.identifier import holder_code_type, valid_holder_code
from node.lists import store
from node.lists.models import (CheckBody, EntryIn, HitMessage, ListCreate, ListDoc, ListEntryDoc, SourceBody,
                               Subject)
from node.supervisor import Supervisor
from node.web import validation_details
from node.workdays import cst_date

log = logging.getLogger("govnode.lists")

FEED = "lists"
HIT_KIND = "list.hit"
SEQ_COUNTER = "list_seq"        # this node's seq over its own lists and entries (travels in them)
CHANGE_COUNTER = "list_change"  # local commit order of every list and entry held (the feed cursor)
SOURCE_SWEEP_S = 60.0           # sources are also synced on this schedule, should a change's wake-up be missed
SOURCE_REMOVED = "源数据记录已删除"


def today() -> str:
    return cst_date(now_ms()).isoformat()


def _text(doc: dict[str, Any]) -> str:
    return encode_canonical_json(doc).decode("utf-8")


class ListFeed(TableFeed):
    """Lists and their entries as one signed feed (served at /federation/v1/lists/changes)."""

    name = FEED
    counter = CHANGE_COUNTER
    stored = (Stored(store.lists.c.code, store.lists.c.doc, lambda d, c: store.list_row(d, _text(d), c), "a list", "list"),
              Stored(store.list_entries.c.id, store.list_entries.c.doc, lambda d, c: store.entry_row(d, _text(d), c),
                     "a list entry", "list_entry"))
    default_scope = "national"  # SPEC §18: lists reach every node of the country

    def key(self, obj: dict[str, Any]) -> Any:
        return obj.get("id") or obj.get("code")

    def problem(self, obj: dict[str, Any]) -> str | None:
        model = ListEntryDoc if obj.get("type") == "list_entry" else ListDoc
        try:
            doc = model.model_validate(obj)
        except ValidationError as exc:
            return f"malformed {obj.get('type') or 'list'}: " + "; ".join(
                f"{d['field']}: {d['error']}" for d in validation_details(exc)[:3])
        code = doc.list if isinstance(doc, ListEntryDoc) else doc.code
        if not code.startswith(doc.node + "-"):
            return f"list {code} does not start with its origin {doc.node}"
        if doc.issuer.node != doc.node:
            return f"the issuer's node {doc.issuer.node} is not the origin {doc.node}"
        return None

    async def log_refusal(self, conn: Any, refusal: dict[str, Any]) -> None:
        await store.log_refusal(conn, at=refusal["at"], key=refusal["key"], node=refusal["node"],
                                received_from=refusal["received_from"], reason=refusal["reason"])


class ListService:
    def __init__(self, engine: AsyncEngine, node_id: str, federation: FederationService, catalog: CatalogService,
                 data: Any, holder_digest: Callable[[str], str]) -> None:
        self.engine = engine
        self.node_id = node_id
        self.federation = federation
        self.catalog = catalog
        self.data = data
        self.holder_digest = holder_digest  # the licences' HMAC with the federation's holder key (SPEC §13)
        self.tasks = Supervisor(node_id, log)
        self._loop_reader = store.LoopReader.for_engine(engine)  # one-subject checks on SQLite

    def connect(self) -> None:
        self.federation.handlers[HIT_KIND] = self.on_hit
        self.federation.register_feed(ListFeed())
        self.data.listeners.append(self._records_changed)
        self.tasks.every((self.sync_all_sources, SOURCE_SWEEP_S, "list sources"))

    async def close(self) -> None:
        await self.tasks.close()
        if self._loop_reader is not None:
            self._loop_reader.close()

    def _sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        return sign_json(obj, self.node_id, self.federation.key)

    async def _changed(self) -> None:
        try:
            await self.federation.notify_neighbours(FEED)
        except Exception:  # noqa: BLE001 - the scheduled pull carries the change anyway
            log.exception("could not notify neighbours of a list change")

    # Lists ----------------------------------------------------------------------------------------

    async def create_list(self, acct: Account, body: ListCreate) -> dict[str, Any]:
        self.federation.require_joined()
        async with write_tx(self.engine) as conn:
            n = await next_counter(conn, "list_serial")
            if n > 9999:
                raise ApiError("this node has issued 9999 lists, the most a list code can number", code="CONFLICT")
            doc = self._sign({
                "type": "list", "code": f"{self.node_id}-{n:04d}", "node": self.node_id,
                "seq": await next_counter(conn, SEQ_COUNTER), "version": 1, "deleted": False, "updated_at": now_ms(),
                "name": body.name, "kind": body.kind, "public": body.public, "measures": list(body.measures),
                "basis": body.basis, "issuer": {"node": self.node_id, "dept": acct.dept, "name": acct.name},
                "scope": "national",
            })
            change = await next_counter(conn, CHANGE_COUNTER)
            await store_rows(conn, store.lists.c.code, [store.list_row(doc, _text(doc), change)], [])
        await self._changed()
        return doc

    async def get_list(self, code: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await store.get_list(conn, code)
            count = (await store.count_live(conn, [code])).get(code, 0) if row is not None else 0
        if row is None or row.deleted:
            raise NotFound(f"no list {code}")
        return {"list": json.loads(row.doc), "entries": count}

    async def lists(self, *, node: str | None = None, dept: str | None = None) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await store.all_lists(conn, node=node, dept=dept)
            counts = await store.count_live(conn, [r.code for r in rows]) if rows else {}
        return [{"list": json.loads(r.doc), "entries": counts.get(r.code, 0)} for r in rows]

    async def own_lists(self, acct: Account) -> list[dict[str, Any]]:
        return await self.lists(node=self.node_id, dept=acct.dept)

    async def _own_list(self, conn: Any, acct: Account, code: str) -> dict[str, Any]:
        row = await store.get_list(conn, code)
        if row is None or row.deleted:
            raise NotFound(f"no list {code}")
        if row.node != self.node_id:
            raise Forbidden(f"list {code} was published at node {row.node}; only its issuer changes it")
        if row.dept != acct.dept:
            raise Forbidden(f"list {code} is issued by department {row.dept}, not by the caller")
        return json.loads(row.doc)

    async def entries(self, code: str, *, include_deleted: bool, page: int, page_size: int) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            if await store.get_list(conn, code) is None:
                raise NotFound(f"no list {code}")
            rows = await store.entries_of(conn, code, include_deleted=include_deleted, offset=(page - 1) * page_size,
                                          limit=page_size)
        return [json.loads(r.doc) for r in rows]

    # Entries --------------------------------------------------------------------------------------

    async def add_entries(self, acct: Account, code: str, entries: list[EntryIn]) -> dict[str, Any]:
        """Add entries, or change those whose subject is already on the list (same id, version + 1)."""
        self.federation.require_joined()
        if not entries:
            raise InvalidInput("send at least one entry", [{"field": "entries"}])
        digests = [self.holder_digest(e.subject.code) for e in entries]
        seen: dict[str, int] = {}
        for i, d in enumerate(digests):
            if d in seen:
                raise InvalidInput(f"entries {seen[d]} and {i} name the same subject",
                                   [{"row": i, "field": "subject.code", "error": f"same subject as entry {seen[d]}"}])
            seen[d] = i
        async with write_tx(self.engine) as conn:
            lst = await self._own_list(conn, acct, code)
            result = await self._write_entries(conn, lst, entries, digests)
        if result["added"] or result["changed"]:
            await self._changed()
        return result

    async def _write_entries(self, conn: Any, lst: dict[str, Any], entries: list[EntryIn],
                             digests: list[str]) -> dict[str, Any]:
        held = await store.by_digests(conn, lst["code"], digests)
        on = today()
        docs: list[tuple[dict[str, Any], bool]] = []
        ids: list[str] = []
        unchanged = 0
        for entry, digest in zip(entries, digests):
            prev = held.get(digest)
            prev_doc = json.loads(prev.doc) if prev is not None and not prev.deleted else None
            content = {
                "subject": {"code_type": entry.subject.code_type, "digest": digest,
                            "name": entry.subject.name if lst["public"] else None},
                "reason": entry.reason, "basis": entry.basis,
                "measures": list(entry.measures) if entry.measures is not None else list(lst["measures"]),
                "valid_from": entry.valid_from or (prev_doc["valid_from"] if prev_doc else on),
                "valid_until": entry.valid_until,
            }
            if prev_doc is not None and all(prev_doc.get(k) == v for k, v in content.items()):
                unchanged += 1
                ids.append(prev_doc["id"])
                continue
            doc = {"type": "list_entry", "list": lst["code"], "id": prev_doc["id"] if prev_doc else new_id(),
                   "node": self.node_id, "version": prev_doc["version"] + 1 if prev_doc else 1, "deleted": False,
                   **content, "issuer": lst["issuer"], "scope": "national"}
            ids.append(doc["id"])
            docs.append((doc, prev_doc is not None))
        await self._store_entries(conn, [d for d, _ in docs], [d["id"] for d, was in docs if was])
        return {"added": sum(1 for _, was in docs if not was), "changed": sum(1 for _, was in docs if was),
                "unchanged": unchanged, "entries": ids}

    async def _store_entries(self, conn: Any, docs: list[dict[str, Any]], held_ids: list[str]) -> list[dict[str, Any]]:
        if not docs:
            return []
        seq = await next_counter(conn, SEQ_COUNTER, len(docs))
        change = await next_counter(conn, CHANGE_COUNTER, len(docs))
        now = now_ms()
        signed = []
        new_rows, held_rows = [], []
        held = set(held_ids)
        for i, doc in enumerate(docs):
            doc = self._sign({**doc, "seq": seq - len(docs) + 1 + i, "updated_at": now})
            signed.append(doc)
            row = store.entry_row(doc, _text(doc), change - len(docs) + 1 + i)
            (held_rows if doc["id"] in held else new_rows).append(row)
        await store_rows(conn, store.list_entries.c.id, new_rows, held_rows)
        return signed

    async def remove_entry(self, acct: Account, code: str, entry_id: str, reason: str) -> dict[str, Any]:
        """信用修复 or other removal: a tombstone with the reason, which replicates like any change."""
        async with write_tx(self.engine) as conn:
            await self._own_list(conn, acct, code)
            row = await store.get_entry(conn, entry_id)
            if row is None or row.list != code:
                raise NotFound(f"list {code} has no entry {entry_id}")
            doc = json.loads(row.doc)
            if doc["deleted"]:
                raise ApiError(f"entry {entry_id} was already removed ({doc['removal']['reason']})", code="CONFLICT")
            [signed] = await self._tombstones(conn, [doc], reason)
        await self._changed()
        return signed

    async def _tombstones(self, conn: Any, docs: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
        now = now_ms()
        dead = [{**{k: v for k, v in d.items() if k not in ("signatures", "seq", "updated_at")},
                 "deleted": True, "version": d["version"] + 1, "removal": {"reason": reason, "at": now}}
                for d in docs]
        return await self._store_entries(conn, dead, [d["id"] for d in dead])

    # Checking -------------------------------------------------------------------------------------

    async def check(self, acct: Account, body: CheckBody) -> dict[str, Any]:
        """Every entry in force today that names each subject, from this node's copy of every list."""
        bad: list[dict[str, Any]] = []
        subjects: list[tuple[str, str]] = []
        for i, s in enumerate(body.subjects):
            code = s.code.strip().upper()
            # holder_code_type checks the code as it tells its type: one check a code, not two
            code_type = holder_code_type(code) if s.code_type is None else (
                s.code_type if valid_holder_code(code, s.code_type) else None)
            if code_type is None:
                bad.append({"row": i, "field": "code", "error": "not a valid 公民身份号码 or 统一社会信用代码"})
            subjects.append((code, code_type or ""))
        if bad:
            raise InvalidInput(f"{len(bad)} subject codes fail their check", bad[:100])
        digests = [self.holder_digest(code) for code, _ in subjects]
        on = today()
        unique = sorted(set(digests))
        rows = (self._loop_reader.matching_one(unique[0], on)
                if self._loop_reader is not None and len(unique) == 1 else None)
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        list_docs: dict[str, Any] = {}
        if rows is None or rows:  # read through the engine, or the hits' lists wanted
            async with self.engine.connect() as conn:
                if rows is None:
                    rows = await store.matching(conn, unique, on)
                for digest, doc in rows:
                    found[digest].append(json.loads(doc))
                if found:
                    list_docs = {c: json.loads(t) for c, t in (await store.lists_of(
                        conn, sorted({d["list"] for ds in found.values() for d in ds}))).items()}
        results = []
        reports: dict[str, list[dict[str, str]]] = defaultdict(list)
        for (code, code_type), digest in zip(subjects, digests):
            hits = []
            for e in found.get(digest, ()):
                lst = list_docs.get(e["list"])
                if lst is None or lst["deleted"]:
                    continue  # an entry whose list has not arrived yet, or was closed
                hits.append({"entry": e["id"], "list": {k: lst[k] for k in ("code", "name", "kind", "public")},
                             "reason": e["reason"], "basis": e["basis"], "measures": e["measures"],
                             "valid_from": e["valid_from"], "valid_until": e["valid_until"], "issuer": e["issuer"],
                             "name": e["subject"].get("name")})
                reports[e["node"]].append({"entry": e["id"], "list": e["list"]})
            results.append({"code": code, "code_type": code_type, "hit": bool(hits), "hits": hits})
        if reports:
            await self._report(acct, reports, body.purpose)
        return {"checked": len(results), "hit_subjects": sum(1 for r in results if r["hit"]), "checked_on": on,
                "results": results}

    async def _report(self, acct: Account, reports: dict[str, list[dict[str, str]]], purpose: str) -> None:
        """双反馈: the hits, one message per issuing node, durable before the check is answered."""
        now = now_ms()
        for node, hits in reports.items():
            if node == self.node_id:
                async with write_tx(self.engine) as conn:
                    await store.add_hits(conn, [{"entry": h["entry"], "list": h["list"], "checked_node": self.node_id,
                                                 "checked_dept": acct.dept, "checked_user": acct.user,
                                                 "purpose": purpose, "checked_at": now, "received_at": now}
                                                for h in hits])
            else:
                await self.federation.send_async(HIT_KIND, node, {
                    "hits": hits, "checked_by": {"node": self.node_id, "dept": acct.dept, "user": acct.user},
                    "purpose": purpose, "checked_at": now})

    async def on_hit(self, env: dict[str, Any]) -> dict[str, Any]:
        """`list.hit` at the issuing node: where and when its entries were applied."""
        try:
            msg = HitMessage.model_validate(env["body"])
        except ValidationError as exc:
            raise InvalidInput("malformed list.hit", validation_details(exc)[:10]) from None
        origin = env["origin"]  # the checking node is the envelope's signed origin, whatever the body says
        ids = sorted({str(h.get("entry"))[:26] for h in msg.hits})
        now = now_ms()
        async with write_tx(self.engine) as conn:
            held = await held_seqs(conn, store.list_entries.c.id, ids)
            mine = {k: v for k, v in held.items() if v[1] == self.node_id}
            rows = [{"entry": str(h["entry"]), "list": str(h.get("list"))[:16], "checked_node": origin,
                     "checked_dept": str(msg.checked_by.get("dept"))[:32],
                     "checked_user": (str(msg.checked_by["user"])[:64] if msg.checked_by.get("user") else None),
                     "purpose": msg.purpose[:200], "checked_at": msg.checked_at, "received_at": now}
                    for h in msg.hits if str(h.get("entry")) in mine]
            await store.add_hits(conn, rows)
        return {"accepted": True, "recorded": len(rows)}

    async def hits(self, acct: Account, code: str | None = None, limit: int = 200) -> dict[str, Any]:
        """双反馈 for the caller's own lists (or one of them): per list and checking node, and the latest."""
        async with self.engine.connect() as conn:
            if code is not None:
                await self._own_list(conn, acct, code)
                codes = [code]
            else:
                codes = [r.code for r in await store.all_lists(conn, node=self.node_id, dept=acct.dept)]
            if not codes:
                return {"per_node": [], "recent": []}
            counts = await store.hit_counts(conn, codes)
            recent = await store.hits_for(conn, codes, limit)
        iso = _iso
        return {
            "per_node": [{"list": r.list, "node": r.checked_node, "hits": r.n, "last": iso(r.last)} for r in counts],
            "recent": [{"entry": r.entry, "list": r.list, "checked_node": r.checked_node, "checked_dept": r.checked_dept,
                        "checked_user": r.checked_user, "purpose": r.purpose, "checked_at": iso(r.checked_at),
                        "received_at": iso(r.received_at)} for r in recent],
        }

    # Kept in step with a resource -----------------------------------------------------------------

    async def bind_source(self, acct: Account, code: str, body: SourceBody) -> dict[str, Any]:
        entry = await self.catalog.get(body.resource)
        if entry["node"] != self.node_id or entry["provider"]["dept"] != acct.dept:
            raise Forbidden(f"{body.resource} is not a resource of the caller's department at this node")
        fields = {i["field"] for i in entry["items"]}
        key_field = body.key_field or next(i["field"] for i in entry["items"] if i.get("key"))
        binding = {**body.model_dump(), "key_field": key_field}
        missing = [{"field": f, "error": f"the resource has no item {binding[f]!r}"}
                   for f in ("key_field", "reason_field", "name_field", "basis_field", "valid_until_field")
                   if binding.get(f) is not None and binding[f] not in fields]
        if missing:
            raise InvalidInput("the binding names fields the resource does not have", missing)
        async with write_tx(self.engine) as conn:
            await self._own_list(conn, acct, code)
            await store.put_source(conn, {"list": code, "resource": body.resource,
                                          "binding": json.dumps(binding, ensure_ascii=False), "cursor": 0,
                                          "synced_at": None, "entries": 0, "error": None})
        await self.sync_source(code)
        return await self.source_state(acct, code)

    async def source_state(self, acct: Account, code: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            await self._own_list(conn, acct, code)
            row = await store.get_source(conn, code)
        if row is None:
            raise NotFound(f"list {code} is not bound to a resource")
        return {"list": row.list, "resource": row.resource, "binding": json.loads(row.binding), "cursor": row.cursor,
                "synced_at": row.synced_at, "entries": row.entries, "error": row.error}

    def _records_changed(self, resource: str) -> None:
        self.tasks.spawn(self._sync_bound(resource))

    async def _sync_bound(self, resource: str) -> None:
        async with self.engine.connect() as conn:
            sources = await store.sources_of(conn, resource)
        for s in sources:
            await self.sync_source(s.list)

    async def sync_all_sources(self) -> None:
        async with self.engine.connect() as conn:
            sources = await store.all_sources(conn)
        for s in sources:
            await self.sync_source(s.list)

    async def sync_source(self, code: str) -> None:
        """Apply the resource's record changes since the source's cursor: a live record is an entry (added or
        changed), a deleted one removes its entry. One sync a list at a time, across the node's workers."""
        async with node_lock(self.engine, f"list source {code}"):
            while True:
                async with self.engine.connect() as conn:
                    src = await store.get_source(conn, code)
                    lst_row = await store.get_list(conn, code)
                if src is None or lst_row is None or lst_row.deleted:
                    return
                b = json.loads(src.binding)
                page = await self.data.changes(src.resource, src.cursor, 1000)
                if not page["changes"]:
                    return
                live: dict[str, EntryIn] = {}
                gone: set[str] = set()
                errors = []
                for ch in page["changes"]:  # later changes of a key replace earlier ones
                    data = ch["data"] or {}
                    try:
                        code_value = str(data.get(b["key_field"]) or ch["key"])
                        entry = EntryIn(subject=Subject(code=code_value, code_type=b.get("code_type"),
                                                        name=data.get(b["name_field"]) if b.get("name_field") else None),
                                        reason=str(data.get(b["reason_field"]) or "").strip() or "未注明",
                                        basis=str(data.get(b["basis_field"]) or "") if b.get("basis_field") else "",
                                        valid_until=(data.get(b["valid_until_field"]) or None)
                                        if b.get("valid_until_field") else None)
                    except (ValidationError, TypeError, ValueError) as exc:
                        if ch["deleted"]:
                            continue
                        errors.append(f"record {str(ch['key'])[:40]}: {str(exc).splitlines()[0][:120]}")
                        continue
                    digest = self.holder_digest(entry.subject.code)
                    if ch["deleted"]:
                        live.pop(digest, None)
                        gone.add(digest)
                    else:
                        gone.discard(digest)
                        live[digest] = entry
                async with write_tx(self.engine) as conn:
                    lst = json.loads(lst_row.doc)
                    if live:
                        await self._write_entries(conn, lst, list(live.values()), list(live))
                    if gone:
                        held = await store.by_digests(conn, code, sorted(gone))
                        docs = [json.loads(r.doc) for r in held.values() if not r.deleted]
                        await self._tombstones(conn, docs, SOURCE_REMOVED)
                    count = (await store.count_live(conn, [code])).get(code, 0)
                    await store.put_source(conn, {"list": code, "resource": src.resource, "binding": src.binding,
                                                  "cursor": page["next"], "synced_at": now_ms(), "entries": count,
                                                  "error": "; ".join(errors)[:400] or None})
                await self._changed()
                if not page["more"]:
                    return


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    from datetime import datetime

    from node.workdays import CST

    return datetime.fromtimestamp(ms / 1000, CST).isoformat(timespec="seconds")
