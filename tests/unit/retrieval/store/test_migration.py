"""A data directory written by the release before segments opens and keeps working (read as-is:
each old version folder is one segment, its items still in the catalog)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from exemplar.encoders import EncoderRegistry
from exemplar.retrieval import NewItem, PoolService, Query, SelectionOptions, SelectionService
from exemplar.retrieval.store.migrations import SCHEMA_VERSION
from tests.helpers import close_pools, open_pools, oracle_topk

FIXTURE = Path(__file__).parents[3] / "fixtures" / "legacy-v1"


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    return data


def test_an_old_data_directory_serves_as_it_was(legacy: Path) -> None:
    pools = open_pools(legacy, EncoderRegistry())
    try:
        snap = pools.snapshots.snapshot("legacy")
        assert (snap.version, snap.size) == (2, 30)
        assert pools.item("legacy", "old05").text == "legacy item 5" and pools.item("legacy", "old05").metadata == {"n": 5}
        V = np.asarray(snap.vectors)
        selection = SelectionService(pools.store, pools.snapshots, pools.encoders)
        got = selection.select("legacy", Query(item_id="old07"), "topk", SelectionOptions(k=5))
        want = oracle_topk(V, V[snap.row_of["old07"]], k=5, skip=snap.row_of["old07"])
        assert [snap.row_of[d.id] for d in got.demonstrations] == want
        invariant = selection.select("legacy", Query(item_id="old07"), "invariant", SelectionOptions(k_per_class=2))
        assert len(invariant.demonstrations) == 6
    finally:
        close_pools(pools)
    with sqlite3.connect(legacy / "catalog.sqlite3") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 4
        # the leases that came with schema 4: a replica table, job attempts
        assert {r[1] for r in conn.execute("PRAGMA table_info(jobs)")} >= {"owner", "attempt", "lease_until"}
        # pools from before centring existed are not centred
        assert [r[0] for r in conn.execute("SELECT centre FROM pools")] == [0]


def test_writes_on_an_old_version_add_segments_and_keep_its_adapter(legacy: Path) -> None:
    pools = open_pools(legacy, EncoderRegistry())
    try:
        vector = np.linspace(-1, 1, 8)
        assert pools.add_items("legacy", [NewItem(id="new", label="class-0", embedding=vector)]) == 3
        deleted = pools.delete_items("legacy", ["old03", "ghost"])
        assert (deleted.version, deleted.deleted, deleted.missing) == (4, ["old03"], ["ghost"])
        record = pools.store.catalog.version(pools.get("legacy").id, 4)
        assert [s["name"] for s in record.manifest["segments"]] == ["v2", "s3"]
        assert record.manifest["segments"][0]["deleted"] == 1 and record.manifest["adapter"] == 1
        selection = SelectionService(pools.store, pools.snapshots, pools.encoders)
        found = selection.select("legacy", Query(embedding=vector.tolist()), "invariant",
                                 SelectionOptions(k=1, invariant_base="topk"))
        assert found.version == 4 and found.demonstrations[0].id == "new"
        assert "old03" not in pools.snapshots.snapshot("legacy").row_of and pools.snapshots.snapshot("legacy").size == 30
        pools.activate("legacy", 1)  # an old full-copy version is still a version to roll back to
        assert pools.snapshots.snapshot("legacy").size == 20
    finally:
        close_pools(pools)
    reopened = open_pools(legacy, EncoderRegistry())
    try:
        assert reopened.snapshots.snapshot("legacy").version == 1
        reopened.activate("legacy", 4)
        assert reopened.item("legacy", "new").label == "class-0"
    finally:
        close_pools(reopened)
