"""Modality weighting (``fusion``) checked against brute force over the encoder's own image and text
vectors: score = w_image * cos(image) + w_text * cos(text), over API writes, builds and compaction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exemplar.errors import Incompatible, InvalidRequest
from exemplar.retrieval import NewItem, PoolService, Query, SelectionOptions, SelectionService, build_pool
from exemplar.retrieval.build.jobs import JobService
from exemplar.retrieval.index.vectors import normalize
from exemplar.retrieval.store.compaction import CompactionPolicy
from exemplar.retrieval.store.maintenance import CompactionService
from exemplar.samples import generate_shapes

TINY = "open_clip:exemplar-tiny"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("shapes")
    manifest = generate_shapes(root, per_class_per_domain=3)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    # Texts that do not simply name the label: the text alone is a weak, different signal.
    for i, row in enumerate(rows):
        row["text"] = f"specimen {i % 7} lot {i} from {row['domain']}"
    return root, rows


def items_of(root: Path, rows: list[dict]) -> list[NewItem]:
    return [NewItem(id=r["id"], label=r["label"], domain=r["domain"], text=r["text"], image=r["image"],
                    media_root=str(root)) for r in rows]


@pytest.fixture
def fused_pool(pools: PoolService, shapes: tuple[Path, list[dict]]) -> str:
    root, rows = shapes
    pools.create(name="it", encoder=TINY, embed="image+text")
    # Three writes and a replacement: several segments, one with a deleted row.
    pools.add_items("it", items_of(root, rows[:20]))
    pools.add_items("it", items_of(root, rows[20:]))
    pools.add_items("it", items_of(root, rows[5:6]))
    return "it"


def oracle(encoders, root: Path, rows: list[dict], query_image: bytes | None, query_text: str | None,
           weights: tuple[float, float]) -> dict[str, float]:
    encoder = encoders(TINY)
    images = normalize(encoder.encode_images([(root / r["image"]).read_bytes() for r in rows]))
    texts = normalize(encoder.encode_texts([r["text"] for r in rows]))
    score = np.zeros(len(rows))
    if query_image is not None:
        score += weights[0] * (images @ normalize(encoder.encode_images([query_image]))[0])
    if query_text is not None:
        score += weights[1] * (texts @ normalize(encoder.encode_texts([query_text]))[0])
    return {r["id"]: float(s) for r, s in zip(rows, score)}


def ranked(scores: dict[str, float], k: int) -> list[str]:
    return sorted(scores, key=lambda i: -scores[i])[:k]


def assert_best(ids: list[str], scores: dict[str, float], k: int) -> None:
    """``ids`` are ``k`` of the best by ``scores`` in score order (ties in any order)."""
    assert len(ids) == len(set(ids)) == k
    np.testing.assert_allclose([scores[i] for i in ids], sorted(scores.values(), reverse=True)[:k], atol=1e-5)


@pytest.mark.parametrize("weights", [(0.7, 0.3), (1.0, 0.0), (0.0, 1.0), (0.25, 0.75)])
def test_topk_scores_are_the_weighted_cosines(selection: SelectionService, encoders, fused_pool: str, shapes,
                                              weights) -> None:
    root, rows = shapes
    image = (root / rows[4]["image"]).read_bytes()
    query = Query(image=image, text="specimen 3 from somewhere")
    result = selection.select(fused_pool, query, "topk", SelectionOptions(k=10, fusion=weights))
    want = oracle(encoders, root, rows, image, query.text, weights)
    got = [d.id for d in result.demonstrations]
    assert_best(got, want, 10)
    np.testing.assert_allclose([d.score for d in result.demonstrations], [want[i] for i in got], atol=1e-5)


def test_an_image_only_query_ranks_by_image_whatever_the_weights(selection: SelectionService, encoders,
                                                                 fused_pool: str, shapes) -> None:
    root, rows = shapes
    image = (root / rows[7]["image"]).read_bytes()
    want = ranked(oracle(encoders, root, rows, image, None, (1.0, 0.0)), 8)
    for weights in ((0.5, 0.5), (0.1, 0.9)):
        result = selection.select(fused_pool, Query(image=image), "topk", SelectionOptions(k=8, fusion=weights))
        assert [d.id for d in result.demonstrations] == want
    text_only = selection.select(fused_pool, Query(text="specimen 2 from x"), "topk", SelectionOptions(k=8, fusion=(0.9, 0.1)))
    assert_best([d.id for d in text_only.demonstrations], oracle(encoders, root, rows, None, "specimen 2 from x",
                                                                 (0.0, 1.0)), 8)


def test_without_fusion_the_fused_vector_serves_as_before(selection: SelectionService, encoders, fused_pool: str,
                                                          shapes) -> None:
    root, rows = shapes
    encoder = encoders(TINY)
    fused = normalize(normalize(encoder.encode_images([(root / r["image"]).read_bytes() for r in rows]))
                      + normalize(encoder.encode_texts([r["text"] for r in rows])))
    query = normalize(encoder.encode_images([(root / rows[2]["image"]).read_bytes()]))[0]
    result = selection.select(fused_pool, Query(image=(root / rows[2]["image"]).read_bytes()), "topk",
                              SelectionOptions(k=6))
    scores = {r["id"]: float(s) for r, s in zip(rows, fused @ query)}
    assert [d.id for d in result.demonstrations] == ranked(scores, 6)


def test_balanced_keeps_exact_quotas_and_each_class_best_by_weighted_score(selection: SelectionService, encoders,
                                                                           fused_pool: str, shapes) -> None:
    root, rows = shapes
    image = (root / rows[10]["image"]).read_bytes()
    weights = (0.6, 0.4)
    result = selection.select(fused_pool, Query(image=image, text="specimen 1 from a"), "balanced",
                              SelectionOptions(k=None, k_per_class=2, fusion=weights))
    want = oracle(encoders, root, rows, image, "specimen 1 from a", weights)
    by_label: dict[str, list[str]] = {}
    for d in result.demonstrations:
        by_label.setdefault(d.label, []).append(d.id)
    labels = {r["label"] for r in rows}
    assert set(by_label) == labels and all(len(v) == 2 for v in by_label.values())
    for label, got in by_label.items():
        members = {r["id"]: want[r["id"]] for r in rows if r["label"] == label}
        assert_best(got, members, 2)


def test_an_item_query_uses_its_stored_image_and_text(selection: SelectionService, encoders, fused_pool: str,
                                                      shapes) -> None:
    root, rows = shapes
    item = rows[12]
    weights = (0.5, 0.5)
    result = selection.select(fused_pool, Query(item_id=item["id"]), "topk", SelectionOptions(k=5, fusion=weights))
    want = oracle(encoders, root, rows, (root / item["image"]).read_bytes(), item["text"], weights)
    del want[item["id"]]  # a query item is never its own demonstration
    assert_best([d.id for d in result.demonstrations], want, 5)


def test_a_build_and_a_compaction_keep_both_modalities(pools: PoolService, selection: SelectionService, shapes,
                                                       encoders) -> None:
    root, rows = shapes
    source = root / "fusion-source.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    pools.create(name="built", encoder=TINY, embed="image+text")
    build_pool(pools.store, pools.snapshots, pools.encoders, "built", source, media_root=root, shard_size=8)
    for i in range(30, len(rows), 4):  # small writes to compact
        pools.add_items("built", items_of(root, rows[i:i + 4]))
    image = (root / rows[3]["image"]).read_bytes()
    options = SelectionOptions(k=12, fusion=(0.3, 0.7))
    before = selection.select("built", Query(image=image, text="specimen 4 from b"), "topk", options)
    jobs = JobService(pools.store.catalog)
    try:
        service = CompactionService(pools.store, jobs, CompactionPolicy(merge_factor=2), segments=pools.snapshots.segments,
                                    automatic=False)
        assert service.compact_once("built", force=True)["merged"]
    finally:
        jobs.close()
    after = selection.select("built", Query(image=image, text="specimen 4 from b"), "topk", options)
    want = oracle(encoders, root, rows, image, "specimen 4 from b", (0.3, 0.7))
    assert [d.id for d in before.demonstrations] == [d.id for d in after.demonstrations]
    assert_best([d.id for d in after.demonstrations], want, 12)


def test_refusals(pools: PoolService, selection: SelectionService, fused_pool: str, shapes) -> None:
    root, rows = shapes
    image = (root / rows[0]["image"]).read_bytes()
    with pytest.raises(InvalidRequest) as refused:
        selection.select(fused_pool, Query(embedding=[0.1] * 64), "topk", SelectionOptions(k=4, fusion=(0.5, 0.5)))
    assert refused.value.param == "query.embedding"
    with pytest.raises(InvalidRequest) as refused:
        selection.select(fused_pool, Query(image=image), "invariant", SelectionOptions(k=4, fusion=(0.5, 0.5)))
    assert refused.value.param == "fusion"
    with pytest.raises(InvalidRequest) as refused:
        selection.select_batch(fused_pool, [Query(image=image), Query(text="specimen 1")], "topk",
                               SelectionOptions(k=4, fusion=(0.5, 0.5)))
    assert refused.value.param == "queries[1]"
    pools.create(name="images", encoder=TINY)
    pools.add_items("images", items_of(root, rows[:6]))
    with pytest.raises(Incompatible) as conflict:
        selection.select("images", Query(image=image), "topk", SelectionOptions(k=4, fusion=(0.5, 0.5)))
    assert conflict.value.param == "fusion"
