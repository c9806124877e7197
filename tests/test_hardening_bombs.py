"""Decompression bombs (issue 14): an uploaded XLSX is held to `limits.xlsx` before and while it unpacks, a
body sent with Content-Encoding is held to the limits by its inflated size, and the node's memory comes back.

The bombs are built here without this process ever holding one unpacked, and without deflating one either: a
run of one repeated piece is deflated once and its packed bytes written as many times (see `Repeated`)."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import POLICE, NodeProcess, add_dept, error_code, init_home
from test_data import create_resource, current, ids

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG = "http://schemas.openxmlformats.org/package/2006/relationships"
CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"


def _parts(shared: bool) -> dict[str, str]:
    """The small parts of a workbook with one sheet, styles (style 1 is a date) and maybe shared strings."""
    sst = (f'<Override PartName="/xl/sharedStrings.xml" ContentType="{CT}.sharedStrings+xml"/>'
           if shared else "")
    sst_rel = (f'<Relationship Id="rId3" Type="{REL}/sharedStrings" Target="sharedStrings.xml"/>'
               if shared else "")
    return {
        "[Content_Types].xml": (
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/xl/workbook.xml" ContentType="{CT}.sheet.main+xml"/>'
            f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{CT}.worksheet+xml"/>'
            f'<Override PartName="/xl/styles.xml" ContentType="{CT}.styles+xml"/>{sst}</Types>'),
        "_rels/.rels": (f'<Relationships xmlns="{PKG}"><Relationship Id="rId1" '
                        f'Type="{REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'),
        "xl/workbook.xml": (f'<workbook xmlns="{MAIN}" xmlns:r="{REL}"><sheets>'
                            '<sheet name="人口" sheetId="1" r:id="rId1"/></sheets></workbook>'),
        "xl/_rels/workbook.xml.rels": (
            f'<Relationships xmlns="{PKG}">'
            f'<Relationship Id="rId1" Type="{REL}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{REL}/styles" Target="styles.xml"/>{sst_rel}</Relationships>'),
        "xl/styles.xml": (
            f'<styleSheet xmlns="{MAIN}"><fonts count="1"><font/></fonts><fills count="1"><fill><patternFill patternType="none"/></fill></fills>'
            '<borders count="1"><border/></borders><cellStyleXfs count="1"><xf/></cellStyleXfs>'
            '<cellXfs count="2"><xf numFmtId="0"/><xf numFmtId="14" applyNumberFormat="1"/></cellXfs>'
            '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles></styleSheet>'),
    }


@dataclass(frozen=True)
class Repeated:
    """`unit` over and over, about `total` bytes (in 1 MiB pieces)."""

    unit: bytes
    total: int


def repeat(unit: bytes, total: int) -> list[Repeated]:
    return [Repeated(unit, total)]


def _deflated(pieces: Iterable[bytes | Repeated], level: int) -> tuple[list[bytes], int, int]:
    """A member's raw deflate stream as a list of packed pieces, its CRC-32 and its unpacked size.

    Each piece is deflated on its own and ends on a full flush (no reference reaches back before it), so
    packed pieces may follow one another in any order and any number of times. A 1 MiB piece repeated is
    deflated once: deflating the ~1.75 GiB the bombs unpack to took 13-14 s of the suite's CPU; the ratio
    is the same (~1,000 : 1 here, deflate's limit is 1,032 : 1)."""
    packed: list[bytes] = []
    crc = size = 0

    def one(data: bytes) -> bytes:
        z = zlib.compressobj(level, zlib.DEFLATED, -15)
        return z.compress(data) + z.flush(zlib.Z_FULL_FLUSH)

    for piece in pieces:
        if isinstance(piece, Repeated):
            block = piece.unit * max(1, (1 << 20) // len(piece.unit))
            times = max(1, piece.total // len(block))
            packed += [one(block)] * times
            for _ in range(times):
                crc = zlib.crc32(block, crc)
            size += len(block) * times
        else:
            packed.append(one(piece))
            crc = zlib.crc32(piece, crc)
            size += len(piece)
    packed.append(zlib.compressobj(level, zlib.DEFLATED, -15).flush(zlib.Z_FINISH))  # the final, empty block
    return packed, crc, size


def write_xlsx(path: Path, rows: Iterable[bytes | Repeated], strings: Iterable[bytes | Repeated] | None = None,
               level: int = 6) -> Path:
    """An XLSX whose sheet is `rows` (the XML inside <sheetData>) and, if given, whose shared-strings table
    is `strings` (the XML inside <sst>): a plain zip archive (PKZIP 2.0, deflated members), as Excel writes."""
    members = [(name, [text.encode()]) for name, text in _parts(strings is not None).items()]
    members.append(("xl/worksheets/sheet1.xml",
                    [f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{MAIN}"><sheetData>'.encode(), *rows,
                     b"</sheetData></worksheet>"]))
    if strings is not None:
        members.append(("xl/sharedStrings.xml",
                        [f'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="{MAIN}">'.encode(), *strings, b"</sst>"]))
    central = []
    with open(path, "wb") as f:
        for name, pieces in members:
            packed, crc, size = _deflated(pieces, level)
            packed_size, raw_name, offset = sum(map(len, packed)), name.encode(), f.tell()
            # Version 2.0, no flags, deflate, 1980-01-01 00:00.
            fields = (20, 0, 8, 0, 0x21, crc, packed_size, size, len(raw_name))
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields, 0) + raw_name)
            f.writelines(packed)
            central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, 0, offset)
                           + raw_name)
        start = f.tell()
        f.writelines(central)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), f.tell() - start, start, 0))
    return path


