"""The C allocator's settings for a long-running process that handles many large frames.

glibc's malloc raises its mmap threshold to the size of any large block freed, so after the first
few frames every 3-6 MB buffer (FFmpeg's decoded pictures, OpenCV's conversions) is carved out of
its heaps instead of being mapped on its own. Those heaps fragment as cameras reconnect and files
loop, freed memory is not returned to the system, and a daemon's RSS creeps up for hours. A fixed
threshold keeps every block of 1 MB or more in its own mapping, given back when freed; edged's own
frame buffers are reused (edged.frame.BufferPool), so the extra mappings cost nothing per frame.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("edged")

M_MMAP_THRESHOLD = -3  # mallopt parameter, from glibc's <malloc.h>
LARGE_BLOCK = 1 << 20


def _set_by_operator() -> bool:
    """glibc's own settings in the environment: an operator's choice wins."""
    return "MALLOC_MMAP_THRESHOLD_" in os.environ or "malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "")


def map_large_blocks() -> None:
    """Fix glibc's mmap threshold at 1 MB, unless the environment sets it; a no-op on other C libraries."""
    if _set_by_operator():
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:  # musl and others: they have no such threshold to tune
        return
    if not mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK):
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; the C allocator keeps its defaults")
