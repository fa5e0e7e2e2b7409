"""Test helpers: seeded synthetic data and the brute-force selection oracle."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from exemplar.retrieval import EncoderProvider, PoolService, PoolStore, SnapshotCache

__all__ = ["clustered_vectors", "close_pools", "open_pools", "oracle_balanced", "oracle_topk", "png_b64", "png_bytes", "wait_job"]


def clustered_vectors(*, n: int, dim: int, n_labels: int, n_domains: int, seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Unit vectors around label and domain centres (cluster structure, as real embeddings have)."""
    rng = np.random.default_rng(seed)
    label_centres = rng.normal(size=(n_labels, dim))
    domain_centres = rng.normal(size=(n_domains, dim))
    li = rng.integers(0, n_labels, size=n)
    di = rng.integers(0, n_domains, size=n)
    V = label_centres[li] + 0.7 * domain_centres[di] + 0.8 * rng.normal(size=(n, dim))
    V = (V / np.linalg.norm(V, axis=1, keepdims=True)).astype(np.float32)
    return V, [f"class-{i}" for i in li], [f"domain-{i}" for i in di]


def _ranked(V: np.ndarray, q: np.ndarray, rows: np.ndarray) -> list[int]:
    scores = V[rows] @ q
    order = np.argsort(-scores, kind="stable")
    return [int(rows[i]) for i in order]


def oracle_topk(V: np.ndarray, q: np.ndarray, *, k: int, offset: int = 0, allowed: np.ndarray | None = None,
                skip: int | None = None) -> list[int]:
    rows = np.arange(len(V)) if allowed is None else np.flatnonzero(allowed)
    rows = rows[rows != skip] if skip is not None else rows
    return _ranked(V, q, rows)[offset : offset + k]


def oracle_balanced(V: np.ndarray, labels: list[str], q: np.ndarray, *, k: int | None = None,
                    k_per_class: int | None = None, offset: int = 0, allowed: np.ndarray | None = None,
                    skip: int | None = None, scope: list[str] | None = None, fill: bool = False) -> list[int]:
    """Round robin over the classes in ``scope`` (default: every label) ordered by their best score,
    position ``p`` being depth ``p // C`` of class ``p % C``: the definition, spelled out slowly.
    Without ``fill`` a class that has run out leaves its slots empty; with it the others take them."""
    rows = np.arange(len(V)) if allowed is None else np.flatnonzero(allowed)
    rows = rows[rows != skip] if skip is not None else rows
    per_class = {}
    for label in sorted(set(labels) if scope is None else set(scope)):
        members = np.array([r for r in rows if labels[r] == label], dtype=np.int64)
        per_class[label] = _ranked(V, q, members)
    with_items = sorted((c for c in per_class if per_class[c]), key=lambda c: -float(V[per_class[c][0]] @ q))
    classes = with_items + [c for c in sorted(per_class) if not per_class[c]]
    total = k if k_per_class is None else k_per_class * len(classes)
    if not fill:
        out = []
        for position in range(offset, offset + total):
            ranked, depth = per_class[classes[position % len(classes)]], position // len(classes)
            if depth < len(ranked):
                out.append(ranked[depth])
        return out
    sequence = []
    depth = 0
    while len(sequence) < offset + total and any(depth < len(per_class[c]) for c in classes):
        for c in classes:
            if depth < len(per_class[c]) and len(sequence) < offset + total:
                sequence.append(per_class[c][depth])
        depth += 1
    return sequence[offset:]


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (24, 24), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def png_b64(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (24, 24)) -> str:
    return base64.b64encode(png_bytes(color, size)).decode()


def wait_job(client, job_id: str, timeout_s: float = 60) -> dict:  # noqa: ANN001 - a TestClient or httpx.Client
    """Poll ``GET /v1/jobs/{id}`` until the job ends (bounded in time)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish within {timeout_s} s")


def open_pools(data_dir: Path, encoders: EncoderProvider, **store_options: Any) -> PoolService:  # noqa: ANN401
    """A pool service over a store and snapshot cache of its own (no refresher): with a second
    one on the same data directory, a test stands for two processes."""
    store = PoolStore(data_dir, **store_options)
    return PoolService(store, SnapshotCache(store, refresh_s=0.0), encoders)


def close_pools(pools: PoolService) -> None:
    pools.snapshots.close()
    pools.store.close()
