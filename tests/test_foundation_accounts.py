"""Departments (SPEC §10): random tokens shown once and stored only as digests, revocation, roles."""

from __future__ import annotations

import asyncio
import hashlib
import re

import sqlalchemy as sa

from node.accounts.http import ACCOUNTS
from node.accounts.service import AUTH_CACHE_SECONDS
from node.db import metadata
from support import CIVIL, POLICE, add_dept_async, raw_sql, run_cli


async def all_stored_text(config) -> str:
    """Every value of every table of the node's database, as one string."""
    import node.accounts.store  # noqa: F401  (tables on the metadata)
    import node.audit.store  # noqa: F401
    import node.catalog.store  # noqa: F401

    chunks = []
    for table in metadata.tables:
        try:
            rows = await raw_sql(config, f'SELECT * FROM "{table}"')
        except sa.exc.DBAPIError:  # a table another capability declares but this schema predates
            continue
        chunks += [repr(r) for r in rows]
    return "\n".join(chunks)


async def test_tokens_are_random_and_stored_only_as_digests(node):
    tokens = [node.tokens[k] for k in ("police", "civil", "operator", "auditor")]
    assert len(set(tokens)) == 4
    for t in tokens:
        assert re.fullmatch(r"gnt_[A-Za-z0-9_-]{43}", t)  # 32 random bytes, URL-safe base64
    # A new token for the same department is another random value, and both work.
    rc, out, _ = run_cli(["dept", "token", POLICE, "--dir", str(node.config.home)])
    assert rc == 0
    extra = out.strip().splitlines()[-1]
    assert extra not in tokens
    for t in (node.tokens["police"], extra):
        assert (await node.call("GET", "/api/v1/catalog", t))[0] == 200
    stored = await all_stored_text(node.config)
    assert "departments" in metadata.tables and POLICE in stored  # the dump really holds the tables
    for t in tokens + [extra]:
        assert t not in stored and t.removeprefix("gnt_") not in stored
        assert hashlib.sha256(t.encode()).hexdigest() in stored
    # Listing departments never shows a token either.
    rc, out, _ = run_cli(["dept", "list", "--dir", str(node.config.home)])
    assert rc == 0 and not any(t in out for t in tokens + [extra]) and "gnt_" not in out


async def test_revocation_through_the_node_is_immediate(node):
    assert (await node.call("GET", "/api/v1/catalog", "police"))[0] == 200
    assert await node.app[ACCOUNTS].revoke(POLICE) == 1
    status, body = await node.call("GET", "/api/v1/catalog", "police")
    assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED"
    assert (await node.call("GET", "/api/v1/catalog", "civil"))[0] == 200  # others unaffected


async def test_revocation_by_the_cli_takes_effect_within_the_cache_time(node):
    assert (await node.call("GET", "/api/v1/catalog", "civil"))[0] == 200  # now cached as valid
    rc, out, err = run_cli(["dept", "revoke", CIVIL, "--dir", str(node.config.home)])
    assert rc == 0, err
    await asyncio.sleep(AUTH_CACHE_SECONDS + 0.3)
    status, body = await node.call("GET", "/api/v1/catalog", "civil")
    assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED"
    # The revoked department's registration attempts are refused as well.
    status, body = await node.call("POST", "/api/v1/catalog", "civil", json_body={})
    assert status == 401


async def test_a_department_added_while_running_can_call(node):
    token = await add_dept_async(node.config.home, "LATECOMER1", "新设部门")
    assert (await node.call("GET", "/api/v1/catalog", token))[0] == 200


async def test_wrong_credentials_are_401(node):
    good = node.tokens["police"]
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {good}"},
        {"Authorization": good},
        {"Authorization": "Bearer gnt_" + "A" * 43},
        {"Authorization": "Bearer " + good[:-1]},
        {"Authorization": "Bearer " + good + "x"},
        {"Authorization": "Bearer " + "x" * 5000},
        {"Authorization": "Bearer nottoken"},
    ):
        status, body = await node.call("GET", "/api/v1/catalog", headers=headers)
        assert status == 401, headers
        assert body["error"]["code"] == "UNAUTHENTICATED" and body["error"]["request_id"], headers
    # The scheme is case-insensitive, surrounding spaces are ignored.
    for header in (f"bearer {good}", f"BEARER {good}", f"Bearer  {good} "):
        assert (await node.call("GET", "/api/v1/catalog", headers={"Authorization": header}))[0] == 200, header


async def test_roles_are_enforced(node):
    # Only departments register resources.
    for role in ("operator", "auditor"):
        status, body = await node.call("POST", "/api/v1/catalog", role, json_body={"name": "x"})
        assert status == 403 and body["error"]["code"] == "FORBIDDEN"
        assert "dept" in body["error"]["message"]
    # Only operators and auditors read the audit log.
    for role in ("police", "civil"):
        status, body = await node.call("GET", "/api/v1/audit", role)
        assert status == 403 and body["error"]["code"] == "FORBIDDEN"
    for role in ("operator", "auditor"):
        assert (await node.call("GET", "/api/v1/audit", role))[0] == 200
    # Everyone authenticated may search the catalog.
    for role in ("police", "operator", "auditor"):
        assert (await node.call("GET", "/api/v1/catalog", role))[0] == 200


async def test_public_paths_need_no_token(node):
    for path in ("/healthz", "/metrics", "/api/v1/openapi.json"):
        status, _ = await node.call("GET", path)
        assert status == 200, path
