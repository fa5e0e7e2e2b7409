"""Build throughput: end-to-end images/s of a build against the raw model's own images/s on the same
machine in the same run, for exemplar-tiny and ViT-B-32 (random weights); and vectors/s of index
builds. Figures only.

Images are 512x384 JPEGs (shapes in stain-like domains, upscaled), so decoding costs what it costs
for real photographs; the build decodes them in draft mode in worker threads while the model
encodes the previous batch.

    python benchmarks/build_throughput.py --out benchmarks/results/build_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from exemplar.encoders import EncoderRegistry, load_encoder  # noqa: E402
from exemplar.encoders.images import decode_image  # noqa: E402
from exemplar.retrieval import PoolService, PoolStore, SnapshotCache, build_pool  # noqa: E402
from exemplar.retrieval.index.auto import build_index  # noqa: E402
from exemplar.samples import generate_shapes  # noqa: E402


def make_jpegs(root: Path, n: int) -> Path:
    manifest = generate_shapes(root / "small", per_class_per_domain=max(1, n // 12 + 1))
    rows = [json.loads(line) for line in manifest.read_text().splitlines()][:n]
    out = []
    for r in rows:
        image = Image.open(root / "small" / r["image"]).convert("RGB").resize((512, 384), Image.BICUBIC)
        path = root / "jpeg" / (r["id"] + ".jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
        out.append({**r, "image": path.relative_to(root).as_posix()})
    target = root / "manifest.jsonl"
    target.write_text("".join(json.dumps(r) + "\n" for r in out))
    return target


def raw_model_rate(spec: str, files: list[Path], batch: int, device: str) -> float:
    """Images/s of the model alone: inputs decoded and transformed beforehand, only forward passes timed
    (the vectors come back to host memory, so a GPU's figure includes its copies)."""
    encoder = load_encoder(spec, device=device, batch_size=batch)
    prepared = [encoder.preprocess_image(f.read_bytes()) for f in files]
    encoder.encode_preprocessed(prepared[:batch])  # warm-up
    started = time.perf_counter()
    encoder.encode_preprocessed(prepared)
    return len(prepared) / (time.perf_counter() - started)


def decode_rate(files: list[Path], target: int | None) -> float:
    data = [f.read_bytes() for f in files]
    started = time.perf_counter()
    for d in data:
        decode_image(d, target=target)
    return len(data) / (time.perf_counter() - started)


def build_rate(spec: str, manifest: Path, root: Path, workers: int, batch: int, device: str) -> tuple[float, int]:
    store = PoolStore(root / f"data-{spec.replace(':', '_').replace('@', '_')}-{workers}")
    snapshots = SnapshotCache(store)
    pools = PoolService(store, snapshots, EncoderRegistry(device=device, batch_size=batch))
    try:
        pools.create(name="bench", encoder=spec)
        started = time.perf_counter()
        report = build_pool(store, snapshots, pools.encoders, "bench", manifest, workers=workers, batch_size=batch, shard_size=4096)
        return report.added / (time.perf_counter() - started), report.added
    finally:
        snapshots.close()
        store.close()


def index_rates(n: int, dim: int) -> list[dict]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(256, dim))
    V = centres[rng.integers(0, 256, n)] + 0.5 * rng.normal(size=(n, dim))
    V = (V / np.linalg.norm(V, axis=1, keepdims=True)).astype(np.float32)
    out = []
    for factory in ("Flat", "IVF1024,Flat", "IVF1024,PQ32", "HNSW32"):
        started = time.perf_counter()
        _, stats = build_index(V, factory)
        seconds = time.perf_counter() - started
        out.append({"factory": factory, "vectors": n, "dim": dim, "build_s": stats["build_s"],
                    "with_tuning_s": round(seconds, 2), "vectors_per_s": round(n / stats["build_s"]),
                    "recall_at_10": stats["recall_at_k"], "params": stats["params"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--vit-images", type=int, default=240)
    parser.add_argument("--index-vectors", type=int, default=100_000, help="0 skips the index builds")
    parser.add_argument("--device", default="cpu", help="where the encoder runs: cpu, cuda")
    parser.add_argument("--workers", default="1,2", help="decode threads to try, comma-separated")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    root = Path(tempfile.mkdtemp(prefix="exemplar-throughput-"))
    manifest = make_jpegs(root, args.images)
    files = [root / json.loads(line)["image"] for line in manifest.read_text().splitlines()]
    vit_manifest = root / "vit.jsonl"
    vit_manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[: args.vit_images]))
    results = {"cpus": os.cpu_count(), "device": args.device, "images": {}, "index": []}
    results["decode_per_s"] = {"full": round(decode_rate(files[:300], None)), "draft_224": round(decode_rate(files[:300], 224)),
                               "draft_32": round(decode_rate(files[:300], 32))}
    for spec, n_manifest, batch in (("open_clip:exemplar-tiny", manifest, 256), ("open_clip:ViT-B-32@random", vit_manifest, 32)):
        n = len(n_manifest.read_text().splitlines())
        raw = raw_model_rate(spec, files[: min(n, 2048 if args.device != "cpu" else 512)], batch, args.device)
        rows = {"raw_model_per_s": round(raw, 1), "images": n}
        for workers in worker_counts:
            rate, added = build_rate(spec, n_manifest, root, workers, batch, args.device)
            rows[f"end_to_end_per_s_workers_{workers}"] = round(rate, 1)
            assert added == n
        rows["end_to_end_over_raw"] = round(max(rows[f"end_to_end_per_s_workers_{w}"] for w in worker_counts) / raw, 3)
        results["images"][spec] = rows
    if args.index_vectors:
        results["index"] = index_rates(args.index_vectors, 64)
    print(f"decode 512x384 JPEG, images/s: full {results['decode_per_s']['full']}, draft for 224 px "
          f"{results['decode_per_s']['draft_224']}, draft for 32 px {results['decode_per_s']['draft_32']}\n")
    print(f"encoder on {args.device}\n")
    print("| encoder | raw model img/s | " + " | ".join(f"build img/s ({w} decode threads)" for w in worker_counts) + " | build / raw |")
    print("|---|---|" + "---|" * len(worker_counts) + "---|")
    for spec, r in results["images"].items():
        builds = " | ".join(str(r[f"end_to_end_per_s_workers_{w}"]) for w in worker_counts)
        print(f"| {spec} | {r['raw_model_per_s']} | {builds} | {r['end_to_end_over_raw']} |")
    if results["index"]:
        print(f"\n| index ({args.index_vectors} x 64, clustered) | build s | vectors/s | recall@10 | tuned |")
        print("|---|---|---|---|---|")
    for r in results["index"]:
        print(f"| {r['factory']} | {r['build_s']} | {r['vectors_per_s']} | {r['recall_at_10']} | {r['params']} |")
    write_json(args.out, results)


if __name__ == "__main__":
    main()
