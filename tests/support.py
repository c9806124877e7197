"""Test support: real nodes on loopback sockets, on SQLite or on PostgreSQL (a schema per node)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from node.cli import main as cli_main
from node.config import Config, DatabaseConfig, load_config
from node.ids import make_gb32100

# Department codes of the test county: valid 统一社会信用代码 (GB 32100).
POLICE = make_gb32100("11370321MB", 1)
CIVIL = make_gb32100("11370321MB", 2)

PG_URL = os.environ.get("GOVNODE_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_schema() -> str:
    return "gn_test_" + secrets.token_hex(6)


async def drop_pg_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the `govnode` command in-process: (exit code, stdout, stderr).

    Commands run their own event loop (asyncio.run), so inside an async test (a running loop) the
    command runs in a worker thread; the caller's loop waits for it.
    """
    out, err = io.StringIO(), io.StringIO()

    def go() -> int:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                return cli_main(argv)
            except SystemExit as exc:  # argparse refusing the arguments
                return exc.code if isinstance(exc.code, int) else 2

    rc = _off_loop(go)
    return rc, out.getvalue(), err.getvalue()


def _off_loop(fn: Any) -> Any:
    """`fn()`, in a thread of its own when this thread runs an event loop (an async test: its loop waits)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def init_home(home: Path, node: str, name: str, *, port: int | None = None, parent_url: str | None = None,
              backend: str = "sqlite", extra: dict | None = None, migrated: bool = False) -> Config:
    """Run `govnode init` for a node home and, for PostgreSQL, point it at a fresh schema; `migrated`: with
    its database already at the newest schema (`make_migrated`)."""
    port = port or free_port()
    argv = ["init", "--dir", str(home), "--node", node, "--name", name, "--listen", f"127.0.0.1:{port}"]
    if parent_url:
        argv += ["--parent-url", parent_url]
    if backend == "postgresql":
        argv += ["--database", PG_URL]
    rc, out, err = run_cli(argv)
    assert rc == 0, err
    if backend == "postgresql" or extra:
        import yaml

        cfg_path = home / "config.yaml"
        doc = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        if backend == "postgresql":
            doc["database"]["schema"] = pg_schema()
        for k, v in (extra or {}).items():
            doc[k] = v
        cfg_path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    config = load_config(home, env={})
    if migrated:
        make_migrated(config)
    return config


# A new node's database at the newest schema as the migrations make it, without running them for every node
# of the suite: they cost a node's first command ~0.18 s (SQLite) and ~0.36 s (PostgreSQL) of CPU, and the
# suite makes some 500 nodes. The first node of a process on each backend is migrated for real; SQLite nodes
# after it get a copy of that file, PostgreSQL ones the statements the migrations sent, replayed in a schema
# of their own (tests/test_migrations.py holds both against a migrated database). Only the fixtures that make
# nodes in bulk ask for it (`init_home(..., migrated=True)`): the rest start from an empty database, as a new
# deployment does, so that path stays tested.
_made: dict[str, Any] = {}


def _run_in_own_loop(coro_fn: Any) -> Any:
    return _off_loop(lambda: asyncio.run(coro_fn()))


def make_migrated(config: Config) -> None:
    """Give `config`'s (new, empty) database the newest schema."""
    import shutil

    import sqlalchemy as sa

    from node.db import make_engine, upgrade

    db = config.database
    if db.is_sqlite:
        if "sqlite" not in _made:
            import atexit
            import tempfile

            folder = tempfile.mkdtemp(prefix="govnode-test-schema-")
            atexit.register(shutil.rmtree, folder, True)
            template = db.model_copy(update={"url": f"sqlite+aiosqlite:///{folder}/node.db"})

            async def migrate() -> None:
                engine = make_engine(template)
                try:
                    await upgrade(engine)
                finally:
                    await engine.dispose()  # the last connection closing folds the WAL into the file
            _run_in_own_loop(migrate)
            _made["sqlite"] = f"{folder}/node.db"
        shutil.copyfile(_made["sqlite"], sa.engine.make_url(db.url).database)
        return
    schema = db.schema_
    if "postgresql" not in _made:
        _made["postgresql"] = _run_in_own_loop(lambda: _record_migrations(config))
    else:
        _run_in_own_loop(lambda: _replay_migrations(schema, _made["postgresql"]))


