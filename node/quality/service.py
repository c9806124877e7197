"""Data-quality feedback (数据纠错, SPEC §10): a department that finds a wrong value reports it at its own node;
the report goes to the node holding the resource, where its providing department answers it.

Where things live (as for applications): the feedback lives at the provider's node, the authority on its status;
the reporter's node keeps a copy with the same id, replaced by every `feedback.update` whose `version` is newer.
Submission travels as `feedback.submit`. Both go through the federation's durable outbox, so an outage delays and
never loses them.

Status: open → confirmed (the value is wrong; a correction follows) → corrected; or open/confirmed → rejected with
a reason (the value is right). Due: the 10th working day after the submission day (China's official calendar, as
for applications); a scheduled job flags an unresolved feedback past its due date once (`overdue: true`, a history
entry, an audit record, an update to the reporter); `GET /api/v1/stats` reports them per providing department.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from node.accounts.service import Account
from node.audit.service import AuditLog
from node.catalog.service import CatalogService
from node.data.rows import RowError
from node.data.service import DataService
from node.db import write_tx
from node.errors import ApiError, Conflict, Forbidden, InvalidInput, NotFound
from node.federation.service import ASYNC_TTL_MS, FederationService
from node.ids import new_id, now_ms
from node.mirror import Mirror, history_event
from node.quality import store
from node.quality.models import OPEN_FEEDBACK, Feedback, FeedbackCreate, Party, SubmittedFeedback
from node.web import validation_details
from node.workdays import add_working_days, cst_date, cst_iso, iso_ms
from node.schedule import PeriodicJobs

log = logging.getLogger("govnode.quality")

DUE_DAYS = 10
# What the providing department may do from each status.
TRANSITIONS = {"confirm": (("open",), "confirmed"), "correct": (OPEN_FEEDBACK, "corrected"),
               "reject": (OPEN_FEEDBACK, "rejected")}



def row_of(doc: dict[str, Any], pending: bool) -> dict[str, Any]:
    return {
        "id": doc["id"], "resource": doc["resource"],
        "reporter_node": doc["reporter"]["node"], "reporter_dept": doc["reporter"]["dept"],
        "provider_node": doc["provider"]["node"], "provider_dept": doc["provider"]["dept"],
        "status": doc["status"], "overdue": doc["overdue"], "due": doc["due"],
        "submitted_at": iso_ms(doc["submitted_at"]), "resolved_at": iso_ms(doc.get("resolved_at")),
        "version": doc["version"], "notify_pending": pending, "updated_at": now_ms(),
        "doc": json.dumps(doc, ensure_ascii=False),
    }


class FeedbackService:
    def __init__(self, engine: AsyncEngine, node_id: str, catalog: CatalogService, data: DataService,
                 federation: FederationService, audit: AuditLog) -> None:
        self.engine = engine
        self.node_id = node_id
        self.catalog = catalog
        self.data = data
        self.federation = federation
        self.mirror = Mirror(engine, store.feedback, federation, node_id, "feedback.update", "feedback", "reporter")
        self.audit = audit
        self.clock: Callable[[], int] = now_ms  # tests set it to a chosen day
        self._jobs = PeriodicJobs()

    def connect(self) -> None:
        self.federation.handlers["feedback.submit"] = self.on_submit
        self.federation.handlers["feedback.update"] = self.on_update
        self.federation.reply_handlers["feedback.submit"] = self.on_submit_refused

    async def take_up(self) -> None:
        """Deadline checks and re-sends are background work: one worker of the node runs them (node.cluster)."""
        self._jobs.start((self._scheduled_check, 60, "feedback-deadlines"),
                         (self.mirror.resend_pending, 30, "feedback-resend"))

    async def give_up(self) -> None:
        self._jobs.stop()

    async def close(self) -> None:
        self._jobs.stop()

    async def _scheduled_check(self) -> None:
        try:
            await self.check_deadlines()
        except Exception:  # noqa: BLE001 - the next run tries again
            log.exception("feedback deadline check failed")

    # Documents ------------------------------------------------------------------------------------------

    def _new_doc(self, sub: SubmittedFeedback, name: str | None, received: int | None) -> dict[str, Any]:
        deadline = add_working_days(cst_date(sub.submitted_at), DUE_DAYS)
        doc: dict[str, Any] = {
            "id": sub.id, "resource": sub.resource, "resource_name": name,
            "reporter": sub.reporter.model_dump(), "provider": sub.provider.model_dump(),
            "key": sub.key, "fields": list(sub.fields), "description": sub.description, "expected": sub.expected,
            "status": "open", "submitted_at": cst_iso(sub.submitted_at),
            "received_at": cst_iso(received) if received is not None else None,
            "due": deadline.due.isoformat(), "overdue": False, "resolved_at": None, "late": False,
            "history": [history_event(sub.submitted_at, f"{sub.reporter.node}/{sub.reporter.dept}", "open",
                                      "submitted")],
            "version": 0,
        }
        if received is not None and sub.reporter.node != sub.provider.node:
            doc["history"].append(history_event(received, self.mirror.platform, "open", "received"))
        note = deadline.note()
        if note:
            doc["history"].append(history_event(received or sub.submitted_at, self.mirror.platform, "open", "calendar",
                                              f"due: {note}"))
        return doc

    def _problem(self, entry: dict[str, Any], fields: list[str], key: Any) -> ApiError | None:
        schema = self.data.schema(entry)
        unknown = [f for f in fields if f not in schema.by_field]
        if unknown:
            return InvalidInput(f"{', '.join(unknown)}: not items of {entry['code']}",
                                [{"field": f"fields.{f}", "error": "not an item of this resource"} for f in unknown])
        if key is not None:
            try:
                schema.normalize_key(key)
            except RowError as exc:
                return InvalidInput(f"key {exc}", [{"field": "key", "error": str(exc)}])
        return None

    def _may_see(self, acct: Account, doc: dict[str, Any]) -> bool:
        if acct.role in ("operator", "auditor"):
            return True
        r, p = doc["reporter"], doc["provider"]
        return (acct.node, acct.dept) in ((r["node"], r["dept"]), (p["node"], p["dept"]))

    async def _load(self, fb_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await store.get_feedback(conn, fb_id)
        if row is None:
            raise NotFound(f"no feedback {fb_id} at node {self.node_id}")
        return json.loads(row.doc)

    # The department API ---------------------------------------------------------------------------------

    async def submit(self, acct: Account, body: FeedbackCreate) -> dict[str, Any]:
        if acct.role != "dept":
            raise Forbidden("feedback is filed by a department")
        entry = await self.catalog.get(body.resource)
        problem = self._problem(entry, list(body.fields), body.key)
        if problem is not None:
            raise problem
        now = self.clock()
        provider = {"node": entry["node"], "dept": entry["provider"]["dept"]}
        sub = SubmittedFeedback(id=new_id(), resource=body.resource, reporter={"node": acct.node, "dept": acct.dept},
                                provider=provider, key=body.key, fields=body.fields, description=body.description,
                                expected=body.expected, submitted_at=now)
        remote = provider["node"] != self.node_id
        doc = self._new_doc(sub, entry["name"], None if remote else now)
        if remote:
            self.federation.require_joined()
            if self.federation.route(provider["node"]) is None:
                raise ApiError(f"node {provider['node']} is in no known subtree", {"node": provider["node"]},
                               code="NODE_UNKNOWN")
            # Queued durably first: if storing the copy fails, the provider's first update makes it anyway.
            await self.federation.send_async("feedback.submit", provider["node"], {"feedback": sub.model_dump()})
        else:
            doc["version"] = 1
        async with write_tx(self.engine) as conn:
            held = await store.get_feedback(conn, doc["id"])
            if held is None:
                await store.insert_feedback(conn, row_of(doc, pending=False))
        return doc if held is None else json.loads(held.doc)

    async def get(self, acct: Account, fb_id: str) -> dict[str, Any]:
        doc = await self._load(fb_id)
        if not self._may_see(acct, doc):
            raise Forbidden(f"feedback {fb_id} is neither the caller's nor on the caller's resource")
        return doc

    async def list_feedback(self, acct: Account, *, role: str | None, status: str | None, overdue: bool | None,
                            resource: str | None, page: int, page_size: int) -> tuple[int, list[dict[str, Any]]]:
        dept = None if acct.role in ("operator", "auditor") else acct.dept
        async with self.engine.connect() as conn:
            total, docs = await store.list_feedback(conn, node=self.node_id, dept=dept, role=role, status=status,
                                                    overdue=overdue, resource=resource, offset=(page - 1) * page_size,
                                                    limit=page_size)
        return total, [json.loads(d) for d in docs]

    async def act(self, acct: Account, fb_id: str, action: str, reason: str) -> dict[str, Any]:
        """The providing department confirms, corrects or rejects (with its reason)."""
        allowed, status = TRANSITIONS[action]
        if action == "reject" and not reason.strip():
            raise InvalidInput("a rejection needs its reason", [{"field": "reason", "error": "required"}])
        async with write_tx(self.engine) as conn:
            row = await store.get_feedback(conn, fb_id, for_update=True)
            if row is None:
                raise NotFound(f"no feedback {fb_id} at node {self.node_id}")
            doc = json.loads(row.doc)
            p = doc["provider"]
            if p["node"] != self.node_id:
                raise Forbidden(f"feedback {fb_id} is answered at node {p['node']} by its providing department")
            if acct.role != "dept" or acct.dept != p["dept"]:
                raise Forbidden(f"feedback {fb_id} is answered by the providing department {p['node']}/{p['dept']}")
            if doc["status"] not in allowed:
                raise Conflict(f"feedback {fb_id} is {doc['status']}; {action} needs it {' or '.join(allowed)}")
            now = self.clock()
            doc["status"] = status
            if status in ("corrected", "rejected"):
                doc["resolved_at"] = cst_iso(now)
                doc["late"] = cst_date(now).isoformat() > doc["due"]
                doc["overdue"] = False
            doc["history"].append(history_event(now, acct.principal, status, status, reason.strip()))
            doc["version"] += 1
            await store.update_feedback(conn, fb_id, row_of(doc, pending=self.mirror.remote(doc)))
        await self.mirror.notify(doc)
        return doc

    # Messages from other nodes ----------------------------------------------------------------------------

    async def on_submit(self, env: dict[str, Any]) -> dict[str, Any]:
        """feedback.submit at the provider's node: store it (answered as refused at once if it cannot be taken)."""
        try:
            sub = SubmittedFeedback.model_validate((env.get("body") or {}).get("feedback"))
        except ValidationError as exc:
            raise InvalidInput("the feedback is malformed", validation_details(exc)) from None
        if sub.reporter.node != env["origin"]:
            raise Forbidden(f"{env['origin']} cannot file feedback for a department of node {sub.reporter.node}")
        async with self.engine.connect() as conn:
            held = await store.get_feedback(conn, sub.id)
        if held is not None:
            if held.reporter_node != sub.reporter.node:
                raise Conflict(f"feedback id {sub.id} is taken")
            await self.mirror.notify(json.loads(held.doc))  # asked again: answer again
            return {"accepted": True, "duplicate": True}
        now = self.clock()
        sub = sub.model_copy(update={"submitted_at": min(max(sub.submitted_at, now - ASYNC_TTL_MS), now)})
        entry = None
        problem: ApiError | None = None
        try:
            entry = await self.catalog.get(sub.resource)
        except NotFound as exc:
            problem = exc
        if entry is not None:
            if entry["node"] != self.node_id:
                problem = NotFound(f"{sub.resource} is held at node {entry['node']}, not here")
            else:
                problem = self._problem(entry, list(sub.fields), sub.key)
                sub = sub.model_copy(update={"provider": Party(node=self.node_id, dept=entry["provider"]["dept"])})
        doc = self._new_doc(sub, entry["name"] if entry else None, now)
        if problem is not None:
            doc["status"] = "rejected"
            doc["resolved_at"] = cst_iso(now)
            doc["history"].append(history_event(now, self.mirror.platform, "rejected", "rejected",
                                              f"refused on receipt: {problem.message}"))
        doc["version"] = 1
        try:
            async with write_tx(self.engine) as conn:
                await store.insert_feedback(conn, row_of(doc, pending=self.mirror.remote(doc)))
        except IntegrityError:  # the same submission delivered twice at once
            return {"accepted": True, "duplicate": True}
        await self.mirror.notify(doc)
        return {"accepted": True}

    async def on_update(self, env: dict[str, Any]) -> dict[str, Any]:
        """feedback.update at the reporter's node: keep the copy in step (newer versions only)."""
        try:
            fb = Feedback.model_validate((env.get("body") or {}).get("feedback"))
        except ValidationError as exc:
            raise InvalidInput("the feedback is malformed", validation_details(exc)) from None
        if fb.provider.node != env["origin"]:
            raise Forbidden(f"{env['origin']} cannot update feedback held at node {fb.provider.node}")
        if fb.reporter.node != self.node_id:
            raise InvalidInput(f"feedback {fb.id} was filed at node {fb.reporter.node}, not here")
        doc = fb.model_dump()
        async with write_tx(self.engine) as conn:
            held = await store.get_feedback(conn, fb.id, for_update=True)
            if held is not None and (held.provider_node, held.reporter_node, held.reporter_dept) != (
                    fb.provider.node, fb.reporter.node, fb.reporter.dept):
                raise Forbidden(f"feedback {fb.id} held here is not {env['origin']}'s to update")
            if held is not None and held.version >= fb.version:
                return {"accepted": True, "stale": True}
            if held is None:
                await store.insert_feedback(conn, row_of(doc, pending=False))
            else:
                await store.update_feedback(conn, fb.id, row_of(doc, pending=False))
        return {"accepted": True}

    async def on_submit_refused(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        """The federation gave up on a feedback.submit sent from here (refused for good or expired)."""
        if reply.get("kind") != "error":
            return
        fb_id = ((request.get("body") or {}).get("feedback") or {}).get("id")
        err = ((reply.get("body") or {}).get("error") or {})
        async with write_tx(self.engine) as conn:
            row = await store.get_feedback(conn, fb_id, for_update=True) if isinstance(fb_id, str) else None
            if row is None or row.version > 0:
                return
            doc = json.loads(row.doc)
            now = self.clock()
            doc["status"] = "rejected"
            doc["resolved_at"] = cst_iso(now)
            doc["history"].append(history_event(now, self.mirror.platform, "rejected", "not_delivered",
                                              f"{err.get('code', 'error')}: {err.get('message', '')}"[:500]))
            await store.update_feedback(conn, fb_id, row_of(doc, pending=False))

    # Deadlines and statistics -------------------------------------------------------------------------------

    async def check_deadlines(self) -> list[str]:
        now = self.clock()
        today = cst_date(now).isoformat()
        async with self.engine.connect() as conn:
            ids = await store.overdue_candidates(conn, self.node_id, today)
        flagged = []
        for fb_id in ids:
            async with write_tx(self.engine) as conn:
                row = await store.get_feedback(conn, fb_id, for_update=True)
                if row is None or row.overdue or row.status not in OPEN_FEEDBACK:
                    continue
                doc = json.loads(row.doc)
                doc["overdue"] = True
                doc["history"].append(history_event(now, self.mirror.platform, doc["status"], "overdue",
                                                  f"an answer was due on {doc['due']}"))
                doc["version"] += 1
                await store.update_feedback(conn, fb_id, row_of(doc, pending=self.mirror.remote(doc)))
            await self.audit.record(
                request_id=new_id(), actor=self.mirror.platform, role="system", action="feedback.overdue", method="",
                path="", outcome="ok", status=0, resource=doc["resource"],
                details={"feedback": fb_id, "due": doc["due"],
                         "reporter": f"{doc['reporter']['node']}/{doc['reporter']['dept']}",
                         "provider": f"{doc['provider']['node']}/{doc['provider']['dept']}"})
            await self.mirror.notify(doc)
            flagged.append(fb_id)
        if flagged:
            log.warning("%d feedback(s) overdue at %s: %s", len(flagged), self.node_id, ", ".join(flagged))
        return flagged

    async def stats(self, since: int, until: int) -> dict[str, Any]:
        """Feedback received here in the window, per providing department."""
        async with self.engine.connect() as conn:
            rows = await store.stats_rows(conn, self.node_id, since, until)
        today = cst_date(self.clock()).isoformat()
        per: dict[str, list[Any]] = defaultdict(list)
        for r in rows:
            per[r.provider_dept].append(r)
        out = []
        for dept in sorted(per):
            rs = per[dept]
            resolved = [r for r in rs if r.resolved_at is not None]
            on_time = sum(1 for r in resolved if cst_date(r.resolved_at).isoformat() <= r.due)
            hours = [(r.resolved_at - r.submitted_at) / 3_600_000 for r in resolved]
            out.append({
                "dept": f"{self.node_id}/{dept}", "received": len(rs),
                **{s: sum(1 for r in rs if r.status == s) for s in ("open", "confirmed", "corrected", "rejected")},
                "overdue_open": sum(1 for r in rs if r.status in OPEN_FEEDBACK and r.due < today),
                "flagged_overdue": sum(1 for r in rs if r.overdue),
                "resolved": len(resolved), "resolved_on_time": on_time,
                "on_time_rate": round(on_time / len(resolved), 4) if resolved else None,
                "median_hours": round(statistics.median(hours), 2) if hours else None,
            })
        return {"by_provider": out, "overdue_open": sum(d["overdue_open"] for d in out)}
