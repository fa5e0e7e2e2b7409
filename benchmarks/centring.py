"""Centred pools (`"centre": true`, issue 15 part 6) against the same items stored raw.

Encoders' embeddings are anisotropic: they share a large common direction, so every item is close to
every other (the demo pool's balanced answer scores every demonstration about 0.997). A centred pool
subtracts the mean of its first write from every vector, and from every query, before normalising.
This script builds each sample twice through the product's own write path, once as a plain pool and
once as a centred one, and reports the anisotropy of the stored vectors and the leave-one-domain-out
retrieval proxies (`exemplar eval`'s, same code):

- shapes: `exemplar.samples.generate_shapes` (4 classes x 3 stain-like domains), encoded by
  `exemplar-tiny` (random weights: the effect on a real CLIP model is not measured here);
- embeddings: `domain_dominant_embeddings` (6 classes x 4 domains, 64-d), as precomputed pools.

The mean is the whole build's, held-out domain included (the pool's first write). Figures only.

    python benchmarks/centring.py --out benchmarks/results/centring.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from common import write_json

from exemplar.encoders import EncoderRegistry
from exemplar.retrieval import NewItem, PoolService, PoolStore, evaluate_lodo
from exemplar.retrieval.build.runner import build_pool
from exemplar.retrieval.serving.cache import SnapshotCache
from exemplar.samples import domain_dominant_embeddings, generate_shapes

STRATEGIES = ("random", "topk", "balanced")


def _anisotropy(V: np.ndarray) -> float:
    """Mean cosine between two different items."""
    U = V / np.linalg.norm(V, axis=1, keepdims=True)
    n = len(U)
    total = float((U.sum(axis=0) @ U.sum(axis=0)) - n)
    return total / (n * (n - 1))


def _evaluate(pools: PoolService, name: str) -> dict:
    snap = pools.snapshots.snapshot(name)
    report = evaluate_lodo(snap, strategies=STRATEGIES, k=8, resamples=1000)
    out = {"mean_pairwise_cosine": round(_anisotropy(np.asarray(snap.vectors, np.float64)), 4)}
    for spec, metrics in report.metrics.items():
        out[spec] = {m: [round(i.mean, 4), round(i.low, 4), round(i.high, 4)] for m, i in metrics.items()}
    return out


def _precomputed(pools: PoolService, name: str, V: np.ndarray, labels: list[str], domains: list[str],
                 centre: bool) -> None:
    pools.create(name=name, encoder=f"precomputed:{V.shape[1]}", centre=centre)
    pools.add_items(name, [NewItem(id=f"x{i:05d}", label=labels[i], domain=domains[i], embedding=V[i])
                           for i in range(len(V))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class-per-domain", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="exemplar-centring-"))
    encoders = EncoderRegistry()
    store = PoolStore(root / "data")
    snapshots = SnapshotCache(store, refresh_s=0.0)
    pools = PoolService(store, snapshots, encoders)
    results: dict[str, dict] = {}
    manifest = generate_shapes(root / "shapes", per_class_per_domain=args.per_class_per_domain)
    results["shapes"] = {}
    for arm, centre in (("raw", False), ("centred", True)):
        pools.create(name=f"shapes-{arm}", encoder="open_clip:exemplar-tiny", centre=centre)
        build_pool(store, snapshots, encoders, f"shapes-{arm}", manifest)
        results["shapes"][arm] = _evaluate(pools, f"shapes-{arm}")
    E, elabels, edomains = domain_dominant_embeddings()
    results["embeddings"] = {}
    for arm, centre in (("raw", False), ("centred", True)):
        _precomputed(pools, f"emb-{arm}", E, elabels, edomains, centre)
        results["embeddings"][arm] = _evaluate(pools, f"emb-{arm}")
    snapshots.close()
    store.close()
    print("| data | vectors | mean pairwise cosine | " + " | ".join(f"{s} precision@8" for s in STRATEGIES)
          + " | topk vote accuracy |")
    print("|---|---|---|" + "---|" * len(STRATEGIES) + "---|")
    for data, arms in results.items():
        for arm, r in arms.items():
            cells = " | ".join(f"{r[s]['precision_at_k'][0]:.3f} [{r[s]['precision_at_k'][1]:.3f}, "
                               f"{r[s]['precision_at_k'][2]:.3f}]" for s in STRATEGIES)
            print(f"| {data} | {arm} | {r['mean_pairwise_cosine']} | {cells} | {r['topk']['vote_accuracy'][0]:.3f} |")
    write_json(args.out, {"benchmark": "centring", "k": 8, "strategies": STRATEGIES, "results": results})


if __name__ == "__main__":
    main()
