"""Benchmark (not a test): checking subjects against joint reward and punishment lists at a county.

    .venv/bin/python scripts/bench_lists.py [--entries 1000000] [--subjects 10000] [--singles 2000] [--rounds 5]
                                            [--pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]

A `govnode run` subprocess (SQLite by default; PostgreSQL with --pg-url, in a schema of its own dropped at the
end) holds a list issued by one of its departments. The script measures, in the same run:

1. `POST /api/v1/lists/check` with `--subjects` subjects (10 of them listed) while the node holds 1,000 entries
   (the baseline), then again once it holds `--entries` entries: the median of `--rounds` calls each, and the
   ratio (the digest index should make it close to 1);
2. a check of one subject, `--singles` calls one after the other on one connection: p50 and p99, next to the same
   client against a bare aiohttp handler answering a constant JSON (started the same way), as a ratio; and beside
   it, on the same node with the same token, the two floors under any API call: a route answered from memory
   (no account, no database) and the cheapest audited call (one small read, its audit record durable before the
   answer), so that what the check itself adds can be told from what every call costs.

The entries are signed by the node's key with the federation's holder-key digest of each subject, exactly as
the node signs them, and written straight into its database while it is stopped (signing a million entries
through the API would measure the API's writes, not the check).

Targets (issue 20): 10,000 subjects against 1,000,000 entries ≤ 0.5 s; one subject p50 ≤ 2 ms at the API.
Figures are printed; the script exits 0 whatever they are.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import (add_dept, cpu_seconds, drop_pg_schema, env_info, free_port, init_node,  # noqa: E402
                      use_pg_schema, wait_healthy)

from node.ids import make_gb32100  # noqa: E402

ISSUER = make_gb32100("11370321MB", 7)
CHECKER = make_gb32100("11370321MB", 8)
BASELINE_ENTRIES = 1_000

BARE_APP = textwrap.dedent('''
    import sys
    from aiohttp import web

    ANSWER = b'{"checked":1,"hit_subjects":0,"checked_on":"2026-12-03","results":[]}'

    async def answer(request):
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/v1/lists/check", answer)
    app.router.add_get("/healthz", lambda r: web.Response(text="ok"))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
''')


def subject(i: int) -> str:
    return make_gb32100("91370321MA", i)


def post(conn: http.client.HTTPConnection, path: str, token: str, body: bytes) -> tuple[int, bytes, float]:
    t0 = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {token}",
                                                   "Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, data, time.perf_counter() - t0


async def fill(home: Path, list_code: str, start: int, count: int) -> None:
    """Sign `count` entries (subjects start … start+count-1) as the node would and store them, 20,000 a commit."""
    from federation.canonical import encode_canonical_json
    from federation.signing import decode_b64, read_signing_key_file, sign_json
    from node.config import load_config
    from node.db import make_engine, next_counter, write_tx
    from node.federation import store as fed_store
    from node.ids import new_id, now_ms
    from node.federation.feed_tables import store_rows
    from node.licences.service import LicenceService
    from node.lists import store
    from node.lists.service import CHANGE_COUNTER, SEQ_COUNTER

    config = load_config(home)
    key = read_signing_key_file(config.key_path)
    engine = make_engine(config.database, config.sqlite_synchronous)
    try:
        async with engine.connect() as conn:
            holder_key = decode_b64(await fed_store.get_state(conn, "holder_key"))
            lst = json.loads((await store.get_list(conn, list_code)).doc)
        digest_of = SimpleNamespace(federation=SimpleNamespace(holder_key=holder_key))
        node = config.node.id
        done = 0
        while done < count:
            n = min(20_000, count - done)
            async with write_tx(engine) as conn:
                seq = await next_counter(conn, SEQ_COUNTER, n)
                change = await next_counter(conn, CHANGE_COUNTER, n)
                rows = []
                for i in range(n):
                    code = subject(start + done + i)
                    doc = sign_json({
                        "type": "list_entry", "list": list_code, "id": new_id(), "node": node,
                        "seq": seq - n + 1 + i, "version": 1, "deleted": False, "updated_at": now_ms(),
                        "subject": {"code_type": "001", "digest": LicenceService.holder_digest(digest_of, code),
                                    "name": f"企业{start + done + i}"},
                        "reason": "虚开增值税专用发票", "basis": "税务行政处罚决定书", "measures": lst["measures"],
                        "valid_from": "2026-01-01", "valid_until": None, "issuer": lst["issuer"], "scope": "national",
                    }, node, key)
                    rows.append(store.entry_row(doc, encode_canonical_json(doc).decode("utf-8"),
                                                change - n + 1 + i))
                await store_rows(conn, store.list_entries.c.id, rows, [])
            done += n
            if done % 100_000 == 0 or done == count:
                print(f"  … {start + done:,} entries", flush=True)
    finally:
        await engine.dispose()


def check_many(url: str, token: str, subjects: list[str], rounds: int) -> tuple[float, dict]:
    body = json.dumps({"subjects": [{"code": c} for c in subjects], "purpose": "基准测试"}).encode()
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    times, answer = [], {}
    try:
        post(conn, "/api/v1/lists/check", token, body)  # warm-up
        for _ in range(rounds):
            status, data, took = post(conn, "/api/v1/lists/check", token, body)
            if status != 200:
                raise RuntimeError(f"check answered {status}: {data[:300]!r}")
            times.append(took)
            answer = json.loads(data)
    finally:
        conn.close()
    return statistics.median(times), answer


def singles(url: str, token: str, codes: list[str], path: str | None = None) -> list[float]:
    """One check of one subject after another on one connection (50 warm-up calls first), in ms. With `path`,
    a GET of `path` as many times instead: the same client and token on another route, for the floors."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    out = []
    try:
        for i, code in enumerate([codes[0]] * 50 + codes):
            if path is None:
                status, data, took = post(conn, "/api/v1/lists/check", token,
                                          json.dumps({"subjects": [{"code": code}], "purpose": "基准测试"}).encode())
            else:
                status, data, took = get(conn, path, token)
            if status != 200:
                raise RuntimeError(f"{path or 'check'} answered {status}: {data[:300]!r}")
            if i >= 50:
                out.append(took * 1000)
    finally:
        conn.close()
    return out


