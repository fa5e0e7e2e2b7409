"""Selection quality under domain shift: leave-one-domain-out evaluation.

For each domain D: the queries are D's labelled items, the demonstrations come from the other
domains only, and an adapter (for ``invariant``) is trained on the other domains only, so nothing
of D leaks into the selection. Per strategy and query: label precision@k of the selected
demonstrations, whether the query's class appears among them, and whether a majority vote over
their labels (ties broken by summed similarity) names it. Means carry 95% bootstrap intervals over
queries; differences between strategies use paired resamples of the same queries.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from exemplar.errors import InvalidRequest
from exemplar.retrieval.adapt.training import training_inputs
from exemplar.retrieval.adapt.adapters import AdapterTrainer, AdapterView
from exemplar.retrieval.index.vectors import VectorIndex
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies import Pick, SelectionOptions, get_strategy

__all__ = ["DEFAULT_EVAL_STRATEGIES", "EvalReport", "Fold", "Interval", "bootstrap", "evaluate_lodo", "lodo_folds",
           "parse_eval_strategy", "summarise_folds"]

DEFAULT_EVAL_STRATEGIES = ("random", "topk", "balanced", "invariant:topk", "invariant:balanced")
METRICS = ("precision_at_k", "hit_rate", "vote_accuracy")


@dataclasses.dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclasses.dataclass(frozen=True)
class EvalReport:
    pool: str
    version: int
    k: int
    queries: int
    folds: dict[str, int]  # held-out domain -> queries
    metrics: dict[str, dict[str, Interval]]  # strategy -> metric -> interval
    per_fold: dict[str, dict[str, dict[str, float]]]  # domain -> strategy -> metric -> mean
    differences: dict[str, dict[str, Interval]]  # "a - b" -> metric -> interval (paired)
    adapter_params: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_eval_strategy(spec: str) -> tuple[str, str | None]:
    name, _, base = spec.partition(":")
    get_strategy(name)
    if name == "invariant":
        base = base or "balanced"
        if base not in ("balanced", "topk"):
            raise InvalidRequest(f"invariant base must be 'balanced' or 'topk', got {base!r}", param="strategies")
        return name, base
    if base:
        raise InvalidRequest(f"only 'invariant' takes a base (as in 'invariant:topk'), got {spec!r}", param="strategies")
    return name, None


def bootstrap(values: np.ndarray, rng: np.random.Generator, resamples: int, idx: np.ndarray | None = None) -> Interval:
    idx = rng.integers(0, len(values), size=(resamples, len(values))) if idx is None else idx
    means = values[idx].mean(axis=1)
    return Interval(float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def _scores(snap: Snapshot, picks: list[Pick], truth: int) -> tuple[float, float, float]:
    labels = np.array([snap.label_codes[p.row] for p in picks])
    if not len(labels):
        return 0.0, 0.0, 0.0
    votes: dict[int, tuple[int, float]] = {}
    for label, pick in zip(labels, picks):
        count, total = votes.get(int(label), (0, 0.0))
        votes[int(label)] = (count + 1, total + (pick.score or 0.0))
    winner = max(votes, key=lambda c: votes[c])
    return float(np.mean(labels == truth)), float(truth in labels), float(winner == truth)


def _with_adapter(snap: Snapshot, trainer: AdapterTrainer, rows: np.ndarray, params: dict[str, Any]) -> Snapshot:
    trained = trainer(*training_inputs(snap, rows), params)
    adapted = trained.adapter.apply(np.asarray(snap.vectors))
    view = AdapterView(adapter_id=-1, adapter=trained.adapter, vectors=adapted, index=VectorIndex.build(adapted, "Flat"),
                       info=trained.info)
    return dataclasses.replace(snap, adapter=view)


@dataclasses.dataclass(frozen=True)
class Fold:
    """One held-out domain: its query rows and, per strategy, the demonstrations picked for each."""

    domain: str
    rows: np.ndarray
    picks: dict[str, list[list[Pick]]]


def lodo_folds(
    snap: Snapshot,
    strategies: Sequence[str],
    *,
    k: int,
    trainer: AdapterTrainer | None,
    adapter_params: dict[str, Any] | None,
    max_queries_per_domain: int,
    seed: int,
    rng: np.random.Generator,
) -> list[Fold]:
    """The leave-one-domain-out folds and each strategy's picks for their queries."""
    parsed = [(spec, *parse_eval_strategy(spec)) for spec in strategies]
    if any(name == "invariant" for _, name, _ in parsed) and trainer is None:
        raise InvalidRequest("evaluating 'invariant' needs an adapter trainer", param="strategies")
    labelled = snap.label_codes >= 0
    domains = [c for c in np.unique(snap.domain_codes[labelled]) if c >= 0]
    if len(domains) < 2:
        raise InvalidRequest(f"pool {snap.pool!r} needs labelled items from at least 2 domains for a "
                             "leave-one-domain-out evaluation", param="pool")
    folds: list[Fold] = []
    options = SelectionOptions(k=k, seed=seed)
    for domain in domains:
        query_rows = np.flatnonzero(labelled & (snap.domain_codes == domain))
        if len(query_rows) > max_queries_per_domain:
            query_rows = np.sort(rng.choice(query_rows, max_queries_per_domain, replace=False))
        allowed = labelled & (snap.domain_codes != domain)
        if len(np.unique(snap.label_codes[allowed])) < 2:
            continue
        adapted = None
        if trainer is not None and any(n == "invariant" for _, n, _ in parsed):
            adapted = _with_adapter(snap, trainer, np.flatnonzero(allowed), dict(adapter_params or {}))
        queries = np.asarray(snap.vectors)[query_rows]
        picked: dict[str, list[list[Pick]]] = {}
        for spec, strategy_name, base in parsed:
            strategy = get_strategy(strategy_name)
            source = adapted if strategy_name == "invariant" else snap
            assert source is not None
            if strategy_name == "random":
                # A fresh draw per query: one shared draw would make every query's demos the same.
                picked[spec] = [strategy.select(source, queries[i : i + 1], [None], allowed,
                                                dataclasses.replace(options, seed=seed + i))[0].picks
                                for i in range(len(queries))]
            else:
                opts = dataclasses.replace(options, invariant_base=base or "balanced")
                picked[spec] = [w.picks for w in strategy.select(source, queries, [None] * len(queries), allowed, opts)]
        folds.append(Fold(snap.domains[domain], query_rows, picked))
    if not any(len(f.rows) for f in folds):
        raise InvalidRequest("no domain could be held out (each needs at least 2 classes in the others)", param="pool")
    return folds


