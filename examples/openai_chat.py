"""Demonstrations for an existing OpenAI-client pipeline: point the client's base URL at Exemplar and
add one ``extra_body`` field. Exemplar selects the demonstrations for the last user message, puts
them in the prompt before it, and forwards the request to the model endpoint configured under the
name given as ``model`` (``EXEMPLAR_MLLM_ENDPOINTS``).

    python examples/openai_chat.py --base-url http://127.0.0.1:8000/v1 --model qwen --pool derm \\
        --image query.jpg --question "Which lesion is this?"

Prints the answer and the ids of the demonstrations the model was shown, as JSON.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
from pathlib import Path

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="Exemplar's /v1")
    parser.add_argument("--model", required=True, help="a configured endpoint name (GET /v1/models)")
    parser.add_argument("--pool", required=True)
    parser.add_argument("--image", type=Path, required=True, help="the query image")
    parser.add_argument("--question", default="Which class is this? Answer with the class name only.")
    parser.add_argument("--strategy", default="balanced")
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()

    mime = mimetypes.guess_type(args.image.name)[0] or "image/png"
    image = f"data:{mime};base64,{base64.b64encode(args.image.read_bytes()).decode()}"
    # With keys configured on the server, Exemplar's key goes here; the model endpoint's own key
    # stays on the server.
    client = OpenAI(base_url=args.base_url, api_key=os.environ.get("EXEMPLAR_API_KEY", "none"))
    response = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                               {"type": "text", "text": args.question}]}],
        max_tokens=16,
        temperature=0.0,
        # The only change a pipeline makes: which pool, and how to select.
        extra_body={"exemplar": {"pool": args.pool, "strategy": args.strategy, "k": args.k,
                                 "prompt": {"demo_text": args.question}}},
    )
    exemplar = (response.model_extra or {})["exemplar"]
    print(json.dumps({"answer": response.choices[0].message.content,
                      "demonstrations": [d["id"] for d in exemplar["demonstrations"]],
                      "version": exemplar["version"]}))


if __name__ == "__main__":
    main()
