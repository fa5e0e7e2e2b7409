"""CCI adapter training time on the CPU (or GPU when present) for 10^4 and 10^5 items of 512-d
domain-dominant embeddings, with the default parameters. Figures only.

    python benchmarks/adapter_training.py --out benchmarks/results/adapter_training.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import write_json

import numpy as np

from exemplar.encoders.cci import CCIConfig, train_cci
from exemplar.samples import domain_dominant_embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        per = max(1, size // 24)  # 6 classes x 4 domains
        V, labels, domains = domain_dominant_embeddings(per_class_per_domain=per, dim=args.dim, seed=0)
        y = np.unique(labels, return_inverse=True)[1]
        g = np.unique(domains, return_inverse=True)[1]
        started = time.perf_counter()
        result = train_cci(V, y, g, CCIConfig(device=args.device))
        seconds = time.perf_counter() - started
        rows.append({"items": len(V), "dim": args.dim, "seconds": round(seconds, 2), "epochs_run": len(result.history),
                     "best_epoch": result.best_epoch, "device": args.device})
    print("| items | dim | seconds | epochs run |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['items']} | {r['dim']} | {r['seconds']} | {r['epochs_run']} |")
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