async def _record_migrations(config: Config) -> list[tuple[str, Any, bool]]:
    """Migrate `config`'s schema through node.db's own upgrade step, keeping each statement it sent."""
    import sqlalchemy as sa

    from node import db as node_db

    sent: list[tuple[str, Any, bool]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, executemany: bool) -> None:
        sent.append((statement, parameters, executemany))

    def upgrade_recorded(conn: sa.Connection) -> None:
        sa.event.listen(conn, "before_cursor_execute", keep)
        try:
            node_db._upgrade(conn)
        finally:
            sa.event.remove(conn, "before_cursor_execute", keep)

    # The suite's server directly: a node's own URL may lead through a proxy a test cuts (tests/test_hardening_dbwait.py).
    engine = node_db.make_engine(DatabaseConfig(url=PG_URL, schema=config.database.schema_))
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{config.database.schema_}"')
            await conn.run_sync(upgrade_recorded)
    finally:
        await engine.dispose()
    assert any("alembic_version" in statement for statement, _, _ in sent), "no migration was recorded"
    return sent


async def _replay_migrations(schema: str, sent: list[tuple[str, Any, bool]]) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"),
                                 server_settings={"search_path": schema})
    try:
        async with conn.transaction():
            # Statements without parameters or rows to answer go together, in one round trip.
            script = [f'CREATE SCHEMA "{schema}"']
            for statement, parameters, many in sent:
                if not (many or parameters or statement.lstrip().upper().startswith("SELECT")
                        or "RETURNING" in statement.upper()):
                    script.append(statement)
                    continue
                if script:
                    await conn.execute(";\n".join(script))
                    script = []
                if many:
                    await conn.executemany(statement, parameters)
                else:
                    await conn.fetch(statement, *(parameters or ()))
            if script:
                await conn.execute(";\n".join(script))
    finally:
        await conn.close()


def add_dept(home: Path, code: str, name: str, role: str = "dept", capsys: Any = None) -> str:
    """`govnode dept add` through the real CLI; returns the token (the last line it prints)."""
    rc, out, err = run_cli(["dept", "add", code, "--dir", str(home), "--name", name, "--role", role])
    assert rc == 0, err
    return out.strip().splitlines()[-1]


@dataclass
class RunningNode:
    config: Config
    runner: web.AppRunner
    app: web.Application
    session: aiohttp.ClientSession
    tokens: dict[str, str] = field(default_factory=dict)
    direct_url: str | None = None  # a worker's own address, when the node's endpoint is another worker's

    @property
    def url(self) -> str:
        return self.direct_url or self.config.endpoint or ""

    async def call(self, method: str, path: str, token: str | None = None, *, json_body: Any = None,
                   data: Any = None, headers: dict | None = None) -> tuple[int, Any]:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        kw: dict[str, Any] = {"headers": h}
        if json_body is not None:
            kw["data"] = json.dumps(json_body, ensure_ascii=False).encode()
            h.setdefault("Content-Type", "application/json")
        elif data is not None:
            kw["data"] = data
        async with self.session.request(method, self.url + path, **kw) as resp:
            text = await resp.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = text
            return resp.status, body

    async def stop(self) -> None:
        await self.session.close()
        await self.runner.cleanup()


async def start_node(config: Config) -> RunningNode:
    from node.app import init_app

    app = init_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    from node import tls

    site = web.TCPSite(runner, config.host, config.port, ssl_context=tls.server_context(config))
    await site.start()
    session = tls.client_session(config)
    return RunningNode(config, runner, app, session)


async def start_worker(config: Config) -> RunningNode:
    """One more worker of a node that runs on PostgreSQL: the same home and schema, its own port (as a host
    behind a load balancer; the node's endpoint stays the first worker's)."""
    port = free_port()
    worker = await start_node(config.model_copy(update={"listen": f"127.0.0.1:{port}"}))
    worker.direct_url = f"http://127.0.0.1:{port}"
    return worker


class ThreadedNode:
    """A node on its own event loop in a thread, so synchronous callers (hypothesis, schemathesis: many
    examples) can call it. `accounts` maps a name to (department code, department name, role); `.tokens`
    holds their tokens and `.token` the first one's."""

    def __init__(self, tmp_path: Path, backend: str,
                 accounts: dict[str, tuple[str, str, str]] | None = None) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.config = init_home(tmp_path / "threaded", "370321", "桓台县", backend=backend, migrated=True)
        accounts = accounts or {"police": (POLICE, "桓台县公安局", "dept")}
        self.tokens = {name: add_dept(self.config.home, code, dept_name, role)
                       for name, (code, dept_name, role) in accounts.items()}
        self.token = next(iter(self.tokens.values()))
        self.running = self.run(start_node(self.config))

    @property
    def url(self) -> str:
        return self.config.endpoint or ""

    def run(self, coro):  # noqa: ANN001, ANN201
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def post(self, path: str, data: bytes) -> tuple[int, Any]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, data=data, method="POST", headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def close(self) -> None:
        self.run(self.running.stop())
        if self.config.database.schema_:
            self.run(drop_pg_schema(self.config.database.schema_))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


