"""Bad input: every malformed, mistyped, unknown, oversize or unauthorised request gets a SPEC §9 error,
never a 500, and leaves nothing half-written."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.audit.http import AUDIT
from support import ThreadedNode, police_node, raw_sql
from test_foundation_catalog import content_body, entry_body

CATALOG = "/api/v1/catalog"


def assert_error(status: int, body: Any, expected_status: int, code: str) -> None:
    assert status == expected_status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert err["code"] == code and isinstance(err["message"], str) and err["message"]
    assert isinstance(err["request_id"], str) and len(err["request_id"]) == 26
    assert set(err) <= {"code", "message", "request_id", "details"}


async def raw_post(node, path: str, data: bytes, token: str = "police", content_type: str = "application/json",
                   method: str = "POST") -> tuple[int, Any]:
    return await node.call(method, path, token, data=data, headers={"Content-Type": content_type})


async def nothing_stored(node) -> None:
    assert (await raw_sql(node.config, "SELECT count(*) FROM catalog_entries"))[0][0] == 0
    assert await node.app[AUDIT].verify() is None


async def test_malformed_json(node):
    for data in (b"{not json", b'{"name": "x",}', b"\xff\xfe\x00", b"{" * 100_000, b'{"name": "x"} trailing',
                 b"NaN", "{\"name\": \"\\ud800\"}".encode()):
        status, body = await raw_post(node, CATALOG, data)
        assert_error(status, body, 400, "INVALID_INPUT")
    await nothing_stored(node)


async def test_not_an_object_or_empty(node):
    for data in (b"", b"   ", b"[]", b"null", b"42", b'"text"', b"true", b"[{}]"):
        status, body = await raw_post(node, CATALOG, data)
        assert_error(status, body, 400, "INVALID_INPUT")
    await nothing_stored(node)


async def test_wrong_types(node):
    cases = [
        (entry_body(name=5), "name"),
        (entry_body(items="id_number"), "items"),
        (entry_body(items=[1, 2]), "items.0"),
        (entry_body(share=["unconditional"]), "share"),
        (entry_body(open=True), "open"),
        (entry_body(related="101001/370321000001"), "related"),
        (entry_body(items=[{**entry_body()["items"][0], "length": "eighteen"}]), "items.0.length"),
        (entry_body(items=[{**entry_body()["items"][0], "length": 10**30}]), "items.0.length"),
        (entry_body(items=[{**entry_body()["items"][0], "length": -1}]), "items.0.length"),
        (entry_body(classification=101001), "classification"),
        (entry_body(name="x" * 201), "name"),
        (entry_body(summary="长" * 4001), "summary"),
    ]
    for body, field in cases:
        status, answer = await node.call("POST", CATALOG, "police", json_body=body)
        assert_error(status, answer, 400, "INVALID_INPUT")
        assert field in [d["field"] for d in answer["error"]["details"]], (field, answer)
    await nothing_stored(node)


async def test_control_characters_are_refused_not_a_500(node):
    """PostgreSQL text cannot hold NUL; a NUL anywhere is refused and named, on both backends."""
    item = entry_body()["items"][0]
    for body, field in [
        (entry_body(name="桓台\u0000县"), "name"),
        (entry_body(summary="a\x00"), "summary"),
        (entry_body(items=[{**item, "name": "公民\x00身份号码"}]), "items.0.name"),
        (entry_body(share={"type": "conditional", "condition": "x\x00"}), "share.condition"),
        (entry_body(related=["101001/370321000001", "\x00"]), "related.1"),  # the bad element itself
    ]:
        status, answer = await node.call("POST", CATALOG, "police", json_body=body)
        assert_error(status, answer, 400, "INVALID_INPUT")
        assert field in [d["field"] for d in answer["error"]["details"]], (field, answer)
    # A NUL spelled as an escaped backslash followed by "u0000" is ordinary text.
    entry = (await node.call("POST", CATALOG, "police", json_body=entry_body(summary="\\u0000")))[1]
    assert entry["summary"] == "\\u0000"
    await raw_sql(node.config, "DELETE FROM catalog_entries")
    for path in (f"{CATALOG}?q=%00", f"{CATALOG}?q=a%00b", f"{CATALOG}?provider=%00", "/api/v1/audit?dept=A%00"):
        status, answer = await node.call("GET", path, "auditor")
        assert_error(status, answer, 400, "INVALID_INPUT")
    await nothing_stored(node)


async def test_lone_surrogates_are_refused(node):
    body = json.dumps(entry_body(name="\ud800名称")).encode()  # ASCII JSON with a \ud800 escape
    assert b"\\ud800" in body
    status, answer = await raw_post(node, CATALOG, body)
    assert_error(status, answer, 400, "INVALID_INPUT")
    await nothing_stored(node)


async def test_unknown_fields(node):
    item = entry_body()["items"][0]
    for body in (entry_body(extra=1), entry_body(items=[{**item, "colour": "red"}]),
                 entry_body(share={"type": "unconditional", "x": 1}), entry_body(signatures={})):
        status, answer = await node.call("POST", CATALOG, "police", json_body=body)
        assert_error(status, answer, 400, "INVALID_INPUT")
        assert any(d["error"] == "unknown field" for d in answer["error"]["details"])
    await nothing_stored(node)


@pytest.fixture
async def small_node(tmp_path, backend):
    """A node that accepts JSON bodies of at most 2048 bytes."""
    async with police_node(tmp_path / "small", backend, {"limits": {"max_json_bytes": 2048}}) as running:
        yield running


async def test_oversize_bodies(small_node):
    node = small_node
    assert node.config.limits.max_json_bytes == 2048
    big = entry_body(summary="长" * 1000)  # ~3 kB in UTF-8, still a valid entry otherwise
    assert len(json.dumps(big, ensure_ascii=False).encode()) > 2048
    status, body = await node.call("POST", CATALOG, "police", json_body=big)
    assert_error(status, body, 413, "TOO_LARGE")

    async def chunks():  # no Content-Length: the limit holds while streaming too
        data = json.dumps(big, ensure_ascii=False).encode()
        for i in range(0, len(data), 512):
            yield data[i:i + 512]

    status, body = await node.call("POST", CATALOG, "police", data=chunks(),
                                   headers={"Content-Type": "application/json"})
    assert_error(status, body, 413, "TOO_LARGE")
    # Just under the limit is fine.
    ok = entry_body(summary="x" * 300)
    assert len(json.dumps(ok, ensure_ascii=False).encode()) < 2048
    status, entry = await node.call("POST", CATALOG, "police", json_body=ok)
    assert status == 201, entry
    # And an oversize change leaves the entry as it was.
    status, body = await node.call("PUT", f"{CATALOG}/{entry['code']}", "police",
                                   json_body=content_body(summary="长" * 1000))
    assert_error(status, body, 413, "TOO_LARGE")
    assert (await node.call("GET", f"{CATALOG}/{entry['code']}", "police"))[1] == entry
    assert (await raw_sql(node.config, "SELECT count(*) FROM catalog_entries"))[0][0] == 1


async def test_unknown_resources_and_paths(node):
    for path in (f"{CATALOG}/101001/370321999999", f"{CATALOG}/101001001/370300000001"):
        status, body = await node.call("GET", path, "police")
        assert_error(status, body, 404, "NOT_FOUND")
    for path in ("/api/v1/nope", "/nope", f"{CATALOG}/abc", f"{CATALOG}/101001", f"{CATALOG}/1/2",
                 f"{CATALOG}/１０１００１/370321000001", "/api/v2/catalog", "/federation/v9/x", "/%ff"):
        status, body = await node.call("GET", path, "police")
        assert_error(status, body, 404, "NOT_FOUND")


async def test_wrong_methods(node):
    for method, path in (("PATCH", CATALOG), ("DELETE", CATALOG), ("PUT", CATALOG),
                         ("POST", f"{CATALOG}/101001/370321000001"), ("POST", "/healthz"), ("DELETE", "/api/v1/audit")):
        async with node.session.request(method, node.url + path,
                                        headers={"Authorization": f"Bearer {node.tokens['police']}"}) as resp:
            body = await resp.json()
            assert_error(resp.status, body, 405, "METHOD_NOT_ALLOWED")
            assert resp.headers.get("Allow"), (method, path)


async def test_wrong_tokens(node):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Token abc"}):
        status, body = await node.call("POST", CATALOG, json_body=entry_body(), headers=headers)
        assert_error(status, body, 401, "UNAUTHENTICATED")
    await nothing_stored(node)


async def test_bad_query_values(node):
    for query in ("page=-1", "page=1e309", "page=99999999999999999999", "page_size=abc", "node=%00",
                  "deleted=", "q=%ff%fe"):
        status, body = await node.call("GET", f"{CATALOG}?{query}", "police")
        assert status < 500, (query, body)
        if status >= 400:
            assert_error(status, body, 400, "INVALID_INPUT")


async def test_concurrent_registrations_of_one_code(node):
    """Two departments racing for the same full code: one wins, the other gets CONFLICT, never a 500."""
    body = entry_body(classification=None, code="101001/370321555555")
    results = await asyncio.gather(*[node.call("POST", CATALOG, t, json_body=body)
                                     for t in ("police", "civil") * 4])
    statuses = sorted(s for s, _ in results)
    assert statuses == [201] + [409] * 7, results
    assert (await raw_sql(node.config, "SELECT count(*) FROM catalog_entries"))[0][0] == 1


async def test_concurrent_numbering(node):
    results = await asyncio.gather(*[node.call("POST", CATALOG, "police", json_body=entry_body(name=f"资源{i}"))
                                     for i in range(12)])
    assert all(s == 201 for s, _ in results), results
    codes = {b["code"] for _, b in results}
    seqs = sorted(b["seq"] for _, b in results)
    assert len(codes) == 12 and seqs == list(range(1, 13))


# A small fuzz of the registration body ---------------------------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_node(tmp_path_factory, request):
    node = ThreadedNode(tmp_path_factory.mktemp("fuzz"), request.param)
    yield node
    node.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a plausible value, sometimes anything at all."""
    return st.one_of(valid, valid, json_values)


