"""A scripted OpenAI-protocol chat-completions server, the stand-in for a real MLLM in tests.

Run: ``python -m tests.fake_mllm --port 8001``. The behaviour is chosen by the request's ``model``:

- ``majority``: answers the most common label among the demonstrations (assistant turns) it is
  shown, with probability = that label's share of them (so confidence depends on the window);
- ``label:X``: answers X, with probability = X's share of the demonstrations shown (at least 0.05);
- ``nearest``: answers the label of the demonstration whose text shares the most words with the
  query's text (the first such one), with probability = that label's share of the demonstrations;
  "unknown" without demonstrations. It follows which label goes with which input, so shuffling the
  shown labels changes its answers where ``majority`` (blind to the pairing, but for ties, which it
  breaks by order) answers the same;
- ``judge``: a relevance judge for the rerank stage: reads the texts after ``Query:`` and
  ``Candidate:`` in the user turn and answers "Yes" with probability p = |Q & C| / |Q | C| over
  their lower-cased word sets, rounded to 3 places and held in [0.01, 0.99] ("Yes" carries 3/4 of p
  and " yes" 1/4 in the top logprobs, "No" 1 - p; the answer is "Yes" when p >= 0.5);
- ``recency``: answers the label of the last demonstration shown (the one next to the query), with
  probability = that label's share of them: a model with an extreme recency bias, so the order of the
  demonstrations decides its answer ("unknown" without demonstrations);
- ``slow:S``: waits S seconds, then answers like ``majority``;
- ``flaky:N``: answers HTTP 503 to the first N requests (since the last reset), then ``majority``;
- ``no-logprobs``, ``malformed`` (a JSON body without choices), ``notjson``, ``refuse`` (HTTP 400);
- ``multi``: the many-query prompt of ``infer/batch``: "<n>: <label>" per numbered query (``_multi``);
  ``multi:bad=2`` writes query 2's line malformed, ``multi:skip=3`` leaves query 3's out (``+`` joins numbers);
- ``error:STATUS``: answers HTTP STATUS with an OpenAI error body (``type``, ``param``, ``code``), and
  ``retry-after: 1`` on a 429.

``stream: true`` answers the same completion as server-sent events (a role chunk, one chunk per
word of the answer, a finish chunk, ``[DONE]``).

Every request is recorded (the demonstration labels, the number of images, the roles in order, the
image URLs and texts of the last user turn, i.e. the query, the body's keys and size) and listed by
``GET /requests``; ``POST /reset`` clears the record and the counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
from collections import Counter
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

app = FastAPI()
_state: dict[str, Any] = {"requests": [], "calls": Counter()}


def _demos(messages: list[dict[str, Any]]) -> tuple[list[str], int, str]:
    labels = [m["content"] for m in messages if m.get("role") == "assistant"]
    images = 0
    texts = []
    for m in messages:
        if m.get("role") == "user" and isinstance(m.get("content"), list):
            for part in m["content"]:
                images += part.get("type") == "image_url"
                if part.get("type") == "text":
                    texts.append(part["text"])
    return labels, images, texts[-1] if texts else ""


def _nearest(messages: list[dict[str, Any]]) -> str | None:
    """The answer of the demonstration whose user turn shares the most words with the query's."""
    def words(message: dict[str, Any]) -> set[str]:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        return {w for p in parts if p.get("type") == "text" for w in str(p["text"]).lower().split()}

    pairs = [(messages[i], messages[i + 1]["content"]) for i in range(len(messages) - 1)
             if messages[i].get("role") == "user" and messages[i + 1].get("role") == "assistant"]
    users = [m for m in messages if m.get("role") == "user"]
    if not pairs or not users:
        return None
    query = words(users[-1])
    best = max(range(len(pairs)), key=lambda j: (len(words(pairs[j][0]) & query), -j))
    return str(pairs[best][1])


