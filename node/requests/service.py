"""Data requests (供需对接, SPEC §16): when no catalog entry has the data a department needs, it asks a node for
it; that node's operator assigns the request to one of its departments (or rejects it), and the department
fulfils it by naming the catalog entry of its own that now provides the data (or rejects it). Each step is due
on the 10th working day after the previous one.

The request lives at the node asked and is mirrored at the requester's node (`data_request.submit` /
`data_request.update` over the outbox); documents, mirror, steps under lock, deadlines and statistics are
node.workflow's mechanism, as for applications and feedback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from node.accounts.service import Account, AccountService
from node.audit.service import AuditLog
from node.catalog.service import CatalogService
from node.errors import ApiError, Conflict, Forbidden, InvalidInput, NotFound
from node.federation.service import FederationService
from node.ids import new_id
from node.mirror import history_event
from node.requests import store
from node.requests.models import Acceptance, DataRequest, DataRequestCreate, Fulfilment, SubmittedDataRequest
from node.workdays import cst_iso
from node.workflow.flow import Kind, Step, Workflow

log = logging.getLogger("govnode.requests")

STEP_DAYS = 10

DATA_REQUEST = Kind(
    name="data_request", noun="data request", table=store.data_requests, requester="requester",
    audit="data_requests", statuses=("submitted", "accepted", "rejected", "fulfilled"),
    steps=(Step("assign", ("submitted",), due="assign_due", started="submitted_at", done="assigned_at",
                late=lambda due: f"the platform's assignment was due on {due}"),
           Step("answer", ("accepted",), due="answer_due", started="assigned_at", done="answered_at",
                late=lambda due: f"the department's answer was due on {due}")),
    columns=lambda doc: {"name": doc["name"], "entry_code": (doc.get("entry") or {}).get("code")},
    refused_at="assigned_at",
)


class DataRequestService:
    def __init__(self, engine: AsyncEngine, node_id: str, catalog: CatalogService, accounts: AccountService,
                 federation: FederationService, audit: AuditLog) -> None:
        self.node_id = node_id
        self.catalog = catalog
        self.accounts = accounts
        self.flow = Workflow(DATA_REQUEST, engine, node_id, federation, audit, log)

    @property
    def clock(self) -> Callable[[], int]:
        return self.flow.clock

    @clock.setter
    def clock(self, value: Callable[[], int]) -> None:  # tests set it to a chosen day
        self.flow.clock = value

    def connect(self) -> None:
        self.flow.connect(self.on_submit, self.on_update)

    async def on_update(self, env: dict[str, Any]) -> dict[str, Any]:
        """data_request.update at the requester's node: keep the copy in step (newer versions only)."""
        return await self.flow.on_update(env, DataRequest)

    # Documents ------------------------------------------------------------------------------------------

    def _new_doc(self, sub: SubmittedDataRequest, received: int | None) -> dict[str, Any]:
        r = sub.requester
        doc: dict[str, Any] = {
            "id": sub.id, "to": sub.to.model_dump(), "name": sub.name, "fields": list(sub.fields),
            "purpose": sub.purpose, "basis": sub.basis, "requester": r.model_dump(),
            "provider": {"node": sub.to.node, "dept": None}, "status": "submitted",
            "submitted_at": cst_iso(sub.submitted_at), "received_at": None,
            "assign_due": None, "assigned_at": None, "answer_due": None, "answered_at": None,
            "overdue": False, "entry": None,
            "history": [history_event(sub.submitted_at, f"{r.node}/{r.dept}", "submitted", "submitted")],
            "version": 0,
        }
        if received is not None:
            self.flow.received(doc, received)
        self.flow.due(sub.submitted_at, STEP_DAYS, doc, "assign_due", at=received or sub.submitted_at)
        return doc

    async def _department(self, code: str) -> dict[str, Any] | None:
        """A department of this node that can provide data (not an operator's or auditor's account)."""
        dept = await self.accounts.department(code)
        return dept if dept is not None and dept["role"] == "dept" else None

    # The department API ---------------------------------------------------------------------------------

    async def submit(self, acct: Account, body: DataRequestCreate) -> dict[str, Any]:
        if acct.role != "dept":
            raise Forbidden("a data request is made by a department")
        if body.to.node == self.node_id and body.to.dept is not None and await self._department(body.to.dept) is None:
            raise InvalidInput(f"{body.to.dept} is no department of node {self.node_id}",
                               [{"field": "to.dept", "error": "no such department"}])
        now = self.clock()
        sub = SubmittedDataRequest(id=new_id(), requester={"node": acct.node, "dept": acct.dept}, submitted_at=now,
                                   **body.model_dump())
        doc = self._new_doc(sub, now if body.to.node == self.node_id else None)
        return await self.flow.create(doc, sub.model_dump())

    async def get(self, acct: Account, req_id: str) -> dict[str, Any]:
        return await self.flow.get(acct, req_id)

    async def list_requests(self, acct: Account, *, role: str | None, status: str | None, overdue: bool | None,
                            page: int, page_size: int) -> tuple[int, list[dict[str, Any]]]:
        return await self.flow.list(acct, role=role, status=status, overdue=overdue, page=page, page_size=page_size)

    def _held(self, doc: dict[str, Any]) -> None:
        if not self.flow.held_here(doc):
            raise Forbidden(f"data request {doc['id']} is answered at node {doc['provider']['node']}")

    async def accept(self, acct: Account, req_id: str, body: Acceptance) -> dict[str, Any]:
        """The operator assigns the request to a department of this node."""
        if acct.role != "operator":
            raise Forbidden("a data request is assigned by the asked node's operator")
        dept = await self._department(body.dept)
        if dept is None:
            raise InvalidInput(f"{body.dept} is no department of node {self.node_id}",
                               [{"field": "dept", "error": "no such department"}])

        async def change(doc: dict[str, Any], conn: AsyncConnection) -> None:
            self._held(doc)
            if doc["status"] != "submitted":
                raise Conflict(f"data request {req_id} is {doc['status']}; only a submitted one is assigned")
            now = self.clock()
            doc["status"] = "accepted"
            doc["provider"]["dept"] = body.dept
            doc["assigned_at"] = cst_iso(now)
            doc["overdue"] = False
            doc["history"].append(history_event(now, acct.principal, "accepted", "accepted", body.reason.strip()))
            self.flow.due(now, STEP_DAYS, doc, "answer_due")

        return await self.flow.transition(req_id, change)

    async def reject(self, acct: Account, req_id: str, reason: str) -> dict[str, Any]:
        """Before assignment the operator rejects; after it, the assigned department."""

        async def change(doc: dict[str, Any], conn: AsyncConnection) -> None:
            self._held(doc)
            if doc["status"] == "submitted":
                if acct.role != "operator":
                    raise Forbidden(f"data request {req_id} is not assigned yet; the node's operator answers it")
                done = "assigned_at"
            elif doc["status"] == "accepted":
                if not self.flow.is_provider(acct, doc):
                    raise Forbidden(f"data request {req_id} is answered by the department it was assigned to, "
                                    f"{doc['provider']['node']}/{doc['provider']['dept']}")
                done = "answered_at"
            else:
                raise Conflict(f"data request {req_id} is {doc['status']}; only an open one is rejected")
            now = self.clock()
            doc["status"] = "rejected"
            doc[done] = cst_iso(now)
            doc["overdue"] = False
            doc["history"].append(history_event(now, acct.principal, "rejected", "rejected", reason.strip()))

        return await self.flow.transition(req_id, change)

    async def fulfil(self, acct: Account, req_id: str, body: Fulfilment) -> dict[str, Any]:
        """The assigned department names its catalog entry that now provides the data (it must exist here)."""
        try:
            entry = await self.catalog.get(body.entry)
        except NotFound:
            raise InvalidInput(f"no catalog entry {body.entry}",
                               [{"field": "entry", "error": "no such catalog entry"}]) from None
        if entry["node"] != self.node_id or entry["provider"]["dept"] != acct.dept:
            raise InvalidInput(f"{body.entry} is not a resource of {acct.principal}",
                               [{"field": "entry", "error": "not the department's own resource"}])

        async def change(doc: dict[str, Any], conn: AsyncConnection) -> None:
            self._held(doc)
            if not self.flow.is_provider(acct, doc):
                raise Forbidden(f"data request {req_id} is fulfilled by the department it was assigned to")
            if doc["status"] != "accepted":
                raise Conflict(f"data request {req_id} is {doc['status']}; only an assigned one is fulfilled")
            now = self.clock()
            doc["status"] = "fulfilled"
            doc["entry"] = {"code": entry["code"], "name": entry["name"]}
            doc["answered_at"] = cst_iso(now)
            doc["overdue"] = False
            doc["history"].append(history_event(now, acct.principal, "fulfilled", "fulfilled",
                                                body.reason.strip() or entry["code"]))

        return await self.flow.transition(req_id, change)

    # Messages from other nodes ----------------------------------------------------------------------------

    async def on_submit(self, env: dict[str, Any]) -> dict[str, Any]:
        """data_request.submit at the asked node: store it (rejected on receipt if it cannot be taken here)."""
        return await self.flow.receive(env, SubmittedDataRequest, self._received)

    async def _received(self, sub: SubmittedDataRequest, now: int) -> dict[str, Any]:
        sub = sub.model_copy(update={"submitted_at": self.flow.submitted_at(sub.submitted_at, now)})
        problem: ApiError | None = None
        if sub.to.node != self.node_id:
            problem = NotFound(f"the request is addressed to node {sub.to.node}, not {self.node_id}")
            sub = sub.model_copy(update={"to": sub.to.model_copy(update={"node": self.node_id})})
        elif sub.to.dept is not None and await self._department(sub.to.dept) is None:
            problem = NotFound(f"{sub.to.dept} is no department of node {self.node_id}")
        doc = self._new_doc(sub, now)
        if problem is not None:
            self.flow.refuse(doc, problem, now)
        return doc

    # Deadlines and statistics -------------------------------------------------------------------------------

    async def check_deadlines(self) -> list[str]:
        return await self.flow.check_deadlines()

    async def stats(self, since: int, until: int) -> dict[str, Any]:
        """Requests received here in the window, per department assigned (the platform's before assignment)."""
        out = await self.flow.summary(since, until)
        return {"by_provider": out, "overdue_open": sum(d["overdue_open"] for d in out)}
