"""OpenAPI 3.1 generated from the route table and its pydantic models (the single definition of payloads)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from node import __version__
from node.web import RouteDoc

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "request_id": {"type": ["string", "null"]},
                "details": {},
            },
        }
    },
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
        op: dict[str, Any] = {
            "operationId": d.name,
            "summary": d.summary,
            "tags": list(d.tags),
            "responses": {
                "default": {"description": "an error (SPEC §9)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        }
        if d.path.startswith("/api/"):
            op["security"] = [{"bearer": []}]
        if d.roles:
            op["description"] = "Roles: " + ", ".join(d.roles)
        params = _path_params(d.path)
        if d.query is not None:
            qs = d.query.model_json_schema()
            for name, prop in qs.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": name in qs.get("required", []),
                               "schema": prop})
        if params:
            op["parameters"] = params
        if d.body is not None:
            content = {"application/json": {"schema": keyed[(d.body, "validation")]}}
            for ct in d.content_types:
                content[ct] = {"schema": {"type": "string", "format": "binary"}}
            op["requestBody"] = {"required": True, "content": content}
        elif d.content_types:
            op["requestBody"] = {"required": True, "content": {
                ct: {"schema": {"type": "string", "format": "binary"}} for ct in d.content_types}}
        ok: dict[str, Any] = {"description": "success"}
        if d.response is not None:
            ok["content"] = {"application/json": {"schema": keyed[(d.response, "validation")]}}
        op["responses"]["200"] = ok
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
        schema: dict[str, Any] = {"type": "string"}
        if regex:
            schema["pattern"] = f"^{regex}$"
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return params


def _oas_path(path: str) -> str:
    out, pos = [], 0
    for start, end, name, _ in _variables(path):
        out.append(path[pos:start] + "{" + name + "}")
        pos = end
    return "".join(out) + path[pos:]
