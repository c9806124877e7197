"""Hardening against malformed and oversized input (issue 14): every body a node takes, on every route,
ends in a 4xx in SPEC §9's shape — never a 500, never a logged traceback; JSON nesting is bounded before
any parser recurses; federation endpoints refuse a caller without a plausible Authorization before they
read its body; record pushes answer to the limit the README names; a CSV that does not decode is
described in terms of what the caller sent."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from federation.nesting import MAX_NESTING, NestingError, check_nesting
from node.federation.http import MAX_FEDERATION_BODY, MAX_JOIN_BODY
from node.licences.identifier import make as make_identifier
from node.ops.http import OPENAPI_DOCS
from support import (POLICE, TREE, error_code, fed_call, raw_sql, police_node, signing_key_of, start_tree,
                     stop_all)
from test_data import all_changes, create_resource, ids
from test_foundation_badinput import assert_error

DEEP = ("[" * 10_000 + "]" * 10_000).encode()
MULTIPART = "multipart/form-data"


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def nothing_logged_as_error(caplog: pytest.LogCaptureFixture) -> None:
    bad = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, bad


async def send_raw_http(node, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Write `request` as it is on a new connection; (status, body). A node that waits for more than was
    sent never answers: the wait ends in a TimeoutError."""
    reader, writer = await asyncio.open_connection(node.config.host, node.config.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        body = await asyncio.wait_for(reader.readexactly(length) if length is not None else reader.read(), timeout)
        return int(head.split(b" ", 2)[1]), body
    finally:
        writer.close()


def spec_error(status: int, body: bytes, expected_status: int, code: str) -> dict:
    answer = json.loads(body)
    assert_error(status, answer, expected_status, code)
    return answer["error"]


@pytest.fixture
async def county(tmp_path):
    """One node on SQLite, for what does not depend on the store."""
    async with police_node(tmp_path / "county") as running:
        yield running


# The nesting bound itself ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\k'), inner, max_size=3),
    max_leaves=60,
)


@settings(max_examples=400, deadline=None)
@given(json_values, st.integers(min_value=0, max_value=8), st.booleans())
def test_nesting_check_agrees_with_the_parsed_depth(value, limit, as_text):
    """Brackets, quotes and backslashes inside strings do not count; every level outside them does."""
    text = json.dumps(value, ensure_ascii=False)
    deeper = depth_of(value) > limit
    try:
        check_nesting(text if as_text else text.encode(), limit)
        refused = False
    except NestingError:
        refused = True
    assert refused == deeper, (text, limit)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='[]{}"\\a:, ', max_size=40), st.integers(min_value=0, max_value=6), st.booleans())
def test_nesting_check_of_any_text_agrees_with_the_parser_where_it_parses(text, limit, as_text):
    """Text that is not valid JSON (most of these) takes the exact walk wherever its brackets or quotes do not
    pair up; text that parses is refused exactly when it is deeper than the bound."""
    try:
        check_nesting(text if as_text else text.encode(), limit)
        refused = False
    except NestingError:
        refused = True
    try:
        value = json.loads(text)
    except ValueError:
        return
    assert refused == (depth_of(value) > limit), (text, limit)


def test_a_big_flat_body_with_brackets_in_its_strings_is_measured_right():
    body = json.dumps({"records": [{"id": f"{i}", "name": "张[三"} for i in range(20_000)]}, ensure_ascii=False,
                      separators=(",", ":"))
    check_nesting(body.encode(), 3)  # an object, its list, each record
    with pytest.raises(NestingError):
        check_nesting(body.encode(), 2)
    with pytest.raises(NestingError):  # one record deeper than the rest
        check_nesting(body.replace('"name":"张[三"}', '"name":[1]}', 1).encode(), 3)


