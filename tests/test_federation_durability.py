"""The durable outbox (DESIGN: an outage delays and never loses): the city runs as a real `govnode run`
subprocess and is killed with SIGKILL while its county registers entries and while messages wait in
outboxes; after it comes back on the same home and port, every node converges and nothing is lost.

The province and the counties run in this process (real nodes on loopback all the same), so the province's
`application.submit` handler can record what it receives."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from federation.envelope import make_envelope, sign_envelope
from node.db import next_counter_sync, write_tx
from node.errors import ApiError
from node.federation.http import FEDERATION
from node.supervisor import Supervisor
from node.ids import now_ms
from support import (
    SAMPLE_ENTRY, add_dept_async, raw_sql, seal_body, signing_key_of, start_federation, start_node, stop_all, wait_for,
)

CODES = ("370000", "370300", "370321", "370303")


class Inbox:
    """The province's `application.submit` handler: every delivery, duplicates included."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.bodies: dict[str, dict] = {}

    async def __call__(self, env: dict) -> dict:
        self.ids.append(env["id"])
        self.bodies[env["id"]] = env["body"]
        return {"received": env["id"]}

    def install(self, node) -> None:  # noqa: ANN001
        node.app[FEDERATION].handlers["application.submit"] = self


async def codes_at(node) -> dict[str, tuple]:  # noqa: ANN001
    rows = await raw_sql(node.config, "SELECT code, seq, deleted FROM catalog_entries")
    return {r[0]: (r[1], bool(r[2])) for r in rows}


async def outbox_rows(node, kind: str | None = None) -> list[tuple]:  # noqa: ANN001
    q = "SELECT peer, kind, payload FROM outbox"
    return await raw_sql(node.config, q + (" WHERE kind = :k" if kind else ""), {"k": kind} if kind else None)


async def register(node, token: str, name: str) -> dict:  # noqa: ANN001
    status, entry = await node.call("POST", "/api/v1/catalog", token, json_body={**SAMPLE_ENTRY, "name": name})
    assert status == 201, entry
    return entry


async def converged(nodes: dict, expected: dict[str, tuple]) -> bool:
    for code in CODES:
        if await codes_at(nodes[code]) != expected:
            return False
    return True


async def submit(county, n: int, tag: str) -> list[str]:  # noqa: ANN001
    return [await county.app[FEDERATION].send_async("application.submit", "370000", {"tag": tag, "n": i})
            for i in range(n)]


async def test_city_killed_while_a_county_registers_and_messages_wait(tmp_path):
    nodes = await start_federation(tmp_path, subprocesses=("370300",))
    city, county = nodes["370300"], nodes["370321"]
    inbox = Inbox()
    inbox.install(nodes["370000"])
    try:
        token = await add_dept_async(county.config.home, "11370321MB0000001X", "桓台县公安局")
        sibling = await add_dept_async(nodes["370303"].config.home, "11370303MB0000001X", "张店区公安局")
        entries: dict[str, dict] = {}
        first = await register(county, token, "断电前")
        entries[first["code"]] = first
        await wait_for(lambda: converged(nodes, {first["code"]: (first["seq"], False)}), timeout=20,
                       what="the first entry everywhere")

        # A hung city (stopped, its socket still accepting): calls through it time out within their expiry.
        city.pause()
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(ApiError) as err:
                await county.app[FEDERATION].call("licence.verify", "370000", {}, ttl_ms=2000)
            assert (err.value.code, err.value.details["hop"]) == ("PEER_TIMEOUT", "370300")
            assert asyncio.get_running_loop().time() - started < 2.5
        finally:
            city.resume()

        # The county keeps registering; the city is killed in the middle of it.
        async def keep_registering() -> None:
            for i in range(12):
                entry = await register(county, token, f"持续登记{i}")
                entries[entry["code"]] = entry
                await asyncio.sleep(0.05)

        registering = asyncio.create_task(keep_registering())
        await wait_for(lambda: len(entries) >= 4, what="a few registrations")
        city.kill()
        # While the city is dead: messages wait in the county's outbox, the other county registers too.
        sent = await submit(county, 5, "city-dead")
        other = await register(nodes["370303"], sibling, "张店区在城市断线时登记")
        entries[other["code"]] = other
        await registering
        pending = await outbox_rows(county, "message")
        assert sorted(json.loads(r[2])["id"] for r in pending) == sorted(sent)
        assert all(r[0] == "370300" for r in pending)
        assert inbox.ids == []

        await city.start()  # same home, same port
        expected = {code: (e["seq"], e["deleted"]) for code, e in entries.items()}
        await wait_for(lambda: converged(nodes, expected), timeout=30, what="every catalog after the restart")
        await wait_for(lambda: set(inbox.ids) == set(sent), timeout=30, what="the queued messages at the province")
        assert sorted(inbox.ids) == sorted(sent)  # each delivered once
        assert all(inbox.bodies[i]["tag"] == "city-dead" for i in sent)
        for code in CODES:
            await wait_for(lambda code=code: _no_messages(nodes[code]), timeout=20, what=f"an empty outbox at {code}")
    finally:
        await stop_all(nodes)


