"""After `upgrade`, the database schema is exactly `node.db.metadata` (on SQLite and on PostgreSQL).

Alembic's autogenerate comparison is the oracle: any table, column, type, nullability, index or
unique constraint that a migration and its SQLAlchemy Table disagree on shows up as a difference.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from node import db
from node.config import DatabaseConfig
from support import PG_URL, drop_pg_schema, pg_schema

# Every capability's store module declares its tables on node.db.metadata when imported: these, and
# any other `node/<capability>/store.py` (data, federation, what later issues add), found on disk.
REQUIRED = {"node.accounts.store", "node.audit.store", "node.catalog.store"}


def _load_stores() -> list[str]:
    import node

    found = {f"node.{m.name}.store" for m in pkgutil.iter_modules(node.__path__)
             if m.ispkg and (Path(node.__path__[0]) / m.name / "store.py").is_file()}
    loaded = []
    for name in sorted(REQUIRED | found):
        importlib.import_module(name)
        loaded.append(name)
    return loaded


def _differences(sync_conn: sa.Connection) -> list:
    ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True, "compare_server_default": False})
    return compare_metadata(ctx, db.metadata)


def _alembic_head(sync_conn: sa.Connection) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


@pytest.fixture
async def engine(tmp_path, backend):
    if backend == "sqlite":
        cfg = DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    else:
        cfg = DatabaseConfig(url=PG_URL, schema=pg_schema())
    eng = db.make_engine(cfg)
    try:
        yield eng, cfg.schema_
    finally:
        await eng.dispose()
        if cfg.schema_:
            await drop_pg_schema(cfg.schema_)


async def test_upgrade_matches_metadata(engine):
    eng, schema = engine
    loaded = _load_stores()
    assert REQUIRED <= set(loaded)
    assert "node.data.store" in loaded  # discovery works (the data capability has its tables)
    await db.upgrade(eng, schema)
    async with eng.connect() as conn:
        diffs = await conn.run_sync(_differences)
        head = await conn.run_sync(_alembic_head)
        tables = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    assert diffs == [], f"migrations and node.db.metadata disagree: {diffs}"
    # The comparison saw real tables, not an empty database against an empty metadata.
    assert {"counters", "departments", "tokens", "audit_log", "catalog_entries"} <= tables
    assert set(db.metadata.tables) <= tables
    assert head is not None


async def test_upgrade_is_idempotent_and_keeps_data(engine):
    """A second upgrade (every node start runs one) changes nothing and loses nothing."""
    eng, schema = engine
    _load_stores()
    await db.upgrade(eng, schema)
    async with db.write_tx(eng) as conn:
        await db.next_counter(conn, "audit", 5)
    await db.upgrade(eng, schema)
    async with eng.connect() as conn:
        assert await db.read_counter(conn, "audit") == 5
        assert await conn.run_sync(_differences) == []


def _described(sync_conn: sa.Connection) -> dict:
    """Everything a schema holds that a node could tell apart: tables, columns with their types, defaults
    and nullability, indexes, unique and foreign keys, sequences, the counters' rows and the revision."""
    insp = sa.inspect(sync_conn)
    sequences = sorted(insp.get_sequence_names()) if sync_conn.dialect.name == "postgresql" else []
    out: dict = {"revision": _alembic_head(sync_conn), "sequences": sequences,
                 "counters": sorted(tuple(r) for r in sync_conn.execute(sa.text("SELECT name, value FROM counters")))}
    for table in sorted(insp.get_table_names()):
        out[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in insp.get_columns(table)],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table)),
            "unique": sorted((u["name"] or "", tuple(u["column_names"])) for u in insp.get_unique_constraints(table)),
            "foreign": sorted((tuple(f["constrained_columns"]), f["referred_table"]) for f in insp.get_foreign_keys(table)),
        }
    return out


async def test_the_suites_ready_made_databases_are_what_the_migrations_make(tmp_path, backend):
    """tests/support.py gives most test nodes a database made once by the migrations and then copied (SQLite) or
    replayed from the statements they sent (PostgreSQL): it must be the very schema the migrations make."""
    from support import init_home

    configs = [init_home(tmp_path / f"n{i}", "370321", "桓台县", backend=backend, migrated=i > 0) for i in range(3)]
    engines = [db.make_engine(c.database) for c in configs]
    try:
        await db.upgrade(engines[0], configs[0].database.schema_)  # the migrations, as a new node runs them
        described = []
        for eng in (engines[0], engines[2]):  # the third: a copy or a replay, whichever the second was
            async with eng.connect() as conn:
                described.append(await conn.run_sync(_described))
        assert described[0]["revision"] is not None and "audit_log" in described[0]
        assert described[1] == described[0]
        assert await db.at_head(engines[2])  # and a node finds nothing left to do
    finally:
        for eng in engines:
            await eng.dispose()
        for c in configs:
            if c.database.schema_:
                await drop_pg_schema(c.database.schema_)
