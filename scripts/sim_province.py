#!/usr/bin/env python3
"""How far does one machine go? A whole province of real govnode nodes on loopback (project issue 3).

1 province + 16 cities + 137 counties of Shandong (GB/T 2260 codes and names from the divisions CSV),
each a real node (node.app.init_app, its own SQLite home, its own port on 127.0.0.1), hosted W to a
worker process, each worker running its share as aiohttp apps on one event loop. Every node joins
through the real flow: an invite made at its parent (FederationService.create_invite) and the
`govnode join` command logic (node.federation.commands.join), parents first.

It measures
  1. how long a new county catalog entry, registered through the department API, takes to reach every
     node (p50 / p99 over --samples entries; target p99 <= 5 s);
  2. how long a new county node takes to sync a catalog of --entries entries (target <= 30 s);
and prints the bring-up time and the workers' peak RSS. It stops by itself and removes its homes.

    .venv/bin/python scripts/sim_province.py              # the full province: about 20 minutes, most of it
                                                          # replicating the 10,000 entries to all 153 nodes
    .venv/bin/python scripts/sim_province.py --entries 0  # bring-up and [1] only: about 4 minutes
    .venv/bin/python scripts/sim_province.py --small      # 1 + 2 + 6 nodes, under a minute

This is a simulation, not a test: it prints figures against their targets and exits 0 when every
target is met, 1 otherwise (2 when the run itself failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import logging
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchlib import cpu_seconds  # noqa: E402  (scripts/ is this script's own folder on sys.path)

PROVINCE = "370000"
# Divisions the CSV snapshot still lists but that were merged since: their counties go to the new parent.
MERGED_CITIES = {"371200": ("370100", "莱芜市 was merged into 济南市 in 2019")}

TARGET_PROPAGATION_P99_S = 5.0
TARGET_NEW_NODE_SYNC_S = 30.0

CLASSIFICATIONS = ("101001", "102003", "201002", "305001", "401004")
TOPICS = ("户籍人口", "法人单位", "不动产登记", "社会保险", "公积金缴存", "婚姻登记", "道路运输许可", "市场主体")


def entry_body(node_name: str, n: int, *, code: str | None = None) -> dict[str, Any]:
    """A catalog entry as a department registers it (SPEC §7), varied a little by n."""
    topic = TOPICS[n % len(TOPICS)]
    body: dict[str, Any] = {
        "name": f"{node_name}{topic}信息{n}",
        "category": ("base", "theme", "department")[n % 3],
        "summary": f"{node_name}{topic}基础信息，模拟目录第{n}项",
        "format": "database",
        "items": [
            {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True},
            {"name": "姓名", "field": "name", "type": "C", "length": 50},
            {"name": "登记日期", "field": "registered_on", "type": "D"},
        ],
        "share": ({"type": "unconditional", "methods": ["api"]} if n % 2 else
                  {"type": "conditional", "condition": "依申请共享，用于政务服务办理", "methods": ["api", "table"]}),
        "update_cycle": ("realtime", "daily", "monthly")[n % 3],
    }
    if code is None:
        body["classification"] = CLASSIFICATIONS[n % len(CLASSIFICATIONS)]
    else:
        body["code"] = code
    return body


# The province from the divisions CSV -------------------------------------------------------------

@dataclass
class Division:
    code: str
    name: str
    parent: str | None
    level: str
    worker: int = -1
    port: int = 0
    home: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def read_province(path: Path) -> tuple[Division, list[Division], list[Division], list[str]]:
    """Shandong's province, cities and counties; merged cities folded into their successor."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["code"].startswith(PROVINCE[:2])]
    notes = []
    raw_cities = [r for r in rows if r["code"].endswith("00") and r["code"] != PROVINCE]
    raw_counties = [r for r in rows if not r["code"].endswith("00")]
    notes.append(f"the CSV lists 1 province, {len(raw_cities)} cities and {len(raw_counties)} counties "
                 f"under {PROVINCE}")
    province = next(Division(r["code"], r["name"], None, "province") for r in rows if r["code"] == PROVINCE)
    cities = [Division(r["code"], r["name"], PROVINCE, "city") for r in raw_cities if r["code"] not in MERGED_CITIES]
    names = {r["code"]: r["name"] for r in rows}
    counties = []
    for r in raw_counties:
        parent = r["parent"].strip()
        if parent in MERGED_CITIES:
            parent = MERGED_CITIES[parent][0]
        counties.append(Division(r["code"], r["name"], parent, "county"))
    for old, (new, why) in MERGED_CITIES.items():
        moved = [c for c in raw_counties if c["parent"].strip() == old]
        if old in names:
            notes.append(f"{why}: {old} {names[old]} is left out and its {len(moved)} counties "
                         f"({', '.join(c['code'] + ' ' + c['name'] for c in moved)}) join {new} {names.get(new, '')}")
    return province, cities, counties, notes


