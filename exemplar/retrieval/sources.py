"""Item sources for builds: JSONL, CSV and Parquet manifests, ImageFolder trees
(``root/<label>/*.jpg``) and WebDataset tar shards.

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

__all__ = [
    "FORMATS",
    "IMAGE_SUFFIXES",
    "RowError",
    "SourceRow",
    "count_rows",
    "detect_format",
    "read_source",
    "resolve_media",
]

FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet", "imagefolder", "webdataset")
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
    line: int = 0


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "webdataset" if any(path.glob("*.tar")) else "imagefolder"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv",):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".tar":
        return "webdataset"
    raise InvalidRequest(
        f"cannot tell the format of {path.name!r}: use a .jsonl, .csv or .parquet manifest, .tar shards or an image folder, "
        f"or name the format ({choices(FORMATS)})",
        param="format",
    )


def resolve_media(root: Path, reference: str) -> str:
    """Return ``reference`` normalised relative to ``root``, refusing anything that leaves it."""
    if not reference or "\x00" in reference:
        raise InvalidRequest("empty image path", param="image")
    if "://" in reference:
        raise InvalidRequest("image URLs are not fetched; give a path relative to the manifest", param="image")
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
    raw_image = row.get("image")
    image_bytes = None
    if isinstance(raw_image, dict):  # Hugging Face datasets' {"bytes": ..., "path": ...}
        image_bytes = raw_image.get("bytes")
        raw_image = None if image_bytes else raw_image.get("path")
    elif isinstance(raw_image, (bytes, bytearray)):
        image_bytes, raw_image = bytes(raw_image), None
    image = _optional_str({"image": raw_image}, "image")
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
        media_root=str(root.resolve()) if image is not None else None,
        image_bytes=image_bytes,
        embedding=None if embedding is None else np.asarray(embedding, dtype=np.float64),
    )


def _rows(records: Iterator[tuple[int, dict[str, Any] | Exception]], root: Path) -> Iterator[SourceRow]:
    for line, record in records:
        if isinstance(record, Exception):
            yield SourceRow(None, RowError(line, None, f"unreadable row ({type(record).__name__})"), line)
            continue
        try:
            yield SourceRow(_item(record, root), None, line)
        except InvalidRequest as exc:
            item_id = record.get("id") if isinstance(record.get("id"), str) else None
            yield SourceRow(None, RowError(line, item_id, exc.message), line)


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines: shared with ``count_rows`` so the count matches what is read."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line, text in enumerate(fh, start=1):
            if text.strip():
                yield line, text


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    for line, text in _jsonl_lines(path):
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


def _open_parquet(path: Path):  # noqa: ANN202 - pyarrow.parquet.ParquetFile
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise InvalidRequest(f"{path.name} is not a readable Parquet file ({type(exc).__name__})", param="source") from None


def _parquet(path: Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    line = 0
    for batch in _open_parquet(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            line += 1
            yield line, record


_WDS_IMAGE = {"jpg", "jpeg", "png", "webp", "bmp", "gif"}
_WDS_TEXT = ("txt", "caption", "text")
_WDS_LABEL = ("cls", "label")


def _webdataset(path: Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    """Samples of WebDataset shards: members sharing a key (``key.jpg``, ``key.txt``, ``key.cls``,
    ``key.json`` ...) in consecutive order form one item; ``key.json`` may carry any item field."""
    import tarfile

    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    line = 0
    for shard in shards:
        sample: dict[str, bytes] = {}
        current: str | None = None
        try:
            with tarfile.open(shard, "r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    name = member.name.rsplit("/", 1)[-1]
                    key, _, ext = name.partition(".")
                    prefix = member.name[: len(member.name) - len(name)]
                    key = prefix + key
                    if current is not None and key != current:
                        line += 1
                        yield line, _wds_record(current, sample)
                        sample = {}
                    current = key
                    handle = tar.extractfile(member)
                    sample[ext.lower()] = handle.read() if handle else b""
        except (tarfile.TarError, OSError) as exc:
            line += 1
            yield line, exc
            continue
        if current is not None:
            line += 1
            yield line, _wds_record(current, sample)


def _wds_record(key: str, sample: dict[str, bytes]) -> dict[str, Any] | Exception:
    record: dict[str, Any] = {"id": key}
    try:
        if "json" in sample:
            extra = json.loads(sample["json"])
            if isinstance(extra, dict):
                record["metadata"] = extra.pop("metadata", None) or {k: v for k, v in extra.items()
                                                                     if k not in ("id", "label", "text", "domain")}
                record.update({k: extra[k] for k in ("id", "label", "text", "domain") if k in extra})
        for ext in _WDS_TEXT:
            if ext in sample:
                record["text"] = sample[ext].decode("utf-8", errors="replace").strip()
                break
        for ext in _WDS_LABEL:
            if ext in sample:
                record["label"] = sample[ext].decode("utf-8", errors="replace").strip()
                break
        if "domain" in sample:
            record["domain"] = sample["domain"].decode("utf-8", errors="replace").strip()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return exc
    image = next((sample[ext] for ext in sample if ext in _WDS_IMAGE), None)
    if image is not None:
        record["image"] = image
    return record


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
    if fmt == "webdataset":
        return _rows(_webdataset(path), media_root or (path if path.is_dir() else path.parent))
    root = media_root or path.parent
    readers = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}
    return _rows(readers[fmt](path), root)


def _csv_lines(path: Path) -> int:
    # csv skips empty lines, not lines of spaces; a last line without a newline still counts.
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.rstrip(b"\r\n"))


def count_rows(path: Path, fmt: str | None = None) -> int | None:
    """How many rows a source has, when that is cheap to know (for progress and ETA).

    Exact for JSONL (its non-blank lines, as read), Parquet and image folders. For CSV it is an
    approximation: non-empty lines less the header, so a quoted field spanning lines counts twice
    and lines ended by bare carriage returns count short. Build progress therefore takes the count
    as an estimate and settles the total from the rows actually read.
    """
    fmt = fmt or detect_format(path)
    if not (path.is_file() or path.is_dir()):
        return None  # a pipe or device: reading it to count would consume it
    if fmt == "jsonl":
        return sum(1 for _ in _jsonl_lines(path))
    if fmt == "csv":
        return max(0, _csv_lines(path) - 1)
    if fmt == "parquet":
        return int(_open_parquet(path).metadata.num_rows)
    if fmt == "imagefolder":
        return sum(1 for _ in _imagefolder(path))
    return None
