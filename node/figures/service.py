"""Figures (绩效) and alerts.

- This node's calls come from running totals (node.figures.store.figures_daily), moved in the audit journal's
  commit: a page view reads at most one row per day, kind, resource, department and op of its window, never
  the audit log.
- Workflows (applications now, data requests by the same shape later), feedback and the catalog's figures
  are read from their own tables, which are small beside the audit log.
- A parent learns its subtree's figures from signed daily reports (`FigureReport`), replicated up the tree
  as the signed feed `figures` (node.federation.replication): each node signs its own figures for each of
  the last days every `figures.report_interval_s` when they changed, and a city serves its parent its own
  reports and its counties'. A node counts only the calls it made for its departments and those it served
  on its own resources, never those it relayed, so the sum over a subtree counts each call once as made (at
  the caller's node) and once as served (at the provider's).
- `combine` does the arithmetic of a subtree, for this node's figures and its descendants' reports alike.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from federation.signing import sign_json
from node.audit import store as audit_store
from node.audit.service import GENESIS, link_break
from node.db import next_counter, write_tx
from node.federation.replication import SignedFeed
from node.figures import store
from node.figures.models import FigureReport
from node.ids import now_ms
from node.supervisor import Supervisor
from node.workdays import cst_date

if TYPE_CHECKING:
    from node.config import FiguresConfig
    from node.federation.service import FederationService

log = logging.getLogger("govnode.figures")

FEED = "figures"
REPORTED_DAYS = 7  # a report for each of the last days: statuses of earlier applications still move
# How long a record of each declared cycle may go unchanged and still count as fresh (数据鲜活): the cycle and a
# day's grace for the update of its last day. `other` declares no cycle and is not judged.
CYCLE_DAYS = {"realtime": 1, "daily": 1, "weekly": 7, "monthly": 31, "quarterly": 92, "yearly": 366}
DAY_MS = 86_400_000
def workflow_kinds() -> dict[str, Any]:
    """The workflows the figures count, by name: each kind's statuses are a report's columns, and its two steps
    (the platform's review or assignment, then the department's decision or answer) a report's `review` and
    `decision` (node.workflow.Kind, the one description of each)."""
    from node.applications.service import APPLICATION
    from node.requests.service import DATA_REQUEST
    return {k.name: k for k in (APPLICATION, DATA_REQUEST)}


def days_between(first: str, last: str) -> list[str]:
    a, b = date.fromisoformat(first), date.fromisoformat(last)
    return [(a + timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def day_bounds(day: str) -> tuple[int, int]:
    """The instants (ms) a China Standard Time date starts and ends at."""
    start = (date.fromisoformat(day) - date(1970, 1, 1)).days * DAY_MS - store.CST_MS
    return start, start + DAY_MS


# The arithmetic of a subtree ---------------------------------------------------------------------------------

def call_figures(sums: dict[str, list[Any]], days: list[str]) -> dict[str, Any]:
    """The calls part of the figures from the database's sums (node.figures.store.sums)."""
    daily = {d: {"served": 0, "made": 0, "errors": 0, "latency_ms": 0} for d in days}
    for r in sums["daily"]:
        if r.day not in daily:
            continue
        if r.kind == "served":
            daily[r.day]["served"] += int(r.calls)
            daily[r.day]["errors"] += int(r.errors)
            daily[r.day]["latency_ms"] += int(r.latency_ms)
        elif r.kind == "made":
            daily[r.day]["made"] += int(r.calls)

    def calls_row(key: str, r: Any) -> dict[str, Any]:
        n, lat = int(r.calls), int(r.latency_ms)
        return {"key": key, "calls": n, "errors": int(r.errors), "mean_ms": round(lat / n, 1) if n else None}

    served = sum(d["served"] for d in daily.values())
    errors = sum(d["errors"] for d in daily.values())
    latency = sum(d["latency_ms"] for d in daily.values())
    return {
        "days": [{"day": d, **v, "mean_ms": round(v["latency_ms"] / v["served"], 1) if v["served"] else None}
                 for d, v in daily.items()],
        "served": served, "made": sum(d["made"] for d in daily.values()), "errors": errors,
        "error_rate": round(errors / served, 4) if served else None,
        "mean_ms": round(latency / served, 1) if served else None,
        "by_op": {r.op: int(r.calls) for r in sorted(sums["by_op"], key=lambda r: r.op)},
        "by_resource": [calls_row(r.resource, r) for r in sums["by_resource"]],
        "by_dept": [calls_row(r.dept, r) for r in sums["by_dept"]],
    }


