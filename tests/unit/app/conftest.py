from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from exemplar.app import Settings, create_app


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", max_body_bytes=256 * 1024, max_image_pixels=200_000, refresh_s=0.0)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def seeded_pools(client: TestClient) -> None:
    """A precomputed pool, an image pool and an empty pool (tests.unit.app.envelopes.SEEDED_POOLS)."""
    from tests.helpers import png_b64

    client.post("/v1/pools", json={"name": "vec", "encoder": "precomputed:4"})
    client.post("/v1/pools/vec/items", json={"items": [
        {"id": "a", "label": "x", "embedding": [1, 0, 0, 0]}, {"id": "b", "label": "y", "embedding": [0, 1, 0, 0]}]})
    client.post("/v1/pools", json={"name": "img", "encoder": "open_clip:exemplar-tiny"})
    client.post("/v1/pools/img/items", json={"items": [{"id": "r", "label": "red", "image": png_b64()}]})
    client.post("/v1/pools", json={"name": "empty", "encoder": "precomputed:4"})
