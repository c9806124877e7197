"""What this node knows of its neighbours' health: whether the last contact worked, when one last did,
the last error; the federation's section of /healthz; and the throttle that bounds what a neighbour's
traffic sets off at once (a cut-short back-off, a pull of its registry).

Each worker sees its own contacts. What /healthz shows is the node's, the same from every worker: a row
a neighbour in the database, written (through the journal, without waiting) when a worker sees the
status change, or at most every LAST_OK_EVERY_MS to move `last_ok` on."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from node.db import database_unavailable
from node.federation import store
from node.ids import now_ms

if TYPE_CHECKING:
    import asyncio

    from node.federation.service import FederationService

log = logging.getLogger("govnode.federation")

LAST_OK_EVERY_MS = 5_000


class Throttle:
    """At most once every `interval_s` a key (a neighbour, or a neighbour's feed): for the things a peer's
    traffic sets off at once rather than on a schedule, so that a peer sending many such requests costs little.
    Kept in the worker: a second worker may act once more."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def ready(self, key: str) -> bool:
        """Whether to act for `key` now; if so, the interval starts again."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        self._last[key] = now
        return True


class Peers:
    def __init__(self, fed: "FederationService") -> None:
        self.fed = fed
        self.status: dict[str, dict[str, Any]] = {}
        self._stored: dict[str, tuple[Any, Any, int]] = {}  # peer -> (reachable, last_error, last_ok) as written

    def mark(self, peer: str, ok: bool, error: str | None = None, inbound: bool = False) -> None:
        st = self.status.setdefault(peer, {})
        now = now_ms()
        if ok:
            st["last_ok"] = now
            if not inbound:
                st["reachable"] = True
                st.pop("last_error", None)
        else:
            st["reachable"] = False
            st["last_error"] = error
            st["last_failure"] = now
        self._store(peer, st, now)

    def _store(self, peer: str, st: dict[str, Any], now: int) -> None:
        reachable, error = st.get("reachable"), st.get("last_error")
        stored = self._stored.get(peer)
        if stored is not None and stored[:2] == (reachable, error) and now - stored[2] < LAST_OK_EVERY_MS:
            return  # nothing a reader of /healthz would miss
        self._stored[peer] = (reachable, error, now)
        row = {"peer": peer, "reachable": reachable, "last_ok": st.get("last_ok"),
               "last_error": error[:400] if isinstance(error, str) else None, "last_failure": st.get("last_failure")}
        try:
            written = self.fed.audit.journal.enqueue(store.put_peer_status, row)
        except Exception as exc:  # noqa: BLE001 - the journal is closing: health is not worth an error
            log.debug("peer status of %s not stored: %s", peer, exc)
            return
        written.add_done_callback(self._written)

    def _written(self, fut: "asyncio.Future[None]") -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self._stored.clear()  # written again at the next contact
            log.debug("peer status not stored: %s", fut.exception())

    def unreachable(self, peer: str) -> bool:
        """Whether this worker's last attempt to reach `peer` failed."""
        return self.status.get(peer, {}).get("reachable") is False

    async def health(self) -> dict[str, Any]:
        members = self.fed.membership
        if not members.joined:
            return {"joined": False}
        try:
            async with self.fed.engine.connect() as conn:
                depths: dict[str, int] | None = await store.outbox_depths(conn)
                statuses = await store.peer_statuses(conn)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            # /healthz says the database is unreachable; this worker's view of the peers is still worth showing
            depths, statuses = None, self.status
        peers = {}
        for p in members.neighbours():
            st = statuses.get(p, {})
            peers[p] = {"role": "parent" if p == members.parent else "child", "reachable": st.get("reachable"),
                        "last_ok": st.get("last_ok"), "last_error": st.get("last_error"),
                        "outbox": depths.get(p, 0) if depths is not None else None}
        return {"joined": True, "parent": members.parent, "peers": peers}
