"""Table exchange (前置机库表交换, SPEC §12) from real source databases: a SQLite file and a PostgreSQL table on
this machine. Full load in batches with visible progress, increments by the updated column, deletions (flag
column; key reconciliation), a source outage and a schema change (reported, retried, nothing loaded lost),
credentials never shown. The node itself runs on SQLite; the sources are the departments' own databases."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import sqlite3

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from node.exchange.http import EXCHANGE
from node.ids import make_gb11643
from support import PG_URL, POLICE, add_dept, error_code, free_port, init_home, start_node, wait_for

ITEMS = [
    {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True,
     "check": "gb11643"},
    {"name": "姓名", "field": "name", "type": "C", "length": 50},
    {"name": "出生日期", "field": "birth_date", "type": "D"},
    {"name": "家庭人口", "field": "household", "type": "I"},
]
COLUMNS = {"name": "xm", "birth_date": "csrq", "household": "hh"}
PEOPLE = [make_gb11643("370321", f"19{50 + i // 336:02d}{i % 12 + 1:02d}{i // 12 % 28 + 1:02d}", i % 1000)
          for i in range(120)]


@pytest.fixture
async def node(tmp_path):
    home = tmp_path / "node"
    config = init_home(home, "370321", "桓台县")
    tokens = {"police": add_dept(home, POLICE, "桓台县公安局"),
              "operator": add_dept(home, "OPERATOR", "桓台县大数据中心", "operator")}
    running = await start_node(config)
    running.tokens.update(tokens)
    status, entry = await running.call("POST", "/api/v1/catalog", "police", json_body={
        "classification": "101001", "name": "桓台县户籍人口基本信息", "category": "base", "format": "database",
        "items": ITEMS, "share": {"type": "unconditional", "methods": ["api", "table"]}, "update_cycle": "realtime"})
    assert status == 201, entry
    running.code = entry["code"]  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        await running.stop()


async def source_state(node, pred, what: str) -> dict:
    async def check():
        status, body = await node.call("GET", f"/api/v1/resources/{node.code}/sources", "police")
        assert status == 200, body
        src = body["sources"][0]
        return src if pred(src) else None
    return await wait_for(check, 20, 0.05, what)


async def record(node, key: str) -> dict | None:
    status, body = await node.call("POST", f"/api/v1/resources/{node.code}/query", "police", json_body={"key": key})
    assert status == 200, body
    return body["records"][0] if body["records"] else None


async def named(node, key: str, name: str) -> bool:
    rec = await record(node, key)
    return rec is not None and rec.get("name") == name


async def feed_after(node, since: int) -> list[dict]:
    status, body = await node.call("GET", f"/api/v1/resources/{node.code}/changes?since={since}", "police")
    assert status == 200, body
    return body["changes"]


async def metrics(node) -> str:
    async with node.session.get(node.url + "/metrics") as resp:
        return await resp.text()


async def sync(node, source_id: str) -> None:
    status, body = await node.call("POST", f"/api/v1/resources/{node.code}/sources/{source_id}/sync", "police")
    assert status == 202, body


async def test_sqlite_source_load_update_delete_outage(node, tmp_path):
    path = tmp_path / "frontend.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE rk (sfzh TEXT PRIMARY KEY, xm TEXT, csrq TEXT, hh INTEGER, gxsj INTEGER, scbz TEXT)")
    rows = [(p, f"居民{i}", f"19{50 + i // 336:02d}-0{i % 9 + 1}-1{i % 9}", i % 5 + 1, 1000 + i, "N")
            for i, p in enumerate(PEOPLE)]
    rows[7] = (PEOPLE[7], "居民7", "1950-13-45", 2, 1007, "N")  # not a real date: rejected, the rest load
    db.executemany("INSERT INTO rk VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    spec = {"url": f"sqlite:///{path}", "table": "rk", "key_column": "sfzh", "updated_column": "gxsj",
            "columns": COLUMNS, "interval_s": 1, "delete_column": "scbz", "delete_value": "Y", "batch_size": 25}
    code = node.code
    exchange = node.app[EXCHANGE]
    assert exchange.next_tick() is None  # nothing bound: the scheduler does not wake for the exchange

    # Bad bindings are refused with the reason; nothing is bound.
    for bad, field in (({**spec, "columns": {**COLUMNS, "name": "no_such"}}, "column"),
                       ({**spec, "columns": {"nickname": "xm"}}, "columns.nickname"),
                       ({**spec, "url": "postgresql+psycopg2://u:pw@127.0.0.1/x"}, "url"),
                       ({**spec, "table": "nope"}, "table")):
        status, body = await node.call("POST", f"/api/v1/resources/{code}/sources", "police", json_body=bad)
        assert (status, error_code(body)) == (400, "INVALID_INPUT"), body
        assert field in str(body["error"].get("details")), body
    status, body = await node.call("POST", f"/api/v1/resources/{code}/sources", "operator", json_body=spec)
    assert (status, error_code(body)) == (403, "FORBIDDEN"), body

    assert exchange.next_tick() is None
    status, src = await node.call("POST", f"/api/v1/resources/{code}/sources", "police", json_body=spec)
    assert status == 201, src
    sid = src["id"]
    assert exchange.next_tick() is not None
    status, body = await node.call("POST", f"/api/v1/resources/{code}/sources", "police", json_body=spec)
    assert (status, error_code(body)) == (409, "CONFLICT"), body  # 一数一源

    # The full history, in batches of 25, with its progress shown; the bad row rejected with its key masked.
    src = await source_state(node, lambda s: s["state"] == "ready", "the initial load")
    assert src["progress"]["phase"] == "incremental" and src["progress"]["loaded"] == 120
    assert src["progress"]["total"] == 120 and src["progress"]["percent"] == 100.0
    assert src["rows"] == {"upserted": 119, "deleted": 0, "rejected": 1}
    assert src["rejects"][0]["field"] == "birth_date" and src["rejects"][0]["key"] == PEOPLE[7][:6] + "********" + PEOPLE[7][-4:]
    assert await record(node, PEOPLE[7]) is None
    assert (await record(node, PEOPLE[3]))["name"] == "居民3"
    head = (await node.call("GET", f"/api/v1/resources/{code}/changes?since=0&limit=1000", "police"))[1]["next"]

    # An update, a new row, a deletion by flag; a row rewritten with the same values makes no change.
    db.execute("UPDATE rk SET xm = '张三', gxsj = 2000 WHERE sfzh = ?", (PEOPLE[3],))
    db.execute("UPDATE rk SET scbz = 'Y', gxsj = 2001 WHERE sfzh = ?", (PEOPLE[4],))
    db.execute("UPDATE rk SET gxsj = 2002 WHERE sfzh = ?", (PEOPLE[5],))
    db.execute("UPDATE rk SET csrq = '1950-01-01', gxsj = 2003 WHERE sfzh = ?", (PEOPLE[7],))
    db.commit()
    await wait_for(lambda: record(node, PEOPLE[7]), 10, 0.05, "the corrected row")
    changes = await feed_after(node, head)
    assert sorted((c["key"], c["deleted"]) for c in changes) == sorted(
        [(PEOPLE[3], False), (PEOPLE[4], True), (PEOPLE[7], False)]), changes
    assert (await record(node, PEOPLE[3]))["name"] == "张三" and await record(node, PEOPLE[4]) is None

    # The source goes away: the state and the metrics say so, what was loaded is still served.
    moved = tmp_path / "elsewhere.db"
    db.close()
    shutil.move(path, moved)
    await sync(node, sid)
    src = await source_state(node, lambda s: s["state"] == "error", "the outage to show")
    assert src["last_error"]["kind"] == "unreachable" and src["failures"] >= 1 and src["next_attempt"]
    assert not path.exists()  # opened read-only: never created empty
    text = await metrics(node)
    assert f'govnode_exchange_source_up{{resource="{code}",source="{sid}"}} 0.0' in text
    assert f'govnode_exchange_errors_total{{kind="unreachable",resource="{code}",source="{sid}"}}' in text
    assert (await record(node, PEOPLE[3]))["name"] == "张三"

    # Back, with a change made meanwhile: the next attempt (back-off, or sync now) catches up.
    shutil.move(moved, path)
    db = sqlite3.connect(path)
    db.execute("UPDATE rk SET xm = '李四', gxsj = 3000 WHERE sfzh = ?", (PEOPLE[10],))
    db.commit()
    db.close()
    await sync(node, sid)
    src = await source_state(node, lambda s: s["state"] == "ready" and s["failures"] == 0, "recovery")
    assert src["last_error"] is None and src["rows"]["deleted"] == 1
    assert (await record(node, PEOPLE[10]))["name"] == "李四"
    assert f'govnode_exchange_source_up{{resource="{code}",source="{sid}"}} 1.0' in await metrics(node)

    # Unbinding keeps the records.
    status, body = await node.call("DELETE", f"/api/v1/resources/{code}/sources/{sid}", "police")
    assert status == 200 and body["removed"] is True, body
    assert (await record(node, PEOPLE[10]))["name"] == "李四"
    assert exchange.next_tick() is None


class TcpProxy:
    """A TCP proxy in front of PostgreSQL, to take the source down and bring it back."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.server: asyncio.AbstractServer | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.links |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.links:
            w.close()
        self.links.clear()
        await self.server.wait_closed()


