"""Benchmark (not a test): table exchange and 数据回流 on real `govnode run` processes.

    python scripts/bench_exchange.py [--rows 1000000] [--batch 10000] [--updates 60] [--skip-load] [--skip-lag]

1. Full load: a SQLite source table of `--rows` people (the 前置机 table of a department) is bound to a resource of
   a county node (SQLite, durable: synchronous=FULL); the figure is rows/s of the initial load, as the node's
   own progress reports it (first batch read to last batch committed). Baseline in the same run: a bare copy
   of the same table by a few lines of Python (sqlite3 read, json.dumps, executemany into a records-shaped
   table with the same indexes and durability) — no validation, no API, no state.
2. Lag: a province, a city and a county (three processes); the province's resource is fed from a SQLite source
   pulled every second; a county department with a `subscribe` grant keeps a replica. Each of `--updates` updates
   is a row changed in the province's source table; the figure is the time until the county's replica answers
   with the new value (source → province → city → county). Also: a push at the province → the county's replica,
   and, as the baseline, the latency of one query routed county → city → province.

Targets (issue 5): full load ≥ 50,000 rows/s; source → county replica p99 ≤ 5 s. Figures are printed; the
script exits 0 whatever they are.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import NodeProcess, add_dept, env_info, init_node, rss_mb, start_three_levels  # noqa: E402

from node.ids import make_gb11643, make_gb32100  # noqa: E402

ITEMS = [
    {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True,
     "check": "gb11643"},
    {"name": "姓名", "field": "name", "type": "C", "length": 50},
    {"name": "性别", "field": "sex", "type": "C", "length": 1},
    {"name": "出生日期", "field": "birth_date", "type": "D"},
    {"name": "手机号码", "field": "phone", "type": "C", "length": 11, "sensitive": True},
    {"name": "住址", "field": "address", "type": "C", "length": 200, "sensitive": True},
]
COLUMNS = {"name": "xm", "sex": "xb", "birth_date": "csrq", "phone": "sjhm", "address": "zz"}
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英"


def http(method: str, url: str, token: str, body: object | None = None) -> dict:
    data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {url}: {exc.code} {exc.read()[:500]!r}") from None


def wait(pred, timeout_s: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            v = pred()
        except (RuntimeError, OSError):
            v = None
        if v:
            return v
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def person(i: int) -> tuple:
    day = i // 1000
    y, m, d = 1940 + day % 60, day // 60 % 12 + 1, day // 720 % 28 + 1
    name = SURNAMES[i % len(SURNAMES)] + GIVEN[i // 7 % len(GIVEN)] + GIVEN[i // 131 % len(GIVEN)]
    return (make_gb11643("370321", f"{y:04d}{m:02d}{d:02d}", i % 1000), name, "男女"[i % 2], f"{y:04d}-{m:02d}-{d:02d}",
            f"1{38 + i % 10}{i % 100_000_000:08d}", f"山东省淄博市桓台县索镇{i % 500}号", i)


def make_source(path: Path, rows: int) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE rk (sfzh TEXT PRIMARY KEY, xm TEXT, xb TEXT, csrq TEXT, sjhm TEXT, zz TEXT, gxsj INTEGER)")
    db.executemany("INSERT INTO rk VALUES (?, ?, ?, ?, ?, ?, ?)", (person(i) for i in range(rows)))
    db.commit()
    db.close()


def bare_copy(src: Path, dst: Path, batch: int) -> float:
    """Rows/s of a plain copy: read in key order, JSON-encode, upsert into a records-shaped table (FULL, WAL)."""
    out = sqlite3.connect(dst, isolation_level=None)
    out.execute("PRAGMA journal_mode=WAL")
    out.execute("PRAGMA synchronous=FULL")
    out.execute("CREATE TABLE records (resource_code VARCHAR(40) NOT NULL, key VARCHAR(200) NOT NULL, data JSON, "
                "deleted BOOLEAN NOT NULL, change_id BIGINT NOT NULL, updated_at BIGINT NOT NULL, "
                "PRIMARY KEY (resource_code, key))")
    out.execute("CREATE INDEX ix_records_resource_code_change_id ON records (resource_code, change_id)")
    inp = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    fields = ("id_number", "name", "sex", "birth_date", "phone", "address")
    started = time.perf_counter()
    after, n, change = "", 0, 0
    while True:
        rows = inp.execute("SELECT sfzh, xm, xb, csrq, sjhm, zz FROM rk WHERE sfzh > ? ORDER BY sfzh LIMIT ?",
                           (after, batch)).fetchall()
        if not rows:
            break
        out.execute("BEGIN IMMEDIATE")
        out.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (resource_code, key) DO UPDATE "
                        "SET data = excluded.data, change_id = excluded.change_id",
                        [("101001/370321000001", r[0], dumps(dict(zip(fields, r))), False, change + i, 0)
                         for i, r in enumerate(rows)])
        out.execute("COMMIT")
        change += len(rows)
        n += len(rows)
        after = rows[-1][0]
    elapsed = time.perf_counter() - started
    inp.close()
    out.close()
    return n / elapsed


def register(node: NodeProcess, token: str, name: str) -> str:
    return http("POST", node.url + "/api/v1/catalog", token, {
        "classification": "101001", "name": name, "category": "base", "format": "database", "items": ITEMS,
        "share": {"type": "unconditional", "methods": ["api", "table"]}, "update_cycle": "realtime"})["code"]


def source_state(node: NodeProcess, token: str, code: str) -> dict:
    return http("GET", f"{node.url}/api/v1/resources/{code}/sources", token)["sources"][0]


def full_load(base: Path, rows: int, batch: int) -> None:
    src = base / "frontend.db"
    t = time.perf_counter()
    make_source(src, rows)
    print(f"source table: {rows:,} rows written in {time.perf_counter() - t:.1f} s ({src.stat().st_size / 2**20:.0f} MiB)")
    bare = bare_copy(src, base / "bare.db", batch)
    (base / "bare.db").unlink()
    node = init_node(base / "370321", "370321", "桓台县")
    node.start()
    try:
        token = add_dept(node, make_gb32100("11370321MB", 1), "桓台县公安局")
        code = register(node, token, "桓台县户籍人口基本信息（基准）")
        t0 = time.perf_counter()
        http("POST", f"{node.url}/api/v1/resources/{code}/sources", token, {
            "url": f"sqlite:///{src}", "table": "rk", "key_column": "sfzh", "updated_column": "gxsj",
            "columns": COLUMNS, "interval_s": 60, "batch_size": batch})
        state = wait(lambda: (s := source_state(node, token, code))["state"] != "loading" and s, 3600, "the load", 0.5)
        wall = time.perf_counter() - t0
        rss = rss_mb(node.pid)
    finally:
        node.stop()
    prog = state["progress"]
    rate = prog["rows_per_s"] or 0.0
    print(f"initial load: state {state['state']}, {prog['loaded']:,} rows read, {state['rows']['upserted']:,} "
          f"records written, {state['rows']['rejected']} rejected, last error {state['last_error']}")
    print(f"  full load from SQLite            {rate:10,.0f} rows/s   (node's progress; wall incl. bind "
          f"{rows / wall:,.0f} rows/s; node peak RSS {rss:.0f} MiB)")
    print(f"  baseline: bare Python copy       {bare:10,.0f} rows/s")
    print(f"  full load / bare copy = {rate / bare:.2f}; target ≥ 50,000 rows/s: {'met' if rate >= 50_000 else 'MISSED'}")


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def lag(base: Path, updates: int) -> None:
    nodes: list[NodeProcess] = []
    try:
        province, _city, county = start_three_levels(base, nodes)
        police = add_dept(province, make_gb32100("11370000MB", 1), "山东省公安厅")
        p_op = add_dept(province, "OPERATOR", "山东省大数据局", "operator")
        civil = add_dept(county, make_gb32100("11370321MB", 2), "桓台县民政局")
        code = register(province, police, "山东省户籍人口基本信息")
        src = base / "province-frontend.db"
        make_source(src, 2000)
        http("POST", f"{province.url}/api/v1/resources/{code}/sources", police, {
            "url": f"sqlite:///{src}", "table": "rk", "key_column": "sfzh", "updated_column": "gxsj",
            "columns": COLUMNS, "interval_s": 1})
        wait(lambda: source_state(province, police, code)["state"] == "ready", 120, "the province's load")
        wait(lambda: http("GET", f"{county.url}/api/v1/catalog/{code}", civil), 60, "the entry at the county")
        app = http("POST", f"{county.url}/api/v1/applications", civil, {
            "resource": code, "ops": ["query", "subscribe"], "fields": ["id_number", "name", "phone"],
            "purpose": "数据回流", "basis": "基准测试"})
        wait(lambda: http("GET", f"{province.url}/api/v1/applications/{app['id']}", p_op), 60, "the application")
        http("POST", f"{province.url}/api/v1/applications/{app['id']}/review", p_op, {"decision": "accept"})
        http("POST", f"{province.url}/api/v1/applications/{app['id']}/decision", police, {"decision": "approve"})
        wait(lambda: http("GET", f"{county.url}/api/v1/applications/{app['id']}", civil)["status"] == "approved", 60,
             "the grant at the county")
        sub = http("POST", f"{county.url}/api/v1/subscriptions", civil, {"resource": code, "mode": "replica"})
        wait(lambda: (s := http("GET", f"{county.url}/api/v1/subscriptions/{sub['id']}", civil))["state"] == "live"
             and s["records"] == 2000, 120, "the replica")
        keys = [person(i)[0] for i in range(0, 2000, 7)]

        def replica_name(key: str) -> str | None:
            res = http("POST", f"{county.url}/api/v1/resources/{code}/query", civil, {"key": key})
            return res["records"][0]["name"] if res.get("replica") and res["records"] else None

        # Baseline: one query routed county → city → province (another department: no replica, no grant).
        other = add_dept(county, make_gb32100("11370321MB", 3), "桓台县人社局")
        routed = []
        for key in keys[:50]:
            t = time.perf_counter()
            http("POST", f"{county.url}/api/v1/resources/{code}/query", other, {"key": key})
            routed.append((time.perf_counter() - t) * 1000)

        db = sqlite3.connect(src, isolation_level=None)
        from_source, from_push = [], []
        rng = random.Random(5)
        for i in range(updates):
            time.sleep(rng.random())  # at any moment of the province's 1 s schedule, not right after its last pull
            key = keys[i % len(keys)]
            marker = f"回流{i}"
            t = time.perf_counter()
            db.execute("UPDATE rk SET xm = ?, gxsj = ? WHERE sfzh = ?", (marker, 10_000_000 + i, key))
            wait(lambda: replica_name(key) == marker, 60, "the update at the county", 0.01)
            from_source.append((time.perf_counter() - t) * 1000)
        db.close()
        for i in range(updates):
            key = keys[-1 - i % len(keys)]
            marker = f"推送{i}"
            t = time.perf_counter()
            http("POST", f"{province.url}/api/v1/resources/{code}/records", police,
                 [{"id_number": key, "name": marker}])
            wait(lambda: replica_name(key) == marker, 60, "the push at the county", 0.005)
            from_push.append((time.perf_counter() - t) * 1000)
        st = http("GET", f"{county.url}/api/v1/subscriptions/{sub['id']}", civil)
        print(f"replica: {st['records']} records, state {st['state']}, lag_ms {st['lag_ms']}")
        print(f"  source update → county replica   p50 {pct(from_source, 50):8.0f} ms   p99 {pct(from_source, 99):8.0f} ms"
              f"   max {max(from_source):8.0f} ms   ({updates} updates; the province pulls its source every 1 s)")
        print(f"  push at province → county replica p50 {pct(from_push, 50):7.0f} ms   p99 {pct(from_push, 99):8.0f} ms"
              f"   max {max(from_push):8.0f} ms")
        print(f"  baseline: one query county → province p50 {pct(routed, 50):5.1f} ms   p99 {pct(routed, 99):6.1f} ms")
        p99 = pct(from_source, 99)
        print(f"  source → replica p99 / routed query p50 = {p99 / pct(routed, 50):.1f}; "
              f"target p99 ≤ 5 s: {'met' if p99 <= 5000 else 'MISSED'}")
    finally:
        for n in reversed(nodes):
            n.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--updates", type=int, default=60)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-lag", action="store_true")
    args = ap.parse_args()
    print(f"govnode exchange benchmark; {env_info()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="govnode-bench-exchange-") as tmp:
        base = Path(tmp)
        (base / "load").mkdir()
        (base / "lag").mkdir()
        if not args.skip_load:
            full_load(base / "load", args.rows, args.batch)
        if not args.skip_lag:
            lag(base / "lag", args.updates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
