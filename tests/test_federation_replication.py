"""Catalog and registry replication (SPEC §5, §7): change feeds with cursors, notify plus scheduled pulls,
per-origin seq, tombstones, refusal and logging of bad entries, and convergence of every node.

Replicated entries are checked with the `signedjson` package and keys taken from /federation/v1/node."""

from __future__ import annotations

import json

import pytest
from signedjson.key import decode_verify_key_base64
from signedjson.sign import verify_signed_json as sj_verify

from federation.signing import generate_signing_key, sign_json
from node.catalog.http import CATALOG
from node.catalog.service import CHANGE_COUNTER, row_of
from node.db import make_engine, next_counter, write_tx
from node.catalog import store as catalog_store
from support import (
    SAMPLE_ENTRY, TREE, add_dept_async, error_code, fed_call, raw_sql, signing_key_of, start_federation, stop_all,
    wait_for,
)

CODES = [code for code, _, _ in TREE]


def body(name: str, **kw) -> dict:  # noqa: ANN003
    return {**SAMPLE_ENTRY, "name": name, **kw}


def change(name: str) -> dict:
    """The body of a PUT: the content without the classification (fixed by the code)."""
    return {k: v for k, v in body(name).items() if k != "classification"}


async def catalog_of(node) -> dict[str, tuple]:  # noqa: ANN001
    rows = await raw_sql(node.config, "SELECT code, node, seq, version, deleted, entry FROM catalog_entries")
    return {r[0]: (r[1], r[2], r[3], bool(r[4]), json.loads(r[5])) for r in rows}


async def holds(node, code: str) -> dict | None:  # noqa: ANN001
    return (await catalog_of(node)).get(code, (None,) * 5)[4]


async def refusals(node) -> list[tuple]:  # noqa: ANN001
    return await raw_sql(node.config, "SELECT code, node, received_from, reason FROM catalog_refusals ORDER BY id")


async def tokens_for(nodes: dict) -> dict[str, str]:
    return {code: await add_dept_async(nodes[code].config.home, f"11{code}MB0000001X", f"{code}数据局")
            for code in CODES}


async def register(node, token: str, name: str, **kw) -> dict:  # noqa: ANN001, ANN003
    status, entry = await node.call("POST", "/api/v1/catalog", token, json_body=body(name, **kw))
    assert status == 201, entry
    return entry


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_every_node_converges_to_the_same_signed_catalog(tmp_path, backend):
    nodes = await start_federation(tmp_path, backend=backend)
    try:
        tokens = await tokens_for(nodes)
        mine = {}
        for code in CODES:
            for n in range(2):
                entry = await register(nodes[code], tokens[code], f"{code}的资源{n}")
                mine[entry["code"]] = entry
        # A change and a withdrawal (tombstone) at two origins.
        county_codes = [c for c, e in mine.items() if e["node"] == "370321"]
        status, changed = await nodes["370321"].call("PUT", f"/api/v1/catalog/{county_codes[0]}", tokens["370321"],
                                                     json_body=change("桓台县户籍人口（修订）"))
        assert status == 200 and changed["version"] == 2, changed
        mine[changed["code"]] = changed
        province_code = next(c for c, e in mine.items() if e["node"] == "370000")
        status, withdrawn = await nodes["370000"].call("DELETE", f"/api/v1/catalog/{province_code}",
                                                       tokens["370000"])
        assert status == 200 and withdrawn["deleted"] is True, withdrawn
        mine[province_code] = withdrawn

        expected = {code: (e["node"], e["seq"], e["version"], e["deleted"], e) for code, e in mine.items()}

        for code in CODES:
            async def converged(code: str = code) -> bool:
                return await catalog_of(nodes[code]) == expected

            await wait_for(converged, timeout=30, what=f"the catalog at {code}")
            assert await refusals(nodes[code]) == []

        # Every entry of every origin verifies with signedjson and its origin's key from /federation/v1/node.
        keys = {}
        for code in CODES:
            status, doc = await nodes[code].call("GET", "/federation/v1/node")
            for cert in doc["chain"]:
                keys[cert["node"]] = [decode_verify_key_base64("ed25519", k.split(":")[1], v)
                                      for k, v in cert["verify_keys"].items()]
        for code in CODES:
            for entry in (await catalog_of(nodes[code])).values():
                [key] = keys[entry[0]]
                sj_verify(entry[4], entry[0], key)

        # The department API shows the same entries everywhere, exactly as signed; the tombstone is hidden.
        for code in CODES:
            status, page = await nodes[code].call("GET", "/api/v1/catalog", tokens[code])
            assert status == 200 and page["total"] == len(mine) - 1, page
            status, got = await nodes[code].call("GET", f"/api/v1/catalog/{county_codes[0]}", tokens[code])
            assert status == 200 and got == changed
            status, got = await nodes[code].call("GET", f"/api/v1/catalog/{province_code}", tokens[code])
            assert status == 404, got

        # The registry converged too: every node holds every certificate.
        for code in CODES:
            rows = await raw_sql(nodes[code].config, "SELECT node FROM registry WHERE kind = 'cert'")
            assert sorted(r[0] for r in rows) == sorted(CODES)
    finally:
        await stop_all(nodes)


