"""Service items (政务服务事项, SPEC §16) and 一证通办.

- Basic items (基本目录事项) are defined by an operator of a province or of the national root with the four
  unified elements (name, type, basis, basic code). Implemented items (实施清单事项) are published by the
  implementing department at its own node, copying those elements unchanged (a difference is refused, naming
  the field), with the time limit and the materials, each linked to the catalog resource or licence type
  that can replace it, or to nothing.
- Both are signed by their origin and replicate as the signed feed `items` (node.federation.feed_tables'
  TableFeed, the licences' and the lists' code path).
- 一证通办 (`gather`): for one applicant, every material sharing can stand in for is verified, queried or
  (licence types) found and verified, all at once, each through the same entry point as a department's own
  call (SharingService.call, LicenceService.find / verify) with the caller's grants and purpose, and each
  bounded by the peer timeout, so one slow source gives its own outcome and never holds up the rest.
- 材料减免率: every gathering adds its outcomes to running totals in the database (node.items.store.count),
  read by `stats` (the API, the portal, the operators' figures).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from federation.canonical import encode_canonical_json
from federation.signing import SigningKey, sign_json
from node.accounts.service import Account
from node.catalog.service import CatalogService
from node.db import next_counter, note_write, write_tx
from node.groupcommit import GroupCommitter
from node.errors import ApiError, Conflict, Forbidden, InvalidInput, NotFound
from node.federation.feed_tables import Stored, TableFeed, store_rows
from node.federation.service import FederationService
from node.ids import level_of, now_ms
from node.items import store
from node.items.models import (BASIC_CODE_RE, ITEM_CODE_RE, UNIFIED, BasicItemBody, ByResource,
                               GatherBody, ImplementedItemBody, ItemDoc)
from node.sharing.models import Requester
from node.web import validation_details

log = logging.getLogger("govnode.items")

FEED = "items"
SEQ_COUNTER = "item_seq"        # this node's seq over its own items (travels in the item)
CHANGE_COUNTER = "item_change"  # local commit order of every item held (the feed cursor)
NO_GRANT = {"GRANT_REQUIRED", "FIELD_NOT_GRANTED", "SHARE_FORBIDDEN", "REVOKED", "FORBIDDEN", "NOT_NEIGHBOUR"}
UNREACHABLE = {"PEER_UNREACHABLE", "PEER_TIMEOUT", "UNAVAILABLE", "NODE_UNKNOWN", "RATE_LIMITED"}
REPLACED = ("obtained", "verified")


def search_text(doc: dict[str, Any]) -> str:
    parts = [doc["code"], doc["name"], doc["basis"][:500], doc["type"]]
    if doc.get("dept"):
        parts.append(doc["dept"].get("name", ""))
    parts += [m["name"] for m in doc.get("materials") or []]
    return " ".join(parts).lower()


def item_problem(obj: Any) -> str | None:
    """Why a received item is malformed or inconsistent (its signature aside), or None."""
    try:
        doc = ItemDoc.model_validate(obj)
    except ValidationError as exc:
        return "malformed service item: " + "; ".join(f"{d['field']}: {d['error']}"
                                                      for d in validation_details(exc)[:3])
    if not BASIC_CODE_RE.match(doc.basic_code) or not ITEM_CODE_RE.match(doc.code):
        return f"malformed item code {doc.code}"
    if doc.kind == "basic":
        if doc.code != doc.basic_code or not doc.basic_code.startswith(doc.node + "-"):
            return f"the basic item {doc.code} is not defined by its origin {doc.node}"
    else:
        if doc.code.split("/")[0] != doc.basic_code or doc.code.split("/")[1][:6] != doc.node:
            return f"the implemented item {doc.code} does not name its basic item and origin {doc.node}"
        if doc.dept is None or doc.materials is None or doc.time_limit is None:
            return f"the implemented item {doc.code} lacks its department, time limit or materials"
    return None


class ItemFeed(TableFeed):
    """Service items as a signed feed of the federation (served at /federation/v1/items/changes)."""

    name = FEED
    counter = CHANGE_COUNTER
    stored = (Stored(store.service_items.c.code, store.service_items.c.doc,
                     lambda d, c: store.row_of(d, c, search_text(d), encode_canonical_json(d).decode()), "an item"),)

    def __init__(self, items: "ItemService") -> None:
        self.items = items

    def key(self, obj: dict[str, Any]) -> Any:
        return obj.get("code")

    def problem(self, obj: dict[str, Any]) -> str | None:
        return item_problem(obj)

    async def log_refusal(self, conn: Any, refusal: dict[str, Any]) -> None:
        await store.log_refusal(conn, at=refusal["at"], code=refusal["key"], node=refusal["node"],
                                received_from=refusal["received_from"], reason=refusal["reason"])


def _log_lost_count(fut: "asyncio.Future[None]") -> None:
    if not fut.cancelled() and fut.exception() is not None:  # the call's record failed with it: it answers 503
        log.warning("the totals of a 一证通办 call were not stored: %s", fut.exception())


def _ratio(n: int, d: int) -> float:
    return round(n / d, 4) if d else 0.0


class ItemService:
    def __init__(self, engine: AsyncEngine, node_id: str, key: SigningKey, catalog: CatalogService,
                 federation: FederationService, sharing: Any, licences: Any, peer_timeout_s: float,
                 journal: GroupCommitter) -> None:
        self.engine = engine
        self.node_id = node_id
        self.key = key
        self.catalog = catalog
        self.federation = federation
        self.sharing = sharing
        self.licences = licences
        self.peer_timeout_s = peer_timeout_s
        self.journal = journal  # the node's journal (node.audit): the running totals of 一证通办 commit in it

    def connect(self) -> None:
        self.federation.register_feed(ItemFeed(self))

    # Reading ------------------------------------------------------------------------------------------

    async def get(self, code: str, *, include_deleted: bool = False) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await store.get(conn, code)
        if row is None:
            raise NotFound(f"no service item {code} is known at node {self.node_id}")
        doc = json.loads(row.doc)
        if doc["deleted"] and not include_deleted:
            raise NotFound(f"service item {code} was withdrawn")
        return doc

    async def search(self, *, q: str | None = None, node: str | None = None, kind: str | None = None,
                     basic_code: str | None = None, dept: str | None = None, page: int = 1,
                     page_size: int = 20) -> tuple[int, list[dict[str, Any]]]:
        async with self.engine.connect() as conn:
            total, docs = await store.search(conn, text=q, node=node, kind=kind, basic_code=basic_code, dept=dept,
                                             offset=(page - 1) * page_size, limit=page_size)
        return total, [json.loads(d) for d in docs]

    # Publishing -----------------------------------------------------------------------------------------

    async def publish(self, acct: Account, body: BasicItemBody | ImplementedItemBody) -> dict[str, Any]:
        try:
            if isinstance(body, BasicItemBody):
                return await self._publish_basic(acct, body)
            return await self._publish_implemented(acct, body)
        except IntegrityError:
            raise Conflict("an item with this code was published at the same moment") from None

    def _may_define(self, acct: Account) -> None:
        if acct.role != "operator":
            raise Forbidden("basic items are defined by an operator of the province (or the national root)")
        if level_of(self.node_id) not in ("province", "national"):
            raise Forbidden(f"basic items are defined at a province or the national root, not at "
                            f"{level_of(self.node_id)} node {self.node_id}")

    async def _publish_basic(self, acct: Account, body: BasicItemBody) -> dict[str, Any]:
        self._may_define(acct)
        prefix = f"{self.node_id}-{body.type}-"
        if body.basic_code is not None and not body.basic_code.startswith(prefix):
            raise InvalidInput(f"a basic code of this node for type {body.type} starts with {prefix}",
                               [{"field": "basic_code", "error": f"must start with {prefix}"}])
        async with write_tx(self.engine) as conn:
            code = body.basic_code
            if code is None:
                while True:  # skip serials taken by codes given in full
                    code = f"{prefix}{await next_counter(conn, f'item_basic:{body.type}'):05d}"
                    if await store.get(conn, code) is None:
                        break
            elif await store.get(conn, code) is not None:
                raise Conflict(f"service item {code} already exists")
            doc = {"kind": "basic", "code": code, "basic_code": code, "name": body.name, "type": body.type,
                   "basis": body.basis, "scope": "national" if self.node_id == "000000" else "province"}
            signed = await self._write(conn, doc, version=1, new=True)
        await self._changed()
        return signed

    async def _check_implemented(self, body: ImplementedItemBody) -> None:
        try:
            basic = await self.get(body.basic_code)
        except NotFound:
            raise InvalidInput(f"no basic item {body.basic_code} has reached node {self.node_id} (defined at the "
                               "province, it replicates here)", [{"field": "basic_code", "error": "unknown"}]) from None
        if basic["kind"] != "basic":
            raise InvalidInput(f"{body.basic_code} is not a basic item", [{"field": "basic_code"}])
        bad = [{"field": f, "error": f"differs from the basic item's {json.dumps(basic[f], ensure_ascii=False)[:200]}"}
               for f in UNIFIED if getattr(body, f) != basic[f]]
        if bad:
            raise InvalidInput(f"an implemented item copies the four elements of {body.basic_code} unchanged; "
                               f"{', '.join(d['field'] for d in bad)} differ", bad)
        problems = []
        for i, m in enumerate(body.materials):
            link = m.by_sharing
            if isinstance(link, ByResource):
                try:
                    entry = await self.catalog.get(link.resource)
                except NotFound:
                    problems.append({"field": f"materials.{i}.by_sharing.resource",
                                     "error": f"no catalog resource {link.resource} is held at this node"})
                    continue
                items = {it["field"] for it in entry["items"]}
                for f in link.fields:
                    if f not in items:
                        problems.append({"field": f"materials.{i}.by_sharing.fields",
                                         "error": f"{f} is not an item of {link.resource}"})
        if problems:
            raise InvalidInput(f"{len(problems)} material link(s) name what does not exist", problems)

    async def _publish_implemented(self, acct: Account, body: ImplementedItemBody) -> dict[str, Any]:
        (signed,) = await self.publish_implemented_many(acct, [body])
        return signed

    async def publish_implemented_many(self, acct: Account, bodies: list[ImplementedItemBody],
                                       where: list[str] | None = None) -> list[dict[str, Any]]:
        """Publish implemented items of the caller, all in one transaction or none (an XLSX import); every
        refusal names its item (`where[i]`, e.g. its rows) and field."""
        if acct.role != "dept":
            raise Forbidden("an implemented item is published by the implementing department")
        problems: list[dict[str, Any]] = []
        for i, body in enumerate(bodies):
            prefix = f"{body.basic_code}/{self.node_id}"
            try:
                await self._check_implemented(body)
                if body.code is not None and not body.code.startswith(prefix):
                    raise InvalidInput(f"an implemented item of this node for {body.basic_code} has a code starting "
                                       f"with {prefix}", [{"field": "code", "error": f"must start with {prefix}"}])
            except InvalidInput as err:
                if len(bodies) == 1:
                    raise
                problems += [{**d, "row": where[i] if where else i} for d in err.details or [{"error": err.message}]]
        if problems:
            raise InvalidInput(f"{len(problems)} problem(s) in the items sent; nothing was published", problems)
        out = []
        async with write_tx(self.engine) as conn:
            for body in bodies:
                code = body.code
                if code is None:
                    prefix = f"{body.basic_code}/{self.node_id}"
                    while True:
                        serial = await next_counter(conn, f"item_impl:{body.basic_code}")
                        if serial > 999:
                            raise Conflict(f"node {self.node_id} has used the 999 codes of {body.basic_code}")
                        code = f"{prefix}{serial:03d}"
                        if await store.get(conn, code) is None:
                            break
                elif await store.get(conn, code) is not None:
                    raise Conflict(f"service item {code} already exists")
                out.append(await self._write(conn, self._implemented(acct, code, body), version=1, new=True))
        await self._changed()
        return out

    def _implemented(self, acct: Account, code: str, body: ImplementedItemBody,
                     dept_name: str | None = None) -> dict[str, Any]:
        return {"kind": "implemented", "code": code, "basic_code": body.basic_code, "name": body.name,
                "type": body.type, "basis": body.basis, "scope": "province",
                "dept": {"dept": acct.dept, "name": dept_name or acct.name}, "time_limit": body.time_limit,
                "materials": [m.model_dump(exclude_none=False) for m in body.materials]}

    async def update(self, acct: Account, code: str, body: BasicItemBody | ImplementedItemBody) -> dict[str, Any]:
        if isinstance(body, ImplementedItemBody):
            await self._check_implemented(body)
        async with write_tx(self.engine) as conn:
            current = await self._own(conn, acct, code)
            if body.kind != current["kind"]:
                raise InvalidInput(f"{code} is a {current['kind']} item", [{"field": "kind"}])
            if body.basic_code not in (None, current["basic_code"]) or getattr(body, "code", None) not in (None, code):
                raise InvalidInput("an item's code does not change", [{"field": "code"}])
            if isinstance(body, BasicItemBody):
                if body.type != current["type"]:
                    raise InvalidInput("the type is part of a basic item's code; define a new item",
                                       [{"field": "type"}])
                doc = {**{k: current[k] for k in ("kind", "code", "basic_code", "scope")},
                       "name": body.name, "type": body.type, "basis": body.basis}
            else:
                doc = self._implemented(acct, code, body, current["dept"]["name"])
            signed = await self._write(conn, doc, version=current["version"] + 1)
        await self._changed()
        return signed

    async def withdraw(self, acct: Account, code: str) -> dict[str, Any]:
        async with write_tx(self.engine) as conn:
            current = await self._own(conn, acct, code)
            doc = {k: v for k, v in current.items() if k not in ("signatures", "seq", "version", "updated_at", "node",
                                                                 "deleted")}
            signed = await self._write(conn, doc, version=current["version"] + 1, deleted=True)
        await self._changed()
        return signed

    async def _own(self, conn: Any, acct: Account, code: str) -> dict[str, Any]:
        row = await store.get(conn, code, for_update=True)
        if row is None:
            raise NotFound(f"no service item {code}")
        doc = json.loads(row.doc)
        if doc["node"] != self.node_id:
            raise Forbidden(f"{code} belongs to node {doc['node']}; only its origin changes it")
        if doc["kind"] == "basic":
            self._may_define(acct)
        elif acct.role != "dept" or doc["dept"]["dept"] != acct.dept:
            raise Forbidden(f"{code} is implemented by department {doc['dept']['dept']}, not by the caller")
        if doc["deleted"]:
            raise NotFound(f"service item {code} was withdrawn")
        return doc

    async def _write(self, conn: Any, doc: dict[str, Any], *, version: int, deleted: bool = False,
                     new: bool = False) -> dict[str, Any]:
        note_write(resource=doc["code"])
        seq = await next_counter(conn, SEQ_COUNTER)
        change_id = await next_counter(conn, CHANGE_COUNTER)
        signed = sign_json({**doc, "node": self.node_id, "seq": seq, "version": version, "deleted": deleted,
                            "updated_at": now_ms()}, self.node_id, self.key)
        row = store.row_of(signed, change_id, search_text(signed), encode_canonical_json(signed).decode())
        await store_rows(conn, store.service_items.c.code, [row] if new else [], [] if new else [row])
        return signed

    async def _changed(self) -> None:
        try:
            await self.federation.notify_neighbours(FEED)
        except Exception:  # noqa: BLE001 - the scheduled pull carries the change anyway
            log.exception("could not notify neighbours of an item change")

    # 一证通办 ---------------------------------------------------------------------------------------------

    async def gather(self, acct: Account, code: str, body: GatherBody) -> dict[str, Any]:
        """Every material of an implemented item that sharing can stand in for, for one applicant, at once."""
        started = time.monotonic()
        item = await self.get(code)
        if item["kind"] != "implemented":
            raise InvalidInput(f"{code} is a basic item; 一证通办 runs on an implemented item (实施清单事项)",
                               [{"field": "code", "error": "a basic item"}])
        missing = sorted({f for m in item["materials"] if (m.get("by_sharing") or {}).get("op") == "verify"
                          for f in m["by_sharing"]["fields"] if f not in body.values})
        if missing:
            raise InvalidInput("the materials that are verified compare what the applicant states: give "
                               f"{', '.join(missing)}", [{"field": f"values.{f}", "error": "required"} for f in missing])
        requester = Requester(node=acct.node, dept=acct.dept, user=acct.user, purpose=body.purpose)
        results = await asyncio.gather(*(self._material(m, body, requester) for m in item["materials"]))
        # The running totals go to the node's journal, where the call's own audit record follows them: the
        # journal commits in order, so they are durable before the answer (which waits for that record), and
        # usually in the same commit. A transaction of their own would put a second commit (and its flush) on
        # every call's path, after the slowest material.
        counted = self.journal.enqueue(store.count, [
            {"item": code, "material": r["id"], "dept": item["dept"]["dept"], "outcome": r["outcome"]}
            for r in results])
        counted.add_done_callback(_log_lost_count)
        replaced = sum(r["outcome"] in REPLACED for r in results)
        return {"item": code, "name": item["name"], "subject": {"code_type": body.subject.code_type},
                "materials": results, "total": len(results),
                "shareable": sum(r["outcome"] != "not_shareable" for r in results), "replaced": replaced,
                "to_bring": [r["name"] for r in results if r["outcome"] not in REPLACED and r["required"]],
                "elapsed_ms": round((time.monotonic() - started) * 1000)}

    async def _material(self, m: dict[str, Any], body: GatherBody, requester: Requester) -> dict[str, Any]:
        started = time.monotonic()
        out: dict[str, Any] = {"id": m["id"], "name": m["name"], "required": m.get("required", True), "via": []}
        link = m.get("by_sharing")
        try:
            if link is None:
                out["outcome"] = "not_shareable"
            elif "licence_type" in link:
                out["licence_type"] = link["licence_type"]
                await self._licence(out, link["licence_type"], body)
            else:
                out["resource"] = link["resource"]
                async with asyncio.timeout(self.peer_timeout_s):
                    await self._shared(out, link, body, requester)
        except TimeoutError:
            out.update(outcome="unreachable", error={
                "code": "PEER_TIMEOUT", "message": f"no answer within the peer timeout ({self.peer_timeout_s:g} s)"})
        except ApiError as err:
            code = err.code
            outcome = "no_grant" if code in NO_GRANT else "unreachable" if code in UNREACHABLE else "not_found"
            out.update(outcome=outcome, error={"code": code, "message": err.message[:500],
                                               **({"details": err.details} if isinstance(err.details, dict) else {})})
        out["elapsed_ms"] = round((time.monotonic() - started) * 1000)
        return out

    async def _shared(self, out: dict[str, Any], link: dict[str, Any], body: GatherBody,
                      requester: Requester) -> None:
        key = body.subject.code
        if link["op"] == "verify":
            params = {"key": key, "fields": {f: body.values[f] for f in link["fields"]}}
        else:
            params = {"key": key, "fields": link["fields"]}
        answer = await self.sharing.call(link["op"], link["resource"], params, requester)
        out["via"] = list(answer.get("via") or [self.node_id])
        if link["op"] == "verify":
            out["fields"] = answer.get("fields", {})
            # A verify discloses only the match flags: a record that is missing and one whose every field
            # differs look the same, and both mean the applicant's statement is not confirmed.
            out["outcome"] = "verified" if answer.get("match") else "mismatch"
        else:
            records = answer.get("records") or []
            if records:
                out.update(outcome="obtained", record=records[0], masked=answer.get("masked") or [])
            else:
                out["outcome"] = "not_found"

    async def _licence(self, out: dict[str, Any], licence_type: str, body: GatherBody) -> None:
        """A licence of this type held by the applicant: found in the replicated index (no call), then verified
        with its issuer within the peer timeout; an issuer that cannot answer in time leaves the replicated
        index's status, and says so (as LicenceService.verify does when the issuer is unreachable)."""
        found = await self.licences.find(body.subject.code, False)
        mine = [s for s in found["licences"] if s["licence_type"]["code"] == licence_type]
        current = [s for s in mine if s["status"] == "valid"]
        if not current:
            out["outcome"] = "not_found"
            if mine:
                out["error"] = {"code": "NOT_FOUND", "message": "the applicant's licences of this type are "
                                + ", ".join(sorted({s['status'] for s in mine}))}
            return
        summary = current[0]
        identifier = summary["identifier"]
        issuer = summary["issuer"]["node"]
        out["licence"] = {"identifier": identifier, "type_name": summary["licence_type"].get("name"),
                          "issuer": summary["issuer"], "valid_until": summary["valid_until"]}
        try:
            async with asyncio.timeout(self.peer_timeout_s):
                result = await self.licences.verify({"identifier": identifier})
        except TimeoutError:
            result = {"valid": True, "status": summary["status"], "source": "replicated index",
                      "issuer_reachable": False}
        source = result.get("source", "issuer")
        out["licence"].update(status=result.get("status"), source=source)
        if source == "issuer":
            out["via"] = [issuer]
        out["outcome"] = "verified" if result.get("valid") else "mismatch"
        if not result.get("valid"):
            out["error"] = {"code": "INVALID", "message": "; ".join(r["message"] for r in result.get("reasons", []))[:500]}

    # 材料减免率 ----------------------------------------------------------------------------------------------

    async def stats(self, *, dept: str | None = None, item: str | None = None) -> dict[str, Any]:
        """Per implemented item and per implementing department: materials sharing can replace (by design), and
        the share of 一证通办 calls at this node in which they were obtained or verified."""
        async with self.engine.connect() as conn:
            rows = await store.stats(conn, dept=dept, item=item)
            codes = sorted({r.item for r in rows})
            docs = {d["code"]: d for d in map(json.loads, await store.docs(conn, codes))}
        by_item: dict[str, list[Any]] = {}
        for r in rows:
            by_item.setdefault(r.item, []).append(r)
        items = []
        for code, rs in by_item.items():
            doc = docs.get(code)
            if doc is None or not doc.get("materials"):
                continue
            total = len(doc["materials"])
            shareable = sum(m.get("by_sharing") is not None for m in doc["materials"])
            calls = max(r.calls for r in rs)
            replaced = sum(r.obtained + r.verified for r in rs)
            outcomes = {o: sum(getattr(r, o) for r in rs) for o in store.OUTCOMES}
            items.append({"code": code, "name": doc["name"], "node": doc["node"], "dept": doc["dept"]["dept"],
                          "dept_name": doc["dept"]["name"], "materials": total, "shareable": shareable,
                          "design_rate": _ratio(shareable, total), "calls": calls, "replaced": replaced,
                          "obtained_rate": _ratio(replaced, calls * shareable),
                          "reduction_rate": _ratio(replaced, calls * total), "outcomes": outcomes})
        depts: dict[str, dict[str, Any]] = {}
        for it in items:
            d = depts.setdefault(it["dept"], {"dept": it["dept"], "name": it["dept_name"], "items": 0, "materials": 0,
                                              "shareable": 0, "calls": 0, "replaced": 0, "_slots": 0})
            d["items"] += 1
            d["materials"] += it["materials"]
            d["shareable"] += it["shareable"]
            d["calls"] += it["calls"]
            d["replaced"] += it["replaced"]
            d["_slots"] += it["calls"] * it["materials"]
        dept_list = []
        for d in depts.values():
            slots = d.pop("_slots")
            dept_list.append({**d, "design_rate": _ratio(d["shareable"], d["materials"]),
                              "reduction_rate": _ratio(d["replaced"], slots)})
        for it in items:
            it.pop("dept_name")
        return {"items": items, "depts": sorted(dept_list, key=lambda d: d["dept"])}

    async def figures(self) -> dict[str, Any]:
        """The node's 材料减免率 in a few numbers, for the operators' figures page: items with calls, calls,
        materials replaced, and the reduction rate over every call."""
        s = await self.stats()
        slots = sum(i["calls"] * i["materials"] for i in s["items"])
        replaced = sum(i["replaced"] for i in s["items"])
        return {"items": len(s["items"]), "calls": sum(i["calls"] for i in s["items"]), "replaced": replaced,
                "reduction_rate": _ratio(replaced, slots)}
