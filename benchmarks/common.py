"""Helpers shared by the benchmark scripts (run as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx

__all__ = ["free_port", "percentile", "wait_ready", "write_json"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout_s} s")


def write_json(path: Path | None, data: Any) -> None:  # noqa: ANN401
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")


def milvus_ivf_collection(root: Path, V: Any, nlist: int) -> tuple[Any, float] | None:  # noqa: ANN401 - numpy, MilvusClient
    """A Milvus Lite collection "hot" over ``V`` (IVF_FLAT, inner product, ``nlist`` lists, the
    layout the peers are compared on), inserted, flushed and loaded; ``(client, seconds)``, or None
    without pymilvus (`pip install -e '.[bench]'`)."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        return None
    client = MilvusClient(str(root / "milvus.db"))
    if client.has_collection("hot"):  # a run reusing an earlier run's folder (--reuse) inserts afresh
        client.drop_collection("hot")
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type="IVF_FLAT", metric_type="IP", params={"nlist": nlist})
    client.create_collection("hot", dimension=V.shape[1], metric_type="IP", auto_id=False, index_params=params)
    started = time.perf_counter()
    for s in range(0, len(V), 20_000):
        client.insert("hot", [{"id": int(i), "vector": V[i].tolist()} for i in range(s, min(len(V), s + 20_000))])
    client.flush("hot")
    client.load_collection("hot")
    return client, time.perf_counter() - started