def inline(col: str, row: int, text: str) -> bytes:
    return f'<c r="{col}{row}" t="inlineStr"><is><t>{text}</t></is></c>'.encode()


HEADER = b'<row r="1">' + inline("A", 1, "id_number") + inline("B", 1, "name") + b"</row>"
GIB = 1 << 30


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """~1 GiB of ordinary small rows packed into a few MB, and three 256 MiB bombs of one row, one cell and
    one shared string, each about 1 MB packed (zlib level 9)."""
    d = tmp_path_factory.mktemp("bombs")
    cell = inline("A", 2, "370321199001010011") + inline("B", 2, "张三")
    return {
        "rows": write_xlsx(d / "rows.xlsx", [HEADER, *repeat(b"<row>" + cell + b"</row>", GIB)], level=9),
        "one_row": write_xlsx(d / "one_row.xlsx", [HEADER, b'<row r="2">', *repeat(b'<c t="inlineStr"><is><t>A'
                                                                                   b"</t></is></c>", GIB // 4),
                                                   b"</row>"], level=9),
        "one_cell": write_xlsx(d / "one_cell.xlsx", [HEADER, b'<row r="2"><c r="A2" t="inlineStr"><is><t>',
                                                     *repeat(b"A" * 64, GIB // 4), b"</t></is></c></row>"], level=9),
        "one_string": write_xlsx(d / "one_string.xlsx", [HEADER], [b"<si><t>", *repeat(b"A" * 64, GIB // 4),
                                                                   b"</t></si>"], level=9),
    }


async def upload(node, code: str, path: Path):
    return await node.call("POST", f"/api/v1/resources/{code}/files", "police", data=path.read_bytes(),
                           headers={"Content-Type": XLSX})


async def test_bomb_refused_before_unpacking(node, bombs):
    code = await create_resource(node)
    size = bombs["rows"].stat().st_size
    assert size < 8 << 20  # a few MB on the wire
    status, body = await upload(node, code, bombs["rows"])
    assert status == 413 and error_code(body) == "TOO_LARGE", body
    message = body["error"]["message"]
    assert "xl/worksheets/sheet1.xml" in message and "limits.xlsx.max_ratio" in message, message
    assert await current(node, code) == {}


async def test_cell_row_and_shared_string_limits_named(node, tmp_path):
    code = await create_resource(node)
    k = ids(2)
    cases = {
        # One cell over Excel's 32,767 characters, inline and as a shared string.
        "long_cell": (write_xlsx(tmp_path / "long_cell.xlsx", [HEADER, b'<row r="2">', inline("A", 2, k[0]),
                                                               inline("B", 2, "名" * 40_000), b"</row>"]),
                      "limits.xlsx.max_cell_chars", "cell B2"),
        "long_string": (write_xlsx(tmp_path / "long_string.xlsx",
                                   [HEADER, b'<row r="2">', inline("A", 2, k[0]), b'<c r="B2" t="s"><v>0</v></c></row>'],
                                   ["<si><t>{}</t></si>".format("名" * 40_000).encode()]),
                        "limits.xlsx.max_cell_chars", "shared string 1"),
        # A cell far longer than any (10 MiB of text that packs only 2 times, so no ratio check stops it): stopped
        # while it streams, not after.
        "huge_cell": (write_xlsx(tmp_path / "huge_cell.xlsx", [HEADER, b'<row r="2"><c r="B2" t="inlineStr"><is><t>',
                                                               *(os.urandom(1 << 19).hex().encode() for _ in range(10)),
                                                               b"</t></is></c></row>"]),
                      "limits.xlsx.max_cell_chars", "row 2"),
        # 2,000 cells in one row (the default bound is 1,024), and one cell out in column XFD (Excel's last).
        "wide_row": (write_xlsx(tmp_path / "wide_row.xlsx", [HEADER, b'<row r="2">',
                                                             *[b'<c t="n"><v>1</v></c>'] * 2000, b"</row>"]),
                     "limits.xlsx.max_columns", "row 2"),
        "far_cell": (write_xlsx(tmp_path / "far_cell.xlsx", [HEADER, b'<row r="2">', inline("A", 2, k[1]),
                                                             b'<c r="XFD2"><v>1</v></c></row>']),
                     "limits.xlsx.max_columns", "column XFD"),
        # 64,000 distinct shared strings of ~30 bytes of XML: 2 MiB of table, over a node limit of 1 MiB.
        "big_table": (write_xlsx(tmp_path / "big_table.xlsx", [HEADER], [
            f"<si><t>字符串{i:08d}</t></si>".encode() for i in range(64_000)]),
                      "limits.xlsx.max_shared_strings_bytes", "shared strings"),
    }
    # The last case needs a smaller bound than the default 256 MiB: the running node's own limits object.
    node.config.limits.xlsx.max_shared_strings_bytes = 1 << 20
    for name, (path, setting, where) in cases.items():
        status, body = await upload(node, code, path)
        assert status == 413 and error_code(body) == "TOO_LARGE", (name, body)
        message = body["error"]["message"]
        assert setting in message and where in message, (name, message)
    assert await current(node, code) == {}


async def test_ordinary_xlsx_still_read(node, tmp_path):
    """Shared strings, inline strings, numbers and a date-formatted cell, as Excel writes them."""
    code = await create_resource(node)
    k = ids(2)
    path = write_xlsx(tmp_path / "ok.xlsx", [
        b'<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c>'
        b'<c r="D1" t="s"><v>3</v></c></row>',
        b'<row r="2"><c r="A2" t="s"><v>4</v></c><c r="B2" t="s"><v>5</v></c><c r="C2" s="1"><v>32874</v></c>'
        b'<c r="D2"><v>3</v></c></row>',
        b'<row r="4">' + inline("A", 4, k[1]) + inline("B", 4, "李四") + b"</row>",
    ], [f"<si><t>{t}</t></si>".encode() for t in ("公民身份号码", "姓名", "出生日期", "household", k[0])]
       + ["<si><r><t>张</t></r><r><t>三</t></r></si>".encode()])
    status, body = await upload(node, code, path)
    assert status == 200 and body["received"] == 2, body
    state = await current(node, code)
    assert state == {k[0]: {"id_number": k[0], "name": "张三", "birth_date": "1990-01-01", "household": 3},
                     k[1]: {"id_number": k[1], "name": "李四"}}


@pytest.mark.parametrize("backend", ["sqlite"])  # the body's encoding is HTTP's business, not the store's
async def test_compressed_bodies(node):
    # A catalog entry whose summary inflates to 64 MiB from ~65 KB of gzip: refused at the 8 MiB JSON limit,
    # counted as inflated, answered long before 64 MiB could have been read.
    entry = {"classification": "101001", "name": "桓台县户籍人口基本信息", "category": "base", "format": "database",
             "items": [{"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True}],
             "share": {"type": "unconditional"}, "update_cycle": "daily"}
    bomb = gzip.compress(json.dumps(dict(entry, summary=" " * (64 << 20))).encode(), 9)
    assert len(bomb) < 128 * 1024
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body = await node.call("POST", "/api/v1/catalog", "police", data=bomb,
                                   headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 413 and error_code(body) == "TOO_LARGE", body
    assert loop.time() - started < 5
    # The same with deflate, on an upload (counted against limits.max_upload_bytes, set low here).
    node.config.limits.max_upload_bytes = 1 << 20
    code = await create_resource(node)
    k = ids(1)
    csv = b"id_number,name\n" + f"{k[0]},".encode() + b"A" * (4 << 20) + b"\n"
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police", data=zlib.compress(csv, 9),
                                   headers={"Content-Type": "text/csv", "Content-Encoding": "deflate"})
    assert status == 413 and "limits.max_upload_bytes" in body["error"]["message"], body
    # Ordinary compressed bodies still work: a gzip catalog entry, a gzip CSV upload, a deflate NDJSON push.
    status, body = await node.call("POST", "/api/v1/catalog", "police", data=gzip.compress(json.dumps(entry).encode()),
                                   headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 201, body
    k = ids(2)
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police",
                                   data=gzip.compress(f"id_number,name\n{k[0]},张三\n".encode()),
                                   headers={"Content-Type": "text/csv", "Content-Encoding": "gzip"})
    assert status == 200 and body["received"] == 1, body
    line = json.dumps({"id_number": k[1], "name": "李四"}, ensure_ascii=False).encode()
    status, body = await node.call("POST", f"/api/v1/resources/{code}/records", "police", data=zlib.compress(line),
                                   headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "deflate"})
    assert status == 200 and body["received"] == 1, body
    assert set(await current(node, code)) == {k[0], k[1]}
    # A body that is not what its Content-Encoding says: 400 in the error shape, not a 500.
    for path in ("/api/v1/catalog", f"/api/v1/resources/{code}/records"):
        status, body = await node.call("POST", path, "police", data=b"not gzip at all",
                                       headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert status == 400 and error_code(body) == "INVALID_INPUT" and "gzip" in body["error"]["message"], body


def _memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (the peak since the process started) of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


async def test_memory_after_three_bombs_at_once(tmp_path, bombs):
    """A `govnode run` node takes three bombs at once, three times: its peak and its memory afterwards stay close to
    what it used before. Before issue 14 one of the 256 MiB one-row bombs alone took a process to 5.8 GiB,
    and the 1 GiB one to 0.9 GiB (still rising) before its first row."""
    home = tmp_path / "node"
    # The packing-ratio check is lifted so that the bombs reach the checks made while unpacking; the total is
    # lowered so that the 1 GiB one is refused by its declared size.
    config = init_home(home, "370321", "桓台县", extra={"limits": {"xlsx": {"max_ratio": 1_000_000,
                                                                           "max_unzipped_bytes": 512 << 20}}})
    node = NodeProcess(config)
    node.tokens["police"] = add_dept(home, POLICE, "桓台县公安局")
    await node.start()
    try:
        code = await create_resource(node)
        k = ids(1)
        # Warm up: openpyxl imported and one ordinary upload read, so that the baseline is a working node's.
        ok = write_xlsx(tmp_path / "ok.xlsx", [HEADER, b'<row r="2">' + inline("A", 2, k[0]) + inline("B", 2, "张三")
                                               + b"</row>"])
        status, body = await upload(node, code, ok)
        assert status == 200, body
        before = _memory_mib(node.proc.pid)
        for batch in (["rows"] * 3, ["one_row", "one_cell", "one_string"]):
            answers = await asyncio.gather(*(upload(node, code, bombs[b]) for b in batch))
            for name, (status, body) in zip(batch, answers):
                assert status == 413 and error_code(body) == "TOO_LARGE", (name, body)
        # And three JSON bodies of 64 MiB each in ~65 KB of gzip.
        json_bomb = gzip.compress(b'{"summary": "' + b" " * (64 << 20) + b'"}', 9)
        answers = await asyncio.gather(*(node.call("POST", "/api/v1/catalog", "police", data=json_bomb, headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip"}) for _ in range(3)))
        assert [status for status, _ in answers] == [413] * 3, answers
        settled = _memory_mib(node.proc.pid)
        print(f"node memory (MiB): before {before}, after three bombs at once, three times {settled}")
        # Each XLSX bomb is spooled to disk and what is unpacked stops at the bound it crosses (1,024 cells,
        # ~390 KiB of one text); each JSON body is read to its 8 MiB limit and no further. So the peak may
        # rise by three 8 MiB bodies and a few parser buffers, not by what the bombs unpack to (64 MiB to
        # 1 GiB each). Measured: +13 MiB at the peak, and the allocator keeps about that much for the next
        # body (flat over repeated rounds; 72 XLSX bombs in a row settled at +9 MiB).
        assert settled["VmHWM"] - before["VmRSS"] < 64, (before, settled)
        assert settled["VmRSS"] - before["VmRSS"] < 32, (before, settled)
    finally:
        await node.stop()
