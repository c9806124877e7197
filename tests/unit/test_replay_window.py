"""The claims a worker remembers in memory are dropped once older than their windows (the database keeps
deciding replays; memory only answers fast for what this worker saw)."""

from __future__ import annotations

from node.federation.replay import ReplayGuard
from node.ids import now_ms


async def test_forget_old_drops_only_claims_past_their_windows() -> None:
    guard = ReplayGuard(engine=None, journal=None, nonce_window_ms=60_000, message_window_ms=3_600_000)  # type: ignore[arg-type]
    now = now_ms()
    guard._nonces = {("370300", "old-nonce-0000000"): now - 61_000, ("370300", "new-nonce-0000000"): now - 1_000}
    guard._messages = {"old-message": now - 3_601_000, "new-message": now - 1_000}
    # Scheduled every minute by the federation service, which awaits each job.
    await guard.forget_old()
    assert set(guard._nonces) == {("370300", "new-nonce-0000000")}
    assert set(guard._messages) == {"new-message"}
    assert guard.claim_message("new-message") is None  # still a replay here
    assert guard.claim_message("old-message") is not None  # forgotten here: the database decides
