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


async def test_a_message_that_expires_sooner_is_forgotten_once_expired_not_after_the_whole_window() -> None:
    """A synchronous call's envelope lives 30 s: its claim is kept past its expiry by the nonce window, not for
    the message window (a week), which made every routed call's id stay a week in memory and in the table."""
    guard = ReplayGuard(engine=None, journal=None, nonce_window_ms=60_000, message_window_ms=3_600_000)  # type: ignore[arg-type]
    now = now_ms()
    sync = guard.claim_message("sync-call", expires_at=now + 30_000)
    week = guard.claim_message("async-message", expires_at=now + 7 * 86_400_000)
    assert sync is not None and week is not None
    # Stored with the same window start as held here, so the database prunes and reloads it alike.
    assert sync.row["at"] == guard._messages["sync-call"] == now + 30_000 + 60_000 - 3_600_000
    assert now <= week.row["at"] == guard._messages["async-message"] <= now_ms()
    await guard.forget_old()
    assert set(guard._messages) == {"sync-call", "async-message"}  # not expired yet: both still replays here
    # An envelope long expired (a clock set back is covered by the nonce window) is forgotten at once.
    guard.claim_message("expired-call", expires_at=now - 61_000)
    await guard.forget_old()
    assert set(guard._messages) == {"sync-call", "async-message"}
