"""The `govnode` command (SPEC §14). Commands that make a token print it as the last line of stdout.

Each module that contributes commands has a `register(sub, home)` that adds its parsers with `command()`,
which names the function that carries the command out; joining the table is one more entry in
COMMAND_MODULES."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import DBAPIError

from node.config import DEFAULT_HOME, ConfigError
from node.errors import ApiError
from node.homelock import HomeBusy

Handler = Callable[[argparse.Namespace], Awaitable[int] | int]

# Modules whose `register(sub, home)` adds their commands, in the order `govnode --help` lists them.
COMMAND_MODULES = ("node.commands", "node.accounts.commands", "node.federation.commands", "node.demo",
                   "node.backup")


def command(sub: Any, name: str, handler: Handler, **kw: Any) -> argparse.ArgumentParser:
    """Add the command `name` to `sub` (a subparsers action), carried out by `handler(args)`."""
    p = sub.add_parser(name, **kw)
    p.set_defaults(handler=handler, command_name=p.prog.removeprefix("govnode "))
    return p


def _home_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--dir", default=os.environ.get("GOVNODE_HOME", DEFAULT_HOME),
                   help="the node's home: config, keys, SQLite file (default ./govnode-data)")
    return p


def build_parser() -> argparse.ArgumentParser:
    home = _home_parent()
    parser = argparse.ArgumentParser(prog="govnode", description="govnode: a node of a 政务信息资源共享交换平台 federation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, home)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = args.command_name
    try:
        result = args.handler(args)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
