"""keep_freed_memory: large tensors come from malloc's heap (kept between steps) instead of fresh
kernel pages, read off glibc's own accounting in a fresh process; a user's setting wins."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt and mallinfo2")

PROBE = """
import ctypes, sys
import torch
from omniformer.train.memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = libc.mallinfo2()
block = torch.empty(64 << 20, dtype=torch.uint8)  # 64 MiB, over glibc's largest default threshold
block.fill_(1)
after = libc.mallinfo2()
# where the block went: its own mapping (hblkhd) or the heap (uordblks)
print(kept, after.hblkhd - before.hblkhd >= 64 << 20, after.uordblks - before.uordblks >= 64 << 20)
"""


def _probe(mode: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**clean, **env})
    return out.stdout.split()


def test_large_tensors_come_from_the_heap_once_kept():
    # glibc's default: a 64 MiB block is its own mapping, handed back to the kernel on free.
    assert _probe("default") == ["None", "True", "False"]
    # kept: the block is in the heap, where a free keeps it for the next allocation.
    assert _probe("keep") == ["True", "False", "True"]


def test_a_users_own_malloc_setting_wins():
    assert _probe("keep", MALLOC_MMAP_THRESHOLD_="131072")[:2] == ["False", "True"]
