"""Reading the first worksheet of an uploaded XLSX within bounds (`limits.xlsx`), whatever the file claims.

An XLSX is a zip of XML parts, and a few megabytes can unpack to gigabytes. openpyxl's read-only mode
streams the cells, but left to itself it (measured with openpyxl 3.1) scans a whole sheet that has no
<dimension> element once just to size it, keeps an emptied element for every row and every shared string
it has read, builds a whole <row> in memory before handing it over, and reads the other parts whole. A
1 GiB sheet of small rows packed into 3.6 MB took a process to 0.9 GiB before the first row came out; one
row of 256 MiB of cells packed into 1.3 MB took it to 5.8 GiB.

So the file is checked in three steps, and refused with 413 TOO_LARGE naming the setting:
1. before anything is unpacked, the zip's end record and central directory: how many parts, the total they
   declare, and how many times its packed size each large part claims to unpack to;
2. every part is read through `_Part`, which counts the bytes as they are inflated (never trusting the
   declared sizes) against the file's total and the part's own cap;
3. the worksheet and the shared strings are parsed here with openpyxl's own iterparse, cell and string
   parsing, but each finished element is dropped at once, and the parse is watched as it goes: cells in a
   row, bytes in a row, and bytes without any XML event (a cell's or a string's text) are bounded before
   the parser has buffered more than one read past the bound.
What stays in memory is one row, and the shared strings packed as UTF-8 (at most the part's size).
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from openpyxl.cell.text import Text
from openpyxl.reader.excel import ExcelReader
from openpyxl.styles.stylesheet import apply_stylesheet
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._reader import CELL_TAG, ROW_TAG, WorkSheetParser
from openpyxl.xml.constants import SHARED_STRINGS, SHEET_MAIN_NS
from openpyxl.xml.functions import iterparse

from node.config import XlsxLimits
from node.data.formats import Rows
from node.errors import ApiError, InvalidInput, TooLarge

READ_SIZE = 64 * 1024
# Parts smaller than this are not held to the packing ratio: a small part with a high ratio cannot hurt,
# and tiny parts of a real file (a 10 KB theme) pack unevenly.
RATIO_FLOOR = 1024 * 1024
# XML text can spell one character in up to 10 bytes (&#x10FFFF;): a cell of `max_cell_chars` characters
# spans at most this many bytes of XML per character, plus one read of slack.
BYTES_PER_CHAR = 10
# A real part's directory entry is 46 bytes and a name like xl/worksheets/sheet1.xml (plus a zip64 extra).
DIRECTORY_BYTES_PER_PART = 1024
_SI_TAG = "{%s}si" % SHEET_MAIN_NS


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:,.0f} MiB" if n >= 1024 * 1024 else f"{n:,} bytes"


def _too_many_parts(n: int, limits: XlsxLimits) -> TooLarge:
    return TooLarge(f"the XLSX file has {n:,} parts; at most {limits.max_parts:,} are accepted (limits.xlsx.max_parts)")


def _unpacks_to_more(limit: int) -> TooLarge:
    return TooLarge(f"the XLSX file unpacks to more than {_mib(limit)} (limits.xlsx.max_unzipped_bytes); "
                    f"split it or send CSV")


class _Budget:
    """The bytes all parts of one file have inflated to so far, read by read (not as declared)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise _unpacks_to_more(self.limit)


