"""One prepared run for a GPU machine: checks that CUDA encoding and faiss GPU search give the CPU's
results within tolerance, and times both. Prints a table and writes JSON; exits 0 with a note
where there is no GPU (or faiss has no GPU support), so it can run anywhere.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

from common import write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from exemplar.encoders import load_encoder  # noqa: E402
from exemplar.retrieval import VectorIndex, gpu_available  # noqa: E402


def images(n: int, size: int = 256) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        out.append(buffer.getvalue())
    return out


def time_encode(spec: str, device: str, data: list[bytes]) -> tuple[np.ndarray, float]:
    encoder = load_encoder(spec, device=device, batch_size=64)
    prepared = [encoder.preprocess_image(d) for d in data]
    encoder.encode_preprocessed(prepared[:8])
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    vectors = encoder.encode_preprocessed(prepared)
    if device == "cuda":
        torch.cuda.synchronize()
    return vectors, len(data) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report: dict = {"cuda": torch.cuda.is_available(), "faiss_gpu": gpu_available(), "encoders": {}, "index": {}}
    if not report["cuda"]:
        print("no CUDA GPU here: nothing to check (run this on the GPU machine)")
    else:
        report["device"] = torch.cuda.get_device_name(0)
        for spec, n in (("open_clip:exemplar-tiny", 4096), ("open_clip:ViT-B-32@random", 512)):
            data = images(n)
            cpu, cpu_rate = time_encode(spec, "cpu", data[: min(n, 256)])
            gpu, gpu_rate = time_encode(spec, "cuda", data)
            diff = float(np.abs(gpu[: len(cpu)] - cpu).max())
            report["encoders"][spec] = {"cpu_img_s": round(cpu_rate, 1), "gpu_img_s": round(gpu_rate, 1),
                                        "max_abs_diff": diff, "ok": diff < 1e-2}
    if report["faiss_gpu"]:
        rng = np.random.default_rng(0)
        V = rng.normal(size=(1_000_000, 512)).astype(np.float32)
        V /= np.linalg.norm(V, axis=1, keepdims=True)
        Q = V[rng.choice(len(V), 1000, replace=False)] + 0.01
        cpu, gpu = VectorIndex.build(V), VectorIndex.build(V)
        gpu.to_gpu()
        timings = {}
        for name, index in (("cpu", cpu), ("gpu", gpu)):
            index.search(Q[:10], 10)
            started = time.perf_counter()
            D, I = index.search(Q, 10)
            timings[name] = (time.perf_counter() - started) * 1000 / len(Q), I
        agreement = float(np.mean(timings["cpu"][1] == timings["gpu"][1]))
        report["index"] = {"flat_1M_x_512": {"cpu_ms_per_query_batched": round(timings["cpu"][0], 4),
                                             "gpu_ms_per_query_batched": round(timings["gpu"][0], 4),
                                             "same_ids": agreement, "ok": agreement > 0.99}}
    else:
        print("faiss has no GPU support here (install faiss-gpu-cu12: pip install '.[gpu]')")
    print(json.dumps(report, indent=2))
    write_json(args.out, report)
    failed = [k for k, v in {**report["encoders"], **report["index"]}.items() if not v["ok"]]
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
