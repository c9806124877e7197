"""The append-only audit log: one row a call, each holding the hash of the row before it."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.db import metadata, next_counter_sync

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.BigInteger, nullable=False, index=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("message_id", sa.String(26), nullable=True, index=True),
    sa.Column("actor", sa.String(80), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("path", sa.String(400), nullable=False),
    sa.Column("resource", sa.String(40), nullable=True),
    sa.Column("keys_digest", sa.String(64), nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("details", sa.Text, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("user", sa.String(32), nullable=True),  # the person, when a person acted (portal)
    # On PostgreSQL each process appends to a segment of the chain of its own (node.audit.service): the
    # segment, and the record's place in it (1, 2, …); both empty on SQLite and before revision 0015.
    sa.Column("segment", sa.String(40), nullable=True),
    sa.Column("segment_seq", sa.BigInteger, nullable=True),
    sa.Index("ix_audit_log_segment", "segment", "segment_seq", unique=True),
    # The auditor's filters page newest first: each index holds the column and the sequence number, so a
    # filtered page is one ordered index range however long the log is. With the column alone, SQLite read
    # every record of the department and sorted them: 68 ms a page against 1 ms unfiltered, on 300,000
    # records (scripts/bench_audit_filters.py).
    sa.Index("ix_audit_log_actor_seq", "actor", "seq"),
    sa.Index("ix_audit_log_resource_seq", "resource", "seq"),
    sa.Index("ix_audit_log_user_seq", "user", "seq"),
    sa.Index("ix_audit_log_action_seq", "action", "seq"),
    sa.Index("ix_audit_log_outcome_seq", "outcome", "seq"),
)

# The fields a record's hash covers, in a fixed order (prev_hash is chained in separately).
HASHED_FIELDS = (
    "seq", "at", "request_id", "message_id", "actor", "role", "action", "method", "path",
    "resource", "keys_digest", "outcome", "status", "latency_ms", "details",
)
# Hashed after those only when set, so the records made before people existed still verify.
HASHED_IF_SET = ("user",)


# The journal's statements, built once (building costs more than running them).
_HASH_AT = sa.select(audit_log.c.hash).where(audit_log.c.seq == sa.bindparam("seq"))
_INSERT = sa.insert(audit_log)


_SEGMENT_HASH_AT = sa.select(audit_log.c.hash).where(audit_log.c.segment == sa.bindparam("segment"),
                                                      audit_log.c.segment_seq == sa.bindparam("pos"))
_NEXT_SEQS = sa.text("SELECT nextval('audit_seq') FROM generate_series(1, :n)")
_LAST_SEQ = sa.text("SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM audit_seq")


def hash_at(conn: sa.Connection, seq: int) -> str | None:
    return conn.execute(_HASH_AT, {"seq": seq}).scalar()


def segment_hash_at(conn: sa.Connection, segment: str, pos: int) -> str | None:
    return conn.execute(_SEGMENT_HASH_AT, {"segment": segment, "pos": pos}).scalar()


# A PostgreSQL batch's places in one round trip: it bumps the segment's counter, reads the hash of the
# segment's record before the batch, and takes the batch's places in the node's order. As three statements
# they were three of a batch's seven round trips; with two workers busy (64 verifies at a time, 2 cores) a
# round trip waited ~2 ms for a core, and a journal commit of ~14 records took 14.2-14.3 ms, now 12.8-13.7.
# No other process writes to a segment (node.audit.service), so the statement's snapshot holds its last
# record; `segment_places` still asks again, in a statement of its own, before it calls a record missing.
_SEGMENT_PLACES = sa.text(
    "WITH c AS (UPDATE counters SET value = value + :n WHERE name = :counter RETURNING value) "
    "SELECT c.value, "
    "(SELECT hash FROM audit_log WHERE segment = :segment AND segment_seq = c.value - :n), "
    "ARRAY(SELECT nextval('audit_seq') FROM generate_series(1, :n)) "
    "FROM c"
).columns(sa.column("value", sa.BigInteger), sa.column("prev", sa.String), sa.column("seqs"))


def segment_places(conn: sa.Connection, counter: str, segment: str, n: int) -> tuple[int, str | None, list[int]]:
    """For `n` records of `segment` (PostgreSQL): the segment's last place after them, the hash of its record
    before them (None for the segment's first batch, or if that record is missing), and their places in the
    node's order, increasing. The segment's first batch makes its counter."""
    row = conn.execute(_SEGMENT_PLACES, {"n": n, "counter": counter, "segment": segment}).first()
    if row is None:  # no counter yet
        return next_counter_sync(conn, counter, n), None, next_seqs(conn, n)
    last, prev, seqs = int(row[0]), row[1], sorted(int(s) for s in row[2])
    if prev is None and last - n >= 1:
        prev = segment_hash_at(conn, segment, last - n)
    return last, prev, seqs


def next_seqs(conn: sa.Connection, n: int) -> list[int]:
    """`n` places in the node's order of records (PostgreSQL), increasing; other processes' batches may take
    places between them, and a batch that rolls back leaves its places unused."""
    return sorted(int(r[0]) for r in conn.execute(_NEXT_SEQS, {"n": n}).all())


async def last_seq(conn: AsyncConnection) -> int:
    """The last place the sequence handed out (PostgreSQL): records above it cannot exist."""
    return int((await conn.execute(_LAST_SEQ)).scalar() or 0)


async def segment_heads(conn: AsyncConnection, prefix: str) -> dict[str, int]:
    """Each segment's count of records, as its counter holds it (`<prefix><segment>`)."""
    from node.db import counters

    q = sa.select(counters.c.name, counters.c.value).where(counters.c.name.startswith(prefix, autoescape=True))
    return {name[len(prefix):]: int(value) for name, value in (await conn.execute(q)).all()}


def insert_many(conn: sa.Connection, rows: list[dict]) -> None:
    conn.execute(_INSERT, rows)


async def query(
    conn: AsyncConnection,
    *,
    actor: str | None,
    resource: str | None,
    since: int | None,
    until: int | None,
    message_id: str | None,
    after_seq: int | None,
    limit: int,
    user: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
) -> list[sa.Row]:
    q = sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
    if actor:
        q = q.where(audit_log.c.actor == actor)
    if user:
        q = q.where(audit_log.c.user == user)
    if action:
        q = q.where(audit_log.c.action == action)
    if outcome:
        q = q.where(audit_log.c.outcome == outcome)
    if resource:
        q = q.where(audit_log.c.resource == resource)
    if since is not None:
        q = q.where(audit_log.c.at >= since)
    if until is not None:
        q = q.where(audit_log.c.at < until)
    if message_id:
        q = q.where(audit_log.c.message_id == message_id)
    if after_seq is not None:
        q = q.where(audit_log.c.seq < after_seq)
    return list((await conn.execute(q)).all())


async def get(conn: AsyncConnection, seq: int) -> sa.Row | None:
    return (await conn.execute(sa.select(audit_log).where(audit_log.c.seq == seq))).first()


async def scan(conn: AsyncConnection, from_seq: int, batch: int) -> list[sa.Row]:
    q = sa.select(audit_log).where(audit_log.c.seq >= from_seq).order_by(audit_log.c.seq).limit(batch)
    return list((await conn.execute(q)).all())


# A write's audit intent: committed in the write's own transaction, so a stored write always has a trail.
# The call's chained record replaces its intents in one journal commit; intents left by a node that stopped
# (or lost its database) between the two become records at its next start or in the periodic sweep.
audit_intents = sa.Table(
    "audit_intents",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("call_key", sa.String(26), nullable=False, index=True),
    sa.Column("at", sa.BigInteger, nullable=False, index=True),
    sa.Column("fields", sa.Text, nullable=False),
    # The worker whose call wrote it: the intents of a worker that is gone are recovered at once.
    sa.Column("worker", sa.String(80), nullable=True),
)

# Idempotency keys of retried writes: claimed in the first write transaction of the call (so a key is
# consumed only by a write that committed), answered from `status`/`body` once the call's record is stored.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("actor", sa.String(80), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("status", sa.Integer, nullable=True),
    sa.Column("content_type", sa.String(100), nullable=True),
    sa.Column("body", sa.Text, nullable=True),
)

