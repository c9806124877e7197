"""No unbounded wait on the database (issue 14): a node on PostgreSQL whose database is cut off (refused, or
a black hole that accepts and never answers) answers 503 UNAVAILABLE in SPEC §9's shape within the bounds
of its configuration, /healthz says which part failed, and the node serves again by itself once the
database answers, its background loops included."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from node.config import DatabaseConfig
from node.context import DB
from node.db import database_unavailable, make_engine, unavailable_error, write_tx
from node.ids import make_gb32100
from node.web import json_response, make_error_middleware
from support import (
    CIVIL, FAST_FEDERATION, PG_URL, POLICE, SAMPLE_ENTRY, add_child, add_dept_async, free_port, pg_schema,
    start_federation, stop_all, wait_for,
)
from tcpproxy import TcpProxy
from test_foundation_catalog import entry_body
from test_sharing import create_resource, person_ids, push_ndjson

CONNECT_S, STATEMENT_S = 1.0, 2.0
# What the configuration promises (README, Configuration): /healthz waits for one connect and one statement;
# a call fails at its first wait for the database and then waits once more, for its audit record, and
# neither wait outlasts a connect and a statement.
HEALTH_BOUND = CONNECT_S + STATEMENT_S
CALL_BOUND = 2 * (CONNECT_S + STATEMENT_S)
MARGIN = 1.5  # the event loop and a busy shared machine, not the database
GUARD = CALL_BOUND + 3 * MARGIN  # a wait that outlasts every bound fails the test instead of hanging it


@pytest.fixture
async def cut_off(tmp_path):
    """A city (SQLite) and under it a county on PostgreSQL whose database is reached through a TcpProxy:
    (city, county, proxy); departments `police` and `civil` at the county, `city` at the city."""
    pg = make_url(PG_URL)
    async with TcpProxy(pg.port or 5432, pg.host or "127.0.0.1") as proxy:
        nodes = await start_federation(tmp_path, tree=[("370300", "淄博市", None)])
        try:
            url = pg.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
            database = {"url": url, "schema": pg_schema(), "connect_timeout_s": CONNECT_S,
                        "statement_timeout_s": STATEMENT_S}
            county = await add_child(nodes, tmp_path, "370321", "桓台县", "370300", backend="postgresql",
                                     federation={**FAST_FEDERATION, "database": database})
            city = nodes["370300"]
            county.tokens["police"] = await add_dept_async(county.config.home, POLICE, "桓台县公安局")
            county.tokens["civil"] = await add_dept_async(county.config.home, CIVIL, "桓台县民政局")
            city.tokens["city"] = await add_dept_async(city.config.home, make_gb32100("11370300MB", 1), "淄博市大数据局")
            yield city, county, proxy
        finally:
            proxy.mode = "forward"
            await stop_all(nodes)


async def timed(call) -> tuple[int, dict, float]:  # noqa: ANN001
    started = time.monotonic()
    status, body = await call
    return status, body, time.monotonic() - started


def assert_unavailable(status: int, body: dict) -> None:
    """503 in SPEC §9's shape, saying the database is unreachable, with no statement or trace in it."""
    assert status == 503, body
    assert set(body) == {"error"} and body["error"]["code"] == "UNAVAILABLE" and body["error"]["request_id"], body
    assert "database is unreachable" in body["error"]["message"], body
    text = json.dumps(body, ensure_ascii=False)
    for leak in ("SELECT", "INSERT", "[SQL", "Traceback", "asyncpg", "sqlalchemy"):
        assert leak not in text, body


async def during_the_cut(county, code: str, key: str) -> None:  # noqa: ANN001
    """The calls meet the cut together, as calls in flight do: on pooled connections and on new ones."""
    async with asyncio.timeout(GUARD):
        health, verify, register = await asyncio.gather(
            timed(county.call("GET", "/healthz")),
            timed(county.call("POST", f"/api/v1/resources/{code}/verify", "civil",
                              json_body={"key": key, "fields": {"name": "张三"}})),
            timed(county.call("POST", "/api/v1/catalog", "police", json_body=entry_body(name="断线登记"))))
    status, body, took = health
    assert status == 503 and took <= HEALTH_BOUND + MARGIN, (status, body, took)
    assert body["status"] == "degraded" and body["database"] == "unreachable", body
    # The federation section still answers, with what it knows without the database.
    assert body["federation"]["joined"] is True, body
    assert body["federation"]["peers"]["370300"]["outbox"] is None, body
    for status, body, took in (verify, register):
        assert_unavailable(status, body)
        assert took <= CALL_BOUND + MARGIN, took


async def after_the_cut(city, county) -> None:  # noqa: ANN001
    """No restart: the first call is served, what it writes is stored, and the background loops work again
    (a change at either node reaches the other, through the county's outbox, pulls and scheduler)."""
    status, entry = await county.call("POST", "/api/v1/catalog", "police", json_body=entry_body(name="恢复后登记"))
    assert status == 201, entry
    status, got = await county.call("GET", f"/api/v1/catalog/{entry['code']}", "civil")
    assert status == 200 and got["name"] == "恢复后登记", got
    status, health = await county.call("GET", "/healthz")
    assert status == 200 and health["database"] == "ok", health
    status, upstream = await city.call("POST", "/api/v1/catalog", "city", json_body={**SAMPLE_ENTRY, "name": "市级登记"})
    assert status == 201, upstream

    async def held(node, code: str, token: str) -> bool:  # noqa: ANN001
        return (await node.call("GET", f"/api/v1/catalog/{code}", token))[0] == 200

    await wait_for(lambda: held(city, entry["code"], "city"), what="the county's new entry at the city")
    await wait_for(lambda: held(county, upstream["code"], "civil"), what="the city's new entry at the county")