async def _no_messages(node) -> bool:  # noqa: ANN001
    return await outbox_rows(node, "message") == []


async def test_messages_queued_at_a_killed_city_are_delivered_after_it_returns(tmp_path):
    """Messages accepted by the city (queued for the province, which is down) survive the city's SIGKILL."""
    nodes = await start_federation(tmp_path, subprocesses=("370300",))
    city, county, province = nodes["370300"], nodes["370321"], nodes["370000"]
    inbox = Inbox()
    try:
        token = await add_dept_async(county.config.home, "11370321MB0000001X", "桓台县公安局")
        await province.stop()
        sent = await submit(county, 6, "province-down")
        # The city takes them from the county and keeps them in its own outbox for the province.
        await wait_for(lambda: _no_messages(county), timeout=20, what="the county's outbox to drain")

        async def queued_at_city() -> bool:
            rows = await outbox_rows(city, "message")
            return sorted(json.loads(r[2])["id"] for r in rows if r[0] == "370000") == sorted(sent)

        await wait_for(queued_at_city, timeout=20, what="the messages in the city's outbox")
        entries = {}
        city.kill()
        for i in range(3):
            entry = await register(county, token, f"城市宕机时登记{i}")
            entries[entry["code"]] = entry

        nodes["370000"] = province = await start_node(province.config)
        inbox.install(province)
        await city.start()
        await wait_for(lambda: set(inbox.ids) == set(sent), timeout=30, what="the city's queued messages")
        assert sorted(inbox.ids) == sorted(sent)
        expected = {code: (e["seq"], e["deleted"]) for code, e in entries.items()}
        await wait_for(lambda: converged(nodes, expected), timeout=30, what="every catalog")
        for code in CODES:
            await wait_for(lambda code=code: _no_messages(nodes[code]), timeout=20, what=f"an empty outbox at {code}")
        # The city's audit log shows it relayed (queued) each message once, before and after its death.
        rows = await raw_sql(city.config, "SELECT message_id FROM audit_log WHERE action = 'federation.relay'")
        assert sorted(r[0] for r in rows) == sorted(sent)
    finally:
        await stop_all(nodes)


async def test_an_expired_message_is_dropped_and_does_not_block_the_outbox(tmp_path):
    """A message that expired while it waited is not sent (the next hop would refuse it forever); the origin
    is told, and what was queued behind it goes on."""
    nodes = await start_federation(tmp_path)
    county = nodes["370321"]
    inbox, answers = Inbox(), []
    inbox.install(nodes["370000"])

    async def on_answer(request: dict, reply: dict) -> None:
        answers.append((request["id"], reply))

    county.app[FEDERATION].reply_handlers["application.submit"] = on_answer
    try:
        county_key, province_key = signing_key_of(county.config.home), signing_key_of(nodes["370000"].config.home)
        body = seal_body({"tag": "stale"}, "370321", county_key, "370000", province_key)
        stale = sign_envelope(make_envelope("application.submit", "370321", "370000", body,
                                            ttl_ms=1000, now_ms=now_ms() - 60_000), "370321", county_key)
        await raw_sql(county.config, "INSERT INTO outbox (peer, kind, payload, created_at, attempts, next_attempt_at) "
                                     "VALUES ('370300', 'message', :p, :t, 0, :t)",
                      {"p": json.dumps(stale, ensure_ascii=False), "t": now_ms()})
        [fresh] = await submit(county, 1, "fresh")  # queued behind the stale one; wakes the sender
        await wait_for(lambda: inbox.ids == [fresh], timeout=20, what="the fresh message at the province")
        await wait_for(lambda: _no_messages(county), what="an empty outbox at the county")
        assert stale["id"] not in inbox.ids
        [(request_id, answer)] = [a for a in answers if a[0] == stale["id"]]
        assert answer["kind"] == "error" and answer["body"]["error"]["code"] == "PEER_TIMEOUT"
    finally:
        await stop_all(nodes)


