"""Centred pools: rows stored as unit(v - mean of the first write), queries centred alike; checked
against brute force in that space over writes on top, a replacing write and compaction."""

from __future__ import annotations

import numpy as np
import pytest

from exemplar.errors import Incompatible
from exemplar.retrieval import NewItem, PoolService, Query, SelectionOptions, SelectionService
from exemplar.retrieval.build.jobs import JobService
from exemplar.retrieval.index.vectors import normalize
from exemplar.retrieval.store.centring import MIN_CENTRE_ROWS
from exemplar.retrieval.store.compaction import CompactionPolicy
from exemplar.retrieval.store.maintenance import CompactionService
from tests.helpers import oracle_topk, png_bytes

DIM = 16


def anisotropic(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Unit vectors sharing a large common direction (every pair's cosine near 0.9), in 4 classes."""
    rng = np.random.default_rng(seed)
    common = np.zeros(DIM)
    common[0] = 3.0
    centres = rng.normal(size=(4, DIM))
    labels = rng.integers(0, 4, n)
    V = common + 0.4 * centres[labels] + 0.3 * rng.normal(size=(n, DIM))
    return normalize(V), [f"c{c}" for c in labels]


def items(V: np.ndarray, labels: list[str], start: int = 0) -> list[NewItem]:
    return [NewItem(id=f"x{start + i:04d}", label=labels[i], embedding=V[i]) for i in range(len(V))]


def stored(pools: PoolService, name: str) -> tuple[np.ndarray, list[str]]:
    snap = pools.snapshots.snapshot(name)
    return np.asarray(snap.vectors), list(snap.ids)


def test_rows_and_queries_are_centred_by_the_first_writes_mean(pools: PoolService, selection: SelectionService) -> None:
    V, labels = anisotropic(200, seed=1)
    pools.create(name="c", encoder=f"precomputed:{DIM}", centre=True)
    pools.add_items("c", items(V[:150], labels[:150]))
    mean = V[:150].mean(axis=0)
    pools.add_items("c", items(V[150:], labels[150:], start=150))  # on top: the same mean
    rows, ids = stored(pools, "c")
    want = normalize(V - mean)
    np.testing.assert_allclose(rows, want[[int(i[1:]) for i in ids]], atol=1e-5)
    snap = pools.snapshots.snapshot("c")
    np.testing.assert_allclose(snap.centre, mean, atol=1e-6)
    for q in (3, 170):
        raw = V[q] + 0.05  # the server normalises a query vector, then centres it
        got = selection.select("c", Query(embedding=raw.tolist()), "topk", SelectionOptions(k=10))
        C = normalize(V - mean)
        assert [int(d.id[1:]) for d in got.demonstrations] == oracle_topk(C, normalize(normalize(raw[None]) - mean)[0], k=10)
        by_item = selection.select("c", Query(item_id=f"x{q:04d}"), "topk", SelectionOptions(k=10))
        assert [int(d.id[1:]) for d in by_item.demonstrations] == oracle_topk(C, C[q], k=10, skip=q)


def test_centring_spreads_the_scores(pools: PoolService, selection: SelectionService) -> None:
    V, labels = anisotropic(200, seed=2)
    pools.create(name="raw", encoder=f"precomputed:{DIM}")
    pools.create(name="centred", encoder=f"precomputed:{DIM}", centre=True)
    for name in ("raw", "centred"):
        pools.add_items(name, items(V, labels))
    spread = {}
    for name in ("raw", "centred"):
        got = selection.select(name, Query(item_id="x0007"), "topk", SelectionOptions(k=50))
        scores = [d.score for d in got.demonstrations]
        spread[name] = scores[0] - scores[-1]
    assert spread["centred"] > 3 * spread["raw"]


def test_a_small_first_write_is_refused_and_leaves_no_version(pools: PoolService) -> None:
    V, labels = anisotropic(MIN_CENTRE_ROWS - 1, seed=3)
    pools.create(name="c", encoder=f"precomputed:{DIM}", centre=True)
    with pytest.raises(Incompatible) as refused:
        pools.add_items("c", items(V, labels))
    assert str(MIN_CENTRE_ROWS) in refused.value.message
    assert pools.stats("c").versions == [] and pools.get("c").current_version is None
    # Refused before anything is encoded or stored: no uploaded image is left in the media folder.
    pools.create(name="images", encoder="open_clip:exemplar-tiny", centre=True)
    uploads = [NewItem(id=f"u{i}", label="a", image_bytes=png_bytes((10 * i, 20, 30))) for i in range(3)]
    with pytest.raises(Incompatible):
        pools.add_items("images", uploads)
    media = pools.store.files.media_dir(pools.get("images").id)
    assert not media.exists() or not any(p.is_file() for p in media.rglob("*"))


def test_a_replacing_write_takes_a_new_mean_and_compaction_keeps_it(pools: PoolService,
                                                                   selection: SelectionService) -> None:
    V, labels = anisotropic(300, seed=4)
    pools.create(name="c", encoder=f"precomputed:{DIM}", centre=True)
    pools.add_items("c", items(V[:100], labels[:100]))
    pool = pools.get("c")
    # A build with mode "replace" writes this way: the new version stands alone, with its own mean.
    from exemplar.retrieval.store.items import embed_items, item_row

    fresh = items(V[100:200], labels[100:200], start=100)
    vectors, _, _ = embed_items(pools.encoders(pool.encoder), pool.embed, fresh, precomputed=True)
    pools.store.write(pool, [item_row(i) for i in fresh], vectors, bases=pools.snapshots, source="test",
                      replace_all=True)
    mean = V[100:200].mean(axis=0)
    for start in range(200, 300, 10):  # small writes on top, to compact
        pools.add_items("c", items(V[start:start + 10], labels[start:start + 10], start=start))
    before = selection.select("c", Query(embedding=V[5].tolist()), "topk", SelectionOptions(k=12))
    jobs = JobService(pools.store.catalog)
    try:
        service = CompactionService(pools.store, jobs, CompactionPolicy(merge_factor=2),
                                    segments=pools.snapshots.segments, automatic=False)
        assert service.compact_once("c", force=True)["merged"]
    finally:
        jobs.close()
    snap = pools.snapshots.snapshot("c")
    np.testing.assert_allclose(snap.centre, mean, atol=1e-6)
    after = selection.select("c", Query(embedding=V[5].tolist()), "topk", SelectionOptions(k=12))
    C = normalize(V[100:] - mean)
    want = oracle_topk(C, normalize(V[5][None] - mean)[0], k=12)
    assert [int(d.id[1:]) - 100 for d in after.demonstrations] == want
    assert [d.id for d in before.demonstrations] == [d.id for d in after.demonstrations]


def test_pools_are_not_centred_unless_asked(pools: PoolService) -> None:
    V, labels = anisotropic(40, seed=5)
    pools.create(name="plain", encoder=f"precomputed:{DIM}")
    pools.add_items("plain", items(V[:3], labels[:3]))  # no minimum
    assert pools.get("plain").centre is False and pools.snapshots.snapshot("plain").centre is None
    rows, ids = stored(pools, "plain")
    np.testing.assert_allclose(rows, V[[int(i[1:]) for i in ids]], atol=1e-6)
