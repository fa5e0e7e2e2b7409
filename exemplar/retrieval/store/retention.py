"""Removing segment and deletion files that no kept version uses.

A file is kept while any version that is not failed or pruned lists it, and while a write or a
compaction may still be making it: the segment ``s<v>`` (and its staging folder) and the deletion
files ``*-<v>.npy`` of a version still ``building`` or newer than every version this pass read
(reserved by a writer after it looked), and any compacted segment ``m...`` (or its staging folder)
while a compaction job of the pool is queued or running.

On one host (SQLite), removing a file another process still has mapped is safe: POSIX keeps the
data until that process lets go. On a shared catalog the readers may sit on other hosts, over a
network file system that gives no such promise (NFS turns a file removed on one client into ESTALE
on another). There a file no kept version lists is first recorded as retired, and removed only
once ``grace_s`` has passed since and no live replica reports serving it (replicas report the
segments they have loaded with every heartbeat).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Protocol

from exemplar.retrieval.store.catalog import Catalog
from exemplar.retrieval.store.manifest import Manifest

__all__ = ["SHARED_GRACE_S", "RetentionPolicy", "collect_garbage"]

SHARED_GRACE_S = 60.0
"""The default wait before a retired file is removed, on a shared catalog: many heartbeats, so a
replica that loaded a version just before it was replaced has reported serving its segments."""


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    grace_s: float = 0.0  # 0: remove at once (one host)

    @classmethod
    def for_catalog(cls, catalog: Catalog, *, grace_s: float | None = None) -> "RetentionPolicy":
        """The default for ``catalog`` (a grace on a shared one), or ``grace_s`` when given."""
        return cls(grace_s=grace_s if grace_s is not None else (SHARED_GRACE_S if catalog.shared else 0.0))


class VersionFilesLike(Protocol):
    """The part of ``versions.VersionFiles`` used here."""

    def segments_dir(self, pool_id: int) -> Path: ...
    def pool_dir(self, pool_id: int) -> Path: ...
    def deletes_dir(self, pool_id: int) -> Path: ...


def collect_garbage(catalog: Catalog, files: VersionFilesLike, pool_id: int,
                    policy: RetentionPolicy = RetentionPolicy()) -> list[str]:
    """Remove what no kept version of ``pool_id`` uses, nothing is still writing and (with a
    grace) no live replica serves, once retired for the grace; returns the names removed."""
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
    unused: dict[str, Path] = {}
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
            unused[child.name if staging else name] = child  # the name a replica reports serving
    folder = files.deletes_dir(pool_id)
    for child in folder.iterdir() if folder.is_dir() else ():
        version = child.stem.rsplit("-", 1)[-1]
        if child.name in deletes or (version.isdigit() and (int(version) in building or int(version) > newest)):
            continue
        if "-c" in child.stem and (compacting or _mtime(child) >= started):
            continue
        unused[f"deletes/{child.name}"] = child
    if policy.grace_s > 0:
        unused = _past_grace(catalog, pool_id, unused, policy.grace_s)
    removed: list[str] = []
    for path in unused.values():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    if policy.grace_s > 0 and unused:
        catalog.forget_retired(pool_id, unused)
    return removed


def _past_grace(catalog: Catalog, pool_id: int, unused: dict[str, Path], grace_s: float) -> dict[str, Path]:
    """Of ``unused``, what no live replica serves and was retired at least ``grace_s`` ago (the
    others are recorded as retired now, if they were not already)."""
    served = catalog.served_segments(pool_id)
    candidates = {k: p for k, p in unused.items() if k.removeprefix(".staging-") not in served}
    since = catalog.retire(pool_id, candidates)
    now = since[""]
    return {k: p for k, p in candidates.items() if since[k] <= now - grace_s}


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
