"""The `govnode` command: init, keys and anchor, configuration errors, departments, audit verify."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from signedjson.key import decode_verify_key_base64, get_verify_key, read_signing_keys

from federation.signing import read_signing_key_file, verify_key_b64
from support import POLICE, init_home, raw_sql, run_cli, start_node

ROOT = Path(__file__).resolve().parents[1]


def init(home: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(["init", "--dir", str(home), "--node", "370321", "--name", "桓台县", *extra])


# init ---------------------------------------------------------------------------------------------

def test_init_creates_config_and_private_key(tmp_path):
    home = tmp_path / "home"
    rc, out, err = init(home, "--listen", "127.0.0.1:8421")
    assert rc == 0, err
    doc = yaml.safe_load((home / "config.yaml").read_text(encoding="utf-8"))
    assert doc["node"] == {"id": "370321", "name": "桓台县"}
    assert doc["listen"] == "127.0.0.1:8421"
    key_file = home / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    # SPEC §14: one line `ed25519 <version> <unpadded base64 seed>`, as signedjson reads it.
    line = key_file.read_text(encoding="ascii").strip()
    alg, version, seed = line.split(" ")
    assert (alg, version) == ("ed25519", "1") and not seed.endswith("=")
    with key_file.open() as stream:
        (sj_key,) = read_signing_keys(stream)
    assert sj_key.version == "1"
    assert bytes(sj_key) == bytes(read_signing_key_file(key_file).nacl_key)


def test_root_prints_its_anchor(tmp_path):
    home = tmp_path / "home"
    rc, out, _ = init(home)
    assert rc == 0
    anchor = [ln for ln in out.splitlines() if ln.startswith("anchor: ")]
    assert len(anchor) == 1
    node, key_id, b64 = anchor[0].removeprefix("anchor: ").split(" ")
    assert (node, key_id) == ("370321", "ed25519:1")
    # The printed public key is the public half of the key in the home.
    with (home / "signing.key").open() as stream:
        (sj_key,) = read_signing_keys(stream)
    assert decode_verify_key_base64("ed25519", "1", b64).encode() == get_verify_key(sj_key).encode()
    assert b64 == verify_key_b64(read_signing_key_file(home / "signing.key"))


def test_child_prints_no_anchor(tmp_path):
    home = tmp_path / "home"
    rc, out, err = init(home, "--parent-url", "http://127.0.0.1:8300")
    assert rc == 0, err
    assert "anchor:" not in out and "trust anchor" not in out
    assert yaml.safe_load((home / "config.yaml").read_text(encoding="utf-8"))["node"]["parent_url"] == \
        "http://127.0.0.1:8300"


def test_init_refuses_an_existing_home(tmp_path):
    home = tmp_path / "home"
    assert init(home)[0] == 0
    before = {p.name: p.read_bytes() for p in home.iterdir()}
    rc, out, err = init(home, "--listen", "127.0.0.1:9999")
    assert rc == 2
    assert "already holds a node" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in home.iterdir()} == before  # key and config untouched


def test_init_with_bad_values_leaves_nothing(tmp_path):
    home = tmp_path / "home"
    rc, out, err = run_cli(["init", "--dir", str(home), "--node", "37032", "--name", "x",
                            "--listen", "localhost:0", "--database", "mysql://db"])
    assert rc == 2
    assert err.count("govnode: invalid configuration") == 1
    for setting in ("node.id", "listen", "database.url"):
        assert f"  {setting}: " in err
    assert "Traceback" not in err
    assert not (home / "config.yaml").exists() and not (home / "signing.key").exists()


def test_bad_config_is_one_message_and_exit_2(tmp_path):
    """`python -m node.cli` as an operator would run it, on a home whose YAML was edited badly."""
    home = tmp_path / "home"
    assert init(home)[0] == 0
    doc = yaml.safe_load((home / "config.yaml").read_text(encoding="utf-8"))
    doc["listen"] = "nowhere"
    doc["log_level"] = "CHATTY"
    doc["limits"] = {"max_json_bytes": "lots"}
    (home / "config.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVNODE_")}
    proc = subprocess.run([sys.executable, "-m", "node.cli", "run", "--dir", str(home)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    results = [(proc.returncode, proc.stdout, proc.stderr)]
    # The same through the in-process entry point, for the other commands that read the config.
    results += [run_cli([*cmd, "--dir", str(home)]) for cmd in (["dept", "list"], ["audit", "verify"],
                                                                 ["dept", "add", "X1", "--name", "x"])]
    for rc, out, err in results:
        assert rc == 2, err
        assert "Traceback" not in err
        assert err.startswith("govnode: invalid configuration in ")
        for setting in ("listen", "log_level", "limits.max_json_bytes"):
            assert f"\n  {setting}: " in err, (setting, err)
        assert out == ""


def test_env_override_errors_name_the_variable(tmp_path, monkeypatch):
    home = tmp_path / "home"
    assert init(home)[0] == 0
    monkeypatch.setenv("GOVNODE_DATABASE_URL", "oracle://db")
    rc, out, err = run_cli(["dept", "list", "--dir", str(home)])
    assert rc == 2 and "database.url (from GOVNODE_DATABASE_URL):" in err


def test_missing_home_is_one_message(tmp_path):
    rc, out, err = run_cli(["dept", "list", "--dir", str(tmp_path / "nothing")])
    assert rc == 2 and "govnode init" in err and "Traceback" not in err


def test_unreachable_database_is_one_line(tmp_path):
    home = tmp_path / "home"
    port = 1  # nothing listens there
    assert init(home, "--database", f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test")[0] == 0
    rc, out, err = run_cli(["dept", "list", "--dir", str(home)])
    assert rc == 1
    assert err.startswith("govnode: dept list: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_run_with_a_damaged_key_is_one_message(tmp_path):
    home = tmp_path / "home"
    assert init(home)[0] == 0
    (home / "signing.key").write_text("ed25519 1 !!!\n", encoding="ascii")
    rc, out, err = run_cli(["run", "--dir", str(home)])
    assert rc == 2 and "signing key" in err and "Traceback" not in err


# departments ----------------------------------------------------------------------------------------

def dept(home: Path, *argv: str) -> tuple[int, str, str]:
    return run_cli(["dept", *argv, "--dir", str(home)])


async def test_dept_add_token_revoke_list(tmp_path, backend):
    config = init_home(tmp_path / "home", "370321", "桓台县", backend=backend)
    home = config.home
    try:
        rc, out, err = dept(home, "add", POLICE, "--name", "桓台县公安局")
        assert rc == 0, err
        first = out.strip().splitlines()[-1]
        assert first.startswith("gnt_") and len(first) > 40
        rc, out, err = dept(home, "add", "AUDIT1", "--name", "桓台县审计局", "--role", "auditor")
        assert rc == 0, err

        rc, out, err = dept(home, "add", POLICE, "--name", "again")
        assert rc == 1 and "CONFLICT" in err
        rc, out, err = dept(home, "add", "lower-case", "--name", "x")
        assert rc == 1 and "INVALID_INPUT" in err
        rc, out, err = dept(home, "add", "X1", "--name", "x", "--role", "king")
        assert rc == 2  # argparse names the allowed roles

        rc, out, err = dept(home, "token", POLICE)
        assert rc == 0, err
        second = out.strip().splitlines()[-1]
        assert second.startswith("gnt_") and second != first
        rc, out, err = dept(home, "token", "NOSUCH")
        assert rc == 1 and "NOT_FOUND" in err

        rc, out, err = dept(home, "list")
        assert rc == 0
        rows = [ln.split("\t") for ln in out.strip().splitlines()]
        assert sorted(rows) == sorted([["AUDIT1", "auditor", "active", "桓台县审计局"],
                                       [POLICE, "dept", "active", "桓台县公安局"]])

        # The tokens work until the department is revoked.
        running = await start_node(config)
        try:
            for token in (first, second):
                assert (await running.call("GET", "/api/v1/catalog", token))[0] == 200
        finally:
            await running.stop()

        rc, out, err = dept(home, "revoke", POLICE)
        assert rc == 0 and "2 token(s) revoked" in out
        rc, out, err = dept(home, "list")
        assert f"{POLICE}\tdept\tdisabled\t" in out
        rc, out, err = dept(home, "token", POLICE)
        assert rc == 1 and "CONFLICT" in err
        rc, out, err = dept(home, "revoke", "NOSUCH")
        assert rc == 1 and "NOT_FOUND" in err

        running = await start_node(config)
        try:
            for token in (first, second):
                status, body = await running.call("GET", "/api/v1/catalog", token)
                assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED"
        finally:
            await running.stop()
    finally:
        if config.database.schema_:
            from support import drop_pg_schema

            await drop_pg_schema(config.database.schema_)


# audit verify ---------------------------------------------------------------------------------------

@pytest.fixture
async def audited(tmp_path, backend):
    """A home whose audit log holds 7 records (the department added at the console, then 5 calls by it and
    1 anonymous)."""
    from support import add_dept, drop_pg_schema

    config = init_home(tmp_path / "home", "370321", "桓台县", backend=backend)
    token = add_dept(config.home, POLICE, "桓台县公安局")
    running = await start_node(config)
    try:
        for _ in range(5):
            assert (await running.call("GET", "/api/v1/catalog", token))[0] == 200
        assert (await running.call("GET", "/api/v1/catalog"))[0] == 401
    finally:
        await running.stop()
    assert (await raw_sql(config, "SELECT count(*) FROM audit_log"))[0][0] == 7
    try:
        yield config
    finally:
        if config.database.schema_:
            await drop_pg_schema(config.database.schema_)


def verify(config) -> tuple[int, str, str]:
    return run_cli(["audit", "verify", "--dir", str(config.home)])


async def test_audit_verify_intact(audited):
    rc, out, err = verify(audited)
    assert rc == 0 and "intact" in out and err == ""


async def test_audit_verify_empty_log(tmp_path):
    config = init_home(tmp_path / "home", "370321", "桓台县")
    rc, out, _ = verify(config)
    assert rc == 0 and "intact" in out


async def test_audit_verify_finds_an_altered_record(audited):
    await raw_sql(audited, "UPDATE audit_log SET outcome = 'ok', status = 200 WHERE seq = 7")
    rc, out, err = verify(audited)
    assert rc == 1 and "record 7" in err and "altered" in err
    # Earlier records are still fine: the message names the first broken one, not record 1.
    await raw_sql(audited, "UPDATE audit_log SET actor = 'someone/else' WHERE seq = 3")
    rc, out, err = verify(audited)
    assert rc == 1 and "record 3" in err


async def test_audit_verify_finds_a_deleted_middle_record(audited):
    await raw_sql(audited, "DELETE FROM audit_log WHERE seq = 4")
    rc, out, err = verify(audited)
    assert rc == 1 and "record 4" in err and "missing" in err


async def test_audit_verify_finds_a_deleted_last_record(audited):
    await raw_sql(audited, "DELETE FROM audit_log WHERE seq = 7")
    rc, out, err = verify(audited)
    assert rc == 1 and "record 7" in err and "missing" in err


async def test_audit_verify_finds_a_rewritten_link(audited):
    """Replacing a record with one carrying a self-consistent hash still breaks the next link."""
    from node.audit.service import record_hash

    rows = await raw_sql(audited, "SELECT prev_hash FROM audit_log WHERE seq = 2")
    await raw_sql(audited, "UPDATE audit_log SET actor = 'x/y' WHERE seq = 2")
    cols = ("seq", "at", "request_id", "message_id", "actor", "role", "action", "method", "path",
            "resource", "keys_digest", "outcome", "status", "latency_ms", "details")
    (row,) = await raw_sql(audited, f"SELECT {', '.join(cols)} FROM audit_log WHERE seq = 2")
    forged = record_hash(rows[0][0], dict(zip(cols, row)))
    await raw_sql(audited, "UPDATE audit_log SET hash = :h WHERE seq = 2", {"h": forged})
    rc, out, err = verify(audited)
    assert rc == 1 and "record 3" in err and "link" in err


# account changes at the console ---------------------------------------------------------------------

async def test_account_changes_at_the_console_are_audited(tmp_path, backend):
    """Departments and people added, given new credentials and disabled with `govnode dept` / `govnode user`
    leave records in the node's one chain, as the portal's do: refused commands too, and beside the running
    node, whose own calls' records interleave."""
    import getpass

    from support import drop_pg_schema, run_cli_full_async

    config = init_home(tmp_path / "home", "370321", "桓台县", backend=backend)
    home = str(config.home)

    async def cli(*argv: str) -> int:
        return (await run_cli_full_async([*argv, "--dir", home]))[0]

    assert await cli("dept", "add", "AUDIT1", "--name", "桓台县审计局", "--role", "auditor") == 0
    auditor = (await run_cli_full_async(["dept", "token", "AUDIT1", "--dir", home]))[1].strip().splitlines()[-1]
    running = await start_node(config)
    try:
        assert await cli("dept", "add", POLICE, "--name", "桓台县公安局") == 0
        assert await cli("user", "add", "zhangsan", "--dept", POLICE, "--name", "张三") == 0
        assert (await running.call("GET", "/api/v1/catalog", auditor))[0] == 200
        assert await cli("user", "disable", "nobody") == 1  # refused: recorded all the same
        assert await cli("user", "reset", "zhangsan") == 0
        assert await cli("user", "disable", "zhangsan") == 0
        assert await cli("dept", "revoke", POLICE) == 0
        status, page = await running.call("GET", "/api/v1/audit?limit=100", auditor)
        assert status == 200, page
    finally:
        await running.stop()
    try:
        records = sorted(page["records"], key=lambda r: r["seq"])
        console = [(r["action"], r["outcome"], r["details"]) for r in records if r["actor"] == "370321/console"]
        assert console == [
            ("console.dept.add", "ok", {"dept": "AUDIT1", "role": "auditor"}),
            ("console.dept.token", "ok", {"dept": "AUDIT1"}),
            ("console.dept.add", "ok", {"dept": POLICE, "role": "dept"}),
            ("console.user.add", "ok", {"dept": POLICE, "username": "zhangsan"}),
            ("console.user.disable", "NOT_FOUND", {"username": "nobody"}),
            ("console.user.reset", "ok", {"username": "zhangsan"}),
            ("console.user.disable", "ok", {"username": "zhangsan"}),
            ("console.dept.revoke", "ok", {"dept": POLICE}),
        ], console
        assert {(r["role"], r["method"], r["user"]) for r in records if r["actor"] == "370321/console"} == {
            ("operator", "CLI", getpass.getuser()[:32])}
        assert "catalog.search" in [r["action"] for r in records if r["actor"] == "370321/AUDIT1"]
        assert (await raw_sql(config, "SELECT count(*) FROM audit_intents"))[0][0] == 0  # each record took its intent
        rc, out, err = run_cli(["audit", "verify", "--dir", home])
        assert rc == 0 and "intact" in out, err
    finally:
        if config.database.schema_:
            await drop_pg_schema(config.database.schema_)
