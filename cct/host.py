"""The host's memory allocator, tuned for training on the CPU.

glibc's malloc serves every allocation above its mmap threshold (128 KiB, raised on the fly up to
32 MiB) with a fresh ``mmap``: the kernel zero-fills it page by page on first touch and unmaps it on
``free``. A CCT step on the CPU allocates and frees hundreds of tensors of megabytes (the encoder's
activations, each chunk of the auxiliary objective), so with the default it spends a good part of the
step in page faults. Serving them from the heap and keeping freed memory there for reuse, which is
what the allocators the PyTorch CPU tuning guide recommends (jemalloc, tcmalloc) do, saved about a
fifth of the auxiliary decoders' time (0.80 -> 0.64 s on the paper configuration, 2 threads) and
5-12% of a whole step in 7 of 8 alternating pairs of runs; the peak resident memory stays within 3%
(docs/speed.md). This is glibc's own ``mallopt``, called through ctypes because Python does not
expose it.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
_M_MMAP_MAX = -4
_KEEP_UP_TO = (1 << 31) - 1  # bytes of free memory at the heap's top kept rather than returned (C int)


def keep_freed_memory() -> bool:
    """Make glibc serve large allocations from the heap (``M_MMAP_MAX`` 0) and keep freed memory for
    reuse (``M_TRIM_THRESHOLD`` 2 GiB), for this process and the workers it forks. Returns whether it
    was applied: not on other platforms or C libraries, and not when the user set malloc's own
    environment (``MALLOC_*`` variables, or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``)."""
    if not sys.platform.startswith("linux"):
        return False
    if any(k.startswith("MALLOC_") for k in os.environ) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # musl's mallopt is a stub that returns 0: report it as not applied
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_UP_TO))
