"""What the federation keeps in the node's database: trust state, the registry feed, join invites,
seen nonces and message ids (replay protection that survives restarts), feed cursors, the outbox."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.db import metadata, next_counter, on_conflict_statement, read_counter_sync
from node.ids import now_ms

REGISTRY_COUNTER = "registry_change"

# Small named documents: the anchor, this node's own certificate, its parent.
federation_state = sa.Table(
    "federation_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Certificates and revocations this node knows, as a change feed (SPEC §5 registry).
registry = sa.Table(
    "registry",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),  # "cert:<node>" or "revocation:<node>:<key id>"
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("node", sa.String(6), nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Column("change_id", sa.BigInteger, nullable=False, unique=True),
)

invites = sa.Table(
    "invites",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("node", sa.String(6), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("used_at", sa.BigInteger, nullable=True),
)

seen_nonces = sa.Table(
    "seen_nonces",
    metadata,
    sa.Column("origin", sa.String(6), primary_key=True),
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("ts", sa.BigInteger, nullable=False, index=True),
)

seen_messages = sa.Table(
    "seen_messages",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    # When the claim's window starts (it is kept for the message window from then): when the envelope was
    # seen, or earlier for one that expires before the window ends (ReplayGuard.claim_message).
    sa.Column("at", sa.BigInteger, nullable=False, index=True),
    # An asynchronous message's claim commits before it is acted on; `applied` commits with what it stored
    # (or queued, at a relay). A node killed between the two keeps the claim without the effect, and the
    # sender's retry must then be acted on, not acknowledged as a duplicate (the fault drill lost
    # feedback and applications that way).
    sa.Column("applied", sa.Boolean, nullable=False, server_default=sa.false()),
)

feed_cursors = sa.Table(
    "feed_cursors",
    metadata,
    sa.Column("peer", sa.String(6), primary_key=True),
    sa.Column("feed", sa.String(32), primary_key=True),
    sa.Column("cursor", sa.String(64), nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("peer", sa.String(6), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "notify" or "message"
    sa.Column("dedup", sa.String(80), nullable=True, unique=True),  # e.g. one pending notify per peer and feed
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
    sa.Column("last_error", sa.String(400), nullable=True),
)


# The neighbours' health as this node's workers saw it (/healthz): one row a neighbour, written when it
# changes, so that every worker answers /healthz alike.
peer_status = sa.Table(
    "peer_status",
    metadata,
    sa.Column("peer", sa.String(6), primary_key=True),
    sa.Column("reachable", sa.Boolean, nullable=True),
    sa.Column("last_ok", sa.BigInteger, nullable=True),
    sa.Column("last_error", sa.String(400), nullable=True),
    sa.Column("last_failure", sa.BigInteger, nullable=True),
)


# State --------------------------------------------------------------------------------------------

async def get_state(conn: AsyncConnection, name: str) -> Any:
    res = await conn.execute(sa.select(federation_state.c.value).where(federation_state.c.name == name))
    v = res.scalar()
    return None if v is None else json.loads(v)


async def set_state(conn: AsyncConnection, name: str, value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False)
    res = await conn.execute(sa.update(federation_state).where(federation_state.c.name == name).values(value=text))
    if not res.rowcount:
        await conn.execute(sa.insert(federation_state).values(name=name, value=text))


# Registry -----------------------------------------------------------------------------------------

def registry_id(doc: dict[str, Any]) -> str:
    if doc["type"] == "node_cert":
        return f"cert:{doc['node']}"
    return f"revocation:{doc['node']}:{doc['key_id']}"


async def put_registry(conn: AsyncConnection, doc: dict[str, Any]) -> int:
    """Store a certificate or revocation (replacing the older one of the same id); returns its change id."""
    change_id = await next_counter(conn, REGISTRY_COUNTER)
    rid = registry_id(doc)
    row = {"kind": "cert" if doc["type"] == "node_cert" else "revocation", "node": doc["node"],
           "doc": json.dumps(doc, ensure_ascii=False), "change_id": change_id}
    res = await conn.execute(sa.update(registry).where(registry.c.id == rid).values(**row))
    if not res.rowcount:
        await conn.execute(sa.insert(registry).values(id=rid, **row))
    return change_id


async def all_registry(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = (await conn.execute(sa.select(registry.c.doc).order_by(registry.c.change_id))).all()
    return [json.loads(r[0]) for r in rows]


async def registry_changes(conn: AsyncConnection, since: int, limit: int) -> list[sa.Row]:
    q = sa.select(registry.c.doc, registry.c.change_id).where(registry.c.change_id > since)
    return list((await conn.execute(q.order_by(registry.c.change_id).limit(limit))).all())


# Invites ------------------------------------------------------------------------------------------

async def add_invite(conn: AsyncConnection, digest: str, node: str, created_at: int, expires_at: int) -> None:
    await conn.execute(sa.insert(invites).values(digest=digest, node=node, created_at=created_at, expires_at=expires_at))


async def use_invite(conn: AsyncConnection, digest: str, now: int) -> sa.Row | None:
    """Mark an unused, unexpired invite used and return it; None if there is no such invite."""
    row = (await conn.execute(sa.select(invites).where(invites.c.digest == digest))).first()
    if row is None or row.used_at is not None or row.expires_at <= now:
        return None
    res = await conn.execute(
        sa.update(invites).where(invites.c.digest == digest, invites.c.used_at.is_(None)).values(used_at=now)
    )
    return row if res.rowcount == 1 else None


# Replay protection --------------------------------------------------------------------------------

def claim_seen(conn: sa.Connection, nonces: list[dict[str, Any]],
               messages: list[dict[str, Any]]) -> tuple[set[tuple[str, str]], set[str]]:
    """Insert nonces and message ids not stored yet; returns those this statement inserted (the claims it
    won). Another transaction's uncommitted insert of the same key makes this one wait for its outcome."""
    won_nonces: set[tuple[str, str]] = set()
    won_messages: set[str] = set()
    if nonces:
        stmt = on_conflict_statement(conn.dialect.name, seen_nonces, "claim", lambda ins: ins.on_conflict_do_nothing()
                                     .returning(seen_nonces.c.origin, seen_nonces.c.nonce))
        won_nonces = {(r[0], r[1]) for r in conn.execute(stmt, nonces).all()}
    if messages:
        stmt = on_conflict_statement(conn.dialect.name, seen_messages, "claim", lambda ins: ins.on_conflict_do_nothing()
                                     .returning(seen_messages.c.id))
        won_messages = {r[0] for r in conn.execute(stmt, messages).all()}
    return won_nonces, won_messages


