from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Response

from exemplar.app.errors import ErrorEnvelope
from exemplar.app.schemas.pools import (
    ItemsAdded,
    ItemsIn,
    PoolCreate,
    PoolList,
    PoolOut,
    PoolStatsOut,
    VersionOut,
)
from exemplar.app.services import ADMIN, QUERY, PoolsDep, SettingsDep
from exemplar.errors import InvalidRequest
from exemplar.retrieval import NewItem, PoolService
from exemplar.retrieval.store.catalog import PoolRecord

# Version numbers count up from 1 and are stored as SQLite integers; the bound is one a JSON number
# (a double) states exactly, so no larger number reads as equal to it.
MAX_VERSION = 2**53 - 1

router = APIRouter(prefix="/v1/pools", tags=["pools"], responses={
    400: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope},
    409: {"model": ErrorEnvelope, "description": "A pool of that name exists, or the items do not fit the pool as "
          "it is (what it embeds, its encoder's width)"},
})


def _pool_out(pools: PoolService, record: PoolRecord) -> PoolOut:
    stats = pools.stats(record.name)
    return PoolOut(
        name=record.name, encoder=record.encoder, embed=record.embed, metric=record.metric, index=record.index,
        dim=record.dim, current_version=record.current_version, size=stats.size, created_at=record.created_at,
        centre=record.centre,
    )


@router.get("", summary="List pools", dependencies=[QUERY])
def list_pools(pools: PoolsDep) -> PoolList:
    return PoolList(pools=[_pool_out(pools, p) for p in pools.list()])


@router.post("", status_code=201, summary="Create a pool", dependencies=[ADMIN])
def create_pool(body: PoolCreate, pools: PoolsDep, settings: SettingsDep) -> PoolOut:
    record = pools.create(
        name=body.name, encoder=body.encoder or settings.default_encoder, embed=body.embed,
        metric=body.metric, index=body.index, centre=body.centre,
    )
    return _pool_out(pools, record)


@router.get("/{pool}", summary="Pool stats: size, labels, domains, versions, encoder", dependencies=[QUERY])
def pool_stats(pool: str, pools: PoolsDep) -> PoolStatsOut:
    stats = pools.stats(pool)
    record = stats.pool
    return PoolStatsOut(
        name=record.name, encoder=record.encoder, embed=record.embed, metric=record.metric, index=record.index,
        dim=record.dim, current_version=record.current_version, size=stats.size, created_at=record.created_at,
        centre=record.centre, labels=stats.labels, domains=stats.domains, adapter=stats.adapter, segments=stats.segments,
        deleted=stats.deleted,
        versions=[
            VersionOut(version=v.version, state=v.state, size=v.size, index=v.index, source=v.source,
                       created_at=v.created_at, current=v.version == record.current_version,
                       index_stats=v.stats.get("index"))
            for v in stats.versions
        ],
    )


@router.delete("/{pool}", status_code=204, summary="Delete a pool and all its versions", dependencies=[ADMIN])
def delete_pool(pool: str, pools: PoolsDep) -> Response:
    pools.delete(pool)
    return Response(status_code=204)


@router.post("/{pool}/items", status_code=201, summary="Add or replace items; writes a new version",
             dependencies=[ADMIN])
def add_items(pool: str, body: ItemsIn, pools: PoolsDep, settings: SettingsDep) -> ItemsAdded:
    if len(body.items) > settings.max_items_per_request:
        raise InvalidRequest(
            f"at most {settings.max_items_per_request} items per request; use a build for more", param="items"
        )
    items = [
        NewItem(id=i.id, label=i.label, text=i.text, domain=i.domain, metadata=i.metadata,
                image_bytes=i.image, embedding=None if i.embedding is None else np.asarray(i.embedding))
        for i in body.items
    ]
    version = pools.add_items(pool, items)
    return ItemsAdded(pool=pool, version=version, added=len(items), size=pools.stats(pool).size)


@router.post("/{pool}/versions/{version}/activate", summary="Make a version current (rollback or roll forward)",
             dependencies=[ADMIN])
def activate(pool: str, version: Annotated[int, Path(ge=1, le=MAX_VERSION)], pools: PoolsDep) -> PoolOut:
    return _pool_out(pools, pools.activate(pool, version))
