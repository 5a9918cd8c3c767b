"""edged gives the free pages inside malloc's heaps back to the system while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from pathlib import Path

import pytest

from edged.allocator import return_free_memory

BLOCK = 64 * 1024  # below glibc's mmap threshold: carved out of the heap, not mapped on its own
BLOCKS = 800  # 50 MB


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


libc = ctypes.CDLL(None)
pytestmark = pytest.mark.skipif(not hasattr(libc, "malloc_trim"), reason="a C library without malloc_trim")


def test_memory_freed_inside_the_heap_is_returned_to_the_system() -> None:
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
    assert all(blocks)
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)  # resident, as a decoder's buffers are
    for block in blocks[:-1]:
        libc.free(block)  # the last one stays: the freed space is not at the heap's top, so free() keeps it
    held = rss_mb()

    async def a_few_rounds() -> None:
        task = asyncio.create_task(return_free_memory(interval=0.05))
        await asyncio.sleep(0.3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(a_few_rounds())
    returned = held - rss_mb()
    libc.free(blocks[-1])
    assert returned > 0.8 * BLOCK * BLOCKS / 2**20, f"{returned:.1f} MB returned of {BLOCK * BLOCKS / 2**20:.0f}"