def combine(parts: list[dict[str, Any]], days: list[str]) -> dict[str, Any]:
    """Sum the figures other than calls (workflows, feedback, the catalog) of report parts (node, day, ...)
    over nodes and days. The catalog is a state, not a flow: each node's latest part in the window counts,
    once."""
    workflows: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    feedback: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    latest_catalog: dict[str, tuple[str, dict[str, int]]] = {}
    wanted = set(days)
    for part in parts:
        day = part["day"]
        if day not in wanted:
            continue
        for wf, rows in (part.get("workflows") or {}).items():
            for row in rows:
                acc = workflows[wf][row["dept"]]
                for status, n in row["statuses"].items():
                    acc[status] += n
                for k in ("review_done", "review_on_time", "decision_done", "decision_on_time"):
                    acc[k] += row.get(k, 0)
        for row in part.get("feedback") or []:
            acc = feedback[row["dept"]]
            for k in ("received", "corrected", "resolved", "resolved_on_time", "resolve_ms"):
                acc[k] += row.get(k, 0)
        if part.get("catalog") and (part["node"] not in latest_catalog or latest_catalog[part["node"]][0] < day):
            latest_catalog[part["node"]] = (day, part["catalog"])
    catalog = {"entries": 0, "with_data": 0, "judged": 0, "fresh": 0}
    for _, figures in latest_catalog.values():
        for k in catalog:
            catalog[k] += figures.get(k, 0)
    return {
        "workflows": {wf: [{"dept": dept, **{k: v for k, v in acc.items()},
                            "review_rate": _rate(acc["review_on_time"], acc["review_done"]),
                            "decision_rate": _rate(acc["decision_on_time"], acc["decision_done"])}
                           for dept, acc in sorted(rows.items())] for wf, rows in workflows.items()},
        "feedback": [{"dept": dept, **acc, "on_time_rate": _rate(acc["resolved_on_time"], acc["resolved"]),
                      "mean_hours": round(acc["resolve_ms"] / acc["resolved"] / 3_600_000, 1) if acc["resolved"] else None}
                     for dept, acc in sorted(feedback.items())],
        "catalog": {**catalog, "with_data_rate": _rate(catalog["with_data"], catalog["entries"]),
                    "fresh_rate": _rate(catalog["fresh"], catalog["judged"])},
    }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def reporting(nodes: list[str], last_report: dict[str, int], now: int, stale_ms: int) -> list[dict[str, Any]]:
    """Each descendant's reporting state: `ok`, `stale` (its last report is older than `stale_ms`: its figures
    are the last it sent) or `missing` (never reported)."""
    out = []
    for node in nodes:
        last = last_report.get(node)
        state = "missing" if last is None else ("stale" if now - last > stale_ms else "ok")
        out.append({"node": node, "state": state, "last_report": last})
    return out


# The feed ----------------------------------------------------------------------------------------------------

