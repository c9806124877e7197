"""Fault drill (not a test): "an outage delays, it never loses", shown on a nine-node tree.

    python scripts/drill_faults.py [--rounds 100] [--seed 1]
    python scripts/drill_faults.py --db-cuts [--rounds 20]

A province, two cities and six counties run as `govnode run` subprocesses (SQLite), joined through real
invites. Departments drive a steady mixed load: catalog registrations at every level, record pushes at
the counties, routed queries between counties, applications and feedback to other counties'
departments, and record pushes at the province into a resource that a county keeps a replica of
(a replica subscription, granted through a real application). Meanwhile, each round, a random node is
killed with SIGKILL and started again on the same home and port; the drill measures how long the node
takes to converge (it holds every entry acknowledged anywhere before its death, and its parent holds
every entry it acknowledged).

With `--db-cuts` the province runs on PostgreSQL (a schema of its own, dropped at the end) reached through
a loopback TCP proxy this script runs, and each round cuts it instead of killing a node: the proxy refuses
connections or black-holes them (alternately) for `--cut-seconds`, then forwards again. The shared server is
never stopped. It reports the province's answers during the cuts by status and the time until it served a
write again.

At the end the load stops and the drill waits for convergence, then checks and prints:
- every acknowledged write present: entries at every node, records at their node, applications and
  feedback at both ends with the same status, the replica holding every record of its source, outboxes
  drained;
- every message applied exactly once: each application and feedback received once at its provider (one
  `received` event), and how many deliveries were retries acknowledged as duplicates;
- every audit chain intact (`govnode audit verify` on each home) and no stored write without its audit
  record (no audit intent left);
- the errors the load saw, by operation and kind, and the longest time to converge (or to recover).

Exit status 1 when anything acknowledged was lost or applied twice, or a chain is broken. All traffic is on
127.0.0.1; every node (and the proxy) is stopped at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchlib import NodeProcess, env_info, free_port, govnode, last_line, stop_nodes_on_sigterm  # noqa: E402
from support import run_cli  # noqa: E402
from tcpproxy import TcpProxy  # noqa: E402

from node.audit.service import INTENT_GRACE_MS, SWEEP_INTERVAL_S  # noqa: E402
from node.ids import make_gb11643, make_gb32100  # noqa: E402

TREE = [  # (code, name, parent)
    ("370000", "山东省", None),
    ("370300", "淄博市", "370000"), ("370200", "青岛市", "370000"),
    ("370321", "桓台县", "370300"), ("370303", "张店区", "370300"), ("370302", "淄川区", "370300"),
    ("370211", "黄岛区", "370200"), ("370212", "崂山区", "370200"), ("370281", "胶州市", "370200"),
]
# A smaller tree for a quick run (the test suite's smoke test): the province, one city, two counties.
SMALL_TREE = TREE[:2] + TREE[3:5]
FEDERATION = {"pull_interval_s": 2.0, "peer_timeout_s": 5.0}
PG_URL = os.environ.get("GOVNODE_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")

ITEMS = [{"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True},
         {"name": "姓名", "field": "name", "type": "C", "length": 50},
         {"name": "住址", "field": "address", "type": "C", "length": 200}]


def entry(name: str, share: str = "unconditional") -> dict:
    body = {"classification": "101001", "name": name, "category": "base", "format": "database", "items": ITEMS,
            "summary": "故障演练", "share": {"type": share, "methods": ["api", "table"]}, "update_cycle": "realtime"}
    if share == "conditional":
        body["share"]["condition"] = "经审核同意"
    return body


class Drill:
    def __init__(self, base: Path, args: argparse.Namespace) -> None:
        self.base, self.args = base, args
        self.rng = random.Random(args.seed)
        self.tree = SMALL_TREE if args.small else TREE
        self.counties = [c for c, _, p in self.tree if p and p != "370000"]
        self.parent = {c: p for c, _, p in self.tree}
        self.nodes: dict[str, NodeProcess] = {}
        self.tokens: dict[str, dict[str, str]] = defaultdict(dict)  # node -> {"dept", "operator"}
        self.dept_code = {c: make_gb32100(f"11{c}MB", 1) for c, _, _ in self.tree}
        self.resource: dict[str, str] = {}  # node -> its unconditional resource (records pushed there)
        self.conditional: dict[str, str] = {}  # county -> its conditional resource (applications go there)
        self.acked_entries: dict[str, tuple[str, float]] = {}  # code -> (origin, time acknowledged)
        self.acked_keys: dict[str, set[str]] = defaultdict(set)  # resource code -> keys acknowledged
        self.acked_apps: dict[str, tuple[str, str]] = {}  # id -> (applicant node, provider node)
        self.open_apps: dict[tuple[str, str], str] = {}  # (applicant, provider) -> the application awaiting a decision
        self.acked_feedback: dict[str, tuple[str, str]] = {}
        self.errors: Counter = Counter()
        self.ok: Counter = Counter()
        self.serial = 0
        self.pg_schema: str | None = None
        self.proxy: TcpProxy | None = None
        self.cut_answers: Counter = Counter()  # status of the province's answers during cuts
        self.cutting = False
        self.session: aiohttp.ClientSession | None = None

    # -- the tree ------------------------------------------------------------------------------------------

    def init_tree(self) -> None:
        for code, name, parent in self.tree:
            home = self.base / code
            port = free_port()
            argv = ["init", "--dir", str(home), "--node", code, "--name", name, "--listen", f"127.0.0.1:{port}"]
            if parent:
                argv += ["--parent-url", self.nodes[parent].url]
            govnode(*argv)
            cfg = home / "config.yaml"
            doc = yaml.safe_load(cfg.read_text(encoding="utf-8"))
            doc["federation"] = dict(FEDERATION)
            if code == "370000" and self.args.db_cuts:
                assert self.proxy is not None
                self.pg_schema = f"gn_drill_{os.getpid()}_{self.rng.randrange(10**6)}"
                doc["database"] = {"url": PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{self.proxy.port}"),
                                   "schema": self.pg_schema, "connect_timeout_s": 2.0, "statement_timeout_s": 3.0}
            cfg.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
            node = NodeProcess(home, port)
            if parent:
                token = last_line(govnode("invite", code, "--dir", str(self.nodes[parent].home)))
                govnode("join", self.nodes[parent].url, token, "--dir", str(home))
            node.start()
            self.nodes[code] = node
            self.tokens[code]["dept"] = last_line(govnode("dept", "add", self.dept_code[code], "--dir", str(home),
                                                          "--name", f"{name}公安局"))
            self.tokens[code]["operator"] = last_line(govnode("dept", "add", "OPERATOR", "--dir", str(home),
                                                              "--name", f"{name}大数据中心", "--role", "operator"))

    async def call(self, node: str, method: str, path: str, who: str = "dept", body: Any = None,
                   ctype: str = "application/json", timeout: float = 20) -> tuple[int, Any]:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {self.tokens[node][who]}"}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
            headers["Content-Type"] = ctype
        async with self.session.request(method, self.nodes[node].url + path, data=data, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, text

    async def must(self, node: str, method: str, path: str, who: str = "dept", body: Any = None,
                   ok: tuple[int, ...] = (200, 201)) -> Any:
        for _ in range(100):  # set-up calls may meet a neighbour's feed not yet pulled: try again
            status, doc = await self.call(node, method, path, who, body)
            if status in ok:
                return doc
            await asyncio.sleep(0.3)
        raise RuntimeError(f"{method} {path} at {node}: {status} {doc}")

    async def setup(self) -> None:
        for code, name, _ in self.tree:
            doc = await self.must(code, "POST", "/api/v1/catalog", body=entry(f"{name}演练人口信息"))
            self.resource[code] = doc["code"]
            self.acked_entries[doc["code"]] = (code, time.monotonic())
            if code in self.counties:
                doc = await self.must(code, "POST", "/api/v1/catalog", body=entry(f"{name}演练条件共享信息", "conditional"))
                self.conditional[code] = doc["code"]
                self.acked_entries[doc["code"]] = (code, time.monotonic())
        await self.wait(lambda: self.entries_everywhere(set(self.acked_entries)), 120, "the set-up entries everywhere")
        # A replica of the province's resource at the last county, granted through a real application.
        sub_node, prov = self.counties[-1], "370000"
        code = self.resource[prov]
        app = await self.must(sub_node, "POST", "/api/v1/applications", body={
            "resource": code, "ops": ["query", "subscribe"], "fields": ["id_number", "name", "address"],
            "purpose": "演练数据回流", "basis": "故障演练"}, ok=(201,))
        await self.must(prov, "POST", f"/api/v1/applications/{app['id']}/review", "operator", {"decision": "accept"})
        await self.must(prov, "POST", f"/api/v1/applications/{app['id']}/decision", body={"decision": "approve"})
        sub = await self.must(sub_node, "POST", "/api/v1/subscriptions", body={"resource": code, "mode": "replica"},
                              ok=(201,))
        self.subscription = (sub_node, sub["id"], code)

    # -- the load ------------------------------------------------------------------------------------------

    def person(self) -> dict:
        self.serial += 1
        n = self.serial
        birth = f"{1950 + n // 3360 % 50:04d}{n // 280 % 12 + 1:02d}{n // 10 % 28 + 1:02d}"
        region = self.counties[n % len(self.counties)]
        return {"id_number": make_gb11643(region, birth, n % 997), "name": f"居民{n}", "address": f"演练路{n}号"}

    async def op(self, kind: str) -> None:
        rng = self.rng
        try:
            if kind == "register":
                node = rng.choice([c for c, _, _ in self.tree])
                status, doc = await self.call(node, "POST", "/api/v1/catalog", body=entry(f"演练登记{self.serial}"))
                self.serial += 1
                if status == 201:
                    self.acked_entries[doc["code"]] = (node, time.monotonic())
            elif kind == "push":
                node = rng.choice(self.counties + ["370000"])
                people = [self.person() for _ in range(3)]
                code = self.resource[node]
                status, doc = await self.call(node, "POST", f"/api/v1/resources/{code}/records", body=people)
                if status == 200:
                    self.acked_keys[code].update(p["id_number"] for p in people)
            elif kind == "query":
                a, b = rng.sample(self.counties, 2)
                code = self.resource[b]
                keys = list(self.acked_keys[code]) or ["11010519491231002X"]
                status, doc = await self.call(a, "POST", f"/api/v1/resources/{code}/query",
                                              body={"key": rng.choice(keys), "fields": ["name"]})
            elif kind == "apply":
                # One application a pair may await its decision: a pair that has one withdraws it (a mirrored
                # update crossing the tree) before it applies again.
                a, b = rng.sample(self.counties, 2)
                if (a, b) in self.open_apps:
                    app_id = self.open_apps[(a, b)]
                    kind = "withdraw"
                    status, doc = await self.call(a, "POST", f"/api/v1/applications/{app_id}/withdraw",
                                                  body={"reason": "演练撤回"})
                    if status in (200, 409):  # 409: an earlier withdrawal whose answer was lost did it
                        self.open_apps.pop((a, b), None)  # another caller may have withdrawn it
                else:
                    status, doc = await self.call(a, "POST", "/api/v1/applications", body={
                        "resource": self.conditional[b], "ops": ["query"], "fields": ["name"],
                        "purpose": "演练申请", "basis": "故障演练"})
                    if status == 201:
                        self.acked_apps[doc["id"]] = (a, b)
                        self.open_apps[(a, b)] = doc["id"]
            else:  # feedback
                a, b = rng.sample(self.counties, 2)
                keys = list(self.acked_keys[self.resource[b]]) or ["11010519491231002X"]
                status, doc = await self.call(a, "POST", "/api/v1/feedback", body={
                    "resource": self.resource[b], "key": rng.choice(keys), "fields": ["name"],
                    "description": "演练：姓名疑似有误"})
                if status == 201:
                    self.acked_feedback[doc["id"]] = (a, b)
            if status < 300:
                self.ok[kind] += 1
            else:
                code = doc.get("error", {}).get("code") if isinstance(doc, dict) else "?"
                self.errors[(kind, f"{status} {code}")] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.errors[(kind, type(exc).__name__)] += 1

    async def load(self, stop: asyncio.Event, callers: int = 4) -> None:
        kinds = ["register", "push", "push", "query", "query", "apply", "feedback"]

        async def caller() -> None:
            while not stop.is_set():
                await self.op(self.rng.choice(kinds))
                await asyncio.sleep(self.args.pause)

        await asyncio.gather(*(caller() for _ in range(callers)))

    # -- reading the nodes' databases (checks only; never a write) ---------------------------------------------

    async def sql(self, node: str, statement: str, params: tuple = ()) -> list[tuple]:
        if node == "370000" and self.pg_schema:
            import asyncpg

            conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"),
                                         server_settings={"search_path": self.pg_schema})
            try:
                pg = statement
                for i in range(len(params)):
                    pg = pg.replace("?", f"${i + 1}", 1)
                return [tuple(r) for r in await conn.fetch(pg, *params)]
            finally:
                await conn.close()

        def read() -> list[tuple]:
            conn = sqlite3.connect(f"file:{self.base / node / 'govnode.db'}?mode=ro", uri=True, timeout=30)
            try:
                return conn.execute(statement, params).fetchall()
            finally:
                conn.close()

        return await asyncio.to_thread(read)

    async def codes_at(self, node: str) -> set[str]:
        return {r[0] for r in await self.sql(node, "SELECT code FROM catalog_entries WHERE deleted = ?", (False,))}

    async def entries_everywhere(self, codes: set[str]) -> bool:
        for node in self.nodes:
            if not codes <= await self.codes_at(node):
                return False
        return True

    async def wait(self, pred: Any, timeout: float, what: str) -> float:
        t0 = time.monotonic()
        while True:
            try:
                if await pred():
                    return time.monotonic() - t0
            except (sqlite3.OperationalError, OSError):
                pass  # a database being written at that instant: look again
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{what} not reached within {timeout:g} s")
            await asyncio.sleep(0.25)

    # -- faults ---------------------------------------------------------------------------------------------

    async def kill_round(self, r: int) -> float | None:
        victim = self.rng.choice(list(self.nodes))
        node = self.nodes[victim]
        before = {c for c, (_o, _t) in self.acked_entries.items()}
        own = {c for c, (o, _t) in self.acked_entries.items() if o == victim}
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
        await asyncio.sleep(self.rng.uniform(0.2, self.args.down))
        t0 = time.monotonic()
        await asyncio.to_thread(node.start)

        async def converged() -> bool:
            if not before <= await self.codes_at(victim):
                return False
            parent = self.parent[victim]
            return parent is None or own <= await self.codes_at(parent)

        try:
            await self.wait(converged, self.args.converge_timeout, f"node {victim} converged")
        except TimeoutError:
            print(f"round {r}: {victim} did not converge within {self.args.converge_timeout:g} s", flush=True)
            return None
        took = time.monotonic() - t0
        if r % 10 == 0 or r == 1:
            print(f"round {r}: killed {victim}, converged {took:.1f} s after the restart began; "
                  f"acknowledged so far: {len(self.acked_entries)} entries, "
                  f"{sum(len(v) for v in self.acked_keys.values())} records, {len(self.acked_apps)} applications, "
                  f"{len(self.acked_feedback)} feedback", flush=True)
        return took

    async def cut_round(self, r: int) -> float | None:
        assert self.proxy is not None
        mode = "refuse" if r % 2 else "blackhole"
        self.cutting = True
        self.proxy.mode = mode
        t_end = time.monotonic() + self.args.cut_seconds
        while time.monotonic() < t_end:  # the province's answers during the cut, besides the load's
            try:
                status, doc = await self.call("370000", "POST", f"/api/v1/resources/{self.resource['370000']}/records",
                                              body=[self.person()], timeout=15)
                code = doc.get("error", {}).get("code", "") if isinstance(doc, dict) else ""
                self.cut_answers[f"{status} {code}".strip()] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.cut_answers[type(exc).__name__] += 1
            await asyncio.sleep(0.2)
        self.proxy.mode = "forward"
        self.cutting = False
        t0 = time.monotonic()
        code = self.resource["370000"]

        async def serves() -> bool:
            people = [self.person()]
            try:
                status, _ = await self.call("370000", "POST", f"/api/v1/resources/{code}/records", body=people,
                                            timeout=10)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False
            if status == 200:
                self.acked_keys[code].update(p["id_number"] for p in people)
            return status == 200

        try:
            took = await self.wait(serves, self.args.converge_timeout, "the province serving writes again")
        except TimeoutError:
            print(f"cut {r} ({mode}): the province did not recover within {self.args.converge_timeout:g} s", flush=True)
            return None
        took = time.monotonic() - t0
        print(f"cut {r} ({mode}, {self.args.cut_seconds:g} s): writes served again {took:.2f} s after the cut ended",
              flush=True)
        return took

    # -- the end --------------------------------------------------------------------------------------------

    async def final_checks(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        codes = set(self.acked_entries)
        try:
            found["converge_s"] = await self.wait(lambda: self.entries_everywhere(codes), self.args.final_timeout,
                                                  "every entry at every node")
        except TimeoutError:
            found["converge_s"] = None
        missing_entries = {n: len(codes - await self.codes_at(n)) for n in self.nodes}
        found["entries_missing"] = {n: m for n, m in missing_entries.items() if m}

        missing_keys: dict[str, int] = {}
        for node, code in self.resource.items():
            keys = {r[0] for r in await self.sql(node, "SELECT key FROM records WHERE resource_code = ? AND deleted = ?",
                                                 (code, False))}
            lost = self.acked_keys[code] - keys
            if lost:
                missing_keys[node] = len(lost)
        found["records_missing"] = missing_keys

        async def mirrored(table: str, acked: dict[str, tuple[str, str]]) -> dict[str, int]:
            out: Counter = Counter()
            for ident, (a, b) in acked.items():
                at_b = await self.sql(b, f"SELECT status, doc FROM {table} WHERE id = ?", (ident,))
                at_a = await self.sql(a, f"SELECT status FROM {table} WHERE id = ?", (ident,))
                if not at_b:
                    out["missing at the provider"] += 1
                    continue
                if not at_a:
                    out["missing at the requester"] += 1
                elif at_a[0][0] != at_b[0][0]:
                    out["status differs"] += 1
                received = sum(1 for h in json.loads(at_b[0][1])["history"] if h.get("event") == "received")
                if received != 1:
                    out[f"received {received} times"] += 1
            return dict(out)

        async def settled() -> bool:
            return not (await mirrored("applications", self.acked_apps) or await mirrored("feedback", self.acked_feedback)
                        or await self.outbox_total())

        try:
            await self.wait(settled, self.args.final_timeout, "applications and feedback mirrored, outboxes drained")
        except TimeoutError:
            pass
        found["applications"] = await mirrored("applications", self.acked_apps)
        found["feedback"] = await mirrored("feedback", self.acked_feedback)
        found["outbox_left"] = await self.outbox_total()

        sub_node, sid, code = self.subscription

        async def replica_caught_up() -> bool:
            status, s = await self.call(sub_node, "GET", f"/api/v1/subscriptions/{sid}")
            held = {r[0] for r in await self.sql("370000", "SELECT key FROM records WHERE resource_code = ? AND deleted = ?",
                                                 (code, False))}
            return status == 200 and s.get("records") == len(held)

        try:
            await self.wait(replica_caught_up, self.args.final_timeout, "the replica caught up")
            found["replica"] = "caught up"
        except TimeoutError:
            status, s = await self.call(sub_node, "GET", f"/api/v1/subscriptions/{sid}")
            found["replica"] = f"behind: {s}"

        # Deliveries of one message id recorded more than once at a node: retries a sender made after a kill
        # (acknowledged as duplicates; what they carried was applied once, as the `received` counts show).
        dup = 0
        for node in self.nodes:
            rows = await self.sql(node, "SELECT message_id, COUNT(*) FROM audit_log WHERE action = ? AND message_id IS NOT NULL "
                                        "GROUP BY message_id HAVING COUNT(*) > 1", ("federation.deliver",))
            dup += len(rows)
        found["duplicate_deliveries"] = dup

        async def no_intents() -> bool:
            return all([not (await self.sql(n, "SELECT COUNT(*) FROM audit_intents"))[0][0] for n in self.nodes])

        try:
            # An intent left by a call whose record failed is swept once it is older than the grace and the
            # sweep comes round: up to grace + interval (2 minutes) after the call, so wait that and a margin
            # (90 s was shorter than the node's own bound, and one run in the suite ended there).
            await self.wait(no_intents, INTENT_GRACE_MS / 1000 + SWEEP_INTERVAL_S + 30,
                            "every stored write's audit record")
            found["intents_left"] = 0
        except TimeoutError:
            found["intents_left"] = sum([(await self.sql(n, "SELECT COUNT(*) FROM audit_intents"))[0][0] for n in self.nodes])
        chains = {}
        for node, proc in self.nodes.items():
            rc, out, err = await asyncio.to_thread(run_cli, ["audit", "verify", "--dir", str(proc.home)])
            chains[node] = "intact" if rc == 0 else (err.strip() or out.strip())
        found["chains"] = chains
        return found

    async def outbox_total(self) -> int:
        return sum([(await self.sql(n, "SELECT COUNT(*) FROM outbox WHERE kind = ?", ("message",)))[0][0]
                    for n in self.nodes])

    async def run(self) -> int:
        self.session = aiohttp.ClientSession()
        try:
            await asyncio.to_thread(self.init_tree)
            await self.setup()
            print(f"tree of {len(self.nodes)} nodes up; load: {self.args.callers} callers; "
                  f"{'database cuts' if self.args.db_cuts else 'SIGKILL rounds'}: {self.args.rounds}", flush=True)
            stop = asyncio.Event()
            loader = asyncio.create_task(self.load(stop, self.args.callers))
            times: list[float | None] = []
            t_start = time.monotonic()
            try:
                for r in range(1, self.args.rounds + 1):
                    await asyncio.sleep(self.args.between)
                    times.append(await (self.cut_round(r) if self.args.db_cuts else self.kill_round(r)))
            finally:
                stop.set()
                await loader
            drill_s = time.monotonic() - t_start
            found = await self.final_checks()
        finally:
            await self.session.close()
        return self.report(found, times, drill_s)

    def report(self, found: dict[str, Any], times: list[float | None], drill_s: float) -> int:
        done = [t for t in times if t is not None]
        what = "database cuts" if self.args.db_cuts else "SIGKILL rounds"
        print(f"\n-- fault drill: {len(times)} {what} in {drill_s / 60:.1f} min, seed {self.args.seed}; {env_info()}, "
              f"load average (1, 5, 15 min) " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
        print(f"   acknowledged: {len(self.acked_entries)} entries, {sum(len(v) for v in self.acked_keys.values())} "
              f"records, {len(self.acked_apps)} applications, {len(self.acked_feedback)} feedback; calls answered 2xx: "
              + ", ".join(f"{k} {v}" for k, v in sorted(self.ok.items())))
        label = "to serve writes again after a cut" if self.args.db_cuts else "to converge after a restart"
        if done:
            print(f"   time {label}: median {statistics.median(done):.2f} s, longest {max(done):.2f} s"
                  + (f"; {len(times) - len(done)} round(s) did not within {self.args.converge_timeout:g} s"
                     if len(done) < len(times) else ""))
        if self.args.db_cuts:
            print(f"   the province's answers to writes during the cuts: {dict(self.cut_answers)}")
        print("   errors seen by the load, by operation and kind:")
        for (kind, err), n in sorted(self.errors.items()):
            print(f"     {kind:<9} {err:<34} {n}")
        lost = bool(found["entries_missing"] or found["records_missing"] or found["applications"] or found["feedback"]
                    or found["outbox_left"] or found["replica"] != "caught up")
        print(f"   final convergence: {'%.1f s' % found['converge_s'] if found['converge_s'] is not None else 'NOT reached'}")
        print(f"   entries missing: {found['entries_missing'] or 'none'}; records missing: {found['records_missing'] or 'none'}")
        print(f"   applications: {found['applications'] or 'all at both ends, same status, received once'}; "
              f"feedback: {found['feedback'] or 'all at both ends, same status, received once'}")
        print(f"   replica: {found['replica']}; outbox messages left: {found['outbox_left']}; retried deliveries "
              f"acknowledged as duplicates: {found['duplicate_deliveries']}")
        broken = {n: c for n, c in found["chains"].items() if c != "intact"}
        print(f"   audit chains: {'all %d intact' % len(found['chains']) if not broken else broken}; stored writes "
              f"without their audit record: {found['intents_left']}")
        bad = lost or broken or found["intents_left"]
        print(f"   verdict: {'LOST OR BROKEN' if bad else 'nothing acknowledged was lost'}")
        return 1 if bad else 0


async def amain(args: argparse.Namespace, base: Path) -> int:
    drill = Drill(base, args)
    try:
        if args.db_cuts:
            async with TcpProxy(5432) as proxy:
                drill.proxy = proxy
                return await drill.run()
        return await drill.run()
    finally:
        for node in reversed(list(drill.nodes.values())):
            await asyncio.to_thread(node.stop)
        if drill.pg_schema:
            import asyncpg

            conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{drill.pg_schema}" CASCADE')
            finally:
                await conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, help="faults to inject (default 100, or 20 with --db-cuts)")
    ap.add_argument("--db-cuts", action="store_true", help="cut the province's PostgreSQL instead of killing nodes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--small", action="store_true", help="a four-node tree (province, city, two counties): a quick run")
    ap.add_argument("--callers", type=int, default=4, help="concurrent callers of the load")
    ap.add_argument("--pause", type=float, default=0.05, help="seconds each caller waits between calls")
    ap.add_argument("--between", type=float, default=1.0, help="seconds of load between rounds")
    ap.add_argument("--down", type=float, default=1.5, help="longest a killed node stays down, seconds")
    ap.add_argument("--cut-seconds", type=float, default=5.0, help="length of each database cut")
    ap.add_argument("--converge-timeout", type=float, default=60.0, help="longest wait for one round's convergence")
    ap.add_argument("--final-timeout", type=float, default=180.0, help="longest wait for the final convergence")
    ap.add_argument("--workdir", help="keep the nodes' homes here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    stop_nodes_on_sigterm()
    if args.rounds is None:
        args.rounds = 20 if args.db_cuts else 100
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="govnode-drill-")
    base = Path(args.workdir or tmp.name)  # type: ignore[union-attr]
    base.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(amain(args, base))
    except KeyboardInterrupt:
        return 130
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
