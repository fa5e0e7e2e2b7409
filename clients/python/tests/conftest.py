"""Fixtures for the server under test (see support.py for the environment variables)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support import DIM, TIMEOUT_S, env, fresh_name, vector_items

from exemplar_client import Exemplar


@pytest.fixture(scope="session")
def server_url() -> str:
    return env("EXEMPLAR_CLIENT_TEST_URL")


@pytest.fixture(scope="session")
def api_key() -> str | None:
    return os.environ.get("EXEMPLAR_CLIENT_TEST_API_KEY") or None


@pytest.fixture
def client(server_url: str, api_key: str | None) -> Iterator[Exemplar]:
    with Exemplar(server_url, api_key=api_key, timeout=TIMEOUT_S, max_retries=1) as ex:
        yield ex


@pytest.fixture(scope="session")
def shapes_pool() -> str:
    return env("EXEMPLAR_CLIENT_TEST_SHAPES_POOL")


@pytest.fixture(scope="session")
def mllm() -> str:
    return env("EXEMPLAR_CLIENT_TEST_MLLM")


@pytest.fixture(scope="module")
def vector_pool(server_url: str, api_key: str | None) -> Iterator[tuple[str, list[dict[str, object]]]]:
    """A fresh precomputed pool of 60 items (3 labels x 2 domains), deleted afterwards."""
    name, items = fresh_name("vec"), vector_items()
    with Exemplar(server_url, api_key=api_key, timeout=TIMEOUT_S) as ex:
        ex.create_pool(name=name, encoder=f"precomputed:{DIM}")
        ex.add_items(name, items)
        yield name, items
        ex.delete_pool(name)
