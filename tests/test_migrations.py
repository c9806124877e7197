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
