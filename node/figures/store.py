"""Running totals of calls (one row a day, kind, resource, department and op), the signed daily reports of
this node and of its subtree, and the audit chain's checked head.

The totals are incremented in the audit journal's own commit (`tally`, called where the chain is appended):
a call is counted exactly when its record is stored, in the same transaction, so a batch that fails counts
nothing and a retried batch counts once. On PostgreSQL with several workers the increment is an upsert
(`ON CONFLICT DO UPDATE SET calls = calls + excluded.calls`), which the database applies atomically. Each
worker appends to a chain segment of its own, so these rows are where two workers' batches wait for each
other: the second's upsert waits for the first's commit. Measured with `scripts/bench_local.py --workers 2`
(4 Dec 2026): a commit took 5.5 ms without the tally against 6.0 ms with it, and requests/s moved within
the runs' spread, so the rows stay shared. Each batch locks them in key order, so two cannot deadlock."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.db import metadata, on_conflict_statement
from node.ids import resource_node

figures_daily = sa.Table(
    "figures_daily",
    metadata,
    sa.Column("node", sa.String(6), nullable=False),  # whose figures: this node's, or a node below (its reports)
    sa.Column("day", sa.String(10), nullable=False),  # the call's date in China Standard Time
    sa.Column("kind", sa.String(8), nullable=False),  # served (a resource of the node) / made (by its department)
    sa.Column("resource", sa.String(40), nullable=False),  # served: the resource called ("" for made)
    sa.Column("dept", sa.String(80), nullable=False),  # made: the calling department, <node>/<dept> ("" for served)
    sa.Column("op", sa.String(16), nullable=False),
    sa.Column("calls", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("latency_ms", sa.BigInteger, nullable=False),  # the sum, for the mean
    sa.PrimaryKeyConstraint("node", "day", "kind", "resource", "dept", "op", name="pk_figures_daily"),
)

# The signed daily reports (SPEC §5's signed feeds, feed `figures`): this node's own and those its children
# sent up, one a node and day; the newest (highest seq) replaces the one held.
figure_reports = sa.Table(
    "figure_reports",
    metadata,
    sa.Column("node", sa.String(6), nullable=False),
    sa.Column("day", sa.String(10), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),  # the doc without its call rows: what a page reads of it
    sa.Column("change_id", sa.BigInteger, nullable=False, unique=True),
    sa.PrimaryKeyConstraint("node", "day", name="pk_figure_reports"),
)

# How far the audit chain was checked, and what the last check found: the alert of a broken chain, read by
# every worker; written by the one doing the node's background work.
audit_checks = sa.Table(
    "audit_checks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),  # checked through this record
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("broken_seq", sa.BigInteger, nullable=True),
    sa.Column("reason", sa.String(400), nullable=True),
    sa.Column("checked_at", sa.BigInteger, nullable=False),
)

REPORT_COUNTER = "figure_report_change"
DAY_MS = 86_400_000
CST_MS = 8 * 3_600_000
# What the portal's own actions are, counted as the API's (a clerk's 核验 is a verify, whichever face served it).
OPS = {"sharing.query": "query", "sharing.verify": "verify", "sharing.compare": "compare",
       "portal.query.post": "query", "portal.verify.post": "verify", "portal.compare.post": "compare"}

NODE = re.compile(r"^\d{6}$")
_days: dict[int, str] = {}


def day_of(at_ms: int) -> str:
    """The date in China Standard Time of an instant, as YYYY-MM-DD (cached per day: this runs per record)."""
    n = (at_ms + CST_MS) // DAY_MS
    day = _days.get(n)
    if day is None:
        import datetime as _dt
        day = _days[n] = (_dt.date(1970, 1, 1) + _dt.timedelta(days=n)).isoformat()
        if len(_days) > 4096:
            _days.clear()
    return day


Key = tuple[str, str, str, str, str, str]


def tallies(records: Iterable[dict[str, Any]]) -> dict[Key, list[int]]:
    """The increments a batch of audit records makes: key (node, day, kind, resource, dept, op) → [calls, errors,
    latency_ms]. A department's call (API or portal) is one `made` at its node, by department and op, and
    also one `served` when the resource is its own node's, by resource and op; a call delivered from another
    node (`federation.deliver` of a service.call) is one `served`. A relay's record is neither: a call
    crossing three nodes is made once and served once. (By resource, or by department, not both: the cross
    product would make a row of nearly every call of a large node, and a page would read them all.)"""
    out: dict[Key, list[int]] = {}

    def add(key: Key, rec: dict[str, Any]) -> None:
        t = out.get(key)
        if t is None:
            t = out[key] = [0, 0, 0]
        t[0] += 1
        t[1] += 0 if (rec.get("outcome") or "ok") == "ok" else 1
        t[2] += int(rec.get("latency_ms") or 0)

    for rec in records:
        action = rec.get("action")
        op = OPS.get(action)  # type: ignore[arg-type]
        resource = str(rec.get("resource") or "")
        if op is not None:
            actor = str(rec.get("actor") or "")[:80]
            node, _, dept = actor.partition("/")
            if not dept or not NODE.match(node):
                continue  # refused before it had a department (a form sent without signing in)
            day = day_of(int(rec["at"]))
            add((node, day, "made", "", actor, op), rec)
            if resource and resource_node(resource) == node:
                add((node, day, "served", resource[:40], "", op), rec)
        elif action == "federation.deliver":
            details = rec.get("details") or {}
            if not isinstance(details, dict) or details.get("kind") != "service.call" or not details.get("op"):
                continue
            node = resource_node(resource) if resource else None
            if node is None:
                continue
            add((node, day_of(int(rec["at"])), "served", resource[:40], "", str(details["op"])[:16]), rec)
    return out


def _upsert(insert: Any) -> Any:
    ins = insert.values(node=sa.bindparam("node"), day=sa.bindparam("day"), kind=sa.bindparam("kind"), resource=sa.bindparam("resource"),
                        dept=sa.bindparam("dept"), op=sa.bindparam("op"), calls=sa.bindparam("calls"),
                        errors=sa.bindparam("errors"), latency_ms=sa.bindparam("latency_ms"))
    c = figures_daily.c
    return ins.on_conflict_do_update(
        index_elements=[c.node, c.day, c.kind, c.resource, c.dept, c.op],
        set_={"calls": c.calls + ins.excluded.calls, "errors": c.errors + ins.excluded.errors,
              "latency_ms": c.latency_ms + ins.excluded.latency_ms})


def tally(conn: sa.Connection, records: list[dict[str, Any]]) -> None:
    """Add a batch's calls to the running totals, in the caller's (the journal's) transaction. Rows in key
    order, so two workers' batches lock them in one order."""
    counts = tallies(records)
    if not counts:
        return
    rows = [{"node": k[0], "day": k[1], "kind": k[2], "resource": k[3], "dept": k[4], "op": k[5],
             "calls": v[0], "errors": v[1], "latency_ms": v[2]} for k, v in sorted(counts.items())]
    conn.execute(on_conflict_statement(conn.dialect.name, figures_daily, "add", _upsert), rows)


def day_rows(conn: sa.Connection, node: str, first_day: str, last_day: str) -> list[sa.Row]:
    """A node's rows of the days [first, last]: what its daily reports carry."""
    c = figures_daily.c
    q = (sa.select(figures_daily).where(c.node == node, c.day >= first_day, c.day <= last_day)
         .order_by(c.day, c.kind, c.resource, c.dept, c.op))
    return list(conn.execute(q).all())


def replace_reported(conn: sa.Connection, node: str, day: str, calls: list[list[Any]]) -> None:
    """A node's figures of one day as its newest report says (a report replaces the one before it whole)."""
    c = figures_daily.c
    conn.execute(sa.delete(figures_daily).where(c.node == node, c.day == day))
    if calls:
        conn.execute(sa.insert(figures_daily), [
            {"node": node, "day": day, "kind": k, "resource": r, "dept": d, "op": o, "calls": n, "errors": e,
             "latency_ms": lat} for k, r, d, o, n, e, lat in calls])


def sums(conn: sa.Connection, nodes: list[str], first_day: str, last_day: str, top: int = 50) -> dict[str, list[Any]]:
    """The calls of `nodes` over [first, last], added up by the database: per day and kind, per resource
    served, per department making them, per op served. A page reads a few hundred rows of sums, whatever the
    number of calls (or of days, nodes, resources and departments) behind them."""
    c = figures_daily.c
    where = sa.and_(c.node.in_(nodes), c.day >= first_day, c.day <= last_day)
    total = (sa.func.sum(c.calls).label("calls"), sa.func.sum(c.errors).label("errors"),
             sa.func.sum(c.latency_ms).label("latency_ms"))

    def grouped(*cols: Any, kind: str | None = None, limit: int | None = None) -> list[sa.Row]:
        q = sa.select(*cols, *total).where(where).group_by(*cols)
        if kind is not None:
            q = q.where(c.kind == kind)
        if limit is not None:
            q = q.order_by(sa.desc("calls")).limit(limit)
        return list(conn.execute(q).all())

    return {"daily": grouped(c.day, c.kind), "by_resource": grouped(c.resource, kind="served", limit=top),
            "by_dept": grouped(c.dept, kind="made", limit=top), "by_op": grouped(c.op, kind="served")}


async def own_reports(conn: AsyncConnection, node: str, first_day: str, last_day: str) -> list[sa.Row]:
    c = figure_reports.c
    q = sa.select(figure_reports).where(c.node == node, c.day >= first_day, c.day <= last_day)
    return list((await conn.execute(q)).all())


async def last_reports(conn: AsyncConnection) -> dict[str, int]:
    """Each node's latest report time (whatever its day): when it last reported."""
    c = figure_reports.c
    rows = (await conn.execute(sa.select(c.node, sa.func.max(c.updated_at)).group_by(c.node))).all()
    return {r[0]: int(r[1]) for r in rows}


async def held(conn: AsyncConnection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    if not keys:
        return {}
    c = figure_reports.c
    q = sa.select(c.node, c.day, c.seq).where(sa.tuple_(c.node, c.day).in_(keys))
    return {(r.node, r.day): int(r.seq) for r in (await conn.execute(q)).all()}


async def put_report(conn: AsyncConnection, row: dict[str, Any], replace: bool) -> None:
    c = figure_reports.c
    if replace:
        await conn.execute(sa.update(figure_reports).where(c.node == row["node"], c.day == row["day"])
                           .values(**{k: v for k, v in row.items() if k not in ("node", "day")}))
    else:
        await conn.execute(sa.insert(figure_reports).values(**row))


async def changes(conn: AsyncConnection, since: int, limit: int, nodes_in: set[str] | None) -> list[sa.Row]:
    c = figure_reports.c
    q = (sa.select(c.doc.label("entry"), c.change_id).where(c.change_id > since)
         .order_by(c.change_id).limit(limit))
    if nodes_in is not None:
        q = q.where(c.node.in_(sorted(nodes_in)))
    return list((await conn.execute(q)).all())


async def summaries(conn: AsyncConnection, nodes: list[str], first_day: str, last_day: str) -> list[sa.Row]:
    c = figure_reports.c
    q = sa.select(c.node, c.day, c.summary).where(c.node.in_(nodes), c.day >= first_day, c.day <= last_day)
    return list((await conn.execute(q)).all())


async def get_check(conn: AsyncConnection) -> sa.Row | None:
    return (await conn.execute(sa.select(audit_checks).where(audit_checks.c.id == 1))).first()


async def put_check(conn: AsyncConnection, row: dict[str, Any]) -> None:
    if await get_check(conn) is None:
        await conn.execute(sa.insert(audit_checks).values(id=1, **row))
    else:
        await conn.execute(sa.update(audit_checks).where(audit_checks.c.id == 1).values(**row))


# What the catalog figures read: this node's own entries, and for each the newest record change (the index on
# (resource_code, change_id) finds it in one step, however many records the resource has).

async def own_entries(conn: AsyncConnection, node: str) -> list[sa.Row]:
    from node.catalog.store import catalog_entries as ce
    q = sa.select(ce.c.code, ce.c.provider_dept, ce.c.entry).where(ce.c.node == node, ce.c.deleted.is_(False))
    return list((await conn.execute(q)).all())


async def data_state(conn: AsyncConnection, code: str) -> tuple[bool, int | None]:
    """(whether the resource holds a live record, when its records last changed)."""
    from node.data.store import records as r
    last = (await conn.execute(sa.select(r.c.updated_at).where(r.c.resource_code == code)
                               .order_by(r.c.change_id.desc()).limit(1))).scalar()
    if last is None:
        return False, None
    live = (await conn.execute(sa.select(sa.literal(1)).where(r.c.resource_code == code, r.c.deleted.is_(False))
                               .limit(1))).scalar()
    return live is not None, int(last)


async def overdue_steps(conn: AsyncConnection, node: str, today: str) -> int:
    """Applications at this node waiting on a step past its due date (review or decision)."""
    from node.applications.store import applications as a
    q = sa.select(sa.func.count()).select_from(a).where(a.c.provider_node == node, sa.or_(
        sa.and_(a.c.status == "submitted", a.c.review_due < today),
        sa.and_(a.c.status == "accepted", a.c.decision_due < today)))
    return int((await conn.execute(q)).scalar() or 0)


async def source_states(conn: AsyncConnection) -> list[sa.Row]:
    from node.exchange.store import exchange_sources as s
    return list((await conn.execute(sa.select(s.c.id, s.c.resource, s.c.dept, s.c.state))).all())


async def entry_names(conn: AsyncConnection, codes: list[str]) -> dict[str, str]:
    """The names of catalog entries (withdrawn ones too), in one query."""
    from node.catalog.store import catalog_entries as ce
    if not codes:
        return {}
    rows = (await conn.execute(sa.select(ce.c.code, ce.c.name).where(ce.c.code.in_(codes)))).all()
    return {r.code: r.name for r in rows}
