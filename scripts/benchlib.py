"""Shared pieces of the benchmarks: nodes as real `govnode run` subprocesses, and a load generator that
runs in its own process (so it does not share the node's event loop) with fixed concurrency.

Benchmarks print figures as ratios against a baseline measured in the same run; nothing here asserts a
time. All traffic stays on 127.0.0.1 and every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tests"))  # support.run_cli: `govnode` commands in this process


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def govnode(*args: str, check: bool = True) -> str:
    """Run a `govnode` command; returns its standard output, or raises if it failed.

    In this process (the tests' `run_cli`), not in a subprocess: each subprocess paid ~1.4 s of interpreter
    start-up and imports on a 2-core VM, about 25 s of a four-node drill's set-up."""
    from support import run_cli

    rc, out, err = run_cli(list(args))
    if check and rc != 0:
        raise RuntimeError(f"govnode {' '.join(args)} failed: {err.strip() or out.strip()}")
    return out


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def stop_nodes_on_sigterm() -> None:
    """`kill` (SIGTERM) ends a long script as Ctrl-C does, so that its `finally` stops the nodes it started:
    a soak ended with SIGTERM left its three nodes running and serving."""
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@dataclass
class NodeProcess:
    home: Path
    port: int
    proc: subprocess.Popen | None = None
    cafile: str | None = None  # set for a node serving HTTPS: the CA bundle its certificate chains to
    workers: int = 1  # `govnode run --workers N` (PostgreSQL)

    @property
    def url(self) -> str:
        return f"{'https' if self.cafile else 'http'}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The running process's id (the node must have been started)."""
        if self.proc is None:
            raise RuntimeError(f"the node at {self.url} is not running")
        return self.proc.pid

    def start(self, timeout_s: float = 60) -> None:
        log = open(self.home / "node.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", "run", "--dir", str(self.home),
                                      "--workers", str(self.workers)], cwd=REPO, stdout=log, stderr=log)
        wait_healthy(self.url, timeout_s, self.proc, self.cafile)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def ssl_context(cafile: str | None) -> Any:
    """A client TLS context trusting `cafile` (None: plain HTTP, no context)."""
    import ssl

    return ssl.create_default_context(cafile=cafile) if cafile else None


def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen | None = None, cafile: str | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the node at {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2, context=ssl_context(cafile)) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy within {timeout_s} s")


def init_node(home: Path, code: str, name: str, parent: NodeProcess | None = None, ca: Any = None) -> NodeProcess:
    """A node home; with `ca` (tests/support.py's LocalCA) the node serves HTTPS with a certificate it issues."""
    port = free_port()
    args = ["init", "--dir", str(home), "--node", code, "--name", name, "--listen", f"127.0.0.1:{port}"]
    if parent is not None:
        args += ["--parent-url", parent.url]
    govnode(*args)
    node = NodeProcess(home, port)
    if ca is not None:
        import yaml

        cert, key = ca.issue(code)
        cfg = home / "config.yaml"
        doc = yaml.safe_load(cfg.read_text(encoding="utf-8"))
        doc["tls"] = {"cert": str(cert), "key": str(key), "ca": str(ca.bundle)}
        doc.pop("endpoint", None)  # the default follows tls: https
        cfg.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        node.cafile = str(ca.bundle)
    if parent is not None:
        token = last_line(govnode("invite", code, "--dir", str(parent.home)))
        govnode("join", parent.url, token, "--dir", str(home))
    return node


def start_three_levels(base: Path, nodes: list[NodeProcess], ca: Any = None) -> tuple[NodeProcess, NodeProcess, NodeProcess]:
    """山东省 → 淄博市 → 桓台县 as running `govnode run` processes, joined through real invites (over HTTPS
    with certificates from `ca` when given). Each is appended to `nodes` as soon as it runs, so the caller's
    cleanup stops whatever was started."""
    started: list[NodeProcess] = []
    parent = None
    for code, name in (("370000", "山东省"), ("370300", "淄博市"), ("370321", "桓台县")):
        node = init_node(base / code, code, name, parent, ca)
        node.start()
        nodes.append(node)
        started.append(node)
        parent = node
    return started[0], started[1], started[2]


def use_pg_schema(node: NodeProcess, pg_url: str, prefix: str) -> str:
    """Point a stopped node's config at a new PostgreSQL schema of its own (drop it with `drop_pg_schema`)."""
    import secrets

    import yaml

    schema = prefix + secrets.token_hex(4)
    cfg = node.home / "config.yaml"
    doc = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    doc["database"] = {"url": pg_url, "schema": schema}
    cfg.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return schema


