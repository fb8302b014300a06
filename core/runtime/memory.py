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
# Only the arena count: it is the one setting mallopt() cannot apply late. (Setting mmap_max and trim_threshold
# as tunables too, instead of by mallopt, made the probe in tests/test_memory_policy.py fault every block again.)
RETENTION_TUNABLES = "glibc.malloc.arena_max=1"
_RELAUNCHED = "TUCKERSCOPE_RETAINING_RELAUNCHED"
_USER_TUNABLES = "TUCKERSCOPE_USER_GLIBC_TUNABLES"


def relaunch_retaining_memory() -> None:
    """Re-execute this process once, first thing, with one arena for all threads as a glibc tunable (the window);
    retain_freed_memory() then sets the rest, as everywhere.

    mallopt() at run time comes too late for a threaded program: a thread that allocated before it (imports
    start some) has its own arena, which serves every large block with a fresh mmap whatever the options say,
    and when such a thread exits its arena is handed to the next new thread, e.g. the window's compute thread.
    Measured in the window at real scale ('total', 1.5 mm): its two compute threads took 25 million page
    faults and 40 s of kernel time during the first original (90 s); with one arena from start-up, 2 million
    and 3 s (70 s). No-op where retention is off (TUCKERSCOPE_RELEASE_MEMORY=1) or not Linux. In the
    re-executed process the user's own GLIBC_TUNABLES are put back, so that child processes do not inherit ours.
    """
    if not sys.platform.startswith("linux") or not _retention_wanted():
        return
    if "--multiprocessing-fork" in sys.orig_argv:
        return  # a spawned worker importing the main module: re-executing it would lose its parent's pipe data
    if os.environ.get(_RELAUNCHED) == "1":
        user = os.environ.pop(_USER_TUNABLES, "")
        os.environ.pop(_RELAUNCHED, None)
        if user:
            os.environ["GLIBC_TUNABLES"] = user
        else:
            os.environ.pop("GLIBC_TUNABLES", None)
        return
    environment = dict(os.environ)
    user = environment.get("GLIBC_TUNABLES", "")
    environment.update(
        {
            "GLIBC_TUNABLES": f"{user}:{RETENTION_TUNABLES}" if user else RETENTION_TUNABLES,
            _USER_TUNABLES: user,
            _RELAUNCHED: "1",
        }
    )
    try:
        os.execve(sys.executable, sys.orig_argv, environment)
    except OSError:
        return  # run on as we are: retain_freed_memory still covers the threads started from now on


def _retention_wanted() -> bool:
    return os.environ.get(RELEASE_MEMORY_VARIABLE, "").strip() not in ("1", "true", "yes")


def retain_by_default() -> bool:
    """The policy of `segment` and the window: keep freed memory for reuse (every tile and every re-run
    allocates the same activation and logit buffers again; about 1.5x faster re-segmentation of the demo)
    unless TUCKERSCOPE_RELEASE_MEMORY=1 asks to hand it back."""
    if not _retention_wanted():
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
