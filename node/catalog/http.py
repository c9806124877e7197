"""Catalog endpoints of the department API (SPEC §10)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from node.accounts.http import account
from node.audit.http import note
from node.catalog.models import CatalogEntry, EntryCreate, EntryQuery, EntryUpdate, SearchPage, SearchQuery
from node.catalog.service import CatalogService
from node.cluster import CLUSTER
from node.context import CONFIG, DB, SIGNING_KEY, add_routes, json_limit
from node.web import CODE, ApiRoutes, json_response, query_model, read_model

CATALOG = web.AppKey("catalog", CatalogService)
routes = ApiRoutes()
TAGS = ("catalog",)


@routes.get("/api/v1/catalog", name="catalog.search", summary="Search the whole federation's catalog as this node holds it",
            query=SearchQuery, response=SearchPage, tags=TAGS)
async def search(request: web.Request) -> web.Response:
    account(request)
    q = query_model(request, SearchQuery)
    total, entries = await request.app[CATALOG].search(
        q=q.q, node=q.node, category=q.category, share_type=q.share_type, provider=q.provider,
        deleted=q.deleted, page=q.page, page_size=q.page_size,
    )
    return json_response({"entries": entries, "page": q.page, "page_size": q.page_size, "total": total})


@routes.get(f"/api/v1/catalog/{CODE}", name="catalog.get", summary="One entry exactly as its origin signed it",
            query=EntryQuery, response=CatalogEntry, tags=TAGS)
async def get_entry(request: web.Request) -> web.Response:
    account(request)
    code = request.match_info["code"]
    q = query_model(request, EntryQuery)
    entry = await request.app[CATALOG].get(code, include_deleted=q.deleted)
    return json_response(entry)


@routes.post("/api/v1/catalog", name="catalog.create", summary="Register one of the caller's resources",
             body=EntryCreate, response=CatalogEntry, roles=("dept",), status=201, errors=(409,), tags=TAGS)
async def create(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    body = await read_model(request, EntryCreate, json_limit(request))
    entry = await request.app[CATALOG].create(acct, body)
    note(request, resource=entry["code"])
    return json_response(entry, status=201)


@routes.put(f"/api/v1/catalog/{CODE}", name="catalog.update", summary="Change one of the caller's resources",
            body=EntryUpdate, response=CatalogEntry, roles=("dept",), tags=TAGS)
async def update(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    body = await read_model(request, EntryUpdate, json_limit(request))
    entry = await request.app[CATALOG].update(acct, request.match_info["code"], body)
    return json_response(entry)


@routes.delete(f"/api/v1/catalog/{CODE}", name="catalog.withdraw", summary="Withdraw one of the caller's resources (tombstone)",
               response=CatalogEntry, roles=("dept",), tags=TAGS)
async def withdraw(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    entry = await request.app[CATALOG].withdraw(acct, request.match_info["code"])
    return json_response(entry)


async def _service(app: web.Application) -> AsyncIterator[None]:
    app[CATALOG] = catalog = CatalogService(app[DB], app[CONFIG].node.id, app[SIGNING_KEY])
    app[CLUSTER].on("catalog", catalog.forget)
    yield


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_service)
    add_routes(app, routes)
