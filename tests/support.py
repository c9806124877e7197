"""Test support: real nodes on loopback sockets, on SQLite or on PostgreSQL (a schema per node)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from node.cli import main as cli_main
from node.config import Config, load_config
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


def init_home(home: Path, node: str, name: str, *, port: int | None = None, parent_url: str | None = None,
              backend: str = "sqlite", extra: dict | None = None) -> Config:
    """Run `govnode init` for a node home and, for PostgreSQL, point it at a fresh schema."""
    port = port or free_port()
    argv = ["init", "--dir", str(home), "--node", node, "--name", name, "--listen", f"127.0.0.1:{port}"]
    if parent_url:
        argv += ["--parent-url", parent_url]
    if backend == "postgresql":
        argv += ["--database", PG_URL]
    assert cli_main(argv) == 0
    if backend == "postgresql" or extra:
        import yaml

        cfg_path = home / "config.yaml"
        doc = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        if backend == "postgresql":
            doc["database"]["schema"] = pg_schema()
        for k, v in (extra or {}).items():
            doc[k] = v
        cfg_path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return load_config(home, env={})


def add_dept(home: Path, code: str, name: str, role: str = "dept", capsys: Any = None) -> str:
    """`govnode dept add` through the real CLI; returns the token (the last line it prints)."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli_main(["dept", "add", code, "--dir", str(home), "--name", name, "--role", role]) == 0
    return buf.getvalue().strip().splitlines()[-1]


@dataclass
class RunningNode:
    config: Config
    runner: web.AppRunner
    app: web.Application
    session: aiohttp.ClientSession
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.config.endpoint or ""

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
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    session = aiohttp.ClientSession()
    return RunningNode(config, runner, app, session)
