"""The arithmetic of the figures (issue 16): what each node counts from its audit records, and the sum over a
subtree of its own counts and the reports of the nodes below. A call made at one county on another county's
resource, relayed by their city, is counted once as made (at the caller's county) and once as served (at the
provider's county), never at the relay; a node that stopped reporting is shown as stale, with the figures it
last sent. The running totals are the real tables, on an in-memory SQLite database per node."""

from __future__ import annotations

import sqlalchemy as sa

from node.figures import store
from node.figures.service import call_figures, combine, reporting
from node.figures.store import day_of

DAY = "2026-12-03"
AT = 1_796_256_000_000  # 2026-12-03 08:00 CST
A, B, C = "370321", "370303", "370300"  # two counties and their city
RES_B = "101001/370303000001"
RES_A = "101001/370321000001"


def database() -> sa.Connection:
    engine = sa.create_engine("sqlite://")
    store.figures_daily.create(engine)
    return engine.connect()


def counted(records: list[dict]) -> sa.Connection:
    """A node's database after its journal stored `records`."""
    conn = database()
    store.tally(conn, records)
    return conn


def report_calls(conn: sa.Connection, node: str) -> list[list]:
    """What the node's daily report carries (as node.figures.service.FiguresService.own_parts builds it)."""
    return [[r.kind, r.resource, r.dept, r.op, r.calls, r.errors, r.latency_ms]
            for r in store.day_rows(conn, node, DAY, DAY)]


def figures_at(conn: sa.Connection, nodes: list[str], days: list[str] | None = None) -> dict:
    days = days or [DAY]
    return call_figures(store.sums(conn, nodes, days[0], days[-1]), days)


def test_day_is_china_standard_time():
    assert day_of(AT) == DAY
    assert day_of(1_796_227_200_000 - 1) == "2026-12-02"  # 23:59:59.999 CST of the day before
    assert day_of(1_796_227_200_000) == DAY  # midnight CST


def test_a_relayed_call_is_made_once_and_served_once():
    at_a = [{"at": AT, "action": "sharing.verify", "actor": f"{A}/DEPT1", "resource": RES_B, "outcome": "ok",
             "latency_ms": 30}]
    at_c = [{"at": AT, "action": "federation.relay", "actor": A, "resource": None, "outcome": "ok", "latency_ms": 20,
             "details": {"kind": "service.call", "origin": A, "destination": B}}]
    at_b = [{"at": AT, "action": "federation.deliver", "actor": A, "resource": RES_B, "outcome": "ok",
             "latency_ms": 4, "details": {"kind": "service.call", "op": "verify", "requester": f"{A}/DEPT1"}}]
    a, b, city = counted(at_a), counted(at_b), counted(at_c)
    assert report_calls(city, C) == []  # the relay counted nothing
    # The counties' reports reach the city, which adds them to its own (none) over its subtree.
    store.replace_reported(city, A, DAY, report_calls(a, A))
    store.replace_reported(city, B, DAY, report_calls(b, B))
    figures = figures_at(city, [C, A, B])
    assert (figures["made"], figures["served"], figures["errors"]) == (1, 1, 0)
    assert figures["by_resource"] == [{"key": RES_B, "calls": 1, "errors": 0, "mean_ms": 4.0}]
    assert figures["by_dept"] == [{"key": f"{A}/DEPT1", "calls": 1, "errors": 0, "mean_ms": 30.0}]
    assert figures["by_op"] == {"verify": 1}
    # A newer report of a day replaces the one before it: sent twice, counted once.
    store.tally(b, at_b)
    store.replace_reported(city, B, DAY, report_calls(b, B))
    store.replace_reported(city, B, DAY, report_calls(b, B))
    assert figures_at(city, [C, A, B])["served"] == 2
    # The city alone: nothing of its own.
    assert figures_at(city, [C])["served"] == figures_at(city, [C])["made"] == 0


