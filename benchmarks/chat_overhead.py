"""What POST /v1/chat/completions costs a call beyond the model's own time, next to select.

Starts the scripted OpenAI-protocol model (tests/fake_mllm.py, answering at once) and `exemplar demo`
(144 shape images, exemplar-tiny) as real processes on loopback, and sends, interleaved, `--requests`
calls of each kind with the same query image (so every arm encodes it):

- select: POST /v1/pools/demo/select, balanced, k 8, the image as base64;
- chat: POST /v1/chat/completions with ``exemplar`` (balanced, k 8), the image as a data URI in the
  last user message; the 8 demonstrations go to the model with their images as data URIs;
- direct: the same model call sent straight to the model server (the body Exemplar forwarded,
  rebuilt from the response), the model's own round trip;
- passthrough: POST /v1/chat/completions without ``exemplar``, and the same body sent direct.

Reports client-side p50/p95 per arm, the chat call's own cost (client time minus the model time the
server measured, per call), the server's ``timing_ms`` split, and the load generator's CPU share
(it shares the machine's cores with both servers). Figures only.

    python benchmarks/chat_overhead.py --requests 200 --out benchmarks/results/chat_overhead.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from common import free_port, percentile, write_json
from infer_overhead import ROOT, start

QUESTION = "Which shape is this?"


def _stats(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3),
            "mean": round(statistics.fmean(values), 3)}


def _timed(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    r = client.post(url, json=body)
    elapsed = (time.perf_counter() - t0) * 1000
    r.raise_for_status()
    return elapsed, r.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="exemplar-chat-"))
    mllm_port, port = free_port(), free_port()
    model_url = f"http://127.0.0.1:{mllm_port}/v1"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), EXEMPLAR_MLLM_ENDPOINTS=json.dumps(
        {"fake": {"base_url": model_url, "model": "majority"}}))
    procs = [start(["-m", "tests.fake_mllm", "--port", str(mllm_port)], f"http://127.0.0.1:{mllm_port}/healthz",
                   tmp / "mllm.log", env)]
    arms: dict[str, list[float]] = {name: [] for name in ("select", "chat", "direct", "passthrough", "direct_plain")}
    own: list[float] = []
    server: dict[str, list[float]] = {}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        procs.append(start(["-m", "exemplar", "demo", "--data-dir", str(tmp / "d"), "--port", str(port)],
                           f"http://127.0.0.1:{port}/readyz", tmp / "demo.log", env))
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as client, httpx.Client(timeout=60) as direct:
            item = client.get("/v1/pools/demo/items/site-b-square-0001").json()
            image = client.get(f"/v1/pools/demo/items/{item['id']}/image").content
            b64 = base64.b64encode(image).decode()
            query = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
                                                 {"type": "text", "text": QUESTION}]}
            select = {"query": {"image": b64}, "strategy": "balanced", "k": args.k}
            chat = {"model": "fake", "messages": [query], "max_tokens": 8,
                    "exemplar": {"pool": "demo", "strategy": "balanced", "k": args.k,
                                 "prompt": {"demo_text": QUESTION}}}
            plain = {"model": "fake", "messages": [query], "max_tokens": 8}
            # The body Exemplar forwards: the demonstrations' turns before the query, images inlined.
            _, first = _timed(client, "/v1/chat/completions", chat)
            turns = []
            for d in first["exemplar"]["demonstrations"]:
                demo_image = base64.b64encode(client.get(f"/v1/pools/demo/items/{d['id']}/image").content).decode()
                turns += [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{demo_image}"}},
                    {"type": "text", "text": QUESTION}]}, {"role": "assistant", "content": d["label"]}]
            forwarded = {"model": "majority", "messages": [*turns, query], "max_tokens": 8}
            direct_plain = {**plain, "model": "majority"}
            for i in range(args.requests + 10):
                ms_select, _ = _timed(client, "/v1/pools/demo/select", select)
                ms_chat, out = _timed(client, "/v1/chat/completions", chat)
                ms_direct, _ = _timed(direct, f"{model_url}/chat/completions", forwarded)
                ms_pass, _ = _timed(client, "/v1/chat/completions", plain)
                ms_direct_plain, _ = _timed(direct, f"{model_url}/chat/completions", direct_plain)
                if i < 10:
                    continue  # warm-up
                for name, value in zip(arms, (ms_select, ms_chat, ms_direct, ms_pass, ms_direct_plain)):
                    arms[name].append(value)
                timing = out["exemplar"]["timing_ms"]
                own.append(ms_chat - timing["upstream"])
                for key, value in timing.items():
                    server.setdefault(key, []).append(value)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    report = {
        "benchmark": "chat_overhead", "requests": args.requests, "k": args.k, "strategy": "balanced",
        "pool": "demo (144 images, exemplar-tiny)", "images": "data URIs (query and demonstrations)",
        "client_ms": {name: _stats(values) for name, values in arms.items()},
        "chat_own_ms": _stats(own),
        "server_timing_ms": {key: _stats(values) for key, values in server.items()},
        "passthrough_minus_direct_p50_ms": round(percentile(arms["passthrough"], 50) - percentile(arms["direct_plain"], 50), 3),
        "load_generator_cpu_share": round(cpu_share, 3),
        "cores": os.cpu_count(),
    }
    c = report["client_ms"]
    print(f"| per call, client side, {args.requests} calls each, interleaved | p50 ms | p95 ms |")
    print("|---|---|---|")
    rows = [("select (balanced, k 8, image query)", c["select"]),
            ("chat with exemplar (same selection, model call included)", c["chat"]),
            ("the same model call sent direct", c["direct"]),
            ("chat's own cost: chat - model time measured by the server", report["chat_own_ms"]),
            *((f"server timing_ms.{key}", s) for key, s in report["server_timing_ms"].items()),
            ("chat without exemplar (passthrough)", c["passthrough"]),
            ("the same body sent direct", c["direct_plain"])]
    for name, s in rows:
        print(f"| {name} | {s['p50']} | {s['p95']} |")
    print(f"\nload generator CPU share: {report['load_generator_cpu_share']} of a core ({report['cores']} cores)")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
