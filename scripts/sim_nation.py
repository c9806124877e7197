#!/usr/bin/env python3
"""The whole country in small (project issue 20): a national root above three provinces, each with cities and
counties, every one a real govnode node on loopback, to measure SPEC §18's replication scope and list propagation.

The nodes are hosted by worker processes exactly as in scripts/sim_province.py (whose workers, bring-up by real
invites and joins, and measurement helpers this script reuses): each has its own SQLite home and port. It measures
  1. a new list entry (POST /api/v1/lists/{code}/entries at a random county) reaching every node: p50 / p99 over
     --samples entries (target p99 <= 3 s);
  2. catalog rows per node with scopes: each county registers --entries province-scope entries and --entries
     national-scope ones; a node holds its own province's province-scope entries and every national one. The
     national ones travel as every entry did before scopes, so their count is the size without scopes, measured;
  3. a verify from a county of the first province on a province-scope resource of a county of another province:
     routed by its code up to the root and down (six hops), with the latency of --calls calls.
It stops by itself (also on Ctrl-C or an error) and removes its homes.

    .venv/bin/python scripts/sim_nation.py             # 1 + 3 × (1 + 3 + 9) = 40 nodes: a few minutes
    .venv/bin/python scripts/sim_nation.py --cities 4 --counties 4   # 1 + 3 × 21 = 64 nodes

This is a simulation, not a test: it prints figures against their targets and exits 0 when every target is
met, 1 otherwise (2 when the run itself failed).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim_province import (REPO, Division, Sim, Worker, entry_body, free_ports, on_all, pct,  # noqa: E402
                          post_json)

NATION = Division("000000", "国家政务数据共享交换平台", None, "national")
PROVINCES = ("370000", "330000", "320000")  # 山东省, 浙江省, 江苏省
TARGET_LIST_P99_S = 3.0


def read_nation(path: Path, provinces: tuple[str, ...], n_cities: int, n_counties: int) -> list[Division]:
    """The root, then each province with its first `n_cities` cities and `n_counties` counties of each (by
    code, skipping cities without counties), parents first."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = {r["code"]: r["name"] for r in rows}
    kids: dict[str, list[str]] = {}
    for r in rows:
        kids.setdefault(r["parent"].strip(), []).append(r["code"])
    nodes = [NATION]
    levels: dict[str, list[Division]] = {"province": [], "city": [], "county": []}
    for p in provinces:
        levels["province"].append(Division(p, names[p], NATION.code, "province"))
        cities = [c for c in sorted(kids.get(p, [])) if c.endswith("00") and kids.get(c)][:n_cities]
        for c in cities:
            levels["city"].append(Division(c, names[c], p, "city"))
            for k in sorted(kids[c])[:n_counties]:
                levels["county"].append(Division(k, names[k], c, "county"))
    return nodes + levels["province"] + levels["city"] + levels["county"]


class NationWorker(Worker):
    """sim_province's worker, with the counts this simulation reads: catalog rows by scope, list entries."""

    async def op_scope_counts(self) -> dict[str, dict[str, float]]:
        out = {}
        for code, n in self.nodes.items():
            db = n.read()
            total, national, size = db.execute(
                "SELECT count(*), coalesce(sum(entry LIKE '%\"scope\":\"national\"%'), 0), "
                "coalesce(avg(length(CAST(entry AS BLOB))), 0) FROM catalog_entries").fetchone()
            lists, lsize = db.execute("SELECT count(*), coalesce(avg(length(CAST(doc AS BLOB))), 0) "
                                      "FROM list_entries").fetchone()
            refused = db.execute("SELECT (SELECT count(*) FROM catalog_refusals) + "
                                 "(SELECT count(*) FROM list_refusals)").fetchone()[0]
            out[code] = {"catalog": total, "national": national, "province": total - national,
                         "entry_bytes": size, "list_entries": lists, "list_entry_bytes": lsize, "refused": refused}
        return out


