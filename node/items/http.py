"""Service item endpoints of the department API (SPEC §10, §16): publish, change, withdraw, read and search
items; 一证通办 (`POST /api/v1/items/{item}/materials`); 材料减免率 (`GET /api/v1/items/stats`); XLSX import and
export of items."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import unquote

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ConfigDict, Field

from node.accounts.http import account
from node.audit.http import AUDIT, note
from node.catalog.http import CATALOG
from node.errors import ApiError, InvalidInput, TooLarge
from node.context import CONFIG, DB, SIGNING_KEY, add_routes, json_limit
from node.federation.http import FEDERATION
from node.items.models import (BASIC_CODE, GatherBody, GatherResult, ImportResult, ItemBody, ItemDoc, ItemPage,
                               ItemQuery, Stats, StatsQuery)
from node.items.service import ItemService
from node.items import sheet
from node.licences.http import LICENCES
from node.ops.openapi import ROUTED
from node.sharing.http import SHARING
from node.web import ApiRoutes, json_response, query_model, read_body, read_model

ITEMS = web.AppKey("items", ItemService)
routes = ApiRoutes()
TAGS = ("items",)
# A basic code, or an implemented item's code (its slash sent as it is or percent-encoded).
ITEM = rf"{{item:{BASIC_CODE}(?:(?:/|%2F)[0-9]{{9}})?}}"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MULTIPART = "multipart/form-data"
# A county's whole 实施清单 (a few thousand materials) is well under a megabyte as XLSX.
SHEET_LIMIT = 16 * 1024 * 1024


def item_code(request: web.Request) -> str:
    return unquote(request.match_info["item"])


class ItemGetQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deleted: bool = Field(False, description="also a withdrawn item (its tombstone)")


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: str | None = Field(None, max_length=200)
    node: str | None = Field(None, pattern=r"^[0-9]{6}$")
    dept: str | None = Field(None, max_length=32)


@routes.get("/api/v1/items", name="items.search", summary="Search the service items this node holds (every origin)",
            query=ItemQuery, response=ItemPage, tags=TAGS)
async def search(request: web.Request) -> web.Response:
    account(request)
    q = query_model(request, ItemQuery)
    total, items = await request.app[ITEMS].search(q=q.q, node=q.node, kind=q.kind, basic_code=q.basic_code,
                                                   dept=q.dept, page=q.page, page_size=q.page_size)
    return json_response({"items": items, "page": q.page, "page_size": q.page_size, "total": total})


@routes.get("/api/v1/items/stats", name="items.stats",
            summary="材料减免率: per implemented item and department, materials sharing replaces and how often it did",
            query=StatsQuery, response=Stats, tags=TAGS)
async def stats(request: web.Request) -> web.Response:
    account(request)
    q = query_model(request, StatsQuery)
    return json_response(await request.app[ITEMS].stats(dept=q.dept, item=q.item))


@routes.get("/api/v1/items/export.xlsx", name="items.export",
            summary="The items this node holds as an XLSX sheet, one row a material (the form departments keep)",
            query=ExportQuery, answers=XLSX, tags=TAGS)
async def export(request: web.Request) -> web.Response:
    account(request)
    q = query_model(request, ExportQuery)
    data = await sheet.export(request.app[ITEMS], q=q.q, node=q.node, dept=q.dept)
    return web.Response(body=data, content_type=XLSX, headers={
        "Content-Disposition": 'attachment; filename="items.xlsx"'})


async def read_sheet(request: web.Request, reader: MultipartReader | None, limit: int) -> bytes:
    """The XLSX sent as the body, or as the one file of a multipart form (the portal's upload)."""
    if reader is None and request.content_type != MULTIPART:
        if request.content_type != XLSX:
            raise ApiError(f"send the sheet as {XLSX} or as a file of a {MULTIPART} form",
                           code="UNSUPPORTED_MEDIA_TYPE")
        return await read_body(request, limit)
    if reader is None:
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError, KeyError):  # no boundary, or a Content-Type aiohttp cannot split
            raise InvalidInput("the multipart body is malformed: its Content-Type names no usable boundary") from None
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidInput("nested multipart bodies are not accepted")
            data = bytearray()
            while chunk := await part.read_chunk(65536):
                data += chunk
                if len(data) > limit:
                    raise TooLarge(f"the sheet is larger than {limit} bytes")
            if part.filename:  # an ordinary form field is read past
                return bytes(data)
    except ValueError as exc:  # aiohttp's word for a malformed multipart stream …
        raise InvalidInput(f"the multipart body is malformed: {exc}") from None
    except HttpProcessingError as exc:  # … or, for a part's header lines, BadHttpMessage (it quotes them: not said)
        raise InvalidInput(f"the multipart body is malformed: a part's headers cannot be read "
                           f"({type(exc).__name__})") from None
    raise InvalidInput("the form holds no file", [{"field": "file", "error": "required"}])


