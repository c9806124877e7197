"""HTTP plumbing shared by every capability: the route table (which also feeds OpenAPI), body parsing,
JSON answers, and the one middleware that gives every answer a request id and every error its shape."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from node.errors import ApiError, InvalidInput, TooLarge
from node.ids import new_id

log = logging.getLogger("govnode.http")

M = TypeVar("M", bound=BaseModel)
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


def parse_model(model: type[M], data: bytes | str | dict) -> M:
    try:
        if isinstance(data, dict):
            result = model.model_validate(data)
        else:
            result = model.model_validate_json(data)
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


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the body is larger than {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
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


# What the outer middleware hands to whoever observes every answer (audit, metrics): the request, its
# answer, the outcome (`ok` or the error code) and the seconds it took.
Observer = Callable[[web.Request, web.StreamResponse, str, float], Awaitable[None]]
# How the pages under a path prefix show an error to a person (the portal's HTML) instead of the JSON shape.
ErrorPage = Callable[[web.Request, ApiError, str], web.StreamResponse]


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
        try:
            resp = await handler(request)
            outcome = "ok"
        except ApiError as err:
            resp, outcome = answer(err, rid), err.code
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            err = _http_exception_error(exc)
            resp, outcome = answer(err, rid), err.code
            if "Allow" in exc.headers:  # a 405 says which methods the path takes
                resp.headers["Allow"] = exc.headers["Allow"]
        except Exception:  # noqa: BLE001 - the one place an unexpected failure becomes an answer
            log.exception("unhandled error", extra={"request_id": rid, "path": request.path})
            err = ApiError("internal error; quote the request id to the operator", code="INTERNAL")
            resp, outcome = answer(err, rid), err.code
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


# A resource code inside a path: 分类码/顺序码 (the slash is part of the code).
CODE = r"{code:[0-9]{6,9}/[0-9]{7,18}}"
