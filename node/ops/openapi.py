"""OpenAPI 3.1 generated from the route table and its pydantic models (the single definition of payloads).

The document describes the node as it behaves: every status an operation answers (no catch-all `default`),
errors in the SPEC §9 shape, the content types each body may have, and path parameters as a client must send
them. It is checked against the running node by a schemathesis run in the test suite."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from node import __version__
from node.accounts.http import PUBLIC_PATHS
from node.errors import STATUS_OF
from node.web import RouteDoc

ERROR_SCHEMA = {
    "type": "object",
    "description": "SPEC §9: every error on the API has this shape",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "additionalProperties": False,
            "properties": {
                "code": {"enum": sorted(STATUS_OF)},
                "message": {"type": "string"},
                "request_id": {"type": "string", "description": "also in the X-Request-Id header"},
                "details": {"description": "INVALID_INPUT: a list naming each bad field or row; "
                                           "PEER_UNREACHABLE / PEER_TIMEOUT: the hop that failed"},
            },
        }
    },
}

# What each error status means here (the codes of SPEC §9 that travel with it).
ERRORS: dict[int, str] = {
    400: "INVALID_INPUT (details name each bad field or row) or UNDECRYPTABLE",
    401: "UNAUTHENTICATED: no bearer token, or not a valid one (or a peer's SIGNATURE_INVALID, CLOCK_SKEW, REPLAY)",
    403: "FORBIDDEN (the caller's role or department may not do this), GRANT_REQUIRED, FIELD_NOT_GRANTED, "
         "SHARE_FORBIDDEN, REVOKED, NOT_NEIGHBOUR",
    404: "NOT_FOUND, or NODE_UNKNOWN (no node of the federation holds it)",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT with the current state",
    413: "TOO_LARGE: the body is over the node's limit",
    415: "UNSUPPORTED_MEDIA_TYPE: the body's content type is not one of those listed",
    422: "KIND_UNSUPPORTED: the node holding it does not serve this kind of call",
    429: "RATE_LIMITED",
    502: "PEER_UNREACHABLE (details name the hop that failed)",
    503: "UNAVAILABLE: the node cannot make the call durable right now (database busy or down), or has not "
         "joined a federation yet; try again later",
    504: "PEER_TIMEOUT (details name the hop that failed)",
}

# A call routed through the federation answers with the providing node's error when it refuses.
ROUTED = (400, 403, 404, 409, 422, 429, 502, 504)

# Path parameters whose aiohttp regex is not what a client should be told.
PATH_PARAMS: dict[str, dict[str, Any]] = {
    "code": {
        "description": "resource code 分类码/顺序码, e.g. 101001/370321000001; the slash may be sent as it is or "
                       "percent-encoded (101001%2F370321000001)",
        "schema": {"type": "string", "pattern": "^[0-9]{6,9}/[0-9]{7,18}$"},  # what the route matches (web.CODE)
        # An example with its slash also tells generators of requests (schemathesis) that a value may hold
        # one, percent-encoded: without it they could make no valid code, and tested these paths only with
        # invalid ones.
        "example": "101001/370321000001",
    },
    "item": {
        "description": "service item code: a basic code <node>-<type>-<5 digits>, or an implemented item's "
                       "<basic code>/<node><3 digits>; the slash may be sent as it is or percent-encoded",
        "schema": {"type": "string", "pattern": "^[0-9]{6}-(?:XK|CF|QZ|ZS|SF|JF|CJ|QR|JL|JC|QT|GG)-[0-9]{5}"
                                                "(?:/[0-9]{9})?$"},  # what the route matches (node.items.http.ITEM)
        "example": "370321-XK-00001/370321001",
    },
}

WRITING = frozenset({"post", "put", "delete", "patch"})
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Carries the request out at most once per caller and key (kept 24 h): a retry with the same key "
                   "gets the first answer again, marked `Idempotent-Replayed: true`. A key names one request (method, "
                   "path and query); used for another it is refused with 409. A refused request does not use up "
                   "its key.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
}

UPLOADS: dict[str, dict[str, Any]] = {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary", "description": "one CSV (.csv) or XLSX (.xlsx) file"}}}},
}


def build_openapi(docs: list[RouteDoc], title: str = "govnode department API") -> dict[str, Any]:
    models: set[type[BaseModel]] = set()
    for d in docs:
        for m in (d.body, d.response):
            if m is not None:
                models.add(m)
    ordered = sorted(models, key=lambda m: m.__name__)
    keyed, defs = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}"
    )
    schemas = dict(defs.get("$defs", {}))
    schemas["Error"] = ERROR_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for d in docs:
        op: dict[str, Any] = {"operationId": d.name, "summary": d.summary, "tags": list(d.tags)}
        authenticated = d.path.startswith("/api/") and d.path not in PUBLIC_PATHS
        if authenticated:
            op["security"] = [{"bearer": []}]
        if d.roles:
            op["description"] = "Roles: " + ", ".join(d.roles)
        params = _path_params(d.path)
        if d.query is not None:
            qs = d.query.model_json_schema()
            for name, prop in qs.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": name in qs.get("required", []),
                               "schema": _query_schema(prop)})
        if authenticated and d.method in WRITING:
            params.append(IDEMPOTENCY_KEY)
        if params:
            op["parameters"] = params
        content: dict[str, Any] = {}
        if d.body is not None:
            content["application/json"] = {"schema": keyed[(d.body, "validation")]}
        for ct in d.content_types:
            content[ct] = UPLOADS.get(ct, {"schema": {"type": "string", "format": "binary"}})
        if content:
            op["requestBody"] = {"required": not d.body_optional, "content": content}
        ok: dict[str, Any] = {"description": "success"}
        if d.response is not None:
            ok["content"] = {d.answers: {"schema": keyed[(d.response, "validation")]}}
        else:
            ok["content"] = {d.answers: {"schema": {"type": "object" if d.answers == "application/json" else "string"}}}
        responses: dict[str, Any] = {str(d.status): ok}
        for status in d.also:
            responses[str(status)] = {**ok, "description": "answered with the same body"}
        for status in sorted(_error_statuses(d, authenticated, bool(content))):
            responses[str(status)] = {"description": ERRORS[status], "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        op["responses"] = responses
        paths.setdefault(_oas_path(d.path), {})[d.method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _error_statuses(d: RouteDoc, authenticated: bool, has_body: bool) -> set[int]:
    """The error statuses an operation answers: those that follow from its shape, plus the route's own."""
    out = set(d.errors)
    if authenticated:
        out |= {401, 503}  # 503: the audit record of the call could not be made durable
    if d.roles:
        out.add(403)
    if authenticated and d.method in WRITING:
        out |= {400, 409}  # a malformed Idempotency-Key; one used for another request, or still in flight
    if _variables(d.path):
        out.add(404)
    if d.query is not None or has_body:
        out.add(400)
    if has_body:
        out.add(413)
    if d.content_types:
        out.add(415)
    out.discard(d.status)
    return out


