"""Keep freed tensor memory in the process instead of handing it back to the OS after every operation.

glibc serves every allocation above 32 MB with a fresh mmap and unmaps it on free, so each full-resolution
activation of a 3D U-Net (hundreds of MB) is page-faulted and zeroed by the kernel again, every layer, every
pass. On the 2-core VM this was measured at about 0.6 ms per MB: a quarter or more of a CPU forward pass, and
the same for original and compressed networks. Telling glibc to serve large blocks from its heap and never
trim it makes freed activations reusable. The cost is that the process keeps its peak memory, and that peak is
higher: in one heap, long-lived smaller tensors (the U-Net's deeper skips) land in the holes freed full-resolution
blocks leave, so later full-resolution blocks extend the heap. One 128^3 forward of a TS 1.5 mm network took
2.74 GB above its start retained against 1.75 GB with fresh mappings (kernel 0.8 s against 3.6 s per forward).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_applied = False


def retain_freed_memory() -> bool:
    """Switch glibc to heap-only, never-trimmed allocation for this process; False where not possible.

    One arena for all threads: worker threads (Qt, OpenMP) would otherwise get per-thread arenas, which
    cannot hold blocks this large and fall back to mmap again.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_ARENA_MAX, 1) == 1
    ok = ok and mallopt(_M_MMAP_MAX, 0) == 1
    ok = ok and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _applied = ok
    return ok


RELEASE_MEMORY_VARIABLE = "TUCKERSCOPE_RELEASE_MEMORY"


def retain_by_default() -> bool:
    """The policy of `segment` and the window: keep freed memory for reuse (every tile and every re-run
    allocates the same activation and logit buffers again; about 1.5x faster re-segmentation of the demo)
    unless TUCKERSCOPE_RELEASE_MEMORY=1 asks to hand it back."""
    if os.environ.get(RELEASE_MEMORY_VARIABLE, "").strip() in ("1", "true", "yes"):
        return False
    return retain_freed_memory()


# The window's name for the same policy.
retain_for_interactive_use = retain_by_default


def process_memory_kb(field: str) -> int:
    """A memory field of this process's /proc/self/status (VmRSS now, VmHWM peak) in kB; Linux only, no psutil."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")
