"""Soak (not a test): a three-node tree under steady mixed load for a long time.

    python scripts/soak.py [--minutes 60] [--window 10] [--share 0.70] [--records 2000]

A province, a city and a county run as `govnode run` subprocesses (SQLite, durable audit records), joined
through real invites. A department of the county drives a mix of calls at its node: verify on the county's
own resource, verify routed county → city → province, catalog search, and record pushes (upserts of a
few records). First the script measures the tree's capacity for that mix now, on this machine (a short
closed-loop run at fixed concurrency: the benchmarks' way), because the machine may be shared; then it
sends the same mix open-loop at `--share` of that rate for `--minutes`.

Every `--window` minutes it prints: requests, errors by kind, p50 and p99 latency, and each node's
resident memory (VmRSS) and open file descriptors besides its established connections (the median of
samples taken every 10 s). At the end: each node's growth of RSS and descriptors after the first ten
minutes (`--settle`), from the first window that starts then to the last (target < 5 %; the first minutes
fill the replay windows, caches and connection pools, which is not growth), and from the very first
window for comparison; and the load average. Exit status 1 when any call was answered 500 (a failure of the node, not of capacity); otherwise 0 whatever the
figures. All traffic is on 127.0.0.1; every node is stopped at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_federation import prepare  # noqa: E402
from bench_local import ENTRY, person  # noqa: E402
from benchlib import NodeProcess, env_info, start_three_levels, stop_nodes_on_sigterm  # noqa: E402


def vm_rss_mb(pid: int) -> float:
    """Resident memory now (VmRSS), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def open_fds(pid: int) -> int:
    """Descriptors the node holds open, less its established TCP connections: callers' connections to it
    and its own to its neighbours follow the load (a slow instant has more calls in flight, and the client
    pool to the parent keeps as many as were needed), not the node, so only the rest can show a leak. A
    connection left half-closed (CLOSE_WAIT) is not established and still counts."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return -1
    sockets = {link[8:-1] for link in links if link.startswith("socket:[")}
    established = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "01" and cols[9] in sockets:  # ESTABLISHED, and a socket of this node
                established += 1
    return len(links) - established


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    by_op: Counter = field(default_factory=Counter)
    skipped: int = 0  # sends due while `max_in_flight` calls were outstanding (the generator could not keep up)


class Mix:
    """The calls of the soak, as (op, method, url, body, content type), chosen with fixed weights."""

    def __init__(self, county: NodeProcess, local_code: str, routed_code: str, local_people: list[dict],
                 routed_people: list[dict], seed: int = 11) -> None:
        self.rng = random.Random(seed)
        self.county = county
        self.local_code, self.routed_code = local_code, routed_code
        self.local_people, self.routed_people = local_people, routed_people
        # Verifies dominate a sharing platform's traffic; writes and searches are a steady minority.
        self.ops = ["verify_local"] * 4 + ["verify_routed"] * 2 + ["catalog_search"] * 2 + ["push"] * 2

    def next(self) -> tuple[str, str, str, bytes, str]:
        op = self.rng.choice(self.ops)
        base = self.county.url
        if op == "verify_local":
            p = self.rng.choice(self.local_people)
            return op, "POST", f"{base}/api/v1/resources/{self.local_code}/verify", json.dumps(
                {"key": p["id_number"], "fields": {"name": p["name"]}}, ensure_ascii=False).encode(), "application/json"
        if op == "verify_routed":
            p = self.rng.choice(self.routed_people)
            return op, "POST", f"{base}/api/v1/resources/{self.routed_code}/verify", json.dumps(
                {"key": p["id_number"], "fields": {"name": p["name"]}}, ensure_ascii=False).encode(), "application/json"
        if op == "catalog_search":
            q = self.rng.choice(["户籍", "人口", "基本信息", "桓台"])
            return op, "GET", f"{base}/api/v1/catalog?q={q}", b"", ""
        people = self.rng.sample(self.local_people, 5)  # upserts within a fixed key space: the table stays bounded
        lines = [json.dumps({**p, "address": f"山东省淄博市桓台县索镇{self.rng.randrange(1, 300)}号"},
                            ensure_ascii=False) for p in people]
        return op, "POST", f"{base}/api/v1/resources/{self.local_code}/records", "\n".join(lines).encode(), \
            "application/x-ndjson"


async def one_call(session: aiohttp.ClientSession, token: str, call: tuple[str, str, str, bytes, str],
                   window: Window) -> None:
    op, method, url, body, ctype = call
    headers = {"Authorization": f"Bearer {token}"}
    if ctype:
        headers["Content-Type"] = ctype
    t0 = time.perf_counter()
    try:
        async with session.request(method, url, data=body or None, headers=headers) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                try:
                    code = json.loads(raw)["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "?"
                window.errors[f"{resp.status} {code}"] += 1
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        window.errors[type(exc).__name__] += 1
    window.latencies.append((time.perf_counter() - t0) * 1000)
    window.by_op[op] += 1


async def closed_loop(mix: Mix, token: str, concurrency: int, seconds: float, warmup: float) -> float:
    """Requests per second the tree answers with `concurrency` callers always waiting: its capacity."""
    window = Window()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        start = time.perf_counter()
        stop_at = start + warmup + seconds
        counted = 0

        async def worker() -> None:
            nonlocal counted
            while (t := time.perf_counter()) < stop_at:
                await one_call(session, token, mix.next(), window)
                if t >= start + warmup:
                    counted += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    if window.errors:
        print(f"   capacity run errors: {dict(window.errors)}", flush=True)
    return counted / seconds


async def open_loop(mix: Mix, token: str, rate: float, minutes: float, window_min: float,
                    pids: dict[str, int],
                    max_in_flight: int = 256) -> tuple[list[dict], Counter]:
    """Send at `rate` calls/s, whatever the answers' pace, for `minutes`; a summary per window."""
    windows: list[dict] = []
    total_errors: Counter = Counter()
    interval = 1.0 / rate
    in_flight: set[asyncio.Task] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_in_flight),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        start = time.perf_counter()
        end = start + minutes * 60
        n_windows = max(1, int(round(minutes / window_min)))
        for w in range(n_windows):
            window = Window()
            w_end = min(end, start + (w + 1) * window_min * 60)
            samples: list[tuple[float, dict[str, float], dict[str, int]]] = []
            next_sample = time.perf_counter()
            k = int((time.perf_counter() - start) / interval)
            while True:
                now = time.perf_counter()
                if now >= w_end:
                    break
                if now >= next_sample:
                    samples.append((now - start, {n: vm_rss_mb(p) for n, p in pids.items()},
                                    {n: open_fds(p) for n, p in pids.items()}))
                    next_sample = now + 10
                due = start + k * interval
                if due > now:
                    await asyncio.sleep(min(due - now, w_end - now))
                    continue
                k += 1
                if len(in_flight) >= max_in_flight:
                    window.skipped += 1
                    continue
                task = asyncio.create_task(one_call(session, token, mix.next(), window))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            # Calls still running belong to the window that sent them: wait for them (bounded by the timeout).
            if in_flight:
                await asyncio.gather(*list(in_flight), return_exceptions=True)
            if not samples:
                samples.append((time.perf_counter() - start, {n: vm_rss_mb(p) for n, p in pids.items()},
                                {n: open_fds(p) for n, p in pids.items()}))
            # The median of the window's samples (one each 10 s).
            rss = {n: statistics.median(s[1][n] for s in samples) for n in pids}
            fds = {n: int(statistics.median(s[2][n] for s in samples)) for n in pids}
            secs = w_end - max(start, start + w * window_min * 60)
            summary = {"window": w + 1, "minutes": round((w_end - start) / 60, 1), "requests": len(window.latencies),
                       "rps": len(window.latencies) / secs if secs else 0.0, "errors": dict(window.errors),
                       "skipped": window.skipped, "p50": pct(window.latencies, 50), "p99": pct(window.latencies, 99),
                       "rss_mb": rss, "fds": fds, "samples": samples, "by_op": dict(window.by_op)}
            windows.append(summary)
            total_errors.update(window.errors)
            print(f"[{summary['minutes']:5.1f} min] {summary['requests']} calls ({summary['rps']:.0f}/s), "
                  f"errors {sum(window.errors.values())} {dict(window.errors) or ''}, p50 {summary['p50']:.1f} ms, "
                  f"p99 {summary['p99']:.1f} ms; RSS MiB "
                  + ", ".join(f"{n} {v:.1f}" for n, v in rss.items())
                  + "; fds " + ", ".join(f"{n} {v}" for n, v in fds.items())
                  + (f"; {window.skipped} sends skipped (generator at {max_in_flight} in flight)" if window.skipped else ""),
                  flush=True)
    return windows, total_errors


