"""Benchmark (not a test): the portal's server time against the API's, on one real node, in one run.

    python scripts/bench_portal.py [--entries 10000] [--requests 300] [--rounds 3]

A `govnode run` subprocess (桓台县, SQLite, durable audit records) holds `--entries` catalog entries as a
county holds a province's catalog: from the province, its cities and their counties (154 nodes), each
signed by its origin, written to the node's database before it starts. A clerk signs in to the portal (the
initial password changed, as the portal asks). Then, one request at a time over a kept-alive loopback
connection (so a request's time is the server's, plus well under a tenth of a millisecond):

- the catalog search page (数据目录, with its facet counts), over a mix of searches: none, a keyword, a
  level, a keyword with a share type, a node, a far page; beside the API's catalog search with the same
  narrowing (no facets), for scale;
- a resource's page, over random entries; beside the API's GET of the same entry;
- a portal 核验 (the form posted, the result page rendered) against the same verify through the API with a
  department's token, on a local resource of 10,000 people; the two alternate for `--rounds` rounds and the
  ratio is the median of the rounds' p50 ratios.

Figures (issue 16), in the same run:
- the node's audit log holds `--audit-records` records (default 1,000,000) over the last 90 days, chained
  and counted into the figures' running totals as the node's journal would have, before it starts; an
  operator opens the figures page (绩效统计) for 7, 30 and 90 days, beside the API's `GET /api/v1/stats`
  (which reads the audit log) and the home page, for scale;
- the CPU the journal spends keeping the figures while a node serves 1,000 calls/s: a minute of calls
  (60,000 audit records, in batches of 24 as the journal commits them under load) appended to a fresh
  database by the journal's own writer with the figures' tally and without it, alternating for
  `--rounds` rounds; the difference is the figures' cost.

Targets (issue 15): search page p50 ≤ 50 ms; portal 核验 ≤ 1.5 × the API call. Issue 16: the figures page
≤ 200 ms of server time with 1,000,000 audit records; the CPU per minute is reported. Figures are printed;
the script exits 0 whatever they are.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import add_dept, cpu_seconds, env_info, govnode, init_node, last_line  # noqa: E402

from federation.signing import generate_signing_key, sign_json  # noqa: E402
from node.ids import make_gb11643, make_gb32100, now_ms  # noqa: E402

COUNTY, POLICE, CIVIL = "370321", make_gb32100("11370321MB", 1), make_gb32100("11370321MB", 2)
PASSWORD = "基准测试-2026a"
WORDS = ["户籍人口", "低保对象", "企业登记", "不动产登记", "婚姻登记", "社会保险", "医疗救助", "残疾人", "特困人员",
         "住房公积金", "车辆登记", "出生医学证明", "死亡医学证明", "学籍", "营业执照", "纳税信用", "排污许可"]
ITEM_NAMES = [("姓名", "name"), ("出生日期", "birth_date"), ("住址", "address"), ("联系电话", "phone"),
              ("登记日期", "registered_at"), ("登记机关", "authority"), ("状态", "status"), ("备注", "remark")]
ENTRY = {
    "classification": "101001", "name": "桓台县户籍人口基本信息（基准）", "category": "base", "format": "database",
    "items": [{"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True,
               "check": "gb11643"},
              {"name": "姓名", "field": "name", "type": "C", "length": 50},
              {"name": "出生日期", "field": "birth_date", "type": "D"},
              {"name": "手机号码", "field": "phone", "type": "C", "length": 11, "sensitive": True}],
    "share": {"type": "unconditional", "methods": ["api"]}, "update_cycle": "daily",
}


def province_nodes() -> list[str]:
    """山东省, 16 cities and 137 counties: the size of a province's tree (154 nodes)."""
    cities = [f"37{c:02d}00" for c in range(1, 17)]
    counties = [f"{city[:4]}{n:02d}" for city in cities for n in range(1, 10)][:137]
    return ["370000", *cities, *counties]


