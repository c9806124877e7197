"""`GET /api/v1/audit` for operators and auditors, and the observer that audits every API call."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from node.accounts.http import ACCOUNT, account
from node.audit.service import AuditLog, keys_digest
from node.fields import Instant, to_ms
from node.web import REQUEST_ID, ApiRoutes, json_response, query_model

AUDIT = web.AppKey("audit", AuditLog)
# What a handler tells the audit about its call: resource code, keys touched, message id, details.
AUDIT_INFO = web.RequestKey("audit_info", dict)

routes = ApiRoutes()


def note(request: web.Request, *, resource: str | None = None, keys: list[Any] | None = None,
         message_id: str | None = None, **details: Any) -> None:
    """Tell the audit record of this call what it touched."""
    info = request.setdefault(AUDIT_INFO, {})
    if resource is not None:
        info["resource"] = resource
    if keys is not None:
        info["keys"] = keys
    if message_id is not None:
        info["message_id"] = message_id
    if details:
        info.setdefault("details", {}).update(details)


async def audit_observer(request: web.Request, status: int, outcome: str, elapsed: float) -> None:
    if not request.path.startswith("/api/") or request.path == "/api/v1/openapi.json":
        return
    info = request.get(AUDIT_INFO, {})
    acct = request.get(ACCOUNT)
    route = request.match_info.route.name if request.match_info.route else None
    await request.app[AUDIT].record(
        request_id=request[REQUEST_ID],
        message_id=info.get("message_id"),
        actor=acct.principal if acct else "anonymous",
        role=acct.role if acct else "none",
        action=route or "unknown",
        method=request.method,
        path=request.path,
        resource=info.get("resource") or request.match_info.get("code"),
        keys_digest=keys_digest(info.get("keys")),
        outcome=outcome,
        status=status,
        latency_ms=round(elapsed * 1000),
        details=info.get("details"),
    )


MAX_INT64 = 2**63 - 1


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dept: str | None = Field(None, description="actor as <node>/<dept> or a department code of this node")
    resource: str | None = None
    message_id: str | None = None
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


@routes.get("/api/v1/audit", name="audit.list", summary="Audit records, newest first (operator, auditor)",
            query=AuditQuery, response=AuditPage, roles=("operator", "auditor"), tags=("audit",))
async def list_audit(request: web.Request) -> web.Response:
    acct = account(request, "operator", "auditor")
    q = query_model(request, AuditQuery)
    actor = q.dept if q.dept is None or "/" in q.dept else f"{acct.node}/{q.dept}"
    rows = await request.app[AUDIT].query(
        actor=actor, resource=q.resource, since=to_ms(q.since), until=to_ms(q.until),
        message_id=q.message_id, after_seq=q.before_seq, limit=q.limit,
    )
    nxt = rows[-1]["seq"] if len(rows) == q.limit else None
    return json_response({"records": rows, "next_before_seq": nxt})
