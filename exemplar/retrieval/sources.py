"""Item sources for builds: JSONL and CSV manifests, and ImageFolder trees (``root/<label>/*.jpg``).

Image paths are resolved under the source's media root only: no ``..``, no absolute paths outside
it, no symlinks that leave it. A bad row is reported and skipped, never fatal to the build.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from exemplar.errors import InvalidRequest, NotFound, choices
from exemplar.retrieval.items import NewItem

__all__ = ["FORMATS", "IMAGE_SUFFIXES", "RowError", "SourceRow", "detect_format", "read_source", "resolve_media"]

FORMATS: tuple[str, ...] = ("jsonl", "csv", "imagefolder")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
COLUMNS = ("id", "image", "text", "label", "domain", "metadata", "embedding")


@dataclasses.dataclass(frozen=True)
class RowError:
    line: int
    item_id: str | None
    message: str


@dataclasses.dataclass(frozen=True)
class SourceRow:
    """An item from a source, or the reason its row was rejected."""

    item: NewItem | None
    error: RowError | None = None


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "imagefolder"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv",):
        return "csv"
    raise InvalidRequest(
        f"cannot tell the format of {path.name!r}: use a .jsonl or .csv manifest or an image folder, "
        f"or name the format ({choices(FORMATS)})",
        param="format",
    )


def resolve_media(root: Path, reference: str) -> str:
    """Return ``reference`` normalised relative to ``root``, refusing anything that leaves it."""
    if not reference or "\x00" in reference:
        raise InvalidRequest("empty image path", param="image")
    candidate = Path(reference)
    if candidate.is_absolute():
        raise InvalidRequest("absolute image paths are not allowed; give paths relative to the manifest", param="image")
    if ".." in candidate.parts:
        raise InvalidRequest("image paths may not contain '..'", param="image")
    real_root = root.resolve()
    real = (real_root / candidate).resolve()
    if real_root not in real.parents:
        raise InvalidRequest("image path leaves the media root (symlink?)", param="image")
    return candidate.as_posix()


def _optional_str(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise InvalidRequest(f"{key!r} must be a string", param=key)
    return str(value)


def _item(row: dict[str, Any], root: Path) -> NewItem:
    item_id = _optional_str(row, "id")
    if item_id is None:
        raise InvalidRequest("row has no 'id'", param="id")
    metadata = row.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            raise InvalidRequest("'metadata' is not valid JSON", param="metadata") from None
    if not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be a JSON object", param="metadata")
    image = _optional_str(row, "image")
    embedding = row.get("embedding")
    if isinstance(embedding, str) and embedding:
        try:
            embedding = json.loads(embedding)
        except json.JSONDecodeError:
            raise InvalidRequest("'embedding' is not a JSON list", param="embedding") from None
    if embedding in ("", None):
        embedding = None
    elif not isinstance(embedding, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in embedding):
        raise InvalidRequest("'embedding' must be a list of numbers", param="embedding")
    return NewItem(
        id=item_id,
        label=_optional_str(row, "label"),
        text=_optional_str(row, "text"),
        domain=_optional_str(row, "domain"),
        metadata=metadata,
        image=resolve_media(root, image) if image is not None else None,
        media_root=str(root.resolve()),
        embedding=None if embedding is None else np.asarray(embedding, dtype=np.float64),
    )


def _rows(records: Iterator[tuple[int, dict[str, Any] | Exception]], root: Path) -> Iterator[SourceRow]:
    for line, record in records:
        if isinstance(record, Exception):
            yield SourceRow(None, RowError(line, None, f"unreadable row ({type(record).__name__})"))
            continue
        try:
            yield SourceRow(_item(record, root))
        except InvalidRequest as exc:
            item_id = record.get("id") if isinstance(record.get("id"), str) else None
            yield SourceRow(None, RowError(line, item_id, exc.message))


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield line, exc
                continue
            yield line, record if isinstance(record, dict) else ValueError("not an object")


def _csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "id" not in reader.fieldnames:
            raise InvalidRequest(f"CSV manifest needs a header with the columns {', '.join(COLUMNS)}", param="source")
        for record in reader:
            yield reader.line_num, {k: v for k, v in record.items() if k is not None}


def _imagefolder(root: Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    line = 0
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, dirnames, filenames in os.walk(label_dir):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                line += 1
                rel = (Path(dirpath) / name).relative_to(root)
                yield line, {"id": rel.with_suffix("").as_posix(), "image": rel.as_posix(), "label": label_dir.name}


def read_source(path: Path, fmt: str | None = None, media_root: Path | None = None) -> Iterator[SourceRow]:
    """Rows of a source; image paths are relative to ``media_root`` (default: the manifest's folder)."""
    if not path.exists():
        raise NotFound(f"source {str(path)!r} does not exist", param="source")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InvalidRequest(f"unknown source format {fmt!r}; valid: {choices(FORMATS)}", param="format")
    if fmt == "imagefolder":
        if not path.is_dir():
            raise InvalidRequest("an imagefolder source must be a directory", param="source")
        return _rows(_imagefolder(path), media_root or path)
    root = media_root or path.parent
    return _rows(_jsonl(path) if fmt == "jsonl" else _csv(path), root)