def choose(province: Division, cities: list[Division], counties: list[Division], n_cities: int, n_counties: int,
           new_county: str | None, rng: random.Random) -> tuple[list[Division], Division]:
    """The nodes to run (parents first) and the county kept back to join at the end."""
    cities = sorted(cities, key=lambda d: d.code)[:n_cities]
    by_city: dict[str, list[Division]] = {c.code: [] for c in cities}
    for c in sorted(counties, key=lambda d: d.code):
        if c.parent in by_city:
            by_city[c.parent].append(c)
    chosen: list[Division] = []
    queues = [list(v) for v in by_city.values()]
    while len(chosen) < n_counties and any(queues):  # round robin, so every city gets counties
        for q in queues:
            if q and len(chosen) < n_counties:
                chosen.append(q.pop(0))
    chosen.sort(key=lambda d: d.code)
    if len(chosen) < 2:
        raise SystemExit("need at least 2 counties (one is kept back to join at the end)")
    if new_county is not None:
        kept = next((c for c in chosen if c.code == new_county), None)
        if kept is None:
            raise SystemExit(f"--new-county {new_county} is not among the chosen counties")
    else:
        kept = rng.choice(chosen)
    initial = [c for c in chosen if c is not kept]
    return [province, *cities, *initial], kept


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def init_home(d: Division, parent_url: str | None) -> None:
    """`govnode init` for one node (stdout swallowed)."""
    from node.cli import main as cli_main

    argv = ["init", "--dir", str(d.home), "--node", d.code, "--name", d.name, "--listen", f"127.0.0.1:{d.port}"]
    if parent_url:
        argv += ["--parent-url", parent_url]
    with contextlib.redirect_stdout(io.StringIO()):
        rc = cli_main(argv)
    if rc != 0:
        raise RuntimeError(f"govnode init failed for {d.code}")


# Worker processes --------------------------------------------------------------------------------

