"""Data-request endpoints of the department API (供需对接, SPEC §10, §16)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from node.accounts.http import ACCOUNTS, account
from node.audit.http import AUDIT, note
from node.catalog.http import CATALOG
from node.cluster import CLUSTER
from node.context import CONFIG, DB, add_routes, json_limit
from node.federation.http import FEDERATION
from node.ops.http import STATS_SECTIONS
from node.requests.models import (Acceptance, DataRequest, DataRequestCreate, DataRequestPage, DataRequestQuery,
                                  Fulfilment, Rejection)
from node.requests.service import DataRequestService
from node.web import ApiRoutes, json_response, query_model, read_model
from node.workflow import WORKFLOWS
from node.workflow import setup as workflows

DATA_REQUESTS = web.AppKey("data_requests", DataRequestService)
routes = ApiRoutes()
TAGS = ("data-requests",)
ID = r"{id:[0-9A-HJKMNP-TV-Z]{26}}"


@routes.post("/api/v1/data-requests", name="data_requests.submit",
             summary="Ask a node for data no catalog entry provides (供需对接); its operator assigns the request "
                     "to a department, which fulfils it with a catalog entry, each step within 10 working days",
             body=DataRequestCreate, response=DataRequest, roles=("dept",), status=201, errors=(404,), tags=TAGS)
async def submit(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    body = await read_model(request, DataRequestCreate, json_limit(request))
    doc = await request.app[DATA_REQUESTS].submit(acct, body)
    note(request, data_request=doc["id"], to=body.to.node)
    return json_response(doc, status=201)


@routes.get("/api/v1/data-requests", name="data_requests.list",
            summary="Data requests made by the caller's department or assigned to it (a node's operators and "
                    "auditors: all held here), newest first",
            query=DataRequestQuery, response=DataRequestPage, tags=TAGS)
async def list_requests(request: web.Request) -> web.Response:
    acct = account(request)
    q = query_model(request, DataRequestQuery)
    total, docs = await request.app[DATA_REQUESTS].list_requests(
        acct, role=q.role, status=q.status, overdue=q.overdue, page=q.page, page_size=q.page_size)
    return json_response({"data_requests": docs, "page": q.page, "page_size": q.page_size, "total": total})


@routes.get(f"/api/v1/data-requests/{ID}", name="data_requests.get", summary="One data request, with its history",
            response=DataRequest, tags=TAGS)
async def get_request(request: web.Request) -> web.Response:
    acct = account(request)
    note(request, data_request=request.match_info["id"])
    doc = await request.app[DATA_REQUESTS].get(acct, request.match_info["id"])
    return json_response(doc)


@routes.post(f"/api/v1/data-requests/{ID}/accept", name="data_requests.accept",
             summary="The asked node's operator assigns the request to one of the node's departments",
             body=Acceptance, response=DataRequest, roles=("operator",), errors=(409,), tags=TAGS)
async def accept(request: web.Request) -> web.Response:
    acct = account(request)
    note(request, data_request=request.match_info["id"])  # a refusal's audit record names the request too
    body = await read_model(request, Acceptance, json_limit(request))
    doc = await request.app[DATA_REQUESTS].accept(acct, request.match_info["id"], body)
    note(request, dept=body.dept)
    return json_response(doc)


@routes.post(f"/api/v1/data-requests/{ID}/reject", name="data_requests.reject",
             summary="Reject the request with its reason: the operator before assignment, the assigned department "
                     "after it",
             body=Rejection, response=DataRequest, roles=("operator", "dept"), errors=(409,), tags=TAGS)
async def reject(request: web.Request) -> web.Response:
    acct = account(request)
    note(request, data_request=request.match_info["id"])
    body = await read_model(request, Rejection, json_limit(request))
    doc = await request.app[DATA_REQUESTS].reject(acct, request.match_info["id"], body.reason)
    return json_response(doc)


@routes.post(f"/api/v1/data-requests/{ID}/fulfil", name="data_requests.fulfil",
             summary="The assigned department fulfils the request by naming its catalog entry that now provides "
                     "the data",
             body=Fulfilment, response=DataRequest, roles=("dept",), errors=(409,), tags=TAGS)
async def fulfil(request: web.Request) -> web.Response:
    acct = account(request)
    note(request, data_request=request.match_info["id"])
    body = await read_model(request, Fulfilment, json_limit(request))
    note(request, resource=body.entry)
    doc = await request.app[DATA_REQUESTS].fulfil(acct, request.match_info["id"], body)
    return json_response(doc)


async def _service(app: web.Application) -> AsyncIterator[None]:
    svc = DataRequestService(app[DB], app[CONFIG].node.id, app[CATALOG], app[ACCOUNTS], app[FEDERATION], app[AUDIT])
    svc.connect()
    app[CLUSTER].on_lead(svc.flow.take_up, svc.flow.give_up)
    app[DATA_REQUESTS] = svc
    app[WORKFLOWS]["data_requests"] = svc.flow
    app[STATS_SECTIONS]["data_requests"] = svc.stats
    try:
        yield
    finally:
        await svc.flow.close()


def setup(app: web.Application) -> None:
    workflows(app)
    if STATS_SECTIONS not in app:
        app[STATS_SECTIONS] = {}
    app.cleanup_ctx.append(_service)
    add_routes(app, routes)