class _Part:
    """One part as it is read: inflated bytes are counted against the file's budget and the part's cap, and
    a parser that reports its events (`mark`) is refused a stretch longer than `stall` without one."""

    def __init__(self, raw: IO[bytes], budget: _Budget, cap: int, too_big: Callable[[], ApiError]) -> None:
        self.raw = raw
        self.budget = budget
        self.cap = cap
        self.too_big = too_big
        self.pos = 0
        self.mark = 0
        self.stall = 0  # 0: not watched
        self.stalled: Callable[[], ApiError] = lambda: TooLarge("")

    def watch(self, stall: int, stalled: Callable[[], ApiError]) -> None:
        self.stall, self.stalled = stall, stalled

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:  # openpyxl reads small parts whole: still in counted pieces
            pieces = []
            while piece := self.read(READ_SIZE):
                pieces.append(piece)
            return b"".join(pieces)
        if self.stall and self.pos - self.mark > self.stall:
            raise self.stalled()
        data = self.raw.read(n)
        self.pos += len(data)
        if self.pos > self.cap:
            raise self.too_big()
        self.budget.spend(len(data))
        return data

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> "_Part":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _GuardedZip(zipfile.ZipFile):
    """A ZipFile whose parts, opened by openpyxl or by this module, are all read through `_Part`."""

    def __init__(self, file: IO[bytes], limits: XlsxLimits) -> None:
        super().__init__(file)
        self.limits = limits
        self.budget = _Budget(limits.max_unzipped_bytes)

    def open(self, name: Any, mode: str = "r", pwd: bytes | None = None, **kw: Any) -> Any:  # type: ignore[override]
        raw = super().open(name, mode, pwd, **kw)
        if mode != "r":
            return raw
        part = name.filename if isinstance(name, zipfile.ZipInfo) else str(name)
        cap = self.limits.max_part_bytes
        return _Part(raw, self.budget, cap, lambda: TooLarge(
            f"the XLSX part {part} unpacks to more than {_mib(cap)} (limits.xlsx.max_part_bytes)"))

    def open_part(self, name: str, cap: int, too_big: Callable[[], ApiError]) -> _Part:
        part = self.open(name)
        part.cap, part.too_big = cap, too_big
        return part


def _check_directory(file: IO[bytes], limits: XlsxLimits) -> None:
    """Step 1: the end record (before zipfile builds an object for every entry) and the central directory."""
    try:
        # zipfile's own reader of the end record: a directory of millions of entries would cost hundreds of
        # bytes each once parsed, so their count is checked first.
        end = zipfile._EndRecData(file)  # type: ignore[attr-defined]  # noqa: SLF001
    except OSError:
        end = None
    if not end:
        raise InvalidInput("not a readable XLSX file (not a zip archive)")
    entries = end[zipfile._ECD_ENTRIES_TOTAL]  # type: ignore[attr-defined]  # noqa: SLF001
    size = end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]  # noqa: SLF001
    # zipfile reads entries until the directory's declared size is used up, whatever their declared count.
    if entries > limits.max_parts:
        raise _too_many_parts(entries, limits)
    if size > limits.max_parts * DIRECTORY_BYTES_PER_PART:
        raise TooLarge(f"the XLSX file's directory of parts takes {_mib(size)}; at most "
                       f"{_mib(limits.max_parts * DIRECTORY_BYTES_PER_PART)} are accepted (limits.xlsx.max_parts)")


def _check_declared(zf: zipfile.ZipFile, limits: XlsxLimits) -> None:
    infos = zf.infolist()
    if len(infos) > limits.max_parts:
        raise _too_many_parts(len(infos), limits)
    total = sum(i.file_size for i in infos)
    if total > limits.max_unzipped_bytes:
        raise TooLarge(f"the XLSX file unpacks to {_mib(total)}; at most {_mib(limits.max_unzipped_bytes)} "
                       f"are accepted (limits.xlsx.max_unzipped_bytes); split it or send CSV")
    for i in infos:
        if i.file_size > RATIO_FLOOR and i.file_size > limits.max_ratio * max(i.compress_size, 1):
            raise TooLarge(f"the XLSX part {i.filename} unpacks to {i.file_size / max(i.compress_size, 1):,.0f} "
                           f"times its packed size ({_mib(i.file_size)} from {_mib(i.compress_size)}); a "
                           f"spreadsheet packs at most about 15 times, the limit is {limits.max_ratio} "
                           f"(limits.xlsx.max_ratio)")


