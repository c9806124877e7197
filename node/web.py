"""HTTP plumbing shared by every capability: the route table (which also feeds OpenAPI), body parsing,
JSON answers, and the one middleware that gives every answer a request id and every error its shape."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError

from federation.nesting import NestingError, check_nesting
from node.db import unavailable_error
from node.errors import ApiError, InvalidInput, TooLarge
from node.ids import new_id

log = logging.getLogger("govnode.http")

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID = web.RequestKey("request_id", str)


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    if isinstance(obj, BaseModel):
        text = obj.model_dump_json(by_alias=True, exclude_none=False)
    else:
        text = dumps(obj)
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


# Long work on the event loop (a big comparison's rows, its answer) goes this many rows at a time, with the
# node's other calls run in between: about 7 ms of work a slice. In one go, a 100,000-row comparison kept a
# verify beside it waiting up to half a second (scripts/bench_local.py).
SLICE_ROWS = 5_000


async def in_slices(items: Sequence[T], size: int = SLICE_ROWS) -> AsyncIterator[tuple[int, Sequence[T]]]:
    """(start, items[start:start + size]) for each slice of `items`, the event loop given a turn before every
    slice but the first."""
    for start in range(0, len(items), size):
        if start:
            await asyncio.sleep(0)
        yield start, items[start:start + size]


async def json_response_sliced(obj: dict[str, Any], key: str, slice_len: int = SLICE_ROWS) -> web.Response:
    """`json_response(obj)`, the same text, for an answer whose `obj[key]` may be a long list: the list is
    encoded a slice at a time (`in_slices`). The C encoder holds the interpreter for the whole of one call:
    86 ms for a 100,000-row comparison's answer, every other caller waiting."""
    items = obj.get(key)
    if not isinstance(items, list) or len(items) <= slice_len:
        return json_response(obj)
    listed = "[" + ",".join([dumps(part)[1:-1] async for _, part in in_slices(items, slice_len)]) + "]"
    text = "{" + ",".join(f"{dumps(k)}:{listed if k == key else dumps(v)}" for k, v in obj.items()) + "}"
    return web.Response(text=text, content_type="application/json")


def error_response(err: ApiError, request_id: str | None) -> web.Response:
    return json_response(err.body(request_id), status=err.status)


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    details = []
    for e in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        details.append({"field": loc or "(body)", "error": msg})
    return details


