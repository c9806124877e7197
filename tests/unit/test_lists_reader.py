"""A one-subject list check read on the event loop (node/lists/store.py, LoopReader) finds exactly what the
engine's statement finds: entries in force on the day, not removed, for that subject only; and steps aside
when SQLite is busy instead of holding the loop."""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa

from node.config import DatabaseConfig
from node.db import make_engine
from node.lists import store

DAY = "2026-12-03"
ENTRIES = [  # (id, digest, deleted, valid_from, valid_until)
    ("e1", "d-a", False, "2026-01-01", None),          # in force, open-ended
    ("e2", "d-a", False, "2026-01-01", "2026-12-03"),  # last day today
    ("e3", "d-a", False, "2026-01-01", "2026-12-02"),  # ended yesterday
    ("e4", "d-a", False, "2026-12-04", None),          # starts tomorrow
    ("e5", "d-a", True, "2026-01-01", None),           # removed (信用修复)
    ("e6", "d-b", False, "2026-12-03", None),          # another subject, from today
]


async def test_the_loop_read_and_the_engine_read_agree(tmp_path):
    engine = make_engine(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"), "NORMAL")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: store.list_entries.create(c))
            await conn.execute(sa.insert(store.list_entries), [
                {"id": i, "list": "L1", "node": "370321", "seq": n, "digest": d, "deleted": dl, "valid_from": vf,
                 "valid_until": vu, "updated_at": 0, "doc": f'{{"id": "{i}"}}', "change_id": n}
                for n, (i, d, dl, vf, vu) in enumerate(ENTRIES, 1)])
        reader = store.LoopReader.for_engine(engine)
        assert reader is not None
        for digest, expected in (("d-a", {"e1", "e2"}), ("d-b", {"e6"}), ("d-none", set())):
            async with engine.connect() as conn:
                by_engine = sorted((r.digest, r.doc) for r in await store.matching(conn, [digest], DAY))
            by_loop = sorted(reader.matching_one(digest, DAY))
            assert by_loop == by_engine
            assert {doc.split('"')[3] for _, doc in by_loop} == expected

        reader.close()
    finally:
        await engine.dispose()


def test_the_loop_read_steps_aside_when_sqlite_is_busy(tmp_path):
    """A lock the reader would have to wait for (here a rollback-journal database under an exclusive writer):
    it answers None at once, and the check reads through the engine, off the loop."""
    path = tmp_path / "busy.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("CREATE TABLE list_entries (digest TEXT, doc TEXT, deleted INTEGER, valid_from TEXT, valid_until TEXT)")
    setup.execute("INSERT INTO list_entries VALUES ('d-a', '{}', 0, '2026-01-01', NULL)")
    setup.close()
    reader = store.LoopReader(str(path))
    assert reader.matching_one("d-a", DAY) == [("d-a", "{}")]
    reader.close()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        assert reader.matching_one("d-a", DAY) is None
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        reader.close()