async def pull_feed(fed, target: str, requester: str, key, limit: int, since: str = "0") -> tuple[list, str]:
    """Follow a catalog change feed page by page, as `requester`; (entries, final cursor)."""
    entries, cursor = [], since
    for _ in range(100):
        status, page, _ = await fed_call(fed[target], "GET", f"/federation/v1/catalog/changes?since={cursor}"
                                         f"&limit={limit}", requester, key)
        assert status == 200, page
        assert set(page) == {"entries", "next", "more"} and len(page["entries"]) <= limit
        entries += page["entries"]
        assert int(page["next"]) >= int(cursor)
        cursor = page["next"]
        if not page["more"]:
            return entries, cursor
    raise AssertionError("the feed never ended")


async def test_feeds_page_with_cursors_and_send_each_side_what_it_lacks(tmp_path):
    nodes = await start_federation(tmp_path)
    try:
        tokens = await tokens_for(nodes)
        by_origin: dict[str, list[dict]] = {c: [] for c in CODES}
        for n in range(3):
            for code in CODES:
                by_origin[code].append(await register(nodes[code], tokens[code], f"{code}第{n}项"))
        for code in CODES:
            await wait_for(lambda code=code: _count(nodes[code], 12), timeout=30, what=f"12 entries at {code}")
        keys = {code: signing_key_of(nodes[code].config.home) for code in CODES}

        # The county serves its parent its own entries, in commit order, one page at a time.
        entries, cursor = await pull_feed(nodes, "370321", "370300", keys["370300"], limit=1)
        assert entries == by_origin["370321"]
        # From the end cursor there is nothing more, until the next change.
        again, same = await pull_feed(nodes, "370321", "370300", keys["370300"], limit=5, since=cursor)
        assert (again, same) == ([], cursor)
        newer = await register(nodes["370321"], tokens["370321"], "新增")
        again, _ = await pull_feed(nodes, "370321", "370300", keys["370300"], limit=5, since=cursor)
        assert again == [newer]

        await wait_for(lambda: _count(nodes["370300"], 13), what="the new entry at the city")
        # The city sends a child the entries whose origin is outside the child's subtree ...
        entries, _ = await pull_feed(nodes, "370300", "370321", keys["370321"], limit=2)
        assert {e["node"] for e in entries} == {"370303", "370300", "370000"}
        assert sorted(e["code"] for e in entries) == sorted(
            e["code"] for c in ("370303", "370300", "370000") for e in by_origin[c])
        # ... and its parent the entries of its own subtree.
        entries, _ = await pull_feed(nodes, "370300", "370000", keys["370000"], limit=500)
        assert {e["node"] for e in entries} == {"370321", "370303", "370300"}
        assert len(entries) == 10
        # Pages never repeat or skip: the commit order is the cursor order.
        assert len({e["code"] for e in entries}) == len(entries)

        # Each node keeps one cursor per neighbour and feed; the city's for the county is the county's head.
        await wait_for(lambda: _count(nodes["370000"], 13), what="the new entry at the province")
        every = {(p, f) for p in ("370000", "370321", "370303") for f in ("catalog", "registry", "licences", "figures")}

        async def cursors() -> list:
            rows = await raw_sql(nodes["370300"].config, "SELECT peer, feed, cursor FROM feed_cursors")
            return rows if {(r[0], r[1]) for r in rows} == every else []

        rows = await wait_for(cursors, what="a cursor per neighbour and feed at the city")
        head = await raw_sql(nodes["370321"].config, "SELECT value FROM counters WHERE name = :n",
                             {"n": CHANGE_COUNTER})
        assert dict(((r[0], r[1]), r[2]) for r in rows)[("370321", "catalog")] == str(head[0][0])

        # A bad cursor or limit is refused, in the SPEC §9 shape.
        for query in ("since=-1", "since=abc", "limit=0", "limit=100000"):
            status, page, _ = await fed_call(nodes["370321"], "GET", f"/federation/v1/catalog/changes?{query}",
                                             "370300", keys["370300"])
            assert (status, error_code(page)) == (400, "INVALID_INPUT"), (query, page)
    finally:
        await stop_all(nodes)


