"""Shared fixtures. Model hubs are unreachable in tests: HF_HUB_OFFLINE makes misses fail at once."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from exemplar.encoders import EncoderRegistry  # noqa: E402
from exemplar.retrieval import NewItem, PoolService, PoolStore, SelectionService, SnapshotCache  # noqa: E402
from tests.helpers import clustered_vectors  # noqa: E402


@pytest.fixture(scope="session")
def encoders() -> EncoderRegistry:
    """One registry for the session, so the tiny model is built once."""
    return EncoderRegistry(device="cpu", batch_size=16)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server for the session (tests/postgres.py). CI sets
    EXEMPLAR_TEST_REQUIRE_POSTGRES=1: there a missing server fails instead of skipping."""
    from tests.postgres import available, throwaway_postgres

    if not available():
        if os.environ.get("EXEMPLAR_TEST_REQUIRE_POSTGRES"):
            raise AssertionError("PostgreSQL is required here (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest) -> str | None:
    """Every test of the store runs against both catalogs: SQLite (None) and PostgreSQL."""
    if request.param == "sqlite":
        return None
    from tests.postgres import schema_url

    return schema_url(request.getfixturevalue("postgres_server"))


@pytest.fixture
def store(tmp_path: Path, catalog_url: str | None) -> Iterator[PoolStore]:
    opened = PoolStore(tmp_path / "data", catalog_url=catalog_url)
    yield opened
    opened.close()


@pytest.fixture
def snapshots(store: PoolStore) -> Iterator[SnapshotCache]:
    """This process's snapshots; no refresher (tests that need one start it)."""
    cache = SnapshotCache(store, refresh_s=0.0)
    yield cache
    cache.close()


@pytest.fixture
def pools(store: PoolStore, snapshots: SnapshotCache, encoders: EncoderRegistry) -> PoolService:
    return PoolService(store, snapshots, encoders)


@pytest.fixture
def selection(store: PoolStore, snapshots: SnapshotCache, encoders: EncoderRegistry) -> SelectionService:
    return SelectionService(store, snapshots, encoders)


@pytest.fixture
def vector_pool(pools: PoolService) -> tuple[str, np.ndarray, list[str], list[str]]:
    """A precomputed pool of 600 clustered 32-d vectors, 5 labels, 3 domains: (name, V, labels, domains)."""
    V, labels, domains = clustered_vectors(n=600, dim=32, n_labels=5, n_domains=3, seed=7)
    pools.create(name="vec", encoder="precomputed:32")
    items = [
        NewItem(id=f"v{i:04d}", label=labels[i], domain=domains[i], text=f"item {i}", embedding=V[i])
        for i in range(len(V))
    ]
    pools.add_items("vec", items)
    return "vec", V, labels, domains


@pytest.fixture(scope="session")
def fake_mllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The scripted OpenAI-protocol model server (tests/fake_mllm.py) as a separate process."""
    from tests.processes import free_port, running

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("fake-mllm") / "server.log"
    with running(["-m", "tests.fake_mllm", "--port", str(port)], f"{base}/healthz", log):
        yield base