def test_the_bound_and_why_the_node_checks_it_itself():
    check_nesting(json.dumps(nested(MAX_NESTING)))
    with pytest.raises(NestingError):
        check_nesting(json.dumps(nested(MAX_NESTING + 1)))
    with pytest.raises(NestingError):
        check_nesting(json.dumps({"a": nested(MAX_NESTING)}))
    # What the libraries do on their own, measured: Python's json overflows the interpreter's stack (a
    # RecursionError, which no `except ValueError` catches), pydantic stops at 200 levels by itself.
    with pytest.raises(RecursionError):
        json.loads(DEEP)

    class Body(BaseModel):
        value: Any = None

    with pytest.raises(ValidationError) as err:
        Body.model_validate_json(b'{"value": ' + DEEP + b"}")
    assert err.value.errors()[0]["type"] == "json_invalid" and "recursion" in err.value.errors()[0]["msg"]
    Body.model_validate_json(json.dumps({"value": nested(150)}))  # deeper than the node's bound: accepted
    with pytest.raises(NestingError):
        check_nesting(DEEP)


# Every route, deep JSON -----------------------------------------------------------------------------

def _path_values(code: str) -> dict[str, str]:
    """A value for each path parameter, well formed so that a handler gets as far as the body."""
    unknown = "01M8X7PP3AT74CZ6MTQ8B5765P"
    return {"code": code, "id": unknown, "source": unknown, "identifier": make_identifier(POLICE + "001", "370321", "1", 1),
            "feed": "catalog", "action": "revoke", "item": "370321-XK-00001", "list": "370000-0001", "entry": unknown}


def body_routes(app) -> list[tuple[str, str]]:
    """(method, path template) of every route that may read a body: every route but GET and HEAD, and the
    federation GETs too (a hop's body is read with its Authorization)."""
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path") or route.resource.canonical
        if template.startswith("/portal/"):  # pages for people, in HTML: tests/test_portal_people.py
            continue
        if route.method not in ("GET", "HEAD") or (route.method == "GET" and template.startswith("/federation/")):
            out.append((route.method, template))
    return out


async def test_deep_json_on_every_route(node, caplog):
    """10,000 levels of JSON to every route that may read a body, as a department, as an operator and with
    no credentials: a 4xx in SPEC shape everywhere (a route that reads no body may answer 2xx), nothing
    logged as an error; every route that declares a JSON body says the nesting is what is wrong."""
    caplog.set_level(logging.INFO)
    code = await create_resource(node)
    routes = body_routes(node.app)
    docs = {(d.method.upper(), node.app.router[d.name].get_info().get("formatter") or d.path): d
            for d in node.app[OPENAPI_DOCS]}
    assert {k for k, d in docs.items() if d.method != "get"} <= set(routes)  # the whole documented API …
    assert {r for r in routes if r[1].startswith("/federation/")}  # … and the federation's endpoints
    refusals: dict[tuple[str, str], list[dict]] = {}
    for method, template in sorted(routes, key=lambda r: r[0] == "DELETE"):  # a withdrawal last
        path = template.format(**_path_values(code))
        for token in ("police", "operator", None):
            status, answer = await node.call(method, path, token, data=DEEP, headers={"Content-Type": "application/json"})
            assert status < 500, (method, path, token, answer)
            if status >= 300:
                assert_error(status, answer, status, answer["error"]["code"])
                refusals.setdefault((method, template), []).append(answer["error"])
    for key, doc in docs.items():
        if doc.body is None:
            continue
        said = [e for e in refusals.get(key, []) if e["code"] == "INVALID_INPUT"]
        assert said, (key, refusals.get(key))
        assert any("nested deeper than 64 levels" in json.dumps(e, ensure_ascii=False) for e in said), (key, said)
    for path in ("/federation/v1/messages", "/federation/v1/notify"):  # anyone may call them: refused unread
        assert {e["code"] for e in refusals[("POST", path)]} == {"UNAUTHENTICATED"}
    assert "nested deeper" in refusals[("POST", "/federation/v1/join")][0]["message"]
    nothing_logged_as_error(caplog)
    assert (await raw_sql(node.config, "SELECT count(*) FROM records"))[0][0] == 0


