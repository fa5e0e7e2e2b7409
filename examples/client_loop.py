"""Client-driven VideoICL loop: your pipeline calls its own model; Exemplar only selects.

Each round asks Exemplar for the next window of demonstrations (`offset` advances by the window),
asks an OpenAI-compatible model with those demonstrations and the query, and stops when the
answer's confidence (the minimum over generated tokens of the top token probability) is strictly
above the threshold; otherwise the most confident answer wins. Exemplar is called through its
Python client (`pip install ./clients/python`); the model through httpx.

With --item-id the query turn carries that item's image (and its text where the server can give it);
images go to the model inline as data URIs unless --image-base-url says where your pipeline serves them.

    python examples/client_loop.py --server http://127.0.0.1:8000 --pool demo --item-id site-a-circle-0000 \\
        --mllm-url http://127.0.0.1:8001/v1 --model Qwen2-VL-7B
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import mimetypes
import os

import httpx

from exemplar_client import DemonstrationOut, Exemplar, NotFoundError


def min_token_prob(choice: dict) -> float:
    tokens = (choice.get("logprobs") or {}).get("content") or []
    if not tokens:
        raise SystemExit("the model returned no logprobs")
    return min(math.exp(max(t["logprob"] for t in (tok.get("top_logprobs") or [tok]))) for tok in tokens)


def turn(text: str | None, image_url: str | None) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image_url}}] if image_url else []
    return {"role": "user", "content": content + ([{"type": "text", "text": text}] if text else [])}


def data_uri(exemplar: Exemplar, pool: str, item_id: str, reference: str | None) -> str | None:
    """The item's image inline, so the model needs no access to where the pool's images live. Its
    type is guessed from the stored name, as the server does when it serves the file."""
    try:
        data = exemplar.get_item_image(pool, item_id)
    except NotFoundError:  # a text-only item, or its image file is gone
        return None
    mime = (mimetypes.guess_type(reference)[0] if reference else None) or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def query_item(exemplar: Exemplar, pool: str, item_id: str) -> dict:
    """The item's text and image; an item the server will not describe still gets its image."""
    try:
        item = exemplar.get_item(pool, item_id)
        text, reference = item.text, item.image
    except NotFoundError:
        text, reference = None, None
    return {"text": text, "image_url": data_uri(exemplar, pool, item_id, reference)}


def demo_image(exemplar: Exemplar, args: argparse.Namespace, demo: DemonstrationOut) -> str | None:
    if not demo.image:
        return None
    if args.image_base_url:
        return f"{args.image_base_url}/{demo.image}"
    return data_uri(exemplar, args.pool, demo.id, demo.image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=os.environ.get("EXEMPLAR_API_KEY"),
                        help="Exemplar API key (default: $EXEMPLAR_API_KEY)")
    parser.add_argument("--pool", default="demo")
    parser.add_argument("--item-id", help="query by an item of the pool")
    parser.add_argument("--text", help="query text (with --item-id: sent instead of the item's own text)")
    parser.add_argument("--mllm-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1")
    parser.add_argument("--model", default="default")
    parser.add_argument("--strategy", default="topk")
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--max-rounds", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--image-base-url", default=None,
                        help="where your pipeline serves pool images (demonstration 'image' is appended); "
                             "without it, demonstration images are sent inline")
    args = parser.parse_args()
    if not (args.item_id or args.text):
        parser.error("give --item-id or --text")
    query = {"item_id": args.item_id} if args.item_id else {"text": args.text}

    rounds = []
    with Exemplar(args.server, api_key=args.api_key) as exemplar, httpx.Client(timeout=60) as http:
        item = query_item(exemplar, args.pool, args.item_id) if args.item_id else {}
        query_turn = turn(args.text or item.get("text"), item.get("image_url"))
        if not query_turn["content"]:
            raise SystemExit(f"item {args.item_id!r} has no image or text to show the model; pass --text")
        for r in range(args.max_rounds):
            demos = exemplar.select(args.pool, query=query, strategy=args.strategy, k=args.window,
                                    offset=r * args.window).demonstrations
            if not demos:
                break
            messages = []
            for d in demos:
                messages += [turn(d.text, demo_image(exemplar, args, d)), {"role": "assistant", "content": d.label}]
            messages.append(query_turn)
            reply = http.post(f"{args.mllm_url}/chat/completions", json={
                "model": args.model, "messages": messages, "max_tokens": 16, "temperature": 0,
                "logprobs": True, "top_logprobs": 5,
            })
            reply.raise_for_status()
            choice = reply.json()["choices"][0]
            confidence = min_token_prob(choice)
            rounds.append({"round": r, "demonstrations": [d.id for d in demos],
                           "answer": choice["message"]["content"].strip(), "confidence": round(confidence, 4)})
            if confidence > args.threshold:
                break
    if not rounds:
        raise SystemExit("no demonstrations were selected")
    best = rounds[-1] if rounds[-1]["confidence"] > args.threshold else max(rounds, key=lambda x: x["confidence"])
    print(json.dumps({"answer": best["answer"], "confidence": best["confidence"], "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
