"""The node's own commands: init, run, dept, audit verify."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from aiohttp import web

from federation.signing import SigningKey, generate_signing_key, read_signing_key_file, verify_key_b64, write_signing_key_file
from node.accounts.service import ROLES, AccountService
from node.audit.console import console_call
from node.audit.service import AuditLog
from node.cli import command
from node.config import CONFIG_FILE, Config, ConfigError, load_config, write_config
from node.db import at_head, make_engine, upgrade
from node.homelock import HomeBusy, hold_for_serving, serving
from node.fields import printable
from node.logs import setup_logging
from node import tls


def create_home(home: Path, node: str, name: str, listen: str, parent_url: str | None = None,
                endpoint: str | None = None, database: str | None = None) -> tuple[Config, SigningKey]:
    """Create a node home: the config (validated before anything is kept) and a new signing key."""
    if (home / CONFIG_FILE).exists():
        raise ConfigError(f"{home} already holds a node ({CONFIG_FILE} exists); choose another --dir")
    doc: dict = {"node": {"id": node, "name": name}, "listen": listen}
    if parent_url:
        doc["node"]["parent_url"] = parent_url
    if endpoint:
        doc["endpoint"] = endpoint
    if database:
        doc["database"] = {"url": database}
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    write_config(home, doc)
    try:
        config = load_config(home)
    except ConfigError:
        (home / CONFIG_FILE).unlink()
        raise
    key = generate_signing_key("1")
    write_signing_key_file(config.key_path, key)
    return config, key


def init(args: argparse.Namespace) -> int:
    config, key = create_home(Path(args.dir), args.node, args.name, args.listen, args.parent_url,
                              args.endpoint, args.database)
    print(f"initialised node {config.node.id} ({config.node.name}) in {args.dir}")
    if not config.node.parent_url:
        print("this node is the root of its federation; its trust anchor (give it to every node):")
        print(f"anchor: {config.node.id} {key.key_id} {verify_key_b64(key)}")
    else:
        print(f"next: ask the operator of {config.node.parent_url} for a token (govnode invite "
              f"{config.node.id}), then run govnode join {config.node.parent_url} TOKEN")
    return 0


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.dir)


def run(args: argparse.Namespace) -> int:
    from node.app import init_app

    config = _config(args)
    try:
        read_signing_key_file(config.key_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the signing key cannot be read: {exc}") from None
    workers = getattr(args, "workers", 1)
    if workers < 1:
        raise ConfigError("--workers must be 1 or more")
    if workers > 1 and config.database.is_sqlite:
        raise ConfigError("--workers needs PostgreSQL: an SQLite node is served by one process "
                          "(set database.url to a postgresql+asyncpg:// URL)")
    tls.check_secret_files(config)
    tls.check_serving(config)
    lock = hold_for_serving(config.home, config.database.is_sqlite)  # released when this process exits
    try:
        setup_logging(config.log_level, config.node.id)
        print(f"govnode {config.node.id} ({config.node.name}) serving on {config.endpoint}"
              + (f" with {workers} workers" if workers > 1 else ""), flush=True)
        if workers > 1:
            from node.cluster.serve import serve_workers

            return serve_workers(config, workers, init_app)
        web.run_app(init_app(config), host=config.host, port=config.port, print=None, access_log=None,
                    handle_signals=True, shutdown_timeout=10, ssl_context=tls.server_context(config))
    finally:
        lock.release()
    return 0


async def open_database(config: Config, home_held: bool = False):  # noqa: ANN201
    """The engine of a command that uses the node's database. The schema is created or upgraded first,
    unless a node serves the home: migrating under a running node's feet would change tables its code
    does not know, so beside a running node the schema must already be the newest (or the command is
    refused). Writes of rows (a department, an invite) are safe beside it: the database orders them.
    `home_held`: the command holds the home's lock itself, so no node serves it."""
    engine = make_engine(config.database, config.sqlite_synchronous)
    try:
        if home_held or not serving(config.home):
            await upgrade(engine, config.database.schema_)
        elif not await at_head(engine):
            raise HomeBusy(f"a node is running on {config.home} with an older database schema; stop it, then "
                           "run this command (it upgrades the schema) or start the node again")
    except BaseException:
        await engine.dispose()
        raise
    return engine