class AlreadyApplied(Exception):
    """What the message carries is stored already (by an earlier delivery, or another worker's at once):
    the transaction that would store it again rolls back and the message is answered as a duplicate."""


def mark_applied(conn: sa.Connection, message_id: str) -> None:
    """In the transaction that stores what a message carries: mark it applied, or raise AlreadyApplied.
    The row lock (PostgreSQL; SQLite's write lock does the same) makes a second worker acting on the same
    message wait for the first's commit, then see it applied."""
    row = conn.execute(sa.select(seen_messages.c.applied).where(seen_messages.c.id == message_id)
                       .with_for_update()).first()
    if row is not None and row[0]:
        raise AlreadyApplied(message_id)
    if row is None:  # pruned meanwhile (a claim older than its window): the mark alone keeps it from repeating
        conn.execute(sa.insert(seen_messages).values(id=message_id, at=now_ms(), applied=True))
    else:
        conn.execute(sa.update(seen_messages).where(seen_messages.c.id == message_id).values(applied=True))


async def message_applied(conn: AsyncConnection, message_id: str) -> bool:
    row = (await conn.execute(sa.select(seen_messages.c.applied).where(seen_messages.c.id == message_id))).first()
    return bool(row is not None and row[0])


async def load_seen(conn: AsyncConnection, nonces_since: int, messages_since: int) -> tuple[list[sa.Row], list[sa.Row]]:
    n = (await conn.execute(sa.select(seen_nonces).where(seen_nonces.c.ts >= nonces_since))).all()
    m = (await conn.execute(sa.select(seen_messages).where(seen_messages.c.at >= messages_since))).all()
    return list(n), list(m)


async def prune_seen(conn: AsyncConnection, nonces_before: int, messages_before: int) -> None:
    await conn.execute(sa.delete(seen_nonces).where(seen_nonces.c.ts < nonces_before))
    await conn.execute(sa.delete(seen_messages).where(seen_messages.c.at < messages_before))


# Feed cursors -------------------------------------------------------------------------------------

async def get_cursor(conn: AsyncConnection, peer: str, feed: str) -> str | None:
    res = await conn.execute(
        sa.select(feed_cursors.c.cursor).where(feed_cursors.c.peer == peer, feed_cursors.c.feed == feed)
    )
    return res.scalar()


async def set_cursor(conn: AsyncConnection, peer: str, feed: str, cursor: str) -> None:
    res = await conn.execute(
        sa.update(feed_cursors).where(feed_cursors.c.peer == peer, feed_cursors.c.feed == feed).values(cursor=cursor)
    )
    if not res.rowcount:
        await conn.execute(sa.insert(feed_cursors).values(peer=peer, feed=feed, cursor=cursor))


# Outbox -------------------------------------------------------------------------------------------

