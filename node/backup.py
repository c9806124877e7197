"""`govnode backup DEST` and `govnode restore SRC`: a node's home and database, copied consistently.

A backup is a folder: `backup.json` (what it holds), the home's files as they were (config, signing keys and
their rotated backups, the root's anchor key, the sealed secrets' key, TLS files kept in the home) and, for an
SQLite node, `govnode.db`, copied through SQLite's online backup API. That copy is one read transaction:
a snapshot of one instant, taken beside a running node (WAL lets the node keep writing meanwhile), so a
record and its audit record are in it together or not at all. A PostgreSQL node's database is backed up
with `pg_dump` (the operator guide gives the command); `backup` then copies the home's files and says so.

`restore` puts a backup in a home no node runs on (it holds the home's lock while it works) and that holds
no node yet, then checks the restored database (SQLite's integrity check, the audit chain) before it says
the home is ready.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

from node.cli import command
from node.config import CONFIG_FILE, Config, ConfigError, load_config
from node.homelock import LOCK_FILE, refuse_if_serving

MANIFEST = "backup.json"
DB_COPY = "govnode.db"
FORMAT = 1


def sqlite_path(config: Config) -> Path | None:
    """The SQLite file of a node, or None on PostgreSQL."""
    if not config.database.is_sqlite:
        return None
    return Path(config.database.url.split(":///", 1)[1])


def _home_files(config: Config) -> list[Path]:
    """Files of the home to keep: everything but the lock, the database and its WAL companions, and logs
    (a newer feature's file in the home is kept without this list knowing of it)."""
    db = sqlite_path(config)
    skip = {LOCK_FILE}
    if db is not None and db.parent.resolve() == Path(config.home).resolve():
        skip |= {db.name, db.name + "-wal", db.name + "-shm", db.name + "-journal"}
    return sorted(p for p in Path(config.home).iterdir()
                  if p.is_file() and p.name not in skip and not p.name.endswith(".log"))


def _outside_home(config: Config) -> list[Path]:
    """TLS files the config names outside the home: the backup cannot vouch for them, the operator must."""
    if config.tls is None:
        return []
    home = Path(config.home).resolve()
    found = [config.tls.cert_path(config.home), config.tls.key_path(config.home), config.tls.ca_path(config.home)]
    return [p for p in found if p is not None and home not in p.resolve().parents]


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def backup_home(config: Config, dest: Path) -> dict:
    """Copy the node into the new folder `dest`; returns the manifest written there."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty; a backup goes into a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o700)  # it holds the signing key
    files = []
    for p in _home_files(config):
        shutil.copy2(p, dest / p.name)  # modes kept: secret files stay 0600
        files.append(p.name)
    db = sqlite_path(config)
    manifest: dict = {"format": FORMAT, "node": config.node.id, "name": config.node.name,
                      "made_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "files": files, "database": None}
    if db is not None:
        target = dest / DB_COPY
        src = sqlite3.connect(db, timeout=30)  # the busy timeout: a writer's commit in progress is waited for
        try:
            out = sqlite3.connect(target)
            try:
                src.backup(out)  # all pages in one step: one read transaction, one instant of the node
            finally:
                out.close()
        finally:
            src.close()
        os.chmod(target, 0o600)
        check = _integrity(target)
        if check != "ok":
            raise ConfigError(f"the copied database fails SQLite's integrity check ({check}); the backup is not usable")
        manifest["database"] = DB_COPY
    else:
        manifest["database_note"] = "PostgreSQL: back up the schema with pg_dump (operator guide, Backups)"
    (dest / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    return manifest


def read_manifest(src: Path) -> dict:
    path = Path(src) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{src} is not a govnode backup ({MANIFEST} cannot be read: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), list):
        raise ConfigError(f"{path} is not a backup this govnode can restore (format {manifest.get('format')!r})")
    for name in manifest["files"] + [manifest.get("database") or CONFIG_FILE]:
        if not isinstance(name, str) or "/" in name or name.startswith(".") or not (Path(src) / name).is_file():
            raise ConfigError(f"the backup in {src} lacks {name!r}, which its {MANIFEST} lists")
    return manifest


def restore_home(src: Path, home: Path) -> tuple[Config, dict]:
    """Put the backup `src` into `home` (new or empty of nodes); the caller holds the home's lock."""
    src, home = Path(src), Path(home)
    manifest = read_manifest(src)
    if (home / CONFIG_FILE).exists():
        raise ConfigError(f"{home} already holds a node ({CONFIG_FILE} exists); restore into an empty home "
                          "(move the old one aside first)")
    copied: list[Path] = []
    try:
        for name in manifest["files"]:
            shutil.copy2(src / name, home / name)
            copied.append(home / name)
        config = load_config(home)
        if manifest.get("database"):
            _restore_database(src / manifest["database"], sqlite_path(config), copied)
    except BaseException:
        for p in copied:  # a refused or failed restore leaves the home as it found it
            p.unlink(missing_ok=True)
        raise
    return config, manifest


def _restore_database(copy: Path, db: Path | None, copied: list[Path]) -> None:
    if db is None:
        raise ConfigError("the backup holds an SQLite database but the restored config names PostgreSQL")
    if db.exists():
        raise ConfigError(f"{db} exists; restore will not overwrite a database (move it aside first)")
    # A WAL or shared-memory file left beside the target belongs to another database: replayed onto the
    # restored one it would corrupt it, so they go first.
    for leftover in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), db.with_name(db.name + "-journal")):
        leftover.unlink(missing_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    part = db.with_name(db.name + ".restoring")
    copied.append(part)
    shutil.copyfile(copy, part)
    os.chmod(part, 0o600)
    with open(part, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(part, db)  # the database appears whole or not at all
    copied.append(db)
    check = _integrity(db)
    if check != "ok":
        raise ConfigError(f"the restored database fails SQLite's integrity check ({check})")


# After a restore the node's counters are the backup's, but before it was lost the node went on counting:
# its neighbours hold feed cursors past the backup's heads (they would skip the restored node's next changes,
# numbered again from the backup's heads), and receivers hold its own documents with versions (seq) past the
# backup's (they would take its next documents for old ones). So every feed counter (`*_change`) and every
# counter of the node's own documents (`*_seq`) moves on by far more than a node counts between a backup and
# its loss; the audit chain's counters stay, since the chain is verified as it was backed up. A resource's
# serial cannot move so far (six digits of its code): an entry registered after the backup may see its code
# given again, and the newer document replaces it everywhere (operator guide, Backups).
COUNTER_GAP = 2**32


async def advance_counters(engine: Any) -> int:
    """Move the restored node's feed and document counters on (see above); how many counters moved."""
    import sqlalchemy as sa

    from node.db import counters, write_tx

    async with write_tx(engine) as conn:
        moved = await conn.execute(sa.update(counters).where(sa.or_(
            counters.c.name.like("%\\_change", escape="\\"), counters.c.name.like("%\\_seq", escape="\\")))
            .values(value=counters.c.value + COUNTER_GAP))
    return int(moved.rowcount)


async def _settle(config: Config, verify: bool) -> tuple[object, int, int]:
    """The restored database's counters moved on, then (SQLite) its audit chain walked: (the chain's first
    break or None, audit intents waiting, counters moved)."""
    from node.audit.service import AuditLog
    from node.commands import open_database

    engine = await open_database(config, home_held=True)
    try:
        moved = await advance_counters(engine)
        if not verify:
            return None, 0, moved
        log = AuditLog(engine)
        return await log.verify(), await log.pending_intents(), moved
    finally:
        await engine.dispose()


def backup(args: argparse.Namespace) -> int:
    config = load_config(args.dir)
    manifest = backup_home(config, Path(args.dest))
    print(f"backed up node {manifest['node']} ({manifest['name']}) to {args.dest}: "
          f"{', '.join(manifest['files'])}" + (f", {manifest['database']}" if manifest["database"] else ""))
    for p in _outside_home(config):
        print(f"not in the backup (outside the home): {p}; keep it with the backup", file=sys.stderr)
    if not config.database.is_sqlite:
        schema = config.database.schema_ or "public"
        print(f"the database is PostgreSQL: back it up with pg_dump, e.g. pg_dump --format=custom "
              f"--schema={schema} --file=govnode-{config.node.id}.dump <database>")
    return 0


async def restore(args: argparse.Namespace) -> int:
    home = Path(args.dir)
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    lock = refuse_if_serving(home, "restore")  # a running node would keep serving its old database
    try:
        config, manifest = restore_home(Path(args.src), home)
        print(f"restored node {manifest['node']} ({manifest['name']}) as backed up at {manifest['made_at']} into {home}")
        if not manifest.get("database"):
            # The schema must have been restored with pg_restore first (operator guide, Backups).
            _, _, moved = await _settle(config, verify=False)
            print(f"the database is PostgreSQL: {moved} feed and document counters moved past the backup's; "
                  "run `govnode audit verify`")
            return 0
        broken, waiting, moved = await _settle(config, verify=True)
        print(f"{moved} feed and document counters moved past the backup's (neighbours take the node's next "
              "changes for new)")
    finally:
        lock.release()
    if broken is not None:
        print(f"audit chain broken at record {broken.seq}: {broken.reason}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    print("audit chain intact" + (f"; {waiting} stored write(s) get their record when the node starts" if waiting else ""))
    print("start the node (govnode run): it pulls from its neighbours what changed since the backup")
    return 0


def register(sub: argparse._SubParsersAction, home: argparse.ArgumentParser) -> None:
    p = command(sub, "backup", backup, parents=[home],
                help="copy the node (database, keys, config) into a new folder; works while the node runs")
    p.add_argument("dest", help="a new (or empty) folder for the backup")
    p = command(sub, "restore", restore, parents=[home],
                help="put a backup into an empty home (no node running on it), then check it")
    p.add_argument("src", help="a folder made by govnode backup")
