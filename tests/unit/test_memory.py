"""Freed memory goes back to the system (node/memory.py): blocks allocated on another thread and freed with
holes among them stay resident until trimmed, as rows fetched on a SQLite connection's thread did."""

import threading
from pathlib import Path

from node import memory


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_trimming_gives_back_what_a_thread_freed_among_live_blocks():
    assert memory.can_trim()  # glibc, as on every Linux this project supports
    kept: list[bytes] = []

    def churn() -> None:
        blocks = [bytes(4000) + bytes([i % 256]) for i in range(20_000)]  # ~80 MiB in this thread's arena
        kept.extend(blocks[::50])  # one in fifty stays alive, so the freed ones are holes, not the heap's top
        blocks.clear()

    t = threading.Thread(target=churn)
    t.start()
    t.join()
    before = rss_mib()
    assert memory.trim()
    after = rss_mib()
    assert before - after > 40, (before, after)
    assert len(kept) == 400
