"""People (the service layer for portal accounts): a person belongs to a department of this node and acts
as that department, named as themselves (`Account.user`), so every service that takes an Account serves a
person unchanged and every audit record names them.

Passwords are Argon2id hashes (argon2-cffi's defaults, RFC 9106's low-memory profile: 64 MiB, 3 passes);
an initial password is shown once and must be changed at the first sign-in; repeated failures lock the
account for a while. Sessions live in the database, so every process of a node sees a sign-out at once;
the cookie holds a random id and the table only its SHA-256 digest."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.ext.asyncio import AsyncEngine

from node.workdays import CST
from node.accounts import store
from node.accounts.service import ROLES, Account
from node.cluster import announce
from node.db import write_tx
from node.errors import ApiError, Conflict, InvalidInput, NotFound, Unauthenticated
from node.fields import check_name
from node.ids import now_ms

USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
# Consecutive failed sign-ins that lock an account, and for how long: five guesses a quarter hour, 480 a
# day, against passwords of at least 10 characters of two kinds; a clerk who mistypes waits 15 minutes.
MAX_FAILURES = 5
LOCK_MS = 15 * 60 * 1000
# A session ends after 30 idle minutes, and after 12 hours whatever happens (a working day and its evening).
IDLE_MS = 30 * 60 * 1000
ABSOLUTE_MS = 12 * 3600 * 1000
# A session's last use is written at most once a minute: a page costs one read, not a write each.
TOUCH_MS = 60 * 1000
# A session read from the database is reused by this process for at most this long. Reading it cost a portal
# page ~0.2 ms of its ~2 ms (a thread hop and a query; scripts/bench_portal.py, issue 15). What ends a session
# still ends it at once where it happens (a sign-out, a password change, a lock drop this process's copy) and,
# on PostgreSQL, in every other worker within milliseconds (announced with the change, node.cluster); a change
# made by a command in another process (`govnode user disable` on SQLite, which has no announcements) is seen
# within this bound. A token lookup is trusted for 2 s on the same reasoning (node.accounts.service).
SESSION_CACHE_MS = 1000
SESSION_CACHE_MAX = 10_000
# A file of the node's home whose change tells every process of that host to drop its cached sessions: a command
# that ends sessions (`govnode user disable | reset`, `govnode dept revoke`) writes it after its commit, and a
# page checks it (one stat, ~2 µs), so those commands end a session at once on SQLite too.
SESSIONS_CHANGED = "sessions.changed"


def sessions_changed(home: Path | None) -> None:
    """Tell the processes serving the node at `home` that sessions ended (see SESSIONS_CHANGED)."""
    if home is None:
        return
    path = Path(home) / SESSIONS_CHANGED
    # A new file each time (its inode changes), so two changes within one tick of the file system's clock differ.
    fresh = path.with_name(f"{SESSIONS_CHANGED}.{os.getpid()}")
    fresh.write_text(str(time.time_ns()))
    os.replace(fresh, path)
MIN_PASSWORD = 10
MAX_PASSWORD = 128
# Initial passwords: 12 characters without look-alikes (0/O, 1/l/I), about 69 bits, read out or typed by hand.
_INITIAL_ALPHABET = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789"

_hasher = PasswordHasher()
# Each hash takes 64 MiB and 0.17 s of a core (measured on the 2-core test machine): two at a time keep a
# burst of sign-ins from taking the node's memory and every core.
HASHES_AT_ONCE = 2
# How many may wait for one: 32 is about 3 s of hashing, longer than a person waits for a sign-in page.
HASHES_WAITING = 32


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def csrf_token(raw_session: str) -> str:
    """The session's CSRF token: derived from the cookie's secret id, so it is neither stored nor guessable."""
    return hmac.new(raw_session.encode("utf-8"), b"govnode portal csrf", hashlib.sha256).hexdigest()


def initial_password() -> str:
    chars = "".join(secrets.choice(_INITIAL_ALPHABET) for _ in range(12))
    return f"{chars[:4]}-{chars[4:8]}-{chars[8:]}"


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, CST).strftime("%H:%M")


def password_problems(password: str, username: str) -> list[str]:
    """Why a new password is refused (empty when it is acceptable), in the words the portal shows."""
    problems = []
    if len(password) < MIN_PASSWORD:
        problems.append(f"至少 {MIN_PASSWORD} 个字符")
    if len(password) > MAX_PASSWORD:
        problems.append(f"不超过 {MAX_PASSWORD} 个字符")
    kinds = sum((any(c.isalpha() for c in password), any(c.isdigit() for c in password),
                 any(not c.isalnum() for c in password)))
    if kinds < 2:
        problems.append("包含字母、数字、符号中的至少两种")
    if username and username in password.lower():
        problems.append("不能包含用户名")
    return problems


@dataclass(frozen=True)
class Person:
    """The person of a live portal session."""

    account: Account
    display_name: str | None
    dept_name: str
    must_change: bool
    csrf: str
    session: str  # the session's digest

    @property
    def username(self) -> str:
        return self.account.user or ""


class SignInRefused(Unauthenticated):
    """A refused sign-in; `account` names the person it was tried against (None for an unknown name)."""

    def __init__(self, message: str, account: Account | None = None, **details: object) -> None:
        super().__init__(message, details or None)
        self.account = account


class PeopleService:
    def __init__(self, engine: AsyncEngine, node_id: str, home: Path | None = None) -> None:
        self.engine = engine
        self.node_id = node_id
        self.home = home
        self._changed_file = str(Path(home) / SESSIONS_CHANGED) if home is not None else None
        self._changed_at: tuple[int, int] | None = None
        self._hashing = asyncio.Semaphore(HASHES_AT_ONCE)
        self._waiting = 0
        self._dummy_hash: str | None = None
        url = engine.url
        on_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
        self._sqlite_path = url.database if on_file else None
        self._thread_conns = threading.local()  # each worker thread's connection for session look-ups
        self._sessions: dict[str, tuple[int, Any, int]] = {}  # digest -> (read at, row, last use written)

    def forget(self, payload: str = "") -> None:
        """Drop cached sessions: one (its digest), a person's (`user:<name>`), or all (""; node.cluster's
        announcement topic `sessions`)."""
        if payload.startswith("user:"):
            name = payload[5:]
            for key in [k for k, (_, row, _) in self._sessions.items() if row.username == name]:
                self._sessions.pop(key, None)
        elif payload:
            self._sessions.pop(payload, None)
        else:
            self._sessions.clear()

    async def _in_thread(self, fn, *args):  # noqa: ANN001, ANN202
        """Run a hash or a verification in a worker thread, so the node keeps answering meanwhile. Past
        HASHES_WAITING callers in line the answer is 429: at 0.17 s a hash, a longer queue only keeps
        everyone waiting (and is what a flood of anonymous sign-ins would build)."""
        if self._waiting >= HASHES_WAITING:
            raise ApiError("too many sign-ins at once; try again in a moment", code="RATE_LIMITED")
        self._waiting += 1
        try:
            async with self._hashing:
                return await asyncio.to_thread(fn, *args)
        finally:
            self._waiting -= 1

    def _account(self, row) -> Account:  # noqa: ANN001
        return Account(self.node_id, row.dept_code, row.dept_name, row.role, user=row.username)

    # The operator's commands -----------------------------------------------------------------------

    async def add(self, username: str, dept: str, role: str | None = None, display_name: str | None = None) -> str:
        """Make a person's account and return the initial password (the only time it is shown)."""
        if not USERNAME.match(username):
            raise InvalidInput("username must be 2-32 characters: a lowercase letter, then lowercase letters, "
                               "digits, '.', '_' or '-'", [{"field": "username"}])
        if role is not None and role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}", [{"field": "role"}])
        if display_name is not None:
            try:
                display_name = check_name(display_name)
            except ValueError as exc:
                raise InvalidInput(str(exc), [{"field": "name", "error": str(exc)}]) from None
            if len(display_name) > 50:
                raise InvalidInput("name must be at most 50 characters", [{"field": "name"}])
        password = initial_password()
        hashed = await self._in_thread(_hasher.hash, password)
        async with write_tx(self.engine) as conn:
            department = await store.get_department(conn, dept)
            if department is None:
                raise NotFound(f"no department {dept} at this node; add it with `govnode dept add`")
            if department.disabled_at is not None:
                raise Conflict(f"department {dept} is revoked")
            if await store.get_user(conn, username) is not None:
                raise Conflict(f"user {username} already exists")
            await store.insert_user(conn, username=username, dept_code=dept, role=role or department.role,
                                    display_name=display_name,
                                    password_hash=hashed, must_change=True, failures=0, created_at=now_ms())
        return password

    async def list(self) -> list[dict]:
        now = now_ms()
        async with self.engine.connect() as conn:
            rows = await store.list_users(conn)
        return [{"username": r.username, "dept": r.dept_code, "dept_name": r.dept_name, "role": r.role,
                 "name": r.display_name,
                 "status": ("disabled" if r.disabled_at is not None
                            else "locked" if (r.locked_until or 0) > now
                            else "must-change-password" if r.must_change else "active"),
                 "last_login_at": r.last_login_at} for r in rows]

    async def disable(self, username: str) -> None:
        """Disable a person's account and end their sessions."""
        async with write_tx(self.engine) as conn:
            if await store.get_user(conn, username) is None:
                raise NotFound(f"no user {username}")
            await store.update_user(conn, username, disabled_at=now_ms())
            await store.delete_sessions_of(conn, username)
            await announce(conn, "sessions", f"user:{username}")
        self.forget(f"user:{username}")
        sessions_changed(self.home)

    async def reset(self, username: str) -> str:
        """A new initial password (to be changed at the next sign-in); unlocks the account, ends its sessions."""
        password = initial_password()
        hashed = await self._in_thread(_hasher.hash, password)
        async with write_tx(self.engine) as conn:
            row = await store.get_user(conn, username)
            if row is None:
                raise NotFound(f"no user {username}")
            if row.disabled_at is not None:
                raise Conflict(f"user {username} is disabled")
            await store.update_user(conn, username, password_hash=hashed, must_change=True, failures=0,
                                    locked_until=None)
            await store.delete_sessions_of(conn, username)
            await announce(conn, "sessions", f"user:{username}")
        self.forget(f"user:{username}")
        sessions_changed(self.home)
        return password

    # Signing in and out ------------------------------------------------------------------------------

    async def sign_in(self, username: str, password: str) -> tuple[str, Account, bool]:
        """A new session for a person whose password is right: the cookie's random id, the person's Account,
        and whether they must change their password first. Raises SignInRefused, whose `account` and
        details the caller's audit record carries."""
        username = username.strip().lower()
        async with self.engine.connect() as conn:
            row = await store.get_user(conn, username) if USERNAME.match(username) else None
        if row is None:
            # As slow as a wrong password, so the answer's time does not tell which names exist.
            self._dummy_hash = self._dummy_hash or await self._in_thread(_hasher.hash, secrets.token_hex(8))
            await self._in_thread(_verify, self._dummy_hash, password)
            raise SignInRefused("用户名或密码不正确")
        acct = self._account(row)
        now = now_ms()
        if (row.locked_until or 0) > now:
            raise self._locked(acct, row.locked_until)
        # The attempt counts as a failure before its password is checked (and is forgiven if it is right), so
        # guesses sent in parallel cannot all pass the lock while their hashes wait for a thread.
        locked_until = None
        async with write_tx(self.engine) as conn:
            current = await store.get_user(conn, username)
            if current is not None and (current.locked_until or 0) > now:  # locked by a guess sent beside it
                locked_until = current.locked_until
            else:
                failures = await store.count_failure(conn, username)
                if failures > MAX_FAILURES:  # more guesses at once than the lock allows: lock, check none
                    locked_until = now + LOCK_MS
                    await store.update_user(conn, username, failures=0, locked_until=locked_until)
        if locked_until is not None:
            raise self._locked(acct, locked_until)
        if not await self._in_thread(_verify, row.password_hash, password):
            if row.disabled_at is not None or row.dept_disabled_at is not None:
                raise SignInRefused("用户名或密码不正确", acct, refused="disabled")
            if failures >= MAX_FAILURES:
                locked_until = now + LOCK_MS
                async with write_tx(self.engine) as conn:
                    await store.update_user(conn, username, failures=0, locked_until=locked_until)
                raise SignInRefused(f"连续 {failures} 次登录失败，账户已锁定，请于 {_clock(locked_until)} 后再试",
                                    acct, refused="wrong password", failures=failures, locked_until=locked_until)
            raise SignInRefused("用户名或密码不正确", acct, refused="wrong password", failures=failures)
        if row.disabled_at is not None or row.dept_disabled_at is not None:
            raise SignInRefused("该账户已停用，请联系本节点的运营人员", acct, refused="disabled")
        values: dict = {"failures": 0, "locked_until": None, "last_login_at": now}
        if _hasher.check_needs_rehash(row.password_hash):  # the hasher's parameters were raised since
            values["password_hash"] = await self._in_thread(_hasher.hash, password)
        raw = secrets.token_urlsafe(32)
        async with write_tx(self.engine) as conn:
            current = await store.get_user(conn, username)
            if current is not None and (current.locked_until or 0) > now:  # locked by a parallel guess meanwhile
                locked = current.locked_until
            else:
                locked = None
                await store.delete_expired_sessions(conn, now - IDLE_MS, now - ABSOLUTE_MS)
                await store.insert_session(conn, digest(raw), username, now)
                await store.update_user(conn, username, **values)
        if locked is not None:
            raise self._locked(acct, locked)
        return raw, acct, bool(row.must_change)

    @staticmethod
    def _locked(acct: Account, until: int) -> SignInRefused:
        return SignInRefused(f"多次登录失败，账户已锁定，请于 {_clock(until)} 后再试", acct, refused="locked",
                             locked_until=until)

    async def session(self, raw: str | None) -> Person | None:
        """The person of a live session, or None (unknown, ended, idle too long, too old, or disabled)."""
        if not raw or len(raw) > 100:
            return None
        key = digest(raw)
        now = now_ms()
        if self._changed_file is not None:
            try:
                st = os.stat(self._changed_file)
                changed: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
            except OSError:
                changed = None
            if changed != self._changed_at:
                self._changed_at = changed
                self._sessions.clear()
        cached = self._sessions.get(key)
        if cached is not None and now - cached[0] < SESSION_CACHE_MS:
            _, row, seen = cached
        else:
            if self._sqlite_path is not None:
                row = await asyncio.to_thread(self._session_sqlite, key, now - IDLE_MS, now - ABSOLUTE_MS)
            else:
                async with self.engine.connect() as conn:
                    row = await store.session_person(conn, key, now - IDLE_MS, now - ABSOLUTE_MS)
            if row is None:
                self._sessions.pop(key, None)
                return None
            seen = row.seen_at
            if len(self._sessions) >= SESSION_CACHE_MAX:
                self._sessions.clear()
            self._sessions[key] = (now, row, seen)
        if now - seen >= TOUCH_MS:
            async with write_tx(self.engine) as conn:
                await store.touch_session(conn, key, now)
            self._sessions[key] = (self._sessions[key][0], row, now)
        return Person(self._account(row), row.display_name, row.dept_name, bool(row.must_change), csrf_token(raw), key)

    def _session_sqlite(self, key: str, seen_after: int, created_after: int) -> object:
        """In a worker thread: the session look-up on that thread's own read-only connection. Every portal page
        makes one; through the async engine it costs a handful of thread hops (checkout, BEGIN, execute, fetch,
        ROLLBACK): measured alone, 0.65 ms against 0.05 ms in one hop. WAL: the read sees every committed write,
        so a sign-out or a disabled account still counts at once, in every process."""
        conn = getattr(self._thread_conns, "conn", None)
        if conn is None:
            assert self._sqlite_path is not None
            conn = self._thread_conns.conn = sqlite3.connect(self._sqlite_path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA query_only=ON")
        return store.session_person_sqlite(conn, key, seen_after, created_after)

    async def sign_out(self, person: Person) -> None:
        self.forget(person.session)
        async with write_tx(self.engine) as conn:
            await store.delete_session(conn, person.session)
            await announce(conn, "sessions", person.session)
        self.forget(person.session)

    async def change_password(self, person: Person, current: str | None, new: str, confirm: str) -> None:
        """Change the person's password. The current one is asked for unless this is the change forced at
        the first sign-in (made a moment ago with it). Other sessions of the person end."""
        async with self.engine.connect() as conn:
            row = await store.get_user(conn, person.username)
        if row is None:
            raise NotFound("no such user")
        if not person.must_change and not await self._in_thread(_verify, row.password_hash, current or ""):
            # Counted like a wrong sign-in: whoever holds an open session may not guess the password freely.
            async with write_tx(self.engine) as conn:
                failures = await store.count_failure(conn, person.username)
                if failures >= MAX_FAILURES:
                    await store.update_user(conn, person.username, failures=0, locked_until=now_ms() + LOCK_MS)
                    await store.delete_sessions_of(conn, person.username)
                    await announce(conn, "sessions", f"user:{person.username}")
            if failures >= MAX_FAILURES:
                self.forget(f"user:{person.username}")
            if failures >= MAX_FAILURES:
                raise Unauthenticated("多次输入错误的当前密码，账户已锁定并退出登录")
            raise InvalidInput("当前密码不正确", [{"field": "current", "error": "当前密码不正确"}])
        if new != confirm:
            raise InvalidInput("两次输入的新密码不一致", [{"field": "confirm", "error": "与新密码不一致"}])
        problems = password_problems(new, person.username)
        if problems:
            raise InvalidInput("新密码须" + "，".join(problems), [{"field": "new", "error": "，".join(problems)}])
        if await self._in_thread(_verify, row.password_hash, new):
            raise InvalidInput("新密码不能与当前密码相同", [{"field": "new", "error": "与当前密码相同"}])
        hashed = await self._in_thread(_hasher.hash, new)
        async with write_tx(self.engine) as conn:
            await store.update_user(conn, person.username, password_hash=hashed, must_change=False)
            await store.delete_sessions_of(conn, person.username, keep=person.session)
            await announce(conn, "sessions", f"user:{person.username}")
        self.forget(f"user:{person.username}")