async def enqueue(conn: AsyncConnection, peer: str, kind: str, payload: dict[str, Any], now: int,
                  dedup: str | None = None) -> None:
    text = json.dumps(payload, ensure_ascii=False)
    if dedup is not None:
        res = await conn.execute(
            sa.update(outbox).where(outbox.c.dedup == dedup).values(payload=text, next_attempt_at=now)
        )
        if res.rowcount:
            return
    await conn.execute(sa.insert(outbox).values(
        peer=peer, kind=kind, dedup=dedup, payload=text, created_at=now, attempts=0, next_attempt_at=now,
    ))


def _notify_upsert(dialect: str) -> Any:
    """INSERT … ON CONFLICT (dedup) DO UPDATE: one pending notify per peer and feed, carrying the newest head."""
    return on_conflict_statement(dialect, outbox, "notify", lambda ins: ins.on_conflict_do_update(
        index_elements=[outbox.c.dedup],
        set_={"payload": ins.excluded.payload, "next_attempt_at": ins.excluded.next_attempt_at},
    ))


def enqueue_notifies(conn: sa.Connection, items: list[tuple[list[str], str, str, int]]) -> None:
    """Journal writer: for each (peers, feed, the feed's counter, now), a notify to each peer with the feed's
    head as committed (SPEC §5 {"feed", "next"}), coalesced per peer and feed. With the head in it, a notify
    coalesced into a row while that row is being delivered changes its payload, so the delivery does not
    delete it (see `delete_delivered`)."""
    rows: dict[str, dict[str, Any]] = {}
    heads: dict[str, int] = {}
    for peers, feed, counter, now in items:
        if counter not in heads:
            heads[counter] = read_counter_sync(conn, counter)
        text = json.dumps({"feed": feed, "next": str(heads[counter])}, ensure_ascii=False)
        for p in peers:  # the last of a batch wins: one row per key in the statement
            rows[f"notify:{p}:{feed}"] = {"peer": p, "kind": "notify", "dedup": f"notify:{p}:{feed}", "payload": text,
                                          "created_at": now, "attempts": 0, "next_attempt_at": now}
    if rows:
        conn.execute(_notify_upsert(conn.dialect.name), list(rows.values()))


async def due(conn: AsyncConnection, peer: str, now: int, limit: int) -> list[sa.Row]:
    q = (sa.select(outbox).where(outbox.c.peer == peer, outbox.c.next_attempt_at <= now)
         .order_by(outbox.c.id).limit(limit))
    return list((await conn.execute(q)).all())


async def next_due_at(conn: AsyncConnection, peer: str) -> int | None:
    res = await conn.execute(sa.select(sa.func.min(outbox.c.next_attempt_at)).where(outbox.c.peer == peer))
    return res.scalar()


_DELETE_DELIVERED = sa.delete(outbox).where(outbox.c.id == sa.bindparam("row_id"),
                                            outbox.c.payload == sa.bindparam("sent_payload"))


def delete_delivered(conn: sa.Connection, rows: list[tuple[int, str]]) -> None:
    """Journal writer: remove rows delivered, each only if unchanged (a notify coalesced into it meanwhile
    must still be sent)."""
    conn.execute(_DELETE_DELIVERED, [{"row_id": row_id, "sent_payload": payload} for row_id, payload in rows])


async def defer(conn: AsyncConnection, outbox_id: int, attempts: int, at: int, error: str) -> None:
    await conn.execute(sa.update(outbox).where(outbox.c.id == outbox_id).values(
        attempts=attempts, next_attempt_at=at, last_error=error[:400]))


async def retry_now(conn: AsyncConnection, now: int, peer: str | None = None) -> int:
    """Make every row waiting out a back-off (for `peer`, or for all peers) due now; returns how many."""
    q = sa.update(outbox).where(outbox.c.next_attempt_at > now)
    if peer is not None:
        q = q.where(outbox.c.peer == peer)
    return (await conn.execute(q.values(next_attempt_at=now))).rowcount or 0


async def outbox_depths(conn: AsyncConnection) -> dict[str, int]:
    rows = (await conn.execute(sa.select(outbox.c.peer, sa.func.count()).group_by(outbox.c.peer))).all()
    return {r[0]: int(r[1]) for r in rows}


# Peer status ------------------------------------------------------------------------------------------

def put_peer_status(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Journal writer: each neighbour's newest status (the last of a batch wins)."""
    newest = {r["peer"]: r for r in rows}
    stmt = on_conflict_statement(conn.dialect.name, peer_status, "status", lambda ins: ins.on_conflict_do_update(
        index_elements=[peer_status.c.peer],
        set_={c: ins.excluded[c] for c in ("reachable", "last_ok", "last_error", "last_failure")},
    ))
    conn.execute(stmt, [newest[p] for p in sorted(newest)])


async def peer_statuses(conn: AsyncConnection) -> dict[str, dict[str, Any]]:
    rows = (await conn.execute(sa.select(peer_status))).all()
    return {r.peer: {"reachable": r.reachable, "last_ok": r.last_ok, "last_error": r.last_error,
                     "last_failure": r.last_failure} for r in rows}
