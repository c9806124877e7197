"""Licences issued at this node (they stay here), the signed index entries of every origin (they replicate,
with a local change cursor for the federation feed), refusals of received entries, and each issuing
department's catalog resource."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.db import metadata

# The licences this node's departments issued: the signed documents, every version.
licences = sa.Table(
    "licences",
    metadata,
    sa.Column("identifier", sa.String(100), primary_key=True),
    sa.Column("dept", sa.String(32), nullable=False, index=True),
    sa.Column("serial", sa.String(20), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("holder_digest", sa.String(64), nullable=False, index=True),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Column("issued_at", sa.BigInteger, nullable=False),
)

# Index entries of every origin (this node's own included), as signed.
licence_index = sa.Table(
    "licence_index",
    metadata,
    sa.Column("identifier", sa.String(100), primary_key=True),
    sa.Column("node", sa.String(6), nullable=False, index=True),
    sa.Column("dept", sa.String(32), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("holder_digest", sa.String(64), nullable=False, index=True),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("entry", sa.Text, nullable=False),
    sa.Column("change_id", sa.BigInteger, nullable=False, unique=True),
)

# Index entries received from other nodes and refused (bad signature, outside the sender's subtree …).
licence_refusals = sa.Table(
    "licence_refusals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("identifier", sa.String(120), nullable=True),
    sa.Column("node", sa.String(16), nullable=True),
    sa.Column("received_from", sa.String(6), nullable=True),
    sa.Column("reason", sa.String(400), nullable=False),
)

# The catalog resource through which each issuing department's licence faces are granted.
licence_issuers = sa.Table(
    "licence_issuers",
    metadata,
    sa.Column("dept", sa.String(32), primary_key=True),
    sa.Column("resource", sa.String(40), nullable=False),
)


# Licences ---------------------------------------------------------------------------------------------

async def insert_licence(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(sa.insert(licences).values(**row))


async def get_licence(conn: AsyncConnection, identifier: str) -> sa.Row | None:
    return (await conn.execute(sa.select(licences).where(licences.c.identifier == identifier))).first()


# The index --------------------------------------------------------------------------------------------

async def get_index(conn: AsyncConnection, identifier: str, *, for_update: bool = False) -> sa.Row | None:
    q = sa.select(licence_index).where(licence_index.c.identifier == identifier)
    if for_update:
        q = q.with_for_update()
    return (await conn.execute(q)).first()


async def by_holder(conn: AsyncConnection, digest: str, include_superseded: bool, limit: int) -> list[sa.Row]:
    q = sa.select(licence_index.c.entry).where(licence_index.c.holder_digest == digest)
    if not include_superseded:
        q = q.where(licence_index.c.status != "superseded")
    q = q.order_by(licence_index.c.updated_at.desc(), licence_index.c.identifier).limit(limit)
    return list((await conn.execute(q)).all())


async def log_refusal(conn: AsyncConnection, **row: Any) -> None:
    await conn.execute(sa.insert(licence_refusals).values(**row))


# Issuers' catalog resources ---------------------------------------------------------------------------

async def issuer_resource(conn: AsyncConnection, dept: str) -> str | None:
    res = await conn.execute(sa.select(licence_issuers.c.resource).where(licence_issuers.c.dept == dept))
    return res.scalar()


async def set_issuer_resource(conn: AsyncConnection, dept: str, resource: str) -> None:
    res = await conn.execute(sa.update(licence_issuers).where(licence_issuers.c.dept == dept).values(resource=resource))
    if not res.rowcount:
        await conn.execute(sa.insert(licence_issuers).values(dept=dept, resource=resource))
