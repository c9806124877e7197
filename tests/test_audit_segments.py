"""The audit chain on PostgreSQL: a segment a process, so that the workers of a node do not take turns on one
row to append, while `verify` still names the first record altered, removed or reordered in any segment."""

from __future__ import annotations

import asyncio
import threading

import pytest

from node.audit.service import AuditLog
from node.config import DatabaseConfig
from node.db import make_engine, upgrade
from support import PG_URL, drop_pg_schema, pg_schema


@pytest.fixture
async def pg():
    schema = pg_schema()
    config = DatabaseConfig(url=PG_URL, schema=schema)
    engine = make_engine(config)
    await upgrade(engine, schema)
    try:
        yield config, engine
    finally:
        await engine.dispose()
        await drop_pg_schema(schema)


async def _sql(engine, sql: str, params: dict | None = None):
    import sqlalchemy as sa

    async with engine.begin() as conn:
        result = await conn.execute(sa.text(sql), params or {})
        return result.all() if result.returns_rows else None


@pytest.fixture
async def two_segments(pg):
    """Two logs on one database, as two workers of a node have: 12 records each, appended at once."""
    config, engine = pg
    logs = [AuditLog(engine), AuditLog(engine)]
    for log in logs:
        await log.start()
    try:
        await asyncio.gather(*(log.record(request_id=f"r{i}-{n}", actor="370321/police", action="catalog.read")
                               for n in range(12) for i, log in enumerate(logs)))
        assert await logs[0].verify() is None
        yield engine, logs
    finally:
        for log in logs:
            await log.close()


async def test_each_process_appends_to_its_own_segment(two_segments):
    engine, logs = two_segments
    rows = await _sql(engine, "SELECT segment, segment_seq, seq FROM audit_log ORDER BY seq")
    assert len(rows) == 24 and len({r.seq for r in rows}) == 24
    for log in logs:
        places = [r.segment_seq for r in rows if r.segment == log.segment]
        assert places == list(range(1, 13))  # numbered densely within the segment, in the node's order
    # the one chain's counter, which every append locked, is not touched
    assert (await _sql(engine, "SELECT COALESCE(max(value), 0) FROM counters WHERE name = 'audit'"))[0][0] == 0


async def test_verify_names_a_removed_record_of_a_segment(two_segments):
    engine, logs = two_segments
    (seq,) = (await _sql(engine, "SELECT seq FROM audit_log WHERE segment = :s AND segment_seq = 5",
                         {"s": logs[1].segment}))[0]
    await _sql(engine, "DELETE FROM audit_log WHERE seq = :q", {"q": seq})
    broken = await logs[0].verify()
    assert broken is not None and broken.seq == seq and "missing" in broken.reason


async def test_verify_names_a_removed_last_record_of_a_segment(two_segments):
    engine, logs = two_segments
    (seq,) = (await _sql(engine, "SELECT seq FROM audit_log WHERE segment = :s AND segment_seq = 12",
                         {"s": logs[0].segment}))[0]
    await _sql(engine, "DELETE FROM audit_log WHERE seq = :q", {"q": seq})
    broken = await logs[1].verify()
    assert broken is not None and broken.seq == seq and "missing" in broken.reason


async def test_verify_finds_a_removed_segment_and_a_moved_record(two_segments):
    engine, logs = two_segments
    await _sql(engine, "DELETE FROM audit_log WHERE segment = :s", {"s": logs[1].segment})
    broken = await logs[0].verify()
    assert broken is not None and "missing" in broken.reason and logs[1].segment in broken.reason


async def test_verify_names_the_first_altered_or_reordered_record(two_segments):
    engine, logs = two_segments
    rows = await _sql(engine, "SELECT seq, segment_seq FROM audit_log WHERE segment = :s ORDER BY seq",
                      {"s": logs[0].segment})
    await _sql(engine, "UPDATE audit_log SET actor = 'someone/else' WHERE seq = :q", {"q": rows[8].seq})
    broken = await logs[0].verify()
    assert broken is not None and broken.seq == rows[8].seq and "altered" in broken.reason
    # Two records of the other segment swap places: the earlier of them is named, not the later alteration.
    other = await _sql(engine, "SELECT seq FROM audit_log WHERE segment = :s ORDER BY seq", {"s": logs[1].segment})
    a, b = other[2].seq, other[3].seq
    await _sql(engine, "UPDATE audit_log SET segment_seq = -1 WHERE seq = :a", {"a": a})
    await _sql(engine, "UPDATE audit_log SET segment_seq = 3 WHERE seq = :b", {"b": b})
    await _sql(engine, "UPDATE audit_log SET segment_seq = 4 WHERE seq = :a", {"a": a})
    broken = await logs[0].verify()
    assert broken is not None and broken.seq == min(a, rows[8].seq)


async def test_an_append_does_not_wait_for_another_process_to_commit(pg):
    """While one worker's batch is in its transaction (its append done, its commit not yet: a WAL flush under
    load), another worker's record commits. With one chain it waited on the chain's counter row until the
    first batch committed (here: until the database's statement timeout, and the call was refused)."""
    config, engine = pg
    in_batch, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def hold(conn, items) -> None:  # runs in the first worker's batch after its chain append, before COMMIT
        in_batch.set()
        release.wait(60)

    hold.commit_order = 20

    def first_worker() -> None:
        async def run() -> None:
            own = make_engine(config)  # a process of its own: its own engine and event loop
            log = AuditLog(own)
            await log.start()
            try:
                done = log.enqueue(request_id="slow", actor="370321/police", action="data.push")
                log.journal.enqueue(hold, None)  # the same batch
                await done
            finally:
                await log.close()
                await own.dispose()

        try:
            asyncio.run(run())
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failure.append(exc)

    thread = threading.Thread(target=first_worker)
    thread.start()
    second = AuditLog(engine)
    await second.start()
    try:
        assert await asyncio.to_thread(in_batch.wait, 30)
        await second.record(request_id="quick", actor="370321/civil", action="catalog.read")
        rows = await _sql(engine, "SELECT request_id FROM audit_log")
        assert [r.request_id for r in rows] == ["quick"]  # committed while the first batch is still open
    finally:
        release.set()
        await asyncio.to_thread(thread.join, 60)
        await second.close()
    assert not failure, failure
    rows = await _sql(engine, "SELECT request_id FROM audit_log ORDER BY seq")
    assert sorted(r.request_id for r in rows) == ["quick", "slow"]
    assert await second.verify() is None


async def test_calls_are_counted_in_the_figures_on_postgresql(pg):
    """The figures' running totals move in the journal's commit on PostgreSQL too (a segment's batch once
    skipped them, so a PostgreSQL node's 绩效统计 showed no calls)."""
    _config, engine = pg
    log = AuditLog(engine)
    await log.start()
    try:
        await asyncio.gather(*(log.record(request_id=f"v{n}", actor="370321/11370321MB0000001X", action="sharing.verify",
                                          resource="101001/3703210001", outcome="ok" if n % 4 else "NOT_FOUND",
                                          status=200 if n % 4 else 404, latency_ms=3)
                               for n in range(12)))
        rows = await _sql(engine, "SELECT kind, op, calls, errors, latency_ms FROM figures_daily ORDER BY kind")
        assert [tuple(r) for r in rows] == [("made", "verify", 12, 3, 36), ("served", "verify", 12, 3, 36)]
    finally:
        await log.close()