def test_local_calls_portal_and_api_alike_errors_and_latency():
    records = [
        {"at": AT, "action": "sharing.verify", "actor": f"{A}/CIVIL", "resource": RES_A, "outcome": "ok", "latency_ms": 2},
        {"at": AT, "action": "portal.verify.post", "actor": f"{A}/CIVIL", "resource": RES_A, "outcome": "ok",
         "latency_ms": 4},
        {"at": AT, "action": "sharing.query", "actor": f"{A}/CIVIL", "resource": RES_A, "outcome": "GRANT_REQUIRED",
         "latency_ms": 3},
        # not calls: a catalog search, a sign-in page, a record push, a notify delivered
        {"at": AT, "action": "catalog.search", "actor": f"{A}/CIVIL", "outcome": "ok", "latency_ms": 1},
        {"at": AT, "action": "portal.verify", "actor": f"{A}/CIVIL", "resource": RES_A, "outcome": "ok", "latency_ms": 1},
        {"at": AT, "action": "federation.deliver", "actor": B, "resource": None, "outcome": "ok", "latency_ms": 1,
         "details": {"kind": "application.submit"}},
        # a form sent without signing in: refused before it had a department
        {"at": AT, "action": "portal.verify.post", "actor": "anonymous", "resource": RES_A, "outcome": "UNAUTHENTICATED",
         "latency_ms": 1},
    ]
    conn = counted(records)
    store.tally(conn, records[:1])  # a second batch adds to the same rows
    figures = figures_at(conn, [A])
    assert (figures["made"], figures["served"], figures["errors"]) == (4, 4, 1)
    assert figures["mean_ms"] == 2.8 and figures["error_rate"] == 0.25
    assert figures["by_op"] == {"query": 1, "verify": 3}
    assert figures["days"] == [{"day": DAY, "served": 4, "made": 4, "errors": 1, "latency_ms": 11, "mean_ms": 2.8}]


def test_subtree_sums_nodes_and_days_and_counts_the_catalog_once_per_node():
    days = ["2026-12-02", DAY]
    city = database()
    store.replace_reported(city, A, "2026-12-02", [["served", RES_A, "", "query", 5, 1, 50]])
    store.replace_reported(city, A, DAY, [["served", RES_A, "", "query", 2, 0, 10]])
    store.replace_reported(city, B, DAY, [["served", RES_B, "", "verify", 3, 0, 3], ["made", "", f"{B}/Y", "query", 1, 0, 9]])
    store.replace_reported(city, B, "2026-11-20", [["served", RES_B, "", "verify", 100, 0, 0]])  # outside the window
    f = figures_at(city, [C, A, B], days)
    assert f["served"] == 10 and f["made"] == 1 and f["errors"] == 1
    assert [d["served"] for d in f["days"]] == [5, 5]
    assert [(r["key"], r["calls"]) for r in f["by_resource"]] == [(RES_A, 7), (RES_B, 3)]
    assert figures_at(city, [C, B], days)["served"] == 3  # scope: only the nodes asked for

    parts = [
        {"node": A, "day": "2026-12-02", "catalog": {"entries": 9, "with_data": 1, "judged": 9, "fresh": 0},
         "workflows": {"application": [{"dept": f"{A}/P", "statuses": {"approved": 1}, "review_done": 1,
                                        "review_on_time": 1, "decision_done": 1, "decision_on_time": 0}]}},
        {"node": A, "day": DAY, "catalog": {"entries": 4, "with_data": 3, "judged": 4, "fresh": 2},
         "workflows": {"application": [{"dept": f"{A}/P", "statuses": {"submitted": 2}, "review_done": 1,
                                        "review_on_time": 0}]},
         "feedback": [{"dept": f"{A}/P", "received": 2, "corrected": 1, "resolved": 1, "resolved_on_time": 1,
                       "resolve_ms": 7_200_000}]},
        {"node": B, "day": DAY, "catalog": {"entries": 6, "with_data": 6, "judged": 5, "fresh": 5}},
    ]
    f = combine(parts, days)
    # the catalog is a state: each node's latest day, once (A's 4 entries, not 9 + 4)
    assert f["catalog"] == {"entries": 10, "with_data": 9, "judged": 9, "fresh": 7, "with_data_rate": 0.9,
                            "fresh_rate": round(7 / 9, 4)}
    wf = f["workflows"]["application"][0]
    assert (wf["dept"], wf["approved"], wf["submitted"], wf["review_done"], wf["review_on_time"]) == (f"{A}/P", 1, 2, 2, 1)
    assert wf["review_rate"] == 0.5 and wf["decision_rate"] == 0.0
    assert f["feedback"][0]["mean_hours"] == 2.0 and f["feedback"][0]["on_time_rate"] == 1.0


def test_a_node_that_stopped_reporting_is_stale_and_one_that_never_did_is_missing():
    now = AT
    states = reporting([A, B, C], {A: now - 60_000, B: now - 3_600_000}, now, stale_ms=900_000)
    assert [s["state"] for s in states] == ["ok", "stale", "missing"]
