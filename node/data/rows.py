"""Record rules: what a record of a resource may hold, checked against its catalog entry's items.

A record is a JSON object keyed by item `field`. Each item type code of 《政务信息资源目录编制指南(试行)》
accepts and stores values as follows ("JSON" is a pushed JSON/NDJSON value; "cell" is a CSV string or an
XLSX cell, and also what query/verify/compare callers send, which is coerced the same lenient way):

| type | meaning | JSON accepts | cell accepts | stored as |
|---|---|---|---|---|
| C | string | string, at most `length` characters (no NUL) | any cell (numbers written out) | string |
| M | long text | string (at most `length` if given) | same | string |
| N, Y | decimal (数值, 货币) | number or decimal string | decimal text or number | string: the exact value in canonical form (no exponent, no `+`, no trailing zeros after the point), at most `length` digits |
| I | integer | integer within ±(2^53−1) | integer text or an integral number | integer |
| F | float | number (finite) | number text | number |
| D | date | `YYYY-MM-DD` | also `YYYY/M/D`, `YYYY.M.D` and spreadsheet dates | `YYYY-MM-DD` |
| T | date and time | ISO 8601 | same, and spreadsheet date-times | ISO 8601 as `datetime.isoformat()` writes it |
| L | boolean | `true` / `false` | `true`/`false`/`1`/`0`/`是`/`否` (any case) | boolean |
| G, B | binary (通用, 二进制) | standard base64, at most `length` decoded bytes | same | the base64 string |

An empty value (`null` or `""`) counts as absent and is not stored. `required` items must be present and
non-empty; the key item always is. Fields that are not items of the entry are refused. An item with
`"check": "gb11643"` (公民身份号码) or `"gb32100"` (统一社会信用代码) must also carry a valid check character.
A row `{"<key field>": k, "_deleted": true}` deletes the record with key `k` (other fields are ignored).

Validation is plain Python compiled once per catalog entry (`RecordSchema`); no model is built per row.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from operator import mul
from typing import Any


MAX_SAFE_INT = 2**53 - 1
KEY_MAX_LENGTH = 200
DELETED = "_deleted"

Convert = Callable[[Any], Any]

_DECIMAL_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_INT_TEXT = re.compile(r"^[+-]?\d+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_LOOSE_DATE = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})$")
_TRUE = frozenset({"true", "1", "是", "yes", "y"})
_FALSE = frozenset({"false", "0", "否", "no", "n"})


class RowError(ValueError):
    """A value that breaks its item's rule; the message says why."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, Decimal)) and not isinstance(v, bool)


def _number_text(v: Any) -> str:
    """A number as a spreadsheet shows it: integral floats without `.0`."""
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e17:
            return str(int(v))
        return repr(v)
    if isinstance(v, Decimal):
        return format(v, "f")
    return str(v)


def canonical_decimal(d: Decimal) -> str:
    if not d.is_finite():
        raise RowError("must be a finite decimal")
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text


def _unicode(v: str) -> None:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError("is not valid Unicode text (a lone surrogate)") from None


# Converters: one strict (JSON) and one lenient (cell) per type; each returns the stored form.

def _text(length: int | None) -> tuple[Convert, Convert]:
    def strict(v: Any) -> str:
        if not isinstance(v, str):
            raise RowError("must be a string")
        if length is not None and len(v) > length:
            raise RowError(f"longer than {length} characters")
        if "\x00" in v:
            raise RowError("must not contain NUL characters")
        if not v.isascii():
            _unicode(v)
        return v

    def lenient(v: Any) -> str:
        if not isinstance(v, str):
            if _is_number(v):
                v = _number_text(v)
            elif isinstance(v, (datetime, date)):
                v = v.isoformat()
            else:
                raise RowError("must be text")
        if length is not None and len(v) > length:
            raise RowError(f"longer than {length} characters")
        if "\x00" in v:
            raise RowError("must not contain NUL characters")
        if not v.isascii():
            _unicode(v)
        return v

    return strict, lenient


def _decimal(length: int | None) -> tuple[Convert, Convert]:
    def finish(d: Decimal) -> str:
        text = canonical_decimal(d)
        if length is not None and sum(c.isdigit() for c in text) > length:
            raise RowError(f"more than {length} digits")
        return text

    def from_text(s: str) -> str:
        s = s.strip()
        if not _DECIMAL_TEXT.match(s):
            raise RowError("must be a decimal number")
        try:
            return finish(Decimal(s))
        except InvalidOperation:
            raise RowError("must be a decimal number") from None

    def strict(v: Any) -> str:
        if isinstance(v, Decimal):
            return finish(v)
        if isinstance(v, int) and not isinstance(v, bool):
            return finish(Decimal(v))
        if isinstance(v, float):
            if not math.isfinite(v):
                raise RowError("must be a finite decimal")
            return finish(Decimal(repr(v)))
        if isinstance(v, str):
            return from_text(v)
        raise RowError("must be a decimal number or a decimal string")

    def lenient(v: Any) -> str:
        return strict(v)

    return strict, lenient