@pytest.fixture
async def pg_source():
    schema = "gn_src_" + secrets.token_hex(5)
    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.execute(f'CREATE TABLE "{schema}".people (sfzh varchar(18) PRIMARY KEY, xm text, csrq date, '
                       f'hh integer, gxsj timestamptz NOT NULL)')
    try:
        yield conn, schema
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def test_postgresql_source_reconciles_deletes_survives_schema_change_hides_password(node, pg_source, caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="govnode")
    conn, schema = pg_source
    import datetime as dt

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    await conn.executemany(f'INSERT INTO "{schema}".people VALUES ($1, $2, $3, $4, $5)',
                           [(p, f"居民{i}", dt.date(1980, 1, 1 + i % 28), i % 4 + 1, t0) for i, p in enumerate(PEOPLE[:40])])
    password = "Pw" + secrets.token_hex(8)
    pg = make_url(PG_URL)
    proxy = TcpProxy(pg.host or "127.0.0.1", pg.port or 5432)
    await proxy.start()
    url = pg.set(password=password, port=proxy.port).render_as_string(hide_password=False)
    assert password in url
    spec = {"url": url, "table": f"{schema}.people", "key_column": "sfzh", "updated_column": "gxsj",
            "columns": COLUMNS, "interval_s": 1, "reconcile_interval_s": 1, "batch_size": 15}
    code = node.code
    status, src = await node.call("POST", f"/api/v1/resources/{code}/sources", "police", json_body=spec)
    assert status == 201, src
    sid = src["id"]
    assert password not in str(src) and "***" in src["url"]
    # Every row shares one timestamp: the batches of 15 still page through all of them.
    src = await source_state(node, lambda s: s["state"] == "ready", "the initial load")
    assert src["rows"]["upserted"] == 40 and src["progress"]["loaded"] == 40
    assert (await record(node, PEOPLE[39]))["birth_date"] == "1980-01-12"

    # An update (timestamp moves) and a row deleted outright: reconciliation turns it into a tombstone.
    t1 = t0 + dt.timedelta(seconds=5)
    await conn.execute(f'UPDATE "{schema}".people SET xm = $1, gxsj = $2 WHERE sfzh = $3', "王五", t1, PEOPLE[2])
    await conn.execute(f'DELETE FROM "{schema}".people WHERE sfzh = $1', PEOPLE[9])
    await wait_for(lambda: named(node, PEOPLE[2], "王五"), 10, 0.05, "the update")
    await source_state(node, lambda s: s["rows"]["deleted"] == 1, "the reconciliation")
    assert await record(node, PEOPLE[9]) is None

    # The source database goes down: reported, retried, nothing loaded is lost; back, it catches up.
    await proxy.stop()
    await conn.execute(f'UPDATE "{schema}".people SET xm = $1, gxsj = $2 WHERE sfzh = $3', "钱八", t1 + dt.timedelta(seconds=2), PEOPLE[30])
    await sync(node, sid)
    src = await source_state(node, lambda s: s["state"] == "error", "the outage to show")
    assert src["last_error"]["kind"] == "unreachable", src
    assert (await record(node, PEOPLE[2]))["name"] == "王五"
    await proxy.start()
    await sync(node, sid)
    await wait_for(lambda: named(node, PEOPLE[30], "钱八"), 10, 0.05, "the update after the outage")

    # The source's schema changes under the binding: reported, retried, nothing loaded is lost.
    await conn.execute(f'ALTER TABLE "{schema}".people RENAME COLUMN xm TO xingming')
    await sync(node, sid)
    src = await source_state(node, lambda s: s["state"] == "error", "the schema change to show")
    assert src["last_error"]["kind"] == "schema" and "xm" in src["last_error"]["message"], src
    assert (await record(node, PEOPLE[2]))["name"] == "王五"
    await conn.execute(f'ALTER TABLE "{schema}".people RENAME COLUMN xingming TO xm')
    await conn.execute(f'UPDATE "{schema}".people SET xm = $1, gxsj = $2 WHERE sfzh = $3', "赵六", t1 + dt.timedelta(seconds=5), PEOPLE[20])
    await sync(node, sid)
    await source_state(node, lambda s: s["state"] == "ready", "recovery")
    await wait_for(lambda: named(node, PEOPLE[20], "赵六"), 10, 0.05, "the update after recovery")

    # The password is never shown back, in any answer, log line or metric.
    status, listing = await node.call("GET", f"/api/v1/resources/{code}/sources", "operator")
    assert status == 200 and password not in str(listing)
    assert password not in caplog.text and password not in await metrics(node)
    for f in os.listdir(node.config.home):
        if f.endswith(".log"):
            assert password not in (node.config.home / f).read_text(errors="replace")
    await proxy.stop()
