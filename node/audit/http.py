"""`GET /api/v1/audit` for operators and auditors; the middleware that makes each API call a `Call` (its
writes carry their audit intent, its Idempotency-Key is honoured) and the observer that records it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from node.accounts.http import ACCOUNT, PUBLIC_PATHS, account
from node.accounts.service import Account
from node.audit.service import MAX_KEPT_ANSWER, AuditLog, Call, IdempotencyClaim, keys_digest
from node.db import CALL_WRITES
from node.errors import ApiError
from node.fields import Instant, to_ms
from node.web import REQUEST_ID, ApiRoutes, answered, json_response, query_model

log = logging.getLogger("govnode.audit")

AUDIT = web.AppKey("audit", AuditLog)
# What a handler tells the audit about its call: resource code, keys touched, message id, details.
AUDIT_INFO = web.RequestKey("audit_info", dict)
CALL = web.RequestKey("call", Call)
# A keyed call answered 503 while its commit is settled: its one record is made when it ends.
SETTLING = web.RequestKey("settling", bool)
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

routes = ApiRoutes()


def note(request: web.Request, *, resource: str | None = None, keys: list[Any] | None = None,
         message_id: str | None = None, caller: Account | None = None, **details: Any) -> None:
    """Tell the audit record of this call what it touched; `caller` names whom a refused sign-in claimed
    to be (the request has no account of its own), so the record names that person."""
    info = request.setdefault(AUDIT_INFO, {})
    if caller is not None:
        info["caller"] = caller
    if resource is not None:
        info["resource"] = resource
        call = request.get(CALL)
        if call is not None:  # so the intents of the call's later writes name it too
            call.note(resource=resource)
    if keys is not None:
        info["keys"] = keys
    if message_id is not None:
        info["message_id"] = message_id
    if details:
        info.setdefault("details", {}).update(details)


def _audited(request: web.Request) -> bool:
    if request.path.startswith("/api/"):
        return request.path not in PUBLIC_PATHS
    # The portal: every page a signed-in person opens and every form anyone sends (sign-ins included);
    # not the sign-in page shown to whoever asks, nor static files.
    return request.path.startswith("/portal/") and (ACCOUNT in request or request.method != "GET")


@web.middleware
async def call_middleware(request: web.Request, handler):  # noqa: ANN001, ANN201
    """Runs inside authentication: the call's writes are made as a `Call`, and a retried write with an
    Idempotency-Key gets the answer of the first one instead of being carried out twice."""
    if not _audited(request) or ACCOUNT not in request:
        return await handler(request)
    acct = request[ACCOUNT]
    route = request.match_info.route.name if request.match_info.route else None
    call = Call({"request_id": request[REQUEST_ID], "actor": acct.principal, "user": acct.user, "role": acct.role,
                 "action": route or "unknown", "method": request.method, "path": request.path,
                 "resource": request.match_info.get("code")})
    key = request.headers.get("Idempotency-Key")
    if key is not None and request.method in WRITE_METHODS:
        # A key is the caller's own: a person's keys are theirs, not their whole department's.
        owner = f"{acct.principal}/{acct.user}" if acct.user else acct.principal
        claim = IdempotencyClaim.of(owner, key, request.method, request.path, request.query_string)
        answer = await request.app[AUDIT].stored_answer(claim)
        if answer is not None:
            note(request, idempotent_replay=key)
            return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type,
                                headers={"Idempotent-Replayed": "true"})
        call.idempotency = claim
    request[CALL] = call
    token = CALL_WRITES.set(call)
    try:
        if call.idempotency is None:
            return await handler(request)
        # A keyed write runs as a task of its own, so that when its COMMIT gets no answer the caller can be
        # answered 503 while the call goes on asking whether the write was stored (Call.settle): found
        # stored, the call ends as if the commit had been slow and its answer is kept for the key, so the
        # caller's retry gets it instead of a 409 that says the answer is lost.
        began = time.perf_counter()
        call.answer_early = asyncio.get_running_loop().create_future()
        work = asyncio.ensure_future(handler(request))  # in this context: its writes are the call's
        try:
            await asyncio.wait((work, call.answer_early), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        if work.done():
            return work.result()
        request[SETTLING] = True
        request.app[AUDIT].finish_later(_finish_settled(request, work, call, began))
        raise ApiError("the database went away while this write was being committed, and whether it was "
                       "stored is not known yet; send it again with the same Idempotency-Key in a few seconds "
                       "(it is carried out at most once)", code="UNAVAILABLE")
    finally:
        if not request.get(SETTLING):  # else the call ends when it is settled (_finish_settled)
            call.open = False
        CALL_WRITES.reset(token)


async def _finish_settled(request: web.Request, work: "asyncio.Future[web.StreamResponse]", call: Call,
                          began: float) -> None:
    """The end of a keyed call answered early: its record, with the answer kept for its key."""
    try:
        resp, outcome = await answered(request, work)
    finally:
        call.open = False
    note(request, answered_before_settled=True)
    request[SETTLING] = False
    try:
        await audit_observer(request, resp, outcome, time.perf_counter() - began)
    except ApiError as err:  # it changed nothing and cannot be recorded: its caller was answered 503
        log.warning("the record of call %s is lost: %s", request[REQUEST_ID], err)


def _kept_answer(call: Call, resp: web.StreamResponse) -> dict[str, Any] | None:
    """The answer a retry of this call with its Idempotency-Key gets, when its key was claimed."""
    if not call.claimed or call.idempotency is None:
        return None
    body = resp.body if isinstance(resp, web.Response) and isinstance(resp.body, bytes) else None
    if body is None or len(body) > MAX_KEPT_ANSWER:  # not kept: a retry learns that, not an empty success
        return {"k_actor": call.idempotency.actor, "k_key": call.idempotency.key, "a_status": None,
                "a_type": None, "a_body": None}
    return {"k_actor": call.idempotency.actor, "k_key": call.idempotency.key, "a_status": resp.status,
            "a_type": resp.content_type[:100], "a_body": body.decode("utf-8", "replace")}


async def audit_observer(request: web.Request, resp: web.StreamResponse, outcome: str, elapsed: float) -> None:
    if not _audited(request) or request.get(SETTLING):
        return
    info = request.get(AUDIT_INFO, {})
    acct = request.get(ACCOUNT) or info.get("caller")
    call = request.get(CALL)
    route = request.match_info.route.name if request.match_info.route else None
    wrote = call is not None and call.wrote
    fields = dict(
        request_id=request[REQUEST_ID],
        message_id=info.get("message_id"),
        actor=acct.principal if acct else "anonymous",
        user=acct.user if acct else None,
        role=acct.role if acct else "none",
        action=route or "unknown",
        method=request.method,
        path=request.path,
        resource=info.get("resource") or request.match_info.get("code"),
        keys_digest=keys_digest(info.get("keys")),
        outcome=outcome,
        status=resp.status,
        latency_ms=round(elapsed * 1000),
        details=info.get("details"),
        call_key=call.key if wrote else None,
        answer=_kept_answer(call, resp) if wrote else None,
    )
    try:
        await request.app[AUDIT].record(**fields)
    except ApiError as err:
        if not wrote:
            raise  # the record is the call's only trail: no answer without it
        # The write committed with its audit intent, which becomes its record in any case; answering 503 now
        # would tell the caller that a stored write failed, and a retry would repeat it.
        log.warning("the record of call %s waits for the database: %s", request[REQUEST_ID], err)
        request.app[AUDIT].record_later(**fields)


MAX_INT64 = 2**63 - 1


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dept: str | None = Field(None, description="actor as <node>/<dept> or a department code of this node")
    resource: str | None = None
    message_id: str | None = None
    user: str | None = Field(None, max_length=32, description="the person who acted (portal username)")
    action: str | None = Field(None, max_length=64, description="the operation, as records name it (e.g. catalog.create)")
    outcome: str | None = Field(None, max_length=32, description="ok, or the error code the call ended with")
    since: Instant
    until: Instant
    before_seq: int | None = Field(None, ge=1, le=MAX_INT64,
                                   description="page: records older than this sequence number")
    limit: int = Field(100, ge=1, le=1000)


class AuditRecord(BaseModel):
    seq: int
    at: int
    request_id: str
    message_id: str | None
    actor: str
    user: str | None = Field(None, description="the person who acted (portal), with `actor` their department")
    role: str
    action: str
    method: str
    path: str
    resource: str | None
    keys_digest: str | None
    outcome: str
    status: int
    latency_ms: int
    details: dict | None
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    records: list[AuditRecord]
    next_before_seq: int | None


def filters_of(q: AuditQuery, node: str) -> dict[str, Any]:
    """The store's filters for a query: a department code alone names a department of this node."""
    actor = q.dept if q.dept is None or "/" in q.dept else f"{node}/{q.dept}"
    return dict(actor=actor, resource=q.resource, since=to_ms(q.since), until=to_ms(q.until),
                message_id=q.message_id, user=q.user, action=q.action, outcome=q.outcome)


@routes.get("/api/v1/audit", name="audit.list", summary="Audit records, newest first (operator, auditor)",
            query=AuditQuery, response=AuditPage, roles=("operator", "auditor"), tags=("audit",))
async def list_audit(request: web.Request) -> web.Response:
    acct = account(request, "operator", "auditor")
    q = query_model(request, AuditQuery)
    rows = await request.app[AUDIT].query(**filters_of(q, acct.node), after_seq=q.before_seq, limit=q.limit)
    nxt = rows[-1]["seq"] if len(rows) == q.limit else None
    return json_response({"records": rows, "next_before_seq": nxt})