async def raw_sql(config: Config, statement: str, params: dict | None = None) -> list[tuple]:
    """Run one SQL statement straight on a node's database (tests that inspect or tamper with storage)."""
    import sqlalchemy as sa

    from node.db import make_engine

    engine = make_engine(config.database)
    try:
        async with engine.begin() as conn:
            res = await conn.execute(sa.text(statement), params or {})
            return [tuple(r) for r in res.all()] if res.returns_rows else []
    finally:
        await engine.dispose()


async def write_at_next_change(config: Config, counter: str, statement: str, params: dict) -> None:
    """Write a feed's row straight into the database as a tamperer would: `statement` puts it at the feed's
    next change id (its `{next_change}`), and only then the feed's counter moves to it. In the other order a
    neighbour's pull between the two statements reads the new head with no row at it, moves its cursor past
    it, and the row is never served (as the node, which does both in one transaction, never allows)."""
    next_change = f"(SELECT value + 1 FROM counters WHERE name = '{counter}')"
    await raw_sql(config, statement.format(next_change=next_change), params)
    await raw_sql(config, "UPDATE counters SET value = value + 1 WHERE name = :n", {"n": counter})


async def run_cli_async(argv: list[str]) -> tuple[int, str]:
    """Run a `govnode` command in a thread without blocking this loop (needed when the command talks to a
    node served by this loop, e.g. `join`); returns (exit code, stdout)."""
    import asyncio
    import io
    from contextlib import redirect_stdout

    def _run() -> tuple[int, str]:
        buf = io.StringIO()
        with redirect_stdout(buf):
            code = cli_main(argv)
        return code, buf.getvalue()

    return await asyncio.to_thread(_run)


# The test federation: 山东省 → 淄博市 → 桓台县, 张店区 (SPEC §14 demo tree).
TREE = [
    ("370000", "山东省", None),
    ("370300", "淄博市", "370000"),
    ("370321", "桓台县", "370300"),
    ("370303", "张店区", "370300"),
]

FAST_FEDERATION = {"federation": {"pull_interval_s": 2.0, "peer_timeout_s": 5.0}}


async def start_tree(base: Path, backend: str = "sqlite", tree: list | None = None) -> dict[str, RunningNode]:
    """Initialise, join (through real invite tokens) and start a federation tree; parents first."""
    tree = tree or TREE
    nodes: dict[str, RunningNode] = {}
    for code, name, parent in tree:
        home = base / code
        parent_url = nodes[parent].url if parent else None
        config = init_home(home, code, name, parent_url=parent_url, backend=backend, extra=FAST_FEDERATION,
                           migrated=True)
        if parent:
            rc, out = await run_cli_async(["invite", code, "--dir", str(nodes[parent].config.home)])
            assert rc == 0, out
            token = out.strip().splitlines()[-1]
            rc, out = await run_cli_async(["join", parent_url, token, "--dir", str(home)])
            assert rc == 0, out
        nodes[code] = await start_node(config)
    return nodes


async def stop_all(nodes: dict[str, RunningNode]) -> None:
    for n in reversed(list(nodes.values())):
        await n.stop()
    # Schemas last: several workers of one node share theirs.
    for schema in dict.fromkeys(n.config.database.schema_ for n in nodes.values() if n.config.database.schema_):
        await drop_pg_schema(schema)


# Federation test helpers (issue 3) ------------------------------------------------------------------