class NationSim(Sim):
    levels = ("national", "province", "city", "county")

    # 1. List propagation -----------------------------------------------------------------------------------

    def list_propagation(self, rng: random.Random, tokens: dict[str, str]) -> list[float]:
        from node.ids import make_gb32100

        counties = [d for d in self.nodes if d.level == "county"]
        lists: dict[str, str] = {}
        times: list[float] = []
        for i in range(1, self.args.samples + 1):
            d = rng.choice(counties)
            if d.code not in lists:
                status, body = post_json(f"{d.url}/api/v1/lists", tokens[d.code], {
                    "name": f"{d.name}严重失信主体名单", "kind": "black", "public": False, "measures": ["限制政府采购"]})
                if status != 201:
                    raise RuntimeError(f"POST /api/v1/lists at {d.code} answered {status}: {body}")
                lists[d.code] = body["code"]
                time.sleep(0.5)  # the list itself travels first
            subject = make_gb32100(f"91{d.code}MA", i)
            # The entry's id is made by the node: watch for the subject's digest instead? The id is known only
            # from the answer, and the watch must start before the post: watch the answer's id right after it.
            t0 = time.time()
            status, body = post_json(f"{d.url}/api/v1/lists/{lists[d.code]}/entries", tokens[d.code],
                                     [{"subject": {"code": subject}, "reason": "模拟失信行为"}])
            t_ack = time.time()
            if status != 200:
                raise RuntimeError(f"POST entries at {d.code} answered {status}: {body}")
            entry = body["entries"][0]
            self.watch("list_entries", "id", entry)
            seen = self.seen(entry)
            missing = [c for c, t in seen.items() if t is None]
            if missing:
                self.failures.append(f"list entry {entry} never reached {len(missing)} nodes, e.g. {missing[:5]}")
                self.say(f"  [{i:2d}] from {d.code} {d.name}: NOT everywhere ({len(missing)} nodes miss it)")
                continue
            arrivals = sorted(t - t0 for c, t in seen.items() if c != d.code)  # type: ignore[operator]
            last = max(seen, key=lambda c: seen[c] or 0)
            times.append(arrivals[-1])
            self.say(f"  [{i:2d}] from {d.code} {d.name}: all {len(seen)} nodes in {arrivals[-1]:.2f} s "
                     f"(ack {t_ack - t0:.2f} s, half by {pct(arrivals, 50):.2f} s, last {last})")
            time.sleep(self.args.gap)
        return times

    # 2. Catalog sizes with scopes --------------------------------------------------------------------------

    def catalog_scopes(self, tokens: dict[str, str]) -> dict[str, dict[str, float]]:
        counties = [d for d in self.nodes if d.level == "county"]
        n = self.args.entries
        t = time.time()
        last_national = last_province = ""
        for d in counties:
            for k in range(n):
                for scope in ("province", "national"):
                    body = entry_body(d.name, k + (n if scope == "national" else 0))
                    if scope == "national":
                        body["scope"] = "national"
                    status, got = post_json(f"{d.url}/api/v1/catalog", tokens[d.code], body)
                    if status != 201:
                        raise RuntimeError(f"POST /api/v1/catalog at {d.code} answered {status}: {got}")
                    if scope == "national":
                        last_national = got["code"]
                    else:
                        last_province = got["code"]
        self.say(f"  registered {2 * n * len(counties)} entries ({n} of each scope at each of {len(counties)} "
                 f"counties) in {time.time() - t:.1f} s")
        # Settled when the last national entry is everywhere and the last province one in its province.
        self.watch("catalog_entries", "code", last_national)
        seen = self.seen(last_national)
        late = [c for c, v in seen.items() if v is None]
        if late:
            self.failures.append(f"the last national entry never reached {late[:5]}")
        time.sleep(3)  # the province-scope one was registered before it, and it went the same way
        counts: dict[str, dict[str, float]] = {}
        for part in on_all([(w, "scope_counts", {}) for w in self.workers]):
            counts.update(part)
        self.say(f"  settled {time.time() - t:.1f} s after the first registration (last province entry "
                 f"{last_province})")
        return counts

    # 3. A call across provinces ------------------------------------------------------------------------------

    def cross_province(self, tokens: dict[str, str]) -> tuple[list[float], list[str]]:
        counties = [d for d in self.nodes if d.level == "county"]
        caller = next(d for d in counties if d.code[:2] == PROVINCES[0][:2])
        provider = next(d for d in reversed(counties) if d.code[:2] != PROVINCES[0][:2])
        body = entry_body(provider.name, 9000)
        body["share"] = {"type": "unconditional", "methods": ["api"]}
        status, entry = post_json(f"{provider.url}/api/v1/catalog", tokens[provider.code], body)
        if status != 201:
            raise RuntimeError(f"registering at {provider.code} answered {status}: {entry}")
        status, got = post_json(f"{provider.url}/api/v1/resources/{entry['code']}/records", tokens[provider.code],
                                [{"id_number": "11010519491231002X", "name": "张三", "registered_on": "2026-01-01"}])
        if status != 200:
            raise RuntimeError(f"pushing a record at {provider.code} answered {status}: {got}")
        times, via = [], []
        for _ in range(self.args.calls):
            t0 = time.time()
            status, got = post_json(f"{caller.url}/api/v1/resources/{entry['code']}/verify", tokens[caller.code],
                                    {"key": "11010519491231002X", "fields": {"name": "张三"}})
            if status != 200 or got.get("match") is not True:
                self.failures.append(f"verify from {caller.code} on {entry['code']} answered {status}: {got}")
                break
            times.append(time.time() - t0)
            via = got["via"]
        self.say(f"  {caller.code} {caller.name} → {provider.code} {provider.name}: "
                 f"via {' → '.join(via)}")
        return times, via


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--divisions", type=Path, default=REPO.parent / "shared" / "data" / "gbt2260-divisions.csv",
                   help="GB/T 2260 divisions CSV (code,name,parent)")
    p.add_argument("--cities", type=int, default=3, help="cities of each province (default 3)")
    p.add_argument("--counties", type=int, default=3, help="counties of each city (default 3)")
    p.add_argument("--workers", type=int, default=2, help="worker processes hosting the nodes (default 2)")
    p.add_argument("--samples", type=int, default=10, help="list entries timed to every node (default 10)")
    p.add_argument("--entries", type=int, default=2, help="catalog entries of each scope at each county (default 2)")
    p.add_argument("--calls", type=int, default=20, help="verify calls across provinces (default 20)")
    p.add_argument("--gap", type=float, default=0.5, help="pause between samples (s)")
    p.add_argument("--timeout", type=float, default=60.0, help="longest wait for one step (s)")
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args(argv)
    args.profile = None
    if not args.divisions.is_file():
        p.error(f"no divisions CSV at {args.divisions} (use --divisions)")
    rng = random.Random(args.seed)
    nodes = read_nation(args.divisions, PROVINCES, args.cities, args.counties)
    by_level = {lvl: sum(1 for d in nodes if d.level == lvl) for lvl in ("province", "city", "county")}
    print(f"govnode national simulation: 1 root + {by_level['province']} provinces + {by_level['city']} cities + "
          f"{by_level['county']} counties = {len(nodes)} nodes on {args.workers} worker processes")
    base = Path(tempfile.mkdtemp(prefix="govnode-nation-"))
    sim = NationSim(args, base, nodes, nodes[-1])
    sim.place(free_ports(len(nodes)))
    rc = 2
    t_start = time.time()
    load0 = os.getloadavg()
    try:
        sim.start_workers(NationWorker)
        t_up = sim.bring_up()
        time.sleep(3)  # the last nodes to join are still storing the registry they pulled
        tokens = sim.tokens([d for d in nodes if d.level == "county"], "社会信用体系建设办公室")

        print(f"\n[1] a new list entry at a random county reaching all {len(nodes)} nodes")
        times = sim.list_propagation(rng, tokens)
        p50, p99 = pct(times, 50), pct(times, 99)
        ok1 = len(times) == args.samples and p99 <= TARGET_LIST_P99_S

        print(f"\n[2] catalog rows per node with scopes ({args.entries} entries of each scope a county)")
        counts = sim.catalog_scopes(tokens)

        print(f"\n[3] a verify across provinces ({args.calls} calls)")
        call_times, via = sim.cross_province(tokens)

        print("\n== figures ==")
        print(f"  [1] new list entry at every node ({len(times)} of {args.samples} samples): p50 {p50:.2f} s, "
              f"p99 {p99:.2f} s, max {max(times, default=float('nan')):.2f} s   "
              f"target p99 <= {TARGET_LIST_P99_S:.0f} s: {'met' if ok1 else 'MISSED'}")
        n_counties = by_level["county"]
        per_province = n_counties // len(PROVINCES) * args.entries
        print(f"  [2] catalog rows held (province-scope: {per_province} registered in each province, "
              f"{n_counties * args.entries} in all; national-scope: {n_counties * args.entries} in all):")
        ok2 = True
        for lvl in ("national", "province", "city", "county"):
            cs = [counts[d.code] for d in nodes if d.level == lvl and d.code in counts]
            prov = sorted({int(c["province"]) for c in cs})
            nat = sorted({int(c["national"]) for c in cs})
            print(f"      {lvl:8s} ({len(cs):2d} nodes): province-scope rows {prov}, national-scope rows {nat}, "
                  f"list entries {sorted({int(c['list_entries']) for c in cs})}")
            want_prov = 0 if lvl == "national" else per_province
            ok2 = ok2 and prov == [want_prov] and nat == [n_counties * args.entries]
        sizes = [c["entry_bytes"] for c in counts.values() if c["entry_bytes"]]
        lsizes = [c["list_entry_bytes"] for c in counts.values() if c["list_entry_bytes"]]
        print(f"      a catalog entry is {sum(sizes) / max(1, len(sizes)):.0f} bytes as signed, a list entry "
              f"{sum(lsizes) / max(1, len(lsizes)):.0f} bytes; refused objects logged: "
              f"{sum(int(c['refused']) for c in counts.values())}   scopes as SPEC §18: {'yes' if ok2 else 'NO'}")
        ok3 = len(call_times) == args.calls and len(via) == 6
        print(f"  [3] verify across provinces ({len(via)} hops): p50 {pct(call_times, 50) * 1000:.0f} ms, "
              f"p99 {pct(call_times, 99) * 1000:.0f} ms   {'ok' if ok3 else 'FAILED'}")
        print(f"  bring-up {t_up:.1f} s; machine: {os.cpu_count()} CPUs, load average {load0[0]:.1f} at the start, "
              f"{os.getloadavg()[0]:.1f} now (other processes share the CPUs)")
        if sim.failures:
            print("  failures:\n    " + "\n    ".join(sim.failures))
        rc = 0 if ok1 and ok2 and ok3 and not sim.failures else 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", file=sys.stderr)
        rc = 130
    except Exception as exc:  # noqa: BLE001 - report, then clean up
        print(f"\nthe simulation failed: {exc}", file=sys.stderr)
    finally:
        sim.finish()
        print(f"done in {time.time() - t_start:.0f} s; homes removed")
    return rc


if __name__ == "__main__":
    sys.exit(main())
