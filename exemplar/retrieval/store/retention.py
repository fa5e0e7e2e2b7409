"""Removing segment and deletion files that no kept version uses.

A file is kept while any version that is not failed or pruned lists it, and while a write or a
compaction may still be making it: the segment ``s<v>`` and deletion files ``*-<v>.npy`` of a
version still ``building``, and (for want of a record of them) any staging folder or compacted
segment younger than ``grace_s``. Removing a file another process still has mapped is safe on
POSIX: the mapping keeps the data until that process lets go of it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Protocol

from exemplar.retrieval.catalog import Catalog
from exemplar.retrieval.store.manifest import Manifest

__all__ = ["GRACE_S", "collect_garbage"]

GRACE_S = 3600.0


class VersionFilesLike(Protocol):
    """The part of ``versions.VersionFiles`` used here."""

    def segments_dir(self, pool_id: int) -> Path: ...
    def pool_dir(self, pool_id: int) -> Path: ...
    def deletes_dir(self, pool_id: int) -> Path: ...


def collect_garbage(catalog: Catalog, files: VersionFilesLike, pool_id: int, *, grace_s: float | None = None) -> list[str]:
    """Remove what no kept version of ``pool_id`` uses; returns the names removed."""
    grace = GRACE_S if grace_s is None else grace_s
    segments: set[str] = set()
    deletes: set[str] = set()
    building: set[int] = set()
    for version, state, manifest in catalog.version_manifests(pool_id):
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
    now = time.time()

    def young(path: Path) -> bool:
        try:
            return now - path.stat().st_mtime < grace
        except FileNotFoundError:
            return True

    for folder in (files.segments_dir(pool_id), files.pool_dir(pool_id) / "versions"):
        for child in folder.iterdir() if folder.is_dir() else ():
            if child.name.startswith(".staging-"):
                if not young(child):
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(child.name)
                continue
            name = f"v{child.name}" if folder.name == "versions" else child.name
            if name in segments or (name.startswith("m") and young(child)):
                continue
            shutil.rmtree(child, ignore_errors=True)
            removed.append(name)
    folder = files.deletes_dir(pool_id)
    for child in folder.iterdir() if folder.is_dir() else ():
        version = child.stem.rsplit("-", 1)[-1]
        if child.name in deletes or (version.isdigit() and int(version) in building) or child.name.startswith("."):
            continue
        child.unlink(missing_ok=True)
        removed.append(child.name)
    return removed
