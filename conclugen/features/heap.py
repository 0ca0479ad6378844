"""Handing freed memory back to the OS in the pipeline's long-lived workers.

A decode worker or backbone actor frees its clip's frames after each batch, but the allocator
keeps the pages: glibc raises its mmap threshold after the first large frees, so later frames
come from the heap, and a heap whose top chunk is still in use is never shrunk. Over a long run
every worker then holds its largest batch's heap for good. ``release_freed_memory`` after each
batch returns those pages. Measured at the run's memory peak on 2 cores, the idle Ray workers
summed 1.40 GiB after 100 clips and 1.98 GiB after 1,000 without it, 1.32 and 1.33 GiB with it.
It costs milliseconds (9 ms to hand back 125 MB) next to a batch's seconds of decoding or
forward passes.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


def release_freed_memory() -> None:
    """Return the C heap's and Arrow's freed pages to the OS (a no-op where neither can)."""
    import pyarrow as pa

    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    pa.default_memory_pool().release_unused()
