"""Streaming readers of pushed and uploaded records: NDJSON, a JSON array, CSV (XLSX: node.data.xlsx).

Each reader takes the body as an async iterator of byte chunks and yields lists of `(row, value)` a chunk
at a time, so a body of any size passes through in bounded memory. `value` is the parsed row, or a `Malformed` saying why it could not be parsed.

Row numbers are what a person would look for: the line of an NDJSON body, the 1-based position in a JSON
array, the spreadsheet row of a CSV or XLSX file (the header is row 1).
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

from federation.nesting import MAX_NESTING, NestingError, check_nesting
from node.errors import InvalidInput


class Malformed:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


# Decimals stay exact (Decimal), NaN/Infinity are refused.
_decoder = json.JSONDecoder(parse_float=Decimal, parse_constant=_no_constants)
_loads = _decoder.decode
_raw_decode = _decoder.raw_decode


def _json_error(exc: Exception) -> Malformed:
    if isinstance(exc, (NestingError, RecursionError)):
        return Malformed(f"nested deeper than {MAX_NESTING} levels")
    if isinstance(exc, json.JSONDecodeError):
        return Malformed(f"not valid JSON: {exc.msg} at column {exc.colno}")
    if isinstance(exc, UnicodeDecodeError):
        return Malformed("not valid UTF-8")
    return Malformed(f"not valid JSON: {exc}")


Rows = list[tuple[int, Any]]


def _line_too_long(line_no: int, max_line: int) -> InvalidInput:
    return InvalidInput(f"line {line_no} is longer than {max_line} bytes (limits.max_json_bytes)",
                        [{"row": line_no, "field": None, "error": "line too long"}])


async def ndjson_rows(chunks: AsyncIterator[bytes], max_line: int) -> AsyncIterator[Rows]:
    """One JSON value a line; blank lines are skipped (but counted)."""
    pending = b""
    line_no = 0
    async for chunk in chunks:
        buf = pending + chunk if pending else chunk
        lines = buf.split(b"\n")
        pending = lines.pop()
        if len(pending) > max_line:
            raise _line_too_long(line_no + len(lines) + 1, max_line)
        out: Rows = []
        for line in lines:
            line_no += 1
            if len(line) > max_line:  # the same refusal whichever chunk the line ended in
                raise _line_too_long(line_no, max_line)
            if not line.strip():
                continue
            try:
                check_nesting(line)
                out.append((line_no, _loads(line.decode("utf-8"))))
            except ValueError as exc:  # NestingError, JSONDecodeError and UnicodeDecodeError are all ValueErrors
                out.append((line_no, _json_error(exc)))
        if out:
            yield out
    if pending.strip():
        line_no += 1
        try:
            check_nesting(pending)
            yield [(line_no, _loads(pending.decode("utf-8")))]
        except ValueError as exc:
            yield [(line_no, _json_error(exc))]


_WS = " \t\r\n"


def _too_large(max_element: int) -> Malformed:
    return Malformed(f"a record is larger than {max_element} bytes (limits.max_json_bytes)")


async def json_array_rows(chunks: AsyncIterator[bytes], max_element: int) -> AsyncIterator[Rows]:
    """A JSON array read element by element; a syntax error ends the array (nothing after it can be
    trusted), so it is reported for the element where it occurred."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    buf = ""
    pos = 0
    state = "start"  # start → first (after '[') → sep (after an element) → next (after ',') → end
    row = 0
    eof = False
    it = chunks.__aiter__()

    async def more() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        try:
            chunk = await it.__anext__()
        except StopAsyncIteration:
            eof = True
            buf = buf[pos:] + decoder.decode(b"", final=True)
            pos = 0
            return True
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError:
            raise InvalidInput("the body is not valid UTF-8") from None
        buf = buf[pos:] + text
        pos = 0
        return True

    while True:
        out: Rows = []
        while True:
            while pos < len(buf) and buf[pos] in _WS:
                pos += 1
            if pos >= len(buf):
                break
            ch = buf[pos]
            if state == "start":
                if ch != "[":
                    raise InvalidInput("a JSON body must be an array of records (or send application/x-ndjson)")
                pos += 1
                state = "first"
                continue
            if state == "sep":
                if ch == ",":
                    pos += 1
                    state = "next"
                    continue
                if ch == "]":
                    pos += 1
                    state = "end"
                    continue
                out.append((row + 1, Malformed("expected ',' or ']' after the record")))
                state = "broken"
                break
            if state == "first" and ch == "]":
                pos += 1
                state = "end"
                continue
            if state == "end":
                out.append((row + 1, Malformed("unexpected data after the closing ']'")))
                state = "broken"
                break
            if state in ("first", "next"):
                try:
                    # The element's end is known only once it is parsed: json's C scanner raises
                    # RecursionError (cleanly) near a thousand levels, and the bound is checked on the
                    # element's text right after a parse that succeeded.
                    value, end = _raw_decode(buf, pos)
                    check_nesting(buf[pos:end])
                except (RecursionError, NestingError) as exc:
                    row += 1
                    out.append((row, _json_error(exc)))
                    state = "broken"
                    break
                except ValueError as exc:
                    if not eof and len(buf) - pos <= max_element:
                        break  # the element may continue in the next chunk
                    row += 1
                    out.append((row, _json_error(exc) if len(buf) - pos <= max_element else _too_large(max_element)))
                    state = "broken"
                    break
                if end >= len(buf) and not eof:
                    break  # a number at the end of the buffer may go on in the next chunk
                row += 1
                # The same refusal whichever chunk the element ended in; the limit is in bytes, the buffer
                # holds characters (at most 4 bytes each in UTF-8), so most elements need no encoding.
                if end - pos > max_element // 4 and len(buf[pos:end].encode("utf-8", "surrogatepass")) > max_element:
                    out.append((row, _too_large(max_element)))
                    state = "broken"
                    break
                out.append((row, value))
                pos = end
                state = "sep"
                continue
            break
        if out:
            yield out
        if state == "broken":
            return
        if not await more():
            break
    if state != "end":
        if state == "start":
            raise InvalidInput("a JSON body is required: an array of records")
        yield [(row + 1, Malformed("the array is not closed with ']'"))]


