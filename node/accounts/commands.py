"""People's commands (SPEC §14): `govnode user add | list | disable | reset`."""

from __future__ import annotations

import argparse
from datetime import datetime

from node.accounts.people import CST, PeopleService
from node.accounts.service import ROLES
from node.audit.console import console_call
from node.cli import command
from node.config import load_config
from node.fields import printable


async def _people(args: argparse.Namespace) -> tuple[PeopleService, object]:
    from node.commands import open_database  # beside a running node: no schema upgrade under its feet

    config = load_config(args.dir)
    engine = await open_database(config)
    return PeopleService(engine, config.node.id, config.home), engine


def _audited(people: PeopleService, args: argparse.Namespace, action: str, **details: str | None):  # noqa: ANN202
    return console_call(people.engine, people.node_id, args, action, username=args.username, **details)


async def user_add(args: argparse.Namespace) -> int:
    people, engine = await _people(args)
    try:
        async with _audited(people, args, "console.user.add", dept=args.dept, role=args.role):
            password = await people.add(args.username, args.dept, args.role, args.name)
    finally:
        await engine.dispose()
    print(f"user {args.username} added to department {args.dept}; they sign in at the portal (/portal/) with "
          "this initial password and must change it at the first sign-in (shown once):")
    print(password)
    return 0


async def user_list(args: argparse.Namespace) -> int:
    people, engine = await _people(args)
    try:
        for u in await people.list():
            last = (datetime.fromtimestamp(u["last_login_at"] / 1000, CST).strftime("%Y-%m-%d %H:%M")
                    if u["last_login_at"] else "never")
            print(f"{u['username']}\t{u['dept']}\t{u['role']}\t{u['status']}\tlast sign-in {last}\t"
                  f"{printable(u['name'] or '')}")
    finally:
        await engine.dispose()
    return 0


async def user_disable(args: argparse.Namespace) -> int:
    people, engine = await _people(args)
    try:
        async with _audited(people, args, "console.user.disable"):
            await people.disable(args.username)
    finally:
        await engine.dispose()
    print(f"user {args.username} disabled; their sessions are ended")
    return 0


async def user_reset(args: argparse.Namespace) -> int:
    people, engine = await _people(args)
    try:
        async with _audited(people, args, "console.user.reset"):
            password = await people.reset(args.username)
    finally:
        await engine.dispose()
    print(f"user {args.username} has a new initial password, to be changed at the next sign-in (shown once):")
    print(password)
    return 0


def register(sub: argparse._SubParsersAction, home: argparse.ArgumentParser) -> None:
    user = sub.add_parser("user", help="people's portal accounts").add_subparsers(dest="user_command", required=True)
    p = command(user, "add", user_add, parents=[home],
                help="a person's portal account in a department; prints the initial password")
    p.add_argument("username", help="2-32 characters: a lowercase letter, then lowercase letters, digits, . _ -")
    p.add_argument("--dept", required=True, help="the department's code at this node")
    p.add_argument("--role", choices=ROLES, help="dept, operator or auditor (default: the department's role)")
    p.add_argument("--name", help="the person's name as the portal shows it, e.g. 张三")
    command(user, "list", user_list, parents=[home], help="list people and their status")
    p = command(user, "disable", user_disable, parents=[home], help="disable a person's account and end their sessions")
    p.add_argument("username")
    p = command(user, "reset", user_reset, parents=[home],
                help="a new initial password for a person (also unlocks); prints it")
    p.add_argument("username")
