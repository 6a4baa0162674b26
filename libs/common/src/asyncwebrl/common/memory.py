"""Process memory tuning for services that move large messages."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("asyncwebrl.memory")

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def keep_large_allocations(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Serve allocations of up to ``mmap_threshold`` bytes from the heap and keep
    up to ``trim_threshold`` bytes of freed heap instead of returning it.

    By default glibc maps each allocation above 128 KiB afresh and unmaps it on
    free, so every 500 KB group a service parses costs page faults and zeroing:
    measured at ~40% of the buffer's CPU per PutGroup. Returns False off glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = all(
            libc.mallopt(param, value) == 1
            for param, value in (
                (_M_MMAP_THRESHOLD, mmap_threshold),
                (_M_TRIM_THRESHOLD, trim_threshold),
                (_M_TOP_PAD, 16 << 20),
            )
        )
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.info("malloc tuning unavailable (not glibc); large messages cost more CPU")
    return ok
