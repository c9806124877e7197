"""Departments and their API tokens (tokens are stored only as SHA-256 digests)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from node.db import metadata

departments = sa.Table(
    "departments",
    metadata,
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("disabled_at", sa.BigInteger, nullable=True),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("dept_code", sa.String(32), sa.ForeignKey("departments.code"), nullable=False, index=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("revoked_at", sa.BigInteger, nullable=True),
)


async def get_department(conn: AsyncConnection, code: str) -> sa.Row | None:
    return (await conn.execute(sa.select(departments).where(departments.c.code == code))).first()


async def insert_department(conn: AsyncConnection, code: str, name: str, role: str, at: int) -> None:
    await conn.execute(sa.insert(departments).values(code=code, name=name, role=role, created_at=at))


async def insert_token(conn: AsyncConnection, digest: str, dept_code: str, at: int) -> None:
    await conn.execute(sa.insert(tokens).values(digest=digest, dept_code=dept_code, created_at=at))


async def revoke_tokens(conn: AsyncConnection, dept_code: str, at: int) -> int:
    res = await conn.execute(
        sa.update(tokens).where(tokens.c.dept_code == dept_code, tokens.c.revoked_at.is_(None)).values(revoked_at=at)
    )
    await conn.execute(sa.update(departments).where(departments.c.code == dept_code).values(disabled_at=at))
    return res.rowcount or 0


async def account_for_digest(conn: AsyncConnection, digest: str) -> sa.Row | None:
    q = (
        sa.select(departments.c.code, departments.c.name, departments.c.role)
        .select_from(tokens.join(departments, tokens.c.dept_code == departments.c.code))
        .where(tokens.c.digest == digest, tokens.c.revoked_at.is_(None), departments.c.disabled_at.is_(None))
    )
    return (await conn.execute(q)).first()


async def list_departments(conn: AsyncConnection) -> list[sa.Row]:
    return list((await conn.execute(sa.select(departments).order_by(departments.c.code))).all())