# An escaped NUL (\u0000) in JSON text, not preceded by an escaping backslash. PostgreSQL's text and
# JSONB cannot hold NUL, so it is refused up front (a clear 400 on every backend, never a 500).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _nul_fields(obj: Any, path: str = "") -> list[dict[str, str]]:
    if isinstance(obj, str):
        return [{"field": path or "(body)", "error": "must not contain NUL characters (\\u0000)"}] if "\x00" in obj else []
    out: list[dict[str, str]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{path}.{k}" if path else str(k)
            if "\x00" in str(k):
                out.append({"field": key, "error": "must not contain NUL characters (\\u0000)"})
            out += _nul_fields(v, key)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _nul_fields(v, f"{path}.{i}" if path else str(i))
    return out


def _too_deep(exc: NestingError) -> InvalidInput:
    return InvalidInput(f"the body is nested deeper than {exc.limit} levels",
                        [{"field": "(body)", "error": exc.message}])


def parse_json(raw: bytes | str) -> Any:
    """A JSON body the node reads itself (not through a model): nesting bounded (federation.nesting)
    before the parser recurses, and every refusal an INVALID_INPUT that says where."""
    try:
        check_nesting(raw)
        return json.loads(raw)
    except NestingError as exc:
        raise _too_deep(exc) from None
    except json.JSONDecodeError as exc:
        raise InvalidInput("the body is not valid JSON",
                           [{"field": "(body)", "error": f"{exc.msg} at line {exc.lineno} column {exc.colno}"}]) from None
    except ValueError:  # bytes that are not UTF-8 (nor UTF-16/32, which json also takes)
        raise InvalidInput("the body is not valid JSON", [{"field": "(body)", "error": "not valid UTF-8"}]) from None


def parse_model(model: type[M], data: bytes | str | dict) -> M:
    try:
        if isinstance(data, dict):
            result = model.model_validate(data)
        else:
            check_nesting(data)  # pydantic stops at 200 levels by itself; the node's own bound is lower
            result = model.model_validate_json(data)
    except NestingError as exc:
        raise _too_deep(exc) from None
    except ValidationError as exc:
        details = validation_details(exc)
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise InvalidInput("the body is not valid JSON", details) from None
        raise InvalidInput("the body does not match the expected shape", details) from None
    if not isinstance(data, dict):
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        if b"\\u0000" in raw and _JSON_NUL.search(raw):  # the substring test first: the regex is slow on big bodies
            raise InvalidInput("text must not contain NUL characters", _nul_fields(json.loads(raw)) or None)
    return result


# What reading a request body raises when the client breaks the framing (a body that ends before its
# Content-Length, a Content-Encoding that does not decode: RequestPayloadError) or stops sending: the
# caller's fault, answered 400, and nothing was stored.
BODY_BROKEN = (HttpProcessingError, web.RequestPayloadError, ClientPayloadError, ConnectionError,
               asyncio.IncompleteReadError)


class BodyBroken(InvalidInput):
    """A body that could not be read to its end. aiohttp's parser stops at the broken data and cannot read
    another request on the connection, so the answer closes it."""


def body_broken(request: web.Request) -> BodyBroken:
    # Ended here: otherwise aiohttp, draining the rest after the answer, meets the error again.
    request.content.feed_eof()
    coding = request.headers.get("Content-Encoding")
    return BodyBroken("the body could not be read: it ended before it was complete, or its framing or "
                      + (f"its Content-Encoding ({coding[:20]}) " if coding else "") + "is broken; nothing was stored")


async def read_body(request: web.Request, limit: int) -> bytes:
    # Counts the bytes as aiohttp inflated them (Content-Encoding), so a small compressed body that unpacks past
    # the limit is refused once `limit` is passed, never buffered whole.
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the body is larger than {limit} bytes")
    chunks = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the body is larger than {limit} bytes")
            chunks.append(chunk)
    except BODY_BROKEN:
        raise body_broken(request) from None
    return b"".join(chunks)


async def read_model(request: web.Request, model: type[M], limit: int) -> M:
    body = await read_body(request, limit)
    if not body.strip():
        raise InvalidInput("a JSON body is required")
    return parse_model(model, body)


def query_model(request: web.Request, model: type[M]) -> M:
    params = dict(request.query)
    bad = [{"field": k, "error": "must not contain NUL characters"} for k, v in params.items()
           if "\x00" in k or "\x00" in v]
    if bad:
        raise InvalidInput("bad query parameters", bad)
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise InvalidInput("bad query parameters", validation_details(exc)) from None


@dataclass
class RouteDoc:
    method: str
    path: str
    name: str
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    roles: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ()
    status: int = 200  # the success status (201 for a creation, 202 for work started)
    errors: tuple[int, ...] = ()  # error statuses beyond those node.ops.openapi derives from the route
    body_optional: bool = False  # the body may be left out (e.g. an optional {reason})
    answers: str = "application/json"  # the success answer's content type
    also: tuple[int, ...] = ()  # other statuses answered with the success body (e.g. /healthz's 503)


@dataclass
class ApiRoutes:
    """A route table whose entries also describe themselves for OpenAPI."""

    docs: list[RouteDoc] = field(default_factory=list)
    _table: web.RouteTableDef = field(default_factory=web.RouteTableDef)

    def route(self, method: str, path: str, *, name: str, summary: str, **doc: Any) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self._table.route(method, path, name=name)(fn)
            self.docs.append(RouteDoc(method.lower(), path, name, summary, **doc))
            return fn

        return deco

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)

    def add_to(self, app: web.Application) -> None:
        app.router.add_routes(self._table)


def _http_exception_error(exc: web.HTTPException) -> ApiError:
    if exc.status == 404:
        return ApiError("no such path", code="NOT_FOUND")
    if exc.status == 405:
        return ApiError(f"method not allowed here: {exc.reason}", code="METHOD_NOT_ALLOWED")
    if exc.status == 413:
        return TooLarge("the body is too large")
    if exc.status == 415:
        return ApiError("unsupported content type", code="UNSUPPORTED_MEDIA_TYPE")
    if exc.status in (401, 403):
        return ApiError(exc.reason or "refused", code="UNAUTHENTICATED" if exc.status == 401 else "FORBIDDEN")
    return ApiError(exc.reason or "bad request", code="INVALID_INPUT")


