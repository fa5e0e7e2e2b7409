"""Durable file writes: temporary name, fsync, rename, fsync of the directory."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["fsync_dir", "publish_dir", "save_rows", "staged_dir", "write_bytes_atomic", "write_npy_atomic"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    """An array as a ``.npy`` file, written like ``write_bytes_atomic`` (deletion files, adapter rows)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())


def save_rows(path: Path, rows: np.ndarray, *, chunk: int = 16_384) -> None:
    """Rows as a 2-D float32 ``.npy`` file (each row flattened), copied a chunk at a time: a strided
    view (``np.save`` would write it an element at a time) is saved without a copy of it all."""
    width = int(np.prod(rows.shape[1:], dtype=np.int64))
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": (len(rows), width)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for start in range(0, len(rows), chunk):
            fh.write(np.ascontiguousarray(rows[start : start + chunk], np.float32).tobytes())


def publish_dir(staging: Path, final: Path) -> None:
    """Rename a fully written staging directory to its final name (replacing a stale one)."""
    for child in staging.iterdir():
        if child.is_file():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(staging)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A fresh staging folder beside ``final`` to write into; published as ``final`` when the block
    ends, removed when it raises: the folder is there whole or not at all."""
    staging = final.with_name(f".staging-{final.name}")
    shutil.rmtree(staging, ignore_errors=True)  # a crash's leftovers
    staging.mkdir(parents=True)
    try:
        yield staging
        publish_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
