"""RICES ordering as a retrieval proxy: which demonstration sits where in the prompt under each `order`.

Flamingo's RICES (Alayrac et al., 2022; Yang et al., 2022) puts the most similar demonstration
last, nearest the query, because models lean on what they read last. Whether that helps a model is
a question for a real model (`exemplar eval --mllm`); what the layout decides is *which*
demonstration takes the position nearest the query. This script measures that on the generated
samples, with `exemplar eval`'s leave-one-domain-out folds (`evaluation.lodo_folds`, same code):
each domain held out in turn, its labelled items the queries, the demonstrations from the other
domains, k=8, strategies topk and balanced. The window is then laid out by each `order`
(`ordering.arrange`, the server's code) and scored by label precision (the demonstration's label
is the query's) at the last position (nearest the query), at the first, and over the whole window
(the same for every order: it is the same set). Means carry 95% percentile-bootstrap intervals over
queries (`evaluation.bootstrap`, one set of resamples, so differences are paired).

- shapes: `exemplar.samples.generate_shapes` (4 classes x 3 stain-like domains x 60), encoded by
  `exemplar-tiny` (random weights);
- embeddings: `domain_dominant_embeddings` (6 classes x 4 domains x 60, 64-d).

Figures only (no timings).

    python benchmarks/ordering.py --out benchmarks/results/ordering.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from common import write_json

from exemplar.encoders import EncoderRegistry
from exemplar.retrieval import NewItem, PoolService, PoolStore
from exemplar.retrieval.adapt.evaluation import bootstrap, lodo_folds
from exemplar.retrieval.build.runner import build_pool
from exemplar.retrieval.serving.cache import SnapshotCache
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies.ordering import arrange
from exemplar.samples import domain_dominant_embeddings, generate_shapes

STRATEGIES = ("topk", "balanced")
ORDERS = ("most_similar_first", "most_similar_last", "class_grouped", "shuffle")
K = 8


def _interval(values: np.ndarray, rng: np.random.Generator, resamples: int, idx: np.ndarray) -> list[float]:
    i = bootstrap(values, rng, resamples, idx)
    return [round(i.mean, 4), round(i.low, 4), round(i.high, 4)]


def _measure(snap: Snapshot, resamples: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    folds = lodo_folds(snap, STRATEGIES, k=K, trainer=None, adapter_params=None, max_queries_per_domain=500,
                       seed=seed, rng=rng)
    codes = snap.label_codes
    n = sum(len(f.rows) for f in folds)
    shared = rng.integers(0, n, size=(resamples, n))  # one set of resamples: every figure paired
    out: dict = {"queries": n, "folds": {f.domain: len(f.rows) for f in folds}}
    for strategy in STRATEGIES:
        window, last, first = [], {o: [] for o in ORDERS}, {o: [] for o in ORDERS}
        q = 0
        for fold in folds:
            for picks, row in zip(fold.picks[strategy], fold.rows):
                truth = codes[row]
                window.append(float(np.mean([codes[p.row] == truth for p in picks])))
                for order in ORDERS:
                    laid = arrange(picks, order, snap, seed + q)  # shuffle: a seed per query
                    first[order].append(float(codes[laid[0].row] == truth))
                    last[order].append(float(codes[laid[-1].row] == truth))
                q += 1
        arm: dict = {"window_precision": _interval(np.array(window), rng, resamples, shared)}
        for order in ORDERS:
            arm[order] = {"last_position": _interval(np.array(last[order]), rng, resamples, shared),
                          "first_position": _interval(np.array(first[order]), rng, resamples, shared)}
        # RICES against the default: how much more often the demonstration nearest the query has its class.
        arm["last_position: most_similar_last - most_similar_first"] = _interval(
            np.array(last["most_similar_last"]) - np.array(last["most_similar_first"]), rng, resamples, shared)
        out[strategy] = arm
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class-per-domain", type=int, default=60)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="exemplar-ordering-"))
    encoders = EncoderRegistry()
    store = PoolStore(root / "data")
    snapshots = SnapshotCache(store, refresh_s=0.0)
    pools = PoolService(store, snapshots, encoders)
    manifest = generate_shapes(root / "shapes", per_class_per_domain=args.per_class_per_domain)
    pools.create(name="shapes", encoder="open_clip:exemplar-tiny")
    build_pool(store, snapshots, encoders, "shapes", manifest)
    E, labels, domains = domain_dominant_embeddings(per_class_per_domain=args.per_class_per_domain)
    pools.create(name="emb", encoder=f"precomputed:{E.shape[1]}")
    pools.add_items("emb", [NewItem(id=f"e{i:05d}", label=labels[i], domain=domains[i], embedding=E[i])
                            for i in range(len(E))])
    results = {"shapes": _measure(snapshots.snapshot("shapes"), args.resamples, args.seed),
               "embeddings": _measure(snapshots.snapshot("emb"), args.resamples, args.seed)}
    snapshots.close()
    store.close()

    def cell(v: list[float]) -> str:
        return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"

    print(f"| data | strategy | order | precision at the last position | at the first | window precision@{K} |")
    print("|---|---|---|---|---|---|")
    for data, r in results.items():
        for strategy in STRATEGIES:
            for order in ORDERS:
                a = r[strategy][order]
                print(f"| {data} | {strategy} | {order} | {cell(a['last_position'])} | {cell(a['first_position'])} | "
                      f"{cell(r[strategy]['window_precision'])} |")
    for data, r in results.items():
        for strategy in STRATEGIES:
            print(f"{data} {strategy}: last position, most_similar_last - most_similar_first (paired): "
                  f"{cell(r[strategy]['last_position: most_similar_last - most_similar_first'])}")
    write_json(args.out, {"benchmark": "ordering", "k": K, "strategies": STRATEGIES, "orders": ORDERS,
                          "per_class_per_domain": args.per_class_per_domain, "resamples": args.resamples,
                          "seed": args.seed, "results": results})


if __name__ == "__main__":
    main()
