"""One mechanism for the documents that one node asks of another and the other answers in steps, each due
within so many working days: applications (SPEC §11), feedback (§10) and data requests (§16).

What they share, written once here:
- the document lives at the provider's node (the authority on its status); the requester's node keeps a copy
  with the same id, replaced by every `<kind>.update` whose `version` is newer (node.mirror). The request
  travels as `<kind>.submit`; both go through the federation's durable outbox, so an outage delays and never
  loses them. A submission the federation gives up on (refused for good, or expired) is shown as rejected at
  the requester's node (`not_delivered`);
- a step is a transition made under the row's lock (`SELECT … FOR UPDATE` on PostgreSQL; SQLite's writer
  lock is taken at `BEGIN IMMEDIATE`) and saved only if the row still holds the version it was read at, so
  two workers (or two people) acting at once on one document make one transition, and the other is refused
  with CONFLICT;
- each step's due date is a number of working days of China's official calendar (node.workdays) after the
  step started; a sweep flags a step past its due date once (`overdue: true`, a history entry, an audit
  record, an update to the requester's node). The sweep and the re-sends of updates are background work:
  they run in the worker holding the node's background lease (node.cluster), under a Supervisor;
- statistics per providing department: counts by status and, per step, how many were done, how many on
  time, the median time taken and how many are open past their due date (`summary`).

What differs is a `Kind`: the table, the name of the requester's side, the steps; and the service of each
kind (what is asked, who acts at each step, what a step does besides changing the status: an approved
application issues a grant, a fulfilled data request names the catalog entry that now provides it).
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from node.accounts.service import Account
from node.audit.service import AuditLog
from node.db import write_tx
from node.errors import ApiError, Conflict, Forbidden, InvalidInput, NotFound
from node.federation.service import ASYNC_TTL_MS, FederationService
from node.ids import new_id, now_ms
from node.mirror import PLATFORM, Mirror, history_event
from node.supervisor import Supervisor
from node.web import validation_details
from node.workdays import add_working_days, cst_date, cst_iso, iso_ms
from node.workflow import store


@dataclass(frozen=True)
class Step:
    """One step a document waits at: while its status is one of `statuses`, the step is due on the date in
    the document's field `due`; it started at `started` and was done at `done` (ISO instants in the document,
    epoch milliseconds in the row). `late` says, in the history, what was due when it is flagged."""

    name: str
    statuses: tuple[str, ...]
    due: str
    started: str
    done: str
    late: Callable[[str], str]


@dataclass(frozen=True)
class Kind:
    """A workflow: `name` names its messages (`<name>.submit`, `<name>.update`) and the key their bodies hold
    the document under; `requester` is the document's field (and the columns' prefix) naming the side that
    asked; `audit` prefixes its audit actions (`<audit>.overdue`); `statuses` are all its statuses;
    `columns` gives the row's columns that only this kind has; `refused_at` is the field stamped when a
    submission is refused (on receipt, or not delivered), if the kind records it."""

    name: str
    noun: str
    table: sa.Table
    requester: str
    audit: str
    statuses: tuple[str, ...]
    steps: tuple[Step, ...]
    columns: Callable[[dict[str, Any]], dict[str, Any]]
    refused_at: str | None = None


def party(p: dict[str, Any]) -> str:
    return f"{p['node']}/{p['dept']}" if p.get("dept") else f"{p['node']}/{PLATFORM}"


class Workflow:
    def __init__(self, kind: Kind, engine: AsyncEngine, node_id: str, federation: FederationService,
                 audit: AuditLog, log: logging.Logger) -> None:
        self.kind = kind
        self.engine = engine
        self.node_id = node_id
        self.federation = federation
        self.audit = audit
        self.log = log
        self.mirror = Mirror(engine, kind.table, federation, node_id, f"{kind.name}.update", kind.name,
                             kind.requester)
        # Now, in epoch milliseconds: submissions, steps and deadlines read this clock (tests set it to a
        # chosen day).
        self.clock: Callable[[], int] = now_ms
        self.check_interval_s = 60.0
        self.supervisor = Supervisor(node_id, log)

    # Life cycle -------------------------------------------------------------------------------------------

    def connect(self, on_submit: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
                on_update: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
        name = self.kind.name
        self.federation.handlers[f"{name}.submit"] = on_submit
        self.federation.handlers[f"{name}.update"] = on_update
        self.federation.reply_handlers[f"{name}.submit"] = self.on_submit_refused

    async def take_up(self) -> None:
        """Deadline checks and re-sends are background work: one worker of the node runs them (node.cluster)."""
        self.supervisor.every((self._scheduled_check, self.check_interval_s, f"{self.kind.name}-deadlines"),
                              (self.mirror.resend_pending, 30, f"{self.kind.name}-resend"))

    async def give_up(self) -> None:
        self.supervisor.stop()

    async def close(self) -> None:
        await self.supervisor.close()

    async def _scheduled_check(self) -> None:
        try:
            await self.check_deadlines()
        except Exception:  # noqa: BLE001 - the next run tries again
            self.log.exception("%s deadline check failed", self.kind.noun)

    # Documents --------------------------------------------------------------------------------------------

    @property
    def platform(self) -> str:
        return self.mirror.platform

    def row_of(self, doc: dict[str, Any], pending: bool) -> dict[str, Any]:
        """The columns of a document's row, all derived from the document."""
        r = self.kind.requester
        row = {
            "id": doc["id"], f"{r}_node": doc[r]["node"], f"{r}_dept": doc[r]["dept"],
            "provider_node": doc["provider"]["node"], "provider_dept": doc["provider"]["dept"],
            "status": doc["status"], "overdue": doc["overdue"], "submitted_at": iso_ms(doc["submitted_at"]),
            "version": doc["version"], "notify_pending": pending, "updated_at": now_ms(),
            "doc": json.dumps(doc, ensure_ascii=False),
        }
        for step in self.kind.steps:
            row[step.due] = doc.get(step.due)
            row[step.done] = iso_ms(doc.get(step.done))
        row.update(self.kind.columns(doc))
        return row

    def due(self, start_ms: int, days: int, doc: dict[str, Any], field: str, at: int | None = None) -> None:
        """Set `doc[field]` to the `days`th working day after the day of `start_ms`; a year the official
        calendar does not know yet is said in the history."""
        deadline = add_working_days(cst_date(start_ms), days)
        doc[field] = deadline.due.isoformat()
        note = deadline.note()
        if note:
            doc["history"].append(history_event(start_ms if at is None else at, self.platform, doc["status"],
                                                "calendar", f"{field}: {note}"))

    def may_see(self, acct: Account, doc: dict[str, Any]) -> bool:
        """The node's operators and auditors see what the node holds; a department what it asked or answers."""
        if acct.role in ("operator", "auditor"):
            return True
        r, p = doc[self.kind.requester], doc["provider"]
        return (acct.node, acct.dept) in ((r["node"], r["dept"]), (p["node"], p["dept"]))

    def held_here(self, doc: dict[str, Any]) -> bool:
        return doc["provider"]["node"] == self.node_id

    def is_requester(self, acct: Account, doc: dict[str, Any]) -> bool:
        r = doc[self.kind.requester]
        return acct.role == "dept" and (acct.node, acct.dept) == (r["node"], r["dept"])

    def is_provider(self, acct: Account, doc: dict[str, Any]) -> bool:
        """The providing department of a document held here."""
        p = doc["provider"]
        return acct.role == "dept" and self.held_here(doc) and acct.dept == p["dept"]

    async def load(self, doc_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await store.get(conn, self.kind.table, doc_id)
        if row is None:
            raise NotFound(f"no {self.kind.noun} {doc_id} at node {self.node_id}")
        return json.loads(row.doc)

    async def get(self, acct: Account, doc_id: str) -> dict[str, Any]:
        doc = await self.load(doc_id)
        if not self.may_see(acct, doc):
            raise Forbidden(f"{self.kind.noun} {doc_id} is neither the caller's nor on the caller's resource")
        return doc

    async def list(self, acct: Account, *, role: str | None, status: str | None, overdue: bool | None,
                   page: int, page_size: int, **equal: Any) -> tuple[int, list[dict[str, Any]]]:
        """A page of the documents the caller sees, newest first; `equal` filters columns (None: any)."""
        t = self.kind.table
        dept = None if acct.role in ("operator", "auditor") else acct.dept
        conds = [store.visible(t, self.kind.requester, self.node_id, dept, role)]
        if status:
            conds.append(t.c.status == status)
        if overdue is not None:
            conds.append(t.c.overdue.is_(overdue))
        conds += [t.c[col] == value for col, value in equal.items() if value]
        async with self.engine.connect() as conn:
            total, docs = await store.page(conn, t, sa.and_(*conds), (page - 1) * page_size, page_size)
        return total, [json.loads(d) for d in docs]

    # Asking -----------------------------------------------------------------------------------------------

    async def create(self, doc: dict[str, Any], submit_body: dict[str, Any]) -> dict[str, Any]:
        """Store a new document made here; when the provider is another node, send it `<kind>.submit` first."""
        dest = doc["provider"]["node"]
        remote = dest != self.node_id
        doc["version"] = 0 if remote else 1
        if remote:
            self.federation.require_joined()
            if self.federation.route(dest) is None:
                raise ApiError(f"node {dest} is in no known subtree", {"node": dest}, code="NODE_UNKNOWN")
            # Queued durably before anything is stored here: if storing fails, the provider's first update
            # creates this copy anyway; if queueing fails, nothing was made.
            await self.federation.send_async(f"{self.kind.name}.submit", dest, {self.kind.name: submit_body})
        async with write_tx(self.engine) as conn:
            held = await store.get(conn, self.kind.table, doc["id"])
            if held is None:
                await store.insert(conn, self.kind.table, self.row_of(doc, pending=False))
        return doc if held is None else json.loads(held.doc)  # the provider's first update came first

    # Steps ------------------------------------------------------------------------------------------------

    async def transition(self, doc_id: str,
                         change: Callable[[dict[str, Any], AsyncConnection], Awaitable[None]]) -> dict[str, Any]:
        """Make one step on a document held here: `change` checks who acts and from which status (raising
        to refuse) and changes the document; the new version is saved and sent to the requester's node."""
        t = self.kind.table
        async with write_tx(self.engine) as conn:
            row = await store.get(conn, t, doc_id, for_update=True)
            if row is None:
                raise NotFound(f"no {self.kind.noun} {doc_id} at node {self.node_id}")
            doc = json.loads(row.doc)
            await change(doc, conn)
            doc["version"] = row.version + 1
            if not await store.update(conn, t, doc_id, self.row_of(doc, pending=self.mirror.remote(doc)),
                                      expected_version=row.version):
                raise Conflict(f"{self.kind.noun} {doc_id} was changed meanwhile; look at it again")
        await self.mirror.notify(doc)
        return doc

    # Messages from other nodes ----------------------------------------------------------------------------

    async def receive(self, env: dict[str, Any], model: type[BaseModel],
                      build: Callable[[Any, int], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """`<kind>.submit` at the provider's node: store what `build` makes of it (it refuses on receipt, with
        `refuse`, what cannot be served) and answer the requester's node with the first update."""
        noun, r = self.kind.noun, self.kind.requester
        try:
            sub = model.model_validate((env.get("body") or {}).get(self.kind.name))
        except ValidationError as exc:
            raise InvalidInput(f"the {noun} is malformed", validation_details(exc)) from None
        if getattr(sub, r).node != env["origin"]:
            raise Forbidden(f"{env['origin']} cannot submit for a department of node {getattr(sub, r).node}")
        async with self.engine.connect() as conn:
            held = await store.get(conn, self.kind.table, sub.id)
        if held is not None:
            if getattr(held, f"{r}_node") != getattr(sub, r).node:
                raise Conflict(f"{noun} id {sub.id} is taken")
            await self.mirror.notify(json.loads(held.doc))  # the requester's node asked again: answer again
            return {"accepted": True, "duplicate": True}
        now = self.clock()
        doc = await build(sub, now)
        doc["version"] = 1
        try:
            async with write_tx(self.engine) as conn:
                await store.insert(conn, self.kind.table, self.row_of(doc, pending=self.mirror.remote(doc)))
        except IntegrityError:  # the same submission delivered twice at once
            return {"accepted": True, "duplicate": True}
        await self.mirror.notify(doc)
        return {"accepted": True}

    @staticmethod
    def submitted_at(sent: int, now: int) -> int:
        """The requester's clock, trusted within the time a message may travel."""
        return min(max(sent, now - ASYNC_TTL_MS), now)

    async def named_entry(self, catalog: Any, code: str) -> tuple[dict[str, Any] | None, ApiError | None]:
        """The catalog entry a submission is about, and why it cannot be served here (None: the entry is
        this node's own; the kind checks the rest)."""
        try:
            entry = await catalog.get(code)
        except NotFound as exc:
            return None, exc
        if entry["node"] != self.node_id:
            return entry, NotFound(f"{code} is held at node {entry['node']}, not here")
        return entry, None

    def refuse(self, doc: dict[str, Any], problem: ApiError, now: int) -> None:
        """A submission that cannot be served is rejected on receipt, with the reason."""
        doc["status"] = "rejected"
        if self.kind.refused_at:
            doc[self.kind.refused_at] = cst_iso(now)
        doc["history"].append(history_event(now, self.platform, "rejected", "rejected",
                                            f"refused on receipt: {problem.message}"))

    def received(self, doc: dict[str, Any], received: int) -> None:
        """The provider's node records when it took a document sent from another node."""
        doc["received_at"] = cst_iso(received)
        if doc[self.kind.requester]["node"] != doc["provider"]["node"]:
            doc["history"].append(history_event(received, self.platform, doc["status"], "received"))

    async def on_update(self, env: dict[str, Any], model: type[BaseModel],
                        also: Callable[[dict[str, Any], AsyncConnection], Awaitable[None]] | None = None,
                        check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """`<kind>.update` at the requester's node: keep the copy in step (newer versions only); `check` refuses
        what the update carries besides the document (a grant that does not verify), `also` stores it."""
        noun, r = self.kind.noun, self.kind.requester
        try:
            m = model.model_validate((env.get("body") or {}).get(self.kind.name))
        except ValidationError as exc:
            raise InvalidInput(f"the {noun} is malformed", validation_details(exc)) from None
        doc = m.model_dump()
        if doc["provider"]["node"] != env["origin"]:
            raise Forbidden(f"{env['origin']} cannot update a {noun} held at node {doc['provider']['node']}")
        if doc[r]["node"] != self.node_id:
            raise InvalidInput(f"{noun} {doc['id']} was made at node {doc[r]['node']}, not here")
        if check is not None:
            check(doc)
        t = self.kind.table
        async with write_tx(self.engine) as conn:
            held = await store.get(conn, t, doc["id"], for_update=True)
            if held is not None and (held.provider_node, getattr(held, f"{r}_node"), getattr(held, f"{r}_dept")) != (
                    doc["provider"]["node"], doc[r]["node"], doc[r]["dept"]):
                raise Forbidden(f"{noun} {doc['id']} held here is not {env['origin']}'s to update")
            if held is not None and held.version >= doc["version"]:
                return {"accepted": True, "stale": True}
            if held is None:
                await store.insert(conn, t, self.row_of(doc, pending=False))
            else:
                await store.update(conn, t, doc["id"], self.row_of(doc, pending=False))
            if also is not None:
                await also(doc, conn)
        return {"accepted": True}

    async def on_submit_refused(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        """The federation gave up on a `<kind>.submit` sent from here (refused for good or expired)."""
        if reply.get("kind") != "error":
            return
        doc_id = ((request.get("body") or {}).get(self.kind.name) or {}).get("id")
        err = ((reply.get("body") or {}).get("error") or {})
        t = self.kind.table
        async with write_tx(self.engine) as conn:
            row = await store.get(conn, t, doc_id, for_update=True) if isinstance(doc_id, str) else None
            if row is None or row.version > 0:  # the provider's node answered after all
                return
            doc = json.loads(row.doc)
            now = self.clock()
            doc["status"] = "rejected"
            if self.kind.refused_at:
                doc[self.kind.refused_at] = cst_iso(now)
            doc["history"].append(history_event(now, self.platform, "rejected", "not_delivered",
                                                f"{err.get('code', 'error')}: {err.get('message', '')}"[:500]))
            await store.update(conn, t, doc_id, self.row_of(doc, pending=False))

    # Deadlines --------------------------------------------------------------------------------------------

    def open_step(self, doc: dict[str, Any]) -> Step | None:
        return next((s for s in self.kind.steps if doc["status"] in s.statuses), None)

    async def check_deadlines(self) -> list[str]:
        """Flag every open step past its due date (once a step); returns the ids flagged."""
        now = self.clock()
        today = cst_date(now).isoformat()
        t, r = self.kind.table, self.kind.requester
        async with self.engine.connect() as conn:
            ids = await store.overdue_candidates(conn, t, self.node_id, today,
                                                 [(s.statuses, s.due) for s in self.kind.steps])
        flagged = []
        for doc_id in ids:
            async with write_tx(self.engine) as conn:
                row = await store.get(conn, t, doc_id, for_update=True)
                if row is None or row.overdue:
                    continue
                doc = json.loads(row.doc)
                step = self.open_step(doc)
                due = doc.get(step.due) if step is not None else None
                if step is None or not due or due >= today:
                    continue
                doc["overdue"] = True
                doc["history"].append(history_event(now, self.platform, doc["status"], "overdue", step.late(due)))
                doc["version"] = row.version + 1
                await store.update(conn, t, doc_id, self.row_of(doc, pending=self.mirror.remote(doc)))
            await self.audit.record(
                request_id=new_id(), actor=self.platform, role="system", action=f"{self.kind.audit}.overdue",
                method="", path="", outcome="ok", status=0, resource=doc.get("resource"),
                details={self.kind.name: doc_id, "step": step.name, "due": due, r: party(doc[r]),
                         "provider": party(doc["provider"])})
            await self.mirror.notify(doc)
            flagged.append(doc_id)
        if flagged:
            self.log.warning("%d %s step(s) overdue at %s: %s", len(flagged), self.kind.noun, self.node_id,
                             ", ".join(flagged))
        return flagged

    # Statistics -------------------------------------------------------------------------------------------

    async def summary(self, since: int, until: int) -> list[dict[str, Any]]:
        """Documents held here submitted in the window, per providing department: how many in each status and,
        per step, how many were done, on time (on or before the due date), the median hours taken and how
        many are still open past their due date. Documents no department answers yet count for the platform."""
        cols = [c for s in self.kind.steps for c in (s.due, s.started, s.done)]
        async with self.engine.connect() as conn:
            rows = await store.stats_rows(conn, self.kind.table, self.node_id, since, until, cols)
        today = cst_date(self.clock()).isoformat()
        per: dict[str, list[Any]] = defaultdict(list)
        for row in rows:
            per[row.provider_dept or PLATFORM].append(row)
        out = []
        for dept in sorted(per):
            rs = per[dept]
            steps = {}
            for s in self.kind.steps:
                done = [x for x in rs if getattr(x, s.done) is not None and getattr(x, s.started) is not None
                        and getattr(x, s.due)]
                on_time = sum(1 for x in done if cst_date(getattr(x, s.done)).isoformat() <= getattr(x, s.due))
                took = [getattr(x, s.done) - getattr(x, s.started) for x in done]
                steps[s.name] = {
                    "done": len(done), "on_time": on_time,
                    "on_time_rate": round(on_time / len(done), 4) if done else None,
                    "median_hours": round(statistics.median(took) / 3_600_000, 2) if took else None,
                    "overdue_open": sum(1 for x in rs if x.status in s.statuses and getattr(x, s.due)
                                        and getattr(x, s.due) < today),
                }
            out.append({
                "dept": f"{self.node_id}/{dept}", "total": len(rs),
                "by_status": {st: sum(1 for x in rs if x.status == st) for st in self.kind.statuses},
                "steps": steps, "overdue_open": sum(v["overdue_open"] for v in steps.values()),
                "flagged_overdue": sum(1 for x in rs if x.overdue),
            })
        return out
