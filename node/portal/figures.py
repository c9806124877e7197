"""The operator's figures (绩效统计), the federation as a picture (联邦拓扑) and the alerts of the home page.

Thin handlers: the numbers come from node.figures.service (running totals and signed reports, never a scan of
the audit log); the charts are drawn here as SVG (node.portal.charts), each beside a table of the same
numbers, and every table can be downloaded as CSV or XLSX."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from aiohttp import web

from node.accounts.people import CST, Person
from node.audit.http import note
from node.context import CONFIG
from node.errors import InvalidInput
from node.federation.http import FEDERATION
from node.figures import store as figures_store
from node.figures.http import FIGURES
from node.ids import now_ms
from node.items.http import ITEMS
from node.portal import charts
from node.portal.data import XLSX_TYPE, _csv_bytes
from node.portal.pages import PortalRoutes

routes = PortalRoutes()
VIEWERS = ("operator", "auditor")
PERIODS = {"7": 7, "30": 30, "90": 90}
OPS = {"query": "查询", "verify": "核验", "compare": "比对"}
WORKFLOWS = {"application": "共享申请", "data_request": "数据需求"}
# Per kind: its statuses as the figures' columns, and the Chinese names of its two steps (node.figures.workflow_kinds).
STATUSES = {"application": {"submitted": "待平台审核", "accepted": "待部门决定", "approved": "已批准",
                            "rejected": "未通过", "withdrawn": "已撤回"},
            "data_request": {"submitted": "待平台分派", "accepted": "待部门答复", "fulfilled": "已满足",
                             "rejected": "未满足"}}
STEPS = {"application": ("审核", "决定"), "data_request": ("分派", "答复")}
REPORT_STATES = {"ok": "按时报送", "stale": "报送中断", "missing": "从未报送"}


def _period(request: web.Request) -> tuple[int, bool]:
    days = request.query.get("days", "7")
    scope = request.query.get("scope", "node")
    if days not in PERIODS:
        raise InvalidInput("统计周期只能是 7、30 或 90 天", [{"field": "days", "error": "须为 7、30 或 90"}])
    if scope not in ("node", "subtree"):
        raise InvalidInput("统计范围只能是本节点或本级及下级", [{"field": "scope", "error": "须为 node 或 subtree"}])
    return PERIODS[days], scope == "subtree"


def tables(f: dict[str, Any]) -> dict[str, tuple[str, list[str], list[list[Any]]]]:
    """Every table of the figures page as (title, header, rows): what the page shows and the downloads hold."""
    out: dict[str, tuple[str, list[str], list[list[Any]]]] = {
        "days": ("每日调用", ["日期", "服务调用次数", "发起调用次数", "出错次数", "平均耗时(毫秒)"],
                 [[d["day"], d["served"], d["made"], d["errors"], d["mean_ms"]] for d in f["days"]]),
        "resources": ("各资源被调用", ["资源代码", "资源名称", "调用次数", "出错次数", "平均耗时(毫秒)"],
                      [[r["key"], r.get("name", ""), r["calls"], r["errors"], r["mean_ms"]] for r in f["by_resource"]]),
        "depts": ("各部门发起调用", ["部门", "调用次数", "出错次数", "平均耗时(毫秒)"],
                  [[r["key"], r["calls"], r["errors"], r["mean_ms"]] for r in f["by_dept"]]),
    }
    for wf, rows in f["workflows"].items():
        statuses = STATUSES.get(wf, {})
        first, second = STEPS.get(wf, ("审核", "决定"))
        days_first = "3个工作日" if wf == "application" else "10个工作日"
        out[f"workflow_{wf}"] = (
            f"{WORKFLOWS.get(wf, wf)}办理（按提供部门）",
            ["提供部门", *statuses.values(), f"{first}按时率({days_first})", f"{second}按时率(10个工作日)"],
            [[r["dept"], *[r.get(s, 0) for s in statuses], r["review_rate"], r["decision_rate"]] for r in rows])
    out["feedback"] = ("数据纠错", ["提供部门", "收到", "已更正", "已办结", "按时办结率", "平均办结(小时)"],
                       [[r["dept"], r["received"], r["corrected"], r["resolved"], r["on_time_rate"], r["mean_hours"]]
                        for r in f["feedback"]])
    i = f.get("items")
    if i is not None:
        out["items"] = ("政务服务事项材料减免（本级，累计）", ["有办件的事项", "一证通办次数", "共享替代的材料(份)", "材料减免率"],
                        [[i["items"], i["calls"], i["replaced"], i["reduction_rate"]]])
    c = f["catalog"]
    out["catalog"] = ("目录与数据", ["目录数", "有数据的目录", "有目录必有数据比率", "可判定更新周期的目录", "按周期更新", "数据鲜活比率"],
                      [[c["entries"], c["with_data"], c["with_data_rate"], c["judged"], c["fresh"], c["fresh_rate"]]])
    if f["nodes"]:
        out["nodes"] = ("下级节点报送", ["节点", "状态", "最近报送"],
                        [[f"{n.get('name', n['node'])}（{n['node']}）", REPORT_STATES[n["state"]], _when(n["last_report"])]
                         for n in f["nodes"]])
    return out


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, CST).strftime("%Y-%m-%d %H:%M:%S") if ms else "—"


def _ago(ms: int | None, now: int) -> str:
    if not ms:
        return "从未"
    s = max(0, (now - ms) // 1000)
    if s < 60:
        return f"{s} 秒前"
    if s < 3600:
        return f"{s // 60} 分钟前"
    if s < 86400:
        return f"{s // 3600} 小时前"
    return f"{s // 86400} 天前"


async def _figures(request: web.Request, days: int, subtree: bool) -> dict[str, Any]:
    """The figures, with names beside codes: of the nodes below (from their certificates) and of the resources
    (from the catalog)."""
    f = await request.app[FIGURES].dashboard(days, subtree)
    trust = request.app[FEDERATION].trust
    for n in f["nodes"]:
        cert = trust.certificate(n["node"]) if trust is not None else None
        n["name"] = cert["name"] if cert else n["node"]
    async with request.app[FIGURES].engine.connect() as conn:
        names = await figures_store.entry_names(conn, [r["key"] for r in f["by_resource"]])
    for r in f["by_resource"]:
        r["name"] = names.get(r["key"], "")
    # 材料减免率 (issue 19): this node's service items only, as running totals since they were published; the
    # reports up the tree do not carry them yet, so a parent shows its own.
    f["items"] = await request.app[ITEMS].figures()
    return f


@routes.get("/portal/figures", name="portal.figures", template="figures.html", roles=VIEWERS, nav="绩效统计",
            order=70)
async def figures(request: web.Request, person: Person | None) -> dict[str, Any]:
    days, subtree = _period(request)
    f = await _figures(request, days, subtree)
    labels = [d["day"] for d in f["days"]]
    resources = f["by_resource"][:10]
    depts = f["by_dept"][:10]
    rates = [("有目录必有数据", f["catalog"]["with_data_rate"]), ("数据鲜活", f["catalog"]["fresh_rate"])]
    if f.get("items"):
        rates.append(("材料减免率", f["items"]["reduction_rate"]))
    for wf, rows in f["workflows"].items():
        done = sum(r["review_done"] for r in rows)
        first, second = STEPS.get(wf, ("审核", "决定"))
        rates.append((f"{WORKFLOWS.get(wf, wf)}{first}按时", sum(r["review_on_time"] for r in rows) / done if done else None))
        done = sum(r["decision_done"] for r in rows)
        rates.append((f"{WORKFLOWS.get(wf, wf)}{second}按时", sum(r["decision_on_time"] for r in rows) / done if done else None))
    return {
        "f": f, "days": str(days), "scope": "subtree" if subtree else "node", "tables": tables(f),
        "daily_chart": charts.columns(labels, [("服务调用", [d["served"] for d in f["days"]]),
                                               ("发起调用", [d["made"] for d in f["days"]]),
                                               ("出错", [d["errors"] for d in f["days"]])], title="每日调用"),
        "resource_chart": charts.bars([(r.get("name") or r["key"], r["calls"]) for r in resources],
                                      title="各资源被调用次数"),
        "dept_chart": charts.bars([(r["key"], r["calls"]) for r in depts], title="各部门发起调用次数"),
        "rate_chart": charts.bars(rates, title="考核比率", percent=True),
        "ops": OPS, "report_states": REPORT_STATES, "when": _when,
    }


@routes.get("/portal/figures/download.{fmt:csv|xlsx}", name="portal.figures.download", roles=VIEWERS)
async def download(request: web.Request, person: Person | None) -> web.StreamResponse:
    days, subtree = _period(request)
    fmt = request.match_info["fmt"]
    f = await _figures(request, days, subtree)
    all_tables = tables(f)
    name = request.query.get("table", "days")
    if fmt == "csv" and name not in all_tables:
        raise InvalidInput("没有这张统计表", [{"field": "table", "error": f"须为 {'、'.join(all_tables)} 之一"}])
    note(request, figures=name if fmt == "csv" else "all", days=days, subtree=subtree)
    stamp = f"{f['first']}至{f['last']}"
    if fmt == "csv":
        title, header, rows = all_tables[name]
        body = await asyncio.to_thread(_csv_bytes, [header, *rows])
        filename, ctype = f"{title}-{stamp}.csv", "text/csv; charset=utf-8"
    else:
        body = await asyncio.to_thread(_workbook, list(all_tables.values()))
        filename, ctype = f"绩效统计-{stamp}.xlsx", XLSX_TYPE
    from urllib.parse import quote
    return web.Response(body=body, headers={"Content-Type": ctype,
                                            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}"})


def _workbook(sheets: list[tuple[str, list[str], list[list[Any]]]]) -> bytes:
    import io

    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    for title, header, rows in sheets:
        ws = wb.create_sheet(title[:31])
        ws.append(header)
        for row in rows:
            ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


@routes.get("/portal/federation", name="portal.federation", template="federation.html", roles=VIEWERS,
            nav="联邦拓扑", order=71)
async def federation(request: web.Request, person: Person | None) -> dict[str, Any]:
    fed = request.app[FEDERATION]
    config = request.app[CONFIG]
    now = now_ms()
    health = await fed.health()
    trust = fed.trust
    async with request.app[FIGURES].engine.connect() as conn:
        last_report = await figures_store.last_reports(conn)
        check = await figures_store.get_check(conn)

    def name_of(node: str) -> str:
        cert = trust.certificate(node) if trust is not None else None
        return cert["name"] if cert else node

    peers = []
    for node, st in sorted((health.get("peers") or {}).items()):
        state = {True: "up", False: "down"}.get(st.get("reachable"), "unknown")
        lag = last_report.get(node) if st["role"] == "child" else st.get("last_ok")
        peers.append({
            "id": node, "name": name_of(node), "role": st["role"], "state": state,
            "state_label": {"up": "正常", "down": "无法连接", "unknown": "尚未联系"}[state],
            "last_ok": st.get("last_ok"), "last_error": st.get("last_error"), "outbox": st.get("outbox"),
            "lag": lag,
            "lines": [f"最近联系：{_ago(st.get('last_ok'), now)}", f"待发消息：{st.get('outbox') if st.get('outbox') is not None else '—'} 条",
                      f"复制滞后：{_ago(lag, now) if lag else '—'}"],
        })
    center = {"id": config.node.id, "name": config.node.name, "state": "self", "state_label": "本节点",
              "lines": [f"下级节点：{sum(1 for p in peers if p['role'] == 'child')} 个",
                        f"无法连接：{sum(1 for p in peers if p['state'] == 'down')} 个"]}
    parent = next((p for p in peers if p["role"] == "parent"), None)
    children = [p for p in peers if p["role"] == "child"]
    return {"picture": charts.federation(center, parent, children), "peers": peers, "joined": health.get("joined"),
            "when": _when, "check": check, "now": now}


async def alerts_for(request: web.Request, person: Person) -> list[dict[str, Any]]:
    """The alerts block of an operator's home page (and the govnode_alert gauges, refreshed as it is read)."""
    if person.account.role != "operator":
        return []
    return await request.app[FIGURES].export_alerts()
