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

Targets (issue 15): search page p50 ≤ 50 ms; portal 核验 ≤ 1.5 × the API call. Figures are printed; the
script exits 0 whatever they are.
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
    args = ap.parse_args()
    print(f"bench_portal: {args.entries} catalog entries, {args.requests} requests a figure ({env_info()})")
    with tempfile.TemporaryDirectory() as tmp:
        node = init_node(Path(tmp) / COUNTY, COUNTY, "桓台县")
        t0 = time.perf_counter()
        entries = catalog_entries(args.entries)
        asyncio.run(seed(node.home, entries))
        print(f"seeded {len(entries)} entries from {len(province_nodes())} nodes in {time.perf_counter() - t0:.1f} s")
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


if __name__ == "__main__":
    main()
