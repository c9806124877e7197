"""Operations: /healthz, Prometheus /metrics, the OpenAPI 3.1 description, structured logs, request ids."""

from __future__ import annotations

import io
import json
import logging

import aiohttp
from aiohttp import web
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from node.logs import JsonFormatter, setup_logging
from support import drop_pg_schema, init_home, samples
from test_foundation_catalog import entry_body


async def test_healthz(node):
    async with node.session.get(node.url + "/healthz") as resp:
        body = await resp.json()
        assert resp.status == 200 and resp.headers["X-Request-Id"]
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["node"] == "370321" and body["name"] == "桓台县" and body["version"]


async def test_metrics_count_calls_errors_and_latency(node):
    code = (await node.call("POST", "/api/v1/catalog", "police", json_body=entry_body()))[1]["code"]
    for _ in range(3):
        await node.call("GET", "/api/v1/catalog", "police")
    await node.call("GET", f"/api/v1/catalog/{code}", "civil")
    await node.call("GET", "/api/v1/catalog/101001/370321999999", "civil")
    await node.call("POST", "/api/v1/catalog", "police", json_body={"bad": 1})
    async with node.session.get(node.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    m = samples(text)

    def calls(resource: str, op: str, outcome: str) -> float:
        return m.get(("govnode_api_calls_total", (("op", op), ("outcome", outcome), ("resource", resource))), 0)

    def errors(resource: str, op: str, err: str) -> float:
        return m.get(("govnode_api_errors_total", (("code", err), ("op", op), ("resource", resource))), 0)

    assert calls("", "catalog.search", "ok") == 3
    assert calls("", "catalog.create", "ok") == 1 and calls("", "catalog.create", "error") == 1
    assert errors("", "catalog.create", "INVALID_INPUT") == 1
    assert calls(code, "catalog.get", "ok") == 1
    assert calls("101001/370321999999", "catalog.get", "error") == 1
    assert errors("101001/370321999999", "catalog.get", "NOT_FOUND") == 1
    assert m[("govnode_api_latency_seconds_count", (("op", "catalog.search"), ("resource", "")))] == 3
    assert m[("govnode_api_latency_seconds_bucket", (("le", "+Inf"), ("op", "catalog.search"), ("resource", "")))] == 3
    assert m[("govnode_api_latency_seconds_sum", (("op", "catalog.search"), ("resource", "")))] > 0
    # One series per resource and op, not two: no `_created` timestamps beside every counter and histogram.
    assert not [name for name, _ in m if name.endswith("_created")], sorted({n for n, _ in m})


async def test_metrics_show_the_journal_commits_and_waits(node):
    """Every API call's audit record goes through the journal: its items, commits and waiting times show in
    /metrics and grow with the calls made (an operator's first look when calls slow down: a slow disk)."""

    async def journal() -> dict[str, float]:
        async with node.session.get(node.url + "/metrics") as resp:
            m = samples(await resp.text())
        return {name: m[(f"govnode_journal_{name}", (("journal", "journal"),))]
                for name in ("commit_seconds_count", "commit_seconds_sum", "wait_seconds_count", "wait_seconds_sum",
                             "commit_failures_total")}

    before = await journal()
    for _ in range(4):
        await node.call("GET", "/api/v1/catalog", "police")
    after = await journal()
    assert after["wait_seconds_count"] - before["wait_seconds_count"] >= 4  # one audit record a call at least
    assert 1 <= after["commit_seconds_count"] - before["commit_seconds_count"] <= \
        after["wait_seconds_count"] - before["wait_seconds_count"]  # a commit carries one item or more
    assert after["commit_seconds_sum"] > before["commit_seconds_sum"]
    assert after["wait_seconds_sum"] > before["wait_seconds_sum"]
    assert after["commit_failures_total"] == before["commit_failures_total"] == 0


async def test_openapi_is_valid_3_1(node):
    status, spec = await node.call("GET", "/api/v1/openapi.json")
    assert status == 200
    assert spec["openapi"].startswith("3.1")
    validate(spec, cls=OpenAPIV31SpecValidator)  # raises on any violation
    paths = spec["paths"]
    for path, method in [("/api/v1/catalog", "get"), ("/api/v1/catalog", "post"), ("/api/v1/catalog/{code}", "get"),
                         ("/api/v1/catalog/{code}", "put"), ("/api/v1/catalog/{code}", "delete"),
                         ("/api/v1/audit", "get"), ("/healthz", "get"), ("/metrics", "get")]:
        assert method in paths[path], (path, method)
    # Bodies come from the pydantic models: the registration body names the core elements.
    post = paths["/api/v1/catalog"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"name", "category", "format", "items", "share", "update_cycle"} <= set(schema["required"])
    assert schema.get("additionalProperties") is False
    names = {p["name"] for p in paths["/api/v1/catalog"]["get"]["parameters"]}
    assert {"q", "node", "category", "share_type", "provider", "page", "page_size"} <= names
    assert "Error" in spec["components"]["schemas"]


async def test_every_department_route_is_described(node):
    status, spec = await node.call("GET", "/api/v1/openapi.json")
    described = {(p, m.upper()) for p, ops in spec["paths"].items() for m in ops}
    for route in node.app.router.routes():
        path = route.resource.canonical if route.resource else None
        if not path or not (path.startswith("/api/") or path in ("/healthz", "/metrics")) or route.method == "HEAD":
            continue
        assert (path, route.method) in described, (path, route.method)


async def test_request_ids_on_every_answer_and_error(node):
    cases = [("GET", "/healthz", None, 200), ("GET", "/api/v1/catalog", "police", 200),
             ("GET", "/api/v1/catalog", None, 401), ("GET", "/no/such/path", None, 404),
             ("PATCH", "/api/v1/catalog", "police", 405), ("GET", "/api/v1/audit", "police", 403)]
    seen = set()
    for method, path, token, status in cases:
        headers = {"Authorization": f"Bearer {node.tokens[token]}"} if token else {}
        async with node.session.request(method, node.url + path, headers=headers) as resp:
            assert resp.status == status, (method, path)
            rid = resp.headers["X-Request-Id"]
            assert len(rid) == 26  # a ULID
            if status >= 400:
                body = await resp.json()
                assert body["error"]["request_id"] == rid
            seen.add(rid)
    assert len(seen) == len(cases)
    # A caller's own id is echoed; an unusable one is replaced.
    for given, kept in (("my-trace-1", True), ("x" * 65, False), ("bad\tid", False)):
        async with node.session.get(node.url + "/api/v1/catalog", headers={"X-Request-Id": given}) as resp:
            body = await resp.json()
            assert (resp.headers["X-Request-Id"] == given) is kept
            assert body["error"]["request_id"] == resp.headers["X-Request-Id"]


async def test_unexpected_failure_is_a_shaped_500_and_a_structured_log(tmp_path, backend, caplog):
    """A bug in a handler never leaks a traceback to the caller; the log has it, with the request id."""
    from node.app import init_app

    config = init_home(tmp_path / "n", "370321", "桓台县", backend=backend)
    app = init_app(config)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("SELECT secret FROM somewhere")

    app.router.add_get("/boom", boom)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    try:
        with caplog.at_level(logging.ERROR, logger="govnode.http"):
            async with aiohttp.ClientSession() as s, s.get(config.endpoint + "/boom") as resp:
                body = await resp.json()
                rid = resp.headers["X-Request-Id"]
        assert resp.status == 500
        assert body == {"error": {"code": "INTERNAL", "message": body["error"]["message"], "request_id": rid}}
        assert "SELECT" not in json.dumps(body) and "Traceback" not in json.dumps(body)
        recs = [r for r in caplog.records if getattr(r, "request_id", None) == rid]
        assert recs and recs[0].exc_info is not None
        line = JsonFormatter("370321").format(recs[0])
        doc = json.loads(line)
        assert doc["request_id"] == rid and doc["level"] == "ERROR" and doc["node"] == "370321"
        assert doc["path"] == "/boom" and "RuntimeError" in doc["exc"]
    finally:
        await runner.cleanup()
        if config.database.schema_:
            await drop_pg_schema(config.database.schema_)


def test_structured_logs_are_one_json_object_a_line(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", "370321")
        log = logging.getLogger("govnode.test")
        log.info("resource %s registered", "101001/370321000001", extra={"dept": "X1", "count": 3})
        log.debug("not shown at INFO")
        log.warning("中文 message", extra={"obj": {"a": 1}})
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(ln) for ln in lines)
    assert first["msg"] == "resource 101001/370321000001 registered" and first["level"] == "INFO"
    assert first["node"] == "370321" and first["logger"] == "govnode.test"
    assert first["dept"] == "X1" and first["count"] == 3 and first["ts"].endswith("Z")
    assert second["msg"] == "中文 message" and second["obj"] == "{'a': 1}"
