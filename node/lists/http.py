"""List endpoints of the department API (SPEC §17)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import BaseModel, Field, RootModel, TypeAdapter, ValidationError

from node.accounts.http import account
from node.audit.http import note
from node.catalog.http import CATALOG
from node.context import CONFIG, DB, add_routes, json_limit
from node.data.http import DATA
from node.errors import ApiError, InvalidInput
from node.federation.http import FEDERATION
from node.licences.http import LICENCES
from node.lists import tables
from node.lists.models import (MAX_ENTRIES, CheckAnswer, CheckBody, EntriesPage, EntriesResult, EntryIn, HitsView,
                               ListCreate, ListDoc, ListEntryDoc, ListsPage, ListSummary, Removal, SourceBody,
                               SourceState)
from node.lists.service import ListService
from node.web import ApiRoutes, json_response, parse_json, query_model, read_body, read_model, validation_details

LISTS = web.AppKey("lists", ListService)
routes = ApiRoutes()
TAGS = ("lists",)
LIST = "{list:[0-9]{6}-[0-9]{4}}"
ENTRY = "{entry:[0-9A-Z]{26}}"
_ENTRIES = TypeAdapter(list[EntryIn])


class ListsQuery(BaseModel):
    node: str | None = Field(None, pattern=r"^\d{6}$", description="only the lists issued at this node")
    mine: bool = Field(False, description="only the caller's department's lists")


class EntriesQuery(BaseModel):
    deleted: bool = Field(False, description="include removed entries (tombstones)")
    page: int = Field(1, ge=1)
    page_size: int = Field(100, ge=1, le=1000)


class EntriesBody(RootModel[list[EntryIn]]):
    """A JSON array of entries (or CSV / XLSX with the columns 主体代码, 代码类型, 主体名称, 列入事由, 列入依据,
    奖惩措施, 有效期起始, 有效期截止)."""


@routes.post("/api/v1/lists/check", name="lists.check",
             summary="Check up to 10,000 subjects against every list, from this node's own copy; hits are reported "
                     "to their issuers (双反馈)", body=CheckBody, response=CheckAnswer, tags=TAGS)
async def check(request: web.Request) -> web.Response:
    acct = account(request)
    body = await read_model(request, CheckBody, json_limit(request))
    answer = await request.app[LISTS].check(acct, body)
    note(request, subjects=answer["checked"], hit_subjects=answer["hit_subjects"], purpose=body.purpose[:200])
    return json_response(answer)


@routes.post("/api/v1/lists", name="lists.create", summary="Publish a list (the caller's department issues it)",
             body=ListCreate, response=ListDoc, roles=("dept",), status=201, tags=TAGS)
async def create(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    body = await read_model(request, ListCreate, json_limit(request))
    doc = await request.app[LISTS].create_list(acct, body)
    note(request, keys=[doc["code"]])
    return json_response(doc, status=201)


@routes.get("/api/v1/lists", name="lists.all", summary="Every list this node holds (all origins)",
            query=ListsQuery, response=ListsPage, tags=TAGS)
async def all_lists(request: web.Request) -> web.Response:
    acct = account(request)
    q = query_model(request, ListsQuery)
    svc = request.app[LISTS]
    found = await (svc.own_lists(acct) if q.mine else svc.lists(node=q.node))
    return json_response({"lists": found})


@routes.get("/api/v1/lists/hits", name="lists.hits",
            summary="双反馈: where and when the caller's entries were applied (hits reported by checking nodes)",
            response=HitsView, roles=("dept",), tags=TAGS)
async def hits(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    return json_response(await request.app[LISTS].hits(acct))


@routes.get(f"/api/v1/lists/{LIST}", name="lists.get", summary="One list, as its issuer signed it",
            response=ListSummary, errors=(404,), tags=TAGS)
async def get_list(request: web.Request) -> web.Response:
    account(request)
    return json_response(await request.app[LISTS].get_list(request.match_info["list"]))


@routes.get(f"/api/v1/lists/{LIST}/entries", name="lists.entries", summary="A list's entries, newest change first",
            query=EntriesQuery, response=EntriesPage, errors=(404,), tags=TAGS)
async def entries(request: web.Request) -> web.Response:
    account(request)
    q = query_model(request, EntriesQuery)
    found = await request.app[LISTS].entries(request.match_info["list"], include_deleted=q.deleted, page=q.page,
                                             page_size=q.page_size)
    return json_response({"entries": found})


async def read_entries(request: web.Request) -> list[EntryIn]:
    """The entries of a JSON array, or of an uploaded CSV / XLSX."""
    ctype = request.content_type
    kind = tables.kind_of(ctype)
    limits = request.app[CONFIG].limits
    if kind is not None:
        raw = await read_body(request, limits.max_upload_bytes)
        return tables.entries_from(await tables.read_table(raw, kind, request.charset, limits))
    if ctype not in ("application/json", "application/octet-stream", ""):
        raise ApiError(f"content type {ctype} is not accepted here; send application/json, text/csv or XLSX",
                       code="UNSUPPORTED_MEDIA_TYPE")
    data = parse_json(await read_body(request, json_limit(request)))
    if not isinstance(data, list):
        raise InvalidInput("send a JSON array of entries", [{"field": "body"}])
    if len(data) > MAX_ENTRIES:
        raise InvalidInput(f"at most {MAX_ENTRIES} entries a call", [{"field": "body"}])
    try:
        return _ENTRIES.validate_python(data)
    except ValidationError as exc:
        raise InvalidInput("some entries are not valid; nothing was stored",
                           [{**d, "row": d["field"].split(".")[0]} for d in validation_details(exc)][:200]) from None


@routes.post(f"/api/v1/lists/{LIST}/entries", name="lists.add",
             summary="Add entries to the caller's list, or change those whose subject is on it (JSON array, CSV or XLSX)",
             body=EntriesBody, response=EntriesResult, roles=("dept",), errors=(403, 404),
             content_types=("application/json", tables.CSV_TYPES[0], tables.XLSX_TYPE), tags=TAGS)
async def add_entries(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    code = request.match_info["list"]
    found = await read_entries(request)
    result = await request.app[LISTS].add_entries(acct, code, found)
    note(request, keys=[code], added=result["added"], changed=result["changed"])
    return json_response(result)


@routes.delete(f"/api/v1/lists/{LIST}/entries/{ENTRY}", name="lists.remove",
               summary="Remove an entry (信用修复), with the reason: a tombstone that replicates",
               body=Removal, response=ListEntryDoc, roles=("dept",), errors=(403, 404, 409), tags=TAGS)
async def remove(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    code, entry = request.match_info["list"], request.match_info["entry"]
    body = await read_model(request, Removal, json_limit(request))
    note(request, keys=[code, entry])
    return json_response(await request.app[LISTS].remove_entry(acct, code, entry, body.reason))


@routes.put(f"/api/v1/lists/{LIST}/source", name="lists.bind",
            summary="Keep the list in step with one of the department's resources (each live record is an entry)",
            body=SourceBody, response=SourceState, roles=("dept",), errors=(403, 404), tags=TAGS)
async def bind(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    code = request.match_info["list"]
    body = await read_model(request, SourceBody, json_limit(request))
    note(request, keys=[code], resource=body.resource)
    return json_response(await request.app[LISTS].bind_source(acct, code, body))


@routes.get(f"/api/v1/lists/{LIST}/source", name="lists.source", summary="The list's source: last sync, entries, error",
            response=SourceState, roles=("dept",), errors=(403, 404), tags=TAGS)
async def source(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    return json_response(await request.app[LISTS].source_state(acct, request.match_info["list"]))


async def _service(app: web.Application) -> AsyncIterator[None]:
    svc = ListService(app[DB], app[CONFIG].node.id, app[FEDERATION], app[CATALOG], app[DATA],
                      app[LICENCES].holder_digest)
    svc.connect()
    app[LISTS] = svc
    yield
    await svc.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_service)
    add_routes(app, routes)