_INSERT_INTENT = sa.insert(audit_intents)
_DELETE_INTENTS = sa.delete(audit_intents).where(audit_intents.c.call_key.in_(sa.bindparam("keys", expanding=True)))
_CLAIM_KEY = sa.insert(idempotency_keys)
_ANSWER_KEY = (
    sa.update(idempotency_keys)
    .where(idempotency_keys.c.actor == sa.bindparam("k_actor"), idempotency_keys.c.key == sa.bindparam("k_key"))
    .values(status=sa.bindparam("a_status"), content_type=sa.bindparam("a_type"), body=sa.bindparam("a_body"))
)


def insert_intent(conn: sa.Connection, row: dict) -> None:
    conn.execute(_INSERT_INTENT, row)


_INTENT_STORED = sa.select(audit_intents.c.id).where(audit_intents.c.id == sa.bindparam("id"))


def intent_stored(conn: sa.Connection, intent_id: str) -> bool:
    return conn.execute(_INTENT_STORED, {"id": intent_id}).first() is not None


def delete_intents(conn: sa.Connection, call_keys: list[str]) -> None:
    conn.execute(_DELETE_INTENTS, {"keys": call_keys})


def calls_before(conn: sa.Connection, cutoff_ms: int, limit: int, live: set[str] | None = None) -> list[str]:
    """Whole calls to recover, oldest first: those whose latest intent is older than the cutoff, and with
    `live` given, those of any age whose worker is not among the live ones (a call runs on one worker)."""
    latest = sa.func.max(audit_intents.c.at)
    recoverable = latest < cutoff_ms
    if live is not None:
        worker = sa.func.max(audit_intents.c.worker)
        recoverable = sa.or_(recoverable, worker.is_(None), worker.not_in(live))
    q = (sa.select(audit_intents.c.call_key).group_by(audit_intents.c.call_key).having(recoverable)
         .order_by(latest).limit(limit))
    return [r[0] for r in conn.execute(q).all()]


