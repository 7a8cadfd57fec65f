"""Peak-RSS sampling shared by the benchmark scripts (Linux /proc)."""

from __future__ import annotations

import os
import threading
import time


def rss() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_rss(fn, interval: float = 0.001):
    """Run ``fn``; return (peak RSS above the level before it ran, sampled every ``interval`` s, its result)."""
    base = rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out = fn()
    finally:
        done.set()
        th.join()
    return max(peak[0], rss()) - base, out


# A fixed mmap threshold makes glibc return every large block to the OS when it is freed, so RSS follows
# the live tensors instead of the allocator's caching. Benchmarks run each measurement in a child process
# with this environment (the same for both sides of a ratio).
CHILD_ENV = {"PYTHONUNBUFFERED": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
