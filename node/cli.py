"""The `govnode` command (SPEC §14). Commands that make a token print it as the last line of stdout."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import DBAPIError

from node.config import DEFAULT_HOME, ConfigError
from node.errors import ApiError
from node.homelock import HomeBusy

Command = Callable[[argparse.Namespace], Awaitable[int] | int]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def deco(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return deco


def _home_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--dir", default=os.environ.get("GOVNODE_HOME", DEFAULT_HOME),
                   help="the node's home: config, keys, SQLite file (default ./govnode-data)")
    return p


def build_parser() -> argparse.ArgumentParser:
    home = _home_parent()
    parser = argparse.ArgumentParser(prog="govnode", description="govnode: a node of a 政务信息资源共享交换平台 federation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", parents=[home], help="create a node home: config and signing key")
    p.add_argument("--node", required=True, help="6-digit GB/T 2260 code of the level this node serves")
    p.add_argument("--name", required=True, help="the node's name, e.g. 桓台县")
    p.add_argument("--parent-url", help="the parent node's URL (omit for the root)")
    p.add_argument("--listen", default="127.0.0.1:8300", help="HOST:PORT to serve on")
    p.add_argument("--endpoint", help="URL other nodes reach this node at (default from --listen)")
    p.add_argument("--database", help="SQLAlchemy URL (default: SQLite file in the home)")

    p = sub.add_parser("run", parents=[home], help="serve until SIGINT/SIGTERM")
    p.add_argument("--workers", type=int, default=1, help="processes serving the node on one port (PostgreSQL only)")

    dept = sub.add_parser("dept", help="department accounts").add_subparsers(dest="dept_command", required=True)
    p = dept.add_parser("add", parents=[home], help="make a department account and print its token")
    p.add_argument("code")
    p.add_argument("--name", required=True)
    p.add_argument("--role", default="dept", choices=("dept", "operator", "auditor"))
    p = dept.add_parser("token", parents=[home], help="print a new token for an existing department")
    p.add_argument("code")
    p = dept.add_parser("revoke", parents=[home], help="revoke every token of a department")
    p.add_argument("code")
    dept.add_parser("list", parents=[home], help="list departments")

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="audit_command", required=True)
    audit.add_parser("verify", parents=[home], help="check the audit hash chain; exit 1 at the first broken record")

    p = sub.add_parser("demo", help="a whole sample federation on loopback (province, city, two counties)")
    p.add_argument("--dir", default="./govnode-demo", help="where the demo nodes keep their homes")
    p.add_argument("--base-port", type=int, default=8300, help="the province listens here, the others next")

    for extend in _extensions():
        extend(sub, home)
    return parser


def _extensions() -> list[Callable[[Any, argparse.ArgumentParser], None]]:
    """Commands contributed by other parts of the node (federation, demo)."""
    from node.federation.commands import add_parsers as federation

    return [federation]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = args.command
    for attr in ("dept_command", "audit_command", "keys_command"):
        if getattr(args, attr, None):
            name = f"{name} {getattr(args, attr)}"
    try:
        result = _COMMANDS[name](args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except ConfigError as exc:
        print(f"govnode: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"govnode: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except HomeBusy as exc:
        print(f"govnode: {name}: {exc}", file=sys.stderr)
        return 1
    except (OSError, DBAPIError) as exc:
        # The database or the listening address cannot be used: one line, no traceback, no SQL.
        reason = getattr(exc, "orig", None) or exc
        print(f"govnode: {name}: {type(reason).__name__}: {str(reason).splitlines()[0] if str(reason) else ''}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# Commands -----------------------------------------------------------------------------------------

from node import commands  # noqa: E402,F401  (registers the commands)
from node import demo as _demo  # noqa: E402,F401
from node.federation import commands as _federation_commands  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    # Run through the imported module `node.cli` (where `node.commands` registers the commands), not
    # through this `__main__` copy of it, whose command table stays empty.
    from node.cli import main as _main

    sys.exit(_main())
