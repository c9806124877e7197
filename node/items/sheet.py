"""Service items as an XLSX sheet, the form departments already keep their 实施清单 in: one row a material, the
item's columns repeated on each of its rows. Export writes every item held (basic items as one row without
materials); import publishes the caller's implemented items, all or none, each refusal naming its rows."""

from __future__ import annotations

import io
import tempfile
from typing import Any

from openpyxl import Workbook
from pydantic import ValidationError

from node.accounts.service import Account
from node.config import XlsxLimits
from node.data.xlsx import release_memory, xlsx_rows
from node.errors import InvalidInput, TooLarge
from node.items.models import ImplementedItemBody
from node.web import validation_details

COLUMNS = ["基本编码", "实施编码", "事项名称", "事项类型", "设定依据", "实施部门", "承诺时限(工作日)",
           "材料编号", "材料名称", "是否必需", "共享方式", "共享资源或证照类型", "数据项"]
HOW = {"verify": "核验", "query": "查询", "licence": "证照"}
HOW_BACK = {v: k for k, v in HOW.items()}
MAX_ROWS = 20_000  # a county's whole 实施清单 is a few thousand materials


async def export(items: Any, *, q: str | None, node: str | None, dept: str | None) -> bytes:
    wb = Workbook(write_only=True)
    ws = wb.create_sheet("政务服务事项")
    ws.append(COLUMNS)
    page = 1
    while True:
        _, docs = await items.search(q=q, node=node, dept=dept, page=page, page_size=200)
        for d in docs:
            head = [d["basic_code"], d["code"] if d["kind"] == "implemented" else "", d["name"], d["type"], d["basis"],
                    (d.get("dept") or {}).get("name", ""), d.get("time_limit")]
            if d["kind"] == "basic" or not d.get("materials"):
                ws.append(head)
                continue
            for m in d["materials"]:
                link = m.get("by_sharing") or {}
                how = HOW["licence"] if "licence_type" in link else HOW.get(link.get("op", ""), "")
                ws.append(head + [m["id"], m["name"], "是" if m.get("required", True) else "否", how,
                                  link.get("licence_type") or link.get("resource") or "",
                                  ",".join(link.get("fields", []))])
        if len(docs) < 200:
            break
        page += 1
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _cell(values: list[Any], i: int) -> str:
    v = values[i] if i < len(values) else None
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def read_rows(data: bytes, limits: XlsxLimits) -> list[tuple[int, list[Any]]]:
    rows: list[tuple[int, list[Any]]] = []
    with tempfile.TemporaryFile() as spool:
        spool.write(data)
        spool.seek(0)
        gen = xlsx_rows(spool, limits)
        try:
            for chunk in gen:
                rows += chunk
                if len(rows) > MAX_ROWS + 1:
                    raise TooLarge(f"at most {MAX_ROWS:,} rows of materials in one import")
        finally:
            gen.close()
            release_memory()
    return rows


def parse(rows: list[tuple[int, list[Any]]]) -> tuple[list[ImplementedItemBody], list[str]]:
    """The items of the sheet (rows grouped by 实施编码, or by 基本编码 when that is blank) and the rows of
    each, for refusals; raises INVALID_INPUT naming every bad row and column."""
    if not rows:
        raise InvalidInput("the sheet is empty")
    header = [_cell(rows[0][1], i) for i in range(len(rows[0][1]))]
    missing = [c for c in COLUMNS if c not in header and c != "实施部门"]
    if missing:
        raise InvalidInput(f"the first row names the columns; missing: {', '.join(missing)}",
                           [{"row": rows[0][0], "field": c, "error": "缺少此列"} for c in missing])
    col = {c: header.index(c) for c in COLUMNS if c in header}
    groups: dict[str, dict[str, Any]] = {}
    problems: list[dict[str, Any]] = []
    for n, values in rows[1:]:
        get = {c: _cell(values, i) for c, i in col.items()}
        key = get["实施编码"] or get["基本编码"]
        g = groups.setdefault(key, {"rows": [], "head": get, "materials": []})
        g["rows"].append(n)
        if not get["材料编号"] and not get["材料名称"]:
            continue
        how = HOW_BACK.get(get["共享方式"]) if get["共享方式"] else None
        if get["共享方式"] and how is None:
            problems.append({"row": n, "field": "共享方式", "error": "应为 核验、查询、证照 或留空"})
            continue
        link: dict[str, Any] | None = None
        if how == "licence":
            link = {"licence_type": get["共享资源或证照类型"]}
        elif how is not None:
            link = {"resource": get["共享资源或证照类型"], "op": how,
                    "fields": [f.strip() for f in get["数据项"].replace("，", ",").split(",") if f.strip()]}
        g["materials"].append((n, {"id": get["材料编号"], "name": get["材料名称"],
                                   "required": get["是否必需"] != "否", "by_sharing": link}))
    bodies: list[ImplementedItemBody] = []
    where: list[str] = []
    for key, g in groups.items():
        head = g["head"]
        limit = head["承诺时限(工作日)"]
        body = {"kind": "implemented", "basic_code": head["基本编码"], "name": head["事项名称"], "type": head["事项类型"],
                "basis": head["设定依据"], "time_limit": int(limit) if limit.isdigit() else limit,
                "materials": [m for _, m in g["materials"]]}
        if head["实施编码"]:
            body["code"] = head["实施编码"]
        try:
            bodies.append(ImplementedItemBody.model_validate(body))
            where.append(_span(g["rows"]))
        except ValidationError as exc:
            for d in validation_details(exc):
                parts = d["field"].split(".")
                row = g["rows"][0]
                if parts[0] == "materials" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) < len(g["materials"]):
                    row = g["materials"][int(parts[1])][0]
                problems.append({"row": row, "field": d["field"], "error": d["error"]})
    if problems:
        raise InvalidInput(f"{len(problems)} problem(s) in the sheet; nothing was published", problems[:200])
    return bodies, where


def _span(rows: list[int]) -> str:
    return f"{rows[0]}" if len(rows) == 1 else f"{rows[0]}-{rows[-1]}"


async def import_items(items: Any, acct: Account, data: bytes, limits: XlsxLimits) -> list[str]:
    bodies, where = parse(read_rows(data, limits))
    docs = await items.publish_implemented_many(acct, bodies, where)
    return [d["code"] for d in docs]
