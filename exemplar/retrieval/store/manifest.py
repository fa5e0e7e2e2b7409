"""A version's manifest: the segments it is made of and the deleted rows of each."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Manifest", "SegmentEntry", "legacy_manifest"]


@dataclasses.dataclass(frozen=True)
class SegmentEntry:
    name: str  # "v<n>": the folder of a version from before segments; else a folder under segments/
    deletes: str | None = None  # file (under deletes/) of the segment's deleted rows in this version
    deleted: int = 0  # how many rows that file holds
    rows: int = 0  # rows in the segment (live or not)

    @property
    def live(self) -> int:
        return self.rows - self.deleted


@dataclasses.dataclass(frozen=True)
class Manifest:
    segments: tuple[SegmentEntry, ...]
    adapter: int | None = None  # the adapter whose vectors every segment holds (None: none)

    def to_json(self) -> dict[str, Any]:
        return {"segments": [dataclasses.asdict(s) for s in self.segments], "adapter": self.adapter}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        return cls(tuple(SegmentEntry(**s) for s in data["segments"]), data.get("adapter"))

    @property
    def size(self) -> int:
        return sum(s.live for s in self.segments)


def legacy_manifest(version: int, rows: int) -> Manifest:
    """A version written before segments: its own folder is its one segment, nothing deleted."""
    return Manifest((SegmentEntry(name=f"v{version}", rows=rows),))