def catalog_entries(count: int) -> list[dict[str, Any]]:
    rng = random.Random(15)
    nodes = province_nodes()
    keys = {n: generate_signing_key("1") for n in nodes}
    serial: dict[str, int] = {}
    out = []
    for i in range(count):
        node = rng.choice(nodes)
        serial[node] = serial.get(node, 0) + 1
        dept_no = rng.randrange(1, 15)
        word = rng.choice(WORDS)
        items = [{"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True}]
        items += [{"name": n, "field": f, "type": "C", "length": 100} for n, f in rng.sample(ITEM_NAMES, rng.randrange(3, 8))]
        share = rng.choice([{"type": "unconditional", "condition": "", "basis": "", "methods": ["api"]},
                            {"type": "conditional", "condition": "用于业务协同核验", "basis": "", "methods": ["api", "table"]},
                            {"type": "none", "condition": "", "basis": "相关法规", "methods": ["api"]}])
        entry = {
            "type": "catalog_entry", "kind": "resource", "code": f"101001/{node}{serial[node]:06d}", "node": node,
            "seq": serial[node], "version": 1, "deleted": False, "updated_at": now_ms(),
            "name": f"{word}信息（{node}-{serial[node]}）", "category": rng.choice(["base", "theme", "department"]),
            "provider": {"dept": make_gb32100(f"11{node}", dept_no), "name": f"{node}第{dept_no}部门"},
            "summary": f"{word}相关的政务信息资源", "format": "database", "items": items, "share": share,
            "open": {"public": False, "condition": ""}, "update_cycle": rng.choice(["daily", "monthly", "realtime"]),
            "published_at": "2026-01-01", "related": [],
        }
        out.append(sign_json(entry, node, keys[node]))
    return out


async def seed(home: Path, entries: list[dict[str, Any]]) -> None:
    """Write the entries into the node's database as the federation's replication would have."""
    from node.catalog.service import CatalogService
    from node.config import load_config
    from node.db import make_engine, upgrade, write_tx

    config = load_config(home)
    engine = make_engine(config.database, config.sqlite_synchronous)
    try:
        await upgrade(engine, config.database.schema_)
        catalog = CatalogService(engine, config.node.id, generate_signing_key("1"))
        for i in range(0, len(entries), 1000):
            async with write_tx(engine) as conn:
                await catalog.apply_received_many(entries[i:i + 1000], conn)
    finally:
        await engine.dispose()


class Client:
    """One kept-alive connection, with the portal's cookies."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                ) -> tuple[int, bytes, float]:
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        t0 = time.perf_counter()
        try:
            self.conn.request(method, path, body=body, headers=h)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closes a connection idle for 75 s (aiohttp's keep-alive timeout), which a loaded
            # machine reaches between two phases: open a new one and time the request again.
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.conn.host, self.conn.port, timeout=60)
            t0 = time.perf_counter()
            self.conn.request(method, path, body=body, headers=h)
            resp = self.conn.getresponse()
        data = resp.read()
        elapsed = (time.perf_counter() - t0) * 1000
        for name, value in resp.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                val = rest.split(";", 1)[0]
                if "max-age=0" in value.lower() or val in ('""', ""):
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = val
        return resp.status, data, elapsed

    def form(self, path: str, fields: dict[str, str]) -> tuple[int, bytes, float]:
        return self.request("POST", path, urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})


def csrf_of(page: bytes) -> str:
    m = re.search(rb'name="csrf" value="([^"]+)"', page)
    assert m, "no form token on the page"
    return m.group(1).decode()


def sign_in(client: Client, username: str, initial: str) -> str:
    """Sign in and set the password; returns the session's form token."""
    _, page, _ = client.request("GET", "/portal/login")
    status, _, _ = client.form("/portal/login", {"csrf": csrf_of(page), "username": username, "password": initial,
                                                 "next": "/portal/"})
    assert status == 303, status
    _, page, _ = client.request("GET", "/portal/password")
    token = csrf_of(page)
    status, _, _ = client.form("/portal/password", {"csrf": token, "new": PASSWORD, "confirm": PASSWORD})
    assert status == 303, status
    return token


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def line(label: str, xs: list[float], cpu_ms: float) -> str:
    return (f"{label:<44} p50 {pct(xs, 50):7.2f} ms   p90 {pct(xs, 90):7.2f} ms   p99 {pct(xs, 99):7.2f} ms   "
            f"node CPU {cpu_ms:6.2f} ms/request   ({len(xs)})")


class Timings(list):
    """Milliseconds per request, and the node's CPU milliseconds per request over the same requests (which a
    busy machine disturbs less than wall-clock time)."""

    cpu_ms: float = float("nan")


def timed(client: Client, calls: list[tuple[str, str, bytes | None, dict[str, str]]], pid: int,
          warmup: int = 20) -> Timings:
    out = Timings()
    cpu0 = 0.0
    for i, (method, path, body, headers) in enumerate(calls):
        if i == warmup:
            cpu0 = cpu_seconds(pid)
        status, data, ms = client.request(method, path, body, headers)
        assert status == 200, (status, path, data[:300])
        if i >= warmup:
            out.append(ms)
    out.cpu_ms = (cpu_seconds(pid) - cpu0) * 1000 / max(1, len(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--audit-records", type=int, default=1_000_000)
    args = ap.parse_args()
    print(f"bench_portal: {args.entries} catalog entries, {args.requests} requests a figure ({env_info()})")
    with tempfile.TemporaryDirectory() as tmp:
        node = init_node(Path(tmp) / COUNTY, COUNTY, "桓台县")
        t0 = time.perf_counter()
        entries = catalog_entries(args.entries)
        asyncio.run(seed(node.home, entries))
        print(f"seeded {len(entries)} entries from {len(province_nodes())} nodes in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        totals = asyncio.run(seed_audit(node.home, args.audit_records))
        print(f"seeded {args.audit_records} audit records ({totals} running-total rows) in "
              f"{time.perf_counter() - t0:.1f} s")
        node.start()
        try:
            run(node, entries, args)
        finally:
            node.stop()


def run(node: Any, entries: list[dict[str, Any]], args: argparse.Namespace) -> None:
    police = add_dept(node, POLICE, "桓台县公安局")
    civil = add_dept(node, CIVIL, "桓台县民政局")
    initial = last_line(govnode("user", "add", "zhangsan", "--dept", CIVIL, "--name", "张三", "--dir", str(node.home)))
    api = Client(node.url)
    body = json.dumps(ENTRY, ensure_ascii=False).encode()
    status, data, _ = api.request("POST", "/api/v1/catalog", body, {"Authorization": f"Bearer {police}",
                                                                   "Content-Type": "application/json"})
    assert status == 201, data
    code = json.loads(data)["code"]
    people = [make_gb11643("370321", "19900101", i) for i in range(1000)] + \
             [make_gb11643("370321", "19850101", i) for i in range(1000)]
    records = [{"id_number": p, "name": f"居民{i}", "birth_date": "1990-01-01", "phone": f"138{i:08d}"}
               for i, p in enumerate(people)]
    status, data, _ = api.request("POST", f"/api/v1/resources/{code}/records",
                                  json.dumps(records, ensure_ascii=False).encode(),
                                  {"Authorization": f"Bearer {police}", "Content-Type": "application/json"})
    assert status == 200, data
    portal = Client(node.url)
    token = sign_in(portal, "zhangsan", initial)
    rng = random.Random(7)
    n = args.requests
    cpu0 = cpu_seconds(node.pid)

    searches = [{}, {"q": "户籍"}, {"level": "county"}, {"q": "登记", "share_type": "conditional"},
                {"node": "370300"}, {"q": "人口 信息"}, {"page": "120"}, {"category": "theme", "level": "city"}]
    api_searches = [{k: v for k, v in s.items() if k != "level"} for s in searches]
    get = {"Authorization": f"Bearer {civil}"}
    page = timed(portal, [("GET", "/portal/catalog?" + urlencode(searches[i % len(searches)]), None, {})
                          for i in range(n + 20)], node.pid)
    search_api = timed(api, [("GET", "/api/v1/catalog?" + urlencode(api_searches[i % len(searches)]), None, get)
                             for i in range(n + 20)], node.pid)
    codes = [rng.choice(entries)["code"] for _ in range(n + 20)]
    resource = timed(portal, [("GET", f"/portal/catalog/{c}", None, {}) for c in codes], node.pid)
    resource_api = timed(api, [("GET", f"/api/v1/catalog/{c}", None, get) for c in codes], node.pid)
    print()
    print(line("catalog search page (数据目录, with facets)", page, page.cpu_ms))
    print(line("  API catalog search, same narrowing", search_api, search_api.cpu_ms))
    print(line("resource page", resource, resource.cpu_ms))
    print(line("  API GET of the entry", resource_api, resource_api.cpu_ms))
    print(f"search page p50 / API search p50: {pct(page, 50) / pct(search_api, 50):.2f}   "
          f"resource page / API get: {pct(resource, 50) / pct(resource_api, 50):.2f}")

    form_headers = {"Content-Type": "application/x-www-form-urlencoded"}
    json_headers = {"Authorization": f"Bearer {civil}", "Content-Type": "application/json"}
    portal_runs: list[Timings] = []
    api_runs: list[Timings] = []
    for _ in range(args.rounds):
        picks = [rng.randrange(len(people)) for _ in range(n + 20)]
        portal_runs.append(timed(portal, [("POST", f"/portal/catalog/{code}/verify", urlencode(
            {"csrf": token, "key": people[i], "v_name": f"居民{i}", "v_birth_date": "1990-01-01"}).encode(),
            form_headers) for i in picks], node.pid))
        api_runs.append(timed(api, [("POST", f"/api/v1/resources/{code}/verify", json.dumps(
            {"key": people[i], "fields": {"name": f"居民{i}", "birth_date": "1990-01-01"}}, ensure_ascii=False).encode(),
            json_headers) for i in picks], node.pid))
    cpu = cpu_seconds(node.pid) - cpu0
    ratios = [pct(p, 50) / pct(a, 50) for p, a in zip(portal_runs, api_runs)]
    cpu_ratios = [p.cpu_ms / a.cpu_ms for p, a in zip(portal_runs, api_runs)]
    print(line("portal 核验 (form posted, result page)", [x for r in portal_runs for x in r],
               statistics.mean(r.cpu_ms for r in portal_runs)))
    print(line("  API verify, same keys and fields", [x for r in api_runs for x in r],
               statistics.mean(r.cpu_ms for r in api_runs)))
    print(f"portal 核验 p50 / API verify p50, per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f}")
    print(f"the same in node CPU per request, per round: {', '.join(f'{r:.2f}' for r in cpu_ratios)}; "
          f"median {statistics.median(cpu_ratios):.2f}")
    print(f"node CPU during the measurements: {cpu:.1f} s")
    print()
    print(f"targets: search page p50 ≤ 50 ms: {pct(page, 50):.1f} ms "
          f"({'met' if pct(page, 50) <= 50 else 'NOT met'}); portal 核验 ≤ 1.5 × API: "
          f"{statistics.median(ratios):.2f} ({'met' if statistics.median(ratios) <= 1.5 else 'NOT met'})")
    figures_pages(node, args)
    figures_upkeep(args.rounds)


# Figures (issue 16) -------------------------------------------------------------------------------------

DEPTS = [make_gb32100("11370321MB", i) for i in range(1, 31)]
RESOURCES = [f"101001/370321{i:06d}" for i in range(900, 940)]
OTHER_NODES = ["370303", "370302", "370000", "370300", "370305"]


def audit_records(n: int, seed: int = 16) -> Any:
    """`n` audit records over the last 90 days, as a county's API, portal and federation would leave them: mostly
    verifies and queries of its departments, calls delivered from other nodes, catalog searches, pages."""
    rng = random.Random(seed)
    end = now_ms()
    start = end - 90 * 86_400_000
    step = (end - start) // max(1, n)
    for i in range(n):
        roll = rng.random()
        rec: dict[str, Any] = {"at": start + i * step, "request_id": f"r{i}", "method": "POST", "role": "dept",
                               "outcome": "ok" if rng.random() > 0.02 else "NOT_FOUND",
                               "status": 200, "latency_ms": rng.randrange(1, 40)}
        if roll < 0.55:
            rec.update(action=rng.choice(["sharing.verify", "sharing.verify", "sharing.query", "sharing.compare"]),
                       actor=f"370321/{rng.choice(DEPTS)}", resource=rng.choice(RESOURCES), path="/api/v1/…")
        elif roll < 0.65:
            rec.update(action="portal.verify.post", actor=f"370321/{rng.choice(DEPTS)}", user="clerk",
                       resource=rng.choice(RESOURCES), path="/portal/…")
        elif roll < 0.85:
            node = rng.choice(OTHER_NODES)
            rec.update(action="federation.deliver", actor=node, role="node", resource=rng.choice(RESOURCES),
                       path="/federation/v1/messages",
                       details={"kind": "service.call", "op": "verify",
                                "requester": f"{node}/{make_gb32100('11' + node + 'MB', rng.randrange(1, 9))}"})
        else:
            rec.update(action=rng.choice(["catalog.search", "portal.catalog", "portal.home"]), method="GET",
                       actor=f"370321/{rng.choice(DEPTS)}", path="/api/v1/catalog")
        yield rec


async def seed_audit(home: Path, n: int) -> int:
    """Chain `n` records into the node's audit log and count them into the running totals, as the journal
    does (the same functions), and record the chain as checked to its head, as a running node would have."""
    from node.audit import store as audit_store
    from node.audit.service import COUNTER, GENESIS, _normalise, record_hash
    from node.config import load_config
    from node.db import make_engine, next_counter_sync, upgrade, write_tx
    from node.figures import store as figures_store

    config = load_config(home)
    engine = make_engine(config.database, config.sqlite_synchronous)

    def work(conn: Any) -> int:
        next_counter_sync(conn, COUNTER, n)
        prev, rows, recs = GENESIS, [], []
        for seq, rec in enumerate(audit_records(n), 1):
            row = _normalise(rec, seq)
            row["prev_hash"] = prev
            row["hash"] = prev = record_hash(prev, row)
            rows.append(row)
            recs.append(rec)
            if len(rows) == 20_000:
                audit_store.insert_many(conn, rows)
                figures_store.tally(conn, recs)
                rows, recs = [], []
        if rows:
            audit_store.insert_many(conn, rows)
            figures_store.tally(conn, recs)
        conn.execute(figures_store.audit_checks.insert().values(id=1, seq=n, hash=prev, checked_at=now_ms()))
        return int(conn.execute(sa.select(sa.func.count()).select_from(figures_store.figures_daily)).scalar())

    try:
        await upgrade(engine, config.database.schema_)
        async with write_tx(engine) as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


def figures_pages(node: Any, args: argparse.Namespace) -> None:
    """The figures page's server time over a log of `--audit-records` records."""
    add_dept(node, "OPERATOR", "桓台县大数据中心", "operator")
    operator_token = add_dept(node, "OPSAPI", "桓台县大数据中心（接口）", "operator")
    initial = last_line(govnode("user", "add", "wangwu", "--dept", "OPERATOR", "--dir", str(node.home)))
    op = Client(node.url)
    sign_in(op, "wangwu", initial)
    api = Client(node.url)
    n = max(40, args.requests // 3)
    home = timed(op, [("GET", "/portal/", None, {})] * (n + 20), node.pid)
    pages = {d: timed(op, [("GET", f"/portal/figures?days={d}", None, {})] * (n + 20), node.pid)
             for d in (7, 30, 90)}
    subtree = timed(op, [("GET", "/portal/figures?days=30&scope=subtree", None, {})] * (n + 20), node.pid)
    day = 86_400_000
    stats = timed(api, [("GET", f"/api/v1/stats?since={now_ms() - 7 * day}", None,
                         {"Authorization": f"Bearer {operator_token}"})] * 13, node.pid, warmup=3)
    print()
    print(line("home page (首页, operator: with its alerts)", home, home.cpu_ms))
    for d, t in pages.items():
        print(line(f"figures page (绩效统计), {d} days", t, t.cpu_ms))
    print(line("figures page, 30 days, with the subtree", subtree, subtree.cpu_ms))
    print(line("  API GET /api/v1/stats, 7 days (reads the log)", stats, stats.cpu_ms))
    worst = max(pct(t, 50) for t in [*pages.values(), subtree])
    print(f"figures page p50 / home page p50: {', '.join(f'{d} days {pct(t, 50) / pct(home, 50):.2f}' for d, t in pages.items())}; "
          f"API stats (7 days) / figures page (7 days): {pct(stats, 50) / pct(pages[7], 50):.1f}")
    print(f"target: figures page ≤ 200 ms with {args.audit_records} audit records: worst p50 {worst:.1f} ms "
          f"({'met' if worst <= 200 else 'NOT met'})")


def figures_upkeep(rounds: int, per_minute: int = 60_000, batch: int = 24) -> None:
    """The CPU the journal spends on the figures' running totals for a minute of calls at 1,000 calls/s."""
    import resource

    from node.audit.service import AuditLog
    from node.config import DatabaseConfig
    from node.db import make_engine, sqlite_writer_twin, upgrade
    from node.figures import store as figures_store

    recs = list(audit_records(per_minute, seed=17))
    now = now_ms()
    for r in recs:  # a minute of today's calls
        r["at"] = now

    def cpu() -> float:
        u = resource.getrusage(resource.RUSAGE_SELF)
        return u.ru_utime + u.ru_stime

    async def one(folder: Path, tally: bool) -> float:
        engine = make_engine(DatabaseConfig(url=f"sqlite+aiosqlite:///{folder}/bench.db"), "FULL")
        await upgrade(engine)
        await engine.dispose()
        twin = sqlite_writer_twin(engine)
        assert twin is not None
        saved = figures_store.tally
        if not tally:
            figures_store.tally = lambda conn, records: None  # type: ignore[assignment]
        try:
            with twin.connect() as conn:
                conn.info["write"] = True
                c0 = cpu()
                for i in range(0, len(recs), batch):
                    with conn.begin():
                        AuditLog._write(conn, [dict(r) for r in recs[i:i + batch]])
                return cpu() - c0
        finally:
            figures_store.tally = saved
            twin.dispose()

    with_t: list[float] = []
    without: list[float] = []
    for r in range(rounds):
        for tally, out in ((False, without), (True, with_t)):
            with tempfile.TemporaryDirectory() as tmp:
                out.append(asyncio.run(one(Path(tmp), tally)))
    extra = [a - b for a, b in zip(with_t, without)]
    print()
    print(f"keeping the figures at 1,000 calls/s (a minute: {per_minute} records, batches of {batch}, SQLite):")
    print(f"  journal CPU a minute without the tally: {', '.join(f'{x:.2f}' for x in without)} s; "
          f"with it: {', '.join(f'{x:.2f}' for x in with_t)} s")
    print(f"  the figures' cost: median {statistics.median(extra):.2f} CPU s a minute "
          f"({statistics.median(extra) / 60 * 100:.1f} % of a core); with / without: "
          f"{statistics.median(a / b for a, b in zip(with_t, without)):.2f}")


if __name__ == "__main__":
    main()
