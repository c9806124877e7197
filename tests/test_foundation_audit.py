"""Audit (SPEC §10): every API call recorded durably before its answer, in an append-only hash chain,
readable by operators and auditors with filters."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import datetime, timezone

from node.audit.http import AUDIT
from node.audit.service import GENESIS, keys_digest, record_hash
from support import CIVIL, POLICE, raw_sql
from test_foundation_catalog import entry_body

AUDIT_PATH = "/api/v1/audit"


async def call_with_id(node, method: str, path: str, token: str | None = None, json_body=None) -> tuple[int, str]:
    """A call; returns its status and the request id the node answered with."""
    headers = {"Authorization": f"Bearer {node.tokens[token]}"} if token else {}
    async with node.session.request(method, node.url + path, headers=headers, json=json_body) as resp:
        await resp.read()
        return resp.status, resp.headers["X-Request-Id"]


async def audit_page(node, query: str = "", token: str = "auditor") -> dict:
    status, body = await node.call("GET", f"{AUDIT_PATH}?{query}", token)
    assert status == 200, body
    return body


async def test_every_call_is_recorded(node):
    calls = [
        ("GET", "/api/v1/catalog", "police", None, 200, "catalog.search", "ok"),
        ("POST", "/api/v1/catalog", "police", entry_body(), 201, "catalog.create", "ok"),
        ("POST", "/api/v1/catalog", "police", {"name": "x"}, 400, "catalog.create", "INVALID_INPUT"),
        ("POST", "/api/v1/catalog", "operator", entry_body(), 403, "catalog.create", "FORBIDDEN"),
        ("GET", "/api/v1/catalog/101001/370321999999", "civil", None, 404, "catalog.get", "NOT_FOUND"),
        ("GET", "/api/v1/catalog", None, None, 401, "catalog.search", "UNAUTHENTICATED"),
        ("GET", "/api/v1/nothing-here", "civil", None, 404, "unknown", "NOT_FOUND"),
    ]
    ids = []
    for method, path, token, body, status, _, _ in calls:
        got, rid = await call_with_id(node, method, path, token, body)
        assert got == status, (method, path)
        ids.append(rid)
    page = await audit_page(node, "limit=100")
    by_id = {r["request_id"]: r for r in page["records"]}
    for rid, (method, path, token, _, status, action, outcome) in zip(ids, calls):
        r = by_id[rid]
        assert (r["method"], r["path"], r["status"], r["action"], r["outcome"]) == \
            (method, path, status, action, outcome), r
        expected_actor = {"police": f"370321/{POLICE}", "civil": f"370321/{CIVIL}",
                          "operator": "370321/OPERATOR", None: "anonymous"}[token]
        assert r["actor"] == expected_actor
        assert r["role"] == ("none" if token is None else "operator" if token == "operator" else "dept")
        assert isinstance(r["latency_ms"], int) and 0 <= r["latency_ms"] < 60_000
        assert abs(r["at"] - time.time() * 1000) < 120_000
    created = by_id[ids[1]]
    assert created["resource"] == "101001/370321000001"
    assert by_id[ids[4]]["resource"] == "101001/370321999999"
    assert by_id[ids[0]]["resource"] is None


async def test_recorded_before_the_answer(node):
    """When an answer arrives its record is already committed (another connection sees it)."""
    for token in ("police", "civil", None):
        _, rid = await call_with_id(node, "GET", "/api/v1/catalog", token)
        rows = await raw_sql(node.config, "SELECT status FROM audit_log WHERE request_id = :r", {"r": rid})
        assert len(rows) == 1


async def test_caller_supplied_request_id_is_kept(node):
    status, body = await node.call("GET", "/api/v1/catalog", "police", headers={"X-Request-Id": "trace-42"})
    assert status == 200
    rows = await raw_sql(node.config, "SELECT actor FROM audit_log WHERE request_id = 'trace-42'")
    assert rows == [(f"370321/{POLICE}",)]


async def test_hash_chain_and_concurrency(node):
    """Concurrent calls (group commit) still make one gapless chain, one record a call."""
    # The fixture's departments were added at the console, each with its record.
    (before,) = (await raw_sql(node.config, "SELECT count(*) FROM audit_log WHERE action = 'console.dept.add'"))[0]
    assert before == len(node.tokens)
    results = await asyncio.gather(*[node.call("GET", "/api/v1/catalog", "police") for _ in range(60)])
    assert all(s == 200 for s, _ in results)
    rows = await raw_sql(node.config, "SELECT seq, prev_hash, hash, segment FROM audit_log ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, before + 61))
    prev: dict = {}  # one chain on SQLite; on PostgreSQL a chain a process (each command's, the node's)
    for seq, prev_hash, h, segment in rows:
        assert prev_hash == prev.get(segment, GENESIS) and len(h) == 64
        prev[segment] = h
    assert await node.app[AUDIT].verify() is None
    # Each hash covers the record's content.
    page = await audit_page(node, "limit=1")
    (last,) = page["records"]
    import json
    stored = {**last, "details": json.dumps(last["details"]) if last["details"] is not None else None}
    assert record_hash(last["prev_hash"], stored) == last["hash"]


async def test_records_are_append_only(node):
    for _ in range(3):
        await node.call("GET", "/api/v1/catalog", "police")
    before = (await audit_page(node, "limit=3"))["records"]
    for _ in range(3):
        await node.call("GET", "/api/v1/catalog", "civil")
    after = (await audit_page(node, "limit=100"))["records"]
    assert before == [r for r in after if r["seq"] in {b["seq"] for b in before}]


async def test_audit_query_filters(node):
    entry = (await node.call("POST", "/api/v1/catalog", "police", json_body=entry_body()))[1]
    code = entry["code"]
    await node.call("GET", f"/api/v1/catalog/{code}", "civil")
    await node.call("GET", f"/api/v1/catalog/{code}", "civil")
    await node.call("GET", "/api/v1/catalog", "civil")
    t_mid = int(time.time() * 1000)
    await asyncio.sleep(0.05)
    await node.call("GET", "/api/v1/catalog", "police")

    recs = (await audit_page(node, f"dept={CIVIL}"))["records"]
    assert len(recs) == 3 and {r["actor"] for r in recs} == {f"370321/{CIVIL}"}
    assert (await audit_page(node, f"dept=370321/{CIVIL}"))["records"] == recs  # full form too

    recs = (await audit_page(node, f"resource={code}"))["records"]
    assert [r["action"] for r in recs] == ["catalog.get", "catalog.get", "catalog.create"]  # newest first

    recs = (await audit_page(node, f"resource={code}&dept={POLICE}"))["records"]
    assert [r["action"] for r in recs] == ["catalog.create"]

    since = (await audit_page(node, f"since={t_mid}"))["records"]
    assert f"370321/{POLICE}" in {r["actor"] for r in since}
    assert all(r["at"] >= t_mid for r in since)
    until = (await audit_page(node, f"until={t_mid}&limit=1000"))["records"]
    assert all(r["at"] < t_mid for r in until) and len(until) >= 4
    iso = datetime.fromtimestamp(t_mid / 1000, tz=timezone.utc).isoformat()
    by_iso = (await audit_page(node, f"since={iso.replace('+', '%2B')}"))["records"]
    # The same cut in ISO 8601 (later records are the audit queries made since).
    assert {r["seq"] for r in since} <= {r["seq"] for r in by_iso}
    assert all(r["at"] >= t_mid for r in by_iso)

    assert (await audit_page(node, "dept=NOBODY"))["records"] == []


async def test_audit_paging(node):
    for _ in range(7):
        await node.call("GET", "/api/v1/catalog", "police")
    seen = []
    page = await audit_page(node, f"dept={POLICE}&limit=3")
    while True:
        seen += [r["seq"] for r in page["records"]]
        if page["next_before_seq"] is None:
            break
        page = await audit_page(node, f"dept={POLICE}&limit=3&before_seq={page['next_before_seq']}")
    assert len(seen) == 7 and seen == sorted(seen, reverse=True)


async def test_audit_roles_and_bad_queries(node):
    for role in ("police", "civil"):
        status, body = await node.call("GET", AUDIT_PATH, role)
        assert status == 403 and body["error"]["code"] == "FORBIDDEN"
    assert (await node.call("GET", AUDIT_PATH))[0] == 401
    for query in ("limit=0", "limit=1001", "limit=x", "since=yesterday", "until=2026-13-01",
                  "before_seq=0", "colour=red", "before_seq=99999999999999999999999",
                  "since=99999999999999999999999"):
        status, body = await node.call("GET", f"{AUDIT_PATH}?{query}", "operator")
        assert status == 400 and body["error"]["code"] == "INVALID_INPUT", (query, body)
    # A refused audit query is itself on the record.
    recs = (await audit_page(node, "dept=POLICEX"))["records"]
    assert recs == []
    for dept in (POLICE, CIVIL):
        recs = (await audit_page(node, f"dept={dept}"))["records"]
        assert [(r["action"], r["status"], r["outcome"]) for r in recs] == [("audit.list", 403, "FORBIDDEN")]


async def test_an_unwritable_audit_log_refuses_the_call(node):
    """If the audit record cannot be made durable, the caller is not told "ok"."""
    await node.call("GET", "/api/v1/catalog", "police")
    last = (await raw_sql(node.config, "SELECT max(seq) FROM audit_log"))[0][0]
    await raw_sql(node.config, f"DELETE FROM audit_log WHERE seq = {last}")  # tampering breaks the chain
    status, body = await node.call("GET", "/api/v1/catalog", "police")
    assert status == 503 and body["error"]["code"] == "UNAVAILABLE" and body["error"]["request_id"]
    assert "Traceback" not in str(body)


def test_keys_digest():
    assert keys_digest(None) is None and keys_digest([]) is None
    d = keys_digest(["b", "a", 3])
    assert d == keys_digest([3, "a", "b"])  # order does not matter
    assert d == hashlib.sha256(b"3\na\nb\n").hexdigest()
    assert d != keys_digest(["a", "b"])


async def cli_dept(node, *argv: str) -> int:
    from support import run_cli_full_async

    return (await run_cli_full_async(["dept", *argv, "--dir", str(node.config.home)]))[0]


async def test_the_chain_check_behind_the_alerts_follows_each_segment(node):
    """The check behind the operator's alert (figures) walks what was appended since its last walk. On
    PostgreSQL the records of the console's commands (the fixture's departments) and of the node's worker are
    segments of their own, interleaved by seq: intact, they are not a broken link; an altered record is found."""
    from node.figures.http import FIGURES
    from node.figures import store as figures_store

    async def held():
        async with node.app[FIGURES].engine.connect() as conn:
            return await figures_store.get_check(conn)

    for _ in range(3):
        assert (await node.call("GET", "/api/v1/catalog", "police"))[0] == 200
    assert await cli_dept(node, "add", "WATER1", "--name", "桓台县水利局") == 0  # one more segment, between calls
    assert (await node.call("GET", "/api/v1/catalog", "police"))[0] == 200
    await node.app[FIGURES].check_chain()
    first = await held()
    (top,) = (await raw_sql(node.config, "SELECT max(seq) FROM audit_log"))[0]
    assert (first.broken_seq, first.seq) == (None, top), first
    for _ in range(3):
        assert (await node.call("GET", "/api/v1/catalog", "civil"))[0] == 200
    (altered,) = (await raw_sql(node.config, "SELECT max(seq) FROM audit_log WHERE actor LIKE '%/' || :c",
                                {"c": CIVIL}))[0]
    await raw_sql(node.config, "UPDATE audit_log SET outcome = 'FORBIDDEN' WHERE seq = :s", {"s": altered})
    await node.app[FIGURES].check_chain()
    assert (await held()).broken_seq == altered