@routes.post("/api/v1/items/import", name="items.upload",
             summary="Publish the caller's implemented items from an XLSX sheet (the export's columns); all or none",
             content_types=(XLSX, MULTIPART), response=ImportResult, roles=("dept",), status=201,
             errors=(409, 413, 415), tags=TAGS)
async def import_items(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    limits = request.app[CONFIG].limits
    data = await read_sheet(request, None, SHEET_LIMIT)
    codes = await sheet.import_items(request.app[ITEMS], acct, data, limits.xlsx)
    note(request, keys=codes)
    return json_response({"published": codes, "total": len(codes)}, status=201)


@routes.post("/api/v1/items", name="items.publish",
             summary="Publish a basic item (an operator of a province) or an implemented item (its department)",
             body=ItemBody, response=ItemDoc, roles=("dept", "operator"), status=201, errors=(409,), tags=TAGS)
async def publish(request: web.Request) -> web.Response:
    acct = account(request, "dept", "operator")
    body = await read_model(request, ItemBody, json_limit(request))
    doc = await request.app[ITEMS].publish(acct, body.root)
    note(request, resource=doc["code"])
    return json_response(doc, status=201)


@routes.get(f"/api/v1/items/{ITEM}", name="items.get", summary="One service item exactly as its origin signed it",
            query=ItemGetQuery, response=ItemDoc, tags=TAGS)
async def get_item(request: web.Request) -> web.Response:
    account(request)
    q = query_model(request, ItemGetQuery)
    return json_response(await request.app[ITEMS].get(item_code(request), include_deleted=q.deleted))


@routes.put(f"/api/v1/items/{ITEM}", name="items.update", summary="Change one of this node's items (its publisher)",
            body=ItemBody, response=ItemDoc, roles=("dept", "operator"), tags=TAGS)
async def update(request: web.Request) -> web.Response:
    acct = account(request, "dept", "operator")
    code = item_code(request)
    body = await read_model(request, ItemBody, json_limit(request))
    note(request, resource=code)
    return json_response(await request.app[ITEMS].update(acct, code, body.root))


@routes.delete(f"/api/v1/items/{ITEM}", name="items.withdraw", summary="Withdraw one of this node's items (tombstone)",
               response=ItemDoc, roles=("dept", "operator"), tags=TAGS)
async def withdraw(request: web.Request) -> web.Response:
    acct = account(request, "dept", "operator")
    code = item_code(request)
    note(request, resource=code)
    return json_response(await request.app[ITEMS].withdraw(acct, code))


@routes.post(f"/api/v1/items/{ITEM}/materials", name="items.materials",
             summary="一证通办: for one applicant, every material sharing can replace, gathered at once across the "
                     "federation, each with its outcome and via",
             body=GatherBody, response=GatherResult, roles=("dept",), errors=ROUTED, tags=TAGS)
async def materials(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    code = item_code(request)
    body = await read_model(request, GatherBody, json_limit(request))
    note(request, resource=code, keys=[body.subject.code], purpose=body.purpose)
    result = await request.app[ITEMS].gather(acct, code, body)
    note(request, outcomes={m["id"]: m["outcome"] for m in result["materials"]})
    return json_response(result)


async def _service(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    svc = ItemService(app[DB], config.node.id, app[SIGNING_KEY], app[CATALOG], app[FEDERATION], app[SHARING],
                      app[LICENCES], config.federation.peer_timeout_s, app[AUDIT].journal)
    svc.connect()
    app[ITEMS] = svc
    yield


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_service)
    add_routes(app, routes)