async def _accounts(config: Config) -> tuple[AccountService, object]:
    engine = await open_database(config)
    return AccountService(engine, config.node.id), engine


async def dept_add(args: argparse.Namespace) -> int:
    config = _config(args)
    accounts, engine = await _accounts(config)
    try:
        async with console_call(engine, config.node.id, args, "console.dept.add", dept=args.code, role=args.role):
            token = await accounts.add_department(args.code, args.name, args.role)
    finally:
        await engine.dispose()
    print(f"department {args.code} ({args.name}) added with role {args.role}; its token (shown once):")
    print(token)
    return 0


async def dept_token(args: argparse.Namespace) -> int:
    config = _config(args)
    accounts, engine = await _accounts(config)
    try:
        async with console_call(engine, config.node.id, args, "console.dept.token", dept=args.code):
            token = await accounts.issue_token(args.code)
    finally:
        await engine.dispose()
    print(f"new token for department {args.code} (shown once):")
    print(token)
    return 0


async def dept_revoke(args: argparse.Namespace) -> int:
    config = _config(args)
    accounts, engine = await _accounts(config)
    try:
        async with console_call(engine, config.node.id, args, "console.dept.revoke", dept=args.code):
            n = await accounts.revoke(args.code)
    finally:
        await engine.dispose()
    from node.accounts.people import sessions_changed
    sessions_changed(_config(args).home)  # its people's portal sessions end at once in the running node
    print(f"department {args.code} disabled; {n} token(s) revoked")
    return 0


async def dept_list(args: argparse.Namespace) -> int:
    accounts, engine = await _accounts(_config(args))
    try:
        for d in await accounts.list():
            # Names were checked when they were added; rows stored before that check are escaped all the same.
            print(f"{d['code']}\t{d['role']}\t{'disabled' if d['disabled'] else 'active'}\t{printable(d['name'])}")
    finally:
        await engine.dispose()
    return 0


async def audit_verify(args: argparse.Namespace) -> int:
    config = _config(args)
    engine = await open_database(config)
    try:
        log = AuditLog(engine)
        broken = await log.verify()
        waiting = await log.pending_intents()
    finally:
        await engine.dispose()
    if broken is not None:
        print(f"audit chain broken at record {broken.seq}: {broken.reason}", file=sys.stderr)
        return 1
    print("audit chain intact")
    if waiting:
        # Not a break: each is a stored write whose intent committed with it; the node chains it at start.
        print(f"{waiting} stored write(s) wait for their record in the chain (the node adds them when it starts "
              "or within a minute)")
    return 0


def register(sub: argparse._SubParsersAction, home: argparse.ArgumentParser) -> None:
    p = command(sub, "init", init, parents=[home], help="create a node home: config and signing key")
    p.add_argument("--node", required=True, help="6-digit GB/T 2260 code of the level this node serves")
    p.add_argument("--name", required=True, help="the node's name, e.g. 桓台县")
    p.add_argument("--parent-url", help="the parent node's URL (omit for the root)")
    p.add_argument("--listen", default="127.0.0.1:8300", help="HOST:PORT to serve on")
    p.add_argument("--endpoint", help="URL other nodes reach this node at (default from --listen)")
    p.add_argument("--database", help="SQLAlchemy URL (default: SQLite file in the home)")

    p = command(sub, "run", run, parents=[home], help="serve until SIGINT/SIGTERM")
    p.add_argument("--workers", type=int, default=1, help="processes serving the node on one port (PostgreSQL only)")

    dept = sub.add_parser("dept", help="department accounts").add_subparsers(dest="dept_command", required=True)
    p = command(dept, "add", dept_add, parents=[home], help="make a department account and print its token")
    p.add_argument("code")
    p.add_argument("--name", required=True)
    p.add_argument("--role", default="dept", choices=ROLES)
    p = command(dept, "token", dept_token, parents=[home], help="print a new token for an existing department")
    p.add_argument("code")
    p = command(dept, "revoke", dept_revoke, parents=[home], help="revoke every token of a department")
    p.add_argument("code")
    command(dept, "list", dept_list, parents=[home], help="list departments")

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="audit_command", required=True)
    command(audit, "verify", audit_verify, parents=[home],
            help="check the audit hash chain; exit 1 at the first broken record")