async def test_a_message_queued_before_its_origin_rotated_its_key_is_delivered(tmp_path):
    """An outage delays and never loses, a key rotation included: an envelope signed with the county's old
    key, still waiting in its outbox when the county rotates, is delivered once the province knows only the
    new certificate (the old key verifies what it signed before it expired, SPEC §3)."""
    nodes = await start_federation(tmp_path)
    county, province = nodes["370321"], nodes["370000"]
    inbox = Inbox()
    inbox.install(province)
    try:
        old_key = signing_key_of(county.config.home)
        body = seal_body({"tag": "before rotation"}, "370321", old_key, "370000", signing_key_of(province.config.home))
        waiting = sign_envelope(make_envelope("application.submit", "370321", "370000", body), "370321", old_key)
        # Held back (due in an hour) while the county rotates.
        await raw_sql(county.config, "INSERT INTO outbox (peer, kind, payload, created_at, attempts, next_attempt_at) "
                                     "VALUES ('370300', 'message', :p, :t, 0, :later)",
                      {"p": json.dumps(waiting, ensure_ascii=False), "t": now_ms(), "later": now_ms() + 3_600_000})
        cert = await county.app[FEDERATION].rotate_key()
        [new_key_id] = cert["verify_keys"]
        assert new_key_id != old_key.key_id

        def province_knows_only_the_new_key() -> bool:
            known = province.app[FEDERATION].trust.certificate("370321")
            return known is not None and set(known["verify_keys"]) == {new_key_id}

        await wait_for(province_knows_only_the_new_key, timeout=20, what="the county's new certificate at the province")
        await raw_sql(county.config, "UPDATE outbox SET next_attempt_at = :t WHERE kind = 'message'", {"t": now_ms()})
        county.app[FEDERATION].outbox.wake("370300")
        await wait_for(lambda: inbox.ids == [waiting["id"]], timeout=20, what="the waiting message at the province")
        await wait_for(lambda: _no_messages(county), what="an empty outbox at the county")
        # The county's new key signs what it sends from now on.
        [fresh] = await submit(county, 1, "after rotation")
        await wait_for(lambda: inbox.ids == [waiting["id"], fresh], timeout=20, what="a message signed with the new key")
        assert set(inbox.bodies[fresh]) == {"tag", "n"}
    finally:
        await stop_all(nodes)


async def test_a_failed_background_step_is_logged_with_its_cause(caplog):
    """Pulls, catch-ups and notifies run in the background; one that fails (a busy database, say) is
    logged with its cause by the node, not left to asyncio's "exception was never retrieved"."""
    tasks = Supervisor("370300", logging.getLogger("govnode.federation"))  # what the federation spawns with

    async def catch_up_with_parent():
        raise RuntimeError("database is locked")

    task = tasks.spawn(catch_up_with_parent())
    await asyncio.gather(task, return_exceptions=True)
    assert tasks.tasks == set()
    [rec] = [r for r in caplog.records if "background step" in r.getMessage()]
    assert rec.levelname == "ERROR" and "catch_up_with_parent" in rec.getMessage()
    assert "370300" in rec.getMessage() and rec.exc_info[0] is RuntimeError


