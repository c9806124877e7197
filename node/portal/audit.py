"""审计 (the auditor's view): the audit log with filters (department, person, resource, operation, outcome,
time), each record's details, the chain check `govnode audit verify` runs, and the filtered log as CSV.
Operators and auditors read it; nothing here changes anything. The filters are the API's (`AuditQuery`,
`filters_of`), served by the same `AuditLog` methods, on indexed columns, newest first by sequence number."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timedelta
from typing import Any

from aiohttp import web

from node.accounts.http import ACCOUNTS
from node.accounts.people import Person
from node.audit.http import AUDIT, MAX_INT64, AuditQuery, filters_of
from node.portal.pages import ERROR_TITLES, PortalRoutes, show_on_error
from node.portal.wording import chain_break, parse_form
from node.workdays import CST

routes = PortalRoutes()
READERS = ("operator", "auditor")
PAGE_SIZE = 50
FILTERS = ("dept", "user", "resource", "action", "outcome", "since", "until")
OUTCOMES = [("", "全部结果"), ("ok", "成功"), *((code, f"{code}（{title}）") for code, title in ERROR_TITLES.items()),
            ("REPLAY", "REPLAY（重放）")]
CSV_COLUMNS = ("seq", "at", "request_id", "message_id", "actor", "user", "role", "action", "method", "path",
               "resource", "outcome", "status", "latency_ms", "details", "prev_hash", "hash")
CSV_HEADER = ("序号", "时间", "请求编号", "消息编号", "部门", "人员", "角色", "操作", "方法", "路径", "资源", "结果",
              "状态码", "耗时(ms)", "详情", "前一哈希", "哈希")


def _query(request: web.Request) -> tuple[dict[str, str], AuditQuery, int | None]:
    """The filters as the form sent them, the API's query made of them, and the page's keyset (`before`).
    The form's `until` is a day, included whole."""
    sent = {name: request.query.get(name, "").strip() for name in FILTERS}
    data: dict[str, Any] = {k: v or None for k, v in sent.items()}
    if data["until"]:
        try:
            data["until"] = (date.fromisoformat(data["until"]) + timedelta(days=1)).isoformat()
        except ValueError:
            pass  # the model says what is wrong with it
    q = parse_form(AuditQuery, data, lambda loc, _msg: str(loc[0]) if loc else "dept")
    before = request.query.get("before", "")
    return sent, q, int(before) if before.isdigit() and 0 < int(before) <= MAX_INT64 else None


async def _departments(request: web.Request) -> list[tuple[str, str]]:
    return [(d["code"], f"{d['name']}（{d['code']}）") for d in await request.app[ACCOUNTS].list()]


@routes.get("/portal/audit", name="portal.audit", template="audit.html", roles=READERS, nav="审计日志", order=80)
async def audit_log(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    sent = {name: request.query.get(name, "") for name in FILTERS}
    context: dict[str, Any] = {"f": sent, "records": [], "outcomes": OUTCOMES, "depts": await _departments(request),
                               "next_url": None, "first_url": None, "csv_url": None}
    show_on_error(request, "audit.html", **context)
    sent, q, before = _query(request)
    records = await request.app[AUDIT].query(**filters_of(q, person.account.node), after_seq=before,
                                            limit=PAGE_SIZE)
    for r in records:
        r["when"] = _when(r["at"])
    chosen = {k: v for k, v in sent.items() if v}
    base = request.rel_url.with_query(chosen)
    return {**context, "f": sent, "records": records,
            "next_url": str(base.update_query(before=records[-1]["seq"])) if len(records) == PAGE_SIZE else None,
            "first_url": str(base) if before else None,
            "csv_url": str(request.app.router["portal.audit.csv"].url_for().with_query(chosen))}


@routes.get(r"/portal/audit/{seq:[1-9][0-9]{0,17}}", name="portal.audit.record", template="audit_record.html",
            roles=READERS)
async def audit_record(request: web.Request, person: Person | None) -> dict[str, Any]:
    record = await request.app[AUDIT].get(int(request.match_info["seq"]))
    record["when"] = _when(record["at"])
    details = json.dumps(record["details"], ensure_ascii=False, indent=2, sort_keys=True) if record["details"] else ""
    return {"r": record, "details": details}


@routes.get("/portal/audit/verify", name="portal.audit.verify", template="audit_verify.html", roles=READERS)
async def audit_verify(request: web.Request, person: Person | None) -> dict[str, Any]:
    """The chain check of `govnode audit verify`, from the first record to the head."""
    log = request.app[AUDIT]
    broken = await log.verify()
    record = None
    if broken is not None:
        try:
            record = await log.get(broken.seq)
            record["when"] = _when(record["at"])
        except Exception:  # noqa: BLE001 - a missing record is what the break says; shown without it
            record = None
    return {"broken": broken, "reason": chain_break(broken.reason) if broken else "", "record": record,
            "pending": await log.pending_intents(), "checked_at": datetime.now(CST).strftime("%Y-%m-%d %H:%M:%S")}


def _cell(value: Any) -> str:
    """A CSV cell. A value that a spreadsheet would take for a formula (=, +, -, @ first) is prefixed with an
    apostrophe, so an exported path or detail never runs as one when the file is opened."""
    if value is None:
        return ""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True) if isinstance(value, dict) else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, CST).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@routes.get("/portal/audit.csv", name="portal.audit.csv", roles=READERS)
async def audit_csv(request: web.Request, person: Person | None) -> web.StreamResponse:
    """The filtered log as CSV, newest first, streamed a thousand records at a time (UTF-8 with a byte-order
    mark, so that Excel and WPS open it as such)."""
    assert person is not None
    sent, q, before = _query(request)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f"attachment; filename=\"audit-{person.account.node}-{datetime.now(CST):%Y%m%d%H%M}.csv\""})
    await resp.prepare(request)
    out = io.StringIO()
    writer = csv.writer(out)
    out.write("\ufeff")
    writer.writerow(CSV_HEADER)
    async for rows in request.app[AUDIT].pages(**filters_of(q, person.account.node), after_seq=before):
        for r in rows:
            writer.writerow([_when(r["at"]) if c == "at" else _cell(r[c]) for c in CSV_COLUMNS])
        await resp.write(out.getvalue().encode("utf-8"))
        out.seek(0)
        out.truncate()
    if out.tell():
        await resp.write(out.getvalue().encode("utf-8"))
    await resp.write_eof()
    return resp
