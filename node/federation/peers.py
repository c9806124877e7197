"""What this node knows of its neighbours' health: whether the last contact worked, when one last did,
the last error; and the federation's section of /healthz."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.db import database_unavailable
from node.federation import store
from node.ids import now_ms

if TYPE_CHECKING:
    from node.federation.service import FederationService


class Peers:
    def __init__(self, fed: "FederationService") -> None:
        self.fed = fed
        self.status: dict[str, dict[str, Any]] = {}

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

    def unreachable(self, peer: str) -> bool:
        """Whether the last attempt to reach `peer` failed."""
        return self.status.get(peer, {}).get("reachable") is False

    async def health(self) -> dict[str, Any]:
        members = self.fed.membership
        if not members.joined:
            return {"joined": False}
        try:
            async with self.fed.engine.connect() as conn:
                depths: dict[str, int] | None = await store.outbox_depths(conn)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            depths = None  # /healthz says the database is unreachable; the peers' state is still worth showing
        peers = {}
        for p in members.neighbours():
            st = self.status.get(p, {})
            peers[p] = {"role": "parent" if p == members.parent else "child", "reachable": st.get("reachable"),
                        "last_ok": st.get("last_ok"), "last_error": st.get("last_error"),
                        "outbox": depths.get(p, 0) if depths is not None else None}
        return {"joined": True, "parent": members.parent, "peers": peers}
