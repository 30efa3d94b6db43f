"""One allocation regime for a whole process, so that two timings of one model in it agree.

glibc's malloc serves a large block from fresh mmap'd pages (a page fault per 4 KiB on first touch) or from
its heap, and moves the threshold between the two as the process frees large blocks; it also returns the
heap's top to the system past a trim threshold that moves with it. Which regime a model's activations get
depends on what the process did before: in one latency-target run a VGG-16 at batch 64 timed 200 ms while
its pruning was corrected and 215 ms at the run's end, which read a 30% latency cut as 35%
(benchmarks/allocator_in_run.py). Fixing both thresholds (blocks up to 32 MiB, glibc's largest mmap
threshold, from the heap; the heap kept up to 1 GiB) holds one regime. The cost: freed memory up to 1 GiB
stays with the process. Once fixed, the thresholds stay so for the rest of the process (a later run in the
same process with ``measure.steady_allocator=false`` still has them).
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 1024**2
TRIM_THRESHOLD = 1024**3
_held = False


def hold_steady() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (idempotent). False where there is no glibc
    ``mallopt`` (macOS, musl) or it refused: nothing changes there."""
    global _held
    if _held:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _held = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _held