def _sniff(first: bytes) -> str:
    """UTF-8 unless the first chunk is not (a CSV saved by a Chinese-locale spreadsheet is GB 18030)."""
    for cut in range(4):
        try:
            first[: len(first) - cut].decode("utf-8")
            return "utf-8"
        except UnicodeDecodeError:
            continue
    return "gb18030"


async def csv_rows(chunks: AsyncIterator[bytes], encoding: str | None, max_line: int) -> AsyncIterator[Rows]:
    """CSV (RFC 4180, comma-separated, quoted fields may hold newlines) decoded from `encoding` (the
    charset the sender named; without one, UTF-8, or GB 18030 if the start of the file is not UTF-8);
    yields (row, list of cells) with the header as row 1; blank lines are skipped."""
    it = chunks.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        return
    named = encoding is not None
    encoding = encoding or _sniff(first)
    try:
        b"a".decode(encoding)  # refuses what is not a text encoding (zlib, base64, rot13 …) as LookupError
    except LookupError:
        raise InvalidInput(f"unknown charset {encoding!r}: name a text encoding such as utf-8 or gb18030") from None
    except ValueError:
        pass  # a text encoding that cannot decode one "a" (utf-16 …): the file itself will tell
    utf8 = codecs.lookup(encoding).name == "utf-8"
    decoder = codecs.getincrementaldecoder("utf-8-sig" if utf8 else encoding)()
    fed = 0  # bytes given to the decoder so far
    lines_fed = 0  # line ends among them

    def undecodable(exc: UnicodeDecodeError) -> InvalidInput:
        # exc.object is what the decoder held back from the last chunk followed by the new one.
        held = len(exc.object) - (fed_now - fed)
        offset = fed - held + exc.start
        line = lines_fed + exc.object[:exc.start].count(b"\n") + 1
        bad = exc.object[exc.start:exc.start + 4].hex(" ")
        where = {"row": None, "field": None, "line": line, "offset": offset,
                 "error": f"byte {offset} (line {line}: {bad}) is not {encoding}"}
        if named:
            msg = (f"the file is not valid {encoding}, the charset its Content-Type names (byte {offset}, line "
                   f"{line}); name the charset the file was saved in, or save it as {encoding}")
        elif utf8:
            msg = (f"the file is not valid UTF-8 (byte {offset}, line {line}) and names no charset; name its "
                   "charset, e.g. text/csv; charset=gb18030")
        else:
            msg = (f"the file is neither UTF-8 nor GB 18030 (byte {offset}, line {line}) and names no charset; "
                   "name the charset it was saved in, e.g. text/csv; charset=big5")
        return InvalidInput(msg, [where])

    pending = ""
    row = 0

    async def rest() -> AsyncIterator[bytes]:
        yield first
        async for chunk in it:
            yield chunk

    def records(text: str, final: bool) -> tuple[list[str], str]:
        # Cut the text after the last line end that is outside quotes (quote count even so far).
        lines = text.split("\n")
        tail = lines.pop()
        complete: list[str] = []
        current: list[str] = []
        quotes = 0
        for line in lines:
            current.append(line)
            quotes += line.count('"')
            if quotes % 2 == 0:
                complete.append("\n".join(current) + "\n")
                current = []
                quotes = 0
        current.append(tail)
        rest = "\n".join(current)
        if final and rest.strip():
            complete.append(rest)
            rest = ""
        return complete, rest

    def parse(lines: list[str]) -> Rows:
        nonlocal row
        out: Rows = []
        try:
            for cells in csv.reader(lines, strict=True):
                row += 1
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                out.append((row, cells))
        except csv.Error as exc:
            out.append((row + 1, Malformed(f"not valid CSV: {exc}")))
        return out

    fed_now = 0
    async for chunk in rest():
        fed_now = fed + len(chunk)
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise undecodable(exc) from None
        fed, lines_fed = fed_now, lines_fed + chunk.count(b"\n")
        complete, pending = records(pending + text, False)
        if len(pending) > max_line:
            raise InvalidInput(f"a CSV record is longer than {max_line} characters (an unclosed quote?)")
        if complete:
            out = parse(complete)
            if out:
                yield out
    try:
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise undecodable(exc) from None
    complete, _ = records(pending, True)
    if complete:
        out = parse(complete)
        if out:
            yield out

