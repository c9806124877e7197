"""Entries and subjects read from an uploaded CSV or XLSX (the data layer's readers), columns by Chinese name or
by field, every bad row named in one refusal."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from node.config import LimitsConfig
from node.data.formats import Malformed, csv_rows
from node.data.xlsx import release_memory, xlsx_rows
from node.errors import InvalidInput
from node.lists.models import MAX_CHECK, MAX_ENTRIES, CheckSubject, EntryIn
from node.web import validation_details

CSV_TYPES = ("text/csv", "application/csv")
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

COLUMNS = {
    "code": ("主体代码", "统一社会信用代码/公民身份号码", "code"),
    "code_type": ("代码类型", "code_type"),
    "name": ("主体名称", "名称", "name"),
    "reason": ("列入事由", "事由", "reason"),
    "basis": ("列入依据", "依据", "basis"),
    "measures": ("奖惩措施", "惩戒措施", "措施", "measures"),
    "valid_from": ("有效期起始", "起始日期", "valid_from"),
    "valid_until": ("有效期截止", "截止日期", "valid_until"),
}


def kind_of(content_type: str, filename: str | None = None) -> str | None:
    name = (filename or "").lower()
    if content_type in CSV_TYPES or name.endswith(".csv"):
        return "csv"
    if content_type == XLSX_TYPE or name.endswith(".xlsx"):
        return "xlsx"
    return None


async def _one(raw: bytes) -> AsyncIterator[bytes]:
    yield raw


async def read_table(raw: bytes, kind: str, charset: str | None, limits: LimitsConfig) -> list[tuple[int, list[Any]]]:
    """The rows of a CSV or XLSX file as (row number, cells), header first."""
    if not raw:
        raise InvalidInput("the uploaded file is empty")
    out: list[tuple[int, list[Any]]] = []
    if kind == "csv":
        async for rows in csv_rows(_one(raw), charset, limits.max_json_bytes):
            for n, cells in rows:
                if isinstance(cells, Malformed):
                    raise InvalidInput(f"row {n}: {cells.reason}", [{"row": n, "error": cells.reason}])
                out.append((n, list(cells)))
        return out
    try:
        for rows in xlsx_rows(io.BytesIO(raw), limits.xlsx):
            out += [(n, list(cells)) for n, cells in rows]
    finally:
        release_memory()
    return out


def _columns(header: list[Any]) -> dict[str, int]:
    names = [str(h or "").strip() for h in header]
    found: dict[str, int] = {}
    for field, aliases in COLUMNS.items():
        for i, name in enumerate(names):
            if name in aliases or name.lower() in aliases:
                found[field] = i
                break
    if "code" not in found:
        raise InvalidInput("the file has no column 主体代码 (or code) in its first row", [{"row": 1, "field": "code"}])
    return found


def _cell(cells: list[Any], i: int | None) -> str | None:
    if i is None or i >= len(cells) or cells[i] is None:
        return None
    v = str(cells[i]).strip()
    if len(v) >= 10 and v[4] == "-" and v[:4].isdigit() and " " in v:
        v = v.split(" ")[0]  # a date cell of a spreadsheet read as a date and time
    return v or None


def entries_from(rows: list[tuple[int, list[Any]]]) -> list[EntryIn]:
    if not rows:
        raise InvalidInput("the uploaded file is empty")
    cols = _columns(rows[0][1])
    if "reason" not in cols:
        raise InvalidInput("the file has no column 列入事由 (or reason)", [{"row": rows[0][0], "field": "reason"}])
    if len(rows) - 1 > MAX_ENTRIES:
        raise InvalidInput(f"at most {MAX_ENTRIES} entries a file", [{"field": "rows"}])
    out, bad = [], []
    for n, cells in rows[1:]:
        measures = _cell(cells, cols.get("measures"))
        try:
            out.append(EntryIn.model_validate({
                "subject": {"code": _cell(cells, cols["code"]) or "", "code_type": _cell(cells, cols.get("code_type")),
                            "name": _cell(cells, cols.get("name"))},
                "reason": _cell(cells, cols["reason"]) or "", "basis": _cell(cells, cols.get("basis")) or "",
                "measures": [m.strip() for m in measures.replace(";", "；").split("；") if m.strip()] if measures else None,
                "valid_from": _cell(cells, cols.get("valid_from")), "valid_until": _cell(cells, cols.get("valid_until")),
            }))
        except ValidationError as exc:
            bad += [{**d, "row": n} for d in validation_details(exc)]
    if bad:
        raise InvalidInput(f"{len({d['row'] for d in bad})} rows of the file are not valid entries; nothing was stored",
                           bad[:200])
    return out


def subjects_from(rows: list[tuple[int, list[Any]]]) -> list[CheckSubject]:
    if not rows:
        raise InvalidInput("the uploaded file is empty")
    cols = _columns(rows[0][1])
    if len(rows) - 1 > MAX_CHECK:
        raise InvalidInput(f"at most {MAX_CHECK} subjects a check", [{"field": "rows"}])
    out = []
    for _, cells in rows[1:]:
        out.append(CheckSubject(code=(_cell(cells, cols["code"]) or "")[:18],
                                code_type=_cell(cells, cols.get("code_type")) if _cell(cells, cols.get("code_type"))
                                in ("111", "001") else None))
    if not out:
        raise InvalidInput("the file names no subject (a header row, then one subject a row)")
    return out
