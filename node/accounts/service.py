"""Department accounts: creation, tokens (random, shown once, stored hashed), revocation, authentication."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from node.accounts import store
from node.cluster import announce
from node.db import write_tx
from node.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from node.fields import check_name
from node.ids import DEPT_CODE, now_ms

ROLES = ("dept", "operator", "auditor")
TOKEN_PREFIX = "gnt_"
# How long a token lookup is remembered; a revocation takes effect within this time.
AUTH_CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class Account:
    node: str
    dept: str
    name: str
    role: str
    # A person of the department (their username at this node) when one calls through the portal; the
    # department still acts, so `principal` stays the department's and every rule applies unchanged.
    user: str | None = None

    @property
    def principal(self) -> str:
        return f"{self.node}/{self.dept}"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class AccountService:
    def __init__(self, engine: AsyncEngine, node_id: str) -> None:
        self.engine = engine
        self.node_id = node_id
        self._cache: dict[str, tuple[float, Account | None]] = {}

    async def add_department(self, code: str, name: str, role: str = "dept") -> str:
        """Create a department account and return its first token (the only time it is shown)."""
        if not DEPT_CODE.match(code):
            raise InvalidInput("department code must be 1-32 characters of 0-9 and A-Z", [{"field": "code"}])
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}", [{"field": "role"}])
        try:
            name = check_name(name)
        except ValueError as exc:
            raise InvalidInput(str(exc), [{"field": "name", "error": str(exc)}]) from None
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        at = now_ms()
        async with write_tx(self.engine) as conn:
            if await store.get_department(conn, code) is not None:
                raise Conflict(f"department {code} already exists; use `govnode dept token {code}` for a new token")
            await store.insert_department(conn, code, name, role, at)
            await store.insert_token(conn, token_digest(token), code, at)
        return token

    async def issue_token(self, code: str) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with write_tx(self.engine) as conn:
            row = await store.get_department(conn, code)
            if row is None:
                raise NotFound(f"no department {code}")
            if row.disabled_at is not None:
                raise Conflict(f"department {code} is revoked")
            await store.insert_token(conn, token_digest(token), code, now_ms())
        return token

    async def revoke(self, code: str) -> int:
        """Revoke every token of a department and disable it; returns how many tokens were live."""
        async with write_tx(self.engine) as conn:
            if await store.get_department(conn, code) is None:
                raise NotFound(f"no department {code}")
            n = await store.revoke_tokens(conn, code, now_ms())
            await announce(conn, "accounts", code)  # the node's other workers drop their cached tokens
        self._cache.clear()
        return n

    def forget(self, _code: str = "") -> None:
        """Drop every cached token lookup (another worker, or a command, revoked a department)."""
        self._cache.clear()

    async def list(self) -> list[dict]:
        async with self.engine.connect() as conn:
            rows = await store.list_departments(conn)
        return [
            {"code": r.code, "name": r.name, "role": r.role, "disabled": r.disabled_at is not None} for r in rows
        ]

    async def department(self, code: str) -> dict | None:
        async with self.engine.connect() as conn:
            row = await store.get_department(conn, code)
        return None if row is None else {"code": row.code, "name": row.name, "role": row.role}

    async def authenticate(self, header: str | None) -> Account:
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():  # the scheme is case-insensitive (RFC 9110)
            raise Unauthenticated("send Authorization: Bearer <token>")
        token = token.strip()
        if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            raise Unauthenticated("unknown or revoked token")
        digest = token_digest(token)
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            account = hit[1]
        else:
            async with self.engine.connect() as conn:
                row = await store.account_for_digest(conn, digest)
            account = None if row is None else Account(self.node_id, row.code, row.name, row.role)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + AUTH_CACHE_SECONDS, account)
        if account is None:
            raise Unauthenticated("unknown or revoked token")
        return account
