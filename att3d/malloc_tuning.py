"""glibc malloc settings for meshing-heavy processes (the CLI and the service; issue #16).

A 128³ mesh allocates and frees tens of MB of temporaries per stage. With glibc's defaults each block over
the (dynamic) mmap threshold is a fresh ``mmap`` whose pages fault in on first touch, and freed heap tops
are trimmed back to the kernel, only to fault in again on the next request. Raising the mmap threshold
to 32 MiB, keeping up to 1 GiB of free heap top and growing the heap 256 MiB at a time keeps those pages
mapped: measured 5-19 % of a 128³ prompt → GLB (docs/BENCHMARKS.md, issue #16), for a resident set that
stays at its high-water mark instead of shrinking between requests.

:func:`tune` sets them with ``mallopt`` at start-up, equivalent to the ``MALLOC_*_`` environment variables
(which the Dockerfile also sets). A variable already in the environment wins: its parameter is left
alone. Elsewhere than glibc (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>, the value, and the equivalent environment variable.
SETTINGS = (
    (-1, 1 << 30, "MALLOC_TRIM_THRESHOLD_"),  # M_TRIM_THRESHOLD: free heap top kept before trimming
    (-2, 1 << 28, "MALLOC_TOP_PAD_"),  # M_TOP_PAD: extra bytes asked of the kernel when the heap grows
    (-3, 1 << 25, "MALLOC_MMAP_THRESHOLD_"),  # M_MMAP_THRESHOLD: blocks from this size up are mmap'ed
)


def _libc() -> ctypes.CDLL | None:
    """The C library when it is glibc with ``mallopt``, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune() -> list[str]:
    """Apply :data:`SETTINGS` through glibc's ``mallopt``; the names of the variables set (empty where not
    glibc). Call once, early in the process, before the large allocations start."""
    libc = _libc()
    if libc is None:
        return []
    done = []
    for param, value, name in SETTINGS:
        if name in os.environ:
            continue
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1:
            done.append(name)
        else:
            log.debug("mallopt(%d, %d) refused", param, value)
    return done
