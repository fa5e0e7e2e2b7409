"""Item sources for builds: JSONL, CSV, Parquet and Arrow IPC manifests, ImageFolder trees
(``root/<label>/*.jpg``) and WebDataset tar shards.

Image paths are resolved under the source's media root only: no ``..``, no absolute paths outside
it, no symlinks that leave it. A bad row is reported and skipped, never fatal to the build.

Rows are read one at a time (``read_source``), except that a Parquet or Arrow manifest of
precomputed vectors without images can also be read a column at a time (``columnar_source``):
the same items and the same errors, without a Python object per row.
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
from exemplar.retrieval.store.items import NewItem

__all__ = [
    "FORMATS",
    "IMAGE_SUFFIXES",
    "ColumnBlock",
    "ColumnarSource",
    "RowError",
    "SourceRow",
    "columnar_source",
    "count_rows",
    "detect_format",
    "read_source",
    "resolve_media",
]

FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet", "arrow", "imagefolder", "webdataset")
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
    if suffix in (".arrow", ".feather", ".ipc"):
        return "arrow"
    if suffix == ".tar":
        return "webdataset"
    raise InvalidRequest(
        f"cannot tell the format of {path.name!r}: use a .jsonl, .csv, .parquet or .arrow manifest, .tar shards or an "
        f"image folder, or name the format ({choices(FORMATS)})",
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


def _metadata(value: Any) -> dict[str, Any]:  # noqa: ANN401 - a row's metadata as read
    metadata = value or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            raise InvalidRequest("'metadata' is not valid JSON", param="metadata") from None
    if not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be a JSON object", param="metadata")
    return metadata


_NOT_NUMBERS = "'embedding' must be a list of numbers"
_NO_ID = "row has no 'id'"


def _item(row: dict[str, Any], root: Path) -> NewItem:
    item_id = _optional_str(row, "id")
    if item_id is None:
        raise InvalidRequest(_NO_ID, param="id")
    metadata = _metadata(row.get("metadata"))
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
        raise InvalidRequest(_NOT_NUMBERS, param="embedding")
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


def _open_parquet(path: Path, **options: Any):  # noqa: ANN202 - pyarrow.parquet.ParquetFile
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, **options)
    except (pyarrow.ArrowException, OSError) as exc:
        raise InvalidRequest(f"{path.name} is not a readable Parquet file ({type(exc).__name__})", param="source") from None


def _parquet(path: Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    line = 0
    for batch in _open_parquet(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            line += 1
            yield line, record


def _open_arrow(path: Path):  # noqa: ANN202 - pyarrow.ipc.RecordBatchFileReader
    """An Arrow IPC file (Feather v2); its batches are read when used. Read, not memory-mapped: a
    file cut short under a running build is then an error, not a SIGBUS."""
    import pyarrow

    try:
        return pyarrow.ipc.open_file(pyarrow.OSFile(str(path)))
    except (pyarrow.ArrowException, OSError) as exc:
        raise InvalidRequest(f"{path.name} is not a readable Arrow IPC file ({type(exc).__name__})",
                             param="source") from None


def _arrow_batches(path: Path, columns: list[str] | None = None) -> Iterator[Any]:
    reader = _open_arrow(path)
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        yield batch if columns is None else batch.select(columns)


def _arrow(path: Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    line = 0
    for batch in _arrow_batches(path):
        for start in range(0, batch.num_rows, 1024):
            for record in batch.slice(start, 1024).to_pylist():
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
    readers = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet, "arrow": _arrow}
    return _rows(readers[fmt](path), root)


def _csv_lines(path: Path) -> int:
    # csv skips empty lines, not lines of spaces; a last line without a newline still counts.
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.rstrip(b"\r\n"))


def count_rows(path: Path, fmt: str | None = None) -> int | None:
    """How many rows a source has, when that is cheap to know (for progress and ETA).

    Exact for JSONL (its non-blank lines, as read), Parquet, Arrow and image folders. For CSV it is an
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
    if fmt == "arrow":
        reader = _open_arrow(path)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    if fmt == "imagefolder":
        return sum(1 for _ in _imagefolder(path))
    return None


# Column-wise reading ----------------------------------------------------------------------------

_TEXT_FIELDS = ("id", "label", "domain", "text")
_READ_ROWS = 4096  # rows per record batch read: small batches reuse memory (measured fastest)


