"""Every strategy against the brute-force oracle over the same seeded vectors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from exemplar.errors import EmptyPool, InvalidRequest, NotFound
from exemplar.retrieval import Query, SelectionOptions, SelectionService, list_strategies
from tests.helpers import oracle_balanced, oracle_topk


def rank_order(result) -> list[str]:
    return [d.id for d in sorted(result.demonstrations, key=lambda d: d.rank)]


def ids(rows: list[int]) -> list[str]:
    return [f"v{r:04d}" for r in rows]


def test_registry_lists_the_foundation_strategies() -> None:
    assert {"random", "topk", "balanced"} <= set(list_strategies())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 8, 25])
def test_topk_equals_oracle(vector_pool, selection: SelectionService, seed: int, k: int) -> None:
    name, V, _, _ = vector_pool
    q = np.random.default_rng(seed).normal(size=V.shape[1]).astype(np.float32)
    q /= np.linalg.norm(q)
    result = selection.select(name, Query(embedding=q.tolist()), "topk", SelectionOptions(k=k))
    assert rank_order(result) == ids(oracle_topk(V, q, k=k))
    scores = {d.id: d.score for d in result.demonstrations}
    for d in result.demonstrations:
        assert scores[d.id] == pytest.approx(float(V[int(d.id[1:])] @ q), abs=1e-5)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [3, 8, 13])
def test_balanced_total_k_equals_oracle(vector_pool, selection: SelectionService, seed: int, k: int) -> None:
    name, V, labels, _ = vector_pool
    q = V[seed * 11] + 0.1
    q = q / np.linalg.norm(q)
    result = selection.select(name, Query(embedding=q.tolist()), "balanced", SelectionOptions(k=k))
    assert rank_order(result) == ids(oracle_balanced(V, labels, q, k=k))
    counts = Counter(d.label for d in result.demonstrations)
    # k spread over 5 classes: k // 5 each, and the k % 5 classes most similar to the query one more.
    quotas = [k // 5 + (1 if i < k % 5 else 0) for i in range(5)]
    assert sorted(counts.values(), reverse=True) == [n for n in quotas if n]
    best_first = sorted({d.label for d in result.demonstrations}, key=lambda lab: -max(d.score for d in result.demonstrations if d.label == lab))
    assert [counts[lab] for lab in best_first] == [n for n in quotas if n]


@pytest.mark.parametrize("m", [1, 2, 4])
def test_balanced_k_per_class_is_exact(vector_pool, selection: SelectionService, m: int) -> None:
    name, V, labels, _ = vector_pool
    result = selection.select(name, Query(item_id="v0003"), "balanced", SelectionOptions(k_per_class=m))
    counts = Counter(d.label for d in result.demonstrations)
    assert set(counts.values()) == {m} and len(counts) == 5
    assert rank_order(result) == ids(oracle_balanced(V, labels, V[3], k_per_class=m, skip=3))
    assert "v0003" not in rank_order(result)


def test_balanced_with_label_and_domain_filters(vector_pool, selection: SelectionService) -> None:
    name, V, labels, domains = vector_pool
    wanted = ("class-1", "class-3")
    result = selection.select(
        name, Query(item_id="v0010"), "balanced",
        SelectionOptions(k_per_class=3, labels=wanted, domains=("domain-2",)),
    )
    allowed = np.array([labels[i] in wanted and domains[i] == "domain-2" for i in range(len(V))])
    assert rank_order(result) == ids(oracle_balanced(V, labels, V[10], k_per_class=3, allowed=allowed, skip=10))
    assert {d.label for d in result.demonstrations} == set(wanted)
    assert {d.domain for d in result.demonstrations} == {"domain-2"}


def test_exclude_ids_and_self_are_never_returned(vector_pool, selection: SelectionService) -> None:
    name, V, _, _ = vector_pool
    first = rank_order(selection.select(name, Query(item_id="v0000"), "topk", SelectionOptions(k=5)))
    assert "v0000" not in first
    excluded = tuple(first[:3])
    second = selection.select(name, Query(item_id="v0000"), "topk", SelectionOptions(k=5, exclude_ids=excluded))
    allowed = np.ones(len(V), bool)
    allowed[[int(i[1:]) for i in excluded]] = False
    assert rank_order(second) == ids(oracle_topk(V, V[0], k=5, allowed=allowed, skip=0))


@pytest.mark.parametrize("strategy", ["topk", "balanced", "random"])
def test_offset_windows_are_disjoint_and_in_rank_order(vector_pool, selection: SelectionService, strategy: str) -> None:
    name, _, _, _ = vector_pool
    windows = [
        selection.select(name, Query(item_id="v0042"), strategy, SelectionOptions(k=5, offset=offset, seed=3))
        for offset in (0, 5, 10, 15)
    ]
    ranks = [sorted(d.rank for d in w.demonstrations) for w in windows]
    assert ranks == [list(range(o, o + 5)) for o in (0, 5, 10, 15)]
    seen = [d.id for w in windows for d in w.demonstrations]
    assert len(seen) == len(set(seen)) == 20
    # The concatenated windows are the first 20 of one ranking.
    whole = selection.select(name, Query(item_id="v0042"), strategy, SelectionOptions(k=20, seed=3))
    assert rank_order(whole) == [i for w in windows for i in rank_order(w)]


def test_random_is_seeded_filtered_and_needs_no_query(vector_pool, selection: SelectionService) -> None:
    name, V, labels, _ = vector_pool
    a = selection.select(name, Query(), "random", SelectionOptions(k=10, seed=1, labels=("class-0",)))
    b = selection.select(name, Query(), "random", SelectionOptions(k=10, seed=1, labels=("class-0",)))
    c = selection.select(name, Query(), "random", SelectionOptions(k=10, seed=2, labels=("class-0",)))
    assert rank_order(a) == rank_order(b) != rank_order(c)
    assert {d.label for d in a.demonstrations} == {"class-0"}
    assert all(d.score is None for d in a.demonstrations)
    from exemplar.retrieval.serving.strategies.random import shuffled_prefix

    members = np.flatnonzero([lab == "class-0" for lab in labels])
    expected = members[shuffled_prefix(len(members), 11, np.random.default_rng(1))][:10]
    assert rank_order(a) == ids(expected.tolist())
    scored = selection.select(name, Query(item_id="v0001"), "random", SelectionOptions(k=10, seed=1))
    assert "v0001" not in rank_order(scored)
    for d in scored.demonstrations:
        assert d.score == pytest.approx(float(V[int(d.id[1:])] @ V[1]), abs=1e-5)


@pytest.mark.parametrize("strategy", ["topk", "balanced"])
def test_orderings(vector_pool, selection: SelectionService, strategy: str) -> None:
    name, _, _, _ = vector_pool

    def run(order: str, seed: int = 0):
        return selection.select(name, Query(item_id="v0100"), strategy, SelectionOptions(k=10, order=order, seed=seed)).demonstrations

    first = run("most_similar_first")
    scores = [d.score for d in first]
    assert scores == sorted(scores, reverse=True)
    last = run("most_similar_last")
    assert [d.id for d in last] == [d.id for d in reversed(first)]
    shuffled = run("shuffle", seed=5)
    assert sorted(d.id for d in shuffled) == sorted(d.id for d in first)
    assert [d.id for d in shuffled] == [d.id for d in run("shuffle", seed=5)]
    assert [d.id for d in shuffled] != [d.id for d in first]
    grouped = run("class_grouped")
    labels = [d.label for d in grouped]
    blocks = [lab for i, lab in enumerate(labels) if i == 0 or labels[i - 1] != lab]
    assert len(blocks) == len(set(blocks)), "each class appears as one contiguous block"
    assert grouped[0].id == first[0].id, "the block of the most similar item comes first"
    for lab in set(labels):
        block = [d.score for d in grouped if d.label == lab]
        assert block == sorted(block, reverse=True)


def test_batch_equals_single_queries(vector_pool, selection: SelectionService) -> None:
    name, V, _, _ = vector_pool
    queries = [Query(item_id="v0005"), Query(embedding=V[9].tolist()), Query(item_id="v0300")]
    for strategy in ("topk", "balanced"):
        batch = selection.select_batch(name, queries, strategy, SelectionOptions(k=7))
        single = [selection.select(name, q, strategy, SelectionOptions(k=7)) for q in queries]
        assert [rank_order(r) for r in batch] == [rank_order(r) for r in single]


def test_invalid_options_are_refused(vector_pool, selection: SelectionService) -> None:
    name, V, _, _ = vector_pool
    q = Query(item_id="v0001")
    with pytest.raises(InvalidRequest, match="unknown strategy 'nope'; valid strategies: 'balanced', 'invariant', 'random', 'topk'"):
        selection.select(name, q, "nope", SelectionOptions())
    for options, param in [
        (SelectionOptions(k=0), "k"), (SelectionOptions(k=10_000), "k"), (SelectionOptions(k_per_class=0), "k_per_class"),
        (SelectionOptions(offset=-1), "offset"), (SelectionOptions(k_per_class=100), "k_per_class"), (SelectionOptions(labels=("nope",)), "labels"),
        (SelectionOptions(domains=("nope",)), "domains"),
    ]:
        with pytest.raises(InvalidRequest) as info:
            selection.select(name, q, "topk", options)
        assert info.value.param == param
    with pytest.raises(NotFound):
        selection.select(name, Query(item_id="missing"), "topk", SelectionOptions())
    with pytest.raises(InvalidRequest, match="dimensions"):
        selection.select(name, Query(embedding=[1.0, 2.0]), "topk", SelectionOptions())
    with pytest.raises(InvalidRequest, match="NaN"):
        selection.select(name, Query(embedding=[float("nan")] * V.shape[1]), "topk", SelectionOptions())
    with pytest.raises(InvalidRequest, match="one of"):
        selection.select(name, Query(), "topk", SelectionOptions())
    with pytest.raises(EmptyPool):
        selection.select(name, q, "topk", SelectionOptions(exclude_ids=tuple(f"v{i:04d}" for i in range(len(V)))))


@pytest.fixture
def skewed(pools):
    """Three classes, one of them with only two items."""
    from exemplar.retrieval import NewItem
    from tests.helpers import clustered_vectors

    V, _, _ = clustered_vectors(n=40, dim=16, n_labels=3, n_domains=1, seed=1)
    labels = ["rare"] * 2 + ["a"] * 19 + ["b"] * 19
    pools.create(name="skewed", encoder="precomputed:16")
    pools.add_items("skewed", [NewItem(id=f"v{i:04d}", label=labels[i], embedding=V[i]) for i in range(40)])
    return V, labels


def test_balanced_reports_a_class_short_of_its_quota_instead_of_filling(skewed, selection: SelectionService) -> None:
    V, labels = skewed
    result = selection.select("skewed", Query(embedding=V[0].tolist()), "balanced", SelectionOptions(k_per_class=4))
    assert Counter(d.label for d in result.demonstrations) == {"rare": 2, "a": 4, "b": 4}
    assert result.shortfall == {"rare": 2}
    assert rank_order(result) == ids(oracle_balanced(V, labels, V[0], k_per_class=4))
    # The holes keep their places in the ranking, so the next window continues it without overlap.
    following = selection.select("skewed", Query(embedding=V[0].tolist()), "balanced",
                                 SelectionOptions(k_per_class=4, offset=12))
    assert following.shortfall == {"rare": 4}
    assert rank_order(following) == ids(oracle_balanced(V, labels, V[0], k_per_class=4, offset=12))
    assert not set(rank_order(following)) & set(rank_order(result))


def test_balanced_fill_lets_other_classes_take_the_slots(skewed, selection: SelectionService) -> None:
    V, labels = skewed
    result = selection.select("skewed", Query(embedding=V[0].tolist()), "balanced",
                              SelectionOptions(k_per_class=4, fill=True))
    counts = Counter(d.label for d in result.demonstrations)
    assert counts["rare"] == 2 and counts["a"] + counts["b"] == 10 and len(result.demonstrations) == 12
    assert result.shortfall == {"rare": 2}  # said even when filled
    assert rank_order(result) == ids(oracle_balanced(V, labels, V[0], k_per_class=4, fill=True))


def test_balanced_counts_a_filtered_out_class_as_short(skewed, selection: SelectionService) -> None:
    V, labels = skewed
    result = selection.select("skewed", Query(embedding=V[5].tolist()), "balanced",
                              SelectionOptions(k_per_class=2, exclude_ids=("v0000", "v0001")))
    assert Counter(d.label for d in result.demonstrations) == {"a": 2, "b": 2}
    assert result.shortfall == {"rare": 2}


@pytest.mark.parametrize("m", [1, 3])
def test_random_k_per_class_is_a_seeded_class_balanced_sample(vector_pool, selection: SelectionService, m: int) -> None:
    name, V, labels, _ = vector_pool
    options = SelectionOptions(k=None, k_per_class=m, seed=7)
    result = selection.select(name, Query(), "random", options)
    assert Counter(d.label for d in result.demonstrations) == {label: m for label in set(labels)}
    assert result.shortfall == {}
    again = selection.select(name, Query(), "random", options)
    assert rank_order(again) == rank_order(result)
    other = selection.select(name, Query(), "random", SelectionOptions(k_per_class=m, seed=8))
    assert rank_order(other) != rank_order(result)
    # Restricted to some labels, only those; the next window is disjoint from the first.
    wanted = tuple(sorted(set(labels)))[:2]
    first = selection.select(name, Query(), "random", SelectionOptions(k_per_class=m, labels=wanted))
    second = selection.select(name, Query(), "random", SelectionOptions(k_per_class=m, labels=wanted, offset=2 * m))
    assert Counter(d.label for d in first.demonstrations) == {label: m for label in wanted}
    assert not set(rank_order(first)) & set(rank_order(second))


def test_random_k_per_class_leaves_out_the_query_item(vector_pool, selection: SelectionService) -> None:
    name, V, labels, _ = vector_pool
    result = selection.select(name, Query(item_id="v0003"), "random", SelectionOptions(k_per_class=50, seed=1))
    assert "v0003" not in rank_order(result)
    assert all(d.score is not None for d in result.demonstrations)


@pytest.mark.parametrize("strategy,base", [("topk", "balanced"), ("invariant", "topk")])
def test_k_per_class_is_refused_where_it_has_no_meaning(vector_pool, selection: SelectionService, strategy: str,
                                                        base: str) -> None:
    name, V, _, _ = vector_pool
    with pytest.raises(InvalidRequest) as raised:
        selection.select(name, Query(item_id="v0001"), strategy,
                         SelectionOptions(k=None, k_per_class=1, invariant_base=base))  # type: ignore[arg-type]
    assert raised.value.param == "k_per_class"
    assert "balanced" in raised.value.message and "random" in raised.value.message


@pytest.mark.parametrize("strategy", ["topk", "balanced", "random"])
def test_no_k_and_no_k_per_class_is_a_clear_error(vector_pool, selection: SelectionService, strategy: str) -> None:
    name, _, _, _ = vector_pool
    with pytest.raises(InvalidRequest) as raised:
        selection.select(name, Query(item_id="v0001"), strategy, SelectionOptions(k=None))
    assert raised.value.param == "k"


@pytest.mark.parametrize("factory", ["HNSW16", "IVF16,Flat"])
def test_balanced_is_exact_per_class_on_ann_indexes(pools, selection: SelectionService, factory: str) -> None:
    from exemplar.retrieval import NewItem
    from tests.helpers import clustered_vectors

    V, labels, _ = clustered_vectors(n=2_000, dim=16, n_labels=8, n_domains=1, seed=4)
    pools.create(name="ann", encoder="precomputed:16", index=factory)
    pools.add_items("ann", [NewItem(id=f"v{i:04d}", label=labels[i], embedding=V[i]) for i in range(len(V))])
    stored = np.asarray(pools.snapshots.snapshot("ann").vectors)
    result = selection.select("ann", Query(item_id="v0007"), "balanced", SelectionOptions(k_per_class=2))
    assert rank_order(result) == ids(oracle_balanced(stored, labels, stored[7], k_per_class=2, skip=7))


def test_a_shuffled_prefix_is_the_start_of_one_seeded_shuffle() -> None:
    from exemplar.retrieval.serving.strategies.random import shuffled_prefix

    whole = shuffled_prefix(50, 50, np.random.default_rng(3))
    assert sorted(whole.tolist()) == list(range(50))  # a permutation
    for m in (0, 1, 7, 49):
        assert shuffled_prefix(50, m, np.random.default_rng(3)).tolist() == whole[:m].tolist()
    assert shuffled_prefix(5, 9, np.random.default_rng(3)).shape == (5,)  # never longer than the pool
    # uniform: every value equally likely first (2,000 seeds, 10 values: 200 expected each)
    first = np.bincount([int(shuffled_prefix(10, 1, np.random.default_rng(s))[0]) for s in range(2_000)], minlength=10)
    assert first.min() > 140 and first.max() < 260


def test_random_windows_continue_one_ranking(vector_pool, selection: SelectionService) -> None:
    name = vector_pool[0]
    seen: list[str] = []
    deep = selection.select(name, Query(), "random", SelectionOptions(k=12, seed=9))
    for offset in (0, 4, 8):
        window = selection.select(name, Query(), "random", SelectionOptions(k=4, offset=offset, seed=9))
        seen += [d.id for d in window.demonstrations]
    assert seen == [d.id for d in deep.demonstrations] and len(set(seen)) == 12
    per_class = [selection.select(name, Query(), "random", SelectionOptions(k_per_class=m, seed=9)) for m in (1, 2)]
    assert {d.id for d in per_class[0].demonstrations} <= {d.id for d in per_class[1].demonstrations}
