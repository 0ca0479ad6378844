"""release_freed_memory gives a fragmented heap's freed pages back (glibc, in a fresh process)."""

import ctypes
import subprocess
import sys

import pytest

# 2,000 blocks of 64 KiB (under glibc's mmap threshold: they come from the heap), one more block
# allocated after them and kept, so the freed ones are not at the heap's top and glibc does not
# give them back by itself.
CHILD = """
import sys
import pyarrow  # noqa: F401  (imported by release_freed_memory: not part of the drop)
from conclugen.features.heap import release_freed_memory
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
blocks = [b"x" * 65536 for _ in range(2000)]
keep = b"y" * 65536
del blocks
before = rss_mb()
if sys.argv[1] == "trim":
    release_freed_memory()
print(before - rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "malloc_trim"),
                    reason="malloc_trim is glibc's")
def test_freed_heap_pages_go_back_to_the_os() -> None:
    def drop_mb(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
        return float(out.stdout)

    assert drop_mb("keep") < 20  # without it the ~125 MB stay resident
    assert drop_mb("trim") > 100