class ServerLog(logging.LoggerAdapter):
    """The logger handed to aiohttp's connection handler (`handler_args={"logger": ...}`).

    A request that is not valid HTTP — a NUL or another forbidden byte in a header, a broken request line —
    never reaches a route or the middleware: aiohttp answers it 400 itself and logs it at ERROR with a
    traceback; so it does when it reads past a body whose Content-Encoding does not decode, after the
    node has answered. Both are the caller's fault, not the node's, so each becomes one INFO line naming
    the kind of fault, without the bytes (a header may carry a token). Every other error keeps its
    traceback."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, (HttpProcessingError, web.RequestPayloadError)):
            log.info("refused a request that is not valid HTTP (%s)", type(exc).__name__)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kw)


# What the outer middleware hands to whoever observes every answer (audit, metrics): the request, its
# answer, the outcome (`ok` or the error code) and the seconds it took.
Observer = Callable[[web.Request, web.StreamResponse, str, float], Awaitable[None]]
# How the pages under a path prefix show an error to a person (the portal's HTML) instead of the JSON shape.
ErrorPage = Callable[[web.Request, ApiError, str], web.StreamResponse]


async def answered(request: web.Request, work: Awaitable[web.StreamResponse],
                   answer: Callable[[ApiError, str], web.StreamResponse] = error_response,
                   ) -> tuple[web.StreamResponse, str]:
    """The answer to `request` once its handler's `work` ends, and its outcome (`ok` or the error code):
    the one place where a failure becomes an answer in the SPEC's shape."""
    rid = request[REQUEST_ID]
    try:
        return await work, "ok"
    except ApiError as err:
        resp = answer(err, rid)
        if isinstance(err, BodyBroken):
            resp.force_close()
        return resp, err.code
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err = _http_exception_error(exc)
        resp = answer(err, rid)
        if "Allow" in exc.headers:  # a 405 says which methods the path takes
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp, err.code
    except Exception as exc:  # noqa: BLE001 - an unexpected failure becomes an answer too
        err = unavailable_error(exc)  # the database is down or stalled: 503, not a failure of this node's
        if err is None:
            log.exception("unhandled error", extra={"request_id": rid, "path": request.path})
            err = ApiError("internal error; quote the request id to the operator", code="INTERNAL")
        else:
            log.warning("database unavailable: %s", type(exc).__name__,
                        extra={"request_id": rid, "path": request.path})
        return answer(err, rid), err.code


def make_error_middleware(observers: list[Observer], pages: dict[str, ErrorPage] | None = None) -> Any:
    """Outermost middleware: request ids, the one error shape, and the observers (audit before answer).
    Under a path prefix of `pages`, an error is shown as that prefix's page: same status, code and audit."""

    def answer_for(request: web.Request) -> Callable[[ApiError, str], web.StreamResponse]:
        for prefix, page in (pages or {}).items():
            if request.path.startswith(prefix):
                return lambda err, rid: page(request, err, rid)
        return error_response

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        answer = answer_for(request)
        rid = request.headers.get("X-Request-Id") or new_id()
        if len(rid) > 64 or not rid.isprintable():
            rid = new_id()
        request[REQUEST_ID] = rid
        started = time.perf_counter()
        resp, outcome = await answered(request, handler(request), answer)
        elapsed = time.perf_counter() - started
        for observe in observers:
            try:
                await observe(request, resp, outcome, elapsed)
            except ApiError as err:  # e.g. the audit record could not be made durable
                resp = answer(err, rid)
                break
        resp.headers["X-Request-Id"] = rid
        return resp

    return middleware


# A resource code inside a path: 分类码/顺序码. The slash is part of the code; a client that percent-encodes
# path parameters (as clients generated from the OpenAPI document do) sends it as %2F, which aiohttp leaves
# encoded while matching (yarl's path_safe, upper-cased) and decodes in match_info, so both forms reach the
# handler as the same code.
CODE = r"{code:[0-9]{6,9}(?:/|%2F)[0-9]{7,18}}"
