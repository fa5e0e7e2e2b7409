"""Leave-one-domain-out label precision@k of invariant:topk against topk, for the CCI defaults and
one change at a time, on both generated data sets (shape images with exemplar-tiny, and
domain-dominant precomputed embeddings). Figures only.

    python benchmarks/cci_ablation.py --out benchmarks/results/cci_ablation.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from exemplar.app.adapters import CCITrainer  # noqa: E402
from exemplar.encoders import EncoderRegistry  # noqa: E402
from exemplar.retrieval import PoolService, PoolStore, SnapshotCache, build_pool, evaluate_lodo  # noqa: E402
from exemplar.samples import generate_shapes, write_embedding_manifest  # noqa: E402

VARIANTS: dict[str, dict[str, object]] = {
    "defaults (linear, class_mean, cross_domain_weight=2)": {},
    "head=mlp": {"head": "mlp"},
    "domain_loss=none": {"domain_loss": "none"},
    "domain_loss=adversarial": {"domain_loss": "adversarial"},
    "cross_domain_weight=1": {"cross_domain_weight": 1.0},
    "cross_domain_only": {"cross_domain_only": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="exemplar-ablation-"))
    store = PoolStore(root / "data")
    snapshots = SnapshotCache(store)
    pools = PoolService(store, snapshots, EncoderRegistry(device="cpu"))
    pools.create(name="shapes", encoder="open_clip:exemplar-tiny")
    build_pool(store, snapshots, pools.encoders, "shapes", generate_shapes(root / "shapes", per_class_per_domain=args.per_class))
    pools.create(name="embeddings", encoder="precomputed:64")
    build_pool(store, snapshots, pools.encoders, "embeddings", write_embedding_manifest(root / "emb", per_class_per_domain=args.per_class))
    rows = []
    for pool in ("shapes", "embeddings"):
        snap = snapshots.snapshot(pool)
        for name, params in VARIANTS.items():
            report = evaluate_lodo(snap, strategies=["topk", "invariant:topk"], k=8, trainer=CCITrainer("cpu"),
                                   adapter_params=params, resamples=1000)
            m = report.metrics["invariant:topk"]["precision_at_k"]
            d = report.differences["invariant:topk - topk"]["precision_at_k"]
            rows.append({"pool": pool, "variant": name, "params": params, "invariant_precision": vars(m),
                         "difference_vs_topk": vars(d), "topk_precision": vars(report.metrics["topk"]["precision_at_k"])})
    print("| data | CCI variant | invariant:topk precision@8 | minus topk (paired 95% CI) |")
    print("|---|---|---|---|")
    for r in rows:
        m, d = r["invariant_precision"], r["difference_vs_topk"]
        print(f"| {r['pool']} | {r['variant']} | {m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}] | "
              f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |")
    write_json(args.out, rows)
    snapshots.close()
    store.close()


if __name__ == "__main__":
    main()