def _query_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is present or absent, never null: drop the null branch pydantic adds for Optional."""
    prop = copy.deepcopy(prop)
    branches = prop.get("anyOf")
    if branches:
        rest = [b for b in branches if b != {"type": "null"}]
        if len(rest) == 1:
            del prop["anyOf"]
            prop = {**rest[0], **prop}
        else:
            prop["anyOf"] = rest
    if prop.get("default", 0) is None:
        del prop["default"]
    return prop


def _variables(path: str) -> list[tuple[int, int, str, str | None]]:
    """aiohttp's path variables as (start, end, name, regex or None). A variable's regex may itself hold
    braces and slashes (a resource code is `{code:\\d{6,9}/\\d{7,18}}`), so braces are matched by depth."""
    out = []
    depth, start = 0, 0
    for i, ch in enumerate(path):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                name, _, regex = path[start + 1:i].partition(":")
                out.append((start, i + 1, name, regex or None))
    return out


def _path_params(path: str) -> list[dict[str, Any]]:
    params = []
    for _, _, name, regex in _variables(path):
        param: dict[str, Any] = {"name": name, "in": "path", "required": True}
        if name in PATH_PARAMS:
            param.update(copy.deepcopy(PATH_PARAMS[name]))
        else:
            param["schema"] = {"type": "string", **({"pattern": f"^{regex}$"} if regex else {})}
        params.append(param)
    return params


def _oas_path(path: str) -> str:
    out, pos = [], 0
    for start, end, name, _ in _variables(path):
        out.append(path[pos:start] + "{" + name + "}")
        pos = end
    return "".join(out) + path[pos:]