def _column_types_fit(schema: Any) -> bool:  # noqa: ANN401 - pyarrow.Schema
    """Whether every column ``_item`` reads would come out of a row read as what the column-wise
    read makes of it: strings or integers (their decimal digits, as ``str`` writes them) for the
    text fields, lists of floats or integers for ``embedding``. Anything else (floats for ids,
    booleans, half floats, JSON text vectors...) is left to the row read and its messages."""
    import pyarrow as pa

    names = [n for n in schema.names if n in COLUMNS]
    if len(names) != len(set(names)) or "embedding" not in names or "image" in names:
        return False
    for name in _TEXT_FIELDS:
        if name in names:
            kind = schema.field(name).type
            if pa.types.is_dictionary(kind):  # e.g. pandas categoricals
                kind = kind.value_type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
                    or pa.types.is_null(kind)):
                return False
    kind = schema.field("embedding").type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        return False
    value = kind.value_type
    return pa.types.is_float32(value) or pa.types.is_float64(value) or pa.types.is_integer(value)


@dataclasses.dataclass(frozen=True)
class ColumnarSource:
    """A Parquet or Arrow manifest read a column at a time, in tables of a set number of rows."""

    path: Path
    format: str
    columns: tuple[str, ...]

    def _batches(self, rows: int) -> Iterator[Any]:
        if self.format == "parquet":
            # Measured on 2 shared cores: Arrow's own threads took 2-3x the time (the build reads
            # ahead in a thread of its own instead), and pre-buffering a whole row group (often the
            # whole file) costs a fresh allocation as large as the file.
            reader = _open_parquet(self.path, pre_buffer=False)
            yield from reader.iter_batches(batch_size=rows, columns=list(self.columns), use_threads=False)
        else:
            yield from _arrow_batches(self.path, list(self.columns))

    def tables(self, rows: int) -> Iterator[Any]:
        """``pyarrow.Table``s of ``rows`` rows each (the last may have fewer), in source order: the
        same cut as a row read into chunks of ``rows``, so shards line up either way."""
        import pyarrow as pa

        pending: list[Any] = []
        count = 0
        for batch in self._batches(min(rows, _READ_ROWS)):
            while batch.num_rows:
                take = min(rows - count, batch.num_rows)
                pending.append(batch.slice(0, take))
                batch = batch.slice(take)
                count += take
                if count == rows:
                    yield pa.Table.from_batches(pending)
                    pending, count = [], 0
        if pending:
            yield pa.Table.from_batches(pending)


def columnar_source(path: Path, fmt: str) -> ColumnarSource | None:
    """The column-wise reader of a Parquet or Arrow manifest whose rows carry vectors (an
    ``embedding`` column of numeric lists) and no images, with text fields as strings or integers.
    None for any other source: it is read a row at a time."""
    if fmt == "parquet":
        schema = _open_parquet(path).schema_arrow
    elif fmt == "arrow":
        schema = _open_arrow(path).schema
    else:
        return None
    if not _column_types_fit(schema):
        return None
    return ColumnarSource(path, fmt, tuple(c for c in COLUMNS if c in schema.names))


