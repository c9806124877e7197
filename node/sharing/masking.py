"""Masking of `sensitive` items (数据脱敏) served without a grant that includes them.

By item type:
- C, M (text):
  - a 公民身份号码 (the item declares `check: gb11643`, or the value looks like one: 15 or 18
    characters of digits and a final X): the first 6 (the region) and the last 4 stay,
    `370321199001010015` → `370321********0015`;
  - a mainland mobile number (11 digits starting with 1, optionally after +86): the first 3 and last 4
    stay, `13812345678` → `138****5678`;
  - a 统一社会信用代码 (`check: gb32100`): the first 8 (registering body, type, region) and the last
    2 stay, `91370406L24894136J` → `91370406********6J`;
  - any other text: the first and the last character stay, the rest become `*` (two characters:
    the first stays, `张三` → `张*`; one character: `*`).
- D (date): the year stays, `1990-01-01` → `1990-**-**`; T (date and time) likewise,
  `1990-01-01T08:00:00` → `1990-**-**T**:**:**`.
- N, Y, I, F (numbers), L (boolean), G, B (binary): withheld entirely, served as null.

A masked value never reveals more than the rules above; the answer lists which fields were masked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_ID_LIKE = re.compile(r"^\d{14}[\dX]$|^\d{17}[\dX]$")
_MOBILE = re.compile(r"^(\+?86)?1\d{10}$")


def _stars(n: int) -> str:
    return "*" * max(n, 0)


def mask_id_number(v: str) -> str:
    return v[:6] + _stars(len(v) - 10) + v[-4:] if len(v) > 10 else mask_text(v)


def mask_mobile(v: str) -> str:
    return v[:-8] + "****" + v[-4:]


def mask_credit_code(v: str) -> str:
    return v[:8] + _stars(len(v) - 10) + v[-2:] if len(v) > 10 else mask_text(v)


def mask_text(v: str) -> str:
    n = len(v)
    if n <= 1:
        return "*" * n
    if n == 2:
        return v[0] + "*"
    return v[0] + _stars(n - 2) + v[-1]


def _text(check: str | None) -> Callable[[Any], Any]:
    def mask(v: Any) -> Any:
        if not isinstance(v, str):
            return None
        if check == "gb11643" or (check is None and _ID_LIKE.match(v)):
            return mask_id_number(v)
        if check == "gb32100":
            return mask_credit_code(v)
        if _MOBILE.match(v):
            return mask_mobile(v)
        return mask_text(v)

    return mask


def _date(v: Any) -> Any:
    if not isinstance(v, str) or len(v) < 4:
        return None
    return v[:4] + re.sub(r"\d", "*", v[4:10])


def _datetime(v: Any) -> Any:
    if not isinstance(v, str) or len(v) < 4:
        return None
    return v[:4] + re.sub(r"\d", "*", v[4:])


def _withheld(_: Any) -> None:
    return None


def masker(item_type: str, check: str | None = None) -> Callable[[Any], Any]:
    """The masking function of an item (values already in their stored form; null stays null)."""
    if item_type in ("C", "M"):
        return _text(check)
    if item_type == "D":
        return _date
    if item_type == "T":
        return _datetime
    return _withheld
