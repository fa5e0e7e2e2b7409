"""Allocator settings for server processes: make glibc give freed memory back to the OS.

WHY. Every write makes a new version, and every server process opens it as a new snapshot: arrays
over all rows of the version (uids, label and domain codes, per-class row lists; 1 to 8 MB each at
1M rows) are allocated and the previous snapshot's freed, and a select over several segments
allocates masks of up to a megabyte per segment, from uvicorn's thread pool. None of that is
kept, but glibc's malloc does not give it back:

* its mmap threshold is dynamic: freeing a block it had mmapped (any numpy temporary over 128 KiB)
  raises the threshold to that block's size, up to 32 MiB, so later arrays of up to that size
  come from the heaps instead of mmap and stay there when freed, in holes that trimming (only of
  the top of a heap) does not return; the trim threshold rises with it (to twice the mmap one);
* each thread that allocates gets its own arena (up to 8 x cores), each keeping its own holes.

Measured with ``benchmarks/memory_writes.py`` on a 1,000,000 x 512 float32 pool (1953 MB of raw
vectors, IVF4096,SQ4), 132 small writes (adds of 1/100/1000/10 items, deletes of 1000) under a
select load of 4 connections, then a compaction; RssAnon of the server, 2-core machine:

=====================================  ==============  ============  ================
glibc settings                         after queries   after writes  after compaction
=====================================  ==============  ============  ================
defaults                               194 MB          545 MB        609 MB
MALLOC_ARENA_MAX=2                     194 MB          349 MB        374 MB
ARENA_MAX=2 + TRIM_THRESHOLD_=128 KiB  187 MB          264 MB        273 MB
MALLOC_MMAP_THRESHOLD_=1 MiB           187 MB          380 MB        390 MB
malloc_trim(0) after each new snapshot 187 MB          340 MB        327 MB
MALLOC_TRIM_THRESHOLD_=128 KiB         187 MB          265 MB        286 MB
tune_allocator() below (3 runs)        186-187 MB      262-264 MB    273-282 MB
=====================================  ==============  ============  ================

With the defaults, malloc's in-use bytes grew only 55 -> 94 MB (the compacted segment's own
indexes and the snapshot's per-class arrays), while its 16 arenas held 400 MB free; the number of
live snapshots, segments and numpy arrays did not grow with the number of versions.

``tune_allocator()`` fixes both thresholds at 128 KiB (glibc's starting values; setting either
turns the dynamic adjustment off), so arrays over 128 KiB are mmapped and unmapped when freed
and the heaps are trimmed when their free top passes 128 KiB, and caps the arenas at 2. It calls
``mallopt`` at process start, since ``MALLOC_*`` variables are read only when a process starts:
``exemplar serve`` calls it before opening any pool, and each worker of ``--workers N`` (a fresh
process) when it builds its app. A parameter the operator set in the environment
(``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, or
``GLIBC_TUNABLES`` naming it) is left as they set it; ``EXEMPLAR_MALLOC_TUNING=off`` leaves all
three at glibc's defaults. Elsewhere than glibc (macOS, musl) it does
nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping

__all__ = ["OPT_OUT", "SETTINGS", "tune_allocator"]

log = logging.getLogger(__name__)

OPT_OUT = "EXEMPLAR_MALLOC_TUNING"  # "off": leave glibc's defaults

# mallopt parameters (glibc's malloc.h), the variable that sets each at process start, its
# GLIBC_TUNABLES name, and the value used here.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
SETTINGS: dict[str, tuple[int, str, str, int]] = {
    "mmap_threshold": (_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold", 128 * 1024),
    "trim_threshold": (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold", 128 * 1024),
    "arena_max": (_M_ARENA_MAX, "MALLOC_ARENA_MAX", "glibc.malloc.arena_max", 2),
}


def _glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc (it alone has ``gnu_get_libc_version``)."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # TypeError: Windows has no "this process" handle
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def tune_allocator(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Apply ``SETTINGS`` with ``mallopt`` (glibc only); returns what was applied, by name."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "").lower() in ("0", "off", "false", "no"):
        return {}
    libc = _glibc()
    if libc is None:
        return {}
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    tunables = environ.get("GLIBC_TUNABLES", "")
    applied: dict[str, int] = {}
    for name, (param, variable, tunable, value) in SETTINGS.items():
        if variable in environ or tunable in tunables:
            continue  # the operator's own setting, already in force
        if libc.mallopt(param, value) == 1:
            applied[name] = value
        else:
            log.warning("mallopt(%s, %s) failed; the allocator keeps its default", name, value)
    log.debug("glibc malloc settings applied: %s", applied)
    return applied
