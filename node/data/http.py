"""Data endpoints of the department API (SPEC §10): push records, upload files, the change feed."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from node.accounts.http import account
from node.audit.http import note
from node.catalog.http import CATALOG
from node.context import CONFIG, DB, add_routes
from node.data.formats import csv_rows, json_array_rows, ndjson_rows
from node.data.models import ChangesPage, ChangesQuery, PushResult, RecordsBody
from node.data.service import Batch, DataService
from node.errors import ApiError, Forbidden, InvalidInput, TooLarge
from node.ops.openapi import ROUTED
from node.web import BODY_BROKEN, CODE, ApiRoutes, body_broken, json_response, query_model

DATA = web.AppKey("data", DataService)
routes = ApiRoutes()
TAGS = ("data",)

READ_CHUNK = 256 * 1024
JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")
CSV_TYPES = ("text/csv", "application/csv")
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MULTIPART = "multipart/form-data"


def _unsupported(content_type: str, accepted: tuple[str, ...]) -> ApiError:
    return ApiError(f"content type {content_type} is not accepted here; send one of {', '.join(accepted)}",
                    code="UNSUPPORTED_MEDIA_TYPE")


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"the upload is larger than {limit} bytes (limits.max_upload_bytes)")


async def _limited(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        yield chunk


async def _request_chunks(request: web.Request) -> AsyncIterator[bytes]:
    # The chunks come inflated when the body has a Content-Encoding: the limits count what they unpack to.
    try:
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            yield chunk
    except BODY_BROKEN:
        raise body_broken(request) from None


async def _part_chunks(request: web.Request, part: BodyPartReader) -> AsyncIterator[bytes]:
    # read_chunk leaves a part's own Content-Encoding alone (nothing inflates there); the whole body's was
    # inflated by aiohttp, and the caller counts the inflated bytes.
    while True:
        try:
            chunk = await part.read_chunk(READ_CHUNK)
        except BODY_BROKEN:
            raise body_broken(request) from None
        if not chunk:
            return
        yield chunk


async def _provider_entry(request: web.Request) -> tuple[dict[str, Any], DataService]:
    acct = account(request)
    code = request.match_info["code"]
    entry = await request.app[CATALOG].get(code)
    data = request.app[DATA]
    data.check_provider(acct, entry)
    note(request, resource=code)
    return entry, data


def _check_length(request: web.Request, limit: int) -> None:
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)


@routes.post(f"/api/v1/resources/{CODE}/records", name="data.push",
             summary="The provider pushes records (JSON array or NDJSON; upsert by key; _deleted deletes)",
             body=RecordsBody, response=PushResult, content_types=NDJSON_TYPES[:1], errors=(403,), tags=TAGS)
async def push(request: web.Request) -> web.Response:
    entry, data = await _provider_entry(request)
    limit = request.app[CONFIG].limits.max_upload_bytes
    max_record = request.app[CONFIG].limits.max_json_bytes
    ctype = request.content_type
    if ctype in JSON_TYPES:
        reader = json_array_rows
    elif ctype in NDJSON_TYPES:
        reader = ndjson_rows
    else:
        raise _unsupported(ctype, JSON_TYPES + NDJSON_TYPES)
    _check_length(request, limit)
    batch = data.new_batch(entry)
    try:
        await data.read_objects(batch, reader(_limited(_request_chunks(request), limit), max_record))
        result = await data.commit(batch)
    finally:
        batch.close()
    note(request, rows=result["received"])
    return json_response(result)


def _kind_of(content_type: str, filename: str | None) -> str | None:
    name = (filename or "").lower()
    if content_type in CSV_TYPES or name.endswith(".csv"):
        return "csv"
    if content_type == XLSX_TYPE or name.endswith(".xlsx"):
        return "xlsx"
    return None


async def _read_file(data: DataService, batch: Batch, kind: str, chunks: AsyncIterator[bytes], charset: str | None,
                     max_line: int) -> None:
    if kind == "csv":
        await data.read_table(batch, csv_rows(chunks, charset, max_line))
        return
    # XLSX is a zip: it needs the whole file, so spool it to disk first (never into memory).
    with tempfile.TemporaryFile() as spool:
        size = 0
        async for chunk in chunks:
            spool.write(chunk)
            size += len(chunk)
        if size == 0:
            raise InvalidInput("the uploaded file is empty")
        spool.seek(0)
        await data.read_xlsx(batch, spool)


@routes.post(f"/api/v1/resources/{CODE}/files", name="data.upload",
             summary="The provider uploads CSV or XLSX (columns by item name or field; multipart with one file "
                     "also accepted)",
             response=PushResult, content_types=(CSV_TYPES[0], XLSX_TYPE, MULTIPART), errors=(403,), tags=TAGS)
async def upload(request: web.Request) -> web.Response:
    if request.content_type == MULTIPART:
        return json_response(await receive_upload(request))
    entry, data = await _provider_entry(request)
    limits = request.app[CONFIG].limits
    limit = limits.max_upload_bytes
    ctype = request.content_type
    _check_length(request, limit)
    batch = data.new_batch(entry)
    try:
        kind = _kind_of(ctype, None)
        if kind is None:
            raise _unsupported(ctype, (CSV_TYPES[0], XLSX_TYPE, MULTIPART))
        chunks = _limited(_request_chunks(request), limit)
        await _read_file(data, batch, kind, chunks, request.charset, limits.max_json_bytes)
        result = await data.commit(batch)
    finally:
        batch.close()
    note(request, rows=result["received"])
    return json_response(result)


async def receive_upload(request: web.Request, reader: MultipartReader | None = None) -> dict[str, Any]:
    """A file sent as a part of a multipart form to the resource of the route's `{code}`: checked, stored
    all or nothing, audited. The API's multipart uploads come here, and the portal's upload form with the
    reader it opened (past its form token)."""
    entry, data = await _provider_entry(request)
    limits = request.app[CONFIG].limits
    _check_length(request, limits.max_upload_bytes)
    batch = data.new_batch(entry)
    try:
        if reader is None:
            try:
                reader = await request.multipart()
            except (ValueError, AssertionError, KeyError):  # no boundary, or a Content-Type aiohttp cannot split
                raise InvalidInput("the multipart body is malformed: its Content-Type names no usable "
                                   "boundary") from None
        await _upload_multipart(request, reader, data, batch, limits.max_upload_bytes, limits.max_json_bytes)
        result = await data.commit(batch)
    finally:
        batch.close()
    note(request, rows=result["received"])
    return result


async def _upload_multipart(request: web.Request, reader: MultipartReader, data: DataService, batch: Batch,
                            limit: int, max_line: int) -> None:
    size_left = limit
    found = 0

    async def counted(part: BodyPartReader) -> AsyncIterator[bytes]:
        nonlocal size_left
        async for chunk in _part_chunks(request, part):
            size_left -= len(chunk)
            if size_left < 0:
                raise _too_large(limit)
            yield chunk

    try:
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise InvalidInput("nested multipart bodies are not accepted")
            if not part.filename:  # an ordinary form field, or a form's file input left empty: read past it
                async for _ in counted(part):
                    pass
                continue
            found += 1
            if found > 1:
                raise InvalidInput("send one file per upload")
            kind = _kind_of(part.headers.get("Content-Type", "").split(";")[0].strip().lower(), part.filename)
            if kind is None:
                raise _unsupported(part.headers.get("Content-Type", "unknown") + f" ({part.filename})",
                                   (CSV_TYPES[0] + " (.csv)", XLSX_TYPE + " (.xlsx)"))
            charset = part.get_charset(None)
            await _read_file(data, batch, kind, counted(part), charset, max_line)
    except ValueError as exc:  # a malformed multipart stream: aiohttp raises ValueError …
        raise InvalidInput(f"the multipart body is malformed: {exc}") from None
    except HttpProcessingError as exc:  # … or, for a part's header lines, BadHttpMessage
        # Its message quotes the raw header bytes the caller sent: say what kind of fault it is, not them.
        raise InvalidInput("the multipart body is malformed: a part's headers cannot be read "
                           f"({type(exc).__name__})") from None
    if found == 0:
        raise InvalidInput("the multipart body holds no file")


@routes.get(f"/api/v1/resources/{CODE}/changes", name="data.changes",
            summary="Change feed of a resource's records in commit order, deletions included",
            query=ChangesQuery, response=ChangesPage, errors=ROUTED, tags=TAGS)
async def changes(request: web.Request) -> web.Response:
    acct = account(request)
    code = request.match_info["code"]
    q = query_model(request, ChangesQuery)
    entry = await request.app[CATALOG].get(code)
    data = request.app[DATA]
    if not data.may_read_changes(acct, entry):
        if data.subscriber_feed is None:
            raise Forbidden(f"the change feed of {code} is served to its provider and this node's operators")
        note(request, resource=code)
        return json_response(await data.subscriber_feed(acct, entry, q.since, q.limit))
    note(request, resource=code)
    return json_response(await data.changes(code, q.since, q.limit))


async def _service(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[DATA] = data = DataService(app[DB], config.node.id, config.limits)
    try:
        yield
    finally:
        data.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_service)
    add_routes(app, routes)