class _Collect(logging.Handler):
    """Counts the warnings and errors of the nodes a worker hosts, by kind (logger and message shape)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.kinds: dict[str, list[Any]] = {}  # kind -> [count, first message]

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        kind = f"{record.levelname} {record.name}: " + re.sub(r"\d[\d:.\- ]*", "#", msg)[:70]
        if kind in self.kinds:
            self.kinds[kind][0] += 1
            return
        first = f"{record.levelname} {record.name}: {msg[:240]}"
        if record.exc_info and record.exc_info[1] is not None:  # an error's cause: where and what was raised
            exc = record.exc_info[1]
            ours = [f for f in traceback.extract_tb(exc.__traceback__) if str(REPO) in f.filename]
            where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""
            first += f"\n              ({type(exc).__name__}{where}: {str(exc)[:300]})"
        self.kinds[kind] = [1, first]


@dataclass
class Hosted:
    code: str
    home: Path
    runner: Any = None
    app: Any = None
    reader: sqlite3.Connection | None = None

    def read(self) -> sqlite3.Connection:
        if self.reader is None:
            self.reader = sqlite3.connect(str(self.home / "govnode.db"), timeout=30, isolation_level=None)
        return self.reader


class Worker:
    """Hosts a share of the nodes on one event loop; obeys the controller over a pipe."""

    def __init__(self, index: int, conn: Any) -> None:
        self.index = index
        self.conn = conn
        self.nodes: dict[str, Hosted] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.watches: dict[str, asyncio.Task[dict[str, float | None]]] = {}
        self.log = _Collect()
        self.profiler: Any = None

    async def serve(self) -> None:
        logging.getLogger().addHandler(self.log)
        logging.getLogger().setLevel(logging.WARNING)
        self.done = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._readable)
        try:
            await self.done.wait()
        finally:
            loop.remove_reader(self.conn.fileno())
            await self._stop_nodes()

    def _readable(self) -> None:
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            self.done.set()
            return
        task = asyncio.get_running_loop().create_task(self._handle(*msg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, rid: int, op: str, kw: dict[str, Any]) -> None:
        try:
            result: tuple[str, Any] = ("ok", await getattr(self, "op_" + op)(**kw))
        except Exception as exc:  # noqa: BLE001 - reported to the controller
            result = ("error", f"worker {self.index} {op}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        with contextlib.suppress(OSError):
            self.conn.send((rid, *result))

    # Nodes ----------------------------------------------------------------------------------------

    async def _start(self, code: str, home: Path) -> None:
        from aiohttp import web

        from node.app import init_app
        from node.config import load_config

        config = load_config(home, env={})
        app = init_app(config)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, config.host, config.port).start()
        self.nodes[code] = Hosted(code, home, runner, app)

    async def op_start(self, items: list[tuple[str, str]]) -> dict[str, float]:
        out = {}
        for code, home in items:
            t = time.time()
            await self._start(code, Path(home))
            out[code] = time.time() - t
        return out

    async def op_invite(self, pairs: list[tuple[str, str]]) -> dict[str, str]:
        from node.context import DB
        from node.federation.service import FederationService

        return {child: await FederationService.create_invite(self.nodes[parent].app[DB], child)
                for parent, child in pairs}

    async def _join(self, home: str, parent_url: str, token: str) -> None:
        from node.federation.commands import join

        args = argparse.Namespace(dir=home, parent_url=parent_url, token=token, anchor=None)
        rc = await join(args)
        if rc != 0:
            raise RuntimeError(f"govnode join exited {rc}")

    async def op_join_start(self, items: list[tuple[str, str, str, str]], concurrency: int = 8) -> dict[str, Any]:
        """`govnode join` then start, for each (code, home, parent_url, token); returns their times."""
        sem = asyncio.Semaphore(concurrency)
        times: dict[str, tuple[float, float]] = {}

        async def one(code: str, home: str, parent_url: str, token: str) -> None:
            async with sem:
                t0 = time.time()
                await self._join(home, parent_url, token)
                t1 = time.time()
                await self._start(code, Path(home))
                times[code] = (t1 - t0, time.time() - t1)

        await asyncio.gather(*(one(*it) for it in items))
        return times

    async def op_init_join_start_sync(self, code: str, name: str, home: str, port: int, parent_url: str,
                                      token: str, expected: int, timeout: float) -> dict[str, float]:
        """The new node: `govnode init`, `govnode join`, start, then wait until it holds `expected` entries."""
        from node.cli import main as cli_main

        out: dict[str, float] = {"begin": time.time()}
        argv = ["init", "--dir", home, "--node", code, "--name", name, "--listen", f"127.0.0.1:{port}",
                "--parent-url", parent_url]
        if cli_main(argv) != 0:
            raise RuntimeError(f"govnode init failed for {code}")
        out["initialised"] = time.time()
        await self._join(home, parent_url, token)
        out["joined"] = time.time()
        await self._start(code, Path(home))
        out["started"] = time.time()
        node = self.nodes[code]
        deadline = time.time() + timeout
        last = -1
        while time.time() < deadline:
            n = node.read().execute("SELECT count(*) FROM catalog_entries").fetchone()[0]
            if n and "first_entry" not in out:
                out["first_entry"] = time.time()
            last = n
            if n >= expected:
                out["synced"] = time.time()
                break
            await asyncio.sleep(0.02)
        out["held"] = float(last)
        return out

    async def op_registry(self) -> dict[str, int]:
        """How many certificates each hosted node trusts."""
        from node.federation.http import FEDERATION

        out = {}
        for code, n in self.nodes.items():
            fed = n.app[FEDERATION]
            out[code] = len(fed.trust.known_nodes()) if fed.trust is not None else 0
        return out

    async def op_add_dept(self, items: list[tuple[str, str, str]]) -> dict[str, str]:
        """A department account at each (node, dept code, name), as `govnode dept add` makes it; its token."""
        from node.accounts.http import ACCOUNTS

        return {node: await self.nodes[node].app[ACCOUNTS].add_department(dept, name, "dept")
                for node, dept, name in items}

    # The rows a simulation may watch arrive at every hosted node: (table, key column).
    WATCHED = (("catalog_entries", "code"), ("list_entries", "id"))

    async def op_watch_begin(self, key: str, timeout: float, table: str = "catalog_entries",
                             column: str = "code") -> int:
        """Note when the row `key` appears at each hosted node (polled every 50 ms: finer polling of 150 nodes'
        databases loads the workers it measures); `watch_result` gives it."""
        assert (table, column) in self.WATCHED
        self.watches[key] = asyncio.get_running_loop().create_task(self._watch(table, column, key, timeout))
        return len(self.nodes)

    async def _watch(self, table: str, column: str, key: str, timeout: float) -> dict[str, float | None]:
        seen: dict[str, float | None] = {n: None for n in self.nodes}
        deadline = time.time() + timeout
        while time.time() < deadline:
            missing = [n for n, t in seen.items() if t is None]
            if not missing:
                break
            for n in missing:
                if self.nodes[n].read().execute(f"SELECT 1 FROM {table} WHERE {column} = ?", (key,)).fetchone():
                    seen[n] = time.time()
            await asyncio.sleep(0.05)
        return seen

    async def op_watch_result(self, key: str) -> dict[str, float | None]:
        return await self.watches.pop(key)

    async def op_bulk_create(self, plan: dict[str, int], dept: str, first: int) -> dict[str, int]:
        """Register entries at hosted nodes through their CatalogService (signing, feed, notify: the real
        path), as a department added with AccountService; each node writes its share one after another.
        A node too busy to take a write within its bound answers 503 UNAVAILABLE ("try again"): the entry is
        sent again a second later, as a department's client would, and counted. Returns the counts by node."""
        from node.accounts.http import ACCOUNTS
        from node.catalog.http import CATALOG
        from node.catalog.models import EntryCreate
        from node.config import load_config
        from node.errors import ApiError

        async def one(code: str, count: int) -> int:
            app = self.nodes[code].app
            name = load_config(self.nodes[code].home, env={}).node.name
            token = await app[ACCOUNTS].add_department(dept, f"{name}大数据中心", "dept")
            acct = await app[ACCOUNTS].authenticate(f"Bearer {token}")
            retried = 0
            for i in range(count):
                body = EntryCreate.model_validate(entry_body(name, first + i))
                for attempt in range(10):
                    try:
                        await app[CATALOG].create(acct, body)
                        break
                    except ApiError as exc:
                        if exc.code != "UNAVAILABLE" or attempt == 9:
                            raise
                        retried += 1
                        await asyncio.sleep(1.0)
            return retried

        codes = list(plan)
        retried = await asyncio.gather(*(one(c, plan[c]) for c in codes))
        return dict(zip(codes, retried))

    async def op_counts(self, table: str = "catalog_entries") -> dict[str, int]:
        assert table in ("catalog_entries", "catalog_refusals")
        return {c: n.read().execute(f"SELECT count(*) FROM {table}").fetchone()[0] for c, n in self.nodes.items()}

    async def op_wait_counts(self, nodes: list[str] | None, expected: int, timeout: float) -> dict[str, float | None]:
        """When each node first held at least `expected` entries (None: not within the timeout)."""
        todo = {c: None for c in (nodes if nodes is not None else self.nodes) if c in self.nodes}
        deadline = time.time() + timeout
        while time.time() < deadline and any(v is None for v in todo.values()):
            for c in [c for c, v in todo.items() if v is None]:
                if self.nodes[c].read().execute("SELECT count(*) FROM catalog_entries").fetchone()[0] >= expected:
                    todo[c] = time.time()
            await asyncio.sleep(0.2)
        return todo

    async def op_profile(self, path: str | None) -> None:
        """Start profiling this worker's event loop thread (path None), or stop and dump to path."""
        import cProfile

        if path is None:
            self.profiler = cProfile.Profile()
            self.profiler.enable()
        elif self.profiler is not None:
            self.profiler.disable()
            self.profiler.dump_stats(path)
            self.profiler = None

    async def op_stop(self) -> dict[str, Any]:
        await self._stop_nodes()
        self.done.set()
        return {"warnings": self.log.kinds}

    async def _stop_nodes(self) -> None:
        for n in reversed(list(self.nodes.values())):
            if n.reader is not None:
                n.reader.close()
                n.reader = None
            if n.runner is not None:
                with contextlib.suppress(Exception):
                    await n.runner.cleanup()
                n.runner = None
        self.nodes.clear()


