"""`govnode run --workers N`: one node served by N processes on one port.

The parent forks the workers and does nothing else: each worker binds the port with SO_REUSEPORT, so
the kernel spreads connections over them (one accept queue a worker; a worker that dies takes only its
own queue with it). The parent passes SIGTERM and SIGINT on to every worker, starts a new worker in
place of one that died after it had started serving, and stops them all if one cannot start (a wrong
setting, the database away): that would fail again at once.

/metrics is the whole node's: prometheus-client's multiprocess mode, with its files in a directory of
the parent's that every worker writes and any worker's /metrics reads. Several hosts each serve their
own /metrics; Prometheus adds them up.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

from aiohttp import web

from node.config import Config

# A worker that ends within this long of becoming ready is not started again at once (it would only die
# again): the parent waits this long first.
RESTART_AFTER_S = 1.0


def serve_workers(config: Config, workers: int, make_app: Callable[[Config], web.Application]) -> int:
    """Fork `workers` workers and wait for them; returns the exit code of `govnode run`."""
    metrics = tempfile.mkdtemp(prefix="govnode-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics
    children: dict[int, int] = {}  # pid -> the read end of its pipe, which says "ready"
    stopping = False
    code = 0

    def spawn() -> None:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(ready_r)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os._exit(_worker(config, make_app, ready_w))
        os.close(ready_w)
        children[pid] = ready_r

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for _ in range(workers):
            spawn()
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            ready_r = children.pop(pid, None)
            if ready_r is None:
                continue
            was_ready = _was_ready(ready_r)
            if stopping:
                continue
            exit_code = os.waitstatus_to_exitcode(status)
            if not was_ready:
                print(f"govnode: run: a worker could not start (exit code {exit_code}); stopping the others",
                      file=sys.stderr, flush=True)
                code = 1
                stop(signal.SIGTERM, None)
                continue
            print(f"govnode: run: worker {pid} ended (exit code {exit_code}); starting another", file=sys.stderr,
                  flush=True)
            time.sleep(RESTART_AFTER_S)
            if not stopping:
                spawn()
    finally:
        shutil.rmtree(metrics, ignore_errors=True)
    return code


def _was_ready(ready_r: int) -> bool:
    try:
        return os.read(ready_r, 1) == b"1"
    except OSError:
        return False
    finally:
        os.close(ready_r)


def _worker(config: Config, make_app: Callable[[Config], web.Application], ready_w: int) -> int:
    """Serve until SIGTERM; returns the worker's exit code."""
    from prometheus_client import values

    # The metrics' values live in this process's files of the parent's directory (the parent set it).
    values.ValueClass = values.get_value_class()
    try:
        asyncio.run(_serve(config, make_app, ready_w))
    except (web.GracefulExit, KeyboardInterrupt):
        return 0
    except BaseException:  # noqa: BLE001 - the parent reports the exit code; the log has the trace
        traceback.print_exc()
        return 1
    return 0


async def _serve(config: Config, make_app: Callable[[Config], web.Application], ready_w: int) -> None:
    from node import tls

    runner = web.AppRunner(make_app(config), access_log=None, handle_signals=True, shutdown_timeout=10)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=tls.server_context(config), reuse_port=True)
        await site.start()
        os.write(ready_w, b"1")
        os.close(ready_w)
        await asyncio.Event().wait()  # until SIGTERM (GracefulExit)
    finally:
        await runner.cleanup()