async def _count(node, n: int) -> bool:  # noqa: ANN001
    rows = await raw_sql(node.config, "SELECT count(*) FROM catalog_entries")
    return rows[0][0] == n


async def test_notify_alone_carries_changes_across_the_tree(tmp_path):
    """Scheduled pulls once an hour: a change reaches every node through notifications alone."""
    nodes = await start_federation(tmp_path, federation={"federation": {"pull_interval_s": 3600, "peer_timeout_s": 5}})
    try:
        tokens = await tokens_for(nodes)
        entry = await register(nodes["370321"], tokens["370321"], "通知传播")
        for code in CODES:
            await wait_for(lambda code=code: holds(nodes[code], entry["code"]), what=f"the entry at {code}")
        status, gone = await nodes["370321"].call("DELETE", f"/api/v1/catalog/{entry['code']}", tokens["370321"])
        assert status == 200
        for code in CODES:
            async def tombstone(code: str = code) -> bool:
                held = await holds(nodes[code], entry["code"])
                return held is not None and held["deleted"] and held["seq"] == gone["seq"]

            await wait_for(tombstone, what=f"the tombstone at {code}")
    finally:
        await stop_all(nodes)


async def test_scheduled_pulls_catch_up_when_no_notify_is_sent(tmp_path):
    """A change made without notifying anyone (a lost notify) still spreads, by the scheduled pulls."""
    nodes = await start_federation(tmp_path, federation={"federation": {"pull_interval_s": 1, "peer_timeout_s": 5}})
    try:
        tokens = await tokens_for(nodes)
        nodes["370321"].app[CATALOG].listeners.clear()  # this node no longer notifies its neighbours
        entry = await register(nodes["370321"], tokens["370321"], "静默登记")
        for code in CODES:
            await wait_for(lambda code=code: holds(nodes[code], entry["code"]), what=f"the entry at {code}")
    finally:
        await stop_all(nodes)


async def serve(node, entry: dict) -> int:  # noqa: ANN001
    """Put `entry` into a node's catalog as its newest change (tampering with the storage, as a faulty or
    malicious node would serve it); returns the change id."""
    engine = make_engine(node.config.database)
    try:
        async with write_tx(engine) as conn:
            change_id = await next_counter(conn, CHANGE_COUNTER)
            await catalog_store.upsert(conn, row_of(entry, change_id))
        return change_id
    finally:
        await engine.dispose()


async def notify(nodes, origin: str, target: str) -> None:  # noqa: ANN001
    status, body, _ = await fed_call(nodes[target], "POST", "/federation/v1/notify", origin,
                                     signing_key_of(nodes[origin].config.home), {"feed": "catalog"})
    assert status == 200, body


async def cursor_reached(node, peer: str, change_id: int) -> bool:  # noqa: ANN001
    rows = await raw_sql(node.config, "SELECT cursor FROM feed_cursors WHERE peer = :p AND feed = 'catalog'",
                         {"p": peer})
    return bool(rows) and int(rows[0][0]) >= change_id


