"""Multi-source checks (多元校核): two resources, at any nodes, that describe the same subjects under the same key;
the job compares the items named, in batches, through the federation, and reports per item how many keys agree,
disagree or are missing on one side, with samples of disagreeing keys (values masked).

How it reads:
- the left resource's records: from this node's records if it is held here, else from its change feed (the
  department the check runs for needs a grant with `subscribe`; items the feed shows masked cannot be compared);
- each batch goes to the right resource as a `compare` call (SPEC §10), wherever it is held: only per-item
  equality flags come back, never the right side's values. A left value the right item's type cannot take counts
  as a disagreement; a value absent on the right does too (compare tells equality only);
- the right resource's keys are then read the same way (when they can be) to count keys only on the right.

One run at a time per check; the report is saved after every batch, so its progress can be followed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from node.accounts.service import Account
from node.catalog.service import CatalogService
from node.supervisor import Supervisor
from node.data.rows import RowError, key_text
from node.data.service import DataService
from node.db import write_tx
from node.errors import ApiError, FieldNotGranted, Forbidden, InvalidInput, NotFound
from node.ids import new_id, now_ms
from node.quality import store
from node.quality.models import CheckCreate
from node.sharing.masking import masker
from node.sharing.models import Requester
from node.sharing.service import SharingService
from node.workdays import cst_iso

log = logging.getLogger("govnode.quality")

FEED_PAGE = 1000


class CheckService:
    def __init__(self, engine: AsyncEngine, node_id: str, catalog: CatalogService, data: DataService,
                 sharing: SharingService, subscriptions: Any) -> None:
        self.engine = engine
        self.node_id = node_id
        self.catalog = catalog
        self.data = data
        self.sharing = sharing
        self.subscriptions = subscriptions  # node.subscriptions: the change feed, wherever the resource is held
        self.tasks = Supervisor(node_id, log)  # one job a running check, by its id
        # Checks run in the worker that does the node's background work (node.cluster); the others tell it.
        self.cluster: Any = None

    async def take_up(self) -> None:
        """This worker runs the checks from now on: one marked running was left by a worker that stopped."""
        async with write_tx(self.engine) as conn:
            await store.interrupt_running(conn, now_ms())

    async def give_up(self) -> None:
        await self.tasks.close()  # each check being run is saved as interrupted

    async def close(self) -> None:
        await self.tasks.close()

    def _runs_here(self) -> bool:
        return self.cluster is None or self.cluster.leader

    def told(self, check_id: str) -> None:
        """Another worker started a check (node.cluster)."""
        if self._runs_here() and check_id and self.tasks.running(check_id) is None:
            self.tasks.spawn(self._launch_stored(check_id))

    async def _launch_stored(self, check_id: str) -> None:
        row = await self._row(check_id)
        if row.status == "running" and self.tasks.running(check_id) is None:
            self.tasks.spawn(self._run(check_id, json.loads(row.spec)), key=check_id)

    # The operator's API ---------------------------------------------------------------------------------

    async def create(self, acct: Account, body: CheckCreate) -> dict[str, Any]:
        if acct.role != "operator":
            raise Forbidden("multi-source checks are declared by the node's operators")
        left, right = await self.catalog.get(body.left), await self.catalog.get(body.right)
        pairs = body.pairs()
        bad = [{"field": f"fields.{p['left']}", "error": f"not an item of {body.left}"} for p in pairs
               if p["left"] not in {i["field"] for i in left["items"]}]
        bad += [{"field": f"fields.{p['right']}", "error": f"not an item of {body.right}"} for p in pairs
                if p["right"] not in {i["field"] for i in right["items"]}]
        if bad:
            raise InvalidInput(f"{len(bad)} item(s) are not in the resources compared", bad)
        now = now_ms()
        spec = {"name": body.name, "left": body.left, "right": body.right, "fields": pairs,
                "dept": body.dept or acct.dept, "batch_size": body.batch_size, "samples": body.samples}
        row = {"id": new_id(), "name": body.name, "created_by": acct.principal,
               "spec": json.dumps(spec, ensure_ascii=False), "status": "running", "report": None,
               "created_at": now, "updated_at": now}
        async with write_tx(self.engine) as conn:
            await store.insert_check(conn, row)
        self._launch(row["id"], spec)
        return self._doc(row["id"], spec, row["created_by"], now, "running", None)

    async def run(self, acct: Account, check_id: str) -> dict[str, Any]:
        if acct.role != "operator":
            raise Forbidden("multi-source checks are run by the node's operators")
        row = await self._row(check_id)
        if self.tasks.running(check_id) is not None or row.status == "running":
            raise ApiError(f"check {check_id} is running", code="CONFLICT")
        spec = json.loads(row.spec)
        async with write_tx(self.engine) as conn:
            await store.save_check(conn, check_id, "running", None, now_ms())
        self._launch(check_id, spec)
        return self._doc(check_id, spec, row.created_by, row.created_at, "running", None)

    async def get(self, acct: Account, check_id: str) -> dict[str, Any]:
        if acct.role not in ("operator", "auditor"):
            raise Forbidden("multi-source checks are seen by the node's operators and auditors")
        row = await self._row(check_id)
        return self._doc(row.id, json.loads(row.spec), row.created_by, row.created_at, row.status,
                         json.loads(row.report) if row.report else None)

    async def list_checks(self, acct: Account) -> list[dict[str, Any]]:
        if acct.role not in ("operator", "auditor"):
            raise Forbidden("multi-source checks are seen by the node's operators and auditors")
        async with self.engine.connect() as conn:
            rows = await store.list_checks(conn)
        return [self._doc(r.id, json.loads(r.spec), r.created_by, r.created_at, r.status,
                          json.loads(r.report) if r.report else None) for r in rows]

    async def _row(self, check_id: str) -> Any:
        async with self.engine.connect() as conn:
            row = await store.get_check(conn, check_id)
        if row is None:
            raise NotFound(f"no check {check_id} at node {self.node_id}")
        return row

    @staticmethod
    def _doc(check_id: str, spec: dict[str, Any], by: str, at: int, status: str, report: Any) -> dict[str, Any]:
        return {"id": check_id, "name": spec["name"], "left": spec["left"], "right": spec["right"],
                "fields": spec["fields"], "dept": spec["dept"], "batch_size": spec["batch_size"],
                "samples": spec["samples"], "created_by": by, "created_at": cst_iso(at), "status": status,
                "report": report}

    def _launch(self, check_id: str, spec: dict[str, Any]) -> None:
        if self._runs_here():
            self.tasks.spawn(self._run(check_id, spec), key=check_id)
        else:
            self.tasks.spawn(self.cluster.tell("checks", check_id))

    async def wait(self, check_id: str) -> None:
        """Until the running job of a check ends (tests, the CLI)."""
        task = self.tasks.running(check_id)
        if task is not None:
            await asyncio.shield(task)

    # The job ----------------------------------------------------------------------------------------------

    async def _records(self, entry: dict[str, Any], requester: Requester, batch: int
                       ) -> AsyncIterator[tuple[list[tuple[str, dict[str, Any]]], frozenset[str]]]:
        """Batches of (key, record) of a resource, and the items that come masked."""
        code = entry["code"]
        if entry["node"] == self.node_id:
            after: str | None = None
            while True:
                async with self.engine.connect() as conn:
                    rows = await store.live_records(conn, code, after, batch)
                if not rows:
                    return
                yield [(r.key, r.data) for r in rows], frozenset()
                after = rows[-1].key
        since = 0
        while True:
            page = await self.subscriptions.pull(entry, requester, since, min(batch, FEED_PAGE))
            recs = [(c["key"], c["data"]) for c in page.get("changes") or [] if not c.get("deleted") and c.get("data")]
            if recs:
                yield recs, frozenset(page.get("masked") or ())
            since = int(page.get("next") or since)
            if not page.get("more"):
                return

    async def _run(self, check_id: str, spec: dict[str, Any]) -> None:
        started = now_ms()
        report: dict[str, Any] = {"started_at": cst_iso(started), "finished_at": None, "batches": 0,
                                  "left": {"resource": spec["left"], "records": 0},
                                  "right": {"resource": spec["right"], "records": None},
                                  "keys": {"both": 0, "only_left": 0, "only_right": None},
                                  "fields": [{**p, "agree": 0, "disagree": 0, "missing_left": 0, "missing_right": 0,
                                              "samples": []} for p in spec["fields"]],
                                  "notes": [], "error": None}
        status = "failed"
        try:
            await self._compare_all(check_id, spec, report)
            status = "done"
        except asyncio.CancelledError:
            status = "interrupted"
            raise
        except ApiError as err:
            report["error"] = {"code": err.code, "message": err.message}
        except Exception as exc:  # noqa: BLE001 - reported in the check
            log.exception("check %s failed", check_id)
            report["error"] = {"code": "INTERNAL", "message": f"internal error: {type(exc).__name__}"}
        finally:
            report["finished_at"] = cst_iso(now_ms())
            try:
                async with write_tx(self.engine) as conn:
                    await store.save_check(conn, check_id, status, json.dumps(report, ensure_ascii=False), now_ms())
            except Exception:  # noqa: BLE001
                log.exception("could not save the report of check %s", check_id)

    async def _compare_all(self, check_id: str, spec: dict[str, Any], report: dict[str, Any]) -> None:
        left, right = await self.catalog.get(spec["left"]), await self.catalog.get(spec["right"])
        lschema, rschema = self.data.schema(left), self.data.schema(right)
        requester = Requester(node=self.node_id, dept=spec["dept"])
        pairs = spec["fields"]
        lkey, rkey = lschema.key.field, rschema.key.field
        key_mask = masker(lschema.key.type, lschema.key.check) if lschema.key.sensitive else None
        value_mask = {p["left"]: masker(lschema.by_field[p["left"]].type, lschema.by_field[p["left"]].check)
                      for p in pairs}
        right_conv = {p["right"]: rschema.by_field[p["right"]].lenient for p in pairs}
        max_samples = int(spec["samples"])
        left_keys: set[str] = set()
        tallies = report["fields"]

        def sample(t: dict[str, Any], key: str, value: Any) -> None:
            if len(t["samples"]) < max_samples:
                shown = value_mask[t["left"]](value)
                t["samples"].append({"key": key_mask(key) if key_mask else key,
                                     "left": shown if shown is not None else "(withheld)"})

        async for batch, masked in self._records(left, requester, int(spec["batch_size"])):
            hidden = [p["left"] for p in pairs if p["left"] in masked] + ([lkey] if lkey in masked else [])
            if hidden:
                raise FieldNotGranted(f"{spec['left']} shows {', '.join(hidden)} masked to {requester.dept}: the "
                                      "grant must include the items compared")
            submitted: list[dict[str, Any]] = []
            unconvertible: list[set[str]] = []
            for key, data in batch:
                left_keys.add(key)
                rec = {rkey: data.get(lkey, key)}
                bad: set[str] = set()
                for p in pairs:
                    v = data.get(p["left"])
                    if v is None:
                        continue
                    try:
                        right_conv[p["right"]](v)
                    except RowError:
                        bad.add(p["right"])
                        continue
                    rec[p["right"]] = v
                submitted.append(rec)
                unconvertible.append(bad)
            answer = await self.sharing.call("compare", spec["right"], {"records": submitted}, requester)
            results = answer.get("results") or []
            if len(results) != len(submitted):
                raise ApiError(f"{spec['right']} answered {len(results)} results for {len(submitted)} records",
                               code="PEER_UNREACHABLE")
            for (key, data), res, bad in zip(batch, results, unconvertible):
                found = bool(res.get("found"))
                report["keys"]["both" if found else "only_left"] += 1
                flags = res.get("fields") or {}
                for t in tallies:
                    lv = data.get(t["left"])
                    if not found:
                        t["missing_right"] += 1
                    elif t["right"] in bad or (t["right"] in flags and not flags[t["right"]]):
                        t["disagree"] += 1
                        sample(t, key, lv)
                    elif t["right"] in flags:
                        t["agree"] += 1
                    else:
                        t["missing_left"] += 1
            report["left"]["records"] += len(batch)
            report["batches"] += 1
            async with write_tx(self.engine) as conn:
                await store.save_check(conn, check_id, "running", json.dumps(report, ensure_ascii=False), now_ms())
        # Keys held only on the right, when the right resource can be read.
        only_right = 0
        seen = 0
        try:
            async for batch, _masked in self._records(right, requester, int(spec["batch_size"])):
                seen += len(batch)
                for key, data in batch:
                    try:
                        k = key_text(lschema.key.lenient(data.get(rkey, key)))
                    except RowError:
                        k = key
                    if k not in left_keys:
                        only_right += 1
        except ApiError as err:
            report["notes"].append(f"keys only on the right were not counted: {err.code}: {err.message}")
            return
        report["right"]["records"] = seen
        report["keys"]["only_right"] = only_right
        for t in tallies:
            t["missing_left"] += only_right