class FiguresFeed(SignedFeed):
    """Daily reports travel up only: a parent is served its child's subtree; a child is served nothing (a
    county has no use for its province's figures)."""

    name = FEED
    counter = store.REPORT_COUNTER

    def key(self, obj: dict[str, Any]) -> Any:
        return f"{obj.get('node')}:{obj.get('day')}"

    def signed_at(self, obj: dict[str, Any]) -> int:
        return obj["updated_at"]

    def problem(self, obj: dict[str, Any]) -> str | None:
        try:
            report = FigureReport.model_validate(obj)
        except ValidationError as exc:
            return f"malformed figures report: {exc.errors()[0]['loc']}"
        for row in report.calls:
            if (len(row) != 7 or row[0] not in ("served", "made") or not all(isinstance(v, str) for v in row[:4])
                    or not all(isinstance(v, int) and v >= 0 for v in row[4:])):
                return "malformed call row in a figures report"
        return None

    def document(self, row: Any) -> dict[str, Any]:
        return json.loads(row.entry)

    async def changes(self, conn: Any, since: int, limit: int, nodes_in: set[str] | None,
                      nodes_out: set[str] | None) -> list[Any]:
        if nodes_in is None:
            return []
        return await store.changes(conn, since, limit, nodes_in)

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    async def apply_many(self, objs: list[dict[str, Any]], conn: Any) -> int:
        return await store_reports(conn, objs, self.node_id)

    async def log_refusal(self, conn: Any, refusal: dict[str, Any]) -> None:
        log.warning("refused figures report %s from %s: %s", refusal["key"], refusal["received_from"],
                    refusal["reason"])


SUMMARY_KEYS = ("workflows", "feedback", "catalog")


async def store_reports(conn: Any, objs: list[dict[str, Any]], node_id: str) -> int:
    """Keep the newest report of each node and day; a report of a node below replaces that node's figures of
    the day (its call rows), which the pages add up with this node's own."""
    held = await store.held(conn, sorted({(o["node"], o["day"]) for o in objs}))
    newer: dict[tuple[str, str], dict[str, Any]] = {}
    for obj in objs:
        key = (obj["node"], obj["day"])
        floor = newer[key]["seq"] if key in newer else held.get(key)
        if floor is None or obj["seq"] > floor:
            newer[key] = obj
    if not newer:
        return 0
    last = await next_counter(conn, store.REPORT_COUNTER, len(newer))
    for i, (key, obj) in enumerate(newer.items()):
        summary = {k: obj[k] for k in SUMMARY_KEYS if obj.get(k) is not None}
        row = {"node": key[0], "day": key[1], "seq": obj["seq"], "updated_at": obj["updated_at"],
               "doc": json.dumps(obj, ensure_ascii=False, sort_keys=True),
               "summary": json.dumps(summary, ensure_ascii=False, sort_keys=True),
               "change_id": last - len(newer) + 1 + i}
        await store.put_report(conn, row, key in held)
        if key[0] != node_id:  # this node's own rows are its running totals
            await conn.run_sync(store.replace_reported, key[0], key[1], obj["calls"])
    return len(newer)


# The service -------------------------------------------------------------------------------------------------

