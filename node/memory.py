"""Handing memory the process has freed back to the system (glibc's `malloc_trim`).

A node's threads (one per SQLite connection, the journal's writer, the event loop) each allocate from
their own glibc arena, and glibc gives an arena's free pages back to the system only from the top of its
heap. Rows fetched on a connection's thread and freed on the event loop leave free chunks in the middle,
so the resident size crept up for as long as a node ran though its live memory did not. In a diagnostic
soak (`scripts/soak.py` with tracemalloc, 3 Dec 2026) the province's resident size grew 29.6 MiB in eight
minutes while the objects Python held grew 2.4 MiB; glibc's counts (`mallinfo2`) showed its arenas' free
bytes up 24 MiB and their bytes in use up 4 MiB; one `malloc_trim(0)` in the running county took its
resident size from 382 to 293 MiB. With the trim, the hour's soak grew +0.9 % (province), +2.1 % (city) and
-1.6 % (county) after its first ten minutes, against +7.5 % and +6.5 % at the province and the city before.

So each process trims once a minute, on a thread of its own (ctypes lets go of the GIL, and the event loop
does not wait for it). Elsewhere than glibc (musl, macOS) there is no `malloc_trim` and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from typing import Any

log = logging.getLogger("govnode.memory")

TRIM_INTERVAL_S = 60.0


def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None


_TRIM = _malloc_trim()


def can_trim() -> bool:
    return _TRIM is not None


def trim() -> bool:
    """Give the arenas' free pages back to the system; True if any were (glibc's answer)."""
    if _TRIM is None:
        return False
    t0 = time.perf_counter()
    released = bool(_TRIM(0))
    log.debug("malloc_trim: %s in %.1f ms", "released" if released else "nothing", (time.perf_counter() - t0) * 1000)
    return released