async def test_malformed_multipart_on_every_upload_route(node, caplog):
    caplog.set_level(logging.INFO)
    code = await create_resource(node)
    values = _path_values(code)
    uploads = [node.app.router[d.name].url_for(**{k: v for k, v in values.items() if "{" + k in d.path}).path
               for d in node.app[OPENAPI_DOCS] if MULTIPART in d.content_types]
    assert uploads
    disposition = b'Content-Disposition: form-data; name="file"; filename="a.csv"\r\n'
    bodies = [
        ("boundary=XYZ", b"--XYZ\r\n--XYZ--\r\n"),  # the probe's case: a part with no header block
        ("boundary=XYZ", b"garbage, no boundary at all"),
        ("boundary=XYZ", b"--XYZ\r\nnot a header line\r\n\r\nx\r\n--XYZ--\r\n"),
        ("boundary=XYZ", b"--XYZ\r\nContent-Type: multipart/mixed\r\n\r\nx\r\n--XYZ--\r\n"),
        ("boundary=XYZ", b"--XYZ\r\n" + disposition + b"Content-Type: text/csv; charset=zlib\r\n\r\nx\r\n--XYZ--\r\n"),
        ("boundary=XYZ", b"--XYZ\r\n" + disposition),  # ends inside the part's headers
        ("boundary=XYZ", b"--XYZ--\r\n"),
        ("", b"--XYZ\r\n--XYZ--\r\n"),
        ("boundary=", b"--\r\n----\r\n"),
    ]
    for path in uploads:
        for params, body in bodies:
            ctype = f"{MULTIPART}; {params}" if params else MULTIPART
            status, answer = await node.call("POST", path, "police", data=body, headers={"Content-Type": ctype})
            assert_error(status, answer, 400, "INVALID_INPUT")
            assert "\\x" not in answer["error"]["message"], answer  # no raw bytes quoted back
    nothing_logged_as_error(caplog)
    assert (await raw_sql(node.config, "SELECT count(*) FROM records"))[0][0] == 0


# Federation: refused before the body is read -----------------------------------------------------------

