"""The signed feeds kept in tables (node/federation/feed_tables.py), on a real SQLite database at the newest
schema: what a node stores of the documents it receives, what it refuses, and the changes it serves."""

from __future__ import annotations

import sqlalchemy as sa

from node.config import DatabaseConfig
from node.db import make_engine, upgrade, write_tx
from node.licences.service import LicenceFeed
from node.lists.service import ListFeed

A, B = "370321-LIC-A", "370322-LIC-B"


def licence(identifier: str, node: str, seq: int) -> dict:
    return {"identifier": identifier, "node": node, "dept": "11370321MB0000001X", "seq": seq, "status": "valid",
            "holder_digest": "0" * 64, "updated_at": 1_780_000_000_000 + seq}


async def test_each_key_keeps_its_newest_document_and_another_origin_is_refused(tmp_path):
    engine = make_engine(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/node.db"))
    try:
        await upgrade(engine)
        feed = LicenceFeed()
        async with write_tx(engine) as conn:
            # Of three changes of one licence in a page, the newest is stored, whatever their order.
            assert await feed.apply_many([licence(A, "370321", 1), licence(A, "370321", 3), licence(A, "370321", 2),
                                          licence(B, "370322", 1)], conn) == 2
        async with write_tx(engine) as conn:
            # Older than held: nothing; another origin under a held key: refused and logged; newer: stored.
            assert await feed.apply_many([licence(A, "370321", 2), licence(A, "370399", 9),
                                          licence(B, "370322", 2)], conn) == 1
        async with engine.connect() as conn:
            held = (await conn.execute(sa.text("SELECT identifier, node, seq FROM licence_index ORDER BY identifier"))).all()
            refusals = (await conn.execute(sa.text("SELECT identifier, node, reason FROM licence_refusals"))).all()
            changes = await feed.changes(conn, 0, 10, None, None)
            outside = await feed.changes(conn, 0, 10, None, {"370322"})
        assert [tuple(r) for r in held] == [(A, "370321", 3), (B, "370322", 2)]
        assert [tuple(r) for r in refusals] == [
            (A, "370399", f"{A} is held as a licence of node 370321, not of 370399")]
        # The feed serves each document as stored, in the order of its changes here.
        assert [(feed.document(r)["identifier"], feed.document(r)["seq"]) for r in changes] == [(A, 3), (B, 2)]
        assert [r.change_id for r in changes] == sorted(r.change_id for r in changes)
        assert [feed.document(r)["identifier"] for r in outside] == [A]
    finally:
        await engine.dispose()


async def test_a_feed_of_two_kinds_serves_their_changes_in_one_order(tmp_path):
    engine = make_engine(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/node.db"))
    issuer = {"node": "370300", "dept": "11370300MB0000001X", "name": "济南市发展和改革委员会"}

    def a_list(seq: int) -> dict:
        return {"type": "list", "code": "370300-0001", "node": "370300", "seq": seq, "deleted": False,
                "updated_at": seq, "issuer": issuer}

    def entry(n: int, seq: int) -> dict:
        return {"type": "list_entry", "id": f"E{n}", "list": "370300-0001", "node": "370300", "seq": seq,
                "deleted": False, "valid_from": "2026-01-01", "updated_at": seq, "subject": {"digest": "d" * 64}}

    try:
        await upgrade(engine)
        feed = ListFeed()
        async with write_tx(engine) as conn:
            assert await feed.apply_many([a_list(1), entry(1, 2)], conn) == 2
        async with write_tx(engine) as conn:
            assert await feed.apply_many([entry(2, 3), a_list(4)], conn) == 2
        async with engine.connect() as conn:
            changes = await feed.changes(conn, 0, 10, None, None)
            first_two = await feed.changes(conn, 0, 2, None, None)
        served = [(d.get("id") or d["code"], d["seq"]) for d in map(feed.document, changes)]
        # One counter numbers both kinds: the list's newer version (stored before E2 in the second page, as lists
        # come first) replaced its first and sits between the two entries.
        assert served == [("E1", 2), ("370300-0001", 4), ("E2", 3)], served
        assert [r.change_id for r in changes] == sorted(r.change_id for r in changes)
        assert [r.change_id for r in first_two] == [r.change_id for r in changes][:2]
    finally:
        await engine.dispose()