def settled(windows: list[dict], window_min: float, settle_min: float) -> int:
    """The index of the first window that starts once the first `settle_min` minutes are over."""
    for i, w in enumerate(windows):
        if (w["window"] - 1) * window_min >= settle_min - 1e-9:
            return i
    return len(windows) - 1


def growth(windows: list[dict], key: str, name: str, start: int = 0) -> float:
    """Growth of a node's figure from window `start` to the last (their medians), as a fraction."""
    first = windows[start][key][name]
    last = windows[-1][key][name]
    return (last - first) / first if first else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the steady load")
    ap.add_argument("--window", type=float, default=10.0, help="minutes per reported window")
    ap.add_argument("--share", type=float, default=0.70, help="share of the measured capacity to send")
    ap.add_argument("--records", type=int, default=2000, help="people in each of the two resources")
    ap.add_argument("--capacity-seconds", type=float, default=20.0, help="length of the capacity measurement")
    ap.add_argument("--concurrency", type=int, default=32, help="callers of the capacity measurement")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="minutes after which memory and descriptors must stop growing (the reference window starts then)")
    ap.add_argument("--workdir", help="keep the nodes' homes here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    stop_nodes_on_sigterm()

    nodes: list[NodeProcess] = []
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="govnode-soak-")
    base = Path(args.workdir or tmp.name)  # type: ignore[union-attr]
    base.mkdir(parents=True, exist_ok=True)
    try:
        print(f"soak: {env_info()}, load average {os.getloadavg()[0]:.2f} at the start", flush=True)
        province, city, county = start_three_levels(base, nodes)
        routed_code, routed_people, _ptok, ctok = prepare(province, county, args.records)
        import urllib.request

        def api(method: str, path: str, body: bytes, ctype: str = "application/json") -> dict:
            req = urllib.request.Request(county.url + path, data=body, method=method,
                                         headers={"Authorization": f"Bearer {ctok}", "Content-Type": ctype})
            with urllib.request.urlopen(req, timeout=120) as resp:
                return json.loads(resp.read())

        entry = api("POST", "/api/v1/catalog", json.dumps({**ENTRY, "name": "桓台县户籍人口基本信息（浸泡）"},
                                                          ensure_ascii=False).encode())
        rng = random.Random(3)
        local_people = [person(i, rng) for i in range(args.records)]
        api("POST", f"/api/v1/resources/{entry['code']}/records",
            "\n".join(json.dumps(p, ensure_ascii=False) for p in local_people).encode(), "application/x-ndjson")
        mix = Mix(county, entry["code"], routed_code, local_people, routed_people)
        pids = {"province": province.pid, "city": city.pid, "county": county.pid}

        capacity = asyncio.run(closed_loop(mix, ctok, args.concurrency, args.capacity_seconds, warmup=3.0))
        rate = capacity * args.share
        print(f"capacity for the mix now: {capacity:.0f} calls/s at concurrency {args.concurrency} "
              f"({args.capacity_seconds:g} s); soaking at {args.share:.0%} = {rate:.0f} calls/s for "
              f"{args.minutes:g} min", flush=True)
        windows, errors = asyncio.run(open_loop(mix, ctok, rate, args.minutes, args.window, pids))

        total = sum(w["requests"] for w in windows)
        print(f"\n-- soak: {total} calls in {args.minutes:g} min at {rate:.0f}/s target; "
              f"errors {sum(errors.values())} ({dict(errors) or 'none'}); load average (1, 5, 15 min) "
              + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
        print(f"   {'window':>6} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}   "
              + "   ".join(f"{n} RSS/fds" for n in pids))
        for w in windows:
            print(f"   {w['minutes']:6.1f} {w['rps']:8.0f} {w['p50']:8.1f} {w['p99']:8.1f} "
                  f"{sum(w['errors'].values()):7d}   "
                  + "   ".join(f"{w['rss_mb'][n]:7.1f}/{w['fds'][n]:<4d}" for n in pids))
        ref = settled(windows, args.window, args.settle)
        if ref < len(windows) - 1:
            start_min = (windows[ref]["window"] - 1) * args.window
            for n in pids:
                g_rss, g_fds = growth(windows, "rss_mb", n, ref), growth(windows, "fds", n, ref)
                ok = g_rss < 0.05 and g_fds < 0.05
                print(f"   {n}: after minute {start_min:g}, RSS {windows[ref]['rss_mb'][n]:.1f} → "
                      f"{windows[-1]['rss_mb'][n]:.1f} MiB ({g_rss:+.1%}), fds {windows[ref]['fds'][n]} → "
                      f"{windows[-1]['fds'][n]} ({g_fds:+.1%}): target < 5 % {'met' if ok else 'MISSED'}; from the "
                      f"first window, RSS {growth(windows, 'rss_mb', n):+.1%}")
        else:
            print(f"   (growth after minute {args.settle:g} needs two windows after it: --minutes ≥ "
                  f"--settle + 2 × --window)")
        if args.workdir:
            (base / "soak.json").write_text(json.dumps({"capacity": capacity, "rate": rate, "windows": windows},
                                                       ensure_ascii=False, indent=1), encoding="utf-8")
        internal = sum(v for k, v in errors.items() if k.startswith("500 "))
        return 1 if internal else 0
    finally:
        for n in reversed(nodes):
            n.stop()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
