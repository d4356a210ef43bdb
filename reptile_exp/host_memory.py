"""Host memory reuse for the task-batched engine on CPU (issue 6; measured in docs/benchmarks.md).

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with fresh pages from the kernel and
unmaps them on free. Task-stacked activations are that large (Mini-ImageNet: 45 MiB per layer output and inner
step), so each inner step faulted in gigabytes of zeroed pages again: on `experiment=miniimagenet_5w5s
debug=smoke` the kernel's time exceeded the compute. Serving every block from the heap and never trimming it
keeps those pages for the next step (the process keeps its peak memory until it exits).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc <malloc.h>
INT_MAX = 2**31 - 1


def keep_host_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse (no mmap'ed blocks, no trimming), for the rest of the process.

    Returns False, changing nothing, without glibc (macOS, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1