class FiguresService:
    def __init__(self, engine: AsyncEngine, node_id: str, federation: "FederationService",
                 config: "FiguresConfig") -> None:
        self.engine = engine
        self.node_id = node_id
        self.federation = federation
        self.config = config
        self.stale_ms = int(config.report_interval_s * 3000)
        self.tasks = Supervisor(node_id, log)
        self.clock = now_ms
        self.alert_gauge: Any = None  # set by http.setup: govnode_alert{kind}

    def connect(self) -> None:
        self.federation.register_feed(FiguresFeed(self.node_id))

    async def take_up(self) -> None:
        self.tasks.every((self.publish, self.config.report_interval_s, "figures-report"),
                         (self.check_chain, 60.0, "audit-chain-check"),
                         (self.export_alerts, 15.0, "alerts"))
        self.tasks.spawn(self.publish())
        self.tasks.spawn(self.check_chain())

    async def give_up(self) -> None:
        self.tasks.stop()

    async def close(self) -> None:
        await self.tasks.close()

    # This node's figures -------------------------------------------------------------------------------------

    async def own_parts(self, first: str, last: str, calls: bool = True) -> list[dict[str, Any]]:
        """This node's figures for each day of [first, last], in a report's shape (one part a day); without
        `calls`, what a page reads besides the sums of calls."""
        since, until = day_bounds(first)[0], day_bounds(last)[1]
        from node.quality import store as q_store
        from node.workflow import store as wf_store
        kinds = workflow_kinds()
        async with self.engine.connect() as conn:
            rows = await conn.run_sync(store.day_rows, self.node_id, first, last) if calls else []
            docs = {name: await wf_store.stats_rows(conn, kind.table, self.node_id, since, until,
                                                    [c for st in kind.steps for c in (st.due, st.started, st.done)])
                    for name, kind in kinds.items()}
            feedback = await wf_store.stats_rows(conn, q_store.feedback, self.node_id, since, until,
                                                 ["due", "resolved_at"])
            catalog = await self._catalog(conn)
        parts = {d: {"node": self.node_id, "day": d, "calls": [], "workflows": {name: [] for name in kinds},
                     "feedback": []} for d in days_between(first, last)}
        for r in rows:
            parts[r.day]["calls"].append([r.kind, r.resource, r.dept, r.op, int(r.calls), int(r.errors),
                                          int(r.latency_ms)])
        for kind, kind_rows in docs.items():
            wf: dict[tuple[str, str], dict[str, Any]] = {}
            for r in kind_rows:
                day = cst_date(r.submitted_at).isoformat()
                dept = r.provider_dept or "platform"  # a data request not yet assigned is the platform's
                acc = wf.setdefault((day, dept), {
                    "dept": f"{self.node_id}/{dept}", "statuses": dict.fromkeys(kinds[kind].statuses, 0),
                    "review_done": 0, "review_on_time": 0, "decision_done": 0, "decision_on_time": 0})
                acc["statuses"][r.status] = acc["statuses"].get(r.status, 0) + 1
                for name, st in zip(("review", "decision"), kinds[kind].steps):
                    at, begun, until_day = getattr(r, st.done), getattr(r, st.started), getattr(r, st.due)
                    if at is not None and begun is not None and until_day:
                        acc[f"{name}_done"] += 1
                        acc[f"{name}_on_time"] += cst_date(at).isoformat() <= until_day
            for (day, _), acc in sorted(wf.items()):
                parts[day]["workflows"][kind].append(acc)
        fb: dict[tuple[str, str], dict[str, Any]] = {}
        for r in feedback:
            day = cst_date(r.submitted_at).isoformat()
            acc = fb.setdefault((day, r.provider_dept), {"dept": f"{self.node_id}/{r.provider_dept}", "received": 0,
                                                         "corrected": 0, "resolved": 0, "resolved_on_time": 0,
                                                         "resolve_ms": 0})
            acc["received"] += 1
            acc["corrected"] += r.status == "corrected"
            if r.resolved_at is not None:
                acc["resolved"] += 1
                acc["resolved_on_time"] += cst_date(r.resolved_at).isoformat() <= r.due
                acc["resolve_ms"] += max(0, r.resolved_at - r.submitted_at)
        for (day, _), acc in sorted(fb.items()):
            parts[day]["feedback"].append(acc)
        parts[last]["catalog"] = catalog  # a state: as of now, on the window's last day
        return list(parts.values())

    async def _catalog(self, conn: Any) -> dict[str, int]:
        now = self.clock()
        out = {"entries": 0, "with_data": 0, "judged": 0, "fresh": 0}
        for row in await store.own_entries(conn, self.node_id):
            entry = json.loads(row.entry)
            if entry.get("kind", "resource") != "resource":
                continue
            out["entries"] += 1
            live, last = await store.data_state(conn, row.code)
            out["with_data"] += live
            cycle = CYCLE_DAYS.get(entry.get("update_cycle", "other"))
            if cycle is not None:
                out["judged"] += 1
                out["fresh"] += live and last is not None and now - last <= (cycle + 1) * DAY_MS
        return out

    # The dashboard -------------------------------------------------------------------------------------------

    def window(self, days: int) -> tuple[str, str]:
        last = cst_date(self.clock())
        return (last - timedelta(days=days - 1)).isoformat(), last.isoformat()

    async def dashboard(self, days: int = 7, subtree: bool = False) -> dict[str, Any]:
        first, last = self.window(days)
        parts = await self.own_parts(first, last, calls=False)
        scope = [self.node_id]
        nodes: list[dict[str, Any]] = []
        below: list[str] = []
        if subtree and self.federation.joined:
            below = sorted(self.federation.subtree(self.node_id) - {self.node_id})
            scope += below
        async with self.engine.connect() as conn:
            sums = await conn.run_sync(store.sums, scope, first, last)
            if below:
                parts += [{"node": r.node, "day": r.day, **json.loads(r.summary)}
                          for r in await store.summaries(conn, below, first, last)]
                last_report = await store.last_reports(conn)
        if below:
            nodes = reporting(below, last_report, self.clock(), self.stale_ms)
        days_list = days_between(first, last)
        figures = {**call_figures(sums, days_list), **combine(parts, days_list)}
        figures.update(first=first, last=last, subtree=subtree, nodes=nodes)
        return figures

    # Reports -------------------------------------------------------------------------------------------------

    async def publish(self) -> int:
        """Sign this node's figures of the last days that changed since last reported, and tell the parent."""
        fed = self.federation
        if not fed.joined or fed.parent is None:
            return 0
        first, last = self.window(REPORTED_DAYS)
        parts = await self.own_parts(first, last)
        async with self.engine.connect() as conn:
            held = {r.day: json.loads(r.doc) for r in await store.own_reports(conn, self.node_id, first, last)}
        now = self.clock()
        signed = []
        for part in parts:
            old = held.get(part["day"])
            unchanged = old is not None and all(old.get(k) == part.get(k)
                                                for k in ("calls", "workflows", "feedback", "catalog"))
            if unchanged and part["day"] != last:
                continue  # today's is signed again each round even when unchanged: it says the node is alive
            if old is None and not part["calls"] and not any(part["workflows"].values()) and not part["feedback"] \
                    and part["day"] != last:
                continue  # a quiet day before the node's first report: nothing to say
            seq = max(now, (old or {}).get("seq", 0) + 1)
            doc = {"type": "figures", **part, "seq": seq, "updated_at": now}
            doc.setdefault("catalog", None)
            if doc["catalog"] is None:
                doc.pop("catalog")
            signed.append(sign_json(doc, self.node_id, fed.key))
        if not signed:
            return 0
        async with write_tx(self.engine) as conn:
            await store_reports(conn, signed, self.node_id)
        await fed.notify_neighbours(FEED)
        return len(signed)

    # Alerts --------------------------------------------------------------------------------------------------

    async def check_chain(self) -> None:
        """Verify the audit chain's records added since the last check (the first check walks it all, in the
        background), and keep what was found where every worker reads it."""
        async with self.engine.connect() as conn:
            held = await store.get_check(conn)
        if held is not None and held.broken_seq is not None:
            return  # broken stays broken until someone repairs it; `govnode audit verify` says where
        seq, prev = (held.seq, held.hash) if held is not None else (0, GENESIS)
        broken: tuple[int, str] | None = None
        # On PostgreSQL each process appends to a segment of its own (node.audit.service), a chain of its own
        # whose records interleave with the others' by `seq`: a record links to its segment's previous one.
        # Walked as one chain, two workers' records (or one command's) read as a broken link.
        segment_prev: dict[str, str | None] = {}
        while True:
            async with self.engine.connect() as conn:
                rows = await audit_store.scan(conn, seq + 1, 5000)
                for r in rows:  # the segments' links into what an earlier check saw
                    if r.segment is not None and r.segment not in segment_prev:
                        segment_prev[r.segment] = (GENESIS if r.segment_seq == 1 else await conn.run_sync(
                            audit_store.segment_hash_at, r.segment, r.segment_seq - 1))
            for r in rows:
                row = dict(r._mapping)
                segment = row["segment"]
                # The record it links to: the chain's previous one, or its segment's. Places in `seq` that no
                # record holds are normal among segments (a failed batch's numbers); a missing segment record
                # shows as a link to nothing, and `govnode audit verify` names it exactly.
                before = prev if segment is None else segment_prev[segment]
                if segment is None and row["seq"] != seq + 1:
                    broken = (seq + 1, f"record {seq + 1} is missing")
                elif before is None:
                    broken = (row["seq"], "the record before it in its segment is missing")
                elif (why := link_break(before, row)) is not None:
                    broken = (row["seq"], why)
                if broken:
                    break
                if segment is None:
                    prev = row["hash"]
                else:
                    segment_prev[segment] = row["hash"]
                seq = row["seq"]
            if broken or len(rows) < 5000:
                break
        async with write_tx(self.engine) as conn:
            await store.put_check(conn, {"seq": seq, "hash": prev, "broken_seq": broken[0] if broken else None,
                                         "reason": broken[1] if broken else None, "checked_at": self.clock()})
        if broken:
            log.error("the audit chain is broken at record %d: %s", *broken)

    async def alerts(self) -> list[dict[str, Any]]:
        """What an operator must act on, each with where to act: kind, subject, message, link."""
        out: list[dict[str, Any]] = []
        fed = self.federation
        health = await fed.health()
        for peer, st in (health.get("peers") or {}).items():
            if st.get("reachable") is False:
                out.append({"kind": "peer_down", "subject": peer, "link": "/portal/federation",
                            "message": f"节点 {peer} 无法连接：{st.get('last_error') or ''}"})
            if (st.get("outbox") or 0) >= self.config.outbox_alert:
                out.append({"kind": "outbox_backlog", "subject": peer, "link": "/portal/federation",
                            "message": f"发往节点 {peer} 的消息积压 {st['outbox']} 条"})
        today = cst_date(self.clock()).isoformat()
        async with self.engine.connect() as conn:
            overdue = await store.overdue_steps(conn, self.node_id, today)
            sources = await store.source_states(conn)
            check = await store.get_check(conn)
        if overdue:
            out.append({"kind": "overdue_reviews", "subject": str(overdue), "link": "/portal/reviews",
                        "message": f"{overdue} 件共享申请已超过办理时限"})
        for s in sources:
            state = json.loads(s.state)
            if state.get("last_error"):
                err = state["last_error"]
                out.append({"kind": "source_failing", "subject": s.resource, "link": f"/portal/catalog/{s.resource}",
                            "message": f"资源 {s.resource} 的前置库同步失败：{err.get('message', '')}"})
        if check is not None and check.broken_seq is not None:
            out.append({"kind": "audit_chain_broken", "subject": str(check.broken_seq), "link": "/portal/federation#audit",
                        "message": f"审计日志链在第 {check.broken_seq} 条记录处断裂：{check.reason}"})
        return out

    async def export_alerts(self) -> list[dict[str, Any]]:
        """Set govnode_alert{kind} to the number of alerts of each kind (0 for none)."""
        found = await self.alerts()
        if self.alert_gauge is not None:
            counts = dict.fromkeys(ALERT_KINDS, 0)
            for a in found:
                counts[a["kind"]] += 1
            for kind, n in counts.items():
                self.alert_gauge.labels(kind).set(n)
        return found


ALERT_KINDS = ("peer_down", "outbox_backlog", "overdue_reviews", "source_failing", "audit_chain_broken")
