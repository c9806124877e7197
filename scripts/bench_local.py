"""Benchmark (not a test): local data and sharing on one real node.

    python scripts/bench_local.py [--records 1000000] [--batch 100000] [--seconds 10] [--rounds 3]
                                  [--concurrency 64] [--compare-keys 100000]

Quick check: --records 100000.

A `govnode run` subprocess (SQLite, durable audit records: synchronous=FULL) is given a resource of
`--records` people, pushed through the NDJSON API in batches (the ingest figure). Then, with the same
load generator (a separate process, fixed concurrency), it measures verify requests/s, p50 and p99 next
to a bare aiohttp handler that answers a constant JSON, started the same way in its own subprocess; and
the seconds to compare `--compare-keys` keys (with a name each) against the records. Bare and verify
alternate for `--rounds` rounds; the ratio is the median of the rounds' ratios. Each figure also shows the
server's CPU time, which a busy machine disturbs less than wall-clock rates. Last, verifies one at a time
while one more comparison is served: how long a big call keeps the node's other callers waiting.

Targets (issue 2): verify req/s ≥ 0.30 × bare req/s; ingest ≥ 20,000 records/s; compare ≤ 3 s.
Figures are printed; the script exits 0 whatever they are.

    python scripts/bench_local.py --workers 2 [--records 100000] [--per-worker-rate R] [--pg-url postgresql+asyncpg://…]

With `--workers N` the node runs on PostgreSQL (a schema of its own, dropped at the end) and the verify
load is run against `govnode run --workers 1` and `--workers N`, alternating round by round in the same
run: requests/s, and CPU per request of the node's processes (and of PostgreSQL's, which other users of
the server disturb). Targets (issue 17): node CPU per request with N workers ≤ 1.15 × with 1;
requests/s with 2 workers ≥ 1.4 × with 1 on a 2-core machine, less what the load generator's own CPU
(printed) takes from the same cores. `--per-worker-rate R` holds the 1-worker runs to R requests/s and the
N-worker runs to N × R: each process equally busy, so that the CPU ratio shows what coordination costs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import (add_dept, cpu_seconds, drop_pg_schema, env_info, free_port, init_node,  # noqa: E402
                      journal_totals, load, machine_cpu_seconds, merged, postgres_cpu_seconds, rss_mb,
                      tree_cpu_seconds, use_pg_schema, wait_healthy)

from node.ids import make_gb11643, make_gb32100  # noqa: E402

ENTRY = {
    "classification": "101001", "name": "桓台县户籍人口基本信息（基准）", "category": "base", "format": "database",
    "items": [
        {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True,
         "check": "gb11643"},
        {"name": "姓名", "field": "name", "type": "C", "length": 50, "required": True},
        {"name": "性别", "field": "sex", "type": "C", "length": 1},
        {"name": "出生日期", "field": "birth_date", "type": "D"},
        {"name": "手机号码", "field": "phone", "type": "C", "length": 11, "sensitive": True},
        {"name": "住址", "field": "address", "type": "C", "length": 200, "sensitive": True},
    ],
    "share": {"type": "unconditional", "methods": ["api"]}, "update_cycle": "daily",
}

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英"
REGIONS = ["370321", "370302", "370303", "370304", "370305", "370306", "370322", "370323", "370181", "370102"]

BARE_APP = textwrap.dedent('''
    import sys
    from aiohttp import web

    ANSWER = b'{"match":true,"fields":{"name":true}}'

    async def verify(request):
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def health(request):
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/verify", verify)
    app.router.add_get("/healthz", health)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
''')


def person(i: int, rng: random.Random) -> dict:
    """The i-th distinct person: region × birth day × sequence number never repeat below 3,650,000."""
    seq = i % 1000
    j = i // 1000
    region = REGIONS[j % len(REGIONS)]
    day = j // len(REGIONS)
    birth = f"{1950 + day // 336:04d}{day % 12 + 1:02d}{day // 12 % 28 + 1:02d}"
    return {
        "id_number": make_gb11643(region, birth, seq),
        "name": rng.choice(SURNAMES) + rng.choice(GIVEN) + (rng.choice(GIVEN) if i % 3 else ""),
        "sex": "男" if seq % 2 else "女",
        "birth_date": f"{birth[:4]}-{birth[4:6]}-{birth[6:]}",
        "phone": f"1{rng.choice('3589')}{rng.randrange(10**9):09d}",
        "address": f"山东省淄博市桓台县索镇{rng.randrange(1, 300)}号",
    }


def verifies_beside(url: str, path: str, token: str, bodies: list[dict], work: Any) -> tuple[list[float], list[float]]:
    """Verify latencies (ms), one call at a time on one connection: for 2 s alone, then while `work()` runs
    in this thread (a big compare): how long the node keeps its other callers waiting."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    raw = [json.dumps(b, ensure_ascii=False).encode() for b in bodies]
    running = threading.Event()

    def calls(until: Any) -> list[float]:
        out: list[float] = []
        i = 0
        while until():
            t0 = time.perf_counter()
            conn.request("POST", path, body=raw[i % len(raw)], headers=headers)
            resp = conn.getresponse()
            resp.read()
            out.append((time.perf_counter() - t0) * 1000)
            i += 1
        return out

    deadline = time.perf_counter() + 2.0
    alone = calls(lambda: time.perf_counter() < deadline)
    beside: list[float] = []
    caller = threading.Thread(target=lambda: beside.extend(calls(running.is_set)))
    running.set()
    caller.start()
    try:
        work()
    finally:
        running.clear()
        caller.join()
        conn.close()
    return alone, beside