def drop_pg_schema(pg_url: str, schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def add_dept(node: NodeProcess, code: str, name: str, role: str = "dept") -> str:
    return last_line(govnode("dept", "add", code, "--dir", str(node.home), "--name", name, "--role", role))


# The load generator ---------------------------------------------------------------------------------

@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    sent: int = 0  # every request answered, the warm-up's included (what the servers' CPU time was spent on)
    client_cpu: float = 0.0  # CPU seconds the load generator itself used (it shares the machine)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

    def line(self, label: str) -> str:
        return (f"{label:<34} {self.rps:9.0f} req/s   p50 {self.pct(50):7.2f} ms   p99 {self.pct(99):7.2f} ms"
                f"   ({self.requests} requests, {self.errors} errors)")


async def _load(url: str, headers: dict[str, str], bodies: list[bytes], concurrency: int, seconds: float,
                warmup_s: float, cafile: str | None = None, rate: float | None = None) -> dict[str, Any]:
    cpu0 = time.process_time()
    latencies: list[float] = []
    errors = 0
    count = 0
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ssl_context(cafile) or True)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + seconds
        next_slot = start  # with `rate`: when the next request may start (one slot each 1/rate seconds)

        async def worker(i: int) -> None:
            nonlocal errors, count, sent, next_slot
            n = i
            while True:
                if rate:
                    # A slot missed while the server was slow may be made up, but never more than a second's.
                    slot, next_slot = next_slot, max(next_slot, time.perf_counter() - 1.0) + 1 / rate
                    if slot > time.perf_counter():
                        await asyncio.sleep(slot - time.perf_counter())
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                body = bodies[n % len(bodies)]
                n += concurrency
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status < 400
                except aiohttp.ClientError:
                    ok = False
                t1 = time.perf_counter()
                sent += 1
                if t0 >= measure_from:
                    count += 1
                    latencies.append((t1 - t0) * 1000)
                    if not ok:
                        errors += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {"requests": count, "errors": errors, "seconds": seconds, "latencies_ms": latencies, "sent": sent,
            "client_cpu": time.process_time() - cpu0}


def _load_process(q: mp.Queue, *args: Any) -> None:
    q.put(asyncio.run(_load(*args)))


def load(url: str, headers: dict[str, str], bodies: list[Any], concurrency: int = 32, seconds: float = 8.0,
         warmup_s: float = 1.0, cafile: str | None = None, rate: float | None = None) -> LoadResult:
    """POST the bodies round-robin at `url` from a separate process for `seconds` (after a warm-up); an https
    `url` is checked against `cafile`. With `rate`, requests start no faster than `rate` a second (still at
    most `concurrency` at once): a server's CPU per request depends on how busy it is, so two paths are
    compared at one rate."""
    raw = [b if isinstance(b, bytes) else json.dumps(b, ensure_ascii=False).encode() for b in bodies]
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_load_process, args=(q, url, headers, raw, concurrency, seconds, warmup_s, cafile, rate))
    p.start()
    result = q.get(timeout=seconds + warmup_s + 120)
    p.join(timeout=30)
    return LoadResult(**result)


def merged(runs: list[LoadResult]) -> LoadResult:
    """Several runs of the same load as one (their requests, errors, seconds and latencies together)."""
    return LoadResult(sum(r.requests for r in runs), sum(r.errors for r in runs), sum(r.seconds for r in runs),
                      [x for r in runs for x in r.latencies_ms], sum(r.sent for r in runs),
                      sum(r.client_cpu for r in runs))


def cpu_seconds(pid: int, main_thread: bool = False) -> float:
    """CPU time (user + system, all threads) a process has used so far; NaN where /proc does not tell.
    `main_thread`: only its main thread's (a node's event loop; its journal commits in another thread)."""
    try:
        stat = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def metric_samples(url: str) -> dict[tuple[str, tuple], float]:
    """A node's /metrics as {(sample name, sorted labels): value} (the tests' parser)."""
    import urllib.request

    from support import samples

    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        return samples(resp.read().decode())


def journal_totals(url: str) -> tuple[float, float]:
    """A node's journal so far, from its /metrics: (commits, seconds spent committing)."""
    found = metric_samples(url)

    def total(name: str) -> float:
        return sum(value for (sample, _), value in found.items() if sample == name)

    return total("govnode_journal_commit_seconds_count"), total("govnode_journal_commit_seconds_sum")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children (a `govnode run --workers N` parent and its workers), as
    far as they run now."""
    total = cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(tree_cpu_seconds(int(c)) for c in children)


def postgres_cpu_seconds() -> float:
    """CPU time of every PostgreSQL process on this machine (the server the node writes to; other users'
    queries count too)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(postgres)" in text:
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_cpu_seconds() -> dict[str, float]:
    """The whole machine's CPU time so far from /proc/stat, summed over its cores: `idle` (with I/O wait),
    `steal` (taken by the hypervisor for other guests) and `total`."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    return {"idle": (fields[3] + fields[4]) / tick, "steal": fields[7] / tick, "total": sum(fields[:8]) / tick}


def rss_mb(pid: int) -> float:
    """Peak resident memory of a process (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def env_info() -> str:
    return f"python {sys.version.split()[0]}, {os.cpu_count()} cores"
