"""The coarse quantizer of large IVF indexes: an HNSW graph over the centroids, not a flat scan.

An IVF search first finds each query's ``nprobe`` nearest centroids. The flat quantizer that faiss
saves scores every centroid (4,095 x 512 floats at 1M rows, an 8 MiB read per query row); a graph
over the same centroids visits a few hundred of them. The graph is built when the index is loaded
(``install_graph``), from the centroids the file holds, so the file format does not change: saving
writes the flat quantizer back (``flat_quantizer``), and an index saved before this loads as before.

The graph's ``efSearch`` keeps the probed lists those of the flat scan in almost every query
(``graph_ef``; measured in ``benchmarks/quantizer.py``): nprobe was tuned with the flat quantizer,
and the recall it reached holds when the same lists are probed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import faiss
import numpy as np

__all__ = [
    "EF_PER_PROBE",
    "GRAPH_EF_CONSTRUCTION",
    "GRAPH_EF_MIN",
    "GRAPH_M",
    "GRAPH_MIN_LISTS",
    "centroid_matrix",
    "flat_quantizer",
    "follow_nprobe",
    "graph_ef",
    "install_graph",
    "quantizer_params",
    "uses_graph",
]

# Indexes with at least this many lists get the graph: the first size where it costs no more than
# the flat scan for a batch of 32 (0.032 against 0.031 ms a query) and less for one query (0.046
# against 0.083 ms); at 1,024 lists the flat scan is cheaper either way (0.039 / 0.016 ms against
# 0.046 / 0.036), at 4,096 the graph is 3x cheaper for one query (one core, CPU per query:
# benchmarks/results/quantizer-1m.md). ``ivf_lists`` gives 2,048 lists from about 260k rows.
GRAPH_MIN_LISTS = 2048
# Graph degree and construction depth: M 32 with efConstruction 80 builds 4,095 centroids in 0.22 s
# (one core), 16,384 in about 2 s, 65,536 in 10 to 25 s, and probes the flat scan's lists in 99.6%
# to 100% of queries up to 16,384 lists (97.5% at 65,536 lists and nprobe 64).
GRAPH_M = 32
GRAPH_EF_CONSTRUCTION = 80
# efSearch for nprobe lists: the graph's candidate list must be several times nprobe for its top
# nprobe to match the exact scan's; GRAPH_EF_MIN covers the small nprobe that tuning picks (at 1M,
# efSearch 48 for nprobe 4: the same 4 lists for every one of 480 held-out queries, recall@10 0.9617
# as with the flat scan).
GRAPH_EF_MIN = 48
EF_PER_PROBE = 4


def graph_ef(nprobe: int) -> int:
    """The ``efSearch`` under which the graph's ``nprobe`` nearest centroids are the flat scan's."""
    return max(GRAPH_EF_MIN, EF_PER_PROBE * int(nprobe))


def uses_graph(ivf: faiss.IndexIVF) -> bool:
    """Whether ``ivf`` searches its centroids through the graph."""
    return isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)


def _flat(ivf: faiss.IndexIVF) -> faiss.IndexFlat | None:
    """The flat index holding ``ivf``'s centroids (the quantizer, or the graph's storage)."""
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer = faiss.downcast_index(quantizer.storage)
    return quantizer if isinstance(quantizer, faiss.IndexFlat) else None


def centroid_matrix(ivf: faiss.IndexIVF) -> np.ndarray:
    """A view (no copy) of ``ivf``'s centroids, flat quantizer or graph; valid while ``ivf`` lives."""
    flat = _flat(ivf)
    if flat is None:
        return np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, ivf.nlist))
    return faiss.rev_swig_ptr(flat.get_xb(), ivf.nlist * ivf.d).reshape(ivf.nlist, ivf.d)


def install_graph(index: faiss.Index, min_lists: int | None = None) -> bool:
    """Replace the flat quantizer of ``index``'s IVF by a graph over its centroids when it has at
    least ``min_lists`` lists (default ``GRAPH_MIN_LISTS``); returns whether it did.

    The IVF owns its quantizer (``own_fields``): the graph is handed to it, so it lives and dies with
    the index whoever holds the Python object, and the flat quantizer it replaces is freed at once
    (the graph keeps its own copy of the centroids)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or ivf.nlist < (GRAPH_MIN_LISTS if min_lists is None else min_lists) or uses_graph(ivf):
        return False
    flat = faiss.downcast_index(ivf.quantizer)
    if not isinstance(flat, faiss.IndexFlat) or flat.ntotal != ivf.nlist or not ivf.own_fields:
        return False  # a quantizer of another kind, or one shared with something else: left alone
    graph = faiss.IndexHNSWFlat(ivf.d, GRAPH_M, ivf.metric_type)
    graph.hnsw.efConstruction = GRAPH_EF_CONSTRUCTION
    graph.add(centroid_matrix(ivf))
    graph.hnsw.efSearch = graph_ef(ivf.nprobe)
    ivf.quantizer = graph
    graph.this.disown()  # the IVF deletes it (own_fields)
    flat.this.own(True)  # no longer the IVF's: Python frees it with this proxy
    return True


def follow_nprobe(index: faiss.Index) -> None:
    """After ``index``'s nprobe changed: its graph's efSearch to match (no-op without a graph)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and uses_graph(ivf):
        faiss.downcast_index(ivf.quantizer).hnsw.efSearch = graph_ef(ivf.nprobe)


def quantizer_params(ivf: faiss.IndexIVF, nprobe: int) -> faiss.SearchParameters | None:
    """Per-call parameters for the quantizer of a search probing ``nprobe`` lists (None: flat)."""
    if not uses_graph(ivf):
        return None
    return faiss.SearchParametersHNSW(efSearch=graph_ef(nprobe))


@contextlib.contextmanager
def flat_quantizer(index: faiss.Index) -> Iterator[faiss.Index]:
    """``index`` with its flat quantizer in place of the graph while the block runs (to save it in
    the format it was read in, or to clone it where only flat quantizers are copied, the GPU)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or not uses_graph(ivf):
        yield index
        return
    graph = ivf.quantizer
    ivf.quantizer = faiss.downcast_index(graph).storage  # owned by the graph, which stays alive
    try:
        yield index
    finally:
        ivf.quantizer = graph
