"""A write and its audit record commit together or not at all (全过程留痕), and a write can be retried
safely with an Idempotency-Key (issue 14, defect 3).

Each write transaction of a call stores the call's audit intent; the call's chained record replaces it.
These tests break that sequence where it can break: a journal commit that fails after the write, and a
node killed with SIGKILL in the middle of a stream of writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random

import aiohttp
import pytest
import sqlalchemy as sa

from node.audit.http import AUDIT
from node.audit.service import AuditLog
from node.errors import ApiError
from support import (POLICE, SAMPLE_ENTRY, NodeProcess, add_dept, drop_pg_schema, init_home, raw_sql,
                     wait_for)

pytestmark = pytest.mark.asyncio


def _entry(name: str) -> dict:
    return {**SAMPLE_ENTRY, "name": name}


async def _intents(config) -> int:
    return (await raw_sql(config, "SELECT count(*) FROM audit_intents"))[0][0]


async def _audit_of(config, resource: str) -> list[tuple]:
    return await raw_sql(config, "SELECT action, status, outcome, details FROM audit_log WHERE resource = :r "
                                 "ORDER BY seq", {"r": resource})


async def test_a_write_leaves_its_record_and_no_intent(node):
    status, entry = await node.call("POST", "/api/v1/catalog", "police", json_body=_entry("户籍"))
    assert status == 201, entry
    code = entry["code"]
    status, body = await node.call("POST", f"/api/v1/resources/{code}/records", "police",
                                   json_body=[{"id_number": "11010519491231002X", "name": "张三"}])
    assert status == 200, body
    actions = [a for a, *_ in await _audit_of(node.config, code)]
    assert actions.count("catalog.create") == 1 and actions.count("data.push") == 1, actions
    assert await _intents(node.config) == 0  # each record replaced its call's intent in the same commit


async def test_a_write_whose_record_fails_is_answered_and_recorded_later(node, monkeypatch):
    """The journal fails after the entry committed (as in a database cut): the caller learns that the entry
    was stored, not a 503 that invites a duplicate; the intent becomes the record at the next sweep."""
    audit: AuditLog = node.app[AUDIT]
    real = AuditLog._write
    failing = {"on": True}

    def flaky(conn, records):
        if failing["on"] and any(r.get("call_key") for r in records):
            raise OSError("the database went away")
        return real(conn, records)

    monkeypatch.setattr(AuditLog, "_write", staticmethod(flaky))
    status, entry = await node.call("POST", "/api/v1/catalog", "police", json_body=_entry("失败的记录"))
    assert status == 201, entry
    assert await _intents(node.config) == 1
    assert await _audit_of(node.config, entry["code"]) == []
    # A call that wrote nothing still gets no answer without its record.
    status, body = await node.call("GET", f"/api/v1/catalog/{entry['code']}", "police")
    assert status == 200  # reads are recorded without intents, and this journal batch has none to fail
    failing["on"] = False
    assert await audit.recover(grace_ms=0) == 1
    created = [r for r in await _audit_of(node.config, entry["code"]) if r[0] == "catalog.create"]
    assert len(created) == 1 and "recovered" in json.loads(created[0][3])
    assert await _intents(node.config) == 0
    assert await audit.verify() is None


async def test_a_refused_write_leaves_no_intent(node):
    status, body = await node.call("POST", "/api/v1/catalog", "police", json_body={**SAMPLE_ENTRY, "category": "x"})
    assert status == 400
    assert await _intents(node.config) == 0


async def test_idempotency_key_carries_a_creating_post_out_once(node):
    headers = {"Idempotency-Key": "entry-0001"}
    first = await node.call("POST", "/api/v1/catalog", "police", json_body=_entry("一次"), headers=headers)
    again = await node.call("POST", "/api/v1/catalog", "police", json_body=_entry("一次"), headers=headers)
    assert first[0] == 201 and again == first
    status, page = await node.call("GET", "/api/v1/catalog?q=一次", "police")
    assert page["total"] == 1
    # Another caller's key of the same name is its own.
    status, other = await node.call("POST", "/api/v1/catalog", "civil", json_body=_entry("一次"), headers=headers)
    assert status == 201 and other["code"] != first[1]["code"]
    # The key names one request: another path with it is refused.
    status, body = await node.call("PUT", f"/api/v1/catalog/{first[1]['code']}", "police",
                                   json_body=_entry("改"), headers=headers)
    assert status == 409 and body["error"]["details"][0]["field"] == "Idempotency-Key"
    # A refused request does not use up its key: fixed and sent again, it is carried out.
    bad = await node.call("POST", "/api/v1/catalog", "police", json_body={**SAMPLE_ENTRY, "category": "x"},
                          headers={"Idempotency-Key": "entry-0002"})
    assert bad[0] == 400
    good = await node.call("POST", "/api/v1/catalog", "police", json_body=_entry("二次"),
                           headers={"Idempotency-Key": "entry-0002"})
    assert good[0] == 201
    status, body = await node.call("POST", "/api/v1/catalog", "police", json_body=_entry("坏"),
                                   headers={"Idempotency-Key": "x" * 300})
    assert status == 400 and body["error"]["code"] == "INVALID_INPUT"


async def test_replayed_answer_is_marked_and_audited(node):
    url = node.url + "/api/v1/catalog"
    h = {"Authorization": f"Bearer {node.tokens['police']}", "Idempotency-Key": "k-replay"}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=_entry("重放"), headers=h) as r1:
            assert r1.status == 201 and "Idempotent-Replayed" not in r1.headers
        async with s.post(url, json=_entry("重放"), headers=h) as r2:
            assert r2.status == 201 and r2.headers["Idempotent-Replayed"] == "true"
            rid = r2.headers["X-Request-Id"]
    rows = await raw_sql(node.config, "SELECT details FROM audit_log WHERE request_id = :r", {"r": rid})
    assert json.loads(rows[0][0])["idempotent_replay"] == "k-replay"


async def test_concurrent_retries_with_one_key_write_once(node):
    h = {"Idempotency-Key": "burst"}
    answers = await asyncio.gather(*(node.call("POST", "/api/v1/catalog", "police", json_body=_entry("并发"),
                                               headers=h) for _ in range(8)))
    created = [b for s, b in answers if s == 201]
    assert created and all(b["code"] == created[0]["code"] for b in created)
    assert all(s in (201, 409) for s, _ in answers), answers
    status, page = await node.call("GET", "/api/v1/catalog?q=并发", "police")
    assert page["total"] == 1


async def test_sigkill_never_leaves_a_write_without_its_record(tmp_path, backend):
    """A node killed with SIGKILL while departments register entries and push records, again and again:
    every entry and every batch that was stored has its audit record once the node is back, and the
    chain verifies. Batches carry their request id, so a stored batch names the record it must have."""
    home = tmp_path / "node"
    config = init_home(home, "370321", "桓台县", backend=backend)
    token = add_dept(home, POLICE, "桓台县公安局")
    proc = NodeProcess(config)
    proc.tokens["police"] = token
    rng = random.Random(14)
    auth = {"Authorization": f"Bearer {token}"}
    try:
        await proc.start()
        status, entry = await proc.call("POST", "/api/v1/catalog", "police", json_body=_entry("底册"))
        assert status == 201
        code = entry["code"]
        batch = 0

        async def load(session: aiohttp.ClientSession) -> None:
            nonlocal batch
            while True:
                batch += 1
                rid = f"push-{batch:05d}"
                rows = [{"id_number": f"{rid}-{i}", "name": "张三"} for i in range(200)]
                try:
                    async with session.post(f"{proc.url}/api/v1/resources/{code}/records", json=rows,
                                            headers={**auth, "X-Request-Id": rid}):
                        pass
                    async with session.post(f"{proc.url}/api/v1/catalog", json=_entry(f"条目{batch}"),
                                            headers={**auth, "X-Request-Id": f"cat-{batch:05d}"}):
                        pass
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    return

        for _ in range(5):
            async with aiohttp.ClientSession() as session:
                task = asyncio.create_task(load(session))
                await asyncio.sleep(rng.uniform(0.3, 1.2))
                proc.kill()
                await asyncio.wait_for(task, 10)
            await proc.start()
        await proc.stop()

        stored_batches = {k.rsplit("-", 1)[0] for (k,) in await raw_sql(
            config, "SELECT key FROM records WHERE resource_code = :r", {"r": code})}
        recorded = {r for (r,) in await raw_sql(
            config, "SELECT request_id FROM audit_log WHERE action = 'data.push'")}
        assert stored_batches and stored_batches <= recorded, sorted(stored_batches - recorded)
        entries = {c for (c,) in await raw_sql(config, "SELECT code FROM catalog_entries WHERE node = '370321'")}
        created = {r for (r,) in await raw_sql(
            config, "SELECT resource FROM audit_log WHERE action = 'catalog.create'")}
        assert len(entries) > 1 and entries <= created, sorted(entries - created)
        assert await _intents(config) == 0
        from support import run_cli_full_async
        rc, out, err = await run_cli_full_async(["audit", "verify", "--dir", str(home)])
        assert rc == 0 and "intact" in out, err
    finally:
        proc.kill()
        if config.database.schema_:
            await drop_pg_schema(config.database.schema_)


async def test_a_database_cut_neither_duplicates_a_keyed_write_nor_leaves_it_unrecorded(tmp_path):
    """Departments register entries, each under its own Idempotency-Key, while the node's PostgreSQL is cut
    (refused or black-holed) at random moments; each client retries its key until it gets an answer. In the
    end every key made exactly one entry, and every entry has its audit record."""
    from sqlalchemy.engine import make_url

    from support import PG_URL, pg_schema, police_node
    from tcpproxy import TcpProxy

    pg = make_url(PG_URL)
    rng = random.Random(21)
    async with TcpProxy(pg.port or 5432, pg.host or "127.0.0.1") as proxy:
        url = pg.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        database = {"url": url, "schema": pg_schema(), "connect_timeout_s": 1.0, "statement_timeout_s": 2.0}
        async with police_node(tmp_path / "node", "postgresql", {"database": database}) as node:
            codes: dict[str, str] = {}
            refused = 0
            for i in range(10):
                key, body = f"entry-{i}", _entry(f"断网登记{i}")
                first = asyncio.create_task(node.call("POST", "/api/v1/catalog", "police", json_body=body,
                                                      headers={"Idempotency-Key": key}))
                await asyncio.sleep(rng.uniform(0.0, 0.03))
                proxy.mode = rng.choice(("refuse", "blackhole"))
                status, answer = await first
                await asyncio.sleep(rng.uniform(0.1, 0.5))
                proxy.mode = "forward"
                for _ in range(120):  # the client retries its key until the node answers it (30 s at most)
                    if status == 201:
                        break
                    assert status in (503, 409), answer
                    refused += 1
                    await asyncio.sleep(0.25)
                    status, answer = await node.call("POST", "/api/v1/catalog", "police", json_body=body,
                                                     headers={"Idempotency-Key": key})
                assert status == 201, answer
                codes[key] = answer["code"]
            assert refused > 0  # the cuts did refuse calls: the retries above were exercised
            names = [n for (n,) in await raw_sql(node.config, "SELECT name FROM catalog_entries WHERE node = '370321'")]
            assert sorted(names) == sorted(f"断网登记{i}" for i in range(10)), names
            assert len(set(codes.values())) == 10
            # What a sweep or a restart would do, and as the sweep does, again after a round that failed: the
            # journal's connection may be one the last cut closed, which the driver learns only when it next
            # uses it (a batch answered UNAVAILABLE; its connection is then replaced).
            async def recovered() -> bool:
                try:
                    await node.app[AUDIT].recover(grace_ms=0)
                except ApiError as err:
                    assert err.code == "UNAVAILABLE", err
                    return False
                return True

            await wait_for(recovered, timeout=5, interval=0.25, what="the intents recovered after the cut")
            created = {r for (r,) in await raw_sql(
                node.config, "SELECT resource FROM audit_log WHERE action = 'catalog.create'")}
            assert set(codes.values()) <= created
            assert await node.app[AUDIT].verify() is None


@contextlib.asynccontextmanager
async def _lost_commit_reply(tmp_path):
    """A county node on PostgreSQL through a proxy, and `cut(mode)`: the next COMMIT of a catalog entry switches
    the proxy to `mode` as it is sent (`deaf`: the server gets the COMMIT, its reply is lost; `blackhole`: the
    COMMIT is lost too). Statements time out after 1 s, connecting after 0.5 s."""
    from sqlalchemy.engine import make_url

    from node.db import CALL_WRITES
    from node.ops.http import ENGINE
    from support import PG_URL, pg_schema, police_node
    from tcpproxy import TcpProxy

    pg = make_url(PG_URL)
    async with TcpProxy(pg.port or 5432, pg.host or "127.0.0.1") as proxy:
        url = pg.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        database = {"url": url, "schema": pg_schema(), "connect_timeout_s": 0.5, "statement_timeout_s": 1.0}
        async with police_node(tmp_path / "node", "postgresql", {"database": database}) as node:
            armed: list[str] = []

            def on_commit(conn) -> None:
                call = CALL_WRITES.get()
                if armed and call is not None and call.fields["action"] == "catalog.create":
                    proxy.mode = armed.pop()

            sa.event.listen(node.app[ENGINE].sync_engine, "commit", on_commit)
            yield node, proxy, armed.append


async def _post_entry(node, body: dict, key: str | None = None) -> tuple[int, dict, bool]:
    headers = {"Authorization": f"Bearer {node.tokens['police']}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with node.session.post(node.url + "/api/v1/catalog", json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers.get("Idempotent-Replayed") == "true"


async def _entries_named(node, name: str) -> list[str]:
    return [c for (c,) in await raw_sql(node.config, "SELECT code FROM catalog_entries WHERE name = :n", {"n": name})]


async def _retry_until_answered(node, body: dict, key: str) -> tuple[int, dict, bool]:
    for _ in range(80):  # a retry while the first call is still finishing is told so (409); 20 s at most
        status, answer, replayed = await _post_entry(node, body, key)
        if status != 409:
            return status, answer, replayed
        await asyncio.sleep(0.25)
    raise AssertionError(answer)


async def test_a_keyed_write_whose_commit_reply_is_lost_keeps_its_answer_for_the_retry(tmp_path):
    """The server commits a keyed write, but its reply to the COMMIT is lost and the database stays out of
    reach: the caller is answered 503 meanwhile. Once the database answers again the call finds its write
    stored, finishes, and keeps its answer, so the retry gets that entry (not a 409 saying the answer is
    lost, nor a second entry), and the entry has one record, which says the caller was answered first."""
    async with _lost_commit_reply(tmp_path) as (node, proxy, cut):
        body = _entry("回执丢失登记")
        cut("deaf")
        status, answer, _ = await _post_entry(node, body, "lost-reply")
        assert status == 503 and "not known yet" in answer["error"]["message"], answer
        proxy.mode = "forward"
        assert len(await _entries_named(node, "回执丢失登记")) == 1  # the server did commit it
        status, answer, replayed = await _retry_until_answered(node, body, "lost-reply")
        assert (status, replayed) == (201, True), answer
        assert await _entries_named(node, "回执丢失登记") == [answer["code"]]
        records = await _audit_of(node.config, answer["code"])
        created = [r for r in records if r[0] == "catalog.create"]
        assert len(created) == 1 and created[0][1:3] == (201, "ok"), records
        assert json.loads(created[0][3])["answered_before_settled"] is True
        assert await _intents(node.config) == 0
        assert await node.app[AUDIT].verify() is None


async def test_a_keyed_write_whose_commit_is_lost_is_carried_out_by_the_retry(tmp_path):
    """The COMMIT itself is lost (a black hole): nothing was stored. Once the database answers again the call
    learns so and its key stays free, so the retry carries the write out, once."""
    async with _lost_commit_reply(tmp_path) as (node, proxy, cut):
        body = _entry("提交丢失登记")
        cut("blackhole")
        status, answer, _ = await _post_entry(node, body, "lost-commit")
        assert status == 503, answer
        proxy.mode = "forward"
        status, answer, replayed = await _retry_until_answered(node, body, "lost-commit")
        assert (status, replayed) == (201, False), answer
        assert await _entries_named(node, "提交丢失登记") == [answer["code"]]
        for _ in range(40):  # the first call's own record (503) follows once it has learnt what happened
            outcomes = [o for (o,) in await raw_sql(
                node.config, "SELECT outcome FROM audit_log WHERE action = 'catalog.create' ORDER BY seq")]
            if len(outcomes) == 2:
                break
            await asyncio.sleep(0.25)
        assert sorted(outcomes) == ["UNAVAILABLE", "ok"], outcomes
        assert await node.app[AUDIT].verify() is None


async def test_a_write_whose_commit_reply_is_lost_briefly_is_answered_with_its_result(tmp_path):
    """Without a key, a COMMIT whose reply is lost while the database comes back within a connect and a
    statement is answered with its real result (201), not a 503 that would make its caller send it twice."""
    async with _lost_commit_reply(tmp_path) as (node, proxy, cut):
        asyncio.get_running_loop().call_later(1.2, setattr, proxy, "mode", "forward")  # the commit times out at 1 s
        cut("deaf")
        status, answer, _ = await _post_entry(node, _entry("短暂断开登记"))
        assert status == 201, answer
        assert await _entries_named(node, "短暂断开登记") == [answer["code"]]
        records = await _audit_of(node.config, answer["code"])
        assert [r[:3] for r in records] == [("catalog.create", 201, "ok")], records


async def test_concurrent_writes_of_one_keyed_call_claim_its_key_once(node):
    """A call whose handler writes in two transactions at once claims its Idempotency-Key in one of them: the
    other does not take the claim for a second request with the key and refuse its own call."""
    from node.audit.service import Call, IdempotencyClaim
    from node.db import CALL_WRITES, next_counter_sync, write_tx
    from node.ops.http import ENGINE

    engine = node.app[ENGINE]
    call = Call({"request_id": "two-writes", "actor": f"370321/{POLICE}", "action": "test"},
                idempotency=IdempotencyClaim.of(f"370321/{POLICE}", "two-writes", "POST", "/x", ""))

    async def write(counter: str) -> None:
        async with write_tx(engine) as conn:
            await conn.run_sync(next_counter_sync, counter)
            await asyncio.sleep(0.05)  # both transactions open at once on PostgreSQL (SQLite takes turns)

    token = CALL_WRITES.set(call)
    try:
        await asyncio.gather(write("two-writes-a"), write("two-writes-b"))
    finally:
        CALL_WRITES.reset(token)
    assert call.claimed and call.wrote
    assert (await raw_sql(node.config, "SELECT count(*) FROM idempotency_keys WHERE key = 'two-writes'"))[0][0] == 1
    assert (await raw_sql(node.config, "SELECT count(*) FROM counters WHERE name LIKE 'two-writes-%'"))[0][0] == 2