class SharedStrings(Sequence[str]):
    """The shared-strings table packed as UTF-8 with 4-byte end offsets: at most the part's own size in
    memory (a list of str objects costs up to 3.3 times the XML it came from)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._ends = array.array("I")

    def append(self, text: str) -> None:
        self._data += text.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._data))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: Any) -> Any:
        if not isinstance(i, int) or not 0 <= i < len(self._ends):
            raise IndexError("shared string index out of range")
        start = self._ends[i - 1] if i else 0
        return self._data[start:self._ends[i]].decode("utf-8", "surrogatepass")


def _read_shared_strings(zf: _GuardedZip, name: str, limits: XlsxLimits) -> SharedStrings:
    cap = limits.max_shared_strings_bytes
    span = limits.max_cell_chars * BYTES_PER_CHAR + READ_SIZE
    strings = SharedStrings()

    def too_long() -> ApiError:
        return TooLarge(f"shared string {len(strings) + 1:,} of the XLSX file is longer than "
                        f"{limits.max_cell_chars:,} characters (limits.xlsx.max_cell_chars)")

    with zf.open_part(name, cap, lambda: TooLarge(
            f"the XLSX file's shared strings unpack to more than {_mib(cap)} "
            f"(limits.xlsx.max_shared_strings_bytes); split it or send CSV")) as part:
        part.watch(span, too_long)
        stack: list[Any] = []
        start = 0
        in_si = False
        for event, el in iterparse(part, events=("start", "end")):
            part.mark = part.pos
            if event == "start":
                stack.append(el)
                if el.tag == _SI_TAG:
                    in_si, start = True, part.pos
                elif in_si and part.pos - start > span:
                    raise too_long()  # a string of many rich-text runs
                continue
            stack.pop()
            if el.tag == _SI_TAG:
                in_si = False
                text = Text.from_tree(el).content.replace("x005F_", "")  # as openpyxl's read_string_table
                if len(text) > limits.max_cell_chars:
                    raise too_long()
                strings.append(text)
            elif in_si:
                continue  # the string's runs stay until the string is done
            if stack:
                stack[-1].remove(el)  # nothing finished is kept
    return strings


class _SheetParser(WorkSheetParser):
    """openpyxl's row and cell parsing (types, dates, shared strings) over a watched, pruned iterparse."""

    def guarded_rows(self, part: _Part, limits: XlsxLimits) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        span = limits.max_cell_chars * BYTES_PER_CHAR + READ_SIZE
        row_start = 0
        cells = 0
        stack: list[Any] = []
        in_row = False
        label = ""

        def where() -> str:
            return f"row {label}" if in_row else "the sheet"

        part.watch(span, lambda: TooLarge(f"{where()} of the XLSX file has a cell longer than "
                                          f"{limits.max_cell_chars:,} characters (limits.xlsx.max_cell_chars)"))
        for event, el in iterparse(part, events=("start", "end")):
            part.mark = part.pos
            if event == "start":
                stack.append(el)
                if el.tag == ROW_TAG:
                    in_row, row_start, cells = True, part.pos, 0
                    label = el.get("r") or f"{self.row_counter + 1:,}"
                elif in_row:
                    if el.tag == CELL_TAG:
                        cells += 1
                        if cells > limits.max_columns:
                            raise TooLarge(f"{where()} of the XLSX file has more than {limits.max_columns:,} "
                                           f"cells (limits.xlsx.max_columns)")
                    if part.pos - row_start > limits.max_row_bytes:
                        raise TooLarge(f"{where()} of the XLSX file is longer than {_mib(limits.max_row_bytes)} "
                                       f"(limits.xlsx.max_row_bytes)")
                continue
            stack.pop()
            if el.tag == ROW_TAG:
                if part.pos - row_start > limits.max_row_bytes:
                    raise TooLarge(f"{where()} of the XLSX file is longer than {_mib(limits.max_row_bytes)} "
                                   f"(limits.xlsx.max_row_bytes)")
                in_row = False
                yield self.parse_row(el)
            elif in_row:
                continue  # a cell and its value stay until their row is parsed
            if stack:
                stack[-1].remove(el)  # nothing finished is kept


