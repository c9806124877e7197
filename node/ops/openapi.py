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
        params = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in _path_params(d.path)
        ]
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


def _path_params(path: str) -> list[str]:
    out = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            out.append(part[1:-1].split(":")[0])
    return out


def _oas_path(path: str) -> str:
    parts = []
    for part in path.split("/"):
        if part.startswith("{") and ":" in part:
            part = "{" + part[1:-1].split(":")[0] + "}"
        parts.append(part)
    return "/".join(parts)