def worker_main(index: int, conn: Any, switch_interval: float | None, worker: type[Worker] = Worker) -> None:
    sys.stdout = open(os.devnull, "w")  # the commands print for an operator; the controller reports
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the controller, which stops the workers
    if switch_interval:
        sys.setswitchinterval(switch_interval)
    try:
        asyncio.run(worker(index, conn).serve())
    except KeyboardInterrupt:
        pass


class WorkerHandle:
    """A worker process (forked: `worker`, a Worker class with the simulation's own operations, is not pickled)."""

    def __init__(self, index: int, ctx: Any, switch_interval: float | None = None,
                 worker: type[Worker] = Worker) -> None:
        self.index = index
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(index, child, switch_interval, worker),
                                name=f"sim-worker-{index}", daemon=True)
        self.proc.start()
        child.close()
        self._next = 0
        self._answers: dict[int, tuple[str, Any]] = {}

    def send(self, op: str, **kw: Any) -> int:
        self._next += 1
        self.conn.send((self._next, op, kw))
        return self._next

    def wait(self, rid: int, timeout: float = 600.0) -> Any:
        deadline = time.time() + timeout
        while rid not in self._answers:
            if not self.proc.is_alive():
                raise RuntimeError(f"worker {self.index} died (exit code {self.proc.exitcode})")
            if time.time() > deadline:
                raise TimeoutError(f"worker {self.index} did not answer within {timeout:.0f} s")
            if self.conn.poll(0.5):
                got, status, value = self.conn.recv()
                self._answers[got] = (status, value)
        status, value = self._answers.pop(rid)
        if status != "ok":
            raise RuntimeError(value)
        return value


def on_all(calls: list[tuple[WorkerHandle, str, dict[str, Any]]], timeout: float = 600.0) -> list[Any]:
    """Send every call first (they run in parallel), then collect the answers in order."""
    sent = [(w, w.send(op, **kw)) for w, op, kw in calls]
    return [w.wait(rid, timeout) for w, rid in sent]


# Measurements ------------------------------------------------------------------------------------