def _query_turn(messages: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The last user turn's parts: what a client showed the model as the query itself."""
    users = [m for m in messages if m.get("role") == "user"]
    content = users[-1].get("content") if users else []
    parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
    return {"images": [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"],
            "texts": [p["text"] for p in parts if p.get("type") == "text"]}


def _judged(model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``judge`` behaviour: P(Yes) from the word overlap of the query's and the candidate's texts."""
    said: dict[str, set[str]] = {"Query": set(), "Candidate": set()}
    for m in messages:
        for part in m.get("content") if isinstance(m.get("content"), list) else ():
            marker, colon, rest = str(part.get("text", "")).partition(":")
            if part.get("type") == "text" and colon and marker in said:
                said[marker] = set(rest.lower().split())
    union = said["Query"] | said["Candidate"]
    p = min(max(round(len(said["Query"] & said["Candidate"]) / len(union), 3) if union else 0.0, 0.01), 0.99)
    answer = "Yes" if p >= 0.5 else "No"
    top = [{"token": "Yes", "logprob": math.log(0.75 * p), "bytes": None},
           {"token": " yes", "logprob": math.log(0.25 * p), "bytes": None},
           {"token": "No", "logprob": math.log(1.0 - p), "bytes": None}]
    first = next(t for t in top if t["token"] == answer)
    choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop",
              "logprobs": {"content": [{"token": answer, "logprob": first["logprob"], "bytes": None,
                                        "top_logprobs": sorted(top, key=lambda t: -t["logprob"])}]}}
    return {"id": "cmpl-fake", "object": "chat.completion", "model": model, "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _completion(model: str, answer: str, prob: float, logprobs: bool = True) -> dict[str, Any]:
    """One answer token of probability ``prob``, the most likely one as under greedy decoding: the
    remaining mass is spread over alternatives no likelier than it."""
    prob = min(max(prob, 0.05), 1.0)
    n_alt = math.ceil((1.0 - prob) / prob - 1e-9) if prob < 1.0 else 0
    alternatives = [{"token": f"alt{i}", "logprob": math.log((1.0 - prob) / n_alt), "bytes": None}
                    for i in range(min(n_alt, 4))]
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
    if logprobs:
        choice["logprobs"] = {"content": [{
            "token": answer, "logprob": math.log(prob), "bytes": list(answer.encode()),
            "top_logprobs": [{"token": answer, "logprob": math.log(prob), "bytes": None}, *alternatives],
        }]}
    return {"id": "cmpl-fake", "object": "chat.completion", "model": model, "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _events(completion: dict[str, Any]) -> Any:  # noqa: ANN401 - an async iterator of SSE bytes
    choice = completion["choices"][0]
    head = {"id": completion["id"], "object": "chat.completion.chunk", "created": 0, "model": completion["model"]}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk)}\n\n".encode()

    async def stream() -> Any:  # noqa: ANN401
        yield event({"role": "assistant", "content": ""})
        words = choice["message"]["content"].split(" ")
        for i, word in enumerate(words):
            yield event({"content": word if i == 0 else f" {word}"})
        yield event({}, "stop")
        yield b"data: [DONE]\n\n"

    return stream()


def _error(status: int) -> JSONResponse:
    error = {"message": f"scripted error {status}", "type": "invalid_request_error", "param": "messages",
             "code": f"scripted_{status}"}
    headers = {"retry-after": "1"} if status == 429 else None
    return JSONResponse({"error": error}, status_code=status, headers=headers)


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Any:  # noqa: ANN401
    raw = await request.body()
    body = json.loads(raw)
    model = str(body.get("model", "majority"))
    messages = body.get("messages", [])
    labels, images, query_text = _demos(messages)
    _state["requests"].append({"model": model, "labels": labels, "images": images, "query_text": query_text,
                               "query": _query_turn(messages), "roles": [m.get("role") for m in messages],
                               "keys": sorted(body), "bytes": len(raw), "stream": body.get("stream"),
                               "logprobs": body.get("logprobs"), "top_logprobs": body.get("top_logprobs"),
                               "authorization": request.headers.get("authorization")})
    _state["calls"][model] += 1
    kind, _, arg = model.partition(":")
    if kind == "slow":
        await asyncio.sleep(float(arg))
    if kind == "flaky" and _state["calls"][model] <= int(arg):
        return JSONResponse({"error": "overloaded"}, status_code=503)
    if kind == "refuse":
        return JSONResponse({"error": "bad request"}, status_code=400)
    if kind == "error":
        return _error(int(arg))
    if kind == "malformed":
        return JSONResponse({"unexpected": True})
    if kind == "notjson":
        return PlainTextResponse("<html>gateway</html>")
    if kind == "judge":
        return _judged(model, messages)
    if kind == "multi":
        return _multi(model, arg, messages)
    counts = Counter(labels)
    nearest = _nearest(messages) if kind == "nearest" else None
    if kind == "label":
        answer, share = arg, (counts[arg] / len(labels) if labels else 0.0)
    elif kind == "recency" and labels:
        answer, share = labels[-1], counts[labels[-1]] / len(labels)
    elif nearest is not None:
        answer, share = nearest, counts[nearest] / len(labels)
    elif counts:
        answer, n = counts.most_common(1)[0]
        share = n / len(labels)
    else:
        answer, share = "unknown", 0.1
    completion = _completion(model, answer, share, logprobs=kind != "no-logprobs")
    if body.get("stream"):
        return StreamingResponse(_events(completion), media_type="text/event-stream")
    return completion


_NUMBERED_QUERY = re.compile(r"^Query (\d+):\s*(.*)$", re.DOTALL)


def _multi(model: str, arg: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """``multi``: one line per numbered query of the last user turn ("Query <n>: <text>"), as
    "<n>: <label>", the label of the demonstration sharing the most words with the query's text
    ("unknown" when none shares a word). ``multi:bad=N`` writes query N's line without its
    separator, ``multi:skip=N`` leaves it out (comma-separated for several)."""
    script = dict(part.split("=", 1) for part in arg.split(",") if "=" in part)
    bad, skip = {int(n) for n in script.get("bad", "").split("+") if n}, {int(n) for n in script.get("skip", "").split("+") if n}
    pairs = [(m, messages[i + 1]["content"]) for i, m in enumerate(messages[:-1])
             if m.get("role") == "user" and messages[i + 1].get("role") == "assistant"]

    def words(message: dict[str, Any]) -> set[str]:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        return {w for p in parts if p.get("type") == "text" for w in str(p["text"]).lower().split()}

    lines = []
    for text in _query_turn(messages)["texts"]:
        found = _NUMBERED_QUERY.match(text)
        if not found:
            continue
        n, query = int(found[1]), set(found[2].lower().split())
        best = max(pairs, key=lambda pair: len(words(pair[0]) & query), default=None)
        answer = str(best[1]) if best is not None and words(best[0]) & query else "unknown"
        if n in skip:
            continue
        lines.append(f"{n} {answer}" if n in bad else f"{n}: {answer}")
    return _completion(model, "\n".join(lines), 0.9)


@app.get("/requests")
async def requests_seen() -> list[dict[str, Any]]:
    return _state["requests"]


@app.post("/reset")
async def reset() -> dict[str, bool]:
    _state["requests"].clear()
    _state["calls"].clear()
    return {"ok": True}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