async def prepared(county) -> tuple[str, str]:  # noqa: ANN001
    code = await create_resource(county)
    key = person_ids(1)[0]
    await push_ndjson(county, code, [{"id_number": key, "name": "张三"}])
    status, body = await county.call("POST", f"/api/v1/resources/{code}/verify", "civil",
                                     json_body={"key": key, "fields": {"name": "张三"}})
    assert status == 200 and body["match"] is True, body
    return code, key


async def test_a_black_hole_is_answered_503_within_the_bounds_and_heals_by_itself(cut_off):
    city, county, proxy = cut_off
    code, key = await prepared(county)
    # The stall comes in the middle of a write transaction: the statement gives up at its bound, and what
    # comes out says the database is unavailable (not an error of the transaction's own cleanup).
    with pytest.raises(Exception) as stalled:  # noqa: PT011 - which exception is what is checked below
        async with asyncio.timeout(GUARD), write_tx(county.app[DB]) as conn:
            await conn.execute(sa.text("SELECT 1"))
            proxy.mode = "blackhole"  # pooled connections stop answering, new ones are accepted, never answered
            started = time.monotonic()
            await conn.execute(sa.text("SELECT 2"))
    assert database_unavailable(stalled.value), repr(stalled.value)
    assert time.monotonic() - started <= STATEMENT_S + MARGIN
    await during_the_cut(county, code, key)
    proxy.mode = "forward"
    await after_the_cut(city, county)


async def test_a_refused_database_is_answered_503_and_heals_by_itself(cut_off):
    city, county, proxy = cut_off
    code, key = await prepared(county)
    proxy.mode = "refuse"  # pooled connections closed, new ones refused
    await during_the_cut(county, code, key)
    await asyncio.sleep(FAST_FEDERATION["federation"]["pull_interval_s"])  # scheduled work meets the cut too
    proxy.mode = "forward"
    await after_the_cut(city, county)


async def test_the_middleware_answers_503_for_what_the_drivers_raise(tmp_path):
    """The one mapping, fed what asyncpg and SQLite really raise (PostgreSQL refused and black-holed, an SQLite
    file locked by another process): 503 in SPEC §9's shape; a failure that is not the database's stays 500."""
    pg = make_url(PG_URL)
    locked = tmp_path / "locked.db"
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO t VALUES (1)")
    async with TcpProxy(pg.port or 5432, pg.host or "127.0.0.1") as proxy:
        engines = {
            "pg": make_engine(DatabaseConfig(url=pg.set(host="127.0.0.1", port=proxy.port).render_as_string(False),
                                             connect_timeout_s=CONNECT_S, statement_timeout_s=STATEMENT_S)),
            # SQLite's busy timeout is fixed (30 s); a short one here, for the same error sooner.
            "sqlite": create_async_engine(f"sqlite+aiosqlite:///{locked}", connect_args={"timeout": 0.1}),
        }

        async def read(request: web.Request) -> web.Response:
            async with engines[request.match_info["db"]].connect() as conn:
                await conn.execute(sa.text("SELECT count(*) FROM pg_class" if request.match_info["db"] == "pg"
                                           else "SELECT count(*) FROM t"))
            return json_response({"ok": True})

        async def not_the_database(request: web.Request) -> web.Response:
            open(tmp_path / "nowhere" / "file")  # noqa: SIM115 - an OSError that is not the database's
            return json_response({"ok": True})

        app = web.Application(middlewares=[make_error_middleware([])])
        app.router.add_get("/read/{db}", read)
        app.router.add_get("/file", not_the_database)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=GUARD)) as session:
                async def get(path: str) -> tuple[int, dict, float]:
                    async def call() -> tuple[int, dict]:
                        async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                            return resp.status, await resp.json()
                    return await timed(call())

                assert (await get("/read/pg"))[0] == 200  # a pooled connection to stall
                proxy.mode = "blackhole"
                status, body, took = await get("/read/pg")
                assert_unavailable(status, body)
                assert took <= STATEMENT_S + MARGIN, took
                status, body, took = await get("/read/pg")  # a new connection, never answered
                assert_unavailable(status, body)
                assert took <= CONNECT_S + MARGIN, took
                proxy.mode = "refuse"
                assert_unavailable(*(await get("/read/pg"))[:2])
                proxy.mode = "forward"
                assert (await get("/read/pg"))[0] == 200
                # A cut between calls (a server restart) closes the pooled connection: the next call gets a
                # fresh one instead of failing on the dead one.
                proxy.mode = "refuse"
                await asyncio.sleep(0.2)
                proxy.mode = "forward"
                assert (await get("/read/pg"))[0] == 200
                assert_unavailable(*(await get("/read/sqlite"))[:2])
                status, body, _ = await get("/file")
                assert status == 500 and body["error"]["code"] == "INTERNAL", body
        finally:
            await runner.cleanup()
            for engine in engines.values():
                await engine.dispose()
            holder.close()


def test_timeouts_and_os_errors_of_other_origins_are_not_the_database(tmp_path):
    with pytest.raises(TimeoutError) as slow:
        asyncio.run(asyncio.wait_for(asyncio.sleep(1), 0.01))
    with pytest.raises(OSError) as missing:
        open(tmp_path / "nowhere" / "file")  # noqa: SIM115
    bad = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError) as wrong:
        bad.execute("SELECT * FROM no_such_table")
    for exc in (slow.value, missing.value, wrong.value):
        assert not database_unavailable(exc) and unavailable_error(exc) is None, exc