def intents_of(conn: sa.Connection, call_keys: list[str]) -> list[sa.Row]:
    q = (sa.select(audit_intents).where(audit_intents.c.call_key.in_(call_keys))
         .order_by(audit_intents.c.at, audit_intents.c.id))
    return list(conn.execute(q).all())


def count_intents(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(audit_intents)).scalar() or 0)


def claim_key(conn: sa.Connection, row: dict) -> None:
    conn.execute(_CLAIM_KEY, row)


def answer_keys(conn: sa.Connection, rows: list[dict]) -> None:
    conn.execute(_ANSWER_KEY, rows)


def forget_expired_key(conn: sa.Connection, actor: str, key: str, cutoff_ms: int) -> None:
    conn.execute(sa.delete(idempotency_keys).where(idempotency_keys.c.actor == actor, idempotency_keys.c.key == key,
                                                   idempotency_keys.c.created_at < cutoff_ms))


def stored_key(conn: sa.Connection, actor: str, key: str) -> sa.Row | None:
    q = sa.select(idempotency_keys).where(idempotency_keys.c.actor == actor, idempotency_keys.c.key == key)
    return conn.execute(q).first()


def forget_keys_before(conn: sa.Connection, cutoff_ms: int) -> None:
    conn.execute(sa.delete(idempotency_keys).where(idempotency_keys.c.created_at < cutoff_ms))
