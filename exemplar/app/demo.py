"""``exemplar demo``: a generated, labelled, multi-domain sample pool, built and ready to serve."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable

from exemplar.app.services import build_services
from exemplar.app.settings import Settings
from exemplar.errors import NotFound
from exemplar.retrieval import build_pool
from exemplar.samples import generate_shapes

__all__ = ["DEMO_ENCODER", "DEMO_POOL", "curl_example", "prepare_demo"]

DEMO_POOL = "demo"
DEMO_ENCODER = "open_clip:exemplar-tiny"


def prepare_demo(settings: Settings, *, per_class: int = 12, fresh: bool = False,
                 echo: Callable[[str], None] = print) -> str:
    """Make sure the demo pool exists; returns an item id to use as the example query."""
    services = build_services(settings)
    try:
        pools = services.pools
        try:
            pools.get(DEMO_POOL)
            exists = True
        except NotFound:
            exists = False
        if exists and fresh:
            pools.delete(DEMO_POOL)
            exists = False
        if not exists or pools.stats(DEMO_POOL).size == 0:
            if not exists:
                pools.create(name=DEMO_POOL, encoder=DEMO_ENCODER, embed="image")
            source = settings.data_dir / "demo-source"
            manifest = generate_shapes(source, per_class_per_domain=per_class)
            echo(f"generated sample images under {source}")
            report = build_pool(services.store, services.snapshots, services.encoders, DEMO_POOL, manifest)
            echo(f"built pool {DEMO_POOL!r} version {report.version}: {report.added} items in {report.seconds:.1f}s")
        if pools.stats(DEMO_POOL).adapter is None:
            job = services.jobs.wait(services.adapters.start(DEMO_POOL, {}).id, timeout_s=600)
            if job.state == "succeeded":
                echo(f"trained the CCI adapter for strategy=invariant in {job.result['seconds']:.1f}s")
            else:
                echo(f"adapter training {job.state}: {job.errors}; strategy=invariant will answer 409")
        snap = services.snapshots.snapshot(DEMO_POOL)
        return snap.ids[0]
    finally:
        services.close()


def curl_example(settings: Settings, pool: str, item_id: str) -> str:
    body = json.dumps({"query": {"item_id": item_id}, "strategy": "balanced", "k": 8})
    url = f"http://{settings.host}:{settings.port}/v1/pools/{pool}/select"
    return f"curl -s -X POST {url} -H 'content-type: application/json' -d {shlex.quote(body)}"
