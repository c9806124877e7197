"""Canonical JSON (SPEC §2), byte-compatible with Matrix's ``canonicaljson`` package.

Keys are sorted by code point, there is no insignificant whitespace, non-ASCII text is written
as UTF-8 (only ``"``, ``\\`` and control characters are escaped, as JSON requires). Unlike
``canonicaljson``, the value domain is restricted to what every implementation agrees on:
``None``, ``bool``, ``str``, ``int`` within ±(2**53 - 1), ``list``/``tuple`` and ``dict`` with
``str`` keys. Anything else (floats, NaN, infinities, ``-0.0``, big ints, bytes, sets, lone
surrogates, non-string keys) raises :class:`CanonicalJSONError` naming the JSON path of the value.
"""

from __future__ import annotations

import json
import re

from federation.errors import CanonicalJSONError

__all__ = ["MAX_DEPTH", "MAX_SAFE_INTEGER", "CanonicalJSONError", "check_canonical_value", "encode_canonical_json"]

MAX_SAFE_INTEGER = 2**53 - 1
# Nesting limit; it also turns circular references into a clean error.
MAX_DEPTH = 256

_SURROGATE = re.compile("[\ud800-\udfff]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"))


def encode_canonical_json(obj: object, *, checked: bool = False) -> bytes:
    """Return the canonical JSON encoding of ``obj`` as UTF-8 bytes.

    ``checked=True`` skips the domain check, for a value already passed through
    :func:`check_canonical_value` (or built from such values) by the caller.
    """
    if not checked:
        check_canonical_value(obj)
    return _encoder.encode(obj).encode("utf-8")


def check_canonical_value(obj: object) -> None:
    """Raise :class:`CanonicalJSONError` unless ``obj`` is inside the canonical JSON domain."""
    if not _within_domain(obj):
        _check(obj, [], 0)  # the walk that names the offending path (or accepts what the quick one could not)


def _within_domain(obj: object) -> bool:
    """True when ``obj`` is certainly inside the domain. A quick walk (exact types, no path kept, ASCII text
    not searched): it runs for every object signed, verified or relayed, about four times faster than
    :func:`_check`. False means "not sure" (something wrong, a subclass, deep nesting): :func:`_check`
    then decides and names the path."""
    search = _SURROGATE.search
    stack: list[tuple[object, int]] = [(obj, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        value, depth = pop()
        kind = type(value)
        if kind is dict:
            if depth >= MAX_DEPTH:
                return False
            for key, item in value.items():  # type: ignore[attr-defined]
                if type(key) is not str or (not key.isascii() and search(key)):
                    return False
                item_kind = type(item)
                if item_kind is str:
                    if not item.isascii() and search(item):
                        return False
                elif item_kind is int:
                    if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                        return False
                elif item is not None and item_kind is not bool:
                    push((item, depth + 1))
        elif kind is list or kind is tuple:
            if depth >= MAX_DEPTH:
                return False
            for item in value:  # type: ignore[attr-defined]
                push((item, depth + 1))
        elif kind is str:
            if not value.isascii() and search(value):  # type: ignore[attr-defined]
                return False
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:  # type: ignore[operator]
                return False
        elif value is not None and kind is not bool:
            return False
    return True


def _check(value: object, path: list[str | int], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CanonicalJSONError(f"nested deeper than {MAX_DEPTH} levels (circular reference?)", _render(path))
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_text(value, path, "string")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalJSONError(f"integer {value} is outside ±(2**53 - 1)", _render(path))
    elif isinstance(value, float):
        raise CanonicalJSONError(f"float {value!r} is not allowed (send decimals as strings)", _render(path))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            path.append(index)
            _check(item, path, depth + 1)
            path.pop()
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(f"object key {key!r} is not a string", _render(path))
            _check_text(key, path, "object key")
            path.append(key)
            _check(item, path, depth + 1)
            path.pop()
    else:
        raise CanonicalJSONError(f"type {type(value).__name__} is not JSON", _render(path))


def _check_text(text: str, path: list[str | int], what: str) -> None:
    if _SURROGATE.search(text):
        raise CanonicalJSONError(f"{what} contains a lone surrogate (not encodable as UTF-8)", _render(path))


def _render(path: list[str | int]) -> str:
    """Render a path as ``$``, ``$.a.b[0]`` or ``$["key with spaces"]``."""
    parts = ["$"]
    for step in path:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _IDENTIFIER.fullmatch(step):
            parts.append(f".{step}")
        else:
            parts.append(f"[{json.dumps(step, ensure_ascii=False)}]")
    return "".join(parts)
