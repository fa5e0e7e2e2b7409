"""The prompt layout (``order``): by similarity without stages, by the pipeline's rank with them."""

from __future__ import annotations

import numpy as np
import pytest

from exemplar.retrieval.serving.selection import Query, SelectionService
from exemplar.retrieval.serving.strategies import Pick, SelectionOptions, arrange

ORDERS = ["most_similar_first", "most_similar_last", "shuffle", "class_grouped"]


def layout_before_stages_existed(picks: list[Pick], order: str, codes: np.ndarray, seed: int) -> list[Pick]:
    """The layout as it was before ``by_rank`` (by score, rank breaking ties), restated."""
    def key(p: Pick) -> tuple[float, int]:
        return (-p.score if p.score is not None else 0.0, p.rank)

    if order == "most_similar_first":
        return sorted(picks, key=key)
    if order == "most_similar_last":
        return sorted(picks, key=key, reverse=True)
    if order == "shuffle":
        return [picks[i] for i in np.random.default_rng(seed).permutation(len(picks))]
    groups: dict[int, list[Pick]] = {}
    for p in sorted(picks, key=key):
        groups.setdefault(int(codes[p.row]), []).append(p)
    return [p for g in groups.values() for p in g]


@pytest.fixture
def snap(vector_pool, selection: SelectionService):
    return selection.snapshots.snapshot(vector_pool[0])


def picks_at_odds(seed: int) -> list[Pick]:
    """Twelve picks whose ranks disagree with their scores, with tied and missing scores."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(600, size=12, replace=False)
    scores: list[float | None] = [float(s) for s in rng.choice([0.1, 0.5, 0.9, 0.3], size=12)]
    scores[3] = None
    ranks = rng.permutation(12) + 4
    return [Pick(int(r), s, int(k)) for r, s, k in zip(rows, scores, ranks)]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_stages_the_layout_is_unchanged(snap, order: str, seed: int) -> None:
    picks = picks_at_odds(seed)
    assert arrange(picks, order, snap, seed) == layout_before_stages_existed(picks, order, snap.label_codes, seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_by_rank_lays_out_the_pipelines_order(snap, seed: int) -> None:
    picks = picks_at_odds(seed)
    by_rank = sorted(picks, key=lambda p: p.rank)
    assert arrange(picks, "most_similar_first", snap, seed) != by_rank, "scores and ranks must disagree here"
    assert arrange(picks, "most_similar_first", snap, seed, by_rank=True) == by_rank
    assert arrange(picks, "most_similar_last", snap, seed, by_rank=True) == by_rank[::-1]
    assert arrange(picks, "shuffle", snap, seed, by_rank=True) == arrange(picks, "shuffle", snap, seed)
    grouped = arrange(picks, "class_grouped", snap, seed, by_rank=True)
    classes = list(dict.fromkeys(int(snap.label_codes[p.row]) for p in by_rank))
    assert grouped == [p for c in classes for p in by_rank if int(snap.label_codes[p.row]) == c]


@pytest.mark.parametrize("strategy", ["topk", "balanced"])
def test_a_diversity_window_is_laid_out_by_rank(vector_pool, selection: SelectionService, strategy: str) -> None:
    name = vector_pool[0]

    def run(order: str):
        options = SelectionOptions(k=10, order=order, stages={"diversity": {"lambda": 0.3, "depth": 40}})
        return selection.select(name, Query(item_id="v0100"), strategy, options).demonstrations

    first = run("most_similar_first")
    assert [d.rank for d in first] == list(range(10))
    scores = [d.score for d in first]
    assert scores != sorted(scores, reverse=True), "MMR must re-order the window for this to show anything"
    assert [d.id for d in run("most_similar_last")] == [d.id for d in reversed(first)]
