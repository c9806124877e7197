"""Documents kept at one node and mirrored at another (applications at the provider, copied to the
applicant; feedback at the source, copied to the reporter).

Every change bumps the document's `version` and sets `notify_pending` in the same transaction; the
flag is cleared once the update message is queued in the durable outbox. A scheduled pass re-queues
what a crash or a not-yet-known route held back. The tables share the columns `id`, `version`,
`notify_pending`, `updated_at` and `doc` (the document as JSON).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from node.db import write_tx
from node.federation.service import FederationService
from node.ids import now_ms
from node.workdays import cst_iso

log = logging.getLogger("govnode.mirror")

# The `by` of history events the node itself records (deadlines, refusals on receipt): <node>/platform.
PLATFORM = "platform"


def history_event(at: int, by: str, status: str, event: str, reason: str = "") -> dict[str, Any]:
    """One entry of a mirrored document's `history`."""
    return {"at": cst_iso(at), "by": by, "status": status, "event": event, "reason": reason}

# A change younger than this may still be queued by the call that made it.
RESEND_AFTER_MS = 20_000


class Mirror:
    def __init__(self, engine: AsyncEngine, table: sa.Table, federation: FederationService, node_id: str,
                 kind: str, body_key: str, party: str) -> None:
        """`kind`/`body_key`: the update message and the key its body holds the document under; `party`:
        the document field naming the other side (`{"node": …}`)."""
        self.engine = engine
        self.table = table
        self.federation = federation
        self.node_id = node_id
        self.kind = kind
        self.body_key = body_key
        self.party = party

    def remote(self, doc: dict[str, Any]) -> bool:
        """Whether the document has a copy at another node (so its changes must be sent)."""
        return doc[self.party]["node"] != self.node_id

    @property
    def platform(self) -> str:
        """This node as the author of the events it records itself."""
        return f"{self.node_id}/{PLATFORM}"

    async def notify(self, doc: dict[str, Any]) -> None:
        """Queue the document's current state for the other node (nothing when that is this node)."""
        if not self.remote(doc):
            return
        dest = doc[self.party]["node"]
        try:
            await self.federation.send_async(self.kind, dest, {self.body_key: doc})
        except Exception as exc:  # noqa: BLE001 - the row stays pending; resend_pending tries again
            log.warning("%s %s: update for %s not queued yet: %s", self.body_key, doc["id"], dest, exc)
            return
        t = self.table
        async with write_tx(self.engine) as conn:
            # Only the change of this version: a newer change keeps its own flag.
            await conn.execute(sa.update(t).where(t.c.id == doc["id"], t.c.version == doc["version"])
                               .values(notify_pending=False))

    async def resend_pending(self) -> int:
        """Queue the updates a crash or an unknown route kept from being queued; returns how many were."""
        t = self.table
        q = (sa.select(t.c.id).where(t.c.notify_pending.is_(True), t.c.updated_at < now_ms() - RESEND_AFTER_MS)
             .order_by(t.c.updated_at).limit(500))
        async with self.engine.connect() as conn:
            ids = [r[0] for r in (await conn.execute(q)).all()]
        n = 0
        for doc_id in ids:
            async with self.engine.connect() as conn:
                row = (await conn.execute(sa.select(t.c.notify_pending, t.c.doc).where(t.c.id == doc_id))).first()
            if row is not None and row.notify_pending:
                await self.notify(json.loads(row.doc))
                n += 1
        return n