items = st.lists(st.fixed_dictionaries(
    {"name": maybe(st.text(min_size=1, max_size=10)), "field": maybe(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)),
     "type": maybe(st.sampled_from(list("CNYDTLMGBIF"))), "key": maybe(st.booleans())},
    optional={"length": maybe(st.integers(-5, 2**40)), "sensitive": maybe(st.booleans()),
              "check": maybe(st.sampled_from(["gb11643", "gb32100"])), "extra": json_values}),
    max_size=4)

bodies = st.fixed_dictionaries(
    {},
    optional={
        "classification": maybe(st.from_regex(r"\d{6}(\d{3})?", fullmatch=True)),
        "code": maybe(st.from_regex(r"\d{6}/3703\d{2}\d{1,6}", fullmatch=True)),
        "name": maybe(st.text(min_size=1, max_size=20)),
        "category": maybe(st.sampled_from(["base", "theme", "department"])),
        "summary": maybe(st.text(max_size=20)),
        "format": maybe(st.sampled_from(["file", "database", "service"])),
        "items": maybe(items),
        "share": maybe(st.fixed_dictionaries({"type": maybe(st.sampled_from(["unconditional", "conditional", "none"]))},
                                              optional={"condition": maybe(st.text(max_size=5)),
                                                        "basis": maybe(st.text(max_size=5)),
                                                        "methods": maybe(st.lists(st.sampled_from(["api", "file", "table"])))})),
        "open": maybe(st.fixed_dictionaries({}, optional={"public": maybe(st.booleans())})),
        "update_cycle": maybe(st.sampled_from(["realtime", "daily", "other"])),
        "published_at": maybe(st.dates().map(str)),
        "related": maybe(st.lists(st.from_regex(r"\d{6}/\d{7,12}", fullmatch=True), max_size=2)),
        "unexpected": json_values,
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_fuzz_catalog_post(fuzz_node, body):
    data = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    status, answer = fuzz_node.post(CATALOG, data)
    assert status < 500, answer
    if status == 201:
        assert answer["type"] == "catalog_entry" and answer["node"] == "370321"
    else:
        assert status in (400, 409), answer
        assert_error(status, answer, status, "INVALID_INPUT" if status == 400 else "CONFLICT")


async def test_concurrent_changes_each_bump_the_version(node):
    entry = (await node.call("POST", CATALOG, "police", json_body=entry_body()))[1]
    results = await asyncio.gather(*[node.call("PUT", f"{CATALOG}/{entry['code']}", "police",
                                               json_body=content_body(summary=f"第{i}次修改")) for i in range(8)])
    assert all(s == 200 for s, _ in results), results
    versions = sorted(b["version"] for _, b in results)
    assert versions == list(range(2, 10))  # no two changes got the same version
    final = (await node.call("GET", f"{CATALOG}/{entry['code']}", "police"))[1]
    assert final["version"] == 9
