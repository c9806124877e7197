"""Benchmark (not a test): the auditor's filters on a large audit log (issue 16).

    .venv/bin/python scripts/bench_audit_filters.py [--records 300000] [--postgres URL]

A log of `--records` records (50 departments, 300 people, 60 operations, 2 % refusals, a few rare outcomes)
is written straight into a fresh database with the node's schema (SQLite by default; with --postgres, a
schema of its own in that database, dropped at the end). Each figure is the median time of one page of 50
records, newest first (`AuditLog.query`, which the portal's audit page and `GET /api/v1/audit` both call):

- baseline: the newest page with no filter (a walk back along the primary key);
- one page filtered by a person, an operation, a rare outcome, a department, and a person within a day;
- the same filters with the indexes of migration 0014 dropped (and the two it replaced put back), to show
  what they buy;
- the CSV export's reading (`AuditLog.pages`, 1000 records a read) of one person's records, per record.

Target: every filtered page within 5x the unfiltered page (an index range as short as the page). Ratios are
against the baseline measured in the same run; the script exits 0 whatever they are.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from node.audit.service import AuditLog  # noqa: E402
from node.audit.store import audit_log  # noqa: E402
from node.config import DatabaseConfig  # noqa: E402
from node.db import make_engine, upgrade  # noqa: E402

NEW_INDEXES = ("ix_audit_log_actor_seq", "ix_audit_log_resource_seq", "ix_audit_log_user_seq",
               "ix_audit_log_action_seq", "ix_audit_log_outcome_seq")
# What the log had before migration 0014, put back for the comparison.
OLD_INDEXES = (("ix_audit_log_actor", "actor"), ("ix_audit_log_resource", "resource"))
DAY_MS = 86_400_000
START_MS = 1_780_000_000_000


def rows(n: int, rng: random.Random):
    depts = [f"370321/D{i:03d}" for i in range(50)]
    people = [f"user{i:03d}" for i in range(300)]
    actions = [f"area{i // 6}.op{i % 6}" for i in range(60)]
    step = 30 * DAY_MS // n  # a month of records
    for seq in range(1, n + 1):
        r = rng.random()
        outcome = "ok" if r < 0.98 else ("CONFLICT" if r > 0.9995 else "INVALID_INPUT")
        yield {"seq": seq, "at": START_MS + seq * step, "request_id": f"r{seq}", "message_id": None,
               "actor": rng.choice(depts), "user": rng.choice(people) if rng.random() < 0.6 else None,
               "role": "dept", "action": rng.choice(actions), "method": "POST", "path": "/api/v1/x",
               "resource": None, "keys_digest": None, "outcome": outcome, "status": 200, "latency_ms": 3,
               "details": None, "prev_hash": "0" * 64, "hash": "0" * 64}


async def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def run(args: argparse.Namespace) -> None:
    schema = None
    if args.postgres:
        schema = f"bench_audit_{os.getpid()}"
        admin = make_engine(DatabaseConfig(url=args.postgres))
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        await admin.dispose()
        db = DatabaseConfig(url=args.postgres, schema=schema, statement_timeout_s=600)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-audit-")
        db = DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp}/audit.db")
    engine = make_engine(db, "NORMAL")
    try:
        await upgrade(engine, schema)
        rng = random.Random(16)
        t = time.perf_counter()
        batch: list[dict] = []
        async with engine.begin() as conn:
            for row in rows(args.records, rng):
                batch.append(row)
                if len(batch) == 5000:
                    await conn.execute(sa.insert(audit_log), batch)
                    batch.clear()
            if batch:
                await conn.execute(sa.insert(audit_log), batch)
            if engine.url.get_backend_name() == "postgresql":
                await conn.execute(sa.text("ANALYZE audit_log"))
            else:
                await conn.execute(sa.text("ANALYZE"))
        print(f"{args.records} records written in {time.perf_counter() - t:.1f} s "
              f"({engine.url.get_backend_name()})", flush=True)

        log = AuditLog(engine)
        base = dict(actor=None, resource=None, since=None, until=None, message_id=None, after_seq=None, limit=50)
        day = START_MS + 15 * DAY_MS
        cases = {
            "person": {"user": "user123"},
            "operation": {"action": "area7.op3"},
            "rare outcome": {"outcome": "CONFLICT"},
            "department": {"actor": "370321/D017"},
            "person + one day": {"user": "user123", "since": day, "until": day + DAY_MS},
        }

        async def page(**filters):
            await log.query(**{**base, **filters})

        async def timings() -> tuple[float, dict[str, float]]:
            baseline = await median_ms(lambda: page(), args.repeat)
            return baseline, {name: await median_ms(lambda f=f: page(**f), args.repeat) for name, f in cases.items()}

        baseline, indexed = await timings()
        t = time.perf_counter()
        exported = 0
        export = {k: v for k, v in base.items() if k not in ("limit", "after_seq")}
        async for got in log.pages(**export, user="user123"):
            exported += len(got)
        export_s = time.perf_counter() - t
        async with engine.begin() as conn:
            for name in NEW_INDEXES:
                await conn.execute(sa.text(f"DROP INDEX {name}"))
            for name, column in OLD_INDEXES:
                await conn.execute(sa.text(f"CREATE INDEX {name} ON audit_log ({column})"))
        _, bare = await timings()

        print(f"\nbaseline: newest page, no filter: {baseline:.2f} ms (median of {args.repeat})")
        print(f"{'filter':<20}{'with 0014 indexes':>22}{'ratio':>8}{'before 0014':>14}{'ratio':>9}")
        for name in cases:
            print(f"{name:<20}{indexed[name]:>19.2f} ms{indexed[name] / baseline:>7.1f}x"
                  f"{bare[name]:>11.2f} ms{bare[name] / baseline:>8.1f}x")
        print(f"\nCSV export reading: {exported} records of one person in {export_s * 1000:.0f} ms "
              f"({export_s * 1e6 / max(exported, 1):.1f} µs a record; baseline page {baseline / 50 * 1000:.1f} µs a record)")
        worst = max(indexed.values()) / baseline
        print(f"target: every filtered page within 5x the unfiltered page: worst {worst:.1f}x "
              f"-> {'met' if worst <= 5 else 'missed'}")
    finally:
        await engine.dispose()
        if schema:
            admin = make_engine(DatabaseConfig(url=args.postgres))
            async with admin.begin() as conn:
                await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            await admin.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=300_000)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--postgres", help="postgresql+asyncpg://… URL (a schema of its own is made and dropped)")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
