"""The C allocator's settings for a long-running process that handles many large frames.

glibc's malloc raises its mmap threshold to the size of any large block freed, so after the first
few frames every 3-6 MB buffer (FFmpeg's decoded pictures, OpenCV's conversions) is carved out of
its heaps instead of being mapped on its own. Those heaps fragment as cameras reconnect and files
loop, freed memory is not returned to the system, and a daemon's RSS creeps up for hours. A fixed
threshold keeps every block of 1 MB or more in its own mapping, given back when freed; edged's own
frame buffers are reused (edged.frame.BufferPool), so the extra mappings cost nothing per frame.

glibc also gives threads up to 8 arenas per core. A decoder's many smaller blocks (FFmpeg's per-thread
contexts, re-created each time a file loops) spread over them, and each arena keeps its own
fragmented free space: with 8 cameras the arenas held ~25 MB each and RSS crept up by ~40 MB in five
minutes; one arena per core held RSS ~90 MB lower and flat (docs/performance-notes.md, section f).

What malloc frees inside its heaps still stays with the process until the heap's top is free. edged
hands those free pages back every half minute (`malloc_trim`): over a 10-minute overload run RSS then
grew -0.5 % instead of +5.5-6.7 %, 38 MB lower once settled, for 5-18 ms of a thread's time per call
(docs/performance-notes.md, section j).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from typing import Any

log = logging.getLogger("edged")

M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's <malloc.h>
M_ARENA_MAX = -8
LARGE_BLOCK = 1 << 20
TRIM_INTERVAL_S = 30.0


def _glibc(function: str) -> Any:
    """A function of glibc's malloc, or None on C libraries without it (musl and others)."""
    return getattr(ctypes.CDLL(None), function, None)


def _set_by_operator(variable: str, tunable: str) -> bool:
    """glibc's own settings in the environment: an operator's choice wins."""
    return variable in os.environ or tunable in os.environ.get("GLIBC_TUNABLES", "")


def tune_allocator() -> None:
    """Fix glibc's mmap threshold at 1 MB and its arenas at one per core, unless the environment sets them.

    A no-op on other C libraries.
    """
    if (mallopt := _glibc("mallopt")) is None:
        return
    settings = (
        (M_MMAP_THRESHOLD, LARGE_BLOCK, "MALLOC_MMAP_THRESHOLD_", "malloc.mmap_threshold"),
        (M_ARENA_MAX, len(os.sched_getaffinity(0)), "MALLOC_ARENA_MAX", "malloc.arena_max"),  # the cores it may use
    )
    for parameter, value, variable, tunable in settings:
        if not _set_by_operator(variable, tunable) and not mallopt(parameter, value):
            log.debug("mallopt(%d, %d) refused; the C allocator keeps its default", parameter, value)


async def return_free_memory(interval: float = TRIM_INTERVAL_S) -> None:
    """Every `interval` seconds, give the free pages inside malloc's heaps back to the system, on a thread
    (the call walks every arena). Runs until cancelled; returns at once on C libraries without `malloc_trim`."""
    if (malloc_trim := _glibc("malloc_trim")) is None:
        return
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(malloc_trim, 0)
