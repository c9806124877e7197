"""One node, several processes (issue 17): on SQLite exactly one `govnode run` serves a home; on
PostgreSQL several workers serve one node, and what one worker learns the others act on."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from node.accounts.http import ACCOUNTS
from node.cluster import CLUSTER
from node.federation.http import FEDERATION
from support import (CIVIL, POLICE, TREE, NodeProcess, add_dept, add_dept_async, error_code, fed_call, init_home,
                     open_body, raw_sql, run_cli_full_async, samples, send_raw, signing_key_of, start_federation,
                     start_node, start_worker, stop_all, wait_for)
from test_applications import PEOPLE, apply_body, query, register


async def test_a_second_run_on_a_sqlite_home_is_refused(tmp_path):
    config = init_home(tmp_path / "county", "370321", "桓台县")
    first = await NodeProcess(config).start()
    try:
        rc, out, err = await run_cli_full_async(["run", "--dir", str(config.home)])
        assert rc == 1 and out == "", out
        [line] = err.splitlines()  # one clear line, no traceback
        assert "already running" in line and f"pid {first.proc.pid}" in line, line
        rc, _, err = await run_cli_full_async(["run", "--workers", "2", "--dir", str(config.home)])
        assert rc == 2 and "--workers needs PostgreSQL" in err and len(err.splitlines()) == 1, err
        # join would store trust state the running node never reads: refused before the token is spent.
        rc, _, err = await run_cli_full_async(["join", "http://127.0.0.1:9", "gni_unused", "--dir", str(config.home)])
        assert rc == 1 and "stop it before `govnode join`" in err, err
        # Adding a department beside the running node stays allowed (the database orders the two
        # writers), and the running node accepts the new token.
        token = await add_dept_async(config.home, "OPERATOR", "桓台县大数据中心", "operator")
        status, _ = await first.call("GET", "/api/v1/audit?limit=1", token)
        assert status == 200
        # A command of a newer govnode must not migrate the schema under the running node's feet.
        [(head,)] = await raw_sql(config, "SELECT version_num FROM alembic_version")
        await raw_sql(config, "UPDATE alembic_version SET version_num = '0009'")
        try:
            rc, _, err = await run_cli_full_async(["dept", "list", "--dir", str(config.home)])
            assert rc == 1 and "older database schema" in err and len(err.splitlines()) == 1, err
        finally:
            await raw_sql(config, "UPDATE alembic_version SET version_num = :v", {"v": head})
        # The lock dies with the process, however it dies: after kill -9 the home can be served again.
        first.kill()
        second = await NodeProcess(config).start()
        await second.stop()
    finally:
        first.kill()


# Several workers of one node on PostgreSQL ----------------------------------------------------------

PG = pytest.mark.parametrize("backend", ["postgresql"])
CITY_TREE = TREE[:2]  # 山东省 → 淄博市


def leaders(workers) -> list:
    return [w for w in workers if w.app[CLUSTER].leader]


@PG
async def test_a_replayed_federation_request_is_refused_by_another_worker(tmp_path, backend):
    nodes = await start_federation(tmp_path / "nodes", tree=CITY_TREE, backend=backend)
    try:
        province, city = nodes["370000"], nodes["370300"]
        nodes["370300 b"] = other = await start_worker(city.config)
        assert leaders([city, other]) == [city]  # the first worker took the background work; one does
        key, city_key = signing_key_of(province.config.home), signing_key_of(city.config.home)
        # The same signed request, word for word, to the other worker: the first one's nonce is in the database.
        status, _, headers = await fed_call(city, "GET", "/federation/v1/registry", "370000", key)
        assert status == 200
        status, body = await send_raw(other.url, "GET", "/federation/v1/registry", headers)
        assert (status, error_code(body)) == (401, "REPLAY"), body
        # An envelope sent again under a fresh hop signature: its id was claimed by the first worker, which
        # answered it; the second withholds its answer (a read is done before its claims commit).
        fed = province.app[FEDERATION]
        env = fed._envelope("licence.verify", "370300", {"op": "status", "identifier": "none"}, ttl_ms=60_000)
        status, answer, _ = await fed_call(city, "POST", "/federation/v1/messages", "370000", key, env)
        assert status == 200 and answer["in_reply_to"] == env["id"], answer
        status, body, _ = await fed_call(other, "POST", "/federation/v1/messages", "370000", key, env)
        assert (status, error_code(body)) == (401, "REPLAY"), body
        outcomes = await raw_sql(city.config, "SELECT outcome FROM audit_log WHERE message_id = :m", {"m": env["id"]})
        assert sorted(o for (o,) in outcomes)[-1] == "REPLAY" and len(outcomes) == 2, outcomes
        # An asynchronous message taken by one worker is acknowledged as a duplicate by another (its sender
        # retries until acknowledged), and handled once.
        env = fed._envelope("application.submit", "370300", {"application": {"id": "none"}}, ttl_ms=60_000)
        status, first, _ = await fed_call(city, "POST", "/federation/v1/messages", "370000", key, env)
        assert status == 200 and first["in_reply_to"] == env["id"]
        status, again, _ = await fed_call(other, "POST", "/federation/v1/messages", "370000", key, env)
        assert status == 200 and open_body(again, key, city_key) == {"accepted": True, "duplicate": True}, again
        # Every worker answers /healthz alike: the peers' state is the node's, not the worker's.
        async def alike():
            bodies = [(await w.call("GET", "/healthz"))[1] for w in (city, other)]
            return bodies[0] == bodies[1] and bodies[0]["federation"]["peers"]["370000"]["last_ok"] and bodies
        await wait_for(alike, 10, what="the same /healthz from both workers")
    finally:
        await stop_all(nodes)


@PG
async def test_a_grant_revoked_through_one_worker_is_refused_by_the_others(tmp_path, backend):
    config = init_home(tmp_path / "county", "370321", "桓台县", backend=backend)
    tokens = {"police": add_dept(config.home, POLICE, "桓台县公安局"), "civil": add_dept(config.home, CIVIL, "桓台县民政局"),
              "operator": add_dept(config.home, "OPERATOR", "桓台县大数据中心", "operator")}
    workers = {"a": await start_node(config)}
    try:
        workers["b"], workers["c"] = await start_worker(config), await start_worker(config)
        for w in workers.values():
            w.tokens.update(tokens)
        a, b, c = workers.values()
        code = await register(a, "police", {"type": "conditional", "condition": "用于社会救助审核"})
        status, app = await b.call("POST", "/api/v1/applications", "civil", json_body=apply_body(code, ops=["query"]))
        assert status == 201, app
        await c.call("POST", f"/api/v1/applications/{app['id']}/review", "operator", json_body={"decision": "accept"})
        status, doc = await a.call("POST", f"/api/v1/applications/{app['id']}/decision", "police",
                                   json_body={"decision": "approve", "valid_until": "2099-12-31"})
        assert status == 200, doc
        for w in (a, b, c):  # each worker checks the grant once: it is in every worker's cache now
            status, res = await query(w, "civil", code, {"key": PEOPLE[0]})
            assert status == 200 and res["records"][0]["phone"] == "13812345678", res
        status, view = await a.call("POST", f"/api/v1/grants/{doc['grant']['id']}/revoke", "police",
                                    json_body={"reason": "不再需要"})
        assert status == 200, view
        for w in (b, c):  # the very next call
            status, res = await query(w, "civil", code, {"key": PEOPLE[0]})
            assert status == 403 and error_code(res) in ("GRANT_REQUIRED", "REVOKED"), res
    finally:
        await stop_all(workers)


@PG
async def test_a_department_disabled_on_one_worker_is_refused_by_the_others_within_2_s(tmp_path, backend):
    config = init_home(tmp_path / "county", "370321", "桓台县", backend=backend)
    police, civil = add_dept(config.home, POLICE, "桓台县公安局"), add_dept(config.home, CIVIL, "桓台县民政局")
    workers = {"a": await start_node(config)}
    try:
        workers["b"] = await start_worker(config)
        a, b = workers.values()
        for token in (police, civil):
            assert (await b.call("GET", "/api/v1/catalog", token))[0] == 200  # each token's lookup cached at b
        loop = asyncio.get_running_loop()

        async def refused(token):
            return (await b.call("GET", "/api/v1/catalog", token))[0] == 401

        # Disabled through worker a (the service every way of disabling goes through) ...
        started = loop.time()
        await a.app[ACCOUNTS].revoke(POLICE)
        await wait_for(lambda: refused(police), 2.0, what="worker b refusing the disabled department")
        # ... well within the 2 s that b's own token cache would take: b was told.
        assert loop.time() - started < 1.0
        # ... and by `govnode dept revoke`, a command beside the running workers.
        started = loop.time()
        rc, _, err = await run_cli_full_async(["dept", "revoke", CIVIL, "--dir", str(config.home)])
        assert rc == 0, err
        await wait_for(lambda: refused(civil), 2.0, what="worker b refusing the department the command disabled")
        assert loop.time() - started < 1.5  # the command itself takes a moment to open the database
    finally:
        await stop_all(workers)


async def _background_holder(config) -> tuple[str, int] | None:
    rows = await raw_sql(config, "SELECT holder FROM leases WHERE name = 'background'")
    return (rows[0][0], int(rows[0][0].split(":")[1])) if rows else None


@PG
async def test_an_outbox_message_is_delivered_once_while_the_elected_worker_is_killed(tmp_path, backend):
    """淄博市 is served by `govnode run --workers 2`; its application for a province resource waits in its
    outbox. The worker doing the background work is killed (SIGKILL) while the province is still taking
    the message: the other worker takes the work over within 10 s and sends the message again, and the
    province handles it once."""
    nodes = await start_federation(tmp_path / "nodes", tree=CITY_TREE, backend=backend, subprocesses=("370300",),
                                   workers=2)
    try:
        province, city = nodes["370000"], nodes["370300"]
        province.tokens["police"] = await add_dept_async(province.config.home, "11370000MB0000001X", "山东省公安厅")
        city.tokens["civil"] = await add_dept_async(city.config.home, CIVIL, "淄博市民政局")
        code = await register(province, "police", {"type": "conditional", "condition": "用于社会救助审核"})

        async def replicated():
            return (await city.call("GET", f"/api/v1/catalog/{code}", "civil"))[0] == 200
        await wait_for(replicated, 20, what=f"{code} at the city")
        # /metrics is the node's, whichever worker answers: each call counted once, all calls in every scrape.
        for _ in range(12):  # a connection each: the kernel spreads them over the two workers
            assert (await city.call("GET", "/api/v1/catalog", "civil"))[0] == 200
        for _ in range(3):
            status, text = await city.call("GET", "/metrics")
            assert 'govnode_api_calls_total{op="catalog.search",outcome="ok",resource=""} 12.0' in text, text[:3000]

        fed = province.app[FEDERATION]
        real, taken = fed.handlers["application.submit"], []

        async def slow(env):  # the province takes its time with the first delivery
            taken.append(env["id"])
            if len(taken) == 1:
                await asyncio.sleep(3)
            return await real(env)

        fed.handlers["application.submit"] = slow
        holder, pid = await wait_for(lambda: _background_holder(city.config), 10, what="a worker doing the work")
        status, app = await city.call("POST", "/api/v1/applications", "civil", json_body=apply_body(code))
        assert status == 201, app
        await wait_for(lambda: taken, 10, what="the first delivery at the province")
        os.kill(pid, signal.SIGKILL)
        killed = asyncio.get_running_loop().time()

        async def taken_over():
            held = await _background_holder(city.config)
            return held is not None and held[0] != holder
        await wait_for(taken_over, 10, what="another worker taking the background work over")
        assert asyncio.get_running_loop().time() - killed < 10

        async def delivered():
            rows = await raw_sql(city.config, "SELECT count(*) FROM outbox WHERE kind = 'message'")
            return rows[0][0] == 0
        await wait_for(delivered, 20, what="the city's outbox emptied by the new worker")
        async def arrived():  # the first delivery, still being taken when its sender died, completes
            return (await province.call("GET", f"/api/v1/applications/{app['id']}", "police"))[0] == 200
        await wait_for(arrived, 10, what="the application at the province")
        # Sent twice (once by each worker), handled once: the second was acknowledged as a duplicate.
        assert len(taken) == 1, taken
        deliveries = await raw_sql(province.config, "SELECT count(*) FROM audit_log WHERE message_id = :m",
                                   {"m": taken[0]})
        assert deliveries[0][0] == 2, deliveries
        rows = await raw_sql(province.config, "SELECT count(*) FROM applications WHERE id = :i", {"i": app["id"]})
        assert rows[0][0] == 1
        # The outbox's send by the worker that took over is in the node's /metrics, whichever worker answers.
        sends = set()
        for _ in range(3):
            status, text = await city.call("GET", "/metrics")
            assert status == 200
            outbox = ("govnode_peer_call_seconds_count", (("endpoint", "outbox"), ("peer", "370000")))
            sends.add(samples(text).get(outbox, 0.0))
        assert len(sends) == 1 and sends.pop() >= 1, sends
    finally:
        await stop_all(nodes)
