"""Operations and the dashboard's data: metrics, recent statistics, item images."""

from __future__ import annotations

import mimetypes
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from exemplar.app.errors import ErrorEnvelope
from exemplar.app.services import ADMIN, QUERY, ObsDep, ServicesDep, SnapshotsDep
from exemplar.errors import NotFound
from exemplar.retrieval.prompting import read_image

router = APIRouter(tags=["admin"], responses={401: {"model": ErrorEnvelope}, 403: {"model": ErrorEnvelope},
                                              404: {"model": ErrorEnvelope}})


class LatencyPoint(BaseModel):
    t: float = Field(description="Start of the bucket, Unix seconds.")
    count: int
    p50_ms: float
    p95_ms: float


class RecentStatsOut(BaseModel):
    window_s: float
    bucket_s: float
    requests: int
    latency: list[LatencyPoint]
    strategies: dict[str, int] = Field(description="Selections per strategy in the window.")
    labels_returned: dict[str, dict[str, int]] = Field(description="Per pool: demonstrations returned per label.")


class OverviewOut(BaseModel):
    pools: int
    items: int
    jobs_running: int
    jobs_failed: int
    auth: bool
    version: str
    mllm_endpoints: list[str]


class ReplicaOut(BaseModel):
    id: str = Field(description="host:pid:nonce, unique per process start.")
    host: str
    pid: int
    started_at: float = Field(description="Unix seconds.")
    heartbeat_at: float
    lease_until: float = Field(description="Its lease in the catalog's clock; past it, its jobs are taken over.")
    alive: bool = Field(description="Its lease has not run out.")
    serving: dict[str, int] = Field(description="Per pool it serves: the number of segments it has loaded.")


class ReplicasOut(BaseModel):
    answered_by: str = Field(description="The id of the replica that answered this request.")
    catalog: str = Field(description="The catalog's engine: sqlite (one host) or postgresql (replicas).")
    replicas: list[ReplicaOut]


@router.get("/metrics", summary="Prometheus metrics", dependencies=[ADMIN],
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(obs: ObsDep) -> Response:
    return Response(obs.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/admin/stats", summary="Recent selection latency (p50/p95 per minute), strategy mix, labels returned",
            dependencies=[ADMIN])
def recent_stats(obs: ObsDep, window_s: float = 3600, bucket_s: float = 60) -> RecentStatsOut:
    window_s = min(max(window_s, 60), 24 * 3600)
    bucket_s = min(max(bucket_s, 1), window_s)
    return RecentStatsOut(**obs.recent.summary(window_s=window_s, bucket_s=bucket_s))


@router.get("/v1/admin/overview", summary="Counts for the dashboard's front page", dependencies=[ADMIN])
def overview(services: ServicesDep) -> OverviewOut:
    import exemplar

    pools = services.pools.list()
    return OverviewOut(
        pools=len(pools), items=sum(services.pools.stats(p.name).size for p in pools),
        jobs_running=len(services.jobs.list(states=("queued", "running"), limit=1000)),
        jobs_failed=len(services.jobs.list(states=("failed",), limit=1000)),
        auth=services.auth.enabled, version=exemplar.__version__, mllm_endpoints=services.mllms.names(),
    )


@router.get("/v1/pools/{pool}/items/{item_id}/image", summary="An item's image (for thumbnails)",
            dependencies=[QUERY], response_class=Response, responses={200: {"content": {"image/*": {}}}})
def item_image(pool: str, item_id: str, snapshots: SnapshotsDep) -> Response:
    snap = snapshots.snapshot(pool)
    row = snap.row_of.get(item_id)
    if row is None:
        raise NotFound(f"item {item_id!r} is not in version {snap.version} of pool {pool!r}", param="item_id")
    reference, root = snap.images[row], snap.image_root(row)
    if reference is None or root is None:
        raise NotFound(f"item {item_id!r} has no image", param="item_id")
    try:
        data = read_image(root, reference)
    except OSError:
        raise NotFound(f"the image of item {item_id!r} is missing", param="item_id") from None
    media_type = mimetypes.guess_type(reference)[0] or "application/octet-stream"
    headers: dict[str, Any] = {"cache-control": "private, max-age=3600", "x-content-type-options": "nosniff"}
    return Response(data, media_type=media_type if media_type.startswith("image/") else "application/octet-stream",
                    headers=headers)


@router.get("/v1/admin/replicas", summary="The server processes sharing this catalog, with their leases",
            dependencies=[ADMIN])
def replicas(services: ServicesDep) -> ReplicasOut:
    store = services.store
    names = {str(p.id): p.name for p in services.pools.list()}
    now = store.now()
    return ReplicasOut(
        answered_by=store.replica_id, catalog=store.catalog_dialect,
        replicas=[ReplicaOut(id=r.id, host=r.host, pid=r.pid, started_at=r.started_at, heartbeat_at=r.heartbeat_at,
                             lease_until=r.lease_until, alive=r.lease_until > now,
                             serving={names[pid]: len(segments) for pid, segments in r.serving.items() if pid in names})
                  for r in store.replicas()],
    )
