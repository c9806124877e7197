"""The audit record of a command run at the node's host (`govnode dept …`, `govnode user …`): an account
made, disabled or given a new credential at the console is recorded as one made in the portal is
(全过程留痕), its write carrying the call's audit intent as every write does."""

from __future__ import annotations

import argparse
import getpass
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine

from node.audit.service import AuditLog, Call
from node.db import CALL_WRITES
from node.errors import ApiError
from node.ids import new_id

# Who a console record names: whoever runs commands on the node's host runs its platform.
CONSOLE = "console"


def _os_user() -> str | None:
    try:
        return getpass.getuser()[:32]
    except (KeyError, OSError):  # no name for this uid (a container's bare uid)
        return None


@asynccontextmanager
async def console_call(engine: AsyncEngine, node_id: str, args: argparse.Namespace, action: str,
                       **details: str | None) -> AsyncIterator[Call]:
    """Run the body as one audited call (`action`, with `details` such as the account's code) of the
    command in `args`; its record is stored once it ends, refused or not. Beside a running node the record
    joins the same chain: on SQLite the file's write lock orders the two writers, on PostgreSQL the command
    appends to a segment of its own."""
    log = AuditLog(engine, batch_ms=0)
    await log.start()
    call = Call({"request_id": new_id(), "actor": f"{node_id}/{CONSOLE}", "user": _os_user(), "role": "operator",
                 "action": action, "method": "CLI", "path": f"govnode {args.command_name}",
                 "details": {k: v for k, v in details.items() if v is not None}})
    token = CALL_WRITES.set(call)
    started = time.perf_counter()
    outcome, status = "ok", 0
    try:
        yield call
    except ApiError as err:
        outcome, status = err.code, err.status
        raise
    except BaseException:
        outcome = "INTERNAL"
        raise
    finally:
        call.open = False
        CALL_WRITES.reset(token)
        try:
            await log.record(**call.fields, outcome=outcome, status=status,
                             latency_ms=round((time.perf_counter() - started) * 1000),
                             call_key=call.key if call.wrote else None)
        finally:
            await log.close()
