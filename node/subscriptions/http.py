"""Subscription endpoints of the department API (SPEC §12): subscribe a department to a resource's changes as a
local replica (数据回流) or a webhook, follow it, cancel it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from node.accounts.http import account
from node.audit.http import note
from node.cluster import CLUSTER
from node.catalog.http import CATALOG
from node.context import CONFIG, DB, add_routes, json_limit
from node.data.http import DATA
from node.exchange.http import SEALER
from node.federation.http import FEDERATION
from node.ops.metrics import METRICS
from node.ops.openapi import ROUTED
from node.sharing.http import SHARING
from node.subscriptions.models import SubscriptionCreate, SubscriptionList, SubscriptionView
from node.subscriptions.service import SubscriptionService
from node.web import ApiRoutes, json_response, read_model

SUBSCRIPTIONS = web.AppKey("subscriptions", SubscriptionService)
routes = ApiRoutes()
TAGS = ("subscriptions",)
ID = r"{id:[0-9A-HJKMNP-TV-Z]{26}}"


@routes.post("/api/v1/subscriptions", name="subscriptions.create",
             summary="Subscribe the caller's department to a resource's changes: a local replica fed through the "
                     "federation (数据回流) or a signed webhook; needs a grant that includes subscribe",
             body=SubscriptionCreate, response=SubscriptionView, roles=("dept",), status=201, errors=ROUTED,
             tags=TAGS)
async def create(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    body = await read_model(request, SubscriptionCreate, json_limit(request))
    note(request, resource=body.resource, mode=body.mode)
    view = await request.app[SUBSCRIPTIONS].create(acct, body)
    note(request, subscription=view["id"])
    return json_response(view, status=201)


@routes.get("/api/v1/subscriptions", name="subscriptions.list",
            summary="The caller's department's subscriptions (operators and auditors: all held here)",
            response=SubscriptionList, tags=TAGS)
async def list_subscriptions(request: web.Request) -> web.Response:
    acct = account(request)
    return json_response({"subscriptions": await request.app[SUBSCRIPTIONS].list_subscriptions(acct)})


@routes.get(f"/api/v1/subscriptions/{ID}", name="subscriptions.get",
            summary="One subscription: state, cursor, lag, records held or deliveries, last error",
            response=SubscriptionView, tags=TAGS)
async def get_subscription(request: web.Request) -> web.Response:
    acct = account(request)
    view = await request.app[SUBSCRIPTIONS].get(acct, request.match_info["id"])
    note(request, resource=view["resource"])
    return json_response(view)


@routes.delete(f"/api/v1/subscriptions/{ID}", name="subscriptions.cancel",
               summary="Cancel a subscription (a replica's copy is dropped)", response=SubscriptionView,
               roles=("dept", "operator"), tags=TAGS)
async def cancel(request: web.Request) -> web.Response:
    acct = account(request)
    view = await request.app[SUBSCRIPTIONS].cancel(acct, request.match_info["id"])
    note(request, resource=view["resource"])
    return json_response(view)


async def _service(app: web.Application) -> AsyncIterator[None]:
    svc = SubscriptionService(app[DB], app[CONFIG].node.id, app[CATALOG], app[DATA], app[SHARING], app[FEDERATION],
                              app[SEALER], app[METRICS])
    svc.connect()
    svc.cluster = cluster = app[CLUSTER]
    await svc.start()
    cluster.on_lead(svc.take_up, svc.give_up)
    cluster.on("subscriptions", svc.told)
    app[SUBSCRIPTIONS] = svc
    try:
        yield
    finally:
        await svc.close()


async def _stop_waiting(app: web.Application) -> None:
    if SUBSCRIPTIONS in app:
        app[SUBSCRIPTIONS].stop_waiting()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_service)
    app.on_shutdown.append(_stop_waiting)
    add_routes(app, routes)
