"""Per-round overhead of POST /v1/pools/{pool}/infer, excluding the model's own time.

Starts the scripted OpenAI-protocol model (tests/fake_mllm.py, answering at once) and
`exemplar demo` (144 shape images, exemplar-tiny) as real processes on loopback, runs `--requests`
infer calls that never reach the threshold (so every call runs all `--rounds` rounds of
`--window` demonstrations with images as data URIs), and reports the server's own timing:
overhead = total - model time (model time = the HTTP round trip to the model endpoint, as the
client measures it). Figures only.

    python benchmarks/infer_overhead.py --requests 100 --out benchmarks/results/infer_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import free_port, percentile, write_json

ROOT = Path(__file__).resolve().parents[1]


def start(args: list[str], ready: str, log: Path, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(ready, timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{args} did not start; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="exemplar-infer-"))
    mllm_port, port = free_port(), free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), EXEMPLAR_MLLM_ENDPOINTS=json.dumps(
        {"fake": {"base_url": f"http://127.0.0.1:{mllm_port}/v1", "model": "label:never"}}))
    procs = [start(["-m", "tests.fake_mllm", "--port", str(mllm_port)], f"http://127.0.0.1:{mllm_port}/healthz",
                   tmp / "mllm.log", env)]
    try:
        procs.append(start(["-m", "exemplar", "demo", "--data-dir", str(tmp / "d"), "--port", str(port)],
                           f"http://127.0.0.1:{port}/readyz", tmp / "demo.log", env))
        base = f"http://127.0.0.1:{port}"
        per_round, model_per_round, client_total = [], [], []
        ids = [f"site-{s}-{c}-{n:04d}" for s in "abc" for c in ("circle", "square", "triangle", "cross") for n in range(12)]
        with httpx.Client(base_url=base, timeout=60) as client:
            for i in range(args.requests + 10):
                body = {"query": {"item_id": ids[i % len(ids)]}, "mllm": "fake", "strategy": "balanced",
                        "window": args.window, "max_rounds": args.rounds}
                t0 = time.perf_counter()
                r = client.post("/v1/pools/demo/infer", json=body)
                elapsed = (time.perf_counter() - t0) * 1000
                r.raise_for_status()
                out = r.json()
                assert len(out["rounds"]) == args.rounds
                if i >= 10:
                    per_round.append(out["timing_ms"]["overhead"] / args.rounds)
                    model_per_round.append(out["timing_ms"]["model"] / args.rounds)
                    client_total.append(elapsed)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    report = {
        "benchmark": "infer_overhead", "requests": args.requests, "rounds": args.rounds, "window": args.window,
        "pool": "demo (144 images, exemplar-tiny)", "strategy": "balanced", "images": "data URIs",
        "overhead_per_round_ms": {"p50": round(percentile(per_round, 50), 3), "p95": round(percentile(per_round, 95), 3),
                                  "mean": round(statistics.fmean(per_round), 3)},
        "model_roundtrip_per_round_ms": {"p50": round(percentile(model_per_round, 50), 3)},
        "client_total_ms": {"p50": round(percentile(client_total, 50), 3)},
    }
    print("| per round (window 2, balanced, images as data URIs) | p50 ms | p95 ms | mean ms |")
    print("|---|---|---|---|")
    o = report["overhead_per_round_ms"]
    print(f"| Exemplar overhead (total - model) | {o['p50']} | {o['p95']} | {o['mean']} |")
    print(f"| model endpoint round trip (scripted, instant) | {report['model_roundtrip_per_round_ms']['p50']} | | |")
    print(f"\nwhole request ({args.rounds} rounds), client side: p50 {report['client_total_ms']['p50']} ms")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