def pct(values: list[float], p: float) -> float:
    """Percentile with linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def post_json(url: str, token: str, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body, ensure_ascii=False).encode("utf-8"), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def vm_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS of a process in MiB (from /proc/<pid>/status)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(rest.split()[0]) // 1024
    return out


@dataclass
class Sim:
    args: argparse.Namespace
    base: Path
    nodes: list[Division]
    new: Division
    workers: list[WorkerHandle] = field(default_factory=list)
    by_code: dict[str, Division] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def w(self, d: Division) -> WorkerHandle:
        return self.workers[d.worker]

    def say(self, msg: str) -> None:
        print(msg, flush=True)

    def profile(self, phase: str | None) -> None:
        if self.args.profile is None:
            return
        on_all([(w, "profile", {"path": None if phase is None else
                                str(Path(self.args.profile) / f"{phase}-w{w.index}.pstats")}) for w in self.workers])

    levels = ("province", "city", "county")  # the tree's levels, the root's first

    # Bring-up ---------------------------------------------------------------------------------------

    def place(self, ports: list[int]) -> None:
        """Each node (and the one kept back) its worker, port and home. Round robin in tree order: every
        worker hosts nodes of every level."""
        everyone = self.nodes + ([] if self.new in self.nodes else [self.new])
        self.by_code = {d.code: d for d in everyone}
        for k, d in enumerate(self.nodes):
            d.worker = k % self.args.workers
        for d, port in zip(everyone, ports, strict=True):
            d.port = port
            d.home = self.base / d.code

    def start_workers(self, worker: type[Worker] = Worker) -> None:
        """`govnode init` of every node's home, then the worker processes (forked, so after the homes exist)."""
        t = time.time()
        for d in self.nodes:
            init_home(d, self.by_code[d.parent].url if d.parent else None)
        self.say(f"\n[bring-up] `govnode init` of {len(self.nodes)} homes under {self.base}: {time.time() - t:.1f} s")
        ctx = mp.get_context("fork")
        self.workers = [WorkerHandle(i, ctx, getattr(self.args, "switch_interval", None), worker)
                        for i in range(self.args.workers)]

    def bring_up(self) -> float:
        t0 = time.time()
        levels = [[d for d in self.nodes if d.level == lvl] for lvl in self.levels]
        (root,) = levels[0]
        on_all([(self.w(root), "start", {"items": [(root.code, str(root.home))]})])
        self.say(f"  {root.code} {root.name} up (the root) after {time.time() - t0:.1f} s")
        for level in levels[1:]:
            t = time.time()
            self.join_level(level)
            self.say(f"  {len(level)} {level[0].level} nodes joined and started in {time.time() - t:.1f} s")
        t = time.time()
        self.wait_registry(len(self.nodes), timeout=self.args.timeout)
        self.say(f"  every node trusts all {len(self.nodes)} certificates after {time.time() - t:.1f} s more")
        return time.time() - t0

    def join_level(self, level: list[Division]) -> None:
        invites: dict[int, list[tuple[str, str]]] = {}
        for d in level:
            invites.setdefault(self.by_code[d.parent].worker, []).append((d.parent, d.code))
        tokens: dict[str, str] = {}
        for part in on_all([(self.workers[i], "invite", {"pairs": pairs}) for i, pairs in invites.items()]):
            tokens.update(part)
        joins: dict[int, list[tuple[str, str, str, str]]] = {}
        for d in level:
            joins.setdefault(d.worker, []).append((d.code, str(d.home), self.by_code[d.parent].url, tokens[d.code]))
        on_all([(self.workers[i], "join_start", {"items": items}) for i, items in joins.items()])

    def wait_registry(self, n: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while True:
            known: dict[str, int] = {}
            for part in on_all([(w, "registry", {}) for w in self.workers]):
                known.update(part)
            behind = {c: k for c, k in known.items() if k < n}
            if not behind:
                return
            if time.time() > deadline:
                raise TimeoutError(f"{len(behind)} nodes still miss certificates, e.g. {sorted(behind.items())[:5]}")
            time.sleep(0.25)

    def idle_load(self, seconds: float) -> dict[int, float]:
        """CPU use of each worker while nothing but the schedule runs (% of one core)."""
        before = {w.index: cpu_seconds(w.proc.pid) for w in self.workers}
        time.sleep(seconds)
        return {w.index: 100 * (cpu_seconds(w.proc.pid) - before[w.index]) / seconds for w in self.workers}

    def tokens(self, nodes: list[Division], office: str) -> dict[str, str]:
        """A department account (`office` of the node's division) at each node, as `govnode dept add` makes it;
        node -> its token."""
        from node.ids import make_gb32100

        plan: dict[int, list[tuple[str, str, str]]] = {}
        for d in nodes:  # 统一社会信用代码 of the office
            plan.setdefault(d.worker, []).append((d.code, make_gb32100(f"11{d.code}MB", 7), f"{d.name}{office}"))
        out: dict[str, str] = {}
        for part in on_all([(self.workers[i], "add_dept", {"items": items}) for i, items in plan.items()]):
            out.update(part)
        return out

    def watch(self, table: str, column: str, key: str) -> None:
        """Every worker notes when the row `key` of `table` appears at each node it hosts (see `seen`)."""
        on_all([(w, "watch_begin", {"table": table, "column": column, "key": key, "timeout": self.args.timeout})
                for w in self.workers])

    def seen(self, key: str) -> dict[str, float | None]:
        """Node -> when the watched row `key` appeared there (time.time()), None where it did not in time."""
        out: dict[str, float | None] = {}
        for part in on_all([(w, "watch_result", {"key": key}) for w in self.workers], timeout=self.args.timeout + 30):
            out.update(part)
        return out

    # 1. Propagation of a new county entry --------------------------------------------------------------

    def propagation(self, rng: random.Random) -> list[float]:
        counties = [d for d in self.nodes if d.level == "county"]
        picks = rng.sample(counties, min(self.args.samples, len(counties)))
        while len(picks) < self.args.samples:
            picks.append(rng.choice(counties))
        tokens = self.tokens(list({d.code: d for d in picks}.values()), "大数据局")
        times: list[float] = []
        self.profile(None)
        for i, d in enumerate(picks, 1):
            code = f"{CLASSIFICATIONS[i % len(CLASSIFICATIONS)]}/{d.code}9{i:05d}"
            self.watch("catalog_entries", "code", code)
            t0 = time.time()
            status, body = post_json(f"{d.url}/api/v1/catalog", tokens[d.code], entry_body(d.name, i, code=code))
            t_ack = time.time()
            if status != 201:
                raise RuntimeError(f"POST /api/v1/catalog at {d.code} answered {status}: {body}")
            seen = self.seen(code)
            missing = [c for c, t in seen.items() if t is None]
            if missing:
                self.failures.append(f"entry {code} never reached {len(missing)} nodes, e.g. {missing[:5]}")
                self.say(f"  [{i:2d}] {code} from {d.code} {d.name}: NOT everywhere after {self.args.timeout:.0f} s "
                         f"({len(missing)} nodes miss it)")
                continue
            arrivals = sorted(t - t0 for c, t in seen.items() if c != d.code)  # type: ignore[operator]
            last = max(seen, key=lambda c: seen[c] or 0)
            times.append(arrivals[-1])
            self.say(f"  [{i:2d}] {code} from {d.code} {d.name}: all {len(seen)} nodes in {arrivals[-1]:.2f} s "
                     f"(ack {t_ack - t0:.2f} s, half of the nodes by {pct(arrivals, 50):.2f} s, last {last})")
            time.sleep(self.args.gap)
        self.profile("propagation")
        return times

    # 2. A new node syncs the catalog ---------------------------------------------------------------------

    def bulk_load(self, first: int) -> tuple[float, int, int]:
        """Register --entries entries spread evenly over the running nodes, each at its own node; returns the
        time taken, the number of entries and how many of them were answered 503 at first and sent again."""
        from node.ids import make_gb32100

        n = self.args.entries
        share, extra = divmod(n, len(self.nodes))
        plans: dict[int, dict[str, int]] = {}
        for k, d in enumerate(self.nodes):
            count = share + (1 if k < extra else 0)
            if count:
                plans.setdefault(d.worker, {})[d.code] = count
        t = time.time()
        dept = make_gb32100("12370000MB", 4242)
        retried = on_all([(self.workers[i], "bulk_create", {"plan": p, "dept": dept, "first": first})
                          for i, p in plans.items()], timeout=self.args.timeout * 20)
        return time.time() - t, n, sum(sum(r.values()) for r in retried)

    def wait_counts(self, nodes: list[Division] | None, expected: int, timeout: float) -> dict[str, float | None]:
        calls = []
        for w in self.workers:
            codes = None if nodes is None else [d.code for d in nodes if d.worker == w.index]
            if codes != []:
                calls.append((w, "wait_counts", {"nodes": codes, "expected": expected, "timeout": timeout}))
        out: dict[str, float | None] = {}
        for part in on_all(calls, timeout=timeout + 60):
            out.update(part)
        return out

    def new_node(self, expected: int) -> dict[str, float]:
        d = self.new
        parent = self.by_code[d.parent]
        # The new node goes to the worker hosting the fewest nodes.
        loads = [sum(1 for x in self.nodes if x.worker == w.index) for w in self.workers]
        d.worker = loads.index(min(loads))
        t0 = time.time()
        (tokens,) = on_all([(self.w(parent), "invite", {"pairs": [(parent.code, d.code)]})])
        self.profile(None)
        (out,) = on_all([(self.w(d), "init_join_start_sync", {
            "code": d.code, "name": d.name, "home": str(d.home), "port": d.port, "parent_url": parent.url,
            "token": tokens[d.code], "expected": expected, "timeout": self.args.timeout * 4,
        })], timeout=self.args.timeout * 4 + 60)
        self.profile("newnode")
        out["invited"] = out["begin"]
        out["begin"] = t0
        self.nodes.append(d)
        return out

    def sync_phase(self) -> tuple[float, int]:
        """Load the catalog, let it settle, then add the kept-back county and time its sync."""
        args, new = self.args, self.new
        self.profile(None)
        t_bulk, n, retried = self.bulk_load(first=100)
        expected = args.samples + n
        self.say(f"  registered {n} entries over {len(self.nodes)} nodes (CatalogService in their workers) "
                 f"in {t_bulk:.1f} s" + (f"; {retried} sent again after a 503 (the node's writers were busy)"
                                         if retried else ""))
        parent = self.by_code[new.parent]
        t = time.time()
        got = self.wait_counts([parent], expected, args.timeout * 10)
        if got[parent.code] is None:
            raise RuntimeError(f"the new node's parent {parent.code} never held all {expected} entries")
        self.say(f"  the new node's parent {parent.code} {parent.name} holds all {expected} after "
                 f"{time.time() - t:.1f} s more")
        if args.settle == "all":
            got = self.wait_counts(None, expected, args.timeout * 20)
            late = [c for c, v in got.items() if v is None]
            if late:
                raise RuntimeError(f"{len(late)} nodes never held all {expected} entries, e.g. {late[:5]}")
            self.say(f"  every node holds all {expected} {time.time() - t:.1f} s after the load "
                     f"({(len(self.nodes) - 1) * n} copies received and verified in "
                     f"{time.time() - t + t_bulk:.0f} s since the load began)")
        self.profile("load")
        out = self.new_node(expected)
        sync = out.get("synced")
        self.say(f"  {new.code} {new.name}: invite {out['invited'] - out['begin']:.2f} s, "
                 f"init {out['initialised'] - out['invited']:.2f} s, join {out['joined'] - out['initialised']:.2f} s, "
                 f"start {out['started'] - out['joined']:.2f} s, "
                 + (f"holds all {expected} entries {sync - out['started']:.2f} s after starting" if sync else
                    f"held only {int(out['held'])} of {expected} after the timeout"))
        return ((sync - out["begin"]) if sync else float("inf")), expected

    def stop(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for w in self.workers:
            if w.proc.is_alive():
                try:
                    out[w.index] = w.wait(w.send("stop"), timeout=120)
                except Exception as exc:  # noqa: BLE001
                    out[w.index] = {"warnings": {f"stop of worker {w.index} failed": [1, f"stop failed: {exc}"]}}
        for w in self.workers:
            w.proc.join(timeout=30)
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(timeout=10)
        return out

    def finish(self, keep: bool = False) -> None:
        """Stop the workers, print the warnings and errors their nodes logged, by kind, and remove the homes
        (unless `keep`)."""
        if self.workers:
            kinds: dict[str, list[Any]] = {}
            for stopped in self.stop().values():
                for kind, (count, first) in stopped.get("warnings", {}).items():
                    kinds.setdefault(kind, [0, first])[0] += count
            print(f"  node warnings/errors logged: {sum(k[0] for k in kinds.values())}"
                  + (", by kind (count, first one):" if kinds else ""))
            for count, first in sorted(kinds.values(), key=lambda k: -k[0])[:8]:
                print(f"    {count:6d}  {first}")
        if not keep:
            shutil.rmtree(self.base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--divisions", type=Path, default=REPO.parent / "shared" / "data" / "gbt2260-divisions.csv",
                   help="GB/T 2260 divisions CSV (code,name,parent); "
                        "default <repo>/../shared/data/gbt2260-divisions.csv")
    p.add_argument("--cities", type=int, help="how many cities (default all 16)")
    p.add_argument("--counties", type=int,
                   help="how many counties, one of them kept back to join at the end (default all 137)")
    p.add_argument("--small", action="store_true", help="1 + 2 + 6 nodes, 5 samples, 500 entries: a smoke run")
    p.add_argument("--workers", type=int, default=max(2, min(4, os.cpu_count() or 2)),
                   help="worker processes (default: the CPUs, from 2 to 4)")
    p.add_argument("--samples", type=int, help="entries timed from one county to every node (default 20)")
    p.add_argument("--entries", type=int, help="catalog size the new node syncs (default 10000; 0 skips [2])")
    p.add_argument("--new-county", help="the county kept back to join at the end (default: a random one)")
    p.add_argument("--settle", choices=("parent", "all"), default="all",
                   help="before the new node joins, wait until its parent (or every node) holds the whole catalog")
    p.add_argument("--idle", type=float, default=10.0,
                   help="seconds of idle federation to measure the workers' base load")
    p.add_argument("--switch-interval", type=float,
                   help="sys.setswitchinterval in the workers (s; default Python's 0.005)")
    p.add_argument("--gap", type=float, default=0.5, help="pause between propagation samples (s)")
    p.add_argument("--timeout", type=float, default=120.0, help="longest wait for one step (s)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--dir", type=Path, help="put the node homes here and keep them (default: a temp dir, removed)")
    p.add_argument("--profile", type=Path, help="write cProfile stats of each worker's loop per phase to this dir")
    args = p.parse_args(argv)
    if args.small:
        args.cities = 2 if args.cities is None else args.cities
        args.counties = 6 if args.counties is None else args.counties
        args.samples = 5 if args.samples is None else args.samples
        args.entries = 500 if args.entries is None else args.entries
    args.samples = 20 if args.samples is None else args.samples
    args.entries = 10_000 if args.entries is None else args.entries
    if not args.divisions.is_file():
        p.error(f"no divisions CSV at {args.divisions} (use --divisions)")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    rng = random.Random(args.seed)
    province, cities, counties, notes = read_province(args.divisions)
    print(f"govnode province simulation: {province.code} {province.name}, divisions from {args.divisions}")
    for n in notes:
        print(f"  {n}")
    print(f"  after folding: 1 province + {len(cities)} cities + {len(counties)} counties = "
          f"{1 + len(cities) + len(counties)} nodes")
    n_cities = len(cities) if args.cities is None else max(1, min(args.cities, len(cities)))
    n_counties = len(counties) if args.counties is None else max(2, min(args.counties, len(counties)))
    nodes, new = choose(province, cities, counties, n_cities, n_counties, args.new_county, rng)
    total = len(nodes) + 1
    print(f"running 1 + {n_cities} + {n_counties} = {total} nodes on {args.workers} worker processes; "
          f"{new.code} {new.name} (under {new.parent}) is kept back and joins at the end")

    keep = args.dir is not None
    base = args.dir.resolve() if keep else Path(tempfile.mkdtemp(prefix="govnode-sim-"))
    base.mkdir(parents=True, exist_ok=True)
    sim = Sim(args, base, nodes, new)
    sim.place(free_ports(total))
    rc = 2
    t_start = time.time()
    load0 = os.getloadavg()
    try:
        sim.start_workers()
        t_up = sim.bring_up()
        print(f"  all {len(nodes)} nodes up, joined and trusting each other: {t_up:.1f} s")
        time.sleep(5)  # the last nodes to join are still storing the registry they pulled
        sim.profile(None)
        idle = sim.idle_load(args.idle)
        sim.profile("idle")
        print(f"  idle federation (scheduled pulls only) over {args.idle:.0f} s: "
              + ", ".join(f"worker {i} {v:.0f}%" for i, v in idle.items()) + " of a core")

        print(f"\n[1] a new county catalog entry reaching all {len(nodes)} nodes "
              f"(POST /api/v1/catalog at a random county; polled in every node's catalog_entries)")
        cpu0 = sum(cpu_seconds(w.proc.pid) for w in sim.workers)
        t = time.time()
        times = sim.propagation(rng)
        busy = sum(cpu_seconds(w.proc.pid) for w in sim.workers) - cpu0
        print(f"  the workers used {busy:.0f} CPU-seconds in these {time.time() - t:.0f} s "
              f"(background included: {sum(idle.values()) / 100 * (time.time() - t):.0f} s at the idle rate)")
        p50, p99 = pct(times, 50), pct(times, 99)
        ok1 = len(times) == args.samples and p99 <= TARGET_PROPAGATION_P99_S

        t_sync, expected = float("nan"), args.samples
        if args.entries > 0:
            print(f"\n[2] a new node syncing a catalog of {args.entries} entries")
            t_sync, expected = sim.sync_phase()
        ok2 = args.entries <= 0 or t_sync <= TARGET_NEW_NODE_SYNC_S

        refusals: dict[str, int] = {}
        for part in on_all([(w, "counts", {"table": "catalog_refusals"}) for w in sim.workers]):
            refusals.update(part)
        mem = {w.index: vm_status(w.proc.pid) for w in sim.workers}
        cpu = {w.index: cpu_seconds(w.proc.pid) for w in sim.workers}

        print("\n== figures ==")
        print(f"  [1] new county entry at every node ({len(times)} of {args.samples} samples): "
              f"p50 {p50:.2f} s, p99 {p99:.2f} s, max {max(times, default=float('nan')):.2f} s   "
              f"target p99 <= {TARGET_PROPAGATION_P99_S:.0f} s: {'met' if ok1 else 'MISSED'}")
        if args.entries > 0:
            print(f"  [2] new node holding all {expected} entries (invite + init + join + start + sync): "
                  f"{t_sync:.2f} s   target <= {TARGET_NEW_NODE_SYNC_S:.0f} s: {'met' if ok2 else 'MISSED'}")
        print("== summary ==")
        print(f"  nodes: {len(sim.nodes)} (1 province, {n_cities} cities, "
              f"{sum(1 for d in sim.nodes if d.level == 'county')} counties), workers: {args.workers}, "
              f"SQLite homes under {base}")
        print(f"  bring-up (start + join every node until all trust each other): {t_up:.1f} s")
        for w in sim.workers:
            hosted = sum(1 for d in sim.nodes if d.worker == w.index)
            print(f"  worker {w.index} (pid {w.proc.pid}): {hosted} nodes, peak RSS (VmHWM) "
                  f"{mem[w.index].get('VmHWM', 0)} MiB, now {mem[w.index].get('VmRSS', 0)} MiB, "
                  f"CPU {cpu[w.index]:.0f} s")
        print(f"  peak RSS of all workers together: {sum(m.get('VmHWM', 0) for m in mem.values())} MiB; "
              f"refused catalog entries logged: {sum(refusals.values())}")
        print(f"  machine: {os.cpu_count()} CPUs, load average {load0[0]:.1f} at the start, "
              f"{os.getloadavg()[0]:.1f} now (other processes share the CPUs)")
        if sim.failures:
            print("  failures:\n    " + "\n    ".join(sim.failures))
        rc = 0 if ok1 and ok2 and not sim.failures else 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", file=sys.stderr)
        rc = 130
    except Exception as exc:  # noqa: BLE001 - report, then clean up
        print(f"\nthe simulation failed: {exc}", file=sys.stderr)
    finally:
        sim.finish(keep)
        print(f"done in {time.time() - t_start:.0f} s; " + ("homes kept in " + str(base) if keep else "homes removed"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
