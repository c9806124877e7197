"""Applications, grants and statistics endpoints of the department API (SPEC §10, §11)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from node.accounts.http import account
from node.applications.models import (Application, ApplicationCreate, ApplicationPage, ApplicationQuery, Decision,
                                      GrantPage, GrantQuery, GrantView, Reason, Review, Stats, StatsQuery)
from node.applications.service import ApplicationService
from node.cluster import CLUSTER
from node.audit.http import AUDIT, note
from node.catalog.http import CATALOG
from node.context import CONFIG, DB, add_routes, json_limit
from node.errors import InvalidInput
from node.fields import to_ms
from node.federation.http import FEDERATION
from node.ids import now_ms
from node.ops.http import STATS_SECTIONS
from node.sharing.http import SHARING
from node.web import ApiRoutes, json_response, parse_model, query_model, read_body, read_model
from node.workflow import WORKFLOWS
from node.workflow import setup as workflows

APPLICATIONS = web.AppKey("applications", ApplicationService)
routes = ApiRoutes()
TAGS = ("applications",)
ID = r"{id:[0-9A-HJKMNP-TV-Z]{26}}"
STATS_DEFAULT_WINDOW_MS = 30 * 24 * 3600 * 1000


async def _optional_reason(request: web.Request) -> str:
    raw = await read_body(request, json_limit(request))
    return parse_model(Reason, raw).reason if raw.strip() else ""


@routes.post("/api/v1/applications", name="applications.submit",
             summary="Apply for a grant on a resource of any node (received and reviewed at the provider's node)",
             body=ApplicationCreate, response=Application, roles=("dept",), status=201, errors=(404, 409), tags=TAGS)
async def submit(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    body = await read_model(request, ApplicationCreate, json_limit(request))
    doc = await request.app[APPLICATIONS].submit(acct, body)
    note(request, resource=body.resource, application=doc["id"])
    return json_response(doc, status=201)


@routes.get("/api/v1/applications", name="applications.list",
            summary="Applications made by the caller's department or on its resources (a node's operators and "
                    "auditors: all held here), newest first",
            query=ApplicationQuery, response=ApplicationPage, tags=TAGS)
async def list_applications(request: web.Request) -> web.Response:
    acct = account(request)
    q = query_model(request, ApplicationQuery)
    total, docs = await request.app[APPLICATIONS].list_applications(
        acct, role=q.role, status=q.status, overdue=q.overdue, resource=q.resource, page=q.page, page_size=q.page_size)
    return json_response({"applications": docs, "page": q.page, "page_size": q.page_size, "total": total})


@routes.get(f"/api/v1/applications/{ID}", name="applications.get", summary="One application, with its history",
            response=Application, tags=TAGS)
async def get_application(request: web.Request) -> web.Response:
    acct = account(request)
    doc = await request.app[APPLICATIONS].get(acct, request.match_info["id"])
    note(request, resource=doc["resource"], application=doc["id"])
    return json_response(doc)


@routes.post(f"/api/v1/applications/{ID}/withdraw", name="applications.withdraw",
             summary="The applicant withdraws its application before the decision (body optional: {reason})",
             body=Reason, response=Application, roles=("dept",), body_optional=True, errors=(409,), tags=TAGS)
async def withdraw(request: web.Request) -> web.Response:
    acct = account(request)
    reason = await _optional_reason(request)
    doc = await request.app[APPLICATIONS].withdraw(acct, request.match_info["id"], reason)
    note(request, resource=doc["resource"], application=doc["id"])
    return json_response(doc)


@routes.post(f"/api/v1/applications/{ID}/review", name="applications.review",
             summary="The provider node's platform review: accept (for the department's decision) or reject",
             body=Review, response=Application, roles=("operator",), errors=(409,), tags=TAGS)
async def review(request: web.Request) -> web.Response:
    acct = account(request)
    body = await read_model(request, Review, json_limit(request))
    doc = await request.app[APPLICATIONS].review(acct, request.match_info["id"], body)
    note(request, resource=doc["resource"], application=doc["id"], decision=body.decision)
    return json_response(doc)


@routes.post(f"/api/v1/applications/{ID}/decision", name="applications.decide",
             summary="The providing department approves (issuing a signed grant, fields and ops narrowed at will) "
                     "or rejects",
             body=Decision, response=Application, roles=("dept",), errors=(409,), tags=TAGS)
async def decide(request: web.Request) -> web.Response:
    acct = account(request)
    body = await read_model(request, Decision, json_limit(request))
    doc = await request.app[APPLICATIONS].decide(acct, request.match_info["id"], body)
    note(request, resource=doc["resource"], application=doc["id"], decision=body.decision,
         grant=(doc.get("grant") or {}).get("id"))
    return json_response(doc)


@routes.get("/api/v1/grants", name="grants.list",
            summary="Grants held by the caller's department (consumer) or issued on its resources (provider)",
            query=GrantQuery, response=GrantPage, tags=TAGS)
async def list_grants(request: web.Request) -> web.Response:
    acct = account(request)
    q = query_model(request, GrantQuery)
    total, grants = await request.app[APPLICATIONS].list_grants(
        acct, role=q.role, resource=q.resource, status=q.status, page=q.page, page_size=q.page_size)
    return json_response({"grants": grants, "page": q.page, "page_size": q.page_size, "total": total})


@routes.post(f"/api/v1/grants/{ID}/revoke", name="grants.revoke",
             summary="Revoke a grant (providing department or provider operator); refused from the next call on",
             body=Reason, response=GrantView, roles=("dept", "operator"), body_optional=True, errors=(409,),
             tags=TAGS)
async def revoke(request: web.Request) -> web.Response:
    acct = account(request)
    reason = await _optional_reason(request)
    view = await request.app[APPLICATIONS].revoke(acct, request.match_info["id"], reason)
    note(request, resource=view["resource"], grant=view["id"])
    return json_response(view)


@routes.get("/api/v1/stats", name="stats.get",
            summary="Calls, errors and latency per resource and department; applications, deadlines and on-time "
                    "rates per providing department (operator, auditor)",
            query=StatsQuery, response=Stats, roles=("operator", "auditor"), tags=("ops",))
async def stats(request: web.Request) -> web.Response:
    account(request, "operator", "auditor")
    q = query_model(request, StatsQuery)
    svc = request.app[APPLICATIONS]
    until = to_ms(q.until)
    if until is None:
        until = now_ms() + 1
    since = to_ms(q.since)
    if since is None:
        since = max(0, until - STATS_DEFAULT_WINDOW_MS)
    if since >= until:
        raise InvalidInput("since must be before until", [{"field": "since"}])
    result = await svc.stats(since, until)
    for name, section in request.app.get(STATS_SECTIONS, {}).items():
        result[name] = await section(since, until)
    return json_response(result)


async def _service(app: web.Application) -> AsyncIterator[None]:
    svc = ApplicationService(app[DB], app[CONFIG].node.id, app[CATALOG], app[FEDERATION], app[AUDIT])
    svc.connect(app[SHARING])
    app[CLUSTER].on_lead(svc.take_up, svc.give_up)
    app[CLUSTER].on("grants", svc.forget)
    app[APPLICATIONS] = svc
    app[WORKFLOWS]["applications"] = svc.flow
    try:
        yield
    finally:
        await svc.close()


def setup(app: web.Application) -> None:
    workflows(app)
    app.cleanup_ctx.append(_service)
    add_routes(app, routes)