def _open(file: IO[bytes], limits: XlsxLimits) -> tuple[_GuardedZip, ExcelReader, str | None]:
    """The checked archive, openpyxl's reader of the workbook (strings, sheets, styles) and the first
    worksheet's part: what `load_workbook(read_only=True)` does, less the sizing scan of every sheet."""
    _check_directory(file, limits)
    zf = _GuardedZip(file, limits)
    try:
        _check_declared(zf, limits)
        # ExcelReader opens its own ZipFile of the file (nothing is inflated by that); every read goes
        # through the guarded one instead.
        reader = ExcelReader(file, read_only=True, data_only=True, keep_links=False)
        reader.archive.close()
        reader.archive = zf
        reader.valid_files = zf.namelist()
        reader.read_manifest()
        ct = reader.package.find(SHARED_STRINGS)
        reader.shared_strings = _read_shared_strings(zf, ct.PartName[1:], limits) if ct is not None else []
        reader.read_workbook()
        apply_stylesheet(zf, reader.wb)  # the number formats tell dates from numbers
        sheet = next((rel.target for _sheet, rel in reader.parser.find_sheets()
                      if rel.target in reader.valid_files and "chartsheet" not in rel.Type), None)
    except BaseException:
        zf.close()
        raise
    return zf, reader, sheet


def xlsx_rows(file: IO[bytes], limits: XlsxLimits, chunk_rows: int = 2000) -> Iterator[Rows]:
    """The first worksheet's non-empty rows as (spreadsheet row number, cell values from column A).
    Close the generator and call `release_memory` when done with it."""
    try:
        zf, reader, sheet = _open(file, limits)
    except ApiError:
        raise
    except zipfile.BadZipFile:
        raise InvalidInput("not a readable XLSX file (not a zip archive)") from None
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds (KeyError, ValueError …) on a damaged file
        raise InvalidInput(f"not a readable XLSX file ({type(exc).__name__})") from None
    try:
        if sheet is None:
            raise InvalidInput("the XLSX file has no worksheet")
        wb = reader.wb
        total = limits.max_unzipped_bytes
        with zf.open_part(sheet, total, lambda: _unpacks_to_more(total)) as part:
            parser = _SheetParser(part, reader.shared_strings, data_only=True, epoch=wb.epoch,
                                  date_formats=wb._date_formats, timedelta_formats=wb._timedelta_formats)
            yield from _values(parser.guarded_rows(part, limits), limits, chunk_rows)
    finally:
        zf.close()


def _values(rows: Iterator[tuple[int, list[dict[str, Any]]]], limits: XlsxLimits, chunk_rows: int) -> Iterator[Rows]:
    out: Rows = []
    n = 0
    while True:
        try:
            n, cells = next(rows)
        except StopIteration:
            break
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - damaged sheet XML
            raise InvalidInput(f"the XLSX sheet could not be read after row {n} ({type(exc).__name__})") from None
        width = max((c["column"] for c in cells), default=0)
        if width > limits.max_columns:
            raise TooLarge(f"row {n:,} of the XLSX file has a cell in column {get_column_letter(width)}; at most "
                           f"{limits.max_columns:,} columns are accepted (limits.xlsx.max_columns)")
        values: list[Any] = [None] * width
        blank = True
        for c in cells:
            v = c["value"]
            if isinstance(v, str):
                if len(v) > limits.max_cell_chars:
                    raise TooLarge(f"cell {get_column_letter(c['column'])}{n} of the XLSX file has {len(v):,} "
                                   f"characters; at most {limits.max_cell_chars:,} are accepted "
                                   f"(limits.xlsx.max_cell_chars)")
                if v.strip():
                    blank = False
            elif v is not None:
                blank = False
            values[c["column"] - 1] = v
        if blank:
            continue
        out.append((n, values))
        if len(out) >= chunk_rows:
            yield out
            out = []
    if out:
        yield out


_libc: Any = None


def release_memory() -> None:
    """Give freed heap back to the system after a large file: glibc keeps what a worker thread's arena freed
    (measured: RSS stayed ~200 MiB above the start after a refused bomb without this)."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
