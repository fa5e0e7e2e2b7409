"""The encode stage on Ray Data, on a local Ray instance: the same vectors as the local stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exemplar.app.ray_executor import RayStage
from exemplar.retrieval import PoolService, build_pool
from exemplar.retrieval.build.runner import BuildRunner, BuildSpec
from exemplar.samples import generate_shapes


class _Quiet:
    fence = None  # no job

    def check(self) -> None:
        return None

    def progress(self, **values) -> None:  # noqa: ANN003
        return None


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.mark.parametrize("embed", ["image", "image+text"])
def test_ray_build_equals_local_build(ray_local, pools: PoolService, tmp_path: Path, embed: str) -> None:
    manifest = generate_shapes(tmp_path / "src", per_class_per_domain=3)
    lines = manifest.read_text().splitlines()
    broken = '{"id": "broken", "image": "images/missing.png", "label": "circle", "text": "a circle"}'
    manifest.write_text("\n".join(lines + [broken]) + "\n")
    pools.create(name="local", encoder="open_clip:exemplar-tiny", embed=embed)
    pools.create(name="ray", encoder="open_clip:exemplar-tiny", embed=embed)
    local = build_pool(pools.store, pools.snapshots, pools.encoders, "local", manifest, shard_size=16)
    spec = BuildSpec(pool="ray", source=str(manifest), shard_size=16, batch_size=8)
    report = BuildRunner(pools.store, pools.snapshots, pools.encoders, spec, tmp_path / "work", RayStage(actors=2, device="cpu")).run(_Quiet())
    assert (report.added, report.skipped, report.shards) == (local.added, local.skipped, local.shards) == (36, 1, 3)
    assert report.errors[0].item_id == "broken" and "not found" in report.errors[0].message
    a, b = pools.snapshots.snapshot("local"), pools.snapshots.snapshot("ray")
    assert a.ids == b.ids
    np.testing.assert_allclose(np.asarray(a.vectors), np.asarray(b.vectors), atol=1e-5)
    if embed == "image+text":  # both modality vectors come back from the actors too
        assert a.modalities is not None and b.modalities is not None
        np.testing.assert_allclose(np.asarray(a.modalities.vectors), np.asarray(b.modalities.vectors), atol=1e-5)