class StoringInbox(Inbox):
    """An `application.submit` handler that stores what it receives, as the real handlers do (a write made
    during the delivery, so it commits with the message's applied mark)."""

    def __init__(self, node) -> None:  # noqa: ANN001
        super().__init__()
        self.engine = node.app[FEDERATION].engine

    async def __call__(self, env: dict) -> dict:
        async with write_tx(self.engine) as conn:
            await conn.run_sync(next_counter_sync, "test-inbox")
        return await super().__call__(env)


async def test_a_message_claimed_by_a_node_killed_before_it_stored_it_is_acted_on_when_retried(tmp_path):
    """The fault drill's loss: a node commits an envelope's id as seen, then is killed before it stores
    (destination) or queues (relay) what the envelope carries. The sender's retry must be acted on, not
    acknowledged as a duplicate; a second retry after that is a duplicate, acted on once in all."""
    nodes = await start_federation(tmp_path)
    county, city, province = nodes["370321"], nodes["370300"], nodes["370000"]
    inbox = StoringInbox(province)
    inbox.install(province)
    try:
        body = seal_body({"tag": "claimed, then killed"}, "370321", signing_key_of(county.config.home), "370000",
                         signing_key_of(province.config.home))
        env = sign_envelope(make_envelope("application.submit", "370321", "370000", body), "370321",
                            signing_key_of(county.config.home))
        # What a SIGKILL between the claim's commit and the effect's leaves, at the relay and at the destination.
        for node in (city, province):
            await raw_sql(node.config, "INSERT INTO seen_messages (id, at) VALUES (:id, :t)",
                          {"id": env["id"], "t": now_ms()})
        for _ in range(2):  # the retry, then one more
            await raw_sql(county.config, "INSERT INTO outbox (peer, kind, payload, created_at, attempts, next_attempt_at) "
                                         "VALUES ('370300', 'message', :p, :t, 0, :t)",
                          {"p": json.dumps(env, ensure_ascii=False), "t": now_ms()})
            county.app[FEDERATION].outbox.wake("370300")
            await wait_for(lambda: _no_messages(county), what="the county's outbox sent")
            await wait_for(lambda: _no_messages(city), what="the city's outbox sent")
        await wait_for(lambda: inbox.ids == [env["id"]], timeout=20, what="the message stored at the province")
        await asyncio.sleep(0.5)  # room for a wrong second application
        assert inbox.ids == [env["id"]]
        [(applied,)] = await raw_sql(province.config, "SELECT applied FROM seen_messages WHERE id = :id",
                                     {"id": env["id"]})
        assert applied
    finally:
        await stop_all(nodes)


async def test_a_relay_that_stops_answers_the_calls_it_is_passing_on_and_does_not_wait_for_them(tmp_path):
    """A county's call waits at the province (a subscriber's long poll does, for up to 10 s) while the city,
    which relays it, is stopped: the city gives the call a moment, then answers it 503 UNAVAILABLE itself and
    exits, instead of holding its stop until the province answers (or until the server's 10 s bound)."""
    nodes = await start_federation(tmp_path, subprocesses=("370300",))
    city, county = nodes["370300"], nodes["370321"]
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(env: dict) -> dict:  # the province answers this call when the test has seen the city stop
        entered.set()
        await asyncio.wait_for(release.wait(), 60)
        return {}

    nodes["370000"].app[FEDERATION].handlers["service.call"] = slow
    try:
        call = asyncio.create_task(county.app[FEDERATION].call("service.call", "370000", {"op": "changes"}))
        await asyncio.wait_for(entered.wait(), 20)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await city.stop()
        stopped_in = loop.time() - started
        assert city.proc.returncode == 0, city.log_tail()
        with pytest.raises(ApiError) as refused:
            await asyncio.wait_for(call, 5)
        assert refused.value.code == "UNAVAILABLE" and refused.value.details.get("hop") == "370300", refused.value
        assert "370300 is stopping" in refused.value.message
        # Far inside the server's own 10 s bound for open requests: the relay did not wait for the province.
        assert stopped_in < 6, stopped_in
    finally:
        release.set()
        await stop_all(nodes)