def request(url: str, method: str, path: str, token: str, body: bytes | None = None,
            ctype: str = "application/json", timeout: float = 600) -> tuple[int, bytes]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        if body is not None:
            headers["Content-Type"] = ctype
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=100_000, help="records per NDJSON push")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--compare-keys", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3, help="alternating bare/verify load runs")
    ap.add_argument("--workers", type=int, default=0,
                    help="on PostgreSQL: verify with 1 worker and with this many, in the same run")
    ap.add_argument("--per-worker-rate", type=float, default=None,
                    help="with --workers: hold each run to this many requests/s a worker (1 worker at R, N at N × R)")
    ap.add_argument("--pg-url", default=os.environ.get("GOVNODE_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args()
    rng = random.Random(20261122)
    if args.workers:
        return workers_main(args, rng)

    with tempfile.TemporaryDirectory(prefix="govnode-bench-local-") as tmp:
        base = Path(tmp)
        node = init_node(base / "370321", "370321", "桓台县")
        provider = add_dept(node, make_gb32100("11370321MB", 1), "桓台县公安局")
        consumer = add_dept(node, make_gb32100("11370321MB", 2), "桓台县民政局")
        bare_port = free_port()
        (base / "bare.py").write_text(BARE_APP)
        bare = None
        try:
            node.start()
            status, raw = request(node.url, "POST", "/api/v1/catalog", provider, json.dumps(ENTRY).encode())
            assert status == 201, raw
            code = json.loads(raw)["code"]
            print(f"govnode local benchmark: {args.records:,} records; {env_info()}; SQLite, synchronous=FULL; "
                  f"load: {args.concurrency} connections × {args.seconds:g} s × {args.rounds} rounds, one client process; "
                  f"machine load average {os.getloadavg()[0]:.1f}")
            pid = node.pid

            # Ingest ---------------------------------------------------------------------------------------
            t0 = time.perf_counter()
            people_sample: list[dict] = []
            batches: list[bytes] = []
            for start in range(0, args.records, args.batch):
                rows = [person(i, rng) for i in range(start, min(start + args.batch, args.records))]
                people_sample += rows[:: max(1, args.records // 200_000)]
                batches.append("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
            gen_s = time.perf_counter() - t0
            total_bytes = sum(len(b) for b in batches)
            t0 = time.perf_counter()
            cpu0 = cpu_seconds(pid)
            for b in batches:
                status, raw = request(node.url, "POST", f"/api/v1/resources/{code}/records", provider, b,
                                      "application/x-ndjson")
                assert status == 200, raw[:500]
            ingest_s = time.perf_counter() - t0
            ingest_cpu = cpu_seconds(pid) - cpu0
            ingest_rate = args.records / ingest_s
            print(f"ingest (NDJSON, {len(batches)} push(es) of ≤{args.batch:,}, {total_bytes / 2**20:.0f} MiB) "
                  f"{ingest_s:8.1f} s   {ingest_rate:9.0f} records/s   "
                  f"(node CPU {ingest_cpu:.1f} s = {args.records / ingest_cpu:,.0f} records per CPU-second; "
                  f"data generated in {gen_s:.1f} s)")

            # Verify against a bare handler -------------------------------------------------------------
            bare = subprocess.Popen([sys.executable, str(base / "bare.py"), str(bare_port)])
            wait_healthy(f"http://127.0.0.1:{bare_port}", 30, bare)
            bodies = []
            for p in rng.sample(people_sample, min(5000, len(people_sample))):
                name = p["name"] if rng.random() < 0.8 else "不是本人"
                bodies.append({"key": p["id_number"], "fields": {"name": name, "birth_date": p["birth_date"]}})
            # Bare and verify alternate, round by round, so that a machine whose load changes during the
            # run weighs on both alike; each round's ratio compares neighbours in time.
            verify_url = f"{node.url}/api/v1/resources/{code}/verify"
            verify_headers = {"Authorization": f"Bearer {consumer}", "Content-Type": "application/json"}
            bare_runs, verify_runs, ratios = [], [], []
            bare_cpu = verify_cpu = 0.0
            for r in range(args.rounds):
                cpu0 = cpu_seconds(bare.pid)
                b = load(f"http://127.0.0.1:{bare_port}/verify", {"Content-Type": "application/json"}, bodies,
                         args.concurrency, args.seconds)
                bare_cpu += cpu_seconds(bare.pid) - cpu0
                cpu0 = cpu_seconds(pid)
                v = load(verify_url, verify_headers, bodies, args.concurrency, args.seconds)
                verify_cpu += cpu_seconds(pid) - cpu0
                bare_runs.append(b)
                verify_runs.append(v)
                ratios.append(v.rps / b.rps if b.rps else 0.0)
                print(b.line(f"round {r + 1}: bare aiohttp (constant JSON)"))
                print(v.line(f"round {r + 1}: verify (audited, SQLite)") + f"   ratio {ratios[-1]:.2f}")
            bare_res, verify_res = merged(bare_runs), merged(verify_runs)
            # Server CPU per request (each run's warm-up second included): robust to a busy machine.
            warm = 1 + 1 / args.seconds
            bare_ms = bare_cpu * 1000 / max(1, bare_res.requests * warm)
            verify_ms = verify_cpu * 1000 / max(1, verify_res.requests * warm)
            print(bare_res.line("all rounds: bare aiohttp") + f"   ~{bare_ms:.2f} ms server CPU/request")
            print(verify_res.line("all rounds: verify") + f"   ~{verify_ms:.2f} ms server CPU/request")

            # Compare ----------------------------------------------------------------------------------
            n = args.compare_keys
            sample = [people_sample[i % len(people_sample)] for i in range(n * 9 // 10)]
            outsiders = [{"id_number": make_gb11643("370400", "19990101", i % 1000), "name": "外来人员"}
                         for i in range(n - len(sample))]
            submitted = [{"id_number": p["id_number"], "name": p["name"] if i % 4 else "张冠李戴"}
                         for i, p in enumerate(sample)] + outsiders
            compare_body = json.dumps({"records": submitted}, ensure_ascii=False).encode()
            compare_times = []
            compare_cpu = []
            for _ in range(3):
                t0 = time.perf_counter()
                cpu0 = cpu_seconds(pid)
                status, raw = request(node.url, "POST", f"/api/v1/resources/{code}/compare", consumer, compare_body)
                compare_times.append(time.perf_counter() - t0)
                compare_cpu.append(cpu_seconds(pid) - cpu0)
                assert status == 200, raw[:500]
            answer = json.loads(raw)
            assert answer["total"] == n, answer["total"]
            alone, beside = verifies_beside(node.url, f"/api/v1/resources/{code}/verify", consumer, bodies[:200], lambda: (
                request(node.url, "POST", f"/api/v1/resources/{code}/compare", consumer, compare_body)))
            print(f"compare {n:,} keys (key + name) against {args.records:,} records: "
                  f"{compare_times[0]:.2f} s first, {min(compare_times):.2f} s best of 3, node CPU "
                  f"{min(compare_cpu):.2f} s (found {answer['found']:,}, matched {answer['matched']:,}; "
                  f"request {len(compare_body) / 2**20:.1f} MiB)")
            print(f"verify one at a time while a compare of {n:,} keys is served: p50 {statistics.median(beside):.1f} ms, "
                  f"worst {max(beside):.0f} ms ({len(beside)} calls); alone p50 {statistics.median(alone):.1f} ms, "
                  f"worst {max(alone):.0f} ms")
            print(f"node peak memory {rss_mb(node.pid):.0f} MiB")

            ratio = statistics.median(ratios)
            worst_compare = max(compare_times)
            print()
            print(f"verify req/s / bare req/s = {ratio:.2f} (median of {len(ratios)} rounds: "
                  f"{', '.join(f'{x:.2f}' for x in ratios)})   (target ≥ 0.30: {'met' if ratio >= 0.30 else 'MISSED'}; "
                  f"server CPU per request, bare / verify = {bare_ms / verify_ms:.2f})")
            print(f"ingest records/s = {ingest_rate:,.0f}   (target ≥ 20,000: {'met' if ingest_rate >= 20_000 else 'MISSED'})")
            print(f"compare seconds = {worst_compare:.2f} (worst of 3)   "
                  f"(target ≤ 3: {'met' if worst_compare <= 3 else 'MISSED'})")
            print(f"machine load average now {os.getloadavg()[0]:.1f} (other processes share these "
                  f"{os.cpu_count()} cores: figures above scale with it)")
        finally:
            if bare is not None and bare.poll() is None:
                bare.terminate()
                bare.wait(timeout=20)
            node.stop()
    return 0


def workers_main(args: argparse.Namespace, rng: random.Random) -> int:
    with tempfile.TemporaryDirectory(prefix="govnode-bench-workers-") as tmp:
        node = init_node(Path(tmp) / "370321", "370321", "桓台县")
        schema = use_pg_schema(node, args.pg_url, "gn_bench_")
        provider = add_dept(node, make_gb32100("11370321MB", 1), "桓台县公安局")
        consumer = add_dept(node, make_gb32100("11370321MB", 2), "桓台县民政局")
        try:
            node.start()
            status, raw = request(node.url, "POST", "/api/v1/catalog", provider, json.dumps(ENTRY).encode())
            assert status == 201, raw
            code = json.loads(raw)["code"]
            people: list[dict] = []
            for start in range(0, args.records, args.batch):
                rows = [person(i, rng) for i in range(start, min(start + args.batch, args.records))]
                people += rows[:: max(1, args.records // 50_000)]
                body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
                status, raw = request(node.url, "POST", f"/api/v1/resources/{code}/records", provider, body,
                                      "application/x-ndjson")
                assert status == 200, raw[:500]
            node.stop()
            bodies = [{"key": p["id_number"], "fields": {"name": p["name"] if rng.random() < 0.8 else "不是本人",
                                                         "birth_date": p["birth_date"]}}
                      for p in rng.sample(people, min(5000, len(people)))]
            url = f"{node.url}/api/v1/resources/{code}/verify"
            headers = {"Authorization": f"Bearer {consumer}", "Content-Type": "application/json"}
            print(f"govnode workers benchmark: {args.records:,} records; {env_info()}; PostgreSQL; load: "
                  f"{args.concurrency} connections × {args.seconds:g} s × {args.rounds} rounds, one client process; "
                  f"machine load average {os.getloadavg()[0]:.1f}")
            runs: dict[int, list] = {1: [], args.workers: []}
            cpu = {1: 0.0, args.workers: 0.0}
            pg = {1: 0.0, args.workers: 0.0}
            # The journal's commits (summed over the workers by /metrics): how many records a commit carries
            # and how long it takes, which shows whether the workers' journals wait for each other.
            journal = {1: [0.0, 0.0], args.workers: [0.0, 0.0]}
            # The machine while measuring: cores idle, and cores the hypervisor gave to other guests.
            machine = {n: {"idle": 0.0, "steal": 0.0, "total": 0.0} for n in (1, args.workers)}
            for r in range(args.rounds):
                for n in (1, args.workers):
                    node.workers = n
                    node.start()
                    # Warm every worker's caches with a short run first (not measured).
                    load(url, headers, bodies, args.concurrency, 1.0, warmup_s=0.5)
                    cpu0, pg0 = tree_cpu_seconds(node.pid), postgres_cpu_seconds()
                    commits0, spent0 = journal_totals(node.url)
                    box0 = machine_cpu_seconds()
                    rate = args.per_worker_rate * n if args.per_worker_rate else None
                    res = load(url, headers, bodies, args.concurrency, args.seconds, rate=rate)
                    box1 = machine_cpu_seconds()
                    for k in box0:
                        machine[n][k] += box1[k] - box0[k]
                    cpu[n] += tree_cpu_seconds(node.pid) - cpu0
                    pg[n] += postgres_cpu_seconds() - pg0
                    commits1, spent1 = journal_totals(node.url)
                    journal[n][0] += commits1 - commits0
                    journal[n][1] += spent1 - spent0
                    node.stop()
                    runs[n].append(res)
                    print(res.line(f"round {r + 1}: verify, {n} worker(s)")
                          + f"   load generator CPU {res.client_cpu / (res.seconds + 1):.0%} of a core")
            warm = 1 + 1 / args.seconds
            figures = {}
            for n in (1, args.workers):
                m = merged(runs[n])
                per = m.requests * warm
                figures[n] = (m.rps, cpu[n] * 1000 / per, pg[n] * 1000 / per)
                print(m.line(f"all rounds: {n} worker(s)") + f"   node CPU {figures[n][1]:.2f} ms/request, "
                      f"PostgreSQL CPU {figures[n][2]:.2f} ms/request, load generator "
                      f"{m.client_cpu / (m.seconds * warm):.0%} of a core")
                commits, spent = journal[n]
                if commits:
                    print(f"   journal, {n} worker(s): {m.requests / commits:.1f} requests a commit, "
                          f"{spent * 1000 / commits:.1f} ms a commit ({commits:.0f} commits)")
            rps_ratio = figures[args.workers][0] / figures[1][0]
            cpu_ratio = figures[args.workers][1] / figures[1][1]
            # What the cores left for the node: the machine's cores less what the hypervisor took and the load
            # generator's and PostgreSQL's CPU (idle time is printed, not subtracted: it is what the node left).
            n = args.workers
            m = merged(runs[n])
            cores = os.cpu_count() or 1
            share = {k: machine[n][k] / machine[n]["total"] * cores for k in ("idle", "steal")}
            loadgen = m.client_cpu / (m.seconds * warm)
            postgres = figures[n][2] * m.rps / 1000
            node_cores = figures[n][1] * m.rps / 1000
            ceiling = (cores - share["steal"] - loadgen - postgres) * 1000 / figures[n][1]
            print(f"   the {cores} cores during the {n}-worker runs: node {node_cores:.2f}, PostgreSQL {postgres:.2f}, "
                  f"load generator {loadgen:.2f}, taken by the hypervisor {share['steal']:.2f}, idle {share['idle']:.2f}")
            print(f"   with every core not stolen, nor the load generator's nor PostgreSQL's, busy at this node CPU "
                  f"a request: {ceiling:.0f} req/s = {ceiling / figures[1][0]:.2f} × 1 worker")
            print()
            if args.per_worker_rate:
                # Each worker as busy as the single one: what the CPU ratio then shows is what running as
                # several processes costs, not how much less each process has to do a wake-up.
                print(f"each run held to {args.per_worker_rate:g} requests/s a worker: requests/s is set, not measured")
            else:
                print(f"requests/s, {args.workers} workers ÷ 1 = {rps_ratio:.2f}   (target ≥ 1.4 with 2 workers on 2 "
                      f"cores: {'met' if rps_ratio >= 1.4 else 'MISSED'})")
            print(f"node CPU per request, {args.workers} workers ÷ 1 = {cpu_ratio:.2f}   (target ≤ 1.15: "
                  f"{'met' if cpu_ratio <= 1.15 else 'MISSED'})")
            print(f"machine load average now {os.getloadavg()[0]:.1f} (other processes share these "
                  f"{os.cpu_count()} cores: figures above scale with it)")
        finally:
            node.stop()
            drop_pg_schema(args.pg_url, schema)
    return 0


if __name__ == "__main__":
    sys.exit(main())
