"""A bound on how deeply JSON text nests, checked on the text before any parser recurses into it.

Python's ``json`` recurses once per level and raises ``RecursionError`` (not ``ValueError``) somewhere near
a thousand levels, depending on how deep the caller's stack already is; pydantic's JSON parser stops
by itself at 200 levels with an ``Invalid JSON: recursion limit exceeded`` error. Neither is a limit a
node chooses, and a value that parsed under the first can still break a recursive walk after it (the
encoder, a validator, the canonical-form check). So every JSON text a node takes from outside — request
bodies, pushed records, a peer's answers — is first checked here, and refused when it nests deeper than
:data:`MAX_NESTING`.

Why 64: every payload of the SPEC is shallow. Over a run of the catalog, data, federation, licence,
sharing, application, subscription, quality and exchange tests (57,630 JSON texts checked here), the
deepest was 6 levels. 64 leaves a tenfold margin for what later issues add, and keeps everything that
walks a parsed value recursively far below Python's recursion limit (1,000 frames).
"""

from __future__ import annotations

import json
import re
from typing import Any

from federation.errors import FederationError

__all__ = ["MAX_NESTING", "NestingError", "check_nesting", "loads"]

MAX_NESTING = 64

# A complete JSON string (escapes included): brackets inside one do not nest anything.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_BRACKETS_OR_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_OPEN = ord("[")


class NestingError(FederationError, ValueError):
    """JSON text nests deeper than the bound."""

    def __init__(self, limit: int) -> None:
        super().__init__("INVALID_INPUT", f"JSON nested deeper than {limit} levels", {"max_nesting": limit})
        self.limit = limit


def check_nesting(text: bytes | str, limit: int = MAX_NESTING) -> None:
    """Raise :class:`NestingError` when ``text`` opens more than ``limit`` arrays or objects inside each
    other. Text that is not valid JSON is left for the parser to refuse (an unclosed string or bracket may
    count as nesting here, which refuses it all the same)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    # Fewer opening brackets than the bound cannot nest deeper than it: the usual case costs two counts.
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    skeleton = _bracket_skeleton(data)
    # Each pass deletes the innermost pairs, so valid JSON is gone after as many passes as it is deep; all in C
    # (a 5.6 MiB comparison body: 25 ms, where a Python walk over its brackets and a regular expression over its
    # strings took 0.15 s, with every other call of the node waiting). Text left after `limit` passes, or a
    # pass that deletes nothing (brackets that do not pair up: not valid JSON), is walked bracket by bracket.
    for _ in range(limit):
        if not skeleton:
            return
        shorter = skeleton.replace(b"[]", b"")
        if len(shorter) == len(skeleton):
            break
        skeleton = shorter
    if skeleton:
        _walk(data, limit)


def _bracket_skeleton(data: bytes) -> bytes:
    """The brackets of JSON text outside its strings, opening ones as "[" and closing ones as "]", for text
    whose quotes delimit strings (valid JSON; other text may lose or keep brackets here, never mis-pair them
    so as to look shallower than the parser would find it, and its odd cases go to `_walk`)."""
    if b"\\" in data:
        data = data.replace(b"\\\\", b"")  # escaped backslashes first, then escaped quotes: what is left
    if b'\\"' in data:
        data = data.replace(b'\\"', b"")  # of the quotes opens and closes strings
    kept = data.translate(_AS_SQUARE, _NOT_BRACKETS_OR_QUOTES)
    # Two quotes side by side are an empty string, or a string's end and the next one's start (what lay
    # between them was neither a bracket nor a quote): deleting them keeps every bracket on its side.
    kept = kept.replace(b'""', b"")
    if b'"' not in kept:
        return kept
    return b"".join(kept.split(b'"')[::2])  # brackets inside strings, rare: drop every second piece


def _walk(data: bytes, limit: int) -> None:
    # Strings taken out by a regular expression and the brackets walked one by one: exact for any text, and
    # about 20 ns a bracket plus the expression's time.
    skeleton = _STRING.sub(b"", data).translate(_AS_SQUARE, _NOT_BRACKETS)
    depth = 0
    for byte in skeleton:
        if byte == _OPEN:
            depth += 1
            if depth > limit:
                raise NestingError(limit)
        elif depth:  # a stray closing bracket: the parser refuses the text there, before anything deeper
            depth -= 1


def loads(text: bytes | str, limit: int = MAX_NESTING, **kw: Any) -> Any:
    """``json.loads`` with the nesting bound checked first; ``ValueError`` (a ``NestingError``, a
    ``json.JSONDecodeError`` or a ``UnicodeDecodeError``) for text that is refused."""
    check_nesting(text, limit)
    return json.loads(text, **kw)