async def test_federation_refuses_a_caller_without_a_plausible_header_before_reading_its_body(county, caplog):
    """The request announces the largest body the endpoint takes and sends none of it: an endpoint that
    read the body first would wait for it and never answer."""
    caplog.set_level(logging.INFO)
    node = county
    headers = [b"", b"Authorization: Bearer x\r\n", b"Authorization: GovNode garbage\r\n",
               b'Authorization: GovNode origin="370300",destination="370321",key="ed25519:1",ts="1",'
               b'nonce="aaaaaaaaaaaaaaaa"\r\n']  # no sig
    paths = [("POST", "/federation/v1/messages"), ("POST", "/federation/v1/notify"),
             ("POST", "/federation/v1/certificate"), ("POST", "/federation/v1/admin/revoke"),
             ("GET", "/federation/v1/registry"), ("GET", "/federation/v1/catalog/changes"),
             ("GET", "/federation/v1/holder_key")]
    for method, path in paths:
        for auth in headers:
            status, body = await send_raw_http(node, (
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {MAX_FEDERATION_BODY}\r\n").encode() + auth + b"\r\n")
            spec_error(status, body, 401, "UNAUTHENTICATED")
    # join needs its body (the token is in it), so its cap is small and checked first.
    status, body = await send_raw_http(node, (
        f"POST /federation/v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MAX_JOIN_BODY + 1}\r\n\r\n").encode())
    spec_error(status, body, 413, "TOO_LARGE")
    nothing_logged_as_error(caplog)


async def test_signed_federation_bodies_are_bounded_too(tmp_path, caplog):
    """A neighbour whose header passes every check that needs no body still cannot send deep JSON: a
    nested envelope is refused as INVALID_INPUT, before its signature is checked; a neighbour's answer
    nested too deeply is a peer failure, not a crash."""
    caplog.set_level(logging.INFO)
    nodes = await start_tree(tmp_path, tree=TREE[:2])
    try:
        city, province = nodes["370300"], nodes["370000"]
        key = signing_key_of(city.config.home)
        for path in ("/federation/v1/messages", "/federation/v1/notify"):
            status, body, _ = await fed_call(province, "POST", path, "370300", key, {"feed": nested(100)})
            assert status == 400 and error_code(body) == "INVALID_INPUT", body
            assert "nested deeper than 64 levels" in body["error"]["message"]
        status, body, _ = await fed_call(province, "POST", "/federation/v1/notify", "370300", key,
                                         {"feed": "catalog", "x": nested(MAX_NESTING - 2)})
        assert status == 200, body  # at the bound: accepted
        # A header naming an origin this node does not trust is refused before the body, like no header.
        status, body, _ = await fed_call(province, "POST", "/federation/v1/notify", "370399", key, {"feed": "x"})
        assert status == 401 and error_code(body) == "UNAUTHENTICATED", body
    finally:
        await stop_all(nodes)
    nothing_logged_as_error(caplog)


async def test_a_peer_answering_deep_json_is_a_peer_failure(tmp_path):
    from aiohttp import web

    from federation.client import PeerClient, PeerError
    from federation.signing import generate_signing_key

    async def deep(request: web.Request) -> web.Response:
        return web.Response(body=DEEP, content_type="application/json")

    app = web.Application()
    app.router.add_post("/federation/v1/messages", deep)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    key = generate_signing_key("1")
    client = PeerClient("370321", lambda: key, timeout_s=5)
    await client.start()
    try:
        with pytest.raises(PeerError) as err:
            await client.request("370300", f"http://127.0.0.1:{port}", "POST", "/federation/v1/messages", {"a": 1})
        assert err.value.code == "PEER_UNREACHABLE"
    finally:
        await client.close()
        await runner.cleanup()


# Malformed HTTP: a NUL in a header, a body whose coding does not decode ---------------------------------

async def test_a_nul_in_a_header_is_a_400_and_an_info_line(county, caplog):
    caplog.set_level(logging.INFO)
    secret = b"Bearer gnt_secret\x00x"
    status, body = await send_raw_http(county, b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                          + secret + b"\r\n\r\n")
    assert status == 400
    nothing_logged_as_error(caplog)
    said = [r for r in caplog.records if "not valid HTTP" in r.getMessage()]
    assert said and said[0].levelno == logging.INFO
    assert not any("gnt_secret" in r.getMessage() for r in caplog.records)


async def test_a_body_that_does_not_decode_is_invalid_input(county, caplog):
    caplog.set_level(logging.INFO)
    code = await create_resource(county)
    auth = f"Authorization: Bearer {county.tokens['police']}\r\n".encode()
    for path, ctype in (("/api/v1/catalog", "application/json"), ("/api/v1/licences/verify", "application/json"),
                        (f"/api/v1/resources/{code}/records", "application/x-ndjson"),
                        (f"/api/v1/resources/{code}/files", "text/csv")):
        for coding in (b"gzip", b"deflate"):
            status, body = await send_raw_http(county, (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: 10\r\n").encode()
                + auth + b"Content-Encoding: " + coding + b"\r\n\r\n0123456789")
            spec_error(status, body, 400, "INVALID_INPUT")
    nothing_logged_as_error(caplog)


# Limits: which one governs a record push ---------------------------------------------------------------

@pytest.fixture
async def limited(tmp_path, backend):
    """A node whose record pushes may be 64 KiB and whose other JSON bodies (and single records) 4 KiB."""
    extra = {"limits": {"max_json_bytes": 4096, "max_upload_bytes": 64 * 1024}}
    async with police_node(tmp_path / "limited", backend, extra) as running:
        yield running


def _push_bodies(n: int) -> dict[str, bytes]:
    records = [{"id_number": k, "name": "张三"} for k in ids(n)]
    return {"application/json": json.dumps(records, ensure_ascii=False).encode(),
            "application/x-ndjson": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()}


async def test_record_pushes_answer_to_the_upload_limit_in_both_forms(limited):
    node = limited
    code = await create_resource(node)
    path = f"/api/v1/resources/{code}/records"
    over = _push_bodies(1500)
    for ctype, body in over.items():
        assert len(body) > 64 * 1024
        status, answer = await node.call("POST", path, "police", data=body, headers={"Content-Type": ctype})
        assert_error(status, answer, 413, "TOO_LARGE")
        assert "limits.max_upload_bytes" in answer["error"]["message"]

        async def chunks(data: bytes = body):  # no Content-Length: the limit holds while streaming
            for i in range(0, len(data), 8192):
                yield data[i:i + 8192]

        status, answer = await node.call("POST", path, "police", data=chunks(), headers={"Content-Type": ctype})
        assert_error(status, answer, 413, "TOO_LARGE")
    assert await all_changes(node, code) == []
    # Over max_json_bytes but under the upload limit: a push, not a JSON call, so it is taken.
    for ctype, body in _push_bodies(200).items():
        assert 4096 < len(body) < 64 * 1024
        status, answer = await node.call("POST", path, "police", data=body, headers={"Content-Type": ctype})
        assert status == 200 and answer["received"] == 200, answer
    # One record over max_json_bytes is refused as that row, naming the size.
    big = {"id_number": ids(1, 5000)[0], "name": "张" * 2000}
    for ctype, body in {"application/json": json.dumps([big], ensure_ascii=False).encode(),
                        "application/x-ndjson": json.dumps(big, ensure_ascii=False).encode() + b"\n"}.items():
        status, answer = await node.call("POST", path, "police", data=body, headers={"Content-Type": ctype})
        assert_error(status, answer, 400, "INVALID_INPUT")
        assert "4096" in json.dumps(answer["error"]), answer
    # Other JSON bodies answer to max_json_bytes.
    status, answer = await node.call("POST", f"/api/v1/resources/{code}/query", "police",
                                     json_body={"where": {"name": "张" * 2000}})
    assert_error(status, answer, 413, "TOO_LARGE")
    assert len(await all_changes(node, code)) == 200


# Messages that say what is wrong given what was sent ----------------------------------------------------

CSV_HEAD = "公民身份号码,姓名\n"


async def test_an_undecodable_csv_is_described_by_what_the_caller_named(county):
    node = county
    code = await create_resource(node)
    path = f"/api/v1/resources/{code}/files"
    good = f"{ids(1)[0]},张三\n"
    body = (CSV_HEAD + good).encode() + b"\xff\xfe,x\n"
    at = len((CSV_HEAD + good).encode())

    async def upload(ctype: str, data: bytes) -> dict:
        status, answer = await node.call("POST", path, "police", data=data, headers={"Content-Type": ctype})
        assert_error(status, answer, 400, "INVALID_INPUT")
        return answer["error"]

    # A charset was named: the file does not match it. Telling the caller to name one would be wrong.
    for ctype in ("text/csv; charset=utf-8", "text/csv; charset=UTF8"):
        err = await upload(ctype, body)
        assert "names" in err["message"] and "name its charset" not in err["message"], err
        assert err["details"][0]["offset"] == at and err["details"][0]["line"] == 3, err
    err = await upload("text/csv; charset=gbk", "公民身份号码,姓名\n".encode("gbk") + b"\x81\x20\n")
    assert "not valid gbk, the charset its Content-Type names" in err["message"], err
    # The same file in a multipart part that names its charset.
    part = (b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n'
            b"Content-Type: text/csv; charset=utf-8\r\n\r\n" + body + b"\r\n--XYZ--\r\n")
    err = await upload("multipart/form-data; boundary=XYZ", part)
    assert "the charset its Content-Type names" in err["message"], err
    # No charset named, and the start (the first chunk read, 256 KiB) is neither UTF-8 nor GB 18030.
    err = await upload("text/csv", body)
    assert "neither UTF-8 nor GB 18030" in err["message"] and "names no charset" in err["message"], err
    assert "charset=" in err["message"] and err["details"][0]["offset"] == at, err
    # No charset named, and the file began as UTF-8 (so it was read as UTF-8) but breaks later on.
    rows = "".join(f"{k},张三\n" for k in ids(12_000)).encode()
    assert len(rows) > 256 * 1024
    err = await upload("text/csv", CSV_HEAD.encode() + rows + b"\xff\xfe,x\n")
    assert "not valid UTF-8" in err["message"] and "names no charset" in err["message"], err
    assert "charset=" in err["message"], err
    assert err["details"][0]["offset"] == len(CSV_HEAD.encode() + rows) and err["details"][0]["line"] == 12_002
    # A charset that is not a text encoding is not a way to send compressed data.
    err = await upload("text/csv; charset=zlib", body)
    assert "not a text encoding" in err["message"] or "unknown charset" in err["message"], err
    assert await all_changes(node, code) == []
