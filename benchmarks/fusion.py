"""Modality weighting (`fusion`): what the weights do to leave-one-domain-out selection quality on an
image+text pool, and what a weighted search costs against the default one. Figures only.

Quality: the shapes sample (4 classes x 3 stain-like domains) encoded by `exemplar-tiny` (random
weights) with captions that name the item's class correctly with probability `--caption-accuracy`
and another class otherwise ("a <class> specimen, slide <n>"): image and text are two imperfect,
partly independent signals. `exemplar eval`'s proxies (same code, `evaluate_lodo`) for the fused
vector (no `fusion`) and for image weights 0 (text only) to 1 (image only).

Cost: a pool of `--rows` random-direction items stored as image+text (the store is given the
vectors; nothing is encoded), `topk` k=8 for item queries in this process, the default search
(its tuned index) against `fusion` (an exact scan of the 2 x dim stored modality vectors).

    python benchmarks/fusion.py --out benchmarks/results/fusion.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from common import write_json

from exemplar.encoders import EncoderRegistry
from exemplar.retrieval import PoolService, PoolStore, Query, SelectionOptions, SelectionService, evaluate_lodo
from exemplar.retrieval.build.runner import build_pool
from exemplar.retrieval.serving.cache import SnapshotCache
from exemplar.retrieval.store.catalog import ItemRow
from exemplar.retrieval.store.modalities import stack_modalities
from exemplar.samples import domain_dominant_embeddings, generate_shapes

STRATEGIES = ("topk", "balanced")
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _captioned(manifest: Path, accuracy: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    classes = sorted({r["label"] for r in rows})
    for n, row in enumerate(rows):
        named = row["label"] if rng.random() < accuracy else str(rng.choice([c for c in classes if c != row["label"]]))
        row["text"] = f"a {named} specimen, slide {n}"
    out = manifest.with_name("captioned.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _proxies(snap, resamples: int) -> dict:  # noqa: ANN001 - a Snapshot or its fused view
    report = evaluate_lodo(snap, strategies=STRATEGIES, k=8, resamples=resamples)
    return {spec: {m: [round(i.mean, 4), round(i.low, 4), round(i.high, 4)] for m, i in metrics.items()}
            for spec, metrics in report.metrics.items()}


def quality(root: Path, pools: PoolService, args: argparse.Namespace) -> dict:
    manifest = _captioned(generate_shapes(root / "shapes", per_class_per_domain=args.per_class_per_domain),
                          args.caption_accuracy, args.seed)
    pools.create(name="shapes", encoder="open_clip:exemplar-tiny", embed="image+text")
    build_pool(pools.store, pools.snapshots, pools.encoders, "shapes", manifest, media_root=manifest.parent)
    snap = pools.snapshots.snapshot("shapes")
    arms = {"fused vector (no fusion)": _proxies(snap, args.resamples)}
    for w in WEIGHTS:
        arms[f"fusion image {w}"] = _proxies(snap.in_fused_space((w, 1.0 - w)), args.resamples)
    return {"items": snap.size, "caption_accuracy": args.caption_accuracy, "arms": arms}


def synthetic(pools: PoolService, args: argparse.Namespace) -> dict:
    """Image vectors where domain and style outweigh the class (`domain_dominant_embeddings`), text
    vectors that carry the class with heavy noise and no domain: two informative, independent views."""
    image, labels, domains = domain_dominant_embeddings(seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    classes = sorted(set(labels))
    centres = rng.normal(size=(len(classes), image.shape[1]))
    text = np.stack([centres[classes.index(label)] for label in labels]) + 2.5 * rng.normal(size=image.shape)
    pools.create(name="synthetic", encoder="open_clip:exemplar-tiny", embed="image+text")
    rows = [ItemRow(uid=-1, item_id=f"s{i:05d}", label=labels[i], text=None, image=None, media_root=None,
                    domain=domains[i], metadata=None) for i in range(len(labels))]
    pools.store.write(pools.get("synthetic"), rows, stack_modalities(image, text), bases=pools.snapshots,
                      source="bench", replace_all=True)
    snap = pools.snapshots.snapshot("synthetic")
    arms = {"fused vector (no fusion)": _proxies(snap, args.resamples)}
    for w in WEIGHTS:
        arms[f"fusion image {w}"] = _proxies(snap.in_fused_space((w, 1.0 - w)), args.resamples)
    return {"items": snap.size, "arms": arms}


def cost(root: Path, pools: PoolService, selection: SelectionService, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    dim = 512
    pools.create(name="big", encoder="open_clip:ViT-B-32@random", embed="image+text")
    centres = rng.normal(size=(64, dim))
    which = rng.integers(0, 64, args.rows)
    image = centres[which] + 0.6 * rng.normal(size=(args.rows, dim))
    text = centres[which] + 0.9 * rng.normal(size=(args.rows, dim))
    rows = [ItemRow(uid=-1, item_id=f"b{i:07d}", label=f"c{which[i] % 8}", text=None, image=None, media_root=None,
                    domain=None, metadata=None) for i in range(args.rows)]
    pool = pools.get("big")
    started = time.perf_counter()
    pools.store.write(pool, rows, stack_modalities(image, text), bases=pools.snapshots, source="bench",
                      replace_all=True)
    write_s = time.perf_counter() - started
    queries = [f"b{i:07d}" for i in rng.choice(args.rows, args.queries, replace=False)]
    out = {"rows": args.rows, "dim": dim, "write_s": round(write_s, 1),
           "index": pools.store.version(pool.id, pools.get("big").current_version).stats["index"]["factory"]}
    for name, options in (("default", SelectionOptions(k=8)), ("fusion 0.5", SelectionOptions(k=8, fusion=(0.5, 0.5)))):
        selection.select("big", Query(item_id=queries[0]), "topk", options)  # warm
        times = []
        for q in queries:
            started = time.perf_counter()
            selection.select("big", Query(item_id=q), "topk", options)
            times.append((time.perf_counter() - started) * 1000)
        out[name] = {"p50_ms": round(float(np.percentile(times, 50)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2)}
    folder = pools.store.files.pool_dir(pool.id)
    out["bytes"] = {name: sum(f.stat().st_size for f in folder.rglob(name)) for name in ("vectors.npy", "modalities.npy")}
    return out


def _table(arms: dict) -> None:
    print("\n| arm | topk precision@8 [95% CI] | balanced vote accuracy [95% CI] |")
    print("|---|---|---|")
    for arm, r in arms.items():
        cells = [r["topk"]["precision_at_k"], r["balanced"]["vote_accuracy"]]
        print(f"| {arm} | " + " | ".join(f"{c[0]:.3f} [{c[1]:.3f}, {c[2]:.3f}]" for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class-per-domain", type=int, default=30)
    parser.add_argument("--caption-accuracy", type=float, default=0.6)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="exemplar-fusion-"))
    store = PoolStore(root / "data")
    snapshots = SnapshotCache(store, refresh_s=0.0)
    encoders = EncoderRegistry()
    pools = PoolService(store, snapshots, encoders)
    selection = SelectionService(store, snapshots, encoders)
    try:
        results = {"quality": quality(root, pools, args), "synthetic": synthetic(pools, args),
                   "cost": cost(root, pools, selection, args)}
    finally:
        snapshots.close()
        store.close()
    q = results["quality"]
    print(f"shapes, image+text, captions naming the class with p={q['caption_accuracy']}, {q['items']} items, k 8")
    _table(q["arms"])
    print(f"\nsynthetic two-view embeddings (64-d, 6 classes x 4 domains), {results['synthetic']['items']} items, k 8")
    _table(results["synthetic"]["arms"])
    c = results["cost"]
    print(f"\ncost, {c['rows']} x {c['dim']} ({c['index']}), topk k=8, item queries, in process: "
          f"default p50 {c['default']['p50_ms']} ms (p95 {c['default']['p95_ms']}), "
          f"fusion p50 {c['fusion 0.5']['p50_ms']} ms (p95 {c['fusion 0.5']['p95_ms']}); "
          f"bytes {c['bytes']}")
    write_json(args.out, {"benchmark": "fusion", **results})


if __name__ == "__main__":
    main()
