"""Applications (held at the provider's node, copied at the applicant's) and grants (held at both).

Each application is one row: the SPEC §11 object as JSON (`doc`) and the columns it is searched and
scheduled by. `notify_pending` marks a change the other node has not been sent yet (it is cleared once
the message is in the durable outbox), so a crash between the two never loses an update.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.audit.store import audit_log
from node.db import metadata

applications = sa.Table(
    "applications",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("resource", sa.String(40), nullable=False, index=True),
    sa.Column("applicant_node", sa.String(6), nullable=False),
    sa.Column("applicant_dept", sa.String(32), nullable=False, index=True),
    sa.Column("provider_node", sa.String(6), nullable=False),
    sa.Column("provider_dept", sa.String(32), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("overdue", sa.Boolean, nullable=False),
    sa.Column("submitted_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("received_at", sa.BigInteger, nullable=True),
    sa.Column("review_due", sa.String(10), nullable=False),
    sa.Column("reviewed_at", sa.BigInteger, nullable=True),
    sa.Column("decision_due", sa.String(10), nullable=True),
    sa.Column("decided_at", sa.BigInteger, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("notify_pending", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
)

grants = sa.Table(
    "grants",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("application_id", sa.String(26), nullable=False, index=True),
    sa.Column("resource", sa.String(40), nullable=False, index=True),
    sa.Column("consumer_node", sa.String(6), nullable=False),
    sa.Column("consumer_dept", sa.String(32), nullable=False, index=True),
    sa.Column("issuer", sa.String(6), nullable=False),
    sa.Column("provider_dept", sa.String(32), nullable=False),
    sa.Column("valid_from", sa.BigInteger, nullable=False),
    sa.Column("valid_until", sa.BigInteger, nullable=False),
    sa.Column("revoked_at", sa.BigInteger, nullable=True),
    sa.Column("revoke_reason", sa.Text, nullable=True),
    sa.Column("doc", sa.Text, nullable=False),
)

CALL_OPS = ("query", "verify", "compare")
CALL_ACTIONS = tuple(f"sharing.{op}" for op in CALL_OPS)
SERVED_ACTION = "federation.deliver"


# Applications -----------------------------------------------------------------------------------------
# Their queries are every workflow's (node.workflow.store), but for this one.

async def open_application(conn: AsyncConnection, resource: str, node: str, dept: str) -> str | None:
    """The id of an application of this department for this resource still awaiting a decision."""
    q = sa.select(applications.c.id).where(
        applications.c.resource == resource, applications.c.applicant_node == node,
        applications.c.applicant_dept == dept, applications.c.status.in_(("submitted", "accepted")),
    ).limit(1)
    return (await conn.execute(q)).scalar()


# Grants -----------------------------------------------------------------------------------------------

async def get_grant(conn: AsyncConnection, grant_id: str) -> sa.Row | None:
    return (await conn.execute(sa.select(grants).where(grants.c.id == grant_id))).first()


async def put_grant(conn: AsyncConnection, row: dict[str, Any]) -> None:
    """Store a grant, or bring a stored one up to date (a revocation only ever sets revoked_at)."""
    held = await get_grant(conn, row["id"])
    if held is None:
        await conn.execute(sa.insert(grants).values(**row))
    elif row.get("revoked_at") is not None and held.revoked_at is None:
        await conn.execute(sa.update(grants).where(grants.c.id == row["id"])
                           .values(revoked_at=row["revoked_at"], revoke_reason=row.get("revoke_reason")))


async def revoke_grant(conn: AsyncConnection, grant_id: str, at: int, reason: str) -> None:
    await conn.execute(sa.update(grants).where(grants.c.id == grant_id).values(revoked_at=at, revoke_reason=reason))


async def held_grants(conn: AsyncConnection, resource: str, node: str, dept: str) -> list[sa.Row]:
    """Grants held by a consumer department for a resource, not revoked (validity is checked by the caller)."""
    q = sa.select(grants).where(
        grants.c.resource == resource, grants.c.consumer_node == node, grants.c.consumer_dept == dept,
        grants.c.revoked_at.is_(None),
    )
    return list((await conn.execute(q)).all())


async def list_grants(
    conn: AsyncConnection, *, node: str, dept: str | None, role: str | None, resource: str | None,
    status: str | None, now: int, offset: int, limit: int,
) -> tuple[int, list[sa.Row]]:
    as_consumer = grants.c.consumer_node == node
    as_provider = grants.c.issuer == node
    if dept is not None:
        as_consumer = sa.and_(as_consumer, grants.c.consumer_dept == dept)
        as_provider = sa.and_(as_provider, grants.c.provider_dept == dept)
    conds = [as_consumer if role == "consumer" else as_provider if role == "provider" else sa.or_(as_consumer, as_provider)]
    if resource:
        conds.append(grants.c.resource == resource)
    if status == "revoked":
        conds.append(grants.c.revoked_at.is_not(None))
    elif status == "expired":
        conds += [grants.c.revoked_at.is_(None), grants.c.valid_until < now]
    elif status == "active":
        conds += [grants.c.revoked_at.is_(None), grants.c.valid_until >= now, grants.c.valid_from <= now]
    where = sa.and_(*conds)
    total = (await conn.execute(sa.select(sa.func.count()).select_from(grants).where(where))).scalar_one()
    q = sa.select(grants).where(where).order_by(grants.c.valid_from.desc(), grants.c.id.desc()).offset(offset).limit(limit)
    return int(total), list((await conn.execute(q)).all())


# Call statistics (from the audit log) ------------------------------------------------------------------

def _calls_where(since: int, until: int) -> Any:
    """Query, verify and compare calls made here, and those served here for other nodes: delivered messages
    naming a resource, less other nodes' change-feed pulls, which travel as `service.call` too.

    A delivered message's record names its op in `details` (JSON as `node.audit.service._normalise` writes it:
    sorted keys, `": "` between key and value; the hash chain fixes that form). Records without an op, from
    before ops were recorded, count as before."""
    details = sa.func.coalesce(audit_log.c.details, "")
    served_op = sa.or_(sa.not_(details.like('%"op": %')), *(details.like(f'%"op": "{op}"%') for op in CALL_OPS))
    return sa.and_(
        audit_log.c.at >= since, audit_log.c.at < until,
        sa.or_(audit_log.c.action.in_(CALL_ACTIONS),
               sa.and_(audit_log.c.action == SERVED_ACTION, audit_log.c.resource.is_not(None), served_op)),
    )


async def call_stats(conn: AsyncConnection, since: int, until: int, by: str | None) -> list[sa.Row]:
    """(key, calls, errors, mean latency, max latency) per resource (`by="resource"`), per caller
    (`by="actor"`), or in total (`by=None`)."""
    errors = sa.func.sum(sa.case((audit_log.c.outcome != "ok", 1), else_=0))
    cols = [sa.func.count().label("calls"), errors.label("errors"),
            sa.func.avg(audit_log.c.latency_ms).label("mean"), sa.func.max(audit_log.c.latency_ms).label("max")]
    where = _calls_where(since, until)
    if by is None:
        return list((await conn.execute(sa.select(sa.literal("").label("key"), *cols).where(where))).all())
    col = audit_log.c.resource if by == "resource" else audit_log.c.actor
    q = sa.select(col.label("key"), *cols).where(where, col.is_not(None)).group_by(col).order_by(sa.func.count().desc(), col)
    return list((await conn.execute(q)).all())