@dataclasses.dataclass
class ColumnBlock:
    """Rows ``first_line``... of a columnar source as ``_item`` reads them, a column at a time.

    ``texts`` holds the text fields as Arrow strings (null: no value, "" included, as for a row)
    and ``values`` the same as Python lists; a field the source lacks is in neither. ``errors``
    are the rows refused while reading (no id, bad metadata, an embedding that is not all numbers),
    ``undecodable`` the rows of each field whose bytes were not UTF-8 (made null). Embeddings are
    ``lengths`` (-1: none) and ``offsets`` into the flat ``flat`` values.
    """

    first_line: int
    size: int
    texts: dict[str, Any]
    values: dict[str, list[str | None]]
    undecodable: dict[str, np.ndarray]
    metadata: list[dict[str, Any]] | None
    errors: dict[int, RowError]
    lengths: np.ndarray
    offsets: np.ndarray
    flat: np.ndarray

    @classmethod
    def read(cls, table: Any, first_line: int) -> ColumnBlock:  # noqa: ANN401 - pyarrow.Table
        size = table.num_rows
        texts: dict[str, Any] = {}
        undecodable: dict[str, np.ndarray] = {}
        id_empty, id_is_text = np.zeros(size, bool), False
        for name in _TEXT_FIELDS:
            if name not in table.column_names:
                continue
            texts[name], bad, empty, is_text = _text_column(_one_array(table.column(name)), size)
            if bad is not None:
                undecodable[name] = bad
            if name == "id":
                id_empty, id_is_text = empty, is_text
        values = {name: column.to_pylist() for name, column in texts.items()}
        # a row refused while read is reported with its id only where that is a string, as by _rows
        raw_ids = values["id"] if id_is_text else None
        errors: dict[int, RowError] = {}

        def refuse(rows: Any, message: str) -> None:  # noqa: ANN401 - row offsets
            for i in rows:
                if i not in errors:
                    item_id = "" if id_empty[i] else raw_ids[i] if raw_ids is not None else None
                    errors[i] = RowError(first_line + i, item_id, message)

        ids = values.get("id")
        no_id = np.ones(size, bool) if ids is None else np.fromiter((v is None for v in ids), bool, size)
        if "id" in undecodable:
            no_id &= ~undecodable["id"]  # it has an id, one the field checks refuse
        refuse(np.flatnonzero(no_id).tolist(), _NO_ID)
        metadata = None
        if "metadata" in table.column_names and table.column("metadata").null_count < size:
            metadata = []
            for i, raw in enumerate(table.column("metadata").to_pylist()):
                try:
                    metadata.append(_metadata(raw))
                except InvalidRequest as exc:
                    metadata.append({})
                    refuse([i], exc.message)
        lengths, offsets, flat, holes = _embedding_column(_one_array(table.column("embedding")))
        if holes is not None:
            refuse(np.flatnonzero(holes).tolist(), _NOT_NUMBERS)
        return cls(first_line, size, texts, values, undecodable, metadata, errors, lengths, offsets, flat)

    def matrix(self, rows: np.ndarray, dim: int) -> np.ndarray:
        """The embeddings of ``rows`` (ascending, each of length ``dim``) as a ``(len(rows), dim)``
        matrix; when they are all the rows, their values lie back to back and this is a view."""
        if 0 < len(rows) == self.size:
            start = self.offsets[0]
            return self.flat[start:start + dim * len(rows)].reshape(len(rows), dim)
        return self.flat[self.offsets[rows][:, None] + np.arange(dim)]


def _one_array(column: Any) -> Any:  # noqa: ANN401 - pyarrow.ChunkedArray to Array
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _text_column(column: Any, size: int) -> tuple[Any, np.ndarray | None, np.ndarray, bool]:  # noqa: ANN401
    """A text field as ``_optional_str`` reads it: (Arrow strings, null for no value or "";
    the rows whose bytes were not UTF-8, made null, or None; the rows that were ""; whether the
    column holds strings, as opposed to integers or nothing)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_null(column.type):
        return pa.nulls(size, pa.string()), None, np.zeros(size, bool), False
    if pa.types.is_integer(column.type):
        return column.cast(pa.string()), None, np.zeros(size, bool), False
    if pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
    undecodable = None
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        # A row read stops at such a value; here it is the row's error, not the build's.
        decoded: list[str | None] = []
        for raw in column.view(pa.binary()).to_pylist():
            try:
                decoded.append(None if raw is None else raw.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append(None)
        undecodable = np.fromiter((v is None for v in decoded), bool, size) & column.is_valid().to_numpy(
            zero_copy_only=False)
        column = pa.array(decoded, pa.string())
    empty = pc.equal(column, "").fill_null(False).to_numpy(zero_copy_only=False)
    if empty.any():
        column = pc.if_else(pa.array(empty), pa.nulls(size, pa.string()), column)
    return column, undecodable, empty, True


def _embedding_column(column: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:  # noqa: ANN401
    """An ``embedding`` list column without a Python loop: (each row's length, -1 where null; its
    start in the flat values; the flat values; the rows with a null among their values, or None)."""
    import pyarrow as pa

    size = len(column)
    child = column.values
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
        offsets = (column.offset + np.arange(size + 1, dtype=np.int64)) * width
    else:
        offsets = column.offsets.to_numpy().astype(np.int64, copy=False)
    lengths = np.diff(offsets)
    if column.null_count:
        lengths[column.is_null().to_numpy(zero_copy_only=False)] = -1
    holes = None
    if child.null_count:
        missing = np.concatenate([[0], np.cumsum(child.is_null().to_numpy(zero_copy_only=False))])
        holes = (missing[offsets[1:]] - missing[offsets[:-1]] > 0) & (lengths >= 0)
    flat = child.to_numpy(zero_copy_only=False)
    return lengths, offsets[:-1], flat, holes
