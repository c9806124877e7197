"""Source rows → records, by the resource's item rules (node.data.rows), compiled once per binding.

The rules are those of a pushed CSV cell (the lenient converters) with one shortcut per common case: a text that
a database driver returned is already valid Unicode (drivers decode strictly), so a `str` within its length and
without NUL is taken as it is; a `date` becomes `YYYY-MM-DD`; an integer within ±(2^53−1) stays. Every other value
goes through the item's own converter, so what is stored is exactly what a push of the same value would store.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from node.data.rows import KEY_MAX_LENGTH, MAX_SAFE_INT, RecordSchema, Rule, RowError, key_text

Convert = Callable[[Any], Any]


class BadRow(Exception):
    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _fast(rule: Rule) -> Convert:
    lenient = rule.lenient

    def slow(v: Any) -> Any:
        return lenient(to_json_value(v))

    length = rule.length
    if rule.type in ("C", "M"):
        limit = length if length is not None else 1 << 62

        def text(v: Any) -> Any:
            if type(v) is str and len(v) <= limit and "\x00" not in v:
                return v
            return slow(v)

        return text
    if rule.type == "D":
        def day(v: Any) -> Any:
            if type(v) is dt.date:
                return v.isoformat()
            if type(v) is str and len(v) == 10 and v[4] == "-" and v[7] == "-":
                try:
                    dt.date.fromisoformat(v)
                except ValueError:
                    return slow(v)
                return v
            return slow(v)

        return day
    if rule.type == "I":
        def integer(v: Any) -> Any:
            if type(v) is int and -MAX_SAFE_INT <= v <= MAX_SAFE_INT:
                return v
            return slow(v)

        return integer
    return slow


def to_json_value(v: Any) -> Any:
    """A source value in a form the item converters take (binary as base64, UUIDs as text)."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, uuid.UUID):
        return str(v)
    return v


def compile_rows(schema: RecordSchema, fields: list[tuple[str, int]], key_index: int
                 ) -> tuple[Callable[[tuple], tuple[str, dict[str, Any]]], Callable[[Any], str]]:
    """(row → (key, data) or BadRow, source key value → stored key text or RowError)."""
    plan = []
    for field, idx in fields:
        rule = schema.by_field[field]
        plan.append((field, idx, _fast(rule), rule.check_fn, rule.check_msg))
    required = schema.required
    key_field = schema.key.field
    fields_order = schema.fields
    key_conv = _fast(schema.key)

    def convert(row: tuple) -> tuple[str, dict[str, Any]]:
        data: dict[str, Any] = {}
        for field, idx, conv, check, msg in plan:
            v = row[idx]
            if v is None or v == "":
                continue
            try:
                v = conv(v)
            except RowError as exc:
                raise BadRow(field, str(exc)) from None
            if check is not None and not check(v):
                raise BadRow(field, msg)
            data[field] = v
        if not required.issubset(data):
            missing = next(f for f in fields_order if f in required and f not in data)
            raise BadRow(missing, "the key is required" if missing == key_field else "required")
        key = data[key_field]
        if type(key) is not str:
            key = key_text(key)
        if len(key) > KEY_MAX_LENGTH:
            raise BadRow(key_field, f"a key is at most {KEY_MAX_LENGTH} characters")
        return key, data

    def key_of(value: Any) -> str:
        if value is None or value == "":
            raise RowError("the key is required")
        v = key_conv(value)
        return v if type(v) is str else key_text(v)

    return convert, key_of
