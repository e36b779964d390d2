"""Keep freed tensor memory in the process for the next training step, where the C library allows.

glibc's malloc hands blocks over its mmap threshold back to the kernel on free, so a step whose
activations are large (a decoder's tokens x vocabulary logits) faults the same memory in again
every step; raising the threshold keeps those blocks for the next step, as PyTorch's CUDA
allocator caches device memory (figures: benchmarks/README.md, "The CPU training step").
A user's own ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` wins.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3    # mallopt's parameter numbers (malloc.h)
KEEP_BYTES = 1 << 30                           # blocks up to 1 GiB come from the heap and stay there
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_kept = False


def keep_freed_memory(limit: int = KEEP_BYTES) -> bool:
    """Raise glibc's mmap and trim thresholds to ``limit`` bytes, once per process; True where
    they are (now or already) raised, False where the C library is not glibc or the user set them."""
    global _kept
    if _kept:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _kept = bool(libc.mallopt(M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(M_TRIM_THRESHOLD, limit))
    except (OSError, AttributeError):
        return False
    return _kept
