"""Departments and their API tokens (tokens are stored only as SHA-256 digests); people (portal accounts,
passwords stored only as Argon2 hashes) and their sessions (stored only as SHA-256 digests of the cookie)."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
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


# People: portal accounts of a department of this node.
users = sa.Table(
    "users",
    metadata,
    sa.Column("username", sa.String(32), primary_key=True),
    sa.Column("dept_code", sa.String(32), sa.ForeignKey("departments.code"), nullable=False, index=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("display_name", sa.String(50), nullable=True),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("must_change", sa.Boolean, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("locked_until", sa.BigInteger, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("last_login_at", sa.BigInteger, nullable=True),
    sa.Column("disabled_at", sa.BigInteger, nullable=True),
)

# Portal sessions. The cookie holds a random id; only its digest is kept, so the table cannot be replayed.
portal_sessions = sa.Table(
    "portal_sessions",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("username", sa.String(32), sa.ForeignKey("users.username"), nullable=False, index=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("seen_at", sa.BigInteger, nullable=False, index=True),
)


async def get_user(conn: AsyncConnection, username: str) -> sa.Row | None:
    q = (sa.select(users, departments.c.name.label("dept_name"), departments.c.disabled_at.label("dept_disabled_at"))
         .select_from(users.join(departments, users.c.dept_code == departments.c.code))
         .where(users.c.username == username))
    return (await conn.execute(q)).first()


async def insert_user(conn: AsyncConnection, **row: object) -> None:
    await conn.execute(sa.insert(users).values(**row))


async def update_user(conn: AsyncConnection, username: str, **values: object) -> None:
    await conn.execute(sa.update(users).where(users.c.username == username).values(**values))


async def count_failure(conn: AsyncConnection, username: str) -> int:
    """Add one failed sign-in and return the count; the update locks the row, so two processes count both."""
    await conn.execute(sa.update(users).where(users.c.username == username).values(failures=users.c.failures + 1))
    return int((await conn.execute(sa.select(users.c.failures).where(users.c.username == username))).scalar_one())


async def list_users(conn: AsyncConnection) -> list[sa.Row]:
    q = (sa.select(users, departments.c.name.label("dept_name"))
         .select_from(users.join(departments, users.c.dept_code == departments.c.code))
         .order_by(users.c.dept_code, users.c.username))
    return list((await conn.execute(q)).all())


async def insert_session(conn: AsyncConnection, digest: str, username: str, at: int) -> None:
    await conn.execute(sa.insert(portal_sessions).values(digest=digest, username=username, created_at=at, seen_at=at))


# The person of a live session: not idle too long, not too old, neither they nor their department disabled.
_SESSION_PERSON = (
    sa.select(portal_sessions.c.seen_at, portal_sessions.c.created_at, users.c.username, users.c.role,
              users.c.display_name, users.c.must_change, departments.c.code.label("dept_code"),
              departments.c.name.label("dept_name"))
    .select_from(portal_sessions.join(users, portal_sessions.c.username == users.c.username)
                 .join(departments, users.c.dept_code == departments.c.code))
    .where(portal_sessions.c.digest == sa.bindparam("digest"), portal_sessions.c.seen_at > sa.bindparam("seen_after"),
           portal_sessions.c.created_at > sa.bindparam("created_after"), users.c.disabled_at.is_(None),
           departments.c.disabled_at.is_(None))
)
_SESSION_PERSON_SQLITE = _SESSION_PERSON.compile(dialect=sqlite_dialect())


async def session_person(conn: AsyncConnection, digest: str, seen_after: int, created_after: int) -> sa.Row | None:
    """The person of a live session: not idle too long, not too old, neither they nor their department disabled."""
    params = {"digest": digest, "seen_after": seen_after, "created_after": created_after}
    return (await conn.execute(_SESSION_PERSON, params)).first()


def session_person_sqlite(conn: sqlite3.Connection, digest: str, seen_after: int, created_after: int) -> Any:
    """The same look-up on a plain sqlite3 connection (node.accounts.people reads sessions so on SQLite)."""
    params = {"digest": digest, "seen_after": seen_after, "created_after": created_after}
    cur = conn.execute(str(_SESSION_PERSON_SQLITE), [params[k] for k in _SESSION_PERSON_SQLITE.positiontup or ()])
    row = cur.fetchone()
    if row is None:
        return None
    return SimpleNamespace(**dict(zip((d[0] for d in cur.description), row)))


async def touch_session(conn: AsyncConnection, digest: str, at: int) -> None:
    await conn.execute(sa.update(portal_sessions).where(portal_sessions.c.digest == digest).values(seen_at=at))


async def delete_session(conn: AsyncConnection, digest: str) -> None:
    await conn.execute(sa.delete(portal_sessions).where(portal_sessions.c.digest == digest))


async def delete_sessions_of(conn: AsyncConnection, username: str, keep: str | None = None) -> None:
    q = sa.delete(portal_sessions).where(portal_sessions.c.username == username)
    if keep is not None:
        q = q.where(portal_sessions.c.digest != keep)
    await conn.execute(q)


async def delete_expired_sessions(conn: AsyncConnection, seen_before: int, created_before: int) -> None:
    await conn.execute(sa.delete(portal_sessions).where(
        sa.or_(portal_sessions.c.seen_at <= seen_before, portal_sessions.c.created_at <= created_before)))