def _integer(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise RowError("must be an integer")
    if not -MAX_SAFE_INT <= v <= MAX_SAFE_INT:
        raise RowError("outside ±(2^53−1)")
    return v


def _integer_lenient(v: Any) -> int:
    if isinstance(v, str):
        s = v.strip()
        if not _INT_TEXT.match(s):
            raise RowError("must be an integer")
        return _integer(int(s))
    if isinstance(v, (float, Decimal)) and not isinstance(v, bool):
        if not (math.isfinite(v) if isinstance(v, float) else v.is_finite()) or v != int(v):
            raise RowError("must be an integer")
        return _integer(int(v))
    return _integer(v)


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, Decimal)):
        raise RowError("must be a number")
    f = float(v)
    if not math.isfinite(f):
        raise RowError("must be a finite number")
    return f


def _float_lenient(v: Any) -> float:
    if isinstance(v, str):
        s = v.strip()
        if not _DECIMAL_TEXT.match(s):
            raise RowError("must be a number")
        return _float(float(s))
    return _float(v)


def _date(v: Any) -> str:
    if not isinstance(v, str) or not _DATE.match(v):
        raise RowError("must be a date YYYY-MM-DD")
    try:
        date.fromisoformat(v)
    except ValueError:
        raise RowError("is not a real date") from None
    return v


def _date_lenient(v: Any) -> str:
    if isinstance(v, datetime):
        if v.time() != time(0):
            raise RowError("must be a date without a time")
        return v.date().isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, str):
        m = _LOOSE_DATE.match(v.strip())
        if m:
            try:
                return date(int(m[1]), int(m[2]), int(m[3])).isoformat()
            except ValueError:
                raise RowError("is not a real date") from None
    raise RowError("must be a date YYYY-MM-DD")


def _datetime(v: Any) -> str:
    if not isinstance(v, str) or len(v) < 10 or len(v) > 40:
        raise RowError("must be an ISO 8601 date and time")
    try:
        return datetime.fromisoformat(v).isoformat()
    except ValueError:
        raise RowError("must be an ISO 8601 date and time") from None


def _datetime_lenient(v: Any) -> str:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day).isoformat()
    if isinstance(v, str):
        return _datetime(v.strip())
    raise RowError("must be an ISO 8601 date and time")


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise RowError("must be true or false")
    return v


