"""Where the server under test is: environment variables set by whoever started it.

- ``EXEMPLAR_CLIENT_TEST_URL``: the server's base URL (tests that need a server skip without it).
- ``EXEMPLAR_CLIENT_TEST_API_KEY``: an admin key, when the server requires keys.
- ``EXEMPLAR_CLIENT_TEST_QUERY_KEY``: a key with the query scope only (permission errors).
- ``EXEMPLAR_CLIENT_TEST_LIMITED_KEY``: an admin key limited to one request per 2 seconds or slower
  (rate-limit errors and Retry-After).
- ``EXEMPLAR_CLIENT_TEST_SHAPES_POOL``: a pool built with images (``exemplar sample shapes``).
- ``EXEMPLAR_CLIENT_TEST_MLLM``: a model endpoint name configured on the server that answers the
  majority label (``tests/fake_mllm.py``'s ``majority``).
- ``EXEMPLAR_CLIENT_TEST_BUILD_SOURCE``: a manifest under the server's ``EXEMPLAR_SOURCE_ROOTS``.

Tests write only to pools they create, named with a fresh suffix, and delete them afterwards.
"""

from __future__ import annotations

import os
import random
import uuid

import pytest

__all__ = ["DIM", "DOMAINS", "LABELS", "TIMEOUT_S", "env", "fresh_name", "vector_items"]

# Short waits: a test server on loopback answers in milliseconds; a hang must fail, not stall CI.
TIMEOUT_S = 60.0


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: no server to test against")
    return value


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


LABELS = ("ant", "bee", "cat")
DOMAINS = ("site-a", "site-b")
DIM = 16


def vector_items(n: int = 60, seed: int = 7) -> list[dict[str, object]]:
    """Items of a precomputed pool: one cluster per label, shifted per domain (no numpy needed)."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        label, domain = LABELS[i % len(LABELS)], DOMAINS[(i // len(LABELS)) % len(DOMAINS)]
        centre = [3.0 if d == LABELS.index(label) else 0.0 for d in range(DIM)]
        shift = [1.0 if d == len(LABELS) + DOMAINS.index(domain) else 0.0 for d in range(DIM)]
        vector = [c + s + rng.gauss(0, 0.3) for c, s in zip(centre, shift)]
        items.append({"id": f"v{i:03d}", "label": label, "domain": domain, "text": f"item {i}",
                      "embedding": vector, "metadata": {"i": i}})
    return items
