"""What the diversity stage (MMR, near-duplicate removal) does to a window, and what it costs.

On the domain-dominant sample embeddings (`exemplar.samples.domain_dominant_embeddings`: 6 classes x
4 domains, the domain outweighs the class, as in a pre-trained encoder's space), served in-process
from a precomputed pool, every item is a query once (excluded from its own results). For topk and
balanced, k=8, without the stage and with `diversity` at several `lambda`: mean pairwise cosine of
the window, distinct domains in it, label precision@8 (share of the window with the query's label),
and the selection's CPU time per query. Figures only.

    python benchmarks/diversity.py --out benchmarks/results/diversity.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import write_json

from exemplar.encoders import EncoderRegistry
from exemplar.retrieval import NewItem, PoolService, PoolStore, Query, SelectionLimits, SelectionOptions, SelectionService
from exemplar.retrieval.serving.cache import SnapshotCache
from exemplar.samples import domain_dominant_embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--lambdas", default="0.9,0.7,0.5,0.3")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    V, labels, domains = domain_dominant_embeddings()
    root = Path(tempfile.mkdtemp(prefix="exemplar-diversity-"))
    encoders = EncoderRegistry()
    store = PoolStore(root)
    snapshots = SnapshotCache(store, refresh_s=0.0)
    pools = PoolService(store, snapshots, encoders)
    pools.create(name="emb", encoder=f"precomputed:{V.shape[1]}")
    pools.add_items("emb", [NewItem(id=f"e{i:04d}", label=labels[i], domain=domains[i], embedding=V[i])
                            for i in range(len(V))])
    selection = SelectionService(store, snapshots, encoders, SelectionLimits())
    U = V / np.linalg.norm(V, axis=1, keepdims=True)
    arms: list[tuple[str, str, dict]] = []
    for strategy in ("topk", "balanced"):
        arms.append((strategy, "none", {}))
        arms += [(strategy, f"lambda {lam}", {"diversity": {"lambda": float(lam), "depth": args.depth}})
                 for lam in args.lambdas.split(",")]
        arms.append((strategy, "dedup 0.9", {"diversity": {"lambda": 1.0, "depth": args.depth, "dedup": 0.9}}))
    rows = []
    for strategy, name, stages in arms:
        cosine, spread, precision, cpu, size = [], [], [], [], []
        for i in range(len(V)):
            t0 = time.process_time()
            result = selection.select("emb", Query(item_id=f"e{i:04d}"), strategy, SelectionOptions(k=args.k, stages=stages))
            cpu.append((time.process_time() - t0) * 1000)
            picked = [int(d.id[1:]) for d in result.demonstrations]
            size.append(len(picked))
            if len(picked) > 1:  # dedup can leave a single item
                sims = U[picked] @ U[picked].T
                cosine.append(float(sims[~np.eye(len(picked), dtype=bool)].mean()))
            spread.append(len({domains[r] for r in picked}))
            precision.append(sum(labels[r] == labels[i] for r in picked) / max(len(picked), 1))
        rows.append({"strategy": strategy, "stage": name, "mean_pairwise_cosine": round(statistics.fmean(cosine), 4),
                     "distinct_domains": round(statistics.fmean(spread), 3), "window": round(statistics.fmean(size), 2),
                     "label_precision": round(statistics.fmean(precision), 4),
                     "cpu_ms_p50": round(statistics.median(cpu), 3)})
    snapshots.close()
    store.close()
    print(f"| strategy | stage (depth {args.depth}) | items shown | mean pairwise cosine | distinct domains | "
          f"label precision@{args.k} | CPU ms p50 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['stage']} | {r['window']} | {r['mean_pairwise_cosine']} | {r['distinct_domains']} | "
              f"{r['label_precision']} | {r['cpu_ms_p50']} |")
    write_json(args.out, {"benchmark": "diversity", "k": args.k, "depth": args.depth, "queries": len(V),
                          "data": "domain_dominant_embeddings (6 classes x 4 domains x 60, 64-d)", "rows": rows})


if __name__ == "__main__":
    main()