def _boolean_lenient(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise RowError("must be true/false, 1/0 or 是/否")


def _binary(length: int | None) -> tuple[Convert, Convert]:
    def conv(v: Any) -> str:
        if not isinstance(v, str):
            raise RowError("must be a base64 string")
        try:
            raw = binascii.a2b_base64(v.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise RowError("is not standard base64") from None
        if length is not None and len(raw) > length:
            raise RowError(f"longer than {length} bytes once decoded")
        return v

    return conv, conv


def converters(item_type: str, length: int | None) -> tuple[Convert, Convert]:
    """(strict, lenient) converters of one item type; each returns the stored form or raises RowError."""
    if item_type in ("C", "M"):
        return _text(length)
    if item_type in ("N", "Y"):
        return _decimal(length)
    if item_type == "I":
        return _integer, _integer_lenient
    if item_type == "F":
        return _float, _float_lenient
    if item_type == "D":
        return _date, _date_lenient
    if item_type == "T":
        return _datetime, _datetime_lenient
    if item_type == "L":
        return _boolean, _boolean_lenient
    if item_type in ("G", "B"):
        return _binary(length)
    raise ValueError(f"unknown item type {item_type!r}")


# Check characters, computed as node.ids does (valid_gb11643 / valid_gb32100, the reference; a test holds
# the two equal) but a few times faster, since a push checks one a row.
_GB11643_W = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_GB11643_ZERO = 48 * sum(_GB11643_W)  # the weights times ord("0"), taken off a sum over bytes
_GB11643_CHECK = "10X98765432"
_GB32100_W = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_GB32100_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_GB32100_VALUE = {c: i for i, c in enumerate(_GB32100_ALPHABET)}


def check_gb11643(v: str) -> bool:
    if len(v) != 18 or not v.isascii():
        return False
    head = v[:17].encode()
    if not head.isdigit():
        return False
    return _GB11643_CHECK[(sum(map(mul, head, _GB11643_W)) - _GB11643_ZERO) % 11] == v[17]


def check_gb32100(v: str) -> bool:
    if len(v) != 18:
        return False
    try:
        total = sum(map(mul, map(_GB32100_VALUE.__getitem__, v[:17]), _GB32100_W))
    except KeyError:
        return False
    return v[17] == _GB32100_ALPHABET[(31 - total % 31) % 31]


_CHECKS: dict[str, tuple[Callable[[str], bool], str]] = {
    "gb11643": (check_gb11643, "is not a valid 公民身份号码 (GB 11643 check character)"),
    "gb32100": (check_gb32100, "is not a valid 统一社会信用代码 (GB 32100 check character)"),
}


class Rule:
    """One item of the entry, compiled."""

    __slots__ = ("field", "name", "type", "length", "key", "required", "sensitive", "check", "strict", "lenient",
                 "check_fn", "check_msg")

    def __init__(self, item: dict[str, Any]) -> None:
        self.field: str = item["field"]
        self.name: str = item["name"]
        self.type: str = item["type"]
        self.length: int | None = item.get("length")
        self.key: bool = bool(item.get("key"))
        self.required: bool = bool(item.get("required")) or self.key
        self.sensitive: bool = bool(item.get("sensitive"))
        self.check: str | None = item.get("check")
        self.strict, self.lenient = converters(self.type, self.length)
        self.check_fn, self.check_msg = _CHECKS[self.check] if self.check else (None, "")


def key_text(value: Any) -> str:
    """The stored form of a key as the `records.key` column holds it."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class RecordSchema:
    """The rules of one catalog entry's records, compiled once and reused for every row and call."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.code: str = entry["code"]
        self.rules: list[Rule] = [Rule(i) for i in entry["items"]]
        self.by_field: dict[str, Rule] = {r.field: r for r in self.rules}
        self.key: Rule = next(r for r in self.rules if r.key)
        self.required: frozenset[str] = frozenset(r.field for r in self.rules if r.required)
        self.sensitive: frozenset[str] = frozenset(r.field for r in self.rules if r.sensitive)
        self.fields: list[str] = [r.field for r in self.rules]
        # A spreadsheet column may be headed by an item's name or its field.
        self._strict = {r.field: (r.strict, r.check_fn, r.check_msg) for r in self.rules}
        self._lenient = {r.field: (r.lenient, r.check_fn, r.check_msg) for r in self.rules}
        self.by_label: dict[str, Rule] = {}
        for r in self.rules:
            self.by_label[r.field] = r
            self.by_label.setdefault(r.name, r)

    # Rows to store ---------------------------------------------------------------------------------

    def validate(self, obj: Any, lenient: bool, errors: list[tuple[str | None, str]]) -> tuple[str, dict | None] | None:
        """Check one pushed row; return (key, data) or (key, None) for a deletion, or None with `errors`
        holding (field, reason) pairs."""
        if type(obj) is not dict:
            errors.append((None, "a record must be a JSON object"))
            return None
        convs = self._lenient if lenient else self._strict
        data: dict[str, Any] = {}
        deleted = False
        before = len(errors)
        for name, value in obj.items():
            c = convs.get(name)
            if c is None:
                if name == DELETED:
                    try:
                        deleted = _boolean_lenient(value) if lenient else _boolean(value)
                    except RowError as exc:
                        errors.append((DELETED, str(exc)))
                    continue
                errors.append((name, "unknown field: not an item of this resource"))
                continue
            if value is None or value == "":
                continue
            conv, check, check_msg = c
            try:
                v = conv(value)
            except RowError as exc:
                errors.append((name, str(exc)))
                continue
            if check is not None and not check(v):
                errors.append((name, check_msg))
                continue
            data[name] = v
        key_field = self.key.field
        bad = len(errors) > before
        if deleted:
            if key_field not in data:
                if not any(f == key_field for f, _ in errors):
                    errors.append((key_field, "a deletion needs the key"))
                return None
            if bad:
                return None
            key = key_text(data[key_field])
            if len(key) > KEY_MAX_LENGTH:
                errors.append((key_field, f"a key is at most {KEY_MAX_LENGTH} characters"))
                return None
            return key, None
        if not self.required.issubset(data):
            failed = {f for f, _ in errors}
            for f in self.fields:
                if f in self.required and f not in data and f not in failed:
                    errors.append((f, "required" if f != key_field else "the key is required"))
            return None
        if bad:
            return None
        key = data[key_field]
        if type(key) is not str:
            key = key_text(key)
        if len(key) > KEY_MAX_LENGTH:
            errors.append((key_field, f"a key is at most {KEY_MAX_LENGTH} characters"))
            return None
        return key, data

    # Values callers send to look records up ------------------------------------------------------------

    def normalize(self, field: str, value: Any) -> Any:
        """A caller's value in its stored form (lenient coercion, no check-character test)."""
        return self.by_field[field].lenient(value)

    def normalize_key(self, value: Any) -> str:
        if value is None or value == "":
            raise RowError("the key must not be empty")
        return key_text(self.key.lenient(value))
