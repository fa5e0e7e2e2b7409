"""Allocator settings for server processes: make glibc give freed memory back to the OS.

WHY. Every write makes a new version, and every server process opens it as a new snapshot: arrays
over all rows of the version (uids, label and domain codes, per-class row lists; 1 to 8 MB each at
1M rows) are allocated and the previous snapshot's freed, and a select over several segments
allocates masks of up to a megabyte per segment, from uvicorn's thread pool. None of that is
kept, but glibc's malloc does not give it back:

* its mmap threshold is dynamic: freeing a block it had mmapped (any numpy temporary over 128 KiB)
  raises the threshold to that block's size, up to 32 MiB, so later arrays of up to that size
  come from the heaps instead of mmap and stay there when freed, in holes that trimming (only of
  the top of a heap) does not return;
* each thread that allocates gets its own arena (up to 8 x cores), each keeping its own holes.

Measured with ``benchmarks/memory_writes.py`` on a 1,000,000 x 512 float32 pool (1953 MB of raw
vectors, IVF4096,SQ4), 132 small writes (adds of 1/100/1000/10 items, deletes of 1000) under a
select load of 4 connections, then a compaction; RssAnon of the server, 2-core machine:

==========================================  ==============  ============  ================
glibc settings                              after queries   after writes  after compaction
==========================================  ==============  ============  ================
defaults                                    194 MB          545 MB        609 MB
MALLOC_ARENA_MAX=2                          194 MB          349 MB        374 MB
malloc_trim(0) after each new snapshot      187 MB          340 MB        327 MB
mmap + trim thresholds 128 KiB, 2 arenas    186-187 MB      262-264 MB    273-282 MB
mmap 4 MiB, trim 128 KiB, 2 arenas          194 MB          340 MB        369 MB
2 arenas + malloc_trim(0) after each swap   186 MB          250 MB        259-264 MB
==========================================  ==============  ============  ================

Fixing the mmap threshold low (fourth row) gives memory back too, but costs every request: each
temporary over 128 KiB is then mmapped, faulted in and unmapped. In one process (300k x 512,
IVF2048,SQ4, one thread) a topk search took 0.58 ms with glibc's defaults and 0.79 ms with it,
a 20-class balanced search 4.1 and 5.0-5.4 ms, allocating a 1 MB mask 0.34 and 0.90 ms. So the
thresholds stay dynamic, the arenas are capped at 2 (``tune_allocator``, at process start:
``exemplar serve`` calls it before opening any pool, and each worker of ``--workers N`` when it
builds its app), and the freed memory is handed back when a version is swapped out
(``release_freed_memory``, which the snapshot cache calls after each swap: ``malloc_trim(0)``
returns free pages from the middle of every arena, not only the top of the main heap). The hot
path pays nothing; a swap pays one trim.

A setting the operator made in the environment (``MALLOC_ARENA_MAX``, or ``GLIBC_TUNABLES``
naming it) is left as they set it; ``EXEMPLAR_MALLOC_TUNING=off`` turns both off. Elsewhere than
glibc (macOS, musl) both do nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping

__all__ = ["OPT_OUT", "SETTINGS", "release_freed_memory", "tune_allocator"]

log = logging.getLogger(__name__)

OPT_OUT = "EXEMPLAR_MALLOC_TUNING"  # "off": leave glibc's defaults

# mallopt parameters (glibc's malloc.h), the variable that sets each at process start, its
# GLIBC_TUNABLES name, and the value used here.
# (Setting the mmap or trim threshold would turn glibc's dynamic thresholds off: see above.)
_M_ARENA_MAX = -8
SETTINGS: dict[str, tuple[int, str, str, int]] = {
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
    if _opted_out(environ):
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


def release_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Hand memory that is free inside the allocator's arenas back to the OS (glibc's
    ``malloc_trim(0)``); returns whether it ran."""
    if _opted_out(os.environ if environ is None else environ):
        return False
    libc = _glibc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    libc.malloc_trim(0)
    return True


def _opted_out(environ: Mapping[str, str]) -> bool:
    return environ.get(OPT_OUT, "").lower() in ("0", "off", "false", "no")