async def test_older_seq_never_wins_and_bad_entries_are_refused_and_logged(tmp_path):
    nodes = await start_federation(tmp_path)
    county, city, province = nodes["370321"], nodes["370300"], nodes["370000"]
    try:
        tokens = await tokens_for(nodes)
        key = signing_key_of(county.config.home)
        first = await register(county, tokens["370321"], "原始版本")
        status, second = await county.call("PUT", f"/api/v1/catalog/{first['code']}", tokens["370321"],
                                           json_body=change("修订版本"))
        assert status == 200 and second["seq"] > first["seq"]
        for node in (city, province):
            await wait_for(lambda node=node: _is(node, second), what="the second version")

        # 1. The county serves the older version again (a lower seq, correctly signed): never applied.
        changed_at = await serve(county, first)
        await notify(nodes, "370321", "370300")
        await wait_for(lambda: cursor_reached(city, "370321", changed_at), what="the city's pull")
        assert await holds(city, first["code"]) == second

        # 2. A newer seq whose signature does not cover the changed content: refused, logged, good one kept.
        forged = {**second, "seq": second["seq"] + 10, "version": 3, "name": "篡改版本"}
        changed_at = await serve(county, forged)
        await notify(nodes, "370321", "370300")
        await wait_for(lambda: cursor_reached(city, "370321", changed_at), what="the city's pull")
        assert await holds(city, first["code"]) == second

        # 3. Correctly signed by the county, but the code's 顺序码 names another node: refused, logged.
        squatter = sign_json({**{k: v for k, v in second.items() if k != "signatures"},
                              "code": "101001/370303000777", "seq": second["seq"] + 11, "version": 1},
                             "370321", key)
        changed_at = await serve(county, squatter)
        await notify(nodes, "370321", "370300")
        await wait_for(lambda: cursor_reached(city, "370321", changed_at), what="the city's pull")
        assert await holds(city, squatter["code"]) is None

        # 4. Signed by another node's key while naming the county as origin: refused.
        alien = sign_json({k: v for k, v in {**second, "code": "101001/370321000888", "seq": second["seq"] + 12}
                           .items() if k != "signatures"}, "370321", signing_key_of(city.config.home))
        changed_at = await serve(county, alien)
        await notify(nodes, "370321", "370300")
        await wait_for(lambda: cursor_reached(city, "370321", changed_at), what="the city's pull")
        assert await holds(city, alien["code"]) is None

        logged = await refusals(city)
        assert [(r[0], r[1], r[2]) for r in logged] == [
            (first["code"], "370321", "370321"), ("101001/370303000777", "370321", "370321"),
            ("101001/370321000888", "370321", "370321")]
        assert "signature" in logged[0][3] and "does not start" in logged[1][3] and "signature" in logged[2][3]

        # The feed goes on past the refusals: a good change made afterwards arrives everywhere.
        third = await register(county, tokens["370321"], "之后的新资源")
        for code in CODES:
            await wait_for(lambda code=code: holds(nodes[code], third["code"]), what=f"the new entry at {code}")
        # Nothing bad went further than the city, and everyone kept the good version.
        for code in ("370000", "370303"):
            assert await refusals(nodes[code]) == []
            assert await holds(nodes[code], first["code"]) == second
            assert await holds(nodes[code], squatter["code"]) is None
    finally:
        await stop_all(nodes)


async def _is(node, entry: dict) -> bool:  # noqa: ANN001
    return await holds(node, entry["code"]) == entry


async def test_an_entry_of_an_unknown_origin_is_refused_and_does_not_block_the_feed(tmp_path):
    """A parent serving an entry whose origin no registry knows: the child looks the origin up once (it may
    just be late), then refuses and logs the entry, and goes on replicating what comes after it."""
    nodes = await start_federation(tmp_path)
    county, city = nodes["370321"], nodes["370300"]
    try:
        tokens = await tokens_for(nodes)
        template = await register(nodes["370303"], tokens["370303"], "模板")
        stranger = generate_signing_key("1")
        bogus = sign_json({**{k: v for k, v in template.items() if k != "signatures"},
                           "code": "101001/370399000001", "node": "370399", "seq": 1}, "370399", stranger)
        changed_at = await serve(city, bogus)
        await notify(nodes, "370300", "370321")
        after = await register(nodes["370000"], tokens["370000"], "之后登记")
        await wait_for(lambda: holds(county, after["code"]), timeout=20, what="the later entry at the county")
        assert await cursor_reached(county, "370300", changed_at)
        assert await holds(county, bogus["code"]) is None
        logged = await refusals(county)
        assert [(r[0], r[1], r[2]) for r in logged] == [("101001/370399000001", "370399", "370300")]
        assert "370399" in logged[0][3]
    finally:
        await stop_all(nodes)
