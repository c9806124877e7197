"""Table exchange endpoints of the department API (SPEC §12): bind a resource to a source table, follow its
state, sync it now, unbind it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import BaseModel

from node.accounts.http import account
from node.audit.http import note
from node.cluster import CLUSTER
from node.catalog.http import CATALOG
from node.context import CONFIG, DB, add_routes, json_limit
from node.data.http import DATA
from node.exchange.models import SourceCreate, SourceList, SourceView
from node.exchange.sealing import Sealer
from node.exchange.service import ExchangeService
from node.ops.metrics import METRICS
from node.web import CODE, ApiRoutes, json_response, read_model

EXCHANGE = web.AppKey("exchange", ExchangeService)
SEALER = web.AppKey("sealer", Sealer)
routes = ApiRoutes()
TAGS = ("exchange",)
SOURCE = r"{source:[0-9A-HJKMNP-TV-Z]{26}}"


class Removed(BaseModel):
    id: str
    resource: str
    removed: bool


@routes.post(f"/api/v1/resources/{CODE}/sources", name="exchange.bind",
             summary="Bind the resource to a table of the providing department's database (前置机库表交换): full "
                     "load once, then increments on schedule",
             body=SourceCreate, response=SourceView, roles=("dept",), status=201, errors=(409,), tags=TAGS)
async def bind(request: web.Request) -> web.Response:
    acct = account(request)
    code = request.match_info["code"]
    body = await read_model(request, SourceCreate, json_limit(request))
    note(request, resource=code)
    view = await request.app[EXCHANGE].bind(acct, code, body)
    note(request, source=view["id"], table=body.table)
    return json_response(view, status=201)


@routes.get(f"/api/v1/resources/{CODE}/sources", name="exchange.list",
            summary="The resource's table sources and their state: progress, last sync, rows, last error",
            response=SourceList, errors=(403,), tags=TAGS)
async def list_sources(request: web.Request) -> web.Response:
    acct = account(request)
    code = request.match_info["code"]
    return json_response({"sources": await request.app[EXCHANGE].list_sources(acct, code)})


@routes.post(f"/api/v1/resources/{CODE}/sources/{SOURCE}/sync", name="exchange.sync",
             summary="Pull from the source now (also ends a back-off wait)", response=SourceView,
             roles=("dept", "operator"), status=202, errors=(409,), tags=TAGS)
async def sync(request: web.Request) -> web.Response:
    acct = account(request)
    code = request.match_info["code"]
    view = await request.app[EXCHANGE].sync_now(acct, code, request.match_info["source"])
    return json_response(view, status=202)


@routes.delete(f"/api/v1/resources/{CODE}/sources/{SOURCE}", name="exchange.unbind",
               summary="Unbind a source (the records loaded stay)", response=Removed, roles=("dept", "operator"),
               tags=TAGS)
async def unbind(request: web.Request) -> web.Response:
    acct = account(request)
    code = request.match_info["code"]
    return json_response(await request.app[EXCHANGE].unbind(acct, code, request.match_info["source"]))


async def _service(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[SEALER] = Sealer(config.home)
    svc = ExchangeService(app[DB], config.node.id, app[CATALOG], app[DATA], app[SEALER], app[METRICS])
    svc.cluster = cluster = app[CLUSTER]
    await svc.start()
    cluster.on_lead(svc.take_up, svc.give_up)
    cluster.on("exchange", svc.told)
    app[EXCHANGE] = svc
    try:
        yield
    finally:
        await svc.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_service)
    add_routes(app, routes)
