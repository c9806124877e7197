"""Data-quality feedback (数据纠错, SPEC §10): a department that finds a wrong value reports it at its own node;
the report goes to the node holding the resource, where its providing department answers it.

Where things live (as for applications): the feedback lives at the provider's node, the authority on its status;
the reporter's node keeps a copy with the same id, replaced by every `feedback.update` whose `version` is newer.
Submission travels as `feedback.submit`. Both go through the federation's durable outbox, so an outage delays and
never loses them.

The mechanism (documents, mirror, messages, steps under lock, deadlines, statistics) is node.workflow's; this
module says what feedback is.

Status: open → confirmed (the value is wrong; a correction follows) → corrected; or open/confirmed → rejected with
a reason (the value is right). Due: the 10th working day after the submission day (China's official calendar, as
for applications); a scheduled job flags an unresolved feedback past its due date once (`overdue: true`, a history
entry, an audit record, an update to the reporter); `GET /api/v1/stats` reports them per providing department.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from node.accounts.service import Account
from node.audit.service import AuditLog
from node.catalog.service import CatalogService
from node.data.rows import RowError
from node.data.service import DataService
from node.errors import ApiError, Conflict, Forbidden, InvalidInput
from node.federation.service import FederationService
from node.ids import new_id
from node.mirror import history_event
from node.quality import store
from node.quality.models import OPEN_FEEDBACK, Feedback, FeedbackCreate, Party, SubmittedFeedback
from node.workdays import cst_date, cst_iso
from node.workflow.flow import Kind, Step, Workflow

log = logging.getLogger("govnode.quality")

DUE_DAYS = 10
# What the providing department may do from each status.
TRANSITIONS = {"confirm": (("open",), "confirmed"), "correct": (OPEN_FEEDBACK, "corrected"),
               "reject": (OPEN_FEEDBACK, "rejected")}

FEEDBACK = Kind(
    name="feedback", noun="feedback", table=store.feedback, requester="reporter", audit="feedback",
    statuses=("open", "confirmed", "corrected", "rejected"),
    steps=(Step("answer", OPEN_FEEDBACK, due="due", started="submitted_at", done="resolved_at",
                late=lambda due: f"an answer was due on {due}"),),
    columns=lambda doc: {"resource": doc["resource"]}, refused_at="resolved_at",
)


class FeedbackService:
    def __init__(self, engine: AsyncEngine, node_id: str, catalog: CatalogService, data: DataService,
                 federation: FederationService, audit: AuditLog) -> None:
        self.engine = engine
        self.node_id = node_id
        self.catalog = catalog
        self.data = data
        self.federation = federation
        self.flow = Workflow(FEEDBACK, engine, node_id, federation, audit, log)
        self.mirror = self.flow.mirror

    @property
    def clock(self) -> Callable[[], int]:
        return self.flow.clock

    @clock.setter
    def clock(self, value: Callable[[], int]) -> None:  # tests set it to a chosen day
        self.flow.clock = value

    def connect(self) -> None:
        self.flow.connect(self.on_submit, self.on_update)

    async def take_up(self) -> None:
        await self.flow.take_up()

    async def give_up(self) -> None:
        await self.flow.give_up()

    async def close(self) -> None:
        await self.flow.close()

    # Documents ------------------------------------------------------------------------------------------

    def _new_doc(self, sub: SubmittedFeedback, name: str | None, received: int | None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": sub.id, "resource": sub.resource, "resource_name": name,
            "reporter": sub.reporter.model_dump(), "provider": sub.provider.model_dump(),
            "key": sub.key, "fields": list(sub.fields), "description": sub.description, "expected": sub.expected,
            "status": "open", "submitted_at": cst_iso(sub.submitted_at), "received_at": None,
            "due": None, "overdue": False, "resolved_at": None, "late": False,
            "history": [history_event(sub.submitted_at, f"{sub.reporter.node}/{sub.reporter.dept}", "open",
                                      "submitted")],
            "version": 0,
        }
        if received is not None:
            self.flow.received(doc, received)
        self.flow.due(sub.submitted_at, DUE_DAYS, doc, "due", at=received or sub.submitted_at)
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
        return await self.flow.create(doc, sub.model_dump())

    async def get(self, acct: Account, fb_id: str) -> dict[str, Any]:
        return await self.flow.get(acct, fb_id)

    async def list_feedback(self, acct: Account, *, role: str | None, status: str | None, overdue: bool | None,
                            resource: str | None, page: int, page_size: int) -> tuple[int, list[dict[str, Any]]]:
        return await self.flow.list(acct, role=role, status=status, overdue=overdue, page=page, page_size=page_size,
                                    resource=resource)

    async def act(self, acct: Account, fb_id: str, action: str, reason: str) -> dict[str, Any]:
        """The providing department confirms, corrects or rejects (with its reason)."""
        allowed, status = TRANSITIONS[action]
        if action == "reject" and not reason.strip():
            raise InvalidInput("a rejection needs its reason", [{"field": "reason", "error": "required"}])

        async def change(doc: dict[str, Any], conn: AsyncConnection) -> None:
            p = doc["provider"]
            if p["node"] != self.node_id:
                raise Forbidden(f"feedback {fb_id} is answered at node {p['node']} by its providing department")
            if not self.flow.is_provider(acct, doc):
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

        return await self.flow.transition(fb_id, change)

    # Messages from other nodes ----------------------------------------------------------------------------

    async def on_submit(self, env: dict[str, Any]) -> dict[str, Any]:
        """feedback.submit at the provider's node: store it (answered as refused at once if it cannot be taken)."""
        return await self.flow.receive(env, SubmittedFeedback, self._received)

    async def _received(self, sub: SubmittedFeedback, now: int) -> dict[str, Any]:
        sub = sub.model_copy(update={"submitted_at": self.flow.submitted_at(sub.submitted_at, now)})
        entry, problem = await self.flow.named_entry(self.catalog, sub.resource)
        if entry is not None and problem is None:
            problem = self._problem(entry, list(sub.fields), sub.key)
            sub = sub.model_copy(update={"provider": Party(node=self.node_id, dept=entry["provider"]["dept"])})
        doc = self._new_doc(sub, entry["name"] if entry else None, now)
        if problem is not None:
            self.flow.refuse(doc, problem, now)
        return doc

    async def on_update(self, env: dict[str, Any]) -> dict[str, Any]:
        """feedback.update at the reporter's node: keep the copy in step (newer versions only)."""
        return await self.flow.on_update(env, Feedback)

    async def on_submit_refused(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        await self.flow.on_submit_refused(request, reply)

    # Deadlines and statistics -------------------------------------------------------------------------------

    async def check_deadlines(self) -> list[str]:
        return await self.flow.check_deadlines()

    async def stats(self, since: int, until: int) -> dict[str, Any]:
        """Feedback received here in the window, per providing department."""
        out = []
        for d in await self.flow.summary(since, until):
            answer = d["steps"]["answer"]
            out.append({
                "dept": d["dept"], "received": d["total"], **d["by_status"],
                "overdue_open": d["overdue_open"], "flagged_overdue": d["flagged_overdue"],
                "resolved": answer["done"], "resolved_on_time": answer["on_time"],
                "on_time_rate": answer["on_time_rate"], "median_hours": answer["median_hours"],
            })
        return {"by_provider": out, "overdue_open": sum(d["overdue_open"] for d in out)}