SAMPLE_ENTRY = {
    "classification": "101001", "name": "户籍人口基本信息", "category": "base", "format": "database",
    "summary": "户籍人口的基本信息",
    "items": [{"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True},
              {"name": "姓名", "field": "name", "type": "C", "length": 50}],
    "share": {"type": "unconditional", "methods": ["api"]}, "update_cycle": "realtime",
}

# Two cities: 淄博市 (two counties) and 青岛市 (one county), for routing across cities.
TREE_TWO_CITIES = TREE + [
    ("370200", "青岛市", "370000"),
    ("370211", "黄岛区", "370200"),
]


async def run_cli_full_async(argv: list[str]) -> tuple[int, str, str]:
    """Like `run_cli`, without blocking this loop (for commands that talk to a node this loop serves):
    (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()

    def go() -> int:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                return cli_main(argv)
            except SystemExit as exc:
                return exc.code if isinstance(exc.code, int) else 2

    rc = await asyncio.to_thread(go)
    return rc, out.getvalue(), err.getvalue()


async def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy; return it, or fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        await asyncio.sleep(interval)


def signing_key_of(home: Path) -> Any:
    """A node's signing key, read from its home as the node reads it."""
    from federation.signing import read_signing_key_file
    from node.config import KEY_FILE

    return read_signing_key_file(Path(home) / KEY_FILE)


def fed_headers(method: str, path: str, origin: str, destination: str, key: Any, content: Any = None, *,
                ts: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """Headers of a federation request signed with `key` (SPEC §4), built by federation.auth."""
    from federation.auth import make_authorization

    headers = {"Authorization": make_authorization(method, path, origin, destination, key, content=content,
                                                   ts=ts, nonce=nonce)}
    if content is not None:
        headers["Content-Type"] = "application/json"
    return headers


async def send_raw(url: str, method: str, path: str, headers: dict[str, str], content: Any = None) -> tuple[int, Any]:
    """Send one request exactly as given (canonical JSON body); (status, decoded JSON or text)."""
    from federation.canonical import encode_canonical_json

    data = encode_canonical_json(content) if content is not None else None
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url.rstrip("/") + path, data=data, headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, text


async def fed_call(target: Any, method: str, path: str, origin: str, key: Any, content: Any = None, *,
                   destination: str | None = None, ts: int | None = None,
                   nonce: str | None = None) -> tuple[int, Any, dict[str, str]]:
    """A signed federation request from `origin` to the node `target` (anything with .url and .config);
    returns (status, body, headers) so that the very same request can be replayed."""
    headers = fed_headers(method, path, origin, destination or target.config.node.id, key, content, ts=ts, nonce=nonce)
    status, body = await send_raw(target.url, method, path, headers, content)
    return status, body, headers


def error_code(body: Any) -> str | None:
    return body.get("error", {}).get("code") if isinstance(body, dict) else None


async def add_child(nodes: dict[str, Any], base: Path, code: str, name: str, parent: str, *,
                    backend: str = "sqlite", federation: dict | None = None, port: int | None = None,
                    extra: dict | None = None) -> RunningNode:
    """Invite, join and start one more node under a running parent; adds it to `nodes`."""
    home = base / code
    parent_url = nodes[parent].url
    config = init_home(home, code, name, port=port, parent_url=parent_url, backend=backend,
                       extra={**(federation or FAST_FEDERATION), **(extra or {})}, migrated=True)
    rc, out, err = await run_cli_full_async(["invite", code, "--dir", str(nodes[parent].config.home)])
    assert rc == 0, err
    token = out.strip().splitlines()[-1]
    rc, out, err = await run_cli_full_async(["join", parent_url, token, "--dir", str(home)])
    assert rc == 0, err
    nodes[code] = await start_node(config)
    return nodes[code]


class NodeProcess:
    """A node home served by `govnode run` in a subprocess (python -m node.cli), so that it can be killed
    with SIGKILL and started again on the same home and port. Same `.config`, `.url`, `.call` and `.stop`
    as RunningNode, so `stop_all` handles both."""

    def __init__(self, config: Config, workers: int = 1) -> None:
        self.config = config
        self.workers = workers  # `govnode run --workers N` (PostgreSQL)
        self.proc: Any = None
        self.tokens: dict[str, str] = {}

    @property
    def url(self) -> str:
        return self.config.endpoint or ""

    async def start(self, timeout: float = 30.0) -> "NodeProcess":
        import subprocess
        import sys

        env = {k: v for k, v in os.environ.items() if not k.startswith("GOVNODE_")}
        log = open(self.config.home / "node.log", "ab")  # noqa: SIM115 - the child keeps it open
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "run", "--dir", str(self.config.home), "--workers", str(self.workers)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(Path(__file__).resolve().parent.parent),
            )
        finally:
            log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"node {self.config.node.id} exited with {self.proc.returncode}:\n"
                                         + self.log_tail())
                try:
                    async with session.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return self
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if loop.time() > deadline:
                    self.kill()
                    raise AssertionError(f"node {self.config.node.id} did not become healthy:\n" + self.log_tail())
                await asyncio.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.config.home / "node.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, nothing flushed that was not committed."""
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the node hangs (its socket still accepts connections, nothing answers)."""
        import signal

        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        import signal
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 20)
        except subprocess.TimeoutExpired:
            self.kill()

    async def call(self, method: str, path: str, token: str | None = None, *, json_body: Any = None,
                   data: Any = None, headers: dict | None = None) -> tuple[int, Any]:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        if json_body is not None:
            data = json.dumps(json_body, ensure_ascii=False).encode()
            h.setdefault("Content-Type", "application/json")
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.url + path, data=data, headers=h) as resp:
                text = await resp.text()
                try:
                    return resp.status, json.loads(text) if text else None
                except ValueError:
                    return resp.status, text


async def start_federation(base: Path, *, tree: list | None = None, backend: str = "sqlite",
                           federation: dict | None = None, subprocesses: tuple[str, ...] = (),
                           extra_for: Any = None, workers: int = 1) -> dict[str, Any]:
    """Like `start_tree`, with the federation settings given (default FAST_FEDERATION) and the nodes named in
    `subprocesses` served by `govnode run` in a subprocess (NodeProcess) instead of in this process.
    `extra_for(code)` gives a node's own further settings (its TLS files, say). `workers`: how many
    workers each subprocess node runs (`govnode run --workers`)."""
    tree = tree or TREE
    nodes: dict[str, Any] = {}
    try:
        for code, name, parent in tree:
            home = base / code
            parent_url = nodes[parent].url if parent else None
            config = init_home(home, code, name, parent_url=parent_url, backend=backend,
                               extra={**(federation or FAST_FEDERATION), **(extra_for(code) if extra_for else {})},
                               migrated=True)
            if parent:
                rc, out, err = await run_cli_full_async(["invite", code, "--dir", str(nodes[parent].config.home)])
                assert rc == 0, err
                rc, out, err = await run_cli_full_async(["join", parent_url, out.strip().splitlines()[-1],
                                                         "--dir", str(home)])
                assert rc == 0, err
            if code in subprocesses:
                nodes[code] = await NodeProcess(config, workers).start()
            else:
                nodes[code] = await start_node(config)
    except BaseException:
        await stop_all(nodes)
        raise
    return nodes


async def add_dept_async(home: Path, code: str, name: str, role: str = "dept") -> str:
    """`govnode dept add` for a node served by this loop (the command must not block the loop that serves
    the node, or the two wait on SQLite's write lock); returns the token."""
    rc, out, err = await run_cli_full_async(["dept", "add", code, "--dir", str(home), "--name", name, "--role", role])
    assert rc == 0, err
    return out.strip().splitlines()[-1]


def seal_body(body: dict, origin: str, origin_key: Any, destination: str, destination_key: Any) -> dict:
    """`body` sealed by `origin` for `destination` (SPEC §15), as a node would send it; the keys are the two
    nodes' signing keys (the destination's public half is what the origin uses)."""
    from federation import sealed

    box = sealed.Boxes().box(origin_key, destination, destination_key.key_id, destination_key.verify_key)
    return sealed.seal(body, box, to=destination, to_key=destination_key.key_id, from_key=origin_key.key_id)


def open_body(envelope: dict, my_key: Any, sender_key: Any) -> dict:
    """The plain body of an envelope sealed for the holder of `my_key` by the holder of `sender_key`."""
    from federation import sealed

    box = sealed.Boxes().box(my_key, envelope["origin"], sender_key.key_id, sender_key.verify_key)
    return sealed.unseal(envelope["body"], box)


class LocalCA:
    """A certificate authority made for one test (the `cryptography` package): issues server certificates
    for 127.0.0.1 and writes them as PEM files, the private keys 0600 as a node's home requires."""

    def __init__(self, folder: Path, name: str = "govnode test CA") -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ser, self._ec, self._oid = x509, hashes, serialization, ec, NameOID
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.bundle = self.folder / "ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str) -> tuple[Path, Path]:
        """A certificate for 127.0.0.1 and localhost: (cert PEM path, key PEM path)."""
        import datetime
        import ipaddress

        x509, ser = self._x509, self._ser
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, name)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .sign(self.key, self._hashes.SHA256()))
        cert_path, key_path = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(ser.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path


@contextlib.asynccontextmanager
async def police_node(home: Path, backend: str = "sqlite", extra: dict | None = None):
    """One county node (370321 桓台县) with settings of the test's own (`extra`) and its police department
    (`tokens["police"]`); stopped, and its PostgreSQL schema dropped, afterwards."""
    config = init_home(home, "370321", "桓台县", backend=backend, extra=extra, migrated=True)
    token = await add_dept_async(config.home, POLICE, "桓台县公安局")  # off the loop: it may serve a proxy
    running = await start_node(config)
    running.tokens["police"] = token
    try:
        yield running
    finally:
        await running.stop()
        if config.database.schema_:
            await drop_pg_schema(config.database.schema_)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """A /metrics page as {(sample name, sorted labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
