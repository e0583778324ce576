"""glibc allocator settings for long inference loops over large tensors.

A rollout allocates and frees the same large activations every pass. glibc serves blocks above its mmap
threshold (dynamic, at most 32 MB) with fresh mappings that the kernel zero-fills page by page on every
allocation, and returns freed heap tops to the system; at 2·10^5 atoms most activations are above that
threshold, at 10^5 most are below, which made the larger size cost more per atom (BENCHMARKS.md,
ensemble forecasts). Raising both thresholds keeps freed blocks for reuse: measured 8-10 % faster per
frame at 2·10^5 atoms, at the price of 25-50 % more peak RSS (freed blocks are kept and fragment), so
it is a switch (``ensemble.keep_freed_memory``).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters


def keep_freed_memory(mmap_threshold_bytes: int = 1 << 30) -> bool:
    """Serve blocks up to ``mmap_threshold_bytes`` from the heap and never trim it; False when the C
    library is not glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold_bytes) and mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)
                and mallopt(M_TOP_PAD, 64 << 20))