def get(conn: http.client.HTTPConnection, path: str, token: str) -> tuple[int, bytes, float]:
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, data, time.perf_counter() - t0


def journal(url: str) -> tuple[float, float]:
    """The node's journal totals from /metrics: items made durable, and the seconds they waited in all."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    got = {}
    for line in text.splitlines():
        for name in ("govnode_journal_wait_seconds_count", "govnode_journal_wait_seconds_sum"):
            if line.startswith(name):
                got[name] = float(line.split()[-1])
    return got.get("govnode_journal_wait_seconds_count", 0.0), got.get("govnode_journal_wait_seconds_sum", 0.0)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--subjects", type=int, default=10_000)
    ap.add_argument("--singles", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pg-url", default=None, help="run the node on PostgreSQL (a schema of its own, dropped after)")
    args = ap.parse_args()
    print(f"bench_lists: {env_info()}; {'PostgreSQL' if args.pg_url else 'SQLite'}")
    procs: list = []
    schema = None
    with tempfile.TemporaryDirectory(prefix="bench-lists-") as tmp:
        base = Path(tmp)
        try:
            node = init_node(base / "370321", "370321", "桓台县")
            if args.pg_url:
                schema = use_pg_schema(node, args.pg_url, "bench_lists_")
            issuer = add_dept(node, ISSUER, "国家税务总局桓台县税务局")
            checker = add_dept(node, CHECKER, "桓台县公共资源交易中心")
            node.start()
            procs.append(node)
            host, port = node.url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            status, data, _ = post(conn, "/api/v1/lists", issuer, json.dumps({
                "name": "重大税收违法失信主体名单", "kind": "black", "public": True,
                "measures": ["限制政府采购", "限制取得政府供应土地"]}).encode())
            conn.close()
            if status != 201:
                raise RuntimeError(f"creating the list answered {status}: {data[:300]!r}")
            list_code = json.loads(data)["code"]
            node.stop()
            procs.remove(node)

            # 10 listed subjects among the checked ones, the rest on no list.
            listed = [subject(i) for i in range(0, BASELINE_ENTRIES, BASELINE_ENTRIES // 10)]
            checked = listed + [make_gb32100("91370303MB", i) for i in range(args.subjects - len(listed))]

            t0 = time.perf_counter()
            asyncio.run(fill(base / "370321", list_code, 0, BASELINE_ENTRIES))
            node.start()
            procs.append(node)
            base_s, answer = check_many(node.url, checker, checked, args.rounds)
            assert answer["hit_subjects"] == len(listed), answer["hit_subjects"]
            print(f"{args.subjects:,} subjects against {BASELINE_ENTRIES:,} entries (baseline): {base_s * 1000:.0f} ms")
            node.stop()
            procs.remove(node)

            print(f"signing and storing {args.entries - BASELINE_ENTRIES:,} more entries …", flush=True)
            t0 = time.perf_counter()
            asyncio.run(fill(base / "370321", list_code, BASELINE_ENTRIES, args.entries - BASELINE_ENTRIES))
            print(f"  stored in {time.perf_counter() - t0:.0f} s")
            node.start(timeout_s=120)
            procs.append(node)
            cpu0 = cpu_seconds(node.pid)
            big_s, answer = check_many(node.url, checker, checked, args.rounds)
            big_cpu = (cpu_seconds(node.pid) - cpu0) / (args.rounds + 1)  # the warm-up call included
            assert answer["hit_subjects"] == len(listed), answer["hit_subjects"]
            print(f"{args.subjects:,} subjects against {args.entries:,} entries: {big_s * 1000:.0f} ms "
                  f"(× {big_s / base_s:.2f} the baseline's; node CPU {big_cpu * 1000:.0f} ms a call)   "
                  f"target ≤ 500 ms: {'met' if big_s <= 0.5 else 'MISSED'}")

            # One subject at a time, next to a bare aiohttp handler.
            bare_port = free_port()
            (base / "bare.py").write_text(BARE_APP)
            bare = subprocess.Popen([sys.executable, str(base / "bare.py"), str(bare_port)])
            procs.append(bare)
            wait_healthy(f"http://127.0.0.1:{bare_port}", 30, bare)
            codes = [checked[i % len(checked)] for i in range(args.singles)]
            node_ms, bare_ms = [], []
            node_cpu = bare_cpu = journal_wait = journal_items = 0.0
            # The floors under one subject's check, on the same node, client and token: a route the node answers
            # from memory (the OpenAPI document: no account, no database), and the cheapest audited call (the
            # caller's own lists: the token's account, one small read, and the call's audit record made durable
            # before the answer, as for every API call).
            floor_ms: dict[str, list[float]] = {"openapi": [], "audited": []}
            for r in range(2):  # alternate, so a busy moment of the machine falls on each
                c0 = cpu_seconds(bare.pid)
                bare_ms += singles(f"http://127.0.0.1:{bare_port}", checker, codes[r::2])
                bare_cpu += cpu_seconds(bare.pid) - c0
                c0, j0 = cpu_seconds(node.pid), journal(node.url)
                node_ms += singles(node.url, checker, codes[r::2])
                node_cpu += cpu_seconds(node.pid) - c0
                j1 = journal(node.url)
                journal_items += j1[0] - j0[0] - 1  # less the /metrics call's own record
                journal_wait += j1[1] - j0[1]
                floor_ms["openapi"] += singles(node.url, checker, codes[r::2], path="/api/v1/openapi.json")
                floor_ms["audited"] += singles(node.url, checker, codes[r::2], path="/api/v1/lists?mine=true")
            calls = len(codes) + 100  # each round's 50 warm-up calls included
            p50, p99, b50 = pct(node_ms, 0.5), pct(node_ms, 0.99), pct(bare_ms, 0.5)
            print(f"one subject at the API: p50 {p50:.2f} ms, p99 {p99:.2f} ms; bare aiohttp p50 {b50:.2f} ms "
                  f"(× {p50 / b50:.1f}); server CPU a call {node_cpu * 1000 / calls:.2f} ms vs bare "
                  f"{bare_cpu * 1000 / calls:.2f} ms   target p50 ≤ 2 ms: {'met' if p50 <= 2.0 else 'MISSED'}")
            print(f"  of which waiting for the call's audit record to be durable (the journal's commit), mean "
                  f"{journal_wait * 1000 / max(1.0, journal_items):.2f} ms")
            f_open, f_aud = pct(floor_ms["openapi"], 0.5), pct(floor_ms["audited"], 0.5)
            print(f"floors on the same node: GET of the OpenAPI document (no account, no database) p50 {f_open:.2f} ms; "
                  f"the cheapest audited call (GET /api/v1/lists) p50 {f_aud:.2f} ms; one subject's check = "
                  f"× {p50 / f_aud:.2f} the audited floor, {p50 - f_aud:+.2f} ms")
            print(f"machine load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        finally:
            for p in procs:
                if isinstance(p, subprocess.Popen):
                    p.terminate()
                    p.wait(timeout=10)
                else:
                    p.stop()
            if schema is not None:
                drop_pg_schema(args.pg_url, schema)
    return 0


if __name__ == "__main__":
    sys.exit(main())
