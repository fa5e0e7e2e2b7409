"""Removing segment and deletion files that no kept version uses.

A file is kept while any version that is not failed or pruned lists it, and while a write or a
compaction may still be making it: the segment ``s<v>`` (and its staging folder) and the deletion
files ``*-<v>.npy`` of a version still ``building`` or newer than every version this pass read
(reserved by a writer after it looked), and any compacted segment ``m...`` (or its staging folder)
while a compaction job of the pool is queued or running. Removing a file another
process still has mapped is safe on POSIX: the mapping keeps the data until that process lets go.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Protocol

from exemplar.retrieval.store.catalog import Catalog
from exemplar.retrieval.store.manifest import Manifest

__all__ = ["collect_garbage"]


class VersionFilesLike(Protocol):
    """The part of ``versions.VersionFiles`` used here."""

    def segments_dir(self, pool_id: int) -> Path: ...
    def pool_dir(self, pool_id: int) -> Path: ...
    def deletes_dir(self, pool_id: int) -> Path: ...


def collect_garbage(catalog: Catalog, files: VersionFilesLike, pool_id: int) -> list[str]:
    """Remove what no kept version of ``pool_id`` uses and nothing is still writing; returns the
    names removed."""
    # Read in this order: a compaction running now is seen by the first; one that commits later
    # lists its segment in the manifests read next; one that starts later writes files younger
    # than ``started``.
    started = time.time() - 1.0
    compacting = catalog.compaction_active(pool_id)
    segments: set[str] = set()
    deletes: set[str] = set()
    building: set[int] = set()
    newest = 0
    for version, state, manifest in catalog.version_manifests(pool_id):
        newest = max(newest, version)
        if state in ("failed", "pruned"):
            continue
        if state == "building":
            building.add(version)
            segments.update({f"s{version}", f"v{version}"})
        if manifest is None:
            segments.add(f"v{version}")
            continue
        for entry in Manifest.from_json(manifest).segments:
            segments.add(entry.name)
            if entry.deletes:
                deletes.add(entry.deletes)
    removed: list[str] = []
    for folder in (files.segments_dir(pool_id), files.pool_dir(pool_id) / "versions"):
        for child in folder.iterdir() if folder.is_dir() else ():
            name = child.name.removeprefix(".staging-")
            if folder.name == "versions":
                name = f"v{name}" if name.isdigit() else name
            staging = child.name.startswith(".staging-")
            if (not staging and name in segments) or _in(name, building) or _newer(name, newest):
                continue
            if name.startswith("m") and (compacting or _mtime(child) >= started):  # a compaction's, in progress
                continue
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child.name)
    folder = files.deletes_dir(pool_id)
    for child in folder.iterdir() if folder.is_dir() else ():
        version = child.stem.rsplit("-", 1)[-1]
        if child.name in deletes or (version.isdigit() and (int(version) in building or int(version) > newest)):
            continue
        if "-c" in child.stem and (compacting or _mtime(child) >= started):
            continue
        child.unlink(missing_ok=True)
        removed.append(child.name)
    return removed


def _in(name: str, building: set[int]) -> bool:
    """Whether ``name`` is the segment (or version folder) of a write still in progress."""
    return name[1:].isdigit() and int(name[1:]) in building


def _newer(name: str, newest: int) -> bool:
    """Whether ``name`` is the segment of a version reserved after this pass read the catalog."""
    return name.startswith("s") and name[1:].isdigit() and int(name[1:]) > newest


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