def summarise_folds(
    snap: Snapshot, folds: Sequence[Fold], strategies: Sequence[str], *, k: int, resamples: int,
    rng: np.random.Generator, adapter_params: dict[str, Any] | None, started: float,
) -> EvalReport:
    """The retrieval proxies of the folds' picks, with bootstrap intervals over all their queries."""
    values: dict[str, dict[str, list[float]]] = {spec: {m: [] for m in METRICS} for spec in strategies}
    per_fold: dict[str, dict[str, dict[str, float]]] = {}
    for fold in folds:
        per_fold[fold.domain] = {}
        for spec in strategies:
            scores = np.array([_scores(snap, p, int(snap.label_codes[row])) for p, row in zip(fold.picks[spec], fold.rows)])
            per_fold[fold.domain][spec] = {m: float(scores[:, j].mean()) for j, m in enumerate(METRICS)}
            for j, metric in enumerate(METRICS):
                values[spec][metric] += scores[:, j].tolist()
    n = len(values[strategies[0]][METRICS[0]])
    shared = rng.integers(0, n, size=(resamples, n))  # one set of resamples: paired comparisons
    metrics = {spec: {m: bootstrap(np.array(values[spec][m]), rng, resamples, shared) for m in METRICS}
               for spec in strategies}
    differences = {}
    for a, b in (("invariant:topk", "topk"), ("invariant:balanced", "balanced"), ("topk", "random")):
        if a in strategies and b in strategies:
            differences[f"{a} - {b}"] = {
                m: bootstrap(np.array(values[a][m]) - np.array(values[b][m]), rng, resamples, shared) for m in METRICS
            }
    return EvalReport(
        pool=snap.pool, version=snap.version, k=k, queries=n, folds={f.domain: len(f.rows) for f in folds},
        metrics=metrics, per_fold=per_fold, differences=differences, adapter_params=dict(adapter_params or {}),
        seconds=round(time.monotonic() - started, 3),
    )


def evaluate_lodo(
    snap: Snapshot,
    *,
    strategies: Sequence[str] = DEFAULT_EVAL_STRATEGIES,
    k: int = 8,
    trainer: AdapterTrainer | None = None,
    adapter_params: dict[str, Any] | None = None,
    max_queries_per_domain: int = 500,
    resamples: int = 2000,
    seed: int = 0,
) -> EvalReport:
    started = time.monotonic()
    strategies = list(strategies)
    rng = np.random.default_rng(seed)
    folds = lodo_folds(snap, strategies, k=k, trainer=trainer, adapter_params=adapter_params,
                       max_queries_per_domain=max_queries_per_domain, seed=seed, rng=rng)
    return summarise_folds(snap, folds, strategies, k=k, resamples=resamples, rng=rng, adapter_params=adapter_params,
                           started=started)
